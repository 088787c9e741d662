"""A growing run (mra --grow): batches placed against the current classes, a class seeded when a
view the classes lack arrives, the final pass, the prefix check, and resuming an interrupted batch."""
import dataclasses
import json
import os
import re
import shutil

import numpy as np
import pytest

from cryoralign_plugin.engine import align, grow, outputs, synthetic
from cryoralign_plugin.engine.cli import main
from cryoralign_plugin.engine.errors import InputError
from cryoralign_plugin.engine.settings import Settings
from cryoralign_plugin.engine.sources import ArraySource

SETTINGS = Settings(iterations=6, threads=2, backend="cpu")
CUTS = (120, 200, 260, 320)   # the input so far at each call; view 4 arrives only in the second batch


@pytest.fixture(scope="module")
def stream():
    """320 particles of 4 SLICEM views (SNR 1, 40 px): 120 of views 1-3, all of view 4, the rest."""
    refs = synthetic.make_references("slicem", 4, 40, seed=3)
    images, classes, _ = synthetic.make_particles(refs, 320, snr=1.0, seed=5)
    others = np.flatnonzero(classes != 3)
    order = np.concatenate([others[:120], np.flatnonzero(classes == 3), others[120:]])
    return images[order], classes[order]


def grown(images, out, cuts=CUTS, settings=SETTINGS):
    results = []
    for i, n in enumerate(cuts):
        results.append(grow.grow_multi_reference(ArraySource(images[:n]), 3, settings, out,
                                                 final=i == len(cuts) - 1, log=lambda *_: None))
    return results


@pytest.fixture(scope="module")
def run(stream, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("grow") / "run")
    return out, grown(stream[0], out)


def test_earlier_particles_keep_their_class_and_the_new_view_gets_its_own(stream, run):
    _, results = run
    first, second = results[0], results[1]
    np.testing.assert_array_equal(second.classes[:120], first.classes)
    np.testing.assert_array_equal(second.params[:120], first.params)
    truth = stream[1]
    assert len(first.averages) == 3 and len(second.averages) == 4
    new_view = second.classes[truth[:200] == 3]
    assert np.all(new_view == 3), np.bincount(new_view)          # the seeded class 4 (0-based 3)
    assert synthetic.purity(second.classes, truth[:200]) == 1.0


def test_the_final_classes_hold_every_particle_once_and_match_a_run_on_the_whole_set(stream, run):
    out, results = run
    final = results[-1]
    found = outputs.read_particles(out)
    np.testing.assert_array_equal(found.ids, np.arange(1, CUTS[-1] + 1))
    assert np.all(found.classes >= 0)
    batch = align.align_multi_reference(stream[0], n_classes=4, settings=SETTINGS, log=lambda *_: None)
    assert synthetic.purity(final.classes, stream[1]) >= synthetic.purity(batch.classes, stream[1]) - 0.02


def test_the_history_marks_the_batches(run):
    out, _ = run
    history = outputs.read_history(out)
    assert [r["iteration"] for r in history] == list(range(1, len(history) + 1))
    per_batch = {}
    for row in history:
        per_batch.setdefault(row["batch"], []).append(row)
    assert sorted(per_batch) == [1, 2, 3, 4]
    assert [per_batch[b][0]["batch_particles"] for b in (1, 2, 3, 4)] == list(CUTS)
    assert len(per_batch[1]) == SETTINGS.iterations
    for b in (2, 3):   # one iteration that searched only the batch's new particles
        assert [r["searched"] for r in per_batch[b]] == [CUTS[b - 1] - CUTS[b - 2]]
    assert [r["searched"] for r in per_batch[4]] == [CUTS[-1]] * SETTINGS.final_iterations   # placed by it
    assert per_batch[2][0]["new_class"] == 4 and per_batch[3][0]["new_class"] is None


def test_misfits_are_the_low_scores_of_each_class():
    rng = np.random.default_rng(0)
    classes = np.repeat([0, 1], 50)
    scores = np.where(classes == 0, 0.8, 0.5) + rng.normal(0, 0.01, 100)
    new = np.arange(90, 100)           # of class 1, median 0.5
    scores[[92, 95]] = 0.40            # 20% below: misfits; 0.47 (6%) is not
    scores[97] = 0.47
    np.testing.assert_array_equal(grow.misfits(classes, scores, new), [92, 95])


