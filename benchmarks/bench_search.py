"""MRA throughput on this machine: one full iteration (search + averages) per configuration.

Prints a table and one JSON line.  Ratios are measured in the same run (the machine is shared).
Usage: python benchmarks/bench_search.py [--particles 2000] [--quick]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from cryoralign_plugin.engine import loop, outputs, parallel, synthetic
from cryoralign_plugin.engine.backends import get_backend
from cryoralign_plugin.engine.settings import Settings
from cryoralign_plugin.engine.sources import ArraySource


def one_iteration(particles, refs, n_classes, threads, **options):
    """Seconds of one MRA iteration and its phase split (search, averages); ``options`` are
    :class:`Settings` fields."""
    settings = Settings(radius=27, shift_range=3, shift_step=1, threads=threads, backend="cpu", iterations=1,
                        **options)
    ctx = loop.Context(ArraySource(particles), settings, parallel.Serial(),
                       get_backend("cpu", threads, exhaustive=settings.exhaustive), lambda *_: None)
    t0 = time.perf_counter()
    cand = loop.search_pass(ctx, refs[:n_classes], np.zeros((len(particles), 4)))
    t1 = time.perf_counter()
    best = np.zeros(len(particles), np.int64)   # each particle's best candidate
    params = loop.search.candidate_params(cand, best, ctx.shifts, ctx.grid)
    loop.average_pass(ctx, params, cand.reference[:, 0], n_classes)
    t2 = time.perf_counter()
    return t2 - t0, t1 - t0, t2 - t1


def rss_run(n, box):
    """Peak anonymous RSS (MB) the engine reports for one K=10 iteration over ``n`` particles from disk."""
    with tempfile.TemporaryDirectory() as tmp:
        synthetic.make_dataset(tmp, n_particles=n, box=box, n_classes=10, snr=1.0, seed=0, source="slicem")
        out = subprocess.run([sys.executable, "-m", "cryoralign_plugin.engine.cli", "mra", "--particles",
                              os.path.join(tmp, "particles.star"), "--out", os.path.join(tmp, "out"),
                              "--classes", "10", "--iterations", "1", "--radius", "27"],
                             capture_output=True, text=True, check=True)
    return peak_memory(out.stdout)


def peak_memory(log):
    """The figure of the engine's last line, "... (peak memory N MB per rank)"."""
    return float(log.rsplit("peak memory", 1)[1].split()[0])


def mpi_speedup(n, box):
    """Speed-up of 2 MPI ranks over 1 (1 thread each): iteration time from the engine's history, and wall."""
    mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
    compute, wall = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        synthetic.make_dataset(tmp, n_particles=n, box=box, n_classes=10, snr=1.0, seed=0, source="slicem")
        for ranks in (1, 2):
            out = os.path.join(tmp, str(ranks))
            cmd = [mpirun, "-n", str(ranks), sys.executable, "-m", "cryoralign_plugin.engine.cli", "mra",
                   "--particles", os.path.join(tmp, "particles.star"), "--out", out, "--classes", "10",
                   "--iterations", "3", "--threads", "1", "--radius", "27", "--overwrite"]
            subprocess.run(cmd, capture_output=True, check=True)  # fills numba's cache
            start = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True)
            wall[ranks] = time.perf_counter() - start
            compute[ranks] = sum(row["seconds"] for row in outputs.read_history(out))
    return compute[1] / compute[2], wall[1] / wall[2]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--particles", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="skip the RSS and MPI measurements")
    args = parser.parse_args()
    box = 64
    refs = synthetic.slicem_references(50, box, seed=0)
    parts, _, _ = synthetic.make_particles(refs[:10], args.particles, snr=1.0, seed=1)
    one_iteration(parts[:200], refs, 2, None)  # compile
    rows = []
    for k in (10, 50):
        total, search_s, avg_s = min((one_iteration(parts, refs, k, None) for _ in range(2)), key=lambda r: r[0])
        rows.append({"classes": k, "particles_per_s": args.particles / total, "search_s": search_s,
                     "averages_s": avg_s})
    result = {"benchmark": "mra_iteration", "particles": args.particles, "box": box, "radius": 27,
              "shifts": 49, "mirror": True, "threads": parallel.cpu_threads(), "rows": rows}
    if not args.quick:
        result["rss_mb"] = {str(n): rss_run(n, box) for n in (2000, 20000)}
        result["mpi_speedup_2_vs_1"], result["mpi_speedup_2_vs_1_wall"] = mpi_speedup(3 * args.particles, box)
    print("%8s %14s %10s %12s" % ("classes", "particles/s", "search s", "averages s"))
    for r in rows:
        print("%8d %14.0f %10.2f %12.2f" % (r["classes"], r["particles_per_s"], r["search_s"], r["averages_s"]))
    if "rss_mb" in result:
        print("peak anonymous RSS, one K=10 iteration: %s MB" % ", ".join("N=%s: %.0f" % kv
                                                                          for kv in result["rss_mb"].items()))
        print("2 MPI ranks vs 1 (1 thread each, %d particles): %.2fx iteration time, %.2fx wall time"
              % (3 * args.particles, result["mpi_speedup_2_vs_1"], result["mpi_speedup_2_vs_1_wall"]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
