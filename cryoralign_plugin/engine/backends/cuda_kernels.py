"""The CUDA backend's device functions and kernels (numba.cuda; no cuFFT needed).

Search (fused, memory-light): one thread block per particle.  The particle's ring spectra sit in
shared memory (in global memory when they do not fit); for every (reference, shift) the threads
form, frequency by frequency, the straight ``sum_r W_r R conj(S)`` and mirrored ``sum_r W_r R S``
products from the same four real products, pack them as ``Q + iM`` (both correlations are real, so
one complex inverse FFT of length ``L = maxrin`` in shared memory yields both), take a block argmax
and keep the running best per reference.  Only the ``(P, K)`` results are written, so a particle
costs its rings, its spectra and its results on the device -- not a correlation table per
(reference, shift) as in Cryo-RALib.  Ties follow the CPU backend: first shift, straight before
mirror, lowest angle sample.

Ring FFTs are radix-2 (ring lengths are powers of two) in shared memory, on the compact spectra of
:mod:`.cuda_layout`.  Averages use the same Keys cubic interpolation and int64 fixed-point rounding
as :mod:`..images`, summed with atomics, so class sums equal the CPU's.  Sampling, the pixel pull
and the peak parabola are :mod:`..interpolation`'s, compiled here as device functions.

Shapes: ``P`` particles (rows), ``K`` references, ``S`` trial shifts, ``R`` rings, ``T`` ring samples
in all, ``L`` samples of the longest ring, ``C`` compact spectrum bins, ``n`` the box.  The host
(:mod:`.cuda`) launches every kernel with :data:`.cuda_config.THREADS` threads per block; the search
kernels, whose block reductions are sized by it, are built per block size (:func:`search_kernels`).
"""
import functools
import math

import numba
from numba import cuda

from .. import interpolation

# --- device functions --------------------------------------------------------------------------
_bilinear = cuda.jit(device=True)(interpolation.bilinear)
_sample_cubic = cuda.jit(device=True)(interpolation.cubic_sampler(cuda.jit(device=True)(interpolation.cubic_weight)))
_moved = cuda.jit(device=True)(interpolation.mover(_sample_cubic))
_parabola = cuda.jit(device=True)(interpolation.peak_refiner(cuda.jit(device=True)(interpolation.packed_sample)))


