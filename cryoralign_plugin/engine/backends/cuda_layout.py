"""Host side of the CUDA backend that needs no GPU: the kernels' tables for a polar grid
(:class:`Layout`) and the device memory model (:func:`search_bytes`, :func:`largest_batch`).

Rings are stored "compact" on the device: ring ``r`` keeps its own ``n_r // 2 + 1`` frequencies
only, ring after ring (``C`` bins in all).  Ring lengths are powers of two, so the kernels' FFTs are
radix-2 and every ring length divides the longest, ``L = grid.maxrin``.
"""
from dataclasses import dataclass

import numpy as np

from .. import rings as ring_ops
from ..errors import InputError
from . import cuda_config as config


@dataclass
class Layout:
    """Host tables of a polar grid for the kernels (see :func:`layout`); ``R`` rings, ``T`` samples."""
    dx: np.ndarray       # (T,) float64 sample offsets from the sampling center, ring after ring
    dy: np.ndarray
    offsets: np.ndarray  # (R,) int32 start of each ring in the concatenated rings
    coff: np.ndarray     # (R,) int32 start of each ring in the compact spectra
    first: np.ndarray    # (L/2 + 1,) int32 first ring that has frequency f
    perm: np.ndarray     # (L,) int32 bit reversal over log2 L bits
    tw: np.ndarray       # (L/2,) complex64 exp(-2 pi i q / L)
    chunks: np.ndarray   # (G, 4) int32 ring, count, length, L / length: rings FFT'd together
    weights: np.ndarray  # (C,) float32 ring weights per compact bin (short rings' Nyquist halved)

    @property
    def size(self):
        """``C``: compact spectrum bins of one row of rings."""
        return len(self.weights)


def layout(grid):
    """The kernels' tables for ``grid``; weights come from ``rings.ring_spectra`` so the rule lives there."""
    length = grid.maxrin
    if length > config.MAX_RING:
        raise InputError("the CUDA backend handles rings of up to %d samples (radius <= 651 px), this radius "
                         "needs %d: downsample the particles or use --backend cpu" % (config.MAX_RING, length))
    dx, dy = ring_ops.ring_offsets(grid)
    bins = grid.lengths // 2 + 1
    bits = int(np.log2(length))
    j = np.arange(length)
    perm = np.zeros(length, np.int64)
    for b in range(bits):
        perm |= ((j >> b) & 1) << (bits - 1 - b)
    chunks = []
    for ring, end, n in ring_ops.groups(grid):
        per = max(1, max(config.CHUNK, length) // n)
        chunks += [(r, min(per, end - r), n, length // n) for r in range(ring, end, per)]
    delta = np.zeros((1, grid.total), np.float32)
    delta[0, grid.offsets] = 1.0  # its ring spectra are all ones: weighting leaves the weights
    weights = ring_ops.compact_spectra(delta, grid, weighted=True)[0].real
    return Layout(dx=dx, dy=dy, offsets=grid.offsets.astype(np.int32),
                  coff=(np.cumsum(bins) - bins).astype(np.int32),
                  first=np.searchsorted(grid.lengths // 2, np.arange(length // 2 + 1)).astype(np.int32),
                  perm=perm.astype(np.int32),
                  tw=np.exp(-2j * np.pi * np.arange(length // 2) / length).astype(np.complex64),
                  chunks=np.array(chunks, np.int32), weights=weights.astype(np.float32))


def search_bytes(grid_layout, n_refs):
    """Device bytes per particle of the search: rings, compact spectra and the (K) results."""
    return [len(grid_layout.dx) * 4, grid_layout.size * 8, n_refs * 13]


def largest_batch(budget, fixed, item_bytes, limit):
    """Largest count <= ``limit`` whose arrays (each rounded up to ALIGNMENT) fit ``budget`` bytes."""
    def footprint(count):
        return fixed + sum(-(-b * count // config.ALIGNMENT) * config.ALIGNMENT for b in item_bytes)
    lo, hi = 0, int(limit)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if footprint(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return max(1, lo)
