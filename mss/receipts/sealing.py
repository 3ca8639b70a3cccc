"""How a notification (a DSN, an MDN, a notice of the operator) leaves this operator:
signed with the operator's certificate, and for a reader here encrypted to them with the
metadata their mailbox lists. Pure: the operator's identity is given, nothing is read or
stored here.

``mss.receipts.issuer`` and ``mss.receipts.federation`` both seal with these.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509

from mss.crypto import smime
from mss.crypto.keys import PrivateKey
from mss.receipts.wire import Report
from mss.settings import Settings
from mss.store import MessageMeta, Notice

OperatorIdentity = tuple[PrivateKey, x509.Certificate]
"""The operator's receipt-signing key and certificate (``directory.certificates.operator_identity``)."""


def reporter(settings: Settings) -> str:
    """The name receipts give as reporting MTA or UA: the first of ``MSS_HOSTNAMES``."""
    return settings.pki.own_name


def signed(identity: OperatorIdentity, notification: Report) -> bytes:
    """``notification`` as a CMS SignedData by the operator (RFC 8551), its content embedded."""
    key, operator_certificate = identity
    return smime.sign(notification.wire, operator_certificate, key)


def sealed(identity: OperatorIdentity, notification: Report, reader_certificate: x509.Certificate) -> bytes:
    """``notification`` signed by the operator and encrypted to its reader (the RFC 8551
    signed-data entity inside the envelope, as every stored message)."""
    return smime.encrypt(smime.signed_entity(signed(identity, notification)), [reader_certificate])


def listed(notification: Report, reader: str) -> MessageMeta:
    """What ``reader``'s mailbox lists of ``notification``."""
    return MessageMeta(
        sender=notification.sender,
        recipients=[reader],
        subject=notification.subject,
        date=notification.date,
        message_id=notification.message_id,
    )


def notice(
    identity: OperatorIdentity,
    notification: Report,
    *,
    kind: str,
    status: str,
    recipients: Sequence[str],
    reason: str,
    reader: str,
    reader_certificate: x509.Certificate,
) -> Notice:
    """A notification sealed with the operator's ``identity`` (see ``sealed``), with the
    metadata its reader's mailbox lists."""
    return Notice(
        kind=kind,
        status=status,
        recipients=tuple(recipients),
        reason=reason,
        cms=sealed(identity, notification, reader_certificate),
        meta=listed(notification, reader),
    )
