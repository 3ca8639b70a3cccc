"""Reading MIME parts of the ``email`` package with the types they have here.

``Message.get_payload`` returns bytes, text, a message or a list depending on the part and
its arguments; these two name the two cases the code reads.
"""

from __future__ import annotations

from email.message import Message


def decoded_payload(part: Message) -> bytes:
    """The body of a leaf part with its transfer encoding undone (``b""`` when it has none)."""
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def subparts(part: Message) -> list[Message]:
    """The parts inside a multipart or ``message/*`` part (none for a leaf part)."""
    payload = part.get_payload()
    return [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else []
