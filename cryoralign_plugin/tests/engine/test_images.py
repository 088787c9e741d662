"""engine.images: masks, normalisation, applying parameters, fixed-point class sums, FRC, filters."""
import numpy as np
import pytest

from cryoralign_plugin.engine import geometry as g
from cryoralign_plugin.engine import images as im
from cryoralign_plugin.engine.errors import InputError


def smooth_images(count, box, seed, cutoff=0.15):
    """Band-limited random images (cubic interpolation of them is accurate), unit-ish variance."""
    noise = np.random.default_rng(seed).standard_normal((count, box, box)).astype(np.float32)
    out = np.stack([im.lowpass_tanh(n, cutoff) for n in noise])
    return out / out.std()


def gaussian(box, x0, y0, sigma=2.0):
    """A blob centered at ``(x0, y0)`` px from the image center (x = column, y = row)."""
    y, x = np.indices((box, box)) - box // 2
    return np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma ** 2)).astype(np.float32)


def centroid(image):
    """``(x, y)`` of the center of mass, from the center, over the whole image."""
    box = image.shape[-1]
    y, x = np.indices(image.shape) - box // 2
    return np.array([(image * x).sum(), (image * y).sum()]) / image.sum()


# ---------------------------------------------------------------------------------------------
# Masks and normalisation

@pytest.mark.parametrize("box,radius", [(16, 5), (17, 6.5), (32, 14), (33, 0)])
def test_circular_mask_is_the_disc_around_the_center_pixel(box, radius):
    mask = im.circular_mask(box, radius)
    c = box // 2
    expected = [[(x - c) ** 2 + (y - c) ** 2 <= radius ** 2 for x in range(box)] for y in range(box)]
    np.testing.assert_array_equal(mask, expected)
    assert mask[c, c]


