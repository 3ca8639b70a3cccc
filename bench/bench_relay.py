"""Relay throughput, latency and CPU, against bare aiosmtpd servers on the same machine.

Three servers run as their own process with the same TLS certificate and suites: the relay
(``python -m mss.relay``: STARTTLS, AUTH with argon2id, directory checks, document checks,
S/MIME sign + encrypt, durable commit with receipts and audit) and two bare aiosmtpd
servers (STARTTLS, any AUTH accepted, a DATA handler that only answers 250):

* ``bare``: reads DATA with the relay's own bulk reader (``RelaySMTP._receive_data``) and
  the MAIL and RCPT paths as the relay reads them (since 2026-12-02), the fair baseline:
  the same protocol work, nothing else;
* ``bare-lines``: aiosmtpd as it is, its own DATA reader, one ``readuntil`` per line (what
  the figures before 2026-11-30 compared with).

The same aiosmtplib client drives all three: each session does STARTTLS and AUTH once and
one warm-up message; then, for each repetition, the servers take turns (in a rotating
order) and each session sends its messages one after the other. A run's window starts
when every session is ready (with ``--connect-each``, each message has a session of its own
instead, connected, logged in and closed around it, as a mail client that connects to send
does). The CPU of a server is its process tree's user + system
time over the window (the relay's document workers included).

Usage::

    .venv/bin/python bench/bench_relay.py            # 10 KB and 1 MB, 1, 4 and 16 sessions
    .venv/bin/python bench/bench_relay.py --quick    # fewer messages and repetitions
    .venv/bin/python bench/bench_relay.py --only 10KBx16 --dsn   # one case, success DSNs asked
    .venv/bin/python bench/bench_relay.py --only 10KBx16 --connect-each   # a session per message
    .venv/bin/python bench/bench_relay.py --relays 2   # two relay processes on one database
    .venv/bin/python bench/bench_relay.py --only 4MBx48  # a burst: 48 sessions of 4 MB at once
    .venv/bin/python bench/bench_relay.py --serve      # the relay as `mss serve relay` runs it
    .venv/bin/python bench/bench_relay.py --serve --phases  # and where a message's time goes
    .venv/bin/python bench/bench_relay.py --serve --smtp-processes 2   # two processes on one port
    .venv/bin/python bench/bench_relay.py --only 10KBx16 --longer 5   # five times the messages
    .venv/bin/python bench/bench_relay.py --only 10KBx16 --threads   # the relay's CPU by thread

Prints, per case, messages/s, CPU ms per message and latency p50/p95 for each server
(medians over repetitions), its memory (the process tree's proportional set size, its
anonymous part, and the server process's own resident set) at its peak during the runs
and 10 s after the case's sessions closed, then the relay / bare ratios of each repetition
as min / median / max. Settings are the defaults (argon2id moderate, RSA 3072 user keys,
SQLite WAL with synchronous=FULL in a temporary folder) unless ``MSS_DATABASE_URL`` names
another database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(PROJECT_ROOT), str(PROJECT_ROOT / "tests")]

from mss import metrics
from mss.demo import DemoAccount
from mss.settings import Settings

from _support import bench_env, demo_installation, percentile, referral, serve_bare_smtp, spread
from metrics_support import scrape, value
from server_process import free_port, process_tree, processes, start_server

SIZES = {"10KB": 10_000, "1MB": 1_000_000, "4MB": 4_000_000}


# -- the bare servers (run in their own process with --bare-server) -----------------------


def bare_server(reader: str) -> None:
    """aiosmtpd with our TLS context, any AUTH accepted, 250 for every message.

    ``reader`` is ``bulk`` (DATA read by the relay's own reader) or ``lines`` (aiosmtpd's).
    """
    from aiosmtpd.smtp import SMTP, AuthResult, syntax

    from mss.relay.protocol import RelaySMTP
    from mss.relay.tls import server_context

    settings = Settings.from_env()

    class Accept:
        async def handle_DATA(self, server, session, envelope):
            return "250 2.0.0 Ok: queued"

    class BulkSMTP(SMTP):
        """aiosmtpd whose DATA and MAIL and RCPT paths are read like the relay reads them,
        then answered at once."""

        # The relay's reader uses only what aiosmtpd's SMTP has (reader, size limit, timer).
        _receive_data = RelaySMTP._receive_data

        # And its reading of MAIL and RCPT paths (only aiosmtpd's SMTP's too).
        _getaddr = RelaySMTP._getaddr

        @syntax("DATA")
        async def smtp_DATA(self, arg: str) -> None:
            if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
                return
            assert self.envelope is not None
            if not self.envelope.rcpt_tos:
                await self.push("503 Error: need RCPT command")
                return
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            refusal, content = await self._receive_data()
            self.envelope.content = self.envelope.original_content = content
            status = refusal or await self._call_handler_hook("DATA")
            self._set_post_data_state()
            await self.push(status)

    def accept_any(server, session, envelope, mechanism, auth_data):
        return AuthResult(success=True)

    serve_bare_smtp(
        Accept(),
        server_context(settings),
        settings.relay.port,
        settings.relay.max_message_size,
        server_class=BulkSMTP if reader == "bulk" else SMTP,
        auth_required=True,
        authenticator=accept_any,
    )


# -- the client ----------------------------------------------------------------------------


@dataclass
class Result:
    messages: int
    seconds: float
    cpu_seconds: float
    latencies: list[float]
    peak: Memory
    phases: dict[str, float] = field(default_factory=dict)
    threads: dict[str, float] = field(default_factory=dict)
    """CPU seconds over the window by kind of thread (``tree_threads``), with ``--threads``."""

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_ms(self) -> float:
        """Server CPU (process tree, user + system) per message, in ms."""
        return self.cpu_seconds * 1000 / self.messages

    def percentile(self, p: float) -> float:
        return percentile(self.latencies, p)


_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants still running (Linux /proc)."""
    return sum(_cpu_seconds(folder) or 0.0 for folder in process_tree(pid, processes()))


