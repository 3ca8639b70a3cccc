"""The SMTP submission protocol on the wire: aiosmtpd's ``SMTP`` with our limits and replies.

``RelaySMTP`` parses and enforces what belongs to the protocol (STARTTLS before anything,
AUTH before MAIL, ESMTP parameters, SIZE, line length and CRLF line ends, the header section
cap, the login deadline and the idle timeout, the caps on sessions in all and per client
address) and hands every decision to its handler
(``mss.relay.handler.RelayHandler``), which calls the pipeline. Every reply leaves through
``push``, which swaps aiosmtpd's own fixed replies for the named ones in ``replies``.

A session has a correlation id, kept across STARTTLS, in every log line and in the request
id of every audit event written on its behalf. Nothing leaves on the wire about an
unexpected error but ``451 4.3.0``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import secrets
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

from aiosmtpd.smtp import SMTP, Envelope, Session, TLSSetupException, syntax

from mss import metrics
from mss.accounts import UnlockedAccount
from mss.mime import PARSE_FAILURES
from mss.pipeline import RecipientRequest
from mss.places import Places
from mss.relay import esmtp, replies
from mss.relay.auth import PasswordMechanisms
from mss.runtime import Runtime

log = logging.getLogger("mss.relay")

# RFC 5321 4.5.3.1.3: a path is at most 256 octets with its angle brackets.
MAX_ADDRESS: Final = 254
# What aiosmtpd's lenient parser returns must still be local@domain. A quoted local part
# with spaces is valid RFC 5321 but never a directory address: refused as syntax.
_MAILBOX = re.compile(r"\A[^@<>\s]+@[^@<>\s]+\Z")
# The path as nearly every client writes it: <dot-atom@dot-atom> (ASCII atext), then the
# parameters (printable ASCII) after spaces. aiosmtpd reads every path with the email
# package's whole RFC 5322 grammar (and builds a typing.Protocol class at each call: 75 us,
# three times a message); on this shape that grammar gives the same address and parameter
# text (tests/test_relay_session.py compares them), so only the other shapes go to it.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(rf"[ \t]*<({_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})*)>(?:[ \t]+([!-'*-~][\t -~]*)|[ \t]*)\Z")
# The empty line after the header section; a bare LF is tolerated as a line end here (the
# pipeline reads LF or CRLF).
_HEADER_END = re.compile(rb"\n\r?\n")
# A line that starts with a dot. On a 1 MB message the regular expression engine finds (or
# rules out) one in half the time of bytearray.find (bench/bench_data_reader.py).
_DOT_LINE = re.compile(rb"\r\n\.")
# The top-level header section (up to the first empty line). Submission clients write a few
# dozen fields; these bounds stop a header flood before the MIME parser sees it.
MAX_HEADER_FIELDS: Final = 200
MAX_HEADER_BYTES: Final = 64 * 1024
# RFC 5321 4.5.3.1.6: 1000 octets with CRLF, plus one for a transparency dot.
MAX_LINE: Final = 1001
# MAIL and RCPT carry DSN parameters (RFC 3461 ENVID, ORCPT): more than RFC 5321's 512.
MAX_PARAMETER_COMMAND: Final = 1000
# Per-session command budgets: AUTH costs an argon2id derivation each time.
COMMAND_CALL_LIMIT: Final = {"AUTH": 3, "*": 10_000}
DATA_END: Final = b"\r\n.\r\n"
# Read whatever is buffered in one go (the StreamReader limit only bounds command lines).
_READ_ALL: Final = 1 << 30
# aiosmtpd's replies after which it closes the connection, and the outcome they mean.
_CUT_OFFS: Final = {replies.TOO_MANY_UNRECOGNIZED: "unrecognized-commands", replies.COMMAND_LIMIT: "command-limit"}


class RelaySession(Session):
    """aiosmtpd's session with our correlation id; ``auth_data`` holds the UnlockedAccount."""

    def __init__(self, loop: asyncio.AbstractEventLoop, correlation_id: str) -> None:
        super().__init__(loop)
        self.correlation_id = correlation_id

    @property
    def account(self) -> UnlockedAccount | None:
        """The authenticated account, with its private key open in memory, or None."""
        return self.auth_data if self.authenticated and isinstance(self.auth_data, UnlockedAccount) else None

    # aiosmtpd's deprecated login_data logs a warning on each successful AUTH; the account
    # lives in auth_data.
    @property
    def login_data(self) -> None:
        return None

    @login_data.setter
    def login_data(self, value: Any) -> None:
        pass


