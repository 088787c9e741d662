"""engine/synthetic/slicem.py: distinct real class averages, those with density at the edge left out."""
import numpy as np

from cryoralign_plugin.engine import synthetic as syn
from cryoralign_plugin.engine.images import circular_mask
from cryoralign_plugin.engine.mrc import read_stack
from cryoralign_plugin.engine.synthetic.slicem import _centered_averages

from synthetic_checks import BOX


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
    assert list(_centered_averages(np.stack([central, neighbour, central]))) == [0, 2]
    kept = _centered_averages(read_stack(syn.SLICEM_PATH))
    assert 75 < len(kept) < 95 and not {30, 51, 70} & set(kept)   # three with a neighbour at the edge
