"""Streaming 2D classification through Scipion: pwem's ProtCreateStreamData publishes synthetic
particles in groups while CryoralignProtStream2D classifies them; checked against the ground truth and
against a batch run on the whole set, through a stalled stream and a stopped and continued run."""
import os
import signal
import time

import numpy as np
from emtable import Table

from pwem.objects import SetOfParticles
from pwem.protocols import ProtCreateStreamData, ProtImportParticles, ProtSetFilter
from pwem.protocols.protocol_create_stream_data import SET_OF_PARTICLES
from pyworkflow.object import Set
from pyworkflow.protocol import getProtocolFromDb
from pyworkflow.protocol.constants import MODE_RESUME, STATUS_FAILED
from pyworkflow.tests import BaseTest, DataSet, setupTestProject

from generated import generateOnce
from cryoralign_plugin.engine import outputs
from cryoralign_plugin.protocols import CryoralignProtClassify2D, CryoralignProtStream2D
from cryoralign_plugin.protocols.protocol_stream2d import HIDDEN

try:
    import pytest
    slow = pytest.mark.slow
except ImportError:  # run by Scipion's own test runner
    def slow(cls):
        return cls

N, GROUP, INTERVAL, FIRST, LATER, SAMPLING = 300, 50, 8, 100, 50, 2.0
SET = dict(n_particles=N, box=40, n_classes=3, snr=1.0, seed=21)
DataSet(name="cryoralign_stream", folder="cryoralign_stream_v2", files={"particles": "particles.mrcs"})
ITERATIONS = 6   # of the first batch
STALL = 25       # s without new particles: 5 polling periods (SCIPION_STEPS_CHECK_SEC is 5)
TIMEOUT = 900


def streamDataSet():
    from cryoralign_plugin.engine.synthetic import make_dataset
    ds = DataSet.getDataSet("cryoralign_stream")
    generateOnce(os.path.dirname(ds.getFile("particles")), lambda tmp: make_dataset(tmp, source="slicem", **SET))
    return ds


def trueClasses(ds):
    """{0-based position in the imported set: true class}."""
    fn = os.path.join(os.path.dirname(ds.getFile("particles")), "truth.star")
    return {r.rlnImageId - 1: r.rlnClassNumber for r in Table.iterRows(fn, tableName="truth")}


def purity(labelled):
    """Fraction of particles in the majority true class of their class: ``labelled`` is (class, truth)."""
    labelled = np.array(labelled)
    return sum(np.bincount(labelled[labelled[:, 0] == k, 1]).max() for k in np.unique(labelled[:, 0])) / len(labelled)


