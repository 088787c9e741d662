"""Polar rings shared by the backends: sample positions, ring groups and ring spectra."""
import numpy as np
import scipy.fft


def ring_offsets(grid):
    """Sample offsets ``(dx, dy)`` of the polar grid: angle 0 on +x, increasing towards -y."""
    dx = np.empty(grid.total)
    dy = np.empty(grid.total)
    for r, n, o in zip(grid.radii, grid.lengths, grid.offsets):
        phi = 2.0 * np.pi * np.arange(n) / n
        dx[o:o + n] = r * np.cos(phi)
        dy[o:o + n] = -r * np.sin(phi)
    return dx, dy


def groups(grid):
    """Runs of consecutive rings of equal length: ``[(first ring, end ring, length)]``."""
    edges = np.flatnonzero(np.diff(grid.lengths)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [len(grid.lengths)]])
    return [(int(s), int(e), int(grid.lengths[s])) for s, e in zip(starts, ends)]


def group_of(grid, ring):
    """Index of the ring group that starts at ``ring``."""
    return [g[0] for g in groups(grid)].index(ring)


def dense(spectra, grid):
    """Group spectra -> one ``(N, R, maxrin//2 + 1)`` array, zero past each ring's Nyquist."""
    count = len(spectra[0])
    out = np.zeros((count, len(grid.radii), grid.maxrin // 2 + 1), np.complex64)
    for (first, end, length), spec in zip(groups(grid), spectra):
        out[:, first:end, :length // 2 + 1] = spec
    return out


def ring_spectra(rings, grid, weighted, out=None, workers=1):
    """Per ring group, the rfft of its rings ``(N, rings, length//2 + 1)`` (complex64).

    With ``weighted`` the SPARX ring weights are applied, halving a short ring's Nyquist bin, which
    appears twice once the ring is embedded in the longest one's spectrum.  With ``out`` (``(N, C)``
    complex64, ``C`` = the rings' ``length//2 + 1`` summed) the groups are written into consecutive
    column ranges of it, each ring's frequencies after the previous ring's, and returned as views of
    it: one copy fewer than concatenating them.  ``workers``: the FFTs' threads (each transform
    computes alike on any of them).
    """
    spectra, column = [], 0
    for first, end, length in groups(grid):
        lo = grid.offsets[first]
        block = rings[:, lo:lo + (end - first) * length].reshape(len(rings), end - first, length)
        spec = scipy.fft.rfft(block, axis=-1, workers=workers).astype(np.complex64, copy=False)
        if out is not None:
            width = (end - first) * (length // 2 + 1)
            dest = out[:, column:column + width].reshape(spec.shape)
            column += width
            if not np.may_share_memory(dest, out):
                raise ValueError("out must be a C-contiguous (N, C) array")
        else:
            dest = spec
        if weighted:
            np.multiply(spec, grid.weights[first:end, None].astype(np.float32), out=dest)
            if length < grid.maxrin:
                dest[:, :, -1] *= 0.5
        elif dest is not spec:
            dest[...] = spec
        spectra.append(dest)
    return spectra
