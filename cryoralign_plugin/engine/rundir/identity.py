"""The manifest ``run.json``: what determines a run's result, and how two manifests differ."""
import dataclasses
import datetime
import json
import os
import platform

import numpy as np

from ... import __version__
from .. import ctf_correction
from ..files import json_text
from .inputs import digest, fingerprint

MANIFEST_FORMAT = 1
PROGRAM = "cryoralign-engine"
# Settings that cannot change the result: free to differ on --continue, so not in the manifest.
FREE_SETTINGS = ("iterations", "auto_stop", "stop_fraction", "backend", "gpu", "threads", "batch_size")
# Settings that only multireference alignment uses.
MRA_SETTINGS = ("min_members", "balanced_iterations", "debias", "overcluster", "overcluster_iterations",
                "resplit", "resplit_iterations")
# Settings that only a growing run (mra --grow, :mod:`..grow`) uses.
GROW_SETTINGS = ("grow_iterations", "final_iterations", "new_class_members")
# What differs between the batches of a growing run: its input grows (whose prefix :mod:`..grow` checks)
# and the record of its batches.
GROWING_FIELDS = ("input", "growth")
SHOWN_DIGEST = 12    # hex digits of a digest shown in messages


def manifest(command, settings, source, radius, n_classes, start, internal_box=None, grow=False):
    """The manifest of a run (a JSON-ready dict).

    ``source`` is the input as given; ``settings``, ``radius`` and ``internal_box`` (default: the
    input box) are those the run works with (:func:`~..downsample.plan`), its checkpoints being there.

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
        # a growing run's automatic minimum class size follows the particles so far, so it records the value
        # given (None: automatic), compared between batches as every other setting is
        chosen["min_members"] = settings.min_members if grow else \
            int(settings.resolved_min_members(source.count, n_classes))
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
    return {k: v for k, v in m.items() if k not in GROWING_FIELDS}


def differences(old, new):
    """``"field: old -> new"`` for every field of two manifests that differs (``created`` ignored)."""
    a = _flat({k: v for k, v in old.items() if k != "created"})
    b = _flat({k: v for k, v in new.items() if k != "created"})
    return ["%s: %s -> %s" % (k, _show(a.get(k, _MISSING)), _show(b.get(k, _MISSING)))
            for k in sorted(set(a) | set(b)) if a.get(k, _MISSING) != b.get(k, _MISSING)]
