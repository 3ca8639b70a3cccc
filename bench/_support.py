"""What the benchmarks share: the environment of an mss in a temporary folder, its demo
accounts, the letters they send, a bare aiosmtpd server (the baseline the relay and the MX
are compared with), and rounds that interleave a measure with its baseline.

A benchmark puts the checkout and its ``tests`` folder first on ``sys.path`` before it
imports this module (the free ports, server processes and sample documents of the tests
serve the benchmarks too).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP

from mss.demo import DemoAccount, load_demo
from mss.runtime import open_runtime
from mss.settings import Settings

from document_samples import pdf_of_size


def bench_env(root: Path, **settings: str) -> dict[str, str]:
    """The environment of an mss whose data and certificates are in ``root``, on loopback,
    with default settings but ``settings`` (``MSS_*`` variables)."""
    return {
        **os.environ,
        "MSS_DATA_DIR": str(root / "data"),
        "MSS_CERTS_DIR": str(root / "certs"),
        "MSS_HOSTNAMES": "localhost,127.0.0.1",
        **settings,
    }


def demo_installation(env: dict[str, str]) -> tuple[Settings, list[DemoAccount]]:
    """The demo directory and accounts in the database of ``env`` (the development PKI made
    if there is none); its settings and the accounts' credentials."""
    settings = Settings.from_env(env)
    rt = open_runtime(settings)
    demo = load_demo(rt, actor="bench")
    rt.close()
    return settings, demo


def letter(
    sender: str,
    recipients: Sequence[str],
    number: int,
    attachment: tuple[str, str, bytes],
    *,
    message_id: str,
    body: str = "Bonjour,\nci-joint le compte rendu.\nBien confraternellement.\n",
) -> bytes:
    """ "Compte rendu ``number``": a short text and one attachment ``(filename, type, bytes)``."""
    filename, content_type, data = attachment
    maintype, subtype = content_type.split("/")
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = f"Compte rendu {number}"
    msg["Message-ID"] = message_id
    msg.set_content(body)
    msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


def referral(sender: str, recipients: Sequence[str], size: int, number: int, *, message_id: str = "") -> bytes:
    """A message of about ``size`` bytes on the wire: a short letter and a PDF."""
    # base64 adds a third; headers and the body take about 1 KB.
    pdf = pdf_of_size(max(1000, (size - 1200) * 3 // 4))
    message_id = message_id or f"<bench-{number}-{time.time_ns()}@client.test>"
    return letter(sender, recipients, number, ("compte-rendu.pdf", "application/pdf", pdf), message_id=message_id)


def serve_bare_smtp(
    handler: object,
    context: ssl.SSLContext,
    port: int,
    data_size_limit: int,
    *,
    server_class: type[SMTP] = SMTP,
    **options: Any,
) -> None:
    """aiosmtpd (``server_class``) with ``handler`` on 127.0.0.1:``port``, STARTTLS required
    with ``context``, until the process is stopped. ``options`` go to the server (AUTH)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: server_class(
                handler,
                tls_context=context,
                require_starttls=True,
                data_size_limit=data_size_limit,
                hostname="localhost",
                loop=loop,
                **options,
            ),
            host="127.0.0.1",
            port=port,
        )
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def interleaved(measures: Mapping[str, Callable[[], float]], rounds: int) -> list[dict[str, float]]:
    """Each of ``measures`` once a round, for ``rounds`` rounds, in an order reversed every
    round (none always runs first); what each returned, round by round."""
    kinds = list(measures)
    results = []
    for number in range(rounds):
        order = kinds if number % 2 == 0 else kinds[::-1]
        results.append({kind: measures[kind]() for kind in order})
    return results


def against_baseline(label: str, baseline: str, measures: Mapping[str, Callable[[], float]], rounds: int) -> str:
    """``measures``, the baseline and the one measured against it (each times a batch and
    returns its figure), once each to warm up, then ``interleaved``: a line with each one's
    median and the ratio measured / baseline of each round as min / median / max."""
    for measure in measures.values():
        measure()
    results = interleaved(measures, rounds)
    (measured,) = (kind for kind in measures if kind != baseline)
    medians = "  ".join(f"{kind} {statistics.median(r[kind] for r in results):7.2f}" for kind in measures)
    return f"{label:<13} {medians}  ratio {spread([r[measured] / r[baseline] for r in results])}"


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile of ``values`` (0 to 100), the nearest of them."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def spread(values: Sequence[float], fmt: str = ".3f") -> str:
    """min / median / max of ``values``."""
    return " / ".join(format(v, fmt) for v in (min(values), statistics.median(values), max(values)))
