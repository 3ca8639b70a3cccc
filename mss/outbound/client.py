"""One delivery attempt to another operator: SMTP over mutual TLS with aiosmtplib.

The client requires STARTTLS, presents this operator's TLS certificate (``server.pem``,
which carries clientAuth) and checks the peer's certificate against ``MSS_PEER_CA_FILE``
and the name it was reached by. It passes the sender's DSN requests along when the peer
offers DSN (RFC 3461 ``NOTIFY``, ``ORCPT``, ``ENVID``, ``RET``), and reports the peer's
reply for each recipient: ``2xx`` relayed, ``5xx`` failed for good, ``4xx`` or no answer
to be retried. Nothing here touches the database.

A session that ended a transaction normally is kept a few seconds (``Connections``) and
reused, after ``RSET``, for the next message to the same host, as Postfix's connection
cache does: a busy route pays the TCP and TLS handshakes once, not per message.
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass, field

import aiosmtplib

from mss.crypto.pki import PkiPaths
from mss.errors import ConfigError
from mss.outbound.queue import Claimed
from mss.outbound.routes import Hop
from mss.relay.tls import MAXIMUM_VERSION, MINIMUM_VERSION, TLS12_CIPHERS
from mss.settings import Settings

log = logging.getLogger("mss.outbound")

RELAYED, FAILED, DEFERRED = "relayed", "failed", "deferred"
# How long an idle session to a peer is kept for the next message (peers time out idle
# clients after minutes; Postfix keeps its own for 2 s by default).
REUSE_IDLE = 5.0
# A peer that does not answer QUIT at once is not waited for: nothing depends on it.
QUIT_TIMEOUT = 2.0


@dataclass(frozen=True)
class Reply:
    """A peer's reply for one recipient, and what it means for the queue."""

    outcome: str  # relayed | failed | deferred
    code: int  # 0 when the peer gave none (connection lost, timeout, TLS refused)
    text: str  # "550 5.1.1 User unknown", or why there was no reply

    @property
    def status(self) -> str:
        """The RFC 3463 status the reply carries, or the class's default."""
        parts = self.text.split(" ", 2)
        if len(parts) > 1 and parts[1][:1] in "245" and parts[1].count(".") == 2:
            return parts[1]
        return {RELAYED: "2.0.0", FAILED: "5.0.0"}.get(self.outcome, "4.0.0")


@dataclass
class Attempt:
    """What one attempt gave for each recipient (those absent were not tried)."""

    peer: str = ""
    peer_dsn: bool = False
    replies: dict[str, Reply] = field(default_factory=dict)


def peer_context(settings: Settings) -> ssl.SSLContext:
    """The TLS client context towards other operators: their CAs only, the name checked,
    this operator's certificate presented. Raises ConfigError when material is missing."""
    ca_file = settings.federation.peer_ca_file
    if not ca_file.is_file():
        raise ConfigError(f"MSS_PEER_CA_FILE {ca_file} is missing: name the CAs of the other operators")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    context.minimum_version = MINIMUM_VERSION
    context.maximum_version = MAXIMUM_VERSION
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    paths = PkiPaths.from_settings(settings)
    try:
        context.load_cert_chain(paths.tls_certificate, paths.tls_key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"the TLS certificate {paths.tls_certificate} or its key cannot be loaded") from exc
    return context


def _printable(text: str) -> str:
    # Peer replies end up in DSN fields, which are printable US-ASCII on one line.
    return "".join(c if " " <= c <= "~" else "?" for c in " ".join(text.split()))[:400]


def _reply(code: int, message: str) -> Reply:
    text = _printable(f"{code} {message}")
    if 200 <= code < 300:
        return Reply(RELAYED, code, text)
    if 500 <= code < 600:
        return Reply(FAILED, code, text)
    return Reply(DEFERRED, code, text)


def _no_reply(why: str) -> Reply:
    return Reply(DEFERRED, 0, _printable(why))


def _describe(error: BaseException) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS: the peer's certificate was refused ({error.verify_message})"
    if isinstance(error, ssl.SSLError):
        return f"TLS: {error.reason or type(error).__name__}"
    if isinstance(error, aiosmtplib.SMTPTimeoutError):
        return "no answer in time"
    if isinstance(error, (aiosmtplib.SMTPConnectError, ConnectionError, OSError)):
        cause = error.__cause__ or error
        return f"connection failed ({getattr(cause, 'strerror', None) or type(cause).__name__})"
    return f"{type(error).__name__}"


def _mail_options(entry: Claimed, size: int, dsn: bool) -> list[str]:
    options = [f"SIZE={size}"]
    if dsn:
        if entry.ret:
            options.append(f"RET={entry.ret}")
        if entry.envelope_id:
            options.append(f"ENVID={_xtext(entry.envelope_id)}")
    return options


def _rcpt_options(notify: str, orcpt: str | None, dsn: bool) -> list[str]:
    if not dsn:
        return []
    options = [f"NOTIFY={notify}"]
    if orcpt:
        addr_type, _, address = orcpt.partition(";")
        options.append(f"ORCPT={addr_type};{_xtext(address)}")
    return options


def _xtext(value: str) -> str:
    """RFC 3461 4: "+", "=" and characters outside "!".."~" as +XX."""
    return "".join(c if "!" <= c <= "~" and c not in "+=" else f"+{ord(c):02X}" for c in value)


