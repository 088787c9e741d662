"""Conversion tests: parameter conventions (vectors and images), STAR writing and reading."""
import os

import mrcfile
import numpy as np
from emtable import Table

from pwem.convert.transformations import euler_from_matrix
from pwem.objects import Acquisition, CTFModel, Particle, SetOfAverages, SetOfParticles, Transform
from pyworkflow.tests import BaseTest, setupTestOutput

from cryoralign_plugin import convert
from cryoralign_plugin.engine import outputs
from cryoralign_plugin.engine.images import transform as engineTransform
from cryoralign_plugin.engine.mrc import write_stack
from cryoralign_plugin.engine.sources import StarSource
from cryoralign_plugin.engine.star import write_star

# relion tests/test_convert.py TestAlignment.test_isInverse: Xmipp psi=+20, Relion psi=-20.
RELION_MATRIX = [[0.93969, 0.34202, 0.0, -6.8404],
                 [-0.34202, 0.93969, 0.0, 18.7939],
                 [0.0, 0.0, 1.0, 0.0],
                 [0.0, 0.0, 0.0, 1.0]]
# xmipp3 tests/test_convert_xmipp.py test_alignFlip / test_alignFlip2.
XMIPP_FLIP = [[-1.0, 0.0, 0.0, 0.0],
              [0.0, 1.0, 0.0, 0.0],
              [0.0, 0.0, -1.0, 0.0],
              [0.0, 0.0, 0.0, 1.0]]
XMIPP_FLIP2 = [[-0.86603, -0.50000, 0.0, -17.32051],
               [-0.50000, 0.86603, 0.0, -10.00000],
               [0.0, 0.0, -1.0, 0.0],
               [0.0, 0.0, 0.0, 1.0]]


def xmippRow(matrix):
    """(psi, shiftX, shiftY, flip) as xmipp3's ``alignmentToRow`` writes an ALIGN_2D matrix."""
    m = np.array(matrix, dtype=float)
    flip = bool(np.linalg.det(m[:2, :2]) < 0)
    if flip:
        m[0, :2] *= -1.0
        m[2, 2] = 1.0
    angles = -np.rad2deg(euler_from_matrix(m, axes="szyz"))
    return angles[0] + angles[2], m[0, 3], m[1, 3], flip


def angleDiff(a, b):
    return abs((a - b + 180.0) % 360.0 - 180.0)


class TestMatrices(BaseTest):
    """Engine (psi, sx, sy, mirror) <-> Scipion 4x4 ALIGN_2D matrices."""

    def assertGeometry(self, matrix, psi, sx, sy, mirror):
        gpsi, gsx, gsy, gmirror = convert.geometryFromMatrix2D(matrix)
        self.assertLess(angleDiff(gpsi, psi), 1e-3)
        self.assertAlmostEqual(gsx, sx, places=4)
        self.assertAlmostEqual(gsy, sy, places=4)
        self.assertEqual(gmirror, mirror)
        np.testing.assert_allclose(convert.matrixFromGeometry2D(psi, sx, sy, mirror), matrix,
                                   atol=1e-4)

    def test_relionVector(self):
        self.assertGeometry(RELION_MATRIX, 20.0, -6.8404, 18.7939, False)
        xpsi, xsx, xsy, xflip = xmippRow(RELION_MATRIX)
        self.assertAlmostEqual(xpsi, 20.0, places=3)          # Relion would store -20
        self.assertEqual((round(xsx, 4), round(xsy, 4), xflip), (-6.8404, 18.7939, False))

    def test_xmippFlipVectors(self):
        self.assertGeometry(XMIPP_FLIP, 0.0, 0.0, 0.0, True)
        # Xmipp keeps the x shift (-17.32) and flips after it; the engine translates, then
        # mirrors, so its sx is the mirrored value.
        self.assertGeometry(XMIPP_FLIP2, 30.0, 17.32051, -10.0, True)
        xpsi, xsx, xsy, xflip = xmippRow(XMIPP_FLIP2)
        self.assertEqual((round(xpsi, 3), round(xsx, 4), round(xsy, 4), xflip),
                         (30.0, -17.3205, -10.0, True))

    def test_mirrorIsNegativeDeterminant(self):
        m = convert.matrixFromGeometry2D(123.0, 1.5, -2.5, True)
        self.assertLess(np.linalg.det(m[:2, :2]), 0)
        self.assertAlmostEqual(np.linalg.det(m[:3, :3]), 1.0)  # a proper 3D rotation (Xmipp)
        self.assertEqual(m[2, 2], -1.0)

    def test_randomRoundTrips(self):
        rng = np.random.default_rng(7)
        for _ in range(200):
            psi, sx, sy = rng.uniform(0, 360), rng.uniform(-8, 8), rng.uniform(-8, 8)
            mirror = bool(rng.integers(2))
            m = convert.matrixFromGeometry2D(psi, sx, sy, mirror)
            self.assertGeometry(m, psi, sx, sy, mirror)
            # What Xmipp (and so showj, CL2D, ...) reads from our matrix.
            xpsi, xsx, xsy, xflip = xmippRow(m)
            self.assertLess(angleDiff(xpsi, psi), 1e-6)
            self.assertAlmostEqual(xsx, -sx if mirror else sx)
            self.assertAlmostEqual(xsy, sy)
            self.assertEqual(xflip, mirror)


