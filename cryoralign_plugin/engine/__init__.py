"""Standalone 2D alignment engine (numpy, numba, mrcfile, emtable, mpi4py; never pyworkflow/pwem)."""
