"""The IMAP listeners: STARTTLS on ``MSS_IMAP_PORT``, implicit TLS on ``MSS_IMAPS_PORT``.

pymap parses IMAP4rev1 and writes its responses; this module gives it our rules at the
door and our limits on the wire:

- no login before TLS: on the STARTTLS port the capability says ``LOGINDISABLED`` and
  offers no ``AUTH=`` until STARTTLS, with the relay's TLS policy (``mss.relay.tls``);
- ``LOGIN`` and ``AUTHENTICATE PLAIN`` check the password with ``mss.accounts.authenticate``
  (channel ``imap``): the same lockout, throttle, audit and standing rules as every door;
- an authenticated session re-checks the account's standing (``mss.standing.check``)
  before every command, and at every poll while it IDLEs: a revocation, a disabled account
  or a revoked certificate ends it at the latest at its next command, or within
  ``MSS_IMAP_POLL_SECONDS`` while idling, with a ``BYE``;
- a FETCH of bodies reads ahead the FETCH commands of bodies the client already pipelined
  behind it (never waiting for the network, at most ``READ_AHEAD``), checks the standing
  once for all of them (each arrived before that check) and has their openings committed
  at once before anything is written; such a command, when its turn comes within
  ``STANDING_REUSE_SECONDS`` of that check, is not checked again;
- bounded memory: command lines up to ``LINE_LIMIT``, literals up to ``MSS_IMAP_MAX_LITERAL``
  (a larger one is refused before it is read), FETCH responses written one message at a
  time, a client that stops reading is cut after ``MSS_IMAP_TIMEOUT``; silent clients are
  logged out after ``MSS_IMAP_TIMEOUT`` and every login after ``MSS_IMAP_SESSION_SECONDS``;
  at most ``MSS_IMAP_MAX_SESSIONS`` connections per process, of which at most
  ``MSS_IMAP_MAX_SESSIONS_PER_CLIENT`` from one client address.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from argparse import Namespace
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, Final

from proxyprotocol.sock import SocketInfo
from pymap.concurrent import Subsystem
from pymap.config import BackendCapability, IMAPConfig
from pymap.context import connection_exit
from pymap.imap import IMAPConnection
from pymap.imap.state import ConnectionState
from pymap.parsing import Params, Space
from pymap.parsing.command import Command, CommandAuth, CommandNoArgs
from pymap.parsing.command.any import LogoutCommand
from pymap.parsing.command.select import FetchCommand
from pymap.parsing.commands import Commands, InvalidCommand
from pymap.parsing.exceptions import NotParseable
from pymap.parsing.primitives import Atom
from pymap.parsing.response import Response, ResponseBye, ResponseCode, ResponseNo, ResponseOk, UntaggedResponse
from pymap.parsing.specials.tag import Tag
from pymap.parsing.state import ParsingInterrupt, ParsingState
from pysasl import SASLAuth
from pysasl.mechanism.plain import PlainMechanism

from mss import accounts, standing
from mss.background import BackgroundServer, serve_until_cancelled
from mss.db import read_scope
from mss.errors import AccountLocked, BadCredentials, StandingError, TooManyAttempts
from mss.imap import replies, workers
from mss.imap.backend import MailSession, needs_body
from mss.places import Places
from mss.relay.tls import server_context
from mss.runtime import Runtime

log = logging.getLogger("mss.imap")

LINE_LIMIT: Final = 64 * 1024  # one command line (literals apart)
SSL_SHUTDOWN_TIMEOUT: Final = 1.0
_BAD_CHARSET: Final = b"[BADCHARSET]"  # the code pymap gives a CHARSET it cannot decode with
READ_AHEAD: Final = 64  # pipelined FETCH commands whose openings are committed at once
STANDING_REUSE_SECONDS: Final = 1.0  # a standing check covers the commands read ahead for so long
_LITERAL: Final = re.compile(rb"\{(\d{1,12})(\+?)\}\r?\n$")


class NamespaceCommand(CommandNoArgs, CommandAuth):
    """RFC 2342 ``NAMESPACE``: one personal namespace, no prefix, ``/`` as delimiter."""

    command = b"NAMESPACE"


class _Commands(Commands):
    """pymap's commands, where an argument its charset cannot decode (8-bit text in a
    SEARCH, without CHARSET or with one it does not fit) is a BAD command like any other
    that does not parse, not a server error that ends the connection."""

    def parse(self, buf: memoryview, params: Params) -> tuple[Command, memoryview]:
        try:
            return super().parse(buf, params)
        except UnicodeError:
            return self._undecodable(buf, params), buf[0:0]

    def _undecodable(self, buf: memoryview, params: Params) -> InvalidCommand:
        """The BAD of a command with an argument that cannot be decoded, tagged and naming
        the command (``SEARCH: Invalid arguments.``), as pymap's own for a parse failure."""
        try:
            tag, rest = Tag.parse(buf, params)
        except NotParseable:
            return InvalidCommand(params, NotParseable(buf))
        params = params.copy(tag=tag.value)
        words: list[bytes] = []
        found: type[Command] | None = None
        while True:  # a compound name (UID SEARCH) as pymap reads it
            try:
                _space, rest = Space.parse(rest, params)
                atom, rest = Atom.parse(rest, params)
            except NotParseable:
                break
            words.append(atom.value.upper())
            found = self.commands.get(b" ".join(words))
            if found is None or not found.compound:
                break
        command = b" ".join(words)
        return InvalidCommand(params, NotParseable(buf), command or None, found)


