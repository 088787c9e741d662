"""Interpolation written once in plain Python, compiled for the CPU (``numba.njit``) and the GPU
(``numba.cuda`` device functions), so both backends sample with the same operations in the same order.

Pixels outside the box count as zero.  Coordinates are ``(x, y)`` = (column, row).
"""
import math


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
    """Bilinear sample at ``(x, y)``."""
    n = img.shape[0]
    ix = int(math.floor(x))
    iy = int(math.floor(y))
    fx = x - ix
    fy = y - iy
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
