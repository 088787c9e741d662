"""engine.ctf_correction: the CTF modes, phase-flipped particles for the search, Wiener class averages.

Oracles are independent of the code under test: :func:`ctf.ctf_images` (the CTF), ``images.transform``
applied to a CTF-modulated image (the class-frame CTF), ``ctf.phase_flip`` (the flip), the same
particles made without CTF (the amplitudes a correct average must restore) and the true views
(classification).
"""
import os

import numpy as np
import pytest

from cryoralign_plugin.engine import align, cli, ctf, ctf_correction as cc, loop, parallel, references
from cryoralign_plugin.engine import images as imgops
from cryoralign_plugin.engine import synthetic
from cryoralign_plugin.engine.backends import get_backend
from cryoralign_plugin.engine.errors import InputError
from cryoralign_plugin.engine.settings import Settings
from cryoralign_plugin.engine.sources import ArraySource
from oracles import registered
from ranks import same_on_one_and_two_ranks

quiet = lambda *_: None
REQUIRED = ["--particles", "p.star", "--out", "out"]


def columns_of(truth, **changes):
    values = {key: truth[key] for key in synthetic.CTF_KEYS}
    values.update(changes)
    return ctf.CtfColumns(**values, pixel_size=truth["pixel_size"])


def ctf_particles(views, n, snr, seed, **sim):
    """CTF particles (``CtfSimulation(**sim)``), their classes, parameters and CtfColumns."""
    images, classes, params, truth = synthetic.make_particles(views, n, snr=snr, seed=seed,
                                                              ctf=synthetic.CtfSimulation(**sim))
    return images, classes, params, columns_of(truth)


def context(images, columns, mode, threads=2, pixel_size=None, cache_dir=None, **settings):
    source = ArraySource(images, pixel_size=pixel_size, ctf=columns)
    return loop.Context(source, Settings(ctf=mode, threads=threads, **settings), parallel.Serial(),
                        get_backend("cpu", threads), quiet, cache_dir)


@pytest.fixture(scope="module")
def small():
    """120 CTF particles of 3 views, 48 px at 2.5 A/px (defocus 0.8-3 um, 5% astigmatism)."""
    views = synthetic.slicem_references(3, 48, seed=2)
    return (views,) + ctf_particles(views, 120, 1.0, 3)


# ---------------------------------------------------------------------------------------------
# The CTF on the grid and in the class frame

@pytest.mark.parametrize("intact,phase,bfactor", [(False, 0.0, 0.0), (True, 0.0, 0.0), (False, 35.0, 60.0),
                                                   (True, 80.0, 20.0)])
def test_the_fast_ctf_is_ctf_images(intact, phase, bfactor):
    rng = np.random.default_rng(0)
    n = 50
    du = rng.uniform(3e3, 4e4, n)
    cols = ctf.CtfColumns(du, du * rng.uniform(0.8, 1.0, n), rng.uniform(-180, 360, n), rng.choice([200., 300.], n),
                          rng.uniform(0, 4, n), rng.uniform(0, 0.3, n), phase, bfactor, False,
                          rng.choice([1.0, 1.7], n))
    corr = cc.Correction("wiener", cols, 40, None, intact)
    got = corr.ctfs(np.arange(n))
    want = cols.images(np.arange(n), 40, intact_first_peak=intact)
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)


def _best_angle(power, band, ctf_args, box, pixel_size):
    """The astigmatism angle (0.5 deg grid) whose CTF^2 correlates best with ``power`` in ``band``."""
    angles = np.arange(0, 180, 0.5)
    du, dv = ctf_args
    model = ctf.ctf_images(du, dv, angles, 300.0, 2.7, 0.1, box=box, pixel_size=pixel_size) ** 2
    scores = [np.corrcoef(power[band], m[band])[0, 1] for m in model]
    return angles[int(np.argmax(scores))], max(scores)


