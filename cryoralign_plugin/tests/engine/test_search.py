"""The alignment search against ground truth and against a plain numpy oracle."""
import numpy as np
import pytest

from cryoralign_plugin.engine import align, geometry, images, loop, parallel, search, synthetic
from cryoralign_plugin.engine.backends.cpu import CpuBackend
from cryoralign_plugin.engine.geometry import MIRROR, PSI, SX, SY
from cryoralign_plugin.engine.settings import CANDIDATES, Settings
from cryoralign_plugin.engine.sources import ArraySource


def angle_error(found, truth):
    return np.abs((found[:, PSI] - truth[:, PSI] + 180.0) % 360.0 - 180.0)


def one_search(particles, references, radius, **options):
    """One MRA iteration against fixed references = one search step."""
    return align.align_multi_reference(particles, references=references, iterations=1, radius=radius,
                                       log=lambda *_: None, **options)


@pytest.fixture(scope="module")
def views64():
    return synthetic.slicem_references(6, 64, seed=3)


def test_ring_lengths_and_weights_follow_sparx():
    grid = geometry.polar_grid(36)
    assert list(grid.lengths) == [8, 16] + [32] * 3 + [64] * 5 + [128] * 10 + [256] * 16
    assert grid.total == 5816
    assert set(geometry.polar_grid(52).lengths[40:]) == {512}
    r, n = grid.radii, grid.lengths
    np.testing.assert_allclose(grid.weights, r * (2 * np.pi / n) * (256 / n))


