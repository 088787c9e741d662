"""Tests for the synthetic data generator (cryoralign_plugin.engine.synthetic): the ground truth it
writes must be exactly what brings each particle onto its reference, at the SNR it claims."""
import numpy as np
import pytest

from cryoralign_plugin.engine import ctf, synthetic as syn
from cryoralign_plugin.engine.geometry import MIRROR, PSI, SX, SY
from cryoralign_plugin.engine.images import circular_mask, transform
from cryoralign_plugin.engine.mrc import read_stack
from cryoralign_plugin.engine.sources import StarSource
from cryoralign_plugin.engine.star import read_star, scan_star

BOX = 64


@pytest.fixture(scope="module")
def phantom():
    return syn.phantom_views(6, BOX, seed=0)


def _register_corr(images, classes, truth, references):
    """Masked correlation of each particle, brought back by ``truth``, with its reference."""
    mask = circular_mask(BOX, syn.default_radius(BOX))
    back = transform(images, truth)
    return np.array([np.corrcoef(b[mask], references[k][mask])[0, 1] for b, k in zip(back, classes)])


@pytest.mark.parametrize("source, bound", [("phantom", 0.999), ("slicem", 0.995)])
def test_truth_brings_clean_particles_onto_their_references(source, bound):
    references = syn.make_references(source, 5, BOX, seed=0)
    images, classes, truth = syn.make_particles(references, 120, np.inf, seed=3)
    assert 20 < truth[:, MIRROR].sum() < 100          # mirrored and unmirrored particles both covered
    corr = _register_corr(images, classes, truth, references)
    assert corr[truth[:, MIRROR] == 1].min() > bound and corr[truth[:, MIRROR] == 0].min() > bound
    # The bound is tight enough to catch a 5 degree or a mirror error in the truth.
    for wrong in (PSI, MIRROR):
        bad = truth.copy()
        bad[:, wrong] = (bad[:, wrong] + 5.0) % 360 if wrong == PSI else 1 - bad[:, wrong]
        assert np.median(_register_corr(images, classes, bad, references)) < bound


def test_clean_particles_are_moved_away_from_their_references(phantom):
    images, classes, truth = syn.make_particles(phantom, 50, np.inf, seed=1)
    mask = circular_mask(BOX, syn.default_radius(BOX))
    corr = [np.corrcoef(p[mask], phantom[k][mask])[0, 1] for p, k in zip(images, classes)]
    assert np.median(corr) < 0.8


@pytest.mark.parametrize("snr", [0.05, 1.0])
def test_snr_is_signal_variance_in_mask_over_noise_variance(phantom, snr):
    clean, _, _ = syn.make_particles(phantom, 200, np.inf, seed=5)
    noisy, _, _ = syn.make_particles(phantom, 200, snr, seed=5)
    mask = circular_mask(BOX, syn.default_radius(BOX))
    signal = clean[:, mask].var()
    measured = signal / (noisy - clean).var()
    assert abs(measured / snr - 1.0) < 0.05
    assert abs((noisy - clean)[:, ~mask].var() / (noisy - clean)[:, mask].var() - 1.0) < 0.05  # white


def test_add_noise_uses_one_sigma_for_the_whole_set():
    rng = np.random.default_rng(0)
    images = np.zeros((400, 32, 32), np.float32)
    images[:200, :, :13] = 1.0          # half the set is blank (signal is pooled), half the box bright
    noisy = syn.add_noise(images, 0.5, 12, rng)
    signal = images[:, circular_mask(32, 12)].var()
    for part in (noisy[:200] - images[:200], noisy[200:]):
        assert abs(signal / part.var() / 0.5 - 1.0) < 0.05
    with pytest.raises(ValueError):
        syn.add_noise(images, 0.0, 12, rng)
    assert np.array_equal(syn.add_noise(images, np.inf, 12, rng), images)


def test_similarity_sees_through_rotation_and_mirror(phantom):
    moved = transform(phantom, np.array([[33.0, 0, 0, 1], [200.0, 0, 0, 0]] * 3))
    sim = syn.rotational_similarity(np.concatenate([phantom, moved]), n_angles=360)
    assert np.diag(sim[:6, 6:]).min() > 0.99


