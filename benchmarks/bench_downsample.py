"""Cost of aligning at an internal box: a 256 px input classified at a maximum resolution of 8 A vs the
same particles extracted at that internal box (Fourier-cropped once, beforehand).

Both runs are whole default MRA classifications (same particles, references drawn with the same seed,
same internal shifts and radius), on the CPU backend, taken alternately ``--repeat`` times; the ratio is
the median of the per-repeat ratios of the times per particle (steadier on a shared machine).  The
downsampled run's time includes its Fourier crops (once per particle) and its final pass at the input
box; "iterations s" is the part spent in the iterations.  Prints a table and one JSON line.
Usage: python benchmarks/bench_downsample.py [--particles 1000] [--classes 10] [--iterations 10]
       [--repeat 3] [--threads N] [--ctf]
"""
import argparse
import json
import os
import tempfile
import time

import numpy as np

from cryoralign_plugin.engine import align, ctf as ctf_model, downsample, synthetic
from cryoralign_plugin.engine.settings import Settings
from cryoralign_plugin.engine.sources import ArraySource

BOX, PIXEL_SIZE, RESOLUTION = 256, 1.0, 8.0


def timed(source, n_classes, settings):
    """Seconds and result of a run writing its folder, as real runs do (it holds the crop cache)."""
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        result = align.align_multi_reference(source, n_classes=n_classes, settings=settings,
                                             out_dir=os.path.join(folder, "run"), log=lambda *_: None)
        return time.perf_counter() - start, result


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--particles", type=int, default=1000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=Settings().iterations)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--ctf", action="store_true", help="CTF-modulated particles, Wiener correction")
    args = parser.parse_args()
    views = synthetic.phantom_views(args.classes, BOX, seed=0)
    sim = synthetic.CtfSimulation(pixel_size=PIXEL_SIZE, defocus_range=(0.8, 2.0), pad=1) if args.ctf else None
    made = synthetic.make_particles(views, args.particles, snr=0.5, seed=1, shift_range=6.0, ctf=sim)
    images, classes = made[0], made[1]
    cols = ctf_model.CtfColumns(**{k: made[3][k] for k in synthetic.CTF_KEYS}, pixel_size=PIXEL_SIZE) \
        if args.ctf else None
    scale = downsample.plan(BOX, PIXEL_SIZE, Settings(max_resolution=RESOLUTION))
    small = downsample.fourier_crop(images, scale.internal_box, workers=os.cpu_count())
    small_px = scale.internal_pixel_size
    small_cols = None if cols is None else ctf_model.CtfColumns(
        **{k: getattr(cols, k) for k in synthetic.CTF_KEYS}, pixel_size=small_px)
    common = dict(iterations=args.iterations, threads=args.threads, backend="cpu")
    runs = {
        "downsampled": lambda: timed(ArraySource(images, pixel_size=PIXEL_SIZE, ctf=cols), args.classes,
                                     Settings(max_resolution=RESOLUTION, **common)),
        "extracted": lambda: timed(ArraySource(small, pixel_size=small_px, ctf=small_cols), args.classes,
                                   Settings(max_resolution=RESOLUTION, **common)),
    }
    timed(ArraySource(small[:60], pixel_size=small_px), 2, Settings(iterations=1, backend="cpu"))   # compile
    seconds = {name: [] for name in runs}
    iterating = {name: [] for name in runs}   # of which in the iterations (the rest: set-up, final pass)
    purity = {}
    for _ in range(args.repeat):
        for name, run in runs.items():       # alternately, so a busy spell of the machine hits both
            s, result = run()
            seconds[name].append(s)
            iterating[name].append(sum(row["seconds"] for row in result.history))
            purity[name] = synthetic.purity(result.classes, classes)
    ratios = [d / e for d, e in zip(seconds["downsampled"], seconds["extracted"])]
    rows = [{"input": name, "box": BOX if name == "downsampled" else scale.internal_box,
             "seconds": min(seconds[name]), "iterations_s": min(iterating[name]), "ms_per_particle_iteration":
                 1e3 * min(seconds[name]) / (args.particles * args.iterations), "purity": purity[name]}
            for name in runs]
    result = {"benchmark": "downsample", "particles": args.particles, "classes": args.classes,
              "iterations": args.iterations, "input_box": BOX, "pixel_size": PIXEL_SIZE,
              "max_resolution": RESOLUTION, "internal_box": scale.internal_box, "ctf": bool(args.ctf),
              "threads": args.threads, "cpus": os.cpu_count(), "rows": rows,
              "ratio": float(np.median(ratios)), "ratios": ratios}
    print("%12s %6s %10s %14s %26s %8s" % ("input", "box", "seconds", "iterations s", "ms / particle / iteration",
                                            "purity"))
    for r in rows:
        print("%12s %6d %10.2f %14.2f %26.3f %8.3f" % (r["input"], r["box"], r["seconds"], r["iterations_s"],
                                                      r["ms_per_particle_iteration"], r["purity"]))
    print("time per particle, downsampled / extracted: %.2fx (median of %s)"
          % (result["ratio"], ", ".join("%.2f" % r for r in ratios)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
