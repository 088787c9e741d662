"""CTF correction inside a run: phase-flipped particles for the search, Wiener-filtered class averages.

``Settings.ctf`` chooses the correction (None = automatic: ``wiener`` when the input has CTF
columns, else ``none``):

* ``none``: the particles are used as read (the code path of a run without CTF, bit for bit);
* ``flip``: each particle is phase-flipped with its own CTF (its spectrum times sign(CTF), before
  normalisation), so the CTF no longer inverts contrast between particles; the class averages are
  plain averages of the flipped particles (amplitudes stay |CTF|-weighted);
* ``wiener``: the search sees the same phase-flipped particles; the class averages are Wiener
  filters of CTF-weighted sums accumulated in the class frame (RELION / EMAN2 style)::

      A_k(s) = N_k(s) / (W_k(s) + mean_ring(W_k) / SSNR_k(ring))
      N_k = sum_i T_i (CTF_i X_i),   W_k = sum_i T_i CTF_i^2

  ``T_i`` puts particle ``i`` into its class frame with its alignment parameters.  ``N_k`` is the
  ordinary class sum (``backend.class_sums``, fixed point) of the search's images (phase-flipped,
  normalised) times their |CTF|, which is CTF times the particle (sign(CTF) |CTF| = CTF), so both
  backends compute it unchanged.
  ``W_k`` is analytic: transforming an image by (psi, shift, mirror) maps its spectrum's CTF to the
  same CTF with the astigmatism angle ``alpha - psi`` (``psi - alpha`` when mirrored), see
  :func:`class_frame_angles`; the shift only changes phases.  It is accumulated per class and half
  set in int64 fixed point on the host, so it is exact and independent of ranks, threads and
  backends.  ``SSNR_k`` comes from the FRC of the two half sets, whitened by their weights
  (:func:`whitened_frc`), as ``2 FRC / (1 - FRC)``, within the particle mask (a soft disc at the
  mask radius): the noise outside the particle is no part of the average's signal-to-noise ratio
  there (unmasked, it lowered the SSNR estimate and over-smoothed the averages: with the true
  parameters on bench_ctf_accuracy's data, 7.06 A -> 6.88 A median FRC-0.5 against the true views).

Each particle is flipped once per run (:func:`search_source`, kept in the run folder's
:class:`~.image_cache.ImageCache`) and its |CTF|-weighted image too (:func:`weighted_source`): the
passes of every iteration then read them as a run without CTF reads its particles, and the CTF
work left per iteration is ``W_k`` (it depends on the parameters).
Particles whose data are already phase-flipped (``rlnCtfDataArePhaseFlipped``) are never flipped
again.  All CTF work stays on the host: a numba kernel evaluates the CTF (the formula of
:func:`.ctf.ctf_images`, fused with the multiplication of the spectra) and scipy's FFT applies it.
"""
import math

import numpy as np
import scipy.fft
from numba import njit, prange

from . import images as imgops
from .ctf import wavelength
from .errors import InputError
from .geometry import MIRROR, PSI
from .image_cache import CachedSource
from .parallel import cpu_threads

MODES = ("none", "flip", "wiener")
FRC_MAX = 0.999           # half-set FRC clip before SSNR = 2 FRC / (1 - FRC)
UNKNOWN_SSNR = 1.0        # per-ring SSNR assumed for a class with an empty half set (no FRC)
CHUNK_BYTES = 64 << 20    # images filtered at a time (bounds the spectra of a large batch)
SSNR_MASK_EDGE = 4.0      # px, raised-cosine edge (inside the mask radius) of the mask the SSNR is estimated in

_FIXED = imgops.FIXED_POINT


def resolve_mode(requested, has_ctf):
    """``(mode, reason)`` for ``Settings.ctf`` (None = automatic) on an input with or without CTF."""
    if requested is None:
        if has_ctf:
            return "wiener", "the input has CTF columns"
        return "none", "the input has no CTF columns"
    mode = str(requested).lower()
    if mode not in MODES:
        raise InputError("--ctf %s is not a CTF correction: use none, flip or wiener (or leave it out: "
                         "automatic)" % requested)
    if mode != "none" and not has_ctf:
        raise InputError("--ctf %s needs CTF columns (rlnDefocusU, ...) in the input: add them or use --ctf "
                         "none" % mode)
    return mode, "--ctf %s" % mode