class RelayEnvelope(Envelope):
    """One mail transaction: the parsed MAIL parameters and the accepted recipients."""

    def __init__(self) -> None:
        super().__init__()
        self.parameters = esmtp.MailParameters()
        self.recipients: list[RecipientRequest] = []
        self.request_id = ""
        # The directory's revision read with the sender's standing at MAIL (submission only).
        self.directory_revision: int | None = None


# A DATA that waits for a slot (DataSlots) goes ahead without one once no message has ended
# for SLOT_WAIT seconds (those in hand are stuck: their clients send slowly), or after
# SLOT_WAIT_LONGEST in all: RFC 5321 4.5.3.2.5 gives a client two minutes for its 354.
SLOT_WAIT: Final = 10.0
SLOT_WAIT_LONGEST: Final = 60.0


class _Waiter:
    """A session waiting for a slot, in the order of arrival (``DataSlots``), and what
    wakes it to look again (``woken``: its turn may have come, or its wait ran out)."""

    __slots__ = ("client", "woken")

    def __init__(self, client: str, woken: asyncio.Future[None]) -> None:
        self.client = client
        self.woken = woken


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)


class DataSlots:
    """How many messages one server takes in at once: from the ``354`` that invites one to
    the reply that ends it (received, waiting for a message thread, or in the pipeline).

    A message in hand is held in memory whole, and more than once (the DATA buffer and its
    copy, then the pipeline's forms): without a bound, sixteen sessions sending 1 MB hold
    all sixteen, and a hundred sending 20 MB would hold gigabytes. One client address holds
    at most ``per_client`` messages, the server one more, so that a client that fills its
    share (a gateway that submits for a whole hospital from one address) still leaves
    another client a place. Past that, a session's DATA waits for a slot before its
    ``354``, in turn: a freed slot goes to the first waiter it fits (a waiter whose own
    address holds its share lets the next one by), never to a session that asks after
    such a waiter. It waits for as long as messages keep ending; once none has ended for
    ``wait`` seconds, or after ``longest`` in all, it goes ahead without one: a client that
    sends slowly must not stop the others for as long as it sends.
    """

    def __init__(self, per_client: int, *, wait: float, longest: float) -> None:
        self.per_client = per_client
        self.size = per_client + 1
        self.wait = wait
        self.longest = longest
        self.per_address: collections.Counter[str] = collections.Counter()
        self._waiting: list[_Waiter] = []
        self._last_end = float("-inf")

    @property
    def taken(self) -> int:
        """The slots held now, by every address."""
        return self.per_address.total()

    @property
    def waiting(self) -> int:
        """The sessions waiting for a slot now."""
        return len(self._waiting)

    @contextlib.asynccontextmanager
    async def slot(self, client: str) -> AsyncIterator[bool]:
        """Held around a message's DATA; yields whether a slot was had (False: the wait ran out)."""
        taken = await self._take(client)
        try:
            yield taken
        finally:
            if taken:
                self._give_back(client)

    def _fits(self, client: str) -> bool:
        return self.taken < self.size and self.per_address[client] < self.per_client

    def _in_turn(self, waiter: _Waiter) -> bool:
        """Whether ``waiter`` may take a slot now: one fits it, and none that waited longer
        fits one."""
        ahead = self._waiting[: self._waiting.index(waiter)]
        return self._fits(waiter.client) and not any(self._fits(w.client) for w in ahead)

    async def _take(self, client: str) -> bool:
        loop = asyncio.get_running_loop()
        asked = loop.time()
        waiter = _Waiter(client, loop.create_future())
        self._waiting.append(waiter)
        try:
            while not self._in_turn(waiter):
                # Each message that ends starts the wait again: a waiter woken at the end
                # it had reckoned finds a later one and waits on.
                ends = min(max(asked, self._last_end) + self.wait, asked + self.longest)
                if ends <= loop.time():
                    return False
                waiter.woken = loop.create_future()
                timer = loop.call_at(ends, _wake, waiter.woken)
                try:
                    await waiter.woken
                finally:
                    timer.cancel()
            self.per_address[client] += 1
            return True
        finally:
            self._waiting.remove(waiter)
            # The next in turn looks again: after this one took its slot there may be room
            # for it too; a waiter that leaves (its wait ran out, its client went away) may
            # have been the one the others let by.
            if self._waiting:
                self._look_again()

    def _give_back(self, client: str) -> None:
        self.per_address[client] -= 1
        if self.per_address[client] <= 0:
            del self.per_address[client]
        self._last_end = asyncio.get_running_loop().time()
        self._look_again()

    def _look_again(self) -> None:
        """Wake the waiter whose turn it is now, if any: the first that a slot fits. The
        others sleep on (waking every one at each change cost each message a task and a
        timer per waiting session); it wakes the next when it has taken its slot."""
        for waiter in self._waiting:
            if self._fits(waiter.client):
                _wake(waiter.woken)
                return


