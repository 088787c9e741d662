"""engine.cli: every failure a user can cause ends in one line ``cryoralign-engine: error: ...`` that
names the problem and the fix, with exit status 2, never a traceback.

Here the command runs in-process (``cli.main``); whole processes (MPI, pipes, signals, file-size
limits) are in ``tests/engine/test_process.py``.

Exit status 2 covers bad input *and* an output folder the run cannot write (disk full, permission
denied, read-only file system): either way the user has to change something, and the message says
what.  Status 1 (with a traceback) is kept for failures the user cannot fix: bugs.
"""
import errno
import os
import re

import numpy as np
import pytest

from cryoralign_plugin.engine import align, cli, loop, memory, outputs, search, synthetic
from cryoralign_plugin.engine.errors import InputError, OutputError
from cryoralign_plugin.engine.geometry import polar_grid, shift_count
from cryoralign_plugin.engine.mrc import write_stack
from cryoralign_plugin.engine.settings import Settings

quiet = dict(log=lambda *_: None)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    synthetic.make_dataset(str(root), n_particles=40, box=32, n_classes=2, snr=2.0, seed=1)
    return root


def run_main(argv, capsys):
    """``cli.main(argv)`` -> (exit status, stderr)."""
    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err


def one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cryoralign-engine: error: "), err
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Flags: refused up front (before the particles are read), naming the flag and the fix

BAD_FLAGS = [
    (["mra", "--classes", 2, "--seed", -1], "--seed -1"),
    (["rfa", "--gpu", "x"], "--gpu 'x': give GPU ids as integers, e.g. \"0 1\""),
    (["rfa", "--gpu", "0 -1"], "--gpu '0 -1'"),
    (["rfa", "--iterations", 0], "--iterations 0"),
    (["rfa", "--batch-size", 0], "--batch-size 0"),
    (["mra", "--classes", 2, "--preselect", 0], "--preselect 0"),
    (["rfa", "--threads", -1], "--threads -1"),
    (["rfa", "--threads", 0], "--threads 0"),
    (["rfa", "--first-ring", 0], "--first-ring 0"),
    (["rfa", "--ring-step", 0], "--ring-step 0"),
    (["rfa", "--shift-range", -1], "--shift-range -1"),
    (["rfa", "--shift-range", "nan"], "--shift-range nan"),
    (["rfa", "--shift-range", "inf"], "--shift-range inf"),
    (["rfa", "--shift-step", 0], "--shift-step 0"),
    (["rfa", "--shift-step", "nan"], "--shift-step nan"),
    (["rfa", "--radius", 1], "--radius 1"),
    (["rfa", "--radius", 0], "--radius 0"),
    (["rfa", "--stop-fraction", -0.1], "--stop-fraction -0.1"),
    (["rfa", "--stop-fraction", 1.5], "--stop-fraction 1.5"),
    (["mra", "--classes", 0], "--classes 0"),
    (["mra", "--classes", -2], "--classes -2"),
    (["mra", "--classes", 2, "--min-members", -1], "--min-members -1"),
    (["mra", "--classes", 2, "--balanced-iterations", -1], "--balanced-iterations -1"),
    (["mra", "--classes", 2, "--overcluster", 0], "--overcluster 0"),
    (["mra", "--classes", 2, "--overcluster-iterations", 0], "--overcluster-iterations 0"),
    (["mra", "--classes", 2, "--resplit", -1], "--resplit -1"),
    (["mra", "--classes", 2, "--resplit", 5], "--resplit > 5"),   # not after the first round's merge
    (["mra", "--classes", 2, "--resplit", 6, "--resplit-iterations", 0], "--resplit-iterations 0"),
    (["rfa", "--pixel-size", 0], "--pixel-size 0"),
]


@pytest.mark.parametrize("argv,expected", BAD_FLAGS, ids=[" ".join(map(str, a)) for a, _ in BAD_FLAGS])
def test_a_bad_flag_is_one_line_naming_it_before_the_input_is_read(tmp_path, capsys, argv, expected):
    out = tmp_path / "out"
    status, err = run_main([argv[0], "--particles", tmp_path / "not-read.star", "--out", out, *argv[1:]],
                           capsys)
    line = one_error_line(err)
    assert status == 2
    assert expected in line
    assert "not-read.star" not in line          # checked before the particles are read
    assert not out.exists()                     # nothing written


def test_the_radius_error_names_the_radius_not_the_shift_range(tmp_path, capsys):
    status, err = run_main(["rfa", "--particles", tmp_path / "p.star", "--out", tmp_path / "o",
                            "--radius", 1], capsys)
    line = one_error_line(err)
    assert status == 2 and "--radius 1" in line and "shift range" not in line


