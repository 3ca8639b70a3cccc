"""The submission port served by several processes (``MSS_SMTP_PROCESSES``).

A Python process runs its Python in one thread at a time: a relay process uses about one
core however many the machine has. With ``MSS_SMTP_PROCESSES`` = N, ``mss serve`` starts
N - 1 more processes that serve the submission port only (``python -m mss.relay``), every
one bound with SO_REUSEPORT: the kernel hands each new connection to one of them. What
they decide together lives in the database (the directory, the login throttles, the audit
chain, the messages and their receipts); what each keeps for itself is its share of the
session limits (``RelaySettings.session_share``), its message threads and its document
workers. The MX door, the outbound deliveries and housekeeping stay in the first process.

This process watches the others: one that ends without being asked is started again after
a pause (longer each time it ends soon after its start); at shutdown each is asked to
stop (SIGTERM: it drains as this one does) and killed if it has not within ``STOP_GRACE``.
Each also stops when this process dies, however it dies (``PARENT_VARIABLE``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from typing import Final

from mss import metrics
from mss.relay.server import SHUTDOWN_GRACE

log = logging.getLogger("mss.relay")

# Set in a replica's environment: the process id of the one that started it.
PARENT_VARIABLE: Final = "MSS_SMTP_PARENT_PID"
# Seconds a replica has, once asked to stop, to drain before it is killed.
STOP_GRACE: Final = SHUTDOWN_GRACE + 10.0
# Pauses before a replica that ended is started again: doubled while it keeps ending
# within STEADY seconds of its start (a wrong setting, a port taken), up to the longest.
FIRST_PAUSE: Final = 1.0
LONGEST_PAUSE: Final = 60.0
STEADY: Final = 30.0
# prctl(2): the signal a process gets when its parent ends.
_PR_SET_PDEATHSIG: Final = 1


def follow_parent() -> None:
    """In a replica (``PARENT_VARIABLE`` set): have the kernel send SIGTERM to this process
    when the one that started it ends, and end at once if that already happened."""
    parent = os.environ.get(PARENT_VARIABLE)
    if not parent:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != int(parent):
        sys.exit("the process that started this one has ended")


class _Replica:
    """One more process of the submission port, started again whenever it ends."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.process: asyncio.subprocess.Process | None = None

    async def keep_running(self) -> None:
        pause = FIRST_PAUSE
        environment = {**os.environ, PARENT_VARIABLE: str(os.getpid())}
        while True:
            started = time.monotonic()
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mss.relay", env=environment, stdin=asyncio.subprocess.DEVNULL
            )
            log.info("submission process %d started (pid %d)", self.number, self.process.pid)
            status = await self.process.wait()
            metrics.process_ended(self.process.pid)
            pause = FIRST_PAUSE if time.monotonic() - started >= STEADY else min(pause * 2, LONGEST_PAUSE)
            log.warning(
                "submission process %d (pid %d) ended with status %d; starting it again in %.0f s",
                self.number,
                self.process.pid,
                status,
                pause,
            )
            await asyncio.sleep(pause)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``STOP_GRACE`` seconds; returns once it has ended."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE)
        except TimeoutError:
            log.warning("submission process %d (pid %d) did not stop in time: killed", self.number, process.pid)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


async def serve_replicas(count: int, *, after: asyncio.Event | None = None) -> None:
    """Keep ``count`` more processes on the submission port until cancelled, then stop
    them (to the end, even though the waiting was cancelled). ``after``: they start once
    it is set (this process's own door listens: one that cannot bind fails alone)."""
    if after is not None:
        await after.wait()
    replicas = [_Replica(number) for number in range(1, count + 1)]
    running = [asyncio.ensure_future(replica.keep_running()) for replica in replicas]
    try:
        await asyncio.gather(*running)
    finally:
        for task in running:
            task.cancel()
        await asyncio.shield(asyncio.gather(*(replica.stop() for replica in replicas)))