class TestImages(BaseTest):
    """An image transformed by the engine and by Xmipp from the Scipion matrix must agree."""

    @classmethod
    def setUpClass(cls):
        setupTestOutput(cls)
        n = 64
        y, x = np.indices((n, n)) - n // 2
        blobs = [(-7, -3, 3.0, 1.0), (6, -5, 2.0, 0.7), (2, 8, 2.5, -0.6), (9, 6, 1.8, 0.5)]
        img = sum(a * np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * s * s))
                  for bx, by, s, a in blobs)
        cls.image = img.astype(np.float32)
        cls.stack = cls.getOutputPath("blob.mrcs")
        with mrcfile.new(cls.stack, overwrite=True) as mrc:
            mrc.set_data(cls.image[None])

    def xmippApply(self, matrix):
        """Apply a Scipion matrix the Xmipp way: alignmentToRow, then Image.readApplyGeo."""
        import xmippLib
        psi, shiftX, shiftY, flip = xmippRow(matrix)
        md = xmippLib.MetaData()
        objId = md.addObject()
        md.setValue(xmippLib.MDL_IMAGE, "1@" + self.stack, objId)
        md.setValue(xmippLib.MDL_ANGLE_PSI, float(psi), objId)
        md.setValue(xmippLib.MDL_SHIFT_X, float(shiftX), objId)
        md.setValue(xmippLib.MDL_SHIFT_Y, float(shiftY), objId)
        md.setValue(xmippLib.MDL_FLIP, bool(flip), objId)
        img = xmippLib.Image()
        img.readApplyGeo(md, objId)
        return np.asarray(img.getData(), dtype=np.float64)

    @staticmethod
    def correlation(a, b):
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))

    def test_engineAndXmippAgree(self):
        cases = [(0, 3, 0, False), (90, 0, 0, False), (0, 3, -2, True), (37, 2.5, -4, False),
                 (215, -3.5, 1.5, True), (300, 4, 4, True)]
        for psi, sx, sy, mirror in cases:
            expected = engineTransform(self.image[None], [[psi, sx, sy, float(mirror)]])[0]
            got = self.xmippApply(convert.matrixFromGeometry2D(psi, sx, sy, mirror))
            cc = self.correlation(expected, got)
            self.assertGreater(cc, 0.995, "params %s: cc %.4f" % ((psi, sx, sy, mirror), cc))
            self.assertLess(self.correlation(self.image, got), 0.95)  # the transform did something

    def test_wrongConventionsAreCaught(self):
        """The check discriminates: Relion's psi sign or an unmirrored x shift would fail it."""
        psi, sx, sy = 37.0, 4.0, -3.0
        expected = engineTransform(self.image[None], [[psi, sx, sy, 1.0]])[0]
        for wrong in (convert.matrixFromGeometry2D(-psi, sx, sy, True),
                      convert.matrixFromGeometry2D(psi, -sx, sy, True)):
            self.assertLess(self.correlation(expected, self.xmippApply(wrong)), 0.9)


