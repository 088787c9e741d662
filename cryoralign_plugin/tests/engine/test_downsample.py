"""engine.downsample: the Fourier crop, the internal box, the cropped source, and runs at an internal box.

Oracles: a band-limited image (a sum of low-frequency cosines) sampled on the coarser grid; a brute-force
scan of every smaller box; the CTF of the input box at the frequencies the crop keeps; the true classes,
parameters and views of synthetic particles.
"""
import os
import types

import numpy as np
import pytest

from cryoralign_plugin.engine import align, cli, ctf, ctf_correction, downsample, image_cache, mrc, outputs, synthetic
from cryoralign_plugin.engine import images as imgops
from cryoralign_plugin.engine.errors import InputError
from cryoralign_plugin.engine.geometry import sampling_limit
from cryoralign_plugin.engine.settings import MIN_MASK_RADIUS, Settings
from cryoralign_plugin.engine.sources import ArraySource
from oracles import registered
from ranks import same_on_one_and_two_ranks

quiet = lambda *_: None


def cosines(n, terms):
    """Sum of ``a cos(2 pi (kx x + ky y) + phase)`` sampled on an ``n`` grid, x in boxes from the center pixel."""
    x = (np.arange(n) - n // 2) / n
    out = np.zeros((n, n))
    for a, kx, ky, phase in terms:
        out += a * np.cos(2 * np.pi * (kx * x[None, :] + ky * x[:, None]) + phase)
    return out


@pytest.mark.parametrize("n,m", [(64, 32), (128, 48), (65, 32), (63, 40), (50, 50)])
def test_the_crop_of_a_band_limited_image_is_that_image_on_the_coarser_grid(n, m):
    rng = np.random.default_rng(n + m)
    top = m // 2 - 1                                # below the cropped Nyquist frequency
    terms = [(rng.uniform(0.5, 2), rng.integers(-top, top + 1), rng.integers(-top, top + 1), rng.uniform(0, 6.3))
             for _ in range(12)] + [(1.5, 0, 0, 0.0)]
    fine = np.stack([cosines(n, terms), cosines(n, terms[:4])]).astype(np.float32)
    want = np.stack([cosines(m, terms), cosines(m, terms[:4])])
    got = downsample.fourier_crop(fine, m)
    assert got.shape == (2, m, m) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max())


def test_the_crop_drops_what_lies_beyond_its_nyquist_frequency():
    n, m = 64, 32
    low = cosines(n, [(1.0, 3, -5, 0.3)])
    high = cosines(n, [(1.0, 16, 0, 0.0), (1.0, 3, 20, 1.0)])      # at and beyond the cropped Nyquist
    np.testing.assert_allclose(downsample.fourier_crop((low + high)[None], m)[0], cosines(m, [(1.0, 3, -5, 0.3)]),
                               atol=1e-5)


def test_normalised_scores_do_not_change_with_the_crop():
    # the same band-limited particle and reference at two boxes: one correlation coefficient
    terms = [(1.0, 2, 1, 0.2), (0.7, -3, 4, 1.0), (0.4, 5, -2, 2.0)]
    n, m, r = 96, 48, 20
    a, b = cosines(n, terms), cosines(n, terms[:2])
    small = downsample.fourier_crop(np.stack([a, b]).astype(np.float32), m)
    corr = lambda x, y, mask: np.corrcoef(x[mask], y[mask])[0, 1]
    assert abs(corr(a, b, imgops.circular_mask(n, r * 2)) - corr(small[0], small[1], imgops.circular_mask(m, r))) \
        < 0.01


# ---------------------------------------------------------------------------------------------
# The internal box

def _brute_force(box, px, resolution, radius_a, shift):
    """The smallest even box of prime factors 2, 3, 5 below ``box`` that reaches ``resolution`` and
    holds a mask of ``radius_a`` A plus ``shift`` internal px; else ``box``."""
    for m in range(2, box, 2):
        f = box / m
        rest = m
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        radius = int(np.floor(radius_a / (px * f) + 1e-6))
        if rest == 1 and 2 * px * f <= resolution + 1e-9 and radius + shift <= sampling_limit(m) \
                and radius >= MIN_MASK_RADIUS:
            return m
    return box


@pytest.mark.parametrize("box,px,resolution,diameter", [
    (256, 1.0, 8.0, 200.0), (256, 1.17, 6.0, 240.0), (300, 1.06, 8.0, 250.0), (128, 2.0, 8.0, 200.0),
    (96, 2.0, 6.0, 150.0), (200, 1.3, 10.0, 100.0), (64, 2.0, 4.0, 100.0), (180, 1.5, 7.0, 230.0)])
