"""engine.minibatch and the loop's subsets: the schedule, what an unsearched particle keeps, what the
averages are built from, --continue, MPI ranks, auto-stop, bad input and the classification quality."""
import re

import numpy as np
import pytest

from cryoralign_plugin.engine import align, cli, loop, minibatch, parallel, references, synthetic
from cryoralign_plugin.engine import images as im
from cryoralign_plugin.engine.errors import InputError
from cryoralign_plugin.engine.mrc import read_stack
from cryoralign_plugin.engine.settings import FINAL_FULL_PASSES, MINIBATCH_FRACTION, MINIBATCH_GROWTH, Settings
from cryoralign_plugin.tests.engine.test_cli_errors import one_error_line, run_main
from cryoralign_plugin.tests.engine.test_loop import Ranks, blank, start
from cryoralign_plugin.tests.engine.test_runs import engine

quiet = lambda *_: None


# ---------------------------------------------------------------------------------------------
# The schedule

def test_subsets_grow_from_per_class_times_k_and_end_in_full_passes():
    plan = minibatch.Schedule(Settings(), 10 ** 6, 200)     # defaults: 100 per class, 8 iterations, 10 in all
    assert plan.sizes[0] == 100 * 200 and len(plan.sizes) == 8 == Settings().iterations - FINAL_FULL_PASSES
    assert all(abs(b / a - MINIBATCH_GROWTH) < 1e-3 for a, b in zip(plan.sizes, plan.sizes[1:]))
    assert 0.39 < sum(plan.sizes) / 10 ** 6 < 0.40    # cryoSPARC's 20 x 100 x K would be 0.40 N
    for iteration, size in enumerate(plan.sizes, 1):
        chosen = plan(iteration)
        assert len(chosen) == size == plan.size(iteration) and chosen.dtype == np.int64
        assert np.all(np.diff(chosen) > 0) and chosen[0] >= 0 and chosen[-1] < 10 ** 6   # sorted, distinct
    assert plan(9) is None and plan(60) is None and plan.size(9) == 10 ** 6


@pytest.mark.parametrize("count,k,per_class", [(10 ** 5, 100, 100), (1500, 10, 15), (4000, 10, 100)])
def test_subsets_are_scaled_down_alike_to_hold_at_most_n_particles(count, k, per_class):
    plan = minibatch.Schedule(Settings(minibatch=True, minibatch_per_class=per_class), count, k)
    growth = sum(MINIBATCH_GROWTH ** i for i in range(8))
    assert len(plan.sizes) == 8 and abs(plan.sizes[0] - MINIBATCH_FRACTION * count / growth) <= 1
    assert all(abs(b / a - MINIBATCH_GROWTH) < 2.0 / plan.sizes[0] for a, b in zip(plan.sizes, plan.sizes[1:]))
    assert abs(sum(plan.sizes) - MINIBATCH_FRACTION * count) <= 8   # rounding, one particle each


def test_subsets_depend_only_on_the_seed_and_the_iteration():
    plan = minibatch.Schedule(Settings(), 10 ** 5, 100)
    again = minibatch.Schedule(Settings(iterations=30, batch_size=7, threads=1), 10 ** 5, 100)   # free settings
    other = minibatch.Schedule(Settings(seed=1), 10 ** 5, 100)
    for i in range(1, 9):
        np.testing.assert_array_equal(plan(i), again(i))
        assert not np.array_equal(plan(i), other(i))
    for i in range(1, 8):   # each subset holds the previous one, and more
        assert np.isin(plan(i), plan(i + 1)).all() and len(plan(i + 1)) > len(plan(i))