class TestStar(BaseTest):
    """Writing the engine input from a real SetOfParticles and reading engine outputs."""

    @classmethod
    def setUpClass(cls):
        setupTestOutput(cls)
        rng = np.random.default_rng(3)
        cls.data = rng.normal(size=(5, 16, 16)).astype(np.float32)
        cls.single = rng.normal(size=(16, 16)).astype(np.float32)
        os.makedirs(cls.getOutputPath("data"))
        cls.stackFn = cls.getOutputPath("data", "parts.mrcs")
        cls.singleFn = cls.getOutputPath("data", "single.mrc")
        with mrcfile.new(cls.stackFn) as mrc:
            mrc.set_data(cls.data)
        with mrcfile.new(cls.singleFn) as mrc:
            mrc.set_data(cls.single)

    def makeSet(self, name, withAlignment=False):
        partSet = SetOfParticles(filename=self.getOutputPath(name + ".sqlite"))
        partSet.setSamplingRate(2.5)
        if withAlignment:
            partSet.setAlignment2D()
        self.params = {}
        for i in range(1, 6):
            part = Particle(location=(i, self.stackFn + ":mrcs"))
            if withAlignment:
                p = (10.0 * i, 0.5 * i, -0.25 * i, i % 2 == 0)
                self.params[i] = p
                part.setTransform(Transform(convert.matrixFromGeometry2D(*p)))
            part.setEnabled(i != 3)
            partSet.append(part)
        part = Particle(location=self.singleFn)
        if withAlignment:
            self.params[6] = (0.0, 0.0, 0.0, False)
            part.setTransform(Transform(np.eye(4)))
        partSet.append(part)
        partSet.write()
        return partSet

    def test_writeParticles(self):
        partSet = self.makeSet("plain")
        star = self.getOutputPath("plain", "input", "particles.star")
        self.assertEqual(convert.writeSetOfParticles(partSet, star), 5)
        rows = list(Table.iterRows(star, tableName="particles"))
        self.assertEqual([r.rlnImageId for r in rows], [1, 2, 4, 5, 6])  # disabled 3 is skipped
        self.assertEqual(rows[0].rlnImageName, "000001@parts.mrcs")
        self.assertEqual(rows[-1].rlnImageName, "000001@single.mrcs")   # .mrc linked as .mrcs
        self.assertNotIn("rlnAnglePsi", rows[0]._fields)
        optics = Table(fileName=star, tableName="optics")
        self.assertAlmostEqual(optics[0].rlnImagePixelSize, 2.5)
        self.assertEqual(optics[0].rlnImageSize, 16)
        inputDir = os.path.dirname(star)
        for name in ("parts.mrcs", "single.mrcs"):
            self.assertTrue(os.path.islink(os.path.join(inputDir, name)), name)  # linked, not copied
        with mrcfile.open(os.path.join(inputDir, "parts.mrcs")) as mrc:
            np.testing.assert_array_equal(mrc.data[3], self.data[3])
        with mrcfile.open(os.path.join(inputDir, "single.mrcs")) as mrc:
            np.testing.assert_array_equal(mrc.data.reshape(16, 16), self.single)
        # The engine reads it as written: ids, pixel size, images through the links.
        stack = StarSource.from_star(star)
        self.assertEqual(list(stack.ids), [1, 2, 4, 5, 6])
        self.assertEqual((stack.box, stack.pixel_size, stack.prior), (16, 2.5, None))
        np.testing.assert_array_equal(stack.read([2, 4]), np.stack([self.data[3], self.single]))

    def test_writePrior(self):
        partSet = self.makeSet("aligned", withAlignment=True)
        star = self.getOutputPath("aligned", "particles.star")
        convert.writeSetOfParticles(partSet, star, usePrior=True)
        stack = StarSource.from_star(star)
        for objId, prior in zip(stack.ids, stack.prior):
            psi, sx, sy, mirror = self.params[objId]
            self.assertLess(angleDiff(prior[0], psi), 1e-4)
            np.testing.assert_allclose(prior[1:], [sx, sy, mirror], atol=1e-5)

    def test_priorNeeds2DAlignment(self):
        partSet = self.makeSet("unaligned")
        with self.assertRaises(ValueError):
            convert.writeSetOfParticles(partSet, self.getOutputPath("x", "p.star"), usePrior=True)

    def writeEngineOutput(self, outDir, ids, params, classes):
        """The engine's output files (contract), written with the engine's own writers."""
        os.makedirs(outDir, exist_ok=True)
        rows = [(objId, "%06d@parts.mrcs" % objId, int(classes[i])) + tuple(params[i][:3])
                + (int(params[i][3]), 0.5 + 0.01 * i) for i, objId in enumerate(ids)]
        write_star(os.path.join(outDir, outputs.PARTICLES_STAR), {"particles": (
            ["rlnImageId", "rlnImageName", "rlnClassNumber", "rlnAnglePsi", "rlnOriginX",
             "rlnOriginY", "rlnIsFlip", "rlnCryoralignScore"], rows)})
        k = int(max(classes))
        write_stack(os.path.join(outDir, outputs.CLASSES_MRCS), np.zeros((k, 16, 16)))
        sizes = [int(np.sum(np.asarray(classes) == c)) for c in range(1, k + 1)]
        write_star(os.path.join(outDir, outputs.CLASSES_STAR), {"classes": (
            ["rlnReferenceImage", "rlnClassNumber", "rlnClassSize", "rlnClassDistribution",
             "rlnEstimatedResolution", "rlnCryoralignMeanScore"],
            [("%06d@classes.mrcs" % c, c, sizes[c - 1], sizes[c - 1] / len(ids), 12.5 + c,
              0.4 + c / 10) for c in range(1, k + 1)])})

    def test_readEngineOutput(self):
        outDir = self.getOutputPath("engine_out")
        ids = [6, 2, 4]                        # not sorted: lookup is by id, not by position
        params = [(350.0, 1.25, -0.5, 1), (12.5, 0.0, 2.0, 0), (0.0, 0.0, 0.0, 0)]
        self.writeEngineOutput(outDir, ids, params, [2, 1, 2])
        results = convert.EngineParticles(os.path.join(outDir, outputs.PARTICLES_STAR))
        self.assertEqual(len(results), 3)
        part = Particle()
        part.setObjId(6)
        results.updateParticle(part, withClass=True)
        self.assertEqual(part.getClassId(), 2)
        self.assertEqual(convert.geometryFromMatrix2D(part.getTransform().getMatrix())[3], True)
        np.testing.assert_allclose(part.getTransform().getMatrix(),
                                   convert.matrixFromGeometry2D(350.0, 1.25, -0.5, True), atol=1e-5)
        self.assertAlmostEqual(part._cryoralignScore.get(), 0.5)
        missing = Particle()
        missing.setObjId(5)
        with self.assertRaises(KeyError):
            results.updateParticle(missing)

        classes = convert.readEngineClasses(outDir)
        self.assertEqual(sorted(classes), [1, 2])
        self.assertEqual(classes[2].index, 2)
        self.assertEqual(classes[2].stack, os.path.join(outDir, outputs.CLASSES_MRCS))
        self.assertEqual(classes[2].size, 2)
        self.assertAlmostEqual(classes[1].resolution, 13.5)

    def test_writeReferences(self):
        avgs = SetOfAverages(filename=self.getOutputPath("averages.sqlite"))
        avgs.setSamplingRate(2.5)
        for i in (1, 2, 4):
            avgs.append(Particle(location=(i, self.stackFn)))
        self.assertEqual(convert.referenceCount(avgs), 3)
        self.assertEqual(convert.referenceDim(avgs), (16, 16))
        refs = self.getOutputPath("refs.mrcs")
        self.assertEqual(convert.writeReferences(avgs, refs), 3)
        with mrcfile.open(refs, permissive=False) as mrc:
            np.testing.assert_allclose(mrc.data, self.data[[0, 1, 3]])


