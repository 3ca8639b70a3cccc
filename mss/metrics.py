"""The service's Prometheus metrics: what flows, how long it takes, what fails and why.

Counters and histograms are module-level ``prometheus_client`` objects that the doors and
the pipeline update; gauges read from the database (directory size, open web sessions) are
computed at scrape time by :class:`DatabaseCollector`. :func:`start_server` serves them on
``MSS_METRICS_HOST:MSS_METRICS_PORT`` (loopback by default), apart from the web inbox.

Several processes: with ``PROMETHEUS_MULTIPROC_DIR`` set (before the process starts), each
process writes its values to files in that folder and the scrape adds them up
(``prometheus_client.multiprocess``); without it each process serves its own port.

Labels carry doors, stages, document kinds and enhanced status codes, never an address,
a subject or anything of a message's content.

Counting never fails its caller: an update that cannot be made (in multiprocess mode, a
folder removed after the process started) is lost and logged, at most once a minute per
process, and the message, login or session it counted goes on (``_Guarded``).

``MSS_METRICS=false`` turns the instruments into no-ops (:func:`set_enabled`, called where a
process opens its runtime): nothing is counted, so the cost of counting can be measured
against nothing (``bench/bench_metrics.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import col

from directory.models import DirectoryEntry
from mss.db import session_scope, utcnow
from mss.models import WebSession

# Pipeline stages timed by STAGE_SECONDS, in the order a message meets them. "queue" is the
# wait for a message thread (``Runtime.messages``), which every message has, whatever its door.
STAGES = ("queue", "parse", "check", "sign", "encrypt", "commit")
# What a message's DATA is made of at an SMTP door, timed by DATA_SECONDS, in order: the wait
# for a place before the 354 (``DataSlots``), the message's arrival after it, and its handling
# from the end of data to the reply (the "queue" stage and the pipeline, or the refusal).
DATA_PHASES = ("slot", "receive", "handle")
# On SQLite, a message's store takes a turn at the database's one write lock
# (``mss.db.WriteTurns``), timed by WRITE_TURN_SECONDS: the wait for it, then how long it
# is held (the inserts and the commit).
WRITE_TURN_PHASES = ("wait", "hold")

SUBMITTED = Counter("mss_messages_submitted", "Messages accepted and stored, by door.", ["door"])
REFUSED = Counter(
    "mss_messages_refused",
    "Messages or envelope steps refused, by door and reason (enhanced status code).",
    ["door", "reason"],
)
DELIVERED = Counter("mss_deliveries_delivered", "Recipients a message was delivered to, by door.", ["door"])
FAILED = Counter("mss_deliveries_failed", "Recipients a message could not be delivered to, by door.", ["door"])
DOCUMENTS = Counter("mss_documents", "Documents carried by accepted messages, by kind.", ["kind"])
STAGE_SECONDS = Histogram(
    "mss_pipeline_stage_seconds",
    "Time spent in each pipeline stage.",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
DATA_SECONDS = Histogram(
    "mss_smtp_data_seconds",
    "Time a message spends at an SMTP door from DATA to the reply, by door and phase.",
    ["door", "phase"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
WRITE_TURN_SECONDS = Histogram(
    "mss_sqlite_write_turn_seconds",
    "SQLite: the wait of a message's store for the database's one write lock, and how long it held it.",
    ["phase"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
SMTP_SESSIONS = Gauge("mss_smtp_sessions_open", "SMTP sessions open now.", multiprocess_mode="livesum")
LOGIN_FAILURES = Counter(
    "mss_login_failures", "Failed authentication steps, by action and reason.", ["action", "reason"]
)
LOCKOUTS = Counter("mss_lockouts", "Locks put on an account, by scope (client or account).", ["scope"])
DELAYED = Counter("mss_receipts_delayed", "Delayed DSNs sent because no final status came in time.")

log = logging.getLogger(__name__)

_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")

_INSTRUMENTS = (
    "SUBMITTED",
    "REFUSED",
    "DELIVERED",
    "FAILED",
    "DOCUMENTS",
    "STAGE_SECONDS",
    "DATA_SECONDS",
    "WRITE_TURN_SECONDS",
    "SMTP_SESSIONS",
    "LOGIN_FAILURES",
    "LOCKOUTS",
    "DELAYED",
)


class _Guarded:
    """A live instrument whose values that cannot be written do not fail its caller.
    Counting must not decide an outcome: the pipeline counts a message after its commit,
    and an error there would tell the client that a stored message was not (it would send
    it again). In multiprocess mode a process opens its file for a kind of instrument at
    that kind's first use; if the folder has gone by then (an OSError), the update is lost
    and counted (``_lost``), and the service goes on. A wrong use (a label missing, a
    counter decremented) still raises, as prometheus_client raises it.
    Children are kept by their label values, which spares prometheus_client's own lookup
    (a lock and a tuple) at each use; none is ever removed."""

    __slots__ = ("_instrument", "_children")

    def __init__(self, instrument: Any) -> None:
        self._instrument = instrument
        self._children: dict[tuple[object, ...], _Guarded] = {}

    def labels(self, *values: object, **named: object) -> _Guarded | _Off:
        key = (*values, *sorted(named.items()))
        child = self._children.get(key)
        if child is None:
            try:
                child = self._children[key] = _Guarded(self._instrument.labels(*values, **named))
            except OSError as exc:  # the file could not be written (class docstring)
                _lost(self._instrument, exc)
                return _OFF
        return child

    def _write(self, method: str, amount: float) -> None:
        try:
            getattr(self._instrument, method)(amount)
        except OSError as exc:  # the file could not be written (class docstring)
            _lost(self._instrument, exc)

    def inc(self, amount: float = 1) -> None:
        self._write("inc", amount)

    def dec(self, amount: float = 1) -> None:
        self._write("dec", amount)

    def observe(self, amount: float) -> None:
        self._write("observe", amount)

    @contextlib.contextmanager
    def time(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.observe(time.perf_counter() - started)


# Updates lost since the last report, and when that report was made (monotonic seconds),
# by process (a forked process starts its own count).
_LOST: dict[int, tuple[int, float]] = {}
_LOST_LOG_EVERY = 60.0


def _lost(instrument: object, exc: OSError) -> None:
    """An update that could not be written: counted, and reported at most once a minute per
    process with how many were lost since the last report."""
    now = time.monotonic()
    count, reported = _LOST.get(os.getpid(), (0, -_LOST_LOG_EVERY))
    count += 1
    if now - reported < _LOST_LOG_EVERY:
        _LOST[os.getpid()] = (count, reported)
        return
    _LOST[os.getpid()] = (0, now)
    name = getattr(instrument, "_name", type(instrument).__name__)
    log.warning(
        "metrics: %d update(s) lost, the last of %s (%s: %s); the service goes on", count, name, type(exc).__name__, exc
    )


class _Off:
    """Stands in for every instrument while metrics are off: each call does nothing."""

    def labels(self, *args: object, **kwargs: object) -> _Off:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass

    def time(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()


_OFF = _Off()
_LIVE = {name: _Guarded(globals()[name]) for name in _INSTRUMENTS}


def set_enabled(enabled: bool) -> None:
    """Count (the default) or not: the doors call ``metrics.X`` at each use, so swapping the
    module's instruments for no-ops reaches every caller."""
    for name in _INSTRUMENTS:
        globals()[name] = _LIVE[name] if enabled else _OFF


