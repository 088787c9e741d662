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
iteration already holds K classes), so ``--continue`` resumes either phase exactly.  On by default
(c = 3, merged after iteration 5): it raised the mean purity of random starts on the CTF set (seeds 1-6:
0.976 against 0.933) and on the classification benchmark's SNR 0.05, rare-view, K = 2x and K = 0.5x sets
by 0.02-0.07, at 1.15-1.25x the time; at SNR 0.02 and on near-duplicate pairs it changes little (README,
Algorithm).

A late round (``resplit = M``, as CL2D's later splits) splits every class in two after iteration M, at
a higher resolution limit (:func:`split`), runs ``resplit_iterations`` at 2 K and merges back to K by
Ward's criterion (:func:`ward`): a class holding two views can split into them, and two classes holding
halves of one view split into quarters that the merge joins, so one round can repair both errors.
"""
import numpy as np

from . import images as imgops
from . import loop, references as reference_ops, search
from .geometry import combine
from .settings import CANDIDATES, OVERCLUSTER_MAX_CLASSES, RESPLIT_SAMPLE


def classes_at(settings, n_classes, count):
    """The number of classes a run from random particles to ``n_classes`` holds after each iteration
    (0: its initial references), as a function: ``overcluster`` x K before ``overcluster_iterations``,
    2 K from ``resplit`` for ``resplit_iterations`` (the late round), K otherwise.  A round applies only
    where K > 1, its classes are no more than ``count`` nor OVERCLUSTER_MAX_CLASSES (memory), and the
    run's ``iterations`` go on past its merge (then a run and its ``--continue`` to more iterations
    stay at K; as with mini-batches, that is the one use of ``iterations``)."""
    n_classes = n_classes or 0   # none given: refused where the references are drawn

    def applies(factor, merged_after):
        return 1 < n_classes and factor * n_classes <= min(count, OVERCLUSTER_MAX_CLASSES) \
            and settings.iterations > merged_after
    merge_at = settings.overcluster_iterations
    factor = settings.overcluster if applies(settings.overcluster, merge_at) else 1
    split_at = settings.resplit
    split_end = split_at + settings.resplit_iterations
    late = split_at > 0 and applies(2, split_end)

    def at(iteration):
        if factor > 1 and iteration < merge_at:
            return n_classes * factor
        return 2 * n_classes if late and split_at <= iteration < split_end else n_classes
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


def _agglomerate(count, n_clusters, pair, join):
    """Cluster label ``0..n_clusters-1`` of each of ``count`` classes, in order of each cluster's lowest
    class: from one cluster per class, join the pair ``pair(alive)`` picks (the lower index keeps the
    joined cluster, after ``join(a, b)`` updates the caller's linkage) until ``n_clusters`` are left."""
    members = [[k] for k in range(count)]
    alive = np.ones(count, bool)
    for _ in range(count - n_clusters):
        a, b = pair(alive)
        a, b = min(a, b), max(a, b)
        join(a, b)
        members[a] += members[b]
        alive[b] = False
    labels = np.empty(count, np.int64)
    for label, k in enumerate(np.flatnonzero(alive)):
        labels[members[k]] = label
    return labels


def _best(values, alive, pick):
    """The pair of distinct live clusters with ``pick`` (np.argmax or np.argmin) of ``values``; ties:
    the lowest pair."""
    worst = -np.inf if pick is np.argmax else np.inf
    values = values.copy()
    values[~alive] = worst
    values[:, ~alive] = worst
    np.fill_diagonal(values, worst)
    return np.unravel_index(pick(values), values.shape)


def clusters(scores, sizes, n_clusters):
    """Cluster label ``0..n_clusters-1`` of each class: agglomerative, average linkage weighted by
    ``sizes`` on the symmetrised ``scores``; labels in order of each cluster's lowest class."""
    w = np.asarray(sizes, np.float64).clip(min=1)
    # link[a, b]: size-weighted sum of pair similarities between clusters a and b
    link = (scores + scores.T) / 2.0 * w[:, None] * w[None, :]
    mass = w.copy()

    def join(a, b):
        link[a] += link[b]
        link[:, a] += link[:, b]
        mass[a] += mass[b]
    return _agglomerate(len(w), n_clusters,
                        lambda alive: _best(link / (mass[:, None] * mass[None, :]), alive, np.argmax), join)


def distances(ctx, state, align):
    """Squared distance ``(K, K)`` between the class averages ``i`` and ``j`` brought onto ``i`` (by
    ``align[j, i]``), both low-passed at the iteration's cap, inside the mask."""
    mask = imgops.circular_mask(ctx.source.box, ctx.radius)
    averages = imgops.lowpass_tanh(state.averages, reference_ops.cutoff_cap(state.iteration))
    count = len(averages)
    out = np.zeros((count, count))
    for j in range(count):
        moved = imgops.transform(np.repeat(averages[j][None], count, 0), align[j])
        out[:, j] = ((averages - moved)[:, mask].astype(np.float64) ** 2).sum(axis=1)
    return out


def ward(dist, sizes, n_clusters):
    """Cluster label of each class as :func:`clusters`, by Ward's criterion on the symmetrised squared
    distances ``dist`` of the class averages: join the pair whose join least raises the summed squared
    distance of the members to their cluster's mean, ``n_a n_b / (n_a + n_b) |m_a - m_b|^2``.  For two
    halves of one view that is the noise alone, whatever their sizes; for two views it adds their
    difference times the sizes, which is what tells near-duplicate views from halves of one."""
    d = (dist + dist.T) / 2.0
    n = np.asarray(sizes, np.float64).clip(min=1)

    def join(a, b):   # Lance-Williams
        d[a] = ((n + n[a]) * d[a] + (n + n[b]) * d[b] - n * d[a, b]) / (n + n[a] + n[b])
        d[:, a] = d[a]
        n[a] += n[b]
    return _agglomerate(len(n), n_clusters,
                        lambda alive: _best(n[:, None] * n[None, :] / (n[:, None] + n[None, :]) * d, alive,
                                            np.argmin), join)


def merge(ctx, state, n_classes, by_ward=False):
    """The state with its classes merged down to ``n_classes`` (see the module docstring), its
    references and averages those of the merged classes, filtered with the iteration's cap;
    ``by_ward``: joined by :func:`ward` on the averages' :func:`distances` (the late round)."""
    sizes = np.bincount(state.classes[state.classes >= 0], minlength=len(state.references))
    scores, align = similarity(ctx, state.references)
    labels = ward(distances(ctx, state, align), sizes, n_classes) if by_ward else clusters(scores, sizes, n_classes)
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
    ctx.log("merged %d classes into %d: %s" % (len(state.references), n_classes, "; ".join(
        "%s -> %d" % ("+".join(map(str, e["classes"])), e["into"]) for e in events)))
    return _regrouped(ctx, state, params, classes, n_classes, "merged", events)


def split(ctx, state):
    """The state with every class split in two (the late round): class k's members in the class's frame,
    low-passed at its cutoff and masked, go to class 2k or 2k+1 by the sign of their projection on the
    leading eigen-image of (at most RESPLIT_SAMPLE of) them, 2k the larger side.  A class holding two
    views splits along what tells them apart; one holding one view splits into halves that the merge
    after ``resplit_iterations`` joins again."""
    n_classes = len(state.references)
    assigned = np.flatnonzero(state.classes >= 0)
    members = ctx.subset(None if len(assigned) == len(state.classes) else assigned)
    mask = imgops.circular_mask(ctx.source.box, ctx.radius)
    mean = np.zeros((n_classes, mask.sum()))
    axis = np.zeros((n_classes, mask.sum()))
    for k in range(n_classes):   # every rank reads the same sample: the same eigen-images
        inside = np.flatnonzero(state.classes == k)
        if len(inside) < 2:
            continue
        sample = inside[np.linspace(0, len(inside) - 1, min(len(inside), RESPLIT_SAMPLE)).astype(np.int64)]
        x = _in_frame(ctx, sample, state, mask)
        mean[k] = x.mean(axis=0)
        axis[k] = np.linalg.svd(x - mean[k], full_matrices=False)[2][0]
    local = [np.zeros(0)]
    for batch in members.batches():   # per particle, so alike in any batch, rank or thread count
        k = state.classes[batch]
        local.append(((_in_frame(members, batch, state, mask) - mean[k]) * axis[k]).sum(axis=1))
    projection = members.gather(np.zeros(len(state.classes)), np.concatenate(local))
    side = (projection < 0).astype(np.int64)
    classes = state.classes.copy()
    events = []
    for k in range(n_classes):
        inside = state.classes == k
        negative = int(side[inside].sum())
        flip = negative > inside.sum() - negative   # the larger side: the lower class
        classes[inside] = 2 * k + (side[inside] ^ flip)
        events.append({"class": k + 1, "into": [2 * k + 1, 2 * k + 2],
                       "members": [int(inside.sum()) - negative, negative][::-1 if flip else 1]})
    ctx.log("split %d classes into %d: %s" % (n_classes, 2 * n_classes, "; ".join(
        "%d -> %d (%d) + %d (%d)" % (e["class"], e["into"][0], e["members"][0], e["into"][1], e["members"][1])
        for e in events)))
    return _regrouped(ctx, state, state.params, classes, 2 * n_classes, "split", events)


def _in_frame(ctx, indices, state, mask):
    """The particles ``indices`` in their class's frame, low-passed at its cutoff, inside ``mask``: ``(n, pixels)``."""
    aligned = imgops.transform(ctx.read(indices), state.params[indices])
    classes = state.classes[indices]
    for k in np.unique(classes):
        aligned[classes == k] = imgops.lowpass_tanh(aligned[classes == k], state.cutoffs[k])
    return aligned[:, mask].astype(np.float64)


def _regrouped(ctx, state, params, classes, n_classes, what, events):
    """The state with the particles in ``classes`` (``n_classes``) at ``params``: references and averages
    of those classes, filtered with the iteration's cap; ``events`` recorded in its history row as ``what``."""
    assigned = classes >= 0
    counts = reference_ops.class_counts(classes, np.arange(len(classes)) % 2, n_classes)
    members = ctx.subset(None if assigned.all() else np.flatnonzero(assigned))
    sums = None
    if state.sums is not None and members.correction.mode != "wiener":
        sums = loop.average_pass(members, params, classes, n_classes)
    refs, cutoffs, averages = loop.class_references(members, params, classes, counts,
                                                    reference_ops.cutoff_cap(state.iteration), sums)
    history = [dict(row) for row in state.history]
    history[-1][what] = events
    return loop.State(state.iteration, params, classes, state.scores, refs, cutoffs, averages, history, sums)


def hook(classes_at, n_classes, iterations, split_at=0):
    """``loop.iterate``'s ``merge`` hook of a run to ``n_classes`` with the schedule ``classes_at`` over
    ``iterations`` (None when it stays at K): after each iteration, the state merged down to (or split
    up to) the classes it has next, and merged to ``n_classes`` after the run's ``last`` iteration
    (auto-stop before a merge).  A state already at its classes stays so (a run continued from one that
    stopped early).  Merges from ``split_at`` on (the late round) are by Ward's criterion."""
    if all(classes_at(i) == n_classes for i in range(iterations + 1)):
        return None

    def after(ctx, state, last):
        target = n_classes if last else classes_at(state.iteration)
        if len(state.references) > target:
            return merge(ctx, state, target, 0 < split_at <= state.iteration)
        if len(state.references) < target:
            return split(ctx, state)
        return state
    return after
