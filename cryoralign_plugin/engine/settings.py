"""The options of a run and their defaults, owned here once.

The CLI (``cli.py``) and the Scipion form take their defaults from :class:`Settings`; ``None`` in a
field means automatic, resolved by the engine as said next to the field.
"""
from dataclasses import dataclass
from typing import Optional

from .geometry import largest_radius

# Angular frequencies of the CPU search's coarse (screening) stage; ``exhaustive`` skips that stage.
SCREEN_FREQUENCIES = 32


@dataclass
class Settings:
    """Every option of a run; the CLI flags map one to one onto these fields."""
    radius: Optional[int] = None   # outer ring (px); None: largest that fits with the shift range
    first_ring: int = 1
    ring_step: int = 1
    shift_range: float = 3.0       # px, searched on a square grid around the current center
    shift_step: float = 1.0        # px, sub-pixel steps allowed
    mirror: bool = True
    iterations: int = 10
    auto_stop: bool = False        # stop once fewer than stop_fraction of the particles change
    stop_fraction: float = 0.005
    center: bool = False           # center the references on their center of mass
    seed: int = 0
    min_members: Optional[int] = None          # re-seed classes smaller than this; None: N / (4 K), at least 2
    balanced_iterations: Optional[int] = None  # equal-size assignment for the first iterations; None: half
    batch_size: int = 2048
    use_prior: bool = False        # start from the input's alignment instead of zero
    backend: str = "auto"
    threads: Optional[int] = None  # CPU threads per rank; None: all cores
    gpu: Optional[list] = None     # GPU ids (MPI rank i uses gpu[i % n]); None: GPU 0
    exhaustive: bool = False       # scan every (shift, mirror) at full resolution, no screening stage

    def resolved_radius(self, box):
        if self.radius is not None:
            return int(self.radius)
        return largest_radius(box, self.shift_range)

    def resolved_min_members(self, count, n_classes):
        if self.min_members is not None:
            return self.min_members
        return max(2, count // (4 * n_classes))

    def resolved_balanced_iterations(self):
        if self.balanced_iterations is not None:
            return self.balanced_iterations
        return self.iterations // 2
