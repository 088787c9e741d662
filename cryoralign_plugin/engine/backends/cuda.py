"""CUDA backend: the :class:`~.base.Backend` contract on one GPU, with numba.cuda kernels.

This module selects the device, moves data and launches the kernels in batches that fit the free
memory (halving a batch on out-of-memory); the kernels are in :mod:`.cuda_kernels`, the grid tables
and the memory model in :mod:`.cuda_layout`, launch sizes and limits in :mod:`.cuda_config`.
:func:`describe` is the ``info`` command's report of the GPUs.
"""
from dataclasses import dataclass

import numpy as np
from numba import cuda, njit
from numba.cuda.cudadrv.driver import CudaAPIError

from .. import images as imgops
from ..errors import InputError
from ..geometry import largest_radius, polar_grid, shift_grid
from . import base
from . import cuda_config as config
from . import cuda_kernels as kernels
from .cuda_layout import largest_batch, layout, search_bytes

OUT_OF_MEMORY = 2  # CUDA_ERROR_OUT_OF_MEMORY


@njit(cache=True)
def _terms_table(params):
    """``(N, 5)`` kernel table of ``interpolation.transform_terms`` per parameter row, as the CPU computes it."""
    out = np.empty((params.shape[0], 5))
    for i in range(params.shape[0]):
        c, s, m, x, y = imgops.transform_terms(params[i])
        out[i, 0] = c
        out[i, 1] = s
        out[i, 2] = m
        out[i, 3] = x
        out[i, 4] = y
    return out


def transform_terms(params):
    """Kernel terms ``(N, 5)`` float64 of ``(N, 4)`` parameters (see :func:`.cuda_kernels.transform_kernel`)."""
    return _terms_table(np.ascontiguousarray(np.atleast_2d(params), dtype=np.float64))


