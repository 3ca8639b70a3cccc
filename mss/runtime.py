"""What a running process holds: its settings, the database engine and the master key.

Built once by the CLI, the SMTP server and the web app, and passed to the services.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from mss import audit, metrics
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
        audit.bind_master_key(self.engine, self.master_key)
        metrics.set_enabled(self.settings.operator.metrics_enabled)

    def close(self) -> None:
        self.engine.dispose()


def open_runtime(settings: Settings, *, apply_migrations: bool = True) -> Runtime:
    """Create the data directory (0700), open the database (migrated) and load the master key."""
    make_private_dir(settings.storage.data_dir)
    engine = make_engine(settings)
    if apply_migrations:
        migrate(engine)
    return Runtime(settings=settings, engine=engine, master_key=MasterKey.load(settings))
