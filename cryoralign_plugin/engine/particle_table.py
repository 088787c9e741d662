"""The particle table of a STAR file, taken apart into the columns the engine uses.

:class:`~.sources.StarSource` needs each particle's id, image location, pixel size, prior
alignment and CTF; this module reads them from the table and checks them (ids unique, indices
1-based, numbers finite, one pixel size, CTF values usable), without opening a stack.  Every problem
raises :class:`~cryoralign_plugin.engine.errors.InputError` naming the row and the fix.

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
* ``data_optics`` (RELION 3.1+) holds one row per optics group; a particle takes the row of its
  ``rlnOpticsGroup`` (any row where there is one, or where all rows agree on the value asked for).
* Each particle's pixel size is ``rlnImagePixelSize``/``rlnPixelSize`` of the particle table, else
  ``rlnImagePixelSize`` of its optics group, else (RELION 3.0) ``1e4 * rlnDetectorPixelSize (um) /
  rlnMagnification``.  Several optics groups may have different pixel sizes (the CTF keeps each
  particle's); the set's one pixel size (:meth:`ParticleTable.pixel_size`) is their common value
  (InputError if they differ), None if the file gives none.
* The CTF (:class:`~.ctf.CtfColumns`) is read when the particle table has a CTF column:
  ``rlnDefocusU``, ``rlnDefocusV`` (A), ``rlnDefocusAngle`` (deg), optional ``rlnPhaseShift`` (deg)
  and ``rlnCtfBfactor`` (A^2) per particle; ``rlnVoltage`` (kV), ``rlnSphericalAberration`` (mm),
  ``rlnAmplitudeContrast`` and ``rlnCtfDataArePhaseFlipped`` (0/1, default 0) from the particle table
  (RELION 3.0) or the optics group (3.1).  All of them but the optional ones must be there.  The
  microscope's columns in ``data_optics`` alone are no CTF (RELION writes them before any CTF is
  estimated), so such particles have none.
"""
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .ctf import CtfColumns, check_ctf_values
from .errors import InputError
from .geometry import MIRROR, PSI, SX, SY
from .star import read_table, scan_star

__all__ = ["Names", "ParticleTable", "PriorColumns", "read_particle_table"]

#: Where each column of the prior alignment comes from: the first of its STAR columns present.
_PRIOR_COLUMNS = ((PSI, ("rlnAnglePsi",)), (SX, ("rlnOriginX", "rlnOriginXAngst")),
                  (SY, ("rlnOriginY", "rlnOriginYAngst")), (MIRROR, ("rlnIsFlip",)))
_NOT_USED = "or run without --use-prior"


