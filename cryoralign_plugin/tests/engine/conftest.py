"""The engine's tests run without Scipion: importing pyworkflow or pwem fails under ``tests/engine/``.

The engine (``cryoralign_plugin.engine``) must never import pyworkflow/pwem: MPI ranks and the
``cryoralign-engine`` command run it on machines without Scipion.  Scipion is installed in the test
venv for the protocol tests, so an engine test that secretly needed it would still pass there.  Here
an import hook (:class:`ScipionBlocker`, first on ``sys.meta_path``) refuses those packages:

* while the modules of this folder are imported (collection), so a module-level import is caught;
* around every test of this folder (an autouse fixture), so an import inside a function is caught.

When the whole suite runs, other test modules may already have imported pyworkflow/pwem (their
entries in ``sys.modules`` would bypass any finder); for the blocked span those entries are hidden
and afterwards put back exactly, so the rest of the suite is unaffected.  The repository's root
``conftest.py`` only sets environment variables (``scipion_env``) and imports neither package.
"""
import contextlib
import sys

import pytest

BLOCKED = ("pyworkflow", "pwem")


def is_blocked(name):
    return any(name == top or name.startswith(top + ".") for top in BLOCKED)


class ScipionBlocker:
    """A ``sys.meta_path`` finder that refuses pyworkflow, pwem and their submodules."""

    def find_spec(self, name, path=None, target=None):
        if is_blocked(name):
            raise ImportError("%s is blocked in the engine's tests: the engine must run without Scipion"
                              % name, name=name)
        return None


@contextlib.contextmanager
def scipion_blocked():
    """Block the Scipion packages (hiding any already imported) for the duration of the block."""
    hidden = {name: mod for name, mod in sys.modules.items() if is_blocked(name)}
    for name in hidden:
        del sys.modules[name]
    blocker = ScipionBlocker()
    sys.meta_path.insert(0, blocker)
    try:
        yield blocker
    finally:
        sys.meta_path.remove(blocker)
        for name in [n for n in sys.modules if is_blocked(n)]:  # cannot happen; never keep a stray one
            del sys.modules[name]
        sys.modules.update(hidden)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """Import this folder's test modules (collection) with Scipion blocked."""
    if isinstance(collector, pytest.Module):
        with scipion_blocked():
            return (yield)
    return (yield)


@pytest.fixture(autouse=True)
def no_scipion():
    """Every test of this folder runs with pyworkflow/pwem unimportable."""
    with scipion_blocked() as blocker:
        yield blocker
