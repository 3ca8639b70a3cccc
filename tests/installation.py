"""An mss installed in a tmp folder for a test: what an operator has after ``mss pki init``
and a directory import, on SQLite or PostgreSQL as ``MSS_TEST_BACKEND`` says.

``relay_support.Stack`` (one relay and its accounts) and ``federation_support.Operator``
(one operator of several) are installations with more.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from directory.importer import import_extract
from mss.crypto.pki import PkiPaths, init_dev_pki
from mss.runtime import Runtime, open_runtime
from mss.settings import Settings

from conftest import BACKEND, SAMPLE_EXTRACT, drop_pg_database, new_pg_database, test_env


@dataclass
class Installation:
    """A migrated database with the national directory extract, the development PKI, their
    settings and runtime."""

    root: Path
    env: dict[str, str]
    settings: Settings
    rt: Runtime
    database_url: str

    @property
    def ca_file(self) -> Path:
        return PkiPaths.from_settings(self.settings).ca_certificate

    def client_context(self, **options: object) -> ssl.SSLContext:
        """What a mail client trusts: this installation's CA (the host name is checked);
        ``options`` are set on the context."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        for name, value in options.items():
            setattr(context, name, value)
        return context

    def close(self) -> None:
        """Close the runtime; a PostgreSQL database is dropped."""
        self.rt.close()
        if BACKEND == "postgresql":
            drop_pg_database(self.database_url)


AnInstallation = TypeVar("AnInstallation", bound=Installation)


def install(kind: type[AnInstallation], root: Path, env: Mapping[str, str], **fields: Any) -> AnInstallation:
    """An installation in ``root`` with the test environment and ``env`` over it; ``fields``
    are the other fields of ``kind``."""
    root.mkdir(parents=True, exist_ok=True)
    database_url = new_pg_database() if BACKEND == "postgresql" else f"sqlite:///{root / 'data' / 'mss.db'}"
    full_env = {**test_env(root, database_url), **env}
    settings = Settings.from_env(full_env)
    init_dev_pki(settings)
    rt = open_runtime(settings)
    import_extract(rt.engine, SAMPLE_EXTRACT, actor="test")
    return kind(root=root, env=full_env, settings=settings, rt=rt, database_url=database_url, **fields)