class SessionRegistry:
    """The sessions of one listening server: the caps, the messages taken in at once
    (``slots``), and a drain at shutdown.

    In-process only on purpose: each relay process caps its own sessions, so several
    processes behind one address share nothing but the database. Sessions are also counted
    per client address, so that one client cannot take every session there is.
    """

    def __init__(self, max_sessions: int, max_per_client: int | None = None, *, messages_per_client: int) -> None:
        self.places: Places[RelaySMTP] = Places(
            max_sessions, max_sessions if max_per_client is None else max_per_client
        )
        self.active = self.places.holders
        self.slots = DataSlots(messages_per_client, wait=SLOT_WAIT, longest=SLOT_WAIT_LONGEST)
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def admit(self, session: RelaySMTP, client: str) -> str | None:
        """Count ``session`` in; or the ``421`` reply that turns it away."""
        if self.draining or self.places.full():
            return replies.SERVICE_BUSY
        if self.places.full_for(client):
            return replies.CLIENT_BUSY
        self.places.take(session, client)
        self._idle.clear()
        return None

    def leave(self, session: RelaySMTP) -> None:
        self.places.give_back(session)
        if not self.active:
            self._idle.set()

    async def drain(self, grace: float) -> None:
        """Close idle sessions now; let those storing a message reply first, up to ``grace``."""
        self.draining = True
        for session in list(self.active):
            if not session.submitting:
                session.close_with(replies.SHUTTING_DOWN, outcome="shutdown")
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            for session in list(self.active):
                session.close_with(replies.SHUTTING_DOWN, outcome="shutdown")


