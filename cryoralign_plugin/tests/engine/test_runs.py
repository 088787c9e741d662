"""Whole runs: RFA consistency, MRA continue, MPI equality and failure, CLI bad input."""
import os

import numpy as np
import pytest

from cryoralign_plugin.engine import align, outputs, synthetic
from cryoralign_plugin.engine.geometry import MIRROR
from cryoralign_plugin.engine.mrc import read_stack, write_stack
from cryoralign_plugin.engine.sources import StarSource
from cryoralign_plugin.engine.star import read_star, write_star
from ranks import engine, same_on_one_and_two_ranks

quiet = dict(log=lambda *_: None)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    synthetic.make_dataset(str(root), n_particles=240, box=48, n_classes=3, snr=1.0, seed=1, source="slicem")
    return root


def test_reference_free_alignment_brings_particles_into_register():
    view = synthetic.slicem_references(1, 48, seed=4)
    parts, _, truth = synthetic.make_particles(view, 200, snr=1.0, seed=2)
    res = align.align_reference_free(parts, iterations=6, radius=18, **quiet)
    dpsi, dt, same_mirror = synthetic.register_errors(res.params, truth)
    assert same_mirror.all(), "mirror is not consistent across particles"
    assert ((dpsi < 3.0) & (dt < 1.0)).mean() >= 0.95


def test_continue_gives_the_same_result_as_one_run(dataset, tmp_path):
    source = StarSource.from_star(str(dataset / "particles.star"))
    same = dict(n_classes=3, balanced_iterations=1, **quiet)
    whole = align.align_multi_reference(source, iterations=4, out_dir=str(tmp_path / "a"), **same)
    align.align_multi_reference(source, iterations=2, out_dir=str(tmp_path / "b"), **same)  # "killed" after 2
    again = align.align_multi_reference(source, iterations=4, out_dir=str(tmp_path / "b"), resume=True, **same)
    np.testing.assert_array_equal(whole.classes, again.classes)
    np.testing.assert_array_equal(whole.params, again.params)
    np.testing.assert_array_equal(whole.averages, again.averages)
    assert [r["iteration"] for r in again.history] == [1, 2, 3, 4]


def test_outputs_follow_the_contract(dataset, tmp_path):
    out = tmp_path / "run"
    done = engine("mra", "--particles", dataset / "particles.star", "--out", out, "--classes", 3,
                  "--iterations", 2)
    assert done.returncode == 0, done.stderr
    assert "iteration 2/2" in done.stdout and "particles/s" in done.stdout
    ids, classes, params, scores = outputs.read_particles(str(out))
    assert list(ids) == list(range(1, 241))
    assert len(classes) == 240 and set(classes) <= {0, 1, 2} and np.all(np.isfinite(scores))
    assert read_stack(str(out / outputs.CLASSES_MRCS)).shape == (3, 48, 48)
    rows = list(read_star(str(out / outputs.CLASSES_STAR), "classes"))
    assert sum(r.rlnClassSize for r in rows) == 240
    history = outputs.read_history(str(out))
    assert [h["iteration"] for h in history] == [1, 2]
    assert sorted(os.listdir(out)) == ["classes.mrcs", "classes.star", "history.json", "iter_001", "iter_002",
                                       "particles.star", "run.json", "run.lock"]


@pytest.mark.slow
def test_two_mpi_ranks_give_the_single_process_result(dataset, tmp_path):
    same_on_one_and_two_ranks(tmp_path, "mra", "--particles", dataset / "particles.star", "--classes", 3,
                              "--iterations", 3, "--threads", 1)


@pytest.mark.slow
def test_a_failing_rank_stops_the_job_with_its_message(dataset, tmp_path):
    star = tmp_path / "bad.star"
    stack = read_stack(str(dataset / "particles.mrcs"))
    stack[-1] = np.nan  # the last particle belongs to rank 1
    write_stack(str(tmp_path / "bad.mrcs"), stack)
    write_star(str(star), {"particles": (["rlnImageId", "rlnImageName"],
                                         [(i + 1, "%06d@bad.mrcs" % (i + 1)) for i in range(len(stack))])})
    done = engine("mra", "--particles", star, "--out", tmp_path / "out", "--classes", 3, ranks=2)
    assert done.returncode != 0
    assert "rank 1 of 2" in done.stderr and "NaN" in done.stderr
    assert not (tmp_path / "out" / outputs.PARTICLES_STAR).exists()


