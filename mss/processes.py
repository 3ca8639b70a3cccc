"""Pools of worker processes, started from a fork server.

The document checks (``mss.documents.workers``) and the IMAP door's envelope openings
(``mss.imap.workers``) each run in a pool of their own; this is how both start, replace and
stop one.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import threading

from pebble import ProcessPool


class WorkerPool:
    """Worker processes from a fork server that imported ``preload`` first (a worker then
    starts without importing it again). Started on first use, replaced when it was stopped
    or broke, stopped at interpreter exit."""

    def __init__(self, preload: str, workers: int) -> None:
        self._preload = preload
        self._workers = workers
        self._lock = threading.Lock()
        self._pool: ProcessPool | None = None
        atexit.register(self.stop)

    def running(self) -> ProcessPool:
        """The pool, started now if there is none that runs."""
        with self._lock:
            if self._pool is None or not self._pool.active:
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload([self._preload])
                self._pool = ProcessPool(max_workers=self._workers, context=context)
            return self._pool

    def start(self) -> None:
        """Start the fork server and the workers now rather than at the first task (a
        server's start-up; blocking): one trivial task goes through."""
        self.running().schedule(os.getpid).result()

    def stop(self) -> None:
        """Stop the workers; a later task starts a new pool."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()
            pool.join()
