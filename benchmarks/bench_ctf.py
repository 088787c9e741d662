"""What CTF correction costs: one MRA iteration with --ctf none vs --ctf wiener, same particles.

One iteration = the search pass (wiener: particles phase-flipped when read) + the class references
(none: plain class sums; wiener: CTF-multiplied class sums + the class-frame CTF^2 sums + the Wiener
filter).  Defaults: 2000 CTF particles of 64 px, K = 10 and K = 50, the machine's cores.  Each
configuration runs ``--repeats`` times, interleaved: the overhead is given from the fastest runs and
as the median over adjacent (none, wiener) pairs, and from the CPU seconds of all threads (steadier
when the machine is shared).  Also times the CTF pieces alone: evaluating a batch's CTFs, the flip, the
CTF-multiplied images and the W sums.  Prints a table and one JSON line.
Usage: python benchmarks/bench_ctf.py [--particles 2000] [--box 64] [--classes 10 50] [--repeats 3]
"""
import argparse
import json
import os
import time

import numpy as np

from cryoralign_plugin.engine import ctf, loop, parallel, references, search, synthetic
from cryoralign_plugin.engine.backends import get_backend
from cryoralign_plugin.engine.settings import Settings
from cryoralign_plugin.engine.sources import ArraySource


def context(particles, columns, mode, threads):
    settings = Settings(shift_range=3, shift_step=1, threads=threads, backend="cpu", iterations=1, ctf=mode)
    return loop.Context(ArraySource(particles, pixel_size=columns.pixel_size[0], ctf=columns), settings,
                        parallel.Serial(), get_backend("cpu", threads), lambda *_: None)


def one_iteration(ctx, refs):
    """Seconds of one MRA iteration: (total, search, class references, CPU seconds of all threads)."""
    n = ctx.source.count
    c0 = time.process_time()
    t0 = time.perf_counter()
    cand = loop.search_pass(ctx, refs, np.zeros((n, 4)))
    t1 = time.perf_counter()
    choice = cand.score.argmax(1)
    params = search.candidate_params(cand, choice, ctx.shifts, ctx.grid)
    counts = references.class_counts(choice, np.arange(n) % 2, len(refs))
    loop.class_references(ctx, params, choice, counts, references.MAX_CUTOFF)
    t2 = time.perf_counter()
    return t2 - t0, t1 - t0, t2 - t1, time.process_time() - c0


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
        "CTF-multiplied images (FFT pair)": lambda: corr.weighted(particles, index),
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
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args(argv)

    sim = synthetic.CtfSimulation(pixel_size=2.0, defocus_range=(0.8, 2.5))
    views = synthetic.slicem_references(max(args.classes), args.box, seed=0)
    particles, _, _, truth = synthetic.make_particles(views[:10], args.particles, snr=1.0, seed=1, ctf=sim)
    columns = ctf.CtfColumns(*(truth[key] for key in synthetic.CTF_KEYS), pixel_size=truth["pixel_size"])
    contexts = {mode: context(particles, columns, mode, args.threads) for mode in ("none", "wiener")}
    for ctx in contexts.values():   # compile and warm up
        one_iteration(ctx, views[:2])

    rows = []
    for k in args.classes:
        refs = views[:k]
        best = {mode: (np.inf, 0, 0, 0) for mode in contexts}
        cpu = {mode: np.inf for mode in contexts}
        ratios = []
        for _ in range(args.repeats):
            pair = {}
            for mode, ctx in contexts.items():
                t = pair[mode] = one_iteration(ctx, refs)
                if t[0] < best[mode][0]:
                    best[mode] = t
                cpu[mode] = min(cpu[mode], t[3])
            ratios.append(pair["wiener"][0] / pair["none"][0])
        none, wiener = best["none"], best["wiener"]
        rows.append({"classes": k, "none_s": none[0], "wiener_s": wiener[0],
                     "none_search_s": none[1], "wiener_search_s": wiener[1],
                     "none_average_s": none[2], "wiener_average_s": wiener[2],
                     "overhead": wiener[0] / none[0] - 1.0,
                     "overhead_paired_median": float(np.median(ratios)) - 1.0,
                     "none_cpu_s": cpu["none"], "wiener_cpu_s": cpu["wiener"],
                     "overhead_cpu": cpu["wiener"] / cpu["none"] - 1.0})
    parts = pieces(contexts["wiener"], particles, views[:args.classes[0]], args.repeats)

    print("CTF correction cost: one MRA iteration, %d particles of %d px, %d threads (fastest of %d)"
          % (args.particles, args.box, args.threads, args.repeats))
    print("%4s  %20s  %20s  %9s  %13s  %18s" % ("K", "none s (search+avg)", "wiener s (search+avg)", "overhead",
                                                "paired median", "CPU s none/wiener"))
    for r in rows:
        print("%4d  %7.3f (%.2f+%.2f)  %7.3f (%.2f+%.2f)  %+8.1f%%  %+12.1f%%  %6.2f/%.2f %+5.1f%%" % (
            r["classes"], r["none_s"], r["none_search_s"], r["none_average_s"], r["wiener_s"],
            r["wiener_search_s"], r["wiener_average_s"], 100 * r["overhead"], 100 * r["overhead_paired_median"],
            r["none_cpu_s"], r["wiener_cpu_s"], 100 * r["overhead_cpu"]))
    print("CTF pieces alone, all %d particles (K = %d for W):" % (args.particles, args.classes[0]))
    for name, seconds in parts.items():
        print("  %-34s %7.3f s" % (name, seconds))
    print(json.dumps({"benchmark": "ctf", "particles": args.particles, "box": args.box, "threads": args.threads,
                      "rows": rows, "pieces_s": parts}))


if __name__ == "__main__":
    main()
