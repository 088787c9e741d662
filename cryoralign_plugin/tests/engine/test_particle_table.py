"""Tests for the CTF and pixel-size columns of a STAR file's particle table
(cryoralign_plugin.engine.particle_table), the CtfColumns they make (engine.ctf) and how a source
exposes them, on STAR files written by hand as RELION 3.0 and 3.1 write them."""
import numpy as np
import pytest

from cryoralign_plugin.engine import ctf
from cryoralign_plugin.engine.ctf import CtfColumns, CtfParams
from cryoralign_plugin.engine.errors import InputError
from cryoralign_plugin.engine.particle_table import read_particle_table
from cryoralign_plugin.engine.sources import ArraySource, StarSource

from handmade import mrc_file, random_images, star_file

OPTICS_COLUMNS = ["rlnOpticsGroupName", "rlnOpticsGroup", "rlnVoltage", "rlnSphericalAberration",
                  "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnCtfDataArePhaseFlipped", "rlnImageSize"]
DEFOCUS_U = [10000.0, 15000.0, 20000.0, 25000.0]


def particles(**changes):
    """The per-particle columns of 4 particles, optics groups 2, 1, 2, 1."""
    columns = {"rlnOpticsGroup": [2, 1, 2, 1], "rlnDefocusU": DEFOCUS_U,
               "rlnDefocusV": [u - 500 for u in DEFOCUS_U], "rlnDefocusAngle": [0, 10, 20, 30],
               "rlnPhaseShift": [0, 0, 90, 0], "rlnCtfBfactor": [0, 0, 0, 50]}
    columns.update(changes)
    return {k: v for k, v in columns.items() if v is not None}


def relion31(tmp_path, extra=None, optics_rows=None, name="in.star"):
    """A RELION 3.1 STAR file of 4 particles in 2 optics groups (300 kV / 2.7 mm / 0.1 / 1.0 A, not
    flipped; 200 kV / 0.01 mm / 0.07 / 1.5 A, phase-flipped), with a 4-image stack."""
    mrc_file(tmp_path / "a.mrcs", random_images(4, 8))
    if optics_rows is None:
        optics_rows = [("opticsGroup1", 1, 300, 2.7, 0.1, 1.0, 0, 8), ("opticsGroup2", 2, 200, 0.01, 0.07, 1.5, 1, 8)]
    return star_file(tmp_path / name, ["%06d@a.mrcs" % (i + 1) for i in range(4)],
                     extra=particles() if extra is None else extra, optics=(OPTICS_COLUMNS, optics_rows))


def relion30(tmp_path, name="in.star", **changes):
    """A RELION 3.0 STAR file (no optics table): 300 kV, 14 um detector pixels at 100000x = 1.4 A."""
    mrc_file(tmp_path / "a.mrcs", random_images(4, 8))
    columns = particles(rlnOpticsGroup=None, rlnVoltage=[300] * 4, rlnSphericalAberration=[2.7] * 4,
                        rlnAmplitudeContrast=[0.1] * 4, rlnDetectorPixelSize=[14.0] * 4,
                        rlnMagnification=[100000.0] * 4)
    columns.update(changes)
    columns = {k: v for k, v in columns.items() if v is not None}
    return star_file(tmp_path / name, ["%06d@a.mrcs" % (i + 1) for i in range(4)], extra=columns)


# ------------------------------------------------------------------------------- reading the CTF

def test_relion31_two_optics_groups_give_per_particle_values(tmp_path):
    table = read_particle_table(relion31(tmp_path))
    c = table.ctf
    np.testing.assert_array_equal(c.defocus_u, DEFOCUS_U)
    np.testing.assert_array_equal(c.defocus_v, [9500, 14500, 19500, 24500])
    np.testing.assert_array_equal(c.defocus_angle, [0, 10, 20, 30])
    np.testing.assert_array_equal(c.phase_shift, [0, 0, 90, 0])
    np.testing.assert_array_equal(c.bfactor, [0, 0, 0, 50])
    np.testing.assert_array_equal(c.voltage, [200, 300, 200, 300])           # groups 2, 1, 2, 1
    np.testing.assert_array_equal(c.cs, [0.01, 2.7, 0.01, 2.7])
    np.testing.assert_array_equal(c.amplitude_contrast, [0.07, 0.1, 0.07, 0.1])
    np.testing.assert_array_equal(c.pixel_size, [1.5, 1.0, 1.5, 1.0])
    np.testing.assert_array_equal(c.phase_flipped, [True, False, True, False])
    assert c.phase_flipped.dtype == bool and c.voltage.dtype == np.float64
    np.testing.assert_array_equal(table.pixel_sizes, [1.5, 1.0, 1.5, 1.0])
    # Each particle's CTF is the one of its own values, at its own pixel size.
    got = c.images([3, 0], box=8)
    for k, i in enumerate((3, 0)):
        expected = ctf.ctf_image(CtfParams(DEFOCUS_U[i], DEFOCUS_U[i] - 500, [0, 10, 20, 30][i], c.voltage[i],
                                           c.cs[i], c.amplitude_contrast[i], [0, 0, 90, 0][i], [0, 0, 0, 50][i]),
                                 8, c.pixel_size[i])
        np.testing.assert_allclose(got[k], expected, atol=1e-6)
    # The images of two pixel sizes cannot be aligned together: the source refuses them.
    with pytest.raises(InputError, match=r"different pixel sizes \(rlnImagePixelSize from 1 to 1\.5 A\)"):
        table.pixel_size()
    with pytest.raises(InputError, match="different pixel sizes"):
        StarSource.from_star(tmp_path / "in.star")


