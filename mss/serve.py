"""``python -m mss.serve [relay|web|imap|all]``: the service's parts, run in this process
until SIGTERM or Ctrl-C.

``mss serve`` checks its argument and the settings, then gives its process over to this
module (``os.execv``: the same process id, so a supervisor sees no difference). A service
runs for months: it then holds none of the command line's modules (Typer, rich and every
command, about 6 MiB), and a part's modules are imported only when that part runs.

Imported by each of the service's worker processes too (multiprocessing sets up their
``__main__`` from it): at its top it imports the standard library and ``mss.errors`` only.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Final

from mss.errors import MssError

PARTS: Final = ("all", "relay", "web", "imap")


def say(line: str) -> None:
    """One line for the operator on standard error (what listens where)."""
    print(line, file=sys.stderr, flush=True)


def run(what: str) -> None:
    """Serve ``what`` (one of ``PARTS``) until SIGTERM or Ctrl-C; each part drains first."""
    from mss import logs
    from mss.health import startup_warnings
    from mss.runtime import open_runtime
    from mss.settings import Settings

    settings = Settings.from_env()
    logs.configure(settings.operator.log_format)
    rt = open_runtime(settings)
    for warning in startup_warnings(rt):
        logging.getLogger("mss").warning(warning)

    async def main_loop() -> None:
        # A part's modules are imported when it runs, not before: a process that serves the
        # relay alone then holds none of the web door's (about 11 MiB) or the IMAP door's
        # (6), nor the MX door's (11) while that door is off.
        parts = []
        doors: list[asyncio.Event] = []

        def listening() -> asyncio.Event:
            doors.append(asyncio.Event())
            return doors[-1]

        if what in {"all", "relay"}:
            from mss.relay import serve_relay

            submission = listening()
            parts.append(serve_relay(rt, ready=submission))
            say(f"mss relay: SMTP submission on {settings.relay.host}:{settings.relay.port} (STARTTLS, then AUTH)")
            if settings.relay.processes > 1:
                from mss.relay.replicas import serve_replicas

                parts.append(serve_replicas(settings.relay.processes - 1, after=submission))
                say(f"mss relay: {settings.relay.processes} processes share the submission port")
            federation = settings.federation
            if federation.mx_port:
                from mss.relay.mx import serve_mx

                parts.append(serve_mx(rt, ready=listening()))
                say(
                    f"mss mx: mail from other operators on {federation.mx_host}:{federation.mx_port}"
                    " (STARTTLS with a client certificate)"
                )
            if federation.delivery_concurrency:
                from mss.outbound.worker import serve_outbound

                parts.append(serve_outbound(rt))
                say(f"mss outbound: delivering to other operators, {federation.delivery_concurrency} at once")
        if what in {"all", "web"}:
            from mss.web.server import serve_publication, serve_web

            parts.append(serve_web(rt, started=listening()))
            scheme = "http" if settings.web.behind_tls_proxy else "https"
            say(f"mss web: inbox on {scheme}://{settings.web.host}:{settings.web.port}/")
            if settings.pki.http_port:
                parts.append(serve_publication(rt))
                say(
                    f"mss pki: CRL on http://{settings.pki.http_host}:{settings.pki.http_port}/pki/ca.crl"
                    f" (certificates name {settings.pki.crl_url}), S/MIME certificates under /pki/certificates/"
                )
        if what in {"all", "imap"}:
            from mss.imap.server import serve_imap

            parts.append(serve_imap(rt, ready=listening()))
            imaps = f", implicit TLS on {settings.imap.tls_port}" if settings.imap.tls_port else ""
            say(f"mss imap: IMAP on {settings.imap.host}:{settings.imap.port} (STARTTLS, then LOGIN){imaps}")
        metrics_server = None
        if settings.operator.metrics_enabled and settings.operator.metrics_port:
            from mss import metrics

            metrics_server = metrics.start_server(
                rt.engine, settings.operator.metrics_host, settings.operator.metrics_port
            )
            say(f"mss metrics: http://{settings.operator.metrics_host}:{metrics_server.port}/metrics")
        if what in {"all", "relay"}:
            from mss import housekeeping

            parts.append(housekeeping.run(rt))
            if settings.webhook.enabled:
                from mss.webhooks.sender import serve_webhooks, where

                parts.append(serve_webhooks(rt))
                say(f"mss webhook: final statuses to {where(settings.webhook.url)}")
        from mss.background import settle_once_listening

        tasks = [asyncio.ensure_future(part) for part in parts]
        # Not one of the parts: a door that fails to start never listens, and the process
        # must still end with its error.
        settling = asyncio.ensure_future(settle_once_listening(doors))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: [task.cancel() for task in tasks])
        # Each part drains on its own (the relay lets sessions that are storing reply);
        # waiting for all of them keeps one from being cut off by the other's exit. A part
        # that fails (a door that cannot listen) stops the others: the process then ends
        # with its error rather than run on without that door.
        try:
            done, _running = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            if any(not task.cancelled() and task.exception() is not None for task in done):
                for task in tasks:
                    task.cancel()
            for result in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                    raise result
        finally:
            settling.cancel()
            if metrics_server is not None:
                metrics_server.close()

    asyncio.run(main_loop())


def main(argv: list[str] | None = None) -> None:
    """The module's entry point: one optional argument, the part (``all`` by default); an
    ``MssError`` ends the process with one line on standard error and status 1, as the
    command line does."""
    args = sys.argv[1:] if argv is None else argv
    what = args[0] if args else "all"
    if len(args) > 1 or what not in PARTS:
        sys.exit(f"usage: python -m mss.serve [{'|'.join(PARTS)}]")
    try:
        run(what)
    except MssError as exc:
        print(f"error: {exc.message}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
