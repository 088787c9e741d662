"""Analytic projections of random asymmetric blob phantoms: distinct views, near-duplicate pairs, and
hundreds of distinct views (one phantom each)."""
import numpy as np

from .conventions import _standardise, _stream
from .similarity import SIMILARITY_BOX, most_distinct, pick_views, rotational_similarity

PHANTOM_CANDIDATES = 256  # random view directions the distinct views are chosen from
ZOO_CANDIDATES = 4        # phantom_zoo: candidate phantoms per view asked for


def _random_rotations(n, rng):
    """``n`` uniformly random orthogonal 3x3 matrices (QR of Gaussian matrices)."""
    q, r = np.linalg.qr(rng.standard_normal((n, 3, 3)))
    return q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]


def _phantom_blobs(rng):
    """Centers, covariances and masses of an asymmetric phantom of 8-14 Gaussian blobs.

    Lengths are in units of the box.  Blobs of different sizes (sigma 0.025-0.1), elongations
    (up to 2:1) and densities sit mostly in the outer half of the sphere's volume, one sigma
    inside radius 0.35: that makes the outline, which is what survives noise, change from view to
    view.  The center of mass is at the origin, so every projection is centered.
    """
    n = int(rng.integers(8, 15))
    axes = np.exp(rng.uniform(np.log(0.025), np.log(0.05), n))[:, None] * rng.uniform(1.0, 2.0, (n, 3))
    rot = _random_rotations(n, rng)
    cov = np.einsum("nij,nj,nkj->nik", rot, axes ** 2, rot)
    reach = (0.35 - axes.max(axis=1)) * rng.uniform(0.5, 1.0, n) ** (1.0 / 3.0)
    direction = rng.standard_normal((n, 3))
    centers = direction / np.linalg.norm(direction, axis=1, keepdims=True) * reach[:, None]
    mass = rng.uniform(0.5, 1.5, n) * np.sqrt(np.linalg.det(cov))   # peak density 0.5..1.5
    centers -= (mass[:, None] * centers).sum(axis=0) / mass.sum()
    return centers, cov, mass


