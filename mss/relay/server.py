"""Starting and stopping the submission relay: the listener, ``serve_relay`` and ``RelayServer``.

One listener serves many sessions on one event loop; blocking work (argon2id, directory
lookups, the pipeline) goes to worker threads, and document checks from there to worker
processes (``mss.documents.workers``). A process holds nothing that another relay
process would need: several can run side by side against one PostgreSQL database.

``serve_relay`` is what a relay process runs (``mss serve relay``, ``python -m mss.relay``);
``RelayServer`` runs the same listener on a background thread for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

from mss import cores
from mss.background import BackgroundServer, serve_until_cancelled, settle_once_listening
from mss.documents import workers
from mss.relay.handler import DoorHandler, RelayHandler
from mss.relay.protocol import COMMAND_CALL_LIMIT, RelaySMTP, SessionRegistry
from mss.relay.tls import server_context
from mss.runtime import Runtime

log = logging.getLogger("mss.relay")

# How long a stopping relay lets sessions that are storing a message finish and reply.
SHUTDOWN_GRACE: Final = 30.0
# Set in the environment of a process that another started to share its submission port
# (``mss.relay.replicas``): the process id of the one that started it.
PARENT_VARIABLE: Final = "MSS_SMTP_PARENT_PID"
# The greeting names no software or version.
IDENT: Final = "ESMTP"

S = TypeVar("S", bound=RelaySMTP)


def session_factory(
    smtp_class: type[S],
    handler: DoorHandler,
    rt: Runtime,
    registry: SessionRegistry,
    tls_context: ssl.SSLContext,
    **door: Any,
) -> Callable[[], S]:
    """A protocol factory for ``loop.create_server``: one ``smtp_class`` session per
    connection, all sharing ``handler``, with the rules of the wire both doors keep
    (STARTTLS first, the size limit, the idle timeout, the command limits) and ``door``'s
    own options (whether AUTH is required, and which mechanisms are offered)."""
    settings = rt.settings
    hostname = settings.pki.own_name

    def factory() -> S:
        return smtp_class(
            handler,
            rt=rt,
            registry=registry,
            hostname=hostname,
            ident=IDENT,
            tls_context=tls_context,
            require_starttls=True,
            auth_require_tls=True,
            data_size_limit=settings.relay.max_message_size,
            timeout=settings.relay.command_timeout,
            command_call_limit=dict(COMMAND_CALL_LIMIT),
            loop=asyncio.get_running_loop(),
            **door,
        )

    return factory


def messages_per_client(rt: Runtime) -> int:
    """The messages a server takes in at once from one client address (``DataSlots``): two
    per message thread, one in the pipeline and the next one arriving."""
    return 2 * rt.messages.size


def smtp_factory(rt: Runtime, registry: SessionRegistry) -> Callable[[], RelaySMTP]:
    """A protocol factory for ``loop.create_server``: one ``RelaySMTP`` per connection.

    Raises ConfigError when the TLS certificate cannot be loaded.
    """
    return session_factory(RelaySMTP, RelayHandler(rt), rt, registry, server_context(rt.settings), auth_required=True)


class Listener:
    """A listening relay socket and its sessions."""

    def __init__(self, server: asyncio.Server, registry: SessionRegistry) -> None:
        self.server = server
        self.registry = registry

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually bound (the port is chosen by the system when 0)."""
        host, port = self.server.sockets[0].getsockname()[:2]
        return host, port

    @classmethod
    async def bind(
        cls, factory: Callable[[], RelaySMTP], registry: SessionRegistry, *, host: str, port: int, shared: bool = False
    ) -> Listener:
        """Listen on ``host:port`` with sessions from ``factory``; ``shared``: with
        SO_REUSEPORT, beside the other processes of the port (only those of the same user
        can join). Raises OSError."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(factory, host=host, port=port, reuse_address=True, reuse_port=shared)
        return cls(server, registry)

    async def aclose(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop accepting, then drain the sessions (see ``SessionRegistry.drain``)."""
        self.server.close()
        await self.registry.drain(grace)
        await self.server.wait_closed()


