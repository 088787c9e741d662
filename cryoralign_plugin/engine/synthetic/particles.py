"""Noisy particles of known class and parameters (and CTF) from references, and the SNR's noise."""
import numpy as np

from ..geometry import inverse
from ..images import circular_mask, transform
from .conventions import _stream, default_radius
from .ctf_sim import _apply_ctf_inplace
from .parameters import class_labels, random_parameters

CHUNK = 2048             # particles transformed / noised at a time: bounds temporary memory


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