def test_relion31_source_exposes_the_ctf(tmp_path):
    rows = [("opticsGroup1", 1, 300, 2.7, 0.1, 1.2, 0, 8), ("opticsGroup2", 2, 200, 0.01, 0.07, 1.2, 1, 8)]
    source = StarSource.from_star(relion31(tmp_path, optics_rows=rows))
    assert source.pixel_size == pytest.approx(1.2)
    c = source.ctf
    assert len(c) == source.count == 4
    np.testing.assert_array_equal(c.voltage, [200, 300, 200, 300])
    np.testing.assert_array_equal(c.phase_flipped, [True, False, True, False])
    batch = c.images([2, 1], source.box, source.pixel_size)
    assert batch.shape == (2, 8, 5) and batch.dtype == np.float32
    expected = ctf.ctf_images(c.defocus_u[[2, 1]], c.defocus_v[[2, 1]], c.defocus_angle[[2, 1]], [200, 300],
                              [0.01, 2.7], [0.07, 0.1], [90, 0], [0, 0], box=8, pixel_size=1.2)
    np.testing.assert_array_equal(batch, expected)
    assert c.params(1) == CtfParams(15000, 14500, 10, 300, 2.7, 0.1, 0, 0)


def test_relion30_pixel_size_from_detector_and_magnification(tmp_path):
    source = StarSource.from_star(relion30(tmp_path))
    assert source.pixel_size == pytest.approx(1.4)                    # 1e4 * 14 um / 100000
    np.testing.assert_allclose(source.ctf.pixel_size, 1.4)
    np.testing.assert_array_equal(source.ctf.voltage, 300)
    np.testing.assert_array_equal(source.ctf.phase_flipped, False)
    flipped = StarSource.from_star(relion30(tmp_path, "f.star", rlnCtfDataArePhaseFlipped=[1, 1, 0, 1]))
    np.testing.assert_array_equal(flipped.ctf.phase_flipped, [True, True, False, True])


def test_pixel_size_sources_in_order(tmp_path):
    """rlnImagePixelSize of data_optics wins over a stale RELION 3.0 detector/magnification pair."""
    extra = particles(rlnDetectorPixelSize=[5.0] * 4, rlnMagnification=[10000.0] * 4)
    rows = [("g1", 1, 300, 2.7, 0.1, 1.1, 0, 8), ("g2", 2, 300, 2.7, 0.1, 1.1, 0, 8)]
    assert read_particle_table(relion31(tmp_path, extra=extra, optics_rows=rows)).pixel_size() == 1.1


def test_no_ctf(tmp_path):
    mrc_file(tmp_path / "a.mrcs", random_images(2, 8))
    plain = StarSource.from_star(star_file(tmp_path / "plain.star", ["1@a.mrcs", "2@a.mrcs"]))
    assert plain.ctf is None
    # The microscope in data_optics but no defocus: RELION writes that before any CTF is estimated.
    optics = (["rlnOpticsGroup", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
               "rlnImagePixelSize"], [(1, 300, 2.7, 0.1, 1.3)])
    star = star_file(tmp_path / "optics.star", ["1@a.mrcs", "2@a.mrcs"], extra={"rlnOpticsGroup": [1, 1]},
                     optics=optics)
    source = StarSource.from_star(star)
    assert source.ctf is None and source.pixel_size == pytest.approx(1.3)
    assert ArraySource(random_images(2, 8)).ctf is None


def test_ctf_pixel_size_from_the_stack_header(tmp_path):
    star = relion30(tmp_path, rlnDetectorPixelSize=None, rlnMagnification=None)
    mrc_file(tmp_path / "a.mrcs", random_images(4, 8), pixel_size=2.0)
    source = StarSource.from_star(star)
    assert source.pixel_size == pytest.approx(2.0)
    np.testing.assert_allclose(source.ctf.pixel_size, 2.0)


