"""engine.overcluster: the schedule, the merge's clustering and alignment, continue and determinism."""
import json

import numpy as np
import pytest

from cryoralign_plugin.engine import align, geometry, loop, overcluster, references, synthetic
from cryoralign_plugin.engine import images as im
from cryoralign_plugin.engine.mrc import write_stack
from cryoralign_plugin.engine.star import write_star
from cryoralign_plugin.engine.settings import Settings
from ranks import same_on_one_and_two_ranks

quiet = dict(log=lambda *_: None)


def test_schedule_over_clusters_from_random_particles():
    count = overcluster.classes_at(Settings(overcluster=3, overcluster_iterations=2), 10, 1000)
    assert [count(i) for i in range(5)] == [30, 30, 10, 10, 10]   # the checkpoint of iteration 2 holds K
    assert overcluster.hook(count, 10, 4) is not None
    assert overcluster.classes_at(Settings(overcluster=3), 10, 29)(0) == 10   # fewer particles than c K
    assert overcluster.classes_at(Settings(overcluster=3), 1, 1000)(0) == 1
    # over OVERCLUSTER_MAX_CLASSES (100) over-clustered classes: K throughout (memory)
    assert overcluster.classes_at(Settings(overcluster=3), 33, 10 ** 5)(0) == 99
    assert overcluster.classes_at(Settings(overcluster=3), 34, 10 ** 5)(0) == 34
    assert overcluster.hook(overcluster.classes_at(Settings(overcluster=1, resplit=0), 10, 1000), 10, 10) is None
    # the late round alone (on by default) still needs the hook
    assert overcluster.hook(overcluster.classes_at(Settings(overcluster=1), 10, 1000), 10, 10) is not None


def test_schedule_of_the_late_round():
    count = overcluster.classes_at(Settings(resplit=6, resplit_iterations=2), 10, 1000)
    # split after iteration 6 (its checkpoint holds 2 K), iterations 7-8 at 2 K, merged after 8
    assert [count(i) for i in range(11)] == [30] * 5 + [10, 20, 20, 10, 10, 10]
    alone = overcluster.classes_at(Settings(overcluster=1, resplit=3), 10, 1000)
    assert [alone(i) for i in range(6)] == [10, 10, 10, 20, 10, 10]
    assert overcluster.hook(alone, 10, 10) is not None
    # ending by its merge, or 2 K over the particles or OVERCLUSTER_MAX_CLASSES: no late round
    assert overcluster.classes_at(Settings(overcluster=1, resplit=3, iterations=4), 10, 1000)(3) == 10
    assert overcluster.classes_at(Settings(overcluster=1, resplit=3), 10, 19)(3) == 10
    assert overcluster.classes_at(Settings(overcluster=1, resplit=3), 51, 10 ** 5)(3) == 51


def test_clusters_join_the_most_similar_weighted_by_size():
    # classes 0, 1 alike; 2, 3 alike; 4 nearest to 3 alone but to the {0, 1} pair by size-weighted mean
    s = np.array([[1.0, 0.9, 0.1, 0.1, 0.6],
                  [0.9, 1.0, 0.1, 0.1, 0.6],
                  [0.1, 0.1, 1.0, 0.8, 0.0],
                  [0.1, 0.1, 0.8, 1.0, 0.7],
                  [0.6, 0.6, 0.0, 0.7, 1.0]])
    assert overcluster.clusters(s, np.array([10, 10, 10, 10, 10]), 2).tolist() == [0, 0, 1, 1, 0]
    assert overcluster.clusters(s, np.array([10, 10, 10, 10, 10]), 3).tolist() == [0, 0, 1, 1, 2]
    # a large class 3 pulls 4 to the {2, 3} pair: mean (0 * 1 + 0.7 * 100) / 101 > 0.6
    assert overcluster.clusters(s, np.array([10, 10, 1, 100, 10]), 2).tolist() == [0, 0, 1, 1, 1]