@pytest.mark.parametrize("options,count,k,expected", [
    ({}, 10000, 10, 8),                # automatic: the 8 subsets, fitted into N, hold 50 per class (504 at first)
    ({}, 9900, 10, 7),                 # ... not 8 (499): the first 7 (657)
    ({}, 4000, 10, 4),                 # the first 4 (69 per class), as 20 000 particles at K = 50
    ({}, 2000, 10, 0),                 # the first subset (1000) would be half of N
    ({}, 10 ** 6, 1, 0),               # automatic only for classification (K > 1)
    (dict(minibatch=True), 1500, 10, 8),           # forced: all of them, however small
    (dict(minibatch=True), 1000, 10, 0),           # the first subset would hold every particle
    (dict(minibatch=False), 10 ** 6, 200, 0),
    (dict(minibatch_iterations=0), 10 ** 6, 200, 0),
    (dict(minibatch=True, minibatch_per_class=5), 40, 1, 8),
    (dict(iterations=8), 10 ** 6, 200, 0),         # automatic: no full pass would follow the 8 subsets
    (dict(iterations=9), 10 ** 6, 200, 8),
    (dict(iterations=4), 4000, 10, 0),             # ... nor the 4 of a mid-size run
    (dict(iterations=5), 4000, 10, 4),
])
def test_when_mini_batches_are_used(options, count, k, expected):
    settings = Settings(**options)
    assert minibatch.used_iterations(settings, count, k) == expected
    assert len(minibatch.Schedule(settings, count, k).sizes) == expected


def _fewest_with_all_minibatches(settings, k):
    """The smallest N for which automatic mode uses every mini-batch iteration (bisection)."""
    low, high = 1, 10 ** 8          # none at 1, all at 10^8
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if minibatch.used_iterations(settings, mid, k) == settings.minibatch_iterations \
            else (mid, high)
    return high


@pytest.mark.parametrize("options", [{}, dict(minibatch_per_class=30), dict(minibatch_iterations=5)])
def test_the_per_class_figure_is_where_automatic_mode_uses_every_mini_batch_iteration(options):
    settings = Settings(**options)
    figure = settings.minibatch_all_per_class()     # 992.1 by default; 30 per class: 595.3; 5 iterations: 410.4
    for k in (10, 100, 200):
        fewest = _fewest_with_all_minibatches(settings, k)
        assert minibatch.used_iterations(settings, fewest - 1, k) < settings.minibatch_iterations
        # at most half the growth sum below K x the figure (9.9; 5 iterations: 4.1); measured 8.9-9.6 and 3.2-3.5
        assert 0 <= figure * k - fewest <= 10, (k, fewest, figure * k)


def test_the_help_quotes_where_all_mini_batch_iterations_are_used(capsys):
    """The figure in ``mra --help`` comes from the settings (it was a hand-written 'about 1000 x K')."""
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["mra", "--help"])
    shown = int(re.search(r"all of them from about (\d+) x K particles", " ".join(capsys.readouterr().out.split()))
                .group(1))
    assert shown == round(Settings().minibatch_all_per_class())          # 992
    # K = 100: all 8 from 99 200 particles (used_iterations' boundary), 7 at 99 180
    assert minibatch.used_iterations(Settings(), shown * 100, 100) == Settings().minibatch_iterations
    assert minibatch.used_iterations(Settings(), shown * 100 - 20, 100) < Settings().minibatch_iterations


def test_local_shares_of_two_ranks_are_the_subset_in_order():
    ctx = loop.Context(blank(30), Settings(), parallel.Serial(), None, quiet)
    active = np.array([1, 4, 5, 9, 17, 28, 29])
    shares = []
    for rank in range(2):
        ctx.comm = parallel.Mpi(Ranks(rank, 2))
        part = ctx.subset(active)
        assert np.array_equal(part.local, active[part.share])
        shares.append(part.local)
    np.testing.assert_array_equal(np.concatenate(shares), active)
    assert ctx.subset(None) is ctx


# ---------------------------------------------------------------------------------------------
# iterate() with subsets

@pytest.fixture(scope="module")
def particles():
    views = synthetic.slicem_references(2, 32, seed=1)
    images, classes, _ = synthetic.make_particles(views, 60, snr=10.0, seed=2)
    return images, classes


def fixed(*subsets):
    """Subsets for the first iterations, then every particle."""
    return lambda iteration: np.array(subsets[iteration - 1]) if iteration <= len(subsets) else None