# ------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("kind, changes, missing", [
    ("3.0", dict(rlnVoltage=None, rlnSphericalAberration=None, rlnAmplitudeContrast=None),   # defocus, no voltage
     "rlnVoltage, rlnSphericalAberration, rlnAmplitudeContrast in data_particles"),
    ("3.0", dict(rlnDefocusU=None, rlnDefocusV=None, rlnDefocusAngle=None, rlnPhaseShift=None,
                 rlnCtfBfactor=None), "rlnDefocusU, rlnDefocusV, rlnDefocusAngle in data_particles"),  # no defocus
    ("3.0", dict(rlnAmplitudeContrast=None, rlnDefocusAngle=None),
     "rlnDefocusAngle in data_particles and no rlnAmplitudeContrast in data_particles"),
    ("3.1", dict(rlnDefocusV=None, rlnDefocusAngle=None), "rlnDefocusV, rlnDefocusAngle in data_particles"),
])
def test_ctf_columns_partly_present(tmp_path, kind, changes, missing):
    if kind == "3.0":
        star = relion30(tmp_path, **changes)
    else:
        star = relion31(tmp_path, extra=particles(**changes))
    with pytest.raises(InputError, match=r"has CTF columns \(.*\) but no %s: add the missing columns, or remove "
                                         r"the CTF columns" % missing) as e:
        StarSource.from_star(star)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("where, column, value, message", [
    ("particles", "rlnDefocusU", "nan", r"row 2 of \S+in\.star: rlnDefocusU = nan: defocus must be"),
    ("particles", "rlnDefocusU", "-100", r"row 2 of \S+in\.star: rlnDefocusU = -100\.0: defocus must be"),
    ("particles", "rlnDefocusV", "inf", r"row 2 of .*: rlnDefocusV = inf: defocus"),
    ("particles", "rlnDefocusAngle", "abc", r"row 2 of .*: rlnDefocusAngle value 'abc' is not a number"),
    ("particles", "rlnPhaseShift", "nan", r"row 2 of .*: rlnPhaseShift = nan: give the phase shift"),
    ("optics", "rlnVoltage", "0", r"row 2 of data_optics in .*: rlnVoltage = 0\.0: give the acceleration"),
    ("optics", "rlnVoltage", "-300", r"row 2 of data_optics in .*: rlnVoltage = -300\.0"),
    ("optics", "rlnImagePixelSize", "0", r"row 2 of data_optics in .*: rlnImagePixelSize = 0\.0: give the pixel"),
    ("optics", "rlnAmplitudeContrast", "10", r"rlnAmplitudeContrast = 10\.0: .*\[0, 1\).*not a percentage"),
    ("optics", "rlnAmplitudeContrast", "1", r"row 2 of data_optics in .*: rlnAmplitudeContrast = 1\.0"),
    ("optics", "rlnSphericalAberration", "-1", r"row 2 of data_optics in .*: rlnSphericalAberration = -1\.0: "
                                               r"give the spherical aberration"),
    ("optics", "rlnCtfDataArePhaseFlipped", "2", r"row 2 of data_optics in .*: rlnCtfDataArePhaseFlipped is 2: "
                                                 r"it must be 0 .* or 1"),
    ("optics", "rlnOpticsGroup", "3", r"row 1 of .*: rlnOpticsGroup 2 is not in data_optics \(groups: 1, 3\)"),
])
def test_bad_ctf_values(tmp_path, where, column, value, message):
    if where == "particles":
        extra = particles()
        extra[column] = list(extra[column])
        extra[column][1] = value
        star = relion31(tmp_path, extra=extra)
    else:
        rows = [["opticsGroup1", 1, 300, 2.7, 0.1, 1.0, 0, 8], ["opticsGroup2", 2, 300, 2.7, 0.1, 1.0, 0, 8]]
        rows[1][OPTICS_COLUMNS.index(column)] = value
        star = relion31(tmp_path, optics_rows=rows)
    with pytest.raises(InputError, match=message) as e:
        StarSource.from_star(star)
    assert "\n" not in str(e.value)


def test_bad_relion30_pixel_size(tmp_path):
    star = relion30(tmp_path, rlnMagnification=[100000.0, 0.0, 100000.0, 100000.0])
    with pytest.raises(InputError, match=r"row 2 of .*: 1e4 \* rlnDetectorPixelSize / rlnMagnification = inf: "
                                         r"give the pixel size"):
        StarSource.from_star(star)


