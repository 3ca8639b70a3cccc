"""A burst of logins at the relay: memory and time of sessions that log in at once, against
the same sessions logging in one after the other.

Each SMTP login checks the password (argon2id) and opens the account's key (argon2id
again), each computation holding its memory cost (64 MiB by default) while it runs. The
relay (``python -m mss.relay``, default settings) runs in its own process; the client opens
``--sessions`` TLS sessions (STARTTLS, AUTH PLAIN) either all at once or one after the
other, then closes them. The two kinds alternate within each round (the order swaps from
one round to the next), on the same relay. For each kind: the logins per second, the time
from connecting to the end of AUTH (p50, p95), and the relay's memory at its peak during
the logins (its process tree's proportional set size, as ``bench_relay.py`` reads it),
then the ratios at once / one after the other of each round as min / median / max.

Usage::

    .venv/bin/python bench/bench_logins.py                 # 16 sessions, 5 rounds
    .venv/bin/python bench/bench_logins.py --sessions 32 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(PROJECT_ROOT), str(PROJECT_ROOT / "tests")]

from bench_relay import Memory, PeakMemory, tree_memory

from mss.demo import DemoAccount

from _support import bench_env, demo_installation, percentile, spread
from server_process import free_port, start_server

# Before a burst, the relay is left this long without a session (the memory of the last
# one given back) and its memory read.
REST_SECONDS = 2.0


@dataclass(frozen=True)
class Burst:
    seconds: float
    latencies: list[float]
    peak: Memory
    before: Memory

    def percentile(self, p: float) -> float:
        return percentile(self.latencies, p)


async def _log_in(port: int, context: ssl.SSLContext, account: DemoAccount) -> tuple[aiosmtplib.SMTP, float]:
    started = time.perf_counter()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, tls_context=context, timeout=600)
    await client.connect()
    await client.login(account.address, account.password)
    return client, time.perf_counter() - started


async def burst(
    port: int, pid: int, context: ssl.SSLContext, account: DemoAccount, sessions: int, *, at_once: bool
) -> Burst:
    await asyncio.sleep(REST_SECONDS)
    before = tree_memory([pid])
    started = time.perf_counter()
    with PeakMemory([pid]) as memory:
        if at_once:
            done = await asyncio.gather(*(_log_in(port, context, account) for _ in range(sessions)))
        else:
            done = [await _log_in(port, context, account) for _ in range(sessions)]
    seconds = time.perf_counter() - started
    for client, _latency in done:
        await client.quit()
    return Burst(seconds, [latency for _client, latency in done], memory.peak, before)


async def rounds(
    port: int, pid: int, ca_file: Path, account: DemoAccount, sessions: int, count: int
) -> dict[str, list[Burst]]:
    context = ssl.create_default_context(cafile=str(ca_file))
    kinds = ["at once", "one by one"]
    results: dict[str, list[Burst]] = {kind: [] for kind in kinds}
    await burst(port, pid, context, account, sessions, at_once=True)  # warm-up
    for number in range(count):
        for kind in kinds if number % 2 == 0 else kinds[::-1]:
            results[kind].append(await burst(port, pid, context, account, sessions, at_once=kind == "at once"))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=16, help="sessions that log in (default 16)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mss-bench-logins-") as tmp:
        root = Path(tmp)
        port = free_port()
        env = bench_env(
            root,
            MSS_SMTP_HOST="127.0.0.1",
            MSS_SMTP_PORT=str(port),
            MSS_MAX_SESSIONS_PER_CLIENT=str(max(64, args.sessions)),
        )
        settings, demo = demo_installation(env)
        relay = start_server([sys.executable, "-m", "mss.relay"], env, root / "relay.log", port)
        backend = settings.storage.database_url.split(":")[0]
        print(
            f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.node()} {platform.processor() or platform.machine()}, "
            f"Python {platform.python_version()}, {backend}, argon2id opslimit "
            f"{settings.security.argon2_opslimit} memlimit {settings.security.argon2_memlimit >> 20} MiB; "
            f"{args.sessions} sessions, {args.rounds} rounds; medians, ratios min / median / max"
        )
        try:
            results = asyncio.run(
                rounds(port, relay.pid, settings.pki.certs_dir / "ca.pem", demo[0], args.sessions, args.rounds)
            )
        finally:
            relay.send_signal(signal.SIGINT)
            try:
                relay.wait(timeout=120)
            except subprocess.TimeoutExpired:
                relay.kill()
        for kind, bursts in results.items():
            rate = statistics.median(args.sessions / b.seconds for b in bursts)
            p50 = statistics.median(b.percentile(50) for b in bursts) * 1000
            p95 = statistics.median(b.percentile(95) for b in bursts) * 1000
            peak = statistics.median(b.peak.pss for b in bursts)
            before = statistics.median(b.before.pss for b in bursts)
            peaks = ", ".join(f"{b.peak.pss:.0f}" for b in bursts)
            print(
                f"  {kind:<11} {rate:6.1f} logins/s  p50 {p50:7.1f}  p95 {p95:7.1f} ms"
                f"  relay tree {before:.0f} MiB before, peak {peak:.0f} MiB (peaks {peaks})"
            )
        pairs = list(zip(results["at once"], results["one by one"], strict=True))
        print(
            f"  at once / one by one  rate {spread([b.seconds / a.seconds for a, b in pairs])}"
            f"   peak memory {spread([a.peak.pss / b.peak.pss for a, b in pairs])}"
        )


if __name__ == "__main__":
    main()
