"""A private, headless Scipion environment for the tests and the demo (no Scipion install needed).

pyworkflow reads its configuration from ``os.environ`` when it is first imported, so :func:`setup`
must run before anything imports pyworkflow or pwem.  Values already in the environment win
(``setdefault``), so a real Scipion install can still be used by exporting them.

* ``SCIPION_HOME`` lives in the system temp dir, one per user and checkout, with ``config/hosts.conf``
  (MPI through the ``mpirun`` of the ``mpich`` wheel installed in the venv).
* ``SCIPION_PYTHON`` is this interpreter, and its directory goes first on ``PATH``: protocols run in a
  subprocess and under ``mpirun``, which must find this venv's ``python``, ``mpirun`` and
  ``cryoralign-engine`` even when the venv is not activated.
* ``SCIPION_TEST_NOSYNC=1``: test data are generated locally, never downloaded.
"""
import hashlib
import os
import sys
import tempfile

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HOSTS_CONF = """\
; Scipion execution hosts, written by cryoralign_plugin/scipion_env.py.
; MPI comes from the mpich wheel in the venv (first on PATH); %_(...) is Scipion's substitution syntax.
[localhost]
ADDRESS = localhost
PARALLEL_COMMAND = mpirun -np %_(JOB_NODES)d %_(COMMAND)s
"""


def _uid():
    try:
        return str(os.getuid())
    except AttributeError:   # not POSIX
        return os.environ.get("USERNAME", "user")


def default_home():
    return os.path.join(tempfile.gettempdir(), "cryoralign-scipion-%s-%s" % (
        _uid(), hashlib.sha1(CHECKOUT.encode()).hexdigest()[:8]))


def setup(user_data=None):
    """Set the Scipion variables (existing ones win) and write ``hosts.conf`` if missing.

    ``user_data`` forces ``SCIPION_USER_DATA`` (where projects live), e.g. the demo's output folder.
    """
    if user_data:
        os.environ["SCIPION_USER_DATA"] = os.path.abspath(user_data)
    home = os.environ.setdefault("SCIPION_HOME", default_home())
    os.environ.setdefault("SCIPION_USER_DATA", os.path.join(home, "userdata"))
    os.environ.setdefault("SCIPION_TESTS", os.path.join(home, "tests"))
    os.environ.setdefault("SCIPION_DOMAIN", "pwem")
    os.environ.setdefault("SCIPION_PYTHON", sys.executable)
    os.environ.setdefault("SCIPION_TEST_NOSYNC", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")

    config = os.path.join(home, "config")
    os.makedirs(config, exist_ok=True)
    for var in ("SCIPION_USER_DATA", "SCIPION_TESTS"):
        os.makedirs(os.environ[var], exist_ok=True)
    hosts = os.path.join(config, "hosts.conf")
    if not os.path.exists(hosts):
        tmp = "%s.%d.tmp" % (hosts, os.getpid())   # atomic: parallel runs may race here
        with open(tmp, "w") as f:
            f.write(HOSTS_CONF)
        os.replace(tmp, hosts)

    bindir = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != bindir:
        os.environ["PATH"] = bindir + (os.pathsep + path if path else "")
