"""CTF through the path users take: a RELION 3.1 STAR with CTF imported by the relion plugin
(pwem's ProtImportParticles, importFrom RELION, which calls ``relion.convert.RelionImport``; no
RELION binary is needed), then 2D classification with this plugin.

The data are made locally by ``engine/synthetic/`` (CTF-modulated particles with RELION 3.1
optics and particle CTF columns), never downloaded.
"""
import importlib.util
import os
import unittest

import mrcfile
import numpy as np
from emtable import Table

from pwem.protocols import ProtImportParticles
from pyworkflow.tests import BaseTest, DataSet, setupTestProject

from cryoralign_plugin import convert
from generated import generateOnce
from cryoralign_plugin.constants import (CLASSES_MRCS, CTF_AUTO, CTF_FLIP, CTF_NONE, CTF_WIENER,
                                         INPUT_DIR, INPUT_STAR)
from cryoralign_plugin.protocols import CryoralignProtAlign2D, CryoralignProtClassify2D

try:
    import pytest
    slow = pytest.mark.slow
except ImportError:  # run by Scipion's own test runner
    def slow(cls):
        return cls

HAS_RELION = importlib.util.find_spec("relion") is not None
NEEDS_RELION = unittest.skipUnless(HAS_RELION, "scipion-em-relion is missing: pip install -e '.[test]'")

# Small enough for ~20 s of classification on one core: 24 particles of 32 px, 2 classes.
BOX, N_PARTICLES, SAMPLING = 32, 24, 3.0
VOLTAGE, CS, Q0 = 300.0, 2.7, 0.1
SET = dict(n_particles=N_PARTICLES, box=BOX, n_classes=2, snr=5.0, seed=21, source="slicem")
DataSet(name="cryoralign_ctf", folder="cryoralign_ctf_v1",
        files={"star": os.path.join("ctf", "particles.star"),
               "stack": os.path.join("ctf", "particles.mrcs")})


def getCtfDataSet():
    """The CTF data set, generated with the engine's synthetic module if missing."""
    from cryoralign_plugin.engine import synthetic
    ds = DataSet.getDataSet("cryoralign_ctf")
    # 1-2.5 um at 3 A/px and 32 px (padded x2) stays clear of CTF aliasing (synthetic.CtfSimulation).
    generateOnce(os.path.dirname(ds.getFile("star")), lambda tmp: synthetic.make_dataset(
        tmp, ctf=synthetic.CtfSimulation(defocus_range=(1.0, 2.5), voltage=VOLTAGE, cs=CS,
                                         amplitude_contrast=Q0, pixel_size=SAMPLING), **SET))
    return ds


def starCtf(starFile):
    """``{rlnImageId: (defocus U, V, angle)}`` of a particles STAR file."""
    return {r.rlnImageId: (r.rlnDefocusU, r.rlnDefocusV, r.rlnDefocusAngle)
            for r in Table.iterRows(starFile, tableName="particles")}


def importRelion(test, starFile, phaseFlipped=False, label="import relion"):
    """Import a RELION STAR as users do (the relion plugin's importer), acquisition from the form."""
    imp = test.newProtocol(ProtImportParticles, objLabel=label,
                           importFrom=ProtImportParticles.IMPORT_FROM_RELION, starFile=starFile,
                           samplingRate=SAMPLING, voltage=VOLTAGE, sphericalAberration=CS,
                           amplitudeContrast=Q0, magnification=10000,
                           haveDataBeenPhaseFlipped=phaseFlipped)
    return test.launchProtocol(imp)


def importStack(test, stackFile):
    """The same images without CTF: pwem's own importer of an MRC stack."""
    imp = test.newProtocol(ProtImportParticles, objLabel="import stack",
                           importFrom=ProtImportParticles.IMPORT_FROM_FILES,
                           filesPath=os.path.dirname(stackFile),
                           filesPattern=os.path.basename(stackFile), samplingRate=SAMPLING)
    return test.launchProtocol(imp)


