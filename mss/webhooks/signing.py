"""The signature of a webhook request, in the Standard Webhooks scheme
(https://www.standardwebhooks.com, the form Svix and others use), so that receivers can
check it with the scheme's own libraries. Pure: bytes in, text out.

The signed content is ``{webhook-id}.{webhook-timestamp}.{body}``; the signature is the
base64 of its HMAC-SHA256 under the secret's key bytes, sent as ``v1,<base64>`` in the
``webhook-signature`` header. The timestamp (seconds since the epoch) is the attempt's, so
a receiver can refuse replays older than a few minutes; the id stays the same on every
attempt of one event, so a receiver can drop one it already handled.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

VERSION = "v1"


def signature(key: bytes, event_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of id.timestamp.body>`` under ``key``."""
    signed = event_id.encode("utf-8") + b"." + str(timestamp).encode("ascii") + b"." + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return f"{VERSION},{base64.b64encode(digest).decode('ascii')}"


def headers(key: bytes, event_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The request's header fields: content type, ``webhook-id``, ``webhook-timestamp`` and
    ``webhook-signature``."""
    return {
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, event_id, timestamp, body),
    }
