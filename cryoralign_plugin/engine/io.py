"""File I/O for the engine: particle stacks (MRC, memory-mapped), STAR tables, atomic writes, checkpoints.

Imports only numpy, mrcfile, emtable and the standard library (never pyworkflow/pwem).

Every bad input raises :class:`~cryoralign_plugin.engine.errors.InputError` whose message names the
problem *and* the fix.  Everything this module writes goes through :func:`atomic_path`: the data is
written to a temporary name in the destination directory, flushed to disk, then renamed onto the final
name, so a killed run never leaves a half-written file that looks complete.

Conventions
-----------
* ``rlnImageName`` is ``"000012@stacks/a.mrcs"``: 1-based index ``@`` path.  A path alone means a
  single image (index 1).  Relative paths are resolved against the STAR file's directory first and,
  failing that, against the current directory (RELION writes paths relative to its project directory).
* Indices passed to :meth:`ParticleStack.read` are 0-based positions in the particle list
  (input order of the STAR rows), not stack indices.
* Prior alignment is returned as an ``(N, 4)`` float64 array ``[psi_deg, sx, sy, mirror]`` with the
  values of ``rlnAnglePsi``, ``rlnOriginX``, ``rlnOriginY`` (pixels) and ``rlnIsFlip`` as they are in
  the STAR file (no sign change; ``rlnOriginXAngst``/``rlnOriginYAngst`` are divided by the pixel size).
"""
import contextlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import warnings
from collections import OrderedDict

import mrcfile
import numpy as np
from emtable import Table

from .errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "ParticleStack", "write_stack", "read_stack", "write_star", "read_star", "star_table_names",
    "atomic_path", "save_checkpoint", "last_checkpoint", "check_output_dir", "write_json", "read_json",
]

#: Maximum number of stacks kept open (memory-mapped) at the same time by one ParticleStack.
MAX_OPEN_STACKS = 64

_MRC_HEADER_BYTES = 1024
_CHECKPOINT_RE = re.compile(r"^iter_(\d+)$")
_COMPLEX_MODES = (3, 4)


# --------------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------------

def _fsync_path(path):
    """Flush a file or a directory to disk (best effort where the OS does not allow it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The block writes a file (or creates a directory) at the yielded path.  On success the result is
    flushed to disk and renamed onto ``path`` (``os.replace``; an existing directory at ``path`` is
    swapped out and removed).  If the block raises, the temporary file or directory is removed and the
    exception propagates, so ``path`` keeps its previous content (or stays absent).
    """
    path = os.path.abspath(os.fspath(path))
    directory, base = os.path.split(path)
    if not os.path.isdir(directory):
        raise InputError("cannot write %s: directory %s does not exist; create it first "
                         "(or choose an existing output directory)" % (path, directory))
    fd, tmp = tempfile.mkstemp(prefix=".%s.tmp-" % base, dir=directory)
    os.close(fd)
    os.unlink(tmp)   # the block creates it (file or directory), we only reserve a unique name
    try:
        yield tmp
        if not os.path.lexists(tmp):
            raise FileNotFoundError("atomic_path(%s): the block did not create %s" % (path, tmp))
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            for name in os.listdir(tmp):
                _fsync_path(os.path.join(tmp, name))
            _fsync_path(tmp)
            if os.path.isdir(path) and not os.path.islink(path):
                old = tempfile.mkdtemp(prefix=".%s.old-" % base, dir=directory)
                os.rename(path, os.path.join(old, base))
                os.rename(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, path)
        else:
            _fsync_path(tmp)
            os.replace(tmp, path)
        _fsync_path(directory)
    except BaseException:
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise


def check_output_dir(path):
    """Create ``path`` if needed and check that files can be written there; return its absolute path."""
    path = os.path.abspath(os.fspath(path))
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except (OSError, FileExistsError) as e:
        reason = e.strerror or str(e)
        if os.path.exists(path) and not os.path.isdir(path):
            reason = "it exists and is not a directory"
        raise InputError("cannot write to output directory %s: %s; choose a directory you can write to"
                         % (path, reason)) from e
    return path


