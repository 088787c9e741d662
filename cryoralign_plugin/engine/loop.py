"""The iteration loop shared by reference-free (K = 1) and multireference alignment.

One iteration: prepare the references -> search every particle (batched, split over MPI ranks) ->
assign each particle its best reference -> re-seed starved classes -> average the particles with
their new parameters -> filtered references for the next iteration.  After each iteration the
state is checkpointed (atomically) so ``resume`` continues from the last complete one.
"""
import copy
import dataclasses
import shutil
import time
from dataclasses import dataclass, field

import numpy as np

from . import images as imgops
from . import criteria, ctf_correction, downsample, outputs, references, refine, search
from .errors import InputError
from .geometry import MIRROR, PSI, SX, SY, center_offsets, shift_grid

CHECKPOINTS_KEPT = 2
PROGRESS_SECONDS = 10.0  # within an iteration, report progress at most this often


@dataclass
class Result:
    """What a run produces; arrays are in input order, classes 0-based."""
    classes: np.ndarray
    params: np.ndarray
    scores: np.ndarray
    averages: np.ndarray
    references: np.ndarray
    cutoffs: np.ndarray
    history: list = field(default_factory=list)

    @property
    def class_sizes(self):
        return np.bincount(self.classes[self.classes >= 0], minlength=len(self.averages))


class Context:
    """What every pass needs: the particles, this rank's share, the backend and the grid.

    The run works at the internal box (:func:`~.downsample.plan`): ``source`` gives the particles
    Fourier-cropped there and ``settings`` holds radius and shifts in internal px; ``input_source``
    and ``input_settings`` are as given, and :meth:`at_input_box` is the final pass's view of them.
    """

    def __init__(self, source, settings, comm, backend, log):
        self.comm, self.backend, self.log = comm, backend, log
        self.input_source, self.input_settings = source, settings
        self.scale, self.grid = downsample.checked_plan(source.box, getattr(source, "pixel_size", None), settings)
        if self.scale.crops:
            source = downsample.CroppedSource(source, self.scale.internal_box, settings.threads)
        if self.scale.pixel_size is not None or self.scale.crops:
            log(self.scale.describe())
        settings = self.scale.internal(settings)
        self.source, self.settings = source, settings
        box = source.box
        self.radius = self.scale.radius
        search.check_search_size(1, self.grid, settings.shift_range, settings.shift_step)  # before allocating
        self.shifts = shift_grid(settings.shift_range, settings.shift_step)
        self.offset_limit = search.offset_limit(box, self.grid)
        self.local = np.arange(source.count)[comm.local_slice(source.count)]
        self.correction = ctf_correction.resolve(settings, source)
        log(self.correction.describe())

    def restricted(self, subset):
        """This context searching only the particles ``subset`` (sorted global indices) of this rank's share."""
        sub = copy.copy(self)
        sub.local = np.intersect1d(self.local, subset)
        return sub

    def at_input_box(self):
        """This context at the input box (the final averages): the input particles, the mask radius
        in input px, their CTF correction, and batches of about the same bytes as the run's."""
        full = copy.copy(self)
        factor = self.scale.factor
        full.source, full.radius = self.input_source, self.radius * factor
        full.settings = dataclasses.replace(self.settings, radius=None, shift_range=None, shift_step=None,
                                            batch_size=max(1, int(self.settings.batch_size / factor ** 2)))
        full.correction = ctf_correction.resolve(self.input_settings, self.input_source)
        return full

    def batches(self):
        size = max(1, int(self.settings.batch_size))
        for start in range(0, len(self.local), size):
            yield self.local[start:start + size]

    def read(self, indices):
        """The particles as the search sees them: phase-flipped (CTF correction flip or wiener), normalised."""
        return imgops.normalise(self.correction.for_search(self.source.read(indices), indices), self.radius, indices)


def search_pass(ctx, refs, params):
    """Local candidates of every reference for this rank's particles (none on a rank without any)."""
    search.check_search_size(len(refs), ctx.grid, ctx.settings.shift_range, ctx.settings.shift_step)
    prepared = ctx.backend.prepare_references(
        search.reference_rings(ctx.backend, refs, ctx.grid, ctx.shifts), ctx.grid, ctx.settings.mirror)
    parts = []
    start = last = time.perf_counter()
    done = 0
    for batch in ctx.batches():
        offsets = np.clip(center_offsets(params[batch]), -ctx.offset_limit, ctx.offset_limit)
        parts.append(search.search(ctx.backend, ctx.read(batch), offsets, prepared, ctx.grid))
        done += len(batch)
        now = time.perf_counter()
        if now - last > PROGRESS_SECONDS and done < len(ctx.local):
            ctx.log("  searched %d of %d particles on this rank (%.0f particles/s)"
                    % (done, len(ctx.local), done / (now - start)))
            last = now
    if not parts:  # more ranks than particles: an empty share, in the dtypes of Backend.search
        n_refs = len(refs)
        parts.append(search.Candidates(np.empty((0, n_refs), np.float32), np.empty((0, n_refs), np.int32),
                                       np.empty((0, n_refs), np.int8), np.empty((0, n_refs), np.float32),
                                       np.empty((0, 2))))
    return search.Candidates(*[np.concatenate([getattr(p, f) for p in parts])
                               for f in ("score", "shift", "mirror", "angle", "offsets")])