def test_similarity_aligns_one_reference_onto_another():
    views = synthetic.make_references("slicem", 2, 48, seed=0)
    moved = im.transform(views[:1], np.array([[40.0, 1.0, -2.0, 1.0]]))
    refs = im.normalise(np.concatenate([views, moved]), 19)
    ctx = align._context(refs, Settings(threads=1), None, lambda *_: None)
    scores, params = overcluster.similarity(ctx, refs)
    assert scores[2, 0] > 0.95 and scores[2, 0] > scores[2, 1] + 0.1   # measured 0.998 against 0.741
    back = im.transform(refs[2:], params[2, 0][None])   # reference 2 brought onto reference 0
    assert np.corrcoef(back[0].ravel(), refs[0].ravel())[0, 1] > 0.95   # measured 0.998
    assert params[2, 0, geometry.MIRROR] == 1.0


def test_merge_joins_the_halves_of_each_view_in_one_frame():
    # 3 views; each view's particles split over two classes whose frames differ by 60 degrees, as an
    # over-clustered run leaves them: the merge must join the halves and bring them into one frame
    views = synthetic.make_references("slicem", 3, 48, seed=0)
    images, truth, aligned = synthetic.make_particles(views, 120, 10.0, seed=1)
    params = aligned.copy()
    turn = np.array([[60.0, 0.0, 0.0, 0.0]])
    odd = np.arange(120) % 2 == 1
    params[odd] = geometry.combine(params[odd], np.repeat(turn, odd.sum(), 0))
    classes = 2 * truth + odd
    ctx = align._context(images, Settings(threads=1), None, lambda *_: None)
    refs = im.normalise(np.stack([v for view in views for v in (view, im.transform(view[None], turn)[0])]),
                        ctx.radius)
    state = loop.State(3, params, classes, np.zeros(120), refs, np.full(6, 0.2), refs, [{}])
    merged = overcluster.merge(ctx, state, 3)
    np.testing.assert_array_equal(merged.classes, truth)   # classes 2v and 2v + 1 -> v
    assert merged.history[-1]["merged"] == [{"classes": [1, 2], "into": 1}, {"classes": [3, 4], "into": 2},
                                            {"classes": [5, 6], "into": 3}]
    for k in range(3):   # each view's members in one frame (its larger class's): one common transform
        angle, shift, same = synthetic.register_errors(merged.params[truth == k], aligned[truth == k])
        assert same.all() and angle.max() < 2.0 and shift.max() < 0.5   # measured 0.06 deg, 0.00 px
        # the merged average is sharp: the view in that frame
        frame = geometry.combine(geometry.inverse(aligned[truth == k][:1]), merged.params[truth == k][:1])
        view = im.transform(views[k][None], frame)[0]
        assert np.corrcoef(merged.averages[k].ravel(), view.ravel())[0, 1] > 0.9   # measured 0.998


