"""engine/synthetic/phantoms.py: distinct phantom views and near-duplicate pairs."""
import numpy as np
import pytest

from cryoralign_plugin.engine import synthetic as syn
from cryoralign_plugin.engine.images import circular_mask

from synthetic_checks import BOX


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


def test_phantom_zoo_keeps_many_views_distinct(tmp_path):
    # Measured (seed 0, 64 px, 5 degree steps): max pairwise similarity of 60 zoo views 0.803,
    # of 60 views of one phantom 0.959: one phantom cannot give many distinct classes.
    views = syn.phantom_zoo(60, BOX, seed=0)
    assert views.shape == (60, BOX, BOX) and views.dtype == np.float32
    sim = syn.rotational_similarity(views)
    np.fill_diagonal(sim, -1.0)
    assert sim.max() < 0.85
    one = syn.rotational_similarity(syn.phantom_views(60, BOX, seed=0))
    np.fill_diagonal(one, -1.0)
    assert one.max() > 0.9
    mask = circular_mask(BOX, syn.default_radius(BOX))
    assert np.allclose(views[:, mask].std(axis=1), 1.0, atol=1e-3)
    assert np.array_equal(syn.make_references("phantom-zoo", 60, BOX, seed=0), views)
    with pytest.raises(ValueError, match="leave max_similarity out"):
        syn.make_dataset(str(tmp_path / "unused"), 10, BOX, 3, source="phantom-zoo", max_similarity=0.9)
    assert not (tmp_path / "unused").exists()
