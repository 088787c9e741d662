"""A continuum of projection directions of the phantom, in frames that vary smoothly with the direction."""
import numpy as np

from .conventions import _standardise, _stream
from .phantoms import _phantom_blobs, _project

POLE = np.array([0.0, 0.0, 1.0])    # the continuous sets are centered on the phantom's z axis


def _transported_bases(directions):
    """Frames that vary smoothly with the direction: the z frame turned by the smallest rotation
    taking ``POLE`` to each direction (Rodrigues), so that the image axes of nearby directions
    nearly agree and particles of nearby directions share a register."""
    d = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    axis = np.cross(POLE, d)
    sin = np.linalg.norm(axis, axis=1)
    cos = d @ POLE
    k = np.where(sin[:, None] > 1e-12, axis / np.maximum(sin, 1e-300)[:, None], [[1.0, 0.0, 0.0]])
    kx = np.zeros((len(d), 3, 3))
    kx[:, 0, 1], kx[:, 0, 2], kx[:, 1, 2] = -k[:, 2], k[:, 1], -k[:, 0]
    kx -= kx.transpose(0, 2, 1)
    rot = np.eye(3) + sin[:, None, None] * kx + (1.0 - cos)[:, None, None] * (kx @ kx)
    return rot.transpose(0, 2, 1)          # rows: rot @ x, rot @ y, rot @ z (= d)


def continuous_directions(n, rng, mode="arc", extent=90.0):
    """``n`` unit vectors ``(n, 3)`` spread continuously around ``POLE``.

    ``mode="arc"``: uniform along a great-circle arc of ``extent`` degrees centered on the pole (a
    tilt about the x axis, angle uniform in +-extent/2).  ``mode="cap"``: uniform over the sphere
    cap of half-angle ``extent`` degrees.  Keep ``extent`` <= 180 (arc) / 90 (cap): a projection
    along -d is the mirror image of the one along d, so a wider range folds back onto itself for
    a classifier that allows mirroring.
    """
    if mode == "arc":
        t = np.deg2rad(rng.uniform(-extent / 2.0, extent / 2.0, n))
        return np.stack([np.zeros(n), -np.sin(t), np.cos(t)], axis=1)
    if mode == "cap":
        cos_a = rng.uniform(np.cos(np.deg2rad(extent)), 1.0, n)
        phi = rng.uniform(0.0, 2.0 * np.pi, n)
        sin_a = np.sqrt(1.0 - cos_a ** 2)
        return np.stack([sin_a * np.cos(phi), sin_a * np.sin(phi), cos_a], axis=1)
    raise ValueError("unknown direction mode %r: use 'arc' or 'cap'" % mode)


def continuous_views(n, box, seed=0, mode="arc", extent=90.0):
    """``n`` projections of the phantom of ``seed`` from continuously spread directions.

    Returns ``(views (n, box, box) float32, directions (n, 3))``; directions as in
    :func:`continuous_directions` (drawn from their own random stream), the image frames vary
    smoothly with the direction (:func:`_transported_bases`), views standardised as in
    :func:`phantom_views`.  There are no discrete classes: the truth is the direction.
    """
    rng = np.random.default_rng(seed)
    blobs = _phantom_blobs(rng)
    directions = continuous_directions(n, _stream(seed, 1), mode, extent)
    views = np.empty((n, box, box), dtype=np.float32)
    for lo in range(0, n, 256):
        d = directions[lo:lo + 256]
        views[lo:lo + 256] = _standardise(_project(blobs, d, box, _transported_bases(d)))
    return views, directions


def direction_views(directions, box, seed=0):
    """Projections of the phantom of ``seed`` along given ``directions`` in the frames of
    :func:`continuous_views` (e.g. a class's mean direction, to compare with its average)."""
    blobs = _phantom_blobs(np.random.default_rng(seed))
    directions = np.atleast_2d(np.asarray(directions, dtype=np.float64))
    return _standardise(_project(blobs, directions, box, _transported_bases(directions)))
