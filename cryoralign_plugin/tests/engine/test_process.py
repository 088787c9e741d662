"""Whole ``cryoralign-engine`` processes meeting their surroundings: more MPI ranks than particles, a
reader that closes the pipe, SIGTERM, a file-size limit.  (In-process error cases: tests/engine/test_cli_errors.py.)"""
import os
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cryoralign_plugin.engine import outputs, synthetic
from cryoralign_plugin.engine.mrc import read_stack

BIN = os.path.dirname(sys.executable)
ENGINE = [os.path.join(BIN, "cryoralign-engine")]
MPIEXEC = os.path.join(BIN, "mpiexec")
NO_MPI = {k: v for k, v in os.environ.items() if k not in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE",
                                                            "MPI_LOCALNRANKS", "PMIX_RANK")}


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    root = tmp_path_factory.mktemp("two")
    synthetic.make_dataset(str(root), n_particles=2, box=32, n_classes=2, snr=2.0, seed=1)
    return root / "particles.star"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    synthetic.make_dataset(str(root), n_particles=40, box=32, n_classes=2, snr=2.0, seed=1)
    return root / "particles.star"


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    root = tmp_path_factory.mktemp("medium")
    synthetic.make_dataset(str(root), n_particles=600, box=48, n_classes=3, snr=1.0, seed=2)
    return root / "particles.star"


def same_results(a, b):
    assert (a / outputs.PARTICLES_STAR).read_text() == (b / outputs.PARTICLES_STAR).read_text()
    np.testing.assert_array_equal(read_stack(str(a / outputs.CLASSES_MRCS)), read_stack(str(b / outputs.CLASSES_MRCS)))


def one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cryoralign-engine: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("command", [["rfa"], ["mra", "--classes", "2"]], ids=["rfa", "mra"])
def test_more_mpi_ranks_than_particles_give_the_one_rank_result(two, tmp_path, command):
    args = command + ["--particles", str(two), "--iterations", "3", "--threads", "1"]
    one = subprocess.run(ENGINE + args + ["--out", str(tmp_path / "1")], capture_output=True, text=True,
                         timeout=300, env=NO_MPI)
    assert one.returncode == 0, one.stderr
    three = subprocess.run([MPIEXEC, "-n", "3"] + ENGINE + args + ["--out", str(tmp_path / "3")],
                           capture_output=True, text=True, timeout=300)
    assert three.returncode == 0, three.stderr
    assert "3 MPI rank(s)" in three.stdout and "Traceback" not in three.stderr
    same_results(tmp_path / "1", tmp_path / "3")


def test_a_closed_standard_output_does_not_stop_the_run(small, tmp_path):
    out = tmp_path / "o"
    job = subprocess.Popen(ENGINE + ["rfa", "--particles", str(small), "--out", str(out), "--iterations", "3",
                                     "--threads", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=NO_MPI)
    first = job.stdout.readline()
    job.stdout.close()          # like `| head -1`: the next line the engine writes meets a closed pipe
    err = job.stderr.read().decode()
    assert job.wait(timeout=300) == 0, err
    assert first.startswith(b"cryoralign-engine rfa: 40 particles")
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert "standard output was closed: the run goes on without its log" in err
    assert len(outputs.read_particles(str(out)).ids) == 40
    assert len(outputs.read_history(str(out))) == 3


def test_a_file_size_limit_is_one_line_naming_the_file(small, tmp_path):
    out = tmp_path / "o"

    def limit():   # a checkpoint (state.npz holds the 32 x 32 reference) is larger than this
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    done = subprocess.run(ENGINE + ["rfa", "--particles", str(small), "--out", str(out), "--iterations", "2",
                                    "--threads", "1"],
                          capture_output=True, text=True, timeout=300, env=NO_MPI, preexec_fn=limit)
    line = one_error_line(done.stderr)
    assert done.returncode == 2
    assert ("file too large writing %s: raise the file-size limit (ulimit -f) or choose another --out"
            % outputs.checkpoint_dir(out, 1)) in line
    assert [n for n in os.listdir(out) if n.startswith(".")] == []     # no temporary left behind


def _wait_for(path, job, timeout=300):
    end = time.time() + timeout
    while not os.path.exists(path):
        assert job.poll() is None, "the run ended before %s appeared" % path
        assert time.time() < end, "%s never appeared" % path
        time.sleep(0.02)


@pytest.mark.slow
def test_sigterm_says_what_continue_resumes_and_continue_gives_the_whole_result(medium, tmp_path):
    def mra(out, *extra):
        return ENGINE + ["mra", "--particles", str(medium), "--out", str(out), "--classes", "3", "--iterations",
                         "5", "--threads", "1", "--balanced-iterations", "2", *extra]
    whole = subprocess.run(mra(tmp_path / "whole"), capture_output=True, text=True, timeout=600, env=NO_MPI)
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "stopped"
    job = subprocess.Popen(mra(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=NO_MPI)
    _wait_for(outputs.checkpoint_dir(out, 1), job)
    job.send_signal(signal.SIGTERM)
    err = job.stderr.read()
    assert job.wait(timeout=120) == 143
    done = outputs.last_checkpoint(str(out))[0]
    assert done < 5 and not (out / outputs.PARTICLES_STAR).exists()
    assert err.strip().splitlines() == ["cryoralign-engine: terminated (SIGTERM): the last complete iteration "
                                        "(%d) in %s can be resumed with --continue" % (done, out)]
    again = subprocess.run(mra(out, "--continue"), capture_output=True, text=True, timeout=600, env=NO_MPI)
    assert again.returncode == 0, again.stderr
    assert "continuing after iteration %d" % done in again.stdout
    same_results(tmp_path / "whole", out)
