"""Interpolation written once in plain Python, compiled for the CPU (``numba.njit``) and the GPU
(``numba.cuda`` device functions), so both backends compute with the same operations in the same order:
image sampling (bilinear, Keys cubic), the pixel pull of a parameter transform, and the sub-sample
peak of a rotational correlation (7-point parabola).

Functions that call another one are factories (``cubic_sampler``, ``mover``, ``peak_refiner``): a
CUDA device function cannot call an ``njit`` function, so each target passes its own compiled callee.

Pixels outside the box count as zero.  Coordinates are ``(x, y)`` = (column, row).
"""
import math

import numpy as np

from .geometry import MIRROR, PSI, SX, SY


def cubic_weight(t):
    """Keys cubic convolution kernel (a = -0.5): C1-smooth, exact for quadratics."""
    t = abs(t)
    if t < 1.0:
        return (1.5 * t - 2.5) * t * t + 1.0
    if t < 2.0:
        return ((-0.5 * t + 2.5) * t - 4.0) * t + 2.0
    return 0.0


def cubic_sampler(weight):
    """A 4x4 cubic sampler calling ``weight``: the target's own compiled :func:`cubic_weight`
    (a CUDA kernel cannot call an ``njit`` function, so each target passes its own)."""
    def sample_cubic(img, x, y):
        n = img.shape[0]
        ix = int(math.floor(x))
        iy = int(math.floor(y))
        total = 0.0
        for j in range(iy - 1, iy + 3):
            if j < 0 or j >= n:
                continue
            wy = weight(y - j)
            for i in range(ix - 1, ix + 3):
                if i < 0 or i >= n:
                    continue
                total += wy * weight(x - i) * img[j, i]
        return total
    return sample_cubic


def bilinear(img, x, y):
    """Bilinear sample at ``(x, y)``.  Inside the box (nearly every sample) the four taps are summed
    without bounds tests, in the order and with the products of the general case, so they round
    alike (about a third cheaper on the CPU)."""
    n = img.shape[0]
    ix = int(math.floor(x))
    iy = int(math.floor(y))
    fx = x - ix
    fy = y - iy
    if 0 <= ix and ix < n - 1 and 0 <= iy and iy < n - 1:
        gx = 1.0 - fx
        gy = 1.0 - fy
        return (0.0 + gx * gy * img[iy, ix] + fx * gy * img[iy, ix + 1]
                + gx * fy * img[iy + 1, ix] + fx * fy * img[iy + 1, ix + 1])
    total = 0.0
    for dj in range(2):
        j = iy + dj
        if 0 <= j < n:
            wy = fy if dj else 1.0 - fy
            for di in range(2):
                i = ix + di
                if 0 <= i < n:
                    wx = fx if di else 1.0 - fx
                    total += wx * wy * img[j, i]
    return total


def transform_terms(params):
    """``(cos psi, sin psi, mirror sign, sx, sy)`` of one parameter row ``(psi, sx, sy, mirror)``.

    Host side only (CPU ``njit``): the CUDA backend computes these on the host and ships them to the
    device, since the device's ``cos``/``sin`` need not round as the host's do and the class sums must
    be bit-identical between the backends.
    """
    a = np.deg2rad(params[PSI])
    return np.cos(a), np.sin(a), -1.0 if params[MIRROR] > 0.5 else 1.0, params[SX], params[SY]


def mover(sample):
    """A pixel pull calling ``sample`` (the target's compiled cubic sampler).

    ``moved(img, terms, ox, oy)`` is output pixel ``(ox, oy)`` of the ``(n, n)`` image ``img``
    transformed by ``terms`` (:func:`transform_terms`, a tuple or a length-5 array): the output pixel
    pulls from its inverse image, mirrored, shifted and rotated about the center ``n // 2``.
    """
    def moved(img, terms, ox, oy):
        center = img.shape[0] // 2
        uy = oy - center - terms[4]
        ux = terms[2] * (ox - center) - terms[3]
        return sample(img, terms[0] * ux - terms[1] * uy + center, terms[1] * ux + terms[0] * uy + center)
    return moved


def real_sample(row, i, part):
    """Sample ``i`` of a real correlation row (``part`` unused: the CPU keeps one row per correlation)."""
    return row[i]


def packed_sample(buf, i, mirrored):
    """Sample ``i`` of the GPU's packed correlation ``Q + iM``: the mirrored ``M`` (imag) or straight ``Q``."""
    z = buf[i]
    return z.imag if mirrored else z.real


def peak_refiner(value):
    """A 7-point peak refinement reading correlation samples through ``value`` (:func:`real_sample`
    on the CPU, :func:`packed_sample` on the GPU).

    ``parabola(row, j, part)`` is the sub-sample offset, within +-1, of the peak at sample ``j`` of the
    circular correlation ``row``: the vertex of the least-squares parabola through samples
    ``j - 3 .. j + 3`` (0 when that parabola does not open downwards).  ``part`` is passed to ``value``.
    """
    def parabola(row, j, part):
        length = row.shape[0]
        slope = 0.0
        curve = 0.0
        for u in range(-3, 4):
            v = value(row, (j + u) % length, part)
            slope += u * v
            curve += (u * u - 4) * v
        if curve < 0.0:
            offset = -(slope / 28.0) / (2.0 * curve / 84.0)
            # min(1, max(-1, offset)) written out (NaN -> -1 alike): numba 0.68's CUDA target
            # cannot compile the built-in float min/max
            offset = offset if offset > -1.0 else -1.0
            return offset if offset < 1.0 else 1.0
        return 0.0
    return parabola
