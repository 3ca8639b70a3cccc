"""The MX door: SMTP from other operators' servers on ``MSS_MX_PORT`` (2525, 25 in production).

The same protocol code as submission (``RelaySMTP``: STARTTLS before anything, ESMTP
parameters, size, line and header limits, idle timeout, a cap on sessions), with mutual TLS
instead of AUTH: STARTTLS asks for a client certificate checked against
``MSS_PEER_CA_FILE`` (``mss.relay.tls.mx_server_context``), ``AUTH`` is not offered, and
``MxHandler`` hands every decision to ``mss.inbound``: the peer's certificate and sender
domain at ``MAIL``, local recipients only at ``RCPT`` (no relaying through this door), the
message at ``DATA``, ``250`` once it is durably stored (or was, by an earlier attempt).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from aiosmtpd.smtp import TLSSetupException, syntax
from cryptography import x509

from mss import inbound
from mss.background import serve_until_cancelled
from mss.errors import (
    DocumentError,
    FromHeaderMismatch,
    MalformedMessage,
    MessageTooLarge,
    MssError,
    NotEncryptedForRecipients,
    PeerNotAuthenticated,
    PolicyError,
    RevokedAddress,
    SenderNotTrusted,
    UnknownAddress,
)
from mss.relay import replies
from mss.relay.handler import RECIPIENT_REFUSALS, DoorHandler, Refusal, record_refusal, submission_refusal
from mss.relay.protocol import RelaySession, RelaySMTP, SessionRegistry
from mss.relay.server import Listener, messages_per_client, session_factory
from mss.relay.tls import mx_server_context
from mss.runtime import Runtime

if TYPE_CHECKING:
    from mss.relay.protocol import RelayEnvelope

log = logging.getLogger("mss.relay.mx")

# A message refused at DATA, besides a malformed message or document (as at submission).
_DATA_REFUSALS: Final[tuple[tuple[type[MssError], str], ...]] = (
    (FromHeaderMismatch, replies.FROM_NOT_ENVELOPE),
    (SenderNotTrusted, replies.SENDER_NOT_TRUSTED),
    (MessageTooLarge, replies.MESSAGE_TOO_LARGE),
    (NotEncryptedForRecipients, replies.NOT_ENCRYPTED_FOR_RECIPIENTS),
    *((cls, reply) for cls, reply, _ in RECIPIENT_REFUSALS),
)


class MxSession(RelaySession):
    """A session of another operator's server; ``peer_certificate`` is its TLS client
    certificate (None before STARTTLS or when it presented none)."""

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        ssl_object = (self.ssl or {}).get("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        return x509.load_der_x509_certificate(der) if der else None


class MxSMTP(RelaySMTP):
    """One SMTP session on the MX port: RelaySMTP's rules of the wire, no AUTH."""

    def _create_session(self) -> MxSession:
        return MxSession(self.loop, self.correlation_id)

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        await self.push(replies.AUTH_NOT_OFFERED)

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # A certificate from an unknown CA (or a failed handshake): on record with the
            # peer's address; TLS itself has already told the peer (an alert).
            peer = self.session.peer[0] if self.session is not None and self.session.peer else "-"
            cause = error.__cause__
            why = getattr(cause, "reason", None) or type(cause).__name__
            await asyncio.to_thread(
                record_refusal,
                self.rt,
                action=MxHandler.refusal_action,
                actor=f"peer:{peer}",
                address="-",
                request_id=self.correlation_id,
                stage="tls",
                reason=str(why)[:100],
            )
        return await super().handle_exception(error)


def _peer(session: RelaySession) -> inbound.Peer:
    assert isinstance(session, MxSession)
    return inbound.Peer(address=session.peer[0] if session.peer else "-", certificate=session.peer_certificate)


