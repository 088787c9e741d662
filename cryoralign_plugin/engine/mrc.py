"""MRC image stacks: whole-stack reads and atomic writes, and memory maps for random access to particles.

Particle stacks can be far larger than memory, so they are memory-mapped (``mrcfile.mmap``), never
read whole, and at most :data:`MAX_OPEN_STACKS` maps are held open at a time (:class:`StackMaps`).
Every bad file raises :class:`~cryoralign_plugin.engine.errors.InputError` saying whether it is
missing, truncated or not MRC, and what to do about it.
"""
import contextlib
import math
import os
import warnings
from collections import OrderedDict

import mrcfile
import numpy as np

from .errors import InputError
from .files import atomic_path, check_readable_file

__all__ = ["MAX_OPEN_STACKS", "StackMaps", "open_stack", "image_data", "stack_shape", "voxel_size",
           "write_stack", "read_stack"]

#: Maximum number of stacks kept open (memory-mapped) at the same time by one :class:`StackMaps`.
MAX_OPEN_STACKS = 64

_MRC_HEADER_BYTES = 1024
_COMPLEX_MODES = (3, 4)
#: ``imodStamp`` (header bytes 152-155) of files written by IMOD; its ``imodFlags`` (bytes 156-159) bit 0
#: says whether mode-0 bytes are signed.  Without the bit, IMOD's mode 0 is *unsigned* (0..255), which
#: mrcfile does not apply (it reads mode 0 as int8 as MRC2014 says).
IMOD_STAMP = 1146047817
_IMOD_WORDS = slice(40, 48)   # imodStamp, imodFlags inside the header's extra2 field (bytes 112..195)


def _explain_mrc_error(path, err, what):
    """Turn an mrcfile error into an InputError that says whether the file is truncated or not MRC."""
    size = os.path.getsize(path)
    msg = str(err)
    if size < _MRC_HEADER_BYTES:
        return InputError("%s %s is truncated or not an MRC file: it has %d bytes, less than the %d-byte "
                          "MRC header; re-copy or re-extract it" % (what, path, size, _MRC_HEADER_BYTES))
    if "Map ID" in msg or "not an MRC" in msg:
        return InputError("%s %s is not an MRC file (or its header is corrupt: %s); give an MRC stack "
                          "(.mrcs/.mrc), converting other formats first" % (what, path, msg))
    expected = None
    try:
        with mrcfile.open(path, mode="r", permissive=True, header_only=True) as m:
            h = m.header
            dtype = mrcfile.utils.dtype_from_mode(h.mode)
            expected = (_MRC_HEADER_BYTES + int(h.nsymbt)
                        + int(h.nx) * int(h.ny) * int(h.nz) * dtype.itemsize)
            dims = "%d x %d x %d" % (int(h.nz), int(h.ny), int(h.nx))
    except Exception:   # header unreadable too: fall back to a generic message
        pass
    if expected is not None and size < expected:
        return InputError("%s %s is truncated: its header describes %s values (%d bytes) but the file "
                          "has only %d bytes; it was probably cut off while copying or writing: "
                          "re-copy or re-extract it" % (what, path, dims, expected, size))
    return InputError("%s %s is not a readable MRC file (%s); it may be truncated or corrupt: "
                      "re-copy or re-extract it" % (what, path, msg))


