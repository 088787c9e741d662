"""Analyze Results of a cryoralign run: Scipion's class view, class-average gallery, histograms of
the alignment parameters, convergence and a 2D embedding of the aligned particles.

Plots come from :mod:`.plots` on arrays read by :class:`.results.RunResults` from the run's engine
files; each is wrapped in an ``EmPlotter`` (a pyplot figure, so the Tk GUI can show it and tests
can ``savefig`` it headless).
"""
import numpy as np

import pyworkflow.protocol.params as params
import pyworkflow.utils as pwutils
from pwem.viewers import ClassesView, EmPlotter, EmProtocolViewer, showj
from pyworkflow.viewer import DESKTOP_TKINTER, WEB_DJANGO

from ..constants import ATTR_PREFIX
from ..engine.geometry import MIRROR, PSI, SX, SY
from ..protocols import CryoralignProtAlign2D, CryoralignProtClassify2D
from . import embedding, plots
from .results import RunResults

EMBEDDING_METHODS = ["PCA", "t-SNE"]


class CryoralignViewer(EmProtocolViewer):
    """Plots of a cryoralign alignment or classification run: class averages with their size and
    resolution, in-plane angle, shift, mirror and score distributions, convergence per iteration
    and a PCA (or t-SNE) map of the aligned particles."""
    _label = 'viewer cryoralign'
    _targets = [CryoralignProtAlign2D, CryoralignProtClassify2D]
    _environments = [DESKTOP_TKINTER, WEB_DJANGO]

    # --------------------------- DEFINE param functions ----------------------------------------
    def _defineParams(self, form):
        classify = self._isClassification()
        form.addSection(label='Classes' if classify else 'Average')
        form.addParam('displayScipionView', params.LabelParam, important=True,
                      label='Open the classes (sorted by size)' if classify
                      else 'Open the aligned particles',
                      help="Scipion's own viewer of the output set.")
        form.addParam('displayGallery', params.LabelParam,
                      label='Class averages with size and resolution' if classify
                      else 'Average with its resolution')
        if classify:
            form.addParam('classFilter', params.StringParam, default='',
                          label='Classes to plot',
                          help='Class ids for the plots of this viewer, e.g. "1 3 5-7"; '
                               'empty: all classes.')
            form.addParam('displaySizes', params.LabelParam, label='Class sizes')
        form.addParam('displayScores', params.LabelParam, label='Correlation score per class')

        form.addSection(label='Alignment')
        form.addParam('displayAngles', params.LabelParam, label='In-plane angle histogram')
        form.addParam('angleBins', params.IntParam, default=36, validators=[params.Positive],
                      label='Angle bins')
        form.addParam('displayShifts', params.LabelParam, label='Shift histogram (x, y)')
        form.addParam('shiftBins', params.IntParam, default=15, validators=[params.Positive],
                      label='Shift bins (per axis)')
        form.addParam('displayMirror', params.LabelParam, label='Mirrored fraction per class')

        form.addSection(label='Convergence')
        form.addParam('displayConvergence', params.LabelParam,
                      label='Score, class changes, angle/shift changes, speed per iteration')

        form.addSection(label='Embedding')
        form.addParam('displayEmbedding', params.LabelParam,
                      label='2D map of the aligned particles')
        form.addParam('embeddingMethod', params.EnumParam, choices=EMBEDDING_METHODS, default=0,
                      display=params.EnumParam.DISPLAY_HLIST, label='Method',
                      help='PCA of the aligned, masked particle images; t-SNE needs scikit-learn '
                           '(pip install scikit-learn) and takes longer.')
        form.addParam('maxParticles', params.IntParam, default=embedding.MAX_POINTS,
                      validators=[params.Positive], label='Particles at most',
                      help='A random subset of this size is plotted.')

    def _getVisualizeDict(self):
        return {'displayScipionView': self._showScipionView,
                'displayGallery': self._showGallery,
                'displaySizes': self._showSizes,
                'displayScores': self._showScores,
                'displayAngles': self._showAngles,
                'displayShifts': self._showShifts,
                'displayMirror': self._showMirror,
                'displayConvergence': self._showConvergence,
                'displayEmbedding': self._showEmbedding}

    def _validate(self):
        try:
            self._results()
        except Exception as e:
            return ['The run has no complete results to show yet (%s).' % e]
        if not len(self._selectedClasses()):
            return ['None of the classes to plot (%s) exists; the classes are %s.'
                    % (self.classFilter.get(), pwutils.getRangeStringFromList(
                        self._results().classIds.tolist()))]
        return []

    # --------------------------- SHOW functions ------------------------------------------------
    def _showScipionView(self, paramName=None):
        if self._isClassification():
            classes = self.protocol.outputClasses
            return [ClassesView(self.getProject(), classes.strId(), classes.getFileName(),
                                other=self.protocol._getInputParticles().strId(),
                                viewParams={showj.SORT_BY: '_size desc',
                                            showj.RENDER: '_representative._filename',
                                            showj.LABELS: 'id _size %sResolution' % ATTR_PREFIX})]
        return [self.objectView(self.protocol.outputParticles)]

    def _showGallery(self, paramName=None):
        res = self._results()
        ids = self._selectedClasses()
        bySize = ids[np.argsort(-res.sizes[np.searchsorted(res.classIds, ids)], kind='stable')]
        where = np.searchsorted(res.classIds, bySize)
        return self._plot('Class averages', plots.gallery, res.averages(bySize), bySize,
                          res.sizes[where], res.resolutions[where])

    def _showSizes(self, paramName=None):
        res = self._results()
        ids = self._selectedClasses()
        return self._plot('Class sizes', plots.class_sizes, ids,
                          res.sizes[np.searchsorted(res.classIds, ids)])

    def _showScores(self, paramName=None):
        res, keep = self._results(), self._selectedParticles()
        return self._plot('Scores', plots.scores_per_class, res.scores[keep], res.classes[keep],
                          self._selectedClasses())

    def _showAngles(self, paramName=None):
        res, keep = self._results(), self._selectedParticles()
        return self._plot('In-plane angles', plots.angle_histogram, res.params[keep, PSI],
                          bins=self.angleBins.get())

    def _showShifts(self, paramName=None):
        res, keep = self._results(), self._selectedParticles()
        return self._plot('Shifts', plots.shift_histogram, res.params[keep, SX],
                          res.params[keep, SY], bins=self.shiftBins.get())

    def _showMirror(self, paramName=None):
        res, keep = self._results(), self._selectedParticles()
        return self._plot('Mirrors', plots.mirror_fraction, res.params[keep, MIRROR] > 0.5,
                          res.classes[keep], self._selectedClasses())

    def _showConvergence(self, paramName=None):
        return self._plot('Convergence', plots.convergence, self._results().history)

    def _showEmbedding(self, paramName=None):
        method = EMBEDDING_METHODS[self.embeddingMethod.get()]
        if method == 't-SNE' and not embedding.has_tsne():
            return [self.errorMessage('t-SNE needs scikit-learn: install it with `pip install '
                                      'scikit-learn` in Scipion\'s python, or choose PCA.',
                                      'scikit-learn missing')]
        res, ids = self._results(), self._selectedClasses()
        rows = np.flatnonzero(self._selectedParticles())
        rows = rows[embedding.subsample(len(rows), self.maxParticles.get())]
        radius = self.protocol._getRadius()
        vectors = embedding.aligned_vectors(res.particleImages(rows), res.params[rows], radius)
        averages = embedding.masked_vectors(res.averages(ids), radius)
        points, averagePoints = embedding.embed(vectors, averages, method)
        return self._plot('Embedding', plots.embedding, points, res.classes[rows], ids,
                          averagePoints, method=method)

    # --------------------------- UTILS functions -----------------------------------------------
    def _isClassification(self):
        return isinstance(self.protocol, CryoralignProtClassify2D)

    def _results(self):
        """The run's results, read once per viewer."""
        if getattr(self, '_cachedResults', None) is None:
            self._cachedResults = RunResults(self.protocol._getExtraPath())
        return self._cachedResults

    def _selectedClasses(self):
        """Sorted ids of the existing classes chosen by the class filter (all when it is empty)."""
        ids = self._results().classIds
        text = self.classFilter.get() if self.hasAttribute('classFilter') else ''
        if not (text or '').strip():
            return ids
        return np.intersect1d(ids, pwutils.getListFromRangeString(text.strip()))

    def _selectedParticles(self):
        return self._results().select(self._selectedClasses())

    def _plot(self, title, builder, *args, **kwargs):
        """``[EmPlotter]`` whose (pyplot) figure is drawn by a :mod:`.plots` builder."""
        plotter = EmPlotter(windowTitle='%s - %s' % (title, self.protocol.getRunName()))
        plotter.tightLayoutOn = False   # the builders lay their figures out themselves
        builder(*args, fig=plotter.getFigure(), **kwargs)
        return [plotter]