@pytest.mark.parametrize("options,expected", [
    (dict(seed=-1), "--seed -1"),
    (dict(gpu=["x"]), "--gpu"),
    (dict(iterations=0), "--iterations 0"),
    (dict(batch_size=0), "--batch-size 0"),
    (dict(preselect=0), "--preselect 0"),
    (dict(threads=-1), "--threads -1"),
    (dict(shift_step=float("nan")), "--shift-step nan"),
    (dict(shift_range=-1.0), "--shift-range -1"),
    (dict(first_ring=0), "--first-ring 0"),
    (dict(iterations=2.5), "--iterations 2.5"),
    (dict(backend="gpu"), "backend"),
])
def test_the_python_api_raises_the_same_input_errors(options, expected):
    parts = np.random.default_rng(0).normal(size=(6, 32, 32)).astype(np.float32)
    with pytest.raises(InputError, match=re.escape(expected)):
        align.align_reference_free(parts, **options, **quiet)
    with pytest.raises(InputError, match=re.escape(expected)):
        Settings(**options).check()


def test_good_settings_pass_the_check():
    Settings().check()
    Settings(radius=2, threads=1, gpu=[0, 1], min_members=0, balanced_iterations=0, stop_fraction=0.0).check()


# ---------------------------------------------------------------------------------------------
# The shift grid: its size and the memory it implies are checked before anything is allocated

def _refuse_allocation(monkeypatch):
    def allocated(*_a, **_k):
        raise AssertionError("the shift grid was allocated before its size was checked")
    monkeypatch.setattr(loop, "shift_grid", allocated)
    monkeypatch.setattr(search, "reference_rings", allocated)


def test_a_shift_grid_too_large_for_memory_is_refused_before_allocating(dataset, tmp_path, capsys,
                                                                         monkeypatch):
    _refuse_allocation(monkeypatch)
    status, err = run_main(["rfa", "--particles", dataset / "particles.star", "--out", tmp_path / "o",
                            "--shift-step", 0.001], capsys)
    line = one_error_line(err)
    assert status == 2
    assert "--shift-step 0.001 with --shift-range 3 gives 36012001 shifts per reference" in line
    assert "GiB" in line and "use a step of at least" in line


def test_the_shift_memory_message_gives_the_numbers_and_a_step_that_fits(dataset, capsys, tmp_path,
                                                                        monkeypatch):
    _refuse_allocation(monkeypatch)
    monkeypatch.setattr(memory, "budget_bytes", lambda: 2 ** 30)
    status, err = run_main(["rfa", "--particles", dataset / "particles.star", "--out", tmp_path / "o",
                            "--shift-step", 0.01], capsys)
    line = one_error_line(err)
    assert status == 2
    assert "--shift-step 0.01 with --shift-range 3 gives 361201 shifts per reference" in line
    gib = float(re.search(r"~([0-9.]+) GiB", line).group(1))
    grid = polar_grid(11)   # the automatic radius of a 32 px box with a 3 px shift range
    assert gib == pytest.approx(search.search_bytes(1, 361201, grid) / 2 ** 30, rel=0.05)
    step = float(re.search(r"use a step of at least ([0-9.]+)", line).group(1))
    assert search.search_bytes(1, shift_count(3, step), grid) <= 2 ** 30       # the advice fits
    assert search.search_bytes(1, shift_count(3, step - 0.01), grid) > 2 ** 30  # and is the finest that does


def test_the_python_api_refuses_the_shift_grid_with_the_same_error(monkeypatch):
    _refuse_allocation(monkeypatch)
    parts = np.random.default_rng(0).normal(size=(6, 32, 32)).astype(np.float32)
    with pytest.raises(InputError, match="shifts per reference"):
        align.align_reference_free(parts, shift_step=0.001, **quiet)


def test_many_references_are_counted_in_the_shift_memory(monkeypatch):
    parts = np.random.default_rng(0).normal(size=(60, 32, 32)).astype(np.float32)
    per_reference = search.search_bytes(1, shift_count(3, 1), polar_grid(11))
    monkeypatch.setattr(memory, "budget_bytes", lambda: 20 * per_reference)  # 20 references fit, not 50
    align.align_multi_reference(parts, n_classes=20, iterations=1, **quiet)
    with pytest.raises(InputError, match="49 shifts per reference x 50 references"):
        align.align_multi_reference(parts, n_classes=50, iterations=1, **quiet)


# ---------------------------------------------------------------------------------------------
# Blank images: say which one, and where to fix it