def _cpu_seconds(folder: Path) -> float | None:
    """User + system CPU seconds of the process or thread of a /proc folder (None: gone)."""
    try:
        fields = (folder / "stat").read_text()
    except OSError:
        return None
    # After the command: state, ppid (field 4) ... utime, stime (fields 14, 15).
    after = fields[fields.rindex(")") + 2 :].split()
    return (int(after[11]) + int(after[12])) / _TICKS


_NUMBERED = re.compile(r"_\d+$")


def tree_threads(pids: list[int]) -> dict[str, float]:
    """User + system CPU seconds so far of the trees of ``pids`` by kind of thread: each process's
    first thread (``main``: the relay's event loop), the threads the service names
    (``mss.cores.name_thread``) by their name without its number (``mss-message``), the
    others of those processes (``other threads``: the document pool's own threads), and the
    processes without a named thread (the document workers and their fork server) as
    ``worker processes``. A thread that ended takes its count with it: the pools' threads
    last as long as the relay."""
    found: defaultdict[str, float] = defaultdict(float)
    running = processes()
    for folder in (folder for pid in pids for folder in process_tree(pid, running)):
        spent: defaultdict[str, float] = defaultdict(float)
        try:
            tasks = list((folder / "task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                name = (task / "comm").read_text().strip()
            except OSError:
                continue
            seconds = _cpu_seconds(task)
            if seconds is None:
                continue
            if task.name == folder.name:
                spent["main"] += seconds
            elif name.startswith("mss-"):
                spent[_NUMBERED.sub("", name)] += seconds
            else:
                spent["other threads"] += seconds
        if set(spent) - {"main", "other threads"}:
            for kind, seconds in spent.items():
                found[kind] += seconds
        else:
            found["worker processes"] += sum(spent.values())
    return dict(found)


@dataclass(frozen=True)
class Memory:
    """Memory of a server's process tree, in MiB: its proportional set size (each page
    shared between processes, such as a worker's pages inherited from its parent, counted
    once across them), and the anonymous part of it (heap and stacks: what the processes
    allocated, without mapped files and shared libraries)."""

    pss: float = 0.0
    anon: float = 0.0
    server_rss: float = 0.0
    """The resident set of the server's own process (its first), workers left out."""

    def __str__(self) -> str:
        return f"{self.pss:.0f} MiB (anon {self.anon:.0f}, server RSS {self.server_rss:.0f})"


def tree_memory(pids: list[int]) -> Memory:
    """The memory now of ``pids`` and their descendants (Linux /proc)."""
    running = processes()
    pss = anon = server_rss = 0
    try:
        status = (Path("/proc") / str(pids[0]) / "status").read_text()
        server_rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        pass
    for pid in pids:
        for folder in process_tree(pid, running):
            try:
                rollup = (folder / "smaps_rollup").read_text()
            except OSError:
                continue
            for line in rollup.splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
                elif line.startswith("Pss_Anon:"):
                    anon += int(line.split()[1])
    return Memory(pss / 1024, anon / 1024, server_rss / 1024)


class PeakMemory:
    """Samples the memory of a server's processes every 50 ms on a thread; ``peak`` is the
    highest total seen (and its anonymous part at that moment)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids, self.peak = pids, tree_memory(pids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            now = tree_memory(self.pids)
            if now.pss > self.peak.pss:
                self.peak = now

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class Load:
    """What a run sends: ``sessions`` sessions logged in as ``sender`` each send
    ``per_session`` referrals of ``size`` bytes to ``recipients``, one after the other."""

    sender: DemoAccount
    recipients: list[str]
    size: int
    sessions: int
    per_session: int

    def message(self, number: int) -> bytes:
        return referral(self.sender.address, self.recipients, self.size, number)

    def messages(self, first: int) -> list[bytes]:
        """The messages of one run, numbered from ``first``."""
        return [self.message(first + n) for n in range(self.sessions * self.per_session)]


# What --phases reads of the relay's metrics: the DATA phases of the submission door, then
# the pipeline's stages, in the order a message meets them, then (SQLite) the commit's turn
# at the write lock. A phase that counted nothing (the turn on PostgreSQL) is not printed.
PHASES = [
    *(("mss_smtp_data_seconds", {"door": "smtp", "phase": p}, p) for p in metrics.DATA_PHASES),
    *(("mss_pipeline_stage_seconds", {"stage": s}, s) for s in metrics.STAGES),
    *(("mss_sqlite_write_turn_seconds", {"phase": p}, f"turn {p}") for p in metrics.WRITE_TURN_PHASES),
]


def timings(url: str) -> dict[str, tuple[float, float]]:
    """Each of ``PHASES`` as the relay's metrics at ``url`` count it now: (seconds, times)."""
    samples = scrape(url)
    return {
        label: (value(samples, f"{name}_sum", **labels), value(samples, f"{name}_count", **labels))
        for name, labels, label in PHASES
    }


class Sessions:
    """Logged-in client sessions to one server (spread over its processes), reused across
    repetitions."""

    def __init__(
        self,
        ports: list[int],
        pids: list[int],
        context: ssl.SSLContext,
        load: Load,
        rcpt_options: list[str],
        metrics_url: str | None = None,
        *,
        connect_each: bool = False,
        threads: bool = False,
    ) -> None:
        self.ports, self.pids, self.context = ports, pids, context
        self.load, self.rcpt_options = load, rcpt_options
        self.metrics_url = metrics_url
        self.connect_each = connect_each
        self.threads = threads
        self.clients: list[aiosmtplib.SMTP] = []

    async def _logged_in(self, port: int) -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, tls_context=self.context, timeout=600)
        await client.connect()
        await client.login(self.load.sender.address, self.load.sender.password)
        return client

    async def open(self, *, warm_up: bool) -> None:
        """Log the load's sessions in; with ``warm_up``, each sends one message."""
        for number in range(self.load.sessions):
            self.clients.append(await self._logged_in(self.ports[number % len(self.ports)]))
        if warm_up:
            raw = self.load.message(0)
            await asyncio.gather(*(self._send(c, raw) for c in self.clients))

    async def _send(self, client: aiosmtplib.SMTP, raw: bytes) -> float:
        started = time.perf_counter()
        load = self.load
        errors, _ = await client.sendmail(load.sender.address, load.recipients, raw, rcpt_options=self.rcpt_options)
        if errors:
            raise RuntimeError(f"recipients refused: {errors}")
        return time.perf_counter() - started

    async def run(self, messages: list[bytes]) -> Result:
        per_session = len(messages) // len(self.clients)
        latencies: list[float] = []

        async def one(index: int, client: aiosmtplib.SMTP) -> None:
            for raw in messages[index * per_session : (index + 1) * per_session]:
                if self.connect_each:
                    # From connecting to the end of QUIT: a client that connects to send.
                    started = time.perf_counter()
                    own = await self._logged_in(self.ports[index % len(self.ports)])
                    await self._send(own, raw)
                    await own.quit()
                    latencies.append(time.perf_counter() - started)
                else:
                    latencies.append(await self._send(client, raw))

        before = timings(self.metrics_url) if self.metrics_url else {}
        threads_before = tree_threads(self.pids) if self.threads else {}
        cpu = sum(map(tree_cpu, self.pids))
        started = time.perf_counter()
        with PeakMemory(self.pids) as memory:
            await asyncio.gather(*(one(i, c) for i, c in enumerate(self.clients)))
        elapsed = time.perf_counter() - started
        cpu = sum(map(tree_cpu, self.pids)) - cpu
        threads = {}
        if self.threads:
            threads = {k: v - threads_before.get(k, 0.0) for k, v in tree_threads(self.pids).items()}
        phases = {}
        if self.metrics_url:
            after = timings(self.metrics_url)
            phases = {
                name: (seconds - before[name][0]) / max(times - before[name][1], 1)
                for name, (seconds, times) in after.items()
            }
        return Result(len(latencies), elapsed, cpu, latencies, memory.peak, phases, threads)

    async def close(self) -> None:
        for client in self.clients:
            await client.quit()


async def run_case(
    servers: dict[str, tuple[list[int], list[int]]],
    ca_file: Path,
    load: Load,
    *,
    repeats: int,
    dsn: bool,
    metrics_url: str | None = None,
    connect_each: bool = False,
    threads: bool = False,
) -> dict[str, list[Result]]:
    """Every server, ``repeats`` times, in a rotating order; the results by server name."""
    context = ssl.create_default_context(cafile=str(ca_file))
    opened: dict[str, Sessions] = {}
    for name, (ports, pids) in servers.items():
        # Only the relay speaks DSN (aiosmtpd refuses RCPT parameters it does not know).
        options = ["NOTIFY=SUCCESS,FAILURE"] if dsn and name == "relay" else []
        opened[name] = Sessions(
            ports,
            pids,
            context,
            load,
            options,
            metrics_url if name == "relay" else None,
            connect_each=connect_each,
            threads=threads and name == "relay",
        )
        await opened[name].open(warm_up=True)
    results: dict[str, list[Result]] = {name: [] for name in servers}
    names = list(servers)
    number = 1
    for repeat in range(repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            messages = load.messages(number)
            number += len(messages)
            results[name].append(await opened[name].run(messages))
    for opened_sessions in opened.values():
        await opened_sessions.close()
    return results


SESSIONS = (1, 4, 16)
# How long after a case the servers' memory is read again: what they keep once idle (the
# relay gives free memory back after 5 s without a message: mss.runtime.IDLE_SECONDS).
SETTLE_SECONDS = 10.0
# Messages per session in one run of a case, then with --quick.
PER_SESSION = {("10KB", 1): 60, ("10KB", 4): 20, ("10KB", 16): 8, ("1MB", 1): 10, ("1MB", 4): 4, ("1MB", 16): 2}
QUICK_PER_SESSION = {("10KB", 1): 20, ("10KB", 4): 6, ("10KB", 16): 3, ("1MB", 1): 4, ("1MB", 4): 2, ("1MB", 16): 1}
# Run only when named with --only: a burst of large messages, for the memory a server holds.
BURST = {("4MB", 48): 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bare-server", choices=("bulk", "lines"), help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="fewer messages and 2 repetitions")
    parser.add_argument("--repeats", type=int, help="repetitions of each case (default 3, 2 with --quick)")
    parser.add_argument(
        "--longer",
        type=int,
        default=1,
        metavar="K",
        help="K times the messages of each session, for runs long enough that the machine's "
        "passing spells weigh less (default 1: a run of 1 to 3 s)",
    )
    parser.add_argument(
        "--only",
        choices=sorted({f"{s}x{c}" for s in SIZES for c in SESSIONS} | {f"{s}x{c}" for s, c in BURST}),
        action="append",
        help="run only these cases (e.g. 10KBx1; 4MBx48 runs only when named); repeatable",
    )
    parser.add_argument("--no-lines", action="store_true", help="leave out the bare server with aiosmtpd's reader")
    parser.add_argument("--relays", type=int, default=1, help="relay processes on the same database (default 1)")
    parser.add_argument("--dsn", action="store_true", help="ask the relay for success DSNs (NOTIFY=SUCCESS,FAILURE)")
    parser.add_argument(
        "--connect-each",
        action="store_true",
        help="each message in a session of its own: connect, STARTTLS, AUTH, the message, QUIT "
        "(as a mail client that connects to send)",
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help="run the relay as `mss serve relay` (outbound worker, housekeeping) instead of python -m mss.relay",
    )
    parser.add_argument(
        "--smtp-processes",
        type=int,
        default=1,
        metavar="N",
        help="with --serve: N processes share the submission port (MSS_SMTP_PROCESSES; default 1)",
    )
    parser.add_argument(
        "--phases",
        action="store_true",
        help="with --serve: read the relay's metrics around each run and print where a message's time goes "
        "(mean ms per message of each DATA phase and pipeline stage, and on SQLite of the wait for the write "
        "lock and its hold)",
    )
    parser.add_argument(
        "--threads",
        action="store_true",
        help="print the relay's CPU per message by thread, as the kernel counts it: its event loop (main), "
        "message threads, the threads of its MAIL and RCPT checks, the others, and its worker processes",
    )
    parser.add_argument(
        "--py-spy",
        metavar="FILE",
        type=Path,
        help="run the relay under py-spy: a flame graph (SVG), or collapsed stacks for *.txt",
    )
    parser.add_argument(
        "--py-spy-gil",
        action="store_true",
        help="with --py-spy: sample only the thread that holds the GIL (py-spy --gil), at 250 Hz: where the "
        "relay's Python time goes, without the threads that wait",
    )
    args = parser.parse_args()
    if args.phases and not args.serve:
        parser.error("--phases needs --serve (python -m mss.relay serves no metrics)")
    if args.smtp_processes != 1 and not args.serve:
        parser.error("--smtp-processes needs --serve")
    if args.py_spy_gil and not args.py_spy:
        parser.error("--py-spy-gil needs --py-spy")
    if args.threads and args.py_spy:
        parser.error("--threads reads the relay's own threads: not under py-spy")
    if args.bare_server:
        bare_server(args.bare_server)
        return

    if args.longer < 1:
        parser.error("--longer needs a whole number of at least 1")
    counts = QUICK_PER_SESSION if args.quick else PER_SESSION
    counts = {key: value * args.longer for key, value in counts.items()}
    if args.only:
        counts = {key: value for key, value in {**counts, **BURST}.items() if f"{key[0]}x{key[1]}" in args.only}
    repeats = args.repeats or (2 if args.quick else 3)
    with tempfile.TemporaryDirectory(prefix="mss-bench-relay-") as tmp:
        root = Path(tmp)
        ports = {"relay": free_port(), "bare": free_port(), "bare-lines": free_port()}
        relay_ports = [ports["relay"], *(free_port() for _ in range(args.relays - 1))]
        if args.no_lines:
            del ports["bare-lines"]
        env = bench_env(
            root,
            MSS_SMTP_HOST="127.0.0.1",
            MSS_SMTP_PORT=str(ports["relay"]),
            # Every session comes from 127.0.0.1.
            MSS_MAX_SESSIONS_PER_CLIENT="64",
        )
        settings, demo = demo_installation(env)
        sender, recipients = demo[0], [d.address for d in demo[1:]]
        ca_file = settings.pki.certs_dir / "ca.pem"
        relay_command = [sys.executable, "-m", "mss.relay"]
        if args.serve:
            relay_command = [str(Path(sys.executable).with_name("mss")), "serve", "relay"]
            env.update(MSS_MX_PORT="0", MSS_METRICS_PORT="0", MSS_SMTP_PROCESSES=str(args.smtp_processes))
        metrics_url = None
        if args.phases:
            # Every process of the port counts into one folder, read at each scrape.
            (root / "prometheus").mkdir()
            metrics_port = free_port()
            env.update(
                MSS_METRICS_HOST="127.0.0.1",
                MSS_METRICS_PORT=str(metrics_port),
                PROMETHEUS_MULTIPROC_DIR=str(root / "prometheus"),
            )
            metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        if args.py_spy:
            style = "raw" if args.py_spy.suffix == ".txt" else "flamegraph"
            py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            relay_command = [
                py_spy,
                "record",
                *(["--gil", "--rate", "250"] if args.py_spy_gil else []),
                "--threads",
                "--format",
                style,
                "-o",
                str(args.py_spy),
                "--",
                *relay_command,
            ]
        relays = [
            start_server(relay_command, {**env, "MSS_SMTP_PORT": str(port)}, root / f"relay-{port}.log", port)
            for port in relay_ports
        ]
        processes = {"relay": relays[0]}
        for name in ports:
            if name != "relay":
                reader = "lines" if name == "bare-lines" else "bulk"
                processes[name] = start_server(
                    [sys.executable, __file__, "--bare-server", reader],
                    {**env, "MSS_SMTP_PORT": str(ports[name])},
                    root / f"{name}.log",
                    ports[name],
                )
        servers = {name: ([ports[name]], [processes[name].pid]) for name in ports}
        servers["relay"] = (relay_ports, [relay.pid for relay in relays])
        backend = settings.storage.database_url.split(":")[0]
        print(
            f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.node()} {platform.processor() or platform.machine()} "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {backend}, "
            f"{args.relays} relay process(es)"
            f"{f' of {args.smtp_processes} processes on one port' if args.smtp_processes > 1 else ''}, "
            f"{repeats} repetitions"
            f"{', success DSNs asked' if args.dsn else ''}"
            f"{', a session for each message' if args.connect_each else ''}; medians, ratios min / median / max"
        )
        try:
            for (label, sessions), per_session in counts.items():
                load = Load(sender, recipients, SIZES[label], sessions, per_session)
                results = asyncio.run(
                    run_case(
                        servers,
                        ca_file,
                        load,
                        repeats=repeats,
                        dsn=args.dsn,
                        metrics_url=metrics_url,
                        connect_each=args.connect_each,
                        threads=args.threads,
                    )
                )
                case = f"{label} x{sessions}"
                print(f"{case} ({sessions * per_session} messages per run)")
                # What each server keeps once its sessions are gone and it has been idle a while.
                time.sleep(SETTLE_SECONDS)
                settled = {name: tree_memory(pids) for name, (_ports, pids) in servers.items()}
                for name, runs in results.items():
                    rate = statistics.median(r.rate for r in runs)
                    cpu = statistics.median(r.cpu_ms for r in runs)
                    p50 = statistics.median(r.percentile(50) for r in runs) * 1000
                    p95 = statistics.median(r.percentile(95) for r in runs) * 1000
                    peak = max((r.peak for r in runs), key=lambda m: m.pss)
                    print(
                        f"  {name:<11}{rate:>8.1f} msg/s  cpu {cpu:>6.2f} ms/msg  p50 {p50:>7.1f}  p95 {p95:>7.1f} ms"
                        f"  peak {peak}, {SETTLE_SECONDS:.0f} s after {settled[name]}"
                    )
                if metrics_url:
                    phases = [
                        f"{label} {statistics.median(r.phases[label] for r in results['relay']) * 1000:.1f}"
                        for _name, _labels, label in PHASES
                        if any(r.phases[label] for r in results["relay"])
                    ]
                    print(f"  relay, ms per message (medians): {', '.join(phases)}")
                if args.threads:
                    relay_runs = results["relay"]
                    kinds = sorted(
                        {k for r in relay_runs for k in r.threads}, key=lambda k: -relay_runs[0].threads.get(k, 0.0)
                    )
                    per_message = {
                        kind: statistics.median(r.threads.get(kind, 0.0) / r.messages for r in relay_runs) * 1000
                        for kind in kinds
                    }
                    spent = [f"{kind} {ms:.2f}" for kind, ms in per_message.items()]
                    print(f"  relay, CPU ms per message by thread (medians): {', '.join(spent)}")
                for base in (n for n in results if n != "relay"):
                    pairs = list(zip(results["relay"], results[base], strict=True))
                    ratios = [r.rate / b.rate for r, b in pairs]
                    cpu_ratios = [r.cpu_ms / max(b.cpu_ms, 1e-6) for r, b in pairs]
                    print(f"  relay / {base:<11} rate {spread(ratios, '.3f')}   cpu {spread(cpu_ratios, '.1f')}")
                sys.stdout.flush()
        finally:
            for process in [*relays[1:], *processes.values()]:
                # SIGINT: py-spy then writes its flame graph and stops the relay cleanly too.
                # The bare servers have nothing to finish.
                process.send_signal(signal.SIGINT if process in relays else signal.SIGTERM)
            for process in [*relays[1:], *processes.values()]:
                try:
                    process.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    process.kill()


if __name__ == "__main__":
    main()