def class_frame_angles(defocus_angle, params):
    """Astigmatism angles (degrees) of the particles' CTFs in their class frames.

    ``images.transform(image, p)`` maps the spectrum at frequency ``k`` to ``A k`` with ``A = R(psi) M``
    (``R(psi)`` the counter-clockwise rotation by psi in (x, y), ``M`` x -> -x when mirrored): a
    direction at angle ``theta`` from x reads the input at ``theta + psi``, or ``pi - theta + psi``
    mirrored.  The CTF depends on direction only through ``cos(2 (theta - alpha))``, so the class frame
    sees the same CTF with ``alpha - psi``, or ``psi - alpha`` when mirrored.
    """
    psi = np.asarray(params, np.float64)[:, PSI]
    mirrored = np.asarray(params, np.float64)[:, MIRROR] > 0.5
    alpha = np.asarray(defocus_angle, np.float64)
    return np.where(mirrored, psi - alpha, alpha - psi)


# ---------------------------------------------------------------------------------------------
# The CTF on a Fourier grid (numba): the formula of ctf.ctf_images, per particle coefficients

def _grid(box):
    """``(f^2, cos 2 theta, sin 2 theta)`` of the rfft2 grid of a ``box`` image, f in cycles/px."""
    fy = np.fft.fftfreq(box)[:, None]
    fx = np.fft.rfftfreq(box)[None, :]
    f2 = fx * fx + fy * fy
    theta = np.arctan2(fy, fx)
    return (np.ascontiguousarray(f2), np.ascontiguousarray(np.cos(2 * theta)),
            np.ascontiguousarray(np.sin(2 * theta)))


# columns of the coefficient table, one row per particle
_MEAN, _HALF, _COS, _SIN, _B, _A, _OFFSET, _ENV = range(8)


def coefficients(columns, indices, pixel_size, angles=None):
    """Per-particle CTF coefficients ``(len, 8)`` float64 in pixel units: mean defocus and half the
    astigmatism (A), cos/sin of twice the astigmatism angle, ``pi lambda / px^2``,
    ``pi/2 Cs lambda^3 / px^4``, the phase offset and ``B / (4 px^2)``, so that on frequencies f in
    cycles/px: ``chi = B dz f^2 - A f^4``.  ``angles`` replaces the astigmatism angles (degrees)."""
    idx = np.asarray(indices, np.int64).reshape(-1)
    px = np.asarray(pixel_size, np.float64)
    px = np.broadcast_to(px, idx.shape) if px.ndim == 0 else px
    lam = wavelength(columns.voltage[idx])
    du, dv = columns.defocus_u[idx], columns.defocus_v[idx]
    alpha = np.deg2rad(columns.defocus_angle[idx] if angles is None else np.asarray(angles, np.float64))
    q0 = columns.amplitude_contrast[idx]
    out = np.empty((idx.size, 8))
    out[:, _MEAN] = 0.5 * (du + dv)
    out[:, _HALF] = 0.5 * (du - dv)
    out[:, _COS] = np.cos(2 * alpha)
    out[:, _SIN] = np.sin(2 * alpha)
    out[:, _B] = np.pi * lam / px ** 2
    out[:, _A] = np.pi / 2 * (columns.cs[idx] * 1e7) * lam ** 3 / px ** 4
    out[:, _OFFSET] = np.deg2rad(columns.phase_shift[idx]) + np.arctan(q0 / np.sqrt(1 - q0 * q0))
    out[:, _ENV] = columns.bfactor[idx] / (4 * px ** 2)
    return out


_PIO2_HI = 1.5707963267341256e+00    # pi/2 in two parts (fdlibm's pio2_1, pio2_1t)
_PIO2_LO = 6.0771005065061922e-11


