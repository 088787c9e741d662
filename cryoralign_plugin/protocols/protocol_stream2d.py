"""2D classification in streaming: the MRA protocol on a particle set that grows while it runs.

Scipion's streaming conventions (STEPS_PARALLEL, new steps inserted from ``_stepsCheck`` as input
arrives, output sets updated with their stream state): ``_checkNewInput`` polls the input set; once a
first batch has arrived it inserts one classification step for it, then one for every further batch,
each after the previous.  Each step runs the engine's growing run (``mra --grow``, see
``engine/grow.py``) on every particle arrived so far, up to the batch's last id, so a particle is
never left out nor counted twice however the batches fall; the step with the closed stream adds
``--last-batch`` (the final pass) and closes the outputs.  A stalled stream only means more polling:
nothing times out.  Continuing a stopped or failed run resumes from the engine's folder: the batches
it had processed are its state, the next step takes everything arrived since.
"""
import os
from enum import Enum

import pyworkflow.protocol.params as params
from pwem.objects import SetOfClasses2D, SetOfParticles
from pyworkflow.constants import BETA
from pyworkflow.object import Pointer, Set
from pyworkflow.protocol import Protocol, getProtocolFromDb
from pyworkflow.protocol.constants import STATUS_NEW, STEPS_PARALLEL

from .. import convert
from ..constants import CLASSES_MRCS, CLASSES_STAR, INPUT_STAR, PARTICLES_STAR
from ..engine import outputs as engine_outputs
from .protocol_base import DEFAULTS
from .protocol_classify2d import CryoralignProtClassify2D

# Parameters of the classification protocol that a streaming run does not offer: it starts from
# random particles, and continues itself (Scipion's Continue) rather than from another run.
HIDDEN = ('doContinue', 'continueRun', 'useReferences', 'inputReferences')
# Output set files kept: the current one and the one before (a reader may still have it open).
SETS_KEPT = 2


class outputs(Enum):
    outputClasses = SetOfClasses2D
    outputParticles = SetOfParticles


