"""CUDA backend: numba.cuda kernels behind the CPU backend's interface (no cuFFT needed).

Search (fused, memory-light): one thread block per particle.  The particle's ring spectra sit in
shared memory (in global memory when they do not fit); for every (reference, shift) the threads
form, frequency by frequency, the straight ``sum_r W_r R conj(S)`` and mirrored ``sum_r W_r R S``
products from the same four real products, pack them as ``Q + iM`` (both correlations are real, so
one complex inverse FFT of length ``maxrin`` in shared memory yields both), take a block argmax
and keep the running best per reference.  Only the ``(P, K)`` results are written, so a particle
costs its rings, its spectra and its results on the device -- not a correlation table per
(reference, shift) as in Cryo-RALib.  Ties follow the CPU backend: first shift, straight before
mirror, lowest angle sample.

Ring FFTs are radix-2 (ring lengths are powers of two) in shared memory; rings are stored
"compact": ring ``r`` keeps its own ``n_r // 2 + 1`` frequencies only.  Averages use the same
Keys cubic interpolation and int64 fixed-point rounding as :mod:`..images`, summed with atomics,
so class sums equal the CPU's.

Under ``NUMBA_ENABLE_CUDASIM=1`` the kernels run in numba's simulator with few threads per block
and few blocks (every simulated thread costs milliseconds); grid-stride loops keep them correct
for any launch size.
"""
import math
from dataclasses import dataclass

import numba
import numpy as np
from numba import cuda, njit
from numba.cuda.cudadrv.driver import CudaAPIError

from .. import images as imgops
from .. import interpolation
from .. import rings as ring_ops
from ..errors import InputError
from ..geometry import MIRROR, PSI, SX, SY, largest_radius, polar_grid, shift_grid

SIMULATOR = bool(numba.config.ENABLE_CUDASIM)
THREADS = 8 if SIMULATOR else 128         # threads per block (a power of two)
MAX_BLOCKS = 2 if SIMULATOR else 2 ** 16  # grid-stride loops cover any remaining work
SHARED_LIMIT = 48 * 1024                  # shared memory a block may use without opt-in
CHUNK = 2048                              # complex samples per forward-FFT chunk of rings
MAX_RING = 4096                           # longest ring: the search's FFT buffer must fit SHARED_LIMIT
MEMORY_FRACTION = 0.9                     # of the free device memory, the rest is a safety margin
ALIGNMENT = 512                           # allocation granularity assumed by the memory model
OUT_OF_MEMORY = 2                         # CUDA_ERROR_OUT_OF_MEMORY


# --- device functions --------------------------------------------------------------------------
_bilinear = cuda.jit(device=True)(interpolation.bilinear)
_sample_cubic = cuda.jit(device=True)(interpolation.cubic_sampler(cuda.jit(device=True)(interpolation.cubic_weight)))


@cuda.jit(device=True)
def _moved(img, terms, ox, oy):
    """Pixel ``(ox, oy)`` of ``img`` transformed by ``terms`` = (cos, sin, flip, sx, sy)."""
    centre = img.shape[0] // 2
    uy = oy - centre - terms[4]
    ux = terms[2] * (ox - centre) - terms[3]
    return _sample_cubic(img, terms[0] * ux - terms[1] * uy + centre, terms[1] * ux + terms[0] * uy + centre)


