"""A data set on disk: references from a named source, particles, their STAR file and the truth."""
import os

from ..geometry import MIRROR, PSI, SX, SY
from .continuous import continuous_views, direction_views
from .measures import _class_axes, ideal_partition
from .parameters import rare_view_weights
from .particles import make_particles
from .phantoms import phantom_pairs, phantom_views, phantom_zoo
from .slicem import slicem_references
from .truth_files import CTF_TRUTH_COLUMNS, TRUTH_COLUMNS, _direction_angles

OPTICS_COLUMNS = ["rlnOpticsGroup", "rlnOpticsGroupName", "rlnVoltage", "rlnSphericalAberration",
                  "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize", "rlnImageDimensionality",
                  "rlnCtfDataArePhaseFlipped"]
PARTICLE_CTF_COLUMNS = ["rlnOpticsGroup", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift",
                        "rlnCtfBfactor"]
SOURCES = ["phantom", "slicem", "phantom-pairs", "phantom-zoo", "phantom-arc", "phantom-cap"]
CONTINUOUS = {"phantom-arc": ("arc", 90.0), "phantom-cap": ("cap", 30.0)}   # mode, default extent


def make_references(source, n_classes, box, seed=0, max_similarity=None):
    """References from ``source``: 'phantom' (:func:`phantom_views`), 'slicem'
    (:func:`slicem_references`), 'phantom-pairs' (:func:`phantom_pairs`, views 2i and 2i+1 a
    near-duplicate pair) or 'phantom-zoo' (:func:`phantom_zoo`, one phantom per view: hundreds of
    distinct views); ``max_similarity`` caps the mutual similarity instead of minimising it
    (phantom and slicem, :func:`pick_views`)."""
    if source == "phantom":
        return phantom_views(n_classes, box, seed, max_similarity)
    if source == "slicem":
        return slicem_references(n_classes, box, seed, max_similarity=max_similarity)
    if source == "phantom-pairs":
        return phantom_pairs(n_classes, box, seed)[0]
    if source == "phantom-zoo":
        return phantom_zoo(n_classes, box, seed)
    raise ValueError("unknown reference source %r: use 'phantom', 'slicem', 'phantom-pairs' or "
                     "'phantom-zoo' (the continuous sources have no references: see make_dataset)" % source)


