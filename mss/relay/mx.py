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
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from aiosmtpd.smtp import TLSSetupException, syntax
from cryptography import x509

from mss import audit, inbound
from mss.db import session_scope
from mss.errors import (
    DocumentError,
    DomainNotServed,
    FromHeaderMismatch,
    MalformedMessage,
    MessageTooLarge,
    MssError,
    NoMailboxHere,
    NotEncryptedForRecipients,
    PeerNotAuthenticated,
    PolicyError,
    RecipientHasNoCertificate,
    RevokedAddress,
    SenderNotTrusted,
    UnknownAddress,
)
from mss.pipeline import RecipientRequest
from mss.relay import replies
from mss.relay.esmtp import MailParameters, RcptParameters
from mss.relay.handler import submission_refusal
from mss.relay.protocol import COMMAND_CALL_LIMIT, RelaySession, RelaySMTP, SessionRegistry
from mss.relay.server import IDENT, Listener
from mss.relay.tls import mx_server_context
from mss.runtime import Runtime

if TYPE_CHECKING:
    from mss.relay.protocol import RelayEnvelope

log = logging.getLogger("mss.relay.mx")

_RECIPIENT_REFUSALS: Final[tuple[tuple[type[MssError], str, str], ...]] = (
    (DomainNotServed, replies.RELAY_DENIED, "domain-not-served"),
    (UnknownAddress, replies.UNKNOWN_RECIPIENT, "unknown-address"),
    (RevokedAddress, replies.REVOKED_RECIPIENT, "revoked-address"),
    (NoMailboxHere, replies.NO_MAILBOX, "no-mailbox"),
    (RecipientHasNoCertificate, replies.RECIPIENT_NO_CERTIFICATE, "no-certificate"),
)
_DATA_REFUSALS: Final[tuple[tuple[type[MssError], str], ...]] = (
    (FromHeaderMismatch, replies.FROM_NOT_ENVELOPE),
    (SenderNotTrusted, replies.SENDER_NOT_TRUSTED),
    (MessageTooLarge, replies.MESSAGE_TOO_LARGE),
    (NotEncryptedForRecipients, replies.NOT_ENCRYPTED_FOR_RECIPIENTS),
    *((cls, reply) for cls, reply, _ in _RECIPIENT_REFUSALS),
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
                _record,
                self.rt,
                actor=f"peer:{peer}",
                address="-",
                request_id=self.correlation_id,
                stage="tls",
                reason=str(why)[:100],
            )
        return await super().handle_exception(error)


def _record(rt: Runtime, *, actor: str, address: str, request_id: str, stage: str, reason: str) -> None:
    with session_scope(rt.engine) as session:
        audit.record(
            session,
            actor=actor,
            action="mx.refused",
            object=address or "-",
            outcome=audit.DENIED,
            request_id=request_id,
            stage=stage,
            reason=reason,
        )


def _peer(session: MxSession) -> inbound.Peer:
    return inbound.Peer(address=session.peer[0] if session.peer else "-", certificate=session.peer_certificate)


