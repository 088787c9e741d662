"""Tests for particle sources (cryoralign_plugin.engine.sources): STAR + MRC stacks, and arrays."""
import os
import pickle

import mrcfile
import numpy as np
import pytest

from cryoralign_plugin.engine import mrc
from cryoralign_plugin.engine.errors import InputError
from cryoralign_plugin.engine.sources import ArraySource, StarSource

from handmade import imod_byte_stack, mrc_file, random_images, star_file


# ----------------------------------------------------------------------------- STAR + MRC stacks

def test_from_star_several_stacks_relative_paths(tmp_path, monkeypatch):
    a, b = random_images(4, 8, seed=1), random_images(3, 8, seed=2)
    d = tmp_path / "proj"
    mrc_file(d / "stacks" / "a.mrcs", a, pixel_size=2.0)
    mrc_file(d / "stacks" / "b.mrcs", b, pixel_size=2.0)
    abs_b = str(d / "stacks" / "b.mrcs")
    names = ["000003@stacks/a.mrcs", "000001@%s" % abs_b, "000001@stacks/a.mrcs", "000003@stacks/b.mrcs",
             "000004@stacks/a.mrcs"]
    star = star_file(d / "in.star", names,
                 extra={"rlnImageId": [10, 20, 30, 40, 50], "rlnAnglePsi": [1.5, 2, 3, 4, 5],
                        "rlnOriginX": [0.5, 0, 0, 0, -1], "rlnOriginY": [0, 1, 0, 0, 2],
                        "rlnIsFlip": [0, 1, 0, 1, 0]})
    monkeypatch.chdir(tmp_path)   # relative paths must resolve from the STAR directory, not the cwd
    ps = StarSource.from_star(star)
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
    a = random_images(40, 6, seed=3)
    mrc_file(tmp_path / "a.mrcs", a)
    star = star_file(tmp_path / "in.star", ["%06d@a.mrcs" % (i + 1) for i in range(40)])
    ps = StarSource.from_star(star)
    assert ps.prior is None and ps.pixel_size is None
    np.testing.assert_array_equal(ps.ids, np.arange(1, 41))
    for idx in ([5, 6, 7, 8], [0, 39], [39, 0, 20], list(range(39, -1, -1)), [3, 1, 2]):
        np.testing.assert_array_equal(ps.read(idx), a[idx])


def test_from_star_lru_reopens_stacks(tmp_path, monkeypatch):
    monkeypatch.setattr(mrc, "MAX_OPEN_STACKS", 1)
    stacks = [random_images(2, 6, seed=s) for s in range(3)]
    for s, data in enumerate(stacks):
        mrc_file(tmp_path / ("s%d.mrcs" % s), data)
    names = ["%06d@s%d.mrcs" % (i + 1, s) for i in range(2) for s in range(3)]
    ps = StarSource.from_star(star_file(tmp_path / "in.star", names))
    assert len(ps._open) <= 1
    expected = np.stack([stacks[s][i] for i in range(2) for s in range(3)])
    np.testing.assert_array_equal(ps.read(range(6)), expected)
    assert len(ps._open) <= 1
    ps2 = pickle.loads(pickle.dumps(ps))   # picklable without open files
    np.testing.assert_array_equal(ps2.read([5, 0]), expected[[5, 0]])


def test_from_star_pixel_size_from_optics_and_plain_path(tmp_path):
    img = random_images(1, 8)[0]
    mrc_file(tmp_path / "single.mrc", img)
    star = star_file(tmp_path / "in.star", ["single.mrc"],
                 optics=(["rlnOpticsGroup", "rlnImagePixelSize"], [(1, 1.23)]))
    ps = StarSource.from_star(star)
    assert ps.count == 1 and ps.box == 8
    assert ps.pixel_size == pytest.approx(1.23)
    np.testing.assert_array_equal(ps.read([0])[0], img)


