"""The Scipion Plugin class (kept out of ``__init__`` so the engine never imports pwem)."""
import importlib.util
import os
import shutil
import sys

import pwem
import pyworkflow.utils as pwutils
from pyworkflow import SPA
from pyworkflow.config import VarTypes

from .constants import CRYORALIGN_ENGINE, ENGINE_SCRIPT
from .engine import DEPENDENCIES


class Plugin(pwem.Plugin):
    # Public home is the package: Domain uses __module__ for the plugin name and path.
    __module__ = "cryoralign_plugin"
    _url = "https://github.com/cryoralign/scipion-em-cryoralign"
    _processingField = SPA
    _homeVar = ""
    _pathVars = []

    @classmethod
    def _defineVariables(cls):
        cls._defineVar(CRYORALIGN_ENGINE, os.path.join(os.path.dirname(sys.executable), ENGINE_SCRIPT),
                       description="The cryoralign-engine launcher the protocols run (installed by "
                                   "pip next to Scipion's python).",
                       var_type=VarTypes.PATH)

    @classmethod
    def getProgram(cls):
        """Absolute path of the engine launcher (falls back to a PATH lookup)."""
        program = cls.getVar(CRYORALIGN_ENGINE) or ENGINE_SCRIPT
        if os.path.isabs(program):
            return program
        return shutil.which(program, path=cls.getEnviron().get("PATH")) or program

    @classmethod
    def getEnviron(cls):
        """Scipion's environment with the engine's and this python's bin dirs first on PATH.

        ``mpirun`` from the mpich wheel lives in the venv's bin dir; putting it first keeps the
        launcher and the libmpi that mpi4py loads from the same MPI.
        """
        env = pwutils.Environ(os.environ)
        dirs = [os.path.dirname(sys.executable)]
        program = cls.getVar(CRYORALIGN_ENGINE)
        if program and os.path.isabs(program):
            dirs.insert(0, os.path.dirname(program))
        env.update({"PATH": os.pathsep.join(dict.fromkeys(dirs))}, position=pwutils.Environ.BEGIN)
        return env

    @classmethod
    def validateInstallation(cls):
        """Say what is missing for the engine to run and how to install it."""
        errors = []
        program = cls.getProgram()
        if not (os.path.isfile(program) and os.access(program, os.X_OK)):
            errors.append("The cryoralign engine launcher was not found (%s=%s). Install the plugin "
                          "with `%s -m pip install scipion-em-cryoralign` (or `pip install -e .` in a "
                          "checkout), or set %s to the `%s` program."
                          % (CRYORALIGN_ENGINE, program, sys.executable, CRYORALIGN_ENGINE,
                             ENGINE_SCRIPT))
        missing = [pip for module, pip in DEPENDENCIES.items()
                   if importlib.util.find_spec(module) is None]
        if missing:
            errors.append("Python packages needed by the engine are missing: install them with "
                          "`%s -m pip install %s`." % (sys.executable, " ".join(missing)))
        return errors

    @classmethod
    def defineBinaries(cls, env):
        """Nothing to build: the engine is pure Python, installed by pip with the plugin."""