def test_split_separates_the_two_views_a_class_holds():
    # a class holding two views (aligned in its frame) and a class holding one: the split puts each view of
    # the first in a class of its own and halves the second
    views = synthetic.make_references("slicem", 3, 48, seed=0)
    images, truth, aligned = synthetic.make_particles(views, 240, 0.1, seed=1)
    classes = (truth == 2).astype(np.int64)   # views 0 and 1 in class 0, view 2 in class 1
    ctx = align._context(images, Settings(threads=1), None, lambda *_: None)
    counts = references.class_counts(classes, np.arange(240) % 2, 2)
    refs, cutoffs, averages = loop.class_references(ctx, aligned, classes, counts)
    state = loop.State(6, aligned, classes, np.zeros(240), refs, cutoffs, averages, [{}])
    split = overcluster.split(ctx, state)
    assert len(split.references) == 4 and (split.classes // 2 == classes).all()   # children of their class
    first = split.classes[classes == 0]
    # measured: every particle of views 0 and 1 in a child of its own (purity 1.000 of the split)
    assert synthetic.purity(first, truth[classes == 0]) >= 0.95
    sizes = np.bincount(split.classes, minlength=4)
    assert sizes[2] >= sizes[3] > 0.3 * (classes == 1).sum()   # the larger side first; measured 40 / 40
    assert [e["members"] for e in split.history[-1]["split"]] == [sizes[:2].tolist(), sizes[2:].tolist()]


def test_ward_tells_two_views_from_two_halves_of_one():
    # classes 0, 1: halves (50 each) of one view, distance the noise alone, 500 (1 / 50 + 1 / 50) = 20;
    # classes 2, 3: two near-duplicate views of 100 each, noise 500 (2 / 100) = 10 plus their difference 5.
    # The nearest pair is 2, 3 (15 < 20); Ward's cost is lower for the halves (25 x 20 < 50 x 15)
    d = np.array([[0.0, 20.0, 90.0, 90.0],
                  [20.0, 0.0, 90.0, 90.0],
                  [90.0, 90.0, 0.0, 15.0],
                  [90.0, 90.0, 15.0, 0.0]])
    assert overcluster.ward(d, np.array([50, 50, 100, 100]), 3).tolist() == [0, 0, 1, 2]
    assert overcluster.ward(d, np.array([50, 50, 100, 100]), 2).tolist() == [0, 0, 1, 1]


@pytest.fixture(scope="module")
def particles():
    views = synthetic.make_references("slicem", 3, 48, seed=0)
    return synthetic.make_particles(views, 180, 1.0, seed=2)[:2]


OVER = dict(n_classes=3, iterations=4, overcluster=3, overcluster_iterations=2, threads=1, **quiet)


@pytest.fixture(scope="module")
def whole(particles, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    return align.align_multi_reference(particles[0], out_dir=str(out), **OVER), out


def test_the_run_merges_at_its_schedule_and_records_it(whole):
    result, out = whole
    assert [len(r["class_sizes"]) for r in result.history] == [9, 9, 3, 3]
    assert len(result.history[1]["merged"]) == 3 and len(result.averages) == 3
    with open(out / "run.json") as f:
        settings = json.load(f)["settings"]
    assert (settings["overcluster"], settings["overcluster_iterations"]) == (3, 2)


class Killed(Exception):
    pass


def killed_after(iteration):
    """A log that kills the run once iteration ``iteration`` is checkpointed (its line comes after)."""
    def log(line):
        if line.startswith("iteration %d/" % iteration):
            raise Killed
    return log


def assert_continued_as_one_run(images, out, options, iteration, whole):
    """A run of ``options`` killed after ``iteration`` and continued ends as the ``whole`` run did."""
    with pytest.raises(Killed):
        align.align_multi_reference(images, out_dir=str(out), **dict(options, log=killed_after(iteration)))
    again = align.align_multi_reference(images, out_dir=str(out), resume=True, **options)
    for name in ("classes", "params", "averages", "references"):
        np.testing.assert_array_equal(getattr(again, name), getattr(whole, name), err_msg=name)


@pytest.mark.parametrize("iteration", [1, 2])   # in the over-clustered phase; at the merge
def test_continue_gives_the_one_run_result(particles, whole, tmp_path, iteration):
    assert_continued_as_one_run(particles[0], tmp_path, OVER, iteration, whole[0])


def test_a_run_ending_before_the_merge_does_not_over_cluster(particles, tmp_path):
    # it returned c K classes, never merged; the same holds for its --continue to more iterations
    images, truth = particles
    short = align.align_multi_reference(images, out_dir=str(tmp_path), **dict(OVER, iterations=1))
    assert [len(r["class_sizes"]) for r in short.history] == [3] and len(short.averages) == 3
    longer = align.align_multi_reference(images, out_dir=str(tmp_path), resume=True, **OVER)
    assert [len(r["class_sizes"]) for r in longer.history] == [3, 3, 3, 3]
    assert synthetic.purity(longer.classes, truth) == 1.0


def test_an_auto_stop_before_the_merge_merges(particles):
    images, _ = particles
    result = align.align_multi_reference(images, **dict(OVER, iterations=6, overcluster_iterations=5,
                                                        auto_stop=True, stop_fraction=1.0))
    # iteration 1 changes every class (from none); iteration 2 changes fewer than all: it stops there
    assert len(result.history) == 2 and len(result.averages) == 3 and result.class_sizes.min() > 0
    assert len(result.history[-1]["merged"]) == 3


def test_threads_give_the_same_merge(particles, whole):
    images, truth = particles
    two = align.align_multi_reference(images, **dict(OVER, threads=2))
    np.testing.assert_array_equal(whole[0].classes, two.classes)
    np.testing.assert_array_equal(whole[0].averages, two.averages)
    assert synthetic.purity(two.classes, truth) == 1.0   # SNR 1: 3 views from 9 classes


LATE = dict(OVER, iterations=5, resplit=3)   # 9 classes, 3 after iteration 2, 6 after 3, 3 after 4


@pytest.fixture(scope="module")
def late(particles, tmp_path_factory):
    out = tmp_path_factory.mktemp("late")
    return align.align_multi_reference(particles[0], out_dir=str(out), **LATE)


def test_the_late_round_splits_and_merges_back_at_its_schedule(particles, late):
    assert [len(r["class_sizes"]) for r in late.history] == [9, 9, 3, 6, 3]   # the classes each searched with
    assert len(late.history[2]["split"]) == 3 and len(late.history[3]["merged"]) == 3
    assert synthetic.purity(late.classes, particles[1]) == 1.0 and late.class_sizes.min() > 0


@pytest.mark.parametrize("iteration", [3, 4])   # at the split; at the merge back
def test_continue_through_the_late_round_gives_the_one_run_result(particles, late, tmp_path, iteration):
    assert_continued_as_one_run(particles[0], tmp_path, LATE, iteration, late)


def test_threads_give_the_same_late_round(particles, late):
    two = align.align_multi_reference(particles[0], **dict(LATE, threads=2))
    np.testing.assert_array_equal(late.classes, two.classes)
    np.testing.assert_array_equal(late.averages, two.averages)


@pytest.mark.slow
def test_over_clustering_escapes_the_split_and_merge_optimum():
    # benchmarks/bench_classification.py's SLICEM set at SNR 0.05 (10 views, 1500 particles of 64 px), seed 1:
    # purity 0.786 without over-clustering (the true views: 0.936), 0.858 with 3 K classes for 5 iterations
    views = synthetic.make_references("slicem", 10, 64, seed=0)
    images, truth, _ = synthetic.make_particles(views, 1500, 0.05, seed=0)
    result = align.align_multi_reference(images, n_classes=10, seed=1, overcluster=3, overcluster_iterations=5,
                                         **quiet)
    assert synthetic.purity(result.classes, truth) >= 0.83
    assert result.class_sizes.min() > 0 and len(result.averages) == 10


@pytest.mark.slow
def test_the_late_round_separates_near_duplicate_views():
    # benchmarks/bench_classification.py's near-duplicate pairs (10 phantom views, 1500 particles of 64 px,
    # SNR 0.1), seed 1: purity 0.700 by default (the true views: 0.891), 0.839 with the late round after 6
    views = synthetic.make_references("phantom-pairs", 10, 64, seed=0)
    images, truth, _ = synthetic.make_particles(views, 1500, 0.1, seed=0)
    result = align.align_multi_reference(images, n_classes=10, seed=1, resplit=6, **quiet)
    assert synthetic.purity(result.classes, truth) >= 0.8
    assert result.class_sizes.min() > 0 and len(result.averages) == 10


@pytest.fixture
def particles_star(particles, tmp_path):
    """The module's particles as a STAR file (with their stack) in ``tmp_path``, for the MPI runs."""
    star = tmp_path / "in.star"
    write_stack(str(tmp_path / "s.mrcs"), particles[0])
    write_star(str(star), {"particles": (["rlnImageId", "rlnImageName"],
                                         [(i + 1, "%06d@s.mrcs" % (i + 1)) for i in range(len(particles[0]))])})
    return star


@pytest.mark.slow
def test_two_mpi_ranks_merge_as_one(particles_star, tmp_path):
    for done in same_on_one_and_two_ranks(tmp_path, "mra", "--particles", particles_star, "--classes", 3,
                                          "--iterations", 3, "--overcluster", 3, "--overcluster-iterations", 2,
                                          "--threads", 1):
        assert "merged 9 classes into 3" in done.stdout


@pytest.mark.slow
def test_two_mpi_ranks_split_as_one(particles_star, tmp_path):
    for done in same_on_one_and_two_ranks(tmp_path, "mra", "--particles", particles_star, "--classes", 3,
                                          "--iterations", 3, "--overcluster", 1, "--resplit", 1, "--threads", 1,
                                          "--batch-size", 50):
        assert "split 3 classes into 6" in done.stdout and "merged 6 classes into 3" in done.stdout
