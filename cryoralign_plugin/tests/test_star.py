"""Tests for STAR tables (cryoralign_plugin.engine.star): reading, writing, quoting and scanning."""
import numpy as np
import pytest

from cryoralign_plugin.engine.errors import InputError
from cryoralign_plugin.engine.star import read_star, scan_star, write_star


def test_write_read_star_round_trip(tmp_path):
    p = tmp_path / "t.star"
    cols = ["rlnImageId", "rlnImageName", "rlnAnglePsi", "rlnClassNumber"]
    rows = [(1, "000001@s.mrcs", 12.5, 1), (2, "000002@s.mrcs", -3.25, 2), (3, "000003@s.mrcs", 0.0, 1)]
    write_star(p, {"particles": (cols, rows), "classes": (["rlnClassNumber"], [(1,), (2,)])})
    t = read_star(p, "particles")
    assert t.getColumnNames() == cols
    assert [tuple(r) for r in t] == rows
    c = read_star(p, "classes")
    assert [r.rlnClassNumber for r in c] == [1, 2]
    assert [name for name, _ in scan_star(p)] == ["particles", "classes"]
    with pytest.raises(InputError, match="no table data_optics"):
        read_star(p, "optics")


def test_write_star_empty_table_keeps_columns_and_quotes_spaces(tmp_path):
    p = tmp_path / "t.star"
    write_star(p, {"empty": (["rlnA", "rlnB"], []),
                   "names": (["rlnImageName", "rlnX"], [("1@my stack.mrcs", 1), ("2@b.mrcs", 2)])})
    e = read_star(p, "empty")
    assert e.getColumnNames() == ["rlnA", "rlnB"] and len(e) == 0
    n = read_star(p, "names")
    assert n.getColumnValues("rlnImageName") == ["1@my stack.mrcs", "2@b.mrcs"]
    assert n.getColumnValues("rlnX") == [1, 2]


def test_write_star_numpy_values(tmp_path):
    p = tmp_path / "t.star"
    write_star(p, {"t": (["rlnA", "rlnB"], [(np.int64(3), np.float32(0.5)), (np.int32(4), np.float64(1.5))])})
    t = read_star(p, "t")
    assert t.getColumnValues("rlnA") == [3, 4]
    assert t.getColumnValues("rlnB") == pytest.approx([0.5, 1.5])


def test_read_star_missing_and_empty_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_star(tmp_path / "nope.star", "particles")
    (tmp_path / "empty.star").write_text("")
    with pytest.raises(InputError, match="no table"):
        read_star(tmp_path / "empty.star", "particles")
