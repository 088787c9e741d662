"""Cost of the sub-pixel shift refinement (``refine_shifts``) next to the grid search it follows.

One search pass (grid search of every particle against K references) and one refinement pass (the
chosen reference only) per configuration, on the CPU backend: the fastest of ``--repeat`` runs taken
alternately, and the overhead as the median of the per-run ratios refine / search (steadier on a
shared machine).  Prints a table and one JSON line.
Usage: python benchmarks/bench_refine.py [--particles 2000] [--repeat 3] [--threads N]
"""
import argparse
import json
import os
import time

import numpy as np

from cryoralign_plugin.engine import loop, parallel, refine, search, synthetic
from cryoralign_plugin.engine.backends import get_backend
from cryoralign_plugin.engine.settings import Settings
from cryoralign_plugin.engine.sources import ArraySource


def context(particles, threads):
    settings = Settings(radius=27, shift_range=3, shift_step=1, threads=threads, backend="cpu", iterations=1)
    return loop.Context(ArraySource(particles), settings, parallel.Serial(), get_backend("cpu", threads),
                        lambda *_: None)


def timed(ctx, refs):
    """Seconds of the search pass and of the refinement pass after it."""
    count = ctx.source.count
    t0 = time.perf_counter()
    cand = loop.search_pass(ctx, refs, np.zeros((count, 4)))
    t1 = time.perf_counter()
    choice = np.argmax(cand.score, axis=1)
    params = search.candidate_params(cand, choice, ctx.shifts, ctx.grid)
    scores = cand.score[np.arange(count), choice].astype(np.float64)
    t2 = time.perf_counter()
    refine.refine_pass(ctx, refs, cand, choice, params, scores)
    t3 = time.perf_counter()
    return t1 - t0, t3 - t2


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--particles", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    box = 64
    refs = synthetic.slicem_references(50, box, seed=0)
    parts, _, _ = synthetic.make_particles(refs[:10], args.particles, snr=1.0, seed=1)
    ctx = context(parts, args.threads)
    timed(context(parts[:100], args.threads), refs[:2])   # compile
    rows = []
    runs = {k: [] for k in (10, 50)}
    for _ in range(args.repeat):
        for k in runs:   # alternately, so a busy spell of the machine hits both
            runs[k].append(timed(ctx, refs[:k]))
    for k, found in runs.items():
        search_s = min(r[0] for r in found)
        refine_s = min(r[1] for r in found)
        rows.append({"classes": k, "search_s": search_s, "refine_s": refine_s,
                     "search_refined_s": search_s + refine_s,
                     "overhead": float(np.median([r[1] / r[0] for r in found]))})
    result = {"benchmark": "shift_refinement", "particles": args.particles, "box": box, "radius": 27,
              "shifts": len(ctx.shifts), "threads": ctx.backend.threads, "cpus": os.cpu_count(), "rows": rows}
    print("%8s %10s %12s %22s %10s" % ("classes", "search s", "refine s", "search + refine s", "overhead"))
    for r in rows:
        print("%8d %10.2f %12.2f %22.2f %9.0f%%" % (r["classes"], r["search_s"], r["refine_s"],
                                                   r["search_refined_s"], 100 * r["overhead"]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
