"""Class averages -> references: even/odd FRC, tanh low-pass, masking, centering, re-seeding."""
import numpy as np
from numba import njit

from . import images as imgops

MIN_CUTOFF = 0.04   # cycles/pixel: never filter harder than this
MAX_CUTOFF = 0.45


def class_counts(classes, parity, n_classes):
    """Members per (class, half): ``(K, 2)``."""
    counts = np.zeros((n_classes, 2), np.int64)
    valid = classes >= 0
    np.add.at(counts, (classes[valid], parity[valid]), 1)
    return counts


def halves(sums, counts):
    """Even and odd half averages ``(K, 2, n, n)`` float32 from fixed-point sums."""
    return (sums / imgops.FIXED_POINT / np.maximum(counts, 1)[:, :, None, None]).astype(np.float32)


def cutoff_cap(iteration, start=0.05, step=0.05):
    """Highest filter cutoff allowed at ``iteration`` (1-based): a slowly opening resolution limit.

    Averages of particles aligned to noisy references reproduce that noise in both halves, so their
    FRC overstates the resolution ("Einstein from noise").  Limiting the early references to low
    frequencies lets the classes form from the large features first.
    """
    return min(MAX_CUTOFF, start + step * (iteration - 1))


def build(sums, counts, radius, center, max_cutoff=MAX_CUTOFF):
    """References, filter cutoffs (cycles/px) and averages from even/odd fixed-point sums.

    Each average is low-passed where the FSC estimated from its half-set FRC falls below 0.5
    (SPARX ``ref_ali2d``), so sparsely populated classes are smoothed more and do not lose
    particles to large ones merely for being noisier; then it is masked and, with ``center``,
    moved so its center of mass is at the box center.
    """
    half = halves(sums, counts)
    total = counts.sum(axis=1)
    averages = (sums.sum(axis=1) / imgops.FIXED_POINT / np.maximum(total, 1)[:, None, None]).astype(np.float32)
    curves = [imgops.frc(half[k, 0], half[k, 1]) if counts[k].min() > 0 else None for k in range(len(averages))]
    return finish(averages, curves, radius, center, max_cutoff)


def finish(averages, curves, radius, center, max_cutoff=MAX_CUTOFF):
    """References and filter cutoffs from class averages and their half-set FRC curves (rings
    ``0..n//2``; None for a class without both halves: filtered at :data:`MIN_CUTOFF`), as
    :func:`build` makes them; returns ``(references, cutoffs, averages)``."""
    box = averages.shape[-1]
    mask = imgops.circular_mask(box, radius)
    refs = np.empty_like(averages)
    cutoffs = np.empty(len(averages))
    for k, avg in enumerate(averages):
        cutoff = MIN_CUTOFF if curves[k] is None else imgops.frc_cutoff(curves[k])
        cutoffs[k] = np.clip(cutoff, MIN_CUTOFF, max_cutoff)
        ref = imgops.lowpass_tanh(avg, cutoffs[k])
        ref = np.where(mask, ref - ref[mask].mean(), 0.0).astype(np.float32)
        if center:
            dx, dy = imgops.center_of_mass(ref, radius)
            ref = np.where(mask, imgops.fourier_shift(ref, -dx, -dy), 0.0).astype(np.float32)
        refs[k] = ref
    return refs, cutoffs, averages


def reseed_starved(classes, scores, n_classes, min_members):
    """Give each class with fewer than ``min_members`` the worse-fitting half of the largest class.

    Plain multireference alignment from random starts drifts towards a few large classes whose
    averages are the least noisy.  Splitting the largest class keeps every class in play; the
    moved particles keep their alignment, so their average is a ready new reference.
    Returns the new classes and one event per re-seeded class.
    """
    classes = classes.copy()
    events = []
    for k in range(n_classes):
        sizes = np.bincount(classes[classes >= 0], minlength=n_classes)
        if sizes[k] >= min_members:
            continue
        donor = int(np.argmax(sizes))
        members = np.flatnonzero(classes == donor)
        if len(members) < 2 * max(min_members, 1):
            continue
        worst = members[np.argsort(scores[members], kind="stable")[:len(members) // 2]]
        classes[worst] = k
        events.append({"class": k + 1, "from_class": donor + 1, "members": int(len(worst))})
    return classes, events


@njit(cache=True)
def _greedy(order, reference, n_classes, capacity, out):
    filled = np.zeros(n_classes, np.int64)
    width = reference.shape[1]
    left = out.shape[0]
    for flat in order:
        p, c = flat // width, flat % width
        k = reference[p, c]
        if out[p] < 0 and filled[k] < capacity:
            out[p] = c
            filled[k] += 1
            left -= 1
            if left == 0:
                break
    for p in range(out.shape[0]):   # every candidate's class was full: the particle's best one
        if out[p] < 0:
            out[p] = 0


def balanced_assignment(reference, score, n_classes):
    """Equal-size assignment (ISAC's equal-size K-means) from each particle's best candidates.

    ``reference`` and ``score`` ``(N, C)``: each particle's candidates best first (``search.Candidates``).
    Taking (particle, candidate) pairs in order of decreasing score, a particle joins the candidate's
    class while that class holds fewer than ``ceil(N / K)``.  Early on, when the references are still
    noise, this keeps one lucky average from attracting everything.  A particle whose ``C``
    candidates' classes are all full joins its best one (that class ends larger); with ``C >= K``
    this never happens.  Ties keep the lower particle, then the lower candidate (the lower class).
    Returns the chosen candidate (column) of each particle.
    """
    count = len(score)
    order = np.argsort(-np.asarray(score, np.float64).ravel(), kind="stable")
    out = np.full(count, -1, np.int64)
    _greedy(order, np.ascontiguousarray(reference, np.int64), int(n_classes), -(-count // n_classes), out)
    return out