@NEEDS_RELION
class TestCtfForms(BaseTest):
    """Validation, engine arguments and messages of the CTF options, without running the engine."""

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        ds = getCtfDataSet()
        cls.star = ds.getFile("star")
        cls.withCtf = importRelion(cls, cls.star).outputParticles
        cls.flipped = importRelion(cls, cls.star, phaseFlipped=True,
                                   label="import flipped").outputParticles
        cls.noCtf = importStack(cls, ds.getFile("stack")).outputParticles

    def newProt(self, parts, cls=CryoralignProtClassify2D, **kwargs):
        kwargs.setdefault("useGpu", False)
        if cls is CryoralignProtClassify2D:
            kwargs.setdefault("numberOfClasses", 2)
        return self.newProtocol(cls, inputParticles=parts, **kwargs)

    def test_importedSetHasCtf(self):
        """The relion plugin's import carries each particle's CTF and the acquisition."""
        parts = self.withCtf
        self.assertTrue(parts.hasCTF())
        self.assertFalse(parts.isPhaseFlipped())
        self.assertAlmostEqual(parts.getSamplingRate(), SAMPLING)
        acq = parts.getAcquisition()
        self.assertEqual((acq.getVoltage(), acq.getSphericalAberration(), acq.getAmplitudeContrast()),
                         (VOLTAGE, CS, Q0))
        truth = starCtf(self.star)
        self.assertEqual(parts.getSize(), N_PARTICLES)
        for part in parts.iterItems():
            ctf = part.getCTF()
            np.testing.assert_allclose((ctf.getDefocusU(), ctf.getDefocusV(), ctf.getDefocusAngle()),
                                       truth[part.getObjId()], rtol=1e-6, atol=1e-3)
        self.assertTrue(self.flipped.isPhaseFlipped())
        self.assertFalse(self.noCtf.hasCTF())

    def test_ctfModesNeedCtf(self):
        message = ("The input particles have no CTF: choose CTF correction None or Automatic, or use "
                   "particles with CTF (e.g. after CTF estimation).")
        for cls in (CryoralignProtClassify2D, CryoralignProtAlign2D):
            for mode in (CTF_WIENER, CTF_FLIP):
                with self.subTest(cls=cls.__name__, mode=mode):
                    self.assertIn(message, self.newProt(self.noCtf, cls, ctfCorrection=mode).validate())
                    self.assertEqual(self.newProt(self.withCtf, cls, ctfCorrection=mode).validate(), [])
            for mode in (CTF_AUTO, CTF_NONE):
                with self.subTest(cls=cls.__name__, mode=mode):
                    self.assertEqual(self.newProt(self.noCtf, cls, ctfCorrection=mode).validate(), [])

    def test_engineArguments(self):
        def args(parts, **kwargs):
            return self.newProt(parts, **kwargs)._getEngineArgs().split()

        self.assertNotIn("--ctf", args(self.withCtf))            # Automatic: the engine decides
        self.assertNotIn("--ctf-intact-first-peak", args(self.withCtf))
        for mode, value in ((CTF_WIENER, "wiener"), (CTF_FLIP, "flip"), (CTF_NONE, "none")):
            a = args(self.withCtf, ctfCorrection=mode)
            self.assertEqual(a[a.index("--ctf") + 1], value)
        self.assertIn("--ctf-intact-first-peak", args(self.withCtf, ignoreCTFUntilFirstPeak=True))
        # Nothing to leave intact when no CTF is used.
        self.assertNotIn("--ctf-intact-first-peak", args(self.noCtf, ignoreCTFUntilFirstPeak=True))
        self.assertNotIn("--ctf-intact-first-peak",
                         args(self.withCtf, ctfCorrection=CTF_NONE, ignoreCTFUntilFirstPeak=True))

    def test_messages(self):
        self.assertEqual(self.newProt(self.withCtf)._ctfSentence(),
                         "CTF correction: Wiener-filtered class averages of phase-flipped particles.")
        self.assertIn("the input being phase-flipped already (not flipped again)",
                      self.newProt(self.flipped)._ctfSentence())
        self.assertEqual(self.newProt(self.noCtf)._ctfSentence(),
                         "CTF correction: none (the input particles have no CTF).")
        self.assertEqual(self.newProt(self.withCtf, ctfCorrection=CTF_NONE)._ctfSentence(),
                         "CTF correction: none (the CTFs were ignored).")
        self.assertIn("phase flip only", self.newProt(self.withCtf, ctfCorrection=CTF_FLIP)._ctfSentence())
        self.assertIn("Wiener-filtered average of",
                      self.newProt(self.withCtf, CryoralignProtAlign2D)._ctfSentence())

    def test_phaseFlippedImportIsFlaggedForTheEngine(self):
        """A phase-flipped set reaches the engine as rlnCtfDataArePhaseFlipped 1 (never flipped again)."""
        from cryoralign_plugin.engine.sources import StarSource
        star = self.getOutputPath("flipped", INPUT_STAR)
        convert.writeSetOfParticles(self.flipped, star)
        self.assertEqual(Table(fileName=star, tableName="optics")[0].rlnCtfDataArePhaseFlipped, 1)
        self.assertTrue(StarSource.from_star(star).ctf.phase_flipped.all())


