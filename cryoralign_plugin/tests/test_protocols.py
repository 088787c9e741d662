"""Scipion integration: plugin discovery, protocol forms and validation, and full runs
(import -> RFA / MRA with 1 and 2 MPI processes -> continue) checked against ground truth."""
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
import unittest

import mrcfile
import numpy as np
from emtable import Table

from pwem import Domain
from pwem.protocols import ProtImportParticles
from pyworkflow.tests import BaseTest, DataSet, setupTestProject

from cryoralign_plugin import Plugin
from generated import generateOnce
from cryoralign_plugin.constants import HISTORY_JSON, PARTICLES_STAR
from cryoralign_plugin.convert import geometryFromMatrix2D
from cryoralign_plugin.engine import outputs
from cryoralign_plugin.engine.geometry import params_to_matrix
from cryoralign_plugin.protocols import CryoralignProtAlign2D, CryoralignProtClassify2D
from cryoralign_plugin.engine.geometry import largest_radius
from cryoralign_plugin.protocols.protocol_base import cudaAvailable

try:
    import pytest
    slow, cudasim = pytest.mark.slow, pytest.mark.cudasim
except ImportError:  # run by Scipion's own test runner
    def slow(cls):
        return cls
    cudasim = slow

BOX, N_PARTICLES, SAMPLING = 48, 60, 2.0
# One single-class set for RFA and one 3-class set for MRA, generated locally (never downloaded)
# from real class averages (SLICEM): unlike round blobs, their in-plane angle is well defined.
# "sim" is tiny because the CUDA simulator runs about a thread per millisecond.
SETS = {"rfa": dict(n_particles=N_PARTICLES, box=BOX, n_classes=1, snr=2.0, seed=11),
        "mra": dict(n_particles=N_PARTICLES, box=BOX, n_classes=3, snr=2.0, seed=12),
        "sim": dict(n_particles=8, box=32, n_classes=1, snr=5.0, seed=1),
        "kill": dict(n_particles=3000, box=BOX, n_classes=3, snr=1.0, seed=13)}
DataSet(name="cryoralign_tiny", folder="cryoralign_tiny_v3",
        files={key: os.path.join(key, "particles.mrcs") for key in SETS})


def getTinyDataSet():
    """The tiny synthetic data set, generated with the engine's synthetic module if missing."""
    from cryoralign_plugin.engine.synthetic import make_dataset
    ds = DataSet.getDataSet("cryoralign_tiny")
    for key, kw in SETS.items():
        generateOnce(os.path.dirname(ds.getFile(key)),
                     lambda tmp, kw=kw: make_dataset(tmp, source="slicem", **kw))
    return ds


def readTruth(particlesFile):
    """``{stack index: (class 1-based, engine params)}`` from the truth.star next to the stack."""
    fn = os.path.join(os.path.dirname(particlesFile), "truth.star")
    return {r.rlnImageId: (r.rlnClassNumber, (r.rlnAnglePsi, r.rlnOriginX, r.rlnOriginY, r.rlnIsFlip))
            for r in Table.iterRows(fn, tableName="truth")}


def alignmentAccuracy(particles, truth, angleTol=6.0, shiftTol=1.5):
    """Fraction of particles whose found alignment matches the truth up to one rigid motion.

    A class average may sit in any orientation, so the found parameters equal the true ones
    composed with one motion ``G`` per class: ``found_i = G truth_i``.  ``G`` is taken as the
    per-particle estimate with the most agreeing neighbours.
    """
    byClass = {}
    for part in particles:
        found = geometryFromMatrix2D(part.getTransform().getMatrix())
        g = params_to_matrix([found])[0] @ np.linalg.inv(params_to_matrix([truth[part.getIndex()][1]])[0])
        byClass.setdefault(part.getClassId() or 1, []).append(g)
    good = total = 0
    for gs in byClass.values():
        gs = np.array(gs)
        close = np.array([[_motionClose(a, b, angleTol, shiftTol) for b in gs] for a in gs])
        ref = gs[np.argmax(close.sum(axis=1))]
        good += sum(_motionClose(ref, g, angleTol, shiftTol) for g in gs)
        total += len(gs)
    return good / total


