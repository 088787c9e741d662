"""engine/synthetic/particles.py: the truth brings each clean particle onto its reference, the noise
gives the SNR claimed, and the same seed gives the same set."""
import numpy as np
import pytest

from cryoralign_plugin.engine import synthetic as syn
from cryoralign_plugin.engine.geometry import MIRROR, PSI
from cryoralign_plugin.engine.images import circular_mask, transform

from synthetic_checks import BOX


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


def test_without_ctf_the_particles_are_what_they_were(phantom):
    # The CTF-free path keeps its random stream: classes and parameters of this call hashed from
    # the code before CTF was added (images were compared byte for byte then too, but their bits
    # depend on the interpolation code, so only the random draws are pinned here).
    import hashlib
    refs = syn.phantom_views(4, 32, seed=3)
    images, classes, truth = syn.make_particles(refs, 60, 0.5, seed=9)
    digest = hashlib.sha256(classes.astype(np.int64).tobytes() + truth.astype(np.float64).tobytes())
    assert digest.hexdigest()[:16] == "f9c9d4edd1a53832"
    again = syn.make_particles(refs, 60, 0.5, seed=9, ctf=None)
    assert len(again) == 3 and all(np.array_equal(x, y) for x, y in zip(again, (images, classes, truth)))
