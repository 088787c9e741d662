"""Synthetic particle stacks with known ground truth (class, rotation, shift, mirror).

Tests, the demo and the benchmarks need particles whose answer is known.  A particle's true
parameters follow the engine convention of :mod:`.geometry`: they bring the particle into register
with its reference, ``transform(clean_particle, truth) ~ reference``.  So a clean particle is made
as ``transform(reference, inverse(truth))`` and white noise is added on top.

References are either projections of one random asymmetric blob phantom (:func:`phantom_views`)
or real class averages from SLICEM (:func:`slicem_references`); in both cases the most mutually
distinct ones are chosen, so that a classifier has a well-defined answer to find.

Harder sets, each with its ground truth, are there for testing a classifier on data as hard as
real data:

* low SNR (``snr`` 0.02-0.05) on real SLICEM averages, optionally chosen to be as alike as a cap
  on their mutual similarity allows (``max_similarity``, :func:`pick_views`);
* near-duplicate pairs of views (:func:`phantom_pairs`);
* a continuum of projection directions without discrete classes (:func:`continuous_views`,
  :func:`direction_spread`, :func:`ideal_partition`);
* a rare view holding a few percent of the particles (:func:`rare_view_weights`);
* CTF-modulated particles with RELION 3.1 optics groups (:class:`CtfSimulation`).
"""
import argparse
import dataclasses
import os

import numpy as np

from . import ctf as ctf_model
from .geometry import MIRROR, PSI, SX, SY, combine, inverse
from .images import circular_mask, transform

SLICEM_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "mixture_2D.mrcs")
CHUNK = 2048             # particles transformed / noised at a time: bounds temporary memory
SIMILARITY_BOX = 32      # views are compared at this size: large-scale shape is what survives noise
SIMILARITY_ANGLES = 72   # in-plane rotations tried (5 degree steps) when comparing two views
PHANTOM_CANDIDATES = 256  # random view directions the distinct views are chosen from
CTF_CHUNK = 512          # particles CTF-modulated at a time (padded float64 temporaries)


def default_radius(box):
    """Mask radius of the SNR definition (0.4 box): the particle plus its shift stays inside."""
    return 0.4 * box


# ---------------------------------------------------------------------------------------------
# Choosing mutually distinct references

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


def _standardise(images):
    """Unit variance inside the default mask, background left at zero (rotations add no edges)."""
    box = images.shape[-1]
    sigma = images[:, circular_mask(box, default_radius(box))].std(axis=1, dtype=np.float64)
    return (images / sigma[:, None, None]).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Phantom projections

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