def test_another_prefix_or_a_shrunk_input_is_refused_writing_nothing(stream, tmp_path):
    out = str(tmp_path / "run")
    images = stream[0]
    grow.grow_multi_reference(ArraySource(images[:100]), 3, SETTINGS, out, log=lambda *_: None)
    before = {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out)}
    other = images[:150].copy()
    other[0] = images[140]
    with pytest.raises(InputError, match="first 100 particles of the input are not the run's"):
        grow.grow_multi_reference(ArraySource(other), 3, SETTINGS, out, log=lambda *_: None)
    with pytest.raises(InputError, match="has 100 already"):
        grow.grow_multi_reference(ArraySource(images[:80]), 3, SETTINGS, out, log=lambda *_: None)
    assert {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out)} == before


def test_a_minimum_class_size_changed_between_batches_is_refused_writing_nothing(stream, tmp_path):
    """--min-members is compared between batches like every other setting; only the automatic value
    follows the particles so far (recorded as given, null)."""
    out = str(tmp_path / "run")
    images = stream[0]
    explicit = dataclasses.replace(SETTINGS, iterations=2, min_members=3)
    grow.grow_multi_reference(ArraySource(images[:60]), 3, explicit, out, log=lambda *_: None)
    assert outputs.read_json(os.path.join(out, outputs.MANIFEST_JSON))["settings"]["min_members"] == 3
    before = {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out)}
    for other, said in ((5, "settings.min_members: 3 -> 5"), (None, "settings.min_members: 3 -> null")):
        with pytest.raises(InputError, match=re.escape(said)) as err:
            grow.grow_multi_reference(ArraySource(images[:80]), 3, dataclasses.replace(explicit, min_members=other),
                                      out, log=lambda *_: None)
        assert "\n" not in str(err.value)
    assert {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out)} == before
    placed = grow.grow_multi_reference(ArraySource(images[:80]), 3, explicit, out, log=lambda *_: None)
    assert len(placed.classes) == 80                       # the same value grows the run


def _old_version(out):
    _edit(os.path.join(out, outputs.MANIFEST_JSON), lambda m: m.update(version="0.0.9"))


def _growth_without_after(out):
    _edit(os.path.join(out, outputs.MANIFEST_JSON), lambda m: [g.pop("after") for g in m["growth"]])


def _checkpoints_without_cutoffs(out):
    for name in os.listdir(out):
        if outputs.is_checkpoint(name):
            path = os.path.join(out, name)
            _edit(os.path.join(path, "meta.json"), lambda m: m["arrays"].remove("cutoffs"))
            with np.load(os.path.join(path, "state.npz")) as z:
                arrays = {k: z[k] for k in z.files if k != "cutoffs"}
            np.savez(os.path.join(path, "state.npz"), **arrays)


def _edit(path, edit):
    with open(path) as f:
        recorded = json.load(f)
    edit(recorded)
    with open(path, "w") as f:
        json.dump(recorded, f)


@pytest.mark.parametrize("edit, said", [
    (_old_version, "holds a run of cryoralign 0.0.9 (manifest format 1), which this one"),
    (_growth_without_after, "does not record the growing run's batches"),
    (_checkpoints_without_cutoffs, "lacks cutoffs"),
])
def test_a_run_recorded_otherwise_is_refused_in_one_line_writing_nothing(stream, run, tmp_path, edit, said):
    """A growing run's folder as another version would leave it: one line says what differs and that a new
    growing run is the fix (not --overwrite, which --grow does not take); the folder is left as it was."""
    out = str(tmp_path / "run")
    shutil.copytree(run[0], out)
    edit(out)
    before = {os.path.join(top, n): os.path.getmtime(os.path.join(top, n))
              for top, _, files in os.walk(out) for n in files}
    more = np.concatenate([stream[0], stream[0][:10]])          # the run's 320 particles, then 10 new
    with pytest.raises(InputError, match=re.escape(said)) as err:
        grow.grow_multi_reference(ArraySource(more), 3, SETTINGS, out, log=lambda *_: None)
    message = str(err.value)
    assert "\n" not in message and "--overwrite" not in message
    assert message.endswith("start the growing run again in another --out, or empty this one")
    assert {os.path.join(top, n): os.path.getmtime(os.path.join(top, n))
            for top, _, files in os.walk(out) for n in files} == before


