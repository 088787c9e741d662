"""The run's input: the files it reads (never inside its output folder) and the fingerprint that identifies it."""
import dataclasses
import hashlib
import os

import numpy as np

from ..errors import InputError

SAMPLED_IMAGES = 3   # images hashed at each end and in the middle of the input


def digest(value):
    """A sha256 hex digest of arrays, numbers, strings, lists, dicts and dataclasses of those."""
    h = hashlib.sha256()
    _feed(h, value)
    return h.hexdigest()


def _feed(h, value):
    if isinstance(value, np.ndarray) or isinstance(value, np.generic):
        a = np.ascontiguousarray(value)
        h.update(("array %s %s|" % (a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        h.update(("%s{" % type(value).__name__).encode())
        for f in dataclasses.fields(value):
            h.update(("%s=" % f.name).encode())
            _feed(h, getattr(value, f.name))
        h.update(b"}")
    elif isinstance(value, dict):
        h.update(b"{")
        for k in sorted(value):
            h.update(("%s=" % k).encode())
            _feed(h, value[k])
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        h.update(b"[")
        for v in value:
            _feed(h, v)
            h.update(b",")
        h.update(b"]")
    else:   # None, bool, numbers, strings
        h.update(("%s:%r|" % (type(value).__name__, value)).encode())


def sampled_indices(count, each=SAMPLED_IMAGES):
    """The first, middle and last ``each`` particle positions (sorted, distinct)."""
    middle = count // 2 - each // 2
    picked = set(range(min(each, count))) | set(range(max(0, middle), min(count, middle + each))) \
        | set(range(max(0, count - each), count))
    return np.array(sorted(picked), np.int64)


def fingerprint(source, use_prior):
    """What identifies the input: count, box, pixel size and digests of its table and of sampled pixels.

    Another data set with the same count and box differs in its pixels (and usually its names); the
    STAR file's own path is not part of it, so a copy of the input (Scipion's Continue converts the
    same particles again into its own folder) is the same input.
    """
    indices = sampled_indices(source.count)
    # NaN pixels are hashed as they are: the pass that reads a particle for its alignment reports them
    images = np.asarray(source.read(indices, check_finite=False), np.float32)
    found = {
        "count": int(source.count),
        "box": int(source.box),
        "pixel_size": source.pixel_size,
        "ids": digest(np.asarray(source.ids, np.int64)),
        "names": digest(source.names.text()),
        "pixels": digest(images),
    }
    if use_prior and source.prior is not None:
        found["prior"] = digest(np.asarray(source.prior, np.float64))
    ctf = getattr(source, "ctf", None)
    if ctf is not None:
        found["ctf"] = digest(ctf)
    return found


def input_files(source, extra=()):
    """``(what, path)`` of the files a run reads: the STAR file and stacks of a source, plus ``extra``."""
    files = []
    star = getattr(source, "star_path", None)
    if star:
        files.append(("input STAR file", star))
    files += [("particle stack", p) for p in getattr(source, "stack_paths", ()) or ()]
    files += list(extra)
    return files


def _inside(path, folder):
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:   # different drives
        return False


def check_out(out_dir, inputs):
    """The absolute output folder; InputError for an empty ``--out`` or one that holds an input."""
    if out_dir is None or not str(out_dir).strip():
        raise InputError('the output directory is empty (--out ""): give a folder for this run\'s files, '
                         'e.g. --out run1 (a new or empty folder)')
    out = os.path.abspath(os.fspath(out_dir))
    real = os.path.realpath(out)
    for what, path in inputs:
        path = os.fspath(path)
        if _inside(os.path.abspath(path), out) or _inside(os.path.realpath(path), real):
            raise InputError("the %s %s is inside the output directory %s, where the run writes its files: "
                             "choose another --out" % (what, path, out))
    return out
