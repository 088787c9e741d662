"""The backend contract: what the engine (:mod:`..search`, :mod:`..loop`) calls on a backend.

A backend resamples images on polar grids, searches particles' rings against prepared references
and sums aligned particles per class.  :class:`~.cpu.CpuBackend` and :class:`~.cuda.CudaBackend`
implement it and must agree: the same candidates (the GPU search is exhaustive, the CPU's may
screen first) and bit-identical class sums.

Shapes: ``N`` images of ``n x n`` px, ``P`` particles, ``K`` references, ``S`` trial shifts,
``T`` samples of a polar grid (all rings, ring after ring), ``L = grid.maxrin``.
"""
from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass
class PreparedReferences:
    """References ready for :meth:`Backend.search`, built once per iteration by
    :meth:`Backend.prepare_references`; each backend extends it with its own operands."""
    n_refs: int    # K
    n_shifts: int  # S
    mirror: bool   # whether mirrored correlations are searched too

    @property
    def n_mirror(self):
        """Correlations per (reference, shift): straight, and mirrored when searched."""
        return 2 if self.mirror else 1


class Backend(ABC):
    """The operations the engine needs from a compute backend (see the module docstring)."""

    @property
    @abstractmethod
    def name(self):
        """The backend's name as ``--backend`` spells it (``"cpu"``, ``"cuda"``)."""

    @abstractmethod
    def polar(self, images, index, centers, grid):
        """Rings of ``images[index]`` resampled (bilinear) around absolute ``centers``.

        ``images`` ``(N, n, n)``, ``index`` ``(M,)`` image of each row, ``centers`` ``(M, 2)``
        sampling center ``(x, y)`` in pixels; returns ``(M, T)`` float32 samples of ``grid``.
        """

    @abstractmethod
    def prepare_references(self, rings, grid, mirror, frequencies=None):
        """Reference rings ``(K, S, T)`` (normalised, one row per trial shift) -> a
        :class:`PreparedReferences` for :meth:`search`; ``mirror`` searches mirrored correlations too.
        ``frequencies`` asks for a coarse score, the correlation on that many angular frequencies
        (a backend may correlate on more: the GPU always searches exhaustively).
        """

    @abstractmethod
    def search(self, rings, refs, grid, members=None):
        """Best match of every particle against every prepared reference, or against its
        ``members`` only (``(P, M)`` reference indices, ascending per row: the preselection; -1:
        none, the score there is -inf).

        ``rings`` ``(P, T)`` normalised particle rings, ``refs`` from :meth:`prepare_references`.
        Returns four ``(P, K)`` arrays (``(P, M)`` with ``members``, column ``q`` for reference
        ``members[:, q]``): score (float32 correlation), shift (int32 index of the trial
        shift), mirror (int8, 1 when the mirrored correlation won) and angle (float32 peak position
        in samples of length ``grid.maxrin``, sub-sample refined).  Ties go to the lower shift
        index, straight before mirrored, then the lower angle sample.
        """

    @abstractmethod
    def class_sums(self, images, params, classes, parity, n_classes):
        """Even/odd sums of the particles transformed by ``params``, per class.

        ``images`` ``(N, n, n)``, ``params`` ``(N, 4)`` (``geometry`` convention), ``classes``
        ``(N,)`` (-1 leaves a particle out), ``parity`` ``(N,)`` half-set 0/1.  Returns
        ``(n_classes, 2, n, n)`` int64 in fixed point, equal to ``images.class_sums``.
        """
