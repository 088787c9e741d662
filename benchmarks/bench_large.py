"""A whole default classification of a large set, as a user runs it: wall and CPU time, peak memory, purity.

Writes ``--particles`` synthetic particles (64 px, ``--classes`` views of ``--source``, by default
one random phantom per view, distinct by the hundred; SNR ``--snr``) as MRC
stacks of CHUNK particles + one STAR file in ``--data`` (reused when it holds the same set, so a
10^6 set of 16 GB is made once, a chunk at a time), then runs ``cryoralign-engine mra --classes K``
with every other option at its default (mini-batches, preselection, equal-size phase) in a
subprocess, so the peak memory is the run's own (the engine logs its peak anonymous memory; the
memory-mapped stacks are page cache and are not counted).  Reports the run's wall seconds, its CPU
seconds (the machine may be shared: the load average is printed), searches per particle, purity
against the true views, and a PROJECTION to ``--project`` particles: this run's seconds per particle
search times the searches the default schedule makes there (cost linear in N).  A table and one JSON line.
Usage: python benchmarks/bench_large.py [--particles 100000] [--classes 100] [--snr 0.2] [--data DIR]
       [--source phantom-zoo|phantom]
       [--project 1000000] [--threads N] [--overcluster C]
"""
import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from cryoralign_plugin.engine import minibatch, outputs, synthetic
from cryoralign_plugin.engine.mrc import write_stack
from cryoralign_plugin.engine.settings import Settings
from cryoralign_plugin.engine.star import write_star

BOX = 64
CHUNK = 50000   # particles per stack (800 MB at 64 px), made and written one at a time
DESCRIPTION = "set.json"


def make_set(folder, count, n_classes, snr, source):
    """The STAR file of ``count`` particles in ``folder`` (made unless already there), and their true classes."""
    wanted = {"particles": count, "classes": n_classes, "snr": snr, "box": BOX, "chunk": CHUNK, "source": source}
    star = os.path.join(folder, "particles.star")
    try:
        with open(os.path.join(folder, DESCRIPTION)) as described:
            if json.load(described) == wanted:
                return star, np.load(os.path.join(folder, "classes.npy"))
    except (OSError, ValueError):
        pass
    os.makedirs(folder, exist_ok=True)
    views = synthetic.make_references(source, n_classes, BOX, seed=0)
    classes, names = [], []
    for chunk, start in enumerate(range(0, count, CHUNK)):
        size = min(CHUNK, count - start)
        images, truth, _ = synthetic.make_particles(views, size, snr, seed=chunk)
        stack = "particles_%03d.mrcs" % chunk
        write_stack(os.path.join(folder, stack), images)
        classes.append(truth)
        names += ["%06d@%s" % (i, stack) for i in range(1, size + 1)]
    write_star(star, {"particles": (["rlnImageId", "rlnImageName"],
                                    [(i, name) for i, name in enumerate(names, 1)])})
    np.save(os.path.join(folder, "classes.npy"), np.concatenate(classes))
    with open(os.path.join(folder, DESCRIPTION), "w") as described:
        json.dump(wanted, described)
    return star, np.concatenate(classes)


def planned_searches(count, n_classes):
    """Particle searches of a default run of ``count`` particles into ``n_classes``."""
    settings = Settings()
    plan = minibatch.Schedule(settings, count, n_classes)
    return sum(plan.size(i) for i in range(1, settings.iterations + 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--particles", type=int, default=100000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--snr", type=float, default=0.2)
    parser.add_argument("--source", choices=("phantom-zoo", "phantom"), default="phantom-zoo",
                        help="views: one phantom each (distinct), or of one phantom (alike beyond ~20)")
    parser.add_argument("--data", help="folder of the data set, made there unless already there (kept); "
                                       "default: a temporary folder")
    parser.add_argument("--project", type=int, default=1000000, help="particles to project the time to")
    parser.add_argument("--threads", type=int, help="engine threads (default: all cores)")
    parser.add_argument("--overcluster", type=int, help="the first iterations at this x K classes "
                                                        "(default: the engine's)")
    args = parser.parse_args()
    temporary = tempfile.mkdtemp(prefix="bench-large-")
    try:
        start = time.perf_counter()
        star, truth = make_set(args.data or os.path.join(temporary, "data"), args.particles, args.classes, args.snr,
                               args.source)
        made = time.perf_counter() - start
        run = os.path.join(temporary, "run")
        command = [sys.executable, "-m", "cryoralign_plugin.engine.cli", "mra", "--particles", star,
                   "--out", run, "--classes", str(args.classes)]
        command += ["--threads", str(args.threads)] if args.threads else []
        command += ["--overcluster", str(args.overcluster)] if args.overcluster else []
        load_before, cpu_before = os.getloadavg()[0], resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        cpu_after, load_after = resource.getrusage(resource.RUSAGE_CHILDREN), os.getloadavg()[0]
        if done.returncode != 0:
            sys.exit("the run failed:\n" + done.stdout[-3000:] + done.stderr[-3000:])
        cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
        peak = float(re.search(r"peak memory (\d+) MB", done.stdout + done.stderr).group(1))
        history = outputs.read_history(run)
        searched = sum(row["searched"] for row in history)
        found = outputs.read_particles(run).classes
        per_search = seconds / searched
        target = planned_searches(args.project, args.classes)
        row = {"particles": args.particles, "classes": args.classes, "box": BOX, "snr": args.snr,
               "source": args.source,
               "seconds": seconds, "cpu_seconds": cpu, "load_before": load_before, "load_after": load_after,
               "particles_per_s": args.particles / seconds, "searches_per_particle": searched / args.particles,
               "iteration_seconds": [round(r["seconds"], 1) for r in history],
               "peak_rss_mb": peak, "purity": float(synthetic.purity(found, truth)), "data_seconds": made,
               "cores": os.cpu_count(), "projected_particles": args.project,
               "projected_searches_per_particle": target / args.project,
               "projected_seconds": per_search * target,
               "projected_seconds_from_cpu": cpu / searched * target / os.cpu_count()}
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    print("%10s %8s %9s %9s %12s %18s %12s %8s" % ("particles", "classes", "seconds", "CPU s", "particles/s",
                                                   "searches/particle", "peak RSS MB", "purity"))
    print("%10d %8d %9.0f %9.0f %12.0f %18.2f %12.0f %8.3f" % (
        row["particles"], row["classes"], row["seconds"], row["cpu_seconds"], row["particles_per_s"],
        row["searches_per_particle"], row["peak_rss_mb"], row["purity"]))
    print("load average %.1f before, %.1f after, %d cores; seconds per iteration: %s"
          % (load_before, load_after, row["cores"], row["iteration_seconds"]))
    if args.project != args.particles:   # a run of the projected size is the measurement itself
        print("PROJECTION (not measured) to %d particles, K = %d, cost linear in the searches (%.2f per particle "
              "there): %.0f s from this run's wall time, %.0f s from its CPU time over %d cores"
              % (args.project, args.classes, row["projected_searches_per_particle"], row["projected_seconds"],
                 row["projected_seconds_from_cpu"], row["cores"]))
    print(json.dumps(dict(benchmark="large_classification", **row)))


if __name__ == "__main__":
    main()
