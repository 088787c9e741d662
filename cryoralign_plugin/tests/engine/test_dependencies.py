"""The engine's dependency list (``engine.DEPENDENCIES``, read by the plugin's installation check)
names every third-party module the engine imports, and each is a requirement of the package."""
import ast
import os
import re
import sys

from cryoralign_plugin import engine
from cryoralign_plugin.engine import DEPENDENCIES

ENGINE = os.path.dirname(os.path.abspath(engine.__file__))
REQUIREMENTS = os.path.join(os.path.dirname(os.path.dirname(ENGINE)), "requirements.txt")


def third_party_imports(source):
    """Top-level names of the absolute, non-standard-library modules ``source`` imports (anywhere)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "cryoralign_plugin"}


def engine_imports():
    found = {}
    for folder, _, files in os.walk(ENGINE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    for module in third_party_imports(f.read()):
                        found.setdefault(module, []).append(os.path.relpath(path, ENGINE))
    return found


def test_the_parser_sees_third_party_imports_only():
    source = ("import os, numpy as np\nimport scipy.fft\nfrom numba import njit\nfrom . import star\n"
              "from .backends import cpu\ndef f():\n    from mpi4py import MPI\n    import json\n")
    assert third_party_imports(source) == {"numpy", "scipy", "numba", "mpi4py"}


def test_every_engine_import_is_a_listed_dependency():
    found = engine_imports()
    assert {"numpy", "numba", "scipy", "threadpoolctl"} <= set(found)  # the walk found the engine
    missing = {m: where for m, where in found.items() if m not in DEPENDENCIES}
    assert not missing, "add to cryoralign_plugin/engine/__init__.py DEPENDENCIES: %s" % missing
    assert set(DEPENDENCIES) <= set(found), "not imported by the engine: %s" % (set(DEPENDENCIES) - set(found))


def test_every_listed_dependency_is_required():
    with open(REQUIREMENTS, encoding="utf-8") as f:
        required = {re.split(r"[<>=!~\[;\s]", line.split("#")[0].strip(), maxsplit=1)[0].lower()
                    for line in f if line.split("#")[0].strip()}
    for module, pips in DEPENDENCIES.items():
        for pip in pips.split():
            assert pip.lower() in required, "%s (for %s) is not in requirements.txt" % (pip, module)
