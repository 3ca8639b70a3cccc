"""What a running process holds: its settings, the database engine and the master key.

Built once by the CLI, the SMTP server and the web app, and passed to the services.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from mss.crypto.master import MasterKey
from mss.db import make_engine, make_private_dir, migrate
from mss.settings import Settings


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    engine: Engine
    master_key: MasterKey

    def __post_init__(self) -> None:
        # Every append to the audit chain from this process also moves the sealed head
        # anchor, which needs the master key (see mss.audit).
        from mss import audit

        audit.bind_master_key(self.engine, self.master_key)

    def close(self) -> None:
        self.engine.dispose()


def open_runtime(settings: Settings, *, apply_migrations: bool = True) -> Runtime:
    """Create the data directory (0700), open the database (migrated) and load the master key."""
    make_private_dir(settings.storage.data_dir)
    engine = make_engine(settings)
    if apply_migrations:
        migrate(engine)
    return Runtime(settings=settings, engine=engine, master_key=MasterKey.load(settings))


def startup_warnings(rt: Runtime) -> list[str]:
    """What an operator must hear about when the service starts (no secret in any line):
    the recovery private key still on this machine, certificates about to end."""
    from mss import accounts
    from mss.crypto.pki import PkiPaths
    from mss.db import session_scope

    found: list[str] = []
    paths = PkiPaths.from_settings(rt.settings)
    for place in dict.fromkeys((rt.settings.storage.data_dir / "recovery.key", paths.recovery_private_key)):
        if place.exists():
            where = "in the data folder, beside the master key" if place.parent == rt.settings.storage.data_dir else "on this machine"
            found.append(
                f"the recovery private key {place} is {where}: move it offline (see README, Keys), it opens every account's key"
            )
    with session_scope(rt.engine, readonly=True) as session:
        expiring = accounts.expiring_certificates(session, rt.settings)
    if expiring:
        names = ", ".join(f"{address} ({end:%Y-%m-%d})" for address, end in expiring[:10])
        more = f" and {len(expiring) - 10} more" if len(expiring) > 10 else ""
        found.append(
            f"{len(expiring)} certificate(s) end within {rt.settings.pki.expiry_warning_days} days: {names}{more};"
            " run `mss pki renew`"
        )
    return found
