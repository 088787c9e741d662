"""The iteration loop shared by reference-free (K = 1) and multireference alignment.

One iteration: prepare the references -> search every particle (batched, split over MPI ranks) ->
assign each particle its best reference -> re-seed starved classes -> average the particles with
their new parameters -> filtered references for the next iteration.  After each iteration the
state is checkpointed (atomically) so ``resume`` continues from the last complete one.
"""
import copy
import dataclasses
import functools
import math
import shutil
import time
from dataclasses import dataclass, field

import numpy as np

from . import images as imgops
from . import criteria, ctf_correction, downsample, outputs, references, refine, rundir, search, selfbias
from .errors import InputError
from .geometry import MIRROR, PSI, SX, SY, center_offsets, shift_grid

CHECKPOINTS_KEPT = 2
# The arrays of a State that every checkpoint holds (and ``sums`` where the state has them).
STATE_ARRAYS = ("params", "classes", "scores", "references", "cutoffs", "averages")
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
    ``images`` are the particles as the search reads them (cropped, phase-flipped with CTF correction)
    and ``weighted`` the Wiener numerator's (:mod:`.ctf_correction`); ``cache_dir`` (the run's output
    folder) keeps them, each derived once per run (:mod:`.image_cache`).
    """

    def __init__(self, source, settings, comm, backend, log, cache_dir=None):
        self.comm, self.backend, self.log = comm, backend, log
        self.input_source, self.input_settings = source, settings
        self.scale, self.grid = downsample.checked_plan(source.box, getattr(source, "pixel_size", None), settings)
        flips = ctf_correction.resolve_mode(settings.ctf, getattr(source, "ctf", None) is not None)[0] != "none"
        if self.scale.crops:   # cropped particles are kept unless the flipped ones are
            source = downsample.CroppedSource(source, self.scale.internal_box, settings.threads,
                                              None if flips else cache_dir)
        if self.scale.pixel_size is not None or self.scale.crops:
            log(self.scale.describe())
        settings = self.scale.internal(settings)
        self.source, self.settings = source, settings
        box = source.box
        self.radius = self.scale.radius
        search.check_search_size(1, self.grid, settings.shift_range, settings.shift_step)  # before allocating
        self.shifts = shift_grid(settings.shift_range, settings.shift_step)
        self.offset_limit = search.offset_limit(box, self.grid)
        self.active = None   # every particle (see :meth:`subset`)
        self.local = np.arange(source.count)[comm.local_slice(source.count)]
        self.share = comm.local_slice(source.count)   # this rank's rows of an allgathered array
        self.correction = ctf_correction.resolve(settings, source)
        log(self.correction.describe())
        self._derived(cache_dir)

    def _derived(self, cache_dir):
        self.images = ctf_correction.search_source(self.source, self.correction, cache_dir)
        self.weighted = None
        if self.correction.mode == "wiener":
            self.weighted = ctf_correction.weighted_source(self.images, self.correction, self.radius, cache_dir)

    @functools.cached_property
    def probe(self):
        """The run's :class:`~.selfbias.NoiseProbe` (built on first use)."""
        return selfbias.NoiseProbe(self.backend, self.grid, self.source.box, self.radius)

    def subset(self, active):
        """This context over the particles ``active`` only (sorted global indices; None: all), split
        over the ranks in blocks as all of them are, so that gathered arrays are in ``active`` order."""
        if active is None:
            return self
        part = copy.copy(self)
        part.active = np.asarray(active, np.int64)
        part.share = self.comm.local_slice(len(part.active))
        part.local = part.active[part.share]
        return part

    def gather(self, full, local):
        """``full`` (a per-particle array in input order) with this subset's rows replaced by the
        ranks' ``local`` values."""
        gathered = self.comm.allgather(local)
        if self.active is None:
            return gathered
        out = np.array(full, dtype=gathered.dtype)
        out[self.active] = gathered
        return out

    def at_input_box(self):
        """This context at the input box (the final averages): the input particles, the mask radius
        in input px, their CTF correction, and batches of about the same bytes as the run's."""
        full = copy.copy(self)
        factor = self.scale.factor
        full.source, full.radius = self.input_source, self.radius * factor
        full.settings = dataclasses.replace(self.settings, radius=None, shift_range=None, shift_step=None,
                                            batch_size=max(1, int(self.settings.batch_size / factor ** 2)))
        full.correction = ctf_correction.resolve(self.input_settings, self.input_source)
        full._derived(None)   # one pass: nothing to keep
        return full

    def batches(self):
        size = max(1, int(self.settings.batch_size))
        for start in range(0, len(self.local), size):
            yield self.local[start:start + size]

    def read(self, indices):
        """The particles as the search sees them: phase-flipped (CTF correction flip or wiener), normalised."""
        return imgops.normalise(self.images.read(indices), self.radius, indices)


