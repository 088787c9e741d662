"""engine/synthetic/datasets.py and truth_files.py: a data set on disk is the particles made in memory,
its STAR file resolves, and its truth reads back."""
import numpy as np
import pytest

from cryoralign_plugin.engine import synthetic as syn
from cryoralign_plugin.engine.images import circular_mask, transform
from cryoralign_plugin.engine.mrc import read_stack
from cryoralign_plugin.engine.sources import StarSource
from cryoralign_plugin.engine.star import read_star, scan_star

from synthetic_checks import BOX, masked_corr


def test_make_dataset_writes_files_whose_names_resolve(tmp_path, capsys):
    syn.main(["--out", str(tmp_path / "ds"), "--particles", "40", "--box", "32", "--classes", "3",
              "--snr", "2", "--seed", "7"])
    out = capsys.readouterr().out
    paths = {line.split()[0]: line.split()[1] for line in out.splitlines()}
    assert set(paths) == {"particles", "particles_star", "truth", "references"}
    stack = StarSource.from_star(paths["particles_star"])
    assert stack.count == 40 and stack.box == 32 and list(stack.ids) == list(range(1, 41))
    images = read_stack(paths["particles"])
    assert np.array_equal(stack.read(np.arange(40)), images)
    classes, truth = syn.read_truth(paths["truth"])
    references = read_stack(paths["references"])
    expect = syn.make_particles(syn.phantom_views(3, 32, seed=7), 40, 2.0, seed=7)
    assert np.array_equal(images, expect[0]) and np.array_equal(classes, expect[1])
    assert np.allclose(truth, expect[2], atol=1e-5) and references.shape == (3, 32, 32)
    assert [int(r.rlnClassNumber) for r in read_star(paths["truth"], "truth")][:5] == list(classes[:5] + 1)


def test_ctf_dataset_is_relion31_with_optics_groups(tmp_path):
    spec = syn.CtfSimulation(defocus_range=(1.0, 2.0), voltage=(300, 200), cs=(2.7, 2.0), bfactor=20.0)
    paths = syn.make_dataset(str(tmp_path), n_particles=60, box=32, n_classes=3, snr=1.0, seed=2, ctf=spec)
    optics = read_star(paths["particles_star"], "optics")
    assert [c.getName() for c in optics.getColumns()] == syn.OPTICS_COLUMNS
    assert [(int(r.rlnOpticsGroup), float(r.rlnVoltage), float(r.rlnSphericalAberration),
             float(r.rlnAmplitudeContrast), float(r.rlnImagePixelSize), int(r.rlnImageSize),
             int(r.rlnCtfDataArePhaseFlipped)) for r in optics] == [(1, 300, 2.7, 0.1, 2.5, 32, 0),
                                                                    (2, 200, 2.0, 0.1, 2.5, 32, 0)]
    particles = read_star(paths["particles_star"], "particles")
    assert [c.getName() for c in particles.getColumns()] == [
        "rlnImageId", "rlnImageName", "rlnOpticsGroup", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
        "rlnPhaseShift", "rlnCtfBfactor"]
    du = np.array([float(r.rlnDefocusU) for r in particles])
    dv = np.array([float(r.rlnDefocusV) for r in particles])
    assert np.all(du >= dv) and np.all((du + dv) / 2 >= 1e4) and np.all((du + dv) / 2 <= 2e4)
    assert {int(r.rlnOpticsGroup) for r in particles} == {1, 2}
    truth = syn.read_truth_ctf(paths["truth"])
    assert np.allclose(truth["defocus_u"], du) and truth["pixel_size"] == 2.5
    assert np.all(truth["voltage"] == np.where(truth["optics_group"] == 1, 300.0, 200.0))
    assert np.all(truth["bfactor"] == 20.0)
    expect = syn.make_particles(syn.phantom_views(3, 32, seed=2), 60, 1.0, seed=2, ctf=spec)
    assert np.array_equal(read_stack(paths["particles"]), expect[0])
    assert np.allclose(truth["defocus_v"], expect[3]["defocus_v"], rtol=1e-9)
    source = StarSource.from_star(paths["particles_star"])
    assert source.count == 60 and source.pixel_size == 2.5
    assert syn.read_truth(paths["truth"])[0].shape == (60,)
    # Without CTF the particle STAR has no optics table and the truth no CTF.
    plain = syn.make_dataset(str(tmp_path / "plain"), n_particles=10, box=32, n_classes=2, seed=2)
    assert [name for name, _ in scan_star(plain["particles_star"])] == ["particles"]
    assert syn.read_truth_ctf(plain["truth"]) is None


@pytest.mark.parametrize("source", ["slicem", "phantom"])
def test_references_under_a_similarity_cap(source):
    # Measured at 64 px, 1 degree steps (10 views, seed 0): cap 0.9 -> max 0.898 slicem / 0.904
    # phantom, the median nearest neighbour 0.889 / 0.903 (0.782 / 0.825 without a cap).
    refs = syn.make_references(source, 10, BOX, seed=0, max_similarity=0.9)
    sim = syn.rotational_similarity(refs, n_angles=360)
    np.fill_diagonal(sim, -1.0)
    assert 0.88 < sim.max() < 0.915 and np.median(sim.max(axis=0)) > 0.87
    with pytest.raises(ValueError):
        syn.make_references(source, 10, BOX, seed=0, max_similarity=0.6)


@pytest.mark.parametrize("snr", [0.02, 0.05])
def test_real_views_at_low_snr(tmp_path, snr):
    paths = syn.make_dataset(str(tmp_path), n_particles=100, box=BOX, n_classes=4, snr=snr, seed=1,
                             source="slicem")
    noisy = read_stack(paths["particles"])
    clean, classes, _ = syn.make_particles(read_stack(paths["references"]), 100, np.inf, seed=1)
    mask = circular_mask(BOX, syn.default_radius(BOX))
    assert abs(clean[:, mask].var() / (noisy - clean).var() / snr - 1.0) < 0.05
    assert np.array_equal(syn.read_truth(paths["truth"])[0], classes)


def test_continuous_dataset_truth_is_the_direction(tmp_path):
    paths = syn.make_dataset(str(tmp_path), n_particles=300, box=48, n_classes=6, snr=np.inf, seed=0,
                             source="phantom-arc", mirror=True)
    directions = syn.read_truth_directions(paths["truth"])
    classes, truth = syn.read_truth(paths["truth"])
    images = read_stack(paths["particles"])
    views = syn.direction_views(directions, 48, seed=0)
    back = transform(images, truth)
    assert masked_corr(back, views, 48).min() > 0.995
    assert abs(syn.direction_spread(classes, directions) - 90.0 / 24) < 0.4   # the ideal partition
    assert read_stack(paths["references"]).shape == (6, 48, 48)
    with pytest.raises(ValueError):
        syn.make_dataset(str(tmp_path / "bad"), n_particles=10, source="phantom-arc", rare_fraction=0.03)