def test_rings_are_normalised_alike_alone_or_four_at_a_time():
    """Zero weighted mean and unit weighted norm (numpy oracle), a flat row left at zero, and each row
    bit for bit the same alone as in a group of four (the kernel interleaves four rows' sums)."""
    grid = geometry.polar_grid(12)
    rng = np.random.default_rng(5)
    rings = (rng.normal(size=(7, grid.total)) * rng.uniform(0.1, 10.0, (7, 1)) + 3.0).astype(np.float32)
    rings[2] = 1.5
    found = search.normalise_rings(rings.copy(), grid)
    area = np.repeat(grid.area, grid.lengths)
    np.testing.assert_allclose(found @ area, 0.0, atol=1e-4)
    np.testing.assert_allclose(np.delete((found ** 2) @ area, 2), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(found[2], 0.0)
    for i in range(len(rings)):
        np.testing.assert_array_equal(search.normalise_rings(rings[i:i + 1].copy(), grid)[0], found[i])


def test_recovers_truth_at_snr_1(views64):
    parts, classes, truth = synthetic.make_particles(views64, 300, snr=1.0, seed=4)
    res = one_search(parts, views64, radius=27)
    correct = (res.classes == classes) & (res.params[:, MIRROR] == truth[:, MIRROR])
    assert correct.mean() >= 0.99
    assert np.median(angle_error(res.params, truth)) <= 1.5
    assert np.median(np.hypot(*(res.params[:, [SX, SY]] - truth[:, [SX, SY]]).T)) <= 0.6


@pytest.mark.slow
def test_classifies_at_snr_01_with_true_references():
    views = synthetic.phantom_views(10, 90, seed=0)
    parts, classes, truth = synthetic.make_particles(views, 500, snr=0.1, seed=5)
    res = one_search(parts, views, radius=36)
    correct = (res.classes == classes) & (res.params[:, MIRROR] == truth[:, MIRROR])
    assert correct.mean() >= 0.98


def test_found_parameters_reproduce_the_reference(views64):
    parts, classes, truth = synthetic.make_particles(views64, 60, snr=1e6, seed=6)
    assert truth[:, MIRROR].any() and not truth[:, MIRROR].all()
    res = one_search(parts, views64, radius=27)
    aligned = images.transform(parts, res.params)
    mask = images.circular_mask(64, 27)
    cc = [np.corrcoef(aligned[i][mask], views64[classes[i]][mask])[0, 1] for i in range(len(parts))]
    assert min(cc) > 0.95
    assert np.median(cc) > 0.99


def test_screening_matches_exhaustive_search(views64):
    parts, _, _ = synthetic.make_particles(views64, 200, snr=0.5, seed=7)
    fast = one_search(parts, views64, radius=27)
    full = one_search(parts, views64, radius=27, exhaustive=True)
    same = (fast.classes == full.classes) & (fast.params[:, MIRROR] == full.params[:, MIRROR]) \
        & (angle_error(fast.params, full.params) < 1e-3)
    assert same.mean() >= 0.99


def test_sub_pixel_shift_steps_are_honoured(views64):
    truth = np.array([[0.0, 0.5, -1.5, 0.0]])
    part = images.transform(views64[:1], geometry.inverse(truth))
    res = one_search(part, views64[:1], radius=24, shift_range=2.0, shift_step=0.5)
    np.testing.assert_allclose(res.params[0, [SX, SY]], truth[0, [SX, SY]], atol=0.26)


# --- a straightforward numpy oracle of the same search: the SPARX ring recipe, with the trial shifts
# applied to the references (the particle is sampled once, around its center) ---------------------

def oracle_rings(image, cx, cy, grid):
    rings = []
    for r, n in zip(grid.radii, grid.lengths):
        phi = 2 * np.pi * np.arange(n) / n
        x, y = cx + r * np.cos(phi), cy - r * np.sin(phi)
        x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
        fx, fy = x - x0, y - y0
        v = (image[y0, x0] * (1 - fx) * (1 - fy) + image[y0, x0 + 1] * fx * (1 - fy)
             + image[y0 + 1, x0] * (1 - fx) * fy + image[y0 + 1, x0 + 1] * fx * fy)
        rings.append(v)
    flat = np.concatenate(rings)
    w = np.repeat(grid.area, grid.lengths)
    flat = flat - (w * flat).sum() / w.sum()
    flat /= np.sqrt((w * flat * flat).sum())
    return np.split(flat, np.cumsum(grid.lengths)[:-1])


def oracle_search(particle, refs, grid, shifts):
    """Best (class, psi, shift, mirror) by brute force over references, shifts, angles and mirror."""
    box = particle.shape[0]
    c = box // 2
    m = grid.maxrin
    spectra = [np.fft.rfft(ring) for ring in oracle_rings(particle, c, c, grid)]
    best = (-np.inf,)
    for tx, ty in shifts:
        for k, ref in enumerate(refs):
            rs = [np.fft.rfft(ring) for ring in oracle_rings(ref, c - tx, c - ty, grid)]
            straight = np.zeros(m // 2 + 1, complex)
            mirrored = np.zeros(m // 2 + 1, complex)
            for w, n, R, S in zip(grid.weights, grid.lengths, rs, spectra):
                h = np.full(n // 2 + 1, w)
                if n < m:
                    h[-1] *= 0.5
                straight[:n // 2 + 1] += h * R * np.conj(S)
                mirrored[:n // 2 + 1] += h * R * S
            for mirror, spec in ((0, straight), (1, mirrored)):
                ccf = np.fft.irfft(spec, m)
                j = int(np.argmax(ccf))
                if ccf[j] > best[0]:
                    best = (ccf[j], k, j, mirror, tx, ty)
    _, k, j, mirror, tx, ty = best
    psi = (180.0 - 360.0 * j / m if mirror else 360.0 * j / m) % 360.0
    # the reference sampled at c - t matches: t_E = -t, x negated for a mirrored match
    return k, psi, np.array([tx if not mirror else -tx, ty]) * -1.0, mirror


@pytest.mark.slow
def test_agrees_with_numpy_oracle():
    views = synthetic.slicem_references(3, 48, seed=2)
    parts, _, _ = synthetic.make_particles(views, 100, snr=1.0, seed=8, shift_range=1.0)
    grid = geometry.polar_grid(18)
    shifts = geometry.shift_grid(1.0, 1.0)
    normed = images.normalise(parts, 18)
    res = one_search(parts, views, radius=18, shift_range=1.0, refine_shifts=False)  # the grid search alone
    step = 360.0 / grid.maxrin
    agree = 0
    for i in range(len(parts)):
        k, psi, t, mirror = oracle_search(normed[i], images.normalise(views, 18), grid, shifts)
        d = abs((res.params[i, PSI] - psi + 180.0) % 360.0 - 180.0)
        agree += (k == res.classes[i]) and (mirror == res.params[i, MIRROR]) and d <= step \
            and np.allclose(t, res.params[i, [SX, SY]], atol=1e-6)
    assert agree / len(parts) >= 0.99


@pytest.mark.slow
def test_classification_from_random_starts_does_not_collapse():
    views = synthetic.phantom_views(10, 90, seed=0)
    parts, classes, _ = synthetic.make_particles(views, 2000, snr=0.1, seed=1)
    res = align.align_multi_reference(parts, n_classes=10, iterations=15, seed=0, radius=36, log=lambda *_: None)
    assert synthetic.purity(res.classes, classes) >= 0.85
    assert res.class_sizes.min() > 0


# --- candidates and the preselection (hundreds of classes) -----------------------------------

def candidate_search(particles, refs, **options):
    """One search pass (no assignment, no averages) with ``options`` as Settings fields."""
    settings = Settings(backend="cpu", shift_range=3, shift_step=1, **options)
    ctx = loop.Context(ArraySource(particles), settings, parallel.Serial(), CpuBackend(settings.threads),
                       lambda *_: None)
    return loop.search_pass(ctx, refs, np.zeros((len(particles), 4))), ctx


@pytest.fixture(scope="module")
def pairs50():
    """50 near-duplicate views (25 pairs, each pair's similarity >= 0.95): the hard case for ranking
    references coarsely."""
    return synthetic.phantom_pairs(50, 64, seed=0)[0]


def same_match(a, b):
    """Same best reference, mirror and angle (to 1e-3 samples)."""
    return (a.reference[:, 0] == b.reference[:, 0]) & (a.mirror[:, 0] == b.mirror[:, 0]) \
        & (np.abs(a.angle[:, 0] - b.angle[:, 0]) < 1e-3)


def test_preselected_search_matches_the_search_over_every_reference_at_snr_1(pairs50):
    parts, classes, _ = synthetic.make_particles(pairs50, 200, snr=1.0, seed=11)
    fast, ctx = candidate_search(parts, pairs50)
    assert ctx.settings.resolved_preselect(50) == 8           # automatic: 8 of the 50 at full resolution
    full, _ = candidate_search(parts, pairs50, preselect=50)
    assert same_match(fast, full).mean() >= 0.99               # measured 1.0
    assert (fast.reference[:, 0] == classes).mean() >= 0.97    # and it is the truth (measured 1.0)


def test_preselected_search_keeps_the_class_accuracy_at_snr_005(pairs50):
    """Measured: accuracy 0.746 both ways, every best match the same (on another draw of 2000
    particles, 0.7385 both ways; with 4 references preselected instead of 8, 0.55% of the matches
    change there and the accuracy drops by 0.0015)."""
    parts, classes, _ = synthetic.make_particles(pairs50, 1000, snr=0.05, seed=12)
    fast, _ = candidate_search(parts, pairs50)
    full, _ = candidate_search(parts, pairs50, preselect=50)
    accuracy = [(c.reference[:, 0] == classes).mean() for c in (fast, full)]
    assert accuracy[1] > 0.5                         # hard but informative (near-duplicates confused)
    assert abs(accuracy[0] - accuracy[1]) <= 0.01


def test_candidates_are_the_best_of_the_full_search_and_their_size_does_not_grow_with_k():
    """Oracle: the backend's (P, K) result sorted by score (ties: lower reference); the state kept is
    (P, CANDIDATES) whatever K."""
    refs = synthetic.phantom_views(60, 32, seed=1)
    parts, _, _ = synthetic.make_particles(refs, 40, snr=1.0, seed=2)
    sizes = []
    for k in (20, 60):
        cand, ctx = candidate_search(parts, refs[:k], exhaustive=True)   # 32 px: no preselection
        rings = search.particle_rings(ctx.backend, ctx.read(np.arange(40)), cand.offsets, ctx.grid)
        prepared = ctx.backend.prepare_references(search.reference_rings(ctx.backend, refs[:k], ctx.grid,
                                                                         ctx.shifts), ctx.grid, True)
        score, shift, mirror, angle = ctx.backend.search(rings, prepared, ctx.grid)
        order = np.lexsort((np.arange(k)[None].repeat(40, 0), -score.astype(np.float64)), axis=1)
        order = order[:, :CANDIDATES]
        rows = np.arange(40)[:, None]
        np.testing.assert_array_equal(cand.reference, order)
        for found, full in ((cand.score, score), (cand.shift, shift), (cand.mirror, mirror), (cand.angle, angle)):
            np.testing.assert_array_equal(found, full[rows, order])
        sizes.append(sum(getattr(cand, f).nbytes for f in cand.__dataclass_fields__))
    assert sizes[0] == sizes[1]


def test_a_search_restricted_to_members_equals_those_columns_of_the_full_search():
    refs = synthetic.phantom_views(12, 32, seed=3)
    parts, _, _ = synthetic.make_particles(refs, 150, snr=0.5, seed=4)
    grid, shifts = geometry.polar_grid(12), geometry.shift_grid(2, 1)
    rng = np.random.default_rng(5)
    members = np.sort(np.stack([rng.choice(12, 5, replace=False) for _ in range(150)]), axis=1).astype(np.int32)
    for threads in (1, 2):
        backend = CpuBackend(threads=threads)
        prepared = backend.prepare_references(search.reference_rings(backend, refs, grid, shifts), grid, True)
        rings = search.particle_rings(backend, parts, np.zeros((150, 2)), grid)
        full = backend.search(rings, prepared, grid)
        restricted = backend.search(rings, prepared, grid, members)
        for a, b in zip(restricted, full):
            np.testing.assert_array_equal(a, np.take_along_axis(b, members, axis=1))


def test_the_preselection_is_off_for_few_classes_and_with_exhaustive():
    settings = Settings()
    assert [settings.resolved_preselect(k) for k in (1, 10, 16, 17, 200, 500)] == [1, 10, 16, 8, 8, 16]
    assert Settings(exhaustive=True).resolved_preselect(200) == 200
    assert Settings(preselect=300).resolved_preselect(200) == 200
    refs = np.zeros((20, 64, 64), np.float32)
    backend = CpuBackend(threads=1)
    assert search.Preselection.plan(backend, refs, 27, 3.0, 1.0, True, 20) is None    # every reference
    assert search.Preselection.plan(backend, refs[:, :24, :24], 8, 3.0, 1.0, True, 8) is None  # too small
    assert search.Preselection.plan(backend, refs, 27, 3.0, 1.0, True, 8).count == 8


def test_preselected_candidates_do_not_depend_on_batches_or_threads(pairs50):
    parts, _, _ = synthetic.make_particles(pairs50[:24], 60, snr=0.5, seed=13)
    expected, ctx = candidate_search(parts, pairs50[:24])
    assert ctx.settings.resolved_preselect(24) < 24
    for options in (dict(batch_size=7, threads=1), dict(batch_size=25, threads=2)):
        found, _ = candidate_search(parts, pairs50[:24], **options)
        for f in expected.__dataclass_fields__:
            np.testing.assert_array_equal(getattr(found, f), getattr(expected, f))


@pytest.mark.parametrize("box,k,chunk", [(64, 24, 5), (32, 20, 7)])   # preselected, then every reference
def test_references_prepared_in_chunks_give_the_same_candidates(pairs50, monkeypatch, box, k, chunk):
    refs = pairs50[:k] if box == 64 else synthetic.phantom_views(k, box, seed=1)
    parts, _, _ = synthetic.make_particles(refs, 50, snr=0.5, seed=14)
    expected, ctx = candidate_search(parts, refs, batch_size=20)
    per = search.search_bytes(1, len(ctx.shifts), ctx.grid)
    monkeypatch.setattr(search, "PREPARED_BYTES", chunk * per)
    assert len(search.reference_chunks(k, len(ctx.shifts), ctx.grid)) == -(-k // chunk)
    found, _ = candidate_search(parts, refs, batch_size=20)
    for f in expected.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(found, f), getattr(expected, f))


def _random_candidates(count, width, seed):
    rng = np.random.default_rng(seed)
    return search.Candidates(rng.integers(0, 200, (count, width)).astype(np.int32),
                             rng.uniform(-1, 1, (count, width)).astype(np.float32),
                             rng.integers(0, 49, (count, width)).astype(np.int32),
                             rng.integers(0, 2, (count, width)).astype(np.int8),
                             rng.uniform(0, 512, (count, width)).astype(np.float32), rng.normal(size=(count, 2)))


def test_a_pass_candidates_are_not_held_twice_when_joined_or_debiased():
    """Joining a pass's batches and re-ranking them by the self-bias hold one field at a time beyond the
    candidates themselves (152 bytes per particle at 8 candidates, 10^6 particles: 152 MB), not a second
    copy of them all."""
    import tracemalloc
    from cryoralign_plugin.engine import selfbias
    count, width = 20000, 8
    tracemalloc.start()   # before the parts are made, so that freeing them counts
    parts = [_random_candidates(count // 10, width, seed) for seed in range(10)]
    expected = [np.concatenate([getattr(p, f) for p in parts]) for f in ("reference", "score", "offsets")]
    total = sum(getattr(parts[0], f).nbytes for f in search.Candidates.__dataclass_fields__) * len(parts)
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        joined = search.Candidates.concatenate(parts)
        join_peak = tracemalloc.get_traced_memory()[1] - before
        for f, want in zip(("reference", "score", "offsets"), expected):
            np.testing.assert_array_equal(getattr(joined, f), want)
        own = np.random.default_rng(0).integers(-1, 200, count)
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        cand, ranking = selfbias.debiased(joined, own, np.full(200, 0.01))
        debias_peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert join_peak < 0.5 * total   # measured 0.21 of the candidates' bytes (both held: 1.00)
    assert debias_peak / count < 260   # measured 212 B per particle (a second set of candidates: 340)
    assert cand is joined and np.all(np.diff(ranking, axis=1) <= 0)
