"""The contrast transfer function (CTF), in RELION's convention, and the corrections built on it.

Each particle's spectrum is its projection's spectrum times its own CTF, which oscillates in sign;
averaging particles of different defocus without correcting for it cancels everything past the
first CTF zero.  This module evaluates the CTF on an image's Fourier grid and applies it or its
sign (phase flipping).  The formula is RELION's (``src/ctf.h``), so numbers read from a STAR file
or a Scipion ``CTFModel`` mean the same here::

    lambda = 12.2643247 / sqrt(V (1 + 0.978466e-6 V))              (A, V in volts)
    dz(s)  = (dU + dV)/2 + (dU - dV)/2 cos(2 (atan2(sy, sx) - angle))   (A, positive = underfocus)
    chi(s) = pi lambda dz s^2 - pi/2 Cs lambda^3 s^4                (Cs in A)
    CTF(s) = sin(chi + phase_shift + atan(Q0 / sqrt(1 - Q0^2))) exp(-B s^2 / 4)

so that CTF(0) = +Q0 and the first lobe is positive (white protein on a dark background).
Frequencies are in 1/A; ``sx`` runs along image columns (x), ``sy`` along rows (y), and the
astigmatism angle is measured from x to the U axis.
"""
import dataclasses

import numpy as np

from .errors import InputError


def wavelength(voltage_kv):
    """Relativistic electron wavelength in A for an acceleration voltage in kV (RELION's constants)."""
    volts = np.asarray(voltage_kv, dtype=np.float64) * 1e3
    return 12.2643247 / np.sqrt(volts * (1.0 + 0.978466e-6 * volts))


_DEFOCUS_FIX = ("defocus must be a non-negative number of A (positive = underfocus): "
                "re-estimate the CTF or drop the particle")

#: What a usable value is, per parameter (``CtfParams`` fields and ``pixel_size``), and the fix.  NaN
#: fails every rule (it fails every comparison), and so does +-inf.
_RULES = {
    "defocus_u": (lambda v: np.isfinite(v) & (v >= 0), _DEFOCUS_FIX),
    "defocus_v": (lambda v: np.isfinite(v) & (v >= 0), _DEFOCUS_FIX),
    "defocus_angle": (np.isfinite, "give the astigmatism angle in degrees from the x axis (0 if there is none)"),
    "voltage": (lambda v: np.isfinite(v) & (v > 0), "give the acceleration voltage in kV (> 0, e.g. 300)"),
    "cs": (lambda v: np.isfinite(v) & (v >= 0), "give the spherical aberration in mm (>= 0, e.g. 2.7)"),
    "amplitude_contrast": (lambda v: (v >= 0) & (v < 1),
                           "give the amplitude contrast as a fraction in [0, 1) (e.g. 0.1), not a percentage"),
    "phase_shift": (np.isfinite, "give the phase shift in degrees (0 without a phase plate)"),
    "bfactor": (np.isfinite, "give the CTF B-factor in A^2 (usually 0)"),
    "pixel_size": (lambda v: np.isfinite(v) & (v > 0), "give the pixel size in A (> 0)"),
}


def check_ctf_values(values, names=None, where=None):
    """Raise InputError naming the first unusable CTF value (the one validator of this module's users).

    ``values`` maps parameter names (``CtfParams`` fields, ``pixel_size``) to 1-D arrays; only those
    given are checked, in the order of :data:`_RULES`.  ``names`` maps a parameter to the name the
    message uses (e.g. its STAR column); ``where(i)`` says where value ``i`` comes from (e.g. "row 3
    of particles.star"), else the message names "particle i" when an array holds several values.
    """
    names = names or {}
    for field, (rule, fix) in _RULES.items():
        if field not in values:
            continue
        v = np.atleast_1d(np.asarray(values[field], dtype=np.float64)).ravel()
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(~rule(v))
        if bad.size:
            i, name = int(bad[0]), names.get(field, field)
            if where is not None:
                raise InputError("%s: %s = %r: %s" % (where(i), name, float(v[i]), fix))
            raise InputError("%s = %r%s: %s" % (name, float(v[i]), " (particle %d)" % i if v.size > 1 else "", fix))


_FIELDS = ("defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amplitude_contrast", "phase_shift",
           "bfactor")


def _validate(defocus_u, defocus_v, defocus_angle, voltage, cs, amplitude_contrast, phase_shift, bfactor):
    """Raise InputError naming the first unusable value; arguments are equal-shape 1-D arrays, so the
    particle index is named when there are several."""
    check_ctf_values(dict(zip(_FIELDS, (defocus_u, defocus_v, defocus_angle, voltage, cs, amplitude_contrast,
                                        phase_shift, bfactor))))


