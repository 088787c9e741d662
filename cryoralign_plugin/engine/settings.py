"""The options of a run and their defaults, owned here once.

The CLI (``cli.py``) and the Scipion form take their defaults from :class:`Settings`; ``None`` in a
field means automatic, resolved by the engine as said next to the field.
"""
import math
import numbers
from dataclasses import dataclass
from typing import Optional

from .errors import InputError

# Angular frequencies of the CPU search's coarse (screening) stage; ``exhaustive`` skips that stage.
SCREEN_FREQUENCIES = 32
# Candidates kept per particle after a search (best first): enough for the assignment margin, equal-size
# assignment and refinement, and independent of the number of classes K; with K <= 10 every reference
# is kept, so the equal-size assignment of small runs is the one over the full (N, K) table.
CANDIDATES = 10
# Preselection: references are screened on particles Fourier-cropped by PRESELECT_CROP, on
# PRESELECT_FREQUENCIES angular frequencies, then the full search runs against the best ``preselect`` of
# them.  Automatic ``preselect``: every reference up to PRESELECT_ALL_UP_TO classes (small-K runs search
# as before), else max(PRESELECT_LEAST, K / PRESELECT_FRACTION).  On near-duplicate views (K = 50, SNR
# 0.05) 8 references change no particle's best match, 4 change 0.55%.
PRESELECT_CROP = 2
# References prepared for the full search at a time, as search.search_bytes estimates them (it
# overestimates the CPU's ~2.8 MB per reference at 64 px, 49 shifts, by ~2.3x): more references are
# searched in chunks, each one more read of the particles, so a pass's memory stays bounded in K.
PREPARED_BYTES = 2 * 2 ** 30
PRESELECT_FREQUENCIES = 16   # angular frequencies of the preselection's correlations
PRESELECT_ALL_UP_TO = 16
PRESELECT_LEAST = 8
PRESELECT_FRACTION = 32
# Automatic max_resolution (A): cryoSPARC 2D classification's default "Maximum resolution" (6 A);
# never finer than the input's Nyquist limit.
MAX_RESOLUTION = 6.0
# Automatic shift range and step, in internal px: the same shift grid (7 x 7) whatever the input box.
SHIFT_RANGE = 3.0
SHIFT_STEP = 1.0
# The smallest mask radius (internal px) a downsampled run may have: below it a maximum resolution is
# too coarse for the mask (at 8 px the outer ring has 64 samples, the screening stage's 32 frequencies).
MIN_MASK_RADIUS = 8
# With the automatic maximum resolution the internal box grows until the mask radius reaches this (or
# the box is the input's).  The rings are resampled bilinearly, which damps what lies near Nyquist, and
# the angular precision goes as 1 / radius: a 3-class set of 60 particles of 48 px at 2 A/px, cropped
# to 32 px (radius 11), lost up to 0.35 of its purity over 4 seeds; uncropped it lost none.
AUTO_MASK_RADIUS = 16
# Automatic balanced_iterations: the first 5 iterations (half of the default 10), whatever the total.
BALANCED_ITERATIONS = 5
# Iterations of a run, and the full passes it ends on when its first iterations search mini-batches
# (cryoSPARC's 2D classification ends its online EM on 1 final full iteration by default: "usually only
# one full pass is needed").
ITERATIONS = 10
FINAL_FULL_PASSES = 2
# Mini-batch iterations (:mod:`.minibatch`): cryoSPARC's 100 particles per class at first, each subset
# MINIBATCH_GROWTH times the previous, over the iterations before the final full passes; all of them
# together at most MINIBATCH_FRACTION of the particles (else each is scaled down alike), so a default run
# of N particles searches at most 3 N (10^6 particles, K = 200: 2.40 N; cryoSPARC's 20 x 100 x K + 1 N: 1.40 N).
# Half of N instead lost 0.10 of the purity on 4000 SLICEM particles at SNR 0.05 (benchmarks/bench_minibatch.py),
# and so did subsets scaled below MINIBATCH_LEAST_PER_CLASS per class: automatic mini-batches drop their
# last iterations until the first subset holds that many.
MINIBATCH_PER_CLASS = 100
MINIBATCH_ITERATIONS = ITERATIONS - FINAL_FULL_PASSES
MINIBATCH_GROWTH = 1.25
MINIBATCH_FRACTION = 1.0
MINIBATCH_LEAST_PER_CLASS = 50
# Over-clustering (:mod:`.overcluster`): MRA from random particles runs its first OVERCLUSTER_ITERATIONS
# iterations at OVERCLUSTER x K classes, then merges them down to K (on by default: README, Algorithm).
OVERCLUSTER = 3
OVERCLUSTER_ITERATIONS = 5
# ... while the over-clustered classes are at most this many: the prepared references grow with the
# classes (64 px, 10^5 particles into K = 100: 2006 MB over-clustered at 300, 848 MB without, purity 0.967
# against 0.972 on distinct views), and the large-set budget (2 GB at 10^6, K = 200) would not hold.
OVERCLUSTER_MAX_CLASSES = 100
# The late round (:func:`.overcluster.split`): after iteration RESPLIT (0: none) every class is split in two
# by the sign of its members' projection on its leading eigen-image, the 2 K classes run RESPLIT_ITERATIONS
# iterations, then are merged back by Ward's criterion (README, Algorithm).  On by default: it repaired the
# CTF set's one failing start (purity 0.900 -> 0.992) and raised the near-duplicate pairs by 0.06.
RESPLIT = 6
RESPLIT_ITERATIONS = 1
# The eigen-image of a class is that of at most this many of its members (evenly spaced in input order).
RESPLIT_SAMPLE = 256
# Automatic new_class_members: never fewer than this many misfits seed a class.
NEW_CLASS_LEAST = 10