class CommandReader(asyncio.StreamReader):
    """The session's stream: every line read with the default separator (a command, an AUTH
    response) must end with CRLF and hold no other CR or LF (RFC 5321 2.3.8).

    Such a line is answered ``500 5.5.2`` by ``refuse_line`` and skipped: aiosmtpd never sees
    it, so ``RCPT TO:<a@b<LF>`` can neither pass as a command nor lose its end.
    """

    def __init__(self, refuse_line: Callable[[], Awaitable[None]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._refuse_line = refuse_line
        self._overlong = False

    # only ever called with a bytes separator, like aiosmtpd does
    async def readuntil(self, separator: bytes = b"\n") -> bytes:  # type: ignore[override]
        while True:
            try:
                line = await super().readuntil(separator)
            except asyncio.LimitOverrunError:
                # aiosmtpd then reads the rest of the overlong line and answers it "too long";
                # the rest may be the lone LF of its CRLF.
                self._overlong = True
                raise
            if separator != b"\n" or self._overlong or (line.endswith(b"\r\n") and b"\r" not in line[:-2]):
                self._overlong = False
                return line
            await self._refuse_line()


class RelaySMTP(PasswordMechanisms, SMTP):
    """One SMTP session of the submission relay (aiosmtpd protocol, our rules of the wire)."""

    def __init__(self, handler: Any, *, rt: Runtime, registry: SessionRegistry, **kwargs: Any) -> None:
        self.rt = rt
        self.registry = registry
        self.correlation_id = secrets.token_hex(6)
        self.submitting = False
        self._admitted = False
        self._refusal: str | None = None
        self._client = "-"
        self._ended = False
        self._outcome = "disconnected"
        self._started = time.monotonic()
        self._transactions = 0
        self._login_timer: asyncio.TimerHandle | None = None
        self._idle_deadline: float | None = None
        self._previous_idle_deadline: float | None = None
        self.accepted = 0
        self.refused = 0
        super().__init__(handler, **kwargs)
        # aiosmtpd reads from a plain StreamReader it builds in its constructor; the stream
        # protocol is set up again, before any connection, with ours (same limit).
        asyncio.StreamReaderProtocol.__init__(
            self,
            CommandReader(self._refuse_line, limit=self.line_length_limit, loop=self.loop),
            client_connected_cb=self._cb_client_connected,
            loop=self.loop,
        )
        # aiosmtpd keeps these limits in a class-level dict shared by every session; ours
        # are per session.
        self.command_size_limits = collections.defaultdict(
            lambda: SMTP.command_size_limit, {"MAIL": MAX_PARAMETER_COMMAND, "RCPT": MAX_PARAMETER_COMMAND}
        )

    # -- session life ----------------------------------------------------------------------

    def _create_session(self) -> RelaySession:
        return RelaySession(self.loop, self.correlation_id)

    def _create_envelope(self) -> RelayEnvelope:
        return RelayEnvelope()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        if first:
            peer = transport.get_extra_info("peername")
            self._client = str(peer[0]) if peer else "-"
            self._refusal = self.registry.admit(self, self._client)
            self._admitted = self._refusal is None
            if self._admitted:
                metrics.SMTP_SESSIONS.inc()
        super().connection_made(transport)
        if first and self._admitted:
            # Counted from the connection, and extended by nothing: an unauthenticated
            # session cannot hold its place with NOOP or RSET.
            self._login_timer = self.loop.call_later(self.rt.settings.relay.login_timeout, self._login_timeout_cb)

    async def _handle_client(self) -> None:
        if not self._admitted:
            self._outcome = "busy" if self._refusal == replies.SERVICE_BUSY else "client-busy"
            await self.push(self._refusal or replies.SERVICE_BUSY)
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    def connection_lost(self, error: Exception | None) -> None:
        try:
            super().connection_lost(error)
        finally:
            # aiosmtpd may call this twice (a failed TLS handshake): count and log once.
            if not self._ended:
                self._ended = True
                if self._login_timer is not None:
                    self._login_timer.cancel()
                if self._admitted:
                    self.registry.leave(self)
                    metrics.SMTP_SESSIONS.dec()
                self._log_outcome()

    def _log_outcome(self) -> None:
        session = self.session
        account = session.account if isinstance(session, RelaySession) else None
        tls = session.ssl.get("cipher", ("-",))[0] if session is not None and session.ssl else "-"
        log.info(
            "session %s peer=%s tls=%s account=%s accepted=%d refused=%d outcome=%s seconds=%.3f",
            self.correlation_id,
            session.peer[0] if session is not None and session.peer else "-",
            tls,
            account.address if account else "-",
            self.accepted,
            self.refused,
            self._outcome,
            time.monotonic() - self._started,
            extra={"request_id": self.correlation_id},
        )

    def close_with(self, reply: str, *, outcome: str) -> None:
        """Send a last ``421`` reply and close (used from callbacks, outside a command)."""
        self._outcome = outcome
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        # a connected transport (checked above), typed as the base transport
        transport.write(reply.encode("ascii") + b"\r\n")  # type: ignore[attr-defined]
        transport.close()

    def _timeout_cb(self) -> None:
        # RFC 5321 4.5.3.2: tell the client why before closing.
        log.debug("session %s idle timeout", self.correlation_id)
        self.close_with(replies.IDLE_TIMEOUT, outcome="timeout")

    def _login_timeout_cb(self) -> None:
        self._login_timer = None
        session = self.session
        if session is not None and session.authenticated:
            return
        log.debug("session %s not authenticated in time", self.correlation_id)
        self.close_with(replies.LOGIN_TIMEOUT, outcome="login-timeout")

    def _reset_timeout(self, duration: float | None = None) -> None:
        # aiosmtpd calls this before every recognised command; the deadline it replaces is
        # kept so that NOOP and RSET can put it back (see _keep_idle_deadline).
        self._previous_idle_deadline = self._idle_deadline
        super()._reset_timeout(duration)
        self._idle_deadline = self.loop.time() + (duration or self._timeout_duration)

    def _keep_idle_deadline(self) -> None:
        """Undo the idle timer's reset for this command: NOOP and RSET are not activity."""
        deadline = self._previous_idle_deadline
        if deadline is None or self._timeout_handle is None:
            return
        self._timeout_handle.cancel()
        self._timeout_handle = self.loop.call_at(deadline, self._timeout_cb)
        self._idle_deadline = deadline

    def new_request_id(self) -> str:
        """A request id for the next mail transaction: the correlation id and a counter."""
        self._transactions += 1
        return f"{self.correlation_id}.{self._transactions}"

    # -- replies and errors ---------------------------------------------------------------

    async def push(self, status: str | bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            # aiosmtpd closed the connection after one of its cut-offs (too many unknown
            # commands, a command over its budget) while the client had pipelined more:
            # those get no answer and the session's task ends here, as on a lost connection.
            raise asyncio.CancelledError("session closed")
        reply = replies.translate(status) if isinstance(status, str) else status
        if reply in _CUT_OFFS:
            self._outcome = _CUT_OFFS[reply]
        # aiosmtpd's push takes text or bytes alike
        await super().push(reply)  # type: ignore[type-var]

    async def _refuse_line(self) -> None:
        await self.push(replies.BARE_LINE_END)

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            self._outcome = "tls-failed"
            cause = error.__cause__
            log.info("session %s TLS handshake failed: %s", self.correlation_id, type(cause).__name__)
            return replies.LOCAL_ERROR
        # The exception text may quote what the client sent: the class and the stack only.
        log.error(
            "session %s unexpected %s, answered 451\n%s",
            self.correlation_id,
            type(error).__name__,
            "".join(traceback.format_tb(error.__traceback__)).rstrip(),
        )
        return replies.LOCAL_ERROR

    # -- commands --------------------------------------------------------------------------

    @syntax("NOOP [ignored]")
    async def smtp_NOOP(self, arg: str | None) -> None:
        self._keep_idle_deadline()
        await super().smtp_NOOP(arg)

    @syntax("RSET")
    async def smtp_RSET(self, arg: str | None) -> None:
        self._keep_idle_deadline()
        await super().smtp_RSET(arg)

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        await super().smtp_AUTH(arg)
        if self.session is not None and self.session.authenticated and self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None

    @syntax("QUIT")
    async def smtp_QUIT(self, arg: str | None) -> None:
        if not arg:
            self._outcome = "quit"
        await super().smtp_QUIT(arg)

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._tls_protocol is not None:
            await self.push(replies.TLS_ALREADY_ACTIVE)
            return
        await super().smtp_STARTTLS(arg)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd's own by name, not super(): the bench's bare server borrows this method.
        plain = _PLAIN_PATH.match(arg)
        if plain is None:
            try:
                return SMTP._getaddr(self, arg)
            except PARSE_FAILURES:  # "<", "!@", "#@[ ": a syntax error, not a failure of ours
                return None, None
        address = plain[1]
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, plain[2] or ""

    async def _may_transact(self, command: str) -> bool:
        """EHLO first, then AUTH where it is required; False once the refusal is pushed."""
        return not (await self.check_helo_needed() or await self.check_auth_needed(command))

    def _path(
        self, arg: str | None, keyword: str, syntax_reply: str, address_reply: str, *, null_allowed: bool = False
    ) -> tuple[str, str]:
        """The address of MAIL or RCPT (``<>`` only when ``null_allowed``) and the text of its
        ESMTP parameters. Raises ParameterRefused with ``syntax_reply`` (the command's syntax)
        or ``address_reply`` (the address)."""
        assert self.session is not None
        rest = self._strip_command_keyword(keyword, arg or "")
        if rest is None:
            raise esmtp.ParameterRefused(syntax_reply)
        address, parameter_text = self._getaddr(rest)
        if (
            address is None
            or len(address) > MAX_ADDRESS
            or not (null_allowed and address == "<>" or _MAILBOX.match(address))
        ):
            raise esmtp.ParameterRefused(address_reply)
        if parameter_text and not self.session.extended_smtp:
            raise esmtp.ParameterRefused(syntax_reply)
        return address, parameter_text or ""

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        if not await self._may_transact("MAIL"):
            return
        assert isinstance(self.envelope, RelayEnvelope)
        if self.envelope.mail_from is not None:
            await self.push(replies.NESTED_MAIL)
            return
        try:
            address, text = self._path(arg, "FROM:", replies.MAIL_SYNTAX, replies.SENDER_SYNTAX, null_allowed=True)
            parameters = esmtp.parse_mail(text, size_limit=self.data_size_limit)
        except esmtp.ParameterRefused as refused:
            await self.push(refused.reply)
            return
        self.envelope.request_id = self.new_request_id()
        await self.push(await self._call_handler_hook("MAIL", address, parameters))

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        if not await self._may_transact("RCPT"):
            return
        assert isinstance(self.envelope, RelayEnvelope)
        if not self.envelope.mail_from:
            await self.push(replies.NEED_MAIL)
            return
        try:
            address, text = self._path(arg, "TO:", replies.RCPT_SYNTAX, replies.RECIPIENT_SYNTAX)
            parameters = esmtp.parse_rcpt(text)
        except esmtp.ParameterRefused as refused:
            await self.push(refused.reply)
            return
        await self.push(await self._call_handler_hook("RCPT", address, parameters))

    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        if not await self._may_transact("DATA"):
            return
        assert isinstance(self.envelope, RelayEnvelope)
        if not self.envelope.recipients:
            await self.push(replies.NEED_RCPT if self.envelope.mail_from else replies.NEED_MAIL)
            return
        if arg:
            await self.push(replies.NO_ARGUMENTS)
            return
        # Waiting for a slot is the server's doing, not the client's idleness.
        assert self._timeout_handle is not None
        self._timeout_handle.cancel()
        asked = self.loop.time()
        async with self.registry.slots.slot(self._client) as had_slot:
            metrics.data_phase(self.event_handler.door, "slot", self.loop.time() - asked)
            if not had_slot:
                log.info(
                    "session %s takes a message in without a slot after %.0f s",
                    self.correlation_id,
                    self.loop.time() - asked,
                )
            self._reset_timeout()
            await self._take_message(self.envelope)

    async def _take_message(self, envelope: RelayEnvelope) -> None:
        """DATA once the message may be taken in: read it, hand it on, reply."""
        door = self.event_handler.door
        await self.push(replies.START_MAIL_INPUT)
        invited = self.loop.time()
        refusal, content = await self._receive_data()
        received = self.loop.time()
        metrics.data_phase(door, "receive", received - invited)
        if refusal is not None:
            self.refused += 1
            self._set_post_data_state()
            await self.push(refusal)
            metrics.data_phase(door, "handle", self.loop.time() - received)
            return
        envelope.content = envelope.original_content = content
        # The client waits for our answer while the pipeline works: no idle timeout then.
        assert self._timeout_handle is not None
        self._timeout_handle.cancel()
        self.submitting = True
        try:
            status = await self._call_handler_hook("DATA")
        finally:
            self.submitting = False
            self._set_post_data_state()
            self._reset_timeout()
        await self.push(status)
        metrics.data_phase(door, "handle", self.loop.time() - received)
        if self.registry.draining:
            self.close_with(replies.SHUTTING_DOWN, outcome="shutdown")

    async def _receive_data(self) -> tuple[str | None, bytes]:
        """Read the message up to ``<CRLF>.<CRLF>``; return (refusal or None, content).

        The whole message is always read, even when it is refused, so that the reply comes
        after the end of data (RFC 5321 4.2.5); what is refused is discarded as it comes.
        The content is returned with dot-stuffing removed (RFC 5321 4.5.2).
        """
        reader = self._reader
        size_limit = self.data_size_limit
        # A virtual CRLF before the first line lets one search find an end marker and a
        # leading dot there too; it is stripped at the end.
        buffer = bytearray(b"\r\n")
        checked = len(buffer)  # buffer[:checked] passed the line and size checks
        line = 0  # bytes of the line being read so far, before its LF
        header_end = -1  # where the empty line that ends the header section starts
        header_scan = 1
        refusal: str | None = None
        while True:
            chunk = await reader.read(_READ_ALL)
            if not chunk:
                # aiosmtpd cancels this task on EOF; if it has not yet, nobody is left to answer.
                raise ConnectionResetError("connection closed during DATA")
            self._reset_timeout()
            scan_from = max(0, len(buffer) - len(DATA_END) + 1)
            buffer += chunk
            end = buffer.find(DATA_END, scan_from)
            if end >= 0:
                leftover = bytes(buffer[end + len(DATA_END) :])
                if leftover:
                    # Sent ahead of our reply; read(_READ_ALL) left the reader empty.
                    reader.feed_data(leftover)
                del buffer[end + 2 :]  # keep the CRLF that ends the last line
            if refusal is None:
                # A CR and up to 999 octets (1001 with the CRLF).
                too_long, line = overlong_line(buffer, checked, line, MAX_LINE - 1)
                checked = len(buffer)
                if too_long:
                    refusal = replies.LINE_TOO_LONG
                elif size_limit and len(buffer) - 2 > size_limit:
                    refusal = replies.MESSAGE_TOO_LARGE
                elif header_end < 0:
                    found = _HEADER_END.search(buffer, max(1, header_scan))
                    header_scan = len(buffer) - 2
                    header_end = found.start() if found else -1
                    if (header_end if found else len(buffer)) - 2 > MAX_HEADER_BYTES:
                        refusal = replies.HEADER_TOO_LARGE
                    elif found and _count_fields(buffer[2:header_end]) > MAX_HEADER_FIELDS:
                        refusal = replies.HEADER_TOO_LARGE
            if end >= 0:
                break
            if refusal is not None:
                # Refused: keep only what the end-marker search needs.
                del buffer[: -len(DATA_END)]
        if refusal is not None:
            return refusal, b""
        if header_end < 0 and _count_fields(buffer[2:]) > MAX_HEADER_FIELDS:
            return replies.HEADER_TOO_LARGE, b""
        # RFC 5321 4.5.2: drop the transparency dot at the start of every line; a message
        # with none (most) is copied once, one with some twice.
        if _DOT_LINE.search(buffer) is not None:
            buffer = buffer.replace(b"\r\n.", b"\r\n")
        with memoryview(buffer) as view:
            return None, bytes(view[2:])


def overlong_line(data: bytes | bytearray, start: int, line: int, limit: int) -> tuple[bool, int]:
    """Whether ``data[start:]``, read after ``line`` bytes of a line not yet ended, ends or
    holds a line of more than ``limit`` bytes before its LF; and the length of the line it
    leaves unfinished.

    Without cutting the data into lines (a million bytes of base64 are 13,000 of them): a
    line of ``limit + 1`` bytes or more between two LF holds one whole block of the tiling
    below with no LF in it (any ``2 * step - 1`` bytes in a row do), so a block without an
    LF is looked for first, and the lines measured only when there is one.
    """
    first = data.find(b"\n", start)
    if first < 0:
        line += len(data) - start
        return line > limit, line
    last = data.rfind(b"\n", start)
    tail = len(data) - last - 1
    if line + first - start > limit or tail > limit:
        return True, tail
    step = (limit + 2) // 2
    for block in range(first + 1, last - step + 1, step):
        if data.find(b"\n", block, block + step) < 0:
            return max(map(len, data[first + 1 : last].split(b"\n"))) > limit, tail
    return False, tail


def _count_fields(header: bytes | bytearray) -> int:
    """Header fields in a header section (continuation lines start with a space or tab)."""
    return sum(1 for line in header.split(b"\n") if line.strip(b"\r") and line[:1] not in (b" ", b"\t"))
