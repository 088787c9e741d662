"""A run that grows: multireference classification of a particle set that arrives in batches.

Each call (``cryoralign-engine mra --grow``, :func:`grow_multi_reference`) is given the whole input so
far, whose first particles must be those of the run in ``out_dir``: the fingerprint of that prefix
(:func:`~.rundir.fingerprint`: ids, names, sampled pixels, prior, CTF) must be the run's input
fingerprint.  The manifest's ``growth`` records the batches, each ``{"from", "count", "after",
"final"}``: particles ``from..count-1`` are new, placed after iteration ``after``.

* The first batch is an ordinary multireference run of ``iterations`` iterations.
* A later batch keeps every earlier particle's class and parameters and starts its new particles
  unassigned; ``grow_iterations`` iterations search only the new particles against the current classes
  (``loop.iterate``'s ``subsets``); the class sums, kept in the checkpoint, are updated with the new
  members alone (exact in fixed point), so the update does not grow with the particles so far.
* After the first of those, the new particles that fit no class may seed a new one (:func:`misfits`):
  if at least ``new_class_members`` do, they are aligned to one another (reference-free, as RFA does)
  and become class K + 1.  One new class per batch at most.
* The batch given with ``final`` (the input is complete) is placed by the final pass itself:
  ``final_iterations`` iterations over all particles (with re-seeding as in any MRA iteration), the
  misfits of its new particles judged after the first.  So the last particle's arrival is followed
  by one iteration over the set (the default), not by a search of the last batch and then one.

A call interrupted anywhere resumes on the next call with the same or a larger input: the state is
the last checkpoint, and particles that checkpoint lacks are new.  History rows (``history.json``)
carry their batch number and the batch's particle count.
"""
import copy
import dataclasses
import os
import time

import numpy as np

from . import align, loop, outputs, parallel, rundir
from . import references as reference_ops
from .errors import InputError
from .sources import ParticleSource

# A new particle fits no class when its score is below the median score of its class's earlier
# members by more than this many robust standard deviations (1.4826 x the median absolute deviation)
# and by more than this fraction of that median: a particle new to the classes scores a little lower
# than their members (which are in the averages and were refined over many iterations), by about 3%
# on SLICEM views at SNR 1, where the members' spread is only 1.5%, and a view the classes lack by 25%.
MISFIT_SIGMAS = 3.0
MISFIT_DROP = 0.1
# Classes with fewer earlier members are judged against all earlier particles' scores.
MISFIT_LEAST_MEMBERS = 5
# Reference-free iterations that align the misfits of a batch to one another before they seed a class.
SEED_ITERATIONS = 3


class _Prefix(ParticleSource):
    """The first ``count`` particles of a source (to fingerprint the part an earlier batch saw)."""

    def __init__(self, source, count):
        ctf = source.ctf.select(np.arange(count)) if source.ctf is not None else None
        prior = None if source.prior is None else source.prior[:count]
        super().__init__(count=count, box=source.box, ids=source.ids[:count], names=source.names[:count],
                         prior=prior, pixel_size=source.pixel_size, ctf=ctf)
        self._source = source

    def _fill(self, out, idx):
        out[...] = self._source.read(idx, check_finite=False)


def misfits(classes, scores, new):
    """Of the particles ``new`` (indices), those whose score is low for their class (MISFIT_SIGMAS and
    MISFIT_DROP), judged against the particles of earlier batches (all others)."""
    earlier = np.ones(len(classes), bool)
    earlier[new] = False

    def limit(members):
        median = np.median(members)
        return median - max(MISFIT_SIGMAS * 1.4826 * np.median(np.abs(members - median)), MISFIT_DROP * median)

    pooled = limit(scores[earlier])
    limits = {}
    for k in np.unique(classes[new]):
        members = scores[earlier & (classes == k)]
        limits[k] = limit(members) if len(members) >= MISFIT_LEAST_MEMBERS else pooled
    low = np.array([scores[i] < limits[classes[i]] for i in new], bool)
    return np.asarray(new)[low]


