"""2D embedding of aligned particle images (PCA, or t-SNE when scikit-learn is installed).

Particles are normalised as the engine normalises them, brought into register with the engine's
parameters and masked, so they live in the same space as the class averages (which are means of
exactly those images): a linear map such as PCA then puts each average at its class's centroid.
"""
import numpy as np

from ..engine import images as imgops

MAX_POINTS = 3000
TSNE_INPUT_DIMS = 30


def has_tsne():
    try:
        import sklearn.manifold  # noqa: F401  (optional; not a dependency)
    except ImportError:
        return False
    return True


def subsample(n, max_points=MAX_POINTS, seed=0):
    """Sorted indices of at most ``max_points`` of ``n`` particles (all when there are fewer)."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))


def aligned_vectors(images, params, radius):
    """Normalised, aligned (engine ``transform``) images as rows of the pixels inside ``radius``."""
    aligned = imgops.transform(imgops.normalise(images, radius), params)
    return aligned[:, imgops.circular_mask(aligned.shape[-1], radius)]


def masked_vectors(images, radius):
    """Averages as rows of the pixels inside ``radius`` (no normalisation: they already match)."""
    images = np.asarray(images, dtype=np.float32)
    return images[:, imgops.circular_mask(images.shape[-1], radius)]


def pca(vectors, extra=None, dims=2):
    """Project ``vectors`` (and ``extra`` with the same axes) on their first ``dims`` principal axes."""
    mean = vectors.mean(axis=0)
    _, _, axes = np.linalg.svd(vectors - mean, full_matrices=False)
    axes = axes[:dims]
    project = lambda v: (np.asarray(v, np.float64) - mean) @ axes.T   # noqa: E731
    return project(vectors), (None if extra is None else project(extra))


def tsne(vectors, extra=None, seed=0):
    """t-SNE of ``vectors`` and ``extra`` together (t-SNE cannot place new points afterwards)."""
    from sklearn.manifold import TSNE
    both = vectors if extra is None else np.vstack([vectors, extra])
    reduced, _ = pca(both, dims=min(TSNE_INPUT_DIMS, *both.shape))
    perplexity = float(min(30, max(2, (len(both) - 1) // 3)))
    points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)
    return points[:len(vectors)], (None if extra is None else points[len(vectors):])


def embed(vectors, extra=None, method="PCA", seed=0):
    """``(points, extra_points)`` in 2D by ``method`` ('PCA' or 't-SNE')."""
    if method == "t-SNE":
        return tsne(vectors, extra, seed)
    return pca(vectors, extra)
