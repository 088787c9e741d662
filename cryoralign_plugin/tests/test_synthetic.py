"""Tests for the synthetic data generator (cryoralign_plugin.engine.synthetic): the ground truth it
writes must be exactly what brings each particle onto its reference, at the SNR it claims."""
import numpy as np
import pytest

from cryoralign_plugin.engine import synthetic as syn
from cryoralign_plugin.engine.geometry import MIRROR, PSI, SX, SY
from cryoralign_plugin.engine.images import circular_mask, transform
from cryoralign_plugin.engine.mrc import read_stack
from cryoralign_plugin.engine.sources import StarSource
from cryoralign_plugin.engine.star import read_star

BOX = 64


@pytest.fixture(scope="module")
def phantom():
    return syn.phantom_views(6, BOX, seed=0)


def _register_corr(images, classes, truth, references):
    """Masked correlation of each particle, brought back by ``truth``, with its reference."""
    mask = circular_mask(BOX, syn.default_radius(BOX))
    back = transform(images, truth)
    return np.array([np.corrcoef(b[mask], references[k][mask])[0, 1] for b, k in zip(back, classes)])


@pytest.mark.parametrize("source, bound", [("phantom", 0.999), ("slicem", 0.995)])
def test_truth_brings_clean_particles_onto_their_references(source, bound):
    references = syn.make_references(source, 5, BOX, seed=0)
    images, classes, truth = syn.make_particles(references, 120, np.inf, seed=3)
    assert 20 < truth[:, MIRROR].sum() < 100          # mirrored and unmirrored particles both covered
    corr = _register_corr(images, classes, truth, references)
    assert corr[truth[:, MIRROR] == 1].min() > bound and corr[truth[:, MIRROR] == 0].min() > bound
    # The bound is tight enough to catch a 5 degree or a mirror error in the truth.
    for wrong in (PSI, MIRROR):
        bad = truth.copy()
        bad[:, wrong] = (bad[:, wrong] + 5.0) % 360 if wrong == PSI else 1 - bad[:, wrong]
        assert np.median(_register_corr(images, classes, bad, references)) < bound


def test_clean_particles_are_moved_away_from_their_references(phantom):
    images, classes, truth = syn.make_particles(phantom, 50, np.inf, seed=1)
    mask = circular_mask(BOX, syn.default_radius(BOX))
    corr = [np.corrcoef(p[mask], phantom[k][mask])[0, 1] for p, k in zip(images, classes)]
    assert np.median(corr) < 0.8


@pytest.mark.parametrize("snr", [0.05, 1.0])
def test_snr_is_signal_variance_in_mask_over_noise_variance(phantom, snr):
    clean, _, _ = syn.make_particles(phantom, 200, np.inf, seed=5)
    noisy, _, _ = syn.make_particles(phantom, 200, snr, seed=5)
    mask = circular_mask(BOX, syn.default_radius(BOX))
    signal = clean[:, mask].var()
    measured = signal / (noisy - clean).var()
    assert abs(measured / snr - 1.0) < 0.05
    assert abs((noisy - clean)[:, ~mask].var() / (noisy - clean)[:, mask].var() - 1.0) < 0.05  # white


def test_add_noise_uses_one_sigma_for_the_whole_set():
    rng = np.random.default_rng(0)
    images = np.zeros((400, 32, 32), np.float32)
    images[:200, :, :13] = 1.0          # half the set is blank (signal is pooled), half the box bright
    noisy = syn.add_noise(images, 0.5, 12, rng)
    signal = images[:, circular_mask(32, 12)].var()
    for part in (noisy[:200] - images[:200], noisy[200:]):
        assert abs(signal / part.var() / 0.5 - 1.0) < 0.05
    with pytest.raises(ValueError):
        syn.add_noise(images, 0.0, 12, rng)
    assert np.array_equal(syn.add_noise(images, np.inf, 12, rng), images)


def test_similarity_sees_through_rotation_and_mirror(phantom):
    moved = transform(phantom, np.array([[33.0, 0, 0, 1], [200.0, 0, 0, 0]] * 3))
    sim = syn.rotational_similarity(np.concatenate([phantom, moved]), n_angles=360)
    assert np.diag(sim[:6, 6:]).min() > 0.99


def test_phantom_views_are_mutually_distinct():
    # Measured max pairwise similarity (1 degree steps, mirror allowed) of 10 views at 64 px:
    # 0.831 (seed 0), 0.74-0.90 over seeds 0-9; at 90 px and SNR 0.1 all are told apart.
    views = syn.phantom_views(10, BOX, seed=0)
    sim = syn.rotational_similarity(views, n_angles=360)
    np.fill_diagonal(sim, -1.0)
    assert sim.max() < 0.86
    assert views.shape == (10, BOX, BOX) and views.dtype == np.float32
    mask = circular_mask(BOX, syn.default_radius(BOX))
    assert np.allclose(views[:, mask].std(axis=1), 1.0, atol=1e-3)
    assert np.abs(views[:, ~circular_mask(BOX, 0.45 * BOX)]).max() < 0.05 * views.max()   # inside