def search_pass(ctx, refs, params):
    """:class:`~.search.Candidates` of this rank's particles (none on a rank without any): each
    particle's best few, against the references its preselection keeps (all of them for small K).

    The references are prepared in chunks (:func:`~.search.reference_chunks`; one unless K is
    large), each searched over every particle; the preselection runs once per batch.
    """
    settings = ctx.settings
    chunks = search.reference_chunks(len(refs), len(ctx.shifts), ctx.grid)
    search.check_search_size(len(chunks[0]), ctx.grid, settings.shift_range, settings.shift_step)
    preselection = search.Preselection.plan(ctx.backend, refs, ctx.radius, settings.shift_range,
                                            settings.shift_step, settings.mirror,
                                            settings.resolved_preselect(len(refs)))
    members, found = {}, {}
    start = last = time.perf_counter()
    done, total = 0, len(ctx.local) * len(chunks)
    for chunk in chunks:
        prepared = ctx.backend.prepare_references(
            search.reference_rings(ctx.backend, refs[chunk.start:chunk.stop], ctx.grid, ctx.shifts), ctx.grid,
            settings.mirror)
        for i, batch in enumerate(ctx.batches()):
            offsets = np.clip(center_offsets(params[batch]), -ctx.offset_limit, ctx.offset_limit)
            images = ctx.read(batch)
            kept = members.get(i)
            if preselection is not None and kept is None:
                kept = preselection.members(images, offsets)
                if len(chunks) > 1:   # the next chunks need them
                    members[i] = kept
            found[i] = search.search(ctx.backend, images, offsets, prepared, ctx.grid, kept, chunk.start,
                                     found.get(i))
            done += len(batch)
            now = time.perf_counter()
            if now - last > PROGRESS_SECONDS and done < total:
                ctx.log("  searched %d of %d particles on this rank (%.0f particles/s)"
                        % (done / len(chunks), len(ctx.local), done / len(chunks) / (now - start)))
                last = now
        prepared = None   # before the next chunk is prepared
    return search.Candidates.concatenate([found.pop(i) for i in sorted(found)] or [search.Candidates.empty(len(refs))])


def choose(ctx, cand, ranking, n_classes, balanced):
    """The chosen candidate (column) of each particle ``ctx`` searched on this rank: its best by
    ``ranking`` (its candidates' scores, best first), or with ``balanced`` the equal-size assignment
    over every rank's candidates (``(N, C)`` gathered, C independent of K)."""
    if not balanced:
        return np.zeros(len(cand.score), np.int64)   # candidates are best first; ties: the lower class
    slot = references.balanced_assignment(ctx.comm.allgather(cand.reference), ctx.comm.allgather(ranking),
                                          n_classes)
    return slot[ctx.share]


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
            *ctf_correction.wiener_pass(ctx, params, classes, n_classes), counts, ctx.radius)
        return references.finish(averages, curves, ctx.radius, ctx.settings.center, max_cutoff)
    if sums is None:
        sums = average_pass(ctx, params, classes, n_classes)
    return references.build(sums, counts, ctx.radius, ctx.settings.center, max_cutoff)


def _class_sums(members, part, state, params, classes, events):
    """With a ``subsets`` hook, the class sums of the particles with a class (``members``), kept in the
    state: the previous ones updated with the change of the particles searched (``part``; exact, in
    fixed point) when only some were and no class was re-seeded, else a pass over the members.  None
    with Wiener averages (their sums are not kept)."""
    n_classes = len(state.references)
    if members.correction.mode == "wiener":
        return None
    subset = part.active
    if subset is None or state.sums is None or events or len(state.sums) != n_classes:
        return average_pass(members, params, classes, n_classes)
    before = subset[state.classes[subset] >= 0]   # searched particles that were in a class: theirs come out
    count = members.source.count if members.active is None else len(members.active)
    if len(subset) + len(before) >= count:   # then a pass over the members reads fewer
        return average_pass(members, params, classes, n_classes)
    return (state.sums + average_pass(part, params, classes, n_classes)
            - average_pass(part.subset(before), state.params, state.classes, n_classes))


