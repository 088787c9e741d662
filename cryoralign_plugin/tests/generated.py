"""Test data sets generated on this machine (never downloaded), each made once and published whole."""
import os
import shutil
import tempfile


def generateOnce(folder, make):
    """Run ``make(tmp)`` in a fresh folder beside ``folder`` and rename it to ``folder``, unless a
    complete data set (its ``truth.star``) is there already.

    The rename is atomic, so a concurrent test run sees either nothing or the whole data set; if
    another run got there first, this one's copy is removed.
    """
    if os.path.exists(os.path.join(folder, "truth.star")):
        return
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(folder) + ".", dir=parent)
    make(tmp)
    try:
        os.rename(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
