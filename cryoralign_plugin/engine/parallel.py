"""MPI distribution and reductions (mpi4py), with a serial stand-in when not under ``mpirun``.

Every rank keeps the full per-particle state (a few numbers per particle) and the same
references, so every decision (assignment, re-seeding, stopping) is taken identically everywhere
and only rank 0 writes files.  Sums are reduced in integer fixed point, so the result does not
depend on the number of ranks.

CPU threads: a rank's default is its share of the node's cores (:func:`cpu_threads`), and every numba
parallel region a run launches stays within its ``threads`` (:func:`numba_threads`), so ``mpirun -np
R`` on one node does not run R x cores threads.
"""
import os
import sys
import time
from contextlib import contextmanager

import numba
import numpy as np

from .memory import local_ranks

ABORT_GRACE_SECONDS = 0.5   # between a failing rank's last message and MPI Abort (Mpi.abort)

_LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_RANK")


class Serial:
    """One process: the identity for every collective."""
    rank, size = 0, 1

    def local_slice(self, count):
        return slice(0, count)

    def allreduce(self, array):
        return array

    def allgather(self, local):
        return local

    def abort(self, code):
        sys.exit(code)


class Mpi(Serial):
    """``MPI.COMM_WORLD``: contiguous blocks of particles per rank, in rank order."""

    def __init__(self, comm):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    def local_slice(self, count):
        return slice(count * self.rank // self.size, count * (self.rank + 1) // self.size)

    def allreduce(self, array):
        from mpi4py import MPI
        out = np.empty_like(array)
        self.comm.Allreduce(np.ascontiguousarray(array), out, op=MPI.SUM)
        return out

    def allgather(self, local):
        parts = self.comm.allgather(np.ascontiguousarray(local))
        return np.concatenate(parts, axis=0)

    def abort(self, code):
        """Stop every rank.  The launcher forwards each rank's output through a pipe and tears the
        job down on Abort: without a moment's grace the message a rank has just printed can be lost
        (seen under load: an empty stderr from ``mpirun``)."""
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_SECONDS)
        self.comm.Abort(code)


def world():
    """The communicator of this process: MPI only when started by an MPI launcher."""
    if not any(v in os.environ for v in _LAUNCHER_VARS):
        return Serial()
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    return Mpi(comm) if comm.Get_size() > 1 else Serial()


def cpu_threads(threads=None):
    """``threads``, or by default this process's cores (its CPU affinity) shared by the MPI ranks on
    this node (the launcher's local size): at least 1.  A launcher that binds each rank to cores of
    its own leaves the ranks fewer; give ``--threads`` there."""
    if threads:
        return max(1, int(threads))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // local_ranks())


@contextmanager
def numba_threads(threads):
    """numba's parallel regions launched from this thread use at most ``threads`` threads inside
    (numba's setting is per calling thread; never more than its pool, ``NUMBA_NUM_THREADS``); the
    previous setting is restored after."""
    before = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(before)
