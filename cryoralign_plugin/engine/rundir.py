"""The output folder belongs to its run: input protection, a lock, a manifest, and what may be resumed.

Before a run writes anything, rank 0 claims its output folder (:func:`claim`):

1. **Never over the input.**  An empty ``--out`` is refused, and so is a folder that holds (at any
   depth, following symbolic links too) one of the run's inputs: the STAR file, a particle stack or
   the references file.
2. **One run at a time.**  ``run.lock`` in the folder is held with an exclusive ``flock`` for the
   whole run; the OS releases it when the process ends, however it ends (so a run killed with SIGKILL
   can be continued at once).  A second run fails at once, naming the holder's pid, host and start.
   A lock file copied from another folder (Scipion's Continue copies the run it continues) locks
   nothing and is simply taken over.
3. **A manifest first.**  ``run.json`` (:func:`manifest`) holds the command, the engine version,
   every setting that determines the result (automatic values resolved), how the references start
   and a fingerprint of the input (count, box, pixel size, digests of the ids, the names, the prior
   and CTF when used, and of the pixels of the first, middle and last few images).  It is written
   atomically before any other file, so every file in the folder belongs to the run it describes.
4. **What the folder may be used for** (:func:`_decide`), with ``S`` its manifest:

   ===================================  ==========================  ==================================
   the folder                           a new run                   ``--continue``
   ===================================  ==========================  ==================================
   absent, or empty                     starts                      starts (nothing to resume)
   holds a run (``S``)                  refused; ``--overwrite``    resumes if ``S`` matches, else
                                        replaces that run           refused naming each difference
   holds checkpoints or results but     refused (a run of an        refused
   no ``run.json``                      earlier version)
   holds other files                    refused                     refused
   ===================================  ==========================  ==================================

   Hidden entries (names starting with ``.``, e.g. ``.DS_Store`` or an NFS ``.nfs*``) that are not
   the run's own temporary files are harmless: they neither make a folder "not empty" nor are ever
   removed.  ``--overwrite`` removes only the files a run owns (:func:`~.outputs.owned`):
   ``particles.star`` first (it marks completion), then the checkpoints, then the rest, and then
   writes the new manifest; anything else in the folder stays.  A refused run writes nothing at all.

What may change on ``--continue`` is what cannot change the result: ``iterations`` (as many as
done, which only rewrites the results, or more), ``auto_stop``, ``stop_fraction``, ``backend``,
``gpu``, ``threads`` and ``batch_size`` (a particle's search does not depend on its batch and class
sums are exact integers; ``tests/engine/test_manifest.py`` checks it).  A continued run that will
do more iterations first removes ``particles.star``: until it writes it again, nothing in the folder
looks like a finished result.
"""
import dataclasses
import datetime
import errno
import fcntl
import hashlib
import json
import os
import platform
import shutil

import numpy as np

from .. import __version__
from . import ctf_correction, outputs
from .errors import InputError
from .files import check_output_dir, json_text, read_json, write_json

MANIFEST_FORMAT = 1
PROGRAM = "cryoralign-engine"
# Settings that cannot change the result: free to differ on --continue, so not in the manifest.
FREE_SETTINGS = ("iterations", "auto_stop", "stop_fraction", "backend", "gpu", "threads", "batch_size")
# Settings that only multireference alignment uses.
MRA_SETTINGS = ("min_members", "balanced_iterations", "debias")
# Settings that only a growing run (mra --grow, :mod:`.grow`) uses.
GROW_SETTINGS = ("grow_iterations", "final_iterations", "new_class_members")
# What differs between the batches of a growing run: its input grows (whose prefix :mod:`.grow` checks),
# the record of its batches, and the automatic minimum class size, which follows the particle count.
GROWING_FIELDS = ("input", "growth")
GROWING_SETTINGS = ("min_members",)
SAMPLED_IMAGES = 3   # images hashed at each end and in the middle of the input
SHOWN_DIGEST = 12    # hex digits of a digest shown in messages


# --------------------------------------------------------------------------------------------------
# The manifest
# --------------------------------------------------------------------------------------------------

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
        "names": digest("\n".join(source.names)),
        "pixels": digest(images),
    }
    if use_prior and source.prior is not None:
        found["prior"] = digest(np.asarray(source.prior, np.float64))
    ctf = getattr(source, "ctf", None)
    if ctf is not None:
        found["ctf"] = digest(ctf)
    return found