@dataclass
class Settings:
    """Every option of a run; the CLI flags map one to one onto these fields."""
    radius: Optional[int] = None   # outer ring (input px); None: mask_diameter, else the largest that fits
    mask_diameter: Optional[float] = None   # A (needs a pixel size); None: radius, else the largest that fits
    max_resolution: Optional[float] = None  # A, sets the internal box; None: MAX_RESOLUTION (or Nyquist if coarser)
    internal_box: Optional[int] = None      # px, at least this internal box (instead of max_resolution)
    first_ring: int = 1
    ring_step: int = 1
    shift_range: Optional[float] = None     # input px, square grid around the center; None: SHIFT_RANGE internal px
    shift_step: Optional[float] = None      # input px, sub-pixel steps allowed; None: SHIFT_STEP internal px
    refine_shifts: bool = True     # refine each shift (and angle) off the grid around its best grid point
    mirror: bool = True
    iterations: int = ITERATIONS
    auto_stop: bool = False        # stop once fewer than stop_fraction of the particles change
    stop_fraction: float = 0.005
    center: bool = False           # center the references on their center of mass
    seed: int = 0
    min_members: Optional[int] = None          # re-seed classes smaller than this; None: N / (4 K), at least 2
    balanced_iterations: Optional[int] = None  # equal-size assignment for the first iterations; None: 5
    overcluster: int = OVERCLUSTER     # MRA from random particles: the first iterations at this x K classes (1: off)
    overcluster_iterations: int = OVERCLUSTER_ITERATIONS   # iterations before the classes are merged down to K
    resplit: int = RESPLIT             # MRA from random particles: split every class in two after this (0: off)
    resplit_iterations: int = RESPLIT_ITERATIONS   # iterations at 2 K before they are merged back to K
    debias: bool = True            # MRA: take a member's own noise out of its score against its class (selfbias.py)
    batch_size: int = 2048
    minibatch: Optional[bool] = None   # search growing random subsets first; None: automatic (minibatch.used_iterations)
    minibatch_per_class: int = MINIBATCH_PER_CLASS     # particles per class in the first subset (at most)
    minibatch_iterations: int = MINIBATCH_ITERATIONS   # iterations searching subsets (0: none)
    use_prior: bool = False        # start from the input's alignment instead of zero
    backend: str = "auto"
    threads: Optional[int] = None  # CPU threads per rank; None: the node's cores shared by its ranks (parallel.py)
    gpu: Optional[list] = None     # GPU ids (MPI rank i uses gpu[i % n]); None: GPU 0
    exhaustive: bool = False       # scan every (reference, shift, mirror) at full resolution, no screening
    preselect: Optional[int] = None  # references searched at full resolution per particle; None: automatic
    ctf: Optional[str] = None      # none | flip | wiener; None: wiener when the input has CTF columns, else none
    ctf_intact_first_peak: bool = False  # CTF = 1 below its first peak (RELION's --ctf_intact_first_peak)
    # A growing run (mra --grow, grow.py): per batch, iterations searching only the new particles;
    # once the input is complete, iterations over all (which place the last batch too); the fewest misfits that seed a new class
    # (None: max(NEW_CLASS_LEAST, batch / (K + 1)): as many as a new class as large as the others would get).
    grow_iterations: int = 1
    final_iterations: int = 1
    new_class_members: Optional[int] = None

    def check(self):
        """InputError naming the flag and the fix for the first unusable value (nothing is read before).

        The sizes that depend on the images (mask and shifts vs box, resolution vs pixel size: see
        :func:`~.downsample.plan`; the shift grid's memory) are checked once the box is known
        (:class:`~.loop.Context`).
        """
        _whole(self, "radius", 2, "the outer ring must be at least 2 px: give --radius >= 2, or leave it out "
                                  "(automatic: the largest that fits)", optional=True)
        _whole(self, "first_ring", 1, "rings start at 1 px: give --first-ring >= 1")
        _whole(self, "ring_step", 1, "give at least 1 px between rings: --ring-step >= 1")
        _real(self, "mask_diameter", 0.0, "give a diameter > 0 A, or leave it out (automatic)", strict=True,
              optional=True)
        _real(self, "max_resolution", 0.0, "give a resolution > 0 A, or leave it out (automatic: %g A)"
              % MAX_RESOLUTION, strict=True, optional=True)
        _whole(self, "internal_box", 2 * MIN_MASK_RADIUS, "give an internal box of at least %d px, or leave "
               "it out (automatic)" % (2 * MIN_MASK_RADIUS), optional=True)
        _real(self, "shift_range", 0.0, "give a shift range >= 0 px (0: no shift search), or leave it out "
                                        "(automatic: %g internal px)" % SHIFT_RANGE, optional=True)
        _real(self, "shift_step", 0.0, "give a step > 0 px (e.g. 1, or 0.5 for half pixels), or leave it out "
                                       "(automatic: %g internal px)" % SHIFT_STEP, strict=True, optional=True)
        _whole(self, "iterations", 1, "give at least 1 iteration")
        _real(self, "stop_fraction", 0.0, "give a fraction of the particles between 0 and 1 (e.g. 0.005)",
              most=1.0)
        _whole(self, "seed", 0, "give a seed >= 0")
        _whole(self, "min_members", 0, "give a class size >= 0 (0: never re-seed), or leave it out "
                                       "(automatic)", optional=True)
        _whole(self, "balanced_iterations", 0, "give a number of iterations >= 0, or leave it out "
                                               "(automatic: the first 5)", optional=True)
        _whole(self, "overcluster", 1, "give a factor >= 1 (1: no over-clustering; default %d)" % OVERCLUSTER)
        _whole(self, "overcluster_iterations", 1, "give at least 1 iteration before the merge (default %d)"
               % OVERCLUSTER_ITERATIONS)
        _whole(self, "resplit", 0, "give the iteration after which the classes are split, or 0 (off; default %d)"
               % RESPLIT)
        _whole(self, "resplit_iterations", 1, "give at least 1 iteration before the split classes are merged "
                                              "back (default %d)" % RESPLIT_ITERATIONS)
        if self.overcluster > 1 and 0 < self.resplit <= self.overcluster_iterations:
            raise InputError("resplit %d is not after the over-clustered classes are merged (after iteration %d): "
                             "give --resplit > %d, or 0" % (self.resplit, self.overcluster_iterations,
                                                            self.overcluster_iterations))
        _whole(self, "preselect", 1, "give at least 1 reference per particle, or leave it out (automatic)",
               optional=True)
        _whole(self, "batch_size", 1, "give at least 1 particle per batch")
        if self.minibatch not in (None, True, False):
            raise InputError("minibatch %r: give True, False or None (automatic)" % (self.minibatch,))
        _whole(self, "minibatch_per_class", 1, "give at least 1 particle per class for the first mini-batch "
                                               "(default %d), or --no-minibatch" % MINIBATCH_PER_CLASS)
        _whole(self, "minibatch_iterations", 0, "give a number of iterations >= 0 (0: no mini-batches; "
                                                "default %d)" % MINIBATCH_ITERATIONS)
        _whole(self, "grow_iterations", 1, "give at least 1 iteration over each batch's new particles")
        _whole(self, "final_iterations", 0, "give a number of final iterations >= 0")
        _whole(self, "new_class_members", 1, "give a class size >= 1, or leave it out (automatic)",
               optional=True)
        _whole(self, "threads", 1, "give at least 1 thread, or leave it out (automatic: the node's cores shared "
                                   "by its ranks)", optional=True)
        if self.backend not in ("auto", "cpu", "cuda"):
            raise InputError("--backend %r: use auto, cpu or cuda" % (self.backend,))
        gpu = self.gpu
        if gpu is not None:
            ids = gpu if isinstance(gpu, (list, tuple)) else [gpu]
            if isinstance(gpu, str) or not all(_is_whole(g) and g >= 0 for g in ids):
                text = gpu if isinstance(gpu, str) else " ".join(str(g) for g in ids)
                raise InputError("--gpu '%s': give GPU ids as integers, e.g. \"0 1\"" % text)

    def resolved_min_members(self, count, n_classes):
        if self.min_members is not None:
            return self.min_members
        return max(2, count // (4 * n_classes))

    def resolved_preselect(self, n_refs):
        """References searched at full resolution per particle (all of them with ``exhaustive``)."""
        if self.exhaustive:
            return n_refs
        if self.preselect is not None:
            return min(int(self.preselect), n_refs)
        if n_refs <= PRESELECT_ALL_UP_TO:
            return n_refs
        return max(PRESELECT_LEAST, -(-n_refs // PRESELECT_FRACTION))

    def resolved_new_class_members(self, batch, n_classes):
        """The fewest particles of a batch that fit no class for a new class to be seeded from them."""
        if self.new_class_members is not None:
            return self.new_class_members
        return max(NEW_CLASS_LEAST, batch // (n_classes + 1))

    def minibatch_all_per_class(self):
        """Particles per class from which automatic mini-batches (:func:`~.minibatch.used_iterations`)
        keep all ``minibatch_iterations``: the first subset, fitted into N, still holds its least per
        class and is under half of N.  The figure the help texts quote (992 by default); for K classes the
        exact count is up to half the subsets' growth sum / MINIBATCH_FRACTION (10 particles) below K x it."""
        least = min(MINIBATCH_LEAST_PER_CLASS, self.minibatch_per_class)
        growth = sum(MINIBATCH_GROWTH ** i for i in range(self.minibatch_iterations))
        return max(least * growth / MINIBATCH_FRACTION, 2.0 * self.minibatch_per_class)

    def resolved_balanced_iterations(self):
        """The first iterations that assign equal-size classes: a number that does not depend on
        ``iterations``, so a run extended later with ``--continue`` keeps the schedule it started with."""
        if self.balanced_iterations is not None:
            return self.balanced_iterations
        return BALANCED_ITERATIONS


def _flag(name):
    return "--" + name.replace("_", "-")


def _show(value):
    return "%g" % value if isinstance(value, float) else str(value)


def _is_whole(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _whole(settings, name, least, fix, optional=False):
    value = getattr(settings, name)
    if value is None and optional:
        return
    if not _is_whole(value):
        raise InputError("%s %s: give a whole number (%s)" % (_flag(name), _show(value), fix))
    if value < least:
        raise InputError("%s %s: %s" % (_flag(name), _show(value), fix))


def _real(settings, name, least, fix, strict=False, most=None, optional=False):
    value = getattr(settings, name)
    if value is None and optional:
        return
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value) \
            or value < least or (strict and value == least) or (most is not None and value > most):
        raise InputError("%s %s: %s" % (_flag(name), _show(value), fix))
