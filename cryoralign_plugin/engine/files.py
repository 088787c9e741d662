"""Files that are either complete or absent: atomic writes, JSON, and the checks before reading or writing.

A killed run must never leave a half-written file that looks complete, so everything the engine
writes goes through :func:`atomic_path`: the data is written to a temporary name in the destination
directory, flushed to disk, then renamed onto the final name.  Bad paths raise
:class:`~cryoralign_plugin.engine.errors.InputError` whose message names the problem *and* the fix.
"""
import contextlib
import errno
import json
import os
import shutil
import tempfile

import numpy as np

from .errors import InputError, OutputError

__all__ = ["atomic_path", "fsync_path", "check_output_dir", "check_readable_file", "json_text",
           "write_json", "read_json"]


def fsync_path(path):
    """Flush a file or a directory to disk.

    A file whose flush fails (EIO, ENOSPC, ...) raises: renaming it into place would publish data that
    never reached the disk.  Directories, and file systems that cannot fsync at all (EINVAL), are best
    effort.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP) and not os.path.isdir(path):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The block writes a file (or creates a directory) at the yielded path.  On success the result is
    flushed to disk and renamed onto ``path`` (``os.replace``; an existing directory at ``path`` is
    swapped out and removed).  If the block raises, the temporary file or directory is removed and the
    exception propagates, so ``path`` keeps its previous content (or stays absent).  An OSError of the
    OS (disk full, permission denied, read-only file system) becomes an :class:`OutputError` naming
    ``path``: a failing ``write`` does not say which file it was writing.
    """
    path = os.path.abspath(os.fspath(path))
    directory, base = os.path.split(path)
    if not os.path.isdir(directory):
        raise InputError("cannot write %s: directory %s does not exist; create it first "
                         "(or choose an existing output directory)" % (path, directory))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".%s.tmp-" % base, dir=directory)
    except OSError as e:
        raise OutputError.writing(path, e) from e
    os.close(fd)
    os.unlink(tmp)   # the block creates it (file or directory), we only reserve a unique name
    try:
        yield tmp
        if not os.path.lexists(tmp):
            raise FileNotFoundError("atomic_path(%s): the block did not create %s" % (path, tmp))
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            for name in os.listdir(tmp):
                fsync_path(os.path.join(tmp, name))
            fsync_path(tmp)
            if os.path.isdir(path) and not os.path.islink(path):
                old = tempfile.mkdtemp(prefix=".%s.old-" % base, dir=directory)
                os.rename(path, os.path.join(old, base))
                os.rename(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, path)
        else:
            fsync_path(tmp)
            os.replace(tmp, path)
        fsync_path(directory)
    except BaseException as e:
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None:
            raise OutputError.writing(path, e) from e
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


def check_readable_file(path, what):
    """InputError unless ``path`` is an existing, readable regular file (``what`` names it in the message)."""
    if not os.path.exists(path):
        raise InputError("%s %s does not exist; check the path (or regenerate the file)" % (what, path))
    if not os.path.isfile(path):
        raise InputError("%s %s is not a regular file; give the path of an MRC file" % (what, path))
    if not os.access(path, os.R_OK):
        raise InputError("%s %s is not readable (permission denied); fix its permissions "
                         "(chmod a+r) or copy it somewhere readable" % (what, path))


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


def json_text(obj):
    """``obj`` as indented JSON text ending in a newline (numpy scalars and arrays are converted)."""
    return json.dumps(obj, indent=2, cls=_JSONEncoder, allow_nan=True) + "\n"


def write_json(path, obj):
    """Write ``obj`` as indented JSON, atomically (numpy scalars and arrays are converted)."""
    text = json_text(obj)
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
