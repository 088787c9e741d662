"""What an output folder holds, what a run may do with it, and claiming it (see the package's rules)."""
import dataclasses
import os
import shutil

from .. import outputs
from ..errors import InputError
from ..files import check_output_dir, read_json, write_json
from .identity import _comparable, differences
from .inputs import check_out
from .lock import RunLock, _Unlocked


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
        raise InputError("the manifest %s is damaged, so the run in %s cannot be checked against this one: %s"
                         % (os.path.join(out, outputs.MANIFEST_JSON), out, restart(grow)))
    if grow and "growth" not in found.manifest:
        raise InputError("%s holds a run that was not started with --grow, which cannot grow: start a "
                         "growing run in another --out" % out)
    check_same_run(out, found.manifest, new, grow)
    return RESUME


def restart(grow=False):
    """How to start again where a run cannot be resumed (a growing run takes no --overwrite)."""
    return "start the growing run again in another --out, or empty this one" if grow else \
        "start a new run (--overwrite, or another --out)"


def check_same_run(out, old, new, grow=False):
    """InputError naming every difference unless manifest ``new`` is that of the run ``old`` in ``out``
    (of a growing run, without what grows).  One written by another version (or manifest format) is named
    as such: its settings may match but were resolved by that version's rules, so this one never continues it."""
    changed = differences(_comparable(old), _comparable(new)) if grow else differences(old, new)
    if not changed:
        return
    if (old.get("version"), old.get("format")) != (new.get("version"), new.get("format")):
        raise InputError("%s holds a run of cryoralign %s (manifest format %s), which this one (%s, format %s) "
                         "cannot continue (%s): continue it with that version, or %s"
                         % (out, old.get("version", "(unknown)"), old.get("format", "(unknown)"), new.get("version"),
                            new.get("format"), "; ".join(changed), restart(grow)))
    raise InputError("%s belongs to another run (%s): run with that run's input and settings, or %s"
                     % (out, "; ".join(changed), restart(grow)))


class Claim:
    """A claimed output folder: its lock (held until :meth:`release`) and whether to resume."""

    def __init__(self, out, lock, resume):
        self.out, self.lock, self.resume = out, lock, resume

    def release(self):
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def claim(out_dir, new, resume=False, overwrite=False, iterations=None, inputs=(), log=None, grow=False,
          check=None):
    """Claim ``out_dir`` for the run described by manifest ``new``; a :class:`Claim` (keep it until done).

    See the module documentation for the rules.  ``iterations`` (the total asked for) is checked
    against the iterations done when resuming, and ``check(iteration, arrays, meta)``, if given, is
    called with the checkpoint to resume (raising InputError where it cannot be).  ``grow``: resume the
    run there with a grown input (``new`` replaces its manifest).  Every refusal is an InputError raised
    before anything is written into the folder.
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
            if last is not None and check is not None:
                check(*last)
            if iterations is not None and iterations < done:
                raise InputError("%d iterations are done already in %s: ask for %d or more (--iterations), or %s"
                                 % (done, out, done, restart(grow)))
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