class MailConfig(IMAPConfig):
    """pymap's configuration for one listener."""

    def __init__(self, rt: Runtime, *, implicit_tls: bool, ssl_context: Any) -> None:
        imap = rt.settings.imap
        super().__init__(
            Namespace(passlib_cfg=None, proxy_protocol=None, debug=False),
            host=imap.host,
            port=imap.tls_port if implicit_tls else imap.port,
            ssl_context=ssl_context,
            tls_enabled=not implicit_tls,  # STARTTLS offered on the plain port only
            max_append_len=imap.max_literal,
            bad_command_limit=10,
            reject_dnsbl=False,
            cpu_subsystem=Subsystem.for_asyncio(),
        )
        self.implicit_tls = implicit_tls

    @property
    def backend_capability(self) -> BackendCapability:
        return BackendCapability(idle=True, object_id=False, multi_append=True, custom=[b"NAMESPACE", b"SPECIAL-USE"])

    @property
    def tls_auth(self) -> SASLAuth:
        return SASLAuth([PlainMechanism()])

    @property
    def greeting(self) -> bytes:
        return replies.GREETING

    @property
    def id_response(self) -> dict[bytes, bytes]:
        return {b"name": b"mss"}

    @property
    def commands(self) -> Commands:
        commands = _Commands()
        commands.register(NamespaceCommand)
        return commands


class _Secret:
    """Receives the password from pysasl's credentials through their public check."""

    def __init__(self) -> None:
        self.value = ""

    def compare_authcid(self, authcid: str) -> bool:
        return True

    def compare_secret(self, value: str) -> bool:
        self.value = value
        return True