def test_an_interrupted_batch_resumes_to_the_uninterrupted_result(stream, run, tmp_path):
    """The state a crash inside the last batch's final pass leaves (its manifest written, its last
    checkpoint and results not): the same call again ends where the uninterrupted run did."""
    done, results = run
    out = str(tmp_path / "run")
    shutil.copytree(done, out)
    shutil.rmtree(outputs.checkpoint_dir(out, outputs.last_checkpoint(out)[0]))
    os.remove(os.path.join(out, outputs.PARTICLES_STAR))
    again = grow.grow_multi_reference(ArraySource(stream[0]), 3, SETTINGS, out, final=True, log=lambda *_: None)
    np.testing.assert_array_equal(again.classes, results[-1].classes)
    np.testing.assert_allclose(again.params, results[-1].params)


def test_the_command_line_grows_a_run(tmp_path, capsys):
    data = synthetic.make_dataset(str(tmp_path / "data"), n_particles=40, box=32, n_classes=2, snr=2.0, seed=1)
    star = data["particles_star"]
    out = str(tmp_path / "run")
    args = ["mra", "--particles", star, "--out", out, "--classes", "2", "--iterations", "2", "--threads", "1",
            "--backend", "cpu", "--grow", "--last-batch"]
    assert main(args) == 0
    assert len(outputs.read_particles(out).ids) == 40
    with pytest.raises(SystemExit):
        main(args + ["--overwrite"])
    assert "--grow starts from --classes and resumes by itself: leave out --overwrite" in capsys.readouterr().err


def test_without_final_iterations_the_last_batch_is_placed_alone(stream, tmp_path):
    """--final-iterations 0: the last batch is searched alone like any other, and nothing after it;
    --grow-iterations 2: two such searches per batch."""
    settings = Settings(iterations=4, threads=2, backend="cpu", final_iterations=0, grow_iterations=2)
    out = str(tmp_path / "run")
    results = grown(stream[0], out, cuts=(120, 200), settings=settings)
    np.testing.assert_array_equal(results[1].classes[:120], results[0].classes)
    history = outputs.read_history(out)
    assert [(r["batch"], r["searched"]) for r in history] == [(1, 120)] * 4 + [(2, 80)] * 2


def test_the_subsets_hook_searching_everyone_is_a_plain_iteration_and_a_subset_moves_only_itself(stream):
    """loop.iterate's ``subsets``: all indices give exactly the run without it (balanced assignment
    and re-seeding included); a subset changes only its own particles' classes and parameters, and the
    class sums updated with its change equal a pass over everyone."""
    from cryoralign_plugin.engine import loop, parallel
    from cryoralign_plugin.engine.backends import get_backend
    images = stream[0][:90]
    settings = Settings(iterations=2, threads=2, backend="cpu")
    ctx = loop.Context(ArraySource(images), settings, parallel.Serial(), get_backend("cpu", 2), lambda *_: None)
    refs = align._initial_references(ctx, 3, None)
    start = loop.State(0, np.zeros((90, 4)), np.full(90, -1), np.zeros(90), refs, np.zeros(3), refs, [])
    plain = loop.iterate(ctx, start, True)
    everyone = loop.iterate(ctx, start, True, subsets=lambda _: np.arange(90))
    np.testing.assert_array_equal(everyone.classes, plain.classes)
    np.testing.assert_array_equal(everyone.params, plain.params)
    np.testing.assert_array_equal(everyone.references, plain.references)
    some = np.arange(30, 60)
    ctx.settings = dataclasses.replace(ctx.settings, iterations=4)   # two more, on the subset
    part = loop.iterate(ctx, plain, True, subsets=lambda _: some)
    others = np.setdiff1d(np.arange(90), some)
    np.testing.assert_array_equal(part.params[others], plain.params[others])
    np.testing.assert_array_equal(part.classes[others], plain.classes[others])
    assert [r["searched"] for r in part.history[-2:]] == [30, 30]
    # the class sums kept by the hook and updated with the subset's change are the full sums, exactly
    from cryoralign_plugin.engine import references
    counts = references.class_counts(part.classes, np.arange(90) % 2, 3)
    np.testing.assert_array_equal(part.sums, loop.average_pass(ctx, part.params, part.classes, 3))
    full = loop.class_references(ctx, part.params, part.classes, counts, references.cutoff_cap(4))
    np.testing.assert_array_equal(part.references, full[0])
