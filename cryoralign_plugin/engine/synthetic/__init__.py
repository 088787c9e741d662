"""Synthetic particle stacks with known ground truth (class, rotation, shift, mirror).

Tests, the demo and the benchmarks need particles whose answer is known.  A particle's true
parameters follow the engine convention of :mod:`..geometry`: they bring the particle into register
with its reference, ``transform(clean_particle, truth) ~ reference``.  So a clean particle is made
as ``transform(reference, inverse(truth))`` and white noise is added on top.

References are either projections of one random asymmetric blob phantom (:func:`phantom_views`)
or real class averages from SLICEM (:func:`slicem_references`); in both cases the most mutually
distinct ones are chosen, so that a classifier has a well-defined answer to find.

Harder sets, each with its ground truth, are there for testing a classifier on data as hard as
real data:

* low SNR (``snr`` 0.02-0.05) on real SLICEM averages, optionally chosen to be as alike as a cap
  on their mutual similarity allows (``max_similarity``, :func:`pick_views`);
* near-duplicate pairs of views (:func:`phantom_pairs`);
* hundreds of distinct views, one random phantom each (:func:`phantom_zoo`);
* a continuum of projection directions without discrete classes (:func:`continuous_views`,
  :func:`direction_spread`, :func:`ideal_partition`);
* a rare view holding a few percent of the particles (:func:`rare_view_weights`);
* CTF-modulated particles with RELION 3.1 optics groups (:class:`CtfSimulation`).

One job per module: ``conventions`` (the SNR mask, standardised views, random streams),
``similarity`` (distinct or capped-alike choices), ``phantoms``, ``continuous``, ``slicem`` (the
references), ``parameters`` (classes and true parameters), ``ctf_sim``, ``particles`` (noisy
particles), ``datasets`` and ``truth_files`` (a set on disk, its truth read back), ``measures``
(purity, registration errors, direction spread), ``cli`` (``python -m`` this package).  The public
names are re-exported here; a module's tuning constants (``CHUNK``...) are read where they are defined.
"""
from .cli import main
from .continuous import POLE, continuous_directions, continuous_views, direction_views
from .conventions import default_radius
from .ctf_sim import CTF_CHUNK, CTF_KEYS, CtfSimulation, particle_ctfs
from .datasets import CONTINUOUS, OPTICS_COLUMNS, PARTICLE_CTF_COLUMNS, SOURCES, make_dataset, make_references
from .measures import direction_spread, ideal_partition, purity, register_errors
from .parameters import class_labels, random_parameters, rare_view_weights
from .particles import CHUNK, add_noise, make_particles, noise_sigma, signal_variance
from .phantoms import PAIR_TILTS, PHANTOM_CANDIDATES, ZOO_CANDIDATES, phantom_pairs, phantom_views, phantom_zoo
from .similarity import SIMILARITY_ANGLES, SIMILARITY_BOX, most_distinct, pick_views, rotational_similarity
from .slicem import SLICEM_PATH, slicem_references
from .truth_files import CTF_TRUTH_COLUMNS, TRUTH_COLUMNS, read_truth, read_truth_ctf, read_truth_directions

__all__ = ["CHUNK", "CONTINUOUS", "CTF_CHUNK", "CTF_KEYS", "CTF_TRUTH_COLUMNS", "CtfSimulation",
           "OPTICS_COLUMNS", "PAIR_TILTS", "PARTICLE_CTF_COLUMNS", "PHANTOM_CANDIDATES", "POLE",
           "SIMILARITY_ANGLES", "SIMILARITY_BOX", "SLICEM_PATH", "SOURCES", "TRUTH_COLUMNS", "ZOO_CANDIDATES",
           "add_noise", "class_labels", "continuous_directions", "continuous_views", "default_radius",
           "direction_spread", "direction_views", "ideal_partition", "main", "make_dataset", "make_particles",
           "make_references", "most_distinct", "noise_sigma", "particle_ctfs", "phantom_pairs",
           "phantom_views", "phantom_zoo", "pick_views", "purity", "random_parameters", "rare_view_weights",
           "read_truth", "read_truth_ctf", "read_truth_directions", "register_errors", "rotational_similarity",
           "signal_variance", "slicem_references"]
