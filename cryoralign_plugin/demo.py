"""``make demo``: a headless Scipion workflow on generated particles, checked against the truth.

Generates the 10-view phantom (2000 particles, 64 px at 2.5 A/px, SNR 0.3), each particle
modulated by its own CTF (300 kV, Cs 2.7 mm, amplitude contrast 0.1, defocus 0.8-3 um), written as a
RELION 3.1 STAR with optics table and CTF columns.  Then in a Scipion project under
``demo_output/ScipionUserData/projects/cryoralign_demo``: imports the particles with pwem's RELION
importer (the ``scipion-em-relion`` plugin), so that the set carries each particle's CTF (and, for
the reference-free alignment, which only makes sense on one view, the particles of view 1 as a
second STAR and stack), aligns view 1 reference-free, classifies all particles on 2 MPI ranks (CTF
correction Automatic in both, i.e. Wiener since the input has a CTF), and reads the results back
through the Scipion objects.  The summary compares them with the truth: the alignment error, the
purity and, after registering each class average onto its majority's true (CTF-free) view, their
FRC-0.5 resolution and normalised correlation.  Last, a short streaming run: pwem's
ProtCreateStreamData publishes a second, CTF-free set (600 particles of 6 views) in groups of 100
every 8 s while the streaming classification places each batch; the summary lists when each update
of the classes appeared, the purity at the end and the time from the last particle's arrival to the
final classes.  Writes ``summary.txt`` and the viewer's plots (PNG) to ``demo_output/`` and says how
to reopen the project.
"""
import os
import time

import numpy as np

from . import scipion_env
from .engine import synthetic
from .engine.images import circular_mask, fourier_shift, frc, transform
from .engine.mrc import read_stack, write_stack
from .engine.star import read_star, write_star

OUT = os.path.abspath("demo_output")
USER_DATA = os.path.join(OUT, "ScipionUserData")
PROJECT = "cryoralign_demo"
N_PARTICLES, BOX, N_CLASSES, SNR = 2000, 64, 10, 0.3
VOLTAGE, CS, Q0 = 300.0, 2.7, 0.1
# 2.5 A/px: at 3 um and 300 kV a 64 px box (CTF applied padded x2) stays clear of CTF aliasing
# (lambda * defocus < 2 * box * pixel^2, see synthetic.CtfSimulation); 2.0 A/px would alias.
SAMPLING = 2.5
CTF = synthetic.CtfSimulation(defocus_range=(0.8, 3.0), voltage=VOLTAGE, cs=CS, amplitude_contrast=Q0,
                              pixel_size=SAMPLING)
RFA_ITERATIONS, MRA_ITERATIONS, MPI = 6, 12, 2
# The streaming run: a CTF-free set published in groups (ProtCreateStreamData), classified as it comes.
STREAM = dict(n_particles=600, box=BOX, n_classes=6, snr=0.5, seed=1)
STREAM_GROUP, STREAM_INTERVAL, STREAM_FIRST, STREAM_ITERATIONS = 100, 8, 200, 10
PLOTS = {"stream": ["displayGallery", "displayConvergence"],
         "rfa": ["displayGallery", "displayAngles", "displayConvergence"],
         "mra": ["displayGallery", "displaySizes", "displayScores", "displayAngles", "displayShifts",
                 "displayMirror", "displayConvergence", "displayEmbedding"]}


def make_data():
    """The CTF phantom data set (``data/particles.star``), plus view 1 alone as
    ``view1/particles.star`` + ``.mrcs`` (same optics, its particles renumbered 1..n); returns the
    two STAR files, the truth and the clean views."""
    data = os.path.join(OUT, "data")
    paths = synthetic.make_dataset(data, n_particles=N_PARTICLES, box=BOX, n_classes=N_CLASSES, snr=SNR,
                                   seed=0, source="phantom", ctf=CTF)
    classes, truth = synthetic.read_truth(paths["truth"])
    view1 = np.flatnonzero(classes == 0)
    folder = os.path.join(OUT, "view1")
    os.makedirs(folder, exist_ok=True)
    write_stack(os.path.join(folder, "particles.mrcs"), read_stack(paths["particles"])[view1],
                pixel_size=SAMPLING)
    tables = {}
    for name in ("optics", "particles"):
        table = read_star(paths["particles_star"], name)
        tables[name] = (table.getColumnNames(), [tuple(row) for row in table])
    columns, rows = tables["particles"]
    byId = {int(row[columns.index("rlnImageId")]): row for row in rows}
    rename = {"rlnImageId": lambda j: j, "rlnImageName": lambda j: "%06d@particles.mrcs" % j}
    tables["particles"] = (columns, [tuple(rename[c](j) if c in rename else v
                                           for c, v in zip(columns, byId[i + 1]))
                                     for j, i in enumerate(view1, 1)])
    write_star(os.path.join(folder, "particles.star"), tables)
    views = read_stack(paths["references"])
    return (paths["particles_star"], os.path.join(folder, "particles.star"), classes, truth, view1,
            views)


