"""A growing (streaming) run against a batch run on the whole set, on the CPU backend.

The particles (phantom views, 64 px, SNR 0.5) arrive in batches: the first is classified with
``--iterations``, each later one is placed (``grow_iterations`` searching only its new particles),
and the last adds the final pass.  Measured in one process, one after the other: the time of each
batch's update, the time of the last call (the last batch and the final pass: what follows the
last particle's arrival), a full MRA run on the whole set and one of its iterations, and the purity
of both against the truth.  Prints a table and one JSON line.
Usage: python benchmarks/bench_stream.py [--particles 2000] [--classes 10] [--first 400] [--batch 200]
"""
import argparse
import json
import tempfile
import time

import numpy as np

from cryoralign_plugin.engine import align, grow, synthetic
from cryoralign_plugin.engine.settings import Settings
from cryoralign_plugin.engine.sources import ArraySource


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--particles", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--first", type=int, default=400)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    refs = synthetic.make_references("phantom", args.classes, 64, seed=0)
    images, truth, _ = synthetic.make_particles(refs, args.particles, snr=0.5, seed=1)
    settings = Settings(iterations=args.iterations, threads=args.threads, backend="cpu")
    quiet = lambda *_: None   # noqa: E731
    # numba compiles on first use: a tiny warm-up run, so no measured call pays for it
    align.align_multi_reference(images[:50], n_classes=2, settings=Settings(iterations=1, backend="cpu"), log=quiet)

    cuts = list(range(args.first, args.particles, args.batch)) + [args.particles]
    calls = []
    with tempfile.TemporaryDirectory() as out:
        for i, n in enumerate(cuts):
            t = time.perf_counter()
            result = grow.grow_multi_reference(ArraySource(images[:n]), args.classes, settings, out,
                                               final=i == len(cuts) - 1, log=quiet)
            calls.append(time.perf_counter() - t)
    t = time.perf_counter()
    batch = align.align_multi_reference(images, n_classes=args.classes, settings=settings, log=quiet)
    full = time.perf_counter() - t
    iteration = float(np.median([row["seconds"] for row in batch.history]))
    updates = calls[1:-1]
    figures = {
        "particles": args.particles, "classes": args.classes, "first": args.first, "batch": args.batch,
        "first_batch_s": round(calls[0], 2), "update_median_s": round(float(np.median(updates)), 2),
        "update_max_s": round(max(updates), 2), "last_call_s": round(calls[-1], 2),
        "full_run_s": round(full, 2), "full_iteration_s": round(iteration, 2),
        "last_call_over_full_run": round(calls[-1] / full, 3),
        "last_call_over_full_iteration": round(calls[-1] / iteration, 2),
        "purity_stream": round(synthetic.purity(result.classes, truth), 3),
        "purity_batch": round(synthetic.purity(batch.classes, truth), 3),
        "final_classes": len(result.averages),
    }
    print("%d particles of 64 px, K = %d: first batch %d, then batches of %d (%d calls)"
          % (args.particles, args.classes, args.first, args.batch, len(cuts)))
    print("  first batch (%d iterations)     %6.1f s" % (args.iterations, calls[0]))
    print("  update per batch (median, max)  %6.1f s, %.1f s" % (figures["update_median_s"], figures["update_max_s"]))
    print("  last batch + final pass         %6.1f s" % calls[-1])
    print("  full run on the whole set       %6.1f s (one iteration %.1f s)" % (full, iteration))
    print("  purity: streaming %.3f (%d classes), batch %.3f"
          % (figures["purity_stream"], figures["final_classes"], figures["purity_batch"]))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