def _star(tmp_path, images, names=None):
    write_stack(str(tmp_path / "s.mrcs"), images)
    if names is None:
        names = ["%06d@s.mrcs" % (i + 1) for i in range(len(images))]
    write_star(str(tmp_path / "in.star"), {"particles": (["rlnImageId", "rlnImageName"],
                                                         [(i + 1, n) for i, n in enumerate(names)])})
    return tmp_path / "in.star"


def _break(case, tmp_path, images):
    """Make the input of ``case`` bad; return the particle names (None: one per image)."""
    if case == "missing_index":
        return ["%06d@s.mrcs" % (i + 1) for i in range(19)] + ["000099@s.mrcs"]
    if case == "missing_stack":
        return ["%06d@gone.mrcs" % (i + 1) for i in range(20)]
    if case == "empty":
        return []
    if case == "nan":
        images[3, 5, 5] = np.nan
    if case == "inf":
        images[4, 6, 6] = np.inf
    if case == "flat":
        images[2] = 1.0
    return None


BAD_INPUT = [
    ("radius", ["rfa", "--radius", 30], "reaches outside the 48 px box"),
    ("first_ring", ["rfa", "--radius", 10, "--first-ring", 12], "first ring (12) is larger than the radius"),
    ("classes", ["mra", "--classes", 50], "only 20 particles"),
    ("missing_index", ["rfa"], "index"),
    ("missing_stack", ["rfa"], "gone.mrcs"),
    ("empty", ["rfa"], "empty"),
    ("nan", ["rfa"], "NaN"),
    ("inf", ["rfa"], "infinite"),
    ("flat", ["rfa"], "zero variance"),
    ("references", ["mra", "--references", "REFS"], "give references of the particles' box size"),
    ("unwritable", ["rfa"], "cannot write"),
    ("non_square", ["rfa"], "square"),
    ("truncated", ["rfa"], "truncated"),
]


@pytest.mark.parametrize("case, args, expected", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_a_clear_error(tmp_path, case, args, expected):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(20, 48, 48)).astype(np.float32)
    star = _star(tmp_path, images, _break(case, tmp_path, images))
    out = tmp_path / "out"
    if case == "references":
        write_stack(str(tmp_path / "refs.mrcs"), rng.normal(size=(2, 40, 40)).astype(np.float32))
        args = [a if a != "REFS" else tmp_path / "refs.mrcs" for a in args]
    if case == "unwritable":
        out.write_text("a file where the output directory should be")
    if case == "non_square":
        write_stack(str(tmp_path / "s.mrcs"), rng.normal(size=(20, 48, 40)).astype(np.float32))
    if case == "truncated":
        data = (tmp_path / "s.mrcs").read_bytes()
        (tmp_path / "s.mrcs").write_bytes(data[:len(data) // 2])
    done = engine(args[0], "--particles", star, "--out", out, *args[1:])
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr
    assert not (out / outputs.PARTICLES_STAR).exists() if out.is_dir() else True


def test_odd_box_size_works(tmp_path):
    views = synthetic.slicem_references(2, 49, seed=1)
    parts, classes, truth = synthetic.make_particles(views, 60, snr=10.0, seed=2)
    res = align.align_multi_reference(parts, references=views, iterations=1, **quiet)
    assert (res.classes == classes).mean() == 1.0 and (res.params[:, MIRROR] == truth[:, MIRROR]).all()


def test_auto_stop_ends_a_converged_run():
    views = synthetic.slicem_references(3, 48, seed=2)
    parts, _, _ = synthetic.make_particles(views, 150, snr=5.0, seed=3)
    mra = align.align_multi_reference(parts, references=views, iterations=20, auto_stop=True, **quiet)
    assert len(mra.history) < 20 and mra.history[-1]["changed"] < 0.005
    one_view, _, _ = synthetic.make_particles(views[:1], 50, snr=5.0, seed=5)
    rfa = align.align_reference_free(one_view, iterations=20, auto_stop=True, **quiet)
    assert len(rfa.history) < 20 and rfa.history[-1]["changed"] < 0.005


def test_starved_class_is_reseeded_and_recorded():
    views = synthetic.slicem_references(2, 48, seed=2)
    parts, _, _ = synthetic.make_particles(views, 120, snr=5.0, seed=4)
    # a duplicated reference gets no particle (ties go to the lower class): it must be re-seeded
    refs = np.stack([views[0], views[0], views[1]])
    res = align.align_multi_reference(parts, references=refs, iterations=2, balanced_iterations=0, **quiet)
    events = res.history[0]["reseeded"]
    assert [e["class"] for e in events] == [2]
    assert events[0]["members"] > 0 and res.history[0]["class_sizes"][1] == events[0]["members"]