def test_phantom_views_are_mutually_distinct():
    # Measured max pairwise similarity (1 degree steps, mirror allowed) of 10 views at 64 px:
    # 0.831 (seed 0), 0.74-0.90 over seeds 0-9; at 90 px and SNR 0.1 all are told apart.
    views = syn.phantom_views(10, BOX, seed=0)
    sim = syn.rotational_similarity(views, n_angles=360)
    np.fill_diagonal(sim, -1.0)
    assert sim.max() < 0.86
    assert views.shape == (10, BOX, BOX) and views.dtype == np.float32
    mask = circular_mask(BOX, syn.default_radius(BOX))
    assert np.allclose(views[:, mask].std(axis=1), 1.0, atol=1e-3)
    assert np.abs(views[:, ~circular_mask(BOX, 0.45 * BOX)]).max() < 0.05 * views.max()   # inside


def test_slicem_references_are_distinct_real_averages():
    refs = syn.slicem_references(10, BOX, seed=0)
    sim = syn.rotational_similarity(refs, n_angles=360)
    np.fill_diagonal(sim, -1.0)
    assert sim.max() < 0.85                              # measured 0.797
    assert refs.shape == (10, BOX, BOX)
    assert np.allclose(refs[:, circular_mask(BOX, syn.default_radius(BOX))].std(axis=1), 1.0, atol=1e-3)
    assert np.abs(refs[:, ~circular_mask(BOX, 0.48 * BOX)]).max() < 1e-6      # soft-masked
    assert syn.slicem_references(3, 96, seed=1).shape == (3, 96, 96)


def test_averages_with_density_at_the_edge_are_left_out():
    y, x = np.indices((96, 96)) - 48
    central = np.exp(-(x ** 2 + y ** 2) / 200.0)
    neighbour = central + 1.5 * np.exp(-((x - 36) ** 2 + y ** 2) / 60.0)
    assert list(syn._centered_averages(np.stack([central, neighbour, central]))) == [0, 2]
    kept = syn._centered_averages(read_stack(syn.SLICEM_PATH))
    assert 75 < len(kept) < 95 and not {30, 51, 70} & set(kept)   # three with a neighbour at the edge


def test_most_distinct_picks_the_outliers():
    points = np.array([0.0, 0.1, 0.2, 5.0, 10.0])
    similarity = -np.abs(points[:, None] - points[None, :])
    assert sorted(syn.most_distinct(similarity, 3)) == [0, 3, 4]
    assert list(syn.most_distinct(similarity, 1, first=2)) == [2]
    with pytest.raises(ValueError):
        syn.most_distinct(similarity, 6)


def test_same_seed_same_data_other_seed_other_data(phantom):
    assert np.array_equal(syn.phantom_views(3, 32, seed=4), syn.phantom_views(3, 32, seed=4))
    assert not np.allclose(syn.phantom_views(3, 32, seed=4), syn.phantom_views(3, 32, seed=5))
    a = syn.make_particles(phantom, 30, 0.3, seed=2)
    b = syn.make_particles(phantom, 30, 0.3, seed=2)
    c = syn.make_particles(phantom, 30, 0.3, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[2], c[2])


def test_classes_are_balanced_or_follow_weights(phantom):
    _, classes, _ = syn.make_particles(phantom, 1003, np.inf, seed=0)
    counts = np.bincount(classes, minlength=6)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 1003
    assert len(np.unique(classes[:12])) > 3                            # shuffled, not in blocks
    weighted = syn.class_labels(100, 3, np.random.default_rng(0), weights=[2, 1, 1])
    assert list(np.bincount(weighted)) == [50, 25, 25]


def test_random_parameters_ranges():
    p = syn.random_parameters(2000, np.random.default_rng(0), shift_range=2.5)
    assert p[:, PSI].min() >= 0 and p[:, PSI].max() < 360 and np.ptp(p[:, PSI]) > 350
    assert np.abs(p[:, [SX, SY]]).max() <= 2.5 and np.abs(p[:, [SX, SY]]).max() > 2.4
    assert abs(p[:, MIRROR].mean() - 0.5) < 0.05 and set(np.unique(p[:, MIRROR])) == {0.0, 1.0}
    assert not syn.random_parameters(50, np.random.default_rng(0), mirror=False)[:, MIRROR].any()


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


# ---------------------------------------------------------------------------------------------
# CTF-modulated particles

def _masked_corr(a, b, box=BOX):
    mask = circular_mask(box, syn.default_radius(box))
    return np.array([np.corrcoef(x[mask], y[mask])[0, 1] for x, y in zip(a, b)])


