"""Fixtures of the synthetic generator's tests."""
import pytest

from cryoralign_plugin.engine import synthetic as syn

from synthetic_checks import BOX


@pytest.fixture(scope="module")
def phantom():
    return syn.phantom_views(6, BOX, seed=0)