@cuda.jit(device=True)
def _butterflies(buf, n, count, tw, inverse):
    """In-place radix-2 FFTs of ``count`` back-to-back length-``n`` transforms in bit-reversed order.

    ``tw[q] = exp(-2 pi i q / L)`` for the longest length ``L``; ``inverse`` conjugates (no 1/n).
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
    """``buf`` = bit-reversed ``(Q + iM) / L``, Hermitian-extended: Q straight, M mirrored products."""
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
def _parabola(buf, j, mirrored):
    """Sub-sample peak offset: 7-point least-squares parabola, clamped to +-1 (CPU ``_peaks``)."""
    length = buf.shape[0]
    slope = 0.0
    curve = 0.0
    for u in range(-3, 4):
        z = buf[(j + u) % length]
        v = z.imag if mirrored else z.real
        slope += u * v
        curve += (u * u - 4) * v
    if curve < 0.0:
        return min(1.0, max(-1.0, -(slope / 28.0) / (2.0 * curve / 84.0)))
    return 0.0


@cuda.jit(device=True)
def _search_one(p, spec, refs, first, coff, perm, tw, n_mirror, buf, red_v, red_i, score, shift, flip, angle):
    """Best (score, shift, mirror, angle) of particle ``p`` against every reference."""
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
            flip[p, k] = best_m
            angle[p, k] = best_j


# --- kernels -------------------------------------------------------------------------------------
@cuda.jit
def _polar_kernel(images, index, centres, dx, dy, out):
    samples = dx.shape[0]
    for q in range(cuda.grid(1), out.shape[0] * samples, cuda.gridsize(1)):
        i = q // samples
        t = q % samples
        out[i, t] = _bilinear(images[index[i]], centres[i, 0] + dx[t], centres[i, 1] + dy[t])


@cuda.jit
def _spectra_kernel(rings, chunks, offsets, coff, perm, tw, weight, out):
    """Compact (weighted) rfft of every ring of every row; one block per row, ring chunks in turn."""
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


@cuda.jit
def _search_shared(spectra, refs, first, coff, perm, tw, n_mirror, score, shift, flip, angle):
    dynamic = cuda.shared.array(0, numba.complex64)
    red_v = cuda.shared.array(THREADS, numba.float32)
    red_i = cuda.shared.array(THREADS, numba.int32)
    length = perm.shape[0]
    buf = dynamic[:length]
    spec = dynamic[length:length + spectra.shape[1]]
    for p in range(cuda.blockIdx.x, spectra.shape[0], cuda.gridDim.x):
        for c in range(cuda.threadIdx.x, spectra.shape[1], cuda.blockDim.x):
            spec[c] = spectra[p, c]
        cuda.syncthreads()
        _search_one(p, spec, refs, first, coff, perm, tw, n_mirror, buf, red_v, red_i, score, shift, flip, angle)


@cuda.jit
def _search_global(spectra, refs, first, coff, perm, tw, n_mirror, score, shift, flip, angle):
    buf = cuda.shared.array(0, numba.complex64)
    red_v = cuda.shared.array(THREADS, numba.float32)
    red_i = cuda.shared.array(THREADS, numba.int32)
    for p in range(cuda.blockIdx.x, spectra.shape[0], cuda.gridDim.x):
        _search_one(p, spectra[p], refs, first, coff, perm, tw, n_mirror, buf, red_v, red_i,
                    score, shift, flip, angle)


@cuda.jit
def _transform_kernel(images, terms, out):
    n = images.shape[1]
    for q in range(cuda.grid(1), images.shape[0] * n * n, cuda.gridsize(1)):
        i = q // (n * n)
        oy = (q // n) % n
        ox = q % n
        out[i, oy, ox] = _moved(images[i], terms[i], ox, oy)


@cuda.jit
def _class_sums_kernel(images, terms, classes, parity, fixed, sums):
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


# --- host side -----------------------------------------------------------------------------------
@njit(cache=True)
def _transform_terms(params):
    """Per image ``(cos, sin, flip, sx, sy)``, computed as ``images._transform_one`` does."""
    out = np.empty((params.shape[0], 5))
    for i in range(params.shape[0]):
        a = np.deg2rad(params[i, PSI])
        out[i, 0] = np.cos(a)
        out[i, 1] = np.sin(a)
        out[i, 2] = -1.0 if params[i, MIRROR] > 0.5 else 1.0
        out[i, 3] = params[i, SX]
        out[i, 4] = params[i, SY]
    return out


def compact(spectra):
    """Group spectra (``rings.ring_spectra``) -> ``(N, C)``: each ring's own frequencies, ring after ring."""
    return np.concatenate([s.reshape(len(s), -1) for s in spectra], axis=1)