class CryoralignProtStream2D(CryoralignProtClassify2D):
    """2D classification of particles as they arrive (streaming), on GPU or CPU.

    Waits for a first batch, classifies it by multireference alignment, then places each new batch
    against the current classes (only the new particles are searched; a new class is seeded from
    new particles that fit none) and updates the classes. When the input stream closes, a final pass
    refines all particles. The classes and aligned particles are published after every batch.
    """
    _label = '2D classification in streaming'
    _devStatus = BETA
    _possibleOutputs = outputs
    _engineFreshFlag = '--grow'
    stepsExecutionMode = STEPS_PARALLEL

    # --------------------------- DEFINE param functions ----------------------------------------
    def _defineParams(self, form):
        super()._defineParams(form)
        for name in HIDDEN:
            form.getParam(name).condition.set('False')
        form.getParam('numberOfIterations').label.set('Iterations of the first batch')
        form.addSection(label='Streaming')
        form.addParam('firstBatchSize', params.IntParam, default=1000, validators=[params.Positive],
                      label='First batch (particles)',
                      help='Classification starts once this many particles have arrived (or the '
                           'input is closed). Until then the protocol waits, however long.')
        form.addParam('streamBatchSize', params.IntParam, default=1000, validators=[params.Positive],
                      label='Later batches (particles)',
                      help='The classes are updated each time at least this many new particles have '
                           'arrived; a step takes all those arrived by then.')
        form.addParam('growIterations', params.IntParam, default=DEFAULTS.grow_iterations,
                      validators=[params.Positive], expertLevel=params.LEVEL_ADVANCED,
                      label='Iterations per batch',
                      help='Iterations searching only the new particles of a batch against the '
                           'current classes.')
        form.addParam('finalIterations', params.IntParam, default=DEFAULTS.final_iterations,
                      validators=[params.GE(0)], label='Final iterations',
                      help='Once the input is closed: iterations over all particles.')

    # --------------------------- INSERT steps functions ----------------------------------------
    def _insertAllSteps(self):
        self._lastBatchStep = None
        self._scheduledId = self._processedId()
        self._finalScheduled = False
        self._closeStep = self._insertFunctionStep(self.closeOutputStep, wait=True, needsGPU=False)

    def _stepsCheck(self):
        self._checkNewInput()

    def _checkNewInput(self):
        """Insert a classification step when a batch has arrived (the last one when closed)."""
        if self._finalScheduled:
            return
        closed, lastId, arrived = self._inputState()
        started = self._scheduledId > 0
        need = (self.streamBatchSize if started else self.firstBatchSize).get()
        if not closed and arrived < need:
            return     # an empty or small first batch, or a stalled stream: wait
        prerequisites = [self._lastBatchStep] if self._lastBatchStep else []
        self._lastBatchStep = self._insertFunctionStep(self.classifyBatchStep, lastId, closed,
                                                       prerequisites=prerequisites,
                                                       needsGPU=self.usesGpu())
        self._scheduledId = lastId
        if closed:
            self._finalScheduled = True
            close = self._steps[self._closeStep - 1]
            close.addPrerequisites(self._lastBatchStep)
            close.setStatus(STATUS_NEW)
        self.updateSteps()

    # --------------------------- STEPS functions -----------------------------------------------
    def classifyBatchStep(self, lastId, final):
        """Classify every particle up to ``lastId`` (growing the engine's run), then publish."""
        if lastId == 0:   # closed before any particle arrived: the engine would only say its STAR is empty
            raise ValueError('The input set of particles was closed while empty: there is nothing to classify; '
                             'run this protocol on a set that receives particles.')
        parts = self._getInputParticles()
        n = convert.writeSetOfParticles(parts, self._getInputPath(INPUT_STAR),
                                        usePrior=self.usePriorAlignment.get(),
                                        writeCtf=self._ctfMode() != 'none', lastId=lastId)
        self.info('Batch up to particle id %d: %d particles%s' % (lastId, n, ', the last' if final else ''))
        self.runEngineStep(self._getEngineArgs() + (' --last-batch' if final else ''))
        with self._lock:
            self._publish(lastId, final)

    def closeOutputStep(self):
        """The outputs were closed by the last batch; say what they hold."""
        self.info('Stream closed: %d particles in %d classes.'
                  % (getattr(self, outputs.outputParticles.name).getSize(),
                     getattr(self, outputs.outputClasses.name).getSize()))

    def _publish(self, lastId, final):
        """Output classes and aligned particles of the particles up to ``lastId``, in new set files
        (a reader of the previous ones is not disturbed), with the stream state."""
        partsFn, _, _ = self._requireEngineOutputs(PARTICLES_STAR, CLASSES_STAR, CLASSES_MRCS)
        results = convert.EngineParticles(partsFn)
        engineClasses = convert.readEngineClasses(self._getEnginePath())
        inputParts = self._getInputParticles()
        samplingRate = inputParts.getSamplingRate()
        suffix = '_%06d' % lastId

        classes = self._createSetOfClasses2D(self._getInputPointer(), suffix)
        classes.classifyItems(
            updateItemCallback=lambda item, _: results.updateParticle(item, withClass=True),
            updateClassCallback=lambda cls: convert.updateClass2D(
                cls, engineClasses[cls.getObjId()], samplingRate),
            iterParams={'where': 'id<=%d' % lastId})
        aligned = self._createSetOfParticles(suffix)
        aligned.copyInfo(inputParts)
        aligned.setAlignment2D()
        aligned.copyItems(inputParts, updateItemCallback=lambda item, _: results.updateParticle(item),
                          itemSelectedCallback=lambda item: item.isEnabled() and item.getObjId() <= lastId)
        state = Set.STREAM_CLOSED if final else Set.STREAM_OPEN
        named = {outputs.outputClasses.name: classes, outputs.outputParticles.name: aligned}
        if not self.hasAttribute(outputs.outputClasses.name):
            self._defineFirstOutputs(named, state)
        else:
            for name, newSet in named.items():
                old = getattr(self, name).getFileName()
                self._updateOutputSet(name, newSet, state)
                self._dropOldSets(old, newSet.getFileName())
        self.info('Published %d particles in %d classes (stream %s).'
                  % (aligned.getSize(), classes.getSize(), 'closed' if final else 'open'))

    def _defineFirstOutputs(self, named, state):
        """The first batch's outputs, both in one commit: a reader of the project sees both or neither
        (defined one after the other, the classes could be read before the particles existed)."""
        for newSet in named.values():
            newSet.setStreamState(state)
            newSet.write()
        self._defineOutputs(**named)
        for name in named:
            self._defineSourceRelation(self._getInputPointer(), getattr(self, name))
        self._store()
        for newSet in named.values():
            newSet.close()

    def _dropOldSets(self, previous, current):
        """Remove the set files of this output older than the previous one."""
        stem = os.path.basename(current).rsplit('_', 1)[0]
        folder = os.path.dirname(current)
        files = sorted(f for f in os.listdir(folder) if f.startswith(stem + '_') and f.endswith('.sqlite'))
        keep = {os.path.basename(current), os.path.basename(previous)}
        for name in files[:-SETS_KEPT]:
            if name not in keep:
                os.remove(os.path.join(folder, name))

    # --------------------------- UTILS functions -----------------------------------------------
    def _inputState(self):
        """(closed, last id, particles arrived since the last batch) of the input set, read afresh.

        Of its file's properties only the stream state is read.  A set that never held an item has
        none (Scipion writes no properties of it: ``loadAllProperties`` fails, no such table), so its
        state is the one its producer records (:meth:`_producerClosed`): closed while empty, it stops
        the run with one line rather than being waited for."""
        inputSet = SetOfParticles(filename=self._getInputParticles().getFileName())
        try:
            # read first: a closed set has all its items
            if inputSet.hasProperty('_streamState'):
                closed = int(inputSet.getProperty('_streamState')) == Set.STREAM_CLOSED
            else:
                closed = self._producerClosed()
            last = next(inputSet.iterItems(orderBy='id', direction='DESC', limit=1), None)
            lastId = last.getObjId() if last is not None else 0
            arrived = sum(1 for _ in inputSet.iterItems(where='id>%d' % self._scheduledId))
        finally:
            inputSet.close()
        return closed, lastId, arrived

    def _producerClosed(self):
        """Whether the input's producer records it closed, read from that protocol's own database (this
        run's copy of the project is as old as the run); a set no protocol made, as recorded here."""
        pointer = self._getInputPointer()
        producer, name = pointer.getObjValue(), pointer.getExtended()
        if not isinstance(producer, Protocol):     # a direct pointer (scripts, tests): to its parent's output
            producer, name = self._protocolOf(producer.getObjParentId()), producer.getLastName()
        fresh = None
        if producer is not None:
            try:
                fresh = getProtocolFromDb(self.getProject().path, producer.getDbPath(), producer.getObjId())
            except Exception:   # pyworkflow's for a protocol without a database of its own (never launched)
                pass
        if fresh is None:
            return bool(pointer.get().isStreamClosed())
        try:
            recorded = Pointer(fresh, extended=name).get()
        finally:
            fresh.getProject().closeMapper()
            fresh.closeMappers()
        return recorded is not None and bool(recorded.isStreamClosed())

    def _protocolOf(self, objId):
        """The project's protocol of that id, None for none (an object no protocol made)."""
        if not objId:
            return None
        try:
            return self.getProject().getProtocol(objId)
        except Exception:       # pyworkflow's for an id that is no protocol's
            return None

    def _processedId(self):
        """The last particle id the engine's folder holds results for (0: none), for a continued run."""
        try:
            return int(engine_outputs.read_particles(self._getEnginePath()).ids.max())
        except (OSError, ValueError):
            return 0

    def _getMethodArgs(self, src):
        return super()._getMethodArgs(src) + ['--grow-iterations', self.growIterations.get(),
                                              '--final-iterations', self.finalIterations.get()]

    def _validateInput(self, src, parts):
        if src.numberOfClasses.get() > self.firstBatchSize.get():
            return ['%d classes were requested for a first batch of %d particles: ask for fewer classes '
                    'or a larger first batch.' % (src.numberOfClasses.get(), self.firstBatchSize.get())]
        return []

    def _summaryOutput(self):
        lines = super()._summaryOutput()
        history = self._readHistory()
        if history:
            lines.append('Batches: *%d*, %d particles classified; stream %s.'
                         % (history[-1].get('batch', 1), history[-1].get('batch_particles', 0),
                            'closed' if getattr(self, outputs.outputClasses.name).isStreamClosed()
                            else 'open'))
        return lines
