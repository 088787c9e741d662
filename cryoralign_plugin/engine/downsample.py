"""The internal box: where a run searches and averages, and the Fourier crop that takes particles there.

2D classification needs no more resolution than its references can reach, so, as cryoSPARC, SIMPLE
and ISAC do, particles are aligned at the smallest box whose Nyquist frequency reaches the maximum
resolution (:data:`~.settings.MAX_RESOLUTION` by default) and that still holds the mask plus the shift
range (and, with the automatic resolution, a mask radius of :data:`~.settings.AUTO_MASK_RADIUS` px).  :func:`plan` chooses that box (and refuses options that cannot work, in one line each);
:class:`CroppedSource` gives the particles Fourier-cropped to it.  The crop keeps the spectrum below
the internal Nyquist frequency as it is (no interpolation): a cropped image holds the samples, on the
coarser grid, of the band-limited image (the same function, so pixel values keep their scale).

Units: every pixel-valued option is in input pixels and :class:`Scale` turns it into internal
pixels (divided by ``factor = box / internal_box``); outputs go back to input pixels.
"""
import dataclasses
import math

import numpy as np

from . import search
from .errors import InputError
from .geometry import SX, SY, largest_radius, polar_grid, sampling_limit
from .image_cache import CachedSource
from .images import fourier_crop
from .parallel import cpu_threads
from .settings import AUTO_MASK_RADIUS, MAX_RESOLUTION, MIN_MASK_RADIUS, SHIFT_RANGE, SHIFT_STEP

CHUNK_BYTES = 64 << 20   # input images cropped at a time (bounds the spectra of a large batch)


def _friendly(m):
    """True if ``m`` has no prime factor above 5 (fast FFT sizes)."""
    for p in (2, 3, 5):
        while m % p == 0:
            m //= p
    return m == 1


def _candidates(least, box):
    """Even FFT-friendly boxes from ``least`` up to (not including) ``box``, then ``box`` itself."""
    m = max(2, int(least) + int(least) % 2)
    while m < box:
        if _friendly(m):
            yield m
        m += 2
    yield box


@dataclasses.dataclass(frozen=True)
class Scale:
    """The internal box of a run and the pixel-valued options in its pixels.

    ``radius`` (int), ``shift_range`` and ``shift_step`` are in internal px; ``factor`` is the input
    box over the internal box (1: no cropping); ``pixel_size`` is the input's (A/px, or None).
    """
    box: int
    internal_box: int
    radius: int
    shift_range: float
    shift_step: float
    pixel_size: float = None

    @property
    def factor(self):
        return self.box / self.internal_box

    @property
    def crops(self):
        return self.internal_box < self.box

    @property
    def internal_pixel_size(self):
        return None if self.pixel_size is None else self.pixel_size * self.factor

    def internal(self, settings):
        """``settings`` with radius and shifts in internal px (what the search and averages use)."""
        return dataclasses.replace(settings, radius=self.radius, shift_range=self.shift_range,
                                   shift_step=self.shift_step, mask_diameter=None)

    def to_input(self, params):
        """Alignment parameters with their shifts in input px."""
        out = np.array(params, np.float64)
        out[:, [SX, SY]] *= self.factor
        return out

    def describe(self):
        """The log line, e.g. ``internal box 64 px at 4.69 A/px (from 256 px at 1.17 A/px)``."""
        if self.pixel_size is None:
            sizes = ("", "")
        else:
            sizes = (" at %.3g A/px" % self.internal_pixel_size, " at %.3g A/px" % self.pixel_size)
        if not self.crops:
            return "internal box %d px%s (the input box: no downsampling)" % (self.box, sizes[1])
        return "internal box %d px%s (from %d px%s, factor %.3g)" % (self.internal_box, sizes[0], self.box,
                                                                   sizes[1], self.factor)


def _shifts(settings, factor):
    shift = SHIFT_RANGE if settings.shift_range is None else settings.shift_range / factor
    step = SHIFT_STEP if settings.shift_step is None else settings.shift_step / factor
    return shift, step


def _radius(settings, m, factor, shift, pixel_size):
    """The mask radius (internal px, a whole number) in a box of ``m`` px."""
    if settings.mask_diameter is not None:
        return int(math.floor(settings.mask_diameter / 2 / (pixel_size * factor) + 1e-6))
    if settings.radius is not None:
        return int(math.floor(settings.radius / factor + 1e-6))
    return largest_radius(m, shift)


def _fits(radius, shift, m):
    return radius + shift <= sampling_limit(m)


