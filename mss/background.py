"""How a door's listeners run: in a door's process until it is cancelled
(``serve_until_cancelled``), or on a background thread with an event loop of their own.

Tests and benchmarks run the relay and the IMAP server the second way, beside their own
code, in one process: ``with RelayServer(rt) as relay:`` listens on free loopback ports
until the block ends, then drains what is open.
"""

from __future__ import annotations

import abc
import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import Self

from mss import cores, memory


async def to_the_end(closing: Awaitable[object]) -> None:
    """Await ``closing`` (a drain, bounded by a grace of its own) to its end, however many
    cancellations arrive meanwhile: a second stop signal (a supervisor that signals every
    process of the service, then the process that started one signals it too) must not cut
    short the drain the first began. Raises if ``closing`` itself fails or is cancelled."""
    closed = asyncio.ensure_future(closing)
    while True:
        try:
            await asyncio.shield(closed)
            return
        except asyncio.CancelledError:
            if closed.done():
                raise


async def serve_until_cancelled(close: Callable[[], Awaitable[None]], ready: asyncio.Event | None = None) -> None:
    """Set ``ready`` (the listeners are bound), wait until cancelled, then ``close`` them:
    to the end, even though the waiting was cancelled (``to_the_end``)."""
    try:
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()
    finally:
        await to_the_end(close())


async def settle_once_listening(listening: Iterable[asyncio.Event]) -> None:
    """Once every door of a serving process listens (each event set), set what start-up
    made aside from the cyclic collector (``mss.memory.settle``)."""
    await asyncio.gather(*(event.wait() for event in listening))
    memory.settle()


class BackgroundServer(abc.ABC):
    """Starts ``listen`` on a thread of its own; ``stop`` (or the end of a ``with`` block)
    closes what it opened and joins the thread."""

    thread_name = "mss-server"

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @abc.abstractmethod
    async def listen(self) -> Callable[[], Awaitable[None]]:
        """Bind the sockets (in the server's loop); return what closes them."""

    def start(self) -> Self:
        """Start listening; return once the sockets are bound. Re-raises a startup error."""
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        cores.name_thread()
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # handed to the starting thread
            self._error = exc
            self._started.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        close = await self.listen()
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await close()

    def stop(self) -> None:
        """Stop accepting, let the open sessions end and join the thread."""
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join()
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