def _plan(ctx, out_dir, n_classes, final):
    """Rank 0: the manifest of this call (with its ``growth``), checking the earlier input's prefix, and
    whether a run is there to grow."""
    source, settings = ctx.input_source, ctx.settings
    new = rundir.manifest("mra", settings, source, ctx.radius, n_classes,
                          {"classes": int(n_classes), "seed": int(settings.seed)}, ctx.source.box, grow=True)
    found = rundir.survey(rundir.check_out(out_dir, rundir.input_files(source)))
    previous = found.manifest
    if previous is None or "growth" not in previous:   # a new run (claim refuses anything else)
        new["growth"] = [{"from": 0, "count": source.count, "after": 0, "final": bool(final)}]
        return new, previous is not None or found.damaged
    rundir.check_same_run(out_dir, previous, new, grow=True)   # first: another version may record batches otherwise
    old_count, growth = _recorded(previous, out_dir)
    if source.count < old_count:
        raise InputError("the input has %d particles but the run in %s has %d already: give the whole input "
                         "so far, the run's %d particles first" % (source.count, out_dir, old_count, old_count))
    differ = rundir.differences(previous["input"], rundir.fingerprint(_Prefix(source, old_count),
                                                                      settings.use_prior))
    if differ:
        raise InputError("the first %d particles of the input are not the run's in %s (%s): give the same "
                         "particles first, in the same order, then the new ones"
                         % (old_count, out_dir, "; ".join(differ)))
    last = growth[-1]
    if source.count > old_count or (final and not last["final"]):
        done = outputs.last_checkpoint(out_dir)
        after, have = (0, 0) if done is None else (done[0], len(loop.state_of(*done, out_dir, grow=True).classes))
        growth.append({"from": have, "count": source.count, "after": after, "final": bool(final)})
    new["growth"] = growth
    return new, True


def _recorded(previous, out_dir):
    """The particle count and the batches that a growing run's manifest records; InputError where it
    does not record them as this version does (an edited manifest)."""
    try:
        growth = [dict(g, **{"from": int(g["from"]), "count": int(g["count"]), "after": int(g["after"]),
                             "final": bool(g["final"])}) for g in previous["growth"]]
        if not growth or not isinstance(previous["input"], dict):
            raise ValueError
        return int(previous["input"]["count"]), growth
    except (KeyError, TypeError, ValueError):
        raise InputError("the manifest %s does not record the growing run's batches (input.count; growth: "
                         "from, count, after, final): %s"
                         % (os.path.join(out_dir, outputs.MANIFEST_JSON), rundir.restart(grow=True))) from None


def _end(entry, settings):
    """The iterations after which a batch's new particles are placed, and its last iteration."""
    if entry["from"] == 0:
        return settings.iterations, settings.iterations
    searched = entry["count"] > entry["from"] and not (entry["final"] and settings.final_iterations > 0)
    placed = entry["after"] + (settings.grow_iterations if searched else 0)
    return placed, placed + (settings.final_iterations if entry["final"] else 0)


def _everyone(iteration):
    """The ``subsets`` hook of the full iterations: everyone searched, the class sums kept for the next batch."""
    return None


def _with(ctx, **changes):
    c = copy.copy(ctx)
    c.settings = dataclasses.replace(ctx.settings, **changes)
    return c


def _extended(state, count, ctx):
    """``state`` with the particles it lacks appended, unassigned, at their starting parameters."""
    have = len(state.classes)
    if have == count:
        return state
    start = align._initial_params(ctx)[have:]
    return loop.State(state.iteration, np.concatenate([state.params, start]),
                      np.concatenate([state.classes, np.full(count - have, -1, np.int64)]),
                      np.concatenate([state.scores, np.zeros(count - have)]), state.references,
                      state.cutoffs, state.averages, state.history, state.sums)   # unassigned: in no sum


def _seed(ctx, state, new, out_dir):
    """After the first search of a batch: a new class from its misfits, if enough; the row records it."""
    row = dict(state.history[-1])
    if "misfits" in row:   # done before an interruption
        return state
    n_classes = len(state.references)
    low = misfits(state.classes, state.scores, new)
    least = ctx.settings.resolved_new_class_members(len(new), n_classes)
    row["misfits"], row["new_class"] = int(len(low)), None
    classes, params, refs, cutoffs, averages = (state.classes, state.params, state.references, state.cutoffs,
                                                state.averages)
    if len(low) >= least:
        aligned = align.align_reference_free(
            ctx.read(low), settings=dataclasses.replace(ctx.settings, iterations=SEED_ITERATIONS, ctf="none",
                                                        max_resolution=None, internal_box=None,
                                                        use_prior=False, auto_stop=False),
            comm=parallel.Serial(), log=lambda *_: None)
        classes, params = classes.copy(), params.copy()
        classes[low], params[low] = n_classes, aligned.params
        counts = reference_ops.class_counts(classes, np.arange(len(classes)) % 2, n_classes + 1)
        refs, cutoffs, averages = loop.class_references(ctx, params, classes, counts,
                                                        reference_ops.cutoff_cap(state.iteration))
        row["new_class"] = n_classes + 1
        row["class_sizes"] = counts.sum(axis=1).tolist()
    state = loop.State(state.iteration, params, classes, state.scores, refs, cutoffs, averages,
                       state.history[:-1] + [row])
    if out_dir is not None and ctx.comm.rank == 0:
        loop.save(out_dir, state)
    return state


