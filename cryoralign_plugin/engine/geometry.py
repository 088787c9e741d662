"""Polar grid and 2D alignment-parameter algebra.

Parameter convention (EMAN2/SPARX, used end to end by the engine): a parameter row is
``(psi, sx, sy, mirror)`` = columns ``PSI, SX, SY, MIRROR`` of an ``(N, 4)`` float64 array.
Applying it to an image maps a point ``v`` (pixel coordinates ``x`` = column, ``y`` = row, both
measured from the center ``c = (n//2, n//2)``) to ``v' = M (R(psi) v + t)``: rotate by ``psi``
degrees, then translate by ``t = (sx, sy)``, then mirror (``M = diag(-1, 1)``, x -> -x) when
``mirror`` is 1.  ``R(psi) = [[cos, sin], [-sin, cos]]`` (EMAN's sense).  Parameters bring a
particle into register with its reference: ``transform(particle, p) ~ reference``.
"""
from dataclasses import dataclass

import numpy as np

from .errors import InputError

PSI, SX, SY, MIRROR = 0, 1, 2, 3


@dataclass(frozen=True)
class PolarGrid:
    """Rings ``radii`` of ``lengths`` samples each, concatenated at ``offsets``, with ``weights``.

    ``weights`` are SPARX ``ringwe``: the area element ``2 pi r / n`` rescaled by ``maxrin / n`` so
    that rings of different lengths add up in one inverse FFT of length ``maxrin``.
    ``area`` is the per-ring area element ``2 pi r / n`` used for normalisation.
    """
    radii: np.ndarray
    lengths: np.ndarray
    offsets: np.ndarray
    weights: np.ndarray
    area: np.ndarray

    @property
    def maxrin(self):
        return int(self.lengths[-1])

    @property
    def total(self):
        return int(self.offsets[-1] + self.lengths[-1])

    @property
    def outer_radius(self):
        return int(self.radii[-1])


def ring_length(radius):
    """Smallest power of two greater than ``int(2 pi r + 0.5)`` (SPARX ``Numrinit``)."""
    jp = int(2.0 * np.pi * radius + 0.5)
    return 2 ** (int(np.floor(np.log2(jp))) + 1)


def sampling_limit(box):
    """How far (px) from the center a sample may lie and keep its interpolation inside the box."""
    return (box - 1) // 2 - 1


def largest_radius(box, shift_range):
    """The largest outer ring that, with the shift search, stays inside the box: the default radius."""
    return int(np.floor(sampling_limit(box) - shift_range))


def polar_grid(radius, first_ring=1, ring_step=1):
    """The SPARX full-circle grid for rings ``first_ring..radius`` in steps of ``ring_step``."""
    if first_ring < 1 or ring_step < 1:
        raise InputError("first ring and ring step must be >= 1 (got %s, %s)" % (first_ring, ring_step))
    if first_ring > radius:
        raise InputError("first ring (%d) is larger than the radius (%d): choose a first ring <= radius"
                         % (first_ring, radius))
    radii = np.arange(first_ring, radius + 1, ring_step, dtype=np.int32)
    lengths = np.array([ring_length(r) for r in radii], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int32)
    area = 2.0 * np.pi * radii / lengths
    weights = area * (lengths[-1] / lengths)
    return PolarGrid(radii, lengths, offsets, weights, area)


def rotation(psi_deg):
    """EMAN rotation matrices ``[[cos, sin], [-sin, cos]]``, shape ``psi.shape + (2, 2)``."""
    a = np.deg2rad(np.asarray(psi_deg, dtype=np.float64))
    c, s = np.cos(a), np.sin(a)
    return np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], -2)


def params_to_matrix(params):
    """``(N, 4)`` parameters -> ``(N, 3, 3)`` homogeneous matrices ``[[M R, M t], [0, 0, 1]]``."""
    p = np.atleast_2d(np.asarray(params, dtype=np.float64))
    m = np.zeros((len(p), 3, 3))
    m[:, :2, :2] = rotation(p[:, PSI])
    m[:, :2, 2] = p[:, [SX, SY]]
    mirror = p[:, MIRROR] > 0.5
    m[mirror, 0, :] *= -1.0
    m[:, 2, 2] = 1.0
    return m


def matrix_to_params(matrices):
    """Inverse of :func:`params_to_matrix`; a negative determinant means mirror."""
    m = np.array(matrices, dtype=np.float64).reshape(-1, 3, 3)
    mirror = np.linalg.det(m[:, :2, :2]) < 0
    m[mirror, 0, :] *= -1.0
    out = np.empty((len(m), 4))
    out[:, PSI] = np.rad2deg(np.arctan2(m[:, 0, 1], m[:, 0, 0])) % 360.0
    out[:, SX] = m[:, 0, 2]
    out[:, SY] = m[:, 1, 2]
    out[:, MIRROR] = mirror
    return out


def combine(first, second):
    """Parameters of applying ``first`` and then ``second`` (SPARX ``combine_params2``)."""
    return matrix_to_params(params_to_matrix(second) @ params_to_matrix(first))


def inverse(params):
    """Parameters that undo ``params``."""
    return matrix_to_params(np.linalg.inv(params_to_matrix(params)))


def center_offsets(params):
    """The particle point that ``params`` brings to the image center, ``(N, 2)`` as ``(x, y)``.

    This is where the particle is resampled in polar coordinates for the next search.
    """
    p = np.atleast_2d(params)
    rot = rotation(p[:, PSI])
    return -np.einsum("nji,nj->ni", rot, p[:, [SX, SY]])


def _shift_half_width(shift_range, shift_step):
    if not shift_step > 0 or not np.isfinite(shift_step):
        raise InputError("shift step must be > 0 px (got %s)" % shift_step)
    if not shift_range >= 0 or not np.isfinite(shift_range):
        raise InputError("shift range must be >= 0 px (got %s)" % shift_range)
    return int(np.floor(shift_range / shift_step + 1e-9))


def shift_count(shift_range, shift_step):
    """How many trial shifts :func:`shift_grid` gives, without building it."""
    return (2 * _shift_half_width(shift_range, shift_step) + 1) ** 2


def shift_grid(shift_range, shift_step):
    """Trial shifts ``(S, 2)`` on a square grid ``-range..range`` (sub-pixel steps honoured).

    The zero shift is always included; the grid is symmetric about it.
    """
    k = _shift_half_width(shift_range, shift_step)
    axis = np.arange(-k, k + 1) * float(shift_step)
    ty, tx = np.meshgrid(axis, axis, indexing="ij")
    return np.stack([tx.ravel(), ty.ravel()], -1)
