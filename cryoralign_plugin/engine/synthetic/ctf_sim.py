"""Simulated CTF: per-particle defocus and optics groups drawn, and applied on a padded box."""
import dataclasses

import numpy as np

from .. import ctf as ctf_model
from .parameters import class_labels

CTF_CHUNK = 512          # particles CTF-modulated at a time (padded float64 temporaries)
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
    """How :func:`make_particles` modulates its particles by a CTF (RELION convention, :mod:`..ctf`).

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
    :func:`read_truth_ctf`) on the ``pad * box`` Fourier grid, as :func:`..ctf.ctf_images` gives them."""
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