def _stream(seed, key):
    """An independent random stream ``key`` of ``seed`` (a spawned SeedSequence child), so that
    options drawing extra numbers leave the main stream of ``default_rng(seed)`` untouched:
    0 CTF, 1 continuous directions, 2 pair tilt axes."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key,)))


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


# ---------------------------------------------------------------------------------------------
# A continuum of projection directions

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


# ---------------------------------------------------------------------------------------------
# Real class averages (SLICEM)

def _fourier_resize(images, box):
    """Resample ``(N, n, n)`` images to ``box`` pixels by cropping/padding their spectrum."""
    n = images.shape[-1]
    if n == box:
        return np.array(images, dtype=np.float32)
    spectrum = np.fft.fftshift(np.fft.fft2(images), axes=(-2, -1))
    out = np.zeros((len(images), box, box), dtype=complex)
    m = min(n, box)
    src, dst = n // 2 - m // 2, box // 2 - m // 2
    out[:, dst:dst + m, dst:dst + m] = spectrum[:, src:src + m, src:src + m]
    resized = np.fft.ifft2(np.fft.ifftshift(out, axes=(-2, -1))).real * (box / n) ** 2
    return resized.astype(np.float32)


def _soft_mask(box):
    """Raised-cosine disc falling from 1 at 0.42 box to 0 at 0.48 box (hides the average's edge)."""
    y, x = np.indices((box, box)) - box // 2
    t = np.clip((np.hypot(x, y) / box - 0.42) / 0.06, 0.0, 1.0)
    return (0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float32)


def _prepare_averages(images, box):
    """Resample to ``box``, zero the background ring, soft-mask and standardise."""
    images = _fourier_resize(images, box)
    y, x = np.indices((box, box)) - box // 2
    r = np.hypot(x, y) / box
    ring = (r > 0.40) & (r <= 0.46)
    images = images - images[:, ring].mean(axis=1)[:, None, None]
    return _standardise(images * _soft_mask(box))


def _centered_averages(images):
    """Indices of averages whose smoothed density peaks in the middle, not at the edge.

    Averages with a neighbour or junk near the edge would be 'distinct' for the wrong reason.
    """
    from scipy.ndimage import gaussian_filter
    box = images.shape[-1]
    y, x = np.indices((box, box)) - box // 2
    r = np.hypot(x, y) / box
    smooth = gaussian_filter(np.asarray(images, dtype=np.float64), (0, box / 48.0, box / 48.0))
    background = np.median(smooth[:, (r > 0.40) & (r <= 0.46)], axis=1)[:, None]
    edge = (smooth[:, (r > 0.31) & (r <= 0.46)] - background).max(axis=1)
    center = (smooth[:, r <= 0.17] - background).max(axis=1)
    return np.flatnonzero(edge < center)


def slicem_references(n, box, seed=0, path=None, max_similarity=None):
    """``n`` mutually distinct real class averages ``(n, box, box)`` float32 from SLICEM.

    From the 100 averages of ``mixture_2D.mrcs`` (96 px; MIT, github marcottelab/SLICEM) those
    with density at the edge are dropped, then ``n`` are chosen greedily to be least alike after
    rotation/mirror, starting from one drawn with ``seed``.  With ``max_similarity`` they are
    instead as alike as that cap allows (:func:`pick_views`; compared at ``SIMILARITY_BOX`` px and
    5 degree steps).  Resampled to ``box`` (whole field of view kept), background zero,
    soft-masked, unit variance inside the default mask.
    """
    from .mrc import read_stack
    stack = read_stack(path or SLICEM_PATH)
    usable = _centered_averages(stack)
    similarity = rotational_similarity(_prepare_averages(stack[usable], SIMILARITY_BOX))
    first = np.random.default_rng(seed).integers(len(usable))
    chosen = (most_distinct(similarity, n, first) if max_similarity is None
              else pick_views(similarity, n, max_similarity, first))
    return _prepare_averages(stack[usable[chosen]], box)


# ---------------------------------------------------------------------------------------------
# Particles

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


# ---------------------------------------------------------------------------------------------
# CTF

CTF_KEYS = ("defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amplitude_contrast",
            "phase_shift", "bfactor")   # the per-particle arrays ctf.ctf_images takes


def _per_group(value, n_groups, name):
    v = np.atleast_1d(np.asarray(value, dtype=np.float64)).ravel()
    if len(v) == 1:
        return np.repeat(v, n_groups)
    if len(v) != n_groups:
        raise ValueError("%s has %d values for %d optics groups: give one, or one per group"
                         % (name, len(v), n_groups))
    return v


@dataclasses.dataclass(frozen=True)
class CtfSimulation:
    """How :func:`make_particles` modulates its particles by a CTF (RELION convention, :mod:`.ctf`).

    Per particle, the mean defocus is uniform in ``defocus_range`` (um, positive = underfocus); the
    astigmatism ``(dU - dV) / mean`` is uniform in ``[0, astigmatism]`` (dU >= dV, mean kept) at an
    angle uniform in [0, 180) degrees.  ``voltage`` (kV), ``cs`` (mm) and ``amplitude_contrast``
    are one value or one per optics group; there are ``n_optics_groups`` groups (default: as many as
    the longest of those), particles spread over them in equal shares at random.  ``pixel_size``
    (A/px) is common to all groups (one stack); ``bfactor`` (A^2, > 0 damps) common to all.
    The CTF is applied on a ``pad``-times larger box (zero padding, then cropped back), so the
    delocalised signal leaves the box as it would from a micrograph instead of wrapping around;
    ``pad=1`` applies it on the box itself (as ``relion_project --ctf`` does).  Keep
    ``lambda * defocus < (pad * box) * pixel_size^2`` or the CTF aliases near Nyquist (at 3 um,
    300 kV: pixel size >= 2.2 A/px for a 64 px box with ``pad=2``).
    """
    defocus_range: tuple = (0.8, 3.0)
    astigmatism: float = 0.05
    voltage: object = 300.0
    cs: object = 2.7
    amplitude_contrast: object = 0.1
    pixel_size: float = 2.5
    bfactor: float = 0.0
    n_optics_groups: int = None
    pad: int = 2

    def __post_init__(self):
        lo, hi = self.defocus_range
        if not 0 <= lo <= hi:
            raise ValueError("defocus_range must be 0 <= low <= high um, not %r" % (self.defocus_range,))
        if not 0 <= self.astigmatism < 2:
            raise ValueError("astigmatism is the relative difference (dU - dV) / mean in [0, 2), not %r"
                             % self.astigmatism)
        if not self.pixel_size > 0 or int(self.pad) < 1:
            raise ValueError("pixel_size must be > 0 and pad >= 1")
        if self.n_optics_groups is not None and self.n_optics_groups < 1:
            raise ValueError("n_optics_groups must be >= 1")
        self.optics()   # checks the per-group lengths and values

    @property
    def groups(self):
        if self.n_optics_groups is not None:
            return int(self.n_optics_groups)
        return max(np.size(self.voltage), np.size(self.cs), np.size(self.amplitude_contrast))

    def optics(self):
        """Per optics group: ``{voltage, cs, amplitude_contrast}`` arrays of ``groups`` values."""
        n = self.groups
        table = {"voltage": _per_group(self.voltage, n, "voltage"), "cs": _per_group(self.cs, n, "cs"),
                 "amplitude_contrast": _per_group(self.amplitude_contrast, n, "amplitude_contrast")}
        ctf_model.CtfParams(1e4, 1e4, 0.0, table["voltage"], table["cs"], table["amplitude_contrast"],
                            bfactor=self.bfactor)
        return table

    def draw(self, n, rng):
        """Per-particle CTF truth for ``n`` particles: a dict of ``CTF_KEYS`` arrays (A, degrees,
        kV, mm) plus ``optics_group`` (1-based) and ``pixel_size``."""
        optics = self.optics()
        group = class_labels(n, self.groups, rng)
        mean = rng.uniform(*self.defocus_range, n) * 1e4
        astig = rng.uniform(0.0, self.astigmatism, n) if self.astigmatism > 0 else np.zeros(n)
        angle = rng.uniform(0.0, 180.0, n)
        truth = {"defocus_u": mean * (1 + astig / 2), "defocus_v": mean * (1 - astig / 2),
                 "defocus_angle": angle, "phase_shift": np.zeros(n), "bfactor": np.full(n, float(self.bfactor))}
        truth.update({key: values[group] for key, values in optics.items()})
        truth["optics_group"] = group + 1
        truth["pixel_size"] = float(self.pixel_size)
        return truth


def particle_ctfs(ctf_truth, box, index=slice(None), rfft=True, pad=1):
    """The true CTFs of particles ``index`` of a ``ctf_truth`` dict (:meth:`CtfSimulation.draw`,
    :func:`read_truth_ctf`) on the ``pad * box`` Fourier grid, as :func:`.ctf.ctf_images` gives them."""
    return ctf_model.ctf_images(*(np.asarray(ctf_truth[k])[index] for k in CTF_KEYS), box=pad * box,
                                pixel_size=ctf_truth["pixel_size"], rfft=rfft)


def _apply_ctf_inplace(images, ctf_truth, pad):
    """Multiply each image's spectrum by its CTF on a zero-padded box, chunk by chunk."""
    n, box = len(images), images.shape[-1]
    big = int(pad) * box
    lo_px = big // 2 - box // 2           # keeps the image center at big // 2
    for lo in range(0, n, CTF_CHUNK):
        hi = min(lo + CTF_CHUNK, n)
        padded = np.zeros((hi - lo, big, big), dtype=np.float32)
        padded[:, lo_px:lo_px + box, lo_px:lo_px + box] = images[lo:hi]
        modulated = ctf_model.apply_ctf(padded, particle_ctfs(ctf_truth, box, slice(lo, hi), pad=int(pad)))
        images[lo:hi] = modulated[:, lo_px:lo_px + box, lo_px:lo_px + box]


def signal_variance(images, radius):
    """Variance of all pixels inside the mask of ``radius``, pooled over the whole set."""
    mask = circular_mask(images.shape[-1], radius)
    total = total2 = 0.0
    for lo in range(0, len(images), CHUNK):
        inside = images[lo:lo + CHUNK][:, mask].astype(np.float64)
        total += inside.sum()
        total2 += np.square(inside).sum()
    count = len(images) * mask.sum()
    return total2 / count - (total / count) ** 2


def noise_sigma(images, snr, radius):
    """Noise standard deviation giving ``snr`` = signal variance in the mask / noise variance."""
    if not snr > 0:
        raise ValueError("SNR must be > 0 (got %s); use inf for noise-free particles" % snr)
    return float(np.sqrt(signal_variance(images, radius) / snr))


def _add_noise_inplace(images, sigma, rng):
    """Add white noise of ``sigma`` chunk by chunk (float32 draws: fast, bounded memory)."""
    if sigma <= 0:
        return
    for lo in range(0, len(images), CHUNK):
        chunk = images[lo:lo + CHUNK]
        chunk += np.float32(sigma) * rng.standard_normal(chunk.shape, dtype=np.float32)


def add_noise(images, snr, radius, rng):
    """A noisy copy of ``images`` with white Gaussian noise, one sigma for the whole set.

    SNR is defined as the variance of the clean particles inside the circular mask of ``radius``
    (pooled over the whole set) divided by the noise variance; ``snr=inf`` adds nothing.
    """
    noisy = np.array(images, dtype=np.float32)
    _add_noise_inplace(noisy, noise_sigma(noisy, snr, radius), rng)
    return noisy


def make_particles(references, n_particles, snr, seed=0, shift_range=3.0, mirror=True, radius=None,
                   class_weights=None, ctf=None):
    """Noisy particles of known class and parameters.

    Returns ``images`` float32 ``(N, box, box)``, ``classes`` int ``(N,)`` 0-based and ``truth``
    ``(N, 4)`` with ``transform(clean_images, truth) ~ references[classes]``.  Classes are
    balanced (sizes equal within 1) unless ``class_weights`` is given (e.g.
    :func:`rare_view_weights`); SNR as in :func:`add_noise`, with ``radius`` defaulting to
    :func:`default_radius`.

    With ``ctf`` (a :class:`CtfSimulation`) each transformed clean image is multiplied by its own
    CTF in Fourier space before the noise, and a fourth value is returned: the per-particle CTF
    truth (:meth:`CtfSimulation.draw`).  The SNR is then that of the CTF-modulated signal (its
    variance inside the mask, pooled, over the noise variance), as RELION/cryoSPARC simulations
    take it; the clean signal's variance is several times larger, since the CTF damps the low
    frequencies to ``amplitude_contrast``.  The CTF values come from a separate random stream:
    for the same seed, classes, parameters and the normalised noise draws are the same as
    without CTF, and the output without ``ctf`` is what it always was.
    """
    references = np.ascontiguousarray(references, dtype=np.float32)
    box = references.shape[-1]
    rng = np.random.default_rng(seed)
    classes = class_labels(n_particles, len(references), rng, class_weights)
    truth = random_parameters(n_particles, rng, shift_range, mirror)
    undo = inverse(truth) if n_particles else truth
    images = np.empty((n_particles, box, box), dtype=np.float32)
    for lo in range(0, n_particles, CHUNK):
        hi = lo + CHUNK
        images[lo:hi] = transform(references[classes[lo:hi]], undo[lo:hi])
    if ctf is not None:
        ctf_truth = ctf.draw(n_particles, _stream(seed, 0))
        _apply_ctf_inplace(images, ctf_truth, ctf.pad)
    radius = default_radius(box) if radius is None else radius
    _add_noise_inplace(images, noise_sigma(images, snr, radius), rng)
    if ctf is not None:
        return images, classes, truth, ctf_truth
    return images, classes, truth


# ---------------------------------------------------------------------------------------------
# Files

TRUTH_COLUMNS = ["rlnImageId", "rlnClassNumber", "rlnAnglePsi", "rlnOriginX", "rlnOriginY", "rlnIsFlip"]


CTF_TRUTH_COLUMNS = [("rlnOpticsGroup", "optics_group"), ("rlnDefocusU", "defocus_u"),
                     ("rlnDefocusV", "defocus_v"), ("rlnDefocusAngle", "defocus_angle"),
                     ("rlnPhaseShift", "phase_shift"), ("rlnCtfBfactor", "bfactor"),
                     ("rlnVoltage", "voltage"), ("rlnSphericalAberration", "cs"),
                     ("rlnAmplitudeContrast", "amplitude_contrast")]
OPTICS_COLUMNS = ["rlnOpticsGroup", "rlnOpticsGroupName", "rlnVoltage", "rlnSphericalAberration",
                  "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize", "rlnImageDimensionality",
                  "rlnCtfDataArePhaseFlipped"]
PARTICLE_CTF_COLUMNS = ["rlnOpticsGroup", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift",
                        "rlnCtfBfactor"]
SOURCES = ["phantom", "slicem", "phantom-pairs", "phantom-arc", "phantom-cap"]
CONTINUOUS = {"phantom-arc": ("arc", 90.0), "phantom-cap": ("cap", 30.0)}   # mode, default extent


def make_references(source, n_classes, box, seed=0, max_similarity=None):
    """References from ``source``: 'phantom' (:func:`phantom_views`), 'slicem'
    (:func:`slicem_references`) or 'phantom-pairs' (:func:`phantom_pairs`, views 2i and 2i+1 a
    near-duplicate pair); ``max_similarity`` caps the mutual similarity instead of minimising it
    (phantom and slicem, :func:`pick_views`)."""
    if source == "phantom":
        return phantom_views(n_classes, box, seed, max_similarity)
    if source == "slicem":
        return slicem_references(n_classes, box, seed, max_similarity=max_similarity)
    if source == "phantom-pairs":
        return phantom_pairs(n_classes, box, seed)[0]
    raise ValueError("unknown reference source %r: use 'phantom', 'slicem' or 'phantom-pairs' (the "
                     "continuous sources have no references: see make_dataset)" % source)


def _direction_angles(directions):
    """RELION's (rot, tilt) in degrees of unit directions: d = (cos rot sin tilt, sin rot sin tilt, cos tilt)."""
    rot = np.rad2deg(np.arctan2(directions[:, 1], directions[:, 0]))
    tilt = np.rad2deg(np.arccos(np.clip(directions[:, 2], -1.0, 1.0)))
    return rot, tilt


def make_dataset(out_dir, n_particles=1000, box=64, n_classes=10, snr=1.0, seed=0, source="phantom",
                 shift_range=3.0, mirror=True, *, class_weights=None, rare_fraction=None, ctf=None,
                 max_similarity=None, extent=None):
    """Write a synthetic data set to ``out_dir`` and return its paths by role.

    ``particles.mrcs`` + ``particles.star`` (table ``particles``: rlnImageId, rlnImageName) are
    the input; ``truth.star`` (table ``truth``: 1-based rlnClassNumber and the true parameters in
    the engine convention) and ``references.mrcs`` (clean references) are the answer.

    Options (all off by default, and then the files are exactly what they always were):

    * ``class_weights`` (one per class) or ``rare_fraction`` (:func:`rare_view_weights`: the last
      class gets that fraction, e.g. 0.03) make the classes unequal;
    * ``max_similarity``: references as alike as that cap allows (:func:`pick_views`);
    * ``source='phantom-pairs'``: ``n_classes`` (even) views in near-duplicate pairs 2i, 2i+1;
    * ``source='phantom-arc'`` / ``'phantom-cap'``: every particle from its own direction on an arc
      of ``extent`` degrees (default 90) / a cap of half-angle ``extent`` (default 30), see
      :func:`continuous_views`.  There are no true classes: ``truth.star`` gains the true direction
      (rlnAngleRot, rlnAngleTilt, RELION's direction convention; the in-plane frame is the
      generator's), rlnClassNumber holds the :func:`ideal_partition` into ``n_classes`` (a
      baseline, not a truth) and ``references.mrcs`` the projections at its mean directions;
    * ``ctf`` (a :class:`CtfSimulation`): CTF-modulated particles; ``particles.star`` is then
      RELION 3.1 style, a ``data_optics`` table (one row per optics group) before
      ``data_particles`` with each particle's rlnOpticsGroup, rlnDefocusU/V (A), rlnDefocusAngle,
      rlnPhaseShift (0) and rlnCtfBfactor; ``truth.star`` gains the same per-particle values and
      the group's voltage, Cs and amplitude contrast (:func:`read_truth_ctf`); the stacks carry the
      pixel size.
    """
    from .mrc import write_stack
    from .star import write_star
    if rare_fraction is not None:
        if class_weights is not None:
            raise ValueError("give class_weights or rare_fraction, not both")
        class_weights = rare_view_weights(n_classes, rare_fraction)
    directions = None
    if source in CONTINUOUS and (class_weights is not None or max_similarity is not None):
        raise ValueError("%s has no discrete classes: class weights, a rare view or max_similarity "
                         "do not apply" % source)
    if source == "phantom-pairs" and max_similarity is not None:
        raise ValueError("phantom-pairs sets its own similarities: leave max_similarity out")
    if extent is not None and source not in CONTINUOUS:
        raise ValueError("extent is for the continuous sources (%s)" % ", ".join(CONTINUOUS))
    if source in CONTINUOUS:
        mode, default_extent = CONTINUOUS[source]
        views, view_directions = continuous_views(n_particles, box, seed, mode,
                                                  default_extent if extent is None else extent)
        made = make_particles(views, n_particles, snr, seed, shift_range, mirror, ctf=ctf)
        directions = view_directions[made[1]]
        classes = ideal_partition(directions, n_classes, seed)
        references = direction_views(_class_axes(classes, directions, False)[0], box, seed)
        made = (made[0], classes) + tuple(made[2:])
    else:
        references = make_references(source, n_classes, box, seed, max_similarity)
        made = make_particles(references, n_particles, snr, seed, shift_range, mirror,
                              class_weights=class_weights, ctf=ctf)
    images, classes, truth = made[:3]
    ctf_truth = made[3] if ctf is not None else None
    pixel_size = None if ctf is None else ctf.pixel_size
    os.makedirs(out_dir, exist_ok=True)
    paths = {role: os.path.join(out_dir, name) for role, name in
             [("particles", "particles.mrcs"), ("particles_star", "particles.star"),
              ("truth", "truth.star"), ("references", "references.mrcs")]}
    write_stack(paths["particles"], images, pixel_size)
    write_stack(paths["references"], references, pixel_size)
    ids = range(1, n_particles + 1)
    names = ["%06d@particles.mrcs" % i for i in ids]
    truth_columns = list(TRUTH_COLUMNS)
    truth_rows = [[i, int(k) + 1, float(p[PSI]), float(p[SX]), float(p[SY]), int(p[MIRROR])]
                  for i, k, p in zip(ids, classes, truth)]
    if ctf_truth is None:
        write_star(paths["particles_star"], {"particles": (
            ["rlnImageId", "rlnImageName"], [(i, n) for i, n in zip(ids, names)])})
    else:
        optics = ctf.optics()
        write_star(paths["particles_star"], {
            "optics": (OPTICS_COLUMNS, [
                (g + 1, "opticsGroup%d" % (g + 1), float(optics["voltage"][g]), float(optics["cs"][g]),
                 float(optics["amplitude_contrast"][g]), float(ctf.pixel_size), int(box), 2, 0)
                for g in range(ctf.groups)]),
            "particles": (["rlnImageId", "rlnImageName"] + PARTICLE_CTF_COLUMNS, [
                (i, n, int(ctf_truth["optics_group"][j])) + tuple(
                    float(ctf_truth[key][j]) for key in ("defocus_u", "defocus_v", "defocus_angle",
                                                         "phase_shift", "bfactor"))
                for j, (i, n) in enumerate(zip(ids, names))])})
        truth_columns += [column for column, _ in CTF_TRUTH_COLUMNS] + ["rlnImagePixelSize"]
        for j, row in enumerate(truth_rows):
            row += [int(ctf_truth[key][j]) if key == "optics_group" else float(ctf_truth[key][j])
                    for _, key in CTF_TRUTH_COLUMNS] + [float(ctf.pixel_size)]
    if directions is not None:
        truth_columns += ["rlnAngleRot", "rlnAngleTilt"]
        for row, rot, tilt in zip(truth_rows, *_direction_angles(directions)):
            row += [float(rot), float(tilt)]
    write_star(paths["truth"], {"truth": (truth_columns, [tuple(r) for r in truth_rows])})
    return paths


def read_truth(path):
    """``(classes 0-based, truth (N, 4))`` from a ``truth.star`` written by :func:`make_dataset`,
    in rlnImageId order."""
    from .star import read_star
    rows = sorted(read_star(path, "truth"), key=lambda r: int(r.rlnImageId))
    classes = np.array([int(r.rlnClassNumber) - 1 for r in rows], dtype=np.int64)
    truth = np.array([[float(r.rlnAnglePsi), float(r.rlnOriginX), float(r.rlnOriginY), float(r.rlnIsFlip)]
                      for r in rows]).reshape(-1, 4)
    return classes, truth


def read_truth_ctf(path):
    """The per-particle CTF truth of a ``truth.star`` (rlnImageId order) as :meth:`CtfSimulation.draw`
    gives it (feed it to :func:`particle_ctfs`), or None for a data set made without CTF."""
    from .star import read_star
    table = read_star(path, "truth")
    if not table.hasColumn("rlnDefocusU"):
        return None
    rows = sorted(table, key=lambda r: int(r.rlnImageId))
    out = {key: np.array([float(getattr(r, column)) for r in rows]) for column, key in CTF_TRUTH_COLUMNS}
    out["optics_group"] = out["optics_group"].astype(np.int64)
    out["pixel_size"] = float(rows[0].rlnImagePixelSize) if rows else None
    return out


def read_truth_directions(path):
    """True unit directions ``(N, 3)`` (rlnImageId order) of a continuous data set's ``truth.star``,
    or None if it has none."""
    from .star import read_star
    table = read_star(path, "truth")
    if not table.hasColumn("rlnAngleTilt"):
        return None
    rows = sorted(table, key=lambda r: int(r.rlnImageId))
    rot, tilt = (np.deg2rad([float(getattr(r, c)) for r in rows]) for c in ("rlnAngleRot", "rlnAngleTilt"))
    return np.stack([np.cos(rot) * np.sin(tilt), np.sin(rot) * np.sin(tilt), np.cos(tilt)], axis=1)


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


def _ctf_from_args(args, parser):
    """A CtfSimulation if --ctf or any CTF option was given, else None."""
    given = {name: getattr(args, name) for name in ("defocus", "astigmatism", "voltage", "cs",
                                                     "amplitude_contrast", "pixel_size", "bfactor",
                                                     "optics_groups", "ctf_pad")}
    if not args.ctf and all(v is None for v in given.values()):
        return None
    defaults = CtfSimulation()
    pick = lambda name, default: default if given[name] is None else given[name]
    try:
        return CtfSimulation(
            defocus_range=tuple(pick("defocus", defaults.defocus_range)),
            astigmatism=pick("astigmatism", defaults.astigmatism),
            voltage=tuple(pick("voltage", [defaults.voltage])), cs=tuple(pick("cs", [defaults.cs])),
            amplitude_contrast=tuple(pick("amplitude_contrast", [defaults.amplitude_contrast])),
            pixel_size=pick("pixel_size", defaults.pixel_size), bfactor=pick("bfactor", defaults.bfactor),
            n_optics_groups=given["optics_groups"], pad=pick("ctf_pad", defaults.pad))
    except Exception as e:
        parser.error(str(e))


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write a synthetic particle set with known truth.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--particles", type=int, default=1000)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10,
                        help="classes (views); for the continuous sources the K of the ideal partition")
    parser.add_argument("--snr", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", choices=SOURCES, default="phantom",
                        help="phantom / slicem: distinct views; phantom-pairs: near-duplicate pairs; "
                             "phantom-arc / phantom-cap: continuous directions")
    parser.add_argument("--shift-range", type=float, default=3.0)
    parser.add_argument("--no-mirror", action="store_true", help="no mirrored particles")
    hard = parser.add_argument_group("harder sets")
    hard.add_argument("--class-weights", type=float, nargs="+", help="one weight per class")
    hard.add_argument("--rare-fraction", type=float, help="the last class gets this fraction (e.g. 0.03)")
    hard.add_argument("--max-similarity", type=float,
                      help="views as alike as this cap on their rotational similarity allows")
    hard.add_argument("--extent", type=float,
                      help="degrees of the arc (default 90) / half-angle of the cap (default 30)")
    ctf = parser.add_argument_group("CTF (any of these turns it on)")
    ctf.add_argument("--ctf", action="store_true", help="CTF-modulated particles (RELION 3.1 STAR)")
    ctf.add_argument("--defocus", type=float, nargs=2, metavar=("LOW", "HIGH"),
                     help="defocus range in um (default 0.8 3.0)")
    ctf.add_argument("--astigmatism", type=float, help="max (dU - dV) / mean (default 0.05)")
    ctf.add_argument("--voltage", type=float, nargs="+", help="kV, one or one per optics group (default 300)")
    ctf.add_argument("--cs", type=float, nargs="+", help="mm, one or one per optics group (default 2.7)")
    ctf.add_argument("--amplitude-contrast", type=float, nargs="+", help="one or one per group (default 0.1)")
    ctf.add_argument("--pixel-size", type=float, help="A/px (default 2.5)")
    ctf.add_argument("--bfactor", type=float, help="CTF B-factor in A^2 (default 0)")
    ctf.add_argument("--optics-groups", type=int, help="number of optics groups (default: as many as "
                                                       "--voltage/--cs values)")
    ctf.add_argument("--ctf-pad", type=int, help="apply the CTF on a box this many times larger (default 2)")
    args = parser.parse_args(argv)
    try:
        paths = make_dataset(args.out, args.particles, args.box, args.classes, args.snr, args.seed,
                             args.source, args.shift_range, not args.no_mirror,
                             class_weights=args.class_weights, rare_fraction=args.rare_fraction,
                             ctf=_ctf_from_args(args, parser), max_similarity=args.max_similarity,
                             extent=args.extent)
    except ValueError as e:
        parser.error(str(e))
    for role, path in paths.items():
        print("%-15s %s" % (role, path))


if __name__ == "__main__":
    main()
