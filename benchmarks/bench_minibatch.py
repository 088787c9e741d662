"""Mini-batch iterations (:mod:`cryoralign_plugin.engine.minibatch`) against full passes: purity and time.

``quality``: the hard test sets of ``bench_classification.py`` (SLICEM at SNR 0.02 / 0.05, phantom
near-duplicate pairs, one rare view), random starts (``--seeds``), ``--iterations`` full passes against
the default schedule (automatic mini-batches, ``--per-class`` particles per class at first), the same
seeds for both, per run and per set the mean paired difference (mini-batch minus full) with its
standard error.  The set must be large enough for all ``--minibatch-iterations`` (about 1000 K for 8:
10 000 particles at K = 10, 13 000 for 9), else automatic mode would use fewer: refused.
``speed``: one large-ish set (``--large`` particles, ``--large-classes``, ``--large-box`` px) with the
default (automatic) mini-batches against ``--no-minibatch``, timed in the same process.
Prints a table and one JSON line.
Usage: python benchmarks/bench_minibatch.py [--parts quality speed] [--particles 10000] [--seeds 1 2 3]
       [--per-class 100] [--iterations 10] [--minibatch-iterations 8] [--large 20000] [--large-classes 20]
       [--large-box 32] [--threads N]
"""
import argparse
import json
import time

import numpy as np

from cryoralign_plugin.engine import align, minibatch, synthetic
from cryoralign_plugin.engine.settings import Settings

SETS = {   # name: (reference source, views = K, SNR, rare view), as bench_classification.py
    "slicem-0.02": ("slicem", 10, 0.02, False),
    "slicem-0.05": ("slicem", 10, 0.05, False),
    "pairs": ("phantom-pairs", 10, 0.1, False),
    "rare": ("slicem", 10, 0.05, True),
}


def quiet(*_):
    pass


def classify(images, truth, k, **options):
    t = time.perf_counter()
    result = align.align_multi_reference(images, n_classes=k, settings=Settings(**options), log=quiet)
    return {"purity": synthetic.purity(result.classes, truth), "seconds": time.perf_counter() - t,
            "searched": [row["searched"] for row in result.history]}


def dataset(source, k, box, count, snr, rare, seed=0):
    views = synthetic.make_references(source, k, box, seed=seed)
    weights = synthetic.rare_view_weights(k) if rare else None
    images, truth, _ = synthetic.make_particles(views, count, snr, seed=seed, class_weights=weights)
    return images, truth


def paired(differences):
    """Mean of paired differences and its standard error (0 for one pair)."""
    d = np.asarray(differences, float)
    return d.mean(), (d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0)


def quality(args, rows):
    print("%-12s %-6s %9s %9s %8s %7s %7s" % ("set", "seed", "full", "minibatch", "diff", "full s", "mb s"))
    schedule = dict(minibatch_per_class=args.per_class, minibatch_iterations=args.minibatch_iterations)
    for name in args.sets:
        source, k, snr, rare = SETS[name]
        images, truth = dataset(source, k, args.box, args.particles, snr, rare)
        used = minibatch.used_iterations(Settings(iterations=args.iterations, **schedule), args.particles, k)
        if used != args.minibatch_iterations:
            raise SystemExit("%d particles, K = %d: automatic mini-batches would search %d subsets, not %d (too few "
                             "particles)" % (args.particles, k, used, args.minibatch_iterations))
        differences = []
        for seed in args.seeds:
            same = dict(seed=seed, threads=args.threads, iterations=args.iterations)
            full = classify(images, truth, k, minibatch=False, **same)
            mini = classify(images, truth, k, minibatch=None, **schedule, **same)
            row = {"part": "quality", "set": name, "seed": seed, "full": full, "minibatch": mini,
                   "difference": mini["purity"] - full["purity"]}
            rows.append(row)
            print("%-12s %-6d %9.3f %9.3f %+8.3f %7.1f %7.1f" % (name, seed, full["purity"], mini["purity"],
                                                                row["difference"], full["seconds"],
                                                                mini["seconds"]), flush=True)
            differences.append(row["difference"])
        mean, error = paired(differences)
        rows.append({"part": "quality-mean", "set": name, "seeds": list(args.seeds), "difference": mean,
                     "standard_error": error})
        print("%-12s %-6s %9s %9s %+8.3f +- %.3f (mean of %d paired, standard error; searches per particle "
              "%.2f against %.2f)" % (name, "mean", "", "", mean, error, len(differences),
                                      sum(mini["searched"]) / len(truth), sum(full["searched"]) / len(truth)),
              flush=True)


def speed(args, rows):
    images, truth = dataset("phantom", args.large_classes, args.large_box, args.large, 0.1, False)
    print("%d particles, %d px, K = %d, %d iterations" % (args.large, args.large_box, args.large_classes,
                                                          Settings().iterations))
    print("%-10s %8s %9s %8s" % ("run", "purity", "searched", "s"))
    found = {}
    for label, switch in (("minibatch", None), ("full", False)):
        found[label] = classify(images, truth, args.large_classes, threads=args.threads, minibatch=switch)
        print("%-10s %8.3f %9d %8.1f" % (label, found[label]["purity"], sum(found[label]["searched"]),
                                         found[label]["seconds"]), flush=True)
    saved = 1.0 - found["minibatch"]["seconds"] / found["full"]["seconds"]
    print("time saved by mini-batches: %.0f%%" % (100 * saved))
    rows.append({"part": "speed", "particles": args.large, "box": args.large_box, "classes": args.large_classes,
                 "minibatch": found["minibatch"], "full": found["full"], "time_saved": saved})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["quality", "speed"], choices=["quality", "speed"])
    parser.add_argument("--particles", type=int, default=10000)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--per-class", type=int, default=Settings().minibatch_per_class)
    parser.add_argument("--iterations", type=int, default=Settings().iterations)
    parser.add_argument("--minibatch-iterations", type=int, default=Settings().minibatch_iterations)
    parser.add_argument("--large", type=int, default=20000)
    parser.add_argument("--large-classes", type=int, default=20)   # automatic from ~1000 K particles
    parser.add_argument("--large-box", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    rows = []
    if "quality" in args.parts:
        quality(args, rows)
    if "speed" in args.parts:
        speed(args, rows)
    print(json.dumps({"benchmark": "minibatch", "rows": rows}))


if __name__ == "__main__":
    main()
