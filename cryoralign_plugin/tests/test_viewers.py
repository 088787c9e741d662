"""Viewer tests, headless: the figure builders on arrays, and CryoralignViewer on finished RFA, MRA
and continued MRA runs (every handler called, every figure saved as PNG, never shown)."""
import os
import shutil
import tempfile
import unittest

import numpy as np

from pwem import Domain
from pwem.viewers import ClassesView, ObjectView
from pyworkflow.tests import BaseTest, setupTestProject
from pyworkflow.viewer import DESKTOP_TKINTER

from cryoralign_plugin.protocols import CryoralignProtAlign2D, CryoralignProtClassify2D
from cryoralign_plugin.tests.test_protocols import N_PARTICLES, importParticles, slow
from cryoralign_plugin.viewers import CryoralignViewer, embedding, plots

N_CLASSES, ITERATIONS, MORE_ITERATIONS = 3, 3, 5


# --- what a figure shows -------------------------------------------------------------------

def imagePanels(fig):
    return [ax for ax in fig.axes if ax.images]


def barHeights(ax):
    return [p.get_height() for p in ax.patches]


def scatterCounts(ax):
    """Points per labelled scatter (the classes); unlabelled ones are the averages' stars."""
    return {c.get_label(): len(c.get_offsets()) for c in ax.collections
            if not c.get_label().startswith("_")}


def histogram2dTotal(ax):
    return float(np.asarray(ax.collections[0].get_array()).sum())


class FigureChecks:
    """Assertions shared by the array tests and the viewer tests."""

    def assertLabels(self, ax, xlabel, ylabel):
        self.assertEqual(ax.get_xlabel(), xlabel)
        self.assertEqual(ax.get_ylabel(), ylabel)

    def assertGallery(self, fig, classIds, sizes):
        panels = imagePanels(fig)
        self.assertEqual(len(panels), len(classIds))
        for ax, cid, size in zip(panels, classIds, sizes):
            self.assertIn("class %d\n%d ptcls" % (cid, size), ax.get_title())

    def assertAngleHistogram(self, fig, nParticles, bins):
        ax = fig.axes[0]
        self.assertLabels(ax, "in-plane angle psi (deg)", "particles")
        self.assertEqual(len(ax.patches), bins)
        self.assertEqual(sum(barHeights(ax)), nParticles)

    def assertShiftHistogram(self, fig, nParticles):
        ax = fig.axes[0]
        self.assertLabels(ax, "x shift (px)", "y shift (px)")
        self.assertEqual(histogram2dTotal(ax), nParticles)

    def assertClassBars(self, fig, classIds, ylabel):
        ax = fig.axes[0]
        self.assertLabels(ax, "class", ylabel)
        self.assertEqual(len(ax.patches), len(classIds))
        self.assertEqual([t.get_text() for t in ax.get_xticklabels()], [str(c) for c in classIds])
        return barHeights(ax)

    def assertConvergence(self, fig, iterations):
        self.assertEqual(len(fig.axes), 8)
        for ax in fig.axes:
            self.assertEqual(ax.get_xlabel(), "iteration")
            lo, hi = ax.get_xlim()
            self.assertTrue(lo < 1 and hi > iterations, (lo, hi))
            self.assertEqual(list(ax.lines[0].get_xdata()), list(range(1, iterations + 1)))

    def assertEmbedding(self, fig, classCounts, method="PCA"):
        ax = fig.axes[0]
        self.assertLabels(ax, "%s 1" % method, "%s 2" % method)
        self.assertEqual(scatterCounts(ax), {"class %d (%d)" % (c, n): n for c, n in classCounts.items()})
        self.assertEqual(len(ax.collections) - len(classCounts), len(classCounts))   # one star each


