"""A long-running coroutine of a service (a delivery worker, the webhook sender, the CRL
publication) on a thread with an event loop of its own, as ``mss serve`` runs it beside the
other parts.

Tests and benchmarks use it; it imports nothing of the test suite.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Self


class TaskThread:
    """Runs ``run(ready)`` on a thread; ``start`` (or ``with``) returns once the coroutine has
    set ``ready``, ``stop`` (or the end of the block) cancels it and joins the thread."""

    def __init__(self, run: Callable[[asyncio.Event], Awaitable[object]], name: str = "mss-task") -> None:
        self.name = name
        self._coroutine = run
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Future[object] | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            ready = asyncio.Event()
            self._task = asyncio.ensure_future(self._coroutine(ready))
            await ready.wait()
            self._ready.set()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

        asyncio.run(main())

    def start(self) -> Self:
        self._thread.start()
        assert self._ready.wait(30), f"{self.name} did not start"
        return self

    def stop(self) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(60)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
