"""Serving the web inbox: uvicorn over HTTPS, or plain HTTP behind a TLS-terminating proxy.

HTTPS uses ``<certs_dir>/server.pem`` (certificate and chain) and ``server.key`` on
``MSS_WEB_HOST:MSS_WEB_PORT`` (8443), TLS 1.2 at least. With ``MSS_WEB_BEHIND_TLS_PROXY``
it serves plain HTTP and trusts ``X-Forwarded-*`` from the proxy address only (loopback
unless ``FORWARDED_ALLOW_IPS`` says otherwise); the browser still sees HTTPS, so cookies
stay ``Secure``. ``serve_web`` runs until cancelled; signals belong to the caller
(``mss serve``), which may run the SMTP relay in the same event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Iterator

import uvicorn

from mss.background import to_the_end
from mss.documents import workers
from mss.errors import ConfigError
from mss.runtime import Runtime
from mss.web.app import create_app
from mss.web.publication import create_publication_app

log = logging.getLogger("mss.web")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """No signal handling here: the caller owns the signals."""
        # mss serve installs its own handlers and cancels us; uvicorn must not take them.
        yield


def uvicorn_config(rt: Runtime) -> uvicorn.Config:
    """The uvicorn configuration for ``rt``'s web settings. Raises ConfigError."""
    settings = rt.settings
    options: dict[str, object] = {
        "host": settings.web.host,
        "port": settings.web.port,
        "log_config": None,
        # No access log: query strings carry search words and patient INS. Errors are logged
        # by the app with their correlation id.
        "access_log": False,
        "server_header": False,
        "date_header": True,
        "lifespan": "on",
        "timeout_graceful_shutdown": 10,
    }
    if settings.web.behind_tls_proxy:
        options.update(proxy_headers=True)
    else:
        # Serving TLS ourselves: nobody in front of us may speak for the client.
        options.update(proxy_headers=False)
        cert = settings.pki.certs_dir / "server.pem"
        key = settings.pki.certs_dir / "server.key"
        if not cert.exists() or not key.exists():
            raise ConfigError(f"HTTPS needs {cert} and {key} (run `mss pki init` in development)")
        options.update(
            ssl_certfile=str(cert),
            ssl_keyfile=str(key),
            ssl_version=ssl.PROTOCOL_TLS_SERVER,
            ssl_ciphers="ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!MD5:!DSS",
        )
    # the options are uvicorn's own keyword arguments, built above
    return uvicorn.Config(create_app(rt), **options)  # type: ignore[arg-type]


async def serve_web(rt: Runtime, *, sock: socket.socket | None = None, started: asyncio.Event | None = None) -> None:
    """Serve the web inbox until cancelled.

    ``sock`` is an already bound listening socket to serve on instead of the configured
    address (tests bind port 0). ``started`` is set once connections are accepted.
    Raises ConfigError when the TLS material is missing.
    """
    config = uvicorn_config(rt)
    config.load()
    # The document checks' worker processes, ready before the first page needs them.
    await asyncio.to_thread(workers.start, rt.settings.relay.processes)
    if config.ssl is not None:
        config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
    scheme = "http" if rt.settings.web.behind_tls_proxy else "https"
    await _serve(config, sock=sock, started=started, what=f"web inbox on {scheme}://{rt.settings.web.host}")


async def serve_publication(
    rt: Runtime, *, sock: socket.socket | None = None, started: asyncio.Event | None = None
) -> None:
    """Serve the CRL and the CA certificate over plain HTTP (``MSS_PKI_HTTP_PORT``) until
    cancelled: the CRL distribution point written into issued certificates."""
    config = uvicorn.Config(
        create_publication_app(rt),
        host=rt.settings.pki.http_host,
        port=rt.settings.pki.http_port,
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    config.load()
    await _serve(config, sock=sock, started=started, what=f"CRL and CA on http://{rt.settings.pki.http_host}")


async def _serve(
    config: uvicorn.Config, *, sock: socket.socket | None, started: asyncio.Event | None, what: str
) -> None:
    server = _Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock] if sock is not None else None))
    try:
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if task.done():
            await task  # startup failed: raise its error
        if started is not None:
            started.set()
        log.info("%s:%s", what, sock.getsockname()[1] if sock else config.port)
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        await to_the_end(task)
        raise
