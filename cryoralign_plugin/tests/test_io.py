"""Tests for the engine's file I/O (cryoralign_plugin.engine.io): stacks, STAR, atomic writes, checkpoints."""
import os
import pickle
import warnings

import mrcfile
import numpy as np
import pytest

from cryoralign_plugin.engine import io
from cryoralign_plugin.engine.errors import InputError
from cryoralign_plugin.engine.io import (ParticleStack, atomic_path, check_output_dir, last_checkpoint,
                                         read_json, read_stack, read_star, save_checkpoint, write_json,
                                         write_stack, write_star)


def _images(n, box=8, seed=0, ny=None):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, ny or box, box)).astype(np.float32)


def _mrcs(path, data, pixel_size=None):
    """Write an MRC stack directly with mrcfile (independent of io.write_stack)."""
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    with mrcfile.new(str(path), overwrite=True) as m, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # "Data array contains NaN values"
        m.set_data(np.asarray(data, dtype=np.float32))
        if np.asarray(data).ndim == 3:
            m.set_image_stack()
        if pixel_size:
            m.voxel_size = pixel_size
    return str(path)


def _star(path, names, extra=None, table="particles", optics=None):
    """Write a STAR file by hand (independent of io.write_star)."""
    extra = extra or {}
    lines = []
    if optics is not None:
        lines += ["", "data_optics", "", "loop_"] + ["_%s" % c for c in optics[0]]
        lines += [" ".join(str(v) for v in r) for r in optics[1]]
    lines += ["", "data_%s" % table, "", "loop_", "_rlnImageName"] + ["_%s" % c for c in extra]
    for i, nm in enumerate(names):
        lines.append(" ".join([nm] + [str(v[i]) for v in extra.values()]))
    with open(str(path), "w") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


# ---------------------------------------------------------------------------------------------- stacks

def test_write_read_stack_round_trip(tmp_path):
    a = _images(5, 12)
    p = tmp_path / "a.mrcs"
    write_stack(p, a, pixel_size=1.75)
    b = read_stack(p)
    assert b.dtype == np.float32 and b.shape == (5, 12, 12)
    np.testing.assert_array_equal(a, b)
    with mrcfile.open(str(p)) as m:
        assert m.is_image_stack()
        assert m.voxel_size.x == pytest.approx(1.75)
    assert [f for f in os.listdir(tmp_path) if f != "a.mrcs"] == []   # no temp file left


def test_write_stack_single_image_and_read_2d_mrc(tmp_path):
    img = _images(1, 10)[0]
    write_stack(tmp_path / "one.mrcs", img)
    assert read_stack(tmp_path / "one.mrcs").shape == (1, 10, 10)
    _mrcs(tmp_path / "single.mrc", img)
    b = read_stack(tmp_path / "single.mrc")
    assert b.shape == (1, 10, 10)
    np.testing.assert_array_equal(b[0], img)


