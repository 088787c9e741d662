"""The engine's command line in one process or on MPI ranks, and the check that both made the same run."""
import os
import subprocess
import sys

import numpy as np

from cryoralign_plugin.engine import outputs
from cryoralign_plugin.engine.mrc import read_stack

ENGINE = [sys.executable, "-m", "cryoralign_plugin.engine.cli"]
MPIRUN = os.path.join(os.path.dirname(sys.executable), "mpirun")   # the mpich wheel's


def engine(*args, ranks=1, timeout=300):
    """The finished ``cryoralign-engine args`` (in one process, or under ``mpirun -n ranks``)."""
    cmd = ([MPIRUN, "-n", str(ranks)] if ranks > 1 else []) + ENGINE + [str(a) for a in args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def same_on_one_and_two_ranks(out, *args, timeout=300):
    """Run ``args`` with ``--out out/1`` in one process and ``--out out/2`` on 2 MPI ranks, assert both
    succeed and write the same particles and class averages; the two finished processes."""
    done = []
    for ranks in (1, 2):
        run = engine(*args, "--out", out / str(ranks), ranks=ranks, timeout=timeout)
        assert run.returncode == 0, run.stderr
        done.append(run)
    assert "2 MPI rank(s)" in done[1].stdout
    one, two = out / "1", out / "2"
    assert (one / outputs.PARTICLES_STAR).read_text() == (two / outputs.PARTICLES_STAR).read_text()
    np.testing.assert_array_equal(read_stack(str(one / outputs.CLASSES_MRCS)),
                                  read_stack(str(two / outputs.CLASSES_MRCS)))
    return done