def manifest(command, settings, source, radius, n_classes, start, internal_box=None, grow=False):
    """The manifest of a run (a JSON-ready dict).

    ``source`` is the input as given; ``settings``, ``radius`` and ``internal_box`` (default: the
    input box) are those the run works with (:func:`~.downsample.plan`), its checkpoints being there.

    ``start`` says how the references start: ``{"classes": K, "seed": S}`` (random particles) or
    ``{"references": array}`` (given; stored as its digest); ``{}`` for reference-free alignment.
    Only ``created`` is informative; everything else must match for ``--continue``.
    """
    chosen = {}
    for f in dataclasses.fields(settings):
        name = f.name
        # the seed draws random initial references (then in ``start``) and the mini-batch subsets
        if name in FREE_SETTINGS or (name == "seed" and "seed" in start) or \
                (command != "mra" and name in MRA_SETTINGS) or (not grow and name in GROW_SETTINGS):
            continue
        chosen[name] = getattr(settings, name)
    chosen["radius"] = int(radius)
    chosen["internal_box"] = int(source.box if internal_box is None else internal_box)
    chosen["ctf"] = ctf_correction.resolve_mode(settings.ctf, getattr(source, "ctf", None) is not None)[0]
    if command == "mra":
        chosen["min_members"] = int(settings.resolved_min_members(source.count, n_classes))
        chosen["balanced_iterations"] = int(settings.resolved_balanced_iterations())
    start = dict(start)
    if "references" in start:
        refs = np.asarray(start["references"], np.float32)
        start["references"] = digest(refs)
        start["count"] = int(len(refs))
    return _plain({
        "format": MANIFEST_FORMAT,
        "program": PROGRAM,
        "version": __version__,
        "command": command,
        "settings": chosen,
        "start": start,
        "input": fingerprint(source, settings.use_prior),
        "created": {"time": _now(), "host": platform.node(), "pid": os.getpid(),
                    "star": getattr(source, "star_path", None)},
    })


def _plain(obj):
    """``obj`` as JSON gives it back (numpy scalars converted, tuples as lists): comparable with a read one."""
    return json.loads(json_text(obj))


def _now():
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = prefix + str(k)
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _show(value):
    if value is _MISSING:
        return "(none)"
    if isinstance(value, str):
        return value[:SHOWN_DIGEST] if len(value) == 64 and all(c in "0123456789abcdef" for c in value) else value
    return json.dumps(value)


_MISSING = object()


def _comparable(m):
    """A growing run's manifest without what may change from one batch to the next."""
    kept = {k: v for k, v in m.items() if k not in GROWING_FIELDS}
    kept["settings"] = {k: v for k, v in m.get("settings", {}).items() if k not in GROWING_SETTINGS}
    return kept


def differences(old, new):
    """``"field: old -> new"`` for every field of two manifests that differs (``created`` ignored)."""
    a = _flat({k: v for k, v in old.items() if k != "created"})
    b = _flat({k: v for k, v in new.items() if k != "created"})
    return ["%s: %s -> %s" % (k, _show(a.get(k, _MISSING)), _show(b.get(k, _MISSING)))
            for k in sorted(set(a) | set(b)) if a.get(k, _MISSING) != b.get(k, _MISSING)]


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------
# The lock
# --------------------------------------------------------------------------------------------------

