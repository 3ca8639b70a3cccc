"""What a running process holds: its settings, the database engine, the master key, the
certificates it parsed (by their bytes), the threads that take messages through the
pipeline and, on SQLite, the lock its message stores queue on.

Built once by the CLI, the SMTP server and the web app, and passed to the services.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from cryptography import x509
from sqlalchemy.engine import Engine

from mss import audit, metrics
from mss.crypto.master import MasterKey
from mss.db import make_engine, make_private_dir, migrate
from mss.settings import Settings


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


class MessageThreads:
    """The threads that take whole messages through the pipeline (a submission over SMTP,
    the web or the API, an arrival from another operator), as many as the cores the process
    may use.

    The work is CPU-bound (parsing, checks, signature, encryption), so more threads than
    cores add nothing but messages in flight at once, each held several times over in
    memory (its MIME, its documents, its signed and encrypted forms). A message waiting for
    a thread holds only its received bytes. Created at first use.
    """

    def __init__(self, size: int | None = None) -> None:
        self.size = size or max(2, len(os.sched_getaffinity(0)))
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    async def run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``function(*args, **kwargs)`` in one of the threads, awaited."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=self.size, thread_name_prefix="mss-message")
            executor = self._executor
        return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(function, *args, **kwargs))

    def close(self) -> None:
        """Wait for the messages under way, then end the threads."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    engine: Engine
    master_key: MasterKey
    certificates: ParsedCertificates = field(default_factory=ParsedCertificates, compare=False, repr=False)
    messages: MessageThreads = field(default_factory=MessageThreads, compare=False, repr=False)
    # A threading.Lock (typed by what it offers: threading.Lock is a function, which the web
    # framework's inspection of the runtime's fields does not take).
    _message_writes: contextlib.AbstractContextManager[object] = field(
        default_factory=threading.Lock, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        # Every append to the audit chain from this process also moves the sealed head
        # anchor, which needs the master key (see mss.audit).
        audit.bind_master_key(self.engine, self.master_key)
        metrics.set_enabled(self.settings.operator.metrics_enabled)

    def message_writes(self) -> contextlib.AbstractContextManager[object]:
        """Held around the transaction that stores a message, on SQLite only.

        SQLite has one write lock, and a transaction that finds it taken sleeps in steps of
        up to 100 ms (the busy handler) rather than queue: with a dozen sessions storing at
        once, the lock then sits idle while they sleep. This process's stores queue here
        instead, in turn; other processes still meet the busy handler.
        """
        return self._message_writes if self.engine.dialect.name == "sqlite" else contextlib.nullcontext()

    def close(self) -> None:
        self.messages.close()
        self.engine.dispose()


def open_runtime(settings: Settings, *, apply_migrations: bool = True) -> Runtime:
    """Create the data directory (0700), open the database (migrated) and load the master key."""
    make_private_dir(settings.storage.data_dir)
    engine = make_engine(settings)
    if apply_migrations:
        migrate(engine)
    return Runtime(settings=settings, engine=engine, master_key=MasterKey.load(settings))