def test_the_internal_box_is_the_smallest_that_reaches_the_resolution_and_holds_mask_and_shifts(
        box, px, resolution, diameter):
    scale = downsample.plan(box, px, Settings(max_resolution=resolution, mask_diameter=diameter))
    assert scale.internal_box == _brute_force(box, px, resolution, diameter / 2, 3.0)
    assert 2 * scale.internal_pixel_size <= resolution + 1e-9 or not scale.crops
    assert scale.radius * scale.internal_pixel_size <= diameter / 2 < (scale.radius + 1) * scale.internal_pixel_size
    assert (scale.shift_range, scale.shift_step) == (3.0, 1.0)       # automatic: internal px


def test_known_internal_boxes_and_the_automatic_resolution():
    assert downsample.plan(256, 1.0, Settings(max_resolution=8.0)).internal_box == 64
    assert downsample.plan(256, 1.17, Settings()).internal_box == 100          # 6 A: 2 x 1.17 x 256 / 6 = 99.8
    assert downsample.plan(96, 2.0, Settings()).internal_box == 64               # 6 A, mask radius 27 px
    assert downsample.plan(48, 2.0, Settings()).internal_box == 48               # 32 px leaves a radius < 16
    assert downsample.plan(48, 2.0, Settings(max_resolution=6.0)).internal_box == 32    # asked: radius >= 8
    assert downsample.plan(64, 4.0, Settings()).internal_box == 64             # Nyquist 8 A is coarser than 6 A
    assert not downsample.plan(64, None, Settings()).crops                     # no pixel size: no cropping
    assert downsample.plan(64, None, Settings(internal_box=32)).internal_box == 32
    assert downsample.plan(256, 1.0, Settings(max_resolution=2.0)).internal_box == 256   # never above the input


def test_pixel_options_are_in_input_px_and_become_internal_px():
    scale = downsample.plan(256, 1.0, Settings(max_resolution=8.0, radius=100, shift_range=8.0, shift_step=2.0))
    assert (scale.internal_box, scale.radius, scale.shift_range, scale.shift_step) == (64, 25, 2.0, 0.5)
    np.testing.assert_array_equal(scale.to_input([[10.0, 1.0, -0.5, 1.0]]), [[10.0, 4.0, -2.0, 1.0]])
    assert scale.describe() == "internal box 64 px at 4 A/px (from 256 px at 1 A/px, factor 4)"


@pytest.mark.parametrize("box,px,settings,message", [
    (128, 2.0, Settings(mask_diameter=300.0),
     "--mask-diameter 300 A is larger than the box (128 px at 2 A/px = 256 A): give a diameter <= 256 A, or leave "
     "it out (automatic)"),
    (128, 2.0, Settings(max_resolution=3.0),
     "--max-resolution 3 A is finer than the input's Nyquist limit (2 x 2 A/px = 4 A): give --max-resolution >= 4 "
     "A, or leave it out (automatic)"),
    (128, 2.0, Settings(max_resolution=40.0, mask_diameter=200.0),
     "--max-resolution 40 A is too coarse for the mask: its 16 px internal box leaves a mask radius of 6 px (at "
     "least 8 needed): give --max-resolution <= 21.33 A, or leave it out (automatic)"),
    (64, None, Settings(mask_diameter=100.0),
     "--mask-diameter 100 is in A but the input has no pixel size: add rlnImagePixelSize to the STAR file "
     "(data_optics) or give --pixel-size, or give the option in px (--radius)"),
    (64, None, Settings(max_resolution=8.0),
     "--max-resolution 8 is in A but the input has no pixel size: add rlnImagePixelSize to the STAR file "
     "(data_optics) or give --pixel-size, or give the option in px (--internal-box)"),
    (64, 2.0, Settings(radius=20, mask_diameter=80.0),
     "--radius 20 and --mask-diameter 80 both give the mask: give only one (radius in input px, or diameter in A)"),
])
def test_bad_units_are_one_line_naming_the_value_and_the_fix(box, px, settings, message):
    settings.check()
    with pytest.raises(InputError) as err:
        downsample.plan(box, px, settings)
    assert str(err.value) == message


def test_the_coarsest_resolution_offered_is_accepted():
    bound = 21.33                    # from the message above
    assert downsample.plan(128, 2.0, Settings(max_resolution=bound, mask_diameter=200.0)).radius >= MIN_MASK_RADIUS


# ---------------------------------------------------------------------------------------------
# The cropped source