def _angle_change(new, old):
    return np.abs((new[:, PSI] - old[:, PSI] + 180.0) % 360.0 - 180.0)


def _summary(ctx, state, new_params, new_classes, new_scores, seconds, searched=slice(None)):
    """One history row over the particles ``searched`` (indices or a slice); ``changed`` is what
    auto-stop watches (classes for K > 1, else parameters)."""
    n_classes = len(state.references)
    new_params, new_classes, new_scores = new_params[searched], new_classes[searched], new_scores[searched]
    old_params, old_classes = state.params[searched], state.classes[searched]
    angle = _angle_change(new_params, old_params)
    shift = np.hypot(*(new_params[:, [SX, SY]] - old_params[:, [SX, SY]]).T)
    mirrored = new_params[:, MIRROR] != old_params[:, MIRROR]
    class_changed = new_classes != old_classes
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


def iterate(ctx, state, reseed, out_dir=None, subsets=None, merge=None):
    """Run iterations ``state.iteration + 1 ..`` up to the limit (or auto-stop); return the state.

    ``subsets(iteration)``, if given, returns the sorted global indices of the particles to search in
    that iteration, or None for all (:mod:`.minibatch`'s schedule, :mod:`.grow`'s new particles).  The
    others keep their class and parameters; the averages take every particle with a class.  With the
    hook the state keeps the class sums, so an iteration searching a subset updates them with that
    subset's change instead of averaging every particle again.  The history row's ``searched`` says
    how many were searched; auto-stop is judged only on iterations that search every particle.
    ``merge(ctx, state, last)``, if given, returns the state to checkpoint and go on from after each
    iteration (:mod:`.overcluster`'s merge, which may change the number of classes); ``last``: the run
    ends with it.
    """
    settings, comm = ctx.settings, ctx.comm
    balanced = settings.resolved_balanced_iterations()
    for iteration in range(state.iteration + 1, settings.iterations + 1):
        start = time.perf_counter()
        n_classes = len(state.references)
        subset = subsets(iteration) if subsets is not None else None
        part = ctx.subset(subset)   # the particles this iteration searches
        cand = search_pass(part, state.references, state.params)
        ranking = cand.score
        if settings.debias and reseed and n_classes > 1:   # each particle's own noise out of its class's score
            sizes = np.bincount(state.classes[state.classes >= 0], minlength=n_classes)
            bias = ctx.probe.self_bias(state.references, state.cutoffs, sizes)
            cand, ranking = selfbias.debiased(cand, state.classes[part.local], bias)
        slot = choose(part, cand, ranking, n_classes, reseed and n_classes > 1 and iteration <= balanced)
        rows = np.arange(len(slot))
        choice = cand.reference[rows, slot]
        local = search.candidate_params(cand, slot, ctx.shifts, ctx.grid)
        local_scores = cand.score[rows, slot].astype(np.float64)
        if settings.refine_shifts:
            local, local_scores = refine.refine_pass(part, state.references, cand, slot, local, local_scores)
        params = part.gather(state.params, local)
        scores = part.gather(state.scores, local_scores)
        classes = part.gather(state.classes, choice.astype(np.int64))
        margins = comm.allgather(criteria.margins(ranking))
        searched = slice(None) if subset is None else subset
        assigned = classes >= 0
        events = []
        if reseed and n_classes > 1:
            min_members = settings.resolved_min_members(int(assigned.sum()), n_classes)
            classes, events = references.reseed_starved(classes, scores, n_classes, min_members)
        parity = np.arange(len(classes)) % 2
        counts = references.class_counts(classes, parity, n_classes)
        cap = references.cutoff_cap(iteration) if n_classes > 1 else references.MAX_CUTOFF
        members = ctx.subset(None if assigned.all() else np.flatnonzero(assigned))
        sums = None if subsets is None else _class_sums(members, part, state, params, classes, events)
        refs, cutoffs, averages = class_references(members, params, classes, counts, cap, sums)
        row = {"iteration": iteration, "searched": len(margins)}
        row.update(_summary(ctx, state, params, classes, scores, time.perf_counter() - start, searched))
        row["class_sizes"] = counts.sum(axis=1).tolist()
        row["resolution_px"] = (1.0 / cutoffs).tolist()
        row["reseeded"] = events
        row.update(criteria.class_criteria(classes[searched], scores[searched], margins, n_classes))
        state = State(iteration, params, classes, scores, refs, cutoffs, averages, state.history + [row], sums)
        converged = settings.auto_stop and part.active is None and row["changed"] < settings.stop_fraction
        if merge is not None:
            state = merge(ctx, state, converged or iteration == settings.iterations)
        if out_dir is not None and comm.rank == 0:
            save(out_dir, state)
        ctx.log(progress_line(row, settings.iterations, ctx.source.count))
        if converged:
            ctx.log("converged: %.2f%% of the particles changed (< %.2f%%)"
                    % (100 * row["changed"], 100 * settings.stop_fraction))
            break
    return state


