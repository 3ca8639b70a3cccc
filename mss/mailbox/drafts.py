"""Drafts: what a writer has not sent yet, kept until it is sent or discarded.

A send that is refused (a recipient not in the directory, a document refused) must not cost
the writer their text and the files they chose: the web keeps the draft, attachments
included, and the Drafts folder lists it until it is sent or discarded.

A draft is stored as two CMS envelopes encrypted to its owner's own certificate, the way
every stored message is encrypted to its readers: a small one with what the folder lists
(recipients, subject, file names and sizes), and one with the whole draft (text, options,
files). Only the owner's private key opens them, and it is held by their session alone:
a database dump, even with the master key, reads nothing of a draft.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col

from mss import audit
from mss.accounts import UnlockedAccount
from mss.crypto import smime
from mss.db import rowcount, session_scope, utcnow
from mss.errors import CryptoError, DraftNotFound, DraftTooLarge
from mss.mailbox.compose import Draft, KeptAttachment, Upload, english_note, send
from mss.mailbox.content import open_envelope
from mss.models import Draft as StoredDraftRow
from mss.pipeline import Accepted
from mss.runtime import Runtime

log = logging.getLogger("mss.mailbox")

MAX_DRAFTS = 100
"""Drafts one writer may keep."""
_DRAFT_ID = re.compile(r"^[0-9A-F]{24}$")


@dataclass(frozen=True)
class DraftSummary:
    """A draft as the Drafts folder lists it."""

    draft_id: str
    to: tuple[str, ...]
    subject: str
    files: tuple[tuple[str, int], ...]
    """Name and size of each attachment kept with the draft."""
    updated_at: datetime


@dataclass(frozen=True)
class KeptDraft:
    """A draft opened for its writer, with its attachments' bytes."""

    draft_id: str
    draft: Draft
    updated_at: datetime


def _id_of(value: str) -> str | None:
    candidate = (value or "").strip().upper()
    return candidate if _DRAFT_ID.match(candidate) else None


def _kept(session: Session, owner: str, draft_id: str) -> StoredDraftRow:
    """The row of one of ``owner``'s drafts. Raises DraftNotFound (also for another's)."""
    wanted = _id_of(draft_id)
    row = (
        session.execute(
            select(StoredDraftRow).where(col(StoredDraftRow.draft_id) == wanted, col(StoredDraftRow.owner) == owner)
        )
        .scalars()
        .first()
        if wanted
        else None
    )
    if row is None:
        raise DraftNotFound(f"no draft {draft_id.strip()[:40]} in these drafts")
    return row


def _summary(draft: Draft) -> bytes:
    return json.dumps(
        {
            "to": list(draft.to),
            "subject": draft.subject,
            "files": [[u.filename, len(u.data)] for u in draft.attachments],
        },
        ensure_ascii=False,
    ).encode("utf-8")


def _content(draft: Draft) -> bytes:
    return json.dumps(
        {
            "to": list(draft.to),
            "subject": draft.subject,
            "body": draft.body,
            "read_receipt": draft.read_receipt,
            "package_xdm": draft.package_xdm,
            "reply_to": draft.reply_to,
            "source": draft.source,
            "keep": list(draft.keep),
            "attachments": [
                {
                    "filename": u.filename,
                    "content_type": u.content_type,
                    "data": base64.b64encode(u.data).decode("ascii"),
                }
                for u in draft.attachments
            ],
        },
        ensure_ascii=False,
    ).encode("utf-8")


def _draft_of(data: bytes) -> Draft:
    try:
        fields = json.loads(data)
        return Draft(
            to=tuple(str(a) for a in fields["to"]),
            subject=str(fields["subject"]),
            body=str(fields["body"]),
            attachments=tuple(
                Upload(str(a["filename"]), str(a["content_type"]), base64.b64decode(a["data"], validate=True))
                for a in fields["attachments"]
            ),
            read_receipt=bool(fields["read_receipt"]),
            package_xdm=bool(fields["package_xdm"]),
            reply_to=fields["reply_to"] or None,
            source=fields["source"] or None,
            keep=tuple(int(i) for i in fields["keep"]),
        )
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise CryptoError("a stored draft is not readable") from exc