def _annotated(history, growth):
    """History rows with their batch (1-based) and that batch's particle count."""
    rows = []
    for row in history:
        b = max(i for i, g in enumerate(growth) if g["after"] < row["iteration"] or i == 0)
        rows.append(dict(row, batch=b + 1, batch_particles=growth[b]["count"]))
    return rows


def grow_multi_reference(particles, n_classes, settings, out_dir, final=False, comm=None, log=print, inputs=()):
    """Classify ``particles`` (the whole input so far) by growing the run in ``out_dir`` (see the module).

    Starts the run there if there is none; ``final`` says the input is complete.  Returns the
    :class:`~.loop.Result` of every particle; writes the run's files as any run does.
    """
    with align._running(particles, settings, comm, log, out_dir) as ctx:
        return _grow(ctx, n_classes, out_dir, final, inputs)


def _grow(ctx, n_classes, out_dir, final, inputs):
    """:func:`grow_multi_reference` on the run's context ``ctx``."""
    count = ctx.source.count
    if n_classes is None or not 1 <= n_classes <= count:
        raise InputError("--grow needs --classes between 1 and the first batch's %d particles" % count)
    claim, entry = None, np.zeros(0, np.int64)
    if ctx.comm.rank == 0:
        new, resume = _plan(ctx, out_dir, n_classes, final)
        e = new["growth"][-1]
        claim = rundir.claim(out_dir, new, resume=resume, iterations=_end(e, ctx.settings)[1],
                             inputs=rundir.input_files(ctx.input_source, inputs), log=ctx.log, grow=True,
                             check=lambda *found: loop.state_of(*found, out_dir, grow=True))
        entry = np.array([e["from"], e["count"], e["after"], e["final"], len(new["growth"])], np.int64)
        growth = new["growth"]
    first, count_, after, last_batch, batch = (int(v) for v in ctx.comm.allgather(entry)[:5])
    e = {"from": first, "count": count_, "after": after, "final": bool(last_batch)}
    try:
        found = outputs.last_checkpoint(out_dir)
        if found is None:
            state = align._unassigned_state(ctx, align._initial_references(ctx, n_classes, None))
        else:
            state = _extended(loop.state_of(*found, out_dir, grow=True), count, ctx)
        placed, end = _end(e, ctx.settings)
        start = time.perf_counter()
        if first == 0:
            state = loop.iterate(_with(ctx, iterations=end), state, True, out_dir, subsets=_everyone)
            ctx.log("batch 1: %d particles classified in %.1f s, %d classes"
                    % (count, time.perf_counter() - start, len(state.references)))
        else:
            new_particles = np.arange(first, count)
            in_final = e["final"] and ctx.settings.final_iterations > 0   # the final pass places them
            subsets = _everyone if in_final else (lambda _: new_particles)
            step = _with(ctx, iterations=e["after"] + 1, auto_stop=False)
            if count > first:
                state = loop.iterate(step, state, in_final, out_dir, subsets=subsets)
                if state.iteration == e["after"] + 1:
                    state = _seed(ctx, state, new_particles, out_dir)
            if not in_final and count > first:
                state = loop.iterate(_with(step, iterations=placed), state, False, out_dir, subsets=subsets)
                seconds = time.perf_counter() - start
                ctx.log("batch %d: %d new particles placed in %.1f s (%.0f particles/s), %d in all, %d "
                        "classes" % (batch, count - first, seconds, (count - first) / max(seconds, 1e-9),
                                     count, len(state.references)))
            if e["final"]:
                state = loop.iterate(_with(ctx, iterations=end), state, True, out_dir, subsets=_everyone)
                ctx.log("batch %d and final pass: %d new particles, %d iteration(s) over all %d in %.1f s, %d "
                        "classes" % (batch, count - first, ctx.settings.final_iterations, count,
                                     time.perf_counter() - start, len(state.references)))
        result = align._result(ctx, state)
        if ctx.comm.rank == 0:
            result.history = _annotated(state.history, growth)
            outputs.write(out_dir, ctx.input_source, result)
    finally:
        if claim is not None:
            claim.release()
    return result
