"""Demo data for a first run: the sample directory, certificates and three demo accounts.

Refused in production. The generated passwords are printed once and kept in
``<data dir>/demo-accounts.txt`` (0600) so that a newcomer can log in after a restart.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from directory.importer import import_extract
from directory.models import DirectoryEntry
from mss import accounts
from mss.accounts import Enrolment
from mss.crypto import pki
from mss.db import session_scope
from mss.errors import ConfigError
from mss.files import write_file
from mss.runtime import Runtime
from mss.settings import Settings

DEMO_EXTRACT = (
    Path(__file__).resolve().parent.parent / "directory" / "data" / "Extraction_Correspondance_MSSante_demo.txt"
)

# Two physicians at different organisations (a hospital paediatrician and a GP in town)
# and one organisational mailbox, all present in the demo extract.
DEMO_ADDRESSES = (
    "marc.robert@chu-demo.mss.test",
    "eloise.fournier@medecin.mss.test",
    "urgences.pediatriques@chu-demo.mss.test",
)


@dataclass(frozen=True)
class DemoAccount:
    address: str
    password: str
    enrolment: Enrolment


def credentials_path(settings: Settings) -> Path:
    return settings.storage.data_dir / "demo-accounts.txt"


def directory_is_empty(engine: Engine) -> bool:
    with session_scope(engine) as session:
        return session.execute(select(func.count()).select_from(DirectoryEntry)).scalar_one() == 0


def load_demo(rt: Runtime, *, actor: str) -> list[DemoAccount]:
    """Import the demo extract and create the demo accounts; return their credentials.

    Raises ConfigError in production, and the services' errors (e.g. AccountExists).
    """
    if rt.settings.is_production:
        raise ConfigError("demo data is for development only (MSS_ENV=production)")
    if not (rt.settings.pki.certs_dir / "ca.pem").exists():
        pki.init_dev_pki(rt.settings)
    import_extract(rt.engine, DEMO_EXTRACT, actor=actor)
    created: list[DemoAccount] = []
    for address in DEMO_ADDRESSES:
        password = "demo-" + secrets.token_urlsafe(12)
        with session_scope(rt.engine) as session:
            enrolment = accounts.create_account(session, rt.settings, rt.master_key, address, password, actor=actor)
        created.append(DemoAccount(address=address, password=password, enrolment=enrolment))
    _save(credentials_path(rt.settings), created)
    return created


def _save(path: Path, created: list[DemoAccount]) -> None:
    lines = ["# mss demo accounts (development only)\n"]
    lines += [f"{item.address}\t{item.password}\t{item.enrolment.otpauth_uri}\n" for item in created]
    write_file(path, "".join(lines).encode("utf-8"), private=True)