def test_without_ctf_the_particles_are_what_they_were(phantom):
    # The CTF-free path keeps its random stream: classes and parameters of this call hashed from
    # the code before CTF was added (images were compared byte for byte then too, but their bits
    # depend on the interpolation code, so only the random draws are pinned here).
    import hashlib
    refs = syn.phantom_views(4, 32, seed=3)
    images, classes, truth = syn.make_particles(refs, 60, 0.5, seed=9)
    digest = hashlib.sha256(classes.astype(np.int64).tobytes() + truth.astype(np.float64).tobytes())
    assert digest.hexdigest()[:16] == "f9c9d4edd1a53832"
    again = syn.make_particles(refs, 60, 0.5, seed=9, ctf=None)
    assert len(again) == 3 and all(np.array_equal(x, y) for x, y in zip(again, (images, classes, truth)))


def test_ctf_keeps_classes_parameters_and_noise_draws(phantom):
    clean, classes, truth = syn.make_particles(phantom, 150, np.inf, seed=4)
    noisy, _, _ = syn.make_particles(phantom, 150, 0.1, seed=4)
    spec = syn.CtfSimulation()
    modulated, c_classes, c_truth, ctf_truth = syn.make_particles(phantom, 150, np.inf, seed=4, ctf=spec)
    c_noisy = syn.make_particles(phantom, 150, 0.1, seed=4, ctf=spec)[0]
    assert np.array_equal(classes, c_classes) and np.array_equal(truth, c_truth)
    assert not np.allclose(modulated, clean, atol=0.1)
    # Same normalised noise draws, scaled to each set's own signal: the SNR is that of the
    # CTF-modulated signal (whose variance is ~7x below the clean one at 2.5 A/px).
    mask = circular_mask(BOX, syn.default_radius(BOX))
    noise, c_noise = noisy - clean, c_noisy - modulated
    assert abs(modulated[:, mask].var() / c_noise.var() / 0.1 - 1.0) < 0.05
    assert np.allclose(noise / noise.std(), c_noise / c_noise.std(), atol=1e-3)
    assert 4 < clean[:, mask].var() / modulated[:, mask].var() < 12
    assert ctf_truth["defocus_u"].shape == (150,)


def test_ctf_truth_ranges():
    spec = syn.CtfSimulation(defocus_range=(0.8, 3.0), astigmatism=0.05, voltage=(300, 200), cs=(2.7, 2.0))
    t = spec.draw(4000, np.random.default_rng(0))
    mean = (t["defocus_u"] + t["defocus_v"]) / 2
    assert 8000 <= mean.min() < 8100 and 29900 < mean.max() <= 30000        # uniform over 0.8-3.0 um
    astig = (t["defocus_u"] - t["defocus_v"]) / mean
    assert astig.min() >= 0 and 0.049 < astig.max() <= 0.05
    assert t["defocus_angle"].min() >= 0 and t["defocus_angle"].max() < 180
    assert list(np.bincount(t["optics_group"])[1:]) == [2000, 2000]
    for group, kv, cs in [(1, 300, 2.7), (2, 200, 2.0)]:
        inside = t["optics_group"] == group
        assert np.all(t["voltage"][inside] == kv) and np.all(t["cs"][inside] == cs)
    assert np.all(t["amplitude_contrast"] == 0.1) and np.all(t["phase_shift"] == 0) and t["pixel_size"] == 2.5
    with pytest.raises(ValueError):
        syn.CtfSimulation(voltage=(300, 200, 120), n_optics_groups=2)
    with pytest.raises(ValueError):
        syn.CtfSimulation(defocus_range=(3.0, 1.0))


@pytest.mark.parametrize("source, pixel_size, before, after", [("slicem", 2.5, 0.70, 0.80),
                                                                 ("phantom", 1.5, 0.84, 0.89)])
def test_phase_flip_with_the_true_ctf_brings_particles_closer_to_the_clean_image(source, pixel_size,
                                                                                before, after):
    # Measured medians (noise-free, 100 particles, 64 px): slicem at 2.5 A/px 0.755 unflipped ->
    # 0.832 flipped; phantom at 1.5 A/px 0.872 -> 0.913 (the smooth phantom has little power past
    # the first zero: at 2.5 A/px only 0.859 -> 0.865).
    refs = syn.make_references(source, 6, BOX, seed=0)
    clean, *_ = syn.make_particles(refs, 100, np.inf, seed=3)
    spec = syn.CtfSimulation(pixel_size=pixel_size)
    modulated, _, _, truth = syn.make_particles(refs, 100, np.inf, seed=3, ctf=spec)
    ctfs = syn.particle_ctfs(truth, BOX)
    raw, flipped = _masked_corr(modulated, clean), _masked_corr(ctf.phase_flip(modulated, ctfs), clean)
    assert np.median(raw) < before + 0.07 and np.median(flipped) > after
    assert np.mean(flipped > raw) > 0.9


