"""A run's cache of images derived from its particles (cropped, phase-flipped), computed once per particle.

A run reads every particle several times per iteration (search, refinement, averages); what it
derives from them that never changes (the Fourier crop to the internal box, the phase flip) is kept
here instead of being computed on every read.  The images live in an unlinked temporary file in the
run's output folder (a run writes nowhere else): ``box^2 x 4`` bytes per particle at its position,
in the page cache rather than the process's memory, gone when the run ends.  Without a folder,
before the folder exists, or where the file cannot be written (disk full), nothing is kept and the
images are derived on every read.  Derivations are per particle, so what a read returns does not
depend on whether it came from the cache (nor on batches, ranks or ``--continue``).
"""
import abc
import os
import tempfile

import numpy as np

from .sources import ParticleSource


class ImageCache:
    """Images (float32, all of one size) of ``count`` particles, kept in an unlinked file in ``cache_dir``
    whose name starts with ``prefix``."""

    def __init__(self, count, cache_dir, prefix):
        self.prefix = prefix
        self._dir = cache_dir
        self._usable = cache_dir is not None   # False once the file could not be written
        self._file = None
        self.cached = np.zeros(int(count), bool)

    def fill(self, out, idx, derive):
        """``out[j]`` = the image of particle ``idx[j]``: from the cache, else ``derive(positions)``
        (the images of ``idx[positions]``), which are then kept."""
        have = self.cached[idx] if self._usable else np.zeros(idx.size, bool)
        for k in np.flatnonzero(have):
            os.preadv(self._file.fileno(), [out[k]], int(idx[k]) * out[k].nbytes)
        todo = np.flatnonzero(~have)
        if todo.size:
            out[todo] = derive(todo)
            if self._usable:
                self._store(out[todo], idx[todo])

    def _store(self, images, idx):
        if not os.path.isdir(self._dir):   # not created yet (before the run claims it)
            return
        try:
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix=self.prefix, dir=self._dir)
            for image, i in zip(images, idx):
                os.pwrite(self._file.fileno(), np.ascontiguousarray(image).data, int(i) * image.nbytes)
            self.cached[idx] = True
        except OSError:           # no room for the cache: derive on every read
            self._usable = False
            self.close()

    def close(self):
        """Drop the cache (a later read derives and keeps the images again)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self.cached[:] = False


class CachedSource(ParticleSource):
    """Images derived from ``source``'s particles (:meth:`_derive`), each once per run with a
    ``cache_dir`` (file name starting with ``prefix``); the metadata are the source's unless given in
    ``metadata`` (e.g. a cropped box and pixel size)."""

    def __init__(self, source, cache_dir, prefix, **metadata):
        given = dict(count=source.count, box=source.box, ids=source.ids, names=source.names,
                     pixel_size=source.pixel_size, ctf=source.ctf)
        given.update(metadata)
        super().__init__(**given)
        self.input = source
        self.cache = ImageCache(self.count, cache_dir, prefix)

    @property
    def prior(self):
        return self.input.prior

    @abc.abstractmethod
    def _derive(self, idx):
        """The derived images ``(len(idx), box, box)`` float32 of the particles at positions ``idx``."""

    def _fill(self, out, idx):
        self.cache.fill(out, idx, lambda rows: self._derive(idx[rows]))

    def close(self):
        """Close the input's files and drop the cache."""
        self.input.close()
        self.cache.close()
