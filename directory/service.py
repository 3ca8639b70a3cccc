"""Directory entries one at a time: look up, require active, add, revoke, reactivate.

Entries added by hand go through the same checks as an extract line
(``directory.extract.validate_fields``) and get the same derived columns
(``directory.importer.entry_row``); the search index follows by itself (triggers on SQLite,
an expression index on PostgreSQL). Every change writes an audit event.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlmodel import Session

from directory.extract import FIELDS, validate_fields
from directory.importer import entry_row
from directory.models import ACTIVE, REVOKED, DirectoryEntry
from mss import audit
from mss.db import utcnow
from mss.errors import DirectoryError, RevokedAddress, UnknownAddress


def _normalise(address: str) -> str:
    return address.strip().lower()


def get_entry(session: Session, address: str) -> DirectoryEntry | None:
    """The entry of an address (case-insensitive), or None."""
    return session.execute(
        select(DirectoryEntry).where(DirectoryEntry.address == _normalise(address))
    ).scalars().first()


def require_active(session: Session, address: str) -> DirectoryEntry:
    """The active entry of an address. Raises UnknownAddress, or RevokedAddress for a
    revoked entry and for one no longer in the national extract (inactive)."""
    entry = get_entry(session, address)
    if entry is None:
        raise UnknownAddress(_normalise(address))
    if entry.status != ACTIVE:
        raise RevokedAddress(entry.address, entry.status_reason or entry.status)
    return entry


def _require(session: Session, address: str) -> DirectoryEntry:
    entry = get_entry(session, address)
    if entry is None:
        raise UnknownAddress(_normalise(address))
    return entry


def add_entry(session: Session, *, actor: str, **fields: str) -> DirectoryEntry:
    """Add one entry; fields are ``DirectoryEntry`` column names (``city`` included).

    For a person given only an RPPS, the identifier type (8) and national identifier
    ("8" + RPPS) are filled in as the extract has them. Raises DirectoryError with the
    same reasons an extract line gets, or when the address exists.
    """
    unknown = set(fields) - set(FIELDS) - {"city"}
    if unknown:
        raise DirectoryError(f"unknown field(s): {', '.join(sorted(unknown))}")
    values = {name: str(fields.get(name, "") or "") for name in FIELDS}
    if values["kind"].upper() == "PER" and values["rpps"] and not values["rpps_type"]:
        values["rpps_type"] = "8"
        values["national_id"] = values["national_id"] or "8" + values["rpps"]
    checked = validate_fields([values[name] for name in FIELDS])
    if isinstance(checked, str):
        raise DirectoryError(checked)
    normalised, derived_city = checked
    row = entry_row(normalised, str(fields.get("city") or derived_city))
    if get_entry(session, row["address"]) is not None:
        raise DirectoryError(f"{row['address']} is already in the directory")
    entry = DirectoryEntry(**row)
    session.add(entry)
    session.flush()
    audit.record(session, actor=actor, action="directory.add", object=entry.address, kind=entry.kind)
    return entry


def revoke_entry(session: Session, address: str, *, reason: str, actor: str) -> DirectoryEntry:
    """Revoke an entry: it can no longer send nor receive. Raises UnknownAddress, DirectoryError."""
    reason = " ".join(reason.split())
    if not reason:
        raise DirectoryError("a revocation needs a reason")
    entry = _require(session, address)
    entry.status = REVOKED
    entry.status_reason = reason[:500]
    entry.status_changed_at = entry.updated_at = utcnow()
    session.add(entry)
    session.flush()
    audit.record(session, actor=actor, action="directory.revoke", object=entry.address, reason=entry.status_reason)
    return entry


def reactivate_entry(session: Session, address: str, *, actor: str) -> DirectoryEntry:
    """Make a revoked or inactive entry active again. Raises UnknownAddress, DirectoryError."""
    entry = _require(session, address)
    if entry.status == ACTIVE:
        raise DirectoryError(f"{entry.address} is already active")
    previous = entry.status
    entry.status = ACTIVE
    entry.status_reason = ""
    entry.status_changed_at = entry.updated_at = utcnow()
    session.add(entry)
    session.flush()
    audit.record(session, actor=actor, action="directory.reactivate", object=entry.address, previous=previous)
    return entry
