"""Reading the public MSSanté directory extract (``Extraction_Correspondance_MSSante``).

The file is UTF-8 (possibly with a byte-order mark), ``|``-separated, one header line then one
mailbox per line in exactly 31 columns. This module owns the format: the expected header, the
validation of one line (shared with entries added by hand, see ``validate_fields``), and a
streaming reader that yields either a parsed line or a line error, so that a defective line
is reported with its physical line number and never stops the reading of the others.

Only a file that cannot be read at all (missing, empty, wrong header) raises
``ImportFileError``, before any line is yielded.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple, cast

from sqlalchemy import String

from directory.models import DirectoryEntry
from mss.db import table_of
from mss.errors import ImportFileError

SEPARATOR = "|"

# The extract's header, column by column, in order.
HEADER: tuple[str, ...] = (
    "Type de BAL",
    "Adresse BAL",
    "Type Identifiant PP",
    "Identifiant PP",
    "Identification nationale PP",
    "Type identifiant structure",
    "Identification Structure",
    "Service de rattachement",
    "Civilité d'exercice",
    "Nom d'exercice",
    "Prénom d'exercice",
    "Catégorie profession",
    "Libellé de catégorie profession",
    "Code Profession",
    "Libellé Profession",
    "Code savoir-faire",
    "Libellé savoir-faire",
    "Dématérialisation",
    "Raison Sociale structure BAL",
    "Enseigne commerciale structure BAL",
    "L2COMPLEMENTLOCALISATION structure BAL",
    "L3COMPLEMENTDISTRIBUTION structure BAL",
    "L4NUMEROVOIE structure BAL",
    "L4COMPLEMENTNUMEROVOIE structure BAL",
    "NL4TYPEVOIE structure BAL",
    "L4LIBELLEVOIE structure BAL",
    "L5LIEUDITMENTION structure BAL",
    "L6LIGNEACHEMINEMENT structure BAL",
    "Code postal structure BAL",
    "Département structure BAL",
    "Pays structure BAL",
)

# The ``DirectoryEntry`` column that holds each extract column, in the same order.
FIELDS: tuple[str, ...] = (
    "kind",
    "address",
    "rpps_type",
    "rpps",
    "national_id",
    "org_id_type",
    "org_id",
    "service",
    "civility",
    "last_name",
    "first_name",
    "profession_category",
    "profession_category_label",
    "profession_code",
    "profession_label",
    "skill_code",
    "skill_label",
    "dematerialisation",
    "org_name",
    "org_trade_name",
    "addr_l2",
    "addr_l3",
    "addr_number",
    "addr_number_ext",
    "addr_street_type",
    "addr_street",
    "addr_l5",
    "addr_l6",
    "postal_code",
    "department",
    "country",
)
COLUMN_COUNT = len(FIELDS)

KINDS = ("PER", "ORG")
RPPS_TYPE = "8"  # 11-digit RPPS number; the national id is "8" + RPPS
ADELI_TYPE = "0"  # 9-character ADELI number; the national id is "0" + ADELI
_IDENTIFIER_PATTERNS = {
    RPPS_TYPE: (re.compile(r"[0-9]{11}"), "RPPS number"),
    # ADELI starts with the department, which is 2A or 2B in Corsica.
    ADELI_TYPE: (re.compile(r"(?:[0-9]{2}|2[AB])[0-9]{7}"), "ADELI number"),
}

# The column widths the table accepts (PostgreSQL enforces them; refuse longer values here).
_MAX_LENGTHS: tuple[int, ...] = tuple(
    cast(String, table_of(DirectoryEntry).c[name].type).length or 0 for name in FIELDS
)

MAX_ADDRESS_LENGTH = 254  # RFC 5321 path limit minus the angle brackets
_ATOM = r"[a-z0-9!#$%&'*+/=?^_`{}~-]+"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
# A dot-atom local part of at most 64 characters, then a domain of two labels or more.
_ADDRESS = re.compile(rf"(?=[^@]{{1,64}}@){_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LEADING_POSTAL_CODE = re.compile(r"[0-9]{5}\s+")
# A whole line of the right shape: 31 columns, each within its width, no control character.
_SHAPE = re.compile("\\|".join(f"[^|\\x00-\\x1f\\x7f]{{0,{width}}}" for width in _MAX_LENGTHS))

# Values echoed in error messages are cut: a reason must stay one readable line.
_ECHO_LIMIT = 80


class ParsedLine(NamedTuple):
    """One valid line: the 31 normalised values in extract order, and the derived city."""

    line: int
    values: tuple[str, ...]
    city: str

    @property
    def address(self) -> str:
        return self.values[1]

    def as_dict(self) -> dict[str, str]:
        """The values keyed by ``DirectoryEntry`` column name, ``city`` included."""
        row = dict(zip(FIELDS, self.values, strict=True))
        row["city"] = self.city
        return row


class LineError(NamedTuple):
    """A rejected line: its number, why, and its address when that much was readable."""

    line: int
    reason: str
    address: str | None = None

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


def echo(value: str) -> str:
    """A value quoted for an error message, shortened if long."""
    if len(value) > _ECHO_LIMIT:
        value = value[: _ECHO_LIMIT - 3] + "..."
    return "'" + value + "'"


def address_error(address: str) -> str | None:
    """Why ``address`` (already lower-case) is not a valid mailbox address, or None."""
    if not address:
        return "missing mailbox address"
    if len(address) > MAX_ADDRESS_LENGTH or not _ADDRESS.fullmatch(address):
        return f"invalid mailbox address {echo(address)}"
    return None


def city_from_l6(l6: str, postal_code: str) -> str:
    """The city of an L6 routing line: the line without its leading postal code."""
    if postal_code and l6.startswith(postal_code + " "):
        return l6[len(postal_code) :].strip()
    match = _LEADING_POSTAL_CODE.match(l6)
    return l6[match.end() :].strip() if match else l6


def _identity_error(values: list[str], kind: str) -> str | None:
    """Check the professional identifier columns (type, identifier, national identifier)."""
    id_type, identifier, national_id = values[2], values[3], values[4]
    if kind == "ORG" and not (id_type or identifier or national_id):
        return None  # an organisation's mailbox has no personal identifier
    if id_type not in _IDENTIFIER_PATTERNS:
        if not id_type:
            return "missing identifier type for a person (expected 8 for RPPS or 0 for ADELI)"
        return f"unknown identifier type {echo(id_type)} (expected 8 for RPPS or 0 for ADELI)"
    pattern, name = _IDENTIFIER_PATTERNS[id_type]
    if not pattern.fullmatch(identifier):
        return f"malformed {name} {echo(identifier)}"
    if national_id != id_type + identifier:
        return f"national identifier {echo(national_id)} does not match {name} {echo(identifier)}"
    return None


def _shape_error(values: list[str]) -> str | None:
    """Why stripped values break the column widths or hold a control character, or None."""
    for index, value in enumerate(values):
        if _CONTROL.search(value):
            return f"control character in column {echo(HEADER[index])}"
    for index, value in enumerate(values):
        if len(value) > _MAX_LENGTHS[index]:
            return f"column {echo(HEADER[index])} is too long ({len(value)} characters, at most {_MAX_LENGTHS[index]})"
    return None


def validate_fields(raw: list[str], line: str | None = None) -> tuple[tuple[str, ...], str] | str:
    """Normalise and check the 31 values of one mailbox (``raw``, split from ``line`` if given).

    Returns ``(values, city)`` when valid, else the reason (a string) it is refused.
    Normalisation: surrounding blanks stripped, Unicode NFC, address lower-case and kind
    upper-case as the format has them.
    """
    if len(raw) != COLUMN_COUNT:
        return f"expected {COLUMN_COUNT} columns, found {len(raw)}"
    values = list(map(str.strip, raw))
    # This runs 535,000 times per import of the national file: one match of the whole line
    # vouches for every width and the absence of control characters (stripping and NFC only
    # shorten values); the column-by-column checks run only when it fails.
    if line is None or not _SHAPE.fullmatch(line):
        reason = _shape_error(values)
        if reason is not None:
            return reason
    text = line if line is not None else SEPARATOR.join(values)
    if not text.isascii() and not unicodedata.is_normalized("NFC", text):
        values = [unicodedata.normalize("NFC", v) for v in values]
    kind = values[0] = values[0].upper()
    if kind not in KINDS:
        if not kind:
            return "missing mailbox type (expected PER or ORG)"
        return f"unknown mailbox type {echo(kind)} (expected PER or ORG)"
    address = values[1] = values[1].lower()
    reason = address_error(address)
    if reason is None:
        reason = _identity_error(values, kind)
    if reason is None and kind == "PER" and not values[9]:
        reason = "missing last name for a person"
    if reason is not None:
        return reason
    return tuple(values), city_from_l6(values[27], values[28])


def _decode(raw: bytes) -> str | int:
    """The line as text, or the offset of its first byte that is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start