class MxHandler(DoorHandler):
    """aiosmtpd hooks of the MX door: another operator's server, known by its certificate."""

    refusal_action = "mx.refused"
    door = "mx"

    def actor(self, session: RelaySession) -> str:
        peer = _peer(session)
        return f"peer:{peer.address} {peer.name}"

    def extensions(self, lines: list[str]) -> list[str]:
        """aiosmtpd's EHLO lines without AUTH."""
        return [line for line in lines if not line[4:].upper().startswith("AUTH")]

    async def sender_refusal(self, session: RelaySession, envelope: RelayEnvelope, address: str) -> Refusal | None:
        """The peer must have presented a trusted certificate, and the sender's domain must
        be on the trust list (a null sender is judged at DATA by its From: domain)."""
        try:
            inbound.check_peer(_peer(session))
        except PeerNotAuthenticated:
            return "no-client-certificate", replies.CLIENT_CERTIFICATE_REQUIRED
        try:
            await asyncio.to_thread(inbound.check_sender, self.rt, address)
        except SenderNotTrusted as error:
            if "served here" in error.message:
                return "sender-served-here", replies.SENDER_SERVED_HERE
            return "sender-not-trusted", replies.SENDER_NOT_TRUSTED
        except (UnknownAddress, RevokedAddress):
            return "sender-not-listed", replies.SENDER_NOT_LISTED
        return None

    def check_recipient(self, address: str) -> str:
        """Only local recipients with a mailbox here: never a relay."""
        return inbound.check_recipient(self.rt, address)

    async def handle_DATA(self, server: MxSMTP, session: MxSession, envelope: RelayEnvelope) -> str:
        """Hand the message to ``mss.inbound``; ``250`` only once it is durably stored."""
        assert isinstance(envelope.content, bytes)
        mail_from = envelope.mail_from or ""
        arrival = inbound.Arrival(
            peer=_peer(session),
            mail_from="" if mail_from == "<>" else mail_from.strip("<>").lower(),
            recipients=tuple(envelope.recipients),
            raw=envelope.content,
            envelope_id=envelope.parameters.envelope_id,
            request_id=envelope.request_id,
        )
        try:
            received = await inbound.receive_async(self.rt, arrival)
        except MssError as error:
            reply = _data_refusal(error)
            if reply is None:
                raise
            return await self.refuse(
                server,
                session,
                envelope,
                arrival.mail_from or "<>",
                stage="data",
                reason=type(error).__name__,
                reply=reply,
            )
        server.accepted += 1
        if received.duplicate:
            return replies.already_received(received.queue_id)
        return replies.queued(received.queue_id)


def _data_refusal(error: MssError) -> str | None:
    if isinstance(error, (MalformedMessage, DocumentError)):
        return submission_refusal(error)
    for cls, reply in _DATA_REFUSALS:
        if isinstance(error, cls):
            return reply
    if isinstance(error, PolicyError):
        return replies.POLICY_REFUSED
    return None


def mx_factory(rt: Runtime, registry: SessionRegistry, handler: MxHandler | None = None) -> Callable[[], MxSMTP]:
    """A protocol factory for ``loop.create_server``: one ``MxSMTP`` per connection, all
    sharing ``handler`` (default: an ``MxHandler`` of ``rt``).

    Raises ConfigError when the TLS certificate or the peer CA file cannot be loaded.
    """
    return session_factory(
        MxSMTP,
        handler or MxHandler(rt),
        rt,
        registry,
        mx_server_context(rt.settings),
        auth_required=False,
        auth_exclude_mechanism=["PLAIN", "LOGIN"],
    )


async def start_mx_listener(rt: Runtime, *, host: str, port: int, handler: MxHandler | None = None) -> Listener:
    """Bind the MX door on ``host:port`` and start accepting sessions.

    Raises ConfigError (TLS material, peer CAs) and OSError (the address cannot be bound).
    """
    registry = SessionRegistry(
        rt.settings.relay.max_sessions,
        rt.settings.federation.mx_max_sessions_per_client,
        messages_per_client=messages_per_client(rt),
    )
    listener = await Listener.bind(mx_factory(rt, registry, handler), registry, host=host, port=port)
    log.info("MX listening on %s:%d (mutual TLS)", *listener.address)
    return listener


async def serve_mx(rt: Runtime, *, ready: asyncio.Event | None = None) -> None:
    """Serve the MX door on ``MSS_MX_HOST:MSS_MX_PORT`` until cancelled, then drain."""
    federation = rt.settings.federation
    listener = await start_mx_listener(rt, host=federation.mx_host, port=federation.mx_port)
    await serve_until_cancelled(listener.aclose, ready)
