"""engine/synthetic/parameters.py: true parameters over their ranges, and a rare view's share."""
import numpy as np
import pytest

from cryoralign_plugin.engine import synthetic as syn
from cryoralign_plugin.engine.geometry import MIRROR, PSI, SX, SY


def test_random_parameters_ranges():
    p = syn.random_parameters(2000, np.random.default_rng(0), shift_range=2.5)
    assert p[:, PSI].min() >= 0 and p[:, PSI].max() < 360 and np.ptp(p[:, PSI]) > 350
    assert np.abs(p[:, [SX, SY]]).max() <= 2.5 and np.abs(p[:, [SX, SY]]).max() > 2.4
    assert abs(p[:, MIRROR].mean() - 0.5) < 0.05 and set(np.unique(p[:, MIRROR])) == {0.0, 1.0}
    assert not syn.random_parameters(50, np.random.default_rng(0), mirror=False)[:, MIRROR].any()


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
