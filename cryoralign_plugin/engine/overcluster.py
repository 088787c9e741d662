"""Over-cluster, then merge: the first iterations of MRA from random particles at c K classes.

From random references the first, low-resolution iterations of MRA tend to settle in a local optimum
where one view is split over two classes and two views share one.  With more classes than views the
classes are more often pure; after ``overcluster_iterations`` iterations at ``c K`` classes
(``overcluster = c``) the class references are searched against each other (the run's own search:
rotation, shift and mirror invariant), the classes are joined by agglomerative clustering on that
similarity (average linkage weighted by class size) down to K, each joined class's members are brought
into the frame of the cluster's largest class (their parameters composed with the class's alignment to
it), and the run goes on at K from the merged classes' averages.

The merge is computed from gathered arrays (the references and class sizes every rank holds), so every
rank and thread count merges alike; it is part of the iteration schedule (the checkpoint of the merge
iteration already holds K classes), so ``--continue`` resumes either phase exactly.  On by default (c = 3, merged after
iteration 5): it raised the mean purity of random starts on the CTF set (seeds 1-6: 0.976 against 0.933)
and on the classification benchmark's SNR 0.05, rare-view, K = 2x and K = 0.5x sets by 0.02-0.07, at
1.15-1.25x the time; at SNR 0.02 and on near-duplicate pairs it changes little (README, Algorithm).
"""
import numpy as np

from . import loop, references as reference_ops, search
from .geometry import combine
from .settings import CANDIDATES, OVERCLUSTER_MAX_CLASSES


def classes_at(settings, n_classes, count):
    """The number of classes a run from random particles to ``n_classes`` holds after each iteration
    (0: its initial references), as a function: ``overcluster`` x K before ``overcluster_iterations``,
    K from then on; K throughout for K = 1, where ``count`` particles are fewer than c K, where c K is
    above OVERCLUSTER_MAX_CLASSES (memory), or where the run's ``iterations`` end before the merge
    (then a run and its ``--continue`` to more iterations stay at K; as with mini-batches, that is
    the one use of ``iterations``)."""
    n_classes = n_classes or 0   # none given: refused where the references are drawn
    over = 1 < n_classes and settings.overcluster * n_classes <= min(count, OVERCLUSTER_MAX_CLASSES) \
        and settings.iterations > settings.overcluster_iterations
    factor = settings.overcluster if over else 1
    merge_at = settings.overcluster_iterations

    def at(iteration):
        return n_classes * factor if iteration < merge_at else n_classes
    return at


def similarity(ctx, refs):
    """Aligned similarity ``(K, K)`` of the references (the best score of ``i`` searched against
    ``j``) and the parameters ``(K, K, 4)`` that bring reference ``i`` onto reference ``j``."""
    count = len(refs)
    images = refs.astype(np.float32)
    offsets = np.zeros((count, 2))
    scores = np.full((count, count), -np.inf)
    params = np.zeros((count, count, 4))
    rows = np.arange(count)
    for first in range(0, count, CANDIDATES):   # chunks of references no wider than the candidates kept
        chunk = refs[first:first + CANDIDATES]
        prepared = ctx.backend.prepare_references(
            search.reference_rings(ctx.backend, chunk, ctx.grid, ctx.shifts), ctx.grid, ctx.settings.mirror)
        found = search.search(ctx.backend, images, offsets, prepared, ctx.grid, first=first)
        for slot in range(found.reference.shape[1]):
            j = found.reference[:, slot]
            scores[rows, j] = found.score[:, slot]
            params[rows, j] = search.candidate_params(found, np.full(count, slot), ctx.shifts, ctx.grid)
    return scores, params


def clusters(scores, sizes, n_clusters):
    """Cluster label ``0..n_clusters-1`` of each class: agglomerative, average linkage weighted by
    ``sizes`` on the symmetrised ``scores``; labels in order of each cluster's lowest class."""
    count = len(sizes)
    sym = (scores + scores.T) / 2.0
    w = np.asarray(sizes, np.float64).clip(min=1)
    members = [[k] for k in range(count)]
    # link[a, b]: size-weighted sum of pair similarities between clusters a and b
    link = sym * w[:, None] * w[None, :]
    mass = w.copy()
    alive = np.ones(count, bool)
    for _ in range(count - n_clusters):
        mean = link / (mass[:, None] * mass[None, :])
        mean[~alive] = -np.inf
        mean[:, ~alive] = -np.inf
        np.fill_diagonal(mean, -np.inf)
        a, b = np.unravel_index(np.argmax(mean), mean.shape)   # ties: the lowest pair
        a, b = min(a, b), max(a, b)
        members[a] += members[b]
        link[a] += link[b]
        link[:, a] += link[:, b]
        mass[a] += mass[b]
        alive[b] = False
    labels = np.empty(count, np.int64)
    for label, k in enumerate(np.flatnonzero(alive)):
        labels[members[k]] = label
    return labels


def merge(ctx, state, n_classes):
    """The state with its classes merged down to ``n_classes`` (see the module docstring), its
    references and averages those of the merged classes, filtered with the iteration's cap."""
    sizes = np.bincount(state.classes[state.classes >= 0], minlength=len(state.references))
    scores, align = similarity(ctx, state.references)
    labels = clusters(scores, sizes, n_classes)
    classes, params = state.classes.copy(), state.params.copy()
    events = []
    for label in range(n_classes):
        group = np.flatnonzero(labels == label)
        target = group[np.argmax(sizes[group])]   # the largest class: ties the lowest
        for k in group:
            moved = state.classes == k
            classes[moved] = label
            if k != target:
                params[moved] = combine(state.params[moved], np.repeat(align[k, target][None], moved.sum(), 0))
        events.append({"classes": [int(k) + 1 for k in group], "into": label + 1})
    assigned = classes >= 0
    counts = reference_ops.class_counts(classes, np.arange(len(classes)) % 2, n_classes)
    members = ctx.subset(None if assigned.all() else np.flatnonzero(assigned))
    sums = None
    if state.sums is not None and members.correction.mode != "wiener":
        sums = loop.average_pass(members, params, classes, n_classes)
    refs, cutoffs, averages = loop.class_references(members, params, classes, counts,
                                                    reference_ops.cutoff_cap(state.iteration), sums)
    history = [dict(row) for row in state.history]
    history[-1]["merged"] = events
    ctx.log("merged %d classes into %d: %s" % (len(state.references), n_classes, "; ".join(
        "%s -> %d" % ("+".join(map(str, e["classes"])), e["into"]) for e in events)))
    return loop.State(state.iteration, params, classes, state.scores, refs, cutoffs, averages, history, sums)


def hook(classes_at, n_classes):
    """``loop.iterate``'s ``merge`` hook of a run to ``n_classes`` with the schedule ``classes_at`` (None
    when it does not over-cluster): after each iteration, the state merged down to the classes it has
    next, and to ``n_classes`` after the run's ``last`` iteration (auto-stop before the merge).  A state
    already merged stays so (a run continued from one that stopped early)."""
    if classes_at(0) == n_classes:
        return None

    def after(ctx, state, last):
        target = n_classes if last else classes_at(state.iteration)
        if len(state.references) > target:
            return merge(ctx, state, target)
        return state
    return after
