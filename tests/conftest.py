"""Shared fixtures: per-test settings, a migrated database (SQLite or PostgreSQL), a dev PKI.

The backend is SQLite unless ``MSS_TEST_BACKEND=postgresql``; then every test gets a fresh
database on the server named by ``MSS_TEST_PG_URL`` (``tests/run-suite.sh`` starts one).
Under ``CI=true`` a test that needs PostgreSQL and finds none fails instead of skipping.
"""

from __future__ import annotations

import functools
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url

from mss.db import make_engine, migrate
from mss.settings import Settings

# Fixtures that several modules share, registered for every test module: the web app, its
# clients and accounts (web_support), and a module's relay stack (relay_stack_support).
pytest_plugins = ["web_support", "relay_stack_support"]

SAMPLES = Path(__file__).resolve().parent / "samples"
BACKEND = os.environ.get("MSS_TEST_BACKEND", "sqlite")
IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only: runs once, in the SQLite pass of the suite")


def _pg_admin_url() -> str:
    url = os.environ.get("MSS_TEST_PG_URL", "")
    if not url:
        if IN_CI:
            pytest.fail("PostgreSQL is required under CI=true but MSS_TEST_PG_URL is not set")
        pytest.skip("no PostgreSQL server (MSS_TEST_PG_URL unset); `make test` starts one")
    return url


def new_pg_database() -> str:
    """Create an empty database on the test server; return its URL."""
    admin_url = make_url(_pg_admin_url()).set(drivername="postgresql+psycopg")
    name = "mss_t_" + secrets.token_hex(6)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return admin_url.set(database=name).render_as_string(hide_password=False)


def drop_pg_database(url: str) -> None:
    parsed = make_url(url)
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    if BACKEND == "postgresql":
        url = new_pg_database()
        yield url
        drop_pg_database(url)
    else:
        yield f"sqlite:///{tmp_path / 'data' / 'mss.db'}"


def test_env(tmp_path: Path, database_url: str) -> dict[str, str]:
    """The environment a test service runs with: fast argon2id, small keys, tmp folders."""
    return {
        "MSS_DATA_DIR": str(tmp_path / "data"),
        "MSS_CERTS_DIR": str(tmp_path / "certs"),
        "MSS_DATABASE_URL": database_url,
        "MSS_DOMAINS": "mss.test",
        "MSS_HOSTNAMES": "localhost,127.0.0.1",
        # libsodium's minimums: the tests check behaviour, the benchmarks measure cost.
        "MSS_ARGON2_OPSLIMIT": "1",
        "MSS_ARGON2_MEMLIMIT": str(8 * 1024 * 1024),
        "MSS_USER_KEY_BITS": "2048",
        "MSS_LOCKOUT_SECONDS": "60",
        "MSS_RECOVERY_KEY_OUT": str(tmp_path / "offline" / "recovery.key"),
        "MSS_PKI_HTTP_PORT": "0",
        # No fixed port: a test that reads the metrics serves them on a free one itself.
        "MSS_METRICS_PORT": "0",
    }


@pytest.fixture
def env(tmp_path: Path, database_url: str) -> dict[str, str]:
    return test_env(tmp_path, database_url)


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    return Settings.from_env(env)


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def samples() -> Path:
    return SAMPLES


# -- a dev PKI made once per run, copied into each test's folders --------------------------


@pytest.fixture(scope="session")
def _pki_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from mss.crypto import pki

    root = tmp_path_factory.mktemp("pki-template")
    settings = Settings.from_env(
        {
            "MSS_DATA_DIR": str(root / "data"),
            "MSS_CERTS_DIR": str(root / "certs"),
            "MSS_HOSTNAMES": "localhost,127.0.0.1",
            "MSS_USER_KEY_BITS": "2048",
            "MSS_RECOVERY_KEY_OUT": str(root / "offline" / "recovery.key"),
        }
    )
    pki.init_dev_pki(settings)
    return root / "certs", root / "data"


@pytest.fixture
def dev_pki(settings: Settings, _pki_template: tuple[Path, Path]) -> Settings:
    """The test's settings, with a dev CA, TLS certificate and recovery key pair in place."""
    import shutil

    certs, data = _pki_template
    shutil.copytree(certs, settings.pki.certs_dir, dirs_exist_ok=True)
    settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    for item in data.iterdir():
        if item.name.startswith("recovery"):
            shutil.copy2(item, settings.storage.data_dir / item.name)
    offline = settings.pki.recovery_private_key_out
    offline.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copy2(data.parent / "offline" / "recovery.key", offline)
    return settings


@pytest.fixture
def rt(settings: Settings, engine: Engine, dev_pki: Settings):
    from mss.crypto.master import MasterKey
    from mss.runtime import Runtime

    return Runtime(settings=settings, engine=engine, master_key=MasterKey.load(settings))


SAMPLE_EXTRACT = SAMPLES / "annuaire" / "Extraction_Correspondance_MSSante_sample.txt"


@pytest.fixture
def directory_loaded(engine: Engine) -> None:
    from directory.importer import import_extract

    import_extract(engine, SAMPLE_EXTRACT, actor="test")


@pytest.fixture
def mss(env, dev_pki):
    """Runs the ``mss`` command in-process with the test's environment; asserts success
    unless ``ok=False``."""
    from cli_support import invoke

    return functools.partial(invoke, env)


@dataclass
class Argon2Overlap:
    """How many argon2id computations ran at once, at most (see ``argon2_overlap``)."""

    running: int = 0
    most: int = 0


@pytest.fixture
def argon2_overlap(monkeypatch: pytest.MonkeyPatch) -> Argon2Overlap:
    """libsodium's argon2id verify and kdf (a login's two computations; third-party
    functions) counted as they run, each made to last at least 50 ms, as a real one does,
    so that logins that arrive together overlap."""
    import nacl.pwhash.argon2id

    overlap = Argon2Overlap()
    lock = threading.Lock()

    def counted(real):
        def call(*args, **kwargs):
            with lock:
                overlap.running += 1
                overlap.most = max(overlap.most, overlap.running)
            try:
                time.sleep(0.05)
                return real(*args, **kwargs)
            finally:
                with lock:
                    overlap.running -= 1

        return call

    monkeypatch.setattr(nacl.pwhash.argon2id, "verify", counted(nacl.pwhash.argon2id.verify))
    monkeypatch.setattr(nacl.pwhash.argon2id, "kdf", counted(nacl.pwhash.argon2id.kdf))
    return overlap
