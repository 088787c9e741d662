"""The self-inclusion bias (:mod:`engine.selfbias`): predicted against leave-one-out, and its removal."""
import numpy as np
import pytest

from cryoralign_plugin.engine import images as imgops
from cryoralign_plugin.engine import references, search, selfbias
from cryoralign_plugin.engine.backends import get_backend
from cryoralign_plugin.engine.geometry import polar_grid

BOX, RADIUS = 32, 13


def _score(backend, grid, particle, ref):
    """Normalised ring correlation at pose 0, as the search computes it (area-weighted)."""
    area = np.repeat(grid.area, grid.lengths)
    a = search.particle_rings(backend, particle[None], np.zeros((1, 2)), grid)[0]
    b = search.reference_rings(backend, ref[None], grid, np.zeros((1, 2)))[0, 0]
    return float(np.sum(area * a * b))


@pytest.mark.parametrize("cutoff", [0.1, 0.25])
def test_predicted_bias_is_the_leave_one_out_lift(cutoff):
    """Members of one class at pose 0, at low SNR (the noise is what the probe models): each one's
    score against the class reference minus its score against the reference of the others (filtered
    alike) is on average what ``self_bias`` predicts."""
    backend, grid = get_backend("cpu", 1), polar_grid(RADIUS)
    rng = np.random.default_rng(3)
    n = 40
    signal = imgops.normalise(imgops.lowpass_tanh(rng.standard_normal((1, BOX, BOX)), 0.15), RADIUS)[0]
    images = imgops.normalise((0.2 * signal + rng.standard_normal((n, BOX, BOX))).astype(np.float32), RADIUS)
    total = images.sum(axis=0)

    def reference(average):   # as references.finish filters at ``cutoff``
        return references.finish(average[None], [np.ones(BOX // 2 + 1)], RADIUS, False, cutoff)[0][0]

    full = reference(total / n)
    lifts = [_score(backend, grid, images[i], full) - _score(backend, grid, images[i],
                                                             reference((total - images[i]) / (n - 1)))
             for i in range(n)]
    predicted = selfbias.NoiseProbe(backend, grid, BOX, RADIUS).self_bias(full[None], [cutoff], [n])[0]
    assert np.mean(lifts) > 0
    assert predicted == pytest.approx(np.mean(lifts), rel=0.2)


def _candidates(reference, score):
    reference, score = np.array(reference, np.int32), np.array(score, np.float32)
    zeros = np.zeros(reference.shape, np.int32)
    return search.Candidates(reference, score, zeros + np.arange(reference.shape[1]), zeros.astype(np.int8),
                             zeros.astype(np.float32), np.zeros((len(reference), 2)))


def test_debiased_reorders_by_the_score_less_the_own_class_bias():
    cand = _candidates([[1, 0, 2], [1, 0, 2], [0, 1, 2]], [[0.50, 0.49, 0.10], [0.50, 0.49, 0.10],
                                                            [0.30, 0.29, 0.28]])
    bias = np.array([0.0, 0.02, 0.0])
    out, ranking = selfbias.debiased(cand, np.array([1, 0, -1]), bias)
    assert out.reference.tolist() == [[0, 1, 2], [1, 0, 2], [0, 1, 2]]   # only particle 0 was in class 1
    assert ranking[0] == pytest.approx([0.49, 0.48, 0.10], abs=1e-6)
    assert out.score[0].tolist() == pytest.approx([0.49, 0.50, 0.10], abs=1e-6)   # raw scores travel along
    assert out.shift[0].tolist() == [1, 0, 2]
    assert np.array_equal(ranking[1:], cand.score[1:].astype(np.float64))