def test_an_unsearched_particle_keeps_its_class_and_parameters(particles):
    images, _ = particles
    first, second = np.arange(0, 60, 3), np.arange(1, 60, 2)
    ctx, state = start(images, 2, iterations=2)
    state.params[:] = 0.5   # the starting parameters an unsearched particle keeps
    one = loop.iterate(start(images, 2, iterations=1)[0], state, reseed=True, subsets=fixed(first))
    two = loop.iterate(ctx, state, reseed=True, subsets=fixed(first, second))
    never = np.setdiff1d(np.arange(60), first)
    assert np.all(one.classes[never] == -1) and np.all(one.params[never] == 0.5) and np.all(one.scores[never] == 0)
    assert np.all(one.classes[first] >= 0)
    assert one.history[0]["searched"] == 20 and sum(one.history[0]["class_sizes"]) == 20
    kept = np.setdiff1d(first, second)   # searched in iteration 1, not in 2
    np.testing.assert_array_equal(two.params[kept], one.params[kept])
    np.testing.assert_array_equal(two.scores[kept], one.scores[kept])
    assert two.history[1]["searched"] == 30
    assert sum(two.history[1]["class_sizes"]) == len(np.union1d(first, second))


def test_averages_are_built_from_every_particle_with_a_class(particles):
    images, _ = particles
    ctx, state = start(images, 2, iterations=2, center=False)
    done = loop.iterate(ctx, state, reseed=True, subsets=fixed(np.arange(0, 60, 3), np.arange(1, 60, 2)))
    # an independent oracle: the class sums of all assigned particles at their final parameters
    assigned = np.flatnonzero(done.classes >= 0)
    normalised = im.normalise(images[assigned], ctx.radius)
    sums = im.class_sums(normalised, done.params[assigned], done.classes[assigned], assigned % 2, 2)
    counts = references.class_counts(done.classes, np.arange(60) % 2, 2)
    _, _, averages = references.build(sums, counts, ctx.radius, False, references.cutoff_cap(2))
    np.testing.assert_array_equal(done.averages, averages)


def test_continue_across_a_mini_batch_iteration_is_bit_identical(particles):
    images, _ = particles
    plan = fixed(np.arange(0, 60, 4), np.arange(0, 60, 2), np.arange(1, 60, 2))
    ctx, state = start(images, 2, iterations=5, balanced_iterations=2)
    whole = loop.iterate(ctx, state, reseed=True, subsets=plan)
    half = loop.iterate(start(images, 2, iterations=2, balanced_iterations=2)[0], state, reseed=True, subsets=plan)
    rest = loop.iterate(ctx, half, reseed=True, subsets=plan)
    assert [row["searched"] for row in rest.history] == [15, 30, 30, 60, 60]
    for name in ("params", "classes", "scores", "references", "averages"):
        np.testing.assert_array_equal(getattr(rest, name), getattr(whole, name), err_msg=name)
    assert rest.history[2:] == [dict(r, seconds=s["seconds"], particles_per_second=s["particles_per_second"])
                                for r, s in zip(whole.history[2:], rest.history[2:])]


def test_auto_stop_waits_for_a_full_pass(particles):
    images, _ = particles
    ctx, state = start(images, 2, iterations=4, auto_stop=True, stop_fraction=1.01)   # any full pass stops
    done = loop.iterate(ctx, state, reseed=True, subsets=fixed(np.arange(0, 60, 3), np.arange(1, 60, 2)))
    assert [row["searched"] for row in done.history] == [20, 30, 60]


def test_a_run_searches_the_schedule_s_subsets_and_ends_with_every_particle(particles):
    images, truth = particles
    result = align.align_multi_reference(images, n_classes=2, settings=Settings(
        minibatch=True, minibatch_per_class=5, minibatch_iterations=2, iterations=4, threads=1), log=quiet)
    plan = minibatch.Schedule(Settings(minibatch=True, minibatch_per_class=5, minibatch_iterations=2), 60, 2)
    assert [row["searched"] for row in result.history] == plan.sizes + [60, 60] == [10, 12, 60, 60]
    assert np.all(result.classes >= 0) and synthetic.purity(result.classes, truth) >= 0.9


def test_an_automatic_mid_size_run_searches_its_first_subsets_then_full_passes(particles):
    """60 particles, K = 2, 5 per class: the 8 subsets fitted into N would hold 1 per class, so the run
    searches the first 4 (10 to 20 particles, 5 per class or more), then every particle."""
    images, truth = particles
    result = align.align_multi_reference(images, n_classes=2, settings=Settings(
        minibatch_per_class=5, iterations=6, threads=1), log=quiet)
    assert [row["searched"] for row in result.history] == [10, 12, 16, 20, 60, 60]   # before: 60 each
    assert np.all(result.classes >= 0) and synthetic.purity(result.classes, truth) >= 0.9   # measured 1.0


