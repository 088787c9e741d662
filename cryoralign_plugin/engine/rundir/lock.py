"""One run at a time: an exclusive ``flock`` on the folder's ``run.lock``, and who holds it."""
import errno
import fcntl
import json
import os
import platform

from .. import outputs
from ..errors import InputError
from .identity import _now


class RunLock:
    """An exclusive ``flock`` on ``run.lock`` in an output folder, released by :meth:`release` or by
    the end of the process."""

    def __init__(self, path, fd, created):
        self.path, self.fd, self.created = path, fd, created

    @classmethod
    def take(cls, folder, create):
        """Lock ``folder``'s lock file (made if ``create``); InputError if another process holds it."""
        path = os.path.join(folder, outputs.LOCK_FILE)
        for _ in range(10):
            created = False
            try:
                if create:
                    try:
                        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                        created = True
                    except FileExistsError:
                        fd = os.open(path, os.O_RDWR)
                else:
                    fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                if not create:
                    return None
                continue
            except OSError as e:
                raise InputError("cannot write to output directory %s: %s; choose a directory you can write to"
                                 % (folder, e.strerror or e)) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise InputError("%s is in use by another run (%s): wait for it to finish or use another "
                                     "--out" % (folder, _holder(path))) from None
                return _Unlocked(path, e)   # a file system without locks: run unlocked (and say so)
            try:   # the file we locked must still be the one at the path (a refused run may remove its own)
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return cls(path, fd, created)
            os.close(fd)
        raise InputError("cannot lock %s: its lock file keeps changing; is another run starting there? "
                         "Wait for it or use another --out" % path)

    def record_owner(self):
        """Write this process's pid, host and start time into the lock file (for a refused run to show)."""
        text = json.dumps({"pid": os.getpid(), "host": platform.node(), "since": _now()}) + "\n"
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text.encode(), 0)

    def release(self, remove=False):
        """Unlock; with ``remove``, first delete the lock file if this run created it (a refused run)."""
        if self.fd is None:
            return
        if remove and self.created:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


class _Unlocked(RunLock):
    """Where ``flock`` is not supported: the run goes on, unprotected against a concurrent one."""

    def __init__(self, path, error):
        super().__init__(path, None, False)
        self.error = error

    def record_owner(self):
        pass


def holder(folder):
    """``"pid P on HOST since T"`` while a run holds ``folder``'s lock, else None; writes nothing."""
    path = os.path.join(os.fspath(folder), outputs.LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        return _holder(path) if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) else None
    finally:
        os.close(fd)   # closing releases a lock taken here
    return None


def _holder(path):
    try:
        with open(path) as f:
            owner = json.loads(f.read() or "{}")
        return "pid %s on %s since %s" % (owner["pid"], owner["host"], owner["since"])
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown: it is still starting"
