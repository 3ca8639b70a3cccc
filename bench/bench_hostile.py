"""An ordinary message's latency while hostile documents are being checked, against an idle relay.

The relay runs as its own process (``python -m mss.relay``, default settings) with the demo
directory. One aiosmtplib session, logged in as one demo physician, sends ordinary
referrals (a short letter and a 10 KB PDF) one after the other and times each from MAIL to
the ``250``. Each repetition times a batch on the idle relay, then a batch while hostile
sessions (6 by default) of the other demo physician send, in a loop, messages that carry a
hostile document:

- ``attributes``: the example CDA with 40,000 attributes on one element (about 620 KB);
  before attributes were counted it took 10 s to check and held the event loop;
- ``elements``: a CDA with just under the element limit (99,000 line breaks in one narrative
  block), the costliest document that is still accepted;
- ``benign``: for comparison, an ordinary PDF of the same size (700 KB): what six sessions
  sending that much cost the ordinary message anyway.

The ratio of a repetition is the median latency under load over the median idle latency;
repetitions interleave idle and loaded batches, so that drift of the machine touches both.

Usage::

    .venv/bin/python bench/bench_hostile.py                    # every kind, 5 repetitions
    .venv/bin/python bench/bench_hostile.py --kind attributes --reps 3 --messages 5
    .venv/bin/python bench/bench_hostile.py --relay-source DIR # the relay of another checkout

Prints, per kind, the idle and loaded medians of each repetition, then min/median/max of the
ratios, and how the hostile messages were answered.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import platform
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiosmtplib

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(PROJECT_ROOT), str(PROJECT_ROOT / "bench"), str(PROJECT_ROOT / "tests")]

from _support import bench_env, demo_installation, letter, referral
from document_samples import LETTER, pdf_of_size, with_attributes
from server_process import free_port, start_server


def attribute_flood() -> bytes:
    return with_attributes(40_000)


def element_flood() -> bytes:
    sample = LETTER.read_bytes()
    start_at = sample.index(b"<text>") + len(b"<text>")
    return sample[:start_at] + b"<br/>" * 99_000 + sample[start_at:]


def benign_pdf() -> bytes:
    return pdf_of_size(700_000)


# kind: (the document, its file name, its MIME type)
HOSTILE = {
    "attributes": (attribute_flood, "cr.xml", "text/xml"),
    "elements": (element_flood, "cr.xml", "text/xml"),
    "benign": (benign_pdf, "courrier.pdf", "application/pdf"),
}


def hostile_message(sender: str, recipient: str, kind: str, number: int) -> bytes:
    build, filename, content_type = HOSTILE[kind]
    return letter(
        sender,
        [recipient],
        number,
        (filename, content_type, build()),
        message_id=f"<hostile-{number}-{time.time_ns()}@client.test>",
        body="Bonjour,\nci-joint le compte rendu.\n",
    )


async def session(port: int, context: ssl.SSLContext, sender: str, password: str) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, tls_context=context, timeout=600)
    await client.connect()
    await client.login(sender, password)
    return client


async def timed_batch(client: aiosmtplib.SMTP, sender: str, recipient: str, count: int) -> list[float]:
    latencies = []
    for number in range(count):
        raw = referral(sender, [recipient], 10_000, number)
        started = time.perf_counter()
        errors, _ = await client.sendmail(sender, [recipient], raw)
        latencies.append(time.perf_counter() - started)
        if errors:
            raise RuntimeError(f"the ordinary message was refused: {errors}")
    return latencies


async def hostile_loop(
    client: aiosmtplib.SMTP,
    sender: str,
    recipient: str,
    raw: bytes,
    stop: asyncio.Event,
    answers: collections.Counter[str],
) -> None:
    while not stop.is_set():
        try:
            await client.sendmail(sender, [recipient], raw)
            answers["250 accepted"] += 1
        except aiosmtplib.SMTPResponseException as refused:
            answers[f"{refused.code} {refused.message[:60]}"] += 1


async def run_kind(
    port: int, context: ssl.SSLContext, good, bad, kind: str, reps: int, messages: int, hostile_sessions: int
) -> None:
    """``good`` sends the ordinary messages to ``bad``, who sends the hostile ones back."""
    ordinary = await session(port, context, good.address, good.password)
    sender, recipient = good.address, bad.address
    await timed_batch(ordinary, sender, recipient, 2)  # warm-up
    hostile = [await session(port, context, bad.address, bad.password) for _ in range(hostile_sessions)]
    raw = hostile_message(bad.address, good.address, kind, 0)
    answers: collections.Counter[str] = collections.Counter()
    ratios = []
    print(f"\n{kind}: {len(raw) / 1000:.0f} KB messages from {hostile_sessions} sessions")
    print(f"{'rep':>4}{'idle p50 ms':>13}{'loaded p50 ms':>15}{'loaded max ms':>15}{'ratio':>8}")
    for rep in range(1, reps + 1):
        idle = await timed_batch(ordinary, sender, recipient, messages)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(hostile_loop(c, bad.address, good.address, raw, stop, answers)) for c in hostile]
        await asyncio.sleep(1.0)  # let the hostile messages reach the relay's checks
        loaded = await timed_batch(ordinary, sender, recipient, messages)
        stop.set()
        await asyncio.gather(*tasks)
        ratio = statistics.median(loaded) / statistics.median(idle)
        ratios.append(ratio)
        print(
            f"{rep:>4}{statistics.median(idle) * 1000:>13.1f}{statistics.median(loaded) * 1000:>15.1f}"
            f"{max(loaded) * 1000:>15.1f}{ratio:>8.2f}"
        )
    print(f"ratio loaded/idle: min {min(ratios):.2f}, median {statistics.median(ratios):.2f}, max {max(ratios):.2f}")
    for answer, count in answers.most_common():
        print(f"  hostile messages answered {answer!r}: {count}")
    for client in (ordinary, *hostile):
        await client.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=sorted(HOSTILE), action="append", help="hostile document (repeatable)")
    parser.add_argument("--reps", type=int, default=5, help="interleaved idle/loaded repetitions")
    parser.add_argument("--messages", type=int, default=10, help="ordinary messages per batch")
    parser.add_argument("--hostile-sessions", type=int, default=6)
    parser.add_argument("--relay-source", type=Path, help="run the relay from this checkout (before/after)")
    args = parser.parse_args()
    kinds = args.kind or ["attributes", "elements", "benign"]
    with tempfile.TemporaryDirectory(prefix="mss-bench-hostile-") as tmp:
        root = Path(tmp)
        port = free_port()
        env = bench_env(root, MSS_SMTP_HOST="127.0.0.1", MSS_SMTP_PORT=str(port))
        settings, demo = demo_installation(env)
        good, bad = demo[0], demo[1]
        context = ssl.create_default_context(cafile=str(settings.pki.certs_dir / "ca.pem"))
        source = (args.relay_source or PROJECT_ROOT).resolve()
        # The relay's ``mss`` package is the one of ``source``.
        relay = start_server([sys.executable, "-m", "mss.relay"], env, root / "relay.log", port, cwd=source)
        print(
            f"# {time.strftime('%Y-%m-%d')} {platform.node()} {platform.processor() or platform.machine()} "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}, relay from {source}"
        )
        try:
            for kind in kinds:
                asyncio.run(run_kind(port, context, good, bad, kind, args.reps, args.messages, args.hostile_sessions))
        finally:
            relay.terminate()
            relay.wait(timeout=120)


if __name__ == "__main__":
    main()
