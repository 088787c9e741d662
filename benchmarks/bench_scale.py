"""Cost of one full pass (search + averages) as the number of classes K grows: 64 px, radius 27,
49 shifts, mirror, default preselection (``--all-references`` for the search without it).

Prints a table and one JSON line: particles/s, the ratio of each K's pass time to K=10's and the
peak anonymous RSS during the pass, all measured in one run (the machine is shared).
Usage: python benchmarks/bench_scale.py [--particles 4000] [--full (adds K=500)] [--all-references]
"""
import argparse
import json

import numpy as np

from bench_search import one_iteration
from cryoralign_plugin.engine import memory, parallel, synthetic


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--particles", type=int, default=4000)
    parser.add_argument("--full", action="store_true", help="also K=500")
    parser.add_argument("--all-references", action="store_true",
                        help="no preselection: every reference at full resolution (the search before it)")
    args = parser.parse_args()
    ks = (10, 50, 200, 500) if args.full else (10, 50, 200)
    box = 64
    # views from random directions over a 90 degree cap (fast to make for K = 500; the cost does not
    # depend on how distinct they are)
    refs = synthetic.continuous_views(max(ks), box, seed=0, mode="cap", extent=90.0)[0]
    parts, _, _ = synthetic.make_particles(refs, args.particles, snr=1.0, seed=1)
    one_iteration(parts[:300], refs, 50, None)   # compile
    rows = []
    for k in ks:
        with memory.PeakMemory() as peak:
            total, search_s, avg_s = one_iteration(parts, refs, k, None,
                                                   preselect=k if args.all_references else None)
        rows.append({"classes": k, "particles_per_s": args.particles / total, "search_s": search_s,
                     "averages_s": avg_s, "peak_rss_mb": peak.megabytes})
    for r in rows:
        r["time_vs_k10"] = (args.particles / r["particles_per_s"]) / (args.particles / rows[0]["particles_per_s"])
    print("%8s %14s %10s %12s %12s %14s" % ("classes", "particles/s", "search s", "averages s", "vs K=10",
                                             "peak RSS MB"))
    for r in rows:
        print("%8d %14.0f %10.2f %12.2f %11.2fx %14.0f" % (r["classes"], r["particles_per_s"], r["search_s"],
                                                           r["averages_s"], r["time_vs_k10"], r["peak_rss_mb"]))
    print(json.dumps({"benchmark": "scale_in_k", "particles": args.particles, "box": box, "radius": 27,
                      "shifts": 49, "mirror": True, "all_references": args.all_references,
                      "threads": parallel.cpu_threads(), "rows": rows}))


if __name__ == "__main__":
    main()
