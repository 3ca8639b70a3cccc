"""Relay throughput and latency, against a bare aiosmtpd server on the same machine.

Both servers run as their own process with the same TLS certificate and suites: the relay
(``python -m mss.relay``: STARTTLS, AUTH with argon2id, directory checks, document checks,
S/MIME sign + encrypt, durable commit with receipts and audit) and a bare aiosmtpd server
(STARTTLS, any AUTH accepted, a DATA handler that only answers 250). The same aiosmtplib
client drives both: each session does STARTTLS and AUTH once, then sends its messages one
after the other; the timed window starts when every session is logged in.

Usage::

    .venv/bin/python bench/bench_relay.py            # 10 KB and 1 MB, 1 and 10 sessions
    .venv/bin/python bench/bench_relay.py --quick    # fewer messages

Prints messages/s, latency p50/p95 and the relay/bare throughput ratio for each case.
Settings are the defaults (argon2id moderate, RSA 3072 user keys, SQLite WAL with
synchronous=FULL in a temporary folder) unless ``MSS_DATABASE_URL`` names another database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from mss.demo import load_demo  # noqa: E402
from mss.runtime import open_runtime  # noqa: E402
from mss.settings import Settings  # noqa: E402

SIZES = {"10KB": 10_000, "1MB": 1_000_000}


def pdf_of_size(size: int) -> bytes:
    """A valid one-page PDF of about ``size`` bytes (the page content is padded with comments)."""
    line = b"% padding of the page content\n"
    content = line * max(1, size // len(line))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def referral(sender: str, recipients: list[str], size: int, number: int) -> bytes:
    """A message of about ``size`` bytes on the wire: a short letter and a PDF."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = f"Compte rendu {number}"
    msg["Message-ID"] = f"<bench-{number}-{time.time_ns()}@client.test>"
    msg.set_content("Bonjour,\nci-joint le compte rendu.\nBien confraternellement.\n")
    # base64 adds a third; headers and the body take about 1 KB.
    msg.add_attachment(
        pdf_of_size(max(1000, (size - 1200) * 3 // 4)),
        maintype="application",
        subtype="pdf",
        filename="compte-rendu.pdf",
    )
    return msg.as_bytes()


# -- the bare server (run in its own process with --bare-server) --------------------------


def bare_server() -> None:
    """aiosmtpd with our TLS context, any AUTH accepted, 250 for every message."""
    from aiosmtpd.smtp import SMTP, AuthResult

    from mss.relay.tls import server_context

    settings = Settings.from_env()

    class Accept:
        async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
            return "250 2.0.0 Ok: queued"

    def accept_any(server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
        return AuthResult(success=True)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        context = server_context(settings)
        server = await loop.create_server(
            lambda: SMTP(
                Accept(),
                tls_context=context,
                require_starttls=True,
                auth_required=True,
                authenticator=accept_any,
                data_size_limit=settings.relay.max_message_size,
                hostname="localhost",
                loop=loop,
            ),
            host="127.0.0.1",
            port=settings.relay.port,
        )
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# -- the client ----------------------------------------------------------------------------


@dataclass
class Result:
    messages: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def drive(
    port: int,
    ca_file: Path,
    sender: str,
    password: str,
    recipients: list[str],
    *,
    size: int,
    sessions: int,
    per_session: int,
) -> Result:
    import ssl

    context = ssl.create_default_context(cafile=str(ca_file))
    messages = [referral(sender, recipients, size, n) for n in range(sessions * per_session)]
    clients = []
    for _ in range(sessions):
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, tls_context=context, timeout=300)
        await client.connect()
        await client.login(sender, password)
        clients.append(client)
    latencies: list[float] = []

    async def run(index: int, client: aiosmtplib.SMTP) -> None:
        for n in range(per_session):
            raw = messages[index * per_session + n]
            started = time.perf_counter()
            errors, _ = await client.sendmail(sender, recipients, raw)
            latencies.append(time.perf_counter() - started)
            if errors:
                raise RuntimeError(f"recipients refused: {errors}")

    started = time.perf_counter()
    await asyncio.gather(*(run(i, c) for i, c in enumerate(clients)))
    elapsed = time.perf_counter() - started
    for client in clients:
        await client.quit()
    return Result(messages=len(latencies), seconds=elapsed, latencies=latencies)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        process = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=out, stderr=out)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{command} exited: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{command} did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bare-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="fewer messages per case")
    parser.add_argument(
        "--only",
        choices=sorted(f"{s}x{c}" for s in SIZES for c in (1, 10)),
        action="append",
        help="run only these cases (e.g. 10KBx1); repeatable",
    )
    parser.add_argument(
        "--py-spy",
        metavar="FILE",
        type=Path,
        help="run the relay under py-spy: a flame graph (SVG), or collapsed stacks for *.txt",
    )
    args = parser.parse_args()
    if args.bare_server:
        bare_server()
        return

    counts = {("10KB", 1): 100, ("10KB", 10): 30, ("1MB", 1): 30, ("1MB", 10): 6}
    if args.quick:
        counts = {key: max(2, value // 5) for key, value in counts.items()}
    if args.only:
        counts = {key: value for key, value in counts.items() if f"{key[0]}x{key[1]}" in args.only}
    with tempfile.TemporaryDirectory(prefix="mss-bench-relay-") as tmp:
        root = Path(tmp)
        relay_port, bare_port = free_port(), free_port()
        env = {
            **os.environ,
            "MSS_DATA_DIR": str(root / "data"),
            "MSS_CERTS_DIR": str(root / "certs"),
            "MSS_HOSTNAMES": "localhost,127.0.0.1",
            "MSS_SMTP_HOST": "127.0.0.1",
            "MSS_SMTP_PORT": str(relay_port),
        }
        settings = Settings.from_env(env)
        rt = open_runtime(settings)
        demo = load_demo(rt, actor="bench")
        rt.close()
        sender, recipients = demo[0], [d.address for d in demo[1:]]
        ca_file = settings.pki.certs_dir / "ca.pem"
        relay_command = [sys.executable, "-m", "mss.relay"]
        if args.py_spy:
            style = "raw" if args.py_spy.suffix == ".txt" else "flamegraph"
            py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            relay_command = [
                py_spy,
                "record",
                "--threads",
                "--format",
                style,
                "-o",
                str(args.py_spy),
                "--",
                *relay_command,
            ]
        relay = start(relay_command, env, relay_port, root / "relay.log")
        bare = start(
            [sys.executable, __file__, "--bare-server"],
            {**env, "MSS_SMTP_PORT": str(bare_port)},
            bare_port,
            root / "bare.log",
        )
        backend = settings.storage.database_url.split(":")[0]
        print(
            f"# {time.strftime('%Y-%m-%d')} {platform.node()} {platform.processor() or platform.machine()} "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {backend}"
        )
        print(
            f"{'case':<14}{'bare msg/s':>11}{'relay msg/s':>12}{'ratio':>7}"
            f"{'bare p50/p95 ms':>18}{'relay p50/p95 ms':>19}"
        )
        try:
            for (label, sessions), per_session in counts.items():
                size = SIZES[label]
                results = {}
                for name, port in (("bare", bare_port), ("relay", relay_port)):
                    # One warm-up message per session, then the timed run.
                    asyncio.run(
                        drive(
                            port,
                            ca_file,
                            sender.address,
                            sender.password,
                            recipients,
                            size=size,
                            sessions=sessions,
                            per_session=1,
                        )
                    )
                    results[name] = asyncio.run(
                        drive(
                            port,
                            ca_file,
                            sender.address,
                            sender.password,
                            recipients,
                            size=size,
                            sessions=sessions,
                            per_session=per_session,
                        )
                    )
                b, r = results["bare"], results["relay"]
                print(
                    f"{label + ' x' + str(sessions):<14}{b.rate:>11.1f}{r.rate:>12.1f}{r.rate / b.rate:>7.0%}"
                    f"{b.percentile(50) * 1000:>9.1f}/{b.percentile(95) * 1000:<8.1f}"
                    f"{r.percentile(50) * 1000:>10.1f}/{r.percentile(95) * 1000:<8.1f}"
                )
        finally:
            for process in (relay, bare):
                # SIGINT: py-spy then writes its flame graph and stops the relay cleanly too.
                process.send_signal(signal.SIGINT)
                process.wait(timeout=120)


if __name__ == "__main__":
    main()