@pytest.mark.parametrize("params", [(40, 0, 0, 0), (-75, 1.5, -2, 0), (0, 0, 0, 1), (123, -1, 2.5, 1),
                                    (200, 0.5, 0.5, 1)])
def test_the_class_frame_ctf_is_the_ctf_with_its_angle_moved(params):
    # an astigmatic CTF-modulated blob, moved by images.transform: its power spectrum must be the
    # CTF^2 with the angle class_frame_angles gives (alpha - psi; psi - alpha when mirrored)
    box, px, du, dv, alpha = 128, 2.0, 16000.0, 10000.0, 30.0
    f = np.hypot(np.fft.fftfreq(box)[:, None], np.fft.rfftfreq(box)[None, :])
    blob = np.exp(-(f / 0.15) ** 2)
    modulated = ctf.ctf_images(du, dv, alpha, 300.0, 2.7, 0.1, box=box, pixel_size=px)[0] * blob
    image = np.fft.fftshift(np.fft.irfft2(modulated, s=(box, box))).astype(np.float32)
    p = np.array([params], np.float64)
    power = np.abs(np.fft.rfft2(imgops.transform(image[None], p)[0])) ** 2 / blob ** 2
    band = (f > 0.04) & (f < 0.3)
    best, score = _best_angle(power, band, (du, dv), box, px)
    rule = cc.class_frame_angles([alpha], p)[0] % 180
    assert abs((best - rule + 90) % 180 - 90) <= 0.5, (best, rule)
    assert score > 0.98
    wrong = (alpha + params[0]) % 180                # the other sense of rotation
    if abs((wrong - rule + 90) % 180 - 90) > 5:
        assert abs((best - wrong + 90) % 180 - 90) > 5