def test_from_star_unnamed_table_and_3d_mrc(tmp_path):
    vol = random_images(3, 8, seed=4)
    with mrcfile.new(str(tmp_path / "vol.mrc")) as m:   # a 3D "volume" used as a stack
        m.set_data(vol)
    star = star_file(tmp_path / "in.star", ["2@vol.mrc", "3@vol.mrc"], table="")
    ps = StarSource.from_star(star)
    np.testing.assert_array_equal(ps.read([0, 1]), vol[1:3])


def test_from_star_missing_stack(tmp_path):
    mrc_file(tmp_path / "a.mrcs", random_images(2))
    star = star_file(tmp_path / "in.star", ["1@a.mrcs", "1@missing.mrcs"])
    with pytest.raises(InputError, match=r"missing\.mrcs.*does not exist.*check the path"):
        StarSource.from_star(star)


def test_from_star_index_past_end(tmp_path):
    mrc_file(tmp_path / "a.mrcs", random_images(3))
    star = star_file(tmp_path / "in.star", ["1@a.mrcs", "000004@a.mrcs"])
    with pytest.raises(InputError, match=r"row 2 .*image 4.*holds 3 images"):
        StarSource.from_star(star)
    # The row named is the first bad one, with its own index (not the stack's largest index).
    star = star_file(tmp_path / "in.star", ["1@a.mrcs", "000005@a.mrcs", "3@a.mrcs", "000305@a.mrcs"])
    with pytest.raises(InputError, match=r"row 2 of .*asks for image 5 of .*a\.mrcs, which holds 3 images") as e:
        StarSource.from_star(star)
    assert "305" not in str(e.value) and "\n" not in str(e.value)
    star0 = star_file(tmp_path / "zero.star", ["0@a.mrcs"])
    with pytest.raises(InputError, match="1-based"):
        StarSource.from_star(star0)


def test_from_star_name_without_number(tmp_path):
    """A name without '@' means image 1 only when the file holds one image; a stack needs numbers."""
    mrc_file(tmp_path / "many.mrcs", random_images(300, 4))
    mrc_file(tmp_path / "one.mrc", random_images(1, 4)[0])
    star = star_file(tmp_path / "in.star", ["1@many.mrcs", "one.mrc", "many.mrcs"])
    with pytest.raises(InputError, match=r"row 3 of .*rlnImageName 'many\.mrcs' has no image number but "
                                         r".*many\.mrcs holds 300 images: write it as 000001@many\.mrcs") as e:
        StarSource.from_star(star)
    assert "\n" not in str(e.value)
    ok = StarSource.from_star(star_file(tmp_path / "ok.star", ["2@many.mrcs", "one.mrc"]))
    assert ok.count == 2


def test_from_star_truncated_mrc(tmp_path):
    p = mrc_file(tmp_path / "a.mrcs", random_images(4, 16))
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
        f.truncate(size - 300)
    star = star_file(tmp_path / "in.star", ["1@a.mrcs"])
    with pytest.raises(InputError, match=r"a\.mrcs is truncated"):
        StarSource.from_star(star)
    with open(p, "r+b") as f:   # shorter than a header
        f.truncate(100)
    with pytest.raises(InputError, match=r"truncated or not an MRC file"):
        StarSource.from_star(star)


def test_from_star_not_mrc(tmp_path):
    (tmp_path / "a.mrcs").write_bytes(os.urandom(4096))
    star = star_file(tmp_path / "in.star", ["1@a.mrcs"])
    with pytest.raises(InputError, match=r"a\.mrcs is not an MRC file"):
        StarSource.from_star(star)


def test_from_star_non_square(tmp_path):
    mrc_file(tmp_path / "a.mrcs", random_images(2, 8, ny=10))
    star = star_file(tmp_path / "in.star", ["1@a.mrcs"])
    with pytest.raises(InputError, match=r"non-square.*10 x 8"):
        StarSource.from_star(star)


