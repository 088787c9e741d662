"""What CTF correction costs: one MRA iteration with --ctf none vs --ctf wiener, same particles.

One iteration is ``loop.iterate``'s (search, sub-pixel refinement, assignment, class references),
on contexts that keep their derived particles in a run folder as real runs do: with wiener every
particle is phase-flipped and |CTF|-weighted once per run (:mod:`.image_cache`), so an iteration
pays only the class-frame CTF^2 sums and the Wiener filter; that one-off per run is timed too.
Defaults: 2000 CTF particles of 64 px, K = 10 and K = 50, the machine's cores.  Each configuration
runs ``--repeats`` times, interleaved (none, wiener, none, wiener, ...): the overhead is given from
the fastest runs, as the median over adjacent (none, wiener) pairs, and from the CPU seconds of all
threads.  Also times the CTF pieces alone: evaluating a batch's CTFs, the flip, the |CTF|-weighted
images and the W sums.  Prints a table and one JSON line.
Usage: python benchmarks/bench_ctf.py [--particles 2000] [--box 64] [--classes 10 50] [--repeats 3]
"""
import argparse
import json
import tempfile
import time

import numpy as np

from cryoralign_plugin.engine import align, ctf, loop, parallel, synthetic
from cryoralign_plugin.engine.backends import get_backend
from cryoralign_plugin.engine.settings import Settings
from cryoralign_plugin.engine.sources import ArraySource


def context(particles, columns, mode, threads, folder):
    settings = Settings(shift_range=3, shift_step=1, threads=threads, backend="cpu", iterations=1, ctf=mode,
                        internal_box=len(particles[0]))   # the iteration at the box given
    return loop.Context(ArraySource(particles, pixel_size=columns.pixel_size[0], ctf=columns), settings,
                        parallel.Serial(), get_backend("cpu", threads), lambda *_: None, folder)


def one_iteration(ctx, refs):
    """Seconds of one MRA iteration from ``refs``: (wall, CPU seconds of all threads)."""
    c0 = time.process_time()
    t0 = time.perf_counter()
    loop.iterate(ctx, align._unassigned_state(ctx, refs), reseed=True)
    return time.perf_counter() - t0, time.process_time() - c0


def pieces(ctx, particles, refs, repeats):
    """Seconds of the CTF work alone over all particles (fastest of ``repeats``)."""
    corr, n, k = ctx.correction, len(particles), len(refs)
    index = np.arange(n)
    rng = np.random.default_rng(0)
    params = np.column_stack([rng.uniform(0, 360, n), rng.uniform(-2, 2, (n, 2)), rng.integers(0, 2, n)])
    classes = rng.integers(0, k, n)
    jobs = {
        "ctf evaluation": lambda: corr.ctfs(index),
        "flip (FFT pair)": lambda: corr.for_search(particles, index),
        "|CTF|-weighted images (FFT pair)": lambda: corr.weighted(particles, index),
        "W sums (class-frame CTF^2)": lambda: corr.weights(index, params, classes, index % 2, k),
    }
    out = {}
    for name, job in jobs.items():
        job()
        best = np.inf
        for _ in range(repeats):
            t = time.perf_counter()
            job()
            best = min(best, time.perf_counter() - t)
        out[name] = best
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--particles", type=int, default=2000)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--classes", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=parallel.cpu_threads())
    args = ap.parse_args(argv)

    sim = synthetic.CtfSimulation(pixel_size=2.0, defocus_range=(0.8, 2.5))
    views = synthetic.slicem_references(max(args.classes), args.box, seed=0)
    particles, _, _, truth = synthetic.make_particles(views[:10], args.particles, snr=1.0, seed=1, ctf=sim)
    columns = ctf.CtfColumns(*(truth[key] for key in synthetic.CTF_KEYS), pixel_size=truth["pixel_size"])
    with tempfile.TemporaryDirectory() as folder:
        contexts = {mode: context(particles, columns, mode, args.threads, folder) for mode in ("none", "wiener")}
        first = {}
        for mode, ctx in contexts.items():   # compiles, and keeps the derived particles (the one-off)
            first[mode] = one_iteration(ctx, views[:2])[0]

        rows = []
        for k in args.classes:
            refs = views[:k]
            best = {mode: np.inf for mode in contexts}
            cpu = {mode: np.inf for mode in contexts}
            ratios = []
            for _ in range(args.repeats):
                pair = {}
                for mode, ctx in contexts.items():
                    wall, seconds = pair[mode] = one_iteration(ctx, refs)
                    best[mode] = min(best[mode], wall)
                    cpu[mode] = min(cpu[mode], seconds)
                ratios.append(pair["wiener"][0] / pair["none"][0])
            rows.append({"classes": k, "none_s": best["none"], "wiener_s": best["wiener"],
                         "overhead": best["wiener"] / best["none"] - 1.0,
                         "overhead_paired_median": float(np.median(ratios)) - 1.0,
                         "none_cpu_s": cpu["none"], "wiener_cpu_s": cpu["wiener"],
                         "overhead_cpu": cpu["wiener"] / cpu["none"] - 1.0})
        parts = pieces(contexts["wiener"], particles, views[:args.classes[0]], args.repeats)

    print("CTF correction cost: one MRA iteration (search, refinement, averages), %d particles of %d px, "
          "%d threads (fastest of %d)" % (args.particles, args.box, args.threads, args.repeats))
    print("%4s  %9s  %9s  %9s  %13s  %18s" % ("K", "none s", "wiener s", "overhead", "paired median",
                                                "CPU s none/wiener"))
    for r in rows:
        print("%4d  %9.3f  %9.3f  %+8.1f%%  %+12.1f%%  %6.2f/%.2f %+5.1f%%" % (
            r["classes"], r["none_s"], r["wiener_s"], 100 * r["overhead"], 100 * r["overhead_paired_median"],
            r["none_cpu_s"], r["wiener_cpu_s"], 100 * r["overhead_cpu"]))
    print("first iteration (K = 2, compiling; wiener also derives and keeps every particle's flipped and "
          "weighted images): none %.2f s, wiener %.2f s" % (first["none"], first["wiener"]))
    print("CTF pieces alone, all %d particles (K = %d for W):" % (args.particles, args.classes[0]))
    for name, seconds in parts.items():
        print("  %-34s %7.3f s" % (name, seconds))
    print(json.dumps({"benchmark": "ctf", "particles": args.particles, "box": args.box, "threads": args.threads,
                      "rows": rows, "first_iteration_s": first, "pieces_s": parts}))


if __name__ == "__main__":
    main()
