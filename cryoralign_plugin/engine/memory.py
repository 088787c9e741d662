"""Peak memory of this process while a run goes on, for the log (Linux; elsewhere ru_maxrss), and
the memory one process may plan to use (:func:`budget_bytes`).

Anonymous memory is what the run itself holds: the pages of memory-mapped stacks are page cache the
kernel can drop, so they are not counted (``ru_maxrss`` would include them).
"""
import os
import resource
import threading

_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
_LOCAL_RANKS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE")


def physical_bytes():
    """The machine's memory, or the container's (cgroup) limit where that is lower; None if unknown."""
    found = []
    try:
        found.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        pass
    for path in _CGROUP_LIMITS:
        try:
            with open(path) as f:
                found.append(int(f.read().strip()))   # "max": no limit (ValueError)
        except (OSError, ValueError):
            pass
    found = [b for b in found if b > 0]
    return min(found) if found else None


def local_ranks():
    """How many MPI ranks share this machine (the launcher says; 1 when not under MPI)."""
    for name in _LOCAL_RANKS:
        try:
            return max(1, int(os.environ[name]))
        except (KeyError, ValueError):
            pass
    return 1


def budget_bytes():
    """The memory one rank may plan to hold: this machine's, shared by the ranks running on it.

    Sizes that cannot fit in it are refused before they are allocated (e.g. the shift grid's
    reference rings, :func:`~.search.check_search_size`); None when the machine's memory is unknown.
    """
    total = physical_bytes()
    return None if total is None else total // local_ranks()


def _anonymous_kb():
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Context manager sampling the anonymous RSS every ``interval`` seconds; ``.megabytes`` after."""

    def __init__(self, interval=0.02):
        self.interval, self.peak_kb = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self):
        while True:
            self.peak_kb = max(self.peak_kb, _anonymous_kb() or 0)
            if self._stop.wait(self.interval):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if _anonymous_kb() is None:  # no /proc: the high-water mark (includes mapped files)
            self.peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    @property
    def megabytes(self):
        return self.peak_kb / 1024.0
