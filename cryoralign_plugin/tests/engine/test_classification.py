"""Classification quality: the per-class criteria in the history (:mod:`engine.criteria`), and what more
or fewer classes than views give.

A criterion that tells a poor classification from a good one: the assignment margin (best minus
runner-up score).  Measured on the hard set (1500 SLICEM particles at SNR 0.02, 64 px, K = 10, the
default 10 iterations) where random starts end in a poor optimum (purity 0.36 against 0.52 from the
true views) with nearly the same mean score (0.2086 against 0.2112): the margin is 0.0107 against
0.0130.
"""
import numpy as np
import pytest

from cryoralign_plugin.engine import align, criteria, synthetic
from cryoralign_plugin.engine.settings import Settings


def quiet(*_):
    pass


def test_margins_are_best_minus_runner_up():
    scores = np.array([[0.1, 0.3, 0.2], [0.5, 0.1, 0.5], [-0.2, -0.1, -0.4]], np.float32)
    ranked = -np.sort(-scores, axis=1)      # candidates come best first (search.Candidates)
    np.testing.assert_allclose(criteria.margins(ranked), [0.1, 0.0, 0.1], atol=1e-6)
    assert criteria.margins(np.ones((3, 1))).tolist() == [0.0, 0.0, 0.0]      # one reference
    assert criteria.margins(np.empty((0, 4), np.float32)).shape == (0,)       # a rank without particles


def test_class_criteria_are_means_over_members():
    classes = np.array([0, 0, 2, 2, 2])
    scores = np.array([0.1, 0.3, 0.2, 0.4, 0.6])
    margins = np.array([0.01, 0.03, 0.0, 0.03, 0.06])
    row = criteria.class_criteria(classes, scores, margins, 4)
    np.testing.assert_allclose(row["class_mean_scores"], [0.2, 0.0, 0.4, 0.0])
    np.testing.assert_allclose(row["class_margins"], [0.02, 0.0, 0.03, 0.0])
    assert row["mean_margin"] == pytest.approx(0.026)


@pytest.fixture(scope="module")
def two_views():
    views = synthetic.slicem_references(2, 32, seed=1)
    images, truth, _ = synthetic.make_particles(views, 120, snr=1.0, seed=3)
    return images, truth


def _run(images, **options):
    settings = Settings(iterations=3, shift_range=2.0, **options)
    return align.align_multi_reference(images, n_classes=2, settings=settings, log=quiet)


def test_history_reports_the_criteria_per_class_and_overall(two_views):
    images, _ = two_views
    result = _run(images, threads=1)
    for row in result.history:
        assert len(row["class_mean_scores"]) == len(row["class_margins"]) == 2
        assert row["mean_margin"] >= 0.0 and min(row["class_margins"]) >= 0.0
    last = result.history[-1]
    for k in range(2):
        assert last["class_mean_scores"][k] == pytest.approx(result.scores[result.classes == k].mean())
    # per-particle values gathered in input order: the same with another thread count
    again = _run(images, threads=2)
    for a, b in zip(result.history, again.history):
        assert (a["mean_margin"], a["class_margins"], a["class_mean_scores"]) == \
            (b["mean_margin"], b["class_margins"], b["class_mean_scores"])


@pytest.mark.slow
def test_margin_tells_the_poor_optimum_from_the_good_one():
    """~1 min on one core: the hard set, from the true views and from random particles (seed 1)."""
    views = synthetic.make_references("slicem", 10, 64, seed=0)
    images, truth, _ = synthetic.make_particles(views, 1500, 0.02, seed=0)
    oracle = align.align_multi_reference(images, references=views, settings=Settings(), log=quiet)
    random = align.align_multi_reference(images, n_classes=10, settings=Settings(seed=1), log=quiet)
    good, poor = synthetic.purity(oracle.classes, truth), synthetic.purity(random.classes, truth)
    assert good > poor + 0.1                  # measured 0.53 against 0.34: a poor optimum
    # the mean score hardly differs (0.2107 against 0.2087), the margin by a fifth (0.0135 against 0.0113)
    assert oracle.history[-1]["mean_margin"] > 1.1 * random.history[-1]["mean_margin"]


def _class_purities(found, truth):
    """Per class, the fraction of its members from its majority true class."""
    return np.array([np.bincount(truth[found == k]).max() / np.sum(found == k) for k in np.unique(found)])


def test_more_classes_than_views_split_views_into_pure_classes():
    """K = 2x the views (5 SLICEM views, 600 particles of 48 px, SNR 0.3, defaults): each class holds
    one view.  Measured 1.000 for every class (without over-clustering and the late re-split: 0.971 at
    least).  At SNR 0.1 the same run leaves a mixed class (0.565 pure; 1200 particles: 0.441), which
    issue 11 still has open."""
    views = synthetic.make_references("slicem", 5, 48, seed=0)
    images, truth, _ = synthetic.make_particles(views, 600, 0.3, seed=0)
    result = align.align_multi_reference(images, n_classes=10, settings=Settings(seed=1), log=quiet)
    assert len(result.averages) == 10 and result.class_sizes.min() > 0
    assert _class_purities(result.classes, truth).min() >= 0.9


def test_fewer_classes_than_views_merge_the_similar_views():
    """K = 0.5x the views (6 phantom views in 3 near-duplicate pairs, 600 particles of 48 px, SNR 0.1,
    defaults): each class holds one pair.  Measured, seeds 1 / 2: the least pure class 0.888 / 0.985 of
    one pair, purity by pair 0.947 / 0.993."""
    views = synthetic.make_references("phantom-pairs", 6, 48, seed=0)
    images, truth, _ = synthetic.make_particles(views, 600, 0.1, seed=0)
    pair = truth // 2
    for seed in (1, 2):
        result = align.align_multi_reference(images, n_classes=3, settings=Settings(seed=seed), log=quiet)
        assert result.class_sizes.min() > 0
        assert _class_purities(result.classes, pair).min() >= 0.85
        assert synthetic.purity(result.classes, pair) >= 0.9
