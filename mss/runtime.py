"""What a running process holds: its settings, the database engine, the master key, the
certificates it parsed (by their bytes), the recipients it found reachable (by the
directory's revision), the threads that take messages through the pipeline and, on SQLite,
the lock its message stores queue on.

Built once by the CLI, the SMTP server and the web app, and passed to the services.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, Generic, ParamSpec, TypeVar

from cryptography import x509
from sqlalchemy.engine import Engine

from mss import audit, cores, memory, metrics
from mss.crypto.master import MasterKey
from mss.db import WriteTurns, make_engine, make_private_dir, migrate, sqlite_file
from mss.settings import Settings

log = logging.getLogger("mss.runtime")


class ParsedCertificates:
    """Certificates parsed once from their DER and kept by those bytes.

    Keyed by the bytes themselves, so a changed or revoked certificate is never mistaken
    for another: what may be used is still decided by the query that returned the bytes.
    """

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._parsed: dict[bytes, x509.Certificate] = {}
        self._lock = threading.Lock()

    def load(self, der: bytes) -> x509.Certificate:
        """The certificate of ``der``. Raises ValueError when it is not a DER certificate."""
        certificate = self._parsed.get(der)
        if certificate is None:
            certificate = x509.load_der_x509_certificate(der)
            with self._lock:
                if len(self._parsed) >= self._limit:
                    self._parsed.clear()
                self._parsed[der] = certificate
        return certificate


P = ParamSpec("P")
T = TypeVar("T")
V = TypeVar("V")


# How long a kept verdict is given back at most, whatever the revision: what time alone
# changes, with no write to bump the revision (a certificate whose start comes), counts
# within this. A certificate's end is checked exactly by the caller.
VERDICT_SECONDS: Final = 60.0


class KeptVerdicts(Generic[V]):
    """Verdicts on addresses, each kept with the directory's revision it was read at
    (``directory.revision``).

    ``get`` gives a verdict back only at that same revision, and for ``max_age`` seconds at
    most: any write to the directory since, in any process, and the verdict is read again.
    Full at ``limit`` addresses, it starts again empty.
    """

    def __init__(self, limit: int = 4096, max_age: float = VERDICT_SECONDS) -> None:
        self._limit = limit
        self._max_age = max_age
        self._kept: dict[str, tuple[int, float, V]] = {}
        self._lock = threading.Lock()

    def get(self, address: str, revision: int) -> V | None:
        """The verdict on ``address`` read at ``revision``, if kept and young enough."""
        kept = self._kept.get(address)
        if kept is None or kept[0] != revision or time.monotonic() - kept[1] > self._max_age:
            return None
        return kept[2]

    def keep(self, revision: int, verdicts: Mapping[str, V]) -> None:
        """Keep ``verdicts`` (by address), read at ``revision``."""
        if not verdicts:
            return
        read_at = time.monotonic()
        with self._lock:
            if len(self._kept) + len(verdicts) > self._limit:
                self._kept.clear()
            for address, verdict in verdicts.items():
                self._kept[address] = (revision, read_at, verdict)


# How long no message must have been under way before the memory the last ones left free
# goes back to the system (mss.memory.give_back).
IDLE_SECONDS: Final = 5.0


class MessageThreads:
    """The threads that take whole messages through the pipeline (a submission over SMTP,
    the web or the API, an arrival from another operator), as many as the cores the process
    may use.

    The work is CPU-bound (parsing, checks, signature, encryption), so more threads than
    cores add nothing but messages in flight at once, each held several times over in
    memory (its MIME, its documents, its signed and encrypted forms). A message waiting for
    a thread holds only its received bytes. Created at first use.

    Once no message has been under way for ``idle_seconds``, the memory they left free in
    the process's heaps is given back to the system (``mss.memory.give_back``).
    """

    def __init__(self, size: int | None = None, *, idle_seconds: float = IDLE_SECONDS) -> None:
        self.size = size or max(2, cores.usable())
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._idle_seconds = idle_seconds
        self._under_way = 0
        self._started = 0  # messages started so far: a wait for idleness that sees it move restarts
        self._idle_timer: threading.Timer | None = None

    async def run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``function(*args, **kwargs)`` in one of the threads, awaited."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self.size, thread_name_prefix="mss-message", initializer=cores.name_thread
                )
            executor = self._executor
            self._under_way += 1
            self._started += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                executor, functools.partial(self._taken, metrics.now(), function, *args, **kwargs)
            )
        finally:
            with self._lock:
                self._under_way -= 1
                if not self._under_way and self._idle_timer is None:
                    self._wait_for_idleness()

    @staticmethod
    def _taken(queued: float, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``function(*args, **kwargs)``, once a thread took it ``queued`` (``metrics.now()``)."""
        metrics.observe("queue", queued)
        return function(*args, **kwargs)

    def _wait_for_idleness(self) -> None:
        # Called with the lock held, when a message's work is over, its commit included: a
        # timer that cannot start (no thread to be had) only skips giving memory back this
        # time, and must not turn a message stored into an error for its sender.
        timer = threading.Timer(self._idle_seconds, self._when_idle, (self._started,))
        timer.daemon = True
        try:
            timer.start()
        except RuntimeError as exc:
            log.warning("memory is not given back this time: the idle timer could not start (%s)", exc)
            return
        self._idle_timer = timer

    def _when_idle(self, started: int) -> None:
        with self._lock:
            self._idle_timer = None
            if self._under_way:
                return  # the last of those messages arms the next wait
            if self._started != started:
                self._wait_for_idleness()  # some came and went meanwhile: wait from now
                return
        memory.give_back()

    def close(self) -> None:
        """Wait for the messages under way, then end the threads."""
        with self._lock:
            executor, self._executor = self._executor, None
            timer, self._idle_timer = self._idle_timer, None
        if timer is not None:
            timer.cancel()
        if executor is not None:
            executor.shutdown(wait=True)


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    engine: Engine
    master_key: MasterKey
    certificates: ParsedCertificates = field(default_factory=ParsedCertificates, compare=False, repr=False)
    # mss.pipeline's recipients found reachable, by the directory's revision.
    recipients: KeptVerdicts[Any] = field(default_factory=KeptVerdicts, compare=False, repr=False)
    messages: MessageThreads = field(default_factory=MessageThreads, compare=False, repr=False)
    # WriteTurns on SQLite (set by __post_init__), typed by what it offers for the web
    # framework's inspection of the runtime's fields.
    _message_writes: contextlib.AbstractContextManager[object] = field(
        default_factory=contextlib.nullcontext, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        # Every append to the audit chain from this process also moves the sealed head
        # anchor, which needs the master key (see mss.audit).
        audit.bind_master_key(self.engine, self.master_key)
        metrics.set_enabled(self.settings.operator.metrics_enabled)
        if self.engine.dialect.name == "sqlite":
            turns = WriteTurns(sqlite_file(self.engine), observe=metrics.write_turn)
            object.__setattr__(self, "_message_writes", turns)

    def message_writes(self) -> contextlib.AbstractContextManager[object]:
        """Held around the transaction that stores a message (a submission, an arrival from
        another operator): on SQLite, a turn at its one write lock, in this process and
        among processes (``mss.db.WriteTurns``)."""
        return self._message_writes

    def close(self) -> None:
        self.messages.close()
        if isinstance(self._message_writes, WriteTurns):
            self._message_writes.close()
        self.engine.dispose()


def open_runtime(settings: Settings, *, apply_migrations: bool = True) -> Runtime:
    """Create the data directory (0700), open the database (migrated) and load the master key."""
    make_private_dir(settings.storage.data_dir)
    engine = make_engine(settings)
    if apply_migrations:
        migrate(engine)
    return Runtime(settings=settings, engine=engine, master_key=MasterKey.load(settings))
