"""The CTF against computations written here from scratch: physical constants, scalar root finding,
and a plain FFT convolution."""
import dataclasses

import numpy as np
import pytest
from scipy.optimize import brentq

from cryoralign_plugin.engine import ctf
from cryoralign_plugin.engine.ctf import CtfParams
from cryoralign_plugin.engine.errors import InputError

# CODATA 2018 (exact since the SI redefinition, except the electron mass)
H, M0, E, C = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0


def lam_codata(kv):
    """lambda = h / sqrt(2 m0 e V (1 + e V / (2 m0 c^2))), in A."""
    v = kv * 1e3
    return H / np.sqrt(2 * M0 * E * v * (1 + E * v / (2 * M0 * C * C))) * 1e10


def lam_relion(kv):
    """RELION's rounded constants (ctf.cpp), which the oracles below use so that they can be compared
    to 1e-6: they are 6e-6 (relative) above CODATA 2018, enough to move chi by 1e-3 rad at Nyquist."""
    v = kv * 1e3
    return 12.2643247 / np.sqrt(v + 0.978466e-6 * v * v)


def chi_plus(s, dz, kv=300.0, cs_mm=2.7, q0=0.1, shift_deg=0.0):
    """chi(s) + phase shift + amplitude-contrast phase, from the textbook formula (numpy-vectorised)."""
    lam = lam_relion(kv)
    return (np.pi * lam * dz * s ** 2 - 0.5 * np.pi * cs_mm * 1e7 * lam ** 3 * s ** 4
            + np.radians(shift_deg) + np.arcsin(q0))    # arcsin(Q0) = atan(Q0 / sqrt(1 - Q0^2))


def root(dz, target):
    """s (1/A) where chi_plus (300 kV, Cs 2.7, Q0 0.1) first reaches target: brentq between 0 and 1.5x
    the Cs-free estimate, a bracket holding only the first crossing at these defoci."""
    upper = 1.5 * np.sqrt(target / (np.pi * lam_relion(300) * dz))
    return brentq(lambda s: chi_plus(s, dz) - target, 1e-6, upper, xtol=1e-12)


