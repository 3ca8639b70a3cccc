"""Delivery between two operators: messages per second from operator A to operator B,
beside a bare aiosmtpd sink as the peer.

Operator A (chu-demo.mss.test) runs here: its queue is filled through the real pipeline
(``pipeline.submit``: sign with the sender's key, queue entry committed with the message),
then its delivery worker (``mss.outbound.worker``, ``MSS_DELIVERY_CONCURRENCY`` at once) is
started and timed until the queue is empty. The peer is, in turn:

- **mss**: operator B (medecin.mss.test) as ``mss serve relay`` in its own process: STARTTLS
  with the client certificate checked, trust list and directory checks at MAIL and RCPT,
  the signature verified against A's CA and CRL, the message encrypted to its recipient and
  committed with its receipts and audit events before ``250``;
- **sink**: a bare aiosmtpd server in its own process with the same TLS context (client
  certificate required against the same CAs), whose DATA handler only answers ``250``.

Rounds are interleaved (sink, mss, mss, sink, ...) so that a change in the machine's load
hits both; each round gives the ratio mss / sink of the two rates next to each other.

Usage::

    .venv/bin/python bench/bench_federation.py                # 3 rounds of 150 messages, 10 KB
    .venv/bin/python bench/bench_federation.py --rounds 5 --messages 300 --size 100000

Settings are the defaults (RSA 3072 user keys, SQLite WAL with synchronous=FULL in a
temporary folder, 4 deliveries at once) unless given on the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(PROJECT_ROOT), str(PROJECT_ROOT / "bench"), str(PROJECT_ROOT / "tests")]

from sqlalchemy import func, select

from directory.importer import import_extract
from mss import accounts, pipeline, trust
from mss.crypto import pki
from mss.db import session_scope
from mss.demo import DEMO_EXTRACT
from mss.models import Outbound
from mss.outbound.worker import DeliveryWorker
from mss.relay.tls import mx_server_context
from mss.runtime import Runtime, open_runtime
from mss.settings import Settings
from mss.web.server import serve_publication

from _support import bench_env, referral, serve_bare_smtp
from server_process import free_port, start_server
from task_thread import TaskThread

A_DOMAIN, B_DOMAIN = "chu-demo.mss.test", "medecin.mss.test"
SENDER, RECIPIENT = "marc.robert@chu-demo.mss.test", "eloise.fournier@medecin.mss.test"
PASSWORD = "bench password 2026"


# -- the bare sink (its own process, with --sink) ----------------------------------------------


def sink() -> None:
    """aiosmtpd with the MX's TLS context (client certificate required), 250 for everything."""
    settings = Settings.from_env()

    class Accept:
        async def handle_MAIL(self, server, session, envelope, address, options):
            if not session.ssl or not session.ssl["ssl_object"].getpeercert():
                return "530 5.7.0 A client certificate is required"
            envelope.mail_from = address
            return "250 2.1.0 Sender OK"

        async def handle_DATA(self, server, session, envelope):
            return "250 2.0.0 Ok: queued"

    serve_bare_smtp(Accept(), mx_server_context(settings), settings.federation.mx_port, settings.relay.max_message_size)


# -- setting up two operators ----------------------------------------------------------------------


def operator_env(root: Path, domain: str, ports: dict[str, int]) -> dict[str, str]:
    return bench_env(
        root,
        MSS_RECOVERY_KEY_OUT=str(root / "offline" / "recovery.key"),
        MSS_DOMAINS=domain,
        MSS_SMTP_HOST="127.0.0.1",
        MSS_SMTP_PORT=str(ports["smtp"]),
        MSS_MX_HOST="127.0.0.1",
        MSS_MX_PORT=str(ports["mx"]),
        MSS_PKI_HTTP_PORT=str(ports["pki"]),
        MSS_CRL_URL=f"http://127.0.0.1:{ports['pki']}/pki/ca.crl",
        MSS_PEER_CA_FILE=str(root / "peers-ca.pem"),
        MSS_RETRY_MIN="1s",
        MSS_QUEUE_POLL="0.2s",
    )


def make_operator(root: Path, domain: str, address: str, ports: dict[str, int]) -> tuple[dict[str, str], Runtime]:
    env = operator_env(root, domain, ports)
    settings = Settings.from_env(env)
    pki.init_dev_pki(settings)
    rt = open_runtime(settings)
    import_extract(rt.engine, DEMO_EXTRACT, actor="bench")
    with session_scope(rt.engine) as session:
        accounts.create_account(session, settings, rt.master_key, address, PASSWORD, actor="bench")
    return env, rt


# -- one round ---------------------------------------------------------------------------------


def fill(rt: Runtime, sender: accounts.UnlockedAccount, count: int, size: int, first: int) -> None:
    for number in range(first, first + count):
        pipeline.submit(
            rt,
            pipeline.Submission(
                sender=sender,
                recipients=(pipeline.RecipientRequest(RECIPIENT),),
                raw=referral(
                    SENDER, [RECIPIENT], size, number, message_id=f"<fed-{number}-{time.time_ns()}@chu-demo.mss.test>"
                ),
                channel="smtp",
            ),
        )