class Names:
    """The particles' image names (``rlnImageName`` as given) as one UTF-8 buffer and their bounds: a
    read-only sequence of str.  About 30 bytes a particle where a list of str holds ~90, and 10^6 str
    objects kept from the STAR rows they were read with would keep the heap of those (freed) rows
    fragmented: reading a 10^6-row STAR file left 227 MB so, 87 MB now.  Names hold no newline
    (STAR values cannot)."""

    def __init__(self, values):
        values = list(values)
        self._blob = "\n".join(values).encode("utf-8")
        ends = np.flatnonzero(np.frombuffer(self._blob, np.uint8) == 10) if values else np.empty(0, np.int64)
        self._bounds = np.concatenate([[-1], ends, [len(self._blob)] if values else []]).astype(np.int64)

    def __len__(self):
        return len(self._bounds) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Names(self[i] for i in range(*index.indices(len(self))))
        i = int(index)
        if not -len(self) <= i < len(self):
            raise IndexError("name %d of %d" % (i, len(self)))
        i %= len(self)
        return self._blob[self._bounds[i] + 1:self._bounds[i + 1]].decode("utf-8")

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __eq__(self, other):
        return list(self) == list(other)

    def text(self):
        """Every name, one per line (``"\\n".join(names)``)."""
        return self._blob.decode("utf-8")

    def __repr__(self):
        return "Names(%d)" % len(self)


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
    named under two spellings is one stack.  ``numbered[i]`` is False where the name had no ``index@``
    (image 1 of a single-image file).  ``tried[s]`` is ``(paths looked at, first row)`` of stack ``s``,
    for the message if it is missing.  ``pixel_sizes`` is each particle's pixel size (A) or None,
    ``pixel_size_column`` the column it comes from; ``ctf`` the particles' CTF or None.
    """
    star_path: str
    ids: np.ndarray
    names: "Names"
    stack_paths: list
    stack_of: np.ndarray
    local: np.ndarray
    numbered: np.ndarray
    tried: list
    pixel_sizes: Optional[np.ndarray]
    pixel_size_column: Optional[str]
    prior: Optional[PriorColumns]
    ctf: Optional[CtfColumns]

    def pixel_size(self):
        """The particles' one pixel size (A), None if the file gives none; InputError if they differ
        (images at different scales cannot be aligned together)."""
        sizes = self.pixel_sizes
        if sizes is None:
            return None
        lo, hi = float(sizes.min()), float(sizes.max())
        if hi - lo > 1e-3 * hi:
            raise InputError("%s: particles have different pixel sizes (%s from %g to %g A); rescale them to "
                             "one pixel size before aligning them together"
                             % (self.star_path, self.pixel_size_column, lo, hi))
        return float(sizes[0])


def read_particle_table(path):
    """Read and check the particle table of a STAR file (see the module doc); :class:`ParticleTable`."""
    star_path = os.path.abspath(os.fspath(path))
    blocks = scan_star(star_path)
    table = _particle_rows(star_path, blocks)
    ids = _image_ids(table, star_path)
    names = [str(r.rlnImageName) for r in table]
    stack_paths, stack_of, local, numbered, tried = _image_locations(names, star_path)
    names = Names(names)
    columns = _Columns(star_path, blocks, table)
    sizes, size_column = _pixel_sizes(columns)
    ctf = _ctf_columns(columns, sizes)
    prior = _prior_columns(star_path, table)
    return ParticleTable(star_path, ids, names, stack_paths, stack_of, local, numbered, tried, sizes,
                         size_column, prior, ctf)


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


class _Column:
    """One STAR column as float64 at the level of its own table (``values``), ``where(i)`` naming its row
    ``i``, and ``rows``: for an optics column, each particle's row of ``data_optics`` (None for a column
    of the particle table)."""

    def __init__(self, name, values, where, rows=None):
        self.name, self.values, self.where, self.rows = name, values, where, rows

    def per_particle(self):
        return self.values if self.rows is None else self.values[self.rows]

    def check(self, field):
        """Check the values as the CTF parameter ``field`` (see :func:`~.ctf.check_ctf_values`)."""
        check_ctf_values({field: self.values}, names={field: self.name}, where=self.where)
        return self


class _Columns:
    """Columns of the particle table, else of ``data_optics`` joined through ``rlnOpticsGroup``."""

    def __init__(self, star_path, blocks, table):
        self.star_path, self.table = star_path, table
        offsets = [o for name, o in blocks if name == "optics"]
        optics = read_table(star_path, offsets[0], "optics", guess_type=False) if offsets else None
        self.optics = optics if optics is not None and len(optics) else None
        self._rows = None

    def particle_row(self, i):
        return "row %d of %s" % (i + 1, self.star_path)

    def optics_row(self, i):
        return "row %d of data_optics in %s" % (i + 1, self.star_path)

    def has(self, col, optics=True):
        return self.table.hasColumn(col) or (optics and self.optics is not None and self.optics.hasColumn(col))

    def get(self, col, optics=True):
        """The :class:`_Column` ``col`` (particle table first); None where neither table has it."""
        if self.table.hasColumn(col):
            return _Column(col, _floats(self.table, col, self.particle_row), self.particle_row)
        if optics and self.optics is not None and self.optics.hasColumn(col):
            values = _floats(self.optics, col, self.optics_row)
            return _Column(col, values, self.optics_row, self._optics_rows(col, values))
        return None

    def _optics_rows(self, col, values):
        """Each particle's row of data_optics, by rlnOpticsGroup (any row if they all agree on ``col``)."""
        n = len(self.table)
        if len(self.optics) == 1:
            return np.zeros(n, dtype=np.int64)
        if not (self.table.hasColumn("rlnOpticsGroup") and self.optics.hasColumn("rlnOpticsGroup")):
            if np.all(values == values[0]):
                return np.zeros(n, dtype=np.int64)
            raise InputError("%s: data_optics has %d optics groups with different %s values, but the particles "
                             "cannot be matched to them: add rlnOpticsGroup to data_particles and data_optics"
                             % (self.star_path, len(self.optics), col))
        if self._rows is None:
            group_row = {}
            for r, g in enumerate(self.optics.getColumnValues("rlnOpticsGroup")):
                group_row.setdefault(_group_key(g), r)
            texts, first, which = np.unique(np.array(self.table.getColumnValues("rlnOpticsGroup"), dtype=str),
                                            return_index=True, return_inverse=True)
            rows = np.empty(len(texts), dtype=np.int64)
            for u in np.argsort(first):                 # the groups in the order of their first row
                r = group_row.get(_group_key(texts[u]))
                if r is None:
                    raise InputError("%s: rlnOpticsGroup %s is not in data_optics (groups: %s): fix the group or "
                                     "add it to data_optics" % (self.particle_row(first[u]), texts[u], ", ".join(
                                         str(k) for k in group_row)))
                rows[u] = r
            self._rows = rows[which.reshape(-1)]
        return self._rows