class _JSONEncoder(json.JSONEncoder):
    """JSON encoder that also understands numpy scalars and arrays."""

    def default(self, o):
        if isinstance(o, np.integer):
            return int(o)
        if isinstance(o, np.floating):
            return float(o)
        if isinstance(o, np.bool_):
            return bool(o)
        if isinstance(o, np.ndarray):
            return o.tolist()
        return super().default(o)


def write_json(path, obj):
    """Write ``obj`` as indented JSON, atomically (numpy scalars and arrays are converted)."""
    text = json.dumps(obj, indent=2, cls=_JSONEncoder, allow_nan=True) + "\n"
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def read_json(path):
    """Read a JSON file; InputError if it is missing or not valid JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError("JSON file %s does not exist; check the path" % path) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError("JSON file %s is not valid JSON (%s); it may be truncated: regenerate it"
                         % (path, e)) from None


# --------------------------------------------------------------------------------------------------
# MRC stacks
# --------------------------------------------------------------------------------------------------

def _check_readable_file(path, what):
    if not os.path.exists(path):
        raise InputError("%s %s does not exist; check the path (or regenerate the file)" % (what, path))
    if not os.path.isfile(path):
        raise InputError("%s %s is not a regular file; give the path of an MRC file" % (what, path))
    if not os.access(path, os.R_OK):
        raise InputError("%s %s is not readable (permission denied); fix its permissions "
                         "(chmod a+r) or copy it somewhere readable" % (what, path))


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


def _open_mrc(path, what="particle stack"):
    """Memory-map an MRC file read-only with strict validation; InputError on any problem."""
    _check_readable_file(path, what)
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


def _stack_shape(data, path, what="particle stack"):
    """(count, ny, nx) of an MRC data block: a 2D image is a stack of one, a 3D volume a stack of nz."""
    if data.ndim == 2:
        return 1, int(data.shape[0]), int(data.shape[1])
    if data.ndim == 3:
        return int(data.shape[0]), int(data.shape[1]), int(data.shape[2])
    raise InputError("%s %s has %d dimensions %s; give a 2D image or a stack of 2D images"
                     % (what, path, data.ndim, tuple(data.shape)))


def _voxel_size(m):
    try:
        vx = float(m.voxel_size.x)
    except Exception:
        return None
    return vx if vx > 0 and math.isfinite(vx) else None


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
    m = _open_mrc(path, what="MRC stack")
    try:
        n, ny, nx = _stack_shape(m.data, path, what="MRC stack")
        return np.array(m.data, dtype=np.float32).reshape(n, ny, nx)
    finally:
        m.close()


# --------------------------------------------------------------------------------------------------
# STAR files
# --------------------------------------------------------------------------------------------------

def _scan_star(path):
    """Return [(table_name, byte_offset_of_data_line)] for every ``data_`` block of a STAR file."""
    _check_readable_file(path, "STAR file")
    blocks = []
    try:
        with open(path, "r") as f:
            while True:
                pos = f.tell()
                line = f.readline()
                if not line:
                    break
                s = line.strip()
                if s.startswith("data_"):
                    blocks.append((s[5:].split()[0] if len(s) > 5 else "", pos))
    except UnicodeDecodeError:
        raise InputError("STAR file %s is not a text file; give a STAR (.star) file" % path) from None
    return blocks


def star_table_names(path):
    """Names of the tables (``data_<name>`` blocks) of a STAR file, in file order ('' for ``data_``)."""
    return [name for name, _ in _scan_star(path)]


def _read_table(path, offset, name, guess_type=True, types=None):
    """Read the table whose ``data_`` line starts at ``offset``; a table with no columns gives None."""
    with open(path, "r") as f:
        f.seek(offset)
        t = Table()
        try:
            t.readStar(f, tableName=name, guessType=guess_type, types=types)
        except IndexError:
            return None   # emtable: a data_ block without any column
        except Exception as e:
            raise InputError("cannot parse table '%s' of STAR file %s: %s; check that every row has one "
                             "value per column and that quoted values are closed" % (name, path, e)) from None
    return t


def read_star(path, table=None, guess_type=True, types=None):
    """Read one table of a STAR file as an emtable ``Table``.

    ``table`` is the table name (``"particles"`` for ``data_particles``, ``""`` for an unnamed
    ``data_`` block); ``None`` takes the first table.  A table with no columns reads as an empty Table.
    """
    path = os.fspath(path)
    blocks = _scan_star(path)
    if not blocks:
        raise InputError("STAR file %s contains no table (no data_ block); it is empty or not a STAR file: "
                         "check the path or regenerate it" % path)
    if table is None:
        name, offset = blocks[0]
    else:
        found = [b for b in blocks if b[0] == table]
        if not found:
            raise InputError("STAR file %s has no table data_%s (tables found: %s); give the right table "
                             "name or file" % (path, table, ", ".join("data_" + b[0] for b in blocks)))
        name, offset = found[0]
    t = _read_table(path, offset, name, guess_type=guess_type, types=types)
    return t if t is not None else Table()


def _star_value(v):
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


def _quote_columns(columns, rows):
    """Quote string columns whose values contain whitespace or are empty (STAR values are blank-separated).

    A column is quoted in every row if any row needs it, so that emtable's reader (which picks its
    splitting rule from the first row) parses all rows the same way.
    """
    rows = [tuple(_star_value(v) for v in r) for r in rows]
    for r in rows:
        if len(r) != len(columns):
            raise ValueError("STAR row %r has %d values for %d columns %s" % (r, len(r), len(columns), columns))
    quote = []
    for j, c in enumerate(columns):
        need = False
        for r in rows:
            v = r[j]
            if isinstance(v, str):
                if '"' in v or "'" in v or "\n" in v:
                    raise ValueError("STAR value %r in column %s contains a quote or newline; "
                                     "rename it without quotes" % (v, c))
                if v == "" or any(ch.isspace() for ch in v):
                    need = True
        quote.append(need)
    if any(quote):
        rows = [tuple('"%s"' % v if q else v for v, q in zip(r, quote)) for r in rows]
    return rows


def write_star(path, tables):
    """Write STAR tables atomically.

    ``tables`` maps a table name to ``(columns, rows)``: a list of column names (``"rlnImageName"``) and a
    list of tuples, one value per column.  Tables are written in the dict's order; an empty ``rows`` list
    still writes the columns so the table reads back (empty) with its columns.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write("\n# version 30001 (written by cryoralign)\n")
            for name, (columns, rows) in tables.items():
                columns = [str(c) for c in columns]
                if not columns:
                    raise ValueError("STAR table %s has no columns" % name)
                rows = _quote_columns(columns, rows)
                t = Table(columns=columns)
                for r in rows:
                    t.addRow(*r)
                if rows:
                    t.writeStar(f, tableName=name)
                else:
                    w = Table.Writer(f)
                    w.writeTableName(name)
                    w.writeHeader(list(t.getColumns()))
                    w.writeNewline()