def save_draft(
    rt: Runtime, owner: UnlockedAccount, draft: Draft, *, draft_id: str | None = None, request_id: str = ""
) -> str:
    """Keep ``draft`` (a new one, or in place of the writer's draft ``draft_id``); return
    its id. Audited as ``draft.save`` (never its content). Raises DraftTooLarge (larger than
    a message may be, or MAX_DRAFTS kept already), DraftNotFound for a ``draft_id`` that is
    not the writer's."""
    if (
        sum(len(u.data) for u in draft.attachments) + len(draft.body.encode("utf-8"))
        > rt.settings.relay.max_message_size
    ):
        raise DraftTooLarge("the draft is larger than a message may be")
    # Encrypted before the transaction: RSA and AES over the files need no lock.
    summary = smime.encrypt(_summary(draft), [owner.certificate])
    content = smime.encrypt(_content(draft), [owner.certificate])
    now = utcnow()
    with session_scope(rt.engine) as session:
        row = None
        if draft_id is not None:
            row = _kept(session, owner.address, draft_id)
        else:
            kept = session.execute(
                select(func.count()).select_from(StoredDraftRow).where(col(StoredDraftRow.owner) == owner.address)
            ).scalar_one()
            if kept >= MAX_DRAFTS:
                raise DraftTooLarge(f"{MAX_DRAFTS} drafts are kept already: send or discard some first")
            # The line after fills the content, for a new draft and a kept one alike.
            row = StoredDraftRow(draft_id=secrets.token_hex(12).upper(), owner=owner.address, created_at=now)  # type: ignore[call-arg]
        row.summary_cms, row.content_cms, row.size, row.updated_at = summary, content, len(content), now
        session.add(row)
        audit.record(
            session,
            actor=owner.address,
            action="draft.save",
            object=row.draft_id,
            request_id=request_id,
            files=len(draft.attachments),
        )
        return row.draft_id


def list_drafts(rt: Runtime, owner: UnlockedAccount) -> tuple[DraftSummary, ...]:
    """The writer's drafts, the latest first."""
    with session_scope(rt.engine, readonly=True) as session:
        rows = session.execute(
            select(col(StoredDraftRow.draft_id), col(StoredDraftRow.summary_cms), col(StoredDraftRow.updated_at))
            .where(col(StoredDraftRow.owner) == owner.address)
            .order_by(col(StoredDraftRow.updated_at).desc(), col(StoredDraftRow.id).desc())
        ).all()
        found = []
        for draft_id, sealed, updated_at in rows:
            try:
                fields = json.loads(open_envelope(session, sealed, owner))
                found.append(
                    DraftSummary(
                        draft_id=draft_id,
                        to=tuple(fields["to"]),
                        subject=str(fields["subject"]),
                        files=tuple((str(name), int(size)) for name, size in fields["files"]),
                        updated_at=updated_at,
                    )
                )
            except (CryptoError, ValueError, KeyError, TypeError):
                # Encrypted to a key this session does not hold (an account recovered
                # without its keys): listed, so it can be discarded.
                found.append(DraftSummary(draft_id=draft_id, to=(), subject="", files=(), updated_at=updated_at))
    return tuple(found)


def draft_count(rt: Runtime, owner: str) -> int:
    """How many drafts ``owner`` keeps."""
    with session_scope(rt.engine, readonly=True) as session:
        return int(
            session.execute(
                select(func.count()).select_from(StoredDraftRow).where(col(StoredDraftRow.owner) == owner)
            ).scalar_one()
        )


def open_draft(rt: Runtime, owner: UnlockedAccount, draft_id: str) -> KeptDraft:
    """One of the writer's drafts, attachments included. Raises DraftNotFound, CryptoError
    (a draft this session's keys cannot open)."""
    with session_scope(rt.engine, readonly=True) as session:
        row = _kept(session, owner.address, draft_id)
        data = open_envelope(session, row.content_cms, owner)
    return KeptDraft(draft_id=row.draft_id, draft=_draft_of(data), updated_at=row.updated_at)


def discard_draft(rt: Runtime, owner: str, draft_id: str, *, reason: str = "discarded", request_id: str = "") -> None:
    """Delete one of ``owner``'s drafts (``reason``: discarded, or sent); audited as
    ``draft.discard``. Raises DraftNotFound."""
    wanted = _id_of(draft_id)
    with session_scope(rt.engine) as session:
        gone = (
            rowcount(
                session.execute(
                    delete(StoredDraftRow).where(
                        col(StoredDraftRow.draft_id) == wanted, col(StoredDraftRow.owner) == owner
                    )
                )
            )
            if wanted
            else 0
        )
        if not gone:
            raise DraftNotFound(f"no draft {draft_id.strip()[:40]} in these drafts")
        audit.record(
            session, actor=owner, action="draft.discard", object=wanted or "", request_id=request_id, reason=reason
        )


def send_from_draft(
    rt: Runtime,
    sender: UnlockedAccount,
    draft: Draft,
    *,
    draft_id: str | None,
    request_id: str = "",
    note: Callable[[list[KeptAttachment]], str] = english_note,
) -> Accepted:
    """``compose.send``, then the stored draft ``draft_id`` it was written from, if any,
    discarded (reason ``sent``). Once the message is stored, that discard decides nothing:
    a draft gone meanwhile (another tab) or one the database would not delete stays as it
    is, logged, and the message is reported sent, not refused (the writer would send it
    again). Raises what ``compose.send`` raises."""
    accepted = send(rt, sender, draft, request_id=request_id, note=note)
    if draft_id is None:
        return accepted
    try:
        discard_draft(rt, sender.address, draft_id, reason="sent", request_id=request_id)
    except DraftNotFound:
        pass
    except SQLAlchemyError as exc:
        log.error(
            "request %s: the draft of sent message %s could not be discarded (%s); it stays in Drafts",
            request_id,
            accepted.queue_id,
            type(exc).__name__,
        )
    return accepted
