"""Image-space operations: masks, normalisation, parameter application, FRC, filtering, centering.

Arrays in, arrays out.  Images are ``(N, n, n)`` float32, indexed ``[i, y, x]``; the center is
pixel ``(n//2, n//2)`` as in SPARX.
"""
import numpy as np
import scipy.fft
from numba import njit, prange

from . import interpolation
from .errors import InputError


def circular_mask(box, radius):
    """Boolean disc of ``radius`` pixels around the center."""
    y, x = np.indices((box, box)) - box // 2
    return x * x + y * y <= radius * radius


def soft_mask(box, radius, edge):
    """Disc of ``radius`` pixels around the center with a raised-cosine edge ``edge`` px wide inside
    it (1 up to ``radius - edge``, 0 from ``radius`` on), float64."""
    y, x = np.indices((box, box)) - box // 2
    t = np.clip((np.hypot(x, y) - (radius - edge)) / max(edge, 1e-9), 0.0, 1.0)
    return 0.5 + 0.5 * np.cos(np.pi * t)


@njit(cache=True, parallel=True)
def _normalise(images, inside, out, sigma):
    for i in prange(images.shape[0]):
        img = images[i]
        s_in = 0.0
        s2_in = 0.0
        s_out = 0.0
        n_in = 0
        n_out = 0
        for y in range(img.shape[0]):
            for x in range(img.shape[1]):
                v = np.float64(img[y, x])
                if inside[y, x]:
                    s_in += v
                    s2_in += v * v
                    n_in += 1
                else:
                    s_out += v
                    n_out += 1
        mean_in = s_in / n_in
        background = s_out / n_out if n_out > 0 else mean_in
        sigma[i] = np.sqrt(max(s2_in / n_in - mean_in * mean_in, 0.0))
        scale = 1.0 / sigma[i] if sigma[i] > 1e-12 * (1.0 + abs(mean_in)) else 0.0
        for y in range(img.shape[0]):
            for x in range(img.shape[1]):
                out[i, y, x] = (img[y, x] - background) * scale


class BlankImages(InputError):
    """Images with no variance inside the mask; ``indices`` are their 0-based positions in the input."""

    def __init__(self, indices):
        self.indices = np.asarray(indices, np.int64)
        super().__init__("particle(s) %s have zero variance inside the mask (blank images): remove them from "
                         "the particle set" % ", ".join(str(i + 1) for i in self.indices[:10]))


def normalise(images, radius, indices=None):
    """Zero mean outside the particle and unit variance inside it (SPARX ``normalize.mask``).

    A flat image cannot be aligned, so it is an input error (:class:`BlankImages`) rather than a
    division by zero; ``indices`` (default ``0..N-1``) are the images' positions in the particle
    set, which the message numbers from 1.
    """
    images = np.ascontiguousarray(images, dtype=np.float32)
    out = np.empty_like(images)
    sigma = np.empty(len(images))
    _normalise(images, circular_mask(images.shape[-1], radius), out, sigma)
    flat = np.flatnonzero(~(np.abs(out).reshape(len(out), -1).max(axis=1) > 0))
    if flat.size:
        raise BlankImages(flat if indices is None else np.asarray(indices)[flat])
    return out


_cubic_weight = njit(cache=True, inline="always")(interpolation.cubic_weight)
_sample_cubic = njit(cache=True)(interpolation.cubic_sampler(_cubic_weight))
_moved = njit(cache=True, inline="always")(interpolation.mover(_sample_cubic))
transform_terms = njit(cache=True, inline="always")(interpolation.transform_terms)  # also the CUDA backend's


@njit(cache=True)
def _transform_one(img, params, out):
    """``out`` = ``img`` with ``params`` applied: each output pixel pulls from its inverse image."""
    n = img.shape[0]
    terms = transform_terms(params)
    for oy in range(n):
        for ox in range(n):
            out[oy, ox] = _moved(img, terms, ox, oy)


@njit(cache=True, parallel=True)
def _transform_batch(images, params, out):
    for i in prange(images.shape[0]):
        _transform_one(images[i], params[i], out[i])


def transform(images, params):
    """Apply ``(N, 4)`` parameters to ``(N, n, n)`` images (rotate, shift, mirror; cubic)."""
    images = np.ascontiguousarray(images, dtype=np.float32)
    params = np.ascontiguousarray(np.atleast_2d(params), dtype=np.float64)
    out = np.empty_like(images)
    _transform_batch(images, params, out)
    return out


FIXED_POINT = float(2 ** 24)


@njit(cache=True, parallel=True)
def _class_sums(images, params, classes, parity, n_classes, n_chunks):
    n = images.shape[1]
    partial = np.zeros((n_chunks, n_classes, 2, n, n), dtype=np.int64)
    count = images.shape[0]
    for chunk in prange(n_chunks):
        lo = chunk * count // n_chunks
        hi = (chunk + 1) * count // n_chunks
        moved = np.empty((n, n), dtype=np.float32)
        for i in range(lo, hi):
            k = classes[i]
            if k < 0:
                continue
            _transform_one(images[i], params[i], moved)
            acc = partial[chunk, k, parity[i]]
            for oy in range(n):
                for ox in range(n):
                    acc[oy, ox] += np.int64(np.rint(moved[oy, ox] * FIXED_POINT))
    return partial.sum(axis=0)


