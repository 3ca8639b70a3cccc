"""A stored message as a mail client receives it: decrypted, or end to end.

Each account chooses (``mail_client_setting.imap_mode``):

- ``decrypted`` (the default, what most practice software expects): the server opens the
  envelope with the reader's key and serves the *signed* message, the RFC 8551 signed-data
  entity that was inside the envelope, so the client can still check the sender's
  signature itself; an ``X-MSS-Signature`` header says what mss found;
- ``end-to-end``: the stored S/MIME envelope as is (``application/pkcs7-mime;
  smime-type=enveloped-data``); the client decrypts with the PKCS#12 of ``mss account
  export-key``. No key is needed to serve it.

Both forms start with the same top-level header fields (From, To, Cc, Subject, Date,
Message-ID and the ``X-MSS-*`` fields), built from the sealed metadata. A listing (sizes,
envelope, body structure) must not decrypt every message: ``Shape`` describes a served
message from the metadata alone. The pipeline writes what the decrypted form needs
(``MessageMeta.client``) at submission; for a message stored before, a receipt or a
message a client encrypted itself, the shape is computed at its first opening and kept,
sealed, in ``entity_shape``.

The ``X-MSS-Signature`` value is fixed once: for what the pipeline signed, the fact
established at submission (the sender's certificate was checked in standing and mss signed
with it); otherwise the outcome of mss's verification at the first opening, with its date.
A message's bytes never change under the same UID; the web shows the check of the day.
"""

from __future__ import annotations

import email.message
import json
from dataclasses import dataclass
from typing import Final

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from mss import audit
from mss.crypto.master import MasterKey
from mss.db import session_scope, utcnow
from mss.errors import MssError
from mss.mime import PARSE_FAILURES, SMTP_POLICY, base64_lines
from mss.models import EntityShape, MailClientSetting
from mss.store import entity_fields, split_entity

DECRYPTED: Final = "decrypted"
END_TO_END: Final = "end-to-end"
MODES: Final = (DECRYPTED, END_TO_END)
SIGNATURE_HEADER: Final = "X-MSS-Signature"
_B64_LINE: Final = 76  # mss.mime.base64_lines: 57 input bytes per 76-character line
# The envelope as RFC 8551 writes it (the same lines as mss.crypto.smime's export).
_ENVELOPE_HEADER: Final = (
    b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data;\r\n name=smime.p7m\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b'Content-Disposition: attachment; filename="smime.p7m"\r\n'
)


class UnknownMode(MssError):
    """An IMAP mode other than ``decrypted`` or ``end-to-end``."""

    code = "unknown-imap-mode"


@dataclass(frozen=True)
class Shape:
    """A served message without its body: the header block and the body's size."""

    header: bytes  # the whole header block, ending with the empty line
    body_size: int
    body_lines: int
    structure: str | None = None  # a multipart entity's BODYSTRUCTURE, as the first opening found it

    @property
    def size(self) -> int:
        """RFC822.SIZE: octets of the whole served message."""
        return len(self.header) + self.body_size


# -- the account's choice ----------------------------------------------------------------


def mode_of(session: Session, address: str) -> str:
    """The IMAP mode of ``address`` (``decrypted`` unless the account chose otherwise)."""
    row = session.get(MailClientSetting, address.strip().lower())
    return row.imap_mode if row is not None else DECRYPTED


def set_mode(engine: Engine, address: str, mode: str, *, actor: str, request_id: str = "") -> bool:
    """Set the IMAP mode of an account; True when it changed. Raises UnknownMode.

    The UIDVALIDITY of every folder depends on the mode (``mss.mailbox.sync``), so a mail
    client fetches the messages again in their new form.
    """
    if mode not in MODES:
        raise UnknownMode(f"unknown IMAP mode {mode!r}: use {' or '.join(MODES)}")
    address = address.strip().lower()
    with session_scope(engine) as session:
        row = session.get(MailClientSetting, address)
        if row is not None and row.imap_mode == mode:
            return False
        if row is None:
            row = MailClientSetting(address=address, imap_mode=mode)
        row.imap_mode, row.updated_at = mode, utcnow()
        session.add(row)
        audit.record(session, actor=actor, action="account.imap-mode", object=address, request_id=request_id, mode=mode)
    return True


# -- shapes ------------------------------------------------------------------------------


