"""Reference-free 2D alignment (RFA) with the cryoralign engine."""
from enum import Enum

from pwem.objects import Float, Particle, SetOfParticles
from pwem.protocols import ProtAlign2D
from pyworkflow.constants import BETA

from .. import convert
from ..constants import (ATTR_PREFIX, CLASSES_MRCS, CLASSES_STAR, PARTICLES_STAR, RFA)
from .protocol_base import CryoralignProtBase


class outputs(Enum):
    outputParticles = SetOfParticles
    outputAverage = Particle


class CryoralignProtAlign2D(CryoralignProtBase, ProtAlign2D):
    """Reference-free 2D alignment by polar resampling (Cryo-RALib / SPARX ali2d), on GPU or CPU.

    All particles are iteratively rotated, shifted and optionally mirrored onto their common
    average. Output: the aligned particles (2D alignment, no image is rewritten) and the average.
    """
    _label = 'align 2D (reference-free)'
    _devStatus = BETA
    _possibleOutputs = outputs
    _engineCommand = RFA
    _averagesName = 'average'

    def createOutputStep(self):
        partsFn, classesStar, stack = self._requireEngineOutputs(PARTICLES_STAR, CLASSES_STAR,
                                                                 CLASSES_MRCS)
        parts = self._getInputParticles()
        results = convert.EngineParticles(partsFn)
        info = convert.readEngineClasses(self._getEnginePath())[1]

        average = Particle(location=(info.index, stack))
        average.setSamplingRate(parts.getSamplingRate())
        setattr(average, ATTR_PREFIX + 'Resolution', Float(info.resolution))

        aligned = self._createSetOfParticles()
        aligned.copyInfo(parts)
        aligned.setAlignment2D()
        aligned.copyItems(parts, updateItemCallback=lambda item, _: results.updateParticle(item))

        self._defineOutputs(**{outputs.outputParticles.name: aligned,
                               outputs.outputAverage.name: average})
        self._defineSourceRelation(self._getInputPointer(), aligned)
        self._defineSourceRelation(self._getInputPointer(), average)

    def _summaryOutput(self):
        average = getattr(self, outputs.outputAverage.name)
        resolution = getattr(average, ATTR_PREFIX + 'Resolution', None)
        return ['Aligned %d particles; FRC resolution of the average: %.1f A.'
                % (getattr(self, outputs.outputParticles.name).getSize(),
                   resolution.get() if resolution is not None else float('nan'))]

    def _methodsSentence(self):
        return ('We aligned %d particles reference-free [Penczek1992]'
                % self._getInputParticles().getSize())

    def _citations(self):
        return ['Chung2020', 'Penczek1992', 'Hohn2007', 'Tang2007']