# --------------------------------------------------------------------------------------------------
# Particle stacks
# --------------------------------------------------------------------------------------------------

def _parse_image_name(value, row, star_path):
    """Split ``"000012@path"`` into (0-based index, path); a plain path means index 0."""
    s = str(value).strip()
    if "@" in s:
        idx, _, p = s.partition("@")
        try:
            i = int(idx)
        except ValueError:
            raise InputError("row %d of %s: rlnImageName %r has a non-integer index before '@'; use "
                             "'000012@stack.mrcs' (1-based index)" % (row + 1, star_path, s)) from None
        if i < 1:
            raise InputError("row %d of %s: rlnImageName %r has index %d, but indices are 1-based; "
                             "number the images from 1" % (row + 1, star_path, s, i))
        return i - 1, p
    if not s:
        raise InputError("row %d of %s: rlnImageName is empty; give 'index@stack.mrcs'" % (row + 1, star_path))
    return 0, s


def _resolve(p, star_dir):
    """Resolve a stack path: absolute as is; relative against the STAR directory, then the cwd."""
    if os.path.isabs(p):
        return os.path.normpath(p), [p]
    tried = [os.path.normpath(os.path.join(star_dir, p))]
    if os.path.exists(tried[0]):
        return tried[0], tried
    alt = os.path.abspath(p)
    if alt != tried[0]:
        tried.append(alt)
        if os.path.exists(alt):
            return alt, tried
    return tried[0], tried