def test_the_cropped_source_scales_pixels_prior_and_ctf(tmp_path):
    views = synthetic.slicem_references(2, 64, seed=1)
    images, _, params, truth = synthetic.make_particles(views, 12, snr=1.0, seed=2,
                                                        ctf=synthetic.CtfSimulation(pixel_size=2.0))
    cols = ctf.CtfColumns(**{k: truth[k] for k in synthetic.CTF_KEYS}, pixel_size=2.0)
    source = ArraySource(images, pixel_size=2.0, prior=params, ctf=cols)
    cropped = downsample.CroppedSource(source, 32, threads=1, cache_dir=str(tmp_path))
    assert (cropped.box, cropped.pixel_size, cropped.count) == (32, 4.0, 12)
    np.testing.assert_array_equal(cropped.read([3, 0]), downsample.fourier_crop(images[[3, 0]], 32))
    # read again (from the cache where cropped before) in any order: the same images
    np.testing.assert_array_equal(cropped.read([0, 5, 3]), downsample.fourier_crop(images[[0, 5, 3]], 32))
    assert cropped.cache.cached.sum() == 3 and os.listdir(tmp_path) == []   # kept in the folder, unlinked
    np.testing.assert_array_equal(cropped.prior[:, [0, 3]], params[:, [0, 3]])
    np.testing.assert_allclose(cropped.prior[:, 1:3], params[:, 1:3] / 2)
    np.testing.assert_array_equal(cropped.ctf.pixel_size, np.full(12, 4.0))
    # the cropped images' CTF is the input's at the same frequencies (Nyquist row and column left out)
    full = ctf_correction.resolve(Settings(ctf="wiener"), source).ctfs(np.arange(12))
    small = ctf_correction.resolve(Settings(ctf="wiener"), cropped).ctfs(np.arange(12))
    rows = np.r_[0:16, 49:64]                  # ky 0..15 and -15..-1
    np.testing.assert_allclose(np.delete(small, 16, axis=1)[:, :, :16], full[:, rows, :16], atol=2e-5)


def test_without_room_for_the_cache_particles_are_cropped_on_every_read(monkeypatch, tmp_path):
    images = np.random.default_rng(0).standard_normal((6, 40, 40)).astype(np.float32)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(image_cache, "tempfile", types.SimpleNamespace(TemporaryFile=full))
    cropped = downsample.CroppedSource(ArraySource(images), 20, cache_dir=str(tmp_path))
    for _ in range(2):
        np.testing.assert_array_equal(cropped.read([4, 1]), downsample.fourier_crop(images[[4, 1]], 20))


# ---------------------------------------------------------------------------------------------
# Runs at an internal box

@pytest.fixture(scope="module")
def ctf_run(tmp_path_factory):
    """240 CTF particles of 4 views, 128 px at 2 A/px, classified at 8 A (internal box 64 px)."""
    box, k, n = 128, 4, 240
    views = synthetic.slicem_references(k, box, seed=0)
    images, classes, truth, ctf_truth = synthetic.make_particles(
        views, n, snr=0.3, seed=1, shift_range=4.0, ctf=synthetic.CtfSimulation(pixel_size=2.0,
                                                                                defocus_range=(0.8, 2.0)))
    cols = ctf.CtfColumns(**{key: ctf_truth[key] for key in synthetic.CTF_KEYS}, pixel_size=2.0)
    out = tmp_path_factory.mktemp("units") / "run"
    lines = []
    result = align.align_multi_reference(ArraySource(images, pixel_size=2.0, ctf=cols), n_classes=k, iterations=6,
                                         max_resolution=8.0, shift_range=8.0, out_dir=str(out), log=lines.append)
    return views, classes, truth, result, out, lines


def test_a_ctf_set_classified_at_an_internal_box_recovers_classes_angles_and_shifts_in_input_px(ctf_run):
    views, classes, truth, result, out, lines = ctf_run
    assert "internal box 64 px at 4 A/px (from 128 px at 2 A/px, factor 2)" in lines
    assert synthetic.purity(result.classes, classes) >= 0.97
    # within each found class, one common transform from the truth (the class frame is arbitrary)
    for k in np.unique(result.classes):
        members = result.classes == k
        dpsi, dt, same_mirror = synthetic.register_errors(result.params[members], truth[members])
        assert same_mirror.mean() >= 0.95
        assert ((dpsi < 3.0) & (dt < 1.0)).mean() >= 0.9, (k, np.median(dpsi), np.median(dt))
    written = outputs.read_particles(str(out))
    np.testing.assert_allclose(written.params, result.params, atol=1e-4)     # particles.star: input px


