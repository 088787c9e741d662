"""engine/synthetic/continuous.py: continuous directions cover their range, in smoothly varying frames."""
import numpy as np
import pytest

from cryoralign_plugin.engine import synthetic as syn

from synthetic_checks import masked_corr


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
    assert masked_corr(near[:1], near[1:], 48)[0] > 0.99
