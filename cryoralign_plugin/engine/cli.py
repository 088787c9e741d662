"""``cryoralign-engine rfa|mra|info``: the command line the Scipion protocols run (MPI-aware).

Exit status: 0 done; 2 bad input or an output folder that cannot be written (disk full, permission
denied, read-only): one line ``cryoralign-engine: error: ...`` naming the problem and the fix, and
since every file is written atomically, ``--continue`` resumes from the last complete iteration once
it is fixed; 130 interrupted (SIGINT) and 143 terminated (SIGTERM), with one line saying which
iteration ``--continue`` resumes from; 1 a bug, with its traceback.  Under MPI a rank that fails
aborts the whole job (no rank is left waiting in a collective).  A closed standard output (``| head``)
does not stop a run: its log stops, its results are still written.
"""
import argparse
import glob
import os
import platform
import signal
import sys
import threading
import traceback
from dataclasses import fields

from .errors import InputError
from .memory import PeakMemory
from .settings import (FINAL_FULL_PASSES, MAX_RESOLUTION, MINIBATCH_FRACTION, MINIBATCH_GROWTH,
                       MINIBATCH_LEAST_PER_CLASS, OVERCLUSTER_MAX_CLASSES, SHIFT_RANGE, SHIFT_STEP, Settings)

PROG = "cryoralign-engine"
DEFAULTS = Settings()


def _gpu_ids(text):
    """``"0 1"`` or ``"0,1"`` -> ``[0, 1]``; an empty string (Scipion without GPUs) -> None.

    Text that is not a list of integers is kept as given, for :meth:`Settings.check` to refuse in one
    line (argparse would print its usage and a message that does not say what to give).
    """
    try:
        return [int(g) for g in text.replace(",", " ").split()] or None
    except ValueError:
        return text


