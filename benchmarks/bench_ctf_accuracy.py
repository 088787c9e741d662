"""How good the CTF-corrected class averages are: FRC resolution and correlation against the true views.

The setting of the issue "CTF-aware alignment": semi-synthetic CTF particles made from real SLICEM
class averages (:func:`~cryoralign_plugin.engine.synthetic.make_dataset`, source slicem; defocus
0.8-3.0 um, astigmatism 0.05, 300 kV, Cs 2.7 mm, amplitude contrast 0.1, 2 A/px, the CTF applied on a
2x zero-padded box as the default ``CtfSimulation`` does), read back from the STAR file as a run
would.  Defaults: 3000 particles of 96 px, SNR 0.05, 10 views, K = 10 from random particles, 10
iterations (``--quick``: 1000 particles of 64 px at 2.5 A/px, since at 64 px and 3 um the simulated
CTF would alias at 2 A/px, and 5 iterations: about a minute per correction).  For each CTF correction
(none, flip, wiener):

* purity of the classes (:func:`synthetic.purity`);
* each class matched to the true view most of its particles come from, and its average (the run's
  class average before the reference low-pass: Wiener-filtered with wiener, a plain average of the
  particles as the search sees them with none and flip) registered onto that view: an exhaustive
  scan (1 degree steps, both mirrors, integer shifts from the cross-correlation peak within
  +-8 px), then a Nelder-Mead optimisation of (psi, dx, dy) maximising the normalised correlation
  inside the mask, the rotation done on a 2x Fourier-upsampled copy (so interpolation hardly blurs)
  and the shift as an exact Fourier phase shift.  Both images then get the same soft-edged disc
  (the engine's mask radius, a 4 px cosine edge inside it); from them the FRC-0.5 resolution (A,
  rings interpolated; Nyquist when it never drops below 0.5) and the normalised correlation inside
  the engine's mask.  Medians over classes; the "ceiling" row is the same measure on a view
  rotated/shifted off itself (what registration and interpolation alone cost);
* the median shift (px) and angle (deg) error of the particles of each class's matched view against
  the truth up to the class's common transform (:func:`synthetic.register_errors`; over the particles
  whose mirror agrees with the class's, the agreeing fraction given as "mirror");
* the same measure on the averages the engine makes from the TRUE classes and parameters (perfect
  alignment): what the particles allow at this SNR and count, whatever the search does;
* the oracle: one search (one iteration, plain best-score assignment) from the TRUE views, its class
  accuracy (fraction of particles assigned to their own view).

Issue's targets: median FRC-0.5 resolution <= 4.5 A, median normalised correlation >= 0.97, class
accuracy with the true views >= 0.99, purity >= 0.99 (before CTF correction: 19.2 A and 0.80).
Prints a table and one JSON line.
Usage: python benchmarks/bench_ctf_accuracy.py [--particles 3000] [--box 96] [--snr 0.05]
       [--iterations 10] [--modes none flip wiener] [--seed 1] [--overcluster C] [--resplit M] [--threads N]
       [--max-resolution A] [--quick]
"""
import argparse
import json
import os
import tempfile
import time

import numpy as np
from scipy.optimize import minimize

from cryoralign_plugin.engine import align, loop, references, synthetic
from cryoralign_plugin.engine import images as imgops
from cryoralign_plugin.engine.ctf import wavelength
from cryoralign_plugin.engine.mrc import read_stack
from cryoralign_plugin.engine.geometry import largest_radius
from cryoralign_plugin.engine.settings import SHIFT_RANGE, Settings
from cryoralign_plugin.engine.sources import StarSource
from cryoralign_plugin.engine.synthetic.slicem import _fourier_resize

PIXEL_SIZE = 2.0
DEFOCUS_RANGE = (0.8, 3.0)   # um
VOLTAGE = 300.0
N_VIEWS = 10
COARSE_STEP = 1.0      # degrees, exhaustive scan
MAX_SHIFT = 8          # px, cross-correlation peak searched within this
SOFT_EDGE = 4.0        # px, cosine edge of the comparison mask (inside the engine's radius)


def pixel_size_for(box, pad=2):
    """2 A/px (the issue's), or larger where the simulated CTF would alias near Nyquist on this box
    (``lambda * defocus < pad * box * pixel_size^2``, :class:`synthetic.CtfSimulation`): 2.5 A/px at 64 px."""
    least = np.sqrt(wavelength(VOLTAGE) * DEFOCUS_RANGE[1] * 1e4 / (pad * box))
    return PIXEL_SIZE if least < PIXEL_SIZE else float(np.ceil(least * 1.05 / 0.25) * 0.25)


