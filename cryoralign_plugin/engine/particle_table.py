"""The particle table of a STAR file, taken apart into the columns the engine uses.

:class:`~.sources.StarSource` needs each particle's id, image location, pixel size and prior
alignment; this module reads them from the table and checks them (ids unique, indices 1-based,
numbers finite, one pixel size), without opening a stack.  Every problem raises
:class:`~cryoralign_plugin.engine.errors.InputError` naming the row and the fix.

Conventions
-----------
* The particle table is ``data_particles``, else the unnamed ``data_`` block, else the file's only table.
* ``rlnImageName`` is ``"000012@stacks/a.mrcs"``: 1-based index ``@`` path.  A path alone means a
  single image (index 1).  Relative paths are resolved against the STAR file's directory first and,
  failing that, against the current directory (RELION writes paths relative to its project directory).
* Prior alignment is an ``(N, 4)`` float64 array ``[psi_deg, sx, sy, mirror]`` with the values of
  ``rlnAnglePsi``, ``rlnOriginX``, ``rlnOriginY`` (pixels) and ``rlnIsFlip`` as they are in the
  STAR file (no sign change; ``rlnOriginXAngst``/``rlnOriginYAngst`` are divided by the pixel size).
  Its columns are read with the table but checked (finite, mirror 0 or 1, shift inside the box) only
  when the prior is asked for (:meth:`PriorColumns.alignment`): a run that does not use the prior
  does not fail on it.
* The pixel size is ``rlnImagePixelSize``/``rlnPixelSize`` of the particle table, else
  ``rlnImagePixelSize`` of ``data_optics`` (of the optics groups in use); None if neither has one.
"""
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .errors import InputError
from .geometry import MIRROR, PSI, SX, SY
from .star import read_table, scan_star

__all__ = ["ParticleTable", "PriorColumns", "read_particle_table"]

#: Where each column of the prior alignment comes from: the first of its STAR columns present.
_PRIOR_COLUMNS = ((PSI, ("rlnAnglePsi",)), (SX, ("rlnOriginX", "rlnOriginXAngst")),
                  (SY, ("rlnOriginY", "rlnOriginYAngst")), (MIRROR, ("rlnIsFlip",)))
_NOT_USED = "or run without --use-prior"


@dataclass
class PriorColumns:
    """The prior alignment's columns as read from the STAR file, checked only by :meth:`alignment`.

    ``columns`` maps a column of ``[psi, sx, sy, mirror]`` to the STAR column it comes from; ``values``
    maps that STAR column to its float64 values (NaN where the text is not a number) and ``text`` to
    ``(row, text)`` of its first value that is not a number.
    """
    star_path: str
    count: int
    columns: dict
    values: dict
    text: dict

    def alignment(self, box, pixel_size):
        """The checked ``(N, 4)`` prior ``[psi_deg, sx, sy, mirror]`` (shifts in pixels) of particles in a
        ``box``-pixel box; InputError naming the row, the value and the fix."""
        prior = np.zeros((self.count, 4), dtype=np.float64)
        for j, col in sorted(self.columns.items()):
            v = self.values[col]
            if col in self.text:
                row, text = self.text[col]
                raise InputError("row %d of %s: %s value %r is not a number: fix the column %s"
                                 % (row + 1, self.star_path, col, text, _NOT_USED))
            bad = np.flatnonzero(~np.isfinite(v))
            if bad.size:
                raise InputError("row %d of %s: %s is %s: give a finite number %s"
                                 % (bad[0] + 1, self.star_path, col, v[bad[0]], _NOT_USED))
            if col.endswith("Angst"):
                if pixel_size is None:
                    raise InputError("%s: %s is in Angstrom but no pixel size is given: add rlnImagePixelSize "
                                     "(data_optics), use rlnOriginX/Y in pixels %s" % (self.star_path, col, _NOT_USED))
                v = v / pixel_size
            prior[:, j] = v
        bad = np.flatnonzero(~np.isin(prior[:, MIRROR], (0.0, 1.0)))
        if bad.size:
            raise InputError("row %d of %s: rlnIsFlip is %g: it must be 0 or 1 (fix it %s)"
                             % (bad[0] + 1, self.star_path, prior[bad[0], MIRROR], _NOT_USED))
        bad = np.flatnonzero(np.hypot(prior[:, SX], prior[:, SY]) > box / 2)
        if bad.size:
            i = bad[0]
            raise InputError("row %d of %s: prior shift (%g, %g) px is outside the %d px box: fix the STAR %s"
                             % (i + 1, self.star_path, prior[i, SX], prior[i, SY], box, _NOT_USED))
        return prior


@dataclass
class ParticleTable:
    """The columns of a STAR file's particle table, as the engine uses them (stacks not opened yet).

    Image ``i`` is image ``local[i]`` (0-based) of stack file ``stack_paths[stack_of[i]]``; one file
    named under two spellings is one stack.  ``numbered[i]`` is False where the name had no
    ``index@`` (image 1 of a single-image file).  ``tried[s]`` is ``(paths looked at, first row)`` of
    stack ``s``, for the message if it is missing.
    """
    star_path: str
    ids: np.ndarray
    names: list
    stack_paths: list
    stack_of: np.ndarray
    local: np.ndarray
    numbered: np.ndarray
    tried: list
    pixel_size: Optional[float]
    prior: Optional[PriorColumns]


