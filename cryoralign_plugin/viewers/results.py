"""A finished run's results as arrays, read from the engine's files in ``extra/``.

The viewer reads the engine files rather than the Scipion sets: they are the same for RFA and MRA,
hold the per-iteration history (which no Scipion object has), and load a million particles'
parameters as arrays in a second, where iterating a set's sqlite would take minutes.  The
engine's ``particles.star`` rows follow the engine input (``extra/input/particles.star``) row for
row, which is how a particle's image is found.
"""
import os

import numpy as np

from .. import convert
from ..constants import ENGINE_DIR, INPUT_DIR, INPUT_STAR
from ..engine import outputs
from ..engine.mrc import read_stack
from ..engine.sources import StarSource


class RunResults:
    """Per-particle parameters, scores and classes (1-based), per-class data and the history."""

    def __init__(self, extraDir):
        self.engineDir = os.path.join(extraDir, ENGINE_DIR)
        self.inputStar = os.path.join(extraDir, INPUT_DIR, INPUT_STAR)
        found = outputs.read_particles(self.engineDir)
        self.params, self.scores, self.classes = found.params, found.scores, found.classes + 1
        self.history = outputs.read_history(self.engineDir)
        engineClasses = convert.readEngineClasses(self.engineDir)
        self.classIds = np.array(sorted(engineClasses), dtype=np.int64)
        info = [engineClasses[c] for c in self.classIds]
        self.sizes = np.array([c.size for c in info], dtype=np.int64)
        self.resolutions = np.array([c.resolution for c in info])
        self._averageLocations = [(c.index, c.stack) for c in info]

    def averages(self, classIds):
        """Class averages ``(len(classIds), n, n)`` in the order of ``classIds``."""
        stacks = {}
        out = []
        for cid in classIds:
            index, stack = self._averageLocations[int(np.searchsorted(self.classIds, cid))]
            if stack not in stacks:
                stacks[stack] = read_stack(stack)
            out.append(stacks[stack][index - 1])
        return np.array(out)

    def particleImages(self, indices):
        """Input images of the particles at 0-based rows ``indices`` of ``particles.star``."""
        with StarSource.from_star(self.inputStar) as stack:
            return stack.read(indices)

    def select(self, classIds):
        """Boolean mask of the particles in ``classIds``."""
        return np.isin(self.classes, classIds)
