"""engine.geometry: the SPARX polar grid, the EMAN parameter algebra, shift grids, what fits in a box."""
import math

import numpy as np
import pytest

from cryoralign_plugin.engine import geometry as g
from cryoralign_plugin.engine import interpolation
from cryoralign_plugin.engine.errors import InputError


# ---------------------------------------------------------------------------------------------
# Polar grid against SPARX Numrinit / ringwe

def numrinit(first_ring, last_ring, skip=1):
    """SPARX ``Numrinit(ir, ou, rs, 'F')`` as flat ``(r, 1-based offset, n)`` triplets, written anew."""
    numr, lcirc = [], 1
    for k in range(first_ring, last_ring + 1, skip):
        jp = int(2 * math.pi * k + 0.5)
        ip = 1
        while ip <= jp:          # smallest power of two strictly greater than jp
            ip *= 2
        numr += [k, lcirc, ip]
        lcirc += ip
    return numr


def ringwe(numr):
    """SPARX ``ringwe(numr, 'F')``: ``r * (2 pi / n) * (maxrin / n)``."""
    maxrin = numr[-1]
    return [numr[i] * (2 * math.pi / numr[i + 2]) * (maxrin / numr[i + 2]) for i in range(0, len(numr), 3)]


@pytest.mark.parametrize("radius,first,step", [(1, 1, 1), (7, 1, 1), (29, 1, 1), (36, 1, 1), (52, 1, 1),
                                               (36, 3, 1), (40, 2, 3), (64, 5, 7)])
def test_polar_grid_is_sparx_numrinit_and_ringwe(radius, first, step):
    grid = g.polar_grid(radius, first, step)
    numr = numrinit(first, radius, step)
    assert grid.radii.tolist() == numr[0::3]
    assert grid.offsets.tolist() == [o - 1 for o in numr[1::3]]     # 0-based
    assert grid.lengths.tolist() == numr[2::3]
    assert grid.total == numr[-2] + numr[-1] - 1                     # SPARX lcirc_total
    assert grid.maxrin == numr[-1] and grid.outer_radius == numr[-3]
    np.testing.assert_allclose(grid.weights, ringwe(numr), rtol=1e-12)
    np.testing.assert_allclose(grid.area, 2 * np.pi * grid.radii / grid.lengths, rtol=1e-12)


def test_polar_grid_known_examples():
    # algorithm notes, section 1: ou=36 -> 8,16,32x3,64x5,128x10,256x16, total 5816
    grid = g.polar_grid(36)
    assert grid.lengths.tolist() == [8, 16] + [32] * 3 + [64] * 5 + [128] * 10 + [256] * 16
    assert grid.total == 5816 and grid.maxrin == 256
    assert g.polar_grid(29).maxrin == 256
    lengths = g.polar_grid(52).lengths
    assert (lengths[40:] == 512).all() and (lengths[:40] < 512).all()   # rings 41..52
    # every ring has at least 2 pi r samples, and fewer than twice that
    for r in range(1, 200):
        n = g.ring_length(r)
        assert n & (n - 1) == 0 and 2 * math.pi * r <= n < 4 * math.pi * r + 2


def test_equal_length_rings_get_weights_proportional_to_radius():
    grid = g.polar_grid(36)
    last = grid.lengths == grid.maxrin
    np.testing.assert_allclose(grid.weights[last], 2 * np.pi * grid.radii[last] / grid.maxrin)


@pytest.mark.parametrize("radius,first,step", [(10, 0, 1), (10, 1, 0), (10, 11, 1), (5, -1, 2)])
def test_polar_grid_refuses_bad_rings(radius, first, step):
    with pytest.raises(InputError):
        g.polar_grid(radius, first, step)


# ---------------------------------------------------------------------------------------------
# Parameter algebra

def random_params(n, seed, mirror=None):
    rng = np.random.default_rng(seed)
    p = np.empty((n, 4))
    p[:, g.PSI] = rng.uniform(0, 360, n)
    p[:, [g.SX, g.SY]] = rng.uniform(-5, 5, (n, 2))
    p[:, g.MIRROR] = rng.integers(0, 2, n) if mirror is None else mirror
    return p


def assert_same_params(a, b, atol=1e-9):
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    dpsi = (a[:, g.PSI] - b[:, g.PSI] + 180.0) % 360.0 - 180.0
    np.testing.assert_allclose(dpsi, 0.0, atol=atol)
    np.testing.assert_allclose(a[:, [g.SX, g.SY]], b[:, [g.SX, g.SY]], atol=atol)
    np.testing.assert_array_equal(a[:, g.MIRROR], b[:, g.MIRROR])