class TestPlots(FigureChecks, unittest.TestCase):
    """The builders on plain arrays, without Scipion."""

    @classmethod
    def setUpClass(cls):
        rng = np.random.default_rng(0)
        cls.n, cls.ids = 500, np.array([2, 5, 7])
        cls.classes = rng.choice(cls.ids, cls.n)
        cls.params = np.column_stack([rng.uniform(0, 360, cls.n), rng.normal(0, 1.5, (cls.n, 2)),
                                      rng.integers(0, 2, cls.n)])
        cls.scores = rng.uniform(0.2, 0.9, cls.n)
        cls.out = tempfile.mkdtemp(prefix="cryoralign-plots-")

    def save(self, fig, name):
        path = os.path.join(self.out, name + ".png")
        fig.savefig(path)
        self.assertGreater(os.path.getsize(path), 1000)

    def test_gallery(self):
        sizes = [np.sum(self.classes == c) for c in self.ids]
        fig = plots.gallery(np.random.rand(3, 32, 32), self.ids, sizes, [8.1, 9.5, 12.0])
        self.assertGallery(fig, self.ids, sizes)
        self.save(fig, "gallery")

    def test_histograms(self):
        fig = plots.angle_histogram(self.params[:, 0] - 360, bins=24)   # folded into [0, 360)
        self.assertAngleHistogram(fig, self.n, 24)
        self.save(fig, "angles")
        fig = plots.shift_histogram(self.params[:, 1], self.params[:, 2], bins=9)
        self.assertShiftHistogram(fig, self.n)
        self.save(fig, "shifts")

    def test_classBars(self):
        sizes = [np.sum(self.classes == c) for c in self.ids]
        self.assertEqual(self.assertClassBars(plots.class_sizes(self.ids, sizes), self.ids, "particles"),
                         sizes)
        fig = plots.mirror_fraction(self.params[:, 3] > 0.5, self.classes, self.ids)
        fractions = self.assertClassBars(fig, self.ids, "mirrored fraction")
        self.assertAlmostEqual(fractions[1], np.mean(self.params[self.classes == 5, 3]))
        fig = plots.scores_per_class(self.scores, self.classes, self.ids)
        self.assertLabels(fig.axes[0], "class", "correlation score")
        self.assertEqual(len(fig.axes[0].patches), len(self.ids))   # one box per class
        self.save(fig, "scores")

    def test_convergence(self):
        classes = [6, 6, 2, 4, 2, 2, 2]   # over-clustered, merged, re-split, merged back
        history = [dict(iteration=i, mean_score=0.1 * i, mean_margin=0.01 * i, class_changes=1.0 / i,
                        mean_angle_change=9.0 / i, mean_shift_change=1.0 / i, particles_per_second=100.0,
                        resolution_px=[8.0, 6.0], class_sizes=[5] * classes[i - 1],
                        reseeded=[{"class": 1}] if i == 2 else []) for i in range(1, 8)]
        fig = plots.convergence(history)
        self.assertConvergence(fig, 7)
        panels = {ax.get_ylabel(): ax for ax in fig.axes}
        np.testing.assert_allclose(panels["mean assignment margin"].lines[0].get_ydata(),
                                   [0.01 * i for i in range(1, 8)])
        self.assertEqual(list(panels["classes"].lines[0].get_ydata()), classes)
        self.assertEqual([line.get_xdata()[0] for line in panels["class changes (%)"].lines[1:]], [2])
        self.save(fig, "convergence")

    def test_convergenceOfAGrowingRun(self):
        """The batches of a streaming run: every other one shaded, each labelled with its particles,
        and the class seeded in batch 2 marked."""
        batches = [(1, 100)] * 4 + [(2, 150), (3, 200), (4, 250), (4, 250), (4, 250)]
        history = [dict(iteration=i, mean_score=0.5, class_changes=0.1, mean_angle_change=1.0,
                        mean_shift_change=0.1, particles_per_second=100.0, resolution_px=[8.0],
                        reseeded=[], batch=b, batch_particles=n, new_class=4 if i == 5 else None)
                   for i, (b, n) in enumerate(batches, 1)]
        self.assertEqual(plots.batch_spans(history), [(1, 100, 1, 4), (2, 150, 5, 5), (3, 200, 6, 6),
                                                      (4, 250, 7, 9)])
        fig = plots.convergence(history)
        self.assertConvergence(fig, 9)
        shaded = [tuple(np.unique(p.get_xy()[:, 0])) for p in fig.axes[0].patches]
        self.assertEqual(shaded, [(0.5, 4.5), (5.5, 6.5)])   # batches 1 and 3
        self.assertEqual([t.get_text() for t in fig.axes[0].texts],
                         ["batch %d: %d" % b for b in ((1, 100), (2, 150), (3, 200), (4, 250))])
        changes = {ax.get_ylabel(): ax for ax in fig.axes}["class changes (%)"]
        self.assertEqual([line.get_xdata()[0] for line in changes.lines[1:]], [5])
        self.save(fig, "convergence_batches")

    def test_embedding(self):
        """Two image classes separate in the PCA, and each average sits amid its particles."""
        rng = np.random.default_rng(1)
        box, radius = 32, 12
        references = np.zeros((2, box, box), np.float32)
        references[0, 8:24, 12:20] = 1.0
        references[1, 12:20, 8:24] = 1.0
        classes = rng.integers(0, 2, 200)
        images = references[classes] + rng.normal(0, 0.5, (200, box, box)).astype(np.float32)
        vectors = embedding.aligned_vectors(images, np.zeros((200, 4)), radius)
        averages = np.array([vectors[classes == k].mean(axis=0) for k in (0, 1)])
        points, stars = embedding.embed(vectors, averages)
        for k in (0, 1):
            self.assertLess(np.linalg.norm(points[classes == k].mean(axis=0) - stars[k]), 1e-3)
        self.assertGreater(abs(stars[0, 0] - stars[1, 0]), 5 * points[classes == 0, 0].std())
        fig = plots.embedding(points, classes + 1, [1, 2], stars)
        self.assertEmbedding(fig, {1: np.sum(classes == 0), 2: np.sum(classes == 1)})
        self.save(fig, "embedding")

    def test_subsample(self):
        self.assertEqual(len(embedding.subsample(10, 50)), 10)
        rows = embedding.subsample(10000, 300)
        self.assertEqual(len(np.unique(rows)), 300)
        self.assertTrue(np.all(np.diff(rows) > 0))


