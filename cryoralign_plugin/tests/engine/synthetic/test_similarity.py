"""engine/synthetic/similarity.py: rotational similarity, the most distinct views and views under a cap."""
import numpy as np
import pytest

from cryoralign_plugin.engine import synthetic as syn
from cryoralign_plugin.engine.images import transform


def test_similarity_sees_through_rotation_and_mirror(phantom):
    moved = transform(phantom, np.array([[33.0, 0, 0, 1], [200.0, 0, 0, 0]] * 3))
    sim = syn.rotational_similarity(np.concatenate([phantom, moved]), n_angles=360)
    assert np.diag(sim[:6, 6:]).min() > 0.99


def test_most_distinct_picks_the_outliers():
    points = np.array([0.0, 0.1, 0.2, 5.0, 10.0])
    similarity = -np.abs(points[:, None] - points[None, :])
    assert sorted(syn.most_distinct(similarity, 3)) == [0, 3, 4]
    assert list(syn.most_distinct(similarity, 1, first=2)) == [2]
    with pytest.raises(ValueError):
        syn.most_distinct(similarity, 6)


def test_pick_views_caps_similarity_and_fills_up_to_it():
    points = np.array([0.0, 0.1, 0.2, 0.5, 5.0, 10.0])
    similarity = -np.abs(points[:, None] - points[None, :])
    chosen = syn.pick_views(similarity, 3, max_similarity=-0.25)
    sub = similarity[np.ix_(chosen, chosen)] - 10 * np.eye(3)
    assert sub.max() <= -0.25 and sub.max() >= -0.3               # 0.2 and 0.5: just under the cap
    with pytest.raises(ValueError):
        syn.pick_views(similarity, 5, max_similarity=-1.0)