def _group_key(text):
    """An optics group as a key: ``1``, ``01`` and ``1.0`` are one group."""
    try:
        f = float(text)
        return int(f) if f.is_integer() else f
    except ValueError:
        return str(text).strip()


def _floats(table, col, where):
    """The column as float64 (NaN and inf kept: the callers' checks name them); InputError at the first
    value that is not a number."""
    values, first = _lenient_floats(table, col)
    if first is not None:
        raise InputError("%s: %s value %r is not a number: fix the column" % (where(first[0]), col, first[1]))
    return values


def _pixel_sizes(columns):
    """Each particle's pixel size (A) and where it comes from, or (None, None) if the file gives none.

    In order: rlnImagePixelSize or rlnPixelSize of the particle table, rlnImagePixelSize of data_optics
    (RELION 3.1), 1e4 * rlnDetectorPixelSize (um) / rlnMagnification of the particle table (RELION 3.0).
    """
    for col, optics in (("rlnImagePixelSize", False), ("rlnPixelSize", False), ("rlnImagePixelSize", True)):
        c = columns.get(col, optics=optics)
        if c is not None:
            return c.check("pixel_size").per_particle(), col
    if columns.has("rlnDetectorPixelSize", optics=False) and columns.has("rlnMagnification", optics=False):
        det, mag = columns.get("rlnDetectorPixelSize", False), columns.get("rlnMagnification", False)
        name = "1e4 * rlnDetectorPixelSize / rlnMagnification"
        with np.errstate(divide="ignore", invalid="ignore"):
            sizes = 1e4 * det.values / mag.values
        return _Column(name, sizes, columns.particle_row).check("pixel_size").values, name
    return None, None


#: The CTF's STAR columns and the :class:`~.ctf.CtfColumns` field each fills.
_CTF_PARTICLE = {"rlnDefocusU": "defocus_u", "rlnDefocusV": "defocus_v", "rlnDefocusAngle": "defocus_angle",
                 "rlnPhaseShift": "phase_shift", "rlnCtfBfactor": "bfactor"}
_CTF_MICROSCOPE = {"rlnVoltage": "voltage", "rlnSphericalAberration": "cs", "rlnAmplitudeContrast":
                   "amplitude_contrast"}
_CTF_OPTIONAL = ("rlnPhaseShift", "rlnCtfBfactor")


def _ctf_columns(columns, pixel_sizes):
    """The particles' :class:`~.ctf.CtfColumns`, or None if the particle table has no CTF column.

    The per-particle columns (defocus, phase shift, B-factor) come from the particle table; the
    microscope's (voltage, Cs, amplitude contrast, rlnCtfDataArePhaseFlipped) from it or from
    data_optics.  Microscope columns in data_optics alone are not a CTF: RELION writes them for
    particles whose CTF was never estimated.
    """
    table = columns.table
    found = [c for c in list(_CTF_PARTICLE) + list(_CTF_MICROSCOPE) if table.hasColumn(c)]
    if not found:
        return None
    missing = []
    per_particle = [c for c in _CTF_PARTICLE if c not in _CTF_OPTIONAL and not columns.has(c, optics=False)]
    if per_particle:
        missing.append("%s in data_particles" % ", ".join(per_particle))
    microscope = [c for c in _CTF_MICROSCOPE if not columns.has(c)]
    if microscope:
        missing.append("%s in data_particles%s" % (", ".join(microscope),
                                                   " or data_optics" if columns.optics is not None else ""))
    if missing:
        raise InputError("%s has CTF columns (%s) but no %s: add the missing columns, or remove the CTF "
                         "columns to use the particles without CTF"
                         % (columns.star_path, ", ".join(found), " and no ".join(missing)))
    values = {}
    for col, field in list(_CTF_PARTICLE.items()) + list(_CTF_MICROSCOPE.items()):
        c = columns.get(col, optics=col in _CTF_MICROSCOPE)
        if c is not None:
            values[field] = c.check(field).per_particle()
    flipped = columns.get("rlnCtfDataArePhaseFlipped")
    if flipped is not None:
        bad = np.flatnonzero(~np.isin(flipped.values, (0.0, 1.0)))
        if bad.size:
            raise InputError("%s: rlnCtfDataArePhaseFlipped is %g: it must be 0 (not flipped) or 1 (phase-flipped)"
                             % (flipped.where(bad[0]), flipped.values[bad[0]]))
        values["phase_flipped"] = flipped.per_particle() == 1.0
    return CtfColumns(**values, pixel_size=pixel_sizes)


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