class MailState(ConnectionState):
    """One connection's state: pymap's, with our login and standing checks."""

    def __init__(
        self,
        rt: Runtime,
        config: MailConfig,
        client: str,
        request_id: str,
        kick: Any,
        pipelined: Callable[[Callable[[Command], bool], int], Any],
    ) -> None:
        super().__init__(None, config)  # type: ignore[arg-type]  # logins go through _login below
        self.rt = rt
        self.client = client
        self.request_id = request_id
        self.secure = config.implicit_tls
        self.logged_in_at = 0.0
        self._kick = kick
        self._pipelined = pipelined
        # Commands read ahead whose standing was checked after they arrived, and when.
        self._checked: deque[Command] = deque()
        self._checked_at = 0.0

    @property
    def mail_session(self) -> MailSession | None:
        # pymap's state holds the session this connection gave it: a MailSession
        return self._session  # type: ignore[return-value]

    async def do_greeting(self) -> ResponseOk:
        # pymap lets loopback clients log in without TLS; nobody does here.
        return ResponseOk(b"*", self.config.greeting, self.capability)

    async def do_starttls(self, cmd: Any) -> Any:
        response = await super().do_starttls(cmd)
        self.secure = True
        return response

    async def do_login(self, cmd: Any) -> Any:
        if not self.secure:
            return ResponseNo(cmd.tag, replies.STARTTLS_FIRST), None
        return await super().do_login(cmd)

    async def do_authenticate(self, cmd: Any, creds: Any) -> Any:
        if not self.secure:
            return ResponseNo(cmd.tag, replies.STARTTLS_FIRST)
        if not creds:
            return ResponseNo(cmd.tag, b"[CANNOT] Only AUTHENTICATE PLAIN is offered")
        return await super().do_authenticate(cmd, creds)

    async def _login(self, creds: Any) -> MailSession:
        secret = _Secret()
        creds.verify(secret)
        address, password = creds.authcid, secret.value
        if creds.authzid and creds.authzid.lower() != address.lower():
            raise replies.LoginRefused(replies.LOGIN_FAILED)  # nobody reads another's mailbox
        origin = accounts.Origin("imap", client=self.client, request_id=self.request_id)
        rt = self.rt
        try:
            account = await asyncio.to_thread(accounts.authenticate, rt.engine, rt.settings, address, password, origin)
        except TooManyAttempts:
            raise replies.LoginRefused(replies.TOO_MANY_ATTEMPTS) from None
        except AccountLocked:
            raise replies.LoginRefused(replies.ACCOUNT_LOCKED) from None
        except BadCredentials:
            raise replies.LoginRefused(replies.LOGIN_FAILED) from None
        except StandingError as exc:
            raise replies.LoginRefused(replies.standing_text(exc.message)) from None
        session = await MailSession(self.rt, account, self.request_id).begin()
        # the session asks the connection, which knows when the login's standing was checked
        session.check_standing = self.check_standing  # type: ignore[method-assign]
        self.logged_in_at = time.monotonic()
        return session

    async def check_standing(self) -> None:
        """End the session (BYE, connection closed) unless the account may still log in."""
        session = self.mail_session
        if session is None:
            return
        if time.monotonic() - self.logged_in_at > self.rt.settings.imap.session_seconds:
            await self._kick(replies.SESSION_EXPIRED)
            raise replies.Bye(replies.SESSION_EXPIRED)
        try:
            await asyncio.to_thread(self._standing, session.account)
        except StandingError as exc:
            text = replies.standing_text(exc.message)
            log.info("imap session of %s ended: %s [%s]", session.owner, exc.code, self.request_id)
            await self._kick(text)
            raise replies.Bye(text) from None

    def _standing(self, account: accounts.UnlockedAccount) -> None:
        # The certificate and the password the session logged in with, as an SMTP session's:
        # a rekey (which revokes the certificate) or a new password ends the session, which
        # would otherwise read on with what its login opened.
        with read_scope(self.rt.engine) as reader:
            standing.check_session(reader, self.rt.settings, account)

    async def do_command(self, cmd: Any) -> Any:
        if self._session is not None and not isinstance(cmd, LogoutCommand) and not self._was_checked(cmd):
            await self.check_standing()
        exc = cmd.parse_exc if isinstance(cmd, InvalidCommand) else None
        if exc is not None and exc.code is not None and bytes(exc.code) == _BAD_CHARSET:
            # RFC 3501 6.4.4: a SEARCH whose CHARSET no reader here knows is a NO with
            # [BADCHARSET], not the BAD of every command that does not parse.
            return ResponseNo(cmd.tag, replies.BAD_CHARSET, ResponseCode.of(b"BADCHARSET"))
        return await super().do_command(cmd)

    def _was_checked(self, cmd: Command) -> bool:
        """True for a command read ahead, whose standing was checked after it arrived and
        not longer than ``STANDING_REUSE_SECONDS`` ago."""
        if not self._checked or self._checked[0] is not cmd:
            self._checked.clear()
            return False
        self._checked.popleft()
        return time.monotonic() - self._checked_at < STANDING_REUSE_SECONDS

    async def do_namespace(self, cmd: NamespaceCommand) -> Any:
        response = ResponseOk(cmd.tag, b"NAMESPACE completed.")
        response.add_untagged(UntaggedResponse(b'NAMESPACE (("" "/")) NIL NIL'))
        return response, None

    async def do_fetch(self, cmd: Any) -> Any:
        session = self.mail_session
        assert session is not None
        session.fetch_attributes = cmd.attributes
        if needs_body(cmd.attributes) and not session.opened_ahead(cmd.sequence_set):
            # The body FETCH commands the client pipelined behind this one: their openings
            # are committed with its own, after one standing check that covers them all.
            behind = await self._pipelined(_body_fetch, READ_AHEAD)
            if behind:
                await self.check_standing()
                self._checked.extend(behind)
                self._checked_at = time.monotonic()
                await session.open_ahead(self.selected, [(c.sequence_set, self._sets_seen(c)) for c in (cmd, *behind)])
        return await super().do_fetch(cmd)

    def _sets_seen(self, cmd: FetchCommand) -> bool:
        return not self.selected.readonly and any(attr.set_seen for attr in cmd.attributes)

    async def do_search(self, cmd: Any) -> Any:
        # ours (MailSession); pymap types the session by its interface
        self.session.fetch_attributes = ()  # type: ignore[attr-defined]
        return await super().do_search(cmd)


