"""Python API: reference-free and multireference alignment on arrays or STAR files.

Both functions accept an ``(N, n, n)`` array or a :class:`~.sources.ParticleSource`, return a
:class:`~.loop.Result`, and write the run's files when ``out_dir`` is given: the folder then belongs
to the run (:mod:`.rundir`: never over an input, one run at a time, a manifest first; ``resume``
continues only a run with the same manifest, ``overwrite`` replaces a previous run).  Under
``mpirun`` every rank calls the same function; the particles are split between them.
"""
from contextlib import contextmanager

import numpy as np

from . import images as imgops
from . import downsample, loop, minibatch, outputs, overcluster, parallel, references as reference_ops, rundir
from .backends import get_backend
from .errors import InputError
from .settings import Settings
from .sources import ArraySource, ParticleSource


def _source(particles):
    if isinstance(particles, ParticleSource):
        return particles
    return ArraySource(np.asarray(particles, dtype=np.float32))


def _context(particles, settings, comm, log, out_dir=None):
    """The run's :class:`~.loop.Context`; ``out_dir`` holds its cache of cropped particles."""
    source = _source(particles)
    comm = comm or parallel.world()
    settings.check()
    backend = get_backend(settings.backend, settings.threads, settings.gpu, comm.rank, settings.exhaustive)
    log = log if comm.rank == 0 else (lambda *_: None)
    fallback = backend.name == "cpu" and settings.gpu
    log("backend: %s%s" % (backend.name, " (no usable GPU found: running on the CPU)" if fallback else ""))
    return loop.Context(source, settings, comm, backend, log, out_dir)


@contextmanager
def _running(particles, settings, comm, log, out_dir=None):
    """:func:`_context` of a run, with numba's parallel regions of this thread kept within the run's CPU
    threads while it is open (the kernels outside the backend too: normalisation, refinement, CTF)."""
    settings.check()   # before its threads are read
    with parallel.numba_threads(parallel.cpu_threads(settings.threads)):
        yield _context(particles, settings, comm, log, out_dir)


def _initial_params(ctx):
    if ctx.settings.use_prior and ctx.source.prior is not None:
        return np.array(ctx.source.prior, np.float64)
    return np.zeros((ctx.source.count, 4))


def _unassigned_state(ctx, refs):
    """A multireference run's state before its first iteration: every particle unassigned, at its
    starting parameters, with the references ``refs``."""
    count = ctx.source.count
    return loop.State(0, _initial_params(ctx), np.full(count, -1, np.int64), np.zeros(count), refs,
                      np.zeros(len(refs)), refs, [])


def _run(ctx, n_refs, initial_state, reseed, out_dir, resume, overwrite, command, start, inputs, merge=None,
         classes_at=None):
    """Claim ``out_dir``, then iterate from its last checkpoint or from ``initial_state()``.

    The initial state is built only after the folder is claimed and only when no checkpoint is resumed:
    for RFA it is a pass over every particle, which a refused or continued run must not pay for.
    ``merge`` is :func:`~.loop.iterate`'s hook and ``classes_at`` the number of classes after each
    iteration where it changes (:mod:`.overcluster`); ``n_refs`` is the run's final number.
    """
    checked = classes_at or n_refs
    subsets = minibatch.schedule(ctx.settings, ctx.source.count, n_refs)   # refuses before the folder is claimed
    claim = None
    if out_dir is not None:
        if ctx.comm.rank == 0:   # claims the folder (or refuses, writing nothing) before anything is written
            new = rundir.manifest(command, ctx.settings, ctx.input_source, ctx.radius, n_refs, start,
                                  ctx.source.box)
            claim = rundir.claim(out_dir, new, resume, overwrite, ctx.settings.iterations,
                                 rundir.input_files(ctx.input_source, inputs), ctx.log,
                                 check=lambda *found: loop.state_for(*found, out_dir, ctx.source.count,
                                                                     ctx.source.box, checked))
        # rank 0 decides whether to resume; the others wait for it here (if it refuses, the CLI aborts them)
        resume = bool(ctx.comm.allgather(np.array([claim is not None and claim.resume]))[0])
    try:
        state = loop.restore(out_dir, ctx.source.count, ctx.source.box, checked) if resume else None
        if state is not None:
            ctx.log("continuing after iteration %d" % state.iteration)
        else:
            state = initial_state()
        state = loop.iterate(ctx, state, reseed, out_dir, subsets, merge)
        result = _result(ctx, state)
        if out_dir is not None and ctx.comm.rank == 0:
            outputs.write(out_dir, ctx.input_source, result)
    finally:
        if claim is not None:
            claim.release()   # the lock: held for the whole run
    return result


