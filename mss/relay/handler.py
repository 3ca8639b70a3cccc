"""From SMTP commands to the services, and from their verdicts to SMTP replies.

Both SMTP doors hand every decision on: ``RelayHandler`` (submission) to ``mss.pipeline``,
``mss.relay.mx.MxHandler`` (MX) to ``mss.inbound``. What the two share is here, in
``DoorHandler``: the refusals of a recipient, how a refusal is counted and put on record,
the EHLO extensions, the accepted sender and recipients on the envelope. A MAIL or RCPT
refusal leaves an audit event (addresses and a reason, never content) so that relay
probing and spoofing attempts are on record; accepted messages and DATA refusals are
audited by the services themselves.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from typing import TYPE_CHECKING, Final

from mss import audit, errors, metrics, pipeline
from mss.db import session_scope
from mss.documents.base import DocumentRefused, DocumentTooLarge
from mss.pipeline import RecipientRequest, Submission
from mss.relay import replies
from mss.relay.esmtp import MailParameters, RcptParameters

if TYPE_CHECKING:
    from mss.relay.protocol import RelayEnvelope, RelaySession, RelaySMTP
    from mss.runtime import Runtime

log = logging.getLogger("mss.relay")

# A refusal: the audit reason, and the reply.
Refusal = tuple[str, str]

# Refusals of a recipient by exception class, most specific first: (class, reply, audit
# reason). ``NoMailboxHere`` comes from the MX door alone (``mss.inbound``).
RECIPIENT_REFUSALS: Final[tuple[tuple[type[errors.MssError], str, str], ...]] = (
    (errors.DomainNotServed, replies.RELAY_DENIED, "domain-not-served"),
    (errors.UnknownAddress, replies.UNKNOWN_RECIPIENT, "unknown-address"),
    (errors.RevokedAddress, replies.REVOKED_RECIPIENT, "revoked-address"),
    (errors.NoMailboxHere, replies.NO_MAILBOX, "no-mailbox"),
    (errors.RecipientHasNoCertificate, replies.RECIPIENT_NO_CERTIFICATE, "no-certificate"),
)
# A submitted message refused, most specific first. The replies to a malformed message or
# an envelope that cannot be opened name what is wrong (``_DETAILED``).
_SUBMISSION_REFUSALS: Final[tuple[tuple[type[errors.MssError], str], ...]] = (
    (errors.BareCarriageReturn, replies.BARE_CR_IN_MESSAGE),
    (errors.MimeTooComplex, replies.MIME_TOO_COMPLEX),
    (errors.RepeatedHeaderField, replies.REPEATED_HEADER_FIELD),
    (errors.MalformedOriginator, replies.MALFORMED_ORIGINATOR),
    (errors.MalformedMessage, replies.MALFORMED_MESSAGE),
    (errors.UnopenableEnvelope, replies.ENVELOPE_NOT_SUPPORTED),
    # The sender stopped standing since AUTH (at MAIL or at DATA; on record by its code).
    (errors.AccountDisabled, replies.SENDER_DISABLED),
    (errors.CredentialsChanged, replies.SENDER_PASSWORD_CHANGED),
    (errors.EntryRevoked, replies.SENDER_REVOKED),
    (errors.CertificateRevoked, replies.SENDER_CERTIFICATE_REVOKED),
    (errors.CertificateExpired, replies.SENDER_CERTIFICATE_EXPIRED),
    (errors.AddressNotServed, replies.SENDER_NOT_SERVED),
    (errors.StandingError, replies.SENDER_REVOKED),
    (errors.SenderHeaderMismatch, replies.SENDER_HEADER_MISMATCH),
    (errors.FromHeaderMismatch, replies.FROM_HEADER_MISMATCH),
    (errors.MessageTooLarge, replies.MESSAGE_TOO_LARGE),
    (errors.NotEncryptedForRecipients, replies.NOT_ENCRYPTED_FOR_RECIPIENTS),
    (errors.SenderMismatch, replies.SENDER_NOT_AUTHENTICATED_ACCOUNT),
    (errors.TooManyRecipients, replies.TOO_MANY_RECIPIENTS),
    *((cls, reply) for cls, reply, _ in RECIPIENT_REFUSALS),
    (errors.PolicyError, replies.POLICY_REFUSED),
)
_DETAILED: Final = (errors.MalformedMessage, errors.UnopenableEnvelope)


# A refused document's reply code and RFC 3463 status, by the kind of refusal: a type the
# trust space never carries (X.7.1 delivery not authorised), a size (X.3.4 too big for the
# system), anything else a document that fails its checks (X.6.0 other media error).
_DOCUMENT_STATUSES: Final[tuple[tuple[type[errors.DocumentError], int, str], ...]] = (
    (DocumentRefused, 550, "5.7.1"),
    (DocumentTooLarge, 552, "5.3.4"),
    (errors.DocumentError, 554, "5.6.0"),
)


def document_status(error: errors.DocumentError | type[errors.DocumentError]) -> tuple[int, str]:
    """The reply code and enhanced status refusing a document for ``error`` (or its class)."""
    cls = error if isinstance(error, type) else type(error)
    return next((code, status) for kind, code, status in _DOCUMENT_STATUSES if issubclass(cls, kind))


def submission_refusal(error: errors.MssError) -> str | None:
    """The reply refusing a message for ``error`` from ``pipeline.submit``, or None.

    None means the error is not a verdict on the message (storage, crypto ...): the caller
    answers ``451`` and logs it.
    """
    if isinstance(error, errors.DocumentError):
        return replies.document_refused(*document_status(error), error.message)
    reply = _refusal_reply(error)
    if reply is not None and isinstance(error, _DETAILED):
        return replies.with_detail(reply, error.message)
    return reply


def _refusal_reply(error: errors.MssError) -> str | None:
    return next((reply for cls, reply in _SUBMISSION_REFUSALS if isinstance(error, cls)), None)


def record_refusal(
    rt: Runtime, *, action: str, actor: str, address: str, request_id: str, stage: str, reason: str
) -> None:
    """Put a refusal on record: ``action`` (which door), who asked, for which address."""
    with session_scope(rt.engine) as session:
        audit.record(
            session,
            actor=actor,
            action=action,
            object=address or "-",
            outcome=audit.DENIED,
            request_id=request_id,
            stage=stage,
            reason=reason,
        )


class DoorHandler(abc.ABC):
    """The aiosmtpd hooks both SMTP doors share (one handler per listener, shared by its
    sessions); each door says who may send (``sender_refusal``) and receive
    (``check_recipient``), and hands the message on at DATA."""

    # The audit action of this door's refusals.
    refusal_action: str
    # The door's name in the metrics (``mss_smtp_data_seconds``).
    door: str

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    @abc.abstractmethod
    def actor(self, session: RelaySession) -> str:
        """Who a refusal is recorded against."""

    @abc.abstractmethod
    async def sender_refusal(self, session: RelaySession, envelope: RelayEnvelope, address: str) -> Refusal | None:
        """Why the sender ``address`` of MAIL is refused, or None to accept it."""

    @abc.abstractmethod
    def check_recipient(self, address: str) -> str:
        """The normalised recipient (in a worker thread); raises an error of ``RECIPIENT_REFUSALS``."""

    def known_recipient(self, envelope: RelayEnvelope, address: str) -> str | None:
        """The normalised recipient if the service already knows it may receive, without
        reading the database (in the event loop); None to ask ``check_recipient``."""
        return None

    def count_refusal(self, server: RelaySMTP, reply: str) -> None:
        """Count a refusal on the session's server."""
        server.refused += 1

    def extensions(self, lines: list[str]) -> list[str]:
        """The EHLO lines of aiosmtpd this door offers (all of them)."""
        return lines

    async def refuse(
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
        """Count the refusal, put it on record and return its ``reply``."""
        self.count_refusal(server, reply)
        await asyncio.to_thread(
            record_refusal,
            self.rt,
            action=self.refusal_action,
            actor=self.actor(session),
            address=address,
            request_id=envelope.request_id or server.correlation_id,
            stage=stage,
            reason=reason,
        )
        return reply

    async def handle_EHLO(
        self, server: RelaySMTP, session: RelaySession, envelope: RelayEnvelope, hostname: str, responses: list[str]
    ) -> list[str]:
        """aiosmtpd's EHLO lines this door offers, with DSN and ENHANCEDSTATUSCODES before the last one."""
        session.host_name = hostname
        offered = self.extensions(responses[:-1])
        return [*offered, replies.EXTENSION_DSN, replies.EXTENSION_ENHANCED_STATUS_CODES, responses[-1]]

    async def handle_MAIL(
        self,
        server: RelaySMTP,
        session: RelaySession,
        envelope: RelayEnvelope,
        address: str,
        parameters: MailParameters,
    ) -> str:
        """Accept the sender unless the door refuses it (``sender_refusal``)."""
        refusal = await self.sender_refusal(session, envelope, address)
        if refusal is not None:
            reason, reply = refusal
            return await self.refuse(server, session, envelope, address, stage="mail", reason=reason, reply=reply)
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
        """Accept a recipient the door lets receive (``check_recipient``), up to the cap on recipients."""
        if len(envelope.recipients) >= self.rt.settings.relay.max_recipients:
            self.count_refusal(server, replies.TOO_MANY_RECIPIENTS)
            return replies.TOO_MANY_RECIPIENTS
        try:
            normalised = self.known_recipient(envelope, address)
            if normalised is None:
                normalised = await asyncio.to_thread(self.check_recipient, address)
        except errors.MssError as error:
            for cls, reply, reason in RECIPIENT_REFUSALS:
                if isinstance(error, cls):
                    return await self.refuse(
                        server, session, envelope, address, stage="rcpt", reason=reason, reply=reply
                    )
            raise
        if all(r.address != normalised for r in envelope.recipients):
            # Without NOTIFY the pipeline's default (RFC 3461: FAILURE) applies.
            extra = {} if parameters.notify is None else {"notify": parameters.notify}
            envelope.recipients.append(RecipientRequest(address=normalised, orcpt=parameters.orcpt, **extra))
            envelope.rcpt_tos.append(normalised)
        return replies.RECIPIENT_OK


class RelayHandler(DoorHandler):
    """aiosmtpd handler hooks of the submission relay: the authenticated account sends."""

    refusal_action = "smtp.refused"
    door = "smtp"

    def actor(self, session: RelaySession) -> str:
        account = session.account
        return account.address if account else "-"

    def count_refusal(self, server: RelaySMTP, reply: str) -> None:
        """Count a refusal on the session's server and in the metrics, by its status code."""
        super().count_refusal(server, reply)
        metrics.refused("smtp", reply)

    async def sender_refusal(self, session: RelaySession, envelope: RelayEnvelope, address: str) -> Refusal | None:
        """The sender must be the authenticated account (``553 5.7.1`` otherwise) and the
        account must still stand (``550 5.7.1`` naming why, otherwise). Notes on the
        envelope the directory's revision read with the standing (``known_recipient``)."""
        account = session.account
        assert account is not None  # RelaySMTP refuses MAIL before AUTH
        try:
            pipeline.check_sender(account, address)
        except errors.SenderMismatch:
            return "sender-mismatch", replies.SENDER_NOT_AUTHENTICATED_ACCOUNT
        try:
            envelope.directory_revision = await asyncio.to_thread(pipeline.check_sender_standing, self.rt, account)
        except errors.StandingError as error:
            reply = _refusal_reply(error)
            assert reply is not None  # StandingError itself has a row
            return error.code, reply
        return None

    def known_recipient(self, envelope: RelayEnvelope, address: str) -> str | None:
        """A recipient found reachable at the revision of the directory read at this
        transaction's MAIL: DATA checks every recipient again at the revision then."""
        revision = envelope.directory_revision
        return None if revision is None else pipeline.known_recipient(self.rt, address, revision)

    def check_recipient(self, address: str) -> str:
        """A recipient the directory lets receive (here or at a trusted operator)."""
        return pipeline.check_recipient(self.rt, address)

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
            accepted = await self.rt.messages.run(pipeline.submit, self.rt, submission)
        except errors.MssError as error:
            reply = submission_refusal(error)
            if reply is None:
                raise
            if isinstance(error, errors.StandingError):
                # Revoked, disabled or rekeyed between MAIL and DATA: on record like at MAIL.
                return await self.refuse(
                    server, session, envelope, account.address, stage="data", reason=error.code, reply=reply
                )
            self.count_refusal(server, reply)
            log.debug("session %s request %s refused: %s", session.correlation_id, envelope.request_id, reply[:9])
            return reply
        server.accepted += 1
        return replies.queued(accepted.queue_id)
