"""The files of a run's output folder: their names, their writers and their readers, in one place.

The engine writes them, and the plugin, the viewer and the tests read them; naming each file once
here keeps both sides agreed.  Everything is written atomically by rank 0: the manifest ``run.json``
first (see :mod:`.rundir`: the folder belongs to that run), the checkpoint ``iter_NNN/`` after each
iteration, then ``classes.mrcs``, ``classes.star``, ``history.json`` and ``particles.star`` last (it
marks completion).  ``run.lock`` is held by the process running in the folder.  The names below, the
checkpoints and the temporary names of interrupted writes are the only files a run owns
(:func:`owned`): ``--overwrite`` removes those and nothing else.
"""
import io
import json
import logging
import os
import re
from collections import namedtuple

import numpy as np

from .files import atomic_path, json_text, read_json, write_json
from .geometry import MIRROR, PSI, SX, SY
from .mrc import write_stack
from .star import read_star, write_star

log = logging.getLogger(__name__)

PARTICLES_STAR = "particles.star"       # per-particle class, alignment and score, in input order
CLASSES_MRCS = "classes.mrcs"           # the class averages
CLASSES_STAR = "classes.star"           # per-class size, distribution, resolution and score
HISTORY_JSON = "history.json"           # one summary row per iteration
CHECKPOINT_DIR = "iter_%03d"            # the state after an iteration (state.npz + meta.json)
CHECKPOINT_GLOB = "iter_[0-9][0-9][0-9]"
_CHECKPOINT_RE = re.compile(r"^iter_(\d+)$")
MANIFEST_JSON = "run.json"              # the run's identity: command, settings, input fingerprint (first)
LOCK_FILE = "run.lock"                  # locked (flock) by the process running in the folder: pid, host, start
# The results, in the order a replaced run loses them: particles.star first, since it marks completion.
RESULT_FILES = (PARTICLES_STAR, CLASSES_MRCS, CLASSES_STAR, HISTORY_JSON)
OWNED_FILES = RESULT_FILES + (MANIFEST_JSON, LOCK_FILE)
# Temporary names: files.atomic_path's ".NAME.tmp-*" / ".NAME.old-*", files.check_output_dir's probe.
_TEMPORARY_RE = re.compile(r"^\.(%s|iter_\d+)\.(tmp|old)-|^\.write-test-"
                           % "|".join(re.escape(name) for name in OWNED_FILES))


def owned(name):
    """True if ``name`` (an entry of an output folder) is one of the files a run writes there."""
    return name in OWNED_FILES or bool(_CHECKPOINT_RE.match(name) or _TEMPORARY_RE.match(name))


def is_checkpoint(name):
    """True if ``name`` is a checkpoint directory's name (``iter_NNN``)."""
    return bool(_CHECKPOINT_RE.match(name))

# The engine's mirror is written as RELION's/Xmipp's STAR label ``rlnIsFlip`` (0 or 1, the label the
# input's prior is read from too): the file format keeps the established name, the code says mirror.
PARTICLE_COLUMNS = ["rlnImageId", "rlnImageName", "rlnClassNumber", "rlnAnglePsi", "rlnOriginX",
                    "rlnOriginY", "rlnIsFlip", "rlnCryoralignScore"]
CLASS_COLUMNS = ["rlnReferenceImage", "rlnClassNumber", "rlnClassSize", "rlnClassDistribution",
                 "rlnEstimatedResolution", "rlnCryoralignMeanScore"]


def class_table(result, pixel_size):
    """Rows of ``classes.star``: size, distribution, resolution (A, or px without a pixel size), score."""
    sizes = result.class_sizes
    total = max(int(sizes.sum()), 1)
    rows = []
    for k in range(len(result.averages)):
        members = result.classes == k
        score = float(result.scores[members].mean()) if members.any() else 0.0
        resolution = (pixel_size or 1.0) / result.cutoffs[k]
        rows.append(("%06d@%s" % (k + 1, CLASSES_MRCS), k + 1, int(sizes[k]), sizes[k] / total,
                     round(float(resolution), 3), round(score, 6)))
    return rows


class ParticleRows:
    """The rows of ``particles.star``, made as they are iterated (``ROWS`` at a time), so that a table
    of 10^6 particles is written without holding 10^6 row tuples (~0.5 KB each with emtable's rows);
    iterable more than once, as :func:`~.star.write_star` iterates it."""
    ROWS = 65536

    def __init__(self, source, result):
        self.source, self.result = source, result

    def __len__(self):
        return len(self.result.params)

    def __iter__(self):
        source, result = self.source, self.result
        for lo in range(0, len(self), self.ROWS):
            part = slice(lo, lo + self.ROWS)
            p = result.params[part]
            yield from zip(source.ids[part].tolist(), source.names[part], (result.classes[part] + 1).tolist(),
                           *([round(v, 4) for v in p[:, j].tolist()] for j in (PSI, SX, SY)),
                           p[:, MIRROR].astype(np.int64).tolist(), [round(v, 6) for v in result.scores[part].tolist()])