def check_header(first: bytes) -> None:
    """Raise ImportFileError unless ``first`` (the file's first line) is the extract's header."""
    if not first:
        raise ImportFileError("the file is empty: expected the extract's header line")
    if first.startswith(b"\xef\xbb\xbf"):
        first = first[3:]
    line = first.rstrip(b"\r\n")
    if b"\r" in line:
        raise ImportFileError(
            "line 1: the lines end with a bare CR (an old Mac format): save the file with LF or CRLF line ends"
        )
    text = _decode(line)
    if isinstance(text, int):
        raise ImportFileError(f"line 1: the header line is not valid UTF-8 (byte {text + 1})")
    columns = [unicodedata.normalize("NFC", c.strip()) for c in text.split(SEPARATOR)]
    if len(columns) != COLUMN_COUNT:
        raise ImportFileError(
            f"line 1: the header has {len(columns)} columns, expected {COLUMN_COUNT}: not an MSSanté directory extract"
        )
    for index, (found, expected) in enumerate(zip(columns, HEADER, strict=True), start=1):
        if found != expected:
            raise ImportFileError(f"line 1: header column {index} is {echo(found)}, expected {echo(expected)}")


def parse_line(number: int, raw: bytes) -> ParsedLine | LineError:
    """Parse one physical line (bytes, end of line included or not)."""
    raw = raw.rstrip(b"\r\n")
    text = _decode(raw)
    if isinstance(text, int):
        return LineError(number, f"not valid UTF-8 (byte {text + 1}: 0x{raw[text]:02x})")
    if not text.strip():
        return LineError(number, "blank line")
    raw_values = text.split(SEPARATOR)
    checked = validate_fields(raw_values, text)
    if isinstance(checked, str):
        address = raw_values[1].strip().lower() if len(raw_values) == COLUMN_COUNT else ""
        return LineError(number, checked, address if address_error(address) is None else None)
    values, city = checked
    return ParsedLine(number, values, city)


def iter_lines(handle: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """Physical lines of an open extract after its checked header, numbered from 2."""
    check_header(handle.readline())
    yield from enumerate(handle, start=2)


def read_extract(path: str | Path) -> Iterator[ParsedLine | LineError]:
    """Yield each data line of the extract at ``path`` as a ParsedLine or a LineError.

    Line numbers are physical and 1-based (the header is line 1). Raises ImportFileError
    when the file cannot be opened or its header is not the extract's, before yielding.
    """
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise ImportFileError(f"cannot open {path}: {exc.strerror}") from exc
    with handle:
        for number, raw in iter_lines(handle):
            yield parse_line(number, raw)
