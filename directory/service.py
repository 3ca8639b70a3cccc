"""Directory entries one at a time: look-up, the active check, and an administrator's changes.

The relay and the web ask ``require_active`` whether an address may send or receive. An
administrator adds an entry by hand (validated exactly like a line of the extract), revokes
one, or makes a revoked or inactive one active again; each change writes its audit event in
the caller's transaction. ``search_text`` is computed here as in the importer, and the
search index follows the table by itself (migration 0002).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Select, bindparam, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Session, col

from directory.extract import ADELI_TYPE, FIELDS, RPPS_TYPE, validate_fields
from directory.importer import entry_row
from directory.models import ACTIVE, INACTIVE, INACTIVE_REASON, REVOKED, Certificate, DirectoryEntry
from mss import audit, standing
from mss.addresses import normalise_address
from mss.db import Reader, connection_of, table_of, utcnow
from mss.errors import DirectoryError, RevokedAddress, StorageError, UnknownAddress

MAX_REASON_LENGTH = 500

_RPPS = re.compile(r"[0-9]{11}")
_ADELI = re.compile(r"(?:[0-9]{2}|2[AB])[0-9]{7}")


def get_entry(session: Session, address: str) -> DirectoryEntry | None:
    """The entry for ``address`` (case-insensitive), whatever its status, or None."""
    if not address.isprintable():
        return None  # never a stored address (and PostgreSQL refuses NUL in a parameter)
    try:
        return (
            session.execute(select(DirectoryEntry).where(col(DirectoryEntry.address) == normalise_address(address)))
            .scalars()
            .first()
        )
    except SQLAlchemyError as exc:
        raise StorageError(f"directory look-up failed: {exc.__class__.__name__}") from exc


def require_active(session: Session, address: str) -> DirectoryEntry:
    """The active entry for ``address``.

    Raises UnknownAddress when there is none, RevokedAddress when it is revoked or inactive
    (absent from the latest extract): neither may send nor receive.
    """
    entry = get_entry(session, address)
    if entry is None:
        raise UnknownAddress(normalise_address(address))
    if entry.status != ACTIVE:
        reason = entry.status_reason or (INACTIVE_REASON if entry.status == INACTIVE else "")
        raise RevokedAddress(entry.address, reason or None)
    return entry


# Built once: statement construction would cost more than the look-up itself.
_ENTRY_STATES = select(
    table_of(DirectoryEntry).c.address, table_of(DirectoryEntry).c.status, table_of(DirectoryEntry).c.status_reason
).where(table_of(DirectoryEntry).c.address.in_(bindparam("addresses", expanding=True)))


def require_active_many(session: Reader, addresses: Iterable[str]) -> dict[str, str | DirectoryError]:
    """For each of ``addresses`` (as given), in one query: the stored address of its active
    entry, or the UnknownAddress or RevokedAddress that ``require_active`` would raise."""
    verdicts, _rows = entry_verdicts(session, addresses, _ENTRY_STATES)
    return verdicts


def entry_verdicts(
    session: Reader, addresses: Iterable[str], statement: Select[Any], parameters: Mapping[str, object] | None = None
) -> tuple[dict[str, str | DirectoryError], dict[str, tuple[Any, ...]]]:
    """``require_active_many``'s verdicts, read with ``statement``: a select of the entries
    of the ``addresses`` parameter whose first three columns are the address, status and
    status reason (more columns may follow: the first row of each address is returned too,
    by stored address)."""
    wanted = {address: normalise_address(address) for address in addresses}
    # A non-printable address is never stored (and PostgreSQL refuses NUL in a parameter).
    printable = sorted({normalised for address, normalised in wanted.items() if address.isprintable()})
    found: dict[str, tuple[Any, ...]] = {}
    if printable:
        try:
            rows = connection_of(session).execute(statement, {"addresses": printable, **(parameters or {})}).all()
        except SQLAlchemyError as exc:
            raise StorageError(f"directory look-up failed: {exc.__class__.__name__}") from exc
        for row in rows:
            found.setdefault(row[0], tuple(row))
    verdicts: dict[str, str | DirectoryError] = {}
    for address, normalised in wanted.items():
        state = found.get(normalised) if address.isprintable() else None
        if state is None:
            verdicts[address] = UnknownAddress(normalised)
        elif state[1] != ACTIVE:
            reason = state[2] or (INACTIVE_REASON if state[1] == INACTIVE else "")
            verdicts[address] = RevokedAddress(normalised, reason or None)
        else:
            verdicts[address] = normalised
    return verdicts, found


def entry_with_certificates(session: Session, address: str) -> tuple[DirectoryEntry, list[Certificate]]:
    """The entry of ``address`` (whatever its status) and every certificate issued for it,
    oldest first. Raises UnknownAddress."""
    entry = _require(session, address)
    certs = session.execute(
        select(Certificate)
        .where(col(Certificate.address) == entry.address)
        .order_by(col(Certificate.not_before), col(Certificate.id))
    ).scalars()
    return entry, list(certs)


def _require(session: Session, address: str) -> DirectoryEntry:
    entry = get_entry(session, address)
    if entry is None:
        raise UnknownAddress(normalise_address(address))
    return entry


def _completed(fields: dict[str, str]) -> dict[str, str]:
    """Fill what an administrator may leave out: identifier type and national id, L6 line.

    Raises DirectoryError when the identifier is neither an RPPS number (11 digits) nor an
    ADELI number (9 characters) and no type says which it is.
    """
    rpps = fields["rpps"]
    if rpps and not fields["rpps_type"]:
        if _RPPS.fullmatch(rpps):
            fields["rpps_type"] = RPPS_TYPE
        elif _ADELI.fullmatch(rpps):
            fields["rpps_type"] = ADELI_TYPE
        else:
            raise DirectoryError(
                f"identifier {rpps[:40]!r} is neither an RPPS number (11 digits) nor an ADELI number "
                "(9 characters: 2 digits or 2A/2B, then 7 digits)"
            )
    if rpps and fields["rpps_type"] and not fields["national_id"]:
        fields["national_id"] = fields["rpps_type"] + rpps
    return fields


def add_entry(session: Session, *, actor: str, **fields: str) -> DirectoryEntry:
    """Add one active entry from column values (``DirectoryEntry`` names, plus ``city``).

    Missing columns are empty. For a person, ``rpps`` alone is enough: the identifier type
    and national id follow from it. ``city`` (with ``postal_code``) builds the L6 line when
    that is not given. Raises DirectoryError on an unknown or non-text field, a value the
    extract's rules refuse, or an address already in the directory.
    """
    unknown = sorted(set(fields) - set(FIELDS) - {"city"})
    if unknown:
        raise DirectoryError(f"unknown directory field(s): {', '.join(unknown)}")
    for name, value in fields.items():
        if value is not None and not isinstance(value, str):
            raise DirectoryError(f"field {name} must be text, not {type(value).__name__}")
    values = _completed({name: (fields.get(name) or "").strip() for name in FIELDS})
    city = (fields.get("city") or "").strip()
    if city and not values["addr_l6"]:
        values["addr_l6"] = f"{values['postal_code']} {city.upper()}".strip()
    checked = validate_fields([values[name] for name in FIELDS])
    if isinstance(checked, str):
        raise DirectoryError(checked)
    normalised, derived_city = checked
    if city and derived_city.casefold() != city.casefold():
        raise DirectoryError(f"city {city!r} does not match the L6 line {values['addr_l6']!r}")
    address = normalised[1]
    if get_entry(session, address) is not None:
        raise DirectoryError(f"{address} is already in the directory")

    now = utcnow()
    # entry_row gives the text columns by name
    entry = DirectoryEntry(**entry_row(normalised, derived_city), status=ACTIVE, created_at=now, updated_at=now)  # type: ignore[arg-type]
    try:
        session.add(entry)
        session.flush()
    except IntegrityError as exc:
        # Added by someone else between the check and the insert.
        raise DirectoryError(f"{address} is already in the directory") from exc
    except SQLAlchemyError as exc:
        raise StorageError(f"could not add {address}: {exc.__class__.__name__}") from exc
    audit.record(session, actor=actor, action="directory.add", object=address, kind=entry.kind, rpps=entry.rpps)
    return entry


def revoke_entry(session: Session, address: str, *, reason: str, actor: str) -> DirectoryEntry:
    """Revoke the entry: it may no longer send or receive, and a re-import keeps it revoked.

    Raises UnknownAddress, or DirectoryError when it is already revoked or the reason is
    empty or longer than 500 characters.
    """
    reason = reason.strip()
    if not reason:
        raise DirectoryError("a revocation needs a reason")
    if len(reason) > MAX_REASON_LENGTH:
        raise DirectoryError(f"the reason is longer than {MAX_REASON_LENGTH} characters")
    entry = _require(session, address)
    if entry.status == REVOKED:
        raise DirectoryError(f"{entry.address} is already revoked")
    previous = entry.status
    _set_status(session, entry, REVOKED, reason)
    # From this moment the address can neither log in nor send at any door: its web and API
    # sessions end now, an open SMTP session is refused at its next MAIL (mss.standing).
    standing.end_sessions(session, entry.address)
    audit.record(
        session, actor=actor, action="directory.revoke", object=entry.address, reason=reason, previous_status=previous
    )
    return entry


def reactivate_entry(session: Session, address: str, *, actor: str) -> DirectoryEntry:
    """Make a revoked or inactive entry active again.

    Raises UnknownAddress, or DirectoryError when it is already active.
    """
    entry = _require(session, address)
    if entry.status == ACTIVE:
        raise DirectoryError(f"{entry.address} is already active")
    previous = entry.status
    _set_status(session, entry, ACTIVE, "")
    audit.record(session, actor=actor, action="directory.reactivate", object=entry.address, previous_status=previous)
    return entry


def _set_status(session: Session, entry: DirectoryEntry, status: str, reason: str) -> None:
    now = utcnow()
    entry.status = status
    entry.status_reason = reason
    entry.status_changed_at = now
    entry.updated_at = now
    try:
        session.flush()
    except SQLAlchemyError as exc:
        raise StorageError(f"could not change {entry.address}: {exc.__class__.__name__}") from exc