def quiet(*_):
    pass


def soft_disc(box, radius, edge=SOFT_EDGE):
    y, x = np.indices((box, box)) - box // 2
    t = np.clip((np.hypot(x, y) - (radius - edge)) / edge, 0.0, 1.0)
    return (0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float64)


def rotate_fine(image, psi, mirror):
    """``image`` rotated by ``psi`` (and mirrored), on a 2x Fourier-upsampled grid then cropped back."""
    box = image.shape[-1]
    up = _fourier_resize(image[None], 2 * box)
    moved = imgops.transform(up, [[psi, 0.0, 0.0, float(mirror)]])
    return _fourier_resize(moved, box)[0].astype(np.float64)


def shifted(image, dx, dy):
    return imgops.fourier_shift(image.astype(np.float32), dx, dy).astype(np.float64)


def masked_correlation(a, b, mask):
    x, y = a[mask], b[mask]
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / np.sqrt(max((x * x).sum() * (y * y).sum(), 1e-300)))


def register(average, view, radius):
    """``(registered average, (psi, dx, dy, mirror))``: the average moved onto the view."""
    box = view.shape[-1]
    soft = soft_disc(box, radius)
    hard = imgops.circular_mask(box, radius)
    target = (view - view[hard].mean()) * soft
    angles = np.arange(0.0, 360.0, COARSE_STEP)
    params = np.array([[a, 0.0, 0.0, m] for m in (0, 1) for a in angles])
    rotated = imgops.transform(np.repeat(average[None].astype(np.float32), len(params), 0), params)
    rotated = rotated - rotated[:, hard].mean(axis=1)[:, None, None]
    rotated = rotated * soft
    cc = np.fft.irfft2(np.fft.rfft2(target)[None] * np.conj(np.fft.rfft2(rotated)), s=(box, box))
    cc = np.fft.fftshift(cc, axes=(-2, -1))   # cc[c + dy, c + dx]: the rotated average shifted by (dx, dy)
    c = box // 2
    window = cc[:, c - MAX_SHIFT:c + MAX_SHIFT + 1, c - MAX_SHIFT:c + MAX_SHIFT + 1]
    flat = window.reshape(len(params), -1)
    best = int(np.argmax(flat.max(axis=1)))
    iy, ix = np.unravel_index(int(np.argmax(flat[best])), window.shape[1:])
    psi0, mirror = params[best, 0], int(params[best, 3])
    start = np.array([psi0, ix - MAX_SHIFT, iy - MAX_SHIFT], float)

    def cost(p):
        return -masked_correlation(shifted(rotate_fine(average, p[0], mirror), p[1], p[2]), view, hard)

    found = minimize(cost, start, method="Nelder-Mead",
                     options={"xatol": 1e-3, "fatol": 1e-7, "initial_simplex":
                              start + np.array([[0, 0, 0], [1.0, 0, 0], [0, 0.5, 0], [0, 0, 0.5]])})
    psi, dx, dy = found.x
    return shifted(rotate_fine(average, psi, mirror), dx, dy), (float(psi), float(dx), float(dy), mirror)


def frc_resolution(curve, box, pixel_size, threshold=0.5):
    """Resolution (A) where the FRC first falls below ``threshold``, linearly between rings; Nyquist if never."""
    below = np.flatnonzero(curve[1:] < threshold)
    if below.size == 0:
        return 2.0 * pixel_size
    r = below[0] + 1
    lo, hi = curve[r - 1], curve[r]
    ring = r - 1 + (lo - threshold) / (lo - hi) if lo != hi else float(r)
    return box * pixel_size / max(ring, 1e-9)


def compare(average, view, radius, pixel_size):
    """FRC-0.5 resolution (A) and masked normalised correlation of ``average`` registered onto ``view``."""
    box = view.shape[-1]
    moved, found = register(average, view, radius)
    soft = soft_disc(box, radius)
    hard = imgops.circular_mask(box, radius)
    a = (moved - moved[hard].mean()) * soft
    b = (view - view[hard].mean()) * soft
    curve = imgops.frc(a, b)
    return frc_resolution(curve, box, pixel_size), masked_correlation(moved, view, hard), found