class TestStreamingForm(BaseTest):
    """The form: what it hides, what it checks, the engine command it makes."""

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        cls.ds = streamDataSet()
        cls.imp = cls.newProtocol(ProtImportParticles, importFrom=ProtImportParticles.IMPORT_FROM_FILES,
                                  filesPath=os.path.dirname(cls.ds.getFile("particles")),
                                  filesPattern="particles.mrcs", samplingRate=SAMPLING)
        cls.launchProtocol(cls.imp)

    def test_formChecksAndEngineArguments(self):
        prot = self.newProtocol(CryoralignProtStream2D, inputParticles=self.imp.outputParticles, useGpu=False,
                                numberOfClasses=3, firstBatchSize=FIRST, finalIterations=2)
        self.assertEqual(prot.validate(), [])
        for name in HIDDEN:
            self.assertEqual(prot.getDefinition().getParam(name).condition.get(), "False")
        args = prot._getEngineArgs().split()
        self.assertIn("--grow", args)
        self.assertNotIn("--overwrite", args)
        self.assertNotIn("--continue", args)
        self.assertEqual(args[args.index("--final-iterations") + 1], "2")
        self.assertEqual(args[args.index("--classes") + 1], "3")
        prot.numberOfClasses.set(FIRST + 1)
        self.assertIn("%d classes were requested for a first batch of %d particles" % (FIRST + 1, FIRST),
                      " ".join(prot.validate()))

    def test_anInputClosedWhileEmptyFailsWithAClearMessage(self):
        # A set's tables appear with its first item (Scipion writes no properties of a set that never
        # had one), so the set closed while empty is one whose items are gone.
        empty = SetOfParticles(filename=self.proj.getTmpPath("closed_empty.sqlite"))
        empty.copyInfo(self.imp.outputParticles)
        empty.append(self.imp.outputParticles.getFirstItem().clone())
        empty.write()
        empty._getMapper().deleteAll()
        empty.setStreamState(Set.STREAM_CLOSED)
        empty.write()
        empty.close()
        prot = self.newProtocol(CryoralignProtStream2D, inputParticles=empty, useGpu=False, numberOfClasses=3)
        prot._scheduledId = 0
        closed, lastId, arrived = prot._inputState()       # what the first poll sees: a batch to run
        self.assertEqual((closed, lastId, arrived), (True, 0, 0))
        with self.assertRaises(ValueError) as raised:
            prot.classifyBatchStep(lastId, closed)
        message = str(raised.exception)
        self.assertIn("closed while empty", message)
        self.assertNotIn("\n", message)

    def test_aNewInputWithoutItemsIsWaitedFor(self):
        # A brand-new set, open and written but still empty: its sqlite has no tables yet (Scipion writes
        # no properties of a set that never had an item), so reading all its properties failed
        # (sqlite3.OperationalError: no such table: Properties) in the protocol's first poll.
        fresh = SetOfParticles(filename=self.proj.getTmpPath("new_empty.sqlite"))
        fresh.copyInfo(self.imp.outputParticles)
        fresh.setStreamState(Set.STREAM_OPEN)
        fresh.write()
        prot = self.newProtocol(CryoralignProtStream2D, inputParticles=fresh, useGpu=False, numberOfClasses=3)
        prot._scheduledId, prot._finalScheduled, prot._lastBatchStep = 0, False, None
        self.assertEqual(prot._inputState(), (False, 0, 0))
        prot._checkNewInput()
        self.assertEqual(len(prot._steps), 0)                # waits: no batch step
        fresh.append(self.imp.outputParticles.getFirstItem().clone())   # its first item: now it has tables
        fresh.write()
        self.assertEqual(prot._inputState(), (False, 1, 1))
        fresh.setStreamState(Set.STREAM_CLOSED)
        fresh.write()
        fresh.close()
        self.assertEqual(prot._inputState(), (True, 1, 1))

    def test_anInputClosedWithoutEverHoldingAParticleStopsTheRun(self):
        # A filter that keeps no particle outputs a closed set whose file holds nothing, not even its
        # stream state (Scipion writes no properties of a set that never had an item): only its producer's
        # record says it is closed. The run used to wait for it forever.
        keepNone = self.newProtocol(ProtSetFilter, formula="False")
        keepNone.inputSet.set(self.imp)
        keepNone.inputSet.setExtended("outputParticles")
        self.launchProtocol(keepNone)
        keepNone = self.proj.getProtocol(keepNone.getObjId())
        self.assertTrue(keepNone.outputParticles.isStreamClosed())
        self.assertEqual(keepNone.outputParticles.getSize(), 0)
        prot = self.newProtocol(CryoralignProtStream2D, useGpu=False, numberOfClasses=3)
        prot.inputParticles.set(keepNone)                  # as the GUI points: the producer and its output
        prot.inputParticles.setExtended("outputParticles")
        self.proj.launchProtocol(prot, wait=False)
        end = time.time() + 120                              # measured: failed 9-10 s after its launch
        try:
            while time.time() < end and not (prot.isFailed() or prot.isFinished()):
                time.sleep(1)
                prot = getProtocolFromDb(self.proj.path, prot.getDbPath(), prot.getObjId())
        finally:
            status = prot.getStatus()
            if prot.isActive():
                self.proj.stopProtocol(prot)
        self.assertEqual(status, STATUS_FAILED, "the run was %s after 120 s, waiting for its closed input" % status)
        message = prot.getErrorMessage()
        self.assertIn("The input set of particles was closed while empty: there is nothing to classify", message)
        self.assertNotIn("\n", message.strip())
        # The run's copy of the project is as old as the run: a record of the input still open there (a
        # producer that closed it later) gives way to the producer's own, through a direct pointer too.
        stale = self.proj.getProtocol(keepNone.getObjId()).outputParticles
        stale.setStreamState(Set.STREAM_OPEN)
        later = self.newProtocol(CryoralignProtStream2D, inputParticles=stale, useGpu=False, numberOfClasses=3)
        later._scheduledId = 0
        self.assertEqual(later._inputState(), (True, 0, 0))


