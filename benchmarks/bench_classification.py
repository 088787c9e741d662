"""How close MRA from random particles comes to MRA from the true views (the oracle), per test set.

Each set is synthetic with ground truth (:mod:`cryoralign_plugin.engine.synthetic`): real SLICEM
class averages at SNR 0.02 and 0.05, phantom views in near-duplicate pairs (SNR 0.1), SLICEM with one
rare view (3 %, SNR 0.05), and K = 2x / 0.5x the number of views.  For each: the purity of the run
started from the true views (where K equals the number of views), the purity from random particles for
each seed with its ratio to the oracle, the smallest class, the final mean score and mean assignment
margin (:mod:`cryoralign_plugin.engine.criteria`) and the seconds.  Default settings (10 iterations).
Prints a table and one JSON line.
``--overcluster C`` (and ``--overcluster-iterations M``) run the random starts over-clustered
(:mod:`cryoralign_plugin.engine.overcluster`), ``--resplit M`` (and ``--resplit-iterations L``) with its
late round; the start from the true views never is.
Usage: python benchmarks/bench_classification.py [--particles 1500] [--box 64] [--seeds 1 2 3]
       [--sets slicem-0.02 slicem-0.05 pairs rare k20 k5] [--threads N] [--overcluster C]
       [--overcluster-iterations M] [--resplit M] [--resplit-iterations L]
"""
import argparse
import json
import time

from cryoralign_plugin.engine import align, synthetic
from cryoralign_plugin.engine.settings import Settings

SETS = {   # name: (reference source, views, SNR, K, rare view)
    "slicem-0.02": ("slicem", 10, 0.02, 10, False),
    "slicem-0.05": ("slicem", 10, 0.05, 10, False),
    "pairs": ("phantom-pairs", 10, 0.1, 10, False),
    "rare": ("slicem", 10, 0.05, 10, True),
    "k20": ("slicem", 10, 0.05, 20, False),
    "k5": ("slicem", 10, 0.05, 5, False),
}


def quiet(*_):
    pass


def run(images, truth, threads, options, **start):
    settings = Settings(threads=threads, seed=start.pop("seed", 0), **options)
    t = time.perf_counter()
    result = align.align_multi_reference(images, settings=settings, log=quiet, **start)
    last = result.history[-1]
    return {"purity": synthetic.purity(result.classes, truth), "seconds": time.perf_counter() - t,
            "smallest": int(result.class_sizes.min()), "mean_score": last["mean_score"],
            "mean_margin": last["mean_margin"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=1500)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--overcluster", type=int, default=Settings.overcluster)
    parser.add_argument("--overcluster-iterations", type=int, default=Settings.overcluster_iterations)
    parser.add_argument("--resplit", type=int, default=Settings.resplit)
    parser.add_argument("--resplit-iterations", type=int, default=Settings.resplit_iterations)
    args = parser.parse_args(argv)
    options = {"overcluster": args.overcluster, "overcluster_iterations": args.overcluster_iterations,
               "resplit": args.resplit, "resplit_iterations": args.resplit_iterations}
    rows = []
    print("%-12s %-8s %7s %7s %6s %9s %8s %7s" % ("set", "start", "purity", "ratio", "min", "score",
                                                   "margin", "s"))
    for name in args.sets:
        source, n_views, snr, k, rare = SETS[name]
        views = synthetic.make_references(source, n_views, args.box, seed=0)
        weights = synthetic.rare_view_weights(n_views) if rare else None
        images, truth, _ = synthetic.make_particles(views, args.particles, snr, seed=0, class_weights=weights)
        starts = ([("oracle", {"references": views})] if k == n_views else []) + \
            [("seed %d" % s, {"n_classes": k, "seed": s}) for s in args.seeds]
        oracle = None
        for label, start in starts:
            row = dict(run(images, truth, args.threads, options, **start), set=name, start=label)
            oracle = row["purity"] if label == "oracle" else oracle
            row["ratio"] = row["purity"] / oracle if oracle else None
            rows.append(row)
            print("%-12s %-8s %7.3f %7s %6d %9.4f %8.5f %7.1f" % (
                name, label, row["purity"], "-" if row["ratio"] is None else "%.3f" % row["ratio"],
                row["smallest"], row["mean_score"], row["mean_margin"], row["seconds"]), flush=True)
    print(json.dumps({"benchmark": "classification", "particles": args.particles, "box": args.box,
                      **options, "rows": rows}))


if __name__ == "__main__":
    main()