def apply_by_hand(p, v):
    """The documented convention: ``v' = M (R(psi) v + t)``, ``R = [[cos, sin], [-sin, cos]]``."""
    a = math.radians(p[g.PSI])
    x = math.cos(a) * v[0] + math.sin(a) * v[1] + p[g.SX]
    y = -math.sin(a) * v[0] + math.cos(a) * v[1] + p[g.SY]
    return np.array([-x if p[g.MIRROR] else x, y])


def test_matrix_applies_rotate_then_translate_then_mirror():
    points = np.random.default_rng(1).uniform(-20, 20, (5, 2))
    for p in random_params(20, seed=2):
        m = g.params_to_matrix(p)[0]
        assert m.shape == (3, 3) and m[2].tolist() == [0, 0, 1]
        assert np.sign(np.linalg.det(m[:2, :2])) == (-1 if p[g.MIRROR] else 1)
        for v in points:
            np.testing.assert_allclose(m[:2, :2] @ v + m[:2, 2], apply_by_hand(p, v), atol=1e-12)


def test_rotation_matrix_known_values():
    np.testing.assert_allclose(g.rotation(90.0), [[0, 1], [-1, 0]], atol=1e-15)
    np.testing.assert_allclose(g.rotation([0.0, 180.0]), [np.eye(2), -np.eye(2)], atol=1e-15)


def test_matrix_round_trip():
    p = random_params(200, seed=3)
    back = g.matrix_to_params(g.params_to_matrix(p))
    assert ((back[:, g.PSI] >= 0) & (back[:, g.PSI] < 360)).all()
    assert_same_params(back, p)


def combine_closed_form(p1, p2):
    """SPARX ``combine_params2`` in closed form (algorithm notes, section 4)."""
    a1, a2 = p1[g.PSI], p2[g.PSI]
    t1, t2 = p1[[g.SX, g.SY]], p2[[g.SX, g.SY]]
    rot = lambda deg: g.rotation(deg)
    if not p1[g.MIRROR]:
        angle, t = a1 + a2, rot(a2) @ t1 + t2
    else:
        angle, t = a1 - a2, rot(-a2) @ t1 + np.array([-t2[0], t2[1]])
    return np.array([angle % 360.0, t[0], t[1], float(bool(p1[g.MIRROR]) != bool(p2[g.MIRROR]))])


def test_combine_is_sparx_combine_params2():
    first, second = random_params(100, seed=4), random_params(100, seed=5)
    got = g.combine(first, second)
    assert_same_params(got, [combine_closed_form(a, b) for a, b in zip(first, second)])


def test_combine_means_applying_first_then_second():
    first, second = random_params(50, seed=6), random_params(50, seed=7)
    both = g.combine(first, second)
    for p1, p2, p12 in zip(first, second, both):
        v = np.array([3.5, -1.25])
        np.testing.assert_allclose(apply_by_hand(p12, v), apply_by_hand(p2, apply_by_hand(p1, v)), atol=1e-12)
    np.testing.assert_allclose(g.params_to_matrix(both),
                               g.params_to_matrix(second) @ g.params_to_matrix(first), atol=1e-12)


def test_combine_is_associative():
    a, b, c = random_params(60, 8), random_params(60, 9), random_params(60, 10)
    assert_same_params(g.combine(g.combine(a, b), c), g.combine(a, g.combine(b, c)))


def test_identity_and_inverse():
    p = random_params(100, seed=11)
    identity = np.zeros((100, 4))
    assert_same_params(g.combine(identity, p), p)
    assert_same_params(g.combine(p, identity), p)
    inv = g.inverse(p)
    np.testing.assert_array_equal(inv[:, g.MIRROR], p[:, g.MIRROR])  # a mirror is undone by a mirror
    assert_same_params(g.combine(p, inv), identity)
    assert_same_params(g.combine(inv, p), identity)
    assert_same_params(g.inverse(inv), p)