def average_pass(ctx, params, classes, n_classes):
    """Even/odd class sums over all ranks (fixed point, so independent of the number of ranks)."""
    box = ctx.source.box
    sums = np.zeros((n_classes, 2, box, box), np.int64)
    for batch in ctx.batches():
        sums += ctx.backend.class_sums(ctx.read(batch), params[batch], classes[batch], batch % 2, n_classes)
    return ctx.comm.allreduce(sums)


def class_references(ctx, params, classes, counts, max_cutoff=references.MAX_CUTOFF, sums=None):
    """References, cutoffs and averages of the particles with their new parameters and classes:
    Wiener-filtered CTF-weighted averages with CTF correction wiener (:mod:`.ctf_correction`),
    else averages of the particles as the search sees them (from ``sums``, their class sums, if known)."""
    n_classes = len(counts)
    if ctx.correction.mode == "wiener":
        averages, curves = ctf_correction.wiener_averages(
            *ctf_correction.wiener_pass(ctx, params, classes, n_classes), counts)
        return references.finish(averages, curves, ctx.radius, ctx.settings.center, max_cutoff)
    if sums is None:
        sums = average_pass(ctx, params, classes, n_classes)
    return references.build(sums, counts, ctx.radius, ctx.settings.center, max_cutoff)


def _class_sums(ctx, searched, state, subset, params, classes, events):
    """With a ``subsets`` hook, the class sums of every particle to keep in the state: the previous ones
    updated with the change of the particles searched (exact, in fixed point) when only some were and
    no class was re-seeded, else a pass over all.  None without the hook or with Wiener averages."""
    n_classes = len(state.references)
    if ctx.correction.mode == "wiener":
        return None
    assigned = None if subset is None else np.asarray(subset)[state.classes[subset] >= 0]   # new ones add only
    if subset is None or state.sums is None or events or len(state.sums) != n_classes \
            or len(subset) + len(assigned) >= ctx.source.count:   # then a pass over all reads fewer
        return average_pass(ctx, params, classes, n_classes)
    return (state.sums + average_pass(searched, params, classes, n_classes)
            - average_pass(searched.restricted(assigned), state.params, state.classes, n_classes))


def _angle_change(new, old):
    return np.abs((new[:, PSI] - old[:, PSI] + 180.0) % 360.0 - 180.0)


def _summary(ctx, state, new_params, new_classes, new_scores, seconds):
    """One history row; ``changed`` is what auto-stop watches (classes for K > 1, else parameters)."""
    n_classes = len(state.references)
    angle = _angle_change(new_params, state.params)
    shift = np.hypot(*(new_params[:, [SX, SY]] - state.params[:, [SX, SY]]).T)
    mirrored = new_params[:, MIRROR] != state.params[:, MIRROR]
    class_changed = new_classes != state.classes
    moved = mirrored | (angle > 360.0 / ctx.grid.maxrin) | (shift > ctx.settings.shift_step)
    changed = class_changed if n_classes > 1 else moved
    count = len(new_classes)
    return {
        "seconds": seconds,
        "particles_per_second": count / max(seconds, 1e-9),
        "mean_score": float(new_scores.mean()),
        "class_changes": float(class_changed.mean()),
        "changed": float(changed.mean()),
        "mean_angle_change": float(angle.mean()),
        "mean_shift_change": float(shift.mean()),
        "mirror_fraction": float(new_params[:, MIRROR].mean()),
    }


@dataclass
class State:
    iteration: int
    params: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    references: np.ndarray
    cutoffs: np.ndarray
    averages: np.ndarray
    history: list
    sums: np.ndarray = None   # class sums (fixed point), kept when iterate has a subsets hook