@dataclass
class Layout:
    """Host tables of a polar grid for the kernels (see :func:`layout`)."""
    dx: np.ndarray       # (T,) sample offsets
    dy: np.ndarray
    offsets: np.ndarray  # (R,) start of each ring in the concatenated rings
    coff: np.ndarray     # (R,) start of each ring in the compact spectra
    first: np.ndarray    # (L/2 + 1,) first ring that has frequency f
    perm: np.ndarray     # (L,) bit reversal over log2 L bits
    tw: np.ndarray       # (L/2,) exp(-2 pi i q / L)
    chunks: np.ndarray   # (G, 4) ring, count, length, L / length: rings FFT'd together
    weights: np.ndarray  # (C,) ring weights per compact bin (short rings' Nyquist halved)

    @property
    def size(self):
        return len(self.weights)


def layout(grid):
    """The kernels' tables for ``grid``; weights come from ``rings.ring_spectra`` so the rule lives there."""
    length = grid.maxrin
    if length > MAX_RING:
        raise InputError("the CUDA backend handles rings of up to %d samples (radius <= 651 px), this radius "
                         "needs %d: downsample the particles or use --backend cpu" % (MAX_RING, length))
    dx, dy = ring_ops.ring_offsets(grid)
    bins = grid.lengths // 2 + 1
    bits = int(np.log2(length))
    j = np.arange(length)
    perm = np.zeros(length, np.int64)
    for b in range(bits):
        perm |= ((j >> b) & 1) << (bits - 1 - b)
    chunks = []
    for ring, end, n in ring_ops.groups(grid):
        per = max(1, max(CHUNK, length) // n)
        chunks += [(r, min(per, end - r), n, length // n) for r in range(ring, end, per)]
    delta = np.zeros((1, grid.total), np.float32)
    delta[0, grid.offsets] = 1.0  # its ring spectra are all ones: weighting leaves the weights
    weights = compact(ring_ops.ring_spectra(delta, grid, weighted=True))[0].real
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
        return fixed + sum(-(-b * count // ALIGNMENT) * ALIGNMENT for b in item_bytes)
    lo, hi = 0, int(limit)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if footprint(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return max(1, lo)


def _out_of_memory(exc):
    """Whether a CUDA API error is CUDA_ERROR_OUT_OF_MEMORY (the simulator's error keeps it in args)."""
    code = getattr(exc, "code", exc.args[0] if exc.args else None)
    try:
        return int(code) == OUT_OF_MEMORY
    except (TypeError, ValueError):
        return False


def _blocks(work):
    return max(1, min(-(-work // THREADS), MAX_BLOCKS))


def available():
    """True when a usable GPU (or the simulator) is present; cheap and never raises."""
    try:
        return bool(cuda.is_available())
    except Exception:  # a broken driver install must not stop the CPU path
        return False


def _device_name(index):
    name = getattr(cuda.gpus[index], "name", "CUDA simulator")
    return name.decode() if isinstance(name, bytes) else str(name)


def _free_memory():
    return cuda.current_context().get_memory_info()[0]


def _select(gpu, rank):
    """Select ``gpu[rank % len(gpu)]`` (device 0 when ``gpu`` is empty); unknown ids are input errors."""
    ids = list(gpu) if gpu else [0]
    device = int(ids[rank % len(ids)])
    visible = len(cuda.gpus)
    if not 0 <= device < visible:
        names = ", ".join("%d (%s)" % (i, _device_name(i)) for i in range(visible)) or "none"
        raise InputError("GPU %d does not exist; visible devices: %s (CUDA_VISIBLE_DEVICES renumbers them): "
                         "choose among those" % (device, names))
    cuda.select_device(device)
    return device


@dataclass
class CudaReferences:
    """Weighted compact reference spectra ``(K, S, C)`` on the device, built once per iteration."""
    n_refs: int
    n_shifts: int
    mirror: bool
    spectra: object


class CudaBackend:
    """The CPU backend's interface on one GPU: ``gpu[rank % len(gpu)]``.

    ``batch_size`` caps the particles per device batch (default: the largest that fits the free
    memory); an out-of-memory error halves the batch and retries.  ``threads`` is accepted for
    interface parity: the host work left to this backend is negligible.
    """
    name = "cuda"

    def __init__(self, gpu=None, rank=0, threads=None, batch_size=None):
        self.device = _select(gpu, rank)
        self.batch_size = batch_size
        self.shared_limit = SHARED_LIMIT
        self._layouts = {}

    def _layout(self, grid):
        """Host and device tables of ``grid``, built once per grid."""
        key = (grid.radii.tobytes(), grid.lengths.tobytes())
        if key not in self._layouts:
            host = layout(grid)
            self._layouts[key] = (host, {f: cuda.to_device(getattr(host, f)) for f in host.__dataclass_fields__})
        return self._layouts[key]

    def _in_batches(self, count, item_bytes, run):
        """``run(start, stop)`` over ``0..count`` in batches that fit; out of memory halves the batch.

        Arrays allocated before the call (references, images, sums) are already out of the free memory.
        """
        if self.batch_size:
            size = max(1, min(int(self.batch_size), count))
        else:
            size = largest_batch(MEMORY_FRACTION * _free_memory(), 0, item_bytes, count)
        start = 0
        while start < count:
            stop = min(start + size, count)
            try:
                run(start, stop)
            except CudaAPIError as exc:
                if not _out_of_memory(exc):
                    raise
                if size == 1:
                    raise InputError("GPU %d ran out of memory even for one particle: use fewer classes or "
                                     "shifts, another GPU, or --backend cpu" % self.device) from exc
                size = max(1, size // 2)
                continue
            start = stop

    # --- resampling -------------------------------------------------------
    def polar(self, images, index, centres, grid):
        """Rings ``(len(index), T)`` of ``images[index]`` resampled around absolute ``centres``."""
        host, dev = self._layout(grid)
        images = np.ascontiguousarray(images, dtype=np.float32)
        index = np.ascontiguousarray(index, dtype=np.int64)
        centres = np.ascontiguousarray(centres, dtype=np.float64)
        out = np.empty((len(index), grid.total), np.float32)
        d_images = cuda.to_device(images)

        def run(a, b):
            d_out = cuda.device_array((b - a, grid.total), np.float32)
            _polar_kernel[_blocks((b - a) * grid.total), THREADS](
                d_images, cuda.to_device(index[a:b]), cuda.to_device(centres[a:b]), dev["dx"], dev["dy"], d_out)
            d_out.copy_to_host(out[a:b])
        self._in_batches(len(index), [grid.total * 4, 8, 16], run)
        return out

    def _spectra(self, d_rings, dev, weights, d_out):
        """Compact spectra of device rings, one block per row."""
        chunk = max(CHUNK, int(dev["perm"].shape[0]))
        _spectra_kernel[min(d_rings.shape[0], MAX_BLOCKS), THREADS, 0, chunk * 8](
            d_rings, dev["chunks"], dev["offsets"], dev["coff"], dev["perm"], dev["tw"], weights, d_out)

    # --- search -----------------------------------------------------------
    def prepare_references(self, rings, grid, mirror):
        """Reference rings ``(K, S, T)`` -> :class:`CudaReferences` (weighted spectra on the device)."""
        host, dev = self._layout(grid)
        n_refs, n_shifts = rings.shape[:2]
        mib = n_refs * n_shifts * host.size * 8 / 2 ** 20
        try:
            d_rings = cuda.to_device(np.ascontiguousarray(rings.reshape(n_refs * n_shifts, -1), dtype=np.float32))
            d_spec = cuda.device_array((n_refs * n_shifts, host.size), np.complex64)
        except CudaAPIError as exc:
            if not _out_of_memory(exc):
                raise
            raise InputError("the spectra of %d references x %d shifts (%.0f MiB) do not fit GPU %d: use fewer "
                             "classes or a smaller shift range, or --backend cpu"
                             % (n_refs, n_shifts, mib, self.device)) from exc
        self._spectra(d_rings, dev, dev["weights"], d_spec)
        return CudaReferences(n_refs, n_shifts, bool(mirror), d_spec.reshape(n_refs, n_shifts, host.size))

    def search(self, rings, refs, grid):
        """Best (score, shift index, mirror, angle sample) of every particle against every reference.

        Returns four ``(P, K)`` arrays; the angle is in ring samples of length ``grid.maxrin``.
        """
        host, dev = self._layout(grid)
        count = len(rings)
        rings = np.ascontiguousarray(rings, dtype=np.float32)
        out = (np.empty((count, refs.n_refs), np.float32), np.empty((count, refs.n_refs), np.int32),
               np.empty((count, refs.n_refs), np.int8), np.empty((count, refs.n_refs), np.float32))
        ones = cuda.to_device(np.ones(host.size, np.float32))
        in_shared = (grid.maxrin + host.size) * 8 <= self.shared_limit
        kernel = _search_shared if in_shared else _search_global
        shared_bytes = (grid.maxrin + (host.size if in_shared else 0)) * 8

        def run(a, b):
            d_spec = cuda.device_array((b - a, host.size), np.complex64)
            self._spectra(cuda.to_device(rings[a:b]), dev, ones, d_spec)
            d_out = [cuda.device_array((b - a, refs.n_refs), o.dtype) for o in out]
            kernel[min(b - a, MAX_BLOCKS), THREADS, 0, shared_bytes](
                d_spec, refs.spectra, dev["first"], dev["coff"], dev["perm"], dev["tw"], 2 if refs.mirror else 1,
                *d_out)
            for d, o in zip(d_out, out):
                d.copy_to_host(o[a:b])
        self._in_batches(count, search_bytes(host, refs.n_refs), run)
        return out

    # --- averages ---------------------------------------------------------
    def transform(self, images, params):
        """Apply ``(N, 4)`` parameters to ``(N, n, n)`` images (rotate, shift, mirror; cubic)."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        terms = _transform_terms(np.ascontiguousarray(np.atleast_2d(params), dtype=np.float64))
        out = np.empty_like(images)

        def run(a, b):
            d_out = cuda.device_array(images[a:b].shape, np.float32)
            _transform_kernel[_blocks(d_out.size), THREADS](
                cuda.to_device(images[a:b]), cuda.to_device(terms[a:b]), d_out)
            d_out.copy_to_host(out[a:b])
        self._in_batches(len(images), [images[0:1].nbytes * 2, 40], run)
        return out

    def class_sums(self, images, params, classes, parity, n_classes):
        """Even/odd fixed-point class sums ``(K, 2, n, n)`` int64, equal to ``images.class_sums``."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        terms = _transform_terms(np.ascontiguousarray(params, dtype=np.float64))
        classes = np.ascontiguousarray(classes, dtype=np.int64)
        parity = np.ascontiguousarray(parity, dtype=np.int64)
        box = images.shape[-1]
        d_sums = cuda.to_device(np.zeros((int(n_classes), 2, box, box), np.int64))

        def run(a, b):
            _class_sums_kernel[_blocks((b - a) * box * box), THREADS](
                cuda.to_device(images[a:b]), cuda.to_device(terms[a:b]), cuda.to_device(classes[a:b]),
                cuda.to_device(parity[a:b]), imgops.FIXED_POINT, d_sums)
        self._in_batches(len(images), [box * box * 4, 40, 8, 8], run)
        return d_sums.copy_to_host()


def describe(write, box=0, n_classes=1, shift_range=3.0):
    """Report the GPUs with their memory and, given a box, the search batch size this backend would use."""
    if not available():
        write("cuda: not available (no usable NVIDIA GPU/driver; install the 'gpu' extra on a GPU machine)")
        return
    kind = "simulator" if SIMULATOR else "numba.cuda %s" % getattr(cuda, "implementation", "")
    for i in range(len(cuda.gpus)):
        with cuda.gpus[i]:
            free, total = cuda.current_context().get_memory_info()
        line = "cuda: GPU %d %s (%s), %.1f of %.1f GiB free" % (i, _device_name(i), kind, free / 2 ** 30,
                                                                 total / 2 ** 30)
        radius = largest_radius(box, shift_range)
        if radius >= 2:
            grid = polar_grid(radius)
            host = layout(grid)
            n_shifts = len(shift_grid(shift_range, 1.0))
            per = search_bytes(host, n_classes)
            refs = n_classes * n_shifts * host.size * 8
            batch = largest_batch(MEMORY_FRACTION * free, refs, per, 10 ** 7)
            line += "; box %d, %d classes, %d shifts: %d bytes/particle, search batch %d" % (
                box, n_classes, n_shifts, sum(per), batch)
        write(line)