@cuda.jit(device=True)
def _butterflies(buf, n, count, tw, inverse):
    """In-place radix-2 FFTs of ``count`` back-to-back length-``n`` transforms in bit-reversed order.

    Parameters
    ----------
    buf : (>= count * n,) complex64, shared
        The transforms' inputs in bit-reversed order; outputs in natural order.
    n : int
        Length of each transform (a power of two dividing ``L``).
    count : int
        Number of transforms.
    tw : (L/2,) complex64
        ``tw[q] = exp(-2 pi i q / L)`` for the longest length ``L``.
    inverse : bool
        Conjugate the twiddles (an unnormalised inverse FFT: no ``1/n``).
    """
    half = 1
    while half < n:
        stride = tw.shape[0] // half
        for q in range(cuda.threadIdx.x, count * n // 2, cuda.blockDim.x):
            pos = q & (half - 1)  # butterfly q of a span-2*half group; groups never straddle transforms
            i0 = 2 * q - pos
            i1 = i0 + half
            w = tw[pos * stride]
            if inverse:
                w = w.conjugate()
            x = w * buf[i1]
            buf[i1] = buf[i0] - x
            buf[i0] = buf[i0] + x
        cuda.syncthreads()
        half *= 2


@cuda.jit(device=True)
def _products(spec, ref, first, coff, perm, n_mirror, buf):
    """``buf`` = bit-reversed ``(Q + iM) / L``, Hermitian-extended: Q straight, M mirrored products.

    Parameters
    ----------
    spec : (C,) complex64
        The particle's compact ring spectra (unweighted).
    ref : (C,) complex64
        One (reference, shift)'s compact ring spectra, weighted.
    first : (L/2 + 1,) int32
        ``first[f]``: first ring that has frequency ``f`` (rings ``first[f]..R-1`` do).
    coff : (R,) int32
        Start of ring ``r``'s ``n_r // 2 + 1`` bins in the compact spectra.
    perm : (L,) int32
        Bit reversal over ``log2 L`` bits: where natural index ``q`` goes in ``buf``.
    n_mirror : int
        1: straight products only (``M = 0``); 2: also the mirrored ones.
    buf : (L,) complex64, shared
        Output, ready for the inverse :func:`_butterflies`.
    """
    length = perm.shape[0]
    half = length // 2
    rings = coff.shape[0]
    scale = numba.float32(1.0 / length)
    for f in range(cuda.threadIdx.x, half + 1, cuda.blockDim.x):
        qr = numba.float32(0.0)
        qi = numba.float32(0.0)
        mr = numba.float32(0.0)
        mi = numba.float32(0.0)
        for r in range(first[f], rings):
            c = coff[r] + f
            a = ref[c]
            b = spec[c]
            rr = a.real * b.real
            ii = a.imag * b.imag
            ir = a.imag * b.real
            ri = a.real * b.imag
            qr += rr + ii
            qi += ir - ri
            if n_mirror == 2:
                mr += rr - ii
                mi += ir + ri
        if f == 0 or f == half:
            qi = numba.float32(0.0)
            mi = numba.float32(0.0)
        qr *= scale
        qi *= scale
        mr *= scale
        mi *= scale
        buf[perm[f]] = complex(qr - mi, qi + mr)
        if 0 < f < half:
            buf[perm[length - f]] = complex(qr + mi, mr - qi)
    cuda.syncthreads()


@cuda.jit(device=True)
def _block_argmax(buf, n_mirror, red_v, red_i):
    """Block-wide first maximum over straight (real) then mirrored (imag) samples -> ``red_*[0]``.

    Index ``m * L + j``; equal values keep the lower index, as the CPU's scan order does.

    Parameters
    ----------
    buf : (L,) complex64, shared
        Packed correlations ``Q + iM`` (natural order).
    n_mirror : int
        1: scan ``Q`` only; 2: ``Q`` then ``M``.
    red_v, red_i : (THREADS,) float32, int32, shared
        Reduction scratch; on return ``red_v[0]`` is the maximum and ``red_i[0]`` its index.
    """
    t = cuda.threadIdx.x
    length = buf.shape[0]
    best = numba.float32(-math.inf)
    where = 2 * length
    for j in range(t, length, cuda.blockDim.x):
        if buf[j].real > best:
            best = buf[j].real
            where = j
    if n_mirror == 2:
        for j in range(t, length, cuda.blockDim.x):
            if buf[j].imag > best:
                best = buf[j].imag
                where = length + j
    red_v[t] = best
    red_i[t] = where
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        if t < half:
            other = red_v[t + half]
            if other > red_v[t] or (other == red_v[t] and red_i[t + half] < red_i[t]):
                red_v[t] = other
                red_i[t] = red_i[t + half]
        cuda.syncthreads()
        half //= 2


@cuda.jit(device=True)
def _search_one(p, spec, refs, first, coff, perm, tw, n_mirror, buf, red_v, red_i, score, shift, mirror, angle):
    """Best (score, shift, mirror, angle) of particle ``p`` against every reference.

    ``spec`` ``(C,)`` is particle ``p``'s spectra (shared or global memory), ``buf`` the ``(L,)``
    shared FFT buffer, ``red_*`` the reduction scratch; the other arguments are the search
    kernels' (:func:`search_shared`).  Thread 0 writes row ``p`` of the outputs.
    """
    length = perm.shape[0]
    for k in range(refs.shape[0]):
        best = -math.inf
        best_s = 0
        best_m = 0
        best_j = 0.0
        for s in range(refs.shape[1]):
            _products(spec, refs[k, s], first, coff, perm, n_mirror, buf)
            _butterflies(buf, length, 1, tw, True)
            _block_argmax(buf, n_mirror, red_v, red_i)
            if cuda.threadIdx.x == 0 and red_v[0] > best:
                best = red_v[0]
                best_s = s
                best_m = red_i[0] // length
                j = red_i[0] % length
                best_j = j + _parabola(buf, j, best_m == 1)
            cuda.syncthreads()
        if cuda.threadIdx.x == 0:
            score[p, k] = best
            shift[p, k] = best_s
            mirror[p, k] = best_m
            angle[p, k] = best_j


# --- kernels -------------------------------------------------------------------------------------
@cuda.jit
def polar_kernel(images, index, centers, dx, dy, out):
    """Bilinear polar resampling, one thread per (row, sample), grid-stride.

    Parameters
    ----------
    images : (N, n, n) float32
        The images to sample.
    index : (M,) int64
        Image of each output row.
    centers : (M, 2) float64
        Absolute sampling center ``(x, y)`` of each output row.
    dx, dy : (T,) float64
        Offsets of the polar grid's samples from the center, ring after ring.
    out : (M, T) float32
        The rings: ``out[i, t] = images[index[i]]`` at ``centers[i] + (dx[t], dy[t])``.
    """
    samples = dx.shape[0]
    for q in range(cuda.grid(1), out.shape[0] * samples, cuda.gridsize(1)):
        i = q // samples
        t = q % samples
        out[i, t] = _bilinear(images[index[i]], centers[i, 0] + dx[t], centers[i, 1] + dy[t])


@cuda.jit
def spectra_kernel(rings, chunks, offsets, coff, perm, tw, weight, out):
    """Compact (weighted) rfft of every ring of every row; one block per row, ring chunks in turn.

    Dynamic shared memory: ``max(CHUNK, L)`` complex64 (one chunk of rings).

    Parameters
    ----------
    rings : (N, T) float32
        Rows of concatenated rings.
    chunks : (G, 4) int32
        ``(first ring, ring count, ring length n, L // n)`` per chunk: rings of one length
        transformed together (``L // n`` turns the ``L``-bit reversal ``perm`` into the ``n``-bit one).
    offsets : (R,) int32
        Start of ring ``r`` in a row of ``rings``.
    coff : (R,) int32
        Start of ring ``r``'s ``n_r // 2 + 1`` bins in a row of ``out``.
    perm : (L,) int32
        Bit reversal over ``log2 L`` bits.
    tw : (L/2,) complex64
        Twiddles ``exp(-2 pi i q / L)``.
    weight : (C,) float32
        Factor per compact bin (the ring weights for references, ones for particles).
    out : (N, C) complex64
        The compact spectra.
    """
    buf = cuda.shared.array(0, numba.complex64)
    t = cuda.threadIdx.x
    for row in range(cuda.blockIdx.x, rings.shape[0], cuda.gridDim.x):
        for c in range(chunks.shape[0]):
            ring0, count, n, spread = chunks[c, 0], chunks[c, 1], chunks[c, 2], chunks[c, 3]
            base = offsets[ring0]
            for q in range(t, count * n, cuda.blockDim.x):
                buf[(q // n) * n + perm[q % n] // spread] = complex(rings[row, base + q], 0.0)
            cuda.syncthreads()
            _butterflies(buf, n, count, tw, False)
            bins = n // 2 + 1
            for q in range(t, count * bins, cuda.blockDim.x):
                dst = coff[ring0 + q // bins] + q % bins
                out[row, dst] = buf[(q // bins) * n + q % bins] * weight[dst]
            cuda.syncthreads()


@functools.lru_cache(maxsize=None)
def search_kernels(threads):
    """The fused search kernels ``(search_shared, search_global)`` for blocks of ``threads`` threads.

    Built (and cached) per block size: their reduction arrays ``(threads,)`` are sized when numba
    compiles them, so the size is a closure constant rather than a global frozen at the first launch.
    Launch with ``threads`` (a power of two) threads per block.
    """
    @cuda.jit
    def search_shared(spectra, refs, first, coff, perm, tw, n_mirror, score, shift, mirror, angle):
        """Fused search, one block per particle, the particle's spectra copied to shared memory.

        Dynamic shared memory: ``L + C`` complex64 (the FFT buffer, then the particle's spectra).

        Parameters
        ----------
        spectra : (P, C) complex64
            The particles' compact ring spectra, unweighted.
        refs : (K, S, C) complex64
            The references' compact ring spectra per trial shift, weighted.
        first : (L/2 + 1,) int32
            ``first[f]``: first ring that has frequency ``f``.
        coff : (R,) int32
            Start of ring ``r`` in the compact spectra.
        perm : (L,) int32
            Bit reversal over ``log2 L`` bits.
        tw : (L/2,) complex64
            Twiddles ``exp(-2 pi i q / L)``.
        n_mirror : int
            1: straight correlations only; 2: also the mirrored ones.
        score : (P, K) float32
            Output: best correlation of each (particle, reference).
        shift : (P, K) int32
            Output: its trial-shift index (into the ``S`` shifts).
        mirror : (P, K) int8
            Output: 1 when the best is a mirrored correlation.
        angle : (P, K) float32
            Output: its peak position in samples of ``L``, refined by the 7-point parabola.
        """
        dynamic = cuda.shared.array(0, numba.complex64)
        red_v = cuda.shared.array(threads, numba.float32)
        red_i = cuda.shared.array(threads, numba.int32)
        length = perm.shape[0]
        buf = dynamic[:length]
        spec = dynamic[length:length + spectra.shape[1]]
        for p in range(cuda.blockIdx.x, spectra.shape[0], cuda.gridDim.x):
            for c in range(cuda.threadIdx.x, spectra.shape[1], cuda.blockDim.x):
                spec[c] = spectra[p, c]
            cuda.syncthreads()
            _search_one(p, spec, refs, first, coff, perm, tw, n_mirror, buf, red_v, red_i,
                        score, shift, mirror, angle)

    @cuda.jit
    def search_global(spectra, refs, first, coff, perm, tw, n_mirror, score, shift, mirror, angle):
        """:func:`search_shared` reading the particle's spectra from global memory (when ``L + C``
        complex64 do not fit the shared limit).  Dynamic shared memory: ``L`` complex64.  Same arguments.
        """
        buf = cuda.shared.array(0, numba.complex64)
        red_v = cuda.shared.array(threads, numba.float32)
        red_i = cuda.shared.array(threads, numba.int32)
        for p in range(cuda.blockIdx.x, spectra.shape[0], cuda.gridDim.x):
            _search_one(p, spectra[p], refs, first, coff, perm, tw, n_mirror, buf, red_v, red_i,
                        score, shift, mirror, angle)

    return search_shared, search_global


@cuda.jit
def transform_kernel(images, terms, out):
    """Transformed images, one thread per pixel, grid-stride: the pixel pull of
    :func:`class_sums_kernel` without the sums (checked against ``images.transform`` by the tests).

    Parameters
    ----------
    images : (N, n, n) float32
        The images.
    terms : (N, 5) float64
        ``(cos psi, sin psi, mirror sign, sx, sy)`` per image (``interpolation.transform_terms``,
        computed on the host).
    out : (N, n, n) float32
        The transformed images (Keys cubic interpolation).
    """
    n = images.shape[1]
    for q in range(cuda.grid(1), images.shape[0] * n * n, cuda.gridsize(1)):
        i = q // (n * n)
        oy = (q // n) % n
        ox = q % n
        out[i, oy, ox] = _moved(images[i], terms[i], ox, oy)


@cuda.jit
def class_sums_kernel(images, terms, classes, parity, fixed, sums):
    """Even/odd fixed-point sums of the transformed images per class, one thread per pixel, atomics.

    Parameters
    ----------
    images : (N, n, n) float32
        The particles.
    terms : (N, 5) float64
        ``(cos psi, sin psi, mirror sign, sx, sy)`` per particle (see :func:`transform_kernel`).
    classes : (N,) int64
        Class of each particle; -1 leaves it out.
    parity : (N,) int64
        Half-set (0 or 1) of each particle.
    fixed : float
        Fixed-point scale (``images.FIXED_POINT``): a pixel adds ``round(value * fixed)``.
    sums : (K, 2, n, n) int64
        Accumulated in place.
    """
    n = images.shape[1]
    for q in range(cuda.grid(1), images.shape[0] * n * n, cuda.gridsize(1)):
        i = q // (n * n)
        k = classes[i]
        if k < 0:
            continue
        oy = (q // n) % n
        ox = q % n
        value = numba.float32(_moved(images[i], terms[i], ox, oy))
        cuda.atomic.add(sums, (k, parity[i], oy, ox), round(value * fixed))