def ceiling(views, radius, pixel_size):
    """The measure on each view moved off itself (rotated 37.3 deg, mirrored, shifted 1.3, -0.7 px)."""
    rows = [compare(shifted(rotate_fine(v.astype(np.float64), 37.3, 1), 1.3, -0.7), v.astype(np.float64),
                    radius, pixel_size)[:2] for v in views]
    return float(np.median([r[0] for r in rows])), float(np.median([r[1] for r in rows]))


def class_rows(result, truth_classes, truth, views, radius, pixel_size):
    """Per class: its matched view, size, purity, resolution, correlation; and the particles' errors."""
    rows, shift_err, angle_err, mirror_ok = [], [], [], []
    for k in range(len(result.averages)):
        members = np.flatnonzero(result.classes == k)
        if members.size == 0:
            continue
        counts = np.bincount(truth_classes[members], minlength=len(views))
        view = int(np.argmax(counts))
        res, corr, found = compare(result.averages[k].astype(np.float64), views[view].astype(np.float64),
                                   radius, pixel_size)
        rows.append({"class": k + 1, "view": view + 1, "size": int(members.size),
                     "fraction": float(counts[view] / members.size), "resolution_A": res,
                     "correlation": corr, "registration": found})
        own = members[truth_classes[members] == view]
        angle, shift, same = synthetic.register_errors(result.params[own], truth[own])
        shift_err.append(shift[same])
        angle_err.append(angle[same])
        mirror_ok.append(same)
    cat = np.concatenate
    return rows, {"shift_error_px": float(np.median(cat(shift_err))),
                  "angle_error_deg": float(np.median(cat(angle_err))),
                  "mirror_agreement": float(cat(mirror_ok).mean())}


def true_alignment_averages(source, mode, args, truth_classes, truth):
    """The class averages the engine makes from the TRUE classes and parameters (perfect alignment):
    what the data allow, whatever the search does."""
    ctx = align._context(source, settings_for(mode, args), None, quiet).at_input_box()   # as the final averages
    counts = references.class_counts(truth_classes, np.arange(len(truth_classes)) % 2, N_VIEWS)
    return loop.class_references(ctx, truth, truth_classes, counts)[2]


