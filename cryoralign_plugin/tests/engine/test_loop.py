"""engine.loop: the context (radius, grid, batches, ranks), history rows, checkpoints, iterate()."""
import dataclasses
import glob
import os

import numpy as np
import pytest

from cryoralign_plugin.engine import geometry, loop, parallel, synthetic
from cryoralign_plugin.engine import images as im
from cryoralign_plugin.engine.backends import get_backend
from cryoralign_plugin.engine.errors import InputError
from cryoralign_plugin.engine.settings import Settings

quiet = lambda *_: None


class Images:
    """The least a particle source offers the loop: ``count``, ``box`` and ``read(indices)``."""

    def __init__(self, array):
        self.array = np.asarray(array, np.float32)
        self.count, self.box = len(self.array), self.array.shape[-1]
        self.reads = []

    def read(self, indices):
        self.reads.append(np.array(indices))
        return self.array[indices]


def blank(count=10, box=32):
    return Images(np.random.default_rng(0).standard_normal((count, box, box)))


class Ranks:
    """A stand-in for mpi4py's communicator: only its rank and size (for ``parallel.Mpi``'s split)."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size


# ---------------------------------------------------------------------------------------------
# Context

@pytest.mark.parametrize("box,shift_range,radius,expected", [
    (32, 3.0, None, 11), (64, 3.0, None, 27), (64, 0.0, None, 30), (48, 2.5, None, 19), (64, 3.0, 20, 20)])
def test_context_radius_grid_and_shifts(box, shift_range, radius, expected):
    settings = Settings(radius=radius, shift_range=shift_range, shift_step=0.5, first_ring=2)
    ctx = loop.Context(blank(box=box), settings, parallel.Serial(), None, quiet)
    assert ctx.radius == expected
    want = geometry.polar_grid(expected, 2, 1)
    np.testing.assert_array_equal(ctx.grid.radii, want.radii)
    np.testing.assert_array_equal(ctx.grid.lengths, want.lengths)
    np.testing.assert_array_equal(ctx.shifts, geometry.shift_grid(shift_range, 0.5))
    # the particle's own offset may use what the rings and the shift search leave of the box
    assert ctx.offset_limit == geometry.sampling_limit(box) - expected


@pytest.mark.parametrize("box,settings", [
    (12, Settings(shift_range=3.0)),           # nothing fits: largest radius 1
    (32, Settings(radius=13, shift_range=3.0)),  # 13 + 3 > 14
    (32, Settings(radius=1)),
    (32, Settings(radius=8, first_ring=9)),
])
def test_context_refuses_what_does_not_fit(box, settings):
    with pytest.raises(InputError):
        loop.Context(blank(box=box), settings, parallel.Serial(), None, quiet)


@pytest.mark.parametrize("count,size,batch", [(10, 1, 3), (10, 1, 10), (10, 1, 100), (37, 3, 4), (37, 4, 1),
                                              (5, 4, 2), (3, 1, 0)])
def test_batches_cover_every_local_particle_once_in_order(count, size, batch):
    seen = []
    for rank in range(size):
        comm = parallel.Mpi(Ranks(rank, size)) if size > 1 else parallel.Serial()
        ctx = loop.Context(blank(count), Settings(batch_size=batch), comm, None, quiet)
        batches = list(ctx.batches())
        assert all(0 < len(b) <= max(batch, 1) for b in batches)
        local = np.concatenate(batches) if batches else np.array([], int)
        np.testing.assert_array_equal(local, ctx.local)
        assert (np.diff(local) == 1).all()          # contiguous, increasing
        seen.append(local)
    np.testing.assert_array_equal(np.concatenate(seen), np.arange(count))   # ranks in order, no overlap


def test_context_read_normalises_under_the_radius():
    source = blank(6)
    ctx = loop.Context(source, Settings(radius=10), parallel.Serial(), None, quiet)
    out = ctx.read(np.array([4, 1]))
    np.testing.assert_array_equal(source.reads[-1], [4, 1])
    mask = im.circular_mask(32, 10)
    np.testing.assert_allclose(out[:, mask].std(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out[:, ~mask].mean(axis=1), 0.0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# History rows

def hand_made(n_classes):
    ctx = loop.Context(blank(4), Settings(radius=10, shift_step=1.0), parallel.Serial(), None, quiet)
    assert ctx.grid.maxrin == 64                    # an angle counts as changed above 360/64 = 5.625 deg
    old = np.array([[350.0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 1], [10, 2, 2, 0]])
    state = loop.State(3, old, np.array([0, 0, 1, 1]) % n_classes, np.zeros(4),
                       np.zeros((n_classes, 32, 32)), np.zeros(n_classes), np.zeros((n_classes, 32, 32)), [])
    new = np.array([[10.0, 0, 0, 0],     # 20 deg across 0/360: changed
                    [3, 0, 0, 0],        # 3 deg: within one angular sample
                    [0, 1, 1, 0],        # mirror changed
                    [10, 2.5, 2, 1]])    # 0.5 px: within one shift step; but mirror changed
    return ctx, state, new


def test_summary_of_hand_made_reference_free_states():
    ctx, state, new = hand_made(1)
    row = loop._summary(ctx, state, new, np.zeros(4, int), np.array([0.1, 0.2, 0.3, 0.6]), 2.0)
    assert row["seconds"] == 2.0 and row["particles_per_second"] == pytest.approx(2.0)
    assert row["mean_score"] == pytest.approx(0.3)
    assert row["mean_angle_change"] == pytest.approx((20 + 3 + 0 + 0) / 4)
    assert row["mean_shift_change"] == pytest.approx(0.5 / 4)
    assert row["mirror_fraction"] == pytest.approx(0.25)  # of the new parameters
    assert row["class_changes"] == 0.0
    assert row["changed"] == pytest.approx(3 / 4)   # K = 1: what moved (particles 0, 2, 3)


def test_summary_of_hand_made_multireference_states():
    ctx, state, new = hand_made(2)
    row = loop._summary(ctx, state, new, np.array([0, 0, 1, 0]), np.ones(4), 0.5)
    assert row["class_changes"] == pytest.approx(1 / 4)
    assert row["changed"] == pytest.approx(1 / 4)   # K > 1: class changes, not movements
    assert row["particles_per_second"] == pytest.approx(8.0)


# ---------------------------------------------------------------------------------------------
# Checkpoints

def random_state(iteration, count=12, box=16, n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    params = np.column_stack([rng.uniform(0, 360, count), rng.uniform(-3, 3, (count, 2)), rng.integers(0, 2, count)])
    history = [{"iteration": i, "mean_score": float(rng.uniform()), "class_sizes": [4, 4, 4],
                "reseeded": [{"class": 2, "from_class": 1, "members": 3}]} for i in range(1, iteration + 1)]
    return loop.State(iteration, params, rng.integers(0, n_classes, count), rng.uniform(size=count),
                      rng.standard_normal((n_classes, box, box)).astype(np.float32), rng.uniform(0.04, 0.45, n_classes),
                      rng.standard_normal((n_classes, box, box)).astype(np.float32), history)


def assert_same_state(a, b):
    assert a.iteration == b.iteration and a.history == b.history
    for name in ("params", "classes", "scores", "references", "cutoffs", "averages"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)


def test_checkpoint_round_trip_keeps_the_last_two(tmp_path):
    assert loop.restore(str(tmp_path), 12, 16, 3) is None
    for i in range(1, 5):
        loop.save(str(tmp_path), random_state(i, seed=i))
    names = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "iter_*")))
    assert names == ["iter_%03d" % i for i in range(5 - loop.CHECKPOINTS_KEPT, 5)]
    assert_same_state(loop.restore(str(tmp_path), 12, 16, 3), random_state(4, seed=4))


@pytest.mark.parametrize("count,box,n_classes", [(11, 16, 3), (12, 18, 3), (12, 16, 2)])
def test_restore_refuses_another_runs_checkpoint(tmp_path, count, box, n_classes):
    loop.save(str(tmp_path), random_state(2))
    with pytest.raises(InputError, match="another run"):
        loop.restore(str(tmp_path), count, box, n_classes)


# ---------------------------------------------------------------------------------------------
# iterate() on tiny arrays

@pytest.fixture(scope="module")
def particles():
    views = synthetic.slicem_references(2, 32, seed=1)
    images, classes, _ = synthetic.make_particles(views, 40, snr=10.0, seed=2)
    return images, classes


def start(images, n_classes, **options):
    settings = dataclasses.replace(Settings(backend="cpu", threads=1, batch_size=16), **options)
    ctx = loop.Context(Images(images), settings, parallel.Serial(), get_backend("cpu", threads=1), quiet)
    refs = im.normalise(images[[3, 20][:n_classes]], ctx.radius)
    count = len(images)
    state = loop.State(0, np.zeros((count, 4)), np.full(count, -1), np.zeros(count), refs,
                       np.zeros(n_classes), refs, [])
    return ctx, state


def test_iterate_gives_a_history_row_per_iteration_and_a_checkpoint(particles, tmp_path):
    images, truth = particles
    ctx, state = start(images, 2, iterations=3)
    done = loop.iterate(ctx, state, reseed=True, out_dir=str(tmp_path))
    assert done.iteration == 3 and [row["iteration"] for row in done.history] == [1, 2, 3]
    for row in done.history:
        assert sum(row["class_sizes"]) == 40 and len(row["resolution_px"]) == 2
        assert 0.0 <= row["changed"] <= 1.0 and row["seconds"] > 0
    np.testing.assert_allclose(done.history[-1]["resolution_px"], 1.0 / done.cutoffs)
    assert done.params.shape == (40, 4) and done.classes.shape == (40,) and done.references.shape == (2, 32, 32)
    assert synthetic.purity(done.classes, truth) >= 0.9   # two distinct views at SNR 10 separate
    assert_same_state(loop.restore(str(tmp_path), 40, 32, 2), done)


def test_iterate_continues_from_a_state_exactly(particles):
    images, _ = particles
    ctx, state = start(images, 2, iterations=4, balanced_iterations=1)
    whole = loop.iterate(ctx, state, reseed=True)
    half = loop.iterate(start(images, 2, iterations=2, balanced_iterations=1)[0], state, reseed=True)
    rest = loop.iterate(ctx, half, reseed=True)
    assert [row["iteration"] for row in rest.history] == [1, 2, 3, 4]
    for name in ("params", "classes", "scores", "references", "averages"):
        np.testing.assert_array_equal(getattr(rest, name), getattr(whole, name), err_msg=name)


def test_auto_stop_ends_after_the_first_iteration_that_changes_less(particles):
    images, _ = particles
    ctx, state = start(images, 1, iterations=3, auto_stop=True, stop_fraction=1.01)  # every fraction < 1.01
    assert [row["iteration"] for row in loop.iterate(ctx, state, reseed=False).history] == [1]
    ctx, state = start(images, 1, iterations=2, auto_stop=True, stop_fraction=0.0)   # none < 0
    assert len(loop.iterate(ctx, state, reseed=False).history) == 2