def write(out_dir, source, result):
    """``classes.mrcs``, ``classes.star``, ``history.json`` and finally ``particles.star``."""
    pixel_size = source.pixel_size
    write_stack(os.path.join(out_dir, CLASSES_MRCS), result.averages, pixel_size=pixel_size)
    write_star(os.path.join(out_dir, CLASSES_STAR), {"classes": (CLASS_COLUMNS, class_table(result, pixel_size))})
    write_json(os.path.join(out_dir, HISTORY_JSON), result.history)
    write_star(os.path.join(out_dir, PARTICLES_STAR),
               {"particles": (PARTICLE_COLUMNS, ParticleRows(source, result))})


ParticleResults = namedtuple("ParticleResults", "ids classes params scores")


def read_particles(out_dir):
    """:class:`ParticleResults` of ``particles.star`` in its row order (the input order).

    ``ids`` are the input's ``rlnImageId``, ``classes`` 0-based, ``params`` ``(N, 4)``.
    """
    rows = list(read_star(os.path.join(out_dir, PARTICLES_STAR), "particles"))
    return ParticleResults(
        np.array([r.rlnImageId for r in rows], np.int64).reshape(-1),
        np.array([r.rlnClassNumber - 1 for r in rows], np.int64).reshape(-1),
        np.array([[r.rlnAnglePsi, r.rlnOriginX, r.rlnOriginY, r.rlnIsFlip] for r in rows], np.float64).reshape(-1, 4),
        np.array([r.rlnCryoralignScore for r in rows], np.float64).reshape(-1))


ClassResult = namedtuple("ClassResult", "number index stack size distribution resolution score")


def read_classes(out_dir):
    """:class:`ClassResult` of each row of ``classes.star``, in file order.

    ``number`` is the 1-based class number, ``index`` the 1-based position of its average in
    ``stack`` (the average's file, joined to ``out_dir``), ``resolution`` in A (px without a pixel size).
    """
    classes = []
    for row in read_star(os.path.join(out_dir, CLASSES_STAR), "classes"):
        index, name = str(row.rlnReferenceImage).split("@", 1)
        classes.append(ClassResult(
            int(row.rlnClassNumber), int(index), os.path.join(out_dir, name), int(row.rlnClassSize),
            float(row.rlnClassDistribution), float(row.rlnEstimatedResolution),
            float(row.rlnCryoralignMeanScore)))
    return classes


def read_history(out_dir):
    """The rows of ``history.json`` (one dict per iteration); InputError if it is missing or damaged."""
    return read_json(os.path.join(out_dir, HISTORY_JSON))


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------

def checkpoint_dir(out_dir, iteration):
    """The checkpoint directory of ``iteration`` in ``out_dir`` (``out_dir/iter_NNN``)."""
    return os.path.join(os.fspath(out_dir), CHECKPOINT_DIR % iteration)


def save_checkpoint(out_dir, iteration, arrays, meta):
    """Write ``out_dir/iter_%03d/`` (``state.npz`` + ``meta.json``) atomically; return its path.

    The directory is built under a temporary name, flushed, then renamed, so an ``iter_NNN`` directory
    is always complete.  ``meta`` must be JSON-serialisable (numpy scalars are converted); the iteration
    number is stored in it as ``"iteration"``.
    """
    iteration = int(iteration)
    if iteration < 0:
        raise ValueError("iteration must be >= 0, got %d" % iteration)
    target = checkpoint_dir(out_dir, iteration)
    arrays = {str(k): np.asarray(v) for k, v in arrays.items()}
    for k, v in arrays.items():
        if v.dtype.hasobject:
            raise ValueError("checkpoint array %r has dtype object; store numeric arrays only" % k)
    meta = dict(meta)
    meta["iteration"] = iteration
    meta["arrays"] = sorted(arrays)
    text = json_text(meta)
    with atomic_path(target) as tmp:
        os.mkdir(tmp)
        state = io.BytesIO()   # np.savez leaves its ZipFile open on a failed write (disk full): not on the file
        np.savez(state, **arrays)
        with open(os.path.join(tmp, "state.npz"), "wb") as f:
            f.write(state.getbuffer())
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
    for name, a in sorted(arrays.items()):   # a hand-edited or corrupted state must not reach the output
        if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
            raise ValueError("%s holds NaN or infinite values" % name)
    return arrays, meta


def last_checkpoint(out_dir):
    """The highest complete checkpoint in ``out_dir`` as ``(iteration, arrays, meta)``, or None.

    Temporary directories (interrupted saves) are ignored; a damaged ``iter_NNN`` (missing or corrupt
    files, or arrays holding NaN or infinite values) is skipped with a warning and the next lower one
    is tried.
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
