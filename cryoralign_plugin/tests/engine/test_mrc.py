"""Tests for MRC stacks (cryoralign_plugin.engine.mrc): whole-stack reads and atomic writes."""
import os

import mrcfile
import numpy as np
import pytest

from cryoralign_plugin.engine.errors import InputError
from cryoralign_plugin.engine.mrc import read_stack, write_stack

from handmade import imod_byte_stack, mrc_file, random_images


def test_write_read_stack_round_trip(tmp_path):
    a = random_images(5, 12)
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
    img = random_images(1, 10)[0]
    write_stack(tmp_path / "one.mrcs", img)
    assert read_stack(tmp_path / "one.mrcs").shape == (1, 10, 10)
    mrc_file(tmp_path / "single.mrc", img)
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


def test_write_stack_failure_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "a.mrcs"
    write_stack(p, random_images(2))
    before = p.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(mrcfile.mrcfile.MrcFile, "update_header_stats", boom)
    with pytest.raises(OSError):
        write_stack(p, random_images(3, seed=9))
    assert p.read_bytes() == before
    assert os.listdir(tmp_path) == ["a.mrcs"]


def test_imod_unsigned_bytes_are_read_as_unsigned(tmp_path):
    """IMOD writes mode 0 as unsigned bytes unless bit 0 of imodFlags says signed; mrcfile reads int8."""
    raw = (np.arange(3 * 4 * 4) * 7 % 256).astype(np.uint8).reshape(3, 4, 4)
    assert raw.max() > 127
    p = imod_byte_stack(tmp_path / "imod.mrcs", raw)
    got = read_stack(p)
    assert got.dtype == np.float32 and got.min() >= 0 and got.max() <= 255
    np.testing.assert_array_equal(got, raw.astype(np.float32))
    signed = imod_byte_stack(tmp_path / "signed.mrcs", raw, signed_flag=True)
    np.testing.assert_array_equal(read_stack(signed), raw.view(np.int8).astype(np.float32))
    plain = tmp_path / "plain.mrcs"       # mode 0 without the IMOD stamp is signed (MRC2014)
    with mrcfile.new(str(plain)) as m:
        m.set_data(raw.view(np.int8))
    np.testing.assert_array_equal(read_stack(plain), raw.view(np.int8).astype(np.float32))