@njit(cache=True, inline="always")
def _sin(x):
    """sin(x) to ~1e-15 for |x| < 1e6 (chi reaches hundreds of radians), reduced to [-pi/4, pi/4]
    and evaluated by its Taylor polynomials: several times faster than libm's, and vectorisable."""
    q = math.floor(x * 0.6366197723675814 + 0.5)
    r = (x - q * _PIO2_HI) - q * _PIO2_LO
    z = r * r
    s = r + r * z * (-1.6666666666666666e-01 + z * (8.3333333333333333e-03 + z * (
        -1.9841269841269841e-04 + z * (2.7557319223985891e-06 + z * (-2.5052108385441719e-08 + z * (
            1.6059043836821613e-10 + z * -7.6471637318198164e-13))))))
    c = 1.0 + z * (-0.5 + z * (4.1666666666666664e-02 + z * (-1.3888888888888889e-03 + z * (
        2.4801587301587302e-05 + z * (-2.7557319223985888e-07 + z * (2.0876756987868100e-09 + z * (
            -1.1470745597729725e-11)))))))
    n = int(q) & 3
    v = c if n & 1 else s
    return -v if n & 2 else v


@njit(cache=True, inline="always", error_model="numpy")
def _first_peak_f2(b, a, offset):
    """``ctf._first_peak_s2`` for one direction (f^2 where |chi + offset| first reaches pi/2)."""
    if abs(offset) >= np.pi / 2:
        return 0.0
    up = np.pi / 2 - offset
    down = -np.pi / 2 - offset
    disc_up = b * b - 4 * a * up
    reach_up = 2 * up / (b + math.sqrt(disc_up)) if disc_up >= 0 else np.inf
    reach_down = (b + math.sqrt(b * b - 4 * a * down)) / (2 * a) if a > 0 else np.inf
    return min(reach_up, reach_down)


@njit(cache=True, inline="always", error_model="numpy")
def _ctf_row(c, f2, cos2, sin2, intact, y, row):
    """Row ``y`` of one particle's CTF (coefficients ``c``) on the grid, into ``row`` (float64).

    The flattening (``intact``) and the envelope are separate passes, so the main loop has no
    branches and vectorises."""
    mean, half, cos_a, sin_a, b, a, offset, env = c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
    nx = row.shape[0]
    for x in range(nx):
        f = f2[y, x]
        dz = mean + half * (cos2[y, x] * cos_a + sin2[y, x] * sin_a)
        row[x] = _sin(b * dz * f - a * f * f + offset)
    if intact:
        for x in range(nx):
            dz = mean + half * (cos2[y, x] * cos_a + sin2[y, x] * sin_a)
            if f2[y, x] < _first_peak_f2(b * dz, a, offset):
                row[x] = 1.0
    if env != 0.0:
        for x in range(nx):
            row[x] *= math.exp(-env * f2[y, x])


@njit(cache=True, parallel=True, error_model="numpy")
def _ctf_batch(coef, f2, cos2, sin2, intact, out):
    for i in prange(coef.shape[0]):
        row = np.empty(f2.shape[1])
        for y in range(f2.shape[0]):
            _ctf_row(coef[i], f2, cos2, sin2, intact, y, row)
            for x in range(f2.shape[1]):
                out[i, y, x] = row[x]


@njit(cache=True, parallel=True, error_model="numpy")
def _multiply_spectra(spectra, coef, magnitude, f2, cos2, sin2, intact):
    """``spectra[i] *= |CTF_i|`` with ``magnitude``, else ``sign(CTF_i)``, in place."""
    for i in prange(spectra.shape[0]):
        row = np.empty(f2.shape[1])
        for y in range(f2.shape[0]):
            _ctf_row(coef[i], f2, cos2, sin2, intact, y, row)
            if magnitude:
                for x in range(f2.shape[1]):
                    spectra[i, y, x] *= np.float32(abs(row[x]))
            else:
                for x in range(f2.shape[1]):
                    v = row[x]
                    spectra[i, y, x] *= np.float32(1.0 if v > 0.0 else (-1.0 if v < 0.0 else 0.0))