def test_read_stack_missing_and_not_mrc(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_stack(tmp_path / "nope.mrcs")
    bad = tmp_path / "bad.mrcs"
    bad.write_bytes(b"this is not an mrc file" * 100)
    with pytest.raises(InputError, match="not an MRC file"):
        read_stack(bad)


# ---------------------------------------------------------------------------------------------- STAR

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
    assert io.star_table_names(p) == ["particles", "classes"]
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


# ---------------------------------------------------------------------------------------------- particles

def test_from_star_several_stacks_relative_paths(tmp_path, monkeypatch):
    a, b = _images(4, 8, seed=1), _images(3, 8, seed=2)
    d = tmp_path / "proj"
    _mrcs(d / "stacks" / "a.mrcs", a, pixel_size=2.0)
    _mrcs(d / "stacks" / "b.mrcs", b, pixel_size=2.0)
    abs_b = str(d / "stacks" / "b.mrcs")
    names = ["000003@stacks/a.mrcs", "000001@%s" % abs_b, "000001@stacks/a.mrcs", "000003@stacks/b.mrcs",
             "000004@stacks/a.mrcs"]
    star = _star(d / "in.star", names,
                 extra={"rlnImageId": [10, 20, 30, 40, 50], "rlnAnglePsi": [1.5, 2, 3, 4, 5],
                        "rlnOriginX": [0.5, 0, 0, 0, -1], "rlnOriginY": [0, 1, 0, 0, 2],
                        "rlnIsFlip": [0, 1, 0, 1, 0]})
    monkeypatch.chdir(tmp_path)   # relative paths must resolve from the STAR directory, not the cwd
    ps = ParticleStack.from_star(star)
    assert ps.count == 5 and len(ps) == 5 and ps.box == 8
    assert ps.pixel_size == pytest.approx(2.0)   # from the MRC header: no pixel size in the STAR
    np.testing.assert_array_equal(ps.ids, [10, 20, 30, 40, 50])
    assert ps.ids.dtype == np.int64
    assert ps.names == names
    assert len(ps.stack_paths) == 2   # the same b.mrcs under two spellings is one stack
    np.testing.assert_allclose(ps.prior, [[1.5, 0.5, 0, 0], [2, 0, 1, 1], [3, 0, 0, 0], [4, 0, 0, 1],
                                          [5, -1, 2, 0]])
    expected = np.stack([a[2], b[0], a[0], b[2], a[3]])
    np.testing.assert_array_equal(ps.read(range(5)), expected)
    np.testing.assert_array_equal(ps.read([4, 0, 3]), expected[[4, 0, 3]])
    np.testing.assert_array_equal(ps.read(np.array([2, 2, 1])), expected[[2, 2, 1]])
    assert ps.read([]).shape == (0, 8, 8)
    assert ps.read([1]).dtype == np.float32
    with pytest.raises(IndexError):
        ps.read([5])
    ps.close()


def test_from_star_reads_contiguous_and_sparse_orders(tmp_path):
    a = _images(40, 6, seed=3)
    _mrcs(tmp_path / "a.mrcs", a)
    star = _star(tmp_path / "in.star", ["%06d@a.mrcs" % (i + 1) for i in range(40)])
    ps = ParticleStack.from_star(star)
    assert ps.prior is None and ps.pixel_size is None
    np.testing.assert_array_equal(ps.ids, np.arange(1, 41))
    for idx in ([5, 6, 7, 8], [0, 39], [39, 0, 20], list(range(39, -1, -1)), [3, 1, 2]):
        np.testing.assert_array_equal(ps.read(idx), a[idx])


def test_from_star_lru_reopens_stacks(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "MAX_OPEN_STACKS", 1)
    stacks = [_images(2, 6, seed=s) for s in range(3)]
    for s, data in enumerate(stacks):
        _mrcs(tmp_path / ("s%d.mrcs" % s), data)
    names = ["%06d@s%d.mrcs" % (i + 1, s) for i in range(2) for s in range(3)]
    ps = ParticleStack.from_star(_star(tmp_path / "in.star", names))
    assert len(ps._open) <= 1
    expected = np.stack([stacks[s][i] for i in range(2) for s in range(3)])
    np.testing.assert_array_equal(ps.read(range(6)), expected)
    assert len(ps._open) <= 1
    ps2 = pickle.loads(pickle.dumps(ps))   # picklable without open files
    np.testing.assert_array_equal(ps2.read([5, 0]), expected[[5, 0]])


def test_from_star_pixel_size_from_optics_and_plain_path(tmp_path):
    img = _images(1, 8)[0]
    _mrcs(tmp_path / "single.mrc", img)
    star = _star(tmp_path / "in.star", ["single.mrc"],
                 optics=(["rlnOpticsGroup", "rlnImagePixelSize"], [(1, 1.23)]))
    ps = ParticleStack.from_star(star)
    assert ps.count == 1 and ps.box == 8
    assert ps.pixel_size == pytest.approx(1.23)
    np.testing.assert_array_equal(ps.read([0])[0], img)


def test_from_star_unnamed_table_and_3d_mrc(tmp_path):
    vol = _images(3, 8, seed=4)
    with mrcfile.new(str(tmp_path / "vol.mrc")) as m:   # a 3D "volume" used as a stack
        m.set_data(vol)
    star = _star(tmp_path / "in.star", ["2@vol.mrc", "3@vol.mrc"], table="")
    ps = ParticleStack.from_star(star)
    np.testing.assert_array_equal(ps.read([0, 1]), vol[1:3])


def test_from_star_missing_stack(tmp_path):
    _mrcs(tmp_path / "a.mrcs", _images(2))
    star = _star(tmp_path / "in.star", ["1@a.mrcs", "1@missing.mrcs"])
    with pytest.raises(InputError, match=r"missing\.mrcs.*does not exist.*check the path"):
        ParticleStack.from_star(star)


def test_from_star_index_past_end(tmp_path):
    _mrcs(tmp_path / "a.mrcs", _images(3))
    star = _star(tmp_path / "in.star", ["1@a.mrcs", "000004@a.mrcs"])
    with pytest.raises(InputError, match=r"row 2 .*image 4.*holds only 3"):
        ParticleStack.from_star(star)
    star0 = _star(tmp_path / "zero.star", ["0@a.mrcs"])
    with pytest.raises(InputError, match="1-based"):
        ParticleStack.from_star(star0)


def test_from_star_truncated_mrc(tmp_path):
    p = _mrcs(tmp_path / "a.mrcs", _images(4, 16))
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
        f.truncate(size - 300)
    star = _star(tmp_path / "in.star", ["1@a.mrcs"])
    with pytest.raises(InputError, match=r"a\.mrcs is truncated"):
        ParticleStack.from_star(star)
    with open(p, "r+b") as f:   # shorter than a header
        f.truncate(100)
    with pytest.raises(InputError, match=r"truncated or not an MRC file"):
        ParticleStack.from_star(star)


def test_from_star_not_mrc(tmp_path):
    (tmp_path / "a.mrcs").write_bytes(os.urandom(4096))
    star = _star(tmp_path / "in.star", ["1@a.mrcs"])
    with pytest.raises(InputError, match=r"a\.mrcs is not an MRC file"):
        ParticleStack.from_star(star)


def test_from_star_non_square(tmp_path):
    _mrcs(tmp_path / "a.mrcs", _images(2, 8, ny=10))
    star = _star(tmp_path / "in.star", ["1@a.mrcs"])
    with pytest.raises(InputError, match=r"non-square.*10 x 8"):
        ParticleStack.from_star(star)


def test_from_star_mismatched_box_sizes(tmp_path):
    _mrcs(tmp_path / "a.mrcs", _images(2, 8))
    _mrcs(tmp_path / "b.mrcs", _images(2, 10))
    star = _star(tmp_path / "in.star", ["1@a.mrcs", "1@b.mrcs"])
    with pytest.raises(InputError, match=r"different box sizes.*a\.mrcs is 8 x 8.*b\.mrcs is 10 x 10"):
        ParticleStack.from_star(star)


def test_from_star_empty(tmp_path):
    (tmp_path / "rows.star").write_text("data_particles\n\nloop_\n_rlnImageName\n_rlnImageId\n")
    with pytest.raises(InputError, match="the particle set is empty"):
        ParticleStack.from_star(tmp_path / "rows.star")
    (tmp_path / "nocols.star").write_text("data_particles\n\n")
    with pytest.raises(InputError, match="the particle set is empty"):
        ParticleStack.from_star(tmp_path / "nocols.star")
    (tmp_path / "blank.star").write_text("")
    with pytest.raises(InputError, match="contains no table"):
        ParticleStack.from_star(tmp_path / "blank.star")


def test_from_star_bad_columns(tmp_path):
    _mrcs(tmp_path / "a.mrcs", _images(2))
    p = tmp_path / "noname.star"
    p.write_text("data_particles\nloop_\n_rlnImageId\n1\n")
    with pytest.raises(InputError, match="no rlnImageName column"):
        ParticleStack.from_star(p)
    dup = _star(tmp_path / "dup.star", ["1@a.mrcs", "2@a.mrcs"], extra={"rlnImageId": [7, 7]})
    with pytest.raises(InputError, match="unique"):
        ParticleStack.from_star(dup)
    flip = _star(tmp_path / "flip.star", ["1@a.mrcs"], extra={"rlnIsFlip": [2]})
    with pytest.raises(InputError, match="0 or 1"):
        ParticleStack.from_star(flip)
    psi = _star(tmp_path / "psi.star", ["1@a.mrcs"], extra={"rlnAnglePsi": ["abc"]})
    with pytest.raises(InputError, match="not a number"):
        ParticleStack.from_star(psi)
    two = tmp_path / "two.star"
    two.write_text("data_foo\nloop_\n_rlnImageName\n1@a.mrcs\n\ndata_bar\nloop_\n_rlnImageName\n1@a.mrcs\n")
    with pytest.raises(InputError, match="no data_particles table"):
        ParticleStack.from_star(two)


def test_from_star_different_pixel_sizes(tmp_path):
    _mrcs(tmp_path / "a.mrcs", _images(2))
    star = _star(tmp_path / "in.star", ["1@a.mrcs", "2@a.mrcs"], extra={"rlnImagePixelSize": [1.0, 2.0]})
    with pytest.raises(InputError, match="different pixel sizes"):
        ParticleStack.from_star(star)


def test_read_rejects_nan(tmp_path):
    a = _images(3)
    a[1, 2, 2] = np.nan
    _mrcs(tmp_path / "a.mrcs", a)
    ps = ParticleStack.from_star(_star(tmp_path / "in.star", ["1@a.mrcs", "2@a.mrcs", "3@a.mrcs"]))
    ps.read([0, 2])
    with pytest.raises(InputError, match=r"particle 2@a\.mrcs \(id 2\) contains NaN"):
        ps.read([0, 1])


def test_from_array():
    a = _images(6, 8, seed=5).astype(np.float64)
    ps = ParticleStack.from_array(a)
    assert (ps.count, ps.box, ps.pixel_size, ps.prior) == (6, 8, None, None)
    np.testing.assert_array_equal(ps.ids, np.arange(1, 7))
    assert ps.names[0] == "000001@array" and ps.names[5] == "000006@array"
    got = ps.read([5, 1, 2, 3])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, a[[5, 1, 2, 3]].astype(np.float32))
    np.testing.assert_array_equal(ps.read([1, 2, 3]), a[1:4].astype(np.float32))
    with pytest.raises(InputError, match="3D"):
        ParticleStack.from_array(a[0])
    with pytest.raises(InputError, match="square"):
        ParticleStack.from_array(np.zeros((2, 8, 6)))
    with pytest.raises(InputError, match="the particle set is empty"):
        ParticleStack.from_array(np.zeros((0, 8, 8)))


