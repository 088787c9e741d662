"""Independent references for the engine's tests: brute-force answers computed without its search."""
import numpy as np

from cryoralign_plugin.engine import images as imgops


def registered(average, view, step=1.0):
    """``view`` rotated (every ``step`` degrees), mirrored and shifted (whole px) to match ``average``
    best, by brute-force cross-correlation."""
    box = view.shape[-1]
    angles = np.arange(0.0, 360.0, step)
    target = np.fft.rfft2(average)
    best = (-np.inf, None)
    for mirror in (0, 1):
        params = np.column_stack([angles, np.zeros((len(angles), 2)), np.full(len(angles), mirror)])
        moved = imgops.transform(np.repeat(view[None], len(angles), axis=0), params)
        corr = np.fft.irfft2(target[None] * np.conj(np.fft.rfft2(moved)), s=(box, box))
        i = np.unravel_index(np.argmax(corr), corr.shape)
        if corr[i] > best[0]:
            dy, dx = [(v + box // 2) % box - box // 2 for v in i[1:]]
            best = (corr[i], imgops.fourier_shift(moved[i[0]], dx, dy))
    return best[1]