class MxHandler:
    """aiosmtpd hooks of the MX door (one per listener, shared by its sessions)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def _refuse(
        self,
        server: MxSMTP,
        session: MxSession,
        envelope: RelayEnvelope,
        address: str,
        *,
        stage: str,
        reason: str,
        reply: str,
    ) -> str:
        server.refused += 1
        peer = _peer(session)
        await asyncio.to_thread(
            _record,
            self.rt,
            actor=f"peer:{peer.address} {peer.name}",
            address=address,
            request_id=envelope.request_id or server.correlation_id,
            stage=stage,
            reason=reason,
        )
        return reply

    async def handle_EHLO(
        self, server: MxSMTP, session: MxSession, envelope: RelayEnvelope, hostname: str, responses: list[str]
    ) -> list[str]:
        """aiosmtpd's EHLO lines without AUTH, with DSN and ENHANCEDSTATUSCODES."""
        session.host_name = hostname
        kept = [line for line in responses[:-1] if not line[4:].upper().startswith("AUTH")]
        return [*kept, replies.EXTENSION_DSN, replies.EXTENSION_ENHANCED_STATUS_CODES, responses[-1]]

    async def handle_MAIL(
        self, server: MxSMTP, session: MxSession, envelope: RelayEnvelope, address: str, parameters: MailParameters
    ) -> str:
        """The peer must have presented a trusted certificate, and the sender's domain must
        be on the trust list (a null sender is judged at DATA by its From: domain)."""
        try:
            inbound.check_peer(_peer(session))
        except PeerNotAuthenticated:
            return await self._refuse(
                server,
                session,
                envelope,
                address,
                stage="mail",
                reason="no-client-certificate",
                reply=replies.CLIENT_CERTIFICATE_REQUIRED,
            )
        try:
            await asyncio.to_thread(inbound.check_sender, self.rt, address)
        except SenderNotTrusted as error:
            served = "served here" in error.message
            return await self._refuse(
                server,
                session,
                envelope,
                address,
                stage="mail",
                reason="sender-served-here" if served else "sender-not-trusted",
                reply=replies.SENDER_SERVED_HERE if served else replies.SENDER_NOT_TRUSTED,
            )
        except (UnknownAddress, RevokedAddress):
            return await self._refuse(
                server,
                session,
                envelope,
                address,
                stage="mail",
                reason="sender-not-listed",
                reply=replies.SENDER_NOT_LISTED,
            )
        envelope.mail_from = address
        envelope.parameters = parameters
        return replies.SENDER_OK

    async def handle_RCPT(
        self, server: MxSMTP, session: MxSession, envelope: RelayEnvelope, address: str, parameters: RcptParameters
    ) -> str:
        """Only local recipients with a mailbox here: never a relay."""
        if len(envelope.recipients) >= self.rt.settings.relay.max_recipients:
            server.refused += 1
            return replies.TOO_MANY_RECIPIENTS
        try:
            normalised = await asyncio.to_thread(inbound.check_recipient, self.rt, address)
        except MssError as error:
            for cls, reply, reason in _RECIPIENT_REFUSALS:
                if isinstance(error, cls):
                    return await self._refuse(
                        server, session, envelope, address, stage="rcpt", reason=reason, reply=reply
                    )
            raise
        if all(r.address != normalised for r in envelope.recipients):
            extra = {} if parameters.notify is None else {"notify": parameters.notify}
            envelope.recipients.append(RecipientRequest(address=normalised, orcpt=parameters.orcpt, **extra))
            envelope.rcpt_tos.append(normalised)
        return replies.RECIPIENT_OK

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
            return await self._refuse(
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
    settings = rt.settings
    handler = handler or MxHandler(rt)
    tls_context = mx_server_context(settings)
    hostname = settings.pki.hostnames[0] if settings.pki.hostnames else socket.getfqdn()

    def factory() -> MxSMTP:
        options: dict[str, Any] = dict(
            rt=rt,
            registry=registry,
            hostname=hostname,
            ident=IDENT,
            tls_context=tls_context,
            require_starttls=True,
            auth_required=False,
            auth_require_tls=True,
            auth_exclude_mechanism=["PLAIN", "LOGIN"],
            data_size_limit=settings.relay.max_message_size,
            timeout=settings.relay.command_timeout,
            command_call_limit=dict(COMMAND_CALL_LIMIT),
            loop=asyncio.get_running_loop(),
        )
        return MxSMTP(handler, **options)

    return factory


async def start_mx_listener(rt: Runtime, *, host: str, port: int, handler: MxHandler | None = None) -> Listener:
    """Bind the MX door on ``host:port`` and start accepting sessions.

    Raises ConfigError (TLS material, peer CAs) and OSError (the address cannot be bound).
    """
    registry = SessionRegistry(rt.settings.relay.max_sessions)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(mx_factory(rt, registry, handler), host=host, port=port, reuse_address=True)
    listener = Listener(server, registry)
    log.info("MX listening on %s:%d (mutual TLS)", *listener.address)
    return listener


async def serve_mx(rt: Runtime, *, ready: asyncio.Event | None = None) -> None:
    """Serve the MX door on ``MSS_MX_HOST:MSS_MX_PORT`` until cancelled, then drain."""
    federation = rt.settings.federation
    listener = await start_mx_listener(rt, host=federation.mx_host, port=federation.mx_port)
    try:
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()
    finally:
        await asyncio.shield(listener.aclose())