@slow
class TestViewer(FigureChecks, BaseTest):
    """CryoralignViewer on real runs: every handler, every figure saved and checked."""

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        cls.out = os.path.join(cls.proj.getPath(), "viewer_png")
        shutil.rmtree(cls.out, ignore_errors=True)   # a project of the same name may be reused
        os.makedirs(cls.out)
        rfaImport, _ = importParticles(cls, "rfa")
        mraImport, _ = importParticles(cls, "mra")
        cls.rfa = cls.launchProtocol(cls.newProtocol(
            CryoralignProtAlign2D, inputParticles=rfaImport.outputParticles, useGpu=False,
            numberOfIterations=ITERATIONS))
        cls.mra = cls.launchProtocol(cls.newProtocol(
            CryoralignProtClassify2D, inputParticles=mraImport.outputParticles, useGpu=False,
            numberOfClasses=N_CLASSES, numberOfIterations=ITERATIONS))
        cls.more = cls.launchProtocol(cls.newProtocol(
            CryoralignProtClassify2D, doContinue=True, continueRun=cls.mra, useGpu=False,
            numberOfIterations=MORE_ITERATIONS))

    def viewer(self, prot, **values):
        viewer = CryoralignViewer(project=self.proj, protocol=prot)
        viewer.setProtocol(prot)
        for name, value in values.items():
            getattr(viewer, name).set(value)
        self.assertEqual(viewer.validate(), [])
        return viewer

    def figure(self, viewer, name):
        """Call one handler; save its figure to PNG; return the figure."""
        views = viewer._getVisualizeDict()[name](name)
        self.assertEqual(len(views), 1)
        path = os.path.join(self.out, "%s_%s.png" % (viewer.protocol.getObjId(), name))
        views[0].savefig(path)
        self.assertGreater(os.path.getsize(path), 1000)
        fig = views[0].getFigure()
        views[0].close()
        return fig

    def classCounts(self, prot):
        """``{class id: particles}`` from the Scipion output."""
        if isinstance(prot, CryoralignProtAlign2D):
            return {1: prot.outputParticles.getSize()}
        return {cls.getObjId(): cls.getSize() for cls in prot.outputClasses.iterItems()}

    def checkAllPlots(self, prot, iterations, only=None, **values):
        """Every plot of ``prot``'s viewer (of the classes ``only``, when given) against its outputs."""
        counts = self.classCounts(prot)
        if only:
            values["classFilter"] = " ".join(map(str, only))
            counts = {c: counts[c] for c in only}
        viewer = self.viewer(prot, **values)
        ids = sorted(counts)
        n = sum(counts.values())
        bySize = sorted(ids, key=lambda c: -counts[c])
        self.assertGallery(self.figure(viewer, "displayGallery"), bySize, [counts[c] for c in bySize])
        self.assertAngleHistogram(self.figure(viewer, "displayAngles"), n, viewer.angleBins.get())
        self.assertShiftHistogram(self.figure(viewer, "displayShifts"), n)
        self.assertClassBars(self.figure(viewer, "displayMirror"), ids, "mirrored fraction")
        scores = self.figure(viewer, "displayScores")
        self.assertEqual(len(scores.axes[0].patches), len(ids))
        self.assertConvergence(self.figure(viewer, "displayConvergence"), iterations)
        self.assertEmbedding(self.figure(viewer, "displayEmbedding"), counts)
        if "displaySizes" in viewer._getVisualizeDict() and viewer.hasAttribute("classFilter"):
            sizes = self.assertClassBars(self.figure(viewer, "displaySizes"), ids, "particles")
            self.assertEqual(sizes, [counts[c] for c in ids])
        return viewer

    def test_discovered(self):
        for prot in (self.rfa, self.mra):
            self.assertIn(CryoralignViewer, Domain.findViewers(prot, DESKTOP_TKINTER))

    def test_align(self):
        viewer = self.checkAllPlots(self.rfa, ITERATIONS, angleBins=12, shiftBins=7)
        self.assertEqual(self.classCounts(self.rfa), {1: N_PARTICLES})
        self.assertFalse(viewer.hasAttribute("classFilter"))
        view, = viewer._showScipionView()
        self.assertIsInstance(view, ObjectView)

    def test_classify(self):
        viewer = self.checkAllPlots(self.mra, ITERATIONS)
        view, = viewer._showScipionView()
        self.assertIsInstance(view, ClassesView)
        self.assertEqual(view.getPath(), self.mra.outputClasses.getFileName())
        self.assertIn("--sortby _size desc", view.getShowJParams())

    def test_classFilter(self):
        counts = self.classCounts(self.mra)
        chosen = sorted(counts)[::2]
        self.checkAllPlots(self.mra, ITERATIONS, only=chosen)
        viewer = CryoralignViewer(project=self.proj, protocol=self.mra)
        viewer.setProtocol(self.mra)
        viewer.classFilter.set("99")
        self.assertIn("None of the classes to plot (99) exists", viewer.validate()[0])

    def test_embeddingSubsample(self):
        viewer = self.viewer(self.mra, maxParticles=20)
        points = scatterCounts(self.figure(viewer, "displayEmbedding").axes[0])
        self.assertEqual(sum(points.values()), 20)

    @unittest.skipIf(embedding.has_tsne(), "scikit-learn is installed")
    def test_tsneWithoutScikitLearn(self):
        viewer = self.viewer(self.mra, embeddingMethod=1)
        view, = viewer._showEmbedding()
        self.assertIn("scikit-learn", view.getMessage())

    def test_continuedHistoryGrows(self):
        self.checkAllPlots(self.more, MORE_ITERATIONS)
        self.checkAllPlots(self.mra, ITERATIONS)   # the continued run is left as it was