def progress_line(row, iterations, count=None):
    """The log line of a history row; a mini-batch iteration says how many of the ``count`` particles
    it searched."""
    batch = "" if count is None or row["searched"] == count else " (searched %d of %d)" % (row["searched"], count)
    text = ("iteration %d/%d%s: %.0f particles/s, mean score %.4f, class changes %.1f%%, "
            "angle change %.2f deg, shift change %.2f px, %.1f s"
            % (row["iteration"], iterations, batch, row["particles_per_second"], row["mean_score"],
               100 * row["class_changes"], row["mean_angle_change"], row["mean_shift_change"], row["seconds"]))
    for event in row["reseeded"]:
        text += "\n  re-seeded class %(class)d with %(members)d particles of class %(from_class)d" % event
    return text


def save(out_dir, state):
    """Checkpoint ``iter_NNN`` atomically and drop older ones beyond the last few."""
    arrays = {name: getattr(state, name) for name in STATE_ARRAYS}
    if state.sums is not None:
        arrays["sums"] = state.sums
    outputs.save_checkpoint(out_dir, state.iteration, arrays, {"history": state.history})
    old = state.iteration - CHECKPOINTS_KEPT
    if old >= 0:
        shutil.rmtree(outputs.checkpoint_dir(out_dir, old), ignore_errors=True)


def restore(out_dir, count, box, n_classes):
    """The last complete checkpoint as a :class:`State`, checked against this run; None if none."""
    found = outputs.last_checkpoint(out_dir)
    return None if found is None else state_for(*found, out_dir, count, box, n_classes)


def state_for(iteration, arrays, meta, out_dir, count, box, n_classes):
    """:func:`state_of` the checkpoint, refused (InputError) unless it holds ``count`` particles and
    ``n_classes`` references of ``box`` px (a number, or a function of the iteration where the run
    changes it: :func:`~.overcluster.classes_at`): the check a resumed run's folder claim makes before
    it removes anything (:func:`~.rundir.claim`'s ``check``)."""
    state = state_of(iteration, arrays, meta, out_dir)
    # with a schedule, also its final number: a run that ended before its merge holds that from then on
    allowed = {n_classes(iteration), n_classes(math.inf)} if callable(n_classes) else {n_classes}
    n_classes = n_classes(iteration) if callable(n_classes) else n_classes
    if len(state.params) != count or state.references.shape[1:] != (box, box) \
            or len(state.references) not in allowed:
        raise InputError("the checkpoint in %s belongs to another run (%d particles, %d classes of %d px; "
                         "this run has %d particles, %d classes of %d px): use a new output directory or "
                         "the same input" % (out_dir, len(state.params), len(state.references),
                                             state.references.shape[-1], count, n_classes, box))
    return state


def state_of(iteration, arrays, meta, out_dir, grow=False):
    """The :class:`State` of the checkpoint ``(iteration, arrays, meta)`` in ``out_dir``; InputError where it
    lacks part of one (an edited checkpoint: the manifest, compared first, says which version wrote it)."""
    lacks = [n for n in STATE_ARRAYS if n not in arrays] + ["history"] * ("history" not in meta)
    if lacks:
        raise InputError("the checkpoint %s lacks %s: %s" % (outputs.checkpoint_dir(out_dir, iteration),
                                                            ", ".join(lacks), rundir.restart(grow)))
    return State(iteration, arrays["params"], arrays["classes"], arrays["scores"], arrays["references"],
                 arrays["cutoffs"], arrays["averages"], meta["history"], arrays.get("sums"))

