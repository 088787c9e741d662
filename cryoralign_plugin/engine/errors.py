"""The exception types a user can act on: each message names the problem and the fix."""
import errno
import os


class InputError(ValueError):
    """Raised for input the engine cannot use; the CLI prints it without a traceback (exit status 2)."""


# What to do when the output folder cannot be written, by errno; "--continue" resumes from the last
# complete iteration because every file is written atomically (complete or absent, never half).
_RESUME = " (--continue then resumes from the last complete iteration)"
_WRITE_FIXES = {
    errno.ENOSPC: "free space or choose another --out" + _RESUME,
    errno.EDQUOT: "free space (or raise the quota) or choose another --out" + _RESUME,
    errno.EACCES: "make the output folder writable or choose another --out" + _RESUME,
    errno.EPERM: "make the output folder writable or choose another --out" + _RESUME,
    errno.EROFS: "choose another --out on a writable file system",
    errno.EFBIG: "raise the file-size limit (ulimit -f) or choose another --out" + _RESUME,
}


class OutputError(InputError):
    """A file of the run could not be written (disk full, permission denied, read-only file system).

    Like bad input it is the user's to fix, so the CLI ends with the same one line and exit status 2.
    """

    @classmethod
    def writing(cls, path, exc):
        """The error for OSError ``exc`` raised while writing ``path``: the reason, the path, the fix."""
        reason = (exc.strerror or os.strerror(exc.errno) or str(exc)).rstrip(".")
        reason = reason[:1].lower() + reason[1:]
        fix = _WRITE_FIXES.get(exc.errno)
        if fix is None:
            fix = "check the output folder (%s) or choose another --out" % errno.errorcode.get(exc.errno, exc.errno)
        return cls("%s writing %s: %s" % (reason, path, fix))
