"""Pools of worker processes, started from a fork server.

The document checks (``mss.documents.workers``) and the IMAP door's envelope openings
(``mss.imap.workers``) each run in a pool of their own; this is how both start, replace and
stop one, and hand it tasks.

A worker that has just read a large message or document (a 1.4 MB envelope, a 750 KB PDF)
would otherwise keep the memory that reading took for as long as it lives: the parser's
objects that refer to each other wait for the cyclic collector, and what is freed stays in
the C allocator's heaps. After a task whose arguments held GIVE_BACK_AFTER bytes or more,
the worker collects its young objects and gives free memory back (``mss.memory``).

A process has one fork server, whichever pool starts first, and a worker holds on its own
pages whatever it imports after the fork (about 5 MiB for pebble). So the fork server
imports, before it forks, this module (every task goes through ``_then_give_back`` here)
and the modules of every pool the process has made (``mss serve`` has two: the document
checks and the IMAP door's envelopes), not only that of the first one started. (A worker
also sets up its ``__main__`` from the program's: ``mss serve`` runs as ``python -m
mss.serve``, whose top imports nothing of the service but its errors; a program started as a
script runs that script again, and the ``mss`` script imports the command line only once it
runs a command, ``cli.main``.)

What a worker inherits from the fork server stays shared with it, page for page, as long as
nothing writes to it. The cyclic collector's full passes write to every object they visit:
over a few thousand messages they made each document worker copy about 6 MiB of the fork
server's pages. A new worker sets them aside first (``gc.freeze``), and the collector no
longer visits them.
"""

from __future__ import annotations

import atexit
import gc
import multiprocessing
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

from pebble import ProcessFuture, ProcessPool

from mss import cores, memory

T = TypeVar("T")

# A task whose arguments hold at least this many bytes is followed by giving memory back.
GIVE_BACK_AFTER: Final = 256 * 1024


def _bytes_held(values: Any) -> int:
    """The bytes in ``values``: bytes arguments, and those in lists and tuples of them."""
    if isinstance(values, (bytes, bytearray)):
        return len(values)
    if isinstance(values, (list, tuple)):
        return sum(_bytes_held(value) for value in values)
    return 0


def _then_give_back(call: list[tuple[Callable[..., T], tuple[Any, ...], Mapping[str, Any]]]) -> T:
    """In the worker: the call ``call`` holds, then, after large arguments, the memory they
    and their reading took goes back to the system.

    The call comes in a list it is taken out of: the pool's worker loop keeps its task until
    the next one arrives, and would otherwise keep the arguments with it (a reader's key,
    the envelopes). Only the result stays referred to until then."""
    function, args, kwargs = call.pop()
    held = _bytes_held(args) + _bytes_held(list(kwargs.values()))
    try:
        return function(*args, **kwargs)
    finally:
        del args, kwargs
        if held >= GIVE_BACK_AFTER:
            gc.collect(1)  # the young objects that refer to each other (cheap), freed now
            memory.give_back()


# What the process's fork server imports before it forks (see the module's docstring):
# each pool adds its own module when it is made.
_PRELOAD: Final[list[str]] = [__name__]


class WorkerPool:
    """Worker processes from a fork server that imported ``modules`` and this module first
    (a worker then starts without importing them again): the pool's tasks and what they
    import only when they run. Started on first use, replaced when it was stopped or
    broke, stopped at interpreter exit."""

    def __init__(self, modules: tuple[str, ...], workers: int, *, name: str) -> None:
        for module in modules:
            if module not in _PRELOAD:
                _PRELOAD.append(module)
        self._workers = workers
        self._name = name
        self._lock = threading.Lock()
        self._pool: ProcessPool | None = None
        atexit.register(self.stop)

    def running(self) -> ProcessPool:
        """The pool, started now if there is none that runs."""
        with self._lock:
            if self._pool is None or not self._pool.active:
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload(list(_PRELOAD))
                # gc.freeze alone, not memory.settle: its full collection first would
                # write to every inherited object, the very copying this spares.
                self._pool = ProcessPool(max_workers=self._workers, context=context, initializer=gc.freeze)
                # The pool's own threads (scheduling, watching its workers, reading their
                # results) start now, with the pool's name (``top -H``).
                with cores.threads_started_as(self._name):
                    _ = self._pool.active
            return self._pool

    def schedule(
        self,
        function: Callable[..., T],
        *,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> ProcessFuture:
        """``function(*args, **kwargs)`` in a worker, within ``timeout`` seconds (the worker
        is then replaced): its future, as pebble's ``ProcessPool.schedule``."""
        call = [(function, args, kwargs or {})]
        future = self.running().schedule(_then_give_back, args=(call,), timeout=timeout)
        # Sent by then: pebble's scheduling thread keeps its last task until the next one
        # arrives, and would otherwise keep these arguments with it (a document, a key).
        future.add_done_callback(lambda _done: call.clear())
        return future

    @property
    def workers(self) -> int:
        """The workers the pool runs, or will run once started."""
        return self._workers

    def start(self, workers: int | None = None) -> None:
        """Start the fork server and the workers now rather than at the first task (a
        server's start-up; blocking): one trivial task goes through. ``workers``: run that
        many from now on (a pool already running with another number is replaced)."""
        replaced = None
        if workers is not None:
            with self._lock:
                if workers != self._workers:
                    self._workers = workers
                    replaced, self._pool = self._pool, None
        if replaced is not None:
            replaced.stop()
            replaced.join()
        self.running().schedule(os.getpid).result()

    def stop(self) -> None:
        """Stop the workers; a later task starts a new pool."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()
            pool.join()
