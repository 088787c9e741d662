"""Particle sources: N square images and their metadata behind one ``read(indices)`` (as in ASPIRE-Python).

The alignment loop only asks a source for its size and for batches of images, so it runs the same
on an in-memory array (:class:`ArraySource`, the Python API and the tests) and on a STAR file whose
images live in MRC stacks (:class:`StarSource`, the command line).  A STAR file is read in two
steps: :func:`~.particle_table.read_particle_table` takes its particle table apart into columns
(see that module for the STAR conventions), then :class:`StarSource` checks every stack those
columns name and memory-maps them.

Indices passed to :meth:`ParticleSource.read` are 0-based positions in the particle list (the input
order of the STAR rows), not stack indices.
"""
import abc
import contextlib
import os

import numpy as np

from .errors import InputError
from .mrc import StackMaps, image_data, stack_shape, voxel_size
from .particle_table import Names, read_particle_table

__all__ = ["ParticleSource", "ArraySource", "StarSource"]


class ParticleSource(abc.ABC):
    """Random access to N square particle images.

    Attributes: ``count``, ``box``, ``pixel_size`` (float or None), ``ids`` (int64, length N), ``names``
    (:class:`~.particle_table.Names`, a sequence of str), ``prior`` ((N, 4) float64 ``[psi_deg, sx, sy,
    mirror]`` or None), ``ctf`` (the particles' :class:`~.ctf.CtfColumns`, or None without CTF;
    ``source.ctf.images(indices, box, pixel_size)`` gives a batch's CTFs).  Subclasses provide
    :meth:`_fill`; a source is a context manager whose exit calls :meth:`close`.
    """

    def __init__(self, *, count, box, ids, names, prior=None, pixel_size=None, ctf=None):
        self.count = int(count)
        self.box = int(box)
        self.ids = np.asarray(ids, dtype=np.int64)
        self.names = names if isinstance(names, Names) else Names(names)
        self._prior = None if prior is None else np.asarray(prior, dtype=np.float64)
        self.pixel_size = None if pixel_size is None else float(pixel_size)
        if ctf is not None and len(ctf) != self.count:
            raise InputError("the CTF has %d particles but the source has %d; give one CTF per particle"
                             % (len(ctf), self.count))
        self.ctf = ctf

    @property
    def prior(self):
        """The input's alignment ``(N, 4)`` ``[psi_deg, sx, sy, mirror]``, or None without one."""
        return self._prior

    def read(self, indices, check_finite=True):
        """Images at 0-based particle positions ``indices`` (any order) as float32 (len, box, box).

        With ``check_finite`` an image with NaN/inf pixels raises InputError naming the particle.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.count):
            raise IndexError("particle index out of range 0..%d: %s" % (self.count - 1,
                             idx[(idx < 0) | (idx >= self.count)][:5]))
        out = np.empty((idx.size, self.box, self.box), dtype=np.float32)
        if idx.size == 0:
            return out
        self._fill(out, idx)
        if check_finite and not np.all(np.isfinite(out)):
            bad = ~np.all(np.isfinite(out.reshape(out.shape[0], -1)), axis=1)
            k = int(np.flatnonzero(bad)[0])
            raise InputError("particle %s (id %d) contains NaN or infinite pixel values; fix or remove it "
                             "from the input" % (self.names[idx[k]], self.ids[idx[k]]))
        return out

    @abc.abstractmethod
    def _fill(self, out, idx):
        """Write the images at the (valid, non-empty) positions ``idx`` into ``out``."""

    def close(self):
        """Release open files (a later read reopens them)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self):
        return self.count

    def __repr__(self):
        return "%s(%d particles, box %d, pixel size %s, from %s)" % (
            type(self).__name__, self.count, self.box, self.pixel_size, self._origin())

    def _origin(self):
        return "array"