def test_normalise_zero_mean_outside_unit_variance_inside():
    rng = np.random.default_rng(1)
    images = (rng.standard_normal((6, 40, 40)) * rng.uniform(0.5, 20, (6, 1, 1))
              + rng.uniform(-50, 50, (6, 1, 1))).astype(np.float32)
    images[:, 15:25, 15:25] += 7.0                      # a "particle" brighter than the background
    radius = 14
    out = im.normalise(images, radius)
    mask = im.circular_mask(40, radius)
    assert out.dtype == np.float32 and out.shape == images.shape
    np.testing.assert_allclose(out[:, ~mask].mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(out[:, mask].std(axis=1), 1.0, rtol=1e-5)
    # the same affine map computed independently in float64
    x = images.astype(np.float64)
    expected = (x - x[:, ~mask].mean(axis=1)[:, None, None]) / x[:, mask].std(axis=1)[:, None, None]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_normalise_refuses_blank_images():
    images = np.random.default_rng(2).standard_normal((4, 24, 24)).astype(np.float32)
    images[2] = 3.0
    with pytest.raises(InputError, match=r"\b3\b"):     # 1-based number of the blank image
        im.normalise(images, 10)


# ---------------------------------------------------------------------------------------------
# Applying parameters (geometry's convention: rotate by psi, translate, then mirror)

def test_rotation_by_90_degrees_is_rot90():
    # R(90) = [[0, 1], [-1, 0]] maps (x, y) to (y, -x): the content turns like np.rot90 (k=1) does.
    # An odd box keeps rot90's center on the center pixel; samples land on pixels, so it is exact.
    images = np.random.default_rng(3).standard_normal((2, 33, 33)).astype(np.float32)
    out = im.transform(images, [[90.0, 0, 0, 0], [270.0, 0, 0, 0]])
    np.testing.assert_allclose(out[0], np.rot90(images[0], 1), atol=1e-5)
    np.testing.assert_allclose(out[1], np.rot90(images[1], -1), atol=1e-5)


def test_integer_shift_and_mirror_are_exact():
    images = np.random.default_rng(4).standard_normal((2, 32, 32)).astype(np.float32)
    out = im.transform(images, [[0.0, 3, -2, 0], [0.0, 0, 0, 1]])
    # content moves by (+3, -2): out[y, x] = in[y + 2, x - 3]
    np.testing.assert_allclose(out[0, 2:-2, 5:-5], images[0, 4:, 2:-8], atol=1e-6)
    # mirror (x -> -x) about the center column 16: out[:, x] = in[:, 32 - x]; column 0 has no partner (zero)
    np.testing.assert_allclose(out[1][:, 1:], images[1][:, :0:-1], atol=1e-6)
    np.testing.assert_allclose(out[1][:, 0], 0.0, atol=1e-6)


def test_transform_moves_a_point_where_the_matrix_says():
    box = 64
    params = np.array([[30.0, 2.0, -3.0, 0], [125.0, -1.5, 2.5, 1], [260.0, 0.5, 0.0, 1]])
    source = np.stack([gaussian(box, 7.0, -4.0)] * 3)
    out = im.transform(source, params)
    for p, o in zip(params, out):
        m = g.params_to_matrix(p)[0]
        np.testing.assert_allclose(centroid(o), m[:2, :2] @ [7.0, -4.0] + m[:2, 2], atol=0.02)
        np.testing.assert_allclose(o.sum(), source[0].sum(), rtol=1e-3)


def test_transform_then_inverse_returns_the_image_in_the_interior():
    box = 64
    images = smooth_images(4, box, seed=5)
    params = np.array([[37.0, 2.5, -1.5, 0], [200.0, -3.0, 1.0, 1], [90.0, 0, 0, 1], [313.3, 0.7, 2.2, 0]])
    back = im.transform(im.transform(images, params), g.inverse(params))
    interior = im.circular_mask(box, box // 2 - 8)      # far from the box edge (pixels outside are 0)
    err = (back - images)[:, interior]
    # two cubic resamplings of a tanh-filtered (cutoff 0.15 cycles/px) image: ~1% rms, <5% worst
    assert np.sqrt((err ** 2).mean()) < 0.015
    assert np.abs(err).max() < 0.05


def test_transforms_compose_like_combine():
    box = 64
    images = smooth_images(3, box, seed=6, cutoff=0.1)
    first = np.array([[20.0, 1.0, -2.0, 1], [140.0, 0.5, 0.5, 0], [300.0, -2.0, 0.0, 1]])
    second = np.array([[75.0, -1.0, 1.0, 0], [10.0, 2.0, -1.0, 1], [190.0, 0.0, 2.5, 1]])
    twice = im.transform(im.transform(images, first), second)
    once = im.transform(images, g.combine(first, second))
    interior = im.circular_mask(box, box // 2 - 10)
    assert np.abs((twice - once)[:, interior]).max() < 0.02


# ---------------------------------------------------------------------------------------------
# Fixed-point class sums

def test_class_sums_are_the_float_sums_within_half_a_fixed_point_unit_per_particle():
    box, count, n_classes = 24, 41, 3
    rng = np.random.default_rng(7)
    images = rng.standard_normal((count, box, box)).astype(np.float32)
    params = np.column_stack([rng.uniform(0, 360, count), rng.uniform(-3, 3, (count, 2)),
                              rng.integers(0, 2, count)])
    classes = rng.integers(-1, n_classes, count)         # -1: left out
    parity = np.arange(count) % 2
    sums = im.class_sums(images, params, classes, parity, n_classes)
    assert sums.dtype == np.int64 and sums.shape == (n_classes, 2, box, box)
    moved = im.transform(images, params).astype(np.float64)
    for k in range(n_classes):
        for h in range(2):
            members = (classes == k) & (parity == h)
            exact = moved[members].sum(axis=0)
            bound = 0.5 * members.sum() / im.FIXED_POINT + 1e-12   # rounding of each particle to 2^-24
            assert np.abs(sums[k, h] / im.FIXED_POINT - exact).max() <= bound
    assert sums.sum() != 0


def test_class_sums_do_not_depend_on_order_or_threads():
    box, count = 20, 30
    rng = np.random.default_rng(8)
    images = rng.standard_normal((count, box, box)).astype(np.float32)
    params = np.column_stack([rng.uniform(0, 360, count), rng.uniform(-2, 2, (count, 2)),
                              rng.integers(0, 2, count)])
    classes, parity = rng.integers(0, 2, count), rng.integers(0, 2, count)
    ref = im.class_sums(images, params, classes, parity, 2, threads=1)
    np.testing.assert_array_equal(im.class_sums(images, params, classes, parity, 2, threads=4), ref)
    order = rng.permutation(count)
    np.testing.assert_array_equal(
        im.class_sums(images[order], params[order], classes[order], parity[order], 2, threads=3), ref)
    # an empty class sums to zero
    assert not im.class_sums(images, params, np.zeros(count, int), parity, 2)[1].any()


# ---------------------------------------------------------------------------------------------
# FRC and its cutoff

def test_frc_of_an_image_with_itself_is_one_and_with_its_negative_minus_one():
    a = np.random.default_rng(9).standard_normal((48, 48))
    np.testing.assert_allclose(im.frc(a, a), 1.0, rtol=1e-12)
    np.testing.assert_allclose(im.frc(a, 2.5 * a), 1.0, rtol=1e-12)
    np.testing.assert_allclose(im.frc(a, -a), -1.0, rtol=1e-12)
    assert len(im.frc(a, a)) == 48 // 2 + 1


def test_frc_of_independent_noise_is_near_zero_and_of_half_noise_near_one_over_root_two():
    rng = np.random.default_rng(10)
    box = 128
    a, b, c = rng.standard_normal((3, box, box))
    rings = im.radial_index(box)
    half_plane = np.bincount(rings.ravel(), minlength=box // 2 + 1)[:box // 2 + 1]
    curve = im.frc(a, b)
    # each ring correlates n complex coefficients of independent noise: |FRC| ~ 1/sqrt(n)
    assert (np.abs(curve[4:]) < 5 / np.sqrt(half_plane[4:])).all()
    assert abs(curve[4:].mean()) < 0.02
    # signal + equal-power independent noise vs the signal: E FRC = 1/sqrt(2)
    assert abs(im.frc(a, a + c)[4:].mean() - 1 / np.sqrt(2)) < 0.02


def test_radial_index_is_the_rounded_frequency_radius():
    box = 10
    r = im.radial_index(box)
    assert r.shape == (box, box // 2 + 1)
    for iy in range(box):
        ky = iy if iy < box / 2 else iy - box
        for kx in range(box // 2 + 1):
            assert r[iy, kx] == int(np.rint(np.hypot(kx, ky)))


def test_frc_cutoff_uses_the_fsc_estimate():
    # fsc = 2r/(1+r): 0.34 -> 0.507 (kept), 0.30 -> 0.46 (below 0.5) at ring 4 of a 16 px curve
    curve = np.array([1.0, 0.9, 0.6, 0.34, 0.30, 0.9, 0.1, 0.0, 0.0])
    assert im.frc_cutoff(curve) == pytest.approx(4 / 16)
    assert im.frc_cutoff(np.ones(9)) == 0.5
    assert im.frc_cutoff(np.array([0.0, 0.9, 0.9, 0.1, 0.0])) == pytest.approx(3 / 8)  # ring 0 ignored
    assert im.frc_cutoff(curve, threshold=0.95) == pytest.approx(1 / 16)


# ---------------------------------------------------------------------------------------------
# Filters, shifts, center of mass

def tanh_response(f, cutoff, falloff):
    """SPARX filt_tanl: 0.5 [tanh(pi (f + fc) / (2 a fc)) - tanh(pi (f - fc) / (2 a fc))]."""
    w = 2 * falloff * cutoff
    return 0.5 * (np.tanh(np.pi * (f + cutoff) / w) - np.tanh(np.pi * (f - cutoff) / w))


@pytest.mark.parametrize("kx,ky", [(0, 0), (3, 0), (0, 5), (4, 3), (6, 8), (13, 0), (12, 12), (32, 0)])
def test_lowpass_tanh_scales_each_plane_wave_by_its_response(kx, ky):
    box, cutoff, falloff = 64, 0.15, 0.1
    y, x = np.indices((box, box))
    wave = np.cos(2 * np.pi * (kx * x + ky * y) / box + 0.3).astype(np.float32)
    out = im.lowpass_tanh(wave, cutoff, falloff)
    gain = tanh_response(np.hypot(kx, ky) / box, cutoff, falloff)
    np.testing.assert_allclose(out, gain * wave, atol=2e-6)


def test_lowpass_tanh_passes_below_halves_at_and_stops_above_the_cutoff():
    assert tanh_response(0.0, 0.2, 0.1) == pytest.approx(1.0, abs=1e-6)
    box = 64
    y, x = np.indices((box, box))
    for k, expected in [(2, 1.0), (int(0.25 * box), 0.5), (24, 0.0)]:
        wave = np.cos(2 * np.pi * k * x / box)
        out = im.lowpass_tanh(wave, 0.25, 0.1)
        assert np.abs(out).max() == pytest.approx(expected, abs=1e-3)


def test_fourier_shift_moves_content_towards_plus_x_and_plus_y():
    image = np.random.default_rng(11).standard_normal((32, 32)).astype(np.float32)
    np.testing.assert_allclose(im.fourier_shift(image, 3, -2), np.roll(image, (-2, 3), axis=(0, 1)), atol=1e-5)
    blob = gaussian(32, 0, 0)
    np.testing.assert_allclose(centroid(im.fourier_shift(blob, 1.5, 2.25)), [1.5, 2.25], atol=1e-3)


def test_center_of_mass_of_positive_density_inside_the_radius():
    box = 32
    image = gaussian(box, -3.0, 2.0, sigma=1.5) - 0.4 * gaussian(box, 5.0, -6.0, sigma=1.5)  # negative: ignored
    image[0, 0] = 100.0                                   # outside the radius: ignored
    dx, dy = im.center_of_mass(image, 12)
    assert (dx, dy) == pytest.approx((-3.0, 2.0), abs=0.01)
    assert im.center_of_mass(-np.abs(image), 12) == (0.0, 0.0)
