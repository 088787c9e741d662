"""One alignment search step: a batch of particles against K references, backend-agnostic.

Each particle is resampled in polar coordinates once, around its current center; the trial shifts
are applied to the references instead (``K x S`` resamplings per iteration, shared by all
particles).  Rings are normalised to zero weighted mean and unit weighted norm, so a score is a
correlation coefficient in [-1, 1] comparable across references and shifts.

Angles: the backend reports the peak position ``j`` in samples of the longest ring.  A straight
match means the particle rotated by ``psi = 360 j / maxrin`` matches the reference; the mirrored
correlation is a circular convolution, whose peak ``j`` means ``psi = 180 - 360 j / maxrin``.

Hundreds of references: a :class:`Preselection` ranks every reference on half-size images first and
the full search sees each particle's best few only, so the cost grows slowly with K; a particle keeps
its best ``CANDIDATES`` matches (:class:`Candidates`), so the state of a run does not grow with K.
"""
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from . import images as imgops
from . import memory
from .errors import InputError
from .settings import CANDIDATES, PREPARED_BYTES, PRESELECT_CROP, PRESELECT_FREQUENCIES
from .geometry import (MIRROR, PSI, SX, SY, largest_radius, polar_grid, rotation, sampling_limit, shift_count,
                       shift_grid)

# Bytes per ring of one (reference, shift) held by the CPU search's screening operands (32
# frequencies x 8 float32 blocks, x 3 while they are assembled); see search_bytes.
_SCREEN_BYTES_PER_RING = 3 * 32 * 8 * 4


@dataclass
class Candidates:
    """The best ``C`` matches of each particle (``settings.CANDIDATES``, or all references when
    fewer), best first; ties keep the lower reference.  ``(P, C)`` arrays, so the state a run keeps
    per particle does not grow with the number of references; ``offsets`` ``(P, 2)`` are the
    particles' search centers."""
    reference: np.ndarray
    score: np.ndarray
    shift: np.ndarray
    mirror: np.ndarray
    angle: np.ndarray
    offsets: np.ndarray

    @classmethod
    def empty(cls, n_refs):
        """No particles (a rank without any), in the dtypes of :meth:`Backend.search`."""
        width = min(CANDIDATES, n_refs)
        return cls(np.empty((0, width), np.int32), np.empty((0, width), np.float32),
                   np.empty((0, width), np.int32), np.empty((0, width), np.int8),
                   np.empty((0, width), np.float32), np.empty((0, 2)))

    @classmethod
    def concatenate(cls, parts):
        """The ``parts`` joined, which are consumed: each field's arrays are released once joined, so the
        join holds one field twice, not every field (a pass's candidates are ~150 bytes per particle)."""
        joined = {}
        for f in cls.__dataclass_fields__:
            joined[f] = np.concatenate([getattr(p, f) for p in parts])
            for p in parts:
                setattr(p, f, None)
        return cls(**joined)


def best_candidates(reference, score, shift, mirror, angle, offsets, count=CANDIDATES):
    """:class:`Candidates`: the ``count`` best of a search's ``(P, M)`` results against references
    ``reference`` ``(P, M)``, ties to the lower reference."""
    order = np.lexsort((reference, -np.asarray(score, np.float64)), axis=1)[:, :count]
    take = [np.take_along_axis(np.asarray(a), order, axis=1) for a in (reference, score, shift, mirror, angle)]
    return Candidates(*take, offsets)


