"""Sub-pixel refinement of each particle's shift (and angle) around its grid-search result.

The grid search (:mod:`.search`) leaves shifts on the trial-shift grid.  After each particle's class
is chosen, its shift is refined against that class's reference alone, keeping its mirror:

1. the particle's rings, sampled once around its search center ``c + d`` as in the search, are
   correlated (full rotational correlation, chosen mirror) with the chosen reference displaced by
   the 3x3 grid shifts around the best one, ``t0 + step (i, j)``, ``i, j`` in -1..1 (an extended
   grid, one step beyond the search range, serves the edges);
2. the peak value of each correlation (sub-sample: the 3-point parabola through the peak sample and
   its neighbours, which is never below the peak sample) is fitted by a 2D quadratic (least squares
   over the 9 points); its vertex ``t0 + step delta`` (``delta`` within +-1) is the refined shift,
   or separate 1D parabolas along x and y where the quadratic has no maximum;
3. the reference is resampled at the refined shift and correlated once more: that correlation's
   peak gives the refined angle (7-point parabola, as the backends) and score.

The refined parameters replace the grid's only where the refined score is strictly higher than both
the grid score and the sub-sample peak value at ``t0``, so a refined score is never below the grid
score; otherwise the grid result stays.  Only the references move (the particle is sampled once, as
in the search): a particle resampled at sub-pixel centers would be smoothed by the bilinear
interpolation, which lowers its noise power and biases noisy particles' normalised scores towards
half-pixel centers.

Cost per particle: one polar resampling of the particle and one of its reference, ten
single-reference ring correlations (host, numba) and ten inverse FFTs of ``maxrin`` samples.  The
reference spectra at the extended shifts that the pass's particles use are prepared once per pass,
in chunks of classes within ``SPECTRA_BYTES``.  Everything is per particle in a fixed order, so
results do not depend on batches, MPI ranks, threads or ``--continue``.
"""
from dataclasses import dataclass

import numba
import numpy as np
import scipy.fft
from numba import njit, prange

from . import interpolation
from . import rings as ring_ops
from . import search

SPECTRA_BYTES = 256 * 2 ** 20  # reference spectra at the extended grid held at a time

_parabola = njit(cache=True, inline="always")(
    interpolation.peak_refiner(njit(cache=True, inline="always")(interpolation.real_sample)))


# ---------------------------------------------------------------------------------------------
# Grids and layouts

@dataclass(frozen=True)
class Extended:
    """The search's shift grid and one more step on every side: ``shifts`` ``(E, 2)``, and for each
    search shift the ``(S, 9)`` extended indices of its 3x3 neighbourhood (y outer, x inner)."""
    shifts: np.ndarray
    neighbours: np.ndarray
    step: float


def extended_grid(n_axis, step):
    """:class:`Extended` for a search grid of ``n_axis`` x ``n_axis`` shifts (``geometry.shift_grid``:
    y outer, x inner, ``-k..k`` steps, ``n_axis = 2k + 1``)."""
    k = (n_axis - 1) // 2
    axis = np.arange(-(k + 1), k + 2) * float(step)
    ty, tx = np.meshgrid(axis, axis, indexing="ij")
    shifts = np.stack([tx.ravel(), ty.ravel()], -1)
    width = n_axis + 2
    iy, ix = np.divmod(np.arange(n_axis * n_axis), n_axis)
    dy, dx = np.divmod(np.arange(9), 3)
    neighbours = (iy[:, None] + dy[None]) * width + ix[:, None] + dx[None]
    return Extended(shifts, neighbours.astype(np.int64), float(step))