def _motionClose(a, b, angleTol, shiftTol):
    d = np.linalg.inv(a) @ b
    if np.linalg.det(d[:2, :2]) < 0:
        return False
    angle = abs(np.degrees(np.arctan2(d[0, 1], d[0, 0])))
    return angle <= angleTol and np.hypot(d[0, 2], d[1, 2]) <= shiftTol


def waitFor(path, timeout=300):
    end = time.time() + timeout
    while not os.path.exists(path):
        if time.time() > end:
            raise AssertionError("%s never appeared" % path)
        time.sleep(0.05)


def processesMentioning(*words):
    """PIDs of this user's processes whose command line contains every word."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmd = f.read().decode(errors="replace")
        except OSError:
            continue
        if all(w in cmd for w in words) and int(pid) != os.getpid():
            found.append(int(pid))
    return found


def importParticles(test, key):
    ds = getTinyDataSet()
    imp = test.newProtocol(ProtImportParticles, importFrom=ProtImportParticles.IMPORT_FROM_FILES,
                           filesPath=os.path.dirname(ds.getFile(key)), filesPattern="particles.mrcs",
                           samplingRate=SAMPLING)
    test.launchProtocol(imp)
    return imp, readTruth(ds.getFile(key))


class TestPlugin(unittest.TestCase):
    """Discovery by Scipion, and an engine that stays free of Scipion."""

    def test_engineImportIsStandalone(self):
        code = ("import cryoralign_plugin.engine, sys; "
                "assert 'pwem' not in sys.modules and 'pyworkflow' not in sys.modules")
        subprocess.run([sys.executable, "-c", code], check=True)

    def test_domainFindsPlugin(self):
        self.assertIn("cryoralign_plugin", Domain.getPlugins())
        self.assertIs(Domain.findClass("CryoralignProtAlign2D"), CryoralignProtAlign2D)
        self.assertIs(Domain.findClass("CryoralignProtClassify2D"), CryoralignProtClassify2D)
        self.assertNotIn("CryoralignProtBase", Domain.getProtocols())
        self.assertEqual(Domain.getPluginModule("cryoralign_plugin")._pluginInstance.getName(),
                         "cryoralign_plugin")

    def test_installation(self):
        self.assertEqual(Plugin.validateInstallation(), [])
        path = Plugin.getEnviron()["PATH"].split(os.pathsep)
        self.assertEqual(path[0], os.path.dirname(Plugin.getProgram()))

    def test_defaultRadiusFitsEngineGuard(self):
        from cryoralign_plugin.engine.errors import InputError
        from cryoralign_plugin.engine.geometry import polar_grid
        from cryoralign_plugin.engine.search import check_geometry
        for box, shift in [(48, 3.0), (64, 2.5), (75, 0.0), (128, 6.0)]:
            radius = largest_radius(box, shift)
            check_geometry(box, polar_grid(radius), shift)
            with self.assertRaises(InputError):
                check_geometry(box, polar_grid(radius + 1), shift)


class TestForms(BaseTest):
    """Validation messages and the engine command line, without running the engine."""

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        cls.imp, _ = importParticles(cls, "mra")

    def newClassify(self, **kwargs):
        kwargs.setdefault("useGpu", False)
        return self.newProtocol(CryoralignProtClassify2D, inputParticles=self.imp.outputParticles,
                                **kwargs)

    def assertError(self, prot, text):
        errors = prot.validate()
        self.assertTrue(any(text in e for e in errors), "%r not in %s" % (text, errors))

    def test_defaultsAreValid(self):
        self.assertEqual(self.newClassify(numberOfClasses=3).validate(), [])
        self.assertEqual(self.newProtocol(CryoralignProtAlign2D, useGpu=False,
                                          inputParticles=self.imp.outputParticles).validate(), [])

    def test_maskAndResolutionInAngstrom(self):
        # the engine's own one-line messages (48 px at 2 A/px: a 96 A box, Nyquist 4 A)
        self.assertError(self.newClassify(maskDiameterA=100), "--mask-diameter 100 A is larger than the box "
                         "(48 px at 2 A/px = 96 A): give a diameter <= 96 A")
        self.assertError(self.newClassify(maxResolution=3), "--max-resolution 3 A is finer than the input's "
                         "Nyquist limit (2 x 2 A/px = 4 A): give --max-resolution >= 4 A")
        self.assertError(self.newClassify(maxResolution=40), "--max-resolution 40 A is too coarse for the mask")
        self.assertError(self.newClassify(maskDiameterA=90, maximumShift=6, maxResolution=4),
                         "reaches outside the 48 px box")
        self.assertEqual(self.newClassify(numberOfClasses=3, maskDiameterA=70, maxResolution=8).validate(), [])

    def test_pixelValuedParametersSaySo(self):
        prot = self.newClassify()
        labels = {name: prot.getParam(name).label.get() for name in
                  ('maskDiameterA', 'maxResolution', 'maximumShift', 'shiftStep', 'firstRing', 'ringStep')}
        self.assertEqual(labels['maskDiameterA'], 'Particle mask diameter (Å)')
        self.assertEqual(labels['maxResolution'], 'Maximum resolution (Å)')
        for name in ('maximumShift', 'shiftStep', 'firstRing', 'ringStep'):
            self.assertTrue(labels[name].endswith('(px)'), labels[name])
        self.assertFalse(prot.hasAttribute('radius'))

    def test_moreClassesThanParticles(self):
        self.assertError(self.newClassify(numberOfClasses=N_PARTICLES + 1), "ask for fewer classes")

    def test_referencesMustMatchTheBox(self):
        self.assertError(self.newClassify(useReferences=True), "Choose the initial references")

    def test_priorNeedsAlignment(self):
        self.assertError(self.newClassify(usePriorAlignment=True), "no 2D alignment")

    @unittest.skipIf(cudaAvailable(), "a CUDA device is available here")
    def test_gpuWithoutCudaFallsBackToCpu(self):
        prot = self.newClassify(useGpu=True)
        self.assertEqual(prot.validate(), [])
        self.assertTrue(any("will use the CPU" in w for w in prot.warnings()))
        self.assertIn("--backend auto", prot._getEngineArgs())

    def test_continueMisuse(self):
        prot = self.newClassify(doContinue=True)
        self.assertError(prot, "Choose the run to continue")
        self.proj.saveProtocol(prot)
        prot.continueRun.set(prot)
        self.assertError(prot, "cannot continue itself")
        other = self.newProtocol(CryoralignProtAlign2D, inputParticles=self.imp.outputParticles)
        self.proj.saveProtocol(other)
        prot.continueRun.set(other)
        self.assertError(prot, "only a CryoralignProtClassify2D run can be continued")
        notRun = self.newClassify()
        self.proj.saveProtocol(notRun)
        prot.continueRun.set(notRun)
        self.assertError(prot, "has no completed iteration")

    def test_continueOfARunStillRunning(self):
        running = self.newClassify()
        self.proj.saveProtocol(running)
        engineDir = running._getExtraPath("engine")
        os.makedirs(outputs.checkpoint_dir(engineDir, 1))
        prot = self.newClassify(doContinue=True, continueRun=running)
        self.proj.saveProtocol(prot)
        self.assertEqual(prot.validate(), [])
        with open(os.path.join(engineDir, outputs.LOCK_FILE), "w") as held:
            held.write('{"pid": 4242, "host": "node7", "since": "now"}')
            held.flush()
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.assertError(prot, "is still running (pid 4242 on node7")
        self.assertEqual(prot.validate(), [])

    def test_engineFolderIsTheRunsOwn(self):
        """--out is inside the run's own extra folder; a new run replaces whatever an earlier execution
        of its engine step left there (--overwrite), a continued run checks the copied manifest."""
        prot = self.newClassify(numberOfClasses=3)
        self.proj.saveProtocol(prot)
        args = prot._getEngineArgs()
        out = prot._getExtraPath("engine")
        self.assertTrue(os.path.abspath(out).startswith(os.path.abspath(prot._getExtraPath()) + os.sep))
        self.assertIn("--out %s " % out, args)
        self.assertIn("--overwrite", args)
        self.assertNotIn("--continue", args)
        again = self.newClassify(doContinue=True, continueRun=prot)
        self.proj.saveProtocol(again)
        args = again._getEngineArgs()
        self.assertIn("--out %s " % again._getExtraPath("engine"), args)
        self.assertIn("--continue", args)
        self.assertNotIn("--overwrite", args)

    def test_engineArguments(self):
        args = self.newClassify(numberOfClasses=3, seed=5, numberOfThreads=2)._getEngineArgs()
        for part in ("mra --particles", "--classes 3 --seed 5 --overcluster 3 --resplit 6", "--threads 2",
                     "--backend cpu"):
            self.assertIn(part, args)
        self.assertIn("--overcluster 1", self.newClassify(numberOfClasses=3, overcluster=1)._getEngineArgs())
        self.assertIn("--resplit 0", self.newClassify(numberOfClasses=3, resplit=0)._getEngineArgs())
        for automatic in ("--radius", "--mask-diameter", "--max-resolution", "--shift-range", "--shift-step"):
            self.assertNotIn(automatic, args)     # left to the engine (automatic)
        given = self.newClassify(numberOfClasses=3, maskDiameterA=80, maxResolution=8, maximumShift=4,
                                 shiftStep=2)._getEngineArgs()
        self.assertIn("--mask-diameter 80.0 --max-resolution 8.0 --shift-range 4.0 --shift-step 2.0", given)
        self.assertNotIn("--gpu", args)
        self.assertNotIn("--no-mirror", args)
        self.assertIn("--no-mirror", self.newClassify(doMirror=False)._getEngineArgs())
        gpu = self.newClassify(useGpu=True, gpuList="0 1", extraParams="--verbose 100%")
        args = gpu._getEngineArgs()
        self.assertTrue(args.endswith('--backend auto --gpu "%(GPU)s"'), args)
        self.assertIn("--verbose 100% --backend auto", args % {"GPU": "0 1"})

    def test_miniBatchArguments(self):
        args = self.newClassify()._getEngineArgs()   # automatic: the engine decides, with the form's sizes
        self.assertIn("--minibatch-per-class 100 --minibatch-iterations 8", args)
        self.assertNotIn("-minibatch ", args)
        self.assertIn("--minibatch --minibatch-per-class 20 ",
                      self.newClassify(miniBatch=1, miniBatchPerClass=20)._getEngineArgs())
        self.assertIn("--no-minibatch ", self.newClassify(miniBatch=2)._getEngineArgs())

    def test_miniBatchHelpQuotesTheEngineBoundary(self):
        # the figure comes from the settings (it was a hand-written 'about 1000 x K'): 992 by default,
        # the particles per class from which minibatch.used_iterations uses all 8 mini-batch iterations
        from cryoralign_plugin.engine import minibatch
        from cryoralign_plugin.engine.settings import Settings
        text = self.newClassify().getParam('miniBatch').help.get()
        shown = {int(n) for n in re.findall(r"about (\d+) x K particles", text)}
        self.assertEqual(shown, {round(Settings().minibatch_all_per_class())})
        figure = shown.pop()
        self.assertEqual(minibatch.used_iterations(Settings(), figure * 100, 100), 8)
        self.assertLess(minibatch.used_iterations(Settings(), figure * 100 - 20, 100), 8)


@slow
class TestRuns(BaseTest):
    """Full runs through Scipion: sizes, classes, alignment and accuracy against the truth."""

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        cls.rfaImport, cls.rfaTruth = importParticles(cls, "rfa")
        cls.mraImport, cls.mraTruth = importParticles(cls, "mra")

    def runAlign(self, mpi, **kwargs):
        prot = self.newProtocol(CryoralignProtAlign2D, objLabel="rfa mpi %d" % mpi, useGpu=False,
                                inputParticles=self.rfaImport.outputParticles,
                                numberOfIterations=6, numberOfMpi=mpi, **kwargs)
        return self.launchProtocol(prot)

    def runClassify(self, mpi, **kwargs):
        params = dict(objLabel="mra mpi %d" % mpi, useGpu=False, numberOfMpi=mpi, numberOfClasses=3,
                      numberOfIterations=6, inputParticles=self.mraImport.outputParticles)
        params.update(kwargs)
        prot = self.newProtocol(CryoralignProtClassify2D, **params)
        return self.launchProtocol(prot)

    def checkAverage(self, image):
        index, fn = image.getLocation()
        self.assertAlmostEqual(image.getSamplingRate(), SAMPLING)
        with mrcfile.open(fn, permissive=False) as mrc:
            data = mrc.data.reshape(-1, BOX, BOX)[index - 1]   # a 1-image stack reads as 2D
        self.assertEqual(data.shape, (BOX, BOX))
        self.assertTrue(np.isfinite(data).all() and data.std() > 0)

    def checkAlign(self, prot):
        parts = prot.outputParticles
        self.assertSetSize(parts, N_PARTICLES)
        self.assertTrue(parts.hasAlignment2D())
        self.assertAlmostEqual(parts.getSamplingRate(), SAMPLING)
        self.checkAverage(prot.outputAverage)
        self.assertGreaterEqual(alignmentAccuracy(parts, self.rfaTruth), 0.9)
        self.assertIn("Aligned %d particles" % N_PARTICLES, " ".join(prot.summary()))
        self.assertIn("Penczek1992", prot.methods()[0])

    def checkClassify(self, prot):
        classes = prot.outputClasses
        self.assertSetSize(classes, 3)
        self.assertAlmostEqual(classes.getSamplingRate(), SAMPLING)
        members, purity = 0, 0
        for cls in classes.iterItems():
            self.assertTrue(cls.hasAlignment2D())
            self.checkAverage(cls.getRepresentative())
            self.assertGreater(cls._cryoralignResolution.get(), 0)
            true = [self.mraTruth[p.getIndex()][0] for p in cls]
            members += len(true)
            purity += np.bincount(true).max()
        self.assertEqual(members, N_PARTICLES)
        self.assertGreaterEqual(purity / members, 0.9)
        particles = [p.clone() for cls in classes.iterItems() for p in cls]
        self.assertGreaterEqual(alignmentAccuracy(particles, self.mraTruth), 0.9)
        self.assertIn("Classified into *3* classes.", prot.summary())

    def test_align(self):
        for mpi in (1, 2):
            with self.subTest(mpi=mpi):
                self.checkAlign(self.runAlign(mpi))

    def test_alignAtAnInternalBox(self):
        # 6 A on 48 px at 2 A/px: aligned at 32 px, outputs at the input box, pixel size and pixels
        prot = self.runAlign(1, maxResolution=6)
        self.assertIn("internal box 32 px", open(prot.getLogPaths()[0]).read())
        self.checkAlign(prot)

    def test_classify(self):
        for mpi in (1, 2):
            with self.subTest(mpi=mpi):
                self.checkClassify(self.runClassify(mpi))

    def test_classifyFromReferences(self):
        first = self.runClassify(1, numberOfIterations=3)
        self.checkClassify(self.runClassify(1, useReferences=True, numberOfClasses=1,
                                            inputReferences=first.outputClasses))

    def test_killedRunContinuesToTheUninterruptedResult(self):
        """SIGKILL to the protocol and the engine inside iteration 3; Continue ends where a whole run does."""
        imp, _ = importParticles(self, "kill")
        params = dict(useGpu=False, numberOfClasses=3, numberOfIterations=5, seed=3,
                      inputParticles=imp.outputParticles)
        whole = self.launchProtocol(self.newProtocol(CryoralignProtClassify2D, objLabel="whole", **params))
        victim = self.newProtocol(CryoralignProtClassify2D, objLabel="killed", **params)
        self.proj.launchProtocol(victim, wait=False)
        engineDir = victim._getExtraPath("engine")
        waitFor(outputs.checkpoint_dir(engineDir, 2))
        killed = processesMentioning(engineDir) + processesMentioning("pw_protocol_run", str(victim.getObjId()))
        self.assertTrue(killed)
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        self.assertFalse(os.path.exists(os.path.join(engineDir, PARTICLES_STAR)))
        again = self.launchProtocol(self.newProtocol(CryoralignProtClassify2D, objLabel="continued",
                                                     doContinue=True, continueRun=victim, **params))
        with open(whole._getExtraPath("engine", PARTICLES_STAR)) as a, \
                open(again._getExtraPath("engine", PARTICLES_STAR)) as b:
            self.assertEqual(a.read(), b.read())
        self.assertSetSize(again.outputClasses, 3)

    def test_continueChecksTheCopiedManifest(self):
        """A continued run whose copied manifest no longer matches fails with the engine's one line,
        and the run it continues is left as it was."""
        first = self.runClassify(1, numberOfIterations=1)
        manifest = first._getExtraPath("engine", outputs.MANIFEST_JSON)
        with open(manifest) as f:
            data = json.load(f)
        data["settings"]["shift_range"] = 1.5        # as if the first run had searched other shifts
        with open(manifest, "w") as f:
            json.dump(data, f)
        again = self.newProtocol(CryoralignProtClassify2D, objLabel="mismatch", useGpu=False, doContinue=True,
                                 continueRun=first, numberOfIterations=2, numberOfClasses=3)
        self.proj.launchProtocol(again, wait=True)
        self.assertTrue(again.isFailed())
        message = again.getErrorMessage()
        self.assertIn("belongs to another run", message)
        self.assertIn("settings.shift_range: 1.5 -> 3.0", message)
        self.assertNotIn("\n", message.strip())
        self.assertFalse(os.path.exists(again._getExtraPath("engine", PARTICLES_STAR)))
        with open(first._getExtraPath("engine", HISTORY_JSON)) as f:
            self.assertEqual(len(json.load(f)), 1)

    def test_continue(self):
        first = self.runClassify(1, numberOfIterations=2)
        again = self.runClassify(1, doContinue=True, continueRun=first, numberOfIterations=4)
        with open(again._getExtraPath("engine", HISTORY_JSON)) as f:
            self.assertEqual(len(json.load(f)), 4)
        self.checkClassify(again)
        with open(first._getExtraPath("engine", HISTORY_JSON)) as f:
            self.assertEqual(len(json.load(f)), 2)   # the continued run is left untouched


@slow
@cudasim
class TestGpuSimulator(BaseTest):
    """The GPU path through Scipion (GPU ids -> engine --gpu) on numba's CUDA simulator."""

    @classmethod
    def setUpClass(cls):
        cls._oldSim = os.environ.get("NUMBA_ENABLE_CUDASIM")
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"   # inherited by the protocol's processes
        setupTestProject(cls)
        cls.imp, _ = importParticles(cls, "sim")

    @classmethod
    def tearDownClass(cls):
        if cls._oldSim is None:
            os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
        else:
            os.environ["NUMBA_ENABLE_CUDASIM"] = cls._oldSim

    def test_alignOnGpu(self):
        prot = self.launchProtocol(self.newProtocol(
            CryoralignProtAlign2D, inputParticles=self.imp.outputParticles, useGpu=True,
            gpuList="0", numberOfIterations=1, maximumShift=1))
        self.assertSetSize(prot.outputParticles, 8)
        with open(prot.getStdoutLog()) as f:
            self.assertIn('--backend auto --gpu "0"', f.read())
