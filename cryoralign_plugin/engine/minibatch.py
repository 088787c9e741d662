"""Mini-batch iterations: which particles each iteration searches.

As cryoSPARC's online EM (about 100 particles per class per iteration, 20 iterations, then by default
1 full pass) and RELION-4's gradient-driven 2D, the first ``minibatch_iterations`` iterations of a large
classification search random subsets: ``minibatch_per_class * K`` particles at iteration 1, each
later one ``settings.MINIBATCH_GROWTH`` times larger; every later iteration passes over every
particle.  The subsets together hold at most ``settings.MINIBATCH_FRACTION`` of N (else all are
scaled down alike), so the mini-batches cost at most one full pass whatever N and K, and a default
run (8 mini-batch iterations, then ``settings.FINAL_FULL_PASSES``) searches at most 3 N, against 10 N
for full passes (10^6 particles, K = 200: 2.40 N); 9 then 1 final pass, as cryoSPARC ends, did not
keep the purity (README: -0.034 +- 0.045 on SLICEM at SNR 0.05, one random start -0.149).
Automatic (setting ``minibatch`` None) for multireference runs whose first subset is under half the
particles: all the mini-batch iterations while, scaled, the first subset holds at least
``settings.MINIBATCH_LEAST_PER_CLASS`` per class (from ``Settings.minibatch_all_per_class()`` x K
particles on), below that the first ones only (20 000 particles, K = 50: 4, so 7 N).

Each subset holds the previous one (the first ``size`` particles of one random order), so every
particle with a class was searched against the latest references.  A particle outside an
iteration's subset keeps its class and parameters (one never searched has class -1 and is left out
of the sums); the averages are built from every particle with a class at its latest alignment,
which with other subsets (``loop.iterate(subsets=...)``) may be older.  Drawing new subsets each
iteration instead (cryoSPARC) left stale alignments in the averages and classified worse on
``benchmarks/bench_minibatch.py``'s near-duplicate pairs (purity -0.050 against -0.020 for random start 1).
The subsets depend only on the seed, the iteration, N, K and the two mini-batch settings: the same for
any number of MPI ranks and after ``--continue``.  A run must end on full passes: forced mini-batches
with too few ``iterations`` are refused, automatic ones are off.  That is the one use of ``iterations``
(free to grow on ``--continue``): a run of at most ``minibatch_iterations`` in automatic mode, extended
past them with ``--continue``, searches subsets in its remaining early iterations, where a straight run
of that length searched them from iteration 1.
"""
import numpy as np

from .errors import InputError
from .settings import MINIBATCH_FRACTION, MINIBATCH_GROWTH, MINIBATCH_LEAST_PER_CLASS

STREAM = 0x6d696e69   # keeps the subsets' random stream apart from the initial references' (``seed`` alone)


def first_size(settings, n_classes):
    """Particles searched in the first mini-batch iteration."""
    return int(settings.minibatch_per_class) * int(n_classes)


def used_iterations(settings, count, n_classes):
    """Mini-batch iterations a run of ``count`` particles into ``n_classes`` searches (0: none).  Forced
    (``settings.minibatch``): all ``minibatch_iterations`` when the first subset is under N.  Automatic:
    for K > 1 when the first subset is under half of the particles, as many of them as keep the first
    subset, scaled by :func:`sizes`, at least MINIBATCH_LEAST_PER_CLASS per class (fewer per class lost
    up to 0.16 of the purity on SLICEM at SNR 0.05; the last ones are dropped, not all, so a mid-size
    run still searches subsets first), when ``iterations`` leaves at least one full pass after them."""
    first, m = first_size(settings, n_classes), settings.minibatch_iterations
    if settings.minibatch is not None:
        return m if settings.minibatch and m > 0 and first < count else 0
    if n_classes <= 1 or 2 * first >= count:
        return 0
    least = min(MINIBATCH_LEAST_PER_CLASS, settings.minibatch_per_class) * n_classes
    while m > 0 and sizes(first, m, count)[0] < least:
        m -= 1
    return m if m < settings.iterations else 0


def sizes(first, iterations, count):
    """Subset sizes of ``iterations`` mini-batch iterations over ``count`` particles: ``first``, each
    next MINIBATCH_GROWTH times larger, all scaled by one factor where together they would hold more
    than MINIBATCH_FRACTION of the particles (at least 1 each, and under ``count``).  The growth stays:
    equal subsets instead (the same 1000 of 3000, or 500 of 1500, particles 3 times) lost 0.06-0.12 of
    the purity on SLICEM particles at SNR 0.05 (3 runs) where subsets growing 1.25x had lost 0.016."""
    growth = MINIBATCH_GROWTH ** np.arange(iterations)
    scale = min(1.0, MINIBATCH_FRACTION * count / (first * growth.sum()))
    return [int(min(count - 1, max(1, round(first * scale * g)))) for g in growth]


class Schedule:
    """``schedule(iteration)``: the sorted global indices searched in that (1-based) iteration, or None
    for every particle; ``sizes[i - 1]`` is the subset size of mini-batch iteration ``i``."""

    def __init__(self, settings, count, n_classes):
        self.count, self.seed = int(count), int(settings.seed)
        used = used_iterations(settings, count, n_classes)
        self.sizes = sizes(first_size(settings, n_classes), used, count) if used else []

    def size(self, iteration):
        """Particles searched in ``iteration``."""
        return self.sizes[iteration - 1] if iteration <= len(self.sizes) else self.count

    def __call__(self, iteration):
        if iteration > len(self.sizes):
            return None
        order = np.random.default_rng((STREAM, self.seed)).permutation(self.count)
        return np.sort(order[:self.sizes[iteration - 1]]).astype(np.int64)


def schedule(settings, count, n_classes):
    """The run's :class:`Schedule` (``loop.iterate``'s ``subsets``), None without mini-batches;
    InputError when ``iterations`` would end within its subsets."""
    plan = Schedule(settings, count, n_classes)
    if not plan.sizes:
        return None
    if settings.iterations <= len(plan.sizes):
        raise InputError("--iterations %d ends within the mini-batch iterations (the first %d search subsets of "
                         "the %d particles): give --iterations %d or more, a smaller --minibatch-iterations, or "
                         "--no-minibatch" % (settings.iterations, len(plan.sizes), count, len(plan.sizes) + 1))
    return plan