def test_mirror_handling():
    # two mirrors cancel; a mirror reverses the sense of a later rotation
    m = np.array([[0.0, 0.0, 0.0, 1.0]])
    assert_same_params(g.combine(m, m), np.zeros((1, 4)))
    rot30 = np.array([[30.0, 0.0, 0.0, 0.0]])
    assert_same_params(g.combine(m, rot30), [[330.0, 0.0, 0.0, 1.0]])   # M then R(30) = M R(-30)
    assert_same_params(g.combine(rot30, m), [[30.0, 0.0, 0.0, 1.0]])
    # the shift of a mirrored parameter is applied before the mirror
    np.testing.assert_allclose(apply_by_hand([0, 2.0, 1.0, 1], [0, 0]), [-2.0, 1.0])
    assert_same_params(g.inverse([[0.0, 2.0, 1.0, 1.0]]), [[0.0, 2.0, -1.0, 1.0]])


def test_center_offsets_are_the_points_brought_to_the_center():
    offsets_of = g.center_offsets
    p = random_params(100, seed=12)
    off = offsets_of(p)
    assert off.shape == (100, 2)
    m = g.params_to_matrix(p)
    np.testing.assert_allclose(np.einsum("nij,nj->ni", m[:, :2, :2], off) + m[:, :2, 2], 0.0, atol=1e-12)
    np.testing.assert_allclose(offsets_of([[0.0, 2.0, -1.0, 0.0]]), [[-2.0, 1.0]])
    np.testing.assert_allclose(offsets_of([[90.0, 1.0, 0.0, 1.0]]), [[0.0, -1.0]], atol=1e-15)


# ---------------------------------------------------------------------------------------------
# Shift grid

@pytest.mark.parametrize("rng,step,axis", [
    (3, 1, [-3, -2, -1, 0, 1, 2, 3]),
    (1, 0.5, [-1, -0.5, 0, 0.5, 1]),
    (1, 0.3, [-0.9, -0.6, -0.3, 0, 0.3, 0.6, 0.9]),
    (0.3, 0.1, [-0.3, -0.2, -0.1, 0, 0.1, 0.2, 0.3]),     # 0.3 / 0.1 = 2.9999999999999996
    (2.5, 1, [-2, -1, 0, 1, 2]),
    (0, 1, [0]),
    (0.5, 1, [0]),
])
def test_shift_grid_contents_order_and_size(rng, step, axis):
    shifts = g.shift_grid(rng, step)
    expected = [(x, y) for y in axis for x in axis]          # y outer, x inner (SPARX ormq)
    assert shifts.shape == (len(axis) ** 2, 2)
    np.testing.assert_allclose(shifts, expected, atol=1e-12)
    assert (np.abs(shifts) <= rng + 1e-9).all()
    assert (shifts == 0).all(axis=1).sum() == 1              # the zero shift, exactly once


@pytest.mark.parametrize("rng,step", [(3, 0), (3, -1), (-1, 1)])
def test_shift_grid_refuses_bad_values(rng, step):
    with pytest.raises(InputError):
        g.shift_grid(rng, step)


# ---------------------------------------------------------------------------------------------
# What fits in the box

def interpolation_stays_inside(sampler, box, distance, n_angles=720):
    """True if sampling a box of ones anywhere at ``distance`` from the center gives 1 (a kernel that
    sums to one loses weight exactly when it reaches outside the box)."""
    ones = np.ones((box, box))
    center = box // 2
    phi = np.linspace(0, 2 * np.pi, n_angles, endpoint=False)
    return all(abs(sampler(ones, center + distance * math.cos(a), center + distance * math.sin(a)) - 1) < 1e-9
               for a in phi)


cubic = interpolation.cubic_sampler(interpolation.cubic_weight)


@pytest.mark.parametrize("box", [16, 17, 32, 33, 48, 64, 75])
def test_sampling_limit_is_where_interpolation_leaves_the_box(box):
    limit = g.sampling_limit(box)
    for d in np.linspace(0, limit, 7):
        assert interpolation_stays_inside(cubic, box, d)
        assert interpolation_stays_inside(interpolation.bilinear, box, d)
    assert not interpolation_stays_inside(cubic, box, limit + 0.5)   # and no further (cubic is 4x4)


@pytest.mark.parametrize("box,shift,radius", [(64, 3, 27), (64, 0, 30), (48, 3, 19), (32, 3, 11),
                                              (33, 3, 12), (32, 2.5, 11), (32, 1.5, 12), (16, 0, 6)])
def test_largest_radius(box, shift, radius):
    assert g.sampling_limit(box) == (box - 1) // 2 - 1
    assert g.largest_radius(box, shift) == radius
    assert radius + shift <= g.sampling_limit(box) < radius + 1 + shift   # the largest integer that fits
