"""The cores this process may run on, which its pools and turns are sized to, and the
names its threads show to the system.

A container's CPU set or ``taskset`` may give the process fewer cores than the machine has,
and ``os.cpu_count()`` counts the machine's: pools sized to it would start workers and
threads that only wait (an IMAP worker holds about 10 MiB). This counts the process's CPU
affinity where the system has one (Linux), and the machine's cores elsewhere (macOS).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def usable() -> int:
    """How many cores this process may run on (1 at least)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no CPU affinity on this system
        return max(1, os.cpu_count() or 1)


def _comm() -> str:
    return f"/proc/self/task/{threading.get_native_id()}/comm"


def _show_name(name: str) -> None:
    try:
        with open(_comm(), "wb") as comm:
            comm.write(name.encode("ascii", "replace")[:15])
    except OSError:
        pass


def name_thread() -> None:
    """Give the calling thread's name (``mss-message_0``, ``mss-relay_3``) to the system, so
    that ``top -H``, ``ps -L`` and ``pidstat -t`` tell which of a process's threads spends
    its CPU (Linux; cut to the 15 bytes it keeps). A pool's threads call it as they start
    (its ``initializer``). Where the system has no such name, nothing happens."""
    _show_name(threading.current_thread().name)


@contextmanager
def threads_started_as(name: str) -> Iterator[None]:
    """Threads that a library starts in this block show ``name`` to the system: a new thread
    takes the name its starter shows then (pebble's threads around a pool of workers, which
    the service does not start itself). The calling thread shows its own name again after."""
    try:
        with open(_comm(), "rb") as comm:
            before = comm.read().rstrip(b"\n").decode("ascii", "replace")
    except OSError:
        yield
        return
    _show_name(name)
    try:
        yield
    finally:
        _show_name(before)
