"""``threads`` is every numba parallel region's limit: the backend's, those of a whole run, and under MPI
a rank's default share of the node's cores (numba's own default is every core, per calling thread)."""
import os
import subprocess
import sys

import numba
import numpy as np
import pytest
from numba import njit, prange

from cryoralign_plugin.engine import align, geometry, parallel, search, synthetic
from cryoralign_plugin.engine.backends import cpu
from cryoralign_plugin.engine.backends.cpu import CpuBackend

MPIRUN = os.path.join(os.path.dirname(sys.executable), "mpirun")
POOL = numba.config.NUMBA_NUM_THREADS


@njit(parallel=True)
def _thread_ids(count):
    """The numba thread that ran each of ``count`` iterations (each long enough for all to start)."""
    out = np.empty(count, np.int64)
    for i in prange(count):
        out[i] = numba.get_thread_id()
        s = 0.0
        for j in range(100000):
            s += j * 1e-9
        if s < 0.0:
            out[i] = -1
    return out


def used():
    return len(set(_thread_ids(8 * POOL).tolist()))


def _polar_ids(images, index, centers, dx, dy, out):
    """Stands in for ``cpu._polar``: writes the ids of the threads that ran it into ``out``."""
    ids = _thread_ids(8 * POOL)
    out.flat[:ids.size] = ids


def test_the_default_is_this_process_cores_shared_by_the_ranks_on_its_node(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    for name in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert parallel.cpu_threads() == 8 and CpuBackend().threads == 8
    monkeypatch.setenv("MPI_LOCALNRANKS", "3")
    assert parallel.cpu_threads() == 2 and parallel.cpu_threads(5) == 5
    monkeypatch.setenv("MPI_LOCALNRANKS", "16")
    assert parallel.cpu_threads() == 1


def test_numba_threads_limits_this_thread_within_numba_pool_and_restores():
    before = numba.get_num_threads()
    with parallel.numba_threads(1):
        assert used() == 1
    with parallel.numba_threads(10 * POOL):   # more than the pool: the pool
        assert numba.get_num_threads() == POOL and used() <= POOL
    assert numba.get_num_threads() == before


@pytest.mark.skipif(POOL < 2, reason="one numba thread: nothing to limit")
def test_the_backend_kernels_run_on_its_threads(monkeypatch):
    monkeypatch.setattr(cpu, "_polar", _polar_ids)
    grid = geometry.polar_grid(12)
    images = np.zeros((1, 32, 32), np.float32)
    for threads in (1, 2):
        ids = CpuBackend(threads=threads).polar(images, [0], np.full((1, 2), 16.0), grid)[0, :8 * POOL]
        assert len(set(ids.tolist())) <= threads   # numba's default: all POOL threads (2 here with threads=1)
    assert numba.get_num_threads() == POOL
    seen = []
    monkeypatch.setattr(cpu.imgops, "class_sums", lambda *args: seen.append(numba.get_num_threads()))
    CpuBackend(threads=1).class_sums(None, None, None, None, 1)
    assert seen == [1]


@pytest.mark.skipif(POOL < 2, reason="one numba thread: nothing to limit")
def test_the_search_workers_launch_one_thread_regions(monkeypatch):
    """The pool's threads each are one of ``threads``: a parallel region launched in one stays on it."""
    images = np.random.default_rng(3).standard_normal((132, 32, 32)).astype(np.float32)
    grid, shifts = geometry.polar_grid(12), geometry.shift_grid(1, 1)
    backend = CpuBackend(threads=2)
    prepared = backend.prepare_references(search.reference_rings(backend, images[:2], grid, shifts), grid, True)
    rings = search.particle_rings(backend, images[2:], np.zeros((130, 2)), grid)
    spectra, seen = cpu.ring_ops.ring_spectra, []

    def recorded(*args, **kwargs):
        seen.append(used())
        return spectra(*args, **kwargs)

    monkeypatch.setattr(cpu.ring_ops, "ring_spectra", recorded)
    backend.search(rings, prepared, grid)
    assert len(seen) >= 2 and set(seen) == {1}   # blocks of 64: 3 of them; before, each saw POOL threads


@pytest.mark.skipif(POOL < 2, reason="one numba thread: nothing to limit")
def test_a_run_keeps_every_parallel_region_within_its_threads(monkeypatch):
    """Kernels outside the backend too (here the rings' normalisation); numba's setting is back after."""
    images, _, _ = synthetic.make_particles(synthetic.slicem_references(1, 32, seed=4), 20, snr=1.0, seed=2)
    rows, seen = search._normalise_rows, []

    def recorded(*args):
        seen.append(numba.get_num_threads())
        return rows(*args)

    monkeypatch.setattr(search, "_normalise_rows", recorded)
    align.align_reference_free(images, iterations=1, threads=1, shift_range=1.0, log=lambda *_: None)
    assert seen and set(seen) == {1}   # before: POOL
    assert numba.get_num_threads() == POOL


def test_mpi_ranks_on_one_node_share_its_cores():
    done = subprocess.run([MPIRUN, "-n", "2", sys.executable, "-m", "cryoralign_plugin.engine.cli", "info"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    assert done.stdout.count("backends: cpu (%d thread(s) per rank)" % share) == 2, done.stdout


@pytest.mark.skipif(POOL < 2, reason="one numba thread: nothing to compare")
def test_the_ring_normalisation_is_the_same_on_any_number_of_threads():
    """Its area total was a parallel sum inside the kernel, split by the threads: a last-bit change of
    the float64 total moved rows 16 and 271 of these 333 (float32) between 1 and 2 threads."""
    grid = geometry.polar_grid(29)
    images = np.random.default_rng(0).standard_normal((333, 64, 64)).astype(np.float32)
    rings = CpuBackend(threads=1).polar(images, np.arange(333), np.full((333, 2), 32.0), grid)
    out = []
    for threads in (1, 2):
        with parallel.numba_threads(threads):
            out.append(search.normalise_rings(rings.copy(), grid))
    np.testing.assert_array_equal(out[0], out[1])
