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
4. **What the folder may be used for** (:func:`.folder._decide`), with ``S`` its manifest:

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
   removed.  ``--overwrite`` removes only the files a run owns (:func:`~..outputs.owned`):
   ``particles.star`` first (it marks completion), then the checkpoints, then the rest, and then
   writes the new manifest; anything else in the folder stays.  A refused run writes nothing at all.

What may change on ``--continue`` is what cannot change the result: ``iterations`` (as many as
done, which only rewrites the results, or more), ``auto_stop``, ``stop_fraction``, ``backend``,
``gpu``, ``threads`` and ``batch_size`` (a particle's search does not depend on its batch and class
sums are exact integers; ``tests/engine/test_manifest.py`` checks it).  A continued run that will
do more iterations first removes ``particles.star``: until it writes it again, nothing in the folder
looks like a finished result.

One job per module: ``inputs`` (the files a run reads, kept out of its folder, and their fingerprint),
``identity`` (the manifest, and the differences between two), ``lock`` (``run.lock``), ``folder``
(what a folder holds, the decision, :func:`claim`); the public names are re-exported here.
"""
from .folder import FRESH, OVERWRITE, RESUME, Claim, Survey, check_same_run, claim, remove_owned, restart, survey
from .identity import (FREE_SETTINGS, GROW_SETTINGS, GROWING_FIELDS, MANIFEST_FORMAT,
                       MRA_SETTINGS, PROGRAM, SHOWN_DIGEST, differences, manifest)
from .inputs import SAMPLED_IMAGES, check_out, digest, fingerprint, input_files, sampled_indices
from .lock import RunLock, holder

__all__ = ["FREE_SETTINGS", "FRESH", "GROWING_FIELDS", "GROW_SETTINGS", "MANIFEST_FORMAT",
           "MRA_SETTINGS", "OVERWRITE", "PROGRAM", "RESUME", "SAMPLED_IMAGES", "SHOWN_DIGEST", "Claim",
           "RunLock", "Survey", "check_out", "check_same_run", "claim", "differences", "digest", "fingerprint",
           "holder", "input_files", "manifest", "remove_owned", "restart", "sampled_indices", "survey"]
