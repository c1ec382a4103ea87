"""Batches made ahead in threads, handed back in any order by key.

`ImageBatches` prefetches its workers' part (decode, crop: uint8) here, so
that Keras iterates it in the thread that feeds the model, where the
device part (float conversion, augmentation) runs.
"""

import concurrent.futures
import threading
import weakref

__all__ = ["Prefetcher"]


class Prefetcher:
    """Runs the jobs of the next keys in `workers` threads, at most `ahead` at once.

    `get(key, job, upcoming)` returns `job()`'s result for `key` (made
    ahead by a thread if an earlier call scheduled it, else here), and
    schedules the jobs of `upcoming` (a list of `(key, job)`, next first);
    jobs of keys no longer upcoming are dropped. With `workers <= 1`
    nothing runs ahead. Results do not depend on which thread ran a job:
    each job must be a function of its key alone.

    Args:
        workers: threads (0 or 1: none, jobs run in the caller).
        ahead: most jobs scheduled or running ahead at once.
    """

    def __init__(self, workers, ahead):
        self.workers = int(workers)
        self.ahead = max(1, int(ahead))
        self._pool = None
        self._pending = {}
        self._lock = threading.Lock()

    def get(self, key, job, upcoming=()):
        """`job()`'s result for `key`, the jobs of `upcoming` started ahead."""
        if self.workers <= 1:
            return job()
        with self._lock:
            future = self._pending.pop(key, None)
            wanted = dict(list(upcoming)[: self.ahead])
            for stale in [k for k in self._pending if k not in wanted]:
                self._pending.pop(stale).cancel()
            for k, later in wanted.items():
                if k not in self._pending:
                    self._pending[k] = self._executor().submit(later)
        return job() if future is None else future.result()

    def clear(self):
        """Drops every job scheduled ahead (e.g. at an epoch's end)."""
        with self._lock:
            for future in self._pending.values():
                future.cancel()
            self._pending.clear()

    def _executor(self):
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, "kertransfer-batches")
            weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)
        return self._pool
