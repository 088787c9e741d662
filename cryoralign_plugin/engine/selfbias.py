"""The self-inclusion bias of a particle's score against its own class's reference, and its removal.

A class reference is the (filtered) average of its members, so each member's own noise is in it,
weighted 1 / n_k: the member correlates with that noise and scores higher against its class than it
would against a reference of the other members.  At low SNR this lift is of the order of the
assignment margins (SLICEM views, SNR 0.02, 150 particles per class: 0.003-0.007 against a mean
margin of 0.013), so hard assignment keeps particles where they are and a run from random starts
stays near its first, noise-driven partition.  Here the expected lift is computed per class and
taken off the member's score before the classes are chosen (the scores kept with the particles are
the raw ones): for white noise ``x`` (normalised as the particles are) through the search's polar
resampling, ``<x, F_k x> / (|x| |r_k| n_k)``, where ``F_k`` is the class's low-pass filter and
``r_k`` its reference.  That is the lift at a fixed pose; the search then takes each score's maximum
over poses, and without its own noise a member's best pose moves to recover part of the lift, the
more so the flatter its pose landscape, i.e. the lower the cutoff.  So the fixed-pose lift is scaled
by :data:`AFTER_POSE_MAX`, the leave-one-out lift after the search's maximum over that at a fixed pose,
measured per cutoff (SLICEM views, 1500 particles of 64 px, SNR 0.02 and 0.05, from the true views
and from random particles, iterations 1-10: 0.39 at 0.05 cycles/px, 0.77 at 0.07-0.13, 0.85 at
0.13-0.20) and interpolated linearly between (the end values beyond).

Every value is a function of the references, their cutoffs and class sizes (the checkpoint's), and of
fixed noise images, so it is the same on every rank and after ``--continue``.
"""
import numpy as np

from . import images as imgops
from . import search

NOISE_IMAGES = 256   # white-noise images of the probe (fixed seed: the same on every rank)
AFTER_POSE_MAX = ((0.05, 0.10, 0.15), (0.39, 0.77, 0.85))   # (cutoffs, cycles/px; scale): see above


class NoiseProbe:
    """Fixed white-noise images through the search's polar resampling, prepared once per run."""

    def __init__(self, backend, grid, box, radius):
        rng = np.random.default_rng(0)
        self.images = imgops.normalise(rng.standard_normal((NOISE_IMAGES, box, box)).astype(np.float32), radius)
        self.backend, self.grid, self.box = backend, grid, box
        self.area = np.repeat(grid.area, grid.lengths).astype(np.float64)
        self.rings = self._rings(self.images)
        self.norms = np.sqrt((self.rings ** 2) @ self.area)

    def _rings(self, images):
        """Rings (float64) of ``images`` around the box center, with zero area-weighted mean."""
        center = np.full((len(images), 2), float(self.box // 2))
        rings = self.backend.polar(images, np.arange(len(images)), center, self.grid).astype(np.float64)
        return rings - (rings @ self.area / self.area.sum())[:, None]

    def self_bias(self, refs, cutoffs, sizes):
        """Per class, the expected lift of a member's best score by its own noise in the class
        reference (0 for an empty class); ``cutoffs`` are the references' low-pass cutoffs (cycles/px)."""
        return self.fixed_pose_bias(refs, cutoffs, sizes) * np.interp(cutoffs, *AFTER_POSE_MAX)

    def fixed_pose_bias(self, refs, cutoffs, sizes):
        """Per class, the expected lift of a member's score at a fixed pose (0 for an empty class)."""
        norm_r = np.sqrt((self._rings(refs) ** 2) @ self.area)
        bias = np.zeros(len(refs))
        own = {}   # per cutoff: they take few values (multiples of 1 / box)
        for k in np.flatnonzero(np.asarray(sizes) > 0):
            if cutoffs[k] not in own:
                filtered = self._rings(imgops.lowpass_tanh(self.images, cutoffs[k]))
                own[cutoffs[k]] = float(((self.rings * filtered) @ self.area / self.norms).mean())
            bias[k] = own[cutoffs[k]] / (max(norm_r[k], 1e-12) * sizes[k])
        return bias


def debiased(cand, own, bias):
    """``(cand, ranking)``: each particle's candidates re-ordered by ``ranking``, their scores less the
    ``bias`` of the class the particle was in (``own``; -1: none), best first (ties: the lower
    reference).  ``cand.score`` stays the raw score, as the references give it.  ``cand`` is re-ordered
    in place, a field at a time, so that a pass's candidates are not held twice."""
    own = np.asarray(own)
    ranking = np.asarray(cand.score, np.float64).copy()
    hit = cand.reference == own[:, None]
    ranking[hit] -= np.broadcast_to(bias[np.maximum(own, 0)][:, None], hit.shape)[hit]
    order = np.lexsort((cand.reference, -ranking), axis=1)
    for f in ("reference", "score", "shift", "mirror", "angle"):
        setattr(cand, f, np.take_along_axis(getattr(cand, f), order, axis=1))
    return cand, np.take_along_axis(ranking, order, axis=1)