def test_a_blank_reference_is_named_and_the_reference_stack_blamed(dataset, tmp_path, capsys):
    refs = np.random.default_rng(0).normal(size=(3, 32, 32)).astype(np.float32)
    refs[1] = 0.25
    write_stack(str(tmp_path / "refs.mrcs"), refs)
    status, err = run_main(["mra", "--particles", dataset / "particles.star", "--out", tmp_path / "o",
                            "--references", tmp_path / "refs.mrcs"], capsys)
    line = one_error_line(err)
    assert status == 2
    assert "reference 2 " in line and "reference stack" in line and "particle set" not in line
    parts = np.random.default_rng(1).normal(size=(10, 32, 32)).astype(np.float32)
    with pytest.raises(InputError, match="reference 2 .*reference stack"):
        align.align_multi_reference(parts, references=refs, iterations=1, **quiet)


def test_a_blank_particle_is_named_by_its_number_in_the_input_not_in_its_batch():
    parts = np.random.default_rng(0).normal(size=(20, 32, 32)).astype(np.float32)
    parts[12] = 1.0   # particle 13: the 5th of the second batch of 8
    with pytest.raises(InputError, match="particle set") as raised:
        align.align_reference_free(parts, batch_size=8, iterations=1, **quiet)
    assert re.search(r"\b13\b", str(raised.value)) and not re.search(r"\b5\b", str(raised.value))


def test_a_blank_particle_in_the_wiener_averages_is_named_by_its_number(tmp_path):
    from cryoralign_plugin.engine.mrc import read_stack
    from cryoralign_plugin.engine.sources import StarSource
    synthetic.make_dataset(str(tmp_path), n_particles=20, box=32, n_classes=1, snr=2.0, seed=1,
                           ctf=synthetic.CtfSimulation(defocus_range=(1.0, 2.0), pixel_size=3.0))
    stack = read_stack(str(tmp_path / "particles.mrcs"))
    stack[12] = 1.0   # particle 13, the 5th of the second batch: RFA's first average (wiener) meets it first
    write_stack(str(tmp_path / "particles.mrcs"), stack, pixel_size=3.0)
    source = StarSource.from_star(str(tmp_path / "particles.star"))
    with pytest.raises(InputError, match="particle set") as raised:
        align.align_reference_free(source, batch_size=8, iterations=1, ctf="wiener", **quiet)
    assert re.search(r"\b13\b", str(raised.value)) and not re.search(r"\b5\b", str(raised.value))


def test_a_blank_particle_drawn_as_a_reference_is_named_by_its_number():
    parts = np.random.default_rng(0).normal(size=(5, 32, 32)).astype(np.float32)
    drawn = np.sort(np.random.default_rng(0).choice(5, size=2, replace=False))  # as the engine draws (seed 0)
    parts[drawn[1]] = 0.0    # the second particle drawn
    with pytest.raises(InputError, match="particle set") as raised:
        align.align_multi_reference(parts, n_classes=2, iterations=1, **quiet)
    message = str(raised.value)
    assert re.search(r"\b%d\b" % (drawn[1] + 1), message) and "reference stack" not in message
    assert drawn[1] + 1 != 2 and not re.search(r"\b2\b", message)   # not its place among those drawn


# ---------------------------------------------------------------------------------------------
# The output folder cannot be written: disk full, permission denied, read-only file system

def rfa(dataset, out, *extra):
    return ["rfa", "--particles", dataset / "particles.star", "--out", out, "--iterations", 3,
            "--threads", 1, *extra]


def _fail_on_call(monkeypatch, target, name, call, code):
    """Make the ``call``-th call of ``target.name`` raise OSError(``code``) with no file name, as a
    write(2) that fails does."""
    real, calls = getattr(target, name), []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)
    monkeypatch.setattr(target, name, failing)


def leftovers(out):
    return [n for n in os.listdir(out) if n.startswith(".")]


def test_a_full_disk_while_checkpointing_is_one_line_and_the_run_resumes(dataset, tmp_path, capsys,
                                                                          monkeypatch):
    assert run_main(rfa(dataset, tmp_path / "whole"), capsys)[0] == 0
    out = tmp_path / "full"
    with monkeypatch.context() as patch:
        _fail_on_call(patch, np, "savez", 3, errno.ENOSPC)   # the checkpoint of iteration 3
        status, err = run_main(rfa(dataset, out), capsys)
    line = one_error_line(err)
    assert status == 2
    assert line.startswith("cryoralign-engine: error: no space left on device writing %s: free space or "
                           "choose another --out" % outputs.checkpoint_dir(out, 3))
    assert "--continue" in line
    assert leftovers(out) == [] and not (out / outputs.PARTICLES_STAR).exists()
    assert outputs.last_checkpoint(str(out))[0] == 2
    assert run_main(rfa(dataset, out, "--continue"), capsys)[0] == 0
    assert (out / outputs.PARTICLES_STAR).read_text() == (tmp_path / "whole" / outputs.PARTICLES_STAR).read_text()


