"""CUDA backend throughput on the Cryo-RALib notebook workload: 5000 particles of 130 px, K = 50,
49 shifts (range 3, step 1), radius 52, mirror on.  One MRA iteration, split into phases.

Prints a table and one JSON line: rotational correlations/s (straight and mirrored counted
separately, as Cryo-RALib's ~8.2 M/s on one V100 does), particles/s and device bytes per particle.
On a machine without a usable GPU (or under the simulator) it says so and exits 0.
Usage: python benchmarks/bench_cuda.py [--particles 5000] [--classes 50] [--gpu 0]
"""
import argparse
import json
import sys
import time

import numpy as np
from numba import cuda as numba_cuda

from cryoralign_plugin.engine import loop, parallel, search, synthetic
from cryoralign_plugin.engine.backends import cuda, cuda_config, cuda_layout
from cryoralign_plugin.engine.settings import Settings
from cryoralign_plugin.engine.sources import ArraySource


def timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


def iteration(ctx, refs):
    """Seconds per phase of one MRA iteration; the kernel-only search is timed on prepared rings."""
    count = ctx.source.count
    seconds = {}
    rings, seconds["reference_rings"] = timed(search.reference_rings, ctx.backend, refs, ctx.grid, ctx.shifts)
    prepared, seconds["prepare"] = timed(ctx.backend.prepare_references, rings, ctx.grid, ctx.settings.mirror)
    particles = ctx.read(np.arange(count))
    parts, seconds["particle_rings"] = timed(search.particle_rings, ctx.backend, particles, np.zeros((count, 2)),
                                             ctx.grid)
    found, seconds["search_kernel"] = timed(ctx.backend.search, parts, prepared, ctx.grid)
    choice = found[0].argmax(1)
    cand = search.Candidates(*found, np.zeros((count, 2)))
    params = search.candidate_params(cand, choice, ctx.shifts, ctx.grid)
    _, seconds["class_sums"] = timed(ctx.backend.class_sums, particles, params, choice, np.arange(count) % 2,
                                     len(refs))
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--particles", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--gpu", type=int, default=0)
    args = parser.parse_args()
    if cuda_config.SIMULATOR or not cuda.available():
        print("bench_cuda: no usable CUDA GPU here (%s); nothing to measure" %
              ("the simulator is not a benchmark" if cuda_config.SIMULATOR else "numba.cuda found no driver/device"))
        return 0
    box, radius, shift_range = 130, 52, 3.0
    refs = synthetic.slicem_references(args.classes, box, seed=0)
    parts, _, _ = synthetic.make_particles(refs, args.particles, snr=1.0, seed=1, radius=radius)
    settings = Settings(radius=radius, shift_range=shift_range, backend="cuda", iterations=1,
                        batch_size=args.particles, gpu=[args.gpu])
    backend = cuda.CudaBackend(gpu=[args.gpu])
    ctx = loop.Context(ArraySource(parts), settings, parallel.Serial(), backend, lambda *_: None)
    warm = loop.Context(ArraySource(parts[:64]), settings, parallel.Serial(), backend,
                        lambda *_: None)
    iteration(warm, refs[:2])  # compile every kernel
    seconds = min((iteration(ctx, refs) for _ in range(2)), key=lambda s: sum(s.values()))
    n_shifts, mirrors = len(ctx.shifts), 2 if settings.mirror else 1
    correlations = args.particles * args.classes * n_shifts * mirrors
    search_s = sum(seconds[k] for k in ("reference_rings", "prepare", "particle_rings", "search_kernel"))
    total_s = search_s + seconds["class_sums"]
    per_particle = sum(cuda_layout.search_bytes(cuda_layout.layout(ctx.grid), args.classes))
    free, total = numba_cuda.current_context().get_memory_info()
    result = {"benchmark": "cuda_mra_iteration", "device": cuda.device_name(backend.device),
              "particles": args.particles, "box": box, "radius": radius, "classes": args.classes,
              "shifts": n_shifts,
              "ring_length": ctx.grid.maxrin, "mirror": settings.mirror, "seconds": seconds,
              "correlations_per_s_kernel": correlations / seconds["search_kernel"],
              "correlations_per_s_search": correlations / search_s,
              "particles_per_s_search": args.particles / search_s,
              "particles_per_s_iteration": args.particles / total_s,
              "device_bytes_per_particle": per_particle,
              "cryo_ralib_bytes_per_particle": (256 + 2) * args.classes * n_shifts * 2 * 4,
              "device_memory_gib": [free / 2 ** 30, total / 2 ** 30]}
    print("%-18s %10s" % ("phase", "seconds"))
    for name, value in seconds.items():
        print("%-18s %10.3f" % (name, value))
    print("rotational correlations/s: %.3g (search kernel), %.3g (whole search step)" % (
        result["correlations_per_s_kernel"], result["correlations_per_s_search"]))
    print("particles/s: %.0f (search), %.0f (iteration); device bytes/particle: %d (Cryo-RALib: %d)" % (
        result["particles_per_s_search"], result["particles_per_s_iteration"], per_particle,
        result["cryo_ralib_bytes_per_particle"]))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
