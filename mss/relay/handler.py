"""From SMTP commands to the pipeline, and from the pipeline's verdicts to SMTP replies.

``RelayHandler`` holds no rule of its own: ``mss.pipeline`` decides who may send, who may
receive and what may travel; this module only calls it off the event loop and names the
reply for each outcome. A MAIL or RCPT refusal leaves a ``smtp.refused`` audit event
(addresses and a reason, never content) so that relay probing and spoofing attempts by an
authenticated account are on record; accepted messages and DATA refusals are audited by
the pipeline itself.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final

from mss import audit, metrics, pipeline
from mss.db import session_scope
from mss.documents.base import DocumentRefused, DocumentTooLarge
from mss.errors import (
    AccountDisabled,
    AddressNotServed,
    BareCarriageReturn,
    CertificateExpired,
    CertificateRevoked,
    DocumentError,
    DomainNotServed,
    EntryRevoked,
    FromHeaderMismatch,
    MalformedMessage,
    MalformedOriginator,
    MessageTooLarge,
    MimeTooComplex,
    MssError,
    NotEncryptedForRecipients,
    PolicyError,
    RecipientHasNoCertificate,
    RepeatedHeaderField,
    RevokedAddress,
    SenderMismatch,
    StandingError,
    TooManyRecipients,
    UnknownAddress,
    UnopenableEnvelope,
)
from mss.pipeline import RecipientRequest, Submission
from mss.relay import replies
from mss.relay.esmtp import MailParameters, RcptParameters

if TYPE_CHECKING:
    from mss.relay.protocol import RelayEnvelope, RelaySession, RelaySMTP
    from mss.runtime import Runtime

log = logging.getLogger("mss.relay")

# Refusals by exception class, most specific first: (class, reply, audit reason).
_RECIPIENT_REFUSALS: Final[tuple[tuple[type[MssError], str, str], ...]] = (
    (DomainNotServed, replies.RELAY_DENIED, "domain-not-served"),
    (UnknownAddress, replies.UNKNOWN_RECIPIENT, "unknown-address"),
    (RevokedAddress, replies.REVOKED_RECIPIENT, "revoked-address"),
    (RecipientHasNoCertificate, replies.RECIPIENT_NO_CERTIFICATE, "no-certificate"),
)
# The sender stopped standing since AUTH: (class, reply, audit reason).
_SENDER_REFUSALS: Final[tuple[tuple[type[StandingError], str, str], ...]] = (
    (AccountDisabled, replies.SENDER_DISABLED, "disabled"),
    (EntryRevoked, replies.SENDER_REVOKED, "entry-revoked"),
    (CertificateRevoked, replies.SENDER_CERTIFICATE_REVOKED, "certificate-revoked"),
    (CertificateExpired, replies.SENDER_CERTIFICATE_EXPIRED, "certificate-expired"),
    (AddressNotServed, replies.SENDER_NOT_SERVED, "domain-not-served"),
    (StandingError, replies.SENDER_REVOKED, "not-in-standing"),
)
_MALFORMED_REFUSALS: Final[tuple[tuple[type[MalformedMessage], str], ...]] = (
    (BareCarriageReturn, replies.BARE_CR_IN_MESSAGE),
    (MimeTooComplex, replies.MIME_TOO_COMPLEX),
    (RepeatedHeaderField, replies.REPEATED_HEADER_FIELD),
    (MalformedOriginator, replies.MALFORMED_ORIGINATOR),
    (MalformedMessage, replies.MALFORMED_MESSAGE),
)
_SUBMISSION_REFUSALS: Final[tuple[tuple[type[MssError], str], ...]] = (
    *((cls, reply) for cls, reply, _ in _SENDER_REFUSALS),
    (FromHeaderMismatch, replies.FROM_HEADER_MISMATCH),
    (MessageTooLarge, replies.MESSAGE_TOO_LARGE),
    (NotEncryptedForRecipients, replies.NOT_ENCRYPTED_FOR_RECIPIENTS),
    (SenderMismatch, replies.SENDER_NOT_AUTHENTICATED_ACCOUNT),
    (TooManyRecipients, replies.TOO_MANY_RECIPIENTS),
    *((cls, reply) for cls, reply, _ in _RECIPIENT_REFUSALS),
    (PolicyError, replies.POLICY_REFUSED),
)


# A refused document's reply code and RFC 3463 status, by the kind of refusal: a type the
# trust space never carries (X.7.1 delivery not authorised), a size (X.3.4 too big for the
# system), anything else a document that fails its checks (X.6.0 other media error).
_DOCUMENT_STATUSES: Final[tuple[tuple[type[DocumentError], int, str], ...]] = (
    (DocumentRefused, 550, "5.7.1"),
    (DocumentTooLarge, 552, "5.3.4"),
    (DocumentError, 554, "5.6.0"),
)


def document_status(error: DocumentError | type[DocumentError]) -> tuple[int, str]:
    """The reply code and enhanced status refusing a document for ``error`` (or its class)."""
    cls = error if isinstance(error, type) else type(error)
    return next((code, status) for kind, code, status in _DOCUMENT_STATUSES if issubclass(cls, kind))


def submission_refusal(error: MssError) -> str | None:
    """The reply refusing a message for ``error`` from ``pipeline.submit``, or None.

    None means the error is not a verdict on the message (storage, crypto ...): the caller
    answers ``451`` and logs it.
    """
    if isinstance(error, MalformedMessage):
        reply = next(reply for cls, reply in _MALFORMED_REFUSALS if isinstance(error, cls))
        return replies.with_detail(reply, error.message)
    if isinstance(error, UnopenableEnvelope):
        return replies.with_detail(replies.ENVELOPE_NOT_SUPPORTED, error.message)
    if isinstance(error, DocumentError):
        return replies.document_refused(*document_status(error), error.message)
    for cls, reply in _SUBMISSION_REFUSALS:
        if isinstance(error, cls):
            return reply
    return None


def _record_refusal(rt: Runtime, *, actor: str, address: str, request_id: str, stage: str, reason: str) -> None:
    with session_scope(rt.engine) as session:
        audit.record(
            session,
            actor=actor,
            action="smtp.refused",
            object=address,
            outcome=audit.DENIED,
            request_id=request_id,
            stage=stage,
            reason=reason,
        )


class RelayHandler:
    """aiosmtpd handler hooks of the submission relay (one per server, shared by sessions)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def _refuse(
        self,
        server: RelaySMTP,
        session: RelaySession,
        envelope: RelayEnvelope,
        address: str,
        *,
        stage: str,
        reason: str,
        reply: str,
    ) -> str:
        server.refused += 1
        metrics.refused("smtp", reply)
        account = session.account
        await asyncio.to_thread(
            _record_refusal,
            self.rt,
            actor=account.address if account else "-",
            address=address,
            request_id=envelope.request_id,
            stage=stage,
            reason=reason,
        )
        return reply

    async def handle_EHLO(
        self, server: RelaySMTP, session: RelaySession, envelope: RelayEnvelope, hostname: str, responses: list[str]
    ) -> list[str]:
        """aiosmtpd's EHLO lines with DSN and ENHANCEDSTATUSCODES before the last one."""
        session.host_name = hostname
        return [*responses[:-1], replies.EXTENSION_DSN, replies.EXTENSION_ENHANCED_STATUS_CODES, responses[-1]]

    async def handle_MAIL(
        self,
        server: RelaySMTP,
        session: RelaySession,
        envelope: RelayEnvelope,
        address: str,
        parameters: MailParameters,
    ) -> str:
        """Accept the sender only if it is the authenticated account (``553 5.7.1`` otherwise)
        and the account still stands (``550 5.7.1`` naming why, otherwise)."""
        account = session.account
        assert account is not None  # RelaySMTP refuses MAIL before AUTH
        try:
            pipeline.check_sender(account, address)
        except SenderMismatch:
            return await self._refuse(
                server,
                session,
                envelope,
                address,
                stage="mail",
                reason="sender-mismatch",
                reply=replies.SENDER_NOT_AUTHENTICATED_ACCOUNT,
            )
        try:
            await asyncio.to_thread(pipeline.check_sender_standing, self.rt, account)
        except StandingError as error:
            reply, reason = next((r, why) for cls, r, why in _SENDER_REFUSALS if isinstance(error, cls))
            return await self._refuse(server, session, envelope, address, stage="mail", reason=reason, reply=reply)
        envelope.mail_from = address
        envelope.parameters = parameters
        return replies.SENDER_OK

    async def handle_RCPT(
        self,
        server: RelaySMTP,
        session: RelaySession,
        envelope: RelayEnvelope,
        address: str,
        parameters: RcptParameters,
    ) -> str:
        """Accept a recipient the directory lets receive, up to the cap on recipients."""
        if len(envelope.recipients) >= self.rt.settings.relay.max_recipients:
            server.refused += 1
            metrics.refused("smtp", replies.TOO_MANY_RECIPIENTS)
            return replies.TOO_MANY_RECIPIENTS
        try:
            normalised = await asyncio.to_thread(pipeline.check_recipient, self.rt, address)
        except MssError as error:
            for cls, reply, reason in _RECIPIENT_REFUSALS:
                if isinstance(error, cls):
                    return await self._refuse(
                        server, session, envelope, address, stage="rcpt", reason=reason, reply=reply
                    )
            raise
        if all(r.address != normalised for r in envelope.recipients):
            # Without NOTIFY the pipeline's default (RFC 3461: FAILURE) applies.
            extra = {} if parameters.notify is None else {"notify": parameters.notify}
            envelope.recipients.append(RecipientRequest(address=normalised, orcpt=parameters.orcpt, **extra))
            envelope.rcpt_tos.append(normalised)
        return replies.RECIPIENT_OK

    async def handle_DATA(self, server: RelaySMTP, session: RelaySession, envelope: RelayEnvelope) -> str:
        """Hand the message to the pipeline; ``250`` only once it is durably stored."""
        account = session.account
        assert account is not None and isinstance(envelope.content, bytes)
        submission = Submission(
            sender=account,
            recipients=tuple(envelope.recipients),
            raw=envelope.content,
            channel="smtp",
            request_id=envelope.request_id,
            envelope_id=envelope.parameters.envelope_id,
        )
        try:
            accepted = await asyncio.to_thread(pipeline.submit, self.rt, submission)
        except MssError as error:
            reply = submission_refusal(error)
            if reply is None:
                raise
            if isinstance(error, StandingError):
                # Revoked, disabled or rekeyed between MAIL and DATA: on record like at MAIL.
                return await self._refuse(
                    server, session, envelope, account.address, stage="data", reason=error.code, reply=reply
                )
            server.refused += 1
            metrics.refused("smtp", reply)
            log.debug("session %s request %s refused: %s", session.correlation_id, envelope.request_id, reply[:9])
            return reply
        server.accepted += 1
        return replies.queued(accepted.queue_id)