def test_slicem_references_are_distinct_real_averages():
    refs = syn.slicem_references(10, BOX, seed=0)
    sim = syn.rotational_similarity(refs, n_angles=360)
    np.fill_diagonal(sim, -1.0)
    assert sim.max() < 0.85                              # measured 0.797
    assert refs.shape == (10, BOX, BOX)
    assert np.allclose(refs[:, circular_mask(BOX, syn.default_radius(BOX))].std(axis=1), 1.0, atol=1e-3)
    assert np.abs(refs[:, ~circular_mask(BOX, 0.48 * BOX)]).max() < 1e-6      # soft-masked
    assert syn.slicem_references(3, 96, seed=1).shape == (3, 96, 96)


def test_averages_with_density_at_the_edge_are_left_out():
    y, x = np.indices((96, 96)) - 48
    central = np.exp(-(x ** 2 + y ** 2) / 200.0)
    neighbour = central + 1.5 * np.exp(-((x - 36) ** 2 + y ** 2) / 60.0)
    assert list(syn._centered_averages(np.stack([central, neighbour, central]))) == [0, 2]
    kept = syn._centered_averages(read_stack(syn.SLICEM_PATH))
    assert 75 < len(kept) < 95 and not {30, 51, 70} & set(kept)   # three with a neighbour at the edge


def test_most_distinct_picks_the_outliers():
    points = np.array([0.0, 0.1, 0.2, 5.0, 10.0])
    similarity = -np.abs(points[:, None] - points[None, :])
    assert sorted(syn.most_distinct(similarity, 3)) == [0, 3, 4]
    assert list(syn.most_distinct(similarity, 1, first=2)) == [2]
    with pytest.raises(ValueError):
        syn.most_distinct(similarity, 6)


def test_same_seed_same_data_other_seed_other_data(phantom):
    assert np.array_equal(syn.phantom_views(3, 32, seed=4), syn.phantom_views(3, 32, seed=4))
    assert not np.allclose(syn.phantom_views(3, 32, seed=4), syn.phantom_views(3, 32, seed=5))
    a = syn.make_particles(phantom, 30, 0.3, seed=2)
    b = syn.make_particles(phantom, 30, 0.3, seed=2)
    c = syn.make_particles(phantom, 30, 0.3, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[2], c[2])


def test_classes_are_balanced_or_follow_weights(phantom):
    _, classes, _ = syn.make_particles(phantom, 1003, np.inf, seed=0)
    counts = np.bincount(classes, minlength=6)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 1003
    assert len(np.unique(classes[:12])) > 3                            # shuffled, not in blocks
    weighted = syn.class_labels(100, 3, np.random.default_rng(0), weights=[2, 1, 1])
    assert list(np.bincount(weighted)) == [50, 25, 25]


def test_random_parameters_ranges():
    p = syn.random_parameters(2000, np.random.default_rng(0), shift_range=2.5)
    assert p[:, PSI].min() >= 0 and p[:, PSI].max() < 360 and np.ptp(p[:, PSI]) > 350
    assert np.abs(p[:, [SX, SY]]).max() <= 2.5 and np.abs(p[:, [SX, SY]]).max() > 2.4
    assert abs(p[:, MIRROR].mean() - 0.5) < 0.05 and set(np.unique(p[:, MIRROR])) == {0.0, 1.0}
    assert not syn.random_parameters(50, np.random.default_rng(0), mirror=False)[:, MIRROR].any()


def test_make_dataset_writes_files_whose_names_resolve(tmp_path, capsys):
    syn.main(["--out", str(tmp_path / "ds"), "--particles", "40", "--box", "32", "--classes", "3",
              "--snr", "2", "--seed", "7"])
    out = capsys.readouterr().out
    paths = {line.split()[0]: line.split()[1] for line in out.splitlines()}
    assert set(paths) == {"particles", "particles_star", "truth", "references"}
    stack = StarSource.from_star(paths["particles_star"])
    assert stack.count == 40 and stack.box == 32 and list(stack.ids) == list(range(1, 41))
    images = read_stack(paths["particles"])
    assert np.array_equal(stack.read(np.arange(40)), images)
    classes, truth = syn.read_truth(paths["truth"])
    references = read_stack(paths["references"])
    expect = syn.make_particles(syn.phantom_views(3, 32, seed=7), 40, 2.0, seed=7)
    assert np.array_equal(images, expect[0]) and np.array_equal(classes, expect[1])
    assert np.allclose(truth, expect[2], atol=1e-5) and references.shape == (3, 32, 32)
    assert [int(r.rlnClassNumber) for r in read_star(paths["truth"], "truth")][:5] == list(classes[:5] + 1)