def open_stack(path, what="particle stack"):
    """Memory-map an MRC file read-only with strict validation; InputError on any problem."""
    check_readable_file(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # e.g. "file is N bytes larger than expected"
            m = mrcfile.mmap(path, mode="r", permissive=False)
    except PermissionError:
        raise InputError("%s %s is not readable (permission denied); fix its permissions" % (what, path)) from None
    except (ValueError, OSError, EOFError) as e:
        raise _explain_mrc_error(path, e, what) from None
    if m.data is None:
        m.close()
        raise InputError("%s %s has no image data (empty MRC); re-extract it" % (what, path))
    if int(m.header.mode) in _COMPLEX_MODES:
        m.close()
        raise InputError("%s %s holds complex (Fourier-space) data; give real-space images" % (what, path))
    return m


def _imod_unsigned_bytes(header):
    """True for a mode-0 file written by IMOD without the 'signed bytes' flag: its bytes are uint8."""
    if int(header.mode) != 0:
        return False
    stamp, flags = np.frombuffer(bytes(header.extra2)[_IMOD_WORDS], dtype=header.dtype["nx"])
    return int(stamp) == IMOD_STAMP and not int(flags) & 1


def image_data(m):
    """The data block of an open MRC file with the right value type: as mrcfile gives it, except IMOD's
    unsigned 8-bit files (see :data:`IMOD_STAMP`), viewed as uint8 (no copy)."""
    data = m.data
    if data is not None and data.dtype.itemsize == 1 and _imod_unsigned_bytes(m.header):
        data = data.view(np.uint8)
    return data


def stack_shape(data, path, what="particle stack"):
    """(count, ny, nx) of an MRC data block: a 2D image is a stack of one, a 3D volume a stack of nz."""
    if data.ndim == 2:
        return 1, int(data.shape[0]), int(data.shape[1])
    if data.ndim == 3:
        return int(data.shape[0]), int(data.shape[1]), int(data.shape[2])
    raise InputError("%s %s has %d dimensions %s; give a 2D image or a stack of 2D images"
                     % (what, path, data.ndim, tuple(data.shape)))


def voxel_size(m):
    """The header's pixel size (A) of an open MRC file, or None if it is unset (0) or not finite."""
    try:
        vx = float(m.voxel_size.x)
    except Exception:
        return None
    return vx if vx > 0 and math.isfinite(vx) else None


class StackMaps:
    """Memory maps of the stack files ``paths``, opened on first use, at most MAX_OPEN_STACKS at once (LRU).

    Pickles without its open maps (they reopen on demand).
    """

    def __init__(self, paths):
        self.paths = list(paths)
        self._maps = OrderedDict()   # stack number -> open MrcMemmap (LRU)

    def get(self, s):
        """Open MrcMemmap of stack number ``s``."""
        m = self._maps.get(s)
        if m is not None:
            self._maps.move_to_end(s)
            return m
        m = open_stack(self.paths[s])
        self._maps[s] = m
        while len(self._maps) > MAX_OPEN_STACKS:
            _, old = self._maps.popitem(last=False)
            old.close()
        return m

    def close(self):
        """Close every open map (they reopen on the next :meth:`get`)."""
        while self._maps:
            _, m = self._maps.popitem()
            with contextlib.suppress(Exception):
                m.close()

    def __len__(self):
        return len(self._maps)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_maps"] = OrderedDict()
        return state


def _as_float32_stack(images, what="images"):
    a = np.asarray(images)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise InputError("%s must be a 2D image or a 3D stack (N, n, n), got shape %s; reshape it"
                         % (what, a.shape))
    if np.iscomplexobj(a):
        raise InputError("%s are complex; give real-space images (e.g. take .real)" % what)
    return np.ascontiguousarray(a, dtype=np.float32)


def write_stack(path, images, pixel_size=None):
    """Write ``images`` ((N, n, n) or one (n, n) image) as a float32 MRC image stack, atomically."""
    data = _as_float32_stack(images)
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as m:
            m.set_data(data)
            m.set_image_stack()
            if pixel_size is not None:
                m.voxel_size = float(pixel_size)
            m.update_header_stats()


def read_stack(path):
    """Read a whole MRC stack (or a single 2D image as a stack of one) into a float32 (N, ny, nx) array."""
    path = os.fspath(path)
    m = open_stack(path, what="MRC stack")
    try:
        data = image_data(m)
        n, ny, nx = stack_shape(data, path, what="MRC stack")
        return np.array(data, dtype=np.float32).reshape(n, ny, nx)
    finally:
        m.close()