def _body_fetch(cmd: Command) -> bool:
    return isinstance(cmd, FetchCommand) and needs_body(cmd.attributes)


class MailConnection(IMAPConnection):
    """pymap's connection loop with our timeouts and size limits, and a look at the
    commands a client pipelined (``pipelined``)."""

    __slots__ = ["rt", "_closing", "_queued", "_held", "_next_line", "_kicks"]

    def __init__(
        self,
        rt: Runtime,
        config: MailConfig,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        sock_info: SocketInfo,
    ) -> None:
        super().__init__(config.commands, config, reader, writer, sock_info)
        self.rt = rt
        self._closing = False
        self._queued: deque[Command] = deque()  # read ahead, run next in this order
        self._held: memoryview | None = None  # a line read ahead that needs a continuation
        self._next_line: asyncio.Future[memoryview] | None = None  # a read started ahead
        self._kicks: set[asyncio.Future[None]] = set()  # BYEs under way from timers

    async def read_command(self, state: Any) -> Command:
        if self._queued:
            return self._queued.popleft()
        return await super().read_command(state)

    async def pipelined(self, wanted: Callable[[Command], bool], limit: int) -> list[Command]:
        """The commands behind the current one that the client already sent, as long as
        ``wanted`` accepts them (at most ``limit``). Lines are taken from what arrived, never
        waiting for the network; every command read stays queued to run in its turn, and a
        line that needs a continuation (a synchronising literal) is left to the command loop."""
        found: list[Command] = []
        for cmd in self._queued:
            if len(found) >= limit or not wanted(cmd):
                return found
            found.append(cmd)
        while len(found) < limit and self._held is None:
            line = await self._arrived_line()
            if line is None:
                break
            try:
                cmd, _ = self.commands.parse(line, self.params.copy(ParsingState(continuations=[])))
            except ParsingInterrupt:
                self._held = line
                break
            self._queued.append(cmd)
            if not wanted(cmd):
                break
            found.append(cmd)
        return found

    async def _arrived_line(self) -> memoryview | None:
        """The next line if it already arrived, else None (the read goes on, for ``readline``)."""
        if self._next_line is None:
            self._next_line = asyncio.ensure_future(self._read_line())
            await asyncio.sleep(0)  # a line already buffered is read in this one step
        task = self._next_line
        if not task.done() or task.cancelled() or task.exception() is not None:
            return None  # an error is raised to the command loop, in its turn
        self._next_line = None
        return task.result()

    def stop_reading(self) -> None:
        """Drop a read started ahead (the connection ends)."""
        if self._next_line is not None:
            self._next_line.cancel()
            self._next_line = None

    @property
    def _timeout(self) -> float:
        return self.rt.settings.imap.idle_timeout

    async def _bye(self, text: bytes) -> None:
        try:
            async with asyncio.timeout(5):
                await super().write_response(ResponseBye(text))
        except (TimeoutError, ConnectionError, OSError):
            pass

    def kick_soon(self, text: bytes) -> None:
        """``kick`` from a callback of the loop (a timer)."""
        task = asyncio.ensure_future(self.kick(text))
        self._kicks.add(task)
        task.add_done_callback(self._kicks.discard)

    async def kick(self, text: bytes) -> None:
        """Say BYE and close the connection (a read waiting for the client then ends)."""
        if self._closing:
            return
        self._closing = True
        await self._bye(text)
        self.writer.close()

    async def readline(self) -> memoryview:
        if self._held is not None:
            line, self._held = self._held, None
            return line
        if self._next_line is not None:
            task, self._next_line = self._next_line, None
            return await task
        return await self._read_line()

    def _tag(self, line: bytearray) -> bytes | None:
        """The tag a command line starts with, read as pymap reads it (None: not one)."""
        try:
            tag, _rest = Tag.parse(memoryview(line), self.params)
        except NotParseable:
            return None
        return tag.value

    async def _read_line(self) -> memoryview:
        try:
            async with asyncio.timeout(self._timeout):
                buf = bytearray(await self.reader.readuntil(b"\n"))
                while True:
                    match = _LITERAL.search(buf)
                    # our MailConfig always sets max_filter_len (pymap's may leave it None)
                    limit: int = self.config.max_filter_len  # type: ignore[assignment]
                    # A literal over the limit, or one that would take the whole command past
                    # a line and a literal (several literals in one command add up).
                    if match is not None and (
                        int(match.group(1)) > limit or len(buf) + int(match.group(1)) > LINE_LIMIT + limit
                    ):
                        # Refused before a byte of it is read. A synchronising literal waits
                        # for our go-ahead: its command gets a tagged NO and the connection
                        # goes on (RFC 7888 4); a non-synchronising one is on its way, and
                        # cannot be refused politely: the connection ends.
                        tag = self._tag(buf)
                        if match.group(2) != b"+" and tag is not None:
                            self.writer.write(tag + b" NO " + replies.LITERAL_TOO_BIG + b"\r\n")
                            await self._drain()
                            buf = bytearray(await self.reader.readuntil(b"\n"))
                            continue
                        await self.kick(replies.LITERAL_TOO_BIG)
                        raise EOFError()
                    if match is not None and match.group(2) == b"+":
                        buf += await self.reader.readexactly(int(match.group(1)))
                        buf += await self.reader.readuntil(b"\n")
                        if len(buf) > LINE_LIMIT + limit:
                            await self.kick(replies.LINE_TOO_LONG)
                            raise EOFError()
                        continue
                    return memoryview(buf)
        except TimeoutError:
            await self.kick(replies.IDLE_TIMEOUT)
            raise EOFError() from None
        except (asyncio.LimitOverrunError, ValueError):
            await self.kick(replies.LINE_TOO_LONG)
            raise EOFError() from None
        except asyncio.IncompleteReadError:
            raise EOFError() from None

    async def read_continuation(self, literal_length: int) -> memoryview:
        try:
            async with asyncio.timeout(self._timeout):
                extra = await self.reader.readexactly(literal_length)
        except TimeoutError:
            await self.kick(replies.IDLE_TIMEOUT)
            raise EOFError() from None
        except asyncio.IncompleteReadError:
            raise EOFError() from None
        return memoryview(extra + bytes(await self.readline()))

    async def write_response(self, resp: Any) -> None:
        """Write a response one message at a time: pymap buffers every untagged response of
        a command before draining; here each is drained before the next is loaded, so a
        FETCH of a whole folder holds a few messages in memory, and a client that stops
        reading is cut after ``MSS_IMAP_TIMEOUT``."""
        if self._closing:
            return
        untagged = list(getattr(resp, "_untagged", ()))
        try:
            for response in untagged:
                await self._write_whole(response)
            if untagged:
                Response.write(resp, self.writer)  # the tagged line alone
                await self._drain()
            else:
                await self._write_whole(resp)
        except ConnectionError:
            self._closing = True
            raise

    async def _write_whole(self, response: Any) -> None:
        # One write per response: a client reading with a timeout (IDLE) never gets half a line.
        buffer = _Buffer()
        await response.async_write(buffer)
        self.writer.write(b"".join(buffer.parts))
        await self._drain()

    async def _drain(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self.writer.drain()
        except TimeoutError:
            # A client that stops reading holds no more than the socket's buffers.
            log.info("imap client not reading: connection cut")
            self._closing = True
            self.writer.transport.abort()
            raise ConnectionError("client not reading") from None


class _Buffer:
    """Collects what pymap writes for one response."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(bytes(data))


class Registry:
    """Open connections of one process: bounded in all and from one client address (so one
    client cannot take every place there is), and closed with a BYE at shutdown."""

    def __init__(self, limit: int, per_client: int) -> None:
        self.places: Places[MailConnection] = Places(limit, per_client)
        self.connections = self.places.holders

    def refusal(self, client: str) -> bytes | None:
        """The BYE that turns a new connection from ``client`` away, or None: it may come in."""
        if self.places.full():
            return replies.TOO_MANY_SESSIONS
        if self.places.full_for(client):
            return replies.TOO_MANY_FROM_CLIENT
        return None

    async def close_all(self) -> None:
        await asyncio.gather(*(conn.kick(replies.SHUTDOWN) for conn in list(self.connections)), return_exceptions=True)


def connection_handler(rt: Runtime, config: MailConfig, registry: Registry) -> Any:
    """The ``asyncio.start_server`` callback of one listener."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        refusal = registry.refusal(client)
        if refusal is not None:
            writer.write(b"* BYE " + refusal + b"\r\n")
            try:
                async with asyncio.timeout(5):
                    await writer.drain()
            except (TimeoutError, ConnectionError, OSError):
                pass
            writer.close()
            return
        request_id = secrets.token_hex(8)
        conn = MailConnection(rt, config, reader, writer, SocketInfo.get(writer, None))
        state = MailState(rt, config, client, request_id, conn.kick, conn.pipelined)
        registry.places.take(conn, client)

        # A connection that has not logged in by then gives its place back (a client logs
        # in at once; one that only holds a place would otherwise hold it for hours).
        def give_back_if_not_logged_in() -> None:
            if state.mail_session is None:
                conn.kick_soon(replies.LOGIN_TIMEOUT)

        late = asyncio.get_running_loop().call_later(rt.settings.imap.login_timeout, give_back_if_not_logged_in)
        try:
            async with AsyncExitStack() as stack:
                connection_exit.set(stack)
                await conn.run(state)
        except (ConnectionError, EOFError, asyncio.CancelledError):
            pass
        except Exception:  # logged with its reference; the client sees a BYE, never the error
            log.exception("imap connection failed [%s]", request_id)
        finally:
            late.cancel()
            conn.stop_reading()
            registry.places.give_back(conn)
            if state.mail_session is not None:
                state.mail_session.close()
            writer.close()

    return handle


class Listeners:
    """The bound IMAP sockets of one process."""

    def __init__(self, servers: list[asyncio.Server], registry: Registry) -> None:
        self.servers = servers
        self.registry = registry

    @property
    def ports(self) -> list[int]:
        """The ports bound, STARTTLS first (chosen by the system when 0 was asked)."""
        return [server.sockets[0].getsockname()[1] for server in self.servers]

    async def aclose(self) -> None:
        for server in self.servers:
            server.close()
        await self.registry.close_all()
        for server in self.servers:
            await server.wait_closed()


async def start_listeners(rt: Runtime, *, host: str, port: int, tls_port: int | None) -> Listeners:
    """Bind the STARTTLS port and, unless ``tls_port`` is None, the implicit TLS port.

    Raises ConfigError (TLS material) and OSError (an address cannot be bound).
    """
    context = server_context(rt.settings)
    await asyncio.to_thread(workers.start)
    registry = Registry(rt.settings.imap.max_sessions, rt.settings.imap.max_sessions_per_client)

    async def bind(listen_port: int, *, implicit_tls: bool) -> asyncio.Server:
        config = MailConfig(rt, implicit_tls=implicit_tls, ssl_context=context)
        tls: dict[str, Any] = {}
        if implicit_tls:
            tls = dict(ssl=context, ssl_handshake_timeout=30, ssl_shutdown_timeout=SSL_SHUTDOWN_TIMEOUT)
        return await asyncio.start_server(
            connection_handler(rt, config, registry),
            host=host,
            port=listen_port,
            limit=LINE_LIMIT,
            reuse_address=True,
            **tls,
        )

    servers = [await bind(port, implicit_tls=False)]
    if tls_port is not None:
        servers.append(await bind(tls_port, implicit_tls=True))
    listeners = Listeners(servers, registry)
    log.info("imap listening on %s ports %s", host, listeners.ports)
    return listeners


async def serve_imap(rt: Runtime, *, ready: asyncio.Event | None = None) -> None:
    """Serve IMAP on ``MSS_IMAP_HOST`` (STARTTLS port, and implicit TLS unless its port is 0)
    until cancelled; open connections then get a BYE."""
    imap = rt.settings.imap
    listeners = await start_listeners(rt, host=imap.host, port=imap.port, tls_port=imap.tls_port or None)
    await serve_until_cancelled(listeners.aclose, ready)


class ImapServer(BackgroundServer):
    """The IMAP listeners on a background thread with their own event loop (tests, benchmarks).

    ``with ImapServer(rt) as imap:`` listens on 127.0.0.1, free ports ``imap.port`` (STARTTLS)
    and ``imap.tls_port`` (implicit TLS), until the block ends.
    """

    thread_name = "mss-imap"

    def __init__(self, rt: Runtime, *, host: str = "127.0.0.1") -> None:
        super().__init__()
        self.rt = rt
        self.host = host
        self.port = 0
        self.tls_port = 0
        self.registry: Registry | None = None

    @property
    def open_connections(self) -> int:
        """Connections open now (tests watch clients being cut)."""
        return len(self.registry.connections) if self.registry is not None else 0

    async def listen(self) -> Callable[[], Awaitable[None]]:
        listeners = await start_listeners(self.rt, host=self.host, port=0, tls_port=0)
        self.port, self.tls_port = listeners.ports
        self.registry = listeners.registry
        return listeners.aclose
