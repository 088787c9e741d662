"""What bench_ctf_accuracy's data allow at best: the FRC-0.5 of an ideal class average against its true view.

The data of bench_ctf_accuracy (3000 SLICEM CTF particles, 96 px, 2 A/px, defocus 0.8-3.0 um, SNR 0.05
as synthetic.py defines it, 10 views), made again in memory.  For each class, with its TRUE members
and parameters, the expected FRC against the true view of the best linear average that knows the
signal's power per ring (a Wiener filter with the true per-ring SSNR) and moves particles without
interpolation loss::

    A(s) = sum_i CTF_i X_i / (sum_i CTF_i^2 + sigma^2 n^2 / P(ring)),   X_i = CTF_i H S + noise

(CTFs in the class frame, white noise of the data's sigma, reduced by the comparison's soft mask as
the benchmark's FRC sees it).  ``H`` is the data's own signal transfer: the particles are made by
cubic interpolation of the views (synthetic.make_particles), which damps their high frequencies
before the noise is added; it is measured on the noise-free, CTF-free particles brought back onto
their views on a 4x Fourier-upsampled grid.  Rows: that bound with ``H = 1`` (the views' own
information) and with the measured ``H`` (what these particles hold), also at higher SNRs; and the
data's SNR under other common definitions (same particles, same noise).
Usage: python benchmarks/bench_ctf_bound.py [--particles 3000] [--snr 0.05]
"""
import argparse
import json

import numpy as np

from bench_ctf_accuracy import DEFOCUS_RANGE, N_VIEWS, PIXEL_SIZE, VOLTAGE, frc_resolution, soft_disc
from cryoralign_plugin.engine import ctf, synthetic
from cryoralign_plugin.engine import images as imgops
from cryoralign_plugin.engine.ctf_correction import class_frame_angles
from cryoralign_plugin.engine.geometry import largest_radius
from cryoralign_plugin.engine.settings import SHIFT_RANGE
from cryoralign_plugin.engine.synthetic.slicem import _fourier_resize

BOX = 96
UPSAMPLING = 4


def ring_sum(values, rings, n_rings):
    inside = rings <= n_rings - 1
    return np.bincount(rings[inside], values[inside], n_rings)


def moved_back(images, truth):
    """Particles brought onto their views (``transform(particle, truth)``) on an upsampled grid."""
    big = _fourier_resize(images, UPSAMPLING * BOX)
    params = np.array(truth, np.float64)
    params[:, 1:3] *= UPSAMPLING
    return _fourier_resize(imgops.transform(big, params), BOX)