def _zero_padded(image, box):
    """``image`` upsampled to ``box`` by zero-padding its spectrum (the oracle of an upsampled average)."""
    n = image.shape[-1]
    spectrum = np.fft.fftshift(np.fft.fft2(image))
    big = np.zeros((box, box), complex)
    lo = box // 2 - n // 2
    big[lo:lo + n, lo:lo + n] = spectrum
    return np.fft.ifft2(np.fft.ifftshift(big)).real * (box / n) ** 2


def test_the_final_averages_are_at_the_input_box_and_match_the_views_at_least_as_well(ctf_run):
    views, classes, truth, result, out, lines = ctf_run
    assert result.averages.shape == (4, 128, 128)
    stack = outputs.read_classes(str(out))
    assert len(stack) == 4
    internal = outputs.last_checkpoint(str(out))[1]["averages"]
    assert internal.shape == (4, 64, 64)
    # FRC with the registered true view: within the internal band (rings 4..31 of 128) the final averages
    # match at least as well as the internal ones upsampled (measured 0.80-0.91 vs 0.77-0.90), and beyond
    # it (where an upsampled average is zero) they carry the views' detail (measured 0.05-0.47, mean 0.29)
    beyond = []
    for k in range(4):
        true = np.bincount(classes[result.classes == k], minlength=4).argmax()
        view = registered(result.averages[k], views[true], step=2.0)
        final = imgops.frc(result.averages[k], view)
        upsampled = imgops.frc(_zero_padded(internal[k], 128).astype(np.float32), view)
        assert final[4:32].mean() >= upsampled[4:32].mean(), (k, final[4:32].mean(), upsampled[4:32].mean())
        beyond.append(final[33:50].mean())
    assert np.mean(beyond) > 0.15, beyond


def test_continue_at_an_internal_box_gives_the_result_of_one_run(tmp_path):
    views = synthetic.slicem_references(2, 64, seed=3)
    images, _, _, truth = synthetic.make_particles(views, 60, snr=1.0, seed=4,
                                                   ctf=synthetic.CtfSimulation(pixel_size=2.0))
    cols = ctf.CtfColumns(**{key: truth[key] for key in synthetic.CTF_KEYS}, pixel_size=2.0)
    run = lambda out, **more: align.align_multi_reference(
        ArraySource(images, pixel_size=2.0, ctf=cols), n_classes=2, balanced_iterations=1, max_resolution=8.0,
        out_dir=str(tmp_path / out), log=quiet, **more)
    whole = run("a", iterations=3)
    run("b", iterations=2)
    again = run("b", iterations=3, resume=True)
    for field in ("classes", "params", "averages", "references"):
        np.testing.assert_array_equal(getattr(whole, field), getattr(again, field))
    assert whole.averages.shape == (2, 64, 64) and whole.references.shape == (2, 32, 32)
    assert outputs.read_json(str(tmp_path / "b" / outputs.MANIFEST_JSON))["settings"]["internal_box"] == 32


