"""What counting metrics costs the relay: its throughput with metrics on and off.

Two relay processes (``python -m mss.relay``) share one database and one TLS certificate:
one with the default ``MSS_METRICS=true`` (every counter and pipeline-stage histogram
updated), one with ``MSS_METRICS=false`` (the instruments do nothing). The same client as
``bench_relay.py`` drives them one after the other, interleaved (on, off, then off, on ...)
so that drift of the machine's load falls on both; each repetition gives one ratio.

Usage::

    .venv/bin/python bench/bench_metrics.py                 # 10 KB x1 and x10, 5 repetitions
    .venv/bin/python bench/bench_metrics.py --reps 3 --only 10KBx1

Prints messages/s of each run, then per case the ratio throughput(on) / throughput(off) as
min / median / max over the repetitions (1.00: no measurable cost; 0.95: 5 % slower with
metrics). Last, in process, the time of the metric calls the pipeline makes for one
accepted message (``--calls``), on and off: a bound on the cost that the end-to-end ratio,
with its noise of a few per cent, cannot resolve.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import ssl
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(PROJECT_ROOT), str(PROJECT_ROOT / "bench"), str(PROJECT_ROOT / "tests")]

from bench_relay import SIZES, Load, Result, Sessions

from mss import metrics

from _support import bench_env, demo_installation
from server_process import free_port, start_server

CASES = {"10KBx1": ("10KB", 1, 100), "10KBx10": ("10KB", 10, 30)}


def one_message_of_metrics() -> None:
    """The metric calls made for an accepted message with one PDF to two recipients over
    SMTP: the DATA phases of the door, the wait for a message thread, the stages
    ``mss.pipeline.submit`` times and the counters it adds."""
    metrics.data_phase("smtp", "slot", 0.0)
    metrics.data_phase("smtp", "receive", 0.0)
    metrics.observe("queue", metrics.now())
    with metrics.stage("parse"):
        pass
    started = metrics.now()
    metrics.observe("check", started)
    with metrics.stage("sign"):
        pass
    with metrics.stage("encrypt"):
        pass
    started = metrics.now()
    metrics.observe("commit", started)
    metrics.accepted("smtp", delivered=2, failed=0, kinds=["pdf"])
    metrics.data_phase("smtp", "handle", 0.0)


async def drive(port: int, context: ssl.SSLContext, load: Load) -> Result:
    """The load's sessions log in to the relay on ``port`` (not timed), then send their
    messages; the timed run (no CPU figure)."""
    clients = Sessions([port], [], context, load, [])
    await clients.open(warm_up=False)
    result = await clients.run(load.messages(0))
    await clients.close()
    return result


def calls_cost(number: int = 20_000) -> dict[str, float]:
    """Microseconds of :func:`one_message_of_metrics`, metrics on and off (best of 5)."""
    cost = {}
    for mode in ("on", "off"):
        metrics.set_enabled(mode == "on")
        cost[mode] = min(timeit.repeat(one_message_of_metrics, number=number, repeat=5)) / number * 1e6
    metrics.set_enabled(True)
    return cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions of each case (at least 3)")
    parser.add_argument("--only", choices=sorted(CASES), action="append", help="run only these cases; repeatable")
    parser.add_argument("--calls", action="store_true", help="only the in-process cost of the metric calls")
    args = parser.parse_args()
    if args.calls:
        cost = calls_cost()
        print(f"metric calls of one message: on {cost['on']:.1f} us, off {cost['off']:.2f} us")
        return
    if args.reps < 3:
        parser.error("--reps must be at least 3")
    cases = {name: case for name, case in CASES.items() if not args.only or name in args.only}
    with tempfile.TemporaryDirectory(prefix="mss-bench-metrics-") as tmp:
        root = Path(tmp)
        ports = {"on": free_port(), "off": free_port()}
        env = bench_env(root, MSS_SMTP_HOST="127.0.0.1")
        settings, demo = demo_installation(env)
        sender, recipients = demo[0], [d.address for d in demo[1:]]
        context = ssl.create_default_context(cafile=str(settings.pki.certs_dir / "ca.pem"))
        relays = {
            mode: start_server(
                [sys.executable, "-m", "mss.relay"],
                {**env, "MSS_SMTP_PORT": str(port), "MSS_METRICS": "true" if mode == "on" else "false"},
                root / f"relay-{mode}.log",
                port,
            )
            for mode, port in ports.items()
        }
        backend = settings.storage.database_url.split(":")[0]
        print(
            f"# {time.strftime('%Y-%m-%d')} {platform.node()} {platform.processor() or platform.machine()} "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {backend}, {args.reps} repetitions"
        )

        def run(mode: str, size: int, sessions: int, per_session: int) -> float:
            load = Load(sender, recipients, size, sessions, per_session)
            return asyncio.run(drive(ports[mode], context, load)).rate

        summary = []
        try:
            for name, (label, sessions, per_session) in cases.items():
                size = SIZES[label]
                for mode in ports:  # warm-up: one message per session on each
                    run(mode, size, sessions, 1)
                ratios = []
                for rep in range(args.reps):
                    order = ("on", "off") if rep % 2 == 0 else ("off", "on")
                    rates = {mode: run(mode, size, sessions, per_session) for mode in order}
                    ratios.append(rates["on"] / rates["off"])
                    print(
                        f"{name:<9} rep {rep + 1}: on {rates['on']:6.1f} msg/s  off {rates['off']:6.1f} msg/s"
                        f"  ratio {ratios[-1]:.3f}",
                        flush=True,
                    )
                summary.append((name, ratios))
        finally:
            for process in relays.values():
                process.send_signal(signal.SIGINT)
                process.wait(timeout=120)
        print(f"{'case':<9}{'on/off min':>12}{'median':>8}{'max':>7}")
        for name, ratios in summary:
            print(f"{name:<9}{min(ratios):>12.3f}{statistics.median(ratios):>8.3f}{max(ratios):>7.3f}")
        cost = calls_cost()
        print(f"metric calls of one message: on {cost['on']:.1f} us, off {cost['off']:.2f} us")


if __name__ == "__main__":
    main()
