"""engine.references: class counts, equal-size assignment, re-seeding, the cutoff schedule, build()."""
import itertools

import numpy as np
import pytest

from cryoralign_plugin.engine import images as im
from cryoralign_plugin.engine import references as refs


# ---------------------------------------------------------------------------------------------
# Counts and halves

def test_class_counts_by_brute_force():
    rng = np.random.default_rng(1)
    classes = rng.integers(-1, 4, 200)
    parity = rng.integers(0, 2, 200)
    counts = refs.class_counts(classes, parity, 5)        # class 4 has no member
    assert counts.shape == (5, 2)
    for k in range(5):
        for h in range(2):
            assert counts[k, h] == sum(1 for c, p in zip(classes, parity) if c == k and p == h)
    assert counts.sum() == (classes >= 0).sum()


def test_halves_are_the_fixed_point_sums_over_the_counts():
    rng = np.random.default_rng(2)
    means = rng.standard_normal((3, 2, 8, 8))
    counts = np.array([[4, 5], [1, 0], [0, 0]])
    sums = np.rint(means * counts[:, :, None, None] * im.FIXED_POINT).astype(np.int64)
    half = refs.halves(sums, counts)
    assert half.dtype == np.float32
    np.testing.assert_allclose(half[0], means[0], atol=1e-6)
    np.testing.assert_allclose(half[1, 0], means[1, 0], atol=1e-6)
    assert not half[1, 1].any() and not half[2].any()    # empty halves are zero, not NaN


# ---------------------------------------------------------------------------------------------
# Cutoff schedule

def test_cutoff_cap_opens_by_a_twentieth_per_iteration_up_to_the_maximum():
    assert refs.cutoff_cap(1) == pytest.approx(0.05)
    assert refs.cutoff_cap(2) == pytest.approx(0.1)
    assert refs.cutoff_cap(5) == pytest.approx(0.25)
    assert refs.cutoff_cap(9) == pytest.approx(refs.MAX_CUTOFF)     # 0.05 + 8 * 0.05 = 0.45
    assert refs.cutoff_cap(100) == refs.MAX_CUTOFF
    caps = [refs.cutoff_cap(i) for i in range(1, 40)]
    assert all(a <= b for a, b in zip(caps, caps[1:]))
    assert refs.cutoff_cap(3, start=0.1, step=0.05) == pytest.approx(0.2)
    assert refs.MIN_CUTOFF <= refs.cutoff_cap(1) and refs.MAX_CUTOFF < 0.5


# ---------------------------------------------------------------------------------------------
# Equal-size assignment