def blocks(work):
    """Blocks for a grid-stride kernel over ``work`` items, one per thread, at most MAX_BLOCKS."""
    return max(1, min(-(-work // config.THREADS), config.MAX_BLOCKS))


def _out_of_memory(exc):
    """Whether a CUDA API error is CUDA_ERROR_OUT_OF_MEMORY (the simulator's error keeps it in args)."""
    code = getattr(exc, "code", exc.args[0] if exc.args else None)
    try:
        return int(code) == OUT_OF_MEMORY
    except (TypeError, ValueError):
        return False


def available():
    """True when a usable GPU (or the simulator) is present; cheap and never raises."""
    try:
        return bool(cuda.is_available())
    except Exception:  # a broken driver install must not stop the CPU path
        return False


def device_name(index):
    """Name of visible device ``index``."""
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
        names = ", ".join("%d (%s)" % (i, device_name(i)) for i in range(visible)) or "none"
        raise InputError("GPU %d does not exist; visible devices: %s (CUDA_VISIBLE_DEVICES renumbers them): "
                         "choose among those" % (device, names))
    cuda.select_device(device)
    return device


@dataclass
class PreparedReferences(base.PreparedReferences):
    """Weighted compact reference spectra ``(K, S, C)`` on the device, built once per iteration."""
    spectra: object


class CudaBackend(base.Backend):
    """The backend on one GPU: ``gpu[rank % len(gpu)]``.

    ``batch_size`` caps the particles per device batch (default: the largest that fits the free
    memory); an out-of-memory error halves the batch and retries.
    """
    name = "cuda"

    def __init__(self, gpu=None, rank=0, batch_size=None):
        self.device = _select(gpu, rank)
        self.batch_size = batch_size
        self.shared_limit = config.SHARED_LIMIT
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
            size = largest_batch(config.MEMORY_FRACTION * _free_memory(), 0, item_bytes, count)
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
    def polar(self, images, index, centers, grid):
        host, dev = self._layout(grid)
        images = np.ascontiguousarray(images, dtype=np.float32)
        index = np.ascontiguousarray(index, dtype=np.int64)
        centers = np.ascontiguousarray(centers, dtype=np.float64)
        out = np.empty((len(index), grid.total), np.float32)
        d_images = cuda.to_device(images)

        def run(a, b):
            d_out = cuda.device_array((b - a, grid.total), np.float32)
            kernels.polar_kernel[blocks((b - a) * grid.total), config.THREADS](
                d_images, cuda.to_device(index[a:b]), cuda.to_device(centers[a:b]), dev["dx"], dev["dy"], d_out)
            d_out.copy_to_host(out[a:b])
        self._in_batches(len(index), [grid.total * 4, 8, 16], run)
        return out

    def _spectra(self, d_rings, dev, weights, d_out):
        """Compact spectra of device rings, one block per row."""
        chunk = max(config.CHUNK, int(dev["perm"].shape[0]))
        kernels.spectra_kernel[min(d_rings.shape[0], config.MAX_BLOCKS), config.THREADS, 0, chunk * 8](
            d_rings, dev["chunks"], dev["offsets"], dev["coff"], dev["perm"], dev["tw"], weights, d_out)

    # --- search -----------------------------------------------------------
    def prepare_references(self, rings, grid, mirror, frequencies=None):
        """-> :class:`PreparedReferences`: weighted compact spectra on the device (every frequency,
        whatever ``frequencies`` asks)."""
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
        return PreparedReferences(n_refs, n_shifts, bool(mirror), d_spec.reshape(n_refs, n_shifts, host.size))

    def search(self, rings, refs, grid, members=None):
        """Exhaustive: every (reference, shift, mirror) at full resolution, fused in one kernel; with
        ``members`` each particle's columns are taken from that (the kernel is not restricted)."""
        host, dev = self._layout(grid)
        count = len(rings)
        rings = np.ascontiguousarray(rings, dtype=np.float32)
        out = (np.empty((count, refs.n_refs), np.float32), np.empty((count, refs.n_refs), np.int32),
               np.empty((count, refs.n_refs), np.int8), np.empty((count, refs.n_refs), np.float32))
        ones = cuda.to_device(np.ones(host.size, np.float32))
        in_shared = (grid.maxrin + host.size) * 8 <= self.shared_limit
        kernel = kernels.search_kernels(config.THREADS)[0 if in_shared else 1]
        shared_bytes = (grid.maxrin + (host.size if in_shared else 0)) * 8

        def run(a, b):
            d_spec = cuda.device_array((b - a, host.size), np.complex64)
            self._spectra(cuda.to_device(rings[a:b]), dev, ones, d_spec)
            d_out = [cuda.device_array((b - a, refs.n_refs), o.dtype) for o in out]
            kernel[min(b - a, config.MAX_BLOCKS), config.THREADS, 0, shared_bytes](
                d_spec, refs.spectra, dev["first"], dev["coff"], dev["perm"], dev["tw"], refs.n_mirror, *d_out)
            for d, o in zip(d_out, out):
                d.copy_to_host(o[a:b])
        self._in_batches(count, search_bytes(host, refs.n_refs), run)
        if members is not None:
            out = tuple(np.take_along_axis(o, np.maximum(members, 0), axis=1) for o in out)
            out[0][members < 0] = -np.inf
        return out

    # --- averages ---------------------------------------------------------
    def class_sums(self, images, params, classes, parity, n_classes):
        images = np.ascontiguousarray(images, dtype=np.float32)
        terms = transform_terms(params)
        classes = np.ascontiguousarray(classes, dtype=np.int64)
        parity = np.ascontiguousarray(parity, dtype=np.int64)
        box = images.shape[-1]
        d_sums = cuda.to_device(np.zeros((int(n_classes), 2, box, box), np.int64))

        def run(a, b):
            kernels.class_sums_kernel[blocks((b - a) * box * box), config.THREADS](
                cuda.to_device(images[a:b]), cuda.to_device(terms[a:b]), cuda.to_device(classes[a:b]),
                cuda.to_device(parity[a:b]), imgops.FIXED_POINT, d_sums)
        self._in_batches(len(images), [box * box * 4, 40, 8, 8], run)
        return d_sums.copy_to_host()


def describe(write, box=0, n_classes=1, shift_range=3.0):
    """Report the GPUs with their memory and, given a box, the search batch size this backend would use."""
    if not available():
        write("cuda: not available (no usable NVIDIA GPU/driver; install the 'gpu' extra on a GPU machine)")
        return
    kind = "simulator" if config.SIMULATOR else "numba.cuda %s" % getattr(cuda, "implementation", "")
    for i in range(len(cuda.gpus)):
        with cuda.gpus[i]:
            free, total = cuda.current_context().get_memory_info()
        line = "cuda: GPU %d %s (%s), %.1f of %.1f GiB free" % (i, device_name(i), kind, free / 2 ** 30,
                                                                 total / 2 ** 30)
        radius = largest_radius(box, shift_range)
        if radius >= 2:
            grid = polar_grid(radius)
            host = layout(grid)
            n_shifts = len(shift_grid(shift_range, 1.0))
            per = search_bytes(host, n_classes)
            refs = n_classes * n_shifts * host.size * 8
            batch = largest_batch(config.MEMORY_FRACTION * free, refs, per, 10 ** 7)
            line += "; box %d, %d classes, %d shifts: %d bytes/particle, search batch %d" % (
                box, n_classes, n_shifts, sum(per), batch)
        write(line)