set_enabled(True)


def refused(door: str, reply_or_reason: str) -> None:
    """Count a refusal; an SMTP reply is counted by its enhanced status code."""
    found = _STATUS.search(reply_or_reason)
    REFUSED.labels(door=door, reason=found.group(1) if found else reply_or_reason[:40]).inc()


def now() -> float:
    """A monotonic start time for :func:`observe`."""
    return time.perf_counter()


def observe(name: str, started: float) -> None:
    """Record the time of stage ``name`` since ``started`` (from :func:`now`)."""
    STAGE_SECONDS.labels(stage=name).observe(time.perf_counter() - started)


def data_phase(door: str, phase: str, seconds: float) -> None:
    """Record ``seconds`` of phase ``phase`` (of ``DATA_PHASES``) of a DATA at SMTP door ``door``."""
    DATA_SECONDS.labels(door=door, phase=phase).observe(seconds)


def write_turn(phase: str, seconds: float) -> None:
    """Record ``seconds`` of phase ``phase`` (of ``WRITE_TURN_PHASES``) of a turn at SQLite's
    write lock."""
    WRITE_TURN_SECONDS.labels(phase=phase).observe(seconds)


def accepted(door: str, *, delivered: int, failed: int, kinds: list[str]) -> None:
    """Count a message stored: its door, recipients reached and not, documents by kind."""
    SUBMITTED.labels(door=door).inc()
    if delivered:
        DELIVERED.labels(door=door).inc(delivered)
    if failed:
        FAILED.labels(door=door).inc(failed)
    for kind in kinds:
        DOCUMENTS.labels(kind=kind).inc()


def stage(name: str):
    """A context manager timing one pipeline stage."""
    return STAGE_SECONDS.labels(stage=name).time()


class DatabaseCollector(Collector):
    """Gauges read from the database at each scrape: directory size, open web sessions."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("mss_database_up", "1 when the database answered this scrape.")
        entries = GaugeMetricFamily("mss_directory_entries", "Directory entries, by status.", labels=["status"])
        sessions = GaugeMetricFamily(
            "mss_web_sessions_open", "Web and API sessions not yet expired, by door.", labels=["door"]
        )
        try:
            with session_scope(self.engine, readonly=True) as session:
                for status, count in session.execute(
                    select(col(DirectoryEntry.status), func.count()).group_by(col(DirectoryEntry.status))
                ):
                    entries.add_metric([str(status)], count)
                now = utcnow()
                for channel, count in session.execute(
                    select(col(WebSession.channel), func.count())
                    .where(col(WebSession.expires_at) > now, col(WebSession.last_seen_at) > now - timedelta(days=1))
                    .group_by(col(WebSession.channel))
                ):
                    sessions.add_metric([channel], count)
        except SQLAlchemyError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield from (up, entries, sessions)


class _Process(Collector):
    """This process's own counters (the default registry)."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def counts_every_process() -> bool:
    """Whether this process counts in the shared folder of multiprocess mode."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def process_ended(pid: int) -> None:
    """Process ``pid``, one of this service's, has ended: in multiprocess mode its live
    gauges (open sessions) no longer count; its counters still do."""
    if counts_every_process():
        multiprocess.mark_process_dead(pid)


def exposition_registry(engine: Engine) -> CollectorRegistry:
    """The registry a scrape reads: every process's values (multiprocess mode) or this
    process's, and the database gauges."""
    registry = CollectorRegistry()
    if counts_every_process():
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Process())
    registry.register(DatabaseCollector(engine))
    return registry


class MetricsServer:
    """The metrics endpoint, served from a thread; ``port`` is the bound port."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.port = int(server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def start_server(engine: Engine, host: str, port: int) -> MetricsServer:
    """Serve ``/metrics`` on ``host:port`` (0: a free port) until ``close``."""
    server, thread = start_http_server(port, addr=host, registry=exposition_registry(engine))
    return MetricsServer(server, thread)
