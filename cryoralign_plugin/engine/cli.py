"""``cryoralign-engine rfa|mra|info``: the command line the Scipion protocols run (MPI-aware).

Bad input ends the run with ``cryoralign-engine: error: ...`` and exit status 2; under MPI a rank
that fails aborts the whole job (no rank is left waiting in a collective).
"""
import argparse
import os
import platform
import sys
import traceback

from .errors import InputError
from .memory import PeakMemory

PROG = "cryoralign-engine"


def _common(parser):
    parser.add_argument("--particles", required=True, help="input STAR file (table 'particles')")
    parser.add_argument("--out", required=True, help="output directory")
    g = parser.add_argument_group("search")
    g.add_argument("--radius", type=int, default=-1, help="outer ring in px (default: largest that fits)")
    g.add_argument("--first-ring", type=int, default=1)
    g.add_argument("--ring-step", type=int, default=1)
    g.add_argument("--shift-range", type=float, default=3.0, help="px, searched each iteration")
    g.add_argument("--shift-step", type=float, default=1.0, help="px (sub-pixel steps allowed)")
    g.add_argument("--no-mirror", action="store_true", help="do not search mirrored particles")
    g.add_argument("--exhaustive", action="store_true",
                   help="scan every (shift, mirror) at full resolution instead of screening first")
    g = parser.add_argument_group("iterations")
    g.add_argument("--iterations", type=int, default=10)
    g.add_argument("--auto-stop", action="store_true", help="stop when < --stop-fraction change")
    g.add_argument("--stop-fraction", type=float, default=0.005)
    g.add_argument("--center", action="store_true", help="centre the references on their centre of mass")
    g.add_argument("--use-prior", action="store_true", help="start from the input STAR's alignment")
    g = parser.add_argument_group("compute")
    g.add_argument("--backend", choices=("auto", "cpu", "cuda"), default="auto")
    g.add_argument("--gpu", default="", help='GPU ids, e.g. "0 1" (MPI rank i uses gpu[i %% n])')
    g.add_argument("--threads", type=int, default=0, help="CPU threads per rank (0: all cores)")
    g.add_argument("--batch-size", type=int, default=2048, help="particles read and searched at a time")
    g.add_argument("--continue", dest="resume", action="store_true",
                   help="resume from the last complete iteration in --out")
    g.add_argument("--pixel-size", type=float, default=0.0, help="A/px for resolutions (default: input's)")


def build_parser():
    parser = argparse.ArgumentParser(prog=PROG, description="2D alignment and classification by polar "
                                     "resampling (reference-free and multireference).")
    sub = parser.add_subparsers(dest="command", required=True)
    rfa = sub.add_parser("rfa", help="reference-free alignment")
    _common(rfa)
    mra = sub.add_parser("mra", help="multireference alignment / classification")
    _common(mra)
    start = mra.add_mutually_exclusive_group(required=True)
    start.add_argument("--classes", type=int, help="number of classes, seeded from random particles")
    start.add_argument("--references", help="MRC stack of initial references")
    mra.add_argument("--seed", type=int, default=0, help="random seed for the initial references")
    mra.add_argument("--min-members", type=int, default=-1,
                     help="re-seed classes with fewer members (default: N / (4 K))")
    mra.add_argument("--balanced-iterations", type=int, default=-1,
                     help="equal-size assignment for this many first iterations (default: half)")
    info = sub.add_parser("info", help="versions, backends, GPUs and MPI size")
    info.add_argument("--box", type=int, default=0, help="with --classes and --shift-range: batch size")
    info.add_argument("--classes", type=int, default=1)
    info.add_argument("--shift-range", type=float, default=3.0)
    return parser


def settings_from(args):
    from .loop import Settings
    gpu = [int(g) for g in args.gpu.replace(",", " ").split()] if args.gpu.strip() else None
    return Settings(radius=args.radius, first_ring=args.first_ring, ring_step=args.ring_step,
                    shift_range=args.shift_range, shift_step=args.shift_step, mirror=not args.no_mirror,
                    iterations=args.iterations, auto_stop=args.auto_stop, stop_fraction=args.stop_fraction,
                    center=args.center, seed=getattr(args, "seed", 0),
                    min_members=getattr(args, "min_members", -1),
                    balanced_iterations=getattr(args, "balanced_iterations", -1),
                    batch_size=args.batch_size, use_prior=args.use_prior, backend=args.backend,
                    threads=args.threads or None, gpu=gpu, screen=None if args.exhaustive else 32)


def run(args, comm):
    from . import align, io
    settings = settings_from(args)
    source = io.ParticleStack.from_star(args.particles)
    if args.pixel_size > 0:
        source.pixel_size = args.pixel_size
    log = lambda text: print(text, flush=True)
    if comm.size > 1:  # lets a launcher's report of a dead process ("PID ...") be traced to its rank
        log("rank %d of %d: pid %d on %s" % (comm.rank, comm.size, os.getpid(), platform.node()))
    if comm.rank == 0:
        log("%s %s: %d particles of %d px, %d MPI rank(s)" % (PROG, args.command, source.count, source.box,
                                                              comm.size))
    common = dict(settings=settings, out_dir=args.out, resume=args.resume, comm=comm, log=log)
    with PeakMemory() as memory:
        if args.command == "rfa":
            align.align_reference_free(source, **common)
        elif args.references:
            align.align_multi_reference(source, references=io.read_stack(args.references), **common)
        else:
            align.align_multi_reference(source, n_classes=args.classes, **common)
    if comm.rank == 0:
        log("results written to %s (peak memory %.0f MB per rank)" % (os.path.abspath(args.out),
                                                                     memory.megabytes))


def info(args):
    import numba
    import numpy
    from . import parallel
    from .backends import cpu
    print("cryoralign engine: python %s, numpy %s, numba %s" % (platform.python_version(), numpy.__version__,
                                                               numba.__version__))
    print("backends: cpu (%d threads)" % cpu.CpuBackend().threads)
    try:
        from .backends import cuda
        cuda.describe(print, box=args.box, n_classes=args.classes, shift_range=args.shift_range)
    except ImportError:
        print("cuda: not available (install the 'gpu' extra on a machine with an NVIDIA GPU)")
    print("MPI ranks: %d" % parallel.world().size)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "info":
        return info(args)
    from . import parallel
    comm = parallel.world()
    where = " (rank %d of %d)" % (comm.rank, comm.size) if comm.size > 1 else ""
    try:
        run(args, comm)
    except InputError as exc:
        print("%s: error%s: %s" % (PROG, where, exc), file=sys.stderr, flush=True)
        comm.abort(2)
    except KeyboardInterrupt:
        print("%s: interrupted%s" % (PROG, where), file=sys.stderr, flush=True)
        comm.abort(130)
    except Exception as exc:  # a bug or a system failure: keep the traceback, stop every rank
        traceback.print_exc()
        print("%s: error%s: %s: %s" % (PROG, where, type(exc).__name__, exc), file=sys.stderr, flush=True)
        comm.abort(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