def class_sums(images, params, classes, parity, n_classes, threads=1):
    """Even/odd sums of transformed particles per class, ``(K, 2, n, n)`` in int64 fixed point.

    Fixed point makes the sums exact and order-independent, so threads and MPI ranks give
    bit-identical averages.  Divide by :data:`FIXED_POINT` to get pixel values.  ``classes`` of
    -1 are left out.
    """
    return _class_sums(np.ascontiguousarray(images, dtype=np.float32),
                       np.ascontiguousarray(params, dtype=np.float64),
                       np.ascontiguousarray(classes, dtype=np.int64),
                       np.ascontiguousarray(parity, dtype=np.int64),
                       int(n_classes), max(1, int(threads)))


def radial_index(box):
    """Integer radius (in Fourier pixels) of every rfft2 coefficient of a ``box`` image."""
    fy = np.fft.fftfreq(box) * box
    fx = np.fft.rfftfreq(box) * box
    return np.rint(np.hypot(fy[:, None], fx[None, :])).astype(np.int64)


def frc(first, second):
    """Fourier ring correlation of two images, one value per ring 0..n//2."""
    box = first.shape[-1]
    a, b = np.fft.rfft2(first), np.fft.rfft2(second)
    rings = radial_index(box).ravel()
    keep = rings <= box // 2
    rings = rings[keep]
    num = np.bincount(rings, (a * np.conj(b)).real.ravel()[keep], box // 2 + 1)
    pa = np.bincount(rings, (np.abs(a) ** 2).ravel()[keep], box // 2 + 1)
    pb = np.bincount(rings, (np.abs(b) ** 2).ravel()[keep], box // 2 + 1)
    return num / np.sqrt(np.maximum(pa * pb, 1e-30))


def frc_cutoff(curve, threshold=0.5):
    """First frequency (cycles/pixel) where the FSC estimated from the FRC drops below ``threshold``.

    The half-set FRC is turned into a full-set estimate with ``2 r / (1 + r)`` as SPARX does.
    Returns 0.5 (Nyquist) when it never drops.
    """
    box = 2 * (len(curve) - 1)
    fsc = 2.0 * curve / (1.0 + np.abs(curve))
    below = np.flatnonzero(fsc[1:] < threshold)
    return 0.5 if below.size == 0 else (below[0] + 1) / box


def lowpass_tanh(image, cutoff, falloff=0.1):
    """SPARX ``filt_tanl``: hyperbolic-tangent low-pass at ``cutoff`` cycles/pixel."""
    box = image.shape[-1]
    f = np.hypot(np.fft.fftfreq(box)[:, None], np.fft.rfftfreq(box)[None, :])
    width = 2.0 * falloff * cutoff
    h = 0.5 * (np.tanh(np.pi * (f + cutoff) / width) - np.tanh(np.pi * (f - cutoff) / width))
    return np.fft.irfft2(np.fft.rfft2(image) * h, s=image.shape[-2:]).astype(np.float32)


def fourier_shift(image, dx, dy):
    """Shift an image by ``(dx, dy)`` pixels (content moves towards +x, +y), periodically."""
    box = image.shape[-1]
    fy = np.fft.fftfreq(box)[:, None]
    fx = np.fft.rfftfreq(box)[None, :]
    phase = np.exp(-2j * np.pi * (fx * dx + fy * dy))
    return np.fft.irfft2(np.fft.rfft2(image) * phase, s=image.shape[-2:]).astype(np.float32)


def center_of_mass(image, radius):
    """Offset ``(dx, dy)`` of the center of mass of the positive density inside ``radius``."""
    box = image.shape[-1]
    density = np.where(circular_mask(box, radius), np.maximum(image, 0.0), 0.0)
    total = density.sum()
    if total <= 0:
        return 0.0, 0.0
    y, x = np.indices(image.shape) - box // 2
    return float((density * x).sum() / total), float((density * y).sum() / total)


def fourier_crop(images, box, workers=1):
    """``(N, n, n)`` images Fourier-cropped to ``(N, box, box)`` float32 (``box <= n``).

    The frequencies ``|k| < box / 2`` (cycles per image) are kept; the cropped box's Nyquist row and
    column (even ``box``) are set to zero, since the input holds two frequencies (``+-box/2``) for
    each of their coefficients.  The spectrum is scaled by ``(box / n)^2`` so that the cropped image
    samples the same function: the pixel at ``box // 2`` is at the input's center pixel ``n // 2``
    (a phase shift aligns the two centers where the parities differ).
    """
    images = np.asarray(images, np.float32)
    n = images.shape[-1]
    if box == n:
        return np.array(images, np.float32)
    if not 0 < box < n:
        raise ValueError("cannot Fourier-crop %d px images to %d px" % (n, box))
    spectra = scipy.fft.rfft2(images, workers=workers)
    rows = np.fft.fftfreq(box, 1.0 / box).astype(np.int64)        # 0..box/2-1, -box/2..-1
    cropped = spectra[:, rows % n, :box // 2 + 1]
    if box % 2 == 0:
        cropped[:, box // 2, :] = 0
        cropped[:, :, box // 2] = 0
    shift = (n // 2) / n - (box // 2) / box                      # input center - output center, in boxes
    if shift:
        kx = np.arange(box // 2 + 1)
        cropped *= np.exp(2j * np.pi * shift * (rows[:, None] + kx[None, :])).astype(np.complex64)
    cropped *= np.float32((box / n) ** 2)
    return scipy.fft.irfft2(cropped, s=(box, box), workers=workers).astype(np.float32, copy=False)
