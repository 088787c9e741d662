"""The CUDA backend against the CPU backend, its kernels run in numba's CUDA simulator.

``NUMBA_ENABLE_CUDASIM=1`` must be set before ``numba.cuda`` is first imported, so the GPU side runs
in one child process (this file run as a script) that writes its results to an ``.npz``; the tests
here compute the CPU side from the same deterministic inputs and compare.  Other tests in this
session keep the real ``numba.cuda`` target.  Sizes are tiny: the simulator costs ms per thread.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from cryoralign_plugin.engine import align, geometry, images, search, synthetic
from cryoralign_plugin.engine import rings as ring_ops
from cryoralign_plugin.engine.backends import get_backend
from cryoralign_plugin.engine.backends.cpu import CpuBackend
from cryoralign_plugin.engine.geometry import MIRROR, PSI

BOX, RADIUS, SHIFT_RANGE = 32, 10, 1
MEMBERS = np.array([[1], [0], [1], [0]], np.int32)   # a preselection: one reference per particle


def inputs():
    """Deterministic particles, references, offsets and parameters shared by both processes."""
    refs = images.normalise(synthetic.slicem_references(2, BOX, seed=0), RADIUS)
    parts, classes, truth = synthetic.make_particles(refs, 6, snr=10.0, seed=1, shift_range=1.0)
    parts = images.normalise(parts, RADIUS)
    offsets = np.random.default_rng(2).uniform(-1.0, 1.0, (len(parts), 2))
    params = np.c_[[10.0, 200.0, 33.0, 95.0, 300.0, 1.5], offsets, [0, 1, 0, 1, 1, 0]]
    return dict(refs=refs, parts=parts, classes=classes, truth=truth, offsets=offsets, params=params,
                members=np.array([0, 1, 1, -1, 0, 1]), parity=np.arange(len(parts)) % 2,
                grid=geometry.polar_grid(RADIUS), shifts=geometry.shift_grid(SHIFT_RANGE, 1.0))


def mra(data, backend):
    return align.align_multi_reference(data["parts"], references=data["refs"], iterations=1, radius=RADIUS,
                                       shift_range=SHIFT_RANGE, backend=backend, log=lambda *_: None)


def rings_of(backend, data):
    """Normalised particle rings (first four) and reference rings, as the search step builds them."""
    parts = search.particle_rings(backend, data["parts"][:4], data["offsets"][:4], data["grid"])
    return parts, search.reference_rings(backend, data["refs"], data["grid"], data["shifts"])


def simulate(path):
    """Child process: every GPU kernel on the shared inputs, results saved to ``path``."""
    from numba import cuda as numba_cuda
    from cryoralign_plugin.engine.backends import cuda, cuda_config, cuda_kernels
    from cryoralign_plugin.engine.errors import InputError
    assert cuda_config.SIMULATOR and cuda.available()
    data, out, times = inputs(), {}, {}
    grid = data["grid"]

    def timed(name, fn, *args):
        start = time.perf_counter()
        value = fn(*args)
        times[name] = time.perf_counter() - start
        return value

    def transform(parts, params):  # the device's pixel pull alone, as images.transform does it
        d_out = numba_cuda.device_array(parts.shape, np.float32)
        cuda_kernels.transform_kernel[cuda.blocks(d_out.size), cuda_config.THREADS](
            numba_cuda.to_device(parts), numba_cuda.to_device(cuda.transform_terms(params)), d_out)
        return d_out.copy_to_host()

    gpu = cuda.CudaBackend(gpu=[0], rank=3, batch_size=3)  # batches of 3 and 1 over 4 particles
    out["polar"] = timed("polar", gpu.polar, data["parts"], np.arange(6), BOX // 2 + data["offsets"], grid)
    parts, refs = rings_of(CpuBackend(threads=1), data)
    host, dev = gpu._layout(grid)
    d_spec = numba_cuda.device_array((len(parts), host.size), np.complex64)
    timed("spectra", gpu._spectra, numba_cuda.to_device(parts), dev, dev["weights"], d_spec)
    out["spectra"] = d_spec.copy_to_host()
    prepared = timed("prepare_references", gpu.prepare_references, refs, grid, True)
    out["search"] = np.array([a.astype(np.float64) for a in timed("search", gpu.search, parts, prepared, grid)])
    out["search_members"] = np.array([a.astype(np.float64) for a in gpu.search(parts, prepared, grid, MEMBERS)])
    gpu.shared_limit = 0  # particle spectra read from global memory; no mirror
    straight = gpu.prepare_references(refs, grid, False)
    out["search_global"] = np.array([a.astype(np.float64) for a in
                                     timed("search_global", gpu.search, parts[:2], straight, grid)])
    threads, cuda_config.THREADS = cuda_config.THREADS, 4  # a patched block size gets kernels of its own
    out["search_threads"] = np.array([a.astype(np.float64) for a in gpu.search(parts[:2], straight, grid)])
    cuda_config.THREADS = threads
    out["transform"] = timed("transform", transform, data["parts"], data["params"])
    out["class_sums"] = timed("class_sums", gpu.class_sums, data["parts"], data["params"], data["members"],
                              data["parity"], 2)
    result = timed("mra", mra, data, "cuda")
    out["mra_classes"], out["mra_params"] = result.classes, result.params

    gpu.batch_size, sizes = None, []

    def run(a, b):  # fails for more than 2 particles, as an exhausted device would
        if b - a > 2:
            raise cuda.CudaAPIError(cuda.OUT_OF_MEMORY, "out of memory")
        sizes.append(b - a)
    gpu._in_batches(8, [100], run)
    lines = []
    cuda.describe(lines.append, box=64, n_classes=10, shift_range=3)
    try:
        cuda.CudaBackend(gpu=[0, 5], rank=1)
        missing = ""
    except InputError as exc:
        missing = str(exc)
    out["meta"] = np.array(json.dumps(dict(times=times, oom_sizes=sizes, describe=lines, missing=missing,
                                           auto=get_backend("auto").name)))
    np.savez(path, **out)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cudasim") / "gpu.npz")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    done = subprocess.run([sys.executable, os.path.abspath(__file__), path], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = dict(np.load(path))
    found.update(json.loads(str(found.pop("meta"))))
    print("simulator seconds:", json.dumps(found["times"]))
    return found


@pytest.fixture(scope="module")
def data():
    return inputs()


@pytest.fixture(scope="module")
def cpu_rings(data):
    return rings_of(CpuBackend(threads=1), data)


def cpu_search(parts, refs, grid, mirror):
    cpu = CpuBackend(threads=1, exhaustive=True)
    return np.array([a.astype(np.float64) for a in cpu.search(parts, cpu.prepare_references(refs, grid, mirror),
                                                              grid)])


def assert_same_search(found, expected):
    score, shift, mirror, angle = found
    np.testing.assert_allclose(score, expected[0], atol=1e-5)
    np.testing.assert_array_equal(shift, expected[1])
    np.testing.assert_array_equal(mirror, expected[2])
    np.testing.assert_allclose(angle, expected[3], atol=1e-3)


@pytest.mark.cudasim
def test_polar_matches_cpu(sim, data):
    expected = CpuBackend(threads=1).polar(data["parts"], np.arange(6), BOX // 2 + data["offsets"], data["grid"])
    np.testing.assert_allclose(sim["polar"], expected, atol=1e-6)


@pytest.mark.cudasim
def test_ring_spectra_match_scipy(sim, cpu_rings, data):
    expected = ring_ops.compact_spectra(cpu_rings[0], data["grid"], weighted=True)
    np.testing.assert_allclose(sim["spectra"], expected, atol=1e-5)


@pytest.mark.cudasim
def test_fused_search_matches_cpu_exhaustive_search(sim, cpu_rings, data):
    assert_same_search(sim["search"], cpu_search(*cpu_rings, data["grid"], True))
    assert sim["search"][2].any()  # the mirror branch was exercised


@pytest.mark.cudasim
def test_search_restricted_to_members_matches_cpu(sim, cpu_rings, data):
    expected = cpu_search(*cpu_rings, data["grid"], True)
    assert_same_search(sim["search_members"], np.take_along_axis(expected, MEMBERS[None], axis=2))


@pytest.mark.cudasim
def test_search_from_global_memory_without_mirror(sim, cpu_rings, data):
    assert_same_search(sim["search_global"], cpu_search(cpu_rings[0][:2], cpu_rings[1], data["grid"], False))


@pytest.mark.cudasim
def test_search_with_a_patched_block_size(sim, cpu_rings, data):
    assert_same_search(sim["search_threads"], cpu_search(cpu_rings[0][:2], cpu_rings[1], data["grid"], False))


@pytest.mark.cudasim
def test_transform_and_class_sums_are_bit_identical(sim, data):
    np.testing.assert_array_equal(sim["transform"], images.transform(data["parts"], data["params"]))
    expected = images.class_sums(data["parts"], data["params"], data["members"], data["parity"], 2)
    np.testing.assert_array_equal(sim["class_sums"], expected)


@pytest.mark.cudasim
def test_mra_iteration_matches_cpu(sim, data):
    cpu = mra(data, "cpu")
    np.testing.assert_array_equal(sim["mra_classes"], cpu.classes)
    np.testing.assert_array_equal(sim["mra_params"][:, MIRROR], cpu.params[:, MIRROR])
    step = 360.0 / data["grid"].maxrin
    assert np.all(np.abs((sim["mra_params"][:, PSI] - cpu.params[:, PSI] + 180.0) % 360.0 - 180.0) <= step)


@pytest.mark.cudasim
def test_out_of_memory_halves_the_batch(sim):
    assert sim["oom_sizes"] == [2, 2, 2, 2]  # 8 and 4 failed


@pytest.mark.cudasim
def test_device_selection_and_description(sim):
    assert "GPU 5 does not exist" in sim["missing"] and "0 (" in sim["missing"]
    assert any("GPU 0" in line and "search batch" in line for line in sim["describe"])
    assert sim["auto"] == "cuda"


def test_largest_batch_fits_the_budget():
    from cryoralign_plugin.engine.backends.cuda_config import ALIGNMENT
    from cryoralign_plugin.engine.backends.cuda_layout import largest_batch
    assert largest_batch(10 * ALIGNMENT, 0, [ALIGNMENT], 100) == 10
    assert largest_batch(10 * ALIGNMENT, 4 * ALIGNMENT, [ALIGNMENT, 1], 100) == 5  # tiny items round up
    assert largest_batch(float("inf"), 0, [ALIGNMENT], 7) == 7
    assert largest_batch(0, 0, [ALIGNMENT], 7) == 1


def test_layout_weights_and_bit_reversal():
    from cryoralign_plugin.engine.backends.cuda_layout import layout
    grid = geometry.polar_grid(RADIUS)
    tables = layout(grid)
    assert tables.size == int((grid.lengths // 2 + 1).sum())
    assert sorted(tables.perm) == list(range(grid.maxrin)) and tables.perm[1] == grid.maxrin // 2
    first_ring_bins = slice(0, grid.lengths[0] // 2 + 1)
    np.testing.assert_allclose(tables.weights[first_ring_bins][:-1], grid.weights[0], rtol=1e-6)
    np.testing.assert_allclose(tables.weights[first_ring_bins][-1], grid.weights[0] / 2, rtol=1e-6)


def test_engine_runs_without_a_gpu():
    from cryoralign_plugin.engine.backends import cuda
    assert get_backend("auto").name == ("cuda" if cuda.available() else "cpu")


if __name__ == "__main__":
    simulate(sys.argv[1])