def test_flip_final_averages_are_the_flipped_input_particles_averaged_with_input_px_shifts():
    views = synthetic.slicem_references(2, 64, seed=3)
    images, _, _, truth = synthetic.make_particles(views, 40, snr=1.0, seed=6,
                                                   ctf=synthetic.CtfSimulation(pixel_size=2.0))
    cols = ctf.CtfColumns(**{key: truth[key] for key in synthetic.CTF_KEYS}, pixel_size=2.0)
    result = align.align_multi_reference(ArraySource(images, pixel_size=2.0, ctf=cols), n_classes=2, iterations=2,
                                         max_resolution=8.0, ctf="flip", log=quiet)
    radius = downsample.plan(64, 2.0, Settings(max_resolution=8.0)).radius * 2      # input px
    flipped = imgops.normalise(ctf.phase_flip(images, cols.images(np.arange(40), 64)), radius)
    parity = np.arange(40) % 2
    sums = imgops.class_sums(flipped, result.params, result.classes, parity, 2)
    counts = np.bincount(result.classes, minlength=2)
    want = sums.sum(axis=1) / imgops.FIXED_POINT / counts[:, None, None]
    assert result.averages.shape == (2, 64, 64)
    np.testing.assert_allclose(result.averages, want, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# The command line

def test_the_command_line_takes_angstrom_and_writes_input_pixels(tmp_path, capsys):
    paths = synthetic.make_dataset(str(tmp_path / "data"), n_particles=40, box=64, n_classes=2, snr=2.0, seed=5,
                                   source="slicem", ctf=synthetic.CtfSimulation(pixel_size=2.0))
    out = tmp_path / "out"
    cli.main(["mra", "--particles", paths["particles_star"], "--out", str(out), "--classes", "2", "--iterations",
              "2", "--max-resolution", "8", "--mask-diameter", "80", "--shift-range", "4"])
    log = capsys.readouterr().out
    assert "internal box 32 px at 4 A/px (from 64 px at 2 A/px, factor 2)" in log
    assert mrc.read_stack(str(out / outputs.CLASSES_MRCS)).shape == (2, 64, 64)
    run = outputs.read_json(str(out / outputs.MANIFEST_JSON))["settings"]
    assert (run["internal_box"], run["radius"], run["shift_range"], run["shift_step"]) == (32, 10, 2.0, 1.0)
    truth = synthetic.read_truth(paths["truth"])
    found = outputs.read_particles(str(out))
    # shifts in input px: within one input px of the truth up to each class's common transform
    for k in np.unique(found.classes):
        members = found.classes == k
        _, dt, _ = synthetic.register_errors(found.params[members], truth[1][members])
        assert np.median(dt) < 1.0, np.median(dt)


@pytest.mark.parametrize("args,message", [
    (["--mask-diameter", "200"], "--mask-diameter 200 A is larger than the box (64 px at 2 A/px = 128 A)"),
    (["--max-resolution", "3"], "--max-resolution 3 A is finer than the input's Nyquist limit"),
    (["--max-resolution", "30"], "--max-resolution 30 A is too coarse for the mask"),
    (["--max-resolution", "0"], "--max-resolution 0: give a resolution > 0 A"),
])
def test_the_command_line_refuses_bad_units_in_one_line(tmp_path, capsys, args, message):
    paths = synthetic.make_dataset(str(tmp_path / "data"), n_particles=4, box=64, n_classes=1, snr=2.0, seed=5,
                                   ctf=synthetic.CtfSimulation(pixel_size=2.0))
    with pytest.raises(SystemExit) as done:
        cli.main(["rfa", "--particles", paths["particles_star"], "--out", str(tmp_path / "out"), *args])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cryoralign-engine: error: " + message) and "\n" not in err, err


def test_two_mpi_ranks_give_the_single_process_result_at_an_internal_box(tmp_path):
    paths = synthetic.make_dataset(str(tmp_path / "data"), n_particles=61, box=64, n_classes=2, snr=1.0, seed=2,
                                   source="slicem", ctf=synthetic.CtfSimulation(pixel_size=2.0))
    for done in same_on_one_and_two_ranks(tmp_path, "mra", "--particles", paths["particles_star"], "--classes", 2,
                                          "--iterations", 2, "--threads", 1, "--batch-size", 16,
                                          "--max-resolution", 8):
        assert "internal box 32 px" in done.stdout


@pytest.mark.parametrize("with_ctf,kept", [(False, {".cropped-"}), (True, {".flipped-", ".weighted-"})])
def test_a_run_keeps_its_derived_particles_in_its_own_folder_only(monkeypatch, tmp_path, with_ctf, kept):
    """The caches (cropped particles; with CTF correction the phase-flipped and |CTF|-weighted ones
    instead) are the only files a run creates besides its outputs: they must be in the run's folder
    (a run writes nowhere else), and without a folder there are none."""
    made = synthetic.make_particles(synthetic.slicem_references(2, 64, seed=3), 40, snr=1.0, seed=4,
                                    ctf=synthetic.CtfSimulation(pixel_size=2.5) if with_ctf else None)
    images = made[0]
    if with_ctf:
        cols = ctf.CtfColumns(**{k: made[3][k] for k in synthetic.CTF_KEYS}, pixel_size=2.5)
        images = ArraySource(images, pixel_size=2.5, ctf=cols)
    folders, prefixes = [], set()
    real = image_cache.tempfile.TemporaryFile

    def recorded(*args, **kwargs):
        folders.append(kwargs.get("dir"))
        prefixes.add(kwargs.get("prefix"))
        return real(*args, **kwargs)
    monkeypatch.setattr(image_cache, "tempfile", types.SimpleNamespace(TemporaryFile=recorded))  # ours only
    settings = dict(iterations=2, threads=1, backend="cpu", internal_box=32)
    align.align_multi_reference(images, n_classes=2, log=lambda *_: None, **settings)
    assert folders == []
    out = tmp_path / "run"
    align.align_multi_reference(images, n_classes=2, out_dir=str(out), log=lambda *_: None, **settings)
    assert prefixes == kept
    assert folders and set(folders) == {str(out)}
