"""engine.cli: the parser and its defaults, flags -> Settings, and how errors end the command."""
import dataclasses
import os
import subprocess
import sys

import pytest

from cryoralign_plugin.engine import cli
from cryoralign_plugin.engine.errors import InputError
from cryoralign_plugin.engine.settings import SHIFT_RANGE, Settings

REQUIRED = ["--particles", "p.star", "--out", "out"]


def parse(*argv):
    return cli.build_parser().parse_args([str(a) for a in argv])


# ---------------------------------------------------------------------------------------------
# Parser

def test_rfa_defaults_are_the_settings_defaults():
    args = parse("rfa", *REQUIRED)
    assert args.command == "rfa" and args.particles == "p.star" and args.out == "out"
    assert not args.resume and args.pixel_size is None
    assert cli.settings_from(args) == Settings()


def test_mra_starts_from_classes_or_references_and_has_settings_defaults():
    args = parse("mra", *REQUIRED, "--classes", 5)
    assert args.classes == 5 and args.references is None
    assert cli.settings_from(args) == Settings()
    args = parse("mra", *REQUIRED, "--references", "refs.mrcs")
    assert args.references == "refs.mrcs" and args.classes is None


@pytest.mark.parametrize("argv", [
    ["mra", *REQUIRED],                                             # neither
    ["mra", *REQUIRED, "--classes", "3", "--references", "r.mrcs"],  # both
    ["rfa", "--out", "out"],                                        # no particles
    ["rfa", "--particles", "p.star"],                               # no output
    ["rfa", *REQUIRED, "--classes", "3"],                           # an mra flag
    ["rfa", *REQUIRED, "--backend", "gpu"],                         # not a backend
    ["align", *REQUIRED],
    [],
])
def test_bad_command_lines_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(argv)
    assert exit_.value.code == 2
    assert "usage: cryoralign-engine" in capsys.readouterr().err


def test_info_defaults():
    args = parse("info")
    assert (args.box, args.classes, args.shift_range) == (0, 1, SHIFT_RANGE)


# ---------------------------------------------------------------------------------------------
# Flags -> Settings, one at a time

@pytest.mark.parametrize("command,flags,field,value", [
    ("rfa", ["--radius", "20"], "radius", 20),
    ("rfa", ["--first-ring", "2"], "first_ring", 2),
    ("rfa", ["--ring-step", "3"], "ring_step", 3),
    ("rfa", ["--shift-range", "2.5"], "shift_range", 2.5),
    ("rfa", ["--shift-step", "0.5"], "shift_step", 0.5),
    ("rfa", ["--no-mirror"], "mirror", False),
    ("rfa", ["--exhaustive"], "exhaustive", True),
    ("mra", ["--preselect", "12"], "preselect", 12),
    ("rfa", ["--iterations", "7"], "iterations", 7),
    ("rfa", ["--auto-stop"], "auto_stop", True),
    ("rfa", ["--stop-fraction", "0.1"], "stop_fraction", 0.1),
    ("rfa", ["--center"], "center", True),
    ("rfa", ["--use-prior"], "use_prior", True),
    ("rfa", ["--backend", "cpu"], "backend", "cpu"),
    ("rfa", ["--gpu", "0 1"], "gpu", [0, 1]),
    ("rfa", ["--gpu", "2,3"], "gpu", [2, 3]),
    ("rfa", ["--gpu", ""], "gpu", None),             # what Scipion passes without GPUs
    ("rfa", ["--threads", "3"], "threads", 3),
    ("rfa", ["--batch-size", "64"], "batch_size", 64),
    ("mra", ["--seed", "5"], "seed", 5),
    ("mra", ["--min-members", "3"], "min_members", 3),
    ("mra", ["--balanced-iterations", "2"], "balanced_iterations", 2),
    ("mra", ["--iterations", "4", "--no-mirror"], "iterations", 4),
])
def test_each_flag_sets_its_settings_field_and_nothing_else(command, flags, field, value):
    extra = ["--classes", "2"] if command == "mra" else []
    settings = cli.settings_from(parse(command, *REQUIRED, *extra, *flags))
    expected = dataclasses.replace(Settings(), **{field: value})
    if "--no-mirror" in flags and field != "mirror":
        expected = dataclasses.replace(expected, mirror=False)
    assert settings == expected


def test_every_settings_field_has_a_flag():
    # ``rfa`` and ``mra`` together expose every field of Settings
    fields = {f.name for f in dataclasses.fields(Settings)}
    given = set(vars(parse("rfa", *REQUIRED))) | set(vars(parse("mra", *REQUIRED, "--classes", 2)))
    assert fields <= given, "no flag for %s" % sorted(fields - given)


# ---------------------------------------------------------------------------------------------
# Errors end the command with a one-line message and the right status

def one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cryoralign-engine: error: ")
    return lines[0]


def test_a_missing_star_file_exits_with_status_2_and_one_line(tmp_path):
    missing = tmp_path / "nowhere.star"
    done = subprocess.run([sys.executable, "-m", "cryoralign_plugin.engine.cli", "rfa", "--particles",
                           str(missing), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items()
                               if k not in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")})
    assert done.returncode == 2
    assert str(missing) in one_error_line(done.stderr)
    assert not (tmp_path / "out").exists()              # nothing written for bad input


def test_main_in_process_input_error_is_status_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["mra", "--particles", str(tmp_path / "none.star"), "--out", str(tmp_path / "o"),
                  "--classes", "2"])
    assert exit_.value.code == 2
    assert "none.star" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("raised,status", [(InputError("bad input: fix it"), 2), (KeyboardInterrupt(), 130),
                                           (RuntimeError("a bug"), 1)])
def test_main_maps_failures_to_exit_status(monkeypatch, capsys, raised, status):
    def fail(args, comm):
        raise raised
    monkeypatch.setattr(cli, "run", fail)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["rfa", *REQUIRED])
    assert exit_.value.code == status
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    if status == 2:
        assert one_error_line(err) == "cryoralign-engine: error: bad input: fix it"
    elif status == 130:
        assert last.startswith("cryoralign-engine: interrupted: ")   # and what --continue resumes
    else:   # a bug keeps its traceback, then says what it was
        assert "Traceback" in err and last == "cryoralign-engine: error: RuntimeError: a bug"


def test_main_returns_0_when_the_run_succeeds(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "run", lambda args, comm: calls.append((args.command, comm.size)))
    assert cli.main(["rfa", *REQUIRED]) == 0
    assert calls == [("rfa", 1)]


def test_info_prints_versions_backends_and_ranks(capsys):
    cli.main(["info"])
    out = capsys.readouterr().out
    assert "cryoralign engine: python" in out and "backends: cpu" in out
    assert out.strip().splitlines()[-1] == "MPI ranks: 1"