def test_ctf_is_applied_on_a_padded_box_or_exactly_on_the_box(phantom):
    clean, *_ = syn.make_particles(phantom, 40, np.inf, seed=6)
    exact, _, _, truth = syn.make_particles(phantom, 40, np.inf, seed=6, ctf=syn.CtfSimulation(pad=1))
    ctfs = syn.particle_ctfs(truth, BOX)
    assert np.allclose(exact, ctf.apply_ctf(clean, ctfs), atol=1e-6)
    # Flipped with its true CTF, a particle is the clean image filtered by |CTF| (up to the Nyquist
    # row, where an astigmatic CTF is not Hermitian-symmetric: measured 1e-4 of a 2.7 maximum).
    assert np.abs(ctf.phase_flip(exact, ctfs) - ctf.apply_ctf(clean, np.abs(ctfs))).max() < 1e-3
    padded = syn.make_particles(phantom, 40, np.inf, seed=6, ctf=syn.CtfSimulation(pixel_size=1.5))
    box_grid = ctf.apply_ctf(clean, syn.particle_ctfs(padded[3], BOX))
    corr = _masked_corr(padded[0], box_grid)
    assert 0.99 < corr.min() < 0.9995     # measured 0.9991: the delocalised signal is not wrapped around


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


def test_ctf_command_line(tmp_path, capsys):
    syn.main(["--out", str(tmp_path), "--particles", "20", "--box", "32", "--classes", "2", "--seed", "1",
              "--defocus", "1.5", "2.5", "--voltage", "300", "200", "--cs", "2.7", "--pixel-size", "3"])
    truth = syn.read_truth_ctf(str(tmp_path / "truth.star"))
    mean = (truth["defocus_u"] + truth["defocus_v"]) / 2
    assert mean.min() >= 1.5e4 and mean.max() <= 2.5e4 and truth["pixel_size"] == 3.0
    assert set(truth["voltage"]) == {300.0, 200.0} and set(truth["cs"]) == {2.7}
    with pytest.raises(SystemExit):
        syn.main(["--out", str(tmp_path / "bad"), "--ctf", "--voltage", "300", "200", "--optics-groups", "3"])
    capsys.readouterr()


# ---------------------------------------------------------------------------------------------
# Harder sets

def test_pick_views_caps_similarity_and_fills_up_to_it():
    points = np.array([0.0, 0.1, 0.2, 0.5, 5.0, 10.0])
    similarity = -np.abs(points[:, None] - points[None, :])
    chosen = syn.pick_views(similarity, 3, max_similarity=-0.25)
    sub = similarity[np.ix_(chosen, chosen)] - 10 * np.eye(3)
    assert sub.max() <= -0.25 and sub.max() >= -0.3               # 0.2 and 0.5: just under the cap
    with pytest.raises(ValueError):
        syn.pick_views(similarity, 5, max_similarity=-1.0)


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


def test_near_duplicate_pairs():
    # Measured (seed 0, 64 px, 1 degree steps): pairs 0.980 0.984 0.978 0.955 0.953 with 10 views,
    # the most similar views of different pairs 0.832; seeds 1-3: pairs 0.950-0.987, others <= 0.77.
    views, similarity = syn.phantom_pairs(6, BOX, seed=0)
    assert views.shape == (6, BOX, BOX)
    sim = syn.rotational_similarity(views, n_angles=360)
    assert np.allclose(sim, similarity)
    pair = np.arange(6) // 2
    same = (pair[:, None] == pair[None, :]) & ~np.eye(6, dtype=bool)
    assert sim[same].min() >= 0.95 and sim[same].max() < 0.995       # near, not identical
    assert sim[pair[:, None] != pair[None, :]].max() < 0.9
    assert np.array_equal(views[::2], syn.phantom_views(3, BOX, seed=0))   # the bases are the distinct views
    with pytest.raises(ValueError):
        syn.phantom_pairs(5, BOX)