class Connections:
    """Idle sessions to peers (at most ``per_peer`` each), reused for the next message."""

    def __init__(self, per_peer: int = 4, idle: float = REUSE_IDLE) -> None:
        self.per_peer = per_peer
        self.idle = idle
        self._idle: dict[Hop, list[tuple[float, aiosmtplib.SMTP, bool]]] = {}

    def take(self, hop: Hop) -> tuple[aiosmtplib.SMTP, bool] | None:
        """A kept session to ``hop`` (its client and whether the peer offers DSN), or None."""
        kept = self._idle.get(hop, [])
        now = time.monotonic()
        while kept:
            since, client, dsn = kept.pop()
            if now - since < self.idle and client.is_connected:
                return client, dsn
            client.close()
        return None

    async def give(self, hop: Hop, client: aiosmtplib.SMTP, dsn: bool) -> None:
        kept = self._idle.setdefault(hop, [])
        if len(kept) < self.per_peer:
            kept.append((time.monotonic(), client, dsn))
        else:
            await _quit(client)
            client.close()

    async def close(self) -> None:
        for kept in self._idle.values():
            for _since, client, _dsn in kept:
                await _quit(client)
                client.close()
        self._idle.clear()


async def deliver(
    settings: Settings,
    context: ssl.SSLContext,
    hops: list[Hop],
    entry: Claimed,
    *,
    local_hostname: str,
    connections: Connections | None = None,
) -> Attempt:
    """Try ``hops`` in order until one answers; return the reply for each recipient.

    A hop that cannot be reached, refuses TLS or presents an untrusted certificate gives
    way to the next; when none answers, every recipient is deferred with the last reason.
    """
    attempt = Attempt()
    why = "no host to deliver to"
    for hop in hops:
        attempt.peer = f"{hop.host}:{hop.port}"
        try:
            await _session(settings, context, hop, entry, attempt, local_hostname, connections)
            return attempt
        except (TimeoutError, aiosmtplib.SMTPException, ssl.SSLError, OSError) as error:
            why = f"{attempt.peer}: {_describe(error)}"
            log.info("delivery %s to %s: %s", entry.queue_id, attempt.peer, _describe(error))
            if attempt.replies and all(r.outcome == RELAYED for r in attempt.replies.values()):
                return attempt  # DATA accepted, the connection dropped at QUIT
            # Replies of a transaction that broke off before its end are not final.
            attempt.replies = {a: r for a, r in attempt.replies.items() if r.outcome == FAILED}
    for recipient in entry.recipients:
        attempt.replies.setdefault(recipient.address, _no_reply(why))
    return attempt


async def _open(settings: Settings, context: ssl.SSLContext, hop: Hop, local_hostname: str) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(
        hostname=hop.host,
        port=hop.port,
        start_tls=False,
        use_tls=False,
        local_hostname=local_hostname,
        timeout=settings.federation.delivery_timeout,
    )
    await client.connect()
    try:
        await client.ehlo()
        if not client.supports_extension("starttls"):
            raise aiosmtplib.SMTPNotSupported("the peer does not offer STARTTLS")
        await client.starttls(tls_context=context, server_hostname=hop.host)
        await client.ehlo()
    except BaseException:
        client.close()
        raise
    return client


async def _session(
    settings: Settings,
    context: ssl.SSLContext,
    hop: Hop,
    entry: Claimed,
    attempt: Attempt,
    local_hostname: str,
    connections: Connections | None,
) -> None:
    kept = connections.take(hop) if connections is not None else None
    if kept is not None:
        client, attempt.peer_dsn = kept
        try:
            await client.rset()
        except (aiosmtplib.SMTPException, OSError):
            client.close()  # the peer closed it meanwhile: a fresh session, not a failure
            kept = None
    if kept is None:
        client = await _open(settings, context, hop, local_hostname)
        attempt.peer_dsn = client.supports_extension("dsn")
    reusable = False
    try:
        reusable = await _transaction(client, entry, attempt)
    finally:
        if reusable and connections is not None:
            await connections.give(hop, client, attempt.peer_dsn)
        else:
            if reusable:
                await _quit(client)
            client.close()


async def _transaction(client: aiosmtplib.SMTP, entry: Claimed, attempt: Attempt) -> bool:
    """MAIL, RCPT for each recipient, DATA; True when the session may carry another one."""
    try:
        await client.mail(entry.mail_from, options=_mail_options(entry, len(entry.payload), attempt.peer_dsn))
    except aiosmtplib.SMTPResponseException as refused:
        for recipient in entry.recipients:
            attempt.replies[recipient.address] = _reply(refused.code, refused.message)
        return refused.code != 421
    accepted = []
    for recipient in entry.recipients:
        try:
            await client.rcpt(
                recipient.address, options=_rcpt_options(recipient.notify, recipient.orcpt, attempt.peer_dsn)
            )
            accepted.append(recipient.address)
        except aiosmtplib.SMTPResponseException as refused:
            attempt.replies[recipient.address] = _reply(refused.code, refused.message)
    if not accepted:
        return True
    try:
        response = await client.data(entry.payload)
        reply = _reply(response.code, response.message)
    except aiosmtplib.SMTPResponseException as refused:
        reply = _reply(refused.code, refused.message)
    for address in accepted:
        attempt.replies[address] = reply
    return reply.code != 421


async def _quit(client: aiosmtplib.SMTP) -> None:
    try:
        await client.quit(timeout=QUIT_TIMEOUT)
    except (aiosmtplib.SMTPException, OSError):
        pass  # the transaction is over; a lost QUIT changes nothing