def grid_freqs(box, px):
    """Full fft2 grid frequencies (sy, sx) built from indices, not from np.fft.fftfreq."""
    k = np.arange(box)
    k = np.where(k < (box + 1) // 2, k, k - box) / (box * px)
    return k[:, None] * np.ones((1, box)), np.ones((box, 1)) * k[None, :]


def ctf_oracle(box, px, du, dv, angle_deg, kv=300.0, cs_mm=2.7, q0=0.1, shift_deg=0.0, bfac=0.0):
    """Independent full-grid CTF: polar angle per pixel, chi_plus, envelope."""
    sy, sx = grid_freqs(box, px)
    s = np.hypot(sx, sy)
    dz = 0.5 * (du + dv) + 0.5 * (du - dv) * np.cos(2 * (np.arctan2(sy, sx) - np.radians(angle_deg)))
    return np.sin(chi_plus(s, dz, kv, cs_mm, q0, shift_deg)) * np.exp(-bfac * s * s / 4)


def first_zero_along(values, box, px, theta_deg, half_width_deg=1.0):
    """First sign change of a full-grid CTF along the ray at theta from the x axis, linearly
    interpolated between the grid points that lie within half_width of the ray, sorted by s."""
    sy, sx = grid_freqs(box, px)
    s = np.hypot(sx, sy)
    diff = (np.degrees(np.arctan2(sy, sx)) - theta_deg + 180) % 360 - 180
    on = (np.abs(diff) < half_width_deg) & (s > 0)
    order = np.argsort(s[on])
    ss, vv = s[on][order], values[on][order]
    i = np.flatnonzero((vv[:-1] > 0) & (vv[1:] <= 0))[0]
    return ss[i] + (ss[i + 1] - ss[i]) * vv[i] / (vv[i] - vv[i + 1])


def test_wavelength_matches_codata_and_known_values():
    assert abs(ctf.wavelength(300) - 0.019688) < 1e-6
    assert abs(ctf.wavelength(200) - 0.025079) < 1e-6
    for kv in (80, 120, 200, 300):
        assert ctf.wavelength(kv) == pytest.approx(lam_relion(kv), rel=1e-12)
        assert ctf.wavelength(kv) == pytest.approx(lam_codata(kv), rel=1e-5)


def test_first_zero_of_unastigmatic_ctf():
    """The first zero along x of a 512 px, 1 A/px grid, linearly interpolated, is within 0.01 A
    (in 1/s) of brentq's root of chi + atan(Q0/sqrt(1-Q0^2)) = pi, and at ctf.md's 20.16 A."""
    params = CtfParams(20000, 20000, 0, 300, 2.7, 0.1)
    full = ctf.ctf_image(params, 512, 1.0, rfft=False)
    expected = root(20000, np.pi)
    assert 1 / expected == pytest.approx(20.16, abs=0.005)
    for theta in (0, 37, 90, 200):                       # the same everywhere without astigmatism
        assert 1 / first_zero_along(full, 512, 1.0, theta) == pytest.approx(1 / expected, abs=0.01)


def test_origin_is_q0_and_first_lobe_positive():
    for q0 in (0.0, 0.07, 0.1, 0.3):
        values = ctf.ctf_image(CtfParams(15000, 12000, 40, 300, 2.7, q0), 64, 2.0)
        assert values[0, 0] == np.float32(q0)
    values = ctf.ctf_image(CtfParams(20000, 20000, 0, 300, 2.7, 0.1), 512, 1.0)
    s = np.fft.rfftfreq(512, 1.0)
    lobe = (s > 0) & (s < root(20000, np.pi) * 0.99)
    assert np.all(values[0, lobe] > 0) and values[0, lobe].max() > 0.99


def test_astigmatism_direction_and_axes():
    """dU along the angle from x (columns), dV 90 degrees away, against brentq roots for each defocus
    (U and V zeros differ by ~2.6 A; 0.02 A is allowed)."""
    box, px = 512, 1.0
    zu, zv = 1 / root(25000, np.pi), 1 / root(15000, np.pi)
    assert abs(zu - zv) > 2
    full = ctf.ctf_image(CtfParams(25000, 15000, 30, 300, 2.7, 0.1), box, px, rfft=False)
    assert 1 / first_zero_along(full, box, px, 30) == pytest.approx(zu, abs=0.02)
    assert 1 / first_zero_along(full, box, px, 210) == pytest.approx(zu, abs=0.02)
    assert 1 / first_zero_along(full, box, px, 120) == pytest.approx(zv, abs=0.02)
    assert 1 / first_zero_along(full, box, px, -60) == pytest.approx(zv, abs=0.02)

    # angle 0: U along the column axis (row 0 of the array), V along the row axis (column 0)
    half = ctf.ctf_image(CtfParams(25000, 15000, 0, 300, 2.7, 0.1), box, px)
    s = np.arange(box // 2 + 1) / (box * px)
    for axis, zero in ((half[0, :], zu), (half[:box // 2 + 1, 0], zv)):
        i = np.argmax(axis <= 0)
        crossing = s[i - 1] + (s[i] - s[i - 1]) * axis[i - 1] / (axis[i - 1] - axis[i])
        assert 1 / crossing == pytest.approx(zero, abs=0.02)


def test_rfft_grid_is_the_left_part_of_the_fft_grid():
    params = CtfParams(18000, 14000, 65, 300, 2.7, 0.1)
    for box in (63, 64):
        full, half = (ctf.ctf_image(params, box, 1.5, rfft=r) for r in (False, True))
        assert half.shape == (box, box // 2 + 1) and full.shape == (box, box)
        n = box // 2 if box % 2 == 0 else box // 2 + 1   # an even box's Nyquist column is +0.5 in rfft
        np.testing.assert_array_equal(half[:, :n], full[:, :n])


def test_against_oracle_phase_shift_and_bfactor():
    """Whole grid and hand-picked (row, column) frequencies against the independent formula, for a
    90 degree phase plate and a B-factor; float32 output, so 2e-6 tolerance."""
    box, px = 96, 1.7
    picks = [(0, 0), (0, 7), (5, 0), (3, -4), (-11, 9), (20, -30), (-48, 47)]
    for shift, bfac in ((0, 0), (90, 0), (0, 150), (90, 150)):
        params = CtfParams(16000, 11000, -25, 200, 2.0, 0.07, shift, bfac)
        got = ctf.ctf_image(params, box, px, rfft=False)
        want = ctf_oracle(box, px, 16000, 11000, -25, 200, 2.0, 0.07, shift, bfac)
        np.testing.assert_allclose(got, want, atol=2e-6)
        for ky, kx in picks:
            sy, sx = ky / (box * px), kx / (box * px)
            s = np.hypot(sx, sy)
            dz = 13500 + 2500 * np.cos(2 * (np.arctan2(sy, sx) + np.radians(25)))
            value = np.sin(chi_plus(s, dz, 200, 2.0, 0.07, shift)) * np.exp(-bfac * s * s / 4)
            assert got[ky, kx] == pytest.approx(value, abs=2e-6)
    # phase plate: CTF(0) = sin(90 deg + asin Q0) = sqrt(1 - Q0^2)
    origin = ctf.ctf_image(CtfParams(0, 0, 0, 300, 2.7, 0.1, 90), 16, 1.0)[0, 0]
    assert origin == pytest.approx(np.sqrt(0.99), abs=1e-7)
    # B-factor: exactly the envelope exp(-B s^2/4) on top of the undamped CTF
    plain = ctf.ctf_image(CtfParams(16000, 11000, -25, 200, 2.0, 0.07), box, px)
    damped = ctf.ctf_image(CtfParams(16000, 11000, -25, 200, 2.0, 0.07, 0, 150), box, px)
    s2 = (np.fft.fftfreq(box, px) ** 2)[:, None] + (np.fft.rfftfreq(box, px) ** 2)[None, :]
    big = np.abs(plain) > 0.1
    np.testing.assert_allclose(damped[big] / plain[big], np.exp(-150 * s2[big] / 4), rtol=1e-5)


def band_max(s, dz, shift, samples=1000):
    """Brute-force first-peak test: max of |chi + offset| over the ray from 0 to s (fixed dz), densely
    sampled; a point is below the first peak iff this stays under pi/2."""
    t = np.linspace(0, 1, samples)
    return np.array([np.abs(chi_plus(s[i][:, None] * t, dz[i][:, None], shift_deg=shift)).max(axis=1)
                     for i in range(len(s))])


@pytest.mark.parametrize("du, dv, angle, px, shift", [
    (40000, 40000, 0, 2.0, 0),      # very high defocus: what the option is for
    (60000, 35000, 50, 4.0, 0),     # astigmatic: the flat region is an ellipse
    (2000, 2000, 0, 0.25, 0),       # chi turns back within Nyquist and re-enters (-pi/2, pi/2)
    (300, 300, 0, 0.5, 0),          # chi never reaches pi/2: the first peak is the trough at -pi/2
    (20000, 20000, 0, 2.0, 60),     # phase plate: a narrower flat region
    (20000, 20000, 0, 2.0, 90),     # offset past pi/2: nothing to flatten
    (20000, 20000, 0, 2.0, -120)])  # offset below -pi/2: nothing to flatten either
def test_intact_first_peak(du, dv, angle, px, shift):
    """1 (times the B envelope) wherever |chi + offset| has stayed below pi/2 from the origin out along
    the point's direction, the plain CTF everywhere else (also where chi comes back into the band
    later, which RELION's pointwise test would flatten); 0.02 rad either side of pi/2 is not judged."""
    box = 128
    params = CtfParams(du, dv, angle, 300, 2.7, 0.1, shift)
    plain = ctf.ctf_image(params, box, px, rfft=False)
    intact = ctf.ctf_image(params, box, px, rfft=False, intact_first_peak=True)
    sy, sx = grid_freqs(box, px)
    s = np.hypot(sx, sy)
    dz = 0.5 * (du + dv) + 0.5 * (du - dv) * np.cos(2 * (np.arctan2(sy, sx) - np.radians(angle)))
    peak = band_max(s, dz, shift)
    below, beyond = peak < np.pi / 2 - 0.02, peak > np.pi / 2 + 0.02
    assert beyond.sum() > 1000 and (below | beyond).sum() > 0.97 * box * box
    np.testing.assert_array_equal(intact[beyond], plain[beyond])
    if abs(shift) >= 90:
        assert below.sum() == 0
        return
    assert below.sum() > 10 and np.all(intact[below] == 1)
    # as in RELION, the B-factor envelope still applies to the flattened region
    damped = ctf.ctf_image(dataclasses.replace(params, bfactor=300), box, px, rfft=False,
                           intact_first_peak=True)
    np.testing.assert_allclose(damped[below], np.exp(-300 * s[below] ** 2 / 4), rtol=1e-6)
    if px == 0.25:
        back = beyond & (np.abs(chi_plus(s, dz)) < np.pi / 2 - 0.1)
        assert back.sum() > 30 and np.all(intact[back] != 1)
    if du == 300:
        assert np.any(plain[below] < -0.5)
    if du != dv:   # along U and V the flat radius is brentq's first peak for that defocus (1.5 steps)
        step = 1 / (box * px)
        assert root(dv, np.pi / 2) - root(du, np.pi / 2) > 3 * step
        from_u = np.abs(((np.degrees(np.arctan2(sy, sx)) - angle + 90) % 180) - 90)
        for direction, dz_dir in ((0, du), (90, dv)):
            ray = (np.abs(from_u - direction) < 5) & (s > 0) & (intact == 1)
            assert s[ray].max() == pytest.approx(root(dz_dir, np.pi / 2) - 0.75 * step, abs=0.75 * step)


def test_batch_equals_single():
    params = [CtfParams(15000, 15000, 0, 300, 2.7, 0.1),
              CtfParams(22000, 18000, 33, 300, 2.7, 0.1, 0, 50),
              CtfParams(9000, 12000, -80, 200, 2.0, 0.07, 45),
              CtfParams(30000, 26000, 170, 300, 0.01, 0.1)]
    columns = {f.name: np.array([getattr(p, f.name) for p in params]) for f in dataclasses.fields(CtfParams)}
    for rfft in (True, False):
        for intact in (False, True):
            batch = ctf.ctf_images(**columns, box=72, pixel_size=1.3, rfft=rfft, intact_first_peak=intact)
            assert batch.dtype == np.float32 and batch.shape == (4, 72, 37 if rfft else 72)
            for i, p in enumerate(params):
                single = ctf.ctf_image(p, 72, 1.3, rfft=rfft, intact_first_peak=intact)
                np.testing.assert_allclose(batch[i], single, atol=1e-6)
    # scalar optics values broadcast against per-particle defocus
    mixed = ctf.ctf_images([15000, 22000], [15000, 18000], [0, 33], 300, 2.7, 0.1, box=72, pixel_size=1.3)
    single = ctf.ctf_image(CtfParams(22000, 18000, 33, 300, 2.7, 0.1), 72, 1.3)
    np.testing.assert_allclose(mixed[1], single, atol=1e-7)


def smooth_particle(box, seed):
    """White noise low-passed at ~1/6 1/A (2 A/px) times a soft disc: power well past the first zeros.
    Nothing at or near Nyquist, whose frequency sign is ambiguous in an even box (the CTF differs
    between +/-Nyquist when astigmatic)."""
    rng = np.random.default_rng(seed)
    noise = np.fft.fft2(rng.standard_normal((box, box)))
    sy, sx = grid_freqs(box, 2.0)
    s2 = sx ** 2 + sy ** 2
    img = np.fft.ifft2(noise * np.exp(-s2 / (2 * 0.08 ** 2)) * (s2 < 0.22 ** 2)).real
    y, x = np.indices((box, box)) - box // 2
    return (img * np.exp(-(x * x + y * y) / (2 * (box / 5) ** 2))).astype(np.float32)


def corr(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_image_space_phase_flip():
    """A particle convolved with a known CTF by a plain fft2 convolution; phase_flip with the right CTF
    leaves every coefficient where |CTF| > 0.1 in phase with the original (product real > 0), and
    correlates with the original at least 0.3 better than a flip with a defocus 6000 A off."""
    box, px = 128, 2.0
    du, dv, angle = 15000, 13000, 20
    originals = np.stack([smooth_particle(box, seed) for seed in (1, 2)])
    oracle = ctf_oracle(box, px, du, dv, angle)
    recorded = np.fft.ifft2(np.fft.fft2(originals) * oracle).real.astype(np.float32)

    right = ctf.ctf_images(du, dv, angle, 300, 2.7, 0.1, box=box, pixel_size=px)
    np.testing.assert_allclose(ctf.apply_ctf(originals, right), recorded, atol=1e-5)

    flipped = ctf.phase_flip(recorded, right)
    assert flipped.dtype == np.float32 and flipped.shape == recorded.shape
    product = np.fft.fft2(flipped) * np.conj(np.fft.fft2(originals))
    strong = (np.abs(oracle) > 0.1)[None] & (np.abs(product) > 1e-6 * np.abs(product).max())
    assert strong.sum() > 0.5 * box * box
    assert np.all(product.real[strong] > 0)
    assert np.all(np.abs(product.imag[strong]) < 1e-3 * np.abs(product[strong]))

    wrong = ctf.ctf_images(du + 6000, dv + 6000, angle, 300, 2.7, 0.1, box=box, pixel_size=px)
    for i in range(2):
        c_right = corr(flipped[i], originals[i])
        c_wrong = corr(ctf.phase_flip(recorded[i], wrong[0]), originals[i])
        c_none = corr(recorded[i], originals[i])
        assert c_right > 0.6 and c_right > c_wrong + 0.3 and c_right > c_none + 0.3


BASE = dict(defocus_u=15000.0, defocus_v=14000.0, defocus_angle=10.0, voltage=300.0, cs=2.7,
            amplitude_contrast=0.1, phase_shift=0.0, bfactor=0.0)


@pytest.mark.parametrize("name, value", [
    ("defocus_u", np.nan), ("defocus_u", -100.0), ("defocus_v", np.nan), ("defocus_v", -1.0),
    ("voltage", 0.0), ("voltage", -300.0), ("voltage", np.nan), ("cs", -0.1), ("cs", np.nan),
    ("amplitude_contrast", 1.0), ("amplitude_contrast", -0.01), ("amplitude_contrast", 10.0),
    ("amplitude_contrast", np.nan), ("phase_shift", np.nan), ("defocus_angle", np.nan), ("bfactor", np.nan)])
def test_invalid_values_raise_input_error(name, value):
    with pytest.raises(InputError, match=name) as single:
        CtfParams(**{**BASE, name: value})
    assert "\n" not in str(single.value) and repr(float(value)) in str(single.value)
    column = np.full(3, BASE[name])
    column[2] = value
    with pytest.raises(InputError, match=r"%s = .*\(particle 2\)" % name):
        ctf.ctf_images(**{**BASE, name: column}, box=16, pixel_size=1.0)


def test_valid_edge_values_are_accepted():
    CtfParams(0.0, 0.0, 0.0, 300, 0.0, 0.0)
    CtfParams(15000, 14000, 10, 300, 2.7, 0.999, -90, -50)
    with pytest.raises(InputError, match="pixel_size"):
        ctf.ctf_image(CtfParams(**BASE), 16, 0.0)
