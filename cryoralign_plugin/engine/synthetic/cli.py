"""The command line: ``python -m cryoralign_plugin.engine.synthetic --out DIR ...`` writes a data set."""
import argparse

from .ctf_sim import CtfSimulation
from .datasets import SOURCES, make_dataset

PROG = "python -m cryoralign_plugin.engine.synthetic"   # shown by usage and errors (not "__main__.py")


def _ctf_from_args(args, parser):
    """A CtfSimulation if --ctf or any CTF option was given, else None."""
    given = {name: getattr(args, name) for name in ("defocus", "astigmatism", "voltage", "cs",
                                                     "amplitude_contrast", "pixel_size", "bfactor",
                                                     "optics_groups", "ctf_pad")}
    if not args.ctf and all(v is None for v in given.values()):
        return None
    defaults = CtfSimulation()
    pick = lambda name, default: default if given[name] is None else given[name]
    try:
        return CtfSimulation(
            defocus_range=tuple(pick("defocus", defaults.defocus_range)),
            astigmatism=pick("astigmatism", defaults.astigmatism),
            voltage=tuple(pick("voltage", [defaults.voltage])), cs=tuple(pick("cs", [defaults.cs])),
            amplitude_contrast=tuple(pick("amplitude_contrast", [defaults.amplitude_contrast])),
            pixel_size=pick("pixel_size", defaults.pixel_size), bfactor=pick("bfactor", defaults.bfactor),
            n_optics_groups=given["optics_groups"], pad=pick("ctf_pad", defaults.pad))
    except Exception as e:
        parser.error(str(e))


def main(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description="Write a synthetic particle set with known truth.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--particles", type=int, default=1000)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10,
                        help="classes (views); for the continuous sources the K of the ideal partition")
    parser.add_argument("--snr", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", choices=SOURCES, default="phantom",
                        help="phantom / slicem: distinct views; phantom-pairs: near-duplicate pairs; "
                             "phantom-zoo: one phantom per view (hundreds of distinct views); "
                             "phantom-arc / phantom-cap: continuous directions")
    parser.add_argument("--shift-range", type=float, default=3.0)
    parser.add_argument("--no-mirror", action="store_true", help="no mirrored particles")
    hard = parser.add_argument_group("harder sets")
    hard.add_argument("--class-weights", type=float, nargs="+", help="one weight per class")
    hard.add_argument("--rare-fraction", type=float, help="the last class gets this fraction (e.g. 0.03)")
    hard.add_argument("--max-similarity", type=float,
                      help="views as alike as this cap on their rotational similarity allows")
    hard.add_argument("--extent", type=float,
                      help="degrees of the arc (default 90) / half-angle of the cap (default 30)")
    ctf = parser.add_argument_group("CTF (any of these turns it on)")
    ctf.add_argument("--ctf", action="store_true", help="CTF-modulated particles (RELION 3.1 STAR)")
    ctf.add_argument("--defocus", type=float, nargs=2, metavar=("LOW", "HIGH"),
                     help="defocus range in um (default 0.8 3.0)")
    ctf.add_argument("--astigmatism", type=float, help="max (dU - dV) / mean (default 0.05)")
    ctf.add_argument("--voltage", type=float, nargs="+", help="kV, one or one per optics group (default 300)")
    ctf.add_argument("--cs", type=float, nargs="+", help="mm, one or one per optics group (default 2.7)")
    ctf.add_argument("--amplitude-contrast", type=float, nargs="+", help="one or one per group (default 0.1)")
    ctf.add_argument("--pixel-size", type=float, help="A/px (default 2.5)")
    ctf.add_argument("--bfactor", type=float, help="CTF B-factor in A^2 (default 0)")
    ctf.add_argument("--optics-groups", type=int, help="number of optics groups (default: as many as "
                                                       "--voltage/--cs values)")
    ctf.add_argument("--ctf-pad", type=int, help="apply the CTF on a box this many times larger (default 2)")
    args = parser.parse_args(argv)
    try:
        paths = make_dataset(args.out, args.particles, args.box, args.classes, args.snr, args.seed,
                             args.source, args.shift_range, not args.no_mirror,
                             class_weights=args.class_weights, rare_fraction=args.rare_fraction,
                             ctf=_ctf_from_args(args, parser), max_similarity=args.max_similarity,
                             extent=args.extent)
    except ValueError as e:
        parser.error(str(e))
    for role, path in paths.items():
        print("%-15s %s" % (role, path))
