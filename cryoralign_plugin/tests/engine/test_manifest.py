"""The output folder belongs to its run (engine.rundir): input protection, the manifest, what
``--continue`` may resume, the lock, damaged checkpoints, and a schedule that extending cannot change.

Every refusal is also checked to leave the folder exactly as it was (:func:`snapshot`).
"""
import fcntl
import json
import logging
import os
import shutil

import numpy as np
import pytest

from cryoralign_plugin import __version__
from cryoralign_plugin.engine import align, cli, loop, outputs, synthetic
from cryoralign_plugin.engine.errors import InputError
from cryoralign_plugin.engine.mrc import read_stack
from cryoralign_plugin.engine.sources import ArraySource, StarSource

quiet = dict(log=lambda *_: None, threads=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """60 particles of 32 px in 3 views at a low SNR, as a STAR file with its stack."""
    root = tmp_path_factory.mktemp("data")
    synthetic.make_dataset(str(root), n_particles=60, box=32, n_classes=3, snr=0.3, seed=1)
    return root


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """Another data set of the same count, box and file names (other pixels)."""
    root = tmp_path_factory.mktemp("other")
    synthetic.make_dataset(str(root), n_particles=60, box=32, n_classes=3, snr=0.3, seed=2)
    return root


def star_source(root):
    return StarSource.from_star(str(root / "particles.star"))


def mra(src, out, **options):
    given = dict(n_classes=3, iterations=2)
    given.update(options)
    return align.align_multi_reference(src, out_dir=None if out is None else str(out), **quiet, **given)


def snapshot(folder):
    """Every path under ``folder`` (hidden ones too) with its size, mtime and content digest."""
    found = {}
    for top, dirs, files in os.walk(str(folder)):
        for name in dirs + files:
            path = os.path.join(top, name)
            st = os.lstat(path)
            content = open(path, "rb").read() if os.path.isfile(path) else b""
            found[os.path.relpath(path, str(folder))] = (st.st_size, st.st_mtime_ns, hash(content))
    return found


def refused(match, folder, call):
    """``call()`` raises InputError matching ``match`` and leaves ``folder`` untouched."""
    before = snapshot(folder)
    with pytest.raises(InputError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
    assert snapshot(folder) == before, "a refused run changed %s" % folder
    return str(err.value)


def same(a, b):
    for name in ("classes", "params", "scores", "averages", "references"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def copy_data(data, folder):
    folder.mkdir()
    for name in ("particles.star", "particles.mrcs"):
        shutil.copy(str(data / name), str(folder / name))
    return folder


# ---------------------------------------------------------------------------------------------
# 1. The input is never written over

def test_the_folder_of_the_input_star_is_refused(data, tmp_path):
    folder = copy_data(data, tmp_path / "d")
    star = (folder / "particles.star").read_bytes()
    msg = refused(r"particles\.star.*choose another --out", folder,
                  lambda: mra(star_source(folder), folder, iterations=1))
    assert str(folder / "particles.star") in msg
    assert (folder / "particles.star").read_bytes() == star


@pytest.mark.parametrize("flags", [[], ["--overwrite"], ["--continue"]])
def test_the_command_line_never_writes_over_its_input(data, tmp_path, monkeypatch, capsys, flags):
    folder = copy_data(data, tmp_path / "d")
    star = (folder / "particles.star").read_bytes()
    monkeypatch.chdir(folder)
    for out in (".", str(folder)):
        before = snapshot(folder)
        with pytest.raises(SystemExit) as exit_:
            cli.main(["mra", "--particles", "particles.star", "--out", out, "--classes", "3",
                      "--iterations", "1", "--threads", "1", *flags])
        assert exit_.value.code == 2
        assert "choose another --out" in capsys.readouterr().err
        assert snapshot(folder) == before and (folder / "particles.star").read_bytes() == star


def test_an_empty_out_is_refused(data, tmp_path, monkeypatch, capsys):
    folder = copy_data(data, tmp_path / "d")
    monkeypatch.chdir(folder)
    before = snapshot(folder)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["rfa", "--particles", "particles.star", "--out", "", "--iterations", "1"])
    assert exit_.value.code == 2
    assert '--out ""' in capsys.readouterr().err
    assert snapshot(folder) == before


def test_stacks_and_references_inside_the_output_folder_are_refused(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    (out / "in").mkdir(parents=True)
    shutil.copy(str(data / "particles.mrcs"), str(out / "in" / "particles.mrcs"))
    (tmp_path / "in.star").write_text((data / "particles.star").read_text().replace(
        "@particles.mrcs", "@out/in/particles.mrcs"))
    refused(r"particle stack .*particles\.mrcs.*choose another --out", out,
            lambda: mra(StarSource.from_star(str(tmp_path / "in.star")), out))
    shutil.copy(str(data / "references.mrcs"), str(out / "refs.mrcs"))
    before = snapshot(out)
    with pytest.raises(SystemExit):
        cli.main(["mra", "--particles", str(data / "particles.star"), "--out", str(out), "--references",
                  str(out / "refs.mrcs"), "--iterations", "1", "--threads", "1"])
    assert "references" in capsys.readouterr().err and snapshot(out) == before


# ---------------------------------------------------------------------------------------------
# 2. A fresh run never mixes with a previous one

def test_a_fresh_run_into_a_previous_runs_folder_is_refused(data, tmp_path):
    src, out = star_source(data), tmp_path / "out"
    mra(src, out)
    refused("%s holds a previous run: use --continue to resume it, --overwrite to replace it, or another "
            "--out" % out, out, lambda: mra(src, out, iterations=1))


def test_overwrite_replaces_only_the_runs_own_files(data, tmp_path):
    src, out = star_source(data), tmp_path / "out"
    mra(src, out, iterations=3)
    (out / "notes.txt").write_text("mine")
    (out / ".hidden").write_text("mine too")
    again = mra(src, out, iterations=1, seed=5, overwrite=True)
    same(again, mra(src, tmp_path / "fresh", iterations=1, seed=5))
    assert len(outputs.read_history(str(out))) == 1
    assert sorted(os.listdir(out)) == sorted([".hidden", "notes.txt", "iter_001", outputs.MANIFEST_JSON,
                                              outputs.LOCK_FILE, outputs.CLASSES_MRCS, outputs.CLASSES_STAR,
                                              outputs.HISTORY_JSON, outputs.PARTICLES_STAR])
    assert (out / "notes.txt").read_text() == "mine"


def test_overwrite_removes_the_completion_mark_first(data, tmp_path, monkeypatch):
    src, out = star_source(data), tmp_path / "out"
    mra(src, out)
    removed = []
    real_unlink, real_rmtree = os.unlink, shutil.rmtree
    monkeypatch.setattr(os, "unlink", lambda p, *a, **k: (removed.append(os.path.basename(p)),
                                                          real_unlink(p, *a, **k))[1])
    monkeypatch.setattr(os, "remove", os.unlink)
    monkeypatch.setattr(shutil, "rmtree", lambda p, *a, **k: (removed.append(os.path.basename(p)),
                                                              real_rmtree(p, *a, **k))[1])

    class Stop(Exception):
        pass

    def stop(*_):
        raise Stop()
    monkeypatch.setattr(loop, "iterate", stop)
    with pytest.raises(Stop):
        mra(src, out, overwrite=True)
    owned = [name for name in removed if outputs.owned(name) and not name.startswith(".")]  # not their files
    assert owned[0] == outputs.PARTICLES_STAR
    assert set(owned[1:3]) == {"iter_001", "iter_002"}
    assert not (out / outputs.PARTICLES_STAR).exists() and not (out / "iter_002").exists()


@pytest.mark.parametrize("options", [{}, {"overwrite": True}, {"resume": True}])
def test_a_non_empty_folder_that_is_not_a_run_is_refused(data, tmp_path, options):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("do not touch")
    refused("%s is not empty and is not a cryoralign run folder" % out, out,
            lambda: mra(star_source(data), out, **options))


def test_hidden_files_do_not_make_a_folder_foreign(data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".DS_Store").write_text("x")
    mra(star_source(data), out, iterations=1)
    assert (out / ".DS_Store").read_text() == "x" and (out / outputs.PARTICLES_STAR).exists()


def test_a_failed_run_leaves_its_manifest_and_nothing_that_looks_like_a_result(data, tmp_path):
    images = read_stack(str(data / "particles.mrcs")).copy()
    images[5, 3, 3] = np.nan      # found in iteration 1
    out = tmp_path / "out"
    with pytest.raises(InputError, match="NaN"):
        mra(ArraySource(images), out)
    assert sorted(os.listdir(out)) == sorted([outputs.LOCK_FILE, outputs.MANIFEST_JSON])


def test_the_manifest_records_the_run(data, tmp_path):
    src = star_source(data)
    mra(src, tmp_path / "out", iterations=1, seed=4)
    m = json.loads((tmp_path / "out" / outputs.MANIFEST_JSON).read_text())
    assert m["command"] == "mra" and m["version"]
    assert m["start"] == {"classes": 3, "seed": 4}
    assert m["settings"]["radius"] == 11 and m["settings"]["mirror"] is True
    assert m["settings"]["balanced_iterations"] == 5 and m["settings"]["min_members"] == 5
    fp = m["input"]
    assert (fp["count"], fp["box"], fp["pixel_size"]) == (60, 32, src.pixel_size)
    assert {"ids", "names", "pixels"} <= set(fp)
    assert m["created"]["pid"] == os.getpid()
    for name in ("iterations", "batch_size", "threads", "backend", "gpu", "auto_stop", "stop_fraction"):
        assert name not in m["settings"]   # free to change on --continue


# ---------------------------------------------------------------------------------------------
# 3. --continue resumes only a matching run

def test_continue_refuses_another_data_set_of_the_same_size(data, other, tmp_path):
    out = tmp_path / "out"
    mra(star_source(data), out, iterations=1)
    msg = refused("belongs to another run", out, lambda: mra(star_source(other), out, resume=True))
    assert "input.pixels" in msg and "input.count" not in msg


@pytest.mark.parametrize("changed, field", [
    (dict(radius=10), "settings.radius: 11 -> 10"),
    (dict(shift_range=2.0), "settings.shift_range: 3.0 -> 2.0"),
    (dict(mirror=False), "settings.mirror: true -> false"),
    (dict(seed=1), "start.seed: 0 -> 1"),
    (dict(center=True), "settings.center: false -> true"),
    (dict(first_ring=2), "settings.first_ring: 1 -> 2"),
    (dict(exhaustive=True), "settings.exhaustive: false -> true"),
    (dict(min_members=2), "settings.min_members: 5 -> 2"),
    (dict(balanced_iterations=1), "settings.balanced_iterations: 5 -> 1"),
    (dict(n_classes=2), "start.classes: 3 -> 2"),
])
def test_continue_refuses_changed_settings_naming_each(data, tmp_path, changed, field):
    src, out = star_source(data), tmp_path / "out"
    mra(src, out, iterations=1)
    msg = refused("belongs to another run", out, lambda: mra(src, out, iterations=2, resume=True, **changed))
    assert field in msg


def test_continue_refuses_a_changed_pixel_size_references_or_command(data, tmp_path):
    src, out = star_source(data), tmp_path / "out"
    refs = read_stack(str(data / "references.mrcs"))
    mra(src, out, iterations=1, n_classes=None, references=refs)
    assert "start.references" in refused("belongs to another run", out, lambda: mra(
        src, out, resume=True, n_classes=None, references=refs[::-1].copy()))
    assert "start.classes" in refused("belongs to another run", out, lambda: mra(src, out, resume=True))
    moved = star_source(data)
    moved.pixel_size = 3.5
    assert "input.pixel_size" in refused("belongs to another run", out, lambda: mra(
        moved, out, resume=True, n_classes=None, references=refs))
    msg = refused("belongs to another run", out, lambda: align.align_reference_free(
        src, out_dir=str(out), resume=True, iterations=2, **quiet))
    assert "command: mra -> rfa" in msg


def edit_manifest(out, edit):
    """``edit(manifest)`` applied to the run's ``run.json``, as an older version would have written it."""
    path = out / outputs.MANIFEST_JSON
    recorded = json.loads(path.read_text())
    edit(recorded)
    path.write_text(json.dumps(recorded))


@pytest.mark.parametrize("edit, said", [
    (lambda m: m.update(version="0.0.9"), "holds a run of cryoralign 0.0.9 (manifest format 1), which this one "
                                          "(%s, format 1) cannot continue (version: 0.0.9 -> %s): continue it "
                                          "with that version" % (__version__, __version__)),
    (lambda m: m.pop("format"), "(manifest format (unknown))"),
    (lambda m: m["settings"].pop("ring_step"), "belongs to another run (settings.ring_step: (none) -> 1)"),
    (lambda m: m["settings"].update(ring_step=2), "belongs to another run (settings.ring_step: 2 -> 1)"),
])
def test_continue_refuses_a_run_recorded_by_another_version_or_with_other_settings(data, tmp_path, edit, said):
    src, out = star_source(data), tmp_path / "out"
    mra(src, out, iterations=1)
    edit_manifest(out, edit)
    msg = refused("cannot continue|belongs to another run", out, lambda: mra(src, out, iterations=2, resume=True))
    assert said in msg and msg.endswith("start a new run (--overwrite, or another --out)")


@pytest.mark.parametrize("lacks", ["cutoffs", "history"])
def test_continue_refuses_a_checkpoint_lacking_part_of_the_state(data, tmp_path, lacks):
    src, out = star_source(data), tmp_path / "out"
    mra(src, out, iterations=1)
    # consistent in itself, as a version that did not keep it would write it (else it is damaged: skipped)
    checkpoint = outputs.checkpoint_dir(str(out), 1)
    meta = json.load(open(os.path.join(checkpoint, "meta.json")))
    meta.pop(lacks, None)
    if lacks in meta["arrays"]:
        meta["arrays"].remove(lacks)
        with np.load(os.path.join(checkpoint, "state.npz")) as z:
            arrays = {k: z[k] for k in z.files if k != lacks}
        np.savez(os.path.join(checkpoint, "state.npz"), **arrays)
    json.dump(meta, open(os.path.join(checkpoint, "meta.json"), "w"))
    refused("the checkpoint %s lacks %s: start a new run" % (checkpoint, lacks), out,
            lambda: mra(src, out, iterations=2, resume=True))


def test_continue_refuses_a_checkpoint_of_another_size_before_removing_the_results(data, tmp_path):
    # A finished run whose checkpoint holds 4 classes where its manifest says 3 (copied in from another
    # run): the refusal comes before particles.star is removed (before, it was removed first).
    src, out, four = star_source(data), tmp_path / "out", tmp_path / "four"
    mra(src, out, iterations=1)
    mra(src, four, iterations=1, n_classes=4)
    shutil.rmtree(outputs.checkpoint_dir(str(out), 1))
    shutil.copytree(outputs.checkpoint_dir(str(four), 1), outputs.checkpoint_dir(str(out), 1))
    assert (out / outputs.PARTICLES_STAR).exists()
    refused("the checkpoint in %s belongs to another run \\(60 particles, 4 classes" % out, out,
            lambda: mra(src, out, iterations=2, resume=True))


def test_continue_with_fewer_iterations_than_done_is_refused(data, tmp_path):
    src, out = star_source(data), tmp_path / "out"
    mra(src, out, iterations=3)
    refused("3 iterations are done already", out, lambda: mra(src, out, iterations=2, resume=True))
    assert len(mra(src, out, iterations=3, resume=True).history) == 3   # as many: rewrites the results


def test_continue_into_an_absent_or_empty_folder_starts_fresh(data, tmp_path):
    src = star_source(data)
    (tmp_path / "empty").mkdir()
    for name in ("absent", "empty"):
        res = mra(src, tmp_path / name, resume=True)
        assert [row["iteration"] for row in res.history] == [1, 2]


def test_checkpoints_without_a_manifest_are_refused(data, tmp_path):
    src, out = star_source(data), tmp_path / "out"
    mra(src, out, iterations=1)
    (out / outputs.MANIFEST_JSON).unlink()
    for options in ({"resume": True}, {}, {"overwrite": True}):
        refused("without a manifest", out, lambda: mra(src, out, **options))


def test_continue_and_overwrite_together_are_refused(data, tmp_path):
    out = tmp_path / "out"
    mra(star_source(data), out, iterations=1)
    refused("--continue and --overwrite", out, lambda: mra(star_source(data), out, resume=True, overwrite=True))


def test_continue_extending_a_finished_run_removes_its_completion_mark_first(data, tmp_path, monkeypatch):
    src, out = star_source(data), tmp_path / "out"
    mra(src, out, iterations=1)

    def boom(*_):
        raise RuntimeError("killed")
    monkeypatch.setattr(loop, "search_pass", boom)
    with pytest.raises(RuntimeError):
        mra(src, out, iterations=3, resume=True)
    assert not (out / outputs.PARTICLES_STAR).exists() and (out / "iter_001").is_dir()


# ---------------------------------------------------------------------------------------------
# 4. What may change on --continue, and a schedule that does not depend on the total

def test_batch_size_does_not_change_the_result(data):
    same(mra(star_source(data), None, batch_size=2048), mra(star_source(data), None, batch_size=7))


def test_one_iteration_then_continue_to_three_equals_three_straight(data, tmp_path):
    src = star_source(data)
    straight = mra(src, tmp_path / "straight", iterations=3)
    mra(src, tmp_path / "extended", iterations=1)
    extended = mra(src, tmp_path / "extended", iterations=3, resume=True, batch_size=7, auto_stop=True,
                   stop_fraction=0.0, backend="cpu")
    same(straight, extended)
    for a, b in zip(outputs.read_particles(str(tmp_path / "straight")),
                    outputs.read_particles(str(tmp_path / "extended"))):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(read_stack(str(tmp_path / "straight" / outputs.CLASSES_MRCS)),
                                  read_stack(str(tmp_path / "extended" / outputs.CLASSES_MRCS)))


def test_reference_free_extension_equals_straight(data, tmp_path):
    src = star_source(data)
    straight = align.align_reference_free(src, iterations=3, out_dir=str(tmp_path / "a"), **quiet)
    align.align_reference_free(src, iterations=1, out_dir=str(tmp_path / "b"), **quiet)
    same(straight, align.align_reference_free(src, iterations=3, out_dir=str(tmp_path / "b"), resume=True,
                                              **quiet))


# ---------------------------------------------------------------------------------------------
# 5. One run at a time

def test_a_folder_in_use_is_refused(data, tmp_path):
    src, out = star_source(data), tmp_path / "out"
    mra(src, out, iterations=1)
    with open(str(out / outputs.LOCK_FILE), "r+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        refused("%s is in use by another run .*: wait for it to finish or use another --out" % out, out,
                lambda: mra(src, out, resume=True))
    assert len(mra(src, out, resume=True).history) == 2      # released: the next run goes


def test_a_run_holds_its_folder_while_it_runs(data, tmp_path, monkeypatch):
    src, out = star_source(data), tmp_path / "out"
    seen = []
    real = loop.save

    def save(out_dir, state):
        real(out_dir, state)
        with open(os.path.join(out_dir, outputs.LOCK_FILE)) as f:
            owner = f.read()
            with pytest.raises(BlockingIOError):
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        seen.append(owner)
    monkeypatch.setattr(loop, "save", save)
    mra(src, out)
    assert len(seen) == 2 and str(os.getpid()) in seen[0]


def test_a_copied_run_folder_continues_despite_its_copied_lock_file(data, tmp_path):
    src = star_source(data)
    mra(src, tmp_path / "first", iterations=1)
    shutil.copytree(str(tmp_path / "first"), str(tmp_path / "second"), symlinks=True)
    assert (tmp_path / "second" / outputs.LOCK_FILE).exists()
    assert len(mra(src, tmp_path / "second", iterations=2, resume=True).history) == 2


# ---------------------------------------------------------------------------------------------
# 6. A checkpoint holding NaN is damaged

def _poison(out, iteration, name="params"):
    path = os.path.join(outputs.checkpoint_dir(str(out), iteration), "state.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays[name] = arrays[name].astype(np.float64) if arrays[name].dtype.kind != "f" else arrays[name]
    arrays[name].flat[0] = np.nan
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("name", ["params", "averages", "references"])
def test_a_checkpoint_with_nan_is_skipped(data, tmp_path, caplog, name):
    src, out = star_source(data), tmp_path / "out"
    straight = mra(src, tmp_path / "straight", iterations=2)
    mra(src, out, iterations=2)
    _poison(out, 2, name)
    with caplog.at_level(logging.WARNING):
        again = mra(src, out, iterations=2, resume=True)
    assert "skipping damaged checkpoint" in caplog.text and "NaN" in caplog.text
    same(straight, again)
    assert [row["iteration"] for row in again.history] == [1, 2]
    _poison(out, 1, name)
    _poison(out, 2, name)
    same(straight, mra(src, out, iterations=2, resume=True))       # none left: a fresh start