def test_several_optics_groups_without_rlnopticsgroup(tmp_path):
    rows = [("g1", 1, 300, 2.7, 0.1, 1.0, 0, 8), ("g2", 2, 200, 2.7, 0.1, 1.0, 0, 8)]
    with pytest.raises(InputError, match=r"data_optics has 2 optics groups with different rlnVoltage values, "
                                         r"but the particles cannot be matched to them: add rlnOpticsGroup"):
        StarSource.from_star(relion31(tmp_path, extra=particles(rlnOpticsGroup=None), optics_rows=rows))
    same = [("g1", 1, 300, 2.7, 0.1, 1.0, 0, 8), ("g2", 2, 300, 2.7, 0.1, 1.0, 0, 8)]   # agree: no need to match
    source = StarSource.from_star(relion31(tmp_path, extra=particles(rlnOpticsGroup=None), optics_rows=same,
                                           name="same.star"))
    np.testing.assert_array_equal(source.ctf.voltage, 300)


# ---------------------------------------------------------------------------------- CtfColumns

def test_ctf_columns_broadcast_select_and_array_source():
    c = CtfColumns([15000, 20000, 10000], [14000, 20000, 10000], 0, [300, 200, 300], 2.7, 0.1)
    assert len(c) == 3 and c.cs.shape == (3,) and c.pixel_size is None
    np.testing.assert_array_equal(c.phase_flipped, [False] * 3)
    s = c.select([2, 0])
    np.testing.assert_array_equal(s.defocus_u, [10000, 15000])
    np.testing.assert_array_equal(s.voltage, [300, 300])
    expected = ctf.ctf_images([10000, 15000], [10000, 14000], 0, 300, 2.7, 0.1, box=16, pixel_size=1.5)
    np.testing.assert_array_equal(c.images([2, 0], 16, 1.5), expected)
    assert c.images([], 16, 1.5).shape == (0, 16, 9)
    assert c.images([1], 16, 1.5, rfft=False).shape == (1, 16, 16)
    with pytest.raises(InputError, match="needs the pixel size"):
        c.images([0], 16)
    source = ArraySource(random_images(3, 16), ctf=c)
    assert source.ctf is c
    with pytest.raises(InputError, match="the CTF has 3 particles but the source has 2"):
        ArraySource(random_images(2, 16), ctf=c)


def test_ctf_columns_reject_bad_values():
    with pytest.raises(InputError, match=r"voltage = 0\.0 \(particle 1\)"):
        CtfColumns([15000, 15000], [15000, 15000], 0, [300, 0], 2.7, 0.1)
    with pytest.raises(InputError, match=r"pixel_size = -1\.0 \(particle 0\)"):
        CtfColumns([15000, 15000], [15000, 15000], 0, 300, 2.7, 0.1, pixel_size=[-1, 1])
    with pytest.raises(InputError, match="voltage has 3 values for 2 particles"):
        CtfColumns([15000, 15000], [15000, 15000], 0, [300, 300, 300], 2.7, 0.1)


def test_relion31_optics_without_voltage(tmp_path):
    mrc_file(tmp_path / "a.mrcs", random_images(4, 8))
    optics = (["rlnOpticsGroup", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize"],
              [(1, 2.7, 0.1, 1.0), (2, 2.7, 0.1, 1.0)])
    star = star_file(tmp_path / "in.star", ["%06d@a.mrcs" % (i + 1) for i in range(4)], extra=particles(),
                     optics=optics)
    with pytest.raises(InputError, match=r"but no rlnVoltage in data_particles or data_optics: add the missing"):
        StarSource.from_star(star)


def test_names_are_a_compact_sequence_of_the_given_strings():
    from cryoralign_plugin.engine.particle_table import Names
    given = ["000001@a.mrcs", "", "12@dir/é b.mrcs", "3@c.mrcs"]
    names = Names(given)
    assert len(names) == 4 and list(names) == given and names == given
    assert names[2] == "12@dir/é b.mrcs" and names[-1] == "3@c.mrcs" and names[np.int64(1)] == ""
    assert names[1:3] == given[1:3] and names[::2] == given[::2] and len(names[4:]) == 0
    assert names.text() == "\n".join(given)
    assert len(Names([])) == 0 and list(Names([])) == [] and Names([""]) == [""]
    with pytest.raises(IndexError):
        names[4]


def test_the_particle_table_holds_few_bytes_per_particle(tmp_path):
    """A run keeps the table of its 10^6 particles from start to end: ids, image locations and names
    (no str per particle: a list of them held 93 bytes per particle)."""
    import tracemalloc
    from cryoralign_plugin.engine.star import write_star
    n = 20000
    star = tmp_path / "p.star"
    write_star(star, {"particles": (["rlnImageId", "rlnImageName"],
                                    [(i + 1, "%06d@stack.mrcs" % (i + 1)) for i in range(n)])})
    tracemalloc.start()
    try:
        table = read_particle_table(star)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held / n < 65   # measured 47 bytes per particle (with a list of str names: 96)
    assert table.names[n - 1] == "%06d@stack.mrcs" % n and table.local[n - 1] == n - 1
