"""Standalone 2D alignment engine (numpy, scipy, numba, mrcfile, emtable, threadpoolctl, mpi4py; never
pyworkflow/pwem)."""

# Every third-party module the engine imports, with the pip package(s) that provide it.  The plugin's
# installation check reads this; tests/test_dependencies.py checks it against the engine's imports
# and requirements.txt.
DEPENDENCIES = {
    "numpy": "numpy",
    "scipy": "scipy",
    "numba": "numba",
    "mrcfile": "mrcfile",
    "emtable": "emtable",
    "threadpoolctl": "threadpoolctl",
    "mpi4py": "mpi4py mpich",
}