def test_from_star_mismatched_box_sizes(tmp_path):
    mrc_file(tmp_path / "a.mrcs", random_images(2, 8))
    mrc_file(tmp_path / "b.mrcs", random_images(2, 10))
    star = star_file(tmp_path / "in.star", ["1@a.mrcs", "1@b.mrcs"])
    with pytest.raises(InputError, match=r"different box sizes.*a\.mrcs is 8 x 8.*b\.mrcs is 10 x 10"):
        StarSource.from_star(star)


def test_from_star_empty(tmp_path):
    (tmp_path / "rows.star").write_text("data_particles\n\nloop_\n_rlnImageName\n_rlnImageId\n")
    with pytest.raises(InputError, match="the particle set is empty"):
        StarSource.from_star(tmp_path / "rows.star")
    (tmp_path / "nocols.star").write_text("data_particles\n\n")
    with pytest.raises(InputError, match="the particle set is empty"):
        StarSource.from_star(tmp_path / "nocols.star")
    (tmp_path / "blank.star").write_text("")
    with pytest.raises(InputError, match="contains no table"):
        StarSource.from_star(tmp_path / "blank.star")


def test_from_star_bad_columns(tmp_path):
    mrc_file(tmp_path / "a.mrcs", random_images(2))
    p = tmp_path / "noname.star"
    p.write_text("data_particles\nloop_\n_rlnImageId\n1\n")
    with pytest.raises(InputError, match="no rlnImageName column"):
        StarSource.from_star(p)
    dup = star_file(tmp_path / "dup.star", ["1@a.mrcs", "2@a.mrcs"], extra={"rlnImageId": [7, 7]})
    with pytest.raises(InputError, match="unique"):
        StarSource.from_star(dup)
    flip = star_file(tmp_path / "flip.star", ["1@a.mrcs"], extra={"rlnIsFlip": [2]})
    with pytest.raises(InputError, match="0 or 1"):
        StarSource.from_star(flip, use_prior=True)
    psi = star_file(tmp_path / "psi.star", ["1@a.mrcs"], extra={"rlnAnglePsi": ["abc"]})
    with pytest.raises(InputError, match="not a number"):
        StarSource.from_star(psi, use_prior=True)
    for unused in (flip, psi):          # a prior that is not used is not checked
        assert StarSource.from_star(unused).count == 1
    two = tmp_path / "two.star"
    two.write_text("data_foo\nloop_\n_rlnImageName\n1@a.mrcs\n\ndata_bar\nloop_\n_rlnImageName\n1@a.mrcs\n")
    with pytest.raises(InputError, match="no data_particles table"):
        StarSource.from_star(two)


def test_prior_is_checked_only_when_used(tmp_path):
    """NaN/inf in the prior columns do not matter to a run that does not use the prior."""
    a = random_images(3)
    mrc_file(tmp_path / "a.mrcs", a)
    star = star_file(tmp_path / "in.star", ["1@a.mrcs", "2@a.mrcs", "3@a.mrcs"],
                     extra={"rlnAnglePsi": [10, "nan", 30], "rlnOriginX": [0, 1, "inf"], "rlnOriginY": [0, 0, 0]})
    ps = StarSource.from_star(star)
    np.testing.assert_array_equal(ps.read([0, 1, 2]), a)
    assert StarSource.from_star(star, use_prior=False).count == 3
    with pytest.raises(InputError, match=r"row 2 of .*in\.star: rlnAnglePsi is nan.*--use-prior") as e:
        StarSource.from_star(star, use_prior=True)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match=r"row 2 of .*rlnAnglePsi is nan"):   # asked for later: checked then
        ps.prior