@njit(cache=True, parallel=True, error_model="numpy")
def _ctf2_sums(coef, classes, parity, n_classes, f2, cos2, sin2, intact, n_chunks):
    ny, nx = f2.shape
    partial = np.zeros((n_chunks, n_classes, 2, ny, nx), dtype=np.int64)
    count = coef.shape[0]
    for chunk in prange(n_chunks):
        lo = chunk * count // n_chunks
        hi = (chunk + 1) * count // n_chunks
        row = np.empty(nx)
        for i in range(lo, hi):
            k = classes[i]
            if k < 0:
                continue
            acc = partial[chunk, k, parity[i]]
            for y in range(ny):
                _ctf_row(coef[i], f2, cos2, sin2, intact, y, row)
                for x in range(nx):
                    acc[y, x] += np.int64(np.rint(row[x] * row[x] * _FIXED))
    return partial.sum(axis=0)


# ---------------------------------------------------------------------------------------------
# The correction of one run

class Correction:
    """The CTF correction of a run: ``mode`` and what it needs of the particles' CTFs.

    ``columns`` is the source's :class:`~.ctf.CtfColumns` (None in mode none); the CTF of a particle
    is evaluated on its box at its own pixel size (``columns.pixel_size``, else ``pixel_size``).
    """

    def __init__(self, mode, columns=None, box=None, pixel_size=None, intact_first_peak=False, threads=None,
                 reason=""):
        self.mode, self.reason = mode, reason
        self.columns = columns if mode != "none" else None
        self.intact_first_peak = bool(intact_first_peak)
        self.threads = cpu_threads(threads)
        self.box = box
        if self.columns is None:
            return
        if columns.pixel_size is not None:
            self.pixel_size = np.asarray(columns.pixel_size, np.float64)
        elif pixel_size is not None:
            self.pixel_size = np.full(len(columns), float(pixel_size))
        else:
            raise InputError("the CTF correction needs the pixel size of the images, which the input does not "
                             "give: add rlnImagePixelSize to the STAR file (data_optics), or use --ctf none")
        self._grid = _grid(box)

    @property
    def active(self):
        return self.mode != "none"

    def describe(self):
        """The log line: which correction and why."""
        text = "CTF correction: %s (%s)" % (self.mode, self.reason)
        if self.active:
            flipped = int(np.count_nonzero(self.columns.phase_flipped))
            if flipped:
                text += "; %d of %d particles are already phase-flipped (rlnCtfDataArePhaseFlipped): not " \
                        "flipped again" % (flipped, len(self.columns))
            if self.intact_first_peak:
                text += "; CTF = 1 below its first peak"
        return text

    # --- the CTF itself --------------------------------------------------
    def coefficients(self, indices, angles=None):
        idx = np.asarray(indices, np.int64).reshape(-1)
        return coefficients(self.columns, idx, self.pixel_size[idx], angles)

    def ctfs(self, indices, angles=None):
        """CTFs ``(len, box, box//2+1)`` float32 of particles ``indices`` on the rfft2 grid, with their
        own astigmatism angles or ``angles`` (degrees)."""
        coef = self.coefficients(indices, angles)
        out = np.empty((len(coef),) + self._grid[0].shape, np.float32)
        _ctf_batch(coef, *self._grid, self.intact_first_peak, out)
        return out

    def _filtered(self, images, indices, magnitude):
        """``images`` (float32, one per index) with their spectra times |CTF| (``magnitude``) or sign(CTF).

        In chunks of :data:`CHUNK_BYTES` of images, which bounds the memory of the spectra of a large
        batch (one FFT per image either way: the result does not depend on the chunking)."""
        coef = self.coefficients(indices)
        out = np.empty_like(images)
        step = max(1, CHUNK_BYTES // max(1, images[0].nbytes)) if len(images) else 1
        for lo in range(0, len(images), step):
            part = slice(lo, lo + step)
            spectra = scipy.fft.rfft2(images[part], workers=self.threads)
            _multiply_spectra(spectra, coef[part], magnitude, *self._grid, self.intact_first_peak)
            out[part] = scipy.fft.irfft2(spectra, s=images.shape[-2:], workers=self.threads, overwrite_x=True)
        return out

    # --- what the run calls ----------------------------------------------
    def for_search(self, raw, indices):
        """The images the search sees: phase-flipped (modes flip and wiener) unless already flipped."""
        if not self.active:
            return raw
        idx = np.asarray(indices, np.int64).reshape(-1)
        flat = raw.reshape(len(raw), -1)
        constant = flat.min(axis=1) == flat.max(axis=1)    # unchanged by a flip: left for normalise to refuse
        todo = np.flatnonzero(~self.columns.phase_flipped[idx] & ~constant)
        if todo.size == 0:
            return raw
        if todo.size == idx.size:
            return self._filtered(np.ascontiguousarray(raw, np.float32), idx, False)
        out = np.array(raw, dtype=np.float32)
        out[todo] = self._filtered(out[todo], idx[todo], False)
        return out

    def weighted(self, images, indices):
        """The search's images (phase-flipped, normalised) times their |CTF|: the Wiener numerator's
        images (CTF times the particle), before they are moved into their class frames."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        return self._filtered(np.ascontiguousarray(images, np.float32), idx, True)

    def weights(self, indices, params, classes, parity, n_classes):
        """``W``: even/odd sums of the particles' class-frame CTF^2, ``(K, 2, box, box//2+1)`` int64 in
        fixed point (:data:`images.FIXED_POINT`); ``classes`` of -1 are left out."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        coef = self.coefficients(idx, class_frame_angles(self.columns.defocus_angle[idx], params))
        return _ctf2_sums(coef, np.ascontiguousarray(classes, np.int64), np.ascontiguousarray(parity, np.int64),
                          int(n_classes), *self._grid, self.intact_first_peak, self.threads)


def resolve(settings, source, threads=None):
    """The :class:`Correction` of a run of ``settings`` on ``source``."""
    columns = getattr(source, "ctf", None)      # a bare source (``count``, ``box``, ``read``) has no CTF
    mode, reason = resolve_mode(settings.ctf, columns is not None)
    return Correction(mode, columns, source.box, getattr(source, "pixel_size", None),
                      settings.ctf_intact_first_peak, threads if threads is not None else settings.threads, reason)


class _Derived(CachedSource):
    """``source``'s particles through ``derive(images, indices)``, each once per run with a
    ``cache_dir`` (file name starting with ``prefix``)."""

    def __init__(self, source, derive, cache_dir, prefix):
        super().__init__(source, cache_dir, prefix)
        self._function = derive

    def _derive(self, idx):
        return self._function(self.input.read(idx), idx)

    def _origin(self):
        return "%r %s" % (self.input, self.cache.prefix.strip(".-"))


def search_source(source, correction, cache_dir=None):
    """The particles as the search reads them before normalisation: ``source`` itself in mode none,
    else phase-flipped (:meth:`Correction.for_search`), each once per run with a ``cache_dir``."""
    if not correction.active:
        return source
    return _Derived(source, correction.for_search, cache_dir, ".flipped-")


def weighted_source(images, correction, radius, cache_dir=None):
    """The Wiener numerator's images of the particles ``images`` (:func:`search_source`):
    normalised (mask ``radius``) times their |CTF| (:meth:`Correction.weighted`), each once per run
    with a ``cache_dir``."""
    return _Derived(images, lambda raw, idx: correction.weighted(imgops.normalise(raw, radius, idx), idx),
                    cache_dir, ".weighted-")


# ---------------------------------------------------------------------------------------------
# Wiener-filtered class averages

def wiener_pass(ctx, params, classes, n_classes):
    """Numerator and weight sums ``(K, 2, n, n)``, ``(K, 2, n, n//2+1)`` int64 over all ranks."""
    box = ctx.source.box
    correction = ctx.correction
    numerators = np.zeros((n_classes, 2, box, box), np.int64)
    weights = np.zeros((n_classes, 2, box, box // 2 + 1), np.int64)
    for batch in ctx.batches():
        images = ctx.weighted.read(batch)
        numerators += ctx.backend.class_sums(images, params[batch], classes[batch], batch % 2, n_classes)
        weights += correction.weights(batch, params[batch], classes[batch], batch % 2, n_classes)
    return ctx.comm.allreduce(numerators), ctx.comm.allreduce(weights)


def whitened_frc(first, second, w_first, w_second, rings, n_rings):
    """FRC of two half-set sums ``N_h`` (rfft2 spectra) whitened by their weights ``W_h``
    (``N_h / sqrt(W_h)``), one value per ring index ``0 .. n_rings-1`` (0 where a ring has no weight).

    ``N_h = W_h S + noise`` with noise variance proportional to ``W_h``, so the whitened sums are the
    signal weighted by ``sqrt(W_h)`` plus white noise: their FRC is ``rho / (1 + rho)`` with ``rho``
    the ring's mean half-set SSNR, the quantity the Wiener filter needs.  (The FRC of the
    unregularised estimates ``N_h / W_h`` would instead be dominated by the noise at the few
    frequencies where ``W_h`` is near zero, e.g. at a CTF zero shared by a class's particles.)
    """
    valid = (w_first > 0) & (w_second > 0)
    we = np.where(valid, w_first, 1.0)
    wo = np.where(valid, w_second, 1.0)
    cross = np.where(valid, (first * np.conj(second)).real / np.sqrt(we * wo), 0.0)
    pe = np.where(valid, np.abs(first) ** 2 / we, 0.0)
    po = np.where(valid, np.abs(second) ** 2 / wo, 0.0)
    num = np.bincount(rings, cross.ravel(), n_rings)
    den = np.sqrt(np.bincount(rings, pe.ravel(), n_rings) * np.bincount(rings, po.ravel(), n_rings))
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def masked_frc(sums, weights, mask, rings, n_rings):
    """:func:`whitened_frc` of the half sums ``(2, n, n)`` (pixel values) times ``mask``, per ring
    index of ``rings`` (flat): the half sets' agreement within the particle only."""
    masked = np.fft.rfft2(sums * mask)
    return whitened_frc(masked[0], masked[1], weights[0], weights[1], rings, n_rings)


def wiener_averages(numerators, weights, counts, radius):
    """Wiener-filtered class averages ``(K, n, n)`` float32 and each class's half-set FRC
    (rings ``0 .. n//2``, None for a class with an empty half) from :func:`wiener_pass` sums; the
    SSNR is estimated from the half sets' FRC within the mask of ``radius`` px, the FRC returned is
    the unmasked one (as the other modes' averages report theirs)."""
    n_classes, _, box, _ = numerators.shape
    rings = imgops.radial_index(box)
    n_rings = int(rings.max()) + 1
    flat = rings.ravel()
    ring_size = np.bincount(flat, minlength=n_rings)
    mask = imgops.soft_mask(box, radius, SSNR_MASK_EDGE)   # the SSNR's
    averages = np.zeros((n_classes, box, box), np.float32)
    curves = []
    for k in range(n_classes):
        if counts[k].sum() == 0:
            curves.append(None)
            continue
        sums = numerators[k] / imgops.FIXED_POINT
        spectra = np.fft.rfft2(sums)     # (2, n, n//2+1) complex128
        w = weights[k] / imgops.FIXED_POINT
        if counts[k].min() > 0:
            curves.append(whitened_frc(spectra[0], spectra[1], w[0], w[1], flat, n_rings)[:box // 2 + 1])
            f = np.clip(masked_frc(sums, w, mask, flat, n_rings), 0.0, FRC_MAX)
        else:
            curves.append(None)
            f = np.full(n_rings, UNKNOWN_SSNR / (2.0 + UNKNOWN_SSNR))     # 2 f / (1 - f) = UNKNOWN_SSNR
        total = spectra[0] + spectra[1]
        w_total = w[0] + w[1]
        mean_w = np.bincount(flat, w_total.ravel(), n_rings) / np.maximum(ring_size, 1)
        # N / (W + mean_W / SSNR) with SSNR = 2 f / (1 - f), written to stay finite where f = 0
        f_px, mean_px = f[rings], mean_w[rings]
        den = 2.0 * f_px * w_total + mean_px * (1.0 - f_px)
        filtered = np.where(den > 0, 2.0 * f_px * total / np.where(den > 0, den, 1.0), 0.0)
        averages[k] = np.fft.irfft2(filtered, s=(box, box)).astype(np.float32)
    return averages, curves
