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


def test_blank_line_inside_a_loop_is_refused(tmp_path):
    """emtable (and RELION) end a loop at a blank line: the rows after it must not vanish silently."""
    p = tmp_path / "gap.star"
    p.write_text("# comment\ndata_optics\nloop_\n_rlnOpticsGroup\n1\n\n"
                 "data_particles\n\nloop_\n_rlnImageName\n_rlnImageId\n1@a.mrcs 1\n2@a.mrcs 2\n\n"
                 "3@a.mrcs 3\n4@a.mrcs 4\n# trailing comment\n5@a.mrcs 5\n\n")
    with pytest.raises(InputError, match=r"line 14 of .*gap\.star: a blank line inside the loop of "
                                         r"data_particles hides 3 more rows: remove the blank line") as e:
        read_star(p, "particles")
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="line 14 of"):   # the file is refused whichever table is asked for
        read_star(p, "optics")
    head = tmp_path / "head.star"                    # a blank line between the columns and the rows
    head.write_text("data_particles\nloop_\n_rlnImageName\n\n1@a.mrcs\n2@a.mrcs\n")
    with pytest.raises(InputError, match=r"line 4 of .*hides 2 more rows"):
        read_star(head, "particles")
    fine = tmp_path / "fine.star"                    # blank lines between tables and at the end are fine
    fine.write_text("\ndata_particles\n\nloop_\n_rlnImageName\n1@a.mrcs\n2@a.mrcs\n\n\n# end\n\n"
                    "data_classes\n\n_rlnClassNumber 3\n\n")
    assert len(read_star(fine, "particles")) == 2
    assert read_star(fine, "classes")[0].rlnClassNumber == 3


def test_star_path_is_a_folder(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "particles.star").write_text("data_particles\nloop_\n_rlnImageName\n1@a.mrcs\n")
    with pytest.raises(InputError, match=r"STAR file .*run is a folder.*give the path of the STAR file") as e:
        read_star(tmp_path / "run", "particles")
    assert "MRC" not in str(e.value) and "particles.star" in str(e.value)


def test_latin1_star_is_read(tmp_path):
    """8-bit (latin-1) text is read as such, not refused as 'not a text file'."""
    p = tmp_path / "latin1.star"
    p.write_bytes("data_particles\nloop_\n_rlnImageName\n_rlnMicrographName\n1@a.mrcs mic_caf\u00e9.mrc\n"
                  "2@a.mrcs plain.mrc\n".encode("latin-1"))
    t = read_star(p, "particles")
    assert t.getColumnValues("rlnMicrographName") == ["mic_caf\u00e9.mrc", "plain.mrc"]
    assert [name for name, _ in scan_star(p)] == ["particles"]
    u = tmp_path / "utf8.star"
    u.write_bytes("data_particles\nloop_\n_rlnImageName\n_rlnMicrographName\n1@a.mrcs mic_caf\u00e9.mrc\n"
                  .encode("utf-8"))
    assert read_star(u, "particles")[0].rlnMicrographName == "mic_caf\u00e9.mrc"
    binary = tmp_path / "stack.star"     # binary data (an MRC stack given as the STAR file)
    binary.write_bytes(b"\x00\x01\x02\xff" * 300)
    with pytest.raises(InputError, match=r"stack\.star is not a text file"):
        read_star(binary, "particles")


def test_write_star_writes_emtables_text_from_rows_it_does_not_hold(tmp_path):
    """The rows may be any re-iterable (outputs.ParticleRows makes 10^6 of them as they are written);
    the text is emtable's own writer's, byte for byte (widths from the first row, quoted names)."""
    from emtable import Table
    cols = ["rlnImageId", "rlnImageName", "rlnAnglePsi", "rlnIsFlip"]
    rows = [(7, "1@a b.mrcs", 12.5, 1), (123456, "22@c.mrcs", -359.123456789, 0), (9, "3@d.mrcs", 1e-7, 1)]

    class Rows:   # iterable twice, never a list
        def __iter__(self):
            return iter(rows)

    ours = tmp_path / "ours.star"
    write_star(ours, {"particles": (cols, Rows()), "empty": (["rlnA"], [])})
    theirs = tmp_path / "theirs.star"
    with open(theirs, "w") as f:
        f.write("\n# version 30001 (written by cryoralign)\n")
        t = Table(columns=cols)
        for r in rows:
            t.addRow(r[0], '"%s"' % r[1], *r[2:])
        t.writeStar(f, tableName="particles")
        w = Table.Writer(f)
        w.writeTableName("empty")
        w.writeHeader(list(Table(columns=["rlnA"]).getColumns()))
        w.writeNewline()
    assert ours.read_text() == theirs.read_text()
    assert read_star(ours, "particles").getColumnValues("rlnImageName")[0] == "1@a b.mrcs"