def test_direction_spread_and_its_ideal_partition():
    t = np.deg2rad([-10.0, 10.0, 80.0, 100.0])
    d = np.stack([np.zeros(4), np.sin(t), np.cos(t)], axis=1)
    assert np.isclose(syn.direction_spread([0, 0, 1, 1], d), 10.0)
    assert np.isclose(syn.direction_spread([0, 1, 2, 3], d), 0.0)
    assert np.isclose(syn.direction_spread([0, 0], [[0, 0, 1], [0, 0, -1]], antipodal=True), 0.0)
    assert np.isclose(syn.direction_spread([0, 0], [[0, 0, 1], [0, 0, -1]]), 90.0)
    # Uniform on a 90 degree arc: equal arcs, spread 90 / (4 K) (measured 2.216 for K=10, 2000 directions).
    arc = syn.continuous_directions(2000, np.random.default_rng(0), "arc", 90.0)
    for k in (5, 10):
        labels = syn.ideal_partition(arc, k)
        assert abs(syn.direction_spread(labels, arc) / (90.0 / (4 * k)) - 1.0) < 0.05
        assert np.bincount(labels).min() > 0.6 * 2000 / k
    assert syn.direction_spread(np.random.default_rng(1).integers(10, size=2000), arc) > 20.0


@pytest.mark.parametrize("mode, extent", [("arc", 90.0), ("cap", 30.0)])
def test_continuous_views_cover_their_range(mode, extent):
    views, d = syn.continuous_views(600, 48, seed=0, mode=mode, extent=extent)
    assert views.shape == (600, 48, 48) and np.allclose(np.linalg.norm(d, axis=1), 1.0)
    angle = np.rad2deg(np.arccos(d[:, 2]))                           # from the pole
    assert angle.max() <= extent / (2 if mode == "arc" else 1) + 1e-9
    if mode == "arc":
        assert np.allclose(d[:, 0], 0.0)
        tilt = np.rad2deg(np.arctan2(-d[:, 1], d[:, 2]))
        assert np.histogram(tilt, bins=9, range=(-45, 45))[0].min() > 40       # uniform, all covered
    else:
        cos = np.histogram(d[:, 2], bins=6, range=(np.cos(np.deg2rad(extent)), 1.0))[0]
        assert cos.min() > 70 and angle.max() > 29.0                          # uniform over the cap
    assert np.allclose(views[:5], syn.direction_views(d[:5], 48, seed=0), atol=1e-5)
    # Frames vary smoothly: nearby directions give nearly the same image without any rotation.
    near = syn.direction_views([[0, 0, 1.0], [0, -np.sin(0.035), np.cos(0.035)]], 48)
    assert _masked_corr(near[:1], near[1:], 48)[0] > 0.99


def test_continuous_dataset_truth_is_the_direction(tmp_path):
    paths = syn.make_dataset(str(tmp_path), n_particles=300, box=48, n_classes=6, snr=np.inf, seed=0,
                             source="phantom-arc", mirror=True)
    directions = syn.read_truth_directions(paths["truth"])
    classes, truth = syn.read_truth(paths["truth"])
    images = read_stack(paths["particles"])
    views = syn.direction_views(directions, 48, seed=0)
    back = transform(images, truth)
    assert _masked_corr(back, views, 48).min() > 0.995
    assert abs(syn.direction_spread(classes, directions) - 90.0 / 24) < 0.4   # the ideal partition
    assert read_stack(paths["references"]).shape == (6, 48, 48)
    with pytest.raises(ValueError):
        syn.make_dataset(str(tmp_path / "bad"), n_particles=10, source="phantom-arc", rare_fraction=0.03)


def test_rare_view(tmp_path, capsys):
    w = syn.rare_view_weights(5, 0.03)
    assert np.isclose(w.sum(), 1.0) and w[-1] == 0.03 and np.allclose(w[:-1], 0.97 / 4)
    syn.main(["--out", str(tmp_path), "--particles", "1000", "--box", "32", "--classes", "5",
              "--rare-fraction", "0.03", "--snr", "0.1"])
    capsys.readouterr()
    classes, _ = syn.read_truth(str(tmp_path / "truth.star"))
    fraction = np.bincount(classes, minlength=5) / 1000
    assert abs(fraction[-1] - 0.03) <= 0.005 and np.allclose(fraction[:-1], 0.2425, atol=0.001)
    _, weighted, _ = syn.make_particles(syn.phantom_views(3, 32), 200, 1.0, class_weights=[1, 1, 2])
    assert list(np.bincount(weighted)) == [50, 50, 100]
    with pytest.raises(ValueError):
        syn.rare_view_weights(1, 0.03)