class ArraySource(ParticleSource):
    """An (N, n, n) array (not copied); ``ids`` default to 1..N, names are ``"000001@array"``...;
    ``ctf`` a :class:`~.ctf.CtfColumns` of N particles or None."""

    def __init__(self, array, pixel_size=None, ids=None, prior=None, ctf=None):
        a = np.asarray(array)
        if a.ndim != 3:
            raise InputError("particle array must be 3D (N, n, n), got shape %s; for a single image "
                             "use image[None]" % (a.shape,))
        if np.iscomplexobj(a):
            raise InputError("particle array is complex; give real-space images")
        n = a.shape[0]
        if n == 0:
            raise InputError("the particle set is empty (array of shape %s); give at least one particle"
                             % (a.shape,))
        if a.shape[1] != a.shape[2]:
            raise InputError("particle images must be square, got %d x %d; pad or crop them to a square box"
                             % (a.shape[1], a.shape[2]))
        ids = np.arange(1, n + 1, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        if ids.shape != (n,):
            raise InputError("ids has shape %s but there are %d particles; give one id per particle"
                             % (ids.shape, n))
        if prior is not None:
            prior = np.asarray(prior, dtype=np.float64)
            if prior.shape != (n, 4):
                raise InputError("prior has shape %s; give an (N, 4) array [psi, sx, sy, mirror] with N=%d"
                                 % (prior.shape, n))
        names = ["%06d@array" % (i + 1) for i in range(n)]
        super().__init__(count=n, box=a.shape[1], ids=ids, names=names, prior=prior, pixel_size=pixel_size,
                         ctf=ctf)
        self._array = a

    def _fill(self, out, idx):
        a = self._array
        if idx.size > 1 and idx[-1] - idx[0] == idx.size - 1 and np.all(np.diff(idx) == 1):
            out[...] = a[idx[0]:idx[-1] + 1]
        else:
            out[...] = a[idx]


# --------------------------------------------------------------------------------------------------
# STAR + MRC stacks
# --------------------------------------------------------------------------------------------------

class StarSource(ParticleSource):
    """The particles of a STAR file, read from their MRC stacks (memory-mapped, see :class:`~.mrc.StackMaps`).

    Extra attributes: ``stack_paths`` (resolved stack files) and ``star_path``.  Every stack is
    checked once when the source is made; without a pixel size in the STAR file, the stacks' headers
    give it if they agree.  The prior alignment is checked when it is first asked for (``prior``), or
    when the source is made with ``use_prior``, so that a bad prior stops only the runs that use it.
    Instances pickle without their open files.
    """

    def __init__(self, table, use_prior=False):
        """From a :class:`~.particle_table.ParticleTable`; InputError for a missing, short or non-square
        stack, and with ``use_prior`` for a prior alignment that cannot be used."""
        super().__init__(count=len(table.names), box=0, ids=table.ids, names=table.names,
                         pixel_size=table.pixel_size(), ctf=table.ctf)
        self._prior_columns = table.prior
        self.stack_paths = list(table.stack_paths)
        self.star_path = table.star_path
        self._stack_of = table.stack_of
        self._local = table.local
        self._numbered = table.numbered
        self._open = StackMaps(self.stack_paths)
        self.box, header_sizes = self._check_stacks(table.tried)
        if self.pixel_size is None and len(header_sizes) == 1:
            self.pixel_size = float(header_sizes.pop())
        if self.ctf is not None and self.ctf.pixel_size is None and self.pixel_size is not None:
            self.ctf.pixel_size = np.full(self.count, self.pixel_size)   # the CTF's pixels are the images'
        if use_prior:
            self.prior    # checked now: a run that uses the prior fails before it starts

    @classmethod
    def from_star(cls, path, use_prior=False):
        """Read the particle list of a STAR file and validate every stack it references (see module doc);
        ``use_prior`` checks the prior alignment too (else it is checked when first asked for)."""
        return cls(read_particle_table(path), use_prior=use_prior)

    @property
    def prior(self):
        """The STAR file's prior alignment, checked on first use (InputError naming the row); None
        without prior columns."""
        if self._prior_columns is not None:
            self._prior = self._prior_columns.alignment(self.box, self.pixel_size)
            self._prior_columns = None
        return self._prior

    def _check_stacks(self, tried):
        """Open every stack once: the common square box, and the set of header pixel sizes."""
        box = None
        box_from = None
        header_sizes = set()
        max_local = np.full(len(self.stack_paths), -1, dtype=np.int64)
        np.maximum.at(max_local, self._stack_of, self._local)
        unnumbered = np.zeros(len(self.stack_paths), dtype=bool)      # stacks named without index@
        unnumbered[self._stack_of[~self._numbered]] = True
        for s, p in enumerate(self.stack_paths):
            self._check_exists(p, *tried[s])
            m = self._open.get(s)
            length, ny, nx = stack_shape(image_data(m), p)
            if ny != nx:
                raise InputError("particle stack %s has non-square images (%d x %d); the engine needs square "
                                 "boxes: re-extract or pad/crop the particles to a square box" % (p, ny, nx))
            if box is None:
                box, box_from = nx, p
            elif nx != box:
                raise InputError("particle stacks have different box sizes: %s is %d x %d but %s is %d x %d; "
                                 "resample or re-extract all particles to one box size"
                                 % (box_from, box, box, p, nx, nx))
            self._check_length(s, p, int(max_local[s]), bool(unnumbered[s]), length)
            vs = voxel_size(m)
            if vs is not None:
                header_sizes.add(round(vs, 4))
        return int(box), header_sizes

    def _check_exists(self, p, tried, row):
        if not os.path.exists(p):
            where = " or ".join(tried)
            raise InputError("particle stack %s (row %d of %s, rlnImageName %s) does not exist (looked for %s); "
                             "check the path: relative paths are taken from the STAR file's directory"
                             % (tried[0], row + 1, self.star_path, self.names[row], where))

    def _check_length(self, s, p, hi, unnumbered, length):
        """InputError if a row of stack ``s`` asks for an image past its ``length`` (``hi`` is the largest
        0-based index asked for), or names a stack of several images without an image number
        (``unnumbered``: it would read image 1 for every such row)."""
        if unnumbered and length > 1:
            r = int(np.flatnonzero((self._stack_of == s) & ~self._numbered)[0])
            raise InputError("row %d of %s: rlnImageName '%s' has no image number but %s holds %d images: "
                             "write it as 000001@%s ... %06d@%s, one row per image"
                             % (r + 1, self.star_path, self.names[r], p, length, self.names[r], length, self.names[r]))
        if hi >= length:
            r = int(np.flatnonzero((self._stack_of == s) & (self._local >= length))[0])
            raise InputError("row %d of %s asks for image %d of %s, which holds %d image%s (rlnImageName %s): "
                             "fix the index (1-based) or regenerate the STAR file from the stack"
                             % (r + 1, self.star_path, self._local[r] + 1, p, length, "s" * (length != 1),
                                self.names[r]))

    def _fill(self, out, idx):
        """Sorted contiguous positions in one stack are read as one slice of the memory map."""
        stacks = self._stack_of[idx]
        locs = self._local[idx]
        order = np.lexsort((locs, stacks))          # group by stack, ascending index within it
        cuts = np.flatnonzero(np.diff(stacks[order])) + 1
        for group in np.split(order, cuts):
            sl = locs[group]
            m = self._open.get(int(stacks[group[0]]))
            data = image_data(m)
            data = data if data.ndim == 3 else data[None]
            lo, hi = int(sl[0]), int(sl[-1])
            if hi - lo + 1 == sl.size and (sl.size == 1 or np.all(np.diff(sl) == 1)):
                out[group] = data[lo:hi + 1]        # contiguous: one sequential slice of the map
            elif hi - lo + 1 <= 2 * sl.size:
                out[group] = data[lo:hi + 1][sl - lo]   # dense: read the span once, then pick
            else:
                out[group] = data[sl]

    def close(self):
        """Close the memory-mapped stacks (they reopen on the next read)."""
        self._open.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    def _origin(self):
        return self.star_path