def waiting(rt: Runtime) -> int:
    with session_scope(rt.engine, readonly=True) as session:
        return int(
            session.execute(select(func.count()).select_from(Outbound).where(Outbound.state == "queued")).scalar_one()
        )


def drain(rt: Runtime, count: int) -> float:
    """Run a delivery worker until nothing is queued; return messages per second."""

    async def main() -> float:
        worker = asyncio.ensure_future(DeliveryWorker(rt, name="bench").run())
        started = time.perf_counter()
        while await asyncio.to_thread(waiting, rt):
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        return count / elapsed

    return asyncio.run(main())


def route(rt: Runtime, port: int) -> None:
    with session_scope(rt.engine) as session:
        trust.set_route(session, rt.settings, B_DOMAIN, f"127.0.0.1:{port}", actor="bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per peer (interleaved)")
    parser.add_argument("--messages", type=int, default=150, help="messages per round")
    parser.add_argument("--size", type=int, default=10_000, help="bytes per message on the wire")
    parser.add_argument("--concurrency", type=int, default=4, help="MSS_DELIVERY_CONCURRENCY")
    args = parser.parse_args()
    if args.sink:
        sink()
        return

    with tempfile.TemporaryDirectory(prefix="mss-bench-federation-") as tmp:
        root = Path(tmp)
        a_ports = {"smtp": free_port(), "mx": free_port(), "pki": free_port()}
        b_ports = {"smtp": free_port(), "mx": free_port(), "pki": free_port()}
        sink_port = free_port()
        a_env, a = make_operator(root / "a", A_DOMAIN, SENDER, a_ports)
        b_env, b = make_operator(root / "b", B_DOMAIN, RECIPIENT, b_ports)
        a_ca, b_ca = (Path(env["MSS_CERTS_DIR"]) / "ca.pem" for env in (a_env, b_env))
        (root / "a" / "peers-ca.pem").write_bytes(a_ca.read_bytes() + b_ca.read_bytes())
        (root / "b" / "peers-ca.pem").write_bytes(b_ca.read_bytes() + a_ca.read_bytes())
        with session_scope(a.engine) as session:
            trust.add(session, a.settings, B_DOMAIN, actor="bench")
        with session_scope(b.engine) as session:
            trust.add(session, b.settings, A_DOMAIN, actor="bench")
            trust.set_route(session, b.settings, A_DOMAIN, f"127.0.0.1:{a_ports['mx']}", actor="bench")
        b.close()
        federation = a.settings.federation
        a = Runtime(
            settings=a.settings.with_changes(federation=replace(federation, delivery_concurrency=args.concurrency)),
            engine=a.engine,
            master_key=a.master_key,
        )
        sender = accounts.authenticate(a.engine, a.settings, SENDER, PASSWORD, accounts.Origin("cli"))
        # A's CRL publication: B fetches it to check A's signatures.
        publication = TaskThread(lambda ready: serve_publication(a, started=ready), name="publication").start()
        peer = start_server(
            [str(Path(sys.executable).with_name("mss")), "serve", "relay"], b_env, root / "b.log", b_ports["mx"]
        )
        bare = start_server(
            [sys.executable, __file__, "--sink"], {**b_env, "MSS_MX_PORT": str(sink_port)}, root / "sink.log", sink_port
        )
        print(
            f"# {time.strftime('%Y-%m-%d')} {platform.node()} {platform.processor() or platform.machine()} "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"{args.messages} messages of {args.size} bytes per round, {args.concurrency} deliveries at once"
        )
        rates: dict[str, list[float]] = {"sink": [], "mss": []}
        number = 0
        try:
            # Warm-up: one small batch to each (TLS session set-up, the CRL fetched by B).
            for port in (sink_port, b_ports["mx"]):
                route(a, port)
                fill(a, sender, 4, args.size, number)
                number += 4
                drain(a, 4)
            for round_number in range(args.rounds):
                order = [("sink", sink_port), ("mss", b_ports["mx"])]
                if round_number % 2:
                    order.reverse()
                for name, port in order:
                    route(a, port)
                    fill(a, sender, args.messages, args.size, number)
                    number += args.messages
                    rate = drain(a, args.messages)
                    rates[name].append(rate)
                    print(f"round {round_number + 1} {name:>4}: {rate:7.1f} msg/s", flush=True)
        finally:
            publication.stop()
            for process in (peer, bare):
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=120)
        ratios = [m / s for m, s in zip(rates["mss"], rates["sink"], strict=True)]
        print(
            f"sink msg/s min/median/max: {min(rates['sink']):.1f} / {statistics.median(rates['sink']):.1f} / "
            f"{max(rates['sink']):.1f}"
        )
        print(
            f"mss  msg/s min/median/max: {min(rates['mss']):.1f} / {statistics.median(rates['mss']):.1f} / "
            f"{max(rates['mss']):.1f}"
        )
        print(
            f"mss / sink ratio min/median/max: {min(ratios):.0%} / {statistics.median(ratios):.0%} / {max(ratios):.0%}"
        )


if __name__ == "__main__":
    main()
