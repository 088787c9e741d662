"""Multireference 2D alignment and classification (MRA) with the cryoralign engine."""
from enum import Enum

import pyworkflow.protocol.params as params
from pwem.objects import SetOfClasses2D
from pwem.protocols import ProtClassify2D
from pyworkflow.constants import BETA

from .. import convert
from ..constants import (CLASSES_MRCS, CLASSES_STAR, MRA, PARTICLES_STAR,
                         REFERENCES_STACK)
from ..engine.settings import (FINAL_FULL_PASSES, MINIBATCH_FRACTION, MINIBATCH_GROWTH,
                               MINIBATCH_LEAST_PER_CLASS, OVERCLUSTER_MAX_CLASSES)
from .protocol_base import AUTOMATIC, DEFAULTS, CryoralignProtBase


class outputs(Enum):
    outputClasses = SetOfClasses2D


class CryoralignProtClassify2D(CryoralignProtBase, ProtClassify2D):
    """2D classification by multireference alignment with polar resampling (Cryo-RALib / SPARX
    mref_ali2d), on GPU or CPU.

    Each iteration aligns every particle to every class average (rotation, shift, mirror),
    assigns it to the best one and rebuilds the averages. Starts from random particles or from
    given references. Output: 2D classes with their averages and the aligned particles.
    """
    _label = '2D classification (multireference)'
    _devStatus = BETA
    _possibleOutputs = outputs
    _engineCommand = MRA

    def _defineInputParams(self, form):
        form.addParam('useReferences', params.BooleanParam, default=False,
                      condition='not doContinue', label='Start from given references?',
                      help='No: the initial references are random particles. Yes: use the '
                           'images of a set of averages, classes or particles.')
        form.addParam('numberOfClasses', params.IntParam, default=10, validators=[params.Positive],
                      condition='not doContinue and not useReferences', label='Number of classes')
        form.addParam('inputReferences', params.PointerParam,
                      pointerClass='SetOfAverages, SetOfClasses2D, SetOfParticles',
                      condition='not doContinue and useReferences', allowsNull=True,
                      label='Initial references',
                      help='One class per image (class averages for a set of classes); same box '
                           'size as the particles.')

    def _defineAlignmentParams(self, form):
        form.addParam('minMembers', params.IntParam, default=AUTOMATIC, condition='not doContinue',
                      expertLevel=params.LEVEL_ADVANCED, label='Minimum class size',
                      help='A class with fewer members takes over the worse-fitting half of '
                           'the largest class. -1: automatic, N / (4 K) but at least 2.')
        form.addParam('debias', params.BooleanParam, default=DEFAULTS.debias, condition='not doContinue',
                      expertLevel=params.LEVEL_ADVANCED, label='Remove the self-inclusion bias?',
                      help='A class reference holds a share of each member\'s own noise, which lifts the '
                           'member\'s score against its class and holds it there; Yes takes that expected '
                           'lift off before the classes are chosen (helps random starts at low SNR).')
        form.addParam('overcluster', params.IntParam, default=DEFAULTS.overcluster,
                      condition='not doContinue and not useReferences', validators=[params.Positive],
                      expertLevel=params.LEVEL_ADVANCED, label='Over-clustering factor',
                      help='From random particles the first %d iterations run at this many times the '
                           'classes, which are more often pure, then the classes are merged down to the '
                           'number asked for by the similarity of their aligned averages (1: off; only '
                           'while the over-clustered classes are at most %d).'
                           % (DEFAULTS.overcluster_iterations, OVERCLUSTER_MAX_CLASSES))
        form.addParam('resplit', params.IntParam, default=DEFAULTS.resplit,
                      condition='not doContinue and not useReferences', validators=[params.GE(0)],
                      expertLevel=params.LEVEL_ADVANCED, label='Late re-split after iteration',
                      help='From random particles, after this iteration every class is split in two '
                           'along its leading eigen-image, the halves run %d iteration(s), then the '
                           'classes are merged back by Ward\'s criterion on their aligned averages: a class '
                           'holding two views splits into them, two classes of one view join (0: off; '
                           'only while twice the classes are at most %d).'
                           % (DEFAULTS.resplit_iterations, OVERCLUSTER_MAX_CLASSES))
        form.addParam('seed', params.IntParam, default=DEFAULTS.seed, condition='not doContinue',
                      expertLevel=params.LEVEL_ADVANCED, label='Random seed',
                      help='Seeds the choice of random initial references; the same seed and input '
                           'give the same classes.')

        self._defineMiniBatchParams(form)

    # --- mini-batch iterations (engine/minibatch.py): one block, form and flags ---
    MINIBATCH_CHOICES = ['Automatic', 'Yes', 'No']   # the engine's None (no flag), --minibatch, --no-minibatch

    def _defineMiniBatchParams(self, form):
        allFrom = round(DEFAULTS.minibatch_all_per_class())   # x K particles: all mini-batch iterations used
        form.addParam('miniBatch', params.EnumParam, choices=self.MINIBATCH_CHOICES, default=0,
                      display=params.EnumParam.DISPLAY_HLIST, condition='not doContinue',
                      expertLevel=params.LEVEL_ADVANCED, label='Mini-batch iterations?',
                      help='As cryoSPARC\'s online EM: the first iterations search growing random subsets '
                           'of the particles (the others keep their class), later ones every particle; '
                           'all subsets together hold at most %g x N particles (N: the particles), so a '
                           'default run of about %d x K particles or more (K: the classes) searches each '
                           'particle at most %g times instead of %d. Automatic: on when the first subset '
                           '(particles per class x classes) is under half of the particles; of the mini-batch '
                           'iterations, as many are used as keep the first subset, fitted into N, at least %d '
                           'per class (all from about %d x K particles, fewer below), when the iterations '
                           'leave full passes after them.'
                           % (MINIBATCH_FRACTION, allFrom, MINIBATCH_FRACTION + FINAL_FULL_PASSES,
                              DEFAULTS.iterations, MINIBATCH_LEAST_PER_CLASS, allFrom))
        form.addParam('miniBatchPerClass', params.IntParam, default=DEFAULTS.minibatch_per_class,
                      condition='not doContinue and miniBatch != 2', validators=[params.Positive],
                      expertLevel=params.LEVEL_ADVANCED, label='Particles per class in the first subset',
                      help='At most: fewer when the subsets together would hold more than %g x N particles.'
                           % MINIBATCH_FRACTION)
        form.addParam('miniBatchIterations', params.IntParam, default=DEFAULTS.minibatch_iterations,
                      condition='not doContinue and miniBatch != 2', validators=[params.GE(0)],
                      expertLevel=params.LEVEL_ADVANCED, label='Mini-batch iterations',
                      help='Iterations searching subsets, each %g times the previous; the number of '
                           'iterations must be larger (by default %d larger: the final full passes). '
                           'Automatic mode uses fewer on sets too small for all of them.'
                           % (MINIBATCH_GROWTH, FINAL_FULL_PASSES))

    def _getMiniBatchArgs(self, src):
        switch = {1: ['--minibatch'], 2: ['--no-minibatch']}.get(src.miniBatch.get(), [])
        return switch + ['--minibatch-per-class', src.miniBatchPerClass.get(),
                         '--minibatch-iterations', src.miniBatchIterations.get()]

    def _convertReferences(self, src):
        if src.useReferences:
            n = convert.writeReferences(src.inputReferences.get(), self._getInputPath(REFERENCES_STACK))
            self.info('Wrote %d initial references.' % n)

    def _getMethodArgs(self, src):
        if src.useReferences:
            args = ['--references', self._getInputPath(REFERENCES_STACK)]
        else:
            args = ['--classes', src.numberOfClasses.get(), '--seed', src.seed.get(),
                    '--overcluster', src.overcluster.get(), '--resplit', src.resplit.get()]
        if src.minMembers.get() >= 0:  # else automatic: left to the engine
            args += ['--min-members', src.minMembers.get()]
        if not src.debias.get():
            args += ['--no-debias']
        return args + self._getMiniBatchArgs(src)

    def _validateInput(self, src, parts):
        n = parts.getSize()
        if not src.useReferences:
            if src.numberOfClasses.get() > n:
                return ['%d classes were requested for only %d particles: ask for fewer classes.'
                        % (src.numberOfClasses.get(), n)]
            return []
        refs = src.inputReferences.get()
        if refs is None:
            return ['Choose the initial references, or set "Start from given references?" to No.']
        errors = []
        refDim, partDim = convert.referenceDim(refs), (parts.getXDim(), parts.getDim()[1])
        if refDim != partDim:
            errors.append('The references are %s px but the particles %s px: resize one of them.'
                          % ('x'.join(map(str, refDim or ('?',))), 'x'.join(map(str, partDim))))
        if not 0 < convert.referenceCount(refs) <= n:
            errors.append('There are %d references for %d particles: give between 1 and %d.'
                          % (convert.referenceCount(refs), n, n))
        return errors

    def createOutputStep(self):
        partsFn, _, _ = self._requireEngineOutputs(PARTICLES_STAR, CLASSES_STAR, CLASSES_MRCS)
        results = convert.EngineParticles(partsFn)
        engineClasses = convert.readEngineClasses(self._getEnginePath())
        samplingRate = self._getInputParticles().getSamplingRate()

        classes = self._createSetOfClasses2D(self._getInputPointer())
        classes.classifyItems(
            updateItemCallback=lambda item, _: results.updateParticle(item, withClass=True),
            updateClassCallback=lambda cls: convert.updateClass2D(
                cls, engineClasses[cls.getObjId()], samplingRate))
        self._defineOutputs(**{outputs.outputClasses.name: classes})
        self._defineSourceRelation(self._getInputPointer(), classes)

    def _summaryOutput(self):
        classes = getattr(self, outputs.outputClasses.name)
        lines = ['Classified into *%d* classes.' % classes.getSize()]
        src = self._getSourceRun()
        if not src.useReferences and classes.getSize() < src.numberOfClasses.get():
            lines.append('%d of the %d classes requested ended up empty.'
                         % (src.numberOfClasses.get() - classes.getSize(), src.numberOfClasses.get()))
        return lines

    def _methodsSentence(self):
        src = self._getSourceRun()
        start = ('given references' if src.useReferences
                 else '%d random particles' % src.numberOfClasses.get())
        return ('We classified %d particles by multireference alignment [vanHeel1985] starting from '
                '%s' % (self._getInputParticles().getSize(), start))

    def _citations(self):
        return ['Chung2020', 'vanHeel1985', 'Yang2012', 'Hohn2007', 'Tang2007']
