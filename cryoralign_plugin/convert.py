"""Scipion <-> cryoralign engine: the only module that knows both parameter conventions.

**Engine** (EMAN2/SPARX): ``(psi, sx, sy, mirror)`` maps a particle point ``v`` (pixels from the
center ``n//2``, ``x`` = column, ``y`` = row) to ``v' = M (R(psi) v + t)``, with
``R(psi) = [[cos, sin], [-sin, cos]]``, ``t = (sx, sy)`` and ``M = diag(-1, 1)`` when mirrored;
it brings the particle into register with its class average.

**Scipion** ``Transform`` of an ALIGN_2D set (as Xmipp converts and applies it): the 4x4 matrix
``[[A, 0, a], [0, 0, +-1, 0], [0, 0, 0, 1]]`` maps the same particle point to ``A v + a``
("shifts in pixels").  Xmipp reads it as ``psi_X = atan2(A01, A00)`` (so ``A = R(psi_X)``, and
``psi_Relion = -psi_X``), shifts ``a`` and, when ``det A < 0``, a mirror stored the Xmipp way (its flip):
row 0 of the rotation negated and ``M[2, 2] = -1`` (a 180 degree turn about y in 3D), the
translation left alone.  Xmipp applies ``v' = F R(psi_X) v + a``.

Both are the same affine point map, so the Scipion matrix *is* the engine matrix
``[[M R, M t]]``: ``psi_X = psi``, ``a = (-sx, sy)`` when mirrored, else ``(sx, sy)``.
``tests/test_convert.py`` checks this on images with xmippLib's own ``readApplyGeo``.
"""
import os
import shutil

import mrcfile
import numpy as np
from emtable import Table

from pwem.constants import ALIGN_2D, NO_INDEX
from pwem.emlib.image import ImageHandler
from pwem.objects import Float, Transform

from .constants import ATTR_PREFIX, TABLE_OPTICS, TABLE_PARTICLES
from .engine import outputs
from .engine.geometry import MIRROR, PSI, SX, SY, matrix_to_params, params_to_matrix

# Formats the engine reads directly (through mrcfile); anything else is converted.
MRC_EXTENSIONS = (".mrc", ".mrcs", ".st")

PRIOR_COLUMNS = ["rlnAnglePsi", "rlnOriginX", "rlnOriginY", "rlnIsFlip"]


# --- parameters <-> matrices ---------------------------------------------------------------

def matrixFromGeometry2D(psi, sx, sy, mirror):
    """Scipion 4x4 ALIGN_2D matrix of engine parameters (degrees, pixels, bool)."""
    m2 = params_to_matrix([[psi, sx, sy, float(bool(mirror))]])[0]
    matrix = np.eye(4)
    matrix[:2, :2] = m2[:2, :2]
    matrix[:2, 3] = m2[:2, 2]
    matrix[2, 2] = -1.0 if mirror else 1.0
    return matrix


