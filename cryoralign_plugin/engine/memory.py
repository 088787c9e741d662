"""Peak memory of this process while a run goes on, for the log (Linux; elsewhere ru_maxrss).

Anonymous memory is what the run itself holds: the pages of memory-mapped stacks are page cache the
kernel can drop, so they are not counted (``ru_maxrss`` would include them).
"""
import resource
import threading


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
