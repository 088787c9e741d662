"""STAR tables (RELION's text format) read and written with emtable.

emtable reads one table from an open file but cannot list a file's tables, and it splits a row on
blanks; this module adds the scan that finds each ``data_`` block, reads one by name, and quotes the
values that hold blanks so that they read back whole.  Writes are atomic (:func:`~.files.atomic_path`)
and bad files raise :class:`~cryoralign_plugin.engine.errors.InputError` naming the problem and the fix.

Reading rules beyond emtable's:

* Text is UTF-8, else latin-1 (older tools write accented names in 8 bits); a file with NUL bytes
  is binary (e.g. an MRC stack given as the STAR file) and refused.
* emtable, like RELION, ends a loop at its first blank line, so rows after a blank line inside a
  loop would be dropped without a word.  Such a table is refused, naming the line and how many rows it
  hides, rather than read whole: RELION would read the same file differently (without those rows),
  so the file is ambiguous and only its author can say which rows belong in it.
"""
import os

import numpy as np
from emtable import Table

from .errors import InputError
from .files import atomic_path, check_readable_file

__all__ = ["scan_star", "read_table", "read_star", "write_star"]

_ENCODINGS = ("utf-8", "latin-1")


def _check_star_path(path):
    """InputError for a folder or an unreadable file given as the STAR file."""
    if os.path.isdir(path):
        stars = sorted(n for n in os.listdir(path) if n.endswith(".star"))
        hint = " (it holds %s)" % ", ".join(stars[:5]) if stars else ""
        raise InputError("STAR file %s is a folder%s: give the path of the STAR file itself, e.g. %s"
                         % (path, hint, os.path.join(path, stars[0] if stars else "particles.star")))
    check_readable_file(path, "STAR file")


def _decode(b):
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b.decode("latin-1")


def scan_star(path):
    """Return [(table_name, byte_offset_of_data_line)] for every ``data_`` block of a STAR file.

    InputError for a binary file, or if a blank line inside a loop hides rows (see the module doc)."""
    path = os.fspath(path)
    _check_star_path(path)
    blocks = []
    loop = _LoopEnd()
    with open(path, "rb") as f:
        for number, line in enumerate(iter(f.readline, b""), start=1):
            if b"\0" in line:
                raise InputError("STAR file %s is not a text file (binary data at line %d): give the STAR "
                                 "(.star) file, not an image stack or another binary file" % (path, number))
            s = line.strip()
            if s.startswith(b"data_"):
                loop.check(path)
                blocks.append((_decode(s[5:]).split()[0] if len(s) > 5 else "", f.tell() - len(line)))
                loop = _LoopEnd(blocks[-1][0])
            elif not (s and loop.state == "rows"):     # (the common case, a row, skips the call)
                loop.see(s, number)
    loop.check(path)
    return blocks


class _LoopEnd:
    """Follows one ``data_`` block line by line as emtable reads it, to find rows after the blank line
    that ends its loop (emtable stops there)."""

    def __init__(self, name=None):
        self.name = name
        self.state = "block"      # block -> columns -> rows -> ended
        self.blank_line = None
        self.hidden = 0

    def see(self, s, number):
        """Take the next (stripped) line of the block, ``number`` its line number."""
        if self.state == "block":                  # before the columns, as emtable's label search
            if s.startswith(b"loop_"):
                self.state = "columns"
            elif s.startswith(b"_"):
                self.state = "single"              # a single-row (label value) block: no loop
        elif self.state in ("columns", "rows"):
            if self.state == "columns" and s.startswith(b"_"):
                return
            if s:
                self.state = "rows"
            else:
                self.state, self.blank_line = "ended", number
        elif self.state == "ended":
            if s.startswith(b"loop_"):
                self.state = "single"              # another loop: not ours to judge
            elif s and not s.startswith((b"#", b"_")):
                self.hidden += 1

    def check(self, path):
        if self.hidden:
            raise InputError("line %d of %s: a blank line inside the loop of data_%s hides %d more rows: "
                             "remove the blank line" % (self.blank_line, path, self.name, self.hidden))


def read_table(path, offset, name, guess_type=True, types=None):
    """Read the table whose ``data_`` line starts at ``offset`` (from :func:`scan_star`, which checks the
    file); a table with no columns gives None."""
    for encoding in _ENCODINGS:
        with open(path, "r", encoding=encoding) as f:
            f.seek(offset)
            t = Table()
            try:
                t.readStar(f, tableName=name, guessType=guess_type, types=types)
            except UnicodeDecodeError:
                continue   # not UTF-8: latin-1 reads any byte
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
    blocks = scan_star(path)
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
    t = read_table(path, offset, name, guess_type=guess_type, types=types)
    return t if t is not None else Table()


def _star_value(v):
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


def _quoted_columns(columns, rows):
    """Which string columns to quote: those with a value that holds whitespace or is empty (STAR values
    are blank-separated).  A column is quoted in every row if any row needs it, so that emtable's reader
    (which picks its splitting rule from the first row) parses all rows the same way."""
    quote = [False] * len(columns)
    for r in rows:
        if len(r) != len(columns):
            raise ValueError("STAR row %r has %d values for %d columns %s" % (r, len(r), len(columns), columns))
        for j, v in enumerate(r):
            if isinstance(v, str):
                if '"' in v or "'" in v or "\n" in v:
                    raise ValueError("STAR value %r in column %s contains a quote or newline; "
                                     "rename it without quotes" % (v, columns[j]))
                if v.split() != [v]:   # empty, or holds whitespace
                    quote[j] = True
    return quote


def _write_table(f, name, columns, rows):
    """One table with emtable's writer, a row at a time (no row objects kept; its line format is taken
    from the first row, as ``Table.writeStar`` takes it from the rows it holds)."""
    quote = _quoted_columns(columns, rows)
    quoted = any(quote)
    writer = Table.Writer(f)
    writer.writeTableName(name)
    writer.writeHeader(list(Table(columns=columns).getColumns()))
    for r in rows:
        values = [_star_value(v) for v in r]
        writer.writeRowValues(['"%s"' % v if q else v for v, q in zip(values, quote)] if quoted else values)
    writer.writeNewline()


def write_star(path, tables):
    """Write STAR tables atomically, as emtable writes them.

    ``tables`` maps a table name to ``(columns, rows)``: a list of column names (``"rlnImageName"``) and
    the rows, tuples of one value per column: a list, or any iterable that can be iterated twice (once
    to choose the quoting, once to write; e.g. a generator's factory object), so that a table of 10^6
    particles is written without holding its rows.  Tables are written in the dict's order; an empty
    ``rows`` still writes the columns so the table reads back (empty) with its columns.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write("\n# version 30001 (written by cryoralign)\n")
            for name, (columns, rows) in tables.items():
                columns = [str(c) for c in columns]
                if not columns:
                    raise ValueError("STAR table %s has no columns" % name)
                _write_table(f, name, columns, rows)
