"""engine/synthetic/measures.py: the direction spread of classes and its ideal partition."""
import numpy as np

from cryoralign_plugin.engine import synthetic as syn


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