def reference_chunks(n_refs, n_shifts, grid):
    """Consecutive reference ranges whose prepared operands (:func:`search_bytes`) fit
    ``PREPARED_BYTES``: one range unless K is large."""
    size = max(1, min(n_refs, PREPARED_BYTES // search_bytes(1, n_shifts, grid)))
    return [range(lo, min(lo + size, n_refs)) for lo in range(0, n_refs, size)]


def check_geometry(box, grid, shift_range):
    """Refuse a radius that, with the shift search, would sample outside the box."""
    limit = sampling_limit(box)
    reach = grid.outer_radius + shift_range
    if reach > limit:
        raise InputError(
            "radius %d + shift range %g = %g px reaches outside the %d px box (at most %d px fits): "
            "use a radius <= %d or a smaller shift range" % (grid.outer_radius, shift_range, reach, box,
                                                            limit, largest_radius(box, shift_range)))


def search_bytes(n_refs, n_shifts, grid):
    """About how much memory the references displaced by every trial shift take, ready to search.

    Per (reference, shift): the rings (float32), their spectra (complex64) and the screening
    operands; within ~30% of what the CPU backend measures for 32-128 px boxes (it overestimates).
    """
    rings = len(grid.radii)
    per_shift = 8 * grid.total + 8 * rings * (grid.maxrin // 2 + 1) + _SCREEN_BYTES_PER_RING * rings
    return int(n_refs) * int(n_shifts) * per_shift


def check_search_size(n_refs, grid, shift_range, shift_step):
    """Refuse, before anything is allocated, a shift grid whose references cannot fit in memory.

    The limit is this process's share of the machine's memory (:func:`~.memory.budget_bytes`); the
    message gives the numbers and the finest step (in 0.01 px) that fits.
    """
    n_shifts = shift_count(shift_range, shift_step)
    budget = memory.budget_bytes()
    need = search_bytes(n_refs, n_shifts, grid)
    if budget is None or need <= budget:
        return n_shifts
    what = "%d shifts per reference" % n_shifts
    if n_refs > 1:
        what += " x %d references" % n_refs
    text = "--shift-step %g with --shift-range %g gives %s, ~%s (this process can use %s)" % (
        shift_step, shift_range, what, _size(need), _size(budget))
    fits = budget // search_bytes(n_refs, 1, grid)   # shifts that fit
    other = ", fewer classes or smaller images" if n_refs > 1 else " or smaller images"
    if fits < 1 or shift_range == 0:
        raise InputError("%s: even one shift does not fit: use %s" % (
            text, "fewer classes or smaller images" if n_refs > 1 else "smaller images"))
    half = int((np.sqrt(fits) - 1) // 2)   # the widest grid -half..half that fits
    if half < 1:
        raise InputError("%s: use a step larger than the shift range (no shift search)%s" % (text, other))
    step = max(0.01, np.floor(100.0 * shift_range / (half + 1)) / 100.0)
    while shift_count(shift_range, step) > fits:
        step = round(step + 0.01, 2)
    raise InputError("%s: use a step of at least %g%s" % (text, step, other))


def _size(nbytes):
    return "%.3g GiB" % (nbytes / 2.0 ** 30) if nbytes >= 2 ** 30 else "%.3g MiB" % (nbytes / 2.0 ** 20)


def offset_limit(box, grid):
    """Largest center offset that keeps the particle's rings inside the box (SPARX ``mashi``)."""
    return max(0.0, sampling_limit(box) - grid.outer_radius)


@njit(cache=True, inline="always")
def _normalise_row(row, area, total):
    mean = 0.0
    for t in range(row.shape[0]):
        mean += area[t] * row[t]
    mean /= total
    norm = 0.0
    for t in range(row.shape[0]):
        d = row[t] - mean
        norm += area[t] * d * d
    scale = 1.0 / np.sqrt(norm) if norm > 1e-20 else 0.0
    for t in range(row.shape[0]):
        row[t] = (row[t] - mean) * scale


@njit(cache=True, inline="always")
def _normalise_4_rows(r0, r1, r2, r3, area, total):
    """:func:`_normalise_row` of four rows at once: each row's sums are one chain of dependent
    additions, in the same order, so four side by side run about twice as fast and round alike."""
    m0 = m1 = m2 = m3 = 0.0
    for t in range(r0.shape[0]):
        a = area[t]
        m0 += a * r0[t]
        m1 += a * r1[t]
        m2 += a * r2[t]
        m3 += a * r3[t]
    m0 /= total
    m1 /= total
    m2 /= total
    m3 /= total
    n0 = n1 = n2 = n3 = 0.0
    for t in range(r0.shape[0]):
        a = area[t]
        d0, d1, d2, d3 = r0[t] - m0, r1[t] - m1, r2[t] - m2, r3[t] - m3
        n0 += a * d0 * d0
        n1 += a * d1 * d1
        n2 += a * d2 * d2
        n3 += a * d3 * d3
    s0 = 1.0 / np.sqrt(n0) if n0 > 1e-20 else 0.0
    s1 = 1.0 / np.sqrt(n1) if n1 > 1e-20 else 0.0
    s2 = 1.0 / np.sqrt(n2) if n2 > 1e-20 else 0.0
    s3 = 1.0 / np.sqrt(n3) if n3 > 1e-20 else 0.0
    for t in range(r0.shape[0]):
        r0[t] = (r0[t] - m0) * s0
        r1[t] = (r1[t] - m1) * s1
        r2[t] = (r2[t] - m2) * s2
        r3[t] = (r3[t] - m3) * s3


@njit(cache=True, parallel=True)
def _normalise_rows(rows, area):
    total = area.sum()
    count = rows.shape[0]
    for block in prange((count + 3) // 4):
        lo = 4 * block
        if lo + 4 <= count:
            _normalise_4_rows(rows[lo], rows[lo + 1], rows[lo + 2], rows[lo + 3], area, total)
        else:
            for i in range(lo, count):
                _normalise_row(rows[i], area, total)


def normalise_rings(rings, grid):
    """Zero weighted mean and unit weighted norm per row (weights = area per sample), in place."""
    flat = rings.reshape(-1, rings.shape[-1])
    _normalise_rows(flat, np.repeat(grid.area, grid.lengths))
    return rings


def reference_rings(backend, references, grid, shifts):
    """Normalised rings ``(K, S, T)`` of each reference displaced by each trial shift.

    A trial shift ``t`` moves the reference's sampling center to ``c - t``.
    """
    n_refs, box = len(references), references.shape[-1]
    center = box // 2
    index = np.repeat(np.arange(n_refs), len(shifts))
    centers = center - np.tile(shifts, (n_refs, 1))
    rings = backend.polar(references, index, centers, grid)
    return normalise_rings(rings, grid).reshape(n_refs, len(shifts), -1)


def particle_rings(backend, images, offsets, grid):
    """Normalised rings ``(P, T)`` of each particle around ``center + offset``."""
    center = images.shape[-1] // 2
    rings = backend.polar(images, np.arange(len(images)), center + offsets, grid)
    return normalise_rings(rings, grid)


class Preselection:
    """The coarse stage that makes the search sub-linear in K: every reference is screened on
    particles and references Fourier-cropped by ``PRESELECT_CROP`` (a polar grid of half the radius,
    a shift grid of half the extent at steps of at least one coarse pixel), with the same backend
    call as the full search; each particle is then searched at full resolution against its ``count``
    best references only.  Build it with :meth:`plan`, which says when it is worth it."""

    MIN_RADIUS = 6   # coarse rings below this carry too little to rank references

    def __init__(self, backend, refs, radius, shift_range, shift_step, mirror, count):
        self.backend, self.count = backend, int(count)
        self.box, coarse_radius = self.geometry(refs.shape[-1], radius, shift_range)
        self.grid = polar_grid(coarse_radius)
        self.shifts = shift_grid(shift_range / PRESELECT_CROP, max(1.0, shift_step / PRESELECT_CROP))
        self.limit = offset_limit(self.box, self.grid)
        self.refs = backend.prepare_references(
            reference_rings(backend, imgops.fourier_crop(refs, self.box), self.grid, self.shifts), self.grid, mirror,
            PRESELECT_FREQUENCIES)

    @staticmethod
    def geometry(box, radius, shift_range):
        """The coarse box (even) and outer ring for a ``box`` px search with ``radius`` and ``shift_range``."""
        coarse = box // PRESELECT_CROP // 2 * 2
        return coarse, min(radius // PRESELECT_CROP, largest_radius(coarse, shift_range / PRESELECT_CROP))

    @classmethod
    def plan(cls, backend, refs, radius, shift_range, shift_step, mirror, count):
        """A :class:`Preselection`, or None when it would keep every reference or the coarse rings
        would be too few (small images): then the full search sees every reference."""
        if count >= len(refs) or cls.geometry(refs.shape[-1], radius, shift_range)[1] < cls.MIN_RADIUS:
            return None
        return cls(backend, refs, radius, shift_range, shift_step, mirror, count)

    def members(self, images, offsets):
        """The ``(P, count)`` best references of each particle on the coarse grid, ascending."""
        coarse = imgops.fourier_crop(images, self.box)
        rings = particle_rings(self.backend, coarse, np.clip(offsets / PRESELECT_CROP, -self.limit, self.limit),
                               self.grid)
        score = self.backend.search(rings, self.refs, self.grid)[0]
        best = np.argsort(-score, axis=1, kind="stable")[:, :self.count]   # ties: the lower reference
        return np.sort(best, axis=1).astype(np.int32)


def search(backend, images, offsets, prepared, grid, members=None, first=0, previous=None):
    """The best :class:`Candidates` of every particle against the prepared references, which are
    references ``first..`` (a chunk of them; all by default): only those among its ``members``
    (the preselection's, ``(P, M)`` reference numbers) when given, merged with the candidates
    ``previous`` found in the other chunks."""
    rings = particle_rings(backend, images, offsets, grid)
    local, count = None, CANDIDATES
    if members is not None:
        local = members - first
        local[(local < 0) | (local >= prepared.n_refs)] = -1   # in another chunk
        count = min(count, members.shape[1])
    score, shift, mirror, angle = backend.search(rings, prepared, grid, local)
    if members is None:
        members = first + np.broadcast_to(np.arange(prepared.n_refs, dtype=np.int32), score.shape)
    found = [members, score, shift, mirror, angle]
    if previous is not None:
        found = [np.concatenate([getattr(previous, f), a], axis=1)
                 for f, a in zip(("reference", "score", "shift", "mirror", "angle"), found)]
    return best_candidates(*found, offsets, count)


def candidate_params(candidates, slot, shifts, grid):
    """Alignment parameters ``(P, 4)`` of candidate ``slot`` of each particle (see
    :func:`match_params`)."""
    rows = np.arange(len(slot))
    return match_params(candidates.angle[rows, slot], candidates.mirror[rows, slot],
                        shifts[candidates.shift[rows, slot]], candidates.offsets, grid)


def match_params(angle, mirror, t, offsets, grid):
    """Alignment parameters ``(P, 4)`` of matches at peak positions ``angle`` (samples of
    ``grid.maxrin``), ``mirror`` flags and trial shifts ``t`` ``(P, 2)`` of particles searched
    around center offsets ``offsets``.

    With particle offset ``d``, trial shift ``t`` and angle ``psi``: straight ``t_E = -R d - t``;
    mirrored ``t_E = -R d - M t`` (see the module docstring for the angle).
    """
    j = np.asarray(angle).astype(np.float64) * 360.0 / grid.maxrin
    mirror = np.asarray(mirror).astype(bool)
    t = np.array(t, np.float64)
    psi = np.where(mirror, 180.0 - j, j) % 360.0
    t[mirror, 0] *= -1.0
    out = np.empty((len(j), 4))
    out[:, PSI] = psi
    out[:, [SX, SY]] = -np.einsum("nij,nj->ni", rotation(psi), offsets) - t
    out[:, MIRROR] = mirror
    return out
