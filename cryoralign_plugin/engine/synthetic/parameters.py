"""The random truth of a particle set: class labels (equal, weighted, a rare view) and parameters."""
import numpy as np

from ..geometry import MIRROR, PSI, SX, SY


def random_parameters(n, rng, shift_range=3.0, mirror=True):
    """True parameters ``(n, 4)``: psi uniform in [0, 360), shifts uniform in +-shift_range,
    mirror 0/1 with probability 1/2 (always 0 when ``mirror`` is False)."""
    params = np.zeros((n, 4))
    params[:, PSI] = rng.uniform(0.0, 360.0, n)
    params[:, [SX, SY]] = rng.uniform(-shift_range, shift_range, (n, 2))
    if mirror:
        params[:, MIRROR] = rng.integers(0, 2, n)
    return params


def class_labels(n, n_classes, rng, weights=None):
    """0-based labels with class sizes as close to proportional to ``weights`` as integers allow
    (equal within 1 by default), in random order."""
    w = np.ones(n_classes) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(w) != n_classes or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("class weights must be %d non-negative numbers, not all zero" % n_classes)
    share = n * w / w.sum()
    counts = np.floor(share).astype(np.int64)
    counts[np.argsort(counts - share, kind="stable")[:n - counts.sum()]] += 1
    labels = np.repeat(np.arange(n_classes), counts)
    rng.shuffle(labels)
    return labels


def rare_view_weights(n_classes, fraction=0.03, rare=-1):
    """Class weights giving class ``rare`` (default the last) ``fraction`` of the particles and the
    others equal shares of the rest; for :func:`make_particles`' ``class_weights``."""
    if n_classes < 2 or not 0 < fraction < 1:
        raise ValueError("a rare view needs >= 2 classes and a fraction in (0, 1), not %d and %s"
                         % (n_classes, fraction))
    weights = np.full(n_classes, (1.0 - fraction) / (n_classes - 1))
    weights[rare] = fraction
    return weights