def _result(ctx, state):
    """The run's :class:`~.loop.Result` in the input's pixels: shifts in input px and, for a run at a
    smaller internal box, class averages (and their resolutions) at the input box, computed from the
    input particles with the final parameters and CTF-corrected as the run was (a final pass).  The
    references stay those of the internal box, as the checkpoints do."""
    if not ctx.scale.crops:
        return loop.Result(state.classes, state.params, state.scores, state.averages, state.references,
                           state.cutoffs, state.history)
    ctx.log("final averages at the input box (%d px) from the input particles" % ctx.input_source.box)
    params = ctx.scale.to_input(state.params)
    counts = reference_ops.class_counts(state.classes, np.arange(len(state.classes)) % 2, len(state.references))
    _, cutoffs, averages = loop.class_references(ctx.at_input_box(), params, state.classes, counts)
    return loop.Result(state.classes, params, state.scores, averages, state.references, cutoffs, state.history)


def align_reference_free(particles, settings=None, out_dir=None, resume=False, comm=None, log=print,
                         overwrite=False, inputs=(), **options):
    """Iterative reference-free alignment (SPARX ``ali2d``): average -> align to it -> repeat.

    ``options`` are :class:`~.settings.Settings` fields (radius, shift_range, iterations, ...).
    ``resume`` continues the run in ``out_dir`` (same manifest), ``overwrite`` replaces the run there;
    ``inputs`` are ``(what, path)`` of input files besides the source's, never to be written over.
    """
    settings = settings or Settings(**options)
    with _running(particles, settings, comm, log, out_dir) as ctx:
        def initial_state():   # the average of the particles at their starting parameters
            params = _initial_params(ctx)
            classes = np.zeros(ctx.source.count, np.int64)
            parity = np.arange(ctx.source.count) % 2
            refs, cutoffs, averages = loop.class_references(ctx, params, classes,
                                                            reference_ops.class_counts(classes, parity, 1))
            return loop.State(0, params, classes, np.zeros(ctx.source.count), refs, cutoffs, averages, [])

        return _run(ctx, 1, initial_state, False, out_dir, resume, overwrite, "rfa", {}, inputs)


def align_multi_reference(particles, n_classes=None, references=None, settings=None, out_dir=None,
                          resume=False, comm=None, log=print, overwrite=False, inputs=(), **options):
    """Multireference alignment (SPARX ``mref_ali2d``) from given references or K random particles.

    Random particles are drawn with ``settings.seed``; starved classes are re-seeded (see
    :func:`~.references.reseed_starved`) so the classes do not collapse into a few.  ``resume``,
    ``overwrite`` and ``inputs`` as for :func:`align_reference_free`.
    """
    settings = settings or Settings(**options)
    with _running(particles, settings, comm, log, out_dir) as ctx:
        if references is not None:
            refs = _initial_references(ctx, n_classes, references)
            state = _unassigned_state(ctx, refs)
            given = np.asarray(references, np.float32)
            start = {"references": given[None] if given.ndim == 2 else given}
            return _run(ctx, len(refs), lambda: state, True, out_dir, resume, overwrite, "mra", start, inputs)
        classes_at = overcluster.classes_at(settings, n_classes, ctx.source.count)   # over-clustering or not
        state = _unassigned_state(ctx, _initial_references(ctx, n_classes, None, classes_at))
        start = {"classes": int(n_classes), "seed": int(settings.seed)}
        return _run(ctx, n_classes, lambda: state, True, out_dir, resume, overwrite, "mra", start, inputs,
                    overcluster.hook(classes_at, n_classes, settings.iterations, settings.resplit),
                    classes_at)


def _initial_references(ctx, n_classes, references, classes_at=None):
    """The given references at the internal box, or random particles: ``n_classes`` of them, or as many
    as the schedule ``classes_at`` (:func:`~.overcluster.classes_at`) starts with."""
    count, box = ctx.source.count, ctx.input_source.box
    if references is not None:
        refs = np.asarray(references, np.float32)
        if refs.ndim == 2:
            refs = refs[None]
        if refs.ndim != 3 or refs.shape[1:] != (box, box):
            raise InputError("the references are %s but the particles are %dx%d px: give references of the "
                             "particles' box size" % ("x".join(map(str, refs.shape[1:])), box, box))
        if not np.all(np.isfinite(refs)):
            raise InputError("the references contain NaN or infinite values: fix the reference stack")
        refs = downsample.fourier_crop(refs, ctx.source.box)      # to the internal box, as the particles
        try:
            return imgops.normalise(refs, ctx.radius)
        except imgops.BlankImages as blank:
            raise InputError("reference %s of the %d given %s blank (constant inside the %d px mask): fix the "
                             "reference stack, or start from random particles (--classes)" % (
                                 ", ".join(str(k + 1) for k in blank.indices[:10]), len(refs),
                                 "is" if len(blank.indices) == 1 else "are", ctx.radius)) from None
    if n_classes is None or n_classes < 1:
        raise InputError("give the number of classes (>= 1) or initial references")
    if n_classes > count:
        raise InputError("%d classes were requested but there are only %d particles: ask for at most %d "
                         "classes" % (n_classes, count, count))
    rng = np.random.default_rng(ctx.settings.seed)
    drawn = n_classes if classes_at is None else classes_at(0)
    chosen = np.sort(rng.choice(count, size=drawn, replace=False))
    return imgops.normalise(ctx.correction.for_search(ctx.source.read(chosen), chosen), ctx.radius, chosen)