@slow
class TestStreaming(BaseTest):

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        cls.ds = streamDataSet()
        cls.truth = trueClasses(cls.ds)
        cls.imp = cls.newProtocol(ProtImportParticles, importFrom=ProtImportParticles.IMPORT_FROM_FILES,
                                  filesPath=os.path.dirname(cls.ds.getFile("particles")),
                                  filesPattern="particles.mrcs", samplingRate=SAMPLING)
        cls.launchProtocol(cls.imp)

    def fresh(self, prot):
        return getProtocolFromDb(self.proj.path, prot.getDbPath(), prot.getObjId())

    def waitFor(self, prot, condition, what):
        end = time.time() + TIMEOUT
        while time.time() < end:
            current = self.fresh(prot)
            if condition(current):
                return current
            if current.isFailed():
                self.fail("%s failed: %s" % (current.getRunName(), current.getErrorMessage()))
            time.sleep(1)
        self.fail("%s: %s never happened" % (prot.getRunName(), what))

    def startStream(self, label):
        """A running ProtCreateStreamData (its first group published) and a streaming run on its output."""
        creator = self.newProtocol(ProtCreateStreamData, objLabel=label, setof=SET_OF_PARTICLES, nDim=N,
                                   groups=GROUP, creationInterval=INTERVAL, inputParticles=self.imp.outputParticles)
        self.proj.launchProtocol(creator, wait=False)
        self.waitFor(creator, lambda p: p.hasAttribute("outputParticles"), "a first group")
        self.proj._updateProtocol(creator)
        creator = self.proj.getProtocol(creator.getObjId())
        stream = self.newProtocol(CryoralignProtStream2D, objLabel="streaming " + label, useGpu=False,
                                  inputParticles=creator.outputParticles, numberOfClasses=3,
                                  numberOfIterations=ITERATIONS, firstBatchSize=FIRST, streamBatchSize=LATER)
        self.proj.launchProtocol(stream, wait=False)
        return creator, stream

    def checkEveryParticleOnce(self, done):
        self.assertTrue(done.outputClasses.isStreamClosed() and done.outputParticles.isStreamClosed())
        ids = [p.getObjId() for cls in done.outputClasses.iterItems() for p in cls]
        self.assertEqual(sorted(ids), list(range(1, N + 1)))
        self.assertEqual(done.outputParticles.getSize(), N)
        self.assertTrue(done.outputParticles.hasAlignment2D())

    def test_classesGrowWithTheStreamAndEndAsABatchRunDoes(self):
        creator, stream = self.startStream("grows")
        # The classes appear while the input is still open, from a first batch of at least FIRST.
        first = self.waitFor(stream, lambda p: p.hasAttribute("outputClasses"), "outputClasses")
        inputSet = SetOfParticles(filename=creator.outputParticles.getFileName())
        inputSet.loadAllProperties()
        self.assertFalse(inputSet.isStreamClosed(), "the classes appeared only after the stream closed")
        inputSet.close()
        self.assertTrue(first.outputClasses.isStreamOpen())
        self.assertGreaterEqual(first.outputParticles.getSize(), FIRST)
        self.assertLess(first.outputParticles.getSize(), N)

        # A stalled stream (its producer stopped for several polling periods) does not end the run.
        producer = self.fresh(creator).getPid()
        os.kill(producer, signal.SIGSTOP)
        try:
            time.sleep(STALL)
            stalled = self.fresh(stream)
            self.assertTrue(stalled.isActive(), stalled.getStatus())
            self.assertTrue(stalled.outputClasses.isStreamOpen())
        finally:
            os.kill(producer, signal.SIGCONT)

        done = self.waitFor(stream, lambda p: p.isFinished(), "the end of the run")
        self.checkEveryParticleOnce(done)

        # Batches: the first one of >= FIRST particles, then later ones; the history shows them.
        history = outputs.read_history(done._getExtraPath("engine"))
        batches = {}
        for row in history:
            batches.setdefault(row["batch"], row["batch_particles"])
        self.assertGreaterEqual(len(batches), 2)
        self.assertGreaterEqual(batches[1], FIRST)
        self.assertEqual(batches[max(batches)], N)
        self.assertIn("Batches: *%d*, %d particles classified; stream closed." % (len(batches), N),
                      " ".join(done.summary()))

        # Purity against the ground truth, within 0.02 of a batch run on the whole set.
        def position(particle):   # ProtCreateStreamData names particle i of its input "particle_%05d"
            return int(os.path.basename(particle.getFileName()).split("_")[-1])
        streamed = purity([(cls.getObjId(), self.truth[position(p)])
                           for cls in done.outputClasses.iterItems() for p in cls])
        batch = self.launchProtocol(self.newProtocol(
            CryoralignProtClassify2D, objLabel="batch", useGpu=False, numberOfClasses=3,
            numberOfIterations=ITERATIONS,
            inputParticles=self.imp.outputParticles))
        whole = purity([(cls.getObjId(), self.truth[p.getObjId() - 1])
                        for cls in batch.outputClasses.iterItems() for p in cls])
        self.assertGreaterEqual(streamed, whole - 0.02)

    def test_aStoppedRunContinuesFromItsLastBatch(self):
        """Stopped after its first batch while particles keep arriving, then continued (Scipion's
        Continue): it takes up the stream where it stopped, the first batch is not classified again,
        and the classes end with every particle once."""
        creator, stream = self.startStream("stopped")
        first = self.waitFor(stream, lambda p: p.hasAttribute("outputClasses"), "outputClasses")
        self.proj.stopProtocol(stream)
        self.assertLess(first.outputParticles.getSize(), N)
        time.sleep(2 * INTERVAL)   # more particles arrive meanwhile
        stream = self.proj.getProtocol(stream.getObjId())
        stream.runMode.set(MODE_RESUME)
        self.proj.launchProtocol(stream, wait=False)
        done = self.waitFor(stream, lambda p: p.isFinished(), "the end of the continued run")
        self.checkEveryParticleOnce(done)
        history = outputs.read_history(done._getExtraPath("engine"))
        self.assertEqual([r["iteration"] for r in history], list(range(1, len(history) + 1)))
        self.assertEqual(sum(r["batch"] == 1 for r in history), ITERATIONS)
        self.assertEqual(history[-1]["batch_particles"], N)