@dataclasses.dataclass(frozen=True)
class CtfParams:
    """One particle's CTF: defocus in A (positive = underfocus), angle from x to U in degrees,
    voltage in kV, Cs in mm, amplitude contrast Q0 in [0, 1), phase shift in degrees, B in A^2."""
    defocus_u: float
    defocus_v: float
    defocus_angle: float
    voltage: float
    cs: float
    amplitude_contrast: float
    phase_shift: float = 0.0
    bfactor: float = 0.0

    def __post_init__(self):
        _validate(*(np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in dataclasses.astuple(self)))


def _first_peak_s2(b, a, offset):
    """s^2 where |chi + offset| first reaches pi/2 along a direction, for chi = b s^2 - a s^4.

    This is where ``intact_first_peak`` stops flattening: the smaller positive root of
    chi = pi/2 - offset or of chi = -pi/2 - offset (inf where neither exists; 0 where the offset
    alone is past pi/2).  RELION 4 flattens wherever |chi + offset| < pi/2 (RELION 3 leaves the
    amplitude-contrast phase out of that test); only the region before the first crossing is
    flattened here, so the CTF is not set to 1 again where chi turns back at very high frequency."""
    up = np.pi / 2 - offset        # > 0 inside the band
    down = -np.pi / 2 - offset     # < 0 inside the band
    with np.errstate(divide="ignore", invalid="ignore"):
        disc_up = b * b - 4 * a * up
        reach_up = np.where(disc_up >= 0, 2 * up / (b + np.sqrt(np.maximum(disc_up, 0))), np.inf)
        reach_down = np.where(a > 0, (b + np.sqrt(b * b - 4 * a * down)) / (2 * a), np.inf)
    return np.where(np.abs(offset) < np.pi / 2, np.minimum(reach_up, reach_down), 0.0)


def ctf_images(defocus_u, defocus_v, defocus_angle, voltage, cs, amplitude_contrast, phase_shift=0.0,
               bfactor=0.0, *, box, pixel_size, rfft=True, intact_first_peak=False):
    """CTFs of many particles at once, ``(N, box, box//2+1)`` float32 on the ``np.fft.rfft2`` grid
    (``(N, box, box)`` on the ``np.fft.fft2`` grid if not ``rfft``).

    Every parameter is a scalar or an array of N values (same meanings and units as
    :class:`CtfParams`), so per-particle defocus can be mixed with per-optics-group voltage.
    Frequencies are ``np.fft.fftfreq(box, pixel_size)`` (rows) by ``fftfreq`` or, for the rfft grid,
    ``rfftfreq`` (columns), which puts an even box's Nyquist column at +0.5/pixel.
    ``intact_first_peak`` (RELION's ``--ctf_intact_first_peak``) sets the CTF to 1 (times the
    B-factor envelope, as RELION does) below its first peak, per direction: for data whose CTF model
    fails at the lowest frequencies (e.g. very high defocus).  Computed in float64, since chi reaches
    hundreds of radians at Nyquist; the temporaries are a few arrays of the output's size.
    """
    if not pixel_size > 0:
        raise InputError("pixel_size = %r is not usable: give the pixel size in A (> 0)" % pixel_size)
    params = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, dtype=np.float64)).ravel() for v in
                                   (defocus_u, defocus_v, defocus_angle, voltage, cs, amplitude_contrast,
                                    phase_shift, bfactor)))
    _validate(*params)
    du, dv, angle, kv, cs_mm, q0, shift, bfac = (p[:, None, None] for p in params)

    sy = np.fft.fftfreq(box, d=pixel_size)[:, None]
    sx = (np.fft.rfftfreq if rfft else np.fft.fftfreq)(box, d=pixel_size)[None, :]
    s2 = sx * sx + sy * sy
    dz = 0.5 * (du + dv) + 0.5 * (du - dv) * np.cos(2 * (np.arctan2(sy, sx) - np.deg2rad(angle)))
    lam = wavelength(kv)
    b = np.pi * lam * dz                       # chi = b s^2 - a s^4
    a = np.pi / 2 * (cs_mm * 1e7) * lam ** 3
    offset = np.deg2rad(shift) + np.arctan(q0 / np.sqrt(1 - q0 * q0))

    ctf = np.sin(b * s2 - a * s2 * s2 + offset)
    if intact_first_peak:
        ctf = np.where(s2 < _first_peak_s2(b, a, offset), 1.0, ctf)
    if np.any(bfac != 0):
        ctf = ctf * np.exp(-bfac * s2 / 4)
    return ctf.astype(np.float32)


def ctf_image(params, box, pixel_size, rfft=True, intact_first_peak=False):
    """One particle's CTF (a :class:`CtfParams`) on a box's Fourier grid; see :func:`ctf_images`."""
    return ctf_images(**dataclasses.asdict(params), box=box, pixel_size=pixel_size, rfft=rfft,
                      intact_first_peak=intact_first_peak)[0]


