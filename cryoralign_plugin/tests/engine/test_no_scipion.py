"""The engine imports and runs without Scipion (see this folder's conftest.py)."""
import importlib
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))


@pytest.mark.parametrize("name", ["pyworkflow", "pwem", "pwem.objects", "pyworkflow.protocol"])
def test_scipion_cannot_be_imported_in_engine_tests(name):
    assert name.split(".")[0] not in sys.modules
    with pytest.raises(ImportError, match="blocked"):
        importlib.import_module(name)


def test_the_engine_entry_points_import_while_scipion_is_blocked():
    import cryoralign_plugin.engine.align
    import cryoralign_plugin.engine.cli
    assert callable(cryoralign_plugin.engine.align.align_multi_reference)
    assert callable(cryoralign_plugin.engine.cli.main)
    assert not any(m == "pwem" or m.startswith(("pwem.", "pyworkflow")) for m in sys.modules)


# In a fresh interpreter: the root conftest leaves Scipion unimported, and with the blocker of this
# folder's conftest installed every engine module imports (a module imported by an earlier test
# would otherwise hide a module-level Scipion import).
FRESH = r"""
import importlib, pkgutil, runpy, sys
runpy.run_path(sys.argv[1])                                   # the repository's root conftest
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("pyworkflow", "pwem"))
assert not leaked, "the root conftest imported %s" % leaked
sys.meta_path.insert(0, runpy.run_path(sys.argv[2])["ScipionBlocker"]())
try:
    import pyworkflow
except ImportError:
    pass
else:
    raise AssertionError("the blocker let pyworkflow through")
import cryoralign_plugin.engine as engine
names = [m.name for m in pkgutil.walk_packages(engine.__path__, engine.__name__ + ".")]
for name in names:
    try:
        importlib.import_module(name)
    except ImportError as exc:   # the CUDA modules may need a CUDA toolkit; never Scipion
        if "blocked" in str(exc) or not name.startswith(engine.__name__ + ".backends.cuda"):
            raise
import cryoralign_plugin.engine.align, cryoralign_plugin.engine.cli
print(len(names))
"""


def test_every_engine_module_imports_in_a_fresh_interpreter_without_scipion():
    done = subprocess.run([sys.executable, "-c", FRESH, os.path.join(CHECKOUT, "conftest.py"),
                           os.path.join(HERE, "conftest.py")],
                          capture_output=True, text=True, timeout=120, cwd=CHECKOUT)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) >= 10   # align, cli, geometry, images, loop, references, ...
