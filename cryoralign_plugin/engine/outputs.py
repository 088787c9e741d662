"""The run's result files, written atomically by rank 0 (``particles.star`` last: it marks completion)."""
import os
from collections import namedtuple

import numpy as np

from . import io
from .geometry import MIRROR, PSI, SX, SY

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
        rows.append(("%06d@classes.mrcs" % (k + 1), k + 1, int(sizes[k]), sizes[k] / total,
                     round(float(resolution), 3), round(score, 6)))
    return rows


def particle_table(source, result):
    p = result.params
    return [(int(source.ids[i]), source.names[i], int(result.classes[i]) + 1, round(float(p[i, PSI]), 4),
             round(float(p[i, SX]), 4), round(float(p[i, SY]), 4), int(p[i, MIRROR]),
             round(float(result.scores[i]), 6)) for i in range(len(p))]


def write(out_dir, source, result):
    """``classes.mrcs``, ``classes.star``, ``history.json`` and finally ``particles.star``."""
    pixel_size = source.pixel_size
    io.write_stack(os.path.join(out_dir, "classes.mrcs"), result.averages, pixel_size=pixel_size)
    io.write_star(os.path.join(out_dir, "classes.star"), {"classes": (CLASS_COLUMNS, class_table(result, pixel_size))})
    io.write_json(os.path.join(out_dir, "history.json"), result.history)
    io.write_star(os.path.join(out_dir, "particles.star"),
                  {"particles": (PARTICLE_COLUMNS, particle_table(source, result))})


ParticleResults = namedtuple("ParticleResults", "ids classes params scores")


def read_particles(out_dir):
    """:class:`ParticleResults` of ``particles.star`` in its row order (the input order).

    ``ids`` are the input's ``rlnImageId``, ``classes`` 0-based, ``params`` ``(N, 4)``.
    """
    rows = list(io.read_star(os.path.join(out_dir, "particles.star"), "particles"))
    return ParticleResults(
        np.array([r.rlnImageId for r in rows], np.int64).reshape(-1),
        np.array([r.rlnClassNumber - 1 for r in rows], np.int64).reshape(-1),
        np.array([[r.rlnAnglePsi, r.rlnOriginX, r.rlnOriginY, r.rlnIsFlip] for r in rows], np.float64).reshape(-1, 4),
        np.array([r.rlnCryoralignScore for r in rows], np.float64).reshape(-1))