class TestStarCtf(BaseTest):
    """The CTF of a SetOfParticles written as RELION 3.1 columns, and read back by the engine."""

    @classmethod
    def setUpClass(cls):
        setupTestOutput(cls)
        os.makedirs(cls.getOutputPath("data"))
        cls.stackFn = cls.getOutputPath("data", "parts.mrcs")
        with mrcfile.new(cls.stackFn) as mrc:
            mrc.set_data(np.random.default_rng(4).normal(size=(4, 16, 16)).astype(np.float32))

    def makeSet(self, name, withCtf=True, flipped=False, phaseShift=False, voltages=(300, 300, 300, 300)):
        """4 particles (the 3rd disabled); particle i has defocus U 10000 + 1000 i, V = U - 300 and
        angle 10 i degrees, phase shift 5 i with ``phaseShift``, and its own acquisition's voltage."""
        partSet = SetOfParticles(filename=self.getOutputPath(name + ".sqlite"))
        partSet.setSamplingRate(2.5)
        acq = partSet.getAcquisition()
        acq.setVoltage(300.0)
        acq.setSphericalAberration(2.7)
        acq.setAmplitudeContrast(0.07)
        acq.setMagnification(10000)
        partSet.setHasCTF(withCtf)
        partSet.setIsPhaseFlipped(flipped)
        self.expected = {}
        for i in range(1, 5):
            part = Particle(location=(i, self.stackFn))
            if withCtf:
                ctf = CTFModel()
                ctf.setStandardDefocus(10000.0 + 1000 * i, 9700.0 + 1000 * i, 10.0 * i)
                if phaseShift:
                    ctf.setPhaseShift(5.0 * i)
                part.setCTF(ctf)
                self.expected[i] = (10000.0 + 1000 * i, 9700.0 + 1000 * i, 10.0 * i, 5.0 * i)
            own = Acquisition()
            own.copyInfo(acq)
            own.setVoltage(float(voltages[i - 1]))
            part.setAcquisition(own)
            part.setEnabled(i != 3)
            partSet.append(part)
        partSet.write()
        return partSet

    def write(self, partSet, name, **kwargs):
        star = self.getOutputPath(name, "particles.star")
        self.assertEqual(convert.writeSetOfParticles(partSet, star, **kwargs), 3)
        return star

    def test_ctfColumns(self):
        star = self.write(self.makeSet("ctf"), "ctf")
        optics = Table(fileName=star, tableName="optics")
        self.assertEqual(len(optics), 1)   # one acquisition: one optics group
        og = optics[0]
        self.assertEqual((og.rlnOpticsGroup, og.rlnImageSize), (1, 16))
        np.testing.assert_allclose([og.rlnImagePixelSize, og.rlnVoltage, og.rlnSphericalAberration,
                                    og.rlnAmplitudeContrast], [2.5, 300.0, 2.7, 0.07])
        self.assertEqual(og.rlnCtfDataArePhaseFlipped, 0)
        rows = list(Table.iterRows(star, tableName="particles"))
        self.assertEqual([r.rlnImageId for r in rows], [1, 2, 4])
        self.assertNotIn("rlnPhaseShift", rows[0]._fields)   # the CTFs have none
        for r in rows:
            u, v, angle, _ = self.expected[r.rlnImageId]
            self.assertEqual(r.rlnOpticsGroup, 1)
            np.testing.assert_allclose([r.rlnDefocusU, r.rlnDefocusV, r.rlnDefocusAngle], [u, v, angle])
        ctf = StarSource.from_star(star).ctf   # the engine reads what convert wrote
        np.testing.assert_allclose(ctf.defocus_u, [11000, 12000, 14000])
        np.testing.assert_allclose(ctf.defocus_angle, [10, 20, 40])
        np.testing.assert_allclose(ctf.voltage, 300.0)
        np.testing.assert_allclose(ctf.amplitude_contrast, 0.07)
        self.assertFalse(ctf.phase_flipped.any())

    def test_phaseFlippedSet(self):
        star = self.write(self.makeSet("flipped", flipped=True), "flipped")
        self.assertEqual(Table(fileName=star, tableName="optics")[0].rlnCtfDataArePhaseFlipped, 1)
        self.assertTrue(StarSource.from_star(star).ctf.phase_flipped.all())

    def test_phaseShift(self):
        star = self.write(self.makeSet("shift", phaseShift=True), "shift")
        shifts = {r.rlnImageId: r.rlnPhaseShift for r in Table.iterRows(star, tableName="particles")}
        self.assertEqual(shifts, {1: 5.0, 2: 10.0, 4: 20.0})

    def test_opticsGroupPerAcquisition(self):
        star = self.write(self.makeSet("groups", voltages=(300, 200, 200, 300)), "groups")
        optics = {r.rlnOpticsGroup: r.rlnVoltage for r in Table.iterRows(star, tableName="optics")}
        self.assertEqual(optics, {1: 300.0, 2: 200.0})
        groups = {r.rlnImageId: r.rlnOpticsGroup for r in Table.iterRows(star, tableName="particles")}
        self.assertEqual(groups, {1: 1, 2: 2, 4: 1})
        np.testing.assert_allclose(StarSource.from_star(star).ctf.voltage, [300, 200, 300])

    def test_noCtf(self):
        """A set without CTF, or the CTF not wanted: no CTF column (the output of before CTF support)."""
        for name, partSet, kwargs in (("none", self.makeSet("none", withCtf=False), {}),
                                      ("unwanted", self.makeSet("unwanted"), {"writeCtf": False})):
            with self.subTest(name):
                star = self.write(partSet, name, **kwargs)
                self.assertEqual(Table(fileName=star, tableName="optics").getColumnNames(),
                                 ["rlnOpticsGroup", "rlnImageSize", "rlnImagePixelSize"])
                self.assertEqual(Table(fileName=star, tableName="particles").getColumnNames(),
                                 ["rlnImageId", "rlnImageName"])
                self.assertIsNone(StarSource.from_star(star).ctf)

    def test_ctfNeedsAcquisition(self):
        partSet = _withoutVoltage(self.makeSet("acq"), self.getOutputPath("noacq.sqlite"))
        with self.assertRaisesRegex(ValueError, "lacks the voltage"):
            convert.writeSetOfParticles(partSet, self.getOutputPath("noacq", "p.star"))


def _withoutVoltage(partSet, fileName):
    """A copy of ``partSet`` whose set and particle acquisitions have no voltage."""
    out = SetOfParticles(filename=fileName)
    out.copyInfo(partSet)
    out.getAcquisition().setVoltage(None)
    for part in partSet.iterItems():
        part.getAcquisition().setVoltage(None)
        out.append(part)
    out.write()
    return out
