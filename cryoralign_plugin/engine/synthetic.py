"""Synthetic particle stacks with known ground truth (class, rotation, shift, mirror).

Tests, the demo and the benchmarks need particles whose answer is known.  A particle's true
parameters follow the engine convention of :mod:`.geometry`: they bring the particle into register
with its reference, ``transform(clean_particle, truth) ~ reference``.  So a clean particle is made
as ``transform(reference, inverse(truth))`` and white noise is added on top.

References are either projections of one random asymmetric blob phantom (:func:`phantom_views`)
or real class averages from SLICEM (:func:`slicem_references`); in both cases the most mutually
distinct ones are chosen, so that a classifier has a well-defined answer to find.
"""
import argparse
import os

import numpy as np

from .geometry import MIRROR, PSI, SX, SY, combine, inverse
from .images import circular_mask, transform

SLICEM_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "mixture_2D.mrcs")
CHUNK = 2048             # particles transformed / noised at a time: bounds temporary memory
SIMILARITY_BOX = 32      # views are compared at this size: large-scale shape is what survives noise
SIMILARITY_ANGLES = 72   # in-plane rotations tried (5 degree steps) when comparing two views
PHANTOM_CANDIDATES = 256  # random view directions the distinct views are chosen from


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


def _project(blobs, directions, box):
    """Analytic projections, ``(V, box, box)``: a 3D Gaussian projects to the 2D Gaussian of the
    xy block of its rotated covariance, carrying all of its mass."""
    centers, cov, mass = blobs
    bases = _view_bases(directions)
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


def phantom_views(n_views, box, seed=0):
    """``n_views`` projections ``(n_views, box, box)`` float32 of one random asymmetric phantom.

    Directions are chosen greedily from random candidates so the views are as unlike each other
    as possible after any in-plane rotation and mirror (compared at low resolution, where a
    noisy classifier sees them).  Background zero, unit variance inside the default mask.
    """
    rng = np.random.default_rng(seed)
    blobs = _phantom_blobs(rng)
    directions = rng.standard_normal((max(PHANTOM_CANDIDATES, 4 * n_views), 3))
    similarity = rotational_similarity(_project(blobs, directions, SIMILARITY_BOX))
    return _standardise(_project(blobs, directions[most_distinct(similarity, n_views)], box))


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


def slicem_references(n, box, seed=0, path=None):
    """``n`` mutually distinct real class averages ``(n, box, box)`` float32 from SLICEM.

    From the 100 averages of ``mixture_2D.mrcs`` (96 px; MIT, github marcottelab/SLICEM) those
    with density at the edge are dropped, then ``n`` are chosen greedily to be least alike after
    rotation/mirror, starting from one drawn with ``seed``.  Resampled to ``box`` (whole field
    of view kept), background zero, soft-masked, unit variance inside the default mask.
    """
    from .mrc import read_stack
    stack = read_stack(path or SLICEM_PATH)
    usable = _centered_averages(stack)
    similarity = rotational_similarity(_prepare_averages(stack[usable], SIMILARITY_BOX))
    first = np.random.default_rng(seed).integers(len(usable))
    return _prepare_averages(stack[usable[most_distinct(similarity, n, first)]], box)


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
                   class_weights=None):
    """Noisy particles of known class and parameters.

    Returns ``images`` float32 ``(N, box, box)``, ``classes`` int ``(N,)`` 0-based and ``truth``
    ``(N, 4)`` with ``transform(clean_images, truth) ~ references[classes]``.  Classes are
    balanced (sizes equal within 1) unless ``class_weights`` is given; SNR as in
    :func:`add_noise`, with ``radius`` defaulting to :func:`default_radius`.
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
    radius = default_radius(box) if radius is None else radius
    _add_noise_inplace(images, noise_sigma(images, snr, radius), rng)
    return images, classes, truth


# ---------------------------------------------------------------------------------------------
# Files

TRUTH_COLUMNS = ["rlnImageId", "rlnClassNumber", "rlnAnglePsi", "rlnOriginX", "rlnOriginY", "rlnIsFlip"]


def make_references(source, n_classes, box, seed=0):
    """References from ``source``: 'phantom' (:func:`phantom_views`) or 'slicem'."""
    if source == "phantom":
        return phantom_views(n_classes, box, seed)
    if source == "slicem":
        return slicem_references(n_classes, box, seed)
    raise ValueError("unknown reference source %r: use 'phantom' or 'slicem'" % source)


def make_dataset(out_dir, n_particles=1000, box=64, n_classes=10, snr=1.0, seed=0, source="phantom",
                 shift_range=3.0, mirror=True):
    """Write a synthetic data set to ``out_dir`` and return its paths by role.

    ``particles.mrcs`` + ``particles.star`` (table ``particles``: rlnImageId, rlnImageName) are
    the input; ``truth.star`` (table ``truth``: 1-based rlnClassNumber and the true parameters in
    the engine convention) and ``references.mrcs`` (clean references) are the answer.
    """
    from .mrc import write_stack
    from .star import write_star
    references = make_references(source, n_classes, box, seed)
    images, classes, truth = make_particles(references, n_particles, snr, seed, shift_range, mirror)
    os.makedirs(out_dir, exist_ok=True)
    paths = {role: os.path.join(out_dir, name) for role, name in
             [("particles", "particles.mrcs"), ("particles_star", "particles.star"),
              ("truth", "truth.star"), ("references", "references.mrcs")]}
    write_stack(paths["particles"], images)
    write_stack(paths["references"], references)
    ids = range(1, n_particles + 1)
    write_star(paths["particles_star"], {"particles": (
        ["rlnImageId", "rlnImageName"], [(i, "%06d@particles.mrcs" % i) for i in ids])})
    write_star(paths["truth"], {"truth": (TRUTH_COLUMNS, [
        (i, int(k) + 1, float(p[PSI]), float(p[SX]), float(p[SY]), int(p[MIRROR]))
        for i, k, p in zip(ids, classes, truth)])})
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


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write a synthetic particle set with known truth.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--particles", type=int, default=1000)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--snr", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", choices=["phantom", "slicem"], default="phantom")
    parser.add_argument("--shift-range", type=float, default=3.0)
    parser.add_argument("--no-mirror", action="store_true", help="no mirrored particles")
    args = parser.parse_args(argv)
    paths = make_dataset(args.out, args.particles, args.box, args.classes, args.snr, args.seed,
                         args.source, args.shift_range, not args.no_mirror)
    for role, path in paths.items():
        print("%-15s %s" % (role, path))


if __name__ == "__main__":
    main()