def _view_bases(directions):
    """Rotations whose third row is the (normalised) view direction: they carry it onto z."""
    d = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    helper = np.where(np.abs(d[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    e1 = np.cross(helper, d)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    return np.stack([e1, np.cross(d, e1), d], axis=1)


def _project(blobs, directions, box, bases=None):
    """Analytic projections, ``(V, box, box)``: a 3D Gaussian projects to the 2D Gaussian of the
    xy block of its rotated covariance, carrying all of its mass.  ``bases`` (rows: image x, image
    y, view direction) default to :func:`_view_bases` of ``directions``."""
    centers, cov, mass = blobs
    bases = _view_bases(directions) if bases is None else bases
    c2 = np.einsum("vij,nj->vni", bases, centers)[..., :2] * box
    s2 = np.einsum("vij,njk,vlk->vnil", bases, cov, bases)[..., :2, :2] * box ** 2
    inv, det = np.linalg.inv(s2), np.linalg.det(s2)
    y, x = np.indices((box, box)) - box // 2
    out = np.empty((len(bases), box, box), dtype=np.float32)
    for v in range(len(bases)):
        dx = x[None] - c2[v, :, 0, None, None]
        dy = y[None] - c2[v, :, 1, None, None]
        iv = inv[v][:, :, :, None, None]
        q = iv[:, 0, 0] * dx * dx + 2.0 * iv[:, 0, 1] * dx * dy + iv[:, 1, 1] * dy * dy
        out[v] = ((mass / np.sqrt(det[v]))[:, None, None] * np.exp(-0.5 * q)).sum(axis=0)
    return out


def phantom_views(n_views, box, seed=0, max_similarity=None):
    """``n_views`` projections ``(n_views, box, box)`` float32 of one random asymmetric phantom.

    Directions are chosen greedily from random candidates so the views are as unlike each other
    as possible after any in-plane rotation and mirror (compared at low resolution, where a
    noisy classifier sees them).  With ``max_similarity`` they are instead as alike as that cap
    allows (:func:`pick_views`, compared at ``SIMILARITY_BOX`` px and 5 degree steps, so the
    similarity measured at ``box`` may differ by a few hundredths).  Background zero, unit variance
    inside the default mask.
    """
    rng = np.random.default_rng(seed)
    blobs = _phantom_blobs(rng)
    directions = rng.standard_normal((max(PHANTOM_CANDIDATES, 4 * n_views), 3))
    similarity = rotational_similarity(_project(blobs, directions, SIMILARITY_BOX))
    chosen = (most_distinct(similarity, n_views) if max_similarity is None
              else pick_views(similarity, n_views, max_similarity))
    return _standardise(_project(blobs, directions[chosen], box))


def phantom_zoo(n_views, box, seed=0):
    """``n_views`` views ``(n_views, box, box)`` float32, each one random phantom seen from a random
    direction: the most distinct of ``ZOO_CANDIDATES`` x ``n_views`` such views (greedy, from the
    first), compared as in :func:`phantom_views`.

    One phantom's views grow alike as they grow many (its 100 most distinct reach a similarity of
    0.97), so a classification into hundreds of classes with a known answer needs a zoo of
    particles.  Measured at 64 px (seed 0, 5 degree steps), the most similar pair of 10 / 60 / 200
    views: 0.77 / 0.80 / 0.82 (60 views of one phantom: 0.96).  Standardised as :func:`phantom_views`.
    """
    rng = np.random.default_rng(seed)
    candidates = [(_phantom_blobs(rng), rng.standard_normal((1, 3))) for _ in range(ZOO_CANDIDATES * n_views)]
    similarity = rotational_similarity(np.concatenate([_project(b, d, SIMILARITY_BOX) for b, d in candidates]))
    chosen = most_distinct(similarity, n_views, first=0)
    return _standardise(np.concatenate([_project(*candidates[i], box) for i in chosen]))


def _tilted(direction, degrees, helper):
    """``direction`` turned by each of ``degrees`` about the axis perpendicular to it and to
    ``helper``: ``(len(degrees), 3)``."""
    d = direction / np.linalg.norm(direction)
    axis = np.cross(d, helper)
    axis /= np.linalg.norm(axis)
    t = np.deg2rad(np.asarray(degrees, dtype=np.float64))[:, None]
    return np.cos(t) * d + np.sin(t) * np.cross(axis, d)


PAIR_TILTS = (12.0, 10.0, 8.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.5)   # degrees tried, largest first


def phantom_pairs(n_views, box, seed=0, min_similarity=0.95):
    """``n_views`` phantom projections in near-duplicate pairs, and their measured similarity.

    Views ``2i`` and ``2i+1`` are one pair: ``n_views/2`` mutually distinct directions (as in
    :func:`phantom_views`, same phantom for the same ``seed``), each with a partner projected from a
    direction tilted by the largest of ``PAIR_TILTS`` degrees (random tilt axis) that keeps the
    pair's :func:`rotational_similarity` (at ``box``, 1 degree steps) >= ``min_similarity`` (the
    most similar one if none does).
    Returns ``(views (n_views, box, box) float32, similarity (n_views, n_views))``, the matrix
    measured on the returned views; pairs of different pairs stay as distinct as their bases
    (below ``min_similarity``, checked by the tests).  A 2D classifier should either split each
    pair (hard) or merge it; both are answers the truth can score.
    """
    if n_views < 2 or n_views % 2:
        raise ValueError("near-duplicate pairs need an even number of views >= 2, not %d" % n_views)
    rng = np.random.default_rng(seed)
    blobs = _phantom_blobs(rng)
    directions = rng.standard_normal((max(PHANTOM_CANDIDATES, 2 * n_views), 3))
    similarity = rotational_similarity(_project(blobs, directions, SIMILARITY_BOX))
    bases = directions[most_distinct(similarity, n_views // 2)]
    helpers = _stream(seed, 2).standard_normal((len(bases), 3))     # one tilt axis per pair
    views = []
    for d, helper in zip(bases, helpers):
        stack = _standardise(_project(blobs, np.vstack([d[None], _tilted(d, PAIR_TILTS, helper)]), box))
        sim = rotational_similarity(stack, n_angles=360)[0, 1:]
        ok = np.flatnonzero(sim >= min_similarity)
        best = 1 + (ok[0] if ok.size else int(np.argmax(sim)))
        views += [stack[0], stack[best]]
    views = np.stack(views)
    return views, rotational_similarity(views, n_angles=360)