def compact_layout(grid):
    """Per ring, its first frequency's position in the compact spectrum and its frequency count
    (``n_r // 2 + 1``): rings concatenated, each up to its own Nyquist."""
    counts = (grid.lengths // 2 + 1).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return starts, counts


def compact_spectra(rings, grid, weighted):
    """Ring spectra ``(N, C)`` complex64 in the compact layout (see :func:`compact_layout`), with
    the SPARX ring weights when ``weighted`` (:func:`~.rings.ring_spectra`); the FFTs run on the
    threads of the numba kernels around them."""
    out = np.empty((len(rings), int((grid.lengths // 2 + 1).sum())), np.complex64)
    ring_ops.ring_spectra(rings, grid, weighted, out=out, workers=numba.get_num_threads())
    return out


# ---------------------------------------------------------------------------------------------
# Kernels

@njit(cache=True, parallel=True)
def _cross_spectra(particles, refs, rows, mirror, starts, counts, out):
    """``out[p, q]`` = ``sum_r R conj(S)`` (straight) or ``R S`` (mirrored) of particle ``p`` with
    reference spectrum ``refs[rows[p, q]]``, on ``maxrin // 2 + 1`` frequencies (zero past each ring's)."""
    for p in prange(out.shape[0]):
        for q in range(out.shape[1]):
            acc = out[p, q]
            acc[:] = 0
            ref = refs[rows[p, q]]
            part = particles[p]
            for r in range(starts.shape[0]):
                s = starts[r]
                if mirror[p]:
                    for f in range(counts[r]):
                        acc[f] += ref[s + f] * part[s + f]
                else:
                    for f in range(counts[r]):
                        acc[f] += ref[s + f] * np.conj(part[s + f])


@njit(cache=True, parallel=True)
def _peaks(ccf, raw, value, angle):
    """Per correlation row of ``ccf`` ``(P, Q, L)``: the peak sample (first of equal ones), the
    3-point parabola's peak value (>= the sample) and the 7-point refined position."""
    length = ccf.shape[2]
    for p in prange(ccf.shape[0]):
        for q in range(ccf.shape[1]):
            row = ccf[p, q]
            j = 0
            for i in range(1, length):
                if row[i] > row[j]:
                    j = i
            y0 = row[j]
            ym = row[(j - 1) % length]
            yp = row[(j + 1) % length]
            curve = ym - 2.0 * y0 + yp
            raw[p, q] = y0
            value[p, q] = y0 - (yp - ym) ** 2 / (8.0 * curve) if curve < 0.0 else y0
            angle[p, q] = j + _parabola(row, j, 0)


def _project(f, weights):
    """``f @ weights`` term by term, so each row rounds the same whatever rows come with it (a
    matrix product's blocking depends on the number of rows)."""
    total = np.zeros(len(f))
    for i, w in enumerate(weights):
        total += f[:, i] * w
    return total


def vertex(values):
    """Refined offsets ``(P, 2)`` in grid steps, within +-1, from peak values ``(P, 9)`` on the 3x3
    neighbourhood (y outer, x inner): the maximum of the least-squares quadratic, else per axis the
    vertex of the parabola through the middle row/column (0 where that does not open downwards)."""
    f = np.asarray(values, np.float64)
    y, x = np.divmod(np.arange(9), 3)
    x, y = x - 1.0, y - 1.0
    b = _project(f, x) / 6.0
    c = _project(f, y) / 6.0
    e = _project(f, x * y) / 4.0
    d = _project(f, x * x - 2.0 / 3.0) / 2.0
    g = _project(f, y * y - 2.0 / 3.0) / 2.0
    det = 4.0 * d * g - e * e
    concave = (d < 0) & (det > 0)
    safe = np.where(concave, det, 1.0)
    out = np.empty((len(f), 2))
    out[:, 0] = np.where(concave, (-2.0 * g * b + e * c) / safe, 0.0)
    out[:, 1] = np.where(concave, (e * b - 2.0 * d * c) / safe, 0.0)
    for axis, (lo, hi) in enumerate(((3, 5), (1, 7))):   # x: middle row, y: middle column
        m, p0, p = f[:, lo], f[:, 4], f[:, hi]
        curve = m - 2.0 * p0 + p
        ok = curve < 0
        single = np.where(ok, (m - p) / (2.0 * np.where(ok, curve, -1.0)), 0.0)
        out[~concave, axis] = single[~concave]
    return np.clip(out, -1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Refinement

class Refiner:
    """Refinement against the search's references ``refs`` ``(K, n, n)`` on its polar ``grid`` and
    trial ``shifts`` (``geometry.shift_grid``, spacing ``step``)."""

    def __init__(self, backend, refs, grid, shifts, step):
        self.backend, self.refs, self.grid = backend, refs, grid
        self.ext = extended_grid(int(round(np.sqrt(len(shifts)))), step)
        self.starts, self.counts = compact_layout(grid)

    def chunks(self):
        """Consecutive class ranges whose spectra at the extended grid fit ``SPECTRA_BYTES``."""
        per_class = len(self.ext.shifts) * int(self.counts.sum()) * np.dtype(np.complex64).itemsize
        size = max(1, SPECTRA_BYTES // per_class)
        return [range(lo, min(lo + size, len(self.refs))) for lo in range(0, len(self.refs), size)]

    def spectra(self, chunk, classes, shift):
        """Weighted compact spectra of the references of the class range ``chunk`` at the extended
        shifts in the 3x3 neighbourhoods of particles of ``classes`` (within ``chunk``) at grid shift
        indices ``shift``, and for each ``(k - chunk.start) * E + e`` its row in them (-1: not
        computed).  Only those: where classes have few particles many of a class's E are unused."""
        n_ext = len(self.ext.shifts)
        used = np.unique((classes - chunk.start)[:, None] * n_ext + self.ext.neighbours[shift])
        k, e = np.divmod(used, n_ext)
        rings = self.backend.polar(self.refs, chunk.start + k, self.refs.shape[-1] // 2 - self.ext.shifts[e],
                                   self.grid)
        rows = np.full(len(chunk) * n_ext, -1, np.int64)
        rows[used] = np.arange(len(used))
        return compact_spectra(search.normalise_rings(rings, self.grid), self.grid, weighted=True), rows

    def correlate(self, particles, refs, rows, mirror):
        """Peak sample, sub-sample peak value and peak position ``(P, Q)`` of the correlations of
        particle spectra ``particles`` ``(P, C)`` with ``refs[rows]`` (``rows`` ``(P, Q)``)."""
        length = self.grid.maxrin
        spec = np.empty(rows.shape + (length // 2 + 1,), np.complex64)
        _cross_spectra(particles, refs, rows, mirror, self.starts, self.counts, spec)
        ccf = scipy.fft.irfft(spec, n=length, axis=-1, workers=numba.get_num_threads())
        raw, value, angle = (np.empty(rows.shape) for _ in range(3))
        _peaks(ccf, raw, value, angle)
        return raw, value, angle

    def refine(self, images, offsets, classes, shift, mirror, scores, chunk, spectra):
        """Refined matches of particles ``images`` (as the search read them) searched around
        ``offsets``, with their chosen ``classes`` (within ``chunk``), grid shift indices ``shift``,
        ``mirror`` flags and grid ``scores``; ``spectra`` is what :meth:`spectra` gave for these
        particles (or more).

        Returns ``accept`` (where the refined match is better), the refined trial shifts ``t``
        ``(P, 2)``, peak positions ``angle`` and ``score``; see the module docstring.
        """
        grid, center = self.grid, images.shape[-1] // 2
        mirror = np.asarray(mirror, np.bool_)
        particles = compact_spectra(search.particle_rings(self.backend, images, offsets, grid), grid,
                                    weighted=False)
        spectra, where = spectra
        rows = where[(classes - chunk.start)[:, None] * len(self.ext.shifts) + self.ext.neighbours[shift]]
        _, values, _ = self.correlate(particles, spectra, rows, mirror)
        t = self.ext.shifts[self.ext.neighbours[shift, 4]] + self.ext.step * vertex(values)
        rings = search.normalise_rings(self.backend.polar(self.refs, classes, center - t, grid), grid)
        own = compact_spectra(rings, grid, weighted=True)
        _, value, angle = self.correlate(particles, own, np.arange(len(images))[:, None], mirror)
        value, angle = value[:, 0], angle[:, 0]
        accept = (value > values[:, 4]) & (value > scores)
        return accept, t, angle, value


def refine_pass(ctx, refs, cand, slot, params, scores):
    """Refined ``(params, scores)`` of this rank's particles against the search's references ``refs``.

    ``cand`` (the search's :class:`~.search.Candidates`), ``slot`` (each particle's chosen
    candidate), ``params`` and ``scores`` (the grid's) are local arrays in ``ctx.local`` order.  Particles are read batch
    by batch (``ctx.read``, as the search sees them), one chunk of classes at a time.
    """
    params = np.array(params, np.float64)
    scores = np.array(scores, np.float64)
    if len(ctx.shifts) < 2 or len(params) == 0:  # no shift search: nothing to refine
        return params, scores
    refiner = Refiner(ctx.backend, refs, ctx.grid, ctx.shifts, ctx.settings.shift_step)
    rows = np.arange(len(slot))
    choice = cand.reference[rows, slot].astype(np.int64)
    shift = cand.shift[rows, slot].astype(np.int64)
    mirror = cand.mirror[rows, slot].astype(bool)
    for chunk in refiner.chunks():
        members = (choice >= chunk.start) & (choice < chunk.stop)
        if not members.any():
            continue
        spectra = refiner.spectra(chunk, choice[members], shift[members])
        done = 0
        for batch in ctx.batches():
            pos = done + np.flatnonzero(members[done:done + len(batch)])
            done += len(batch)
            if len(pos) == 0:
                continue
            accept, t, angle, value = refiner.refine(ctx.read(ctx.local[pos]), cand.offsets[pos], choice[pos],
                                                     shift[pos], mirror[pos], scores[pos], chunk, spectra)
            better = pos[accept]
            params[better] = search.match_params(angle[accept], mirror[better], t[accept], cand.offsets[better],
                                                 ctx.grid)
            scores[better] = value[accept]
    return params, scores
