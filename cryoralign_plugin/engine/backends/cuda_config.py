"""Launch sizes and limits of the CUDA backend, in one place.

The host code (:mod:`.cuda`, :mod:`.cuda_layout`) reads these as ``cuda_config.NAME`` at each launch,
never as copies, so a test may patch them, e.g. ``monkeypatch.setattr(cuda_config, "THREADS", 4)``;
the search kernels, whose block reductions are sized by ``THREADS``, are built per value
(``cuda_kernels.search_kernels``), so a patched value gets kernels of its own.

Under ``NUMBA_ENABLE_CUDASIM=1`` (numba's CUDA simulator, :data:`SIMULATOR`) every simulated thread
costs milliseconds, so blocks are small and few; the kernels' grid-stride loops stay correct for any
launch size.
"""
import numba

SIMULATOR = bool(numba.config.ENABLE_CUDASIM)  # kernels run in numba's CUDA simulator
THREADS = 8 if SIMULATOR else 128               # threads per block (a power of two: block reductions)
MAX_BLOCKS = 2 if SIMULATOR else 2 ** 16        # blocks per launch; grid-stride loops cover the rest
SHARED_LIMIT = 48 * 1024                        # shared memory (bytes) a block may use without opt-in
CHUNK = 2048                                    # complex samples per forward-FFT chunk of rings
MAX_RING = 4096                                 # longest ring: the search's FFT buffer must fit SHARED_LIMIT
MEMORY_FRACTION = 0.9                           # of the free device memory; the rest is a safety margin
ALIGNMENT = 512                                 # allocation granularity (bytes) the memory model assumes