@pytest.mark.slow
def test_two_mpi_ranks_search_the_same_subsets(tmp_path):
    synthetic.make_dataset(str(tmp_path), n_particles=120, box=32, n_classes=3, snr=1.0, seed=1)
    for ranks in (1, 2):
        done = engine("mra", "--particles", tmp_path / "particles.star", "--out", tmp_path / str(ranks),
                      "--classes", 3, "--iterations", 3, "--threads", 1, "--minibatch", "--minibatch-per-class", 5,
                      "--minibatch-iterations", 2, ranks=ranks)
        assert done.returncode == 0, done.stderr
        assert "iteration 1/3 (searched 15 of 120)" in done.stdout
    assert (tmp_path / "1" / "particles.star").read_text() == (tmp_path / "2" / "particles.star").read_text()
    np.testing.assert_array_equal(read_stack(str(tmp_path / "1" / "classes.mrcs")),
                                  read_stack(str(tmp_path / "2" / "classes.mrcs")))


# ---------------------------------------------------------------------------------------------
# Bad input

@pytest.mark.parametrize("value", [0, -3])
def test_a_mini_batch_size_below_one_is_one_line_naming_it(tmp_path, capsys, value):
    status, err = run_main(["mra", "--particles", tmp_path / "not-read.star", "--out", tmp_path / "out",
                            "--classes", 2, "--minibatch-per-class", value], capsys)
    line = one_error_line(err)
    assert status == 2 and "--minibatch-per-class %d" % value in line and "--no-minibatch" in line
    with pytest.raises(InputError, match=re.escape("--minibatch-per-class %d" % value)):
        Settings(minibatch_per_class=value).check()


@pytest.mark.parametrize("options,expected", [
    (dict(minibatch_iterations=-1), "--minibatch-iterations -1"),
    (dict(minibatch_per_class=2.5), "--minibatch-per-class 2.5"),
    (dict(minibatch="yes"), "minibatch 'yes'"),
])
def test_other_bad_mini_batch_settings_are_refused(options, expected):
    with pytest.raises(InputError, match=re.escape(expected)):
        Settings(**options).check()


def test_too_few_iterations_for_forced_mini_batches_are_refused_before_anything_runs(particles):
    images, _ = particles
    with pytest.raises(InputError, match=re.escape("--iterations 2 ends within the mini-batch iterations")) as err:
        align.align_multi_reference(images, n_classes=2, iterations=2, minibatch=True, minibatch_per_class=5,
                                    log=quiet)
    assert "--iterations 9 or more" in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# Quality: within 0.02 of full passes on a hard set

@pytest.mark.slow
def test_mini_batches_classify_a_hard_set_as_well_as_full_passes():
    """4000 SLICEM particles at SNR 0.05, K = 4, random start 1: the smallest N for which the default
    schedule is automatic at K = 4 (its first subset, scaled to fit N, holds 50 per class), so 8
    growing subsets then 2 full passes, 3 N searches against 10 N.  Measured: 0.9925 against 0.981 for
    full passes (+0.012); ~3 min on this shared 2-core machine at load 8."""
    views = synthetic.make_references("slicem", 4, 64, seed=0)
    images, truth, _ = synthetic.make_particles(views, 4000, 0.05, seed=0)
    assert minibatch.used_iterations(Settings(), 4000, 4) == 8
    purity = {}
    for switch in (False, None):
        result = align.align_multi_reference(images, n_classes=4, settings=Settings(seed=1, minibatch=switch),
                                             log=quiet)
        purity[switch] = synthetic.purity(result.classes, truth)
        assert sum(row["searched"] for row in result.history) == (40000 if switch is False else 12000)
    assert purity[None] >= purity[False] - 0.02


def test_continue_refuses_another_seed_when_the_references_are_given(particles, tmp_path):
    """The seed draws the subsets: in the manifest even where the start (given references) has none."""
    images, _ = particles
    refs = images[[3, 20]]
    same = dict(references=refs, minibatch=True, minibatch_per_class=5, minibatch_iterations=1, log=quiet)
    align.align_multi_reference(images, iterations=2, out_dir=str(tmp_path), **same)
    with pytest.raises(InputError, match=re.escape("settings.seed: 0 -> 1")):
        align.align_multi_reference(images, iterations=3, out_dir=str(tmp_path), resume=True, seed=1, **same)
