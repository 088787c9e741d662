"""``make demo``: a headless Scipion workflow on generated particles, checked against the truth.

Generates the 10-view phantom (2000 particles, 64 px, SNR 0.3), then in a Scipion project under
``demo_output/ScipionUserData/projects/cryoralign_demo``: imports the particles (and, for the
reference-free alignment, which only makes sense on one view, the particles of view 1 as a second
stack), aligns view 1 reference-free, classifies all particles on 2 MPI ranks, and reads the results
back through the Scipion objects.  Writes ``summary.txt`` and the viewer's plots (PNG) to
``demo_output/`` and says how to reopen the project.
"""
import os
import time

import numpy as np

from . import scipion_env
from .engine import synthetic
from .engine.mrc import read_stack, write_stack

OUT = os.path.abspath("demo_output")
USER_DATA = os.path.join(OUT, "ScipionUserData")
PROJECT = "cryoralign_demo"
N_PARTICLES, BOX, N_CLASSES, SNR, SAMPLING = 2000, 64, 10, 0.3, 2.0
RFA_ITERATIONS, MRA_ITERATIONS, MPI = 6, 12, 2
PLOTS = {"rfa": ["displayGallery", "displayAngles", "displayConvergence"],
         "mra": ["displayGallery", "displaySizes", "displayScores", "displayAngles", "displayShifts",
                 "displayMirror", "displayConvergence", "displayEmbedding"]}


def make_data():
    """The phantom data set, plus view 1 alone as ``view1/particles.mrcs``; returns the truth."""
    data = os.path.join(OUT, "data")
    paths = synthetic.make_dataset(data, n_particles=N_PARTICLES, box=BOX, n_classes=N_CLASSES, snr=SNR,
                                   seed=0, source="phantom")
    classes, truth = synthetic.read_truth(paths["truth"])
    view1 = np.flatnonzero(classes == 0)
    os.makedirs(os.path.join(OUT, "view1"), exist_ok=True)
    write_stack(os.path.join(OUT, "view1", "particles.mrcs"), read_stack(paths["particles"])[view1],
                pixel_size=SAMPLING)
    return data, os.path.join(OUT, "view1"), classes, truth, view1


def rfa_consistency(params, truth):
    """Median angle deviation (deg) from the truth up to one common transform, and the fraction of
    particles whose mirror agrees with the majority."""
    angle, _, same_mirror = synthetic.register_errors(params, truth)
    return float(np.median(angle[same_mirror])), float(same_mirror.mean())


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
    """Import -> RFA (view 1) and MRA (all, 2 MPI ranks); returns the project, runs and seconds."""
    from pwem.protocols import ProtImportParticles
    from pyworkflow.project import Manager
    from .protocols import CryoralignProtAlign2D, CryoralignProtClassify2D

    manager = Manager()
    if manager.hasProject(PROJECT):
        manager.deleteProject(PROJECT)
    project = manager.createProject(PROJECT)
    os.chdir(project.getPath())   # pyworkflow resolves the run paths from the project dir

    def importStack(folder, label):
        prot = project.newProtocol(ProtImportParticles, objLabel=label, filesPath=folder,
                                   importFrom=ProtImportParticles.IMPORT_FROM_FILES,
                                   filesPattern="particles.mrcs", samplingRate=SAMPLING)
        launch(project, prot)
        return prot

    allParts = importStack(data, "import: all views")
    oneView = importStack(view1, "import: view 1")
    rfa = project.newProtocol(CryoralignProtAlign2D, objLabel="RFA of view 1", useGpu=False,
                              inputParticles=oneView.outputParticles, numberOfIterations=RFA_ITERATIONS)
    mra = project.newProtocol(CryoralignProtClassify2D, objLabel="MRA, %d MPI ranks" % MPI, useGpu=False,
                              inputParticles=allParts.outputParticles, numberOfClasses=N_CLASSES,
                              numberOfIterations=MRA_ITERATIONS, numberOfMpi=MPI)
    seconds = {"rfa": launch(project, rfa), "mra": launch(project, mra)}
    return project, rfa, mra, seconds


def summarize(rfa, mra, seconds, true_classes, truth, view1):
    """Summary lines, measured through the Scipion output objects."""
    _, params = engine_params(rfa.outputParticles)
    spread, mirror_ok = rfa_consistency(params, truth[view1])
    resolution = rfa.outputAverage._cryoralignResolution.get()
    lines = ["cryoralign demo: %d particles, %d px, %d views, SNR %g (outputs in %s)"
             % (N_PARTICLES, BOX, N_CLASSES, SNR, OUT),
             "%-34s %s" % ("reference-free alignment (1 view)",
                           "%d particles, %.1f s, median deviation %.2f deg, mirror consistent %.1f%%, "
                           "average %.1f A" % (len(view1), seconds["rfa"], spread, 100 * mirror_ok, resolution))]

    found = np.zeros(N_PARTICLES, np.int64)
    table, deviations, scores = [], [], []
    for cls in mra.outputClasses.iterItems(orderBy="id"):
        index, params = engine_params(cls)
        found[index] = cls.getObjId()
        majority = np.bincount(true_classes[index], minlength=N_CLASSES)
        deviation, _ = rfa_consistency(params, truth[index])
        deviations += [deviation] * len(index)
        scores.append(cls._cryoralignMeanScore.get())
        table.append("  class %2d  %4d particles  %5.1f A  score %.3f  view %2d (%.0f%%)  median "
                     "deviation %.2f deg" % (cls.getObjId(), cls.getSize(), cls._cryoralignResolution.get(),
                                             cls._cryoralignMeanScore.get(), majority.argmax() + 1,
                                             100.0 * majority.max() / len(index), deviation))
    lines.append("%-34s %s" % ("classification (%d MPI ranks)" % MPI,
                               "%.1f s, purity %.3f, mean score %.3f, median deviation %.2f deg"
                               % (seconds["mra"], synthetic.purity(found, true_classes), np.mean(scores),
                                  np.median(deviations))))
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
    data, view1_dir, true_classes, truth, view1 = make_data()
    project, rfa, mra, seconds = run_workflow(data, view1_dir)
    lines = summarize(rfa, mra, seconds, true_classes, truth, view1)
    with open(os.path.join(OUT, "summary.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plots = save_plots(project, {"rfa": rfa, "mra": mra})
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
