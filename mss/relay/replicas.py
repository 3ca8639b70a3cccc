"""The submission port served by several processes (``MSS_SMTP_PROCESSES``).

A Python process runs its Python in one thread at a time: a relay process uses about one
core however many the machine has. With ``MSS_SMTP_PROCESSES`` = N, ``mss serve`` starts
N - 1 more processes that serve the submission port only (``python -m mss.relay``), every
one bound with SO_REUSEPORT: the kernel hands each new connection to one of them. What
they decide together lives in the database (the directory, the login throttles, the audit
chain, the messages and their receipts); what each keeps for itself is its share of the
session limits (``RelaySettings.session_share``), its message threads and its document
workers. The MX door, the outbound deliveries and housekeeping stay in the first process.

This process watches the others: one that ends without being asked, or could not be
started, is started again after a pause (longer each time it ends soon after its start);
at shutdown each is asked to stop, once (SIGTERM: it drains as this one does), and killed
if it has not within ``STOP_GRACE``. Each runs in a session of its own (a Ctrl-C reaches
this process only) and stops when this process dies, however it dies (``follow_parent``).
Only they join the port with SO_REUSEPORT without looking: this process first makes sure
nothing else listens there (``mss.relay.server.start_listener``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import random
import signal
import sys
import time
from typing import Final

from mss import metrics
from mss.background import to_the_end
from mss.relay.server import PARENT_VARIABLE, SHUTDOWN_GRACE

log = logging.getLogger("mss.relay")

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
    zero = ctypes.c_ulong(0)
    if libc.prctl(ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(signal.SIGTERM), zero, zero, zero) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != int(parent):
        sys.exit("the process that started this one has ended")


class _Replica:
    """One more process of the submission port, started again whenever it ends."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.process: asyncio.subprocess.Process | None = None

    async def keep_running(self) -> None:
        environment = {**os.environ, PARENT_VARIABLE: str(os.getpid())}
        pause = FIRST_PAUSE
        while True:
            started = time.monotonic()
            try:
                await self._run_once(environment)
            except Exception as exc:  # a fork refused (EAGAIN, ENOMEM, EMFILE): try again later
                log.error("submission process %d could not be started: %s", self.number, exc)
            # A replica that ran steadily is started again at once (after the first pause);
            # one that keeps ending soon after its start waits longer each time, with a
            # little jitter so that many do not start in step.
            pause = FIRST_PAUSE if time.monotonic() - started >= STEADY else pause
            wait = pause * random.uniform(1.0, 1.25)
            log.warning("submission process %d: starting it again in %.1f s", self.number, wait)
            await asyncio.sleep(wait)
            pause = min(pause * 2, LONGEST_PAUSE)

    async def _run_once(self, environment: dict[str, str]) -> None:
        # Its own session: a Ctrl-C in the terminal reaches this process alone, which then
        # asks each replica to stop once (a second signal would cut its drain short).
        self.process = process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mss.relay", env=environment, stdin=asyncio.subprocess.DEVNULL, start_new_session=True
        )
        log.info("submission process %d started (pid %d)", self.number, process.pid)
        status = await process.wait()
        metrics.process_ended(process.pid)
        log.warning("submission process %d (pid %d) ended with status %d", self.number, process.pid, status)

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
        metrics.process_ended(process.pid)


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
        await to_the_end(asyncio.gather(*(replica.stop() for replica in replicas)))