@slow
@NEEDS_RELION
class TestCtfClassify(BaseTest):
    """RELION STAR with CTF -> relion plugin import -> 2D classification, Automatic CTF correction."""

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        cls.star = getCtfDataSet().getFile("star")
        cls.imp = importRelion(cls, cls.star)

    def readLog(self, prot):
        with open(prot.getStdoutLog()) as f:
            return f.read()

    def test_phaseFlippedParticlesAreNotFlippedAgain(self):
        flipped = importRelion(self, self.star, phaseFlipped=True, label="import flipped")
        prot = self.launchProtocol(self.newProtocol(
            CryoralignProtClassify2D, inputParticles=flipped.outputParticles, useGpu=False,
            numberOfClasses=2, numberOfIterations=1, maximumShift=2, ctfCorrection=CTF_WIENER))
        optics = Table(fileName=prot._getExtraPath(INPUT_DIR, INPUT_STAR), tableName="optics")
        self.assertEqual(optics[0].rlnCtfDataArePhaseFlipped, 1)
        log = self.readLog(prot)
        self.assertIn("--ctf wiener", log)
        self.assertIn("CTF correction: wiener (", log)
        self.assertIn("%d of %d particles are already phase-flipped (rlnCtfDataArePhaseFlipped): not "
                      "flipped again" % (N_PARTICLES, N_PARTICLES), log)
        self.assertIn("the input being phase-flipped already (not flipped again)",
                      " ".join(prot.summary()))
        self.assertIn("The particles had been phase-flipped", prot.methods()[0])

    def test_classifyWithCtf(self):
        parts = self.imp.outputParticles
        prot = self.launchProtocol(self.newProtocol(
            CryoralignProtClassify2D, inputParticles=parts, useGpu=False, numberOfClasses=2,
            numberOfIterations=2, maximumShift=2))

        # The engine's input (written by convert) holds the imported CTFs and the acquisition.
        engineStar = prot._getExtraPath(INPUT_DIR, INPUT_STAR)
        imported = {p.getObjId(): (p.getCTF().getDefocusU(), p.getCTF().getDefocusV(),
                                   p.getCTF().getDefocusAngle()) for p in parts.iterItems()}
        written = starCtf(engineStar)
        self.assertEqual(sorted(written), sorted(imported))
        for objId, values in written.items():
            np.testing.assert_allclose(values, imported[objId], rtol=1e-6, atol=1e-3)
        optics = Table(fileName=engineStar, tableName="optics")
        self.assertEqual(len(optics), 1)
        np.testing.assert_allclose([optics[0].rlnVoltage, optics[0].rlnSphericalAberration,
                                    optics[0].rlnAmplitudeContrast, optics[0].rlnImagePixelSize],
                                   [VOLTAGE, CS, Q0, SAMPLING])
        self.assertEqual(optics[0].rlnCtfDataArePhaseFlipped, 0)

        # The log says which correction was used: the protocol's sentence and the engine's line.
        log = self.readLog(prot)
        sentence = "CTF correction: Wiener-filtered class averages of phase-flipped particles."
        self.assertIn(sentence, log)
        self.assertIn("CTF correction: wiener (the input has CTF columns)", log)
        self.assertNotIn("--ctf ", log)   # Automatic: left to the engine
        self.assertIn(sentence, prot.summary())
        self.assertIn("Wiener-filtered CTF-weighted sums", prot.methods()[0])

        # Classes whose representatives are the engine's corrected averages at the input pixel size.
        classes = prot.outputClasses
        self.assertGreaterEqual(classes.getSize(), 1)
        self.assertAlmostEqual(classes.getSamplingRate(), SAMPLING)
        members = 0
        for cls in classes.iterItems():
            rep = cls.getRepresentative()
            self.assertAlmostEqual(rep.getSamplingRate(), SAMPLING)
            index, fn = rep.getLocation()
            self.assertEqual(os.path.basename(fn), CLASSES_MRCS)
            with mrcfile.open(fn, permissive=False) as mrc:
                self.assertAlmostEqual(float(mrc.voxel_size.x), SAMPLING, places=3)
                data = mrc.data.reshape(-1, BOX, BOX)[index - 1]
            self.assertTrue(np.isfinite(data).all() and data.std() > 0)
            members += cls.getSize()
        self.assertEqual(members, N_PARTICLES)

    def test_continueKeepsTheCtfSettings(self):
        """A continued run takes the CTF settings of the run it continues (the engine checks them)."""
        params = dict(inputParticles=self.imp.outputParticles, useGpu=False, numberOfClasses=2,
                      maximumShift=2)
        first = self.launchProtocol(self.newProtocol(
            CryoralignProtClassify2D, objLabel="flip", numberOfIterations=1, ctfCorrection=CTF_FLIP,
            **params))
        again = self.launchProtocol(self.newProtocol(
            CryoralignProtClassify2D, objLabel="flip continued", numberOfIterations=2,
            doContinue=True, continueRun=first, **params))   # its own form says Automatic
        log = self.readLog(again)
        self.assertIn("--ctf flip", log)
        self.assertIn("CTF correction: flip", log)
        self.assertIn("CTF correction: phase flip only", " ".join(again.summary()))
        self.assertGreaterEqual(again.outputClasses.getSize(), 1)