# ---------------------------------------------------------------------------------------------- atomic

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


def test_write_stack_failure_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "a.mrcs"
    write_stack(p, _images(2))
    before = p.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(mrcfile.mrcfile.MrcFile, "update_header_stats", boom)
    with pytest.raises(OSError):
        write_stack(p, _images(3, seed=9))
    assert p.read_bytes() == before
    assert os.listdir(tmp_path) == ["a.mrcs"]


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


# ---------------------------------------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip(tmp_path):
    assert last_checkpoint(tmp_path) is None
    assert last_checkpoint(tmp_path / "absent") is None
    arrays = {"params": np.arange(12.0).reshape(3, 4), "classes": np.array([1, 2, 1], dtype=np.int32)}
    path = save_checkpoint(tmp_path, 1, arrays, {"seed": 7, "score": np.float32(0.25)})
    assert os.path.basename(path) == "iter_001"
    save_checkpoint(tmp_path, 2, {"params": arrays["params"] + 1, "classes": arrays["classes"]}, {"seed": 7})
    it, got, meta = last_checkpoint(tmp_path)
    assert it == 2 and meta["seed"] == 7 and meta["iteration"] == 2
    np.testing.assert_array_equal(got["params"], arrays["params"] + 1)
    assert got["classes"].dtype == np.int32
    # saving the same iteration again replaces it
    save_checkpoint(tmp_path, 2, {"params": arrays["params"] * 0}, {"seed": 8})
    it, got, meta = last_checkpoint(tmp_path)
    assert it == 2 and meta["seed"] == 8 and not got["params"].any()
    assert sorted(os.listdir(tmp_path)) == ["iter_001", "iter_002"]


