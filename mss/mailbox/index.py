"""The mailbox search index: filter 10,000 messages without storing a subject or an INS in clear.

Message metadata is sealed with the master key (``Message.meta_sealed``), so a filter on
subject, patient or document type cannot be a plain SQL ``WHERE``. Opening every sealed
record of a mailbox on each search would cost one decryption and one JSON parse per message
(about a second for 10,000, on every filtered page). Instead each mailbox row gets *search
tokens*: ``HMAC-SHA256(owner key, field + value)`` truncated to 128 bits, where the owner key
is ``HMAC(index key, owner address)`` and the index key is a random secret sealed with the
master key (``sealed_secret`` row ``mailbox-index-key``). A filter computes the same tokens
and becomes an indexed ``IN`` on ``(owner, token)``.

What a database dump shows: which of one owner's messages share a token (two subjects that
share a word, two letters about the same patient), never the words or the INS, and nothing
across owners (the same INS gives unrelated tokens in two mailboxes). Sender addresses and
dates are already plain columns (the relay needs them): a sender filter matches its words
against the few distinct senders of the mailbox and their names in the directory, then
selects on the address column.

Tokens are derived data, written lazily: ``ensure_indexed`` indexes a mailbox's rows that
have none yet from their sealed metadata (level 1: subject words with their prefixes, so
that "cardio" finds "cardiologie"; document kinds; the type code and patient INS of every
CDA, bare or in an IHE_XDM package, which the pipeline seals in the metadata).
``index_content`` adds what only the decrypted message tells (level 2), for messages a
client encrypted itself: nobody inspected their documents at submission. It runs when the
owner opens such a message, and for the not yet opened ones when a filter needs it
(``pending_content``), with the owner's key, since nobody else can read them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col
from unidecode import unidecode

from mss.crypto.master import MasterKey
from mss.db import session_scope, table_of
from mss.models import MailboxIndexed, MailboxItem, MailboxToken, Message, SealedSecret
from mss.store import MessageMeta

INDEX_KEY_SECRET = "mailbox-index-key"
META, CONTENT = 1, 2
INDEX_BATCH = 2000
"""Rows indexed per transaction (a first search of a large mailbox is several short ones)."""
PREFIX_MIN, PREFIX_MAX = 3, 10
DOCUMENT_KINDS = ("pdf", "cda", "xdm")
_WORD = re.compile(r"[a-z0-9]+")
_INS = re.compile(r"^[0-9A-Za-z]{13,15}$")


def words(text: str) -> list[str]:
    """Lower-case, accent-free words of ``text`` (what subject tokens are made of)."""
    return _WORD.findall(unidecode(text or "").lower())


def normalise_ins(value: str) -> str:
    """An INS as indexed: without spaces, upper case (``2A``/``2B`` for Corsica)."""
    return "".join((value or "").split()).upper()


def is_ins(value: str) -> bool:
    """True when ``value`` looks like an INS (13 to 15 characters, digits, 2A or 2B)."""
    return bool(_INS.match(normalise_ins(value)))


def subject_terms(text: str) -> set[str]:
    """What a subject is indexed under: each word and its prefixes of 3 to 10 letters."""
    return _prefix_terms("s:", text)


def subject_query_terms(text: str) -> set[str]:
    """What a subject filter looks for: each word as typed (a prefix of an indexed word)."""
    return _query_terms("s:", text)


def _prefix_terms(field: str, text: str) -> set[str]:
    terms: set[str] = set()
    for word in words(text):
        if len(word) < PREFIX_MIN:
            terms.add(field + word)
            continue
        for size in range(PREFIX_MIN, min(len(word), PREFIX_MAX) + 1):
            terms.add(field + word[:size])
    return terms


def _query_terms(field: str, text: str) -> set[str]:
    return {field + (word if len(word) < PREFIX_MIN else word[:PREFIX_MAX]) for word in words(text)}


def kind_term(kind: str) -> str:
    """The term of a document kind (pdf, cda, xdm, receipt)."""
    return "k:" + kind.lower()


def code_term(code: str) -> str:
    """The term of a CDA type code."""
    return "c:" + code.strip().lower()


def ins_term(ins: str) -> str:
    """The term of a patient INS."""
    return "i:" + normalise_ins(ins)


def meta_terms(meta: MessageMeta, message_kind: str) -> set[str]:
    """The terms of a message known from its sealed metadata alone."""
    terms = subject_terms(meta.subject)
    if message_kind == "receipt":
        terms.add(kind_term("receipt"))
    for code in _codes(meta.headers.get("X-MSS-CODECDA", "")):
        terms.add(code_term(code))
    for document in meta.documents:
        if document.kind:
            terms.add(kind_term(document.kind))
        # One summary per CDA carried, bare or inside an IHE_XDM package (mss.pipeline).
        for cda in document.cda:
            if cda.type_code:
                terms.add(code_term(cda.type_code))
                terms.add(kind_term("cda"))
            if cda.ins:
                terms.add(ins_term(cda.ins))
    return terms


def _codes(value: str) -> list[str]:
    return [code for code in (part.strip() for part in value.split(",")) if code]


def needs_content(meta: MessageMeta, message_kind: str) -> bool:
    """True when the decrypted message may hold terms the metadata lacks.

    The pipeline seals a summary of every CDA it checked (type code, INS), so only what a
    client encrypted itself, which nobody inspected at submission, needs its content read.
    """
    return message_kind == "client"


# -- keys and tokens ---------------------------------------------------------------------


def _index_key(session: Session, master_key: MasterKey) -> bytes:
    row = session.get(SealedSecret, INDEX_KEY_SECRET)
    if row is not None:
        return master_key.open(row.value)
    key = secrets.token_bytes(32)
    session.add(SealedSecret(name=INDEX_KEY_SECRET, value=master_key.seal(key)))
    session.flush()
    return key


def index_key(engine, master_key: MasterKey) -> bytes:
    """The index key, created on first use (two processes racing both end with the winner's)."""
    try:
        with session_scope(engine) as session:
            return _index_key(session, master_key)
    except IntegrityError:
        with session_scope(engine) as session:
            return _index_key(session, master_key)


class Tokens:
    """Turns terms into one owner's tokens."""

    def __init__(self, key: bytes, owner: str) -> None:
        self._key = hmac.new(key, b"owner:" + owner.encode("utf-8"), hashlib.sha256).digest()
        self.owner = owner

    def __call__(self, term: str) -> str:
        return hmac.digest(self._key, term.encode("utf-8"), "sha256")[:16].hex()

    def many(self, terms: Iterable[str]) -> set[str]:
        """The tokens of ``terms``."""
        return {self(term) for term in terms}


# -- writing -----------------------------------------------------------------------------


def _write(session: Session, tokens: Tokens, item_id: int, terms: Iterable[str]) -> None:
    rows = [{"item_id": item_id, "owner": tokens.owner, "token": token} for token in sorted(tokens.many(terms))]
    if rows:
        session.execute(insert(table_of(MailboxToken)), rows)


def ensure_indexed(engine, master_key: MasterKey, owner: str) -> int:
    """Write the metadata tokens of ``owner``'s rows that have none; return how many rows.

    Safe to run concurrently: a row indexed meanwhile by another process is left as it is.
    """
    key = index_key(engine, master_key)
    tokens = Tokens(key, owner)
    with session_scope(engine) as session:
        pending = session.execute(
            select(col(MailboxItem.id), col(Message.meta_sealed), col(Message.kind))
            .join(Message, col(Message.id) == col(MailboxItem.message_id))
            .outerjoin(MailboxIndexed, col(MailboxIndexed.item_id) == col(MailboxItem.id))
            .where(col(MailboxItem.owner) == owner, col(MailboxIndexed.item_id).is_(None))
        ).all()
    if not pending:
        return 0
    for start in range(0, len(pending), INDEX_BATCH):
        marks: list[dict[str, int]] = []
        rows: list[dict[str, object]] = []
        for item_id, sealed, kind in pending[start : start + INDEX_BATCH]:
            meta = MessageMeta.open(master_key, sealed)
            # Rows left at META are exactly those whose content still has terms to give.
            marks.append({"item_id": item_id, "level": META if needs_content(meta, kind) else CONTENT})
            rows.extend({"item_id": item_id, "owner": owner, "token": t} for t in tokens.many(meta_terms(meta, kind)))
        try:
            with session_scope(engine) as session:
                session.execute(insert(table_of(MailboxIndexed)), marks)  # Core executemany, no ORM
                if rows:
                    session.execute(insert(table_of(MailboxToken)), rows)
        except IntegrityError:
            # Another request is indexing this mailbox too: its tokens are the same.
            return start
    return len(pending)


def pending_content(engine, owner: str, item_ids: Iterable[int] | None = None) -> list[int]:
    """Ids of ``owner``'s rows whose content terms are still to be written."""
    with session_scope(engine) as session:
        query = (
            select(col(MailboxIndexed.item_id))
            .join(MailboxItem, col(MailboxItem.id) == col(MailboxIndexed.item_id))
            .where(col(MailboxItem.owner) == owner, col(MailboxIndexed.level) < CONTENT)
        )
        if item_ids is not None:
            query = query.where(col(MailboxIndexed.item_id).in_(list(item_ids)))
        return list(session.execute(query).scalars())


def index_content(
    session: Session, key: bytes, owner: str, item_ids: Iterable[int], meta_terms_: set[str], content_terms_: set[str]
) -> None:
    """Write the content terms of one message for ``owner``'s rows of it, and mark them done.

    A row not indexed at all gets its metadata terms too. Raises IntegrityError when another
    transaction indexes the same row at the same time (the caller may ignore it: the row is
    then at least at metadata level, and its content is indexed again on the next chance).
    """
    tokens = Tokens(key, owner)
    for item_id in item_ids:
        level = session.execute(
            select(col(MailboxIndexed.level)).where(col(MailboxIndexed.item_id) == item_id)
        ).scalar()
        if level is None:
            session.add(MailboxIndexed(item_id=item_id, level=CONTENT))
            session.flush()
            _write(session, tokens, item_id, meta_terms_ | content_terms_)
        elif level < CONTENT:
            session.execute(update(MailboxIndexed).where(col(MailboxIndexed.item_id) == item_id).values(level=CONTENT))
            existing = set(
                session.execute(select(col(MailboxToken.token)).where(col(MailboxToken.item_id) == item_id)).scalars()
            )
            _write(session, tokens, item_id, {t for t in content_terms_ if tokens(t) not in existing})


def content_terms(cda_codes: Iterable[str], ins_values: Iterable[str], kinds: Iterable[str]) -> set[str]:
    """The terms a decrypted message adds: its CDA type codes, patient INS and document kinds."""
    terms = {code_term(code) for code in cda_codes if code}
    terms |= {ins_term(value) for value in ins_values if value}
    terms |= {kind_term(kind) for kind in kinds if kind in DOCUMENT_KINDS}
    return terms


def matching(tokens: Tokens, term: str):
    """A subquery of the owner's row ids indexed under ``term``."""
    return select(col(MailboxToken.item_id)).where(
        col(MailboxToken.owner) == tokens.owner, col(MailboxToken.token) == tokens(term)
    )
