"""Reading MIME parts of the ``email`` package with the types they have here.

``Message.get_payload`` returns bytes, text, a message or a list depending on the part and
its arguments; these two name the two cases the code reads. ``SUMMARY_HEADERS`` names the
header fields that say what a message is.
"""

from __future__ import annotations

from email.message import Message

# The header fields that say what a message is and where it belongs: who wrote it to whom,
# its subject and date, its place in a thread, and whether a read receipt is asked for. The
# reader sees them; a message to another operator carries them outside its S/MIME body.
SUMMARY_HEADERS = (
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Disposition-Notification-To",
)


def decoded_payload(part: Message) -> bytes:
    """The body of a leaf part with its transfer encoding undone (``b""`` when it has none)."""
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def subparts(part: Message) -> list[Message]:
    """The parts inside a multipart or ``message/*`` part (none for a leaf part)."""
    payload = part.get_payload()
    return [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else []
