"""Real class averages (SLICEM) as references: usable ones, resampled, masked and standardised."""
import os

import numpy as np

from .conventions import _standardise
from .similarity import SIMILARITY_BOX, most_distinct, pick_views, rotational_similarity

SLICEM_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),   # engine/data
                           "data", "mixture_2D.mrcs")


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
    from ..mrc import read_stack
    stack = read_stack(path or SLICEM_PATH)
    usable = _centered_averages(stack)
    similarity = rotational_similarity(_prepare_averages(stack[usable], SIMILARITY_BOX))
    first = np.random.default_rng(seed).integers(len(usable))
    chosen = (most_distinct(similarity, n, first) if max_similarity is None
              else pick_views(similarity, n, max_similarity, first))
    return _prepare_averages(stack[usable[chosen]], box)
