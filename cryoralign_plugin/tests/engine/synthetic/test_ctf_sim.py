"""engine/synthetic/ctf_sim.py: CTF-modulated particles keep their random draws, and their CTF is the true one."""
import numpy as np
import pytest

from cryoralign_plugin.engine import synthetic as syn
from cryoralign_plugin.engine import ctf
from cryoralign_plugin.engine.images import circular_mask

from synthetic_checks import BOX, masked_corr


def test_ctf_keeps_classes_parameters_and_noise_draws(phantom):
    clean, classes, truth = syn.make_particles(phantom, 150, np.inf, seed=4)
    noisy, _, _ = syn.make_particles(phantom, 150, 0.1, seed=4)
    spec = syn.CtfSimulation()
    modulated, c_classes, c_truth, ctf_truth = syn.make_particles(phantom, 150, np.inf, seed=4, ctf=spec)
    c_noisy = syn.make_particles(phantom, 150, 0.1, seed=4, ctf=spec)[0]
    assert np.array_equal(classes, c_classes) and np.array_equal(truth, c_truth)
    assert not np.allclose(modulated, clean, atol=0.1)
    # Same normalised noise draws, scaled to each set's own signal: the SNR is that of the
    # CTF-modulated signal (whose variance is ~7x below the clean one at 2.5 A/px).
    mask = circular_mask(BOX, syn.default_radius(BOX))
    noise, c_noise = noisy - clean, c_noisy - modulated
    assert abs(modulated[:, mask].var() / c_noise.var() / 0.1 - 1.0) < 0.05
    assert np.allclose(noise / noise.std(), c_noise / c_noise.std(), atol=1e-3)
    assert 4 < clean[:, mask].var() / modulated[:, mask].var() < 12
    assert ctf_truth["defocus_u"].shape == (150,)


def test_ctf_truth_ranges():
    spec = syn.CtfSimulation(defocus_range=(0.8, 3.0), astigmatism=0.05, voltage=(300, 200), cs=(2.7, 2.0))
    t = spec.draw(4000, np.random.default_rng(0))
    mean = (t["defocus_u"] + t["defocus_v"]) / 2
    assert 8000 <= mean.min() < 8100 and 29900 < mean.max() <= 30000        # uniform over 0.8-3.0 um
    astig = (t["defocus_u"] - t["defocus_v"]) / mean
    assert astig.min() >= 0 and 0.049 < astig.max() <= 0.05
    assert t["defocus_angle"].min() >= 0 and t["defocus_angle"].max() < 180
    assert list(np.bincount(t["optics_group"])[1:]) == [2000, 2000]
    for group, kv, cs in [(1, 300, 2.7), (2, 200, 2.0)]:
        inside = t["optics_group"] == group
        assert np.all(t["voltage"][inside] == kv) and np.all(t["cs"][inside] == cs)
    assert np.all(t["amplitude_contrast"] == 0.1) and np.all(t["phase_shift"] == 0) and t["pixel_size"] == 2.5
    with pytest.raises(ValueError):
        syn.CtfSimulation(voltage=(300, 200, 120), n_optics_groups=2)
    with pytest.raises(ValueError):
        syn.CtfSimulation(defocus_range=(3.0, 1.0))


@pytest.mark.parametrize("source, pixel_size, before, after", [("slicem", 2.5, 0.70, 0.80),
                                                                 ("phantom", 1.5, 0.84, 0.89)])
def test_phase_flip_with_the_true_ctf_brings_particles_closer_to_the_clean_image(source, pixel_size,
                                                                                before, after):
    # Measured medians (noise-free, 100 particles, 64 px): slicem at 2.5 A/px 0.755 unflipped ->
    # 0.832 flipped; phantom at 1.5 A/px 0.872 -> 0.913 (the smooth phantom has little power past
    # the first zero: at 2.5 A/px only 0.859 -> 0.865).
    refs = syn.make_references(source, 6, BOX, seed=0)
    clean, *_ = syn.make_particles(refs, 100, np.inf, seed=3)
    spec = syn.CtfSimulation(pixel_size=pixel_size)
    modulated, _, _, truth = syn.make_particles(refs, 100, np.inf, seed=3, ctf=spec)
    ctfs = syn.particle_ctfs(truth, BOX)
    raw, flipped = masked_corr(modulated, clean), masked_corr(ctf.phase_flip(modulated, ctfs), clean)
    assert np.median(raw) < before + 0.07 and np.median(flipped) > after
    assert np.mean(flipped > raw) > 0.9


def test_ctf_is_applied_on_a_padded_box_or_exactly_on_the_box(phantom):
    clean, *_ = syn.make_particles(phantom, 40, np.inf, seed=6)
    exact, _, _, truth = syn.make_particles(phantom, 40, np.inf, seed=6, ctf=syn.CtfSimulation(pad=1))
    ctfs = syn.particle_ctfs(truth, BOX)
    assert np.allclose(exact, ctf.apply_ctf(clean, ctfs), atol=1e-6)
    # Flipped with its true CTF, a particle is the clean image filtered by |CTF| (up to the Nyquist
    # row, where an astigmatic CTF is not Hermitian-symmetric: measured 1e-4 of a 2.7 maximum).
    assert np.abs(ctf.phase_flip(exact, ctfs) - ctf.apply_ctf(clean, np.abs(ctfs))).max() < 1e-3
    padded = syn.make_particles(phantom, 40, np.inf, seed=6, ctf=syn.CtfSimulation(pixel_size=1.5))
    box_grid = ctf.apply_ctf(clean, syn.particle_ctfs(padded[3], BOX))
    corr = masked_corr(padded[0], box_grid)
    assert 0.99 < corr.min() < 0.9995     # measured 0.9991: the delocalised signal is not wrapped around
