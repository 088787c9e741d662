"""Faults: a run killed mid-iteration continues exactly; a dead MPI rank ends the job promptly."""
import os
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


@pytest.fixture(scope="module")
def star(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    synthetic.make_dataset(str(root), n_particles=3000, box=64, n_classes=4, snr=0.5, seed=3)
    return str(root / "particles.star")


def mra(star, out, *extra):
    return ENGINE + ["mra", "--particles", star, "--out", str(out), "--classes", "4", "--iterations", "6",
                     "--threads", "1", "--balanced-iterations", "2", *extra]


def wait_for(path, timeout=120):
    end = time.time() + timeout
    while not os.path.exists(path):
        assert time.time() < end, "%s never appeared" % path
        time.sleep(0.05)


def same_results(a, b):
    for x, y in zip(outputs.read_particles(str(a)), outputs.read_particles(str(b))):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(read_stack(str(a / outputs.CLASSES_MRCS)),
                                  read_stack(str(b / outputs.CLASSES_MRCS)))


@pytest.mark.slow
def test_killed_run_continues_to_the_uninterrupted_result(star, tmp_path):
    subprocess.run(mra(star, tmp_path / "whole"), check=True, capture_output=True)
    victim = subprocess.Popen(mra(star, tmp_path / "killed"), stdout=subprocess.DEVNULL)
    wait_for(outputs.checkpoint_dir(tmp_path / "killed", 2))
    time.sleep(0.3)  # inside iteration 3
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "killed" / outputs.PARTICLES_STAR).exists()
    done = subprocess.run(mra(star, tmp_path / "killed", "--continue"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "continuing after iteration" in done.stdout
    same_results(tmp_path / "whole", tmp_path / "killed")


def test_same_input_and_seed_give_identical_results(star, tmp_path):
    for name in ("a", "b"):
        subprocess.run(mra(star, tmp_path / name)[:-4] + ["--iterations", "2"], check=True, capture_output=True)
    same_results(tmp_path / "a", tmp_path / "b")


def _rank_pids(out):
    """PIDs of the engine processes writing to ``out``, by MPI rank."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open("/proc/%s/cmdline" % pid, "rb").read().split(b"\0")
            env = open("/proc/%s/environ" % pid, "rb").read().split(b"\0")
        except OSError:
            continue
        if str(out).encode() in cmd and b"mpirun" not in cmd[0]:
            rank = [e.split(b"=")[1] for e in env if e.startswith(b"PMI_RANK=")]
            if rank:
                found[int(rank[0])] = int(pid)
    return found


@pytest.mark.slow
def test_a_killed_mpi_rank_ends_the_job(star, tmp_path):
    out = tmp_path / "mpi"
    job = subprocess.Popen([os.path.join(BIN, "mpirun"), "-n", "2"] + mra(star, out),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(outputs.checkpoint_dir(out, 1))
    ranks = _rank_pids(out)
    assert set(ranks) == {0, 1}
    os.kill(ranks[1], signal.SIGKILL)
    start = time.time()
    log, _ = job.communicate(timeout=60)
    assert job.returncode != 0
    assert time.time() - start < 30
    assert "rank 1 of 2: pid %d" % ranks[1] in log  # the launcher reports the dead PID and its signal
    assert "PID %d" % ranks[1] in log and "signal 9" in log
    assert not (out / outputs.PARTICLES_STAR).exists()
    time.sleep(1)
    assert _rank_pids(out) == {}, "orphaned ranks remain"


def _scale_run(tmp, n):
    """Generate ``n`` particles of 64 px on disk and run one K=10 iteration; (peak anon RSS MB, log)."""
    synthetic.make_dataset(str(tmp), n_particles=n, box=64, n_classes=10, snr=1.0, seed=0)
    done = subprocess.run(ENGINE + ["mra", "--particles", str(tmp / "particles.star"), "--out", str(tmp / "out"),
                                    "--classes", "10", "--iterations", "1"],
                          capture_output=True, text=True, check=True, timeout=1200)
    return float(done.stdout.rsplit("peak memory", 1)[1].split()[0]), done.stdout


@pytest.mark.slow
def test_100k_particles_run_with_flat_memory_and_steady_progress(tmp_path):
    small, _ = _scale_run(tmp_path / "small", 10_000)
    large, log = _scale_run(tmp_path / "large", 100_000)
    print("peak anonymous RSS: 10^4 particles %.0f MB, 10^5 particles %.0f MB" % (small, large))
    # the per-particle state is ~1.3 KB; images are streamed, so 10x particles must not mean 10x memory
    assert large < small + 300
    assert "searched" in log and "iteration 1/1" in log


@pytest.mark.slow
def test_a_second_run_into_a_busy_folder_fails_at_once_and_a_killed_one_frees_it(star, tmp_path):
    out = tmp_path / "busy"
    first = subprocess.Popen(mra(star, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(outputs.checkpoint_dir(out, 1))
        start = time.time()
        for extra in (["--continue"], ["--overwrite"], []):
            second = subprocess.run(mra(star, out, *extra), capture_output=True, text=True, timeout=60)
            assert second.returncode == 2, second.stderr
            assert ("%s is in use by another run (pid %d on " % (out, first.pid)) in second.stderr
            assert "wait for it to finish or use another --out" in second.stderr
            assert "results written" not in second.stdout
        assert time.time() - start < 30
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    done = subprocess.run(mra(star, out, "--continue"), capture_output=True, text=True)   # the OS freed it
    assert done.returncode == 0, done.stderr
    assert "continuing after iteration" in done.stdout


@pytest.mark.slow
def test_under_mpi_a_run_refused_by_rank_0_ends_every_rank(star, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "thesis.tex").write_text("not a run")
    start = time.time()
    job = subprocess.run([os.path.join(BIN, "mpirun"), "-n", "2"] + mra(star, out), capture_output=True,
                         text=True, timeout=60)
    assert job.returncode != 0 and time.time() - start < 30
    assert "is not empty and is not a cryoralign run folder" in job.stderr
    assert sorted(os.listdir(out)) == ["thesis.tex"]
    end = time.time() + 10
    while _rank_pids(out) and time.time() < end:   # ranks may take a moment to exit after mpirun
        time.sleep(0.2)
    assert _rank_pids(out) == {}, "orphaned ranks remain"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    synthetic.make_dataset(str(root), n_particles=40, box=32, n_classes=2, snr=1.0, seed=3)
    return root


@pytest.mark.parametrize("out", ["", "."])
def test_the_command_line_refuses_to_write_where_its_input_is(small, out):
    star = small / "particles.star"
    before = star.read_bytes()
    done = subprocess.run(ENGINE + ["mra", "--particles", "particles.star", "--out", out, "--classes", "2",
                                    "--iterations", "1", "--threads", "1"],
                          cwd=str(small), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert ('--out ""' if out == "" else "choose another --out") in done.stderr
    assert star.read_bytes() == before
    assert sorted(os.listdir(small)) == ["particles.mrcs", "particles.star", "references.mrcs", "truth.star"]


def test_a_rerun_without_continue_never_resumes_the_old_run(small, tmp_path):
    out = tmp_path / "out"
    run = ENGINE + ["mra", "--particles", str(small / "particles.star"), "--out", str(out), "--classes", "2",
                    "--threads", "1"]
    assert subprocess.run(run + ["--iterations", "2"], capture_output=True).returncode == 0
    again = subprocess.run(run + ["--iterations", "1", "--seed", "9"], capture_output=True, text=True)
    assert again.returncode == 2 and "holds a previous run" in again.stderr
    replaced = subprocess.run(run + ["--iterations", "1", "--seed", "9", "--overwrite"], capture_output=True,
                              text=True)
    assert replaced.returncode == 0, replaced.stderr
    assert len(outputs.read_history(str(out))) == 1 and not (out / "iter_002").exists()