def _b64_size(der_size: int) -> tuple[int, int]:
    """Octets and lines of ``der_size`` bytes as base64 in 76-character CRLF lines."""
    if der_size <= 0:
        return 0, 0
    chars = 4 * -(-der_size // 3)
    lines = -(-chars // _B64_LINE)
    return chars + 2 * lines, lines


def _top_header(meta, signature: str | None) -> bytes:
    client = meta.client or {}
    fields: list[tuple[str, str]] = [("From", meta.sender)]
    # The To as written, even empty (a message to Cc and Bcc only): the envelope's recipients
    # name a Bcc. Only a message stored before its fields were kept falls back on them.
    to = str(client.get("to") or "") if meta.client else ", ".join(meta.recipients)
    if to:
        fields.append(("To", to))
    if client.get("cc"):
        fields.append(("Cc", str(client["cc"])))
    fields += [("Subject", meta.subject), ("Date", meta.date), ("Message-ID", meta.message_id)]
    fields += [(name, value) for name, value in sorted(meta.headers.items()) if name.upper().startswith("X-MSS-")]
    if signature is not None:
        fields.append((SIGNATURE_HEADER, signature))
    lines: list[bytes] = []
    for name, value in fields:
        if not value:
            continue
        line = f"{name}: {value}"
        if line.isascii() and len(line) <= 78 and "\r" not in line and "\n" not in line:
            lines.append(line.encode("ascii") + b"\r\n")  # as the policy would write it, faster
            continue
        head = email.message.EmailMessage(policy=SMTP_POLICY)
        try:
            head[name] = value  # the policy encodes non-ASCII text (RFC 2047) and folds
        except PARSE_FAILURES:
            head[name] = value.encode("ascii", "replace").decode("ascii")
        lines.append(head.as_bytes(policy=SMTP_POLICY)[: -len(b"\r\n")])
    return b"".join(lines) + b"MIME-Version: 1.0\r\n"


def facts_of(meta, cached: dict[str, object] | None) -> dict[str, object] | None:
    """The entity facts of a message: from its metadata, else from the cache, else None."""
    client = meta.client or {}
    entity = client.get("entity")
    if isinstance(entity, dict):
        return entity
    return cached


def shape(meta, mode: str, cms_size: int, facts: dict[str, object] | None) -> Shape | None:
    """The served message without its body, or None when the decrypted form is not known
    without a first opening (then ``render`` computes the facts to keep)."""
    if mode == END_TO_END:
        size, lines = _b64_size(cms_size)
        return Shape(header=_top_header(meta, None) + _ENVELOPE_HEADER + b"\r\n", body_size=size, body_lines=lines)
    if facts is None:
        return None
    head = str(facts["header"]).encode("latin-1")
    return Shape(
        header=_top_header(meta, str(facts["signature"])) + head + b"\r\n",
        # the facts an opening kept: integers, read back from sealed JSON
        body_size=int(facts["size"]),  # type: ignore[call-overload]
        body_lines=int(facts["lines"]),  # type: ignore[call-overload]
        structure=str(facts["structure"]) if facts.get("structure") else None,
    )


def render_end_to_end(meta, cms: bytes) -> bytes:
    """The stored envelope as an S/MIME message (no key needed)."""
    return _top_header(meta, None) + _ENVELOPE_HEADER + b"\r\n" + base64_lines(cms)


def render_decrypted(meta, entity: bytes, signature: str) -> bytes:
    """The decrypted form: the top fields, then the signed entity that was in the envelope."""
    head, body = split_entity(entity)
    return _top_header(meta, signature) + entity_fields(head) + b"\r\n" + body


# -- the cache of shapes -----------------------------------------------------------------


def cached_facts(session: Session, master_key: MasterKey, message_ids: list[int]) -> dict[int, dict[str, object]]:
    """Entity facts kept for these messages (``entity_shape``), by message id."""
    found: dict[int, dict[str, object]] = {}
    for start in range(0, len(message_ids), 500):
        rows = session.execute(
            select(col(EntityShape.message_id), col(EntityShape.sealed)).where(
                col(EntityShape.message_id).in_(message_ids[start : start + 500])
            )
        ).all()
        for message_id, sealed in rows:
            found[message_id] = json.loads(master_key.open(sealed))
    return found


def remember_facts(engine: Engine, master_key: MasterKey, message_id: int, facts: dict[str, object]) -> None:
    """Keep the facts of a message opened for the first time (another process may have)."""
    sealed = master_key.seal(json.dumps(facts, ensure_ascii=False).encode("utf-8"))
    try:
        with session_scope(engine) as session:
            if session.get(EntityShape, message_id) is None:
                session.add(EntityShape(message_id=message_id, sealed=sealed))
    except IntegrityError:
        pass  # kept meanwhile by another process: the same facts