def geometryFromMatrix2D(matrix):
    """Engine ``(psi, sx, sy, mirror)`` of a Scipion ALIGN_2D matrix; psi in [0, 360)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    m2 = np.eye(3)
    m2[:2, :2] = matrix[:2, :2]
    m2[:2, 2] = matrix[:2, 3]
    params = matrix_to_params(m2)[0]
    return params[PSI], params[SX], params[SY], bool(params[MIRROR])


def transformFromGeometry2D(psi, sx, sy, mirror):
    return Transform(matrixFromGeometry2D(psi, sx, sy, mirror))


# --- writing the engine input --------------------------------------------------------------

def splitFormat(fileName):
    """Drop a Scipion/Xmipp format suffix (``stack.mrc:mrcs`` -> ``stack.mrc``)."""
    head, sep, tail = fileName.rpartition(":")
    return head if sep and tail and "/" not in tail else fileName


class _StackLinker:
    """Makes every input stack readable by the engine from ``outDir`` without copying.

    MRC stacks are symlinked (``.mrc`` as ``.mrcs``, so they are read as stacks); particles in
    other formats are converted one by one into ``converted.mrcs``.
    """
    def __init__(self, outDir):
        self.outDir = outDir
        self._links = {}
        self._used = set()
        self._converted = 0
        self._ih = None

    def name(self, index, fileName):
        """``"NNNNNN@name"`` for the particle at ``(index, fileName)``, relative to outDir."""
        fileName = splitFormat(fileName)
        index = 1 if index == NO_INDEX else index
        if not fileName.lower().endswith(MRC_EXTENSIONS):
            return self._convert(index, fileName)
        if fileName not in self._links:
            self._links[fileName] = self._link(fileName)
        return "%06d@%s" % (index, self._links[fileName])

    def _link(self, fileName):
        base = os.path.basename(fileName)
        stem = os.path.splitext(base)[0]
        linkName, k = stem + ".mrcs", 1
        while linkName in self._used:
            k += 1
            linkName = "%s_%d.mrcs" % (stem, k)
        self._used.add(linkName)
        dest = os.path.join(self.outDir, linkName)
        if os.path.lexists(dest):
            os.remove(dest)
        os.symlink(os.path.relpath(os.path.abspath(fileName), os.path.abspath(self.outDir)), dest)
        return linkName

    def _convert(self, index, fileName):
        self._ih = self._ih or ImageHandler()
        self._converted += 1
        self._ih.convert((index, fileName),
                         (self._converted, os.path.join(self.outDir, "converted.mrcs")))
        return "%06d@converted.mrcs" % self._converted


# RELION 3.1 CTF columns: the microscope's per optics group, the CTF's per particle.
OPTICS_CTF_COLUMNS = ["rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
                      "rlnCtfDataArePhaseFlipped"]
CTF_COLUMNS = ["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]
# Stored on particles by the relion plugin's importer (PARTICLE_EXTRA_LABELS); passed on if present.
RELION_BFACTOR_ATTR = "_rlnCtfBfactor"


class _OpticsGroups:
    """One RELION optics group per distinct acquisition (voltage, Cs, amplitude contrast).

    A particle's acquisition values that are unset fall back to the set's.  Without ``withCtf``
    there is one group holding the image size and pixel size only, as before CTF support.
    """
    def __init__(self, partSet, withCtf):
        self.withCtf = withCtf
        self.default = _acquisitionValues(partSet.getAcquisition())
        self.phaseFlipped = int(bool(partSet.isPhaseFlipped()))
        self.pixelSize = float(partSet.getSamplingRate())
        self.box = int(partSet.getXDim())
        self.groups = {}    # acquisition values -> group number (1-based, in order of appearance)

    def number(self, particle):
        """The optics group of ``particle`` (1 without CTF)."""
        if not self.withCtf:
            return 1
        own = _acquisitionValues(particle.getAcquisition())
        key = tuple(v if v is not None else d for v, d in zip(own, self.default))
        if key not in self.groups:
            if None in key:
                raise ValueError(
                    "Particle %s has a CTF but its acquisition lacks the %s: set the microscope's "
                    "voltage (kV), spherical aberration (mm) and amplitude contrast of the input "
                    "particles (e.g. when importing them)." % (particle.getObjId(), ", ".join(
                        n for n, v in zip(("voltage", "spherical aberration",
                                           "amplitude contrast"), key) if v is None)))
            self.groups[key] = len(self.groups) + 1
        return self.groups[key]

    def write(self, f):
        columns = ["rlnOpticsGroup", "rlnImageSize", "rlnImagePixelSize"]
        if self.withCtf:
            columns += OPTICS_CTF_COLUMNS
        optics = Table(columns=columns)
        groups = sorted(self.groups.items(), key=lambda kv: kv[1]) if self.withCtf else [(None, 1)]
        for key, number in groups:
            row = [number, self.box, self.pixelSize]
            if self.withCtf:
                row += [float(v) for v in key] + [self.phaseFlipped]
            optics.addRow(*row)
        optics.writeStar(f, tableName=TABLE_OPTICS)


def _acquisitionValues(acquisition):
    if acquisition is None:
        return (None, None, None)
    return (acquisition.getVoltage(), acquisition.getSphericalAberration(),
            acquisition.getAmplitudeContrast())


def _ctfColumns(firstPart):
    """The per-particle CTF columns for a set whose first particle is ``firstPart``."""
    columns = ["rlnOpticsGroup"] + CTF_COLUMNS
    if firstPart is not None and firstPart.getCTF().hasPhaseShift():
        columns.append("rlnPhaseShift")
    if firstPart is not None and firstPart.hasAttribute(RELION_BFACTOR_ATTR):
        columns.append("rlnCtfBfactor")
    return columns


def _ctfValues(part, columns, optics):
    ctf = part.getCTF()
    if ctf is None or ctf.getDefocusU() is None:
        raise ValueError("Particle %s has no CTF although its set says it has: re-run the CTF "
                         "assignment, or use CTF correction None." % part.getObjId())
    row = [optics.number(part), float(ctf.getDefocusU()), float(ctf.getDefocusV()),
           float(ctf.getDefocusAngle())]
    if "rlnPhaseShift" in columns:
        row.append(float(ctf.getPhaseShift() or 0.0))
    if "rlnCtfBfactor" in columns:
        row.append(float(part.getAttributeValue(RELION_BFACTOR_ATTR, 0.0) or 0.0))
    return row


def writeSetOfParticles(partSet, starFile, usePrior=False, writeCtf=True, lastId=None):
    """Write the engine input STAR for the enabled particles of ``partSet``, in id order (those up to
    ``lastId`` if given: a set growing in streaming, whose new particles have larger ids).

    ``rlnImageId`` is the Scipion object id (the key used to read results back).  Stacks are
    linked next to ``starFile``.  With ``usePrior``, the set's 2D alignment is written in the
    engine convention as the starting parameters.  When the set has a CTF (and ``writeCtf``),
    each particle's CTF and the set's acquisition are written as RELION 3.1 columns: one
    ``data_optics`` group per distinct acquisition (``rlnVoltage``, ``rlnSphericalAberration``,
    ``rlnAmplitudeContrast``, ``rlnCtfDataArePhaseFlipped`` from ``isPhaseFlipped()``) and per
    particle ``rlnOpticsGroup``, ``rlnDefocusU/V`` (A), ``rlnDefocusAngle`` and, if the CTFs have
    one, ``rlnPhaseShift`` (deg).  Returns the number of particles written.
    """
    if usePrior and partSet.getAlignment() != ALIGN_2D:
        raise ValueError("The input particles have alignment %s, not 2D: a prior alignment can only "
                         "come from a set with 2D alignment." % partSet.getAlignment())
    outDir = os.path.dirname(os.path.abspath(starFile))
    os.makedirs(outDir, exist_ok=True)
    linker = _StackLinker(outDir)
    withCtf = bool(writeCtf and partSet.hasCTF())
    optics = _OpticsGroups(partSet, withCtf)
    ctfColumns = _ctfColumns(partSet.getFirstItem()) if withCtf else []
    columns = ["rlnImageId", "rlnImageName"] + (PRIOR_COLUMNS if usePrior else []) + ctfColumns
    count = 0
    tmp = starFile + ".tmp"
    # The particles go first to a scratch file: the optics groups are known only after them.
    with open(tmp + ".particles", "w+") as body:
        writer = Table.Writer(body)
        writer.writeTableName(TABLE_PARTICLES)
        writer.writeHeader([Table.Column(c) for c in columns])
        for part in partSet.iterItems(orderBy="id", direction="ASC",
                                      where=None if lastId is None else "id<=%d" % lastId):
            if not part.isEnabled():
                continue
            index, fileName = part.getLocation()
            row = [int(part.getObjId()), linker.name(index, fileName)]
            if usePrior:
                psi, sx, sy, mirror = geometryFromMatrix2D(_matrixOf(part))
                row += [float(psi), float(sx), float(sy), int(mirror)]
            if withCtf:
                row += _ctfValues(part, ctfColumns, optics)
            writer.writeRowValues(row)
            count += 1
        writer.writeNewline()
        body.seek(0)
        with open(tmp, "w") as f:
            optics.write(f)
            shutil.copyfileobj(body, f)
    os.remove(tmp + ".particles")
    os.replace(tmp, starFile)
    return count


def _matrixOf(particle):
    transform = particle.getTransform()
    return np.eye(4) if transform is None else transform.getMatrix()


def writeReferences(refSet, stackFile):
    """Write initial references into one MRC stack.

    ``refSet`` may be a SetOfClasses2D (its representatives), a SetOfAverages or a
    SetOfParticles.  Returns the number of references written.
    """
    images = _referenceImages(refSet)
    ih = ImageHandler()
    data = [np.asarray(ih.read(img).getData(), dtype=np.float32) for img in images]
    if not data:
        raise ValueError("The reference set %s has no images." % refSet.getNameId())
    stack = np.stack([d.reshape(d.shape[-2:]) for d in data])
    with mrcfile.new(stackFile, overwrite=True) as mrc:
        mrc.set_data(stack)
        mrc.set_image_stack()
        mrc.voxel_size = refSet.getSamplingRate() or 1.0
    return len(stack)


def _referenceImages(refSet):
    if hasattr(refSet, "iterRepresentatives"):
        return [rep.clone() for rep in refSet.iterRepresentatives()]
    return [img.clone() for img in refSet.iterItems(orderBy="id") if img.isEnabled()]


def referenceCount(refSet):
    """How many references ``writeReferences`` would write (cheap: no image is read)."""
    if hasattr(refSet, "iterRepresentatives"):
        return sum(1 for _ in refSet.iterRepresentatives())
    return refSet.getSize()


def referenceDim(refSet):
    """``(x, y)`` size of the reference images, or None if unknown."""
    dim = refSet.getDimensions() if hasattr(refSet, "iterRepresentatives") else refSet.getDim()
    return None if dim is None else tuple(dim[:2])


# --- reading the engine output -------------------------------------------------------------

class EngineParticles:
    """Per-particle engine results, looked up by Scipion object id (= ``rlnImageId``).

    Kept as arrays (not rows) so a million particles cost tens of MB, and looked up by id so
    disabled or reordered items can never shift results onto the wrong particle.
    """
    def __init__(self, starFile):
        found = outputs.read_particles(os.path.dirname(starFile))
        order = np.argsort(found.ids, kind="stable")
        self.ids = found.ids[order]
        self.classes = found.classes[order] + 1      # Scipion class ids are the engine's numbers
        self.params = found.params[order]
        self.scores = found.scores[order]
        self.starFile = starFile

    def __len__(self):
        return len(self.ids)

    def index(self, objId):
        i = int(np.searchsorted(self.ids, objId))
        if i == len(self.ids) or self.ids[i] != objId:
            raise KeyError("Particle %s is missing from the engine output %s: the run is "
                           "incomplete or was made from another input." % (objId, self.starFile))
        return i

    def updateParticle(self, particle, withClass=False):
        """Set the particle's 2D alignment, score and (``withClass``) class from its row."""
        i = self.index(particle.getObjId())
        psi, sx, sy, mirror = self.params[i]
        particle.setTransform(transformFromGeometry2D(psi, sx, sy, mirror > 0.5))
        setattr(particle, ATTR_PREFIX + "Score", Float(self.scores[i]))
        if withClass:
            particle.setClassId(int(self.classes[i]))


def readEngineClasses(outDir):
    """``{classNumber: outputs.ClassResult}`` from ``classes.star``; stack paths joined to ``outDir``."""
    return {c.number: c for c in outputs.read_classes(outDir)}


def updateClass2D(classItem, engineClass, samplingRate):
    """Representative average, 2D alignment flag and per-class extras of one class."""
    classItem.setAlignment2D()
    rep = classItem.getRepresentative()
    rep.setLocation(engineClass.index, engineClass.stack)
    rep.setSamplingRate(samplingRate)
    setattr(classItem, ATTR_PREFIX + "Distribution", Float(engineClass.distribution))
    setattr(classItem, ATTR_PREFIX + "Resolution", Float(engineClass.resolution))
    setattr(classItem, ATTR_PREFIX + "MeanScore", Float(engineClass.score))