def candidates(scores, width=None):
    """Every particle's candidates best first, as ``search.best_candidates`` keeps them."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :width]
    return order, np.take_along_axis(scores, order, axis=1)


def assign(scores, width=None):
    """Classes of the equal-size assignment from the best ``width`` candidates (all by default)."""
    reference, score = candidates(scores, width)
    slot = refs.balanced_assignment(reference, score, scores.shape[1])
    return reference[np.arange(len(scores)), slot]


def stable_assignments(scores):
    """Brute force: every full assignment with classes of at most ceil(N / K) that no (particle,
    class) pair would rather break: a particle preferring class k either finds k full of members
    that score at least as well there, or it is not preferred."""
    count, n_classes = scores.shape
    capacity = -(-count // n_classes)
    found = []
    for choice in itertools.product(range(n_classes), repeat=count):
        choice = np.array(choice)
        sizes = np.bincount(choice, minlength=n_classes)
        if sizes.max() > capacity:
            continue
        blocking = False
        for p, k in itertools.product(range(count), range(n_classes)):
            if k == choice[p] or scores[p, k] <= scores[p, choice[p]]:
                continue
            members = np.flatnonzero(choice == k)
            if sizes[k] < capacity or scores[members, k].min() < scores[p, k]:
                blocking = True
                break
        if not blocking:
            found.append(choice)
    return found


@pytest.mark.parametrize("count,n_classes,seed", [(6, 3, 0), (6, 3, 1), (7, 3, 2), (6, 2, 3), (5, 2, 4),
                                                  (8, 2, 5)])
def test_balanced_assignment_is_the_unique_stable_assignment(count, n_classes, seed):
    scores = np.random.default_rng(seed).uniform(-1, 1, (count, n_classes))
    stable = stable_assignments(scores)
    assert len(stable) == 1           # distinct scores ranked globally: exactly one stable assignment
    np.testing.assert_array_equal(assign(scores), stable[0])


@pytest.mark.parametrize("count,n_classes", [(100, 4), (101, 4), (7, 7), (50, 1), (3, 5)])
def test_balanced_assignment_sizes(count, n_classes):
    scores = np.random.default_rng(count).standard_normal((count, n_classes))
    # every particle prefers class 0: the unconstrained choice would put all in one class
    scores[:, 0] += 10.0
    out = assign(scores)
    sizes = np.bincount(out, minlength=n_classes)
    assert (out >= 0).all() and sizes.sum() == count
    assert sizes.max() <= -(-count // n_classes)
    if count % n_classes == 0:
        assert (sizes == count // n_classes).all()
    # the members of the over-subscribed class are the ones that fit it best
    members = out == 0
    if n_classes > 1:
        assert scores[members, 0].min() >= scores[~members, 0].max()


def test_balanced_assignment_keeps_each_best_class_when_already_balanced():
    rng = np.random.default_rng(6)
    best = rng.permutation(np.repeat(np.arange(4), 10))
    scores = rng.uniform(0, 0.5, (40, 4))
    scores[np.arange(40), best] += 1.0
    np.testing.assert_array_equal(assign(scores), best)


def greedy_oracle(scores, width):
    """Plain Python: (particle, candidate) pairs by decreasing score (ties: lower particle, then lower
    candidate), a particle joins a class with room; those left join their best candidate."""
    count, n_classes = scores.shape
    reference, score = candidates(scores, width)
    pairs = sorted((-score[p, c], p, c) for p in range(count) for c in range(reference.shape[1]))
    cap, filled, out = -(-count // n_classes), np.zeros(n_classes, int), np.full(count, -1)
    for _, p, c in pairs:
        if out[p] < 0 and filled[reference[p, c]] < cap:
            out[p] = reference[p, c]
            filled[out[p]] += 1
    left = out < 0
    out[left] = reference[left, 0]
    return out, left


def test_balanced_assignment_from_few_candidates():
    """Noisy preferences, K = 50, C = 8: the kernel agrees with the oracle; classes stay at ceil(N / K)
    except for the particles whose 8 candidates' classes all filled up (10 of 1000 here), which join
    their best candidate's class."""
    rng = np.random.default_rng(7)
    best = rng.permutation(np.repeat(np.arange(50), 20))
    scores = rng.uniform(0, 0.5, (1000, 50))
    scores[np.arange(1000), best] += 0.3
    expected, left = greedy_oracle(scores, 8)
    found = assign(scores, 8)
    np.testing.assert_array_equal(found, expected)
    assert 0 < left.sum() < 50    # the case is exercised
    sizes = np.bincount(found[~left], minlength=50)
    assert (sizes <= 20).all() and sizes.sum() == 1000 - left.sum()
    np.testing.assert_array_equal(assign(scores), greedy_oracle(scores, None)[0])   # all K: none left


def test_balanced_assignment_overflow_joins_the_best_candidate():
    scores = np.array([[0.9, 0.8, 0.1], [0.7, 0.6, 0.2], [0.5, 0.4, 0.3]])  # all prefer classes 0, 1
    reference, score = candidates(scores, 2)
    slot = refs.balanced_assignment(reference, score, 3)      # capacity 1 per class
    np.testing.assert_array_equal(reference[np.arange(3), slot], [0, 1, 0])   # the third overflows into 0


def test_balanced_assignment_ties_keep_the_lower_particle_and_class():
    np.testing.assert_array_equal(assign(np.zeros((4, 2))), [0, 0, 1, 1])
    np.testing.assert_array_equal(assign(np.ones((5, 2))), [0, 0, 0, 1, 1])


# ---------------------------------------------------------------------------------------------
# Re-seeding

def test_reseed_starved_splits_the_largest_class_by_its_worst_fits():
    classes = np.array([0] * 10 + [1])
    scores = np.arange(11, dtype=float)[::-1].copy()      # particle 9 fits worst, then 8, ...
    before = classes.copy()
    out, events = refs.reseed_starved(classes, scores, 3, min_members=2)
    np.testing.assert_array_equal(classes, before)        # the input is not modified
    # class 2 (1 member) takes the 5 worst of class 1 (particles 5..9); then class 3 (empty) takes the
    # 3 worst of the now largest class 2 (6 members: 10 kept its place, scores 0 < 1 < 2 ...)
    expected = np.array([0] * 5 + [1] * 5 + [1])
    members = np.flatnonzero(expected == 1)
    worst = members[np.argsort(scores[members])[:3]]
    expected[worst] = 2
    np.testing.assert_array_equal(out, expected)
    assert events == [{"class": 2, "from_class": 1, "members": 5},
                      {"class": 3, "from_class": 2, "members": 3}]
    assert np.bincount(out, minlength=3).min() >= 2