def test_weights_are_the_fixed_point_sums_of_class_frame_ctf2_whatever_the_threads():
    rng = np.random.default_rng(1)
    n, k, box = 37, 3, 32
    du = rng.uniform(5e3, 3e4, n)
    cols = ctf.CtfColumns(du, du * 0.9, rng.uniform(0, 180, n), 300.0, 2.7, 0.1, 0.0, 0.0, False, 2.0)
    params = np.column_stack([rng.uniform(0, 360, n), rng.uniform(-2, 2, (n, 2)), rng.integers(0, 2, n)])
    classes = rng.integers(-1, k, n)
    parity = np.arange(n) % 2
    want = np.zeros((k, 2, box, box // 2 + 1), np.int64)
    angles = np.where(params[:, 3] > 0.5, params[:, 0] - cols.defocus_angle, cols.defocus_angle - params[:, 0])
    squared = ctf.ctf_images(cols.defocus_u, cols.defocus_v, angles, 300.0, 2.7, 0.1, box=box,
                             pixel_size=2.0).astype(np.float64) ** 2
    for i in np.flatnonzero(classes >= 0):
        want[classes[i], parity[i]] += np.rint(squared[i] * imgops.FIXED_POINT).astype(np.int64)
    got = {t: cc.Correction("wiener", cols, box, None, threads=t).weights(np.arange(n), params, classes, parity, k)
           for t in (1, 3)}
    np.testing.assert_array_equal(got[1], got[3])
    # the kernel's CTF equals ctf_images to float32 rounding, so a few units of 2^-24 may differ
    assert np.abs(got[1] - want).max() <= 8 * n


def test_the_ctf_work_on_a_particle_does_not_depend_on_its_batch_or_the_threads(small):
    views, images, classes, params, cols = small
    n = len(images)
    whole = cc.Correction("wiener", cols, 48, None, threads=1)
    split = cc.Correction("wiener", cols, 48, None, threads=2)
    index = np.arange(n)
    pieces = [slice(0, 33), slice(33, 34), slice(34, 100), slice(100, n)]
    for method in ("for_search", "weighted"):
        a = getattr(whole, method)(images, index)
        b = np.concatenate([getattr(split, method)(images[p], index[p]) for p in pieces])
        np.testing.assert_array_equal(a, b)
    parity = index % 2
    w = whole.weights(index, params, classes, parity, 3)
    np.testing.assert_array_equal(w, sum(split.weights(index[p], params[p], classes[p], parity[p], 3)
                                         for p in pieces))


# ---------------------------------------------------------------------------------------------
# Modes, flags, messages

@pytest.mark.parametrize("requested,has_ctf,mode,reason", [
    (None, True, "wiener", "the input has CTF columns"),
    (None, False, "none", "the input has no CTF columns"),
    ("none", True, "none", "--ctf none"),
    ("none", False, "none", "--ctf none"),
    ("flip", True, "flip", "--ctf flip"),
    ("wiener", True, "wiener", "--ctf wiener"),
])
def test_the_mode_resolves(requested, has_ctf, mode, reason):
    assert cc.resolve_mode(requested, has_ctf) == (mode, reason)


@pytest.mark.parametrize("mode", ["flip", "wiener"])
def test_a_correction_on_data_without_ctf_is_an_input_error(mode):
    with pytest.raises(InputError) as err:
        cc.resolve_mode(mode, False)
    assert str(err.value) == ("--ctf %s needs CTF columns (rlnDefocusU, ...) in the input: add them or use "
                              "--ctf none" % mode)
    images = np.random.default_rng(0).standard_normal((6, 32, 32)).astype(np.float32)
    with pytest.raises(InputError, match="needs CTF columns"):
        align.align_reference_free(images, iterations=1, ctf=mode, log=quiet)


def test_an_unknown_mode_is_an_input_error():
    with pytest.raises(InputError, match="use none, flip or wiener"):
        cc.resolve_mode("full", True)


def test_a_ctf_without_a_pixel_size_is_an_input_error(small):
    views, images, classes, params, cols = small
    bare = ctf.CtfColumns(*(getattr(cols, k) for k in synthetic.CTF_KEYS))      # no pixel size
    with pytest.raises(InputError, match="needs the pixel size of the images"):
        context(images, bare, "wiener")
    # the source's (at the input box: a maximum resolution at its Nyquist limit crops nothing)
    assert context(images, bare, "wiener", pixel_size=2.5, max_resolution=5.0).correction.pixel_size[0] == 2.5
    assert context(images, bare, "none").correction.mode == "none"                      # not needed


def test_the_flags_set_the_settings():
    parse = lambda *a: cli.settings_from(cli.build_parser().parse_args(list(a)))
    assert parse("rfa", *REQUIRED).ctf is None
    assert parse("rfa", *REQUIRED).ctf_intact_first_peak is False
    assert parse("mra", *REQUIRED, "--classes", "2", "--ctf", "flip").ctf == "flip"
    assert parse("rfa", *REQUIRED, "--ctf", "none").ctf == "none"
    assert parse("rfa", *REQUIRED, "--ctf-intact-first-peak").ctf_intact_first_peak is True
    with pytest.raises(SystemExit):
        parse("rfa", *REQUIRED, "--ctf", "full")


def test_the_log_says_which_correction_and_why(small):
    views, images, classes, params, cols = small
    for ctf_columns, mode, line in [
            (cols, None, "CTF correction: wiener (the input has CTF columns)"),
            (cols, "flip", "CTF correction: flip (--ctf flip)"),
            (cols, "none", "CTF correction: none (--ctf none)"),
            (None, None, "CTF correction: none (the input has no CTF columns)")]:
        lines = []
        align.align_reference_free(ArraySource(images, ctf=ctf_columns), iterations=1, ctf=mode, log=lines.append)
        assert line in lines


def test_intact_first_peak_reaches_the_ctf(small):
    views, images, classes, params, cols = small
    ctx = context(images, cols, "wiener", ctf_intact_first_peak=True)
    assert ctx.correction.intact_first_peak
    np.testing.assert_allclose(ctx.correction.ctfs([0, 5]), cols.images([0, 5], 48, intact_first_peak=True),
                               atol=2e-6)
    lines = []
    align.align_reference_free(ArraySource(images, ctf=cols), iterations=1, ctf_intact_first_peak=True,
                               log=lines.append)
    assert any(line.startswith("CTF correction: wiener") and "first peak" in line for line in lines)


# ---------------------------------------------------------------------------------------------
# The search sees phase-flipped particles, flipped once

def test_the_search_reads_phase_flipped_particles_normalised_after_the_flip(small):
    views, images, classes, params, cols = small
    ctx = context(images, cols, "wiener")
    batch = np.arange(10, 30)
    ctfs = cols.images(batch, 48)
    want = imgops.normalise(ctf.phase_flip(images[batch], ctfs), ctx.radius)
    np.testing.assert_allclose(ctx.read(batch), want, atol=2e-4)
    assert np.abs(ctx.read(batch) - imgops.normalise(images[batch], ctx.radius)).max() > 0.5  # it did flip
    np.testing.assert_array_equal(context(images, cols, "none").read(batch),
                                  imgops.normalise(images[batch], ctx.radius))


def test_a_run_flips_and_weights_each_particle_once_and_reads_the_same_images_again(small, tmp_path):
    views, images, classes, params, cols = small
    cached = context(images, cols, "wiener", cache_dir=str(tmp_path))
    fresh = context(images, cols, "wiener")                       # no folder: derived on every read
    first, again = np.arange(10, 40), np.arange(0, 120, 7)
    np.testing.assert_array_equal(cached.read(first), fresh.read(first))
    np.testing.assert_array_equal(cached.read(again), fresh.read(again))   # partly from the cache
    assert cached.images.cache.cached.sum() == len(np.union1d(first, again))
    assert not fresh.images.cache.cached.any() and os.listdir(tmp_path) == []   # unlinked
    # the Wiener numerator's images: the search's images times |CTF| (CTF from ctf_images)
    weighted = cached.weighted.read(first)
    want = np.fft.irfft2(np.fft.rfft2(fresh.read(first)) * np.abs(cols.images(first, 48)), s=(48, 48))
    np.testing.assert_allclose(weighted, want, atol=2e-4)
    np.testing.assert_array_equal(cached.weighted.read(first), weighted)


def test_already_flipped_particles_are_never_flipped_twice(small):
    views, images, classes, params, cols = small
    n = len(images)
    done = np.arange(n) % 3 == 0                     # a third of the data arrive phase-flipped
    ctfs = cols.images(np.arange(n), 48)
    given = images.copy()
    given[done] = ctf.phase_flip(images[done], ctfs[done])
    marked = columns_of({**{k: getattr(cols, k) for k in synthetic.CTF_KEYS}, "pixel_size": 2.5},
                        phase_flipped=done)
    ctx = context(given, marked, "flip")
    read = ctx.read(np.arange(n))
    # the flipped ones are read exactly as given; the others flipped; all match the flipped originals
    np.testing.assert_array_equal(read[done], imgops.normalise(given[done], ctx.radius))
    reference = context(images, cols, "flip").read(np.arange(n))
    np.testing.assert_allclose(read, reference, atol=5e-4)
    assert "40 of 120 particles are already phase-flipped" in ctx.correction.describe()
    # the Wiener averages of the two inputs agree too (|CTF| times flipped = CTF times unflipped)
    counts = references.class_counts(classes, np.arange(n) % 2, 3)
    a = loop.class_references(context(given, marked, "wiener"), params, classes, counts)[2]
    b = loop.class_references(context(images, cols, "wiener"), params, classes, counts)[2]
    assert np.abs(a - b).max() < 0.02 * np.abs(b).max()


def test_mode_none_is_the_run_without_ctf_bit_for_bit(small):
    views, images, classes, params, cols = small
    same = dict(n_classes=3, iterations=3, balanced_iterations=1, log=quiet)
    with_ctf = align.align_multi_reference(ArraySource(images, ctf=cols), ctf="none", **same)
    without = align.align_multi_reference(ArraySource(images), **same)
    for field in ("classes", "params", "scores", "averages", "references", "cutoffs"):
        np.testing.assert_array_equal(getattr(with_ctf, field), getattr(without, field))


def test_flip_averages_are_plain_averages_of_the_flipped_particles(small):
    views, images, classes, params, cols = small
    n = len(images)
    ctx = context(images, cols, "flip")
    counts = references.class_counts(classes, np.arange(n) % 2, 3)
    got = loop.class_references(ctx, params, classes, counts)
    flipped = imgops.normalise(ctf.phase_flip(images, cols.images(np.arange(n), 48)), ctx.radius)
    sums = imgops.class_sums(flipped, params, classes, np.arange(n) % 2, 3)
    want = references.build(sums, counts, ctx.radius, False)
    np.testing.assert_allclose(got[2], want[2], atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Wiener averages restore the amplitudes

def _rings(box):
    return imgops.radial_index(box).ravel()


def _gain(image, view):
    """Per ring, the amplitude of ``image`` along ``view``: Re sum(A conj V) / sum |V|^2."""
    box = view.shape[-1]
    a, v = np.fft.rfft2(image).ravel(), np.fft.rfft2(view).ravel()
    rings = _rings(box)
    return (np.bincount(rings, (a * np.conj(v)).real) / np.bincount(rings, np.abs(v) ** 2))[:box // 2 + 1]


def _power(image):
    box = image.shape[-1]
    rings = _rings(box)
    return (np.bincount(rings, np.abs(np.fft.rfft2(image).ravel()) ** 2) / np.bincount(rings))[:box // 2 + 1]


def test_wiener_averages_restore_the_amplitudes_that_flipping_leaves_ctf_weighted():
    # noise-free CTF particles of one view (defocus 0.8-3 um, 10% astigmatism, CTF applied on the
    # box), averaged with their TRUE parameters; the yardstick is the average of the same particles
    # made without CTF (same parameters, so the same interpolation), up to one scale factor (each
    # particle is normalised, and CTF particles have less variance).
    box, n = 64, 200
    view = synthetic.slicem_references(1, box, seed=3)
    sim = dict(pixel_size=2.0, defocus_range=(0.8, 3.0), astigmatism=0.1, pad=1)
    images, classes, params, cols = ctf_particles(view, n, float("inf"), 5, **sim)
    clean, _, same_params = synthetic.make_particles(view, n, snr=float("inf"), seed=5)
    np.testing.assert_array_equal(params, same_params)
    counts = references.class_counts(classes, np.arange(n) % 2, 1)
    average = {mode: loop.class_references(context(images, cols, mode), params, classes, counts)[2][0]
               for mode in ("wiener", "flip")}
    yardstick = loop.class_references(context(clean, None, "none"), params, classes, counts)[2][0]
    ctx = context(images, cols, "wiener")
    _, curves = cc.wiener_averages(*cc.wiener_pass(ctx, params, classes, 1), counts, ctx.radius)
    rings = np.arange(box // 2 + 1)
    used = (rings >= 1) & (rings <= 28) & (curves[0] > 0.9)
    assert used.sum() == 28
    g0, p0 = _gain(yardstick, view[0]), _power(yardstick)

    def deviation(values, reference):
        ratio = values[used] / reference[used]
        return np.abs(ratio / np.median(ratio) - 1).max()
    gain_dev = {m: deviation(_gain(a, view[0]), g0) for m, a in average.items()}
    power_dev = {m: deviation(_power(a), p0) for m, a in average.items()}
    # measured over rings 1..28 (FRC > 0.9 everywhere): wiener gain within 0.084 of flat, power within
    # 0.17; flip gain off by 0.70 and power by 0.91 (the lowest rings, where the CTF is ~Q0 = 0.1)
    assert gain_dev["wiener"] < 0.12 and power_dev["wiener"] < 0.25, (gain_dev, power_dev)
    assert gain_dev["flip"] > 0.5 and power_dev["flip"] > 0.5, (gain_dev, power_dev)


def test_the_ssnr_is_estimated_within_the_particle_mask(small):
    # half sums that agree inside the mask; independent noise outside it must not change the FRC the
    # SSNR comes from (it did when the FRC took the whole box: the averages were over-smoothed)
    views, images, classes, params, cols = small
    ctx = context(images, cols, "wiener")
    num, w = cc.wiener_pass(ctx, params, classes, 3)
    sums, weights = num[0] / imgops.FIXED_POINT, w[0] / imgops.FIXED_POINT
    outside = ~imgops.circular_mask(48, ctx.radius)
    noisy = sums + 10 * np.random.default_rng(0).standard_normal(sums.shape) * outside
    rings = imgops.radial_index(48).ravel()
    mask = imgops.soft_mask(48, ctx.radius, cc.SSNR_MASK_EDGE)
    clean_frc = cc.masked_frc(sums, weights, mask, rings, 35)
    np.testing.assert_allclose(cc.masked_frc(noisy, weights, mask, rings, 35), clean_frc, atol=1e-9)
    whole = np.ones((48, 48))
    assert np.abs(cc.masked_frc(noisy, weights, whole, rings, 35) - clean_frc)[1:25].mean() > 0.1
    assert clean_frc[1:10].min() > 0.9                          # SNR 1: the halves agree at low frequency
    # and the averages use it: their filter does not change with the noise outside the mask, so they
    # are linear in it (A(s + 2 n) - A(s) = 2 (A(s + n) - A(s))); a whole-box SSNR would not be
    counts = references.class_counts(classes, np.arange(len(images)) % 2, 3)
    extra = np.rint(noisy - sums) * imgops.FIXED_POINT
    with_noise = lambda times, radius: cc.wiener_averages(
        num + (np.arange(3) == 0)[:, None, None, None] * (times * extra).astype(np.int64), w, counts, radius)[0][0]
    for radius, linear in ((ctx.radius, True), (1000, False)):
        base = with_noise(0, radius)
        once, twice = with_noise(1, radius) - base, with_noise(2, radius) - base
        error = np.abs(twice - 2 * once).max() / np.abs(once).max()
        assert (error < 1e-3) if linear else (error > 0.05), (radius, error)


# ---------------------------------------------------------------------------------------------
# Runs: classification, reference-free alignment, exact across threads, --continue and MPI ranks

def _frc_to_truth(result, classes, views):
    """Mean over the found classes of the FRC of each average with its majority's true view."""
    curves = []
    for k in range(len(result.averages)):
        members = result.classes == k
        if members.any():
            true = np.bincount(classes[members], minlength=len(views)).argmax()
            curves.append(imgops.frc(result.averages[k], registered(result.averages[k], views[true])))
    return np.mean(curves, axis=0)


def test_a_classification_of_ctf_particles_is_pure_and_its_wiener_averages_match_the_views():
    # 300 particles of 4 views, 64 px at 2 A/px, defocus 0.8-2.5 um, SNR 0.15 (of the CTF-modulated
    # signal), 6 iterations; the same particles without CTF are the yardstick for purity.  Measured:
    # purity 1.0 without CTF, 1.0 wiener, 0.997 none; mean FRC with the true views over rings 4..24:
    # wiener 0.58 (flip 0.60), none 0.08 (its averages lose everything past the first CTF zero)
    box, k, n = 64, 4, 300
    views = synthetic.slicem_references(k, box, seed=0)
    images, classes, _, cols = ctf_particles(views, n, 0.15, 1, pixel_size=2.0, defocus_range=(0.8, 2.5))
    clean, same_classes, _ = synthetic.make_particles(views, n, snr=0.15, seed=1)
    run = lambda data, columns, mode: align.align_multi_reference(
        ArraySource(data, ctf=columns), n_classes=k, iterations=6, ctf=mode, log=quiet)
    without = run(clean, None, None)
    wiener, none = run(images, cols, "wiener"), run(images, cols, "none")
    baseline = synthetic.purity(without.classes, same_classes)
    assert synthetic.purity(wiener.classes, classes) >= baseline - 0.03
    frc_wiener = _frc_to_truth(wiener, classes, views)[4:25].mean()
    frc_none = _frc_to_truth(none, classes, views)[4:25].mean()
    assert frc_wiener > 0.5 and frc_none < 0.25, (frc_wiener, frc_none)


def test_reference_free_alignment_of_ctf_particles_uses_the_wiener_average():
    view = synthetic.slicem_references(1, 48, seed=4)
    images, _, truth, cols = ctf_particles(view, 160, 2.0, 2)
    result = align.align_reference_free(ArraySource(images, ctf=cols), iterations=5, radius=18, log=quiet)
    dpsi, dt, same_mirror = synthetic.register_errors(result.params, truth)
    assert same_mirror.all()
    assert ((dpsi < 3.0) & (dt < 1.0)).mean() >= 0.9
    # its average is the Wiener average of the particles with the parameters found
    ctx = context(images, cols, "wiener", radius=18)
    classes = np.zeros(len(images), np.int64)
    counts = references.class_counts(classes, np.arange(len(images)) % 2, 1)
    np.testing.assert_array_equal(result.averages, loop.class_references(ctx, result.params, classes, counts)[2])


@pytest.mark.parametrize("mode", ["flip", "wiener"])
def test_threads_and_batches_do_not_change_a_ctf_run(small, mode):
    views, images, classes, params, cols = small
    same = dict(n_classes=3, iterations=2, balanced_iterations=1, ctf=mode, log=quiet)
    one = align.align_multi_reference(ArraySource(images, ctf=cols), threads=1, batch_size=50, **same)
    two = align.align_multi_reference(ArraySource(images, ctf=cols), threads=2, batch_size=33, **same)
    for field in ("classes", "params", "averages", "references"):
        np.testing.assert_array_equal(getattr(one, field), getattr(two, field))


def test_continue_gives_the_result_of_one_ctf_run(small, tmp_path):
    views, images, classes, params, cols = small
    same = dict(n_classes=3, balanced_iterations=1, log=quiet)
    whole = align.align_multi_reference(ArraySource(images, ctf=cols), iterations=4, out_dir=str(tmp_path / "a"),
                                        **same)
    align.align_multi_reference(ArraySource(images, ctf=cols), iterations=2, out_dir=str(tmp_path / "b"), **same)
    again = align.align_multi_reference(ArraySource(images, ctf=cols), iterations=4, out_dir=str(tmp_path / "b"),
                                        resume=True, **same)
    for field in ("classes", "params", "averages", "references"):
        np.testing.assert_array_equal(getattr(whole, field), getattr(again, field))
    assert [r["iteration"] for r in again.history] == [1, 2, 3, 4]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["wiener", "flip"])
def test_two_mpi_ranks_give_the_single_process_result_with_ctf(tmp_path, mode):
    data = tmp_path / "data"
    synthetic.make_dataset(str(data), n_particles=151, box=48, n_classes=3, snr=1.0, seed=1, source="slicem",
                           ctf=synthetic.CtfSimulation())
    why = "the input has CTF columns" if mode == "wiener" else "--ctf flip"
    for done in same_on_one_and_two_ranks(tmp_path, "mra", "--particles", data / "particles.star", "--classes", 3,
                                          "--iterations", 3, "--threads", 1, "--batch-size", 40,
                                          *([] if mode == "wiener" else ["--ctf", mode]), timeout=600):
        assert "CTF correction: %s (%s)" % (mode, why) in done.stdout
