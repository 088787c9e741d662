"""Tests for atomic files (cryoralign_plugin.engine.files): atomic_path, JSON, the output directory check."""
import errno
import os

import numpy as np
import pytest

from cryoralign_plugin.engine.errors import InputError, OutputError
from cryoralign_plugin.engine.files import atomic_path, check_output_dir, read_json, write_json


def test_atomic_path_leaves_no_file_when_block_raises(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("new")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]
    with atomic_path(target) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and tmp != str(target)
        with open(tmp, "w") as f:
            f.write("new")
    assert target.read_text() == "new"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_write_json_atomic_numpy(tmp_path):
    p = tmp_path / "x.json"
    write_json(p, {"a": np.int64(3), "b": np.float32(0.5), "c": np.arange(3), "d": [1, "x"]})
    assert read_json(p) == {"a": 3, "b": 0.5, "c": [0, 1, 2], "d": [1, "x"]}
    with pytest.raises(TypeError):
        write_json(p, {"bad": object()})
    assert read_json(p)["a"] == 3 and os.listdir(tmp_path) == ["x.json"]


def test_check_output_dir(tmp_path):
    d = tmp_path / "a" / "b"
    assert check_output_dir(d) == str(d) and d.is_dir()
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(InputError, match="cannot write to output directory.*choose a directory"):
        check_output_dir(blocker)
    with pytest.raises(InputError, match="cannot write to output directory"):
        check_output_dir(blocker / "sub")


def test_a_failed_flush_never_publishes_the_file(tmp_path, monkeypatch):
    """An I/O error while flushing a file (the data may never reach the disk) leaves the old content."""
    target = tmp_path / "out.txt"
    target.write_text("old")
    real_fsync = os.fsync

    def failing_fsync(fd):
        if not os.path.isdir("/proc/self/fd/%d" % fd):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OutputError, match="out.txt"):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]
