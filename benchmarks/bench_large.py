"""A whole default classification of a large set, as a user runs it: wall time, peak memory, purity.

Writes ``--particles`` synthetic particles (64 px, ``--classes`` distinct phantom views, SNR
``--snr``) as an MRC stack + STAR file, then runs ``cryoralign-engine mra --classes K`` with every
other option at its default (mini-batches, preselection, equal-size phase) in a subprocess, so the
peak memory is the run's own (the engine logs its peak anonymous memory; the memory-mapped stack is
page cache and is not counted).  Purity is against the true views.  Prints a table and one JSON line.
Usage: python benchmarks/bench_large.py [--particles 100000] [--classes 100] [--snr 0.2] [--keep DIR]
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from cryoralign_plugin.engine import outputs, synthetic

BOX = 64


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--particles", type=int, default=100000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--snr", type=float, default=0.2)
    parser.add_argument("--keep", help="write the data and the run here (kept) instead of a temporary folder")
    args = parser.parse_args()
    folder = args.keep or tempfile.mkdtemp(prefix="bench-large-")
    try:
        start = time.perf_counter()
        paths = synthetic.make_dataset(os.path.join(folder, "data"), n_particles=args.particles, box=BOX,
                                       n_classes=args.classes, snr=args.snr, seed=0)
        made = time.perf_counter() - start
        run = os.path.join(folder, "run")
        command = [sys.executable, "-m", "cryoralign_plugin.engine.cli", "mra", "--particles",
                   paths["particles_star"], "--out", run, "--classes", str(args.classes), "--overwrite"]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit("the run failed:\n" + done.stdout[-3000:] + done.stderr[-3000:])
        peak = float(re.search(r"peak memory (\d+) MB", done.stdout + done.stderr).group(1))
        searched = sum(row.get("searched", args.particles) for row in outputs.read_history(run))
        truth, _ = synthetic.read_truth(paths["truth"])
        found = outputs.read_particles(run).classes
        row = {"particles": args.particles, "classes": args.classes, "box": BOX, "snr": args.snr,
               "seconds": seconds, "particles_per_s": args.particles / seconds,
               "searches_per_particle": searched / args.particles, "peak_rss_mb": peak,
               "purity": float(synthetic.purity(found, truth)), "data_seconds": made, "threads": os.cpu_count()}
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print("%10s %8s %10s %12s %18s %12s %8s" % ("particles", "classes", "seconds", "particles/s",
                                                "searches/particle", "peak RSS MB", "purity"))
    print("%10d %8d %10.0f %12.0f %18.2f %12.0f %8.3f" % (row["particles"], row["classes"], row["seconds"],
                                                         row["particles_per_s"], row["searches_per_particle"],
                                                         row["peak_rss_mb"], row["purity"]))
    print(json.dumps(dict(benchmark="large_classification", **row)))


if __name__ == "__main__":
    main()
