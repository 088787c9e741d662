"""Tests for atomic files (cryoralign_plugin.engine.files): atomic_path, JSON, the output directory check."""
import os

import numpy as np
import pytest

from cryoralign_plugin.engine.errors import InputError
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
