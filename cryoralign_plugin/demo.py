"""``make demo``: generated particles -> reference-free alignment -> classification on 2 MPI ranks.

Writes everything under ``demo_output/`` and prints a summary measured against the ground truth.
"""
import os
import subprocess
import sys
import time

import numpy as np

from cryoralign_plugin.engine import geometry, io, outputs, synthetic

OUT = os.path.abspath("demo_output")
N_PARTICLES, BOX, N_CLASSES, SNR = 2000, 64, 10, 0.3


def engine(*args, ranks=1):
    """Run ``cryoralign-engine`` (under ``mpirun`` for several ranks), streaming its log."""
    bindir = os.path.dirname(sys.executable)
    command = [os.path.join(bindir, "cryoralign-engine")] + [str(a) for a in args]
    if ranks > 1:
        command = [os.path.join(bindir, "mpirun"), "-n", str(ranks)] + command
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def purity(found, truth):
    return sum(np.bincount(truth[found == k]).max() for k in np.unique(found)) / len(truth)


def rfa_consistency(params, truth):
    """Median angle deviation (deg) of the RFA alignment from truth up to one common transform."""
    g = geometry.combine(geometry.inverse(truth), params)
    same_mirror = g[:, geometry.MIRROR] == np.round(np.median(g[:, geometry.MIRROR]))
    psi = g[same_mirror, geometry.PSI]
    centre = np.rad2deg(np.angle(np.exp(1j * np.deg2rad(psi)).mean()))
    return float(np.median(np.abs((psi - centre + 180.0) % 360.0 - 180.0))), float(same_mirror.mean())


def main():
    data = os.path.join(OUT, "data")
    paths = synthetic.make_dataset(data, n_particles=N_PARTICLES, box=BOX, n_classes=N_CLASSES, snr=SNR,
                                   seed=0, source="phantom")
    true_classes, truth = synthetic.read_truth(paths["truth"])
    star = paths["particles_star"]
    one_view = os.path.join(OUT, "view1.star")
    rows = [(i + 1, "%06d@data/particles.mrcs" % (i + 1)) for i in np.flatnonzero(true_classes == 0)]
    io.write_star(one_view, {"particles": (["rlnImageId", "rlnImageName"], rows)})

    rfa_seconds = engine("rfa", "--particles", one_view, "--out", os.path.join(OUT, "rfa"), "--iterations", 6)
    mra_seconds = engine("mra", "--particles", star, "--out", os.path.join(OUT, "mra"), "--classes", N_CLASSES,
                         "--iterations", 12, "--threads", 1, ranks=2)

    _, rfa_params, _ = outputs.read_particles(os.path.join(OUT, "rfa"))
    spread, consistent = rfa_consistency(rfa_params, truth[true_classes == 0])
    classes, _, scores = outputs.read_particles(os.path.join(OUT, "mra"))
    sizes = np.bincount(classes, minlength=N_CLASSES)
    print("\ncryoralign demo: %d particles, %d px, %d views, SNR %g (outputs in %s)"
          % (N_PARTICLES, BOX, N_CLASSES, SNR, OUT))
    print("%-34s %s" % ("reference-free alignment (1 view)", "%.1f s, median deviation %.2f deg, mirror "
                        "consistent %.1f%%" % (rfa_seconds, spread, 100 * consistent)))
    print("%-34s %s" % ("classification (2 MPI ranks)", "%.1f s, purity %.3f, mean score %.3f"
                        % (mra_seconds, purity(classes, true_classes), scores.mean())))
    print("%-34s %s" % ("class sizes", " ".join(str(s) for s in sizes)))


if __name__ == "__main__":
    main()