def bound(views, classes, ctf2, transfer, noise, soft):
    """Median FRC-0.5 resolution (A) and per class of the ideal averages (see the module docstring)."""
    rings = imgops.radial_index(BOX)
    n_rings = BOX // 2 + 1
    ring_of = np.minimum(rings, n_rings - 1)
    out = []
    for k in range(len(views)):
        power = np.abs(np.fft.rfft2(views[k].astype(np.float64) * soft)) ** 2 * transfer[k][ring_of] ** 2
        per_ring = ring_sum(power, rings, n_rings) / np.maximum(ring_sum(np.ones_like(power), rings, n_rings), 1)
        eps = noise / np.maximum(per_ring[ring_of], 1e-30)
        c2 = ctf2[k]
        gain = c2 / (c2 + eps)
        curve = ring_sum(gain * power, rings, n_rings) / np.sqrt(
            ring_sum(gain * gain * power + noise * c2 / (c2 + eps) ** 2, rings, n_rings)
            * ring_sum(power, rings, n_rings))
        out.append(frc_resolution(curve, BOX, PIXEL_SIZE))
    return float(np.median(out)), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--particles", type=int, default=3000)
    ap.add_argument("--snr", type=float, default=0.05)
    args = ap.parse_args(argv)
    sim = synthetic.CtfSimulation(defocus_range=DEFOCUS_RANGE, astigmatism=0.05, voltage=VOLTAGE, cs=2.7,
                                  amplitude_contrast=0.1, pixel_size=PIXEL_SIZE)
    views = synthetic.make_references("slicem", N_VIEWS, BOX, 0)      # as make_dataset(seed=0) makes them
    clean, classes, truth, truth_ctf = synthetic.make_particles(views, args.particles, np.inf, 0, SHIFT_RANGE,
                                                                True, ctf=sim)
    unmodulated = synthetic.make_particles(views, args.particles, np.inf, 0, SHIFT_RANGE, True)[0]
    sigma = synthetic.noise_sigma(clean, args.snr, synthetic.default_radius(BOX))
    soft = soft_disc(BOX, largest_radius(BOX, SHIFT_RANGE))
    noise = sigma ** 2 * BOX * BOX * float((soft ** 2).mean())

    values = [np.asarray(truth_ctf[key]) for key in synthetic.CTF_KEYS]
    values[2] = class_frame_angles(truth_ctf["defocus_angle"], truth)
    squared = ctf.ctf_images(*values, box=BOX, pixel_size=PIXEL_SIZE).astype(np.float64) ** 2
    ctf2 = [squared[classes == k].sum(axis=0) for k in range(N_VIEWS)]

    back = np.concatenate([moved_back(unmodulated[lo:lo + 250], truth[lo:lo + 250])
                           for lo in range(0, args.particles, 250)])
    rings = imgops.radial_index(BOX)
    n_rings = BOX // 2 + 1
    transfer = []
    for k in range(N_VIEWS):
        v = np.fft.rfft2(views[k].astype(np.float64) * soft)
        a = np.fft.rfft2(back[classes == k].mean(axis=0) * soft)
        transfer.append(ring_sum((a * np.conj(v)).real, rings, n_rings) / ring_sum(np.abs(v) ** 2, rings, n_rings))
    ones = [np.ones(n_rings)] * N_VIEWS

    rows = {"views' information (H = 1)": bound(views, classes, ctf2, ones, noise, soft),
            "these particles (measured H)": bound(views, classes, ctf2, transfer, noise, soft)}
    higher = {factor: bound(views, classes, ctf2, transfer, noise / factor, soft)[0] for factor in (2, 4, 8)}
    r04 = synthetic.default_radius(BOX)
    definitions = {
        "CTF-modulated signal, 0.4-box mask (synthetic.py)": synthetic.signal_variance(clean, r04) / sigma ** 2,
        "CTF-modulated signal, whole box": float(clean.astype(np.float64).var()) / sigma ** 2,
        "projection before the CTF, 0.4-box mask": synthetic.signal_variance(unmodulated, r04) / sigma ** 2,
        "projection before the CTF, whole box": float(unmodulated.astype(np.float64).var()) / sigma ** 2}

    print("ideal class averages of bench_ctf_accuracy's data (%d particles, %d px, %.1f A/px, SNR %g): median "
          "FRC-0.5 against the true views" % (args.particles, BOX, PIXEL_SIZE, args.snr))
    for name, (median, per_class) in rows.items():
        print("  %-30s %.2f A (classes %s)" % (name, median, " ".join("%.2f" % r for r in per_class)))
    ring = [int(round(BOX * PIXEL_SIZE / a)) for a in (8.0, 6.0, 4.5)]
    print("  measured H at 8, 6, 4.5 A (median over views): %s" % " ".join(
        "%.3f" % np.median([t[r] for t in transfer]) for r in ring))
    for factor, median in higher.items():
        print("  at SNR %g (x%d, these particles): %.2f A" % (args.snr * factor, factor, median))
    print("the same data's SNR by other definitions:")
    for name, value in definitions.items():
        print("  %-52s %.4f" % (name, value))
    print(json.dumps({"benchmark": "ctf_bound", "particles": args.particles, "snr": args.snr,
                      "bound_A": {name: row[0] for name, row in rows.items()},
                      "bound_at_snr_factor_A": higher, "snr_definitions": definitions}))


if __name__ == "__main__":
    main()