def read_particle_table(path):
    """Read and check the particle table of a STAR file (see the module doc); :class:`ParticleTable`."""
    star_path = os.path.abspath(os.fspath(path))
    blocks = scan_star(star_path)
    table = _particle_rows(star_path, blocks)
    ids = _image_ids(table, star_path)
    names = [str(r.rlnImageName) for r in table]
    stack_paths, stack_of, local, numbered, tried = _image_locations(names, star_path)
    pixel_size = _star_pixel_size(star_path, blocks, table)
    prior = _prior_columns(star_path, table)
    return ParticleTable(star_path, ids, names, stack_paths, stack_of, local, numbered, tried, pixel_size,
                         prior)


def _particle_table_name(star_path, blocks):
    """``data_particles``, else the unnamed ``data_`` block, else the only table."""
    names = [b[0] for b in blocks]
    if not blocks:
        raise InputError("STAR file %s contains no table; it is empty or not a STAR file: give a STAR "
                         "file with a data_particles table (column rlnImageName)" % star_path)
    if "particles" in names:
        return "particles"
    if "" in names:
        return ""
    if len(blocks) == 1:
        return names[0]
    raise InputError("STAR file %s has no data_particles table (tables found: %s); name the "
                     "particle table data_particles" % (star_path, ", ".join("data_" + n for n in names)))


def _particle_rows(star_path, blocks):
    """The particle table (as strings); InputError if it has no rows or no rlnImageName column."""
    pname = _particle_table_name(star_path, blocks)
    offset = dict((n, o) for n, o in reversed(blocks))[pname]
    table = read_table(star_path, offset, pname, guess_type=False)
    label = "data_%s" % pname
    if table is None or len(table) == 0:
        raise InputError("the particle set is empty: table %s of %s has no rows; give a STAR file "
                         "with at least one particle" % (label, star_path))
    if not table.hasColumn("rlnImageName"):
        raise InputError("table %s of %s has no rlnImageName column (columns: %s); add it with values "
                         "like '000001@stack.mrcs'" % (label, star_path, ", ".join(table.getColumnNames())))
    return table


def _image_ids(table, star_path):
    """``rlnImageId`` as unique int64, or 1..N without the column."""
    n = len(table)
    if not table.hasColumn("rlnImageId"):
        return np.arange(1, n + 1, dtype=np.int64)
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
    return ids


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


def _image_locations(names, star_path):
    """``(stack_paths, stack_of, local, numbered, tried)`` of the ``rlnImageName`` values (see ParticleTable)."""
    star_dir = os.path.dirname(star_path)
    stack_index = {}
    stack_paths, stack_tried = [], []
    stack_of = np.empty(len(names), dtype=np.int32)
    local = np.empty(len(names), dtype=np.int64)
    numbered = np.array(["@" in v for v in names], dtype=bool)
    for i, value in enumerate(names):
        idx, p = _parse_image_name(value, i, star_path)
        s = stack_index.get(p)
        if s is None:
            resolved, tried = _resolve(p, star_dir)
            s = stack_index[p] = len(stack_paths)
            stack_paths.append(resolved)
            stack_tried.append((tried, i))
        stack_of[i] = s
        local[i] = idx
    stack_paths, stack_of, local, stack_tried = _merge_spellings(stack_paths, stack_tried, stack_of, local)
    return stack_paths, stack_of, local, numbered, stack_tried


def _merge_spellings(stack_paths, stack_tried, stack_of, local):
    """The same file may be referenced under two spellings: merge the stacks by resolved path."""
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
    return uniq_paths, remap[stack_of], local, uniq_tried


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


def _star_pixel_size(star_path, blocks, table):
    """The particles' pixel size from the particle table or ``data_optics``; None if neither has one."""
    values = None
    col = None
    for c in ("rlnImagePixelSize", "rlnPixelSize"):
        if table.hasColumn(c):
            values, col = _float_column(table, c, star_path, "pixel size"), c
            break
    if values is None:
        optics = [o for name, o in blocks if name == "optics"]
        if optics:
            ot = read_table(star_path, optics[0], "optics", guess_type=False)
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


def _lenient_floats(table, col):
    """``(values, first)``: the column as float64, NaN where a value is not a number, and ``(row, text)``
    of the first such value (None if every value is a number)."""
    texts = table.getColumnValues(col)
    try:
        return np.array(texts, dtype=np.float64), None
    except ValueError:
        pass
    out = np.full(len(texts), np.nan)
    first = None
    for i, t in enumerate(texts):
        try:
            out[i] = float(t)
        except ValueError:
            first = first or (i, t)
    return out, first


def _prior_columns(star_path, table):
    """The prior alignment's columns, not checked (see :class:`PriorColumns`); None if there is none."""
    columns, values, text = {}, {}, {}
    for j, cs in _PRIOR_COLUMNS:
        col = next((c for c in cs if table.hasColumn(c)), None)
        if col is not None:
            columns[j] = col
            values[col], first = _lenient_floats(table, col)
            if first is not None:
                text[col] = first
    return PriorColumns(star_path, len(table), columns, values, text) if columns else None