class Log:
    """``print`` to standard output, flushed; once that is closed (the reader of a pipe, such as
    ``head``, went away) or fails, the run goes on without its log: the results are still written."""

    def __init__(self):
        self.closed = False

    def __call__(self, text):
        if self.closed:
            return
        try:
            print(text, flush=True)
        except OSError as exc:
            self.closed = True
            try:   # what is still buffered goes nowhere, so the exit does not fail on it again
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
            except (OSError, ValueError):
                pass
            try:
                print("%s: standard output %s: the run goes on without its log" % (
                    PROG, "was closed" if isinstance(exc, BrokenPipeError) else "failed (%s)" % exc),
                    file=sys.stderr, flush=True)
            except (OSError, ValueError):
                pass


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that the run unwinds as on Ctrl-C (no half-written files)."""


def _terminate(signum, frame):
    raise Terminated()


def _resume_hint(out_dir):
    """Where an interrupted run stands: the iteration ``--continue`` resumes from, if any."""
    from . import outputs
    out_dir = os.path.abspath(out_dir)
    done = [os.path.basename(p)[len("iter_"):] for p in glob.glob(os.path.join(out_dir, outputs.CHECKPOINT_GLOB))]
    if not done:
        return "no iteration was complete in %s: run the command again" % out_dir
    return "the last complete iteration (%d) in %s can be resumed with --continue" % (max(map(int, done)), out_dir)


def _common(parser):
    d = DEFAULTS
    parser.add_argument("--particles", required=True, help="input STAR file (table 'particles')")
    parser.add_argument("--out", required=True, help="output directory")
    g = parser.add_argument_group("search")
    g.add_argument("--radius", type=int, default=d.radius,
                   help="outer ring in input px (default: automatic, --mask-diameter / 2, else the largest "
                        "that fits with the shift range)")
    g.add_argument("--mask-diameter", type=float, default=d.mask_diameter,
                   help="particle mask diameter in A, instead of --radius (default: automatic, the largest "
                        "that fits with the shift range)")
    g.add_argument("--max-resolution", type=float, default=d.max_resolution,
                   help="A: the particles are Fourier-cropped to the smallest box whose Nyquist reaches it "
                        "and that holds the mask and the shifts, and searched there; outputs stay in input "
                        "px (default: automatic, %g A as cryoSPARC's 2D classification, or the input's "
                        "Nyquist if coarser; no cropping without a pixel size)" % MAX_RESOLUTION)
    g.add_argument("--internal-box", type=int, default=d.internal_box,
                   help="px, at least this internal box, instead of --max-resolution (e.g. for input "
                        "without a pixel size; default: automatic, from --max-resolution)")
    g.add_argument("--first-ring", type=int, default=d.first_ring,
                   help="innermost ring in px (default: %(default)s)")
    g.add_argument("--ring-step", type=int, default=d.ring_step, help="px between rings (default: %(default)s)")
    g.add_argument("--shift-range", type=float, default=d.shift_range,
                   help="input px, searched each iteration (default: automatic, %g internal px, i.e. %g "
                        "times the downsampling factor in input px)" % (SHIFT_RANGE, SHIFT_RANGE))
    g.add_argument("--shift-step", type=float, default=d.shift_step,
                   help="input px, sub-pixel steps allowed (default: automatic, %g internal px)" % SHIFT_STEP)
    g.add_argument("--no-refine-shifts", dest="refine_shifts", action="store_false", default=d.refine_shifts,
                   help="keep the shifts on the search grid (default: refine each particle's shift and angle "
                        "off the grid, against its chosen reference)")
    g.add_argument("--no-mirror", dest="mirror", action="store_false", default=d.mirror,
                   help="do not search mirrored particles")
    g.add_argument("--exhaustive", action="store_true", default=d.exhaustive,
                   help="scan every (reference, shift, mirror) at full resolution instead of screening first")
    g.add_argument("--preselect", type=int, default=d.preselect, metavar="M",
                   help="references searched at full resolution per particle, the best M of a screening on "
                        "half-size images (default: all up to 16 classes, else max(8, K/32))")
    g = parser.add_argument_group("iterations")
    g.add_argument("--iterations", type=int, default=d.iterations,
                   help="at most this many (default: %(default)s)")
    g.add_argument("--auto-stop", action="store_true", default=d.auto_stop,
                   help="stop when < --stop-fraction change")
    g.add_argument("--stop-fraction", type=float, default=d.stop_fraction,
                   help="fraction of the particles, see --auto-stop (default: %(default)s)")
    g.add_argument("--center", action="store_true", default=d.center,
                   help="center the references on their center of mass")
    g.add_argument("--use-prior", action="store_true", default=d.use_prior,
                   help="start from the input STAR's alignment")
    g = parser.add_argument_group("CTF")
    g.add_argument("--ctf", choices=("none", "flip", "wiener"), default=d.ctf,
                   help="none: use the particles as they are; flip: align and average phase-flipped particles; "
                        "wiener: align phase-flipped particles, Wiener-filtered CTF-corrected averages "
                        "(default: automatic, wiener when the input has CTF columns, else none)")
    g.add_argument("--ctf-intact-first-peak", action="store_true", default=d.ctf_intact_first_peak,
                   help="take the CTF as 1 below its first peak (very high defocus, phase plate)")
    g = parser.add_argument_group("compute")
    g.add_argument("--backend", choices=("auto", "cpu", "cuda"), default=d.backend,
                   help="auto: CUDA where a usable GPU is found, else CPU (default: %(default)s)")
    g.add_argument("--gpu", type=_gpu_ids, default=d.gpu,
                   help='GPU ids, e.g. "0 1"; MPI rank i uses gpu[i %% n] (default: automatic, GPU 0)')
    g.add_argument("--threads", type=int, default=d.threads,
                   help="CPU threads per rank (default: automatic, the cores shared by the ranks on the node)")
    g.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="particles read and searched at a time (default: %(default)s)")
    g.add_argument("--continue", dest="resume", action="store_true",
                   help="resume from the last complete iteration in --out (only the run its run.json "
                        "describes: same input and settings)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the previous run in --out (removes only that run's files)")
    g.add_argument("--pixel-size", type=float, default=None,
                   help="A/px of the input, for the options in A and the resolutions (default: automatic, "
                        "the input's)")


def build_parser():
    d = DEFAULTS
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
    mra.add_argument("--seed", type=int, default=d.seed,
                     help="random seed for the initial references (default: %(default)s)")
    mra.add_argument("--min-members", type=int, default=d.min_members,
                     help="re-seed classes with fewer members (default: automatic, N / (4 K), at least 2)")
    mra.add_argument("--balanced-iterations", type=int, default=d.balanced_iterations,
                     help="equal-size assignment for this many first iterations (default: automatic, the "
                          "first 5, whatever --iterations is, so that extending a run keeps its schedule)")
    mra.add_argument("--no-debias", dest="debias", action="store_false", default=d.debias,
                     help="keep each particle's own noise in its score against its class's reference (default: "
                          "it is taken off, so particles are not held in the class they are in)")
    mra.add_argument("--overcluster", type=int, default=d.overcluster, metavar="C",
                     help="from random particles (--classes K): run the first --overcluster-iterations at C x K "
                          "classes, then merge them down to K by their aligned similarity (default: %(default)s; "
                          "1: off; only while C x K <= " + str(OVERCLUSTER_MAX_CLASSES) + ")")
    mra.add_argument("--overcluster-iterations", type=int, default=d.overcluster_iterations,
                     help="iterations at C x K classes before the merge (default: %(default)s)")
    mra.add_argument("--resplit", type=int, default=d.resplit, metavar="M",
                     help="from random particles: after iteration M (after the over-clustered merge) split every "
                          "class in two along its leading eigen-image, run --resplit-iterations at 2 K, then merge "
                          "back to K by Ward's criterion (default: %(default)s, off; only while 2 K <= "
                          + str(OVERCLUSTER_MAX_CLASSES) + ")")
    mra.add_argument("--resplit-iterations", type=int, default=d.resplit_iterations,
                     help="iterations at 2 K classes before they are merged back (default: %(default)s)")
    g = mra.add_argument_group("mini-batch iterations (large sets)")
    switch = g.add_mutually_exclusive_group()
    switch.add_argument("--minibatch", dest="minibatch", action="store_const", const=True, default=d.minibatch,
                        help="search growing random subsets in the first iterations (default: automatic, when "
                             "the first subset is under half the particles: as many of the --minibatch-iterations "
                             "as keep the first subset at least %d per class once the subsets are fitted into N, "
                             "all of them from about %d x K particles by default, when full passes follow)"
                             % (MINIBATCH_LEAST_PER_CLASS, round(DEFAULTS.minibatch_all_per_class())))
    switch.add_argument("--no-minibatch", dest="minibatch", action="store_const", const=False,
                        help="search every particle in every iteration")
    g.add_argument("--minibatch-per-class", type=int, default=d.minibatch_per_class,
                   help="particles per class in the first subset, at most: all subsets together hold at "
                        "most %g x N particles (default: %%(default)s)" % MINIBATCH_FRACTION)
    g.add_argument("--minibatch-iterations", type=int, default=d.minibatch_iterations,
                   help="iterations searching subsets, each %gx the previous; later ones search all (default: "
                        "%%(default)s, so a default run ends on %d full passes; automatic mode drops the last "
                        "ones on sets too small for them)"
                        % (MINIBATCH_GROWTH, FINAL_FULL_PASSES))
    g = mra.add_argument_group("growing run (streaming)")
    g.add_argument("--grow", action="store_true",
                   help="the input extends the run in --out (its first particles are that run's): keep their "
                        "classes, place the new ones, seed a class from those that fit none; starts the run "
                        "if --out holds none (with --classes)")
    g.add_argument("--last-batch", action="store_true",
                   help="with --grow: the input is complete: then --final-iterations over all particles")
    g.add_argument("--grow-iterations", type=int, default=d.grow_iterations,
                   help="with --grow: iterations searching only the new particles (default: %(default)s)")
    g.add_argument("--final-iterations", type=int, default=d.final_iterations,
                   help="with --last-batch: iterations over all particles, the last batch's new ones "
                        "included (default: %(default)s)")
    g.add_argument("--new-class-members", type=int, default=d.new_class_members,
                   help="with --grow: the fewest new particles fitting no class that seed a new class "
                        "(default: automatic, max(10, new / (K + 1)))")
    info = sub.add_parser("info", help="versions, backends, GPUs and MPI size")
    info.add_argument("--box", type=int, default=0, help="with --classes and --shift-range: batch size")
    info.add_argument("--classes", type=int, default=1)
    info.add_argument("--shift-range", type=float, default=SHIFT_RANGE)
    return parser


def settings_from(args):
    """The :class:`Settings` of parsed ``rfa``/``mra`` arguments (each flag's dest is a field name)."""
    given = vars(args)
    return Settings(**{f.name: given[f.name] for f in fields(Settings) if f.name in given})


def run(args, comm):
    from . import align
    from .mrc import read_stack
    from .sources import StarSource
    settings = settings_from(args)
    settings.check()   # before anything is read
    if args.pixel_size is not None and not args.pixel_size > 0:
        raise InputError("--pixel-size %g: give a pixel size > 0 A/px, or leave --pixel-size out to use the "
                         "input's" % args.pixel_size)
    if getattr(args, "classes", None) is not None and args.classes < 1:
        raise InputError("--classes %d: give at least 1 class (or initial --references)" % args.classes)
    source = StarSource.from_star(args.particles, use_prior=args.use_prior)
    if args.pixel_size is not None:
        source.pixel_size = args.pixel_size
    log = Log()
    if comm.size > 1:  # lets a launcher's report of a dead process ("PID ...") be traced to its rank
        log("rank %d of %d: pid %d on %s" % (comm.rank, comm.size, os.getpid(), platform.node()))
    if comm.rank == 0:
        log("%s %s: %d particles of %d px, %d MPI rank(s)" % (PROG, args.command, source.count, source.box,
                                                              comm.size))
    common = dict(settings=settings, out_dir=args.out, resume=args.resume, overwrite=args.overwrite, comm=comm,
                  log=log, inputs=[("references file", args.references)] if getattr(args, "references", None) else [])
    grow = getattr(args, "grow", False)
    if grow and (args.references or args.resume or args.overwrite):
        raise InputError("--grow starts from --classes and resumes by itself: leave out %s" % " and ".join(
            f for f, on in (("--references", args.references), ("--continue", args.resume),
                            ("--overwrite", args.overwrite)) if on))
    if getattr(args, "last_batch", False) and not grow:
        raise InputError("--last-batch ends a growing run: give --grow too")
    with PeakMemory() as memory:
        if grow:
            from .grow import grow_multi_reference
            grow_multi_reference(source, n_classes=args.classes, settings=settings, out_dir=args.out,
                                 final=args.last_batch, comm=comm, log=log)
        elif args.command == "rfa":
            align.align_reference_free(source, **common)
        elif args.references:
            align.align_multi_reference(source, references=read_stack(args.references), **common)
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
    log = Log()
    log("cryoralign engine: python %s, numpy %s, numba %s" % (platform.python_version(), numpy.__version__,
                                                             numba.__version__))
    log("backends: cpu (%d thread(s) per rank)" % cpu.CpuBackend().threads)
    try:
        from .backends import cuda
        cuda.describe(log, box=args.box, n_classes=args.classes, shift_range=args.shift_range)
    except ImportError:
        log("cuda: not available (install the 'gpu' extra on a machine with an NVIDIA GPU)")
    log("MPI ranks: %d" % parallel.world().size)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "info":
        return info(args)
    from . import parallel
    comm = parallel.world()
    where = " (rank %d of %d)" % (comm.rank, comm.size) if comm.size > 1 else ""
    handles = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if handles else None
    try:
        run(args, comm)
    except InputError as exc:
        print("%s: error%s: %s" % (PROG, where, exc), file=sys.stderr, flush=True)
        comm.abort(2)
    except KeyboardInterrupt:
        print("%s: interrupted%s: %s" % (PROG, where, _resume_hint(args.out)), file=sys.stderr, flush=True)
        comm.abort(130)
    except Terminated:
        print("%s: terminated (SIGTERM)%s: %s" % (PROG, where, _resume_hint(args.out)), file=sys.stderr,
              flush=True)
        comm.abort(128 + signal.SIGTERM)
    except Exception as exc:  # a bug or a system failure: keep the traceback, stop every rank
        traceback.print_exc()
        print("%s: error%s: %s: %s" % (PROG, where, type(exc).__name__, exc), file=sys.stderr, flush=True)
        comm.abort(1)
    finally:
        if handles and previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