def _float_column(table, col, star_path, what):
    out = np.empty(len(table), dtype=np.float64)
    for i, r in enumerate(table):
        v = getattr(r, col)
        try:
            out[i] = float(v)
        except ValueError:
            raise InputError("row %d of %s: %s value %r is not a number; fix the %s column"
                             % (i + 1, star_path, col, v, what)) from None
    if not np.all(np.isfinite(out)):
        bad = int(np.flatnonzero(~np.isfinite(out))[0])
        raise InputError("row %d of %s: %s is %r; give a finite number" % (bad + 1, star_path, col, out[bad]))
    return out


class ParticleStack:
    """Random access to N square particle images held in one or several MRC stacks (or in an array).

    Attributes: ``count``, ``box``, ``pixel_size`` (float or None), ``ids`` (int64, length N), ``names``
    (list of str), ``prior`` ((N, 4) float64 ``[psi_deg, sx, sy, mirror]`` or None), ``stack_paths``
    (resolved stack files, empty for arrays), ``star_path`` (or None).

    Stacks are memory-mapped (``mrcfile.mmap``), never read whole; at most :data:`MAX_OPEN_STACKS` are
    kept open at a time.  Instances pickle without their open files (they reopen on demand).
    """

    def __init__(self, *, count, box, ids, names, prior=None, pixel_size=None,
                 array=None, stack_paths=(), stack_of=None, local=None, star_path=None):
        self.count = int(count)
        self.box = int(box)
        self.ids = np.asarray(ids, dtype=np.int64)
        self.names = list(names)
        self.prior = None if prior is None else np.asarray(prior, dtype=np.float64)
        self.pixel_size = None if pixel_size is None else float(pixel_size)
        self.stack_paths = list(stack_paths)
        self.star_path = star_path
        self._array = array
        self._stack_of = stack_of
        self._local = local
        self._open = OrderedDict()   # stack number -> open MrcMemmap (LRU)

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_array(cls, array, pixel_size=None, ids=None, prior=None):
        """Wrap an (N, n, n) array (not copied); ``ids`` default to 1..N."""
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
        return cls(count=n, box=a.shape[1], ids=ids, names=names, prior=prior,
                   pixel_size=pixel_size, array=a)

    @classmethod
    def from_star(cls, path):
        """Read the particle list of a STAR file and validate every stack it references (see module doc)."""
        star_path = os.path.abspath(os.fspath(path))
        blocks = _scan_star(star_path)
        names = [b[0] for b in blocks]
        if not blocks:
            raise InputError("STAR file %s contains no table; it is empty or not a STAR file: give a STAR "
                             "file with a data_particles table (column rlnImageName)" % star_path)
        if "particles" in names:
            pname = "particles"
        elif "" in names:
            pname = ""
        elif len(blocks) == 1:
            pname = names[0]
        else:
            raise InputError("STAR file %s has no data_particles table (tables found: %s); name the "
                             "particle table data_particles" % (star_path, ", ".join("data_" + n for n in names)))
        offset = dict((n, o) for n, o in reversed(blocks))[pname]
        table = _read_table(star_path, offset, pname, guess_type=False)
        label = "data_%s" % pname
        if table is None or len(table) == 0:
            raise InputError("the particle set is empty: table %s of %s has no rows; give a STAR file "
                             "with at least one particle" % (label, star_path))
        if not table.hasColumn("rlnImageName"):
            raise InputError("table %s of %s has no rlnImageName column (columns: %s); add it with values "
                             "like '000001@stack.mrcs'" % (label, star_path, ", ".join(table.getColumnNames())))
        n = len(table)
        star_dir = os.path.dirname(star_path)

        # ids
        if table.hasColumn("rlnImageId"):
            ids = np.empty(n, dtype=np.int64)
            for i, r in enumerate(table):
                v = r.rlnImageId
                try:
                    f = float(v)
                    if not f.is_integer():
                        raise ValueError
                    ids[i] = int(f)
                except ValueError:
                    raise InputError("row %d of %s: rlnImageId %r is not an integer; fix it or drop the "
                                     "column (ids then default to 1..N)" % (i + 1, star_path, v)) from None
            uniq, counts = np.unique(ids, return_counts=True)
            if np.any(counts > 1):
                raise InputError("%s: rlnImageId %d appears %d times; ids must be unique: renumber them or "
                                 "drop the column" % (star_path, uniq[counts > 1][0], counts[counts > 1][0]))
        else:
            ids = np.arange(1, n + 1, dtype=np.int64)

        # image locations
        image_names = []
        stack_index = {}
        stack_paths, stack_tried = [], []
        stack_of = np.empty(n, dtype=np.int32)
        local = np.empty(n, dtype=np.int64)
        for i, r in enumerate(table):
            value = r.rlnImageName
            image_names.append(str(value))
            idx, p = _parse_image_name(value, i, star_path)
            s = stack_index.get(p)
            if s is None:
                resolved, tried = _resolve(p, star_dir)
                s = stack_index[p] = len(stack_paths)
                stack_paths.append(resolved)
                stack_tried.append((tried, i))
            stack_of[i] = s
            local[i] = idx

        # The same file may be referenced under two spellings: merge by resolved path.
        canon = {}
        remap = np.empty(len(stack_paths), dtype=np.int32)
        uniq_paths, uniq_tried = [], []
        for s, p in enumerate(stack_paths):
            real = os.path.realpath(p)
            if real not in canon:
                canon[real] = len(uniq_paths)
                uniq_paths.append(p)
                uniq_tried.append(stack_tried[s])
            remap[s] = canon[real]
        stack_of = remap[stack_of]
        stack_paths = uniq_paths

        # pixel size (STAR first)
        pixel_size = cls._star_pixel_size(star_path, blocks, table)

        # prior alignment
        prior = cls._star_prior(star_path, table, pixel_size)

        self = cls(count=n, box=0, ids=ids, names=image_names, prior=prior, pixel_size=pixel_size,
                   stack_paths=stack_paths, stack_of=stack_of, local=local, star_path=star_path)

        # validate every stack once
        box = None
        box_from = None
        header_sizes = set()
        max_local = np.full(len(stack_paths), -1, dtype=np.int64)
        np.maximum.at(max_local, stack_of, local)
        for s, p in enumerate(stack_paths):
            tried, row = uniq_tried[s]
            if not os.path.exists(p):
                where = " or ".join(tried)
                raise InputError("particle stack %s (row %d of %s, rlnImageName %s) does not exist (looked for %s); "
                                 "check the path: relative paths are taken from the STAR file's directory"
                                 % (tried[0], row + 1, star_path, image_names[row], where))
            m = self._get(s)
            length, ny, nx = _stack_shape(m.data, p)
            if ny != nx:
                raise InputError("particle stack %s has non-square images (%d x %d); the engine needs square "
                                 "boxes: re-extract or pad/crop the particles to a square box" % (p, ny, nx))
            if box is None:
                box, box_from = nx, p
            elif nx != box:
                raise InputError("particle stacks have different box sizes: %s is %d x %d but %s is %d x %d; "
                                 "resample or re-extract all particles to one box size"
                                 % (box_from, box, box, p, nx, nx))
            hi = int(max_local[s])
            if hi >= length:
                row_bad = int(np.flatnonzero((stack_of == s) & (local >= length))[0])
                raise InputError("row %d of %s: rlnImageName %s asks for image %d, but %s holds only %d image(s); "
                                 "fix the index (1-based) or regenerate the STAR file from the stack"
                                 % (row_bad + 1, star_path, image_names[row_bad], hi + 1, p, length))
            vs = _voxel_size(m)
            if vs is not None:
                header_sizes.add(round(vs, 4))
        self.box = int(box)
        if self.pixel_size is None and len(header_sizes) == 1:
            self.pixel_size = float(header_sizes.pop())
        return self

    @staticmethod
    def _star_pixel_size(star_path, blocks, table):
        values = None
        col = None
        for c in ("rlnImagePixelSize", "rlnPixelSize"):
            if table.hasColumn(c):
                values, col = _float_column(table, c, star_path, "pixel size"), c
                break
        if values is None:
            optics = [o for name, o in blocks if name == "optics"]
            if optics:
                ot = _read_table(star_path, optics[0], "optics", guess_type=False)
                if ot is not None and len(ot) and ot.hasColumn("rlnImagePixelSize"):
                    values = _float_column(ot, "rlnImagePixelSize", star_path, "optics pixel size")
                    col = "rlnImagePixelSize (data_optics)"
                    if len(ot) > 1 and ot.hasColumn("rlnOpticsGroup") and table.hasColumn("rlnOpticsGroup"):
                        used = set(str(r.rlnOpticsGroup) for r in table)
                        values = np.array([v for r, v in zip(ot, values) if str(r.rlnOpticsGroup) in used])
        if values is None or len(values) == 0:
            return None
        lo, hi = float(values.min()), float(values.max())
        if lo <= 0:
            raise InputError("%s: %s has a non-positive value %g; give the pixel size in Angstrom"
                             % (star_path, col, lo))
        if hi - lo > 1e-3 * hi:
            raise InputError("%s: particles have different pixel sizes (%s from %g to %g A); rescale them to "
                             "one pixel size before aligning them together" % (star_path, col, lo, hi))
        return float(values[0])

    @staticmethod
    def _star_prior(star_path, table, pixel_size):
        cols = {
            0: ["rlnAnglePsi"],
            1: ["rlnOriginX", "rlnOriginXAngst"],
            2: ["rlnOriginY", "rlnOriginYAngst"],
            3: ["rlnIsFlip"],
        }
        if not any(table.hasColumn(c) for cs in cols.values() for c in cs):
            return None
        prior = np.zeros((len(table), 4), dtype=np.float64)
        for j, cs in cols.items():
            for c in cs:
                if table.hasColumn(c):
                    v = _float_column(table, c, star_path, "prior alignment")
                    if c.endswith("Angst"):
                        if pixel_size is None:
                            raise InputError("%s: %s is in Angstrom but no pixel size is given; add "
                                             "rlnImagePixelSize (data_optics) or use rlnOriginX/Y in pixels"
                                             % (star_path, c))
                        v = v / pixel_size
                    prior[:, j] = v
                    break
        mirror = prior[:, 3]
        bad = ~np.isin(mirror, (0.0, 1.0))
        if np.any(bad):
            i = int(np.flatnonzero(bad)[0])
            raise InputError("row %d of %s: rlnIsFlip is %g; it must be 0 or 1" % (i + 1, star_path, mirror[i]))
        return prior

    # ---- open-file cache --------------------------------------------------------------------

    def _get(self, s):
        """Open MrcMemmap of stack number ``s`` (LRU cache of at most MAX_OPEN_STACKS)."""
        m = self._open.get(s)
        if m is not None:
            self._open.move_to_end(s)
            return m
        m = _open_mrc(self.stack_paths[s])
        self._open[s] = m
        while len(self._open) > MAX_OPEN_STACKS:
            _, old = self._open.popitem(last=False)
            old.close()
        return m

    def close(self):
        """Close the memory-mapped stacks (they reopen on the next read)."""
        while self._open:
            _, m = self._open.popitem()
            with contextlib.suppress(Exception):
                m.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state

    def __len__(self):
        return self.count

    def __repr__(self):
        src = self.star_path or "array"
        return "ParticleStack(%d particles, box %d, pixel size %s, from %s)" % (
            self.count, self.box, self.pixel_size, src)

    # ---- reading ------------------------------------------------------------------------------

    def read(self, indices, check_finite=True):
        """Images at 0-based particle positions ``indices`` (any order) as float32 (len, box, box).

        Sorted contiguous positions in one stack are read as one slice of the memory map.  With
        ``check_finite`` an image with NaN/inf pixels raises InputError naming the particle.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.count):
            raise IndexError("particle index out of range 0..%d: %s" % (self.count - 1,
                             idx[(idx < 0) | (idx >= self.count)][:5]))
        out = np.empty((idx.size, self.box, self.box), dtype=np.float32)
        if idx.size == 0:
            return out
        if self._array is not None:
            a = self._array
            if idx.size > 1 and idx[-1] - idx[0] == idx.size - 1 and np.all(np.diff(idx) == 1):
                out[...] = a[idx[0]:idx[-1] + 1]
            else:
                out[...] = a[idx]
        else:
            stacks = self._stack_of[idx]
            locs = self._local[idx]
            order = np.lexsort((locs, stacks))          # group by stack, ascending index within it
            cuts = np.flatnonzero(np.diff(stacks[order])) + 1
            for group in np.split(order, cuts):
                sl = locs[group]
                m = self._get(int(stacks[group[0]]))
                data = m.data if m.data.ndim == 3 else m.data[None]
                lo, hi = int(sl[0]), int(sl[-1])
                if hi - lo + 1 == sl.size and (sl.size == 1 or np.all(np.diff(sl) == 1)):
                    out[group] = data[lo:hi + 1]        # contiguous: one sequential slice of the map
                elif hi - lo + 1 <= 2 * sl.size:
                    out[group] = data[lo:hi + 1][sl - lo]   # dense: read the span once, then pick
                else:
                    out[group] = data[sl]
        if check_finite and not np.all(np.isfinite(out)):
            bad = ~np.all(np.isfinite(out.reshape(out.shape[0], -1)), axis=1)
            k = int(np.flatnonzero(bad)[0])
            raise InputError("particle %s (id %d) contains NaN or infinite pixel values; fix or remove it "
                             "from the input" % (self.names[idx[k]], self.ids[idx[k]]))
        return out


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------

def save_checkpoint(out_dir, iteration, arrays, meta):
    """Write ``out_dir/iter_%03d/`` (``state.npz`` + ``meta.json``) atomically; return its path.

    The directory is built under a temporary name, flushed, then renamed, so an ``iter_NNN`` directory
    is always complete.  ``meta`` must be JSON-serialisable (numpy scalars are converted); the iteration
    number is stored in it as ``"iteration"``.
    """
    iteration = int(iteration)
    if iteration < 0:
        raise ValueError("iteration must be >= 0, got %d" % iteration)
    target = os.path.join(os.fspath(out_dir), "iter_%03d" % iteration)
    arrays = {str(k): np.asarray(v) for k, v in arrays.items()}
    for k, v in arrays.items():
        if v.dtype.hasobject:
            raise ValueError("checkpoint array %r has dtype object; store numeric arrays only" % k)
    meta = dict(meta)
    meta["iteration"] = iteration
    meta["arrays"] = sorted(arrays)
    text = json.dumps(meta, indent=2, cls=_JSONEncoder) + "\n"
    with atomic_path(target) as tmp:
        os.mkdir(tmp)
        with open(os.path.join(tmp, "state.npz"), "wb") as f:
            np.savez(f, **arrays)
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            f.write(text)
    return target


def _load_checkpoint(path, iteration):
    with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
    if int(meta.get("iteration", -1)) != iteration:
        raise ValueError("meta.json says iteration %r" % meta.get("iteration"))
    with np.load(os.path.join(path, "state.npz"), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    missing = set(meta.get("arrays", [])) - set(arrays)
    if missing:
        raise ValueError("state.npz lacks %s" % sorted(missing))
    return arrays, meta


def last_checkpoint(out_dir):
    """The highest complete checkpoint in ``out_dir`` as ``(iteration, arrays, meta)``, or None.

    Temporary directories (interrupted saves) are ignored; a damaged ``iter_NNN`` (missing or corrupt
    files) is skipped with a warning and the next lower one is tried.
    """
    out_dir = os.fspath(out_dir)
    if not os.path.isdir(out_dir):
        return None
    found = []
    for name in os.listdir(out_dir):
        mt = _CHECKPOINT_RE.match(name)
        if mt and os.path.isdir(os.path.join(out_dir, name)):
            found.append((int(mt.group(1)), name))
    for iteration, name in sorted(found, reverse=True):
        path = os.path.join(out_dir, name)
        try:
            arrays, meta = _load_checkpoint(path, iteration)
        except Exception as e:   # corrupt or incomplete: fall back to an older one
            log.warning("skipping damaged checkpoint %s (%s: %s)", path, type(e).__name__, e)
            continue
        return iteration, arrays, meta
    return None