class RunLock:
    """An exclusive ``flock`` on ``run.lock`` in an output folder, released by :meth:`release` or by
    the end of the process."""

    def __init__(self, path, fd, created):
        self.path, self.fd, self.created = path, fd, created

    @classmethod
    def take(cls, folder, create):
        """Lock ``folder``'s lock file (made if ``create``); InputError if another process holds it."""
        path = os.path.join(folder, outputs.LOCK_FILE)
        for _ in range(10):
            created = False
            try:
                if create:
                    try:
                        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                        created = True
                    except FileExistsError:
                        fd = os.open(path, os.O_RDWR)
                else:
                    fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                if not create:
                    return None
                continue
            except OSError as e:
                raise InputError("cannot write to output directory %s: %s; choose a directory you can write to"
                                 % (folder, e.strerror or e)) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise InputError("%s is in use by another run (%s): wait for it to finish or use another "
                                     "--out" % (folder, _holder(path))) from None
                return _Unlocked(path, e)   # a file system without locks: run unlocked (and say so)
            try:   # the file we locked must still be the one at the path (a refused run may remove its own)
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return cls(path, fd, created)
            os.close(fd)
        raise InputError("cannot lock %s: its lock file keeps changing; is another run starting there? "
                         "Wait for it or use another --out" % path)

    def record_owner(self):
        """Write this process's pid, host and start time into the lock file (for a refused run to show)."""
        text = json.dumps({"pid": os.getpid(), "host": platform.node(), "since": _now()}) + "\n"
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text.encode(), 0)

    def release(self, remove=False):
        """Unlock; with ``remove``, first delete the lock file if this run created it (a refused run)."""
        if self.fd is None:
            return
        if remove and self.created:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


class _Unlocked(RunLock):
    """Where ``flock`` is not supported: the run goes on, unprotected against a concurrent one."""

    def __init__(self, path, error):
        super().__init__(path, None, False)
        self.error = error

    def record_owner(self):
        pass


def holder(folder):
    """``"pid P on HOST since T"`` while a run holds ``folder``'s lock, else None; writes nothing."""
    path = os.path.join(os.fspath(folder), outputs.LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        return _holder(path) if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) else None
    finally:
        os.close(fd)   # closing releases a lock taken here
    return None


def _holder(path):
    try:
        with open(path) as f:
            owner = json.loads(f.read() or "{}")
        return "pid %s on %s since %s" % (owner["pid"], owner["host"], owner["since"])
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown: it is still starting"


# --------------------------------------------------------------------------------------------------
# The folder: what it holds and what a run may do with it
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Survey:
    """What an output folder holds, read without writing anything."""
    exists: bool
    manifest: object = None         # the manifest (dict), None if absent, or the error reading it
    damaged: bool = False           # run.json is there but unreadable
    lock: bool = False              # run.lock is there
    checkpoints: bool = False
    results: list = dataclasses.field(default_factory=list)    # owned result files present
    foreign: list = dataclasses.field(default_factory=list)    # visible entries the run does not own

    @property
    def empty(self):
        return not (self.manifest is not None or self.damaged or self.checkpoints or self.results or self.foreign)


def survey(out):
    if not os.path.lexists(out):
        return Survey(False)
    if not os.path.isdir(out):
        raise InputError("cannot write to output directory %s: it exists and is not a directory; choose a "
                         "directory you can write to" % out)
    try:
        names = sorted(os.listdir(out))
    except OSError as e:
        raise InputError("cannot read output directory %s: %s; choose a directory you can write to"
                         % (out, e.strerror or e)) from None
    found = Survey(True, lock=outputs.LOCK_FILE in names)
    for name in names:
        if name == outputs.MANIFEST_JSON:
            try:
                found.manifest = read_json(os.path.join(out, name))
                if not isinstance(found.manifest, dict):
                    raise InputError("not a JSON object")
            except InputError:
                found.manifest, found.damaged = None, True
        elif outputs.is_checkpoint(name):
            found.checkpoints = True
        elif name in outputs.RESULT_FILES:
            found.results.append(name)
        elif not outputs.owned(name) and not name.startswith("."):
            found.foreign.append(name)
    return found


FRESH, OVERWRITE, RESUME = "fresh", "overwrite", "resume"


