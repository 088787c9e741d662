"""Input files made without the engine's writers, so that the engine's readers are tested against
independent files: random images, MRC stacks written with mrcfile, STAR files written as text."""
import os
import warnings

import mrcfile
import numpy as np


def random_images(n, box=8, seed=0, ny=None):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, ny or box, box)).astype(np.float32)


def mrc_file(path, data, pixel_size=None):
    """Write an MRC stack directly with mrcfile (independent of the engine's write_stack)."""
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    with mrcfile.new(str(path), overwrite=True) as m, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # "Data array contains NaN values"
        m.set_data(np.asarray(data, dtype=np.float32))
        if np.asarray(data).ndim == 3:
            m.set_image_stack()
        if pixel_size:
            m.voxel_size = pixel_size
    return str(path)


def star_file(path, names, extra=None, table="particles", optics=None):
    """Write a STAR file by hand (independent of the engine's write_star)."""
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


IMOD_STAMP = 1146047817


def imod_byte_stack(path, values, signed_flag=False):
    """An MRC mode-0 (8-bit) stack as IMOD writes it: the IMOD stamp at byte 152 and imodFlags at 156
    (bit 0 set = the bytes are signed), set straight in the header with mrcfile.  ``values`` are the
    raw bytes as uint8."""
    data = np.asarray(values, dtype=np.uint8).view(np.int8)
    with mrcfile.new(str(path), overwrite=True) as m:
        m.set_data(data)
        if data.ndim == 3:
            m.set_image_stack()
        extra2 = bytearray(bytes(m.header.extra2))       # bytes 112..195 of the header
        extra2[40:48] = np.array([IMOD_STAMP, int(signed_flag)], dtype=m.header.dtype["nx"]).tobytes()
        m.header.extra2 = bytes(extra2)
    return str(path)
