"""Choosing mutually distinct references (or ones as alike as a cap allows) by their rotational similarity."""
import numpy as np

from .conventions import default_radius

SIMILARITY_BOX = 32      # views are compared at this size: large-scale shape is what survives noise
SIMILARITY_ANGLES = 72   # in-plane rotations tried (5 degree steps) when comparing two views


def _polar_rings(images, radius, n_angles):
    """Images sampled on rings ``1..radius`` x ``n_angles`` angles, ``(N, R, A)``, zero mean and
    weighted by sqrt(r) with unit norm, so that a dot product is an area-weighted correlation."""
    from scipy.ndimage import map_coordinates
    center = images.shape[-1] // 2
    r = np.arange(1, int(radius) + 1)[:, None]
    angle = 2.0 * np.pi * np.arange(n_angles) / n_angles
    where = [center + r * np.sin(angle), center + r * np.cos(angle)]
    rings = np.stack([map_coordinates(np.asarray(im, dtype=np.float64), where, order=3) for im in images])
    rings -= (rings * r).sum(axis=(1, 2), keepdims=True) / (r.sum() * n_angles)
    rings *= np.sqrt(r)
    return rings / np.linalg.norm(rings, axis=(1, 2), keepdims=True).clip(1e-30)


def rotational_similarity(images, radius=None, n_angles=SIMILARITY_ANGLES):
    """Best masked correlation of every pair over in-plane rotations and mirror, ``(N, N)``.

    Two references that match after some rotation/mirror are the same class to a 2D classifier,
    so this measures how distinct synthetic classes are.  In polar coordinates a rotation is a
    cyclic shift and a mirror a reversal, so all ``n_angles`` rotations of all pairs come from
    one FFT; ``radius`` defaults to :func:`default_radius`.
    """
    images = np.asarray(images)
    box = images.shape[-1]
    spectra = np.fft.rfft(_polar_rings(images, default_radius(box) if radius is None else radius,
                                       n_angles), axis=-1).transpose(2, 0, 1)    # (K, N, R)
    direct = spectra @ spectra.conj().transpose(0, 2, 1)       # sum_r F_i conj(F_j)
    mirrored = spectra.conj() @ spectra.conj().transpose(0, 2, 1)  # ring i reversed = conj(F_i)
    best = [np.fft.irfft(s, n_angles, axis=0).max(axis=0) for s in (direct, mirrored)]
    return np.maximum(*best)


def _greedy(similarity, n, first):
    """Farthest-point order from ``first``: each pick is least like those already chosen."""
    chosen = [int(first)]
    while len(chosen) < n:
        worst = similarity[chosen].max(axis=0)
        worst[chosen] = np.inf
        chosen.append(int(np.argmin(worst)))
    return np.array(chosen)


def most_distinct(similarity, n, first=None):
    """Indices of ``n`` candidates whose most similar pair is as dissimilar as greedy can make it.

    Greedy farthest-point choice from ``first``, or from every candidate keeping the best set.
    """
    s = np.array(similarity, dtype=np.float64)
    if not 1 <= n <= len(s):
        raise ValueError("cannot choose %d of %d candidates" % (n, len(s)))
    np.fill_diagonal(s, -np.inf)
    sets = [_greedy(s, n, i) for i in (range(len(s)) if first is None else [first])]
    return min(sets, key=lambda c: s[np.ix_(c, c)].max())


def pick_views(similarity, n, max_similarity, first=None, passes=2):
    """Indices of ``n`` candidates that are as alike as possible while no pair exceeds ``max_similarity``.

    The opposite of :func:`most_distinct`, for harder sets.  Starts from the :func:`most_distinct`
    set (from ``first``), which is the likeliest to fit under the cap, then hardens it: ``passes``
    times, each member in turn is replaced by the candidate most similar to one of the others
    among those that keep every pair <= ``max_similarity`` (itself, if none is more similar), so
    that every view ends up with a neighbour just under the cap.  ValueError if even the most
    distinct set exceeds the cap.
    """
    s = np.array(similarity, dtype=np.float64)
    chosen = most_distinct(s, n, first)
    np.fill_diagonal(s, -np.inf)
    worst = s[np.ix_(chosen, chosen)].max() if n > 1 else -np.inf
    if worst > max_similarity:
        raise ValueError("the %d most distinct candidates already reach similarity %.3f > %g: raise "
                         "max_similarity or ask for fewer views" % (n, worst, max_similarity))
    for _ in range(passes if n > 1 else 0):
        for i in range(n):
            others = np.delete(chosen, i)
            closest = s[others].max(axis=0)
            closest[others] = np.inf
            admissible = np.flatnonzero(closest <= max_similarity)      # includes chosen[i]
            chosen[i] = admissible[np.argmax(closest[admissible])]
    return chosen