def test_last_checkpoint_ignores_half_written_and_corrupt(tmp_path):
    save_checkpoint(tmp_path, 3, {"x": np.ones(4)}, {"note": "good"})
    # saves killed before their rename: temp directories, one partial, one with complete-looking content
    half = tmp_path / ".iter_004.tmp-abc123"
    half.mkdir()
    (half / "state.npz").write_bytes(b"PK\x03\x04 partial")
    unrenamed = tmp_path / ".iter_007.tmp-def456"
    unrenamed.mkdir()
    np.savez(str(unrenamed / "state.npz"), x=np.zeros(4))
    (unrenamed / "meta.json").write_text('{"iteration": 7, "arrays": ["x"]}')
    # an iter dir whose npz is corrupt, and one with no meta.json
    bad = tmp_path / "iter_005"
    bad.mkdir()
    (bad / "meta.json").write_text('{"iteration": 5, "arrays": ["x"]}')
    (bad / "state.npz").write_bytes(b"garbage")
    nometa = tmp_path / "iter_006"
    nometa.mkdir()
    np.savez(str(nometa / "state.npz"), x=np.zeros(4))
    it, arrays, meta = last_checkpoint(tmp_path)
    assert it == 3 and meta["note"] == "good"
    np.testing.assert_array_equal(arrays["x"], np.ones(4))


def test_save_checkpoint_failure_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, 1, {"x": np.ones(2)}, {"bad": object()})
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path, 1, {"x": np.array([object()], dtype=object)}, {})
    assert os.listdir(tmp_path) == []
    assert last_checkpoint(tmp_path) is None