def settings_for(mode, args, **extra):
    options = dict(ctf=mode, iterations=args.iterations, threads=args.threads, seed=args.seed,
                   max_resolution=args.max_resolution, overcluster=args.overcluster, resplit=args.resplit)
    options.update(extra)
    return Settings(**options)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--particles", type=int, default=None, help="default 3000 (--quick: 1000)")
    ap.add_argument("--box", type=int, default=None, help="default 96 (--quick: 64)")
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--iterations", type=int, default=None, help="default 10 (--quick: 5)")
    ap.add_argument("--modes", nargs="+", default=["none", "flip", "wiener"], choices=["none", "flip", "wiener"])
    ap.add_argument("--seed", type=int, default=1, help="the random particles the K classes start from")
    ap.add_argument("--overcluster", type=int, default=Settings.overcluster,
                    help="the first iterations at this x K classes (overcluster.py; default: %(default)s)")
    ap.add_argument("--resplit", type=int, default=Settings.resplit,
                    help="split every class in two after this iteration, merged back after the next "
                         "(overcluster.split; default: %(default)s, off)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--max-resolution", type=float, default=None,
                    help="A, the run's (default: automatic, which searches 96 px at 2 A/px in a 64 px internal box)")
    ap.add_argument("--quick", action="store_true", help="smaller: 1000 particles of 64 px, 5 iterations")
    args = ap.parse_args(argv)
    args.particles = args.particles or (1000 if args.quick else 3000)
    args.box = args.box or (64 if args.quick else 96)
    args.iterations = args.iterations or (5 if args.quick else 10)
    pixel_size = pixel_size_for(args.box)
    sim = synthetic.CtfSimulation(defocus_range=DEFOCUS_RANGE, astigmatism=0.05, voltage=VOLTAGE, cs=2.7,
                                  amplitude_contrast=0.1, pixel_size=pixel_size)

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        paths = synthetic.make_dataset(os.path.join(tmp, "data"), args.particles, args.box, N_VIEWS, args.snr,
                                       seed=0, source="slicem", ctf=sim)
        truth_classes, truth = synthetic.read_truth(paths["truth"])
        views = np.asarray(read_stack(paths["references"]), np.float32)   # the clean views, no CTF
        source = StarSource.from_star(paths["particles_star"])
        radius = largest_radius(args.box, SHIFT_RANGE)   # the automatic mask at the input box
        print("data set: %d particles of %d px, %.1f A/px, SNR %g, %d SLICEM views (%.0f s); mask radius %d px"
              % (args.particles, args.box, pixel_size, args.snr, N_VIEWS, time.perf_counter() - t, radius),
              flush=True)
        top = ceiling(views, radius, pixel_size)
        print("registration ceiling (a view moved off itself): %.2f A, correlation %.4f" % top, flush=True)

        rows = []
        for mode in args.modes:
            t = time.perf_counter()
            oracle = align.align_multi_reference(source, references=views, log=quiet, settings=settings_for(
                mode, args, iterations=1, balanced_iterations=0, min_members=0))
            accuracy = float(np.mean(oracle.classes == truth_classes))
            t_oracle = time.perf_counter() - t
            t = time.perf_counter()
            result = align.align_multi_reference(source, n_classes=N_VIEWS, settings=settings_for(mode, args),
                                                 log=quiet)
            seconds = time.perf_counter() - t
            per_class, errors = class_rows(result, truth_classes, truth, views, radius, pixel_size)
            perfect = [compare(a.astype(np.float64), v.astype(np.float64), radius, pixel_size)[:2] for a, v in
                       zip(true_alignment_averages(source, mode, args, truth_classes, truth), views)]
            row = {"mode": mode, "purity": synthetic.purity(result.classes, truth_classes),
                   "oracle_accuracy": accuracy,
                   "median_resolution_A": float(np.median([c["resolution_A"] for c in per_class])),
                   "median_correlation": float(np.median([c["correlation"] for c in per_class])),
                   "views_found": len({c["view"] for c in per_class}),
                   "true_alignment_resolution_A": float(np.median([p[0] for p in perfect])),
                   "true_alignment_correlation": float(np.median([p[1] for p in perfect])),
                   "seconds": seconds, "oracle_seconds": t_oracle, "classes": per_class}
            row.update(errors)
            rows.append(row)
            print("%s: purity %.4f, oracle accuracy %.4f, median %.2f A, median correlation %.4f (%.0f s + "
                  "oracle %.0f s)" % (mode, row["purity"], accuracy, row["median_resolution_A"],
                                     row["median_correlation"], seconds, t_oracle), flush=True)
            print("    with the true classes and parameters (perfect alignment): median %.2f A, correlation %.4f"
                  % (row["true_alignment_resolution_A"], row["true_alignment_correlation"]), flush=True)
            for c in per_class:
                print("    class %2d -> view %2d: %4d particles (%.3f of that view), %6.2f A, corr %.4f" % (
                    c["class"], c["view"], c["size"], c["fraction"], c["resolution_A"], c["correlation"]), flush=True)

    print()
    print("CTF accuracy: %d particles of %d px (%.1f A/px), SNR %g, K = %d from random particles, %d iterations"
          % (args.particles, args.box, pixel_size, args.snr, N_VIEWS, args.iterations))
    print("%-7s %7s %7s %6s %9s %8s %9s %9s %7s %7s %16s" % (
        "ctf", "purity", "oracle", "views", "FRC0.5 A", "corr", "shift px", "angle deg", "mirror", "s",
        "true-align A/corr"))
    for r in rows:
        print("%-7s %7.4f %7.4f %6d %9.2f %8.4f %9.3f %9.3f %7.4f %7.0f %9.2f/%.4f" % (
            r["mode"], r["purity"], r["oracle_accuracy"], r["views_found"], r["median_resolution_A"],
            r["median_correlation"], r["shift_error_px"], r["angle_error_deg"], r["mirror_agreement"],
            r["seconds"], r["true_alignment_resolution_A"], r["true_alignment_correlation"]))
    print("%-7s %7s %7s %6s %9.2f %8.4f   (a view registered onto itself)" % ("ceiling", "", "", "", *top))
    print("targets: FRC-0.5 <= 4.5 A, corr >= 0.97, oracle >= 0.99, purity >= 0.99 (before CTF: 19.2 A, 0.80)")
    print(json.dumps({"benchmark": "ctf_accuracy", "particles": args.particles, "box": args.box,
                      "pixel_size": pixel_size, "snr": args.snr, "iterations": args.iterations,
                      "classes": N_VIEWS, "ceiling_resolution_A": top[0], "ceiling_correlation": top[1],
                      "rows": rows}))


if __name__ == "__main__":
    main()