def iterate(ctx, state, reseed, out_dir=None, subsets=None):
    """Run iterations ``state.iteration + 1 ..`` up to the limit (or auto-stop); return the state.

    ``subsets(iteration)``, if given, returns the sorted global indices of the particles to search in
    that iteration (None: all); the others keep their class and parameters, and the averages are of
    every particle.  The history row's ``searched`` says how many were searched.  With the hook the
    state keeps the class sums, so that an iteration searching a subset updates them with that
    subset's change instead of averaging every particle again.
    """
    settings, comm = ctx.settings, ctx.comm
    n_classes = len(state.references)
    min_members = settings.resolved_min_members(ctx.source.count, n_classes)
    balanced = settings.resolved_balanced_iterations()
    for iteration in range(state.iteration + 1, settings.iterations + 1):
        start = time.perf_counter()
        subset = subsets(iteration) if subsets is not None else None
        searched = ctx if subset is None else ctx.restricted(subset)
        cand = search_pass(searched, state.references, state.params)
        if reseed and n_classes > 1 and iteration <= balanced:
            order = np.arange(ctx.source.count) if subset is None else np.asarray(subset)
            choice = references.balanced_assignment(comm.allgather(cand.score))[
                np.searchsorted(order, searched.local)]
        else:
            choice = np.argmax(cand.score, axis=1)  # ties: the lowest class number
        local = search.candidate_params(cand, choice, ctx.shifts, ctx.grid)
        rows = np.arange(len(choice))
        local_scores = cand.score[rows, choice].astype(np.float64)
        if settings.refine_shifts:
            local, local_scores = refine.refine_pass(searched, state.references, cand, choice, local,
                                                     local_scores)
        params = comm.allgather(local)
        scores = comm.allgather(local_scores)
        classes = comm.allgather(choice.astype(np.int64))
        margins = comm.allgather(criteria.margins(cand.score))
        if subset is not None:   # the searched particles' new values among everyone's current ones
            params, scores, classes = _merged(state, subset, params, scores, classes)
        events = []
        if reseed and n_classes > 1:
            classes, events = references.reseed_starved(classes, scores, n_classes, min_members)
        parity = np.arange(len(classes)) % 2
        counts = references.class_counts(classes, parity, n_classes)
        cap = references.cutoff_cap(iteration) if n_classes > 1 else references.MAX_CUTOFF
        sums = None if subsets is None else _class_sums(ctx, searched, state, subset, params, classes, events)
        refs, cutoffs, averages = class_references(ctx, params, classes, counts, cap, sums)
        row = {"iteration": iteration}
        row.update(_summary(ctx, state, params, classes, scores, time.perf_counter() - start))
        row["class_sizes"] = counts.sum(axis=1).tolist()
        row["resolution_px"] = (1.0 / cutoffs).tolist()
        row["reseeded"] = events
        row["searched"] = len(classes) if subset is None else len(subset)
        row["particles_per_second"] = row["searched"] / max(row["seconds"], 1e-9)
        inside = slice(None) if subset is None else subset   # margins are known for the searched ones
        row.update(criteria.class_criteria(classes[inside], scores[inside], margins, n_classes))
        state = State(iteration, params, classes, scores, refs, cutoffs, averages, state.history + [row], sums)
        if out_dir is not None and comm.rank == 0:
            save(out_dir, state)
        ctx.log(progress_line(row, settings.iterations))
        if settings.auto_stop and row["changed"] < settings.stop_fraction:
            ctx.log("converged: %.2f%% of the particles changed (< %.2f%%)"
                    % (100 * row["changed"], 100 * settings.stop_fraction))
            break
    return state


def _merged(state, subset, params, scores, classes):
    """Full-length params, scores and classes: ``state``'s with the values of ``subset`` replaced."""
    full = state.params.copy(), state.scores.copy(), state.classes.copy()
    for target, values in zip(full, (params, scores, classes)):
        target[subset] = values
    return full


def progress_line(row, iterations):
    text = ("iteration %d/%d: %.0f particles/s, mean score %.4f, class changes %.1f%%, "
            "angle change %.2f deg, shift change %.2f px, %.1f s"
            % (row["iteration"], iterations, row["particles_per_second"], row["mean_score"],
               100 * row["class_changes"], row["mean_angle_change"], row["mean_shift_change"], row["seconds"]))
    for event in row["reseeded"]:
        text += "\n  re-seeded class %(class)d with %(members)d particles of class %(from_class)d" % event
    return text


def save(out_dir, state):
    """Checkpoint ``iter_NNN`` atomically and drop older ones beyond the last few."""
    arrays = {"params": state.params, "classes": state.classes, "scores": state.scores,
              "references": state.references, "cutoffs": state.cutoffs, "averages": state.averages}
    if state.sums is not None:
        arrays["sums"] = state.sums
    outputs.save_checkpoint(out_dir, state.iteration, arrays, {"history": state.history})
    old = state.iteration - CHECKPOINTS_KEPT
    if old >= 0:
        shutil.rmtree(outputs.checkpoint_dir(out_dir, old), ignore_errors=True)


def restore(out_dir, count, box, n_classes):
    """The last complete checkpoint as a :class:`State`, checked against this run; None if none."""
    found = outputs.last_checkpoint(out_dir)
    if found is None:
        return None
    iteration, arrays, meta = found
    if len(arrays["params"]) != count or arrays["references"].shape[1:] != (box, box) \
            or len(arrays["references"]) != n_classes:
        raise InputError("the checkpoint in %s belongs to another run (%d particles, %d classes of %d px; "
                         "this run has %d particles, %d classes of %d px): use a new output directory or "
                         "the same input" % (out_dir, len(arrays["params"]), len(arrays["references"]),
                                             arrays["references"].shape[-1], count, n_classes, box))
    return state_of(iteration, arrays, meta)


def state_of(iteration, arrays, meta):
    """The :class:`State` of a checkpoint's ``(iteration, arrays, meta)``."""
    return State(iteration, arrays["params"], arrays["classes"], arrays["scores"], arrays["references"],
                 arrays["cutoffs"], arrays["averages"], meta["history"], arrays.get("sums"))

