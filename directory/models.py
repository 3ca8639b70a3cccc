"""The directory's tables: one row per mailbox of the trust space, and its certificates.

The columns follow the public MSSanté extract (``Extraction_Correspondance_MSSante``, 31
columns) so that an import is a faithful copy; ``search_text``, ``source_hash`` and the
status columns are ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from mss.db import PUBLIC, UTCDateTime, binary, utcnow

# The "civilité d'exercice" values that are titles people write before a name: doctors and
# professors. The others (M, MME ...) say nothing of the profession and, in extracts and by
# hand, are often not the person's own: a name is written without them.
TITLES = {"DR": "Dr", "PR": "Pr"}

ACTIVE = "active"
REVOKED = "revoked"
INACTIVE = "inactive"  # missing from the latest extract (--prune)
INACTIVE_REASON = "no longer in the national directory extract"


class DirectoryEntry(SQLModel, table=True):
    """A mailbox of the trust space: a person (PER) or an organisation (ORG)."""

    __tablename__ = "directory_entry"

    id: int | None = Field(default=None, primary_key=True)
    address: str = Field(max_length=254, unique=True, index=True)  # stored lower-case
    kind: str = Field(max_length=3)  # PER | ORG
    rpps_type: str = Field(default="", max_length=4)
    rpps: str = Field(default="", max_length=20, index=True)
    national_id: str = Field(default="", max_length=30)
    org_id_type: str = Field(default="", max_length=4)
    org_id: str = Field(default="", max_length=30)
    service: str = Field(default="", max_length=200)
    civility: str = Field(default="", max_length=10)
    last_name: str = Field(default="", max_length=200)
    first_name: str = Field(default="", max_length=200)
    profession_category: str = Field(default="", max_length=10)
    profession_category_label: str = Field(default="", max_length=200)
    profession_code: str = Field(default="", max_length=10)
    profession_label: str = Field(default="", max_length=200)
    skill_code: str = Field(default="", max_length=20)
    skill_label: str = Field(default="", max_length=200)
    dematerialisation: str = Field(default="", max_length=1)
    org_name: str = Field(default="", max_length=300)
    org_trade_name: str = Field(default="", max_length=300)
    addr_l2: str = Field(default="", max_length=200)
    addr_l3: str = Field(default="", max_length=200)
    addr_number: str = Field(default="", max_length=20)
    addr_number_ext: str = Field(default="", max_length=20)
    addr_street_type: str = Field(default="", max_length=20)
    addr_street: str = Field(default="", max_length=200)
    addr_l5: str = Field(default="", max_length=200)
    addr_l6: str = Field(default="", max_length=200)
    postal_code: str = Field(default="", max_length=10)
    department: str = Field(default="", max_length=10)
    country: str = Field(default="", max_length=100)
    city: str = Field(default="", max_length=200)  # derived from the L6 line

    status: str = Field(default=ACTIVE, max_length=10, index=True)
    status_reason: str = Field(default="", max_length=500)
    status_changed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    search_text: str = Field(default="")  # lower-case, accent-free words for search
    source_hash: str = Field(default="", max_length=64)  # digest of the extract's columns
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)

    @property
    def title(self) -> str:
        """The title written before the name (Dr, Pr), or "" when the civility is none."""
        return TITLES.get(self.civility.strip().upper().rstrip("."), "")

    @property
    def display_name(self) -> str:
        """The name as people write it: ``Dr Marc ROBERT``, ``Éloïse FOURNIER``, or the
        organisation's name."""
        if self.kind == "PER":
            return " ".join(p for p in (self.title, self.first_name, self.last_name) if p) or self.address
        return self.org_name or self.address


@dataclass(frozen=True)
class EntryCard:
    """A directory entry as people see it: next to a message, or among the recipients a
    search finds (only the address when the directory has no entry for it)."""

    address: str
    name: str = ""
    profession: str = ""
    """The profession, or the skill when the entry names none."""
    organisation: str = ""
    rpps: str = ""
    city: str = ""
    status: str = ""

    @classmethod
    def of(cls, entry: DirectoryEntry) -> EntryCard:
        """The card of a directory entry."""
        return cls(
            address=entry.address,
            name=entry.display_name,
            profession=entry.profession_label or entry.skill_label,
            organisation=entry.org_name,
            rpps=entry.rpps,
            city=entry.city,
            status=entry.status,
        )


class Certificate(SQLModel, table=True):
    """An X.509 certificate the operator issued; S/MIME ones are published for an entry."""

    __tablename__ = "certificate"
    __table_args__ = (Index("ix_certificate_address_current", "address", "revoked_at"),)

    id: int | None = Field(default=None, primary_key=True)
    address: str = Field(max_length=254, index=True)  # directory address, or "operator"
    usage: str = Field(default="smime", max_length=20)  # smime | operator
    serial: str = Field(max_length=64, unique=True)  # hex
    fingerprint: str = Field(max_length=64, unique=True)  # SHA-256 of the DER, hex
    subject: str = Field(max_length=500)
    not_before: datetime = Field(sa_type=UTCDateTime)
    not_after: datetime = Field(sa_type=UTCDateTime)
    der: bytes = Field(sa_column=binary(PUBLIC))
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revocation_reason: str = Field(default="", max_length=50)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