async def start_listener(rt: Runtime, *, host: str, port: int) -> Listener:
    """Bind the relay on ``host:port`` and start accepting sessions. With
    ``MSS_SMTP_PROCESSES`` above one, the port is shared with the other processes
    (``mss.relay.replicas``) and this one holds its share of the session limits.

    Raises ConfigError (TLS material) and OSError (the address cannot be bound).
    """
    sessions, per_client = rt.settings.relay.session_share()
    registry = SessionRegistry(sessions, per_client, messages_per_client=messages_per_client(rt))
    loop = asyncio.get_running_loop()
    # Every session may have one blocking call in flight (argon2id, a directory lookup, the
    # pipeline waiting on a document check). asyncio's default pool has cpu_count + 4 threads:
    # a few sessions waiting on large documents would hold up everybody else's AUTH and RCPT.
    loop.set_default_executor(
        ThreadPoolExecutor(max_workers=sessions + 4, thread_name_prefix="mss-relay", initializer=cores.name_thread)
    )
    # The document checks' worker processes, ready before the first message needs them (with
    # several processes on the port, this one's share of them).
    await asyncio.to_thread(workers.start, rt.settings.relay.processes)
    shared = rt.settings.relay.processes > 1
    if shared and port and not os.environ.get(PARENT_VARIABLE):
        # The port is shared with this service's own processes only: first make sure that
        # nothing listens there yet (a socket without SO_REUSEPORT cannot bind beside one),
        # so that a second service started by mistake fails instead of taking a part.
        probe = await loop.create_server(asyncio.Protocol, host=host, port=port, reuse_address=True)
        probe.close()
        await probe.wait_closed()
    listener = await Listener.bind(smtp_factory(rt, registry), registry, host=host, port=port, shared=shared)
    log.info("relay listening on %s:%d", *listener.address)
    return listener


async def serve_relay(rt: Runtime, *, ready: asyncio.Event | None = None) -> None:
    """Serve SMTP submission on ``settings.relay.host:port`` until cancelled.

    ``ready`` is set once the socket listens. On cancellation the relay stops accepting and
    lets sessions that are storing a message reply first (up to ``SHUTDOWN_GRACE``).
    Raises ConfigError (TLS material) and OSError (the address cannot be bound).
    """
    settings = rt.settings.relay
    listener = await start_listener(rt, host=settings.host, port=settings.port)
    await serve_until_cancelled(listener.aclose, ready)


def run_relay(rt: Runtime) -> None:
    """Run ``serve_relay`` in this thread until SIGTERM or SIGINT; return after the drain."""

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)  # the drain runs to its end (to_the_end)
        listening = asyncio.Event()
        settled = asyncio.ensure_future(settle_once_listening([listening]))
        try:
            await serve_relay(rt, ready=listening)
        except asyncio.CancelledError:
            log.info("relay stopped")
        finally:
            settled.cancel()

    asyncio.run(main())


class RelayServer(BackgroundServer):
    """The relay on a background thread with its own event loop, for tests and benchmarks.

    ``with RelayServer(rt) as relay:`` listens on 127.0.0.1 with a free port
    (``relay.port``) until the block ends.
    """

    thread_name = "mss-relay"

    def __init__(self, rt: Runtime, *, host: str = "127.0.0.1", port: int = 0, grace: float = 5.0) -> None:
        super().__init__()
        self.rt = rt
        self.host = host
        self.port = port
        self.grace = grace
        self.registry: SessionRegistry | None = None

    async def listen(self) -> Callable[[], Awaitable[None]]:
        listener = await start_listener(self.rt, host=self.host, port=self.port)
        self.registry = listener.registry
        self.host, self.port = listener.address
        return lambda: listener.aclose(self.grace)