def _filter(images, factors):
    """Real images ``(N, n, n)`` (or one ``(n, n)``) times a real rfft-grid filter, float32 out."""
    images = np.asarray(images, dtype=np.float32)
    box = images.shape[-1]
    out = np.fft.irfft2(np.fft.rfft2(images) * factors, s=(box, box))
    return out.astype(np.float32)


def apply_ctf(images, ctfs):
    """Images as the microscope would record them: each spectrum times its CTF (rfft grid, e.g. from
    :func:`ctf_images`); for synthetic data and tests."""
    return _filter(images, ctfs)


def phase_flip(images, ctfs):
    """Phase-flipped images: each spectrum times sign(CTF), so that the CTF no longer inverts contrast
    between particles of different defocus (amplitudes stay CTF-weighted)."""
    return _filter(images, np.sign(ctfs))


@dataclasses.dataclass(eq=False)
class CtfColumns:
    """The CTFs of a particle set: one value per particle in each field (units of :class:`CtfParams`).

    Every float field is a float64 array of N values (a scalar given is repeated N times, N being the
    length of ``defocus_u``); ``phase_flipped`` is a bool array (True where the images were already
    phase-flipped, RELION's ``rlnCtfDataArePhaseFlipped``); ``pixel_size`` is each particle's pixel size
    in A (float64, N values) or None where the input gives none.  The values are checked when the
    object is made (InputError naming the particle).
    """
    defocus_u: np.ndarray
    defocus_v: np.ndarray
    defocus_angle: np.ndarray
    voltage: np.ndarray
    cs: np.ndarray
    amplitude_contrast: np.ndarray
    phase_shift: np.ndarray = 0.0
    bfactor: np.ndarray = 0.0
    phase_flipped: np.ndarray = False
    pixel_size: np.ndarray = None

    def __post_init__(self):
        n = np.size(self.defocus_u)
        if np.ndim(self.defocus_u) != 1 or n == 0:
            raise InputError("defocus_u must be a 1-D array of one value per particle (got shape %s)"
                             % (np.shape(self.defocus_u),))

        def column(value, dtype, name):
            a = np.asarray(value, dtype=dtype)
            if a.ndim > 1 or (a.ndim == 1 and a.size != n):
                raise InputError("%s has %s values for %d particles; give one value per particle (or one "
                                 "for all)" % (name, "x".join(map(str, a.shape)), n))
            return np.array(np.broadcast_to(a, (n,)))
        for f in _FIELDS:
            setattr(self, f, column(getattr(self, f), np.float64, f))
        self.phase_flipped = column(self.phase_flipped, bool, "phase_flipped")
        if self.pixel_size is not None:
            self.pixel_size = column(self.pixel_size, np.float64, "pixel_size")
        check_ctf_values(self._values())

    def _values(self):
        values = {f: getattr(self, f) for f in _FIELDS}
        if self.pixel_size is not None:
            values["pixel_size"] = self.pixel_size
        return values

    def __len__(self):
        return self.defocus_u.size

    def params(self, i):
        """Particle ``i``'s CTF as a :class:`CtfParams`."""
        return CtfParams(*(float(getattr(self, f)[i]) for f in _FIELDS))

    def select(self, indices):
        """The CTFs of the particles at positions ``indices``, as a new CtfColumns."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        picked = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        picked = {k: (None if v is None else v[idx]) for k, v in picked.items()}
        return CtfColumns(**picked)

    def images(self, indices, box, pixel_size=None, rfft=True, intact_first_peak=False):
        """The CTFs of the particles at positions ``indices`` on a ``box``'s Fourier grid, float32
        ``(len, box, box//2+1)`` (``(len, box, box)`` if not ``rfft``): see :func:`ctf_images`.

        ``pixel_size`` is the images' pixel size in A (e.g. the source's); None takes each particle's
        own ``pixel_size``.  The CTF is evaluated whether or not the images are phase-flipped
        (``phase_flipped`` says whether its sign was already applied).
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError("particle index out of range 0..%d" % (len(self) - 1))
        kw = dict(box=box, rfft=rfft, intact_first_peak=intact_first_peak)
        width = box // 2 + 1 if rfft else box
        if idx.size == 0:
            return np.empty((0, box, width), np.float32)
        if pixel_size is not None:
            return ctf_images(*(getattr(self, f)[idx] for f in _FIELDS), pixel_size=pixel_size, **kw)
        if self.pixel_size is None:
            raise InputError("the CTF needs the pixel size of the images, which the input does not give: add "
                             "rlnImagePixelSize to the STAR file (data_optics) or give the pixel size")
        out = np.empty((idx.size, box, width), np.float32)
        sizes = self.pixel_size[idx]
        for size in np.unique(sizes):               # one grid per pixel size in the batch
            rows = np.flatnonzero(sizes == size)
            out[rows] = ctf_images(*(getattr(self, f)[idx[rows]] for f in _FIELDS), pixel_size=float(size), **kw)
        return out