def make_dataset(out_dir, n_particles=1000, box=64, n_classes=10, snr=1.0, seed=0, source="phantom",
                 shift_range=3.0, mirror=True, *, class_weights=None, rare_fraction=None, ctf=None,
                 max_similarity=None, extent=None):
    """Write a synthetic data set to ``out_dir`` and return its paths by role.

    ``particles.mrcs`` + ``particles.star`` (table ``particles``: rlnImageId, rlnImageName) are
    the input; ``truth.star`` (table ``truth``: 1-based rlnClassNumber and the true parameters in
    the engine convention) and ``references.mrcs`` (clean references) are the answer.

    Options (all off by default, and then the files are exactly what they always were):

    * ``class_weights`` (one per class) or ``rare_fraction`` (:func:`rare_view_weights`: the last
      class gets that fraction, e.g. 0.03) make the classes unequal;
    * ``max_similarity``: references as alike as that cap allows (:func:`pick_views`);
    * ``source='phantom-pairs'``: ``n_classes`` (even) views in near-duplicate pairs 2i, 2i+1;
    * ``source='phantom-zoo'``: ``n_classes`` views of as many phantoms, distinct by the hundred;
    * ``source='phantom-arc'`` / ``'phantom-cap'``: every particle from its own direction on an arc
      of ``extent`` degrees (default 90) / a cap of half-angle ``extent`` (default 30), see
      :func:`continuous_views`.  There are no true classes: ``truth.star`` gains the true direction
      (rlnAngleRot, rlnAngleTilt, RELION's direction convention; the in-plane frame is the
      generator's), rlnClassNumber holds the :func:`ideal_partition` into ``n_classes`` (a
      baseline, not a truth) and ``references.mrcs`` the projections at its mean directions;
    * ``ctf`` (a :class:`CtfSimulation`): CTF-modulated particles; ``particles.star`` is then
      RELION 3.1 style, a ``data_optics`` table (one row per optics group) before
      ``data_particles`` with each particle's rlnOpticsGroup, rlnDefocusU/V (A), rlnDefocusAngle,
      rlnPhaseShift (0) and rlnCtfBfactor; ``truth.star`` gains the same per-particle values and
      the group's voltage, Cs and amplitude contrast (:func:`read_truth_ctf`); the stacks carry the
      pixel size.
    """
    from ..mrc import write_stack
    from ..star import write_star
    if rare_fraction is not None:
        if class_weights is not None:
            raise ValueError("give class_weights or rare_fraction, not both")
        class_weights = rare_view_weights(n_classes, rare_fraction)
    directions = None
    if source in CONTINUOUS and (class_weights is not None or max_similarity is not None):
        raise ValueError("%s has no discrete classes: class weights, a rare view or max_similarity "
                         "do not apply" % source)
    if source in ("phantom-pairs", "phantom-zoo") and max_similarity is not None:
        raise ValueError("%s sets its own similarities: leave max_similarity out" % source)
    if extent is not None and source not in CONTINUOUS:
        raise ValueError("extent is for the continuous sources (%s)" % ", ".join(CONTINUOUS))
    if source in CONTINUOUS:
        mode, default_extent = CONTINUOUS[source]
        views, view_directions = continuous_views(n_particles, box, seed, mode,
                                                  default_extent if extent is None else extent)
        made = make_particles(views, n_particles, snr, seed, shift_range, mirror, ctf=ctf)
        directions = view_directions[made[1]]
        classes = ideal_partition(directions, n_classes, seed)
        references = direction_views(_class_axes(classes, directions, False)[0], box, seed)
        made = (made[0], classes) + tuple(made[2:])
    else:
        references = make_references(source, n_classes, box, seed, max_similarity)
        made = make_particles(references, n_particles, snr, seed, shift_range, mirror,
                              class_weights=class_weights, ctf=ctf)
    images, classes, truth = made[:3]
    ctf_truth = made[3] if ctf is not None else None
    pixel_size = None if ctf is None else ctf.pixel_size
    os.makedirs(out_dir, exist_ok=True)
    paths = {role: os.path.join(out_dir, name) for role, name in
             [("particles", "particles.mrcs"), ("particles_star", "particles.star"),
              ("truth", "truth.star"), ("references", "references.mrcs")]}
    write_stack(paths["particles"], images, pixel_size)
    write_stack(paths["references"], references, pixel_size)
    ids = range(1, n_particles + 1)
    names = ["%06d@particles.mrcs" % i for i in ids]
    truth_columns = list(TRUTH_COLUMNS)
    truth_rows = [[i, int(k) + 1, float(p[PSI]), float(p[SX]), float(p[SY]), int(p[MIRROR])]
                  for i, k, p in zip(ids, classes, truth)]
    if ctf_truth is None:
        write_star(paths["particles_star"], {"particles": (
            ["rlnImageId", "rlnImageName"], [(i, n) for i, n in zip(ids, names)])})
    else:
        optics = ctf.optics()
        write_star(paths["particles_star"], {
            "optics": (OPTICS_COLUMNS, [
                (g + 1, "opticsGroup%d" % (g + 1), float(optics["voltage"][g]), float(optics["cs"][g]),
                 float(optics["amplitude_contrast"][g]), float(ctf.pixel_size), int(box), 2, 0)
                for g in range(ctf.groups)]),
            "particles": (["rlnImageId", "rlnImageName"] + PARTICLE_CTF_COLUMNS, [
                (i, n, int(ctf_truth["optics_group"][j])) + tuple(
                    float(ctf_truth[key][j]) for key in ("defocus_u", "defocus_v", "defocus_angle",
                                                         "phase_shift", "bfactor"))
                for j, (i, n) in enumerate(zip(ids, names))])})
        truth_columns += [column for column, _ in CTF_TRUTH_COLUMNS] + ["rlnImagePixelSize"]
        for j, row in enumerate(truth_rows):
            row += [int(ctf_truth[key][j]) if key == "optics_group" else float(ctf_truth[key][j])
                    for _, key in CTF_TRUTH_COLUMNS] + [float(ctf.pixel_size)]
    if directions is not None:
        truth_columns += ["rlnAngleRot", "rlnAngleTilt"]
        for row, rot, tilt in zip(truth_rows, *_direction_angles(directions)):
            row += [float(rot), float(tilt)]
    write_star(paths["truth"], {"truth": (truth_columns, [tuple(r) for r in truth_rows])})
    return paths
