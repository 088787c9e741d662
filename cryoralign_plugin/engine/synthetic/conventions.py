"""What every generator shares: the SNR mask, the standardised view, independent random streams."""
import numpy as np

from ..images import circular_mask


def default_radius(box):
    """Mask radius of the SNR definition (0.4 box): the particle plus its shift stays inside."""
    return 0.4 * box


def _standardise(images):
    """Unit variance inside the default mask, background left at zero (rotations add no edges)."""
    box = images.shape[-1]
    sigma = images[:, circular_mask(box, default_radius(box))].std(axis=1, dtype=np.float64)
    return (images / sigma[:, None, None]).astype(np.float32)


def _stream(seed, key):
    """An independent random stream ``key`` of ``seed`` (a spawned SeedSequence child), so that
    options drawing extra numbers leave the main stream of ``default_rng(seed)`` untouched:
    0 CTF, 1 continuous directions, 2 pair tilt axes."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key,)))