def plan(box, pixel_size, settings):
    """The :class:`Scale` of a run of ``settings`` on ``box`` px images of ``pixel_size`` A/px (None
    if unknown); InputError naming the value and the fix for options that cannot work together."""
    box = int(box)
    s = settings
    if s.radius is not None and s.mask_diameter is not None:
        raise InputError("--radius %d and --mask-diameter %g both give the mask: give only one (radius in "
                         "input px, or diameter in A)" % (s.radius, s.mask_diameter))
    if s.internal_box is not None and s.max_resolution is not None:
        raise InputError("--internal-box %d and --max-resolution %g both choose the internal box: give only "
                         "one" % (s.internal_box, s.max_resolution))
    if pixel_size is None:
        for name, value in (("mask-diameter", s.mask_diameter), ("max-resolution", s.max_resolution)):
            if value is not None:
                raise InputError("--%s %g is in A but the input has no pixel size: add rlnImagePixelSize to "
                                 "the STAR file (data_optics) or give --pixel-size, or give the option in px "
                                 "(%s)" % (name, value, "--radius" if name == "mask-diameter" else "--internal-box"))
    if s.mask_diameter is not None and s.mask_diameter > box * pixel_size:
        raise InputError("--mask-diameter %g A is larger than the box (%d px at %g A/px = %g A): give a diameter "
                         "<= %g A, or leave it out (automatic)" % (s.mask_diameter, box, pixel_size,
                                                                   box * pixel_size, box * pixel_size))
    if s.max_resolution is not None and s.max_resolution < 2 * pixel_size - 1e-9:
        raise InputError("--max-resolution %g A is finer than the input's Nyquist limit (2 x %g A/px = %g A): "
                         "give --max-resolution >= %g A, or leave it out (automatic)"
                         % (s.max_resolution, pixel_size, 2 * pixel_size, 2 * pixel_size))
    if s.internal_box is not None and s.internal_box > box:
        raise InputError("--internal-box %d is larger than the input box (%d px): give at most %d, or leave "
                         "it out (automatic)" % (s.internal_box, box, box))
    if s.internal_box is not None:
        least = s.internal_box
    elif pixel_size is not None:
        resolution = s.max_resolution if s.max_resolution is not None else max(MAX_RESOLUTION, 2 * pixel_size)
        least = math.ceil(2 * box * pixel_size / resolution - 1e-6)
    else:
        least = box
    first = next(_candidates(least, box))
    floor = AUTO_MASK_RADIUS if s.max_resolution is None and s.internal_box is None else MIN_MASK_RADIUS
    for m in _candidates(least, box):
        factor = box / m
        shift, step = _shifts(s, factor)
        radius = _radius(s, m, factor, shift, pixel_size)
        if m == box:          # the input box: what does not fit there is refused by search.check_geometry
            _check_radius(s, radius, box, shift)
            return Scale(box, m, radius, shift, step, pixel_size)
        if _fits(radius, shift, m) and radius >= floor:
            return Scale(box, m, radius, shift, step, pixel_size)
        if m == first and radius < MIN_MASK_RADIUS and s.max_resolution is not None:
            raise InputError("--max-resolution %g A is too coarse for the mask: its %d px internal box leaves a "
                             "mask radius of %d px (at least %d needed): give --max-resolution <= %g A, or "
                             "leave it out (automatic)" % (s.max_resolution, m, radius, MIN_MASK_RADIUS,
                                                           _coarsest(s, box, pixel_size, least)))


def _coarsest(s, box, pixel_size, least):
    """The coarsest maximum resolution (A) whose internal box keeps the mask radius >= the minimum."""
    for m in _candidates(least, box):
        factor = box / m
        shift, _ = _shifts(s, factor)
        if _radius(s, m, factor, shift, pixel_size) >= MIN_MASK_RADIUS:
            return math.floor(200 * box * pixel_size / m) / 100    # rounded down: gives that box again
    return 2 * pixel_size


def _check_radius(s, radius, box, shift):
    if radius >= 2:
        return
    if s.radius is None and s.mask_diameter is None:
        raise InputError("the %d px box is too small for a shift range of %g px: use a smaller shift range or "
                         "larger images" % (box, shift))
    raise InputError("a mask radius of %d px is too small: give a mask of at least 2 px radius (--radius, or "
                     "--mask-diameter in A), or leave it out (automatic: the largest that fits)" % radius)


def checked_plan(box, pixel_size, settings):
    """:func:`plan` and the polar grid it gives, checked to fit (``search.check_geometry``):
    ``(Scale, PolarGrid)``; what a run checks before it reads a particle (the Scipion form too)."""
    scale = plan(box, pixel_size, settings)
    grid = polar_grid(scale.radius, settings.first_ring, settings.ring_step)
    search.check_geometry(scale.internal_box, grid, scale.shift_range)
    return scale, grid


class CroppedSource(CachedSource):
    """A source's particles Fourier-cropped to ``box`` (:func:`fourier_crop`): pixel size, prior
    shifts and each particle's CTF pixel size scaled by the factor, the CTF itself (A) kept, so that
    the CTF correction computes the CTF of the cropped images.

    With a ``cache_dir`` (the run's output folder) each particle is cropped once and kept there
    (:class:`~.image_cache.CachedSource`), so a run's later passes read small images instead of
    cropping large ones again; without one particles are cropped on every read.
    """

    def __init__(self, source, box, threads=None, cache_dir=None):
        self.factor = source.box / box
        ctf = source.ctf
        if ctf is not None and ctf.pixel_size is not None:
            ctf = dataclasses.replace(ctf, pixel_size=ctf.pixel_size * self.factor)
        pixel_size = None if source.pixel_size is None else source.pixel_size * self.factor
        super().__init__(source, cache_dir, ".cropped-", box=box, pixel_size=pixel_size, ctf=ctf)
        self.threads = cpu_threads(threads)

    @property
    def prior(self):
        prior = self.input.prior
        if prior is None:
            return None
        out = np.array(prior, np.float64)
        out[:, [SX, SY]] /= self.factor
        return out

    def _derive(self, idx):
        out = np.empty((idx.size, self.box, self.box), np.float32)
        step = max(1, CHUNK_BYTES // (4 * self.input.box ** 2))
        for lo in range(0, idx.size, step):
            out[lo:lo + step] = fourier_crop(self.input.read(idx[lo:lo + step], check_finite=False), self.box,
                                             self.threads)
        return out

    def _origin(self):
        return "%r cropped" % (self.input,)
