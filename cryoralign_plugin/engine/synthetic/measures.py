"""How a result compares with the truth: purity, registration errors, direction spread and its ideal baseline."""
import numpy as np

from ..geometry import MIRROR, PSI, SX, SY, combine, inverse


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True).clip(1e-300)


def _class_axes(classes, directions, antipodal):
    """Per class (``np.unique`` order) the mean direction, or with ``antipodal`` the principal
    axis of its members, sign-chosen towards their mean."""
    labels, index = np.unique(classes, return_inverse=True)
    if not antipodal:
        sums = np.zeros((len(labels), 3))
        np.add.at(sums, index, directions)
        return _unit(sums), index
    axes = []
    for k in range(len(labels)):
        member = directions[index == k]
        _, v = np.linalg.eigh(member.T @ member)
        axis = v[:, -1]
        axes.append(axis if axis @ member.sum(axis=0) >= 0 else -axis)
    return np.array(axes), index


def direction_spread(classes, directions, antipodal=False):
    """Mean angular spread (degrees) of the true directions within each class.

    The angle between each particle's true direction and its class's mean direction, averaged
    over all particles (so a class counts by its size).  0 for classes of one direction each;
    compare a classifier's classes with :func:`ideal_partition` for the same number of classes.
    ``antipodal``: d and -d count as one direction (their projections are mirror images), for
    direction ranges that reach around the sphere.
    """
    directions = _unit(np.asarray(directions, dtype=np.float64))
    axes, index = _class_axes(np.asarray(classes), directions, antipodal)
    cos = np.einsum("ij,ij->i", directions, axes[index])
    if antipodal:
        cos = np.abs(cos)
    return float(np.rad2deg(np.arccos(np.clip(cos, -1.0, 1.0))).mean())


def ideal_partition(directions, k, seed=0, n_init=8, n_iter=100, antipodal=False):
    """The best ``k`` classes one could form from the true directions: a baseline for
    :func:`direction_spread`.

    Spherical k-means (k-means++ seeding, ``n_init`` restarts, the one of least spread kept) on
    the unit directions; for directions uniform on an arc of E degrees it finds the equal arcs,
    spread E / (4 k).  Returns 0-based labels ``(N,)``.
    """
    d = _unit(np.asarray(directions, dtype=np.float64))
    if not 1 <= k <= len(d):
        raise ValueError("cannot make %d classes of %d directions" % (k, len(d)))
    rng = np.random.default_rng(seed)
    best, best_spread = None, np.inf
    for _ in range(n_init):
        centers = [d[rng.integers(len(d))]]
        for _ in range(1, k):
            cos = d @ np.array(centers).T
            far = 1.0 - (np.abs(cos) if antipodal else cos).max(axis=1)
            p = far.clip(0.0)
            centers.append(d[rng.choice(len(d), p=p / p.sum()) if p.sum() > 0 else rng.integers(len(d))])
        centers = np.array(centers)
        labels = None
        for _ in range(n_iter):
            cos = d @ centers.T
            new = (np.abs(cos) if antipodal else cos).argmax(axis=1)
            if labels is not None and np.array_equal(new, labels):
                break
            labels = new
            present = np.unique(labels)
            axes, _ = _class_axes(labels, d, antipodal)
            centers[present] = axes
        labels = np.unique(labels, return_inverse=True)[1]
        spread = direction_spread(labels, d, antipodal)
        if spread < best_spread:
            best, best_spread = labels, spread
    return best


def purity(found, truth):
    """Fraction of particles whose class's majority is their true class (1.0: every class is pure)."""
    found, truth = np.asarray(found), np.asarray(truth)
    return sum(np.bincount(truth[found == k]).max() for k in np.unique(found)) / len(truth)


def register_errors(found, truth):
    """How far an alignment is from the truth up to one common transform, per particle.

    A reference-free average (or a class average) may sit in any orientation, so ``found`` equals
    ``truth`` followed by one common transform ``g``.  Returns the angle deviation (deg) and shift
    deviation (px) of each particle's ``g`` from the common one, and whether its mirror agrees with
    the majority.  The common angle is a circular mean, so it is right across the 0/360 wrap.
    """
    g = combine(inverse(truth), found)
    same = g[:, MIRROR] == np.round(np.median(g[:, MIRROR]))
    rad = np.deg2rad(g[same, PSI])
    center = np.rad2deg(np.arctan2(np.sin(rad).mean(), np.cos(rad).mean()))
    angle = np.abs((g[:, PSI] - center + 180.0) % 360.0 - 180.0)
    shifts = g[:, [SX, SY]]
    shift = np.hypot(*(shifts - np.median(shifts[same], axis=0)).T)
    return angle, shift, same
