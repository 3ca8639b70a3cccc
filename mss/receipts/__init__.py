"""Receipts: delivery status (RFC 3464) and disposition (RFC 8098) notifications.

``wire`` owns their form on the wire and the RFC 3461 parameters that ask for them (pure);
``sealing`` signs them with the operator's certificate and encrypts them to their reader
(pure); ``issuer`` decides which a submission or an opening calls for and hands them to the
store; ``federation`` does the same for the outbound queue's notices and for receipts owed
to another operator's sender. Every door calls these.
"""

from mss.errors import DsnParameterError, ReceiptError
from mss.receipts.wire import (
    DEFAULT_NOTIFY,
    Notify,
    NotifySpec,
    OriginalRecipient,
    RecipientStatus,
    Report,
    build_dsn,
    build_mdn,
    decode_xtext,
    parse_notify,
    wants_mdn,
)

__all__ = [
    "DEFAULT_NOTIFY",
    "DsnParameterError",
    "Notify",
    "NotifySpec",
    "OriginalRecipient",
    "ReceiptError",
    "RecipientStatus",
    "Report",
    "build_dsn",
    "build_mdn",
    "decode_xtext",
    "parse_notify",
    "wants_mdn",
]