def test_a_full_disk_while_writing_the_results_is_one_line_and_the_run_resumes(dataset, tmp_path, capsys,
                                                                                monkeypatch):
    import mrcfile
    out = tmp_path / "full"
    with monkeypatch.context() as patch:
        _fail_on_call(patch, mrcfile, "new", 1, errno.EDQUOT)   # classes.mrcs, after the last iteration
        status, err = run_main(rfa(dataset, out), capsys)
    line = one_error_line(err)
    assert status == 2
    assert ("disk quota exceeded writing %s" % (out / outputs.CLASSES_MRCS)) in line
    assert leftovers(out) == [] and not (out / outputs.PARTICLES_STAR).exists()
    assert run_main(rfa(dataset, out, "--continue"), capsys)[0] == 0
    assert len(outputs.read_particles(str(out)).ids) == 40


@pytest.mark.parametrize("code,expected", [(errno.EACCES, "permission denied"),
                                           (errno.EROFS, "read-only file system")])
def test_an_output_folder_that_becomes_unwritable_is_one_line(dataset, tmp_path, capsys, monkeypatch,
                                                              code, expected):
    import tempfile
    out = tmp_path / "o"
    real = tempfile.mkstemp

    def mkstemp(*args, prefix="", dir=None, **kwargs):   # iteration 2's checkpoint cannot be created
        if prefix.startswith(".iter_002"):
            raise OSError(code, os.strerror(code), os.path.join(dir, prefix + "x"))
        return real(*args, prefix=prefix, dir=dir, **kwargs)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    status, err = run_main(rfa(dataset, out), capsys)
    line = one_error_line(err)
    assert status == 2
    assert ("%s writing %s" % (expected, outputs.checkpoint_dir(out, 2))) in line and "--out" in line


@pytest.mark.parametrize("code,expected", [(errno.EACCES, "Permission denied"),
                                           (errno.EROFS, "Read-only file system")])
def test_an_unwritable_output_folder_is_refused_up_front(dataset, tmp_path, capsys, monkeypatch, code,
                                                         expected):
    out = tmp_path / "o"
    out.mkdir()

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(out))
    import tempfile
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    status, err = run_main(rfa(dataset, out), capsys)
    line = one_error_line(err)
    assert status == 2 and str(out) in line and expected.lower() in line.lower()
    assert not (out / outputs.PARTICLES_STAR).exists()


def test_output_error_is_an_input_error_with_status_2(tmp_path):
    exc = OutputError.writing(str(tmp_path / "x"), OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert isinstance(exc, InputError) and str(tmp_path / "x") in str(exc)


# ---------------------------------------------------------------------------------------------
# A closed standard output does not stop the run

def test_a_closed_standard_output_does_not_stop_the_run(dataset, tmp_path, capsys, monkeypatch):
    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        def fileno(self):
            raise OSError("no file descriptor")
    monkeypatch.setattr("sys.stdout", ClosedPipe())
    status, err = run_main(rfa(dataset, tmp_path / "o"), capsys)
    assert status == 0, err
    assert "Traceback" not in err
    assert len(outputs.read_particles(str(tmp_path / "o")).ids) == 40


# ---------------------------------------------------------------------------------------------
# Interrupted and terminated runs say what to do next

def test_an_interrupt_says_where_the_run_can_be_continued(dataset, tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    monkeypatch.setattr(loop, "search_pass", _interrupt_on_call(loop.search_pass, 3, KeyboardInterrupt))
    status, err = run_main(rfa(dataset, out), capsys)
    assert status == 130
    lines = err.strip().splitlines()
    assert lines == ["cryoralign-engine: interrupted: the last complete iteration (2) in %s can be resumed "
                     "with --continue" % out]


def test_sigterm_says_where_the_run_can_be_continued(dataset, tmp_path, capsys, monkeypatch):
    import signal
    out = tmp_path / "o"

    def terminate():
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):  # would kill pytest itself
            raise AssertionError("cli.main installs no SIGTERM handler")
        os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(loop, "search_pass", _interrupt_on_call(loop.search_pass, 2, terminate))
    before = signal.getsignal(signal.SIGTERM)
    status, err = run_main(rfa(dataset, out), capsys)
    assert signal.getsignal(signal.SIGTERM) is before       # main puts the handler back
    assert status == 143
    assert err.strip().splitlines() == ["cryoralign-engine: terminated (SIGTERM): the last complete "
                                        "iteration (1) in %s can be resumed with --continue" % out]


def _interrupt_on_call(real, call, what):
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            if isinstance(what, type):
                raise what()
            what()
        return real(*args, **kwargs)
    return wrapper
