"""Streaming 2D classification through Scipion: pwem's ProtCreateStreamData publishes synthetic
particles in groups while CryoralignProtStream2D classifies them; checked against the ground truth and
against a batch run on the whole set."""
import os
import time

import numpy as np
from emtable import Table

from pwem.objects import SetOfParticles
from pwem.protocols import ProtCreateStreamData, ProtImportParticles
from pwem.protocols.protocol_create_stream_data import SET_OF_PARTICLES
from pyworkflow.protocol import getProtocolFromDb
from pyworkflow.tests import BaseTest, DataSet, setupTestProject

from generated import generateOnce
from cryoralign_plugin.engine import outputs
from cryoralign_plugin.protocols import CryoralignProtClassify2D, CryoralignProtStream2D

try:
    import pytest
    slow = pytest.mark.slow
except ImportError:  # run by Scipion's own test runner
    def slow(cls):
        return cls

N, GROUP, INTERVAL, FIRST, LATER, SAMPLING = 300, 50, 8, 100, 50, 2.0
SET = dict(n_particles=N, box=40, n_classes=3, snr=1.0, seed=21)
DataSet(name="cryoralign_stream", folder="cryoralign_stream_v2", files={"particles": "particles.mrcs"})
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

    def test_classesGrowWithTheStreamAndEndAsABatchRunDoes(self):
        creator = self.newProtocol(ProtCreateStreamData, setof=SET_OF_PARTICLES, nDim=N, groups=GROUP,
                                   creationInterval=INTERVAL, inputParticles=self.imp.outputParticles)
        self.proj.launchProtocol(creator, wait=False)
        self.waitFor(creator, lambda p: p.hasAttribute("outputParticles"), "a first group")
        self.proj._updateProtocol(creator)
        creator = self.proj.getProtocol(creator.getObjId())
        stream = self.newProtocol(CryoralignProtStream2D, objLabel="streaming", useGpu=False,
                                  inputParticles=creator.outputParticles, numberOfClasses=3,
                                  numberOfIterations=6, firstBatchSize=FIRST, streamBatchSize=LATER)
        self.proj.launchProtocol(stream, wait=False)

        # The classes appear while the input is still open, from a first batch of at least FIRST.
        first = self.waitFor(stream, lambda p: p.hasAttribute("outputClasses"), "outputClasses")
        inputSet = SetOfParticles(filename=creator.outputParticles.getFileName())
        inputSet.loadAllProperties()
        self.assertFalse(inputSet.isStreamClosed(), "the classes appeared only after the stream closed")
        inputSet.close()
        self.assertTrue(first.outputClasses.isStreamOpen())
        self.assertGreaterEqual(first.outputParticles.getSize(), FIRST)
        self.assertLess(first.outputParticles.getSize(), N)

        done = self.waitFor(stream, lambda p: p.isFinished(), "the end of the run")
        self.assertTrue(done.outputClasses.isStreamClosed() and done.outputParticles.isStreamClosed())

        # Every particle of the input once, in one class.
        ids = [p.getObjId() for cls in done.outputClasses.iterItems() for p in cls]
        self.assertEqual(sorted(ids), list(range(1, N + 1)))
        self.assertEqual(done.outputParticles.getSize(), N)
        self.assertTrue(done.outputParticles.hasAlignment2D())

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
            CryoralignProtClassify2D, objLabel="batch", useGpu=False, numberOfClasses=3, numberOfIterations=6,
            inputParticles=self.imp.outputParticles))
        whole = purity([(cls.getObjId(), self.truth[p.getObjId() - 1])
                        for cls in batch.outputClasses.iterItems() for p in cls])
        self.assertGreaterEqual(streamed, whole - 0.02)
