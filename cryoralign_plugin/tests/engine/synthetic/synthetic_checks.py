"""What the synthetic generator's tests share: their box, and the masked correlation of image pairs."""
import numpy as np

from cryoralign_plugin.engine import synthetic as syn
from cryoralign_plugin.engine.images import circular_mask

BOX = 64


def masked_corr(a, b, box=BOX):
    """Correlation of each pair ``a[i]``, ``b[i]`` inside the SNR mask (the particle, not the background)."""
    mask = circular_mask(box, syn.default_radius(box))
    return np.array([np.corrcoef(x[mask], y[mask])[0, 1] for x, y in zip(a, b)])