def test_reseed_starved_leaves_healthy_classes_and_too_small_donors_alone():
    classes = np.array([0, 0, 0, 1, 1, 1, 2, 2, -1])
    scores = np.linspace(0, 1, 9)
    out, events = refs.reseed_starved(classes, scores, 3, min_members=2)
    np.testing.assert_array_equal(out, classes)
    assert events == []
    # class 2 is starved (0 members) but the largest class has 3 < 2 * 2 members: nothing to split
    out, events = refs.reseed_starved(np.array([0, 0, 0, 1, 1, 1, -1]), scores[:7], 3, min_members=2)
    np.testing.assert_array_equal(out, [0, 0, 0, 1, 1, 1, -1])
    assert events == []


def test_reseed_starved_moves_half_and_keeps_unassigned_particles_out():
    rng = np.random.default_rng(7)
    classes = np.array([0] * 30 + [1] * 3 + [-1] * 4)
    scores = rng.standard_normal(len(classes))
    out, events = refs.reseed_starved(classes, scores, 2, min_members=5)
    assert events == [{"class": 2, "from_class": 1, "members": 15}]
    assert (out[-4:] == -1).all()
    moved = np.flatnonzero(out != classes)
    assert len(moved) == 15 and (out[moved] == 1).all()
    kept = np.flatnonzero(out == 0)
    assert scores[moved].max() <= scores[kept].min()


# ---------------------------------------------------------------------------------------------
# build(): averages -> filtered, masked (and centered) references

def tanh_lowpass(image, cutoff, falloff=0.1):
    box = image.shape[-1]
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(box), np.fft.fftfreq(box), indexing="ij"))
    w = 2 * falloff * cutoff
    h = 0.5 * (np.tanh(np.pi * (f + cutoff) / w) - np.tanh(np.pi * (f - cutoff) / w))
    return np.fft.ifft2(np.fft.fft2(image) * h).real


def fixed_point(means, counts):
    return np.rint(means * counts[:, :, None, None] * im.FIXED_POINT).astype(np.int64)


def blob(box, x0, y0, sigma=2.5):
    y, x = np.indices((box, box)) - box // 2
    return np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma ** 2))


def test_build_filters_masks_and_reports_the_cutoffs():
    box, radius = 32, 12
    rng = np.random.default_rng(8)
    image = rng.standard_normal((box, box))
    means = np.zeros((4, 2, box, box))
    means[0] = image                            # identical halves: FRC 1 -> the cap
    means[1, 0], means[1, 1] = image, -image    # anti-correlated halves: FRC -1 -> the floor
    means[2, 0] = image                         # one half empty -> the floor
    counts = np.array([[5, 5], [3, 3], [4, 0], [0, 0]])  # class 4 empty
    out, cutoffs, averages = refs.build(fixed_point(means, counts), counts, radius, center=False,
                                        max_cutoff=0.3)
    assert out.shape == averages.shape == (4, box, box) and out.dtype == np.float32
    np.testing.assert_allclose(cutoffs, [0.3, refs.MIN_CUTOFF, refs.MIN_CUTOFF, refs.MIN_CUTOFF])
    # averages: all members of both halves
    np.testing.assert_allclose(averages[0], image, atol=1e-6)
    np.testing.assert_allclose(averages[1], 0.0, atol=1e-6)
    np.testing.assert_allclose(averages[2], image, atol=1e-6)
    assert not averages[3].any() and not out[3].any()
    # the reference: tanh low-pass at the cutoff, then zero mean inside the mask and zero outside
    mask = im.circular_mask(box, radius)
    for k in (0, 2):
        expected = tanh_lowpass(averages[k].astype(np.float64), cutoffs[k])
        expected = np.where(mask, expected - expected[mask].mean(), 0.0)
        np.testing.assert_allclose(out[k], expected, atol=1e-5)
    assert not out[:, ~mask].any()
    np.testing.assert_allclose(out[:, mask].mean(axis=1), 0.0, atol=1e-6)


def test_build_centers_on_the_center_of_mass_only_when_asked():
    box, radius = 48, 18
    means = np.stack([blob(box, 4.0, -3.0)] * 2)[None]
    counts = np.array([[6, 6]])
    sums = fixed_point(means, counts)
    plain, _, _ = refs.build(sums, counts, radius, center=False)
    centered, _, averages = refs.build(sums, counts, radius, center=True)
    assert im.center_of_mass(plain[0], radius) == pytest.approx((4.0, -3.0), abs=0.3)
    assert im.center_of_mass(centered[0], radius) == pytest.approx((0.0, 0.0), abs=0.2)
    # the averages themselves are not moved
    np.testing.assert_allclose(averages[0], means[0, 0], atol=1e-6)
