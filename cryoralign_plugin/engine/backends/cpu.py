"""CPU backend: numba kernels, numpy/scipy FFTs and single-threaded BLAS, parallel over particles.

The correlation of every particle with every (reference, shift) is, at each ring frequency ``m``,
a real matrix product: ``[Re S | Im S] (P x 2R) @ B_m (2R x 4KS)`` yields the straight
``sum_r w_r R conj(S)`` and the mirrored ``sum_r w_r R S`` products in one pass (``S`` particle
ring spectra, ``R`` reference ring spectra).  Frequencies that only the longer rings have form
bands with fewer rows, so no work is spent on zeros.

Coarse to fine: every (reference, shift, mirror) is first screened on the correlation low-passed
to ``SCREEN_FREQUENCIES`` angular frequencies (short inverse FFTs); the ``keep`` best (shift, mirror)
pairs of each (particle, reference) are then correlated at full resolution and the best of those is
the answer.  With ``exhaustive`` the full-resolution correlation of every pair is scanned.  References
prepared with ``frequencies`` (the engine's preselection) have that one low-pass stage only.

A search restricted to each particle's ``members`` (the preselection's references) groups a block's
particles by reference, so the matrix products of a reference still take many particles at once.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.fft
from numba import njit, prange
from threadpoolctl import threadpool_limits

from .. import images as imgops
from .. import interpolation
from .. import rings as ring_ops
from ..settings import SCREEN_FREQUENCIES
from . import base

BLOCK_BYTES = 48 * 2 ** 20  # working memory per worker thread
_MAX_OUTER = 1024  # particles per block when a search is restricted to each particle's members


# numba's cache of a kernel is keyed on the file that defines it, not on the functions it inlines:
# after a change in interpolation.py, change this file too or clear the caches (make clean).
_bilinear = njit(cache=True, inline="always")(interpolation.bilinear)
_parabola = njit(cache=True, inline="always")(
    interpolation.peak_refiner(njit(cache=True, inline="always")(interpolation.real_sample)))


@njit(cache=True, parallel=True)
def _polar(images, index, centers, dx, dy, out):
    for i in prange(out.shape[0]):
        img = images[index[i]]
        cx = centers[i, 0]
        cy = centers[i, 1]
        for t in range(dx.shape[0]):
            out[i, t] = _bilinear(img, cx + dx[t], cy + dy[t])


@njit(cache=True, nogil=True)
def _assemble(products, n_shifts, mirror, out):
    """Products ``(F, P, 2 or 4 x S)`` -> complex spectra ``(P, S, 1 or 2, F)`` for the inverse FFT."""
    for p in range(out.shape[0]):
        for s in range(n_shifts):
            for f in range(products.shape[0]):
                row = products[f, p]
                out[p, s, 0, f] = complex(row[s], row[n_shifts + s])
                if mirror:
                    out[p, s, 1, f] = complex(row[2 * n_shifts + s], row[3 * n_shifts + s])


@njit(cache=True, nogil=True)
def _peaks(ccf, k, score, shift, mirror, angle):
    """Best (shift, mirror, angle) of each particle against reference ``k``, from ``(P, S, 1|2, L)``.

    Ties go to the first in scan order: lower shift index, straight before mirror, lower angle.
    The angle is refined with the least-squares parabola through the 7 samples around the peak
    (``interpolation.peak_refiner``, the GPU's too).
    """
    n_shifts, n_mirror, length = ccf.shape[1], ccf.shape[2], ccf.shape[3]
    for p in range(ccf.shape[0]):
        best = -np.inf
        bs = 0
        bm = 0
        bj = 0
        for s in range(n_shifts):
            for m in range(n_mirror):
                row = ccf[p, s, m]
                for j in range(length):
                    if row[j] > best:
                        best = row[j]
                        bs = s
                        bm = m
                        bj = j
        score[p, k] = best
        shift[p, k] = bs
        mirror[p, k] = bm
        angle[p, k] = bj + _parabola(ccf[p, bs, bm], bj, 0)


@njit(cache=True, nogil=True)
def _screen(ccf, keep, out):
    """Indices ``s * n_mirror + m`` of the ``keep`` best (shift, mirror) pairs per particle, in order.

    Pairs are ranked by their coarse peak; equal peaks keep the lower index.  ``out`` is sorted
    ascending so the fine stage applies the same first-wins tie rule as the exhaustive scan.
    """
    n_shifts, n_mirror, length = ccf.shape[1], ccf.shape[2], ccf.shape[3]
    best = np.empty(keep)
    for p in range(ccf.shape[0]):
        best[:] = -np.inf
        out[p, :] = 0
        for s in range(n_shifts):
            for m in range(n_mirror):
                row = ccf[p, s, m]
                peak = row[0]
                for j in range(1, length):
                    peak = max(peak, row[j])
                slot = keep
                while slot > 0 and peak > best[slot - 1]:
                    slot -= 1
                if slot < keep:
                    for q in range(keep - 1, slot, -1):
                        best[q] = best[q - 1]
                        out[p, q] = out[p, q - 1]
                    best[slot] = peak
                    out[p, slot] = s * n_mirror + m
        out[p].sort()


@njit(cache=True, nogil=True)
def _fine_spectra(particles, reference, limits, chosen, n_mirror, out):
    """Full correlation spectra of the chosen pairs: ``sum_r R conj(S)`` straight, ``R S`` mirrored.

    ``particles`` ``(P, R, F)``, ``reference`` ``(S, R, F)`` (weighted), ``limits[r]`` = last
    frequency of ring ``r``; ``out`` ``(P, keep, F)``.
    """
    for p in range(chosen.shape[0]):
        for q in range(chosen.shape[1]):
            s = chosen[p, q] // n_mirror
            mirrored = chosen[p, q] % n_mirror == 1
            acc = out[p, q]
            acc[:] = 0
            for r in range(particles.shape[1]):
                for f in range(limits[r] + 1):
                    a = particles[p, r, f]
                    if mirrored:
                        acc[f] += reference[s, r, f] * a
                    else:
                        acc[f] += reference[s, r, f] * np.conj(a)


@njit(cache=True, nogil=True)
def _fine_peaks(ccf, chosen, n_mirror, k, score, shift, mirror, angle):
    """Like :func:`_peaks` over the chosen pairs only (``ccf`` ``(P, keep, L)``)."""
    reshaped = ccf.reshape(ccf.shape[0], ccf.shape[1], 1, ccf.shape[2])
    _peaks(reshaped, k, score, shift, mirror, angle)
    for p in range(ccf.shape[0]):
        pair = chosen[p, shift[p, k]]
        shift[p, k] = pair // n_mirror
        mirror[p, k] = pair % n_mirror


@dataclass
class _Band:
    first_ring: int   # rings first_ring.. contribute
    freqs: slice      # frequencies of this band
    operand: np.ndarray  # (K, n_freqs, 2 * n_rings, 2 or 4 x S) float32


@dataclass
class PreparedReferences(base.PreparedReferences):
    """Reference spectra arranged as matrix-product operands, built once per iteration.

    ``bands`` cover the screening frequencies; ``dense`` ``(K, S, R, F)`` holds the full weighted
    spectra for the fine stage (None when the search is exhaustive).
    """
    bands: list
    dense: object
    screen_length: int


class CpuBackend(base.Backend):
    """The default backend; ``threads`` workers each run a block of particles end to end."""
    name = "cpu"

    def __init__(self, threads=None, exhaustive=False, keep=3):
        self.threads = max(1, int(threads or os.cpu_count() or 1))
        self.exhaustive = exhaustive
        self.keep = keep

    # --- resampling -------------------------------------------------------
    def polar(self, images, index, centers, grid):
        """Rings ``(len(index), T)`` of ``images[index]`` resampled around absolute ``centers``."""
        dx, dy = ring_ops.ring_offsets(grid)
        out = np.empty((len(index), grid.total), dtype=np.float32)
        _polar(np.ascontiguousarray(images, dtype=np.float32), np.ascontiguousarray(index, dtype=np.int64),
               np.ascontiguousarray(centers, dtype=np.float64), dx, dy, out)
        return out

    # --- search -----------------------------------------------------------
    def prepare_references(self, rings, grid, mirror, frequencies=None):
        """Reference rings ``(K, S, T)`` -> :class:`PreparedReferences` (``frequencies``: one stage on
        that many angular frequencies, for a coarse score)."""
        n_refs, n_shifts = rings.shape[:2]
        spectra = ring_ops.ring_spectra(rings.reshape(n_refs * n_shifts, -1), grid, weighted=True)
        length = grid.maxrin
        if frequencies is not None:
            length = min(grid.maxrin, 2 * int(frequencies))
        elif not self.exhaustive and 2 * SCREEN_FREQUENCIES < grid.maxrin:
            length = 2 * SCREEN_FREQUENCIES
        dense = None
        if length < grid.maxrin and frequencies is None:
            dense = ring_ops.dense(spectra, grid).reshape(n_refs, n_shifts, len(grid.radii), -1)
        bands = []
        for first, freqs in _bands(grid, length // 2):
            sub = _band_spectra(spectra, grid, first, freqs).reshape(n_refs, n_shifts, -1, freqs.stop - freqs.start)
            a = sub.real.transpose(0, 3, 2, 1)  # (K, F, R, S)
            b = sub.imag.transpose(0, 3, 2, 1)
            blocks = [[a, b, a, b], [b, -a, -b, a]] if mirror else [[a, b], [b, -a]]
            operand = np.concatenate([np.concatenate(row, axis=3) for row in blocks], axis=2)
            bands.append(_Band(first, freqs, np.ascontiguousarray(operand, dtype=np.float32)))
        return PreparedReferences(n_refs, n_shifts, mirror, bands, dense, length)

    def search(self, rings, refs, grid, members=None):
        """Best (score, shift index, mirror, angle sample) of every particle against every reference,
        or against its ``members`` only: four ``(P, K)`` or ``(P, M)`` arrays; the angle is in ring
        samples of length ``grid.maxrin``.

        With ``members`` the particles of a block are grouped by reference, so each reference's
        matrix products still take many particles at once (blocks are larger for that).
        """
        count = len(rings)
        width = refs.n_refs if members is None else members.shape[1]
        out = (np.empty((count, width), np.float32), np.zeros((count, width), np.int32),
               np.zeros((count, width), np.int8), np.zeros((count, width), np.float32))
        block = self._block_size(refs, grid)
        outer = block
        if members is not None:   # each reference sees about M / K of a block's particles
            outer = max(block, min(block * refs.n_refs // max(1, width), _MAX_OUTER, -(-count // self.threads)))
        starts = range(0, count, outer)

        def run(start):
            sl = slice(start, min(start + outer, count))
            spectra = ring_ops.ring_spectra(rings[sl], grid, weighted=False)
            operands = self._particle_operands(spectra, refs, grid)
            particles = None if refs.dense is None else ring_ops.dense(spectra, grid)
            local = [o[sl] for o in out]
            if members is None:
                for k in range(refs.n_refs):
                    self._match(operands, particles, k, refs, grid, local, k)
                return
            chosen = members[sl]
            local[0][chosen < 0] = -np.inf   # no reference there (another chunk's)
            for k in np.unique(chosen[chosen >= 0]):
                rows, cols = np.nonzero(chosen == k)
                for lo in range(0, len(rows), block):
                    p, q = rows[lo:lo + block], cols[lo:lo + block]
                    part = [np.empty((len(p), 1), o.dtype) for o in out]
                    self._match([op[:, p] for op in operands], None if particles is None else particles[p], k,
                                refs, grid, part, 0)
                    for o, v in zip(local, part):
                        o[p, q] = v[:, 0]

        with threadpool_limits(1, user_api="blas"):
            if self.threads == 1 or len(starts) == 1:
                for start in starts:
                    run(start)
            else:
                with ThreadPoolExecutor(self.threads) as pool:
                    list(pool.map(run, starts))
        return out

    def _match(self, operands, particles, k, refs, grid, out, column):
        """Best match of a block's particles with reference ``k`` into column ``column`` of ``out``:
        every (shift, mirror) scanned, or screened then the ``keep`` best at full resolution."""
        ccf = self._correlate(operands, k, refs)
        if particles is None:
            _peaks(ccf, column, *out)
            if refs.screen_length < grid.maxrin:   # a coarse score: its angle in samples of maxrin
                out[3][:, column] *= grid.maxrin / refs.screen_length
            return
        keep = min(self.keep, refs.n_shifts * refs.n_mirror)
        chosen = np.empty((len(particles), keep), np.int64)
        fine = np.empty((len(particles), keep, grid.maxrin // 2 + 1), np.complex64)
        _screen(ccf, keep, chosen)
        _fine_spectra(particles, refs.dense[k], grid.lengths // 2, chosen, refs.n_mirror, fine)
        ccf = scipy.fft.irfft(fine, n=grid.maxrin, axis=-1, workers=1)
        _fine_peaks(ccf, chosen, refs.n_mirror, column, *out)

    @staticmethod
    def _block_size(refs, grid):
        columns = refs.n_shifts * refs.n_mirror
        length = refs.screen_length
        per_particle = columns * ((length // 2 + 1) * (8 + 8) + length * 4) + len(grid.radii) * grid.maxrin * 8
        most = 64 if refs.dense is not None or length == grid.maxrin else _MAX_OUTER   # coarse: call-bound
        return int(max(1, min(most, BLOCK_BYTES // per_particle)))

    @staticmethod
    def _particle_operands(spectra, refs, grid):
        """Left matrix-product operands ``[Re S | Im S]`` per band, ``(F, P, 2R)``, contiguous."""
        out = []
        for band in refs.bands:
            sub = _band_spectra(spectra, grid, band.first_ring, band.freqs)
            out.append(np.ascontiguousarray(np.concatenate([sub.real, sub.imag], axis=1).transpose(2, 0, 1)))
        return out

    @staticmethod
    def _correlate(operands, k, refs):
        """Rotational correlations ``(P, S, 1|2, L)`` of a particle block with reference ``k``."""
        count = operands[0].shape[1]
        n_freq = refs.screen_length // 2 + 1
        products = np.empty((n_freq, count, refs.bands[0].operand.shape[3]), np.float32)
        for lhs, band in zip(operands, refs.bands):
            np.matmul(lhs, band.operand[k], out=products[band.freqs])
        spectrum = np.empty((count, refs.n_shifts, refs.n_mirror, n_freq), np.complex64)
        _assemble(products, refs.n_shifts, refs.mirror, spectrum)
        return scipy.fft.irfft(spectrum, n=refs.screen_length, axis=-1, workers=1)

    # --- averages ---------------------------------------------------------
    def class_sums(self, images, params, classes, parity, n_classes):
        return imgops.class_sums(images, params, classes, parity, n_classes, self.threads)


def _bands(grid, max_freq):
    """``(first ring, frequency slice)`` per band up to ``max_freq``: the frequencies new in group g."""
    out, low = [], 0
    for first, _, length in ring_ops.groups(grid):
        high = min(length // 2, max_freq) + 1
        if high > low:
            out.append((first, slice(low, high)))
        low = high
    return out


def _band_spectra(spectra, grid, first_ring, freqs):
    """Spectra ``(N, R_band, F_band)`` of the rings from ``first_ring`` on, at band frequencies."""
    return np.concatenate([s[:, :, freqs] for s in spectra[ring_ops.group_of(grid, first_ring):]], axis=1)