def _decide(out, found, new, resume, overwrite, grow=False):
    """FRESH, OVERWRITE or RESUME for a folder as surveyed; InputError (writing nothing) if refused.

    With ``grow`` (resume set too) the run there resumes with a grown input: its manifest is compared
    without :data:`GROWING_FIELDS`."""
    if resume and overwrite:
        raise InputError("--continue and --overwrite contradict each other: --continue resumes the run in %s, "
                         "--overwrite replaces it; give one of them" % out)
    if not found.exists or found.empty:
        return FRESH
    if found.manifest is None and not found.damaged:
        if found.foreign:
            shown = ", ".join(found.foreign[:5]) + (", ..." if len(found.foreign) > 5 else "")
            raise InputError("%s is not empty and is not a cryoralign run folder (it holds %s): choose another "
                             "--out (a new or empty folder)" % (out, shown))
        raise InputError("%s holds the files of a run without a manifest (%s), from an earlier version of "
                         "cryoralign, which cannot be checked against this run: continue it with that version, "
                         "or delete its files, or choose another --out" % (out, outputs.MANIFEST_JSON))
    if not resume:
        if overwrite:
            return OVERWRITE
        raise InputError("%s holds a previous run: use --continue to resume it, --overwrite to replace it, or "
                         "another --out" % out)
    if found.damaged:
        raise InputError("the manifest %s is damaged, so the run in %s cannot be checked against this one: "
                         "use --overwrite to start it again, or another --out"
                         % (os.path.join(out, outputs.MANIFEST_JSON), out))
    if grow and "growth" not in found.manifest:
        raise InputError("%s holds a run that was not started with --grow, which cannot grow: start a "
                         "growing run in another --out" % out)
    changed = differences(_comparable(found.manifest), _comparable(new)) if grow \
        else differences(found.manifest, new)
    if changed:
        raise InputError("%s belongs to another run (%s): run with that run's input and settings, or start a "
                         "new run (--overwrite, or another --out)" % (out, "; ".join(changed)))
    return RESUME


class Claim:
    """A claimed output folder: its lock (held until :meth:`release`) and whether to resume."""

    def __init__(self, out, lock, resume):
        self.out, self.lock, self.resume = out, lock, resume

    def release(self):
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def claim(out_dir, new, resume=False, overwrite=False, iterations=None, inputs=(), log=None, grow=False):
    """Claim ``out_dir`` for the run described by manifest ``new``; a :class:`Claim` (keep it until done).

    See the module documentation for the rules.  ``iterations`` (the total asked for) is checked
    against the iterations done when resuming.  ``grow``: resume the run there with a grown input
    (``new`` replaces its manifest).  Every refusal is an InputError raised before anything is written
    into the folder.
    """
    out = check_out(out_dir, inputs)
    found = survey(out)
    lock = RunLock.take(out, create=False) if found.lock else None   # in use? (writes nothing)
    try:
        _decide(out, found, new, resume, overwrite, grow)            # a dry run: refuse before writing
        if lock is None:
            if not found.exists:
                check_output_dir(out)
            lock = RunLock.take(out, create=True)
        found = survey(out)                                           # again, under the lock
        action = _decide(out, found, new, resume, overwrite, grow)
        done = 0
        if action == RESUME:
            last = outputs.last_checkpoint(out)
            done = 0 if last is None else last[0]
            if iterations is not None and iterations < done:
                raise InputError("%d iterations are done already in %s: ask for %d or more (--iterations), or "
                                 "start a new run (--overwrite, or another --out)" % (done, out, done))
    except BaseException:
        if lock is not None:
            lock.release(remove=True)
        raise
    if isinstance(lock, _Unlocked) and log is not None:
        log("warning: cannot lock %s (%s): a concurrent run into this folder would not be detected"
            % (lock.path, lock.error.strerror or lock.error))
    lock.record_owner()
    if action == OVERWRITE:
        remove_owned(out)
    elif action == RESUME and done < (iterations or 0):
        _remove(os.path.join(out, outputs.PARTICLES_STAR))   # results again only once they are complete
    if action != RESUME or grow:
        write_json(os.path.join(out, outputs.MANIFEST_JSON), new)
    if resume and done == 0 and log is not None:
        log("nothing to continue in %s: starting from the first iteration" % out)
    return Claim(out, lock, resume=action == RESUME)


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def remove_owned(out):
    """Remove the files a run owns from ``out`` (never the lock file, never anything else):
    ``particles.star`` first since it marks completion, then the checkpoints, then the rest."""
    names = set(os.listdir(out))
    checkpoints = sorted((n for n in names if outputs.is_checkpoint(n)), reverse=True)
    results = [n for n in outputs.RESULT_FILES if n in names and n != outputs.PARTICLES_STAR]
    rest = sorted(n for n in names if outputs.owned(n) and n not in checkpoints and n not in results
                  and n not in (outputs.PARTICLES_STAR, outputs.MANIFEST_JSON, outputs.LOCK_FILE))
    for name in [outputs.PARTICLES_STAR] + checkpoints + results + rest:
        _remove(os.path.join(out, name))