def rfa_consistency(params, truth):
    """Median angle deviation (deg) from the truth up to one common transform, and the fraction of
    particles whose mirror agrees with the majority."""
    angle, _, same_mirror = synthetic.register_errors(params, truth)
    return float(np.median(angle[same_mirror])), float(same_mirror.mean())


def register(average, view):
    """``view`` rotated, mirrored and shifted to match ``average`` best: a scan of 2 degree steps
    with both mirrors, then 0.25 degree steps around the best, each with the cross-correlation's
    best integer shift refined to 0.1 px."""
    box = average.shape[-1]
    target = np.fft.rfft2(average)

    def best_of(angles, mirror):
        params = np.column_stack([angles, np.zeros((len(angles), 2)), np.full(len(angles), mirror)])
        moved = transform(np.repeat(view[None], len(angles), axis=0), params)
        corr = np.fft.irfft2(target[None] * np.conj(np.fft.rfft2(moved)), s=(box, box))
        i = np.unravel_index(np.argmax(corr), corr.shape)
        return corr[i], angles[i[0]], [(v + box // 2) % box - box // 2 for v in i[1:]], moved[i[0]]

    coarse = max((best_of(np.arange(0.0, 360.0, 2.0), m) + (m,) for m in (0, 1)), key=lambda r: r[0])
    _, angle, _, _, mirror = coarse
    _, _, (dy, dx), moved = best_of(angle + np.arange(-2.0, 2.01, 0.25), mirror)
    steps = np.arange(-0.5, 0.51, 0.1)
    candidates = [fourier_shift(moved, dx + sx, dy + sy) for sx in steps for sy in steps]
    return max(candidates, key=lambda c: float(np.vdot(c, average)))


def compare_to_view(average, view):
    """``(resolution A, normalised correlation)`` of a class average with a true view registered
    onto it: the first ring where their FRC drops below 0.5 (Nyquist if it never does; against the
    truth, so no half-set correction), and the correlation inside the particle's disc."""
    moved = register(average, view)
    curve = frc(average, moved)
    below = np.flatnonzero(curve[1:] < 0.5)
    frequency = 0.5 if below.size == 0 else (below[0] + 1) / BOX
    inside = circular_mask(BOX, BOX // 2 - 2)
    a, b = average[inside] - average[inside].mean(), moved[inside] - moved[inside].mean()
    return SAMPLING / frequency, float(a @ b / np.sqrt((a @ a) * (b @ b)))


def read_average(image):
    """The pixels of a Scipion image (a class representative, an average) as a 2D float array."""
    index, fn = image.getLocation()
    return read_stack(fn)[max(index, 1) - 1].astype(np.float64)


def engine_params(particles):
    """``(stack indices 0-based, engine params (N, 4))`` of a set of 2D-aligned Scipion particles."""
    from .convert import geometryFromMatrix2D
    rows = [(p.getIndex() - 1, geometryFromMatrix2D(p.getTransform().getMatrix())) for p in particles]
    return np.array([r[0] for r in rows]), np.array([r[1] for r in rows], dtype=np.float64)


def launch(project, prot):
    start = time.perf_counter()
    project.launchProtocol(prot, wait=True)
    if not prot.isFinished():
        raise RuntimeError("%s failed: %s (log: %s)" % (prot.getRunName(), prot.getErrorMessage(),
                                                         prot.getStdoutLog()))
    return time.perf_counter() - start


def run_workflow(data, view1):
    """Import (RELION STAR files, with CTF) -> RFA (view 1) and MRA (all, 2 MPI ranks), both with
    CTF correction Automatic (their default); returns the project, runs and seconds."""
    from pwem.protocols import ProtImportParticles
    from pyworkflow.project import Manager
    from .protocols import CryoralignProtAlign2D, CryoralignProtClassify2D

    manager = Manager()
    if manager.hasProject(PROJECT):
        manager.deleteProject(PROJECT)
    project = manager.createProject(PROJECT)
    os.chdir(project.getPath())   # pyworkflow resolves the run paths from the project dir

    def importStar(starFile, label):
        """The relion plugin's importer: particles with their CTFModel and the acquisition."""
        prot = project.newProtocol(ProtImportParticles, objLabel=label, starFile=starFile,
                                   importFrom=ProtImportParticles.IMPORT_FROM_RELION,
                                   samplingRate=SAMPLING, voltage=VOLTAGE, sphericalAberration=CS,
                                   amplitudeContrast=Q0, magnification=10000)
        launch(project, prot)
        if not prot.outputParticles.hasCTF():
            raise RuntimeError("%s: the imported particles have no CTF" % label)
        return prot

    allParts = importStar(data, "import: all views")
    oneView = importStar(view1, "import: view 1")
    rfa = project.newProtocol(CryoralignProtAlign2D, objLabel="RFA of view 1", useGpu=False,
                              inputParticles=oneView.outputParticles, numberOfIterations=RFA_ITERATIONS)
    mra = project.newProtocol(CryoralignProtClassify2D, objLabel="MRA, %d MPI ranks" % MPI, useGpu=False,
                              inputParticles=allParts.outputParticles, numberOfClasses=N_CLASSES,
                              numberOfIterations=MRA_ITERATIONS, numberOfMpi=MPI)
    seconds = {"rfa": launch(project, rfa), "mra": launch(project, mra)}
    return project, rfa, mra, seconds


def run_stream(project):
    """The streaming run; returns it and summary lines (each update of its classes as it appeared)."""
    from pwem.objects import SetOfParticles
    from pwem.protocols import ProtCreateStreamData, ProtImportParticles
    from pwem.protocols.protocol_create_stream_data import SET_OF_PARTICLES
    from pyworkflow.protocol import getProtocolFromDb
    from .protocols import CryoralignProtStream2D

    paths = synthetic.make_dataset(os.path.join(OUT, "stream"), source="phantom", **STREAM)
    true_classes = synthetic.read_truth(paths["truth"])[0]
    imp = project.newProtocol(ProtImportParticles, objLabel="import: streaming set",
                              importFrom=ProtImportParticles.IMPORT_FROM_FILES,
                              filesPath=os.path.dirname(paths["particles"]), filesPattern="particles.mrcs",
                              samplingRate=SAMPLING)
    launch(project, imp)
    creator = project.newProtocol(ProtCreateStreamData, objLabel="stream of particles", setof=SET_OF_PARTICLES,
                                  nDim=STREAM["n_particles"], groups=STREAM_GROUP,
                                  creationInterval=STREAM_INTERVAL, inputParticles=imp.outputParticles)
    project.launchProtocol(creator, wait=False)

    def fresh(prot):
        return getProtocolFromDb(project.path, prot.getDbPath(), prot.getObjId())

    while not fresh(creator).hasAttribute("outputParticles"):
        time.sleep(1)
    project._updateProtocol(creator)
    creator = project.getProtocol(creator.getObjId())
    stream = project.newProtocol(CryoralignProtStream2D, objLabel="streaming classification", useGpu=False,
                                 inputParticles=creator.outputParticles, numberOfClasses=STREAM["n_classes"],
                                 numberOfIterations=STREAM_ITERATIONS, firstBatchSize=STREAM_FIRST,
                                 streamBatchSize=STREAM_GROUP)
    start = time.perf_counter()
    project.launchProtocol(stream, wait=False)
    lines, seen, arrived = [], None, None
    while True:
        current = fresh(stream)
        if arrived is None and fresh(creator).isFinished():
            arrived = time.perf_counter()
        if current.hasAttribute("outputParticles") and current.outputParticles.getSize() != seen:
            seen = current.outputParticles.getSize()
            inputs = SetOfParticles(filename=creator.outputParticles.getFileName())
            lines.append("  at %5.1f s: %3d particles in %2d classes (%d arrived)"
                         % (time.perf_counter() - start, seen, current.outputClasses.getSize(), inputs.getSize()))
            inputs.close()
        if current.isFinished() or current.isFailed():
            break
        time.sleep(0.5)
    if not current.isFinished():
        raise RuntimeError("%s failed: %s" % (current.getRunName(), current.getErrorMessage()))
    done = time.perf_counter()
    found = np.zeros(STREAM["n_particles"], np.int64)
    for cls in current.outputClasses.iterItems():   # ProtCreateStreamData names particle i "particle_%05d"
        for p in cls:
            found[int(os.path.basename(p.getFileName()).split("_")[-1])] = cls.getObjId()
    return current, [
        "%-34s %s" % ("streaming classification",
                      "%d particles (%d views, SNR %g) in groups of %d every %d s: first batch %d, purity "
                      "%.3f, %.1f s from the last particle's arrival to the final classes"
                      % (STREAM["n_particles"], STREAM["n_classes"], STREAM["snr"], STREAM_GROUP,
                         STREAM_INTERVAL, STREAM_FIRST, synthetic.purity(found, true_classes), done - arrived)),
        "classes published while the particles arrived:"] + lines


def summarize(rfa, mra, seconds, true_classes, truth, view1, views):
    """Summary lines, measured through the Scipion output objects."""
    index, params = engine_params(rfa.outputParticles)
    spread, mirror_ok = rfa_consistency(params, truth[view1][index])
    resolution = rfa.outputAverage._cryoralignResolution.get()
    rfa_true, rfa_corr = compare_to_view(read_average(rfa.outputAverage), views[0])
    lo, hi = CTF.defocus_range
    lines = ["cryoralign demo: %d particles, %d px at %g A/px, %d views, SNR %g, CTF %g kV, Cs %g mm, "
             "Q0 %g, defocus %g-%g um (outputs in %s)"
             % (N_PARTICLES, BOX, SAMPLING, N_CLASSES, SNR, VOLTAGE, CS, Q0, lo, hi, OUT),
             "%-34s %s" % ("reference-free alignment (1 view)",
                           "%d particles, %.1f s, median deviation %.2f deg, mirror consistent %.1f%%, "
                           "average %.1f A (half sets), %.1f A / corr %.3f vs view 1"
                           % (len(view1), seconds["rfa"], spread, 100 * mirror_ok, resolution, rfa_true,
                              rfa_corr)),
             "%-34s %s" % ("", rfa._ctfSentence())]

    found = np.zeros(N_PARTICLES, np.int64)
    table, deviations, scores, true_res, true_corr = [], [], [], [], []
    for cls in mra.outputClasses.iterItems(orderBy="id"):
        index, params = engine_params(cls)
        found[index] = cls.getObjId()
        majority = np.bincount(true_classes[index], minlength=N_CLASSES)
        deviation, _ = rfa_consistency(params, truth[index])
        deviations += [deviation] * len(index)
        scores.append(cls._cryoralignMeanScore.get())
        res, corr = compare_to_view(read_average(cls.getRepresentative()), views[majority.argmax()])
        true_res.append(res)
        true_corr.append(corr)
        table.append("  class %2d  %4d particles  %5.1f A  score %.3f  view %2d (%.0f%%)  median "
                     "deviation %.2f deg  vs view %5.1f A, corr %.3f"
                     % (cls.getObjId(), cls.getSize(), cls._cryoralignResolution.get(),
                        cls._cryoralignMeanScore.get(), majority.argmax() + 1,
                        100.0 * majority.max() / len(index), deviation, res, corr))
    lines.append("%-34s %s" % ("classification (%d MPI ranks)" % MPI,
                               "%.1f s, purity %.3f, mean score %.3f, median deviation %.2f deg"
                               % (seconds["mra"], synthetic.purity(found, true_classes), np.mean(scores),
                                  np.median(deviations))))
    lines.append("%-34s %s" % ("", mra._ctfSentence()))
    lines.append("%-34s %s" % ("class averages vs true views",
                               "median FRC-0.5 resolution %.1f A, median normalised correlation %.3f "
                               "(each average against its majority's CTF-free view, registered)"
                               % (np.median(true_res), np.median(true_corr))))
    lines.append("%-34s %s" % ("class sizes", " ".join(str(c.getSize())
                                                        for c in mra.outputClasses.iterItems(orderBy="id"))))
    return lines + ["classes (from the Scipion set):"] + table


def save_plots(project, runs):
    """The viewer's plots of each run as ``<run>_<plot>.png`` in OUT; returns their paths."""
    from .viewers import CryoralignViewer
    paths = []
    for key, prot in runs.items():
        viewer = CryoralignViewer(project=project, protocol=prot)
        viewer.setProtocol(prot)
        for name in PLOTS[key]:
            plotter, = viewer._getVisualizeDict()[name](name)
            paths.append(os.path.join(OUT, "%s_%s.png" % (key, name[len("display"):].lower())))
            plotter.savefig(paths[-1], dpi=110)
            plotter.close()
    return paths


def main():
    scipion_env.setup(user_data=USER_DATA)
    data, view1_star, true_classes, truth, view1, views = make_data()
    project, rfa, mra, seconds = run_workflow(data, view1_star)
    stream, stream_lines = run_stream(project)
    lines = summarize(rfa, mra, seconds, true_classes, truth, view1, views) + stream_lines
    with open(os.path.join(OUT, "summary.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plots = save_plots(project, {"rfa": rfa, "mra": mra, "stream": stream})
    print("\n" + "\n".join(lines))
    print("\nwritten: %s" % os.path.join(OUT, "summary.txt"))
    for path in plots:
        print("         %s" % path)
    print("\nScipion project: %s\nreopen it from Python (.venv/bin/python):\n"
          "    from cryoralign_plugin import scipion_env; scipion_env.setup(user_data=%r)\n"
          "    from pyworkflow.project import Manager\n"
          "    project = Manager().loadProject(%r)   # project.getRuns(), ...outputClasses\n"
          "or in the Scipion GUI: SCIPION_USER_DATA=%s scipion3 project %s"
          % (project.getPath(), USER_DATA, PROJECT, USER_DATA, PROJECT))


if __name__ == "__main__":
    main()
