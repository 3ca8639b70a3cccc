"""What the database holds at rest: no message content, subject or file name in clear, in
any column of any table, once a message went through; and every binary column says
whether it holds ciphertext or public material (``mss.db.AT_REST``)."""

from __future__ import annotations

import importlib

from sqlalchemy import LargeBinary, select
from sqlmodel import SQLModel

import mss.models  # noqa: F401  (registers every table on SQLModel.metadata)
from mss import mailbox
from mss.db import AT_REST, CIPHERTEXT, PUBLIC, session_scope

from web_support import GP, doctor, gp, pdf_bytes, submit, unlocked  # noqa: F401  (fixtures)

MARKER = "Zqxjvk"  # in the subject, the text and the file's name: a word no header or code has


def test_a_message_leaves_nothing_of_its_content_in_clear(rt, doctor, gp) -> None:
    """Sent, opened by its reader (which writes the search index and the entity's shape),
    answered in a draft: not a trace of its words in clear, in any column."""
    accepted = submit(
        rt,
        doctor,
        [GP],
        f"Sortie de Mme {MARKER}",
        f"Madame {MARKER} sort ce jour.",
        [(f"lettre-{MARKER}.pdf", "application/pdf", pdf_bytes(f"Compte rendu {MARKER}"))],
    )
    reader = unlocked(rt, gp)
    opened = mailbox.open_message(rt, reader, accepted.queue_id)
    assert MARKER in opened.body
    mailbox.save_draft(
        rt, reader, mailbox.Draft(to=(doctor.address,), subject=f"Re: {MARKER}", body=f"Bien reçu, {MARKER}.")
    )
    found = []
    needles = (MARKER.encode(), MARKER.lower().encode(), MARKER.encode("utf-16-be"))
    with session_scope(rt.engine) as session:
        for table in SQLModel.metadata.sorted_tables:
            for row in session.execute(select(table)).all():
                for column, value in zip(table.columns, row, strict=True):
                    data = value if isinstance(value, bytes) else str(value).encode()
                    if any(needle in data for needle in needles):
                        found.append(f"{table.name}.{column.name}")
    assert not found, found


def test_every_binary_column_says_what_it_holds_at_rest() -> None:
    """Ciphertext or public material, named in the model (``mss.db.binary``): a new binary
    column must say which, and the columns PostgreSQL stores uncompressed as ciphertext
    (migration 0013) are ciphertext by the models too."""
    marked = {
        (table.name, column.name): column.info.get(AT_REST)
        for table in SQLModel.metadata.sorted_tables
        for column in table.columns
        if isinstance(column.type, LargeBinary)
    }
    assert marked and all(at_rest in (CIPHERTEXT, PUBLIC) for at_rest in marked.values()), marked
    uncompressed = importlib.import_module("mss.migrations.versions.0013_ciphertext_uncompressed")._CIPHERTEXT
    assert all(marked[column] == CIPHERTEXT for column in uncompressed)
    # What the models say, checked on a few: a message's envelope and metadata are
    # ciphertext; a certificate is public.
    assert marked[("message", "cms")] == marked[("message", "meta_sealed")] == CIPHERTEXT
    assert marked[("certificate", "der")] == marked[("peer_certificate", "der")] == PUBLIC