def test_prior_shift_outside_the_box(tmp_path):
    mrc_file(tmp_path / "a.mrcs", random_images(3, 8))
    names = ["1@a.mrcs", "2@a.mrcs", "3@a.mrcs"]
    inside = star_file(tmp_path / "in.star", names, extra={"rlnOriginX": [3.5, 0, -4], "rlnOriginY": [0, 2, 0]})
    np.testing.assert_allclose(StarSource.from_star(inside, use_prior=True).prior[:, 1:3],
                               [[3.5, 0], [0, 2], [-4, 0]])
    for x, y, shown in ((0, -4.5, r"\(0, -4\.5\)"), (3, 3, r"\(3, 3\)")):   # |(3, 3)| = 4.24 > 8 / 2
        star = star_file(tmp_path / "out.star", names, extra={"rlnOriginX": [0, x, 1], "rlnOriginY": [0, y, 1]})
        with pytest.raises(InputError, match=r"row 2 of .*out\.star: prior shift %s px is outside the 8 px box: "
                                             r"fix the STAR or run without --use-prior" % shown):
            StarSource.from_star(star, use_prior=True)
        assert StarSource.from_star(star).count == 3        # not used: not checked
    angst = star_file(tmp_path / "angst.star", names, extra={"rlnOriginXAngst": [0, 10, 0],
                                                             "rlnOriginYAngst": [0, 0, 0],
                                                             "rlnImagePixelSize": [2, 2, 2]})
    with pytest.raises(InputError, match=r"row 2 .*prior shift \(5, 0\) px is outside the 8 px box"):
        StarSource.from_star(angst, use_prior=True)


def test_from_star_folder(tmp_path):
    with pytest.raises(InputError, match=r"is a folder: give the path of the STAR file"):
        StarSource.from_star(tmp_path)


def test_from_star_different_pixel_sizes(tmp_path):
    mrc_file(tmp_path / "a.mrcs", random_images(2))
    star = star_file(tmp_path / "in.star", ["1@a.mrcs", "2@a.mrcs"], extra={"rlnImagePixelSize": [1.0, 2.0]})
    with pytest.raises(InputError, match="different pixel sizes"):
        StarSource.from_star(star)


def test_from_star_imod_unsigned_bytes(tmp_path):
    raw = (np.arange(4 * 6 * 6) * 11 % 256).astype(np.uint8).reshape(4, 6, 6)
    imod_byte_stack(tmp_path / "imod.mrcs", raw)
    ps = StarSource.from_star(star_file(tmp_path / "in.star", ["000004@imod.mrcs", "000002@imod.mrcs"]))
    np.testing.assert_array_equal(ps.read([0, 1]), raw[[3, 1]].astype(np.float32))
    assert ps.read([0, 1]).min() >= 0


def test_read_rejects_nan(tmp_path):
    a = random_images(3)
    a[1, 2, 2] = np.nan
    mrc_file(tmp_path / "a.mrcs", a)
    ps = StarSource.from_star(star_file(tmp_path / "in.star", ["1@a.mrcs", "2@a.mrcs", "3@a.mrcs"]))
    ps.read([0, 2])
    with pytest.raises(InputError, match=r"particle 2@a\.mrcs \(id 2\) contains NaN"):
        ps.read([0, 1])


# ---------------------------------------------------------------------------------------- arrays

def test_array_source():
    a = random_images(6, 8, seed=5).astype(np.float64)
    ps = ArraySource(a)
    assert (ps.count, ps.box, ps.pixel_size, ps.prior) == (6, 8, None, None)
    np.testing.assert_array_equal(ps.ids, np.arange(1, 7))
    assert ps.names[0] == "000001@array" and ps.names[5] == "000006@array"
    got = ps.read([5, 1, 2, 3])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, a[[5, 1, 2, 3]].astype(np.float32))
    np.testing.assert_array_equal(ps.read([1, 2, 3]), a[1:4].astype(np.float32))
    with pytest.raises(InputError, match="3D"):
        ArraySource(a[0])
    with pytest.raises(InputError, match="square"):
        ArraySource(np.zeros((2, 8, 6)))
    with pytest.raises(InputError, match="the particle set is empty"):
        ArraySource(np.zeros((0, 8, 8)))
