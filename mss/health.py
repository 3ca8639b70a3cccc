"""What an operator must hear about the running service, without a secret in any line.

``startup_warnings`` is what ``mss serve`` logs when it starts; ``readiness`` is what
``/readyz`` answers and ``mss doctor`` prints: one verdict per item the service needs.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from datetime import timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from directory import certificates
from mss import accounts, metrics
from mss.crypto import pki
from mss.crypto.pki import PkiPaths
from mss.db import SCHEMA_REVISION, read_scope, session_scope, stamped_revision, utcnow
from mss.errors import PkiError
from mss.runtime import Runtime
from mss.settings import Settings

# A CRL published this close to its nextUpdate is announced as about to go stale.
CRL_MARGIN = timedelta(hours=1)


@dataclass(frozen=True)
class Check:
    """One item the service needs, and whether it holds (``detail`` says why or why not)."""

    name: str
    ok: bool
    detail: str


def check_database(engine: Engine) -> Check:
    """The database answers a query, and holds this code's schema or a newer one (an empty
    one is most often a mistyped MSS_DATABASE_URL; an older one lacks what this code
    writes). A newer one is a rolling upgrade under way: the instances not yet replaced keep
    serving, with a word of it."""
    try:
        stamped = stamped_revision(engine)  # a query: it answers
    except SQLAlchemyError as exc:
        return Check("database", False, f"unreachable ({exc.__class__.__name__})")
    if stamped is None:
        return Check("database", False, "reachable, but it holds no mss schema: is MSS_DATABASE_URL right?")
    if stamped != SCHEMA_REVISION:
        if stamped.isascii() and stamped.isdigit() and int(stamped) > int(SCHEMA_REVISION):
            return Check(
                "database", True, f"reachable, its schema ({stamped}) newer than this code's ({SCHEMA_REVISION})"
            )
        return Check(
            "database",
            False,
            f"its schema is at revision {stamped}, this code's at {SCHEMA_REVISION}: `mss serve` migrates it",
        )
    return Check("database", True, f"reachable ({engine.dialect.name}), schema {SCHEMA_REVISION}")


def check_ca(settings: Settings) -> Check:
    """The CA certificate is readable and within its validity."""
    try:
        ca = pki.load_ca_certificate(settings)
    except PkiError as exc:
        return Check("ca", False, exc.message)
    now = utcnow()
    if not ca.not_valid_before_utc <= now <= ca.not_valid_after_utc:
        return Check("ca", False, f"the CA certificate is not valid now (until {ca.not_valid_after_utc:%Y-%m-%d})")
    return Check("ca", True, f"loaded, valid until {ca.not_valid_after_utc:%Y-%m-%d}")


def check_crl(settings: Settings, engine: Engine | None = None) -> Check:
    """The CRL is there, signed by the CA, its nextUpdate is ahead, and it lists every
    revocation of the database's (``engine``) that has not expired: one committed while
    its CRL could not be written is not published yet."""
    try:
        crl = pki.load_crl(settings)
        ca = pki.load_ca_certificate(settings)
    except PkiError as exc:
        return Check("crl", False, exc.message)
    if crl is None:
        return Check("crl", False, f"no CRL at {PkiPaths.from_settings(settings).crl} (run `mss pki init`)")
    try:
        # CA keys are RSA or EC (the types a CRL can be signed with); the union names others
        signed = crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (InvalidSignature, TypeError, ValueError):
        signed = False
    if not signed:
        return Check("crl", False, "the CRL is not signed by the CA")
    next_update = crl.next_update_utc
    if next_update is None or next_update <= utcnow():
        return Check("crl", False, "the CRL is out of date: run `mss pki crl` to publish a new one")
    missing = _unpublished_revocations(engine, crl) if engine is not None else 0
    if missing:
        return Check("crl", False, f"{missing} revocation(s) not in the CRL yet: run `mss pki crl` to publish them")
    if next_update - utcnow() < CRL_MARGIN:
        return Check("crl", True, f"fresh, but ends at {next_update:%Y-%m-%d %H:%M} UTC")
    return Check("crl", True, f"fresh until {next_update:%Y-%m-%d %H:%M} UTC")


def _unpublished_revocations(engine: Engine, crl: x509.CertificateRevocationList) -> int:
    """How many revoked certificates that have not expired the CRL does not list (an
    unreachable database counts none: the database's own check says so)."""
    try:
        with read_scope(engine) as reader:
            revoked = {serial for serial, _at, _reason in certificates.listed_revocations(reader)}
    except SQLAlchemyError:
        return 0
    listed = {entry.serial_number for entry in crl}
    return len(revoked - listed)


def check_master_key(settings: Settings) -> Check:
    """The master key file is there, 32 bytes, readable by its owner only."""
    path = settings.storage.master_key_file
    try:
        mode = path.stat().st_mode
        size = path.stat().st_size
    except OSError:
        return Check("master-key", False, f"{path} is missing")
    if mode & 0o077:
        return Check("master-key", False, f"{path} is readable by group or others (chmod 600)")
    if not stat.S_ISREG(mode) or size != 32:
        return Check("master-key", False, f"{path} is not a 32-byte key")
    return Check("master-key", True, f"present at {path}")


def readiness(settings: Settings, engine: Engine | None, *, no_engine: str = "") -> list[Check]:
    """Every item the service needs to serve, in order: database, CA, CRL, master key.
    ``engine`` None: there is no database to open, for the reason ``no_engine`` (the
    doctor, which creates none)."""
    database = check_database(engine) if engine is not None else Check("database", False, no_engine)
    return [database, check_ca(settings), check_crl(settings, engine), check_master_key(settings)]


def startup_warnings(rt: Runtime) -> list[str]:
    """What an operator must hear about when the service starts (no secret in any line):
    the recovery private key still on this machine, metrics that would miss processes,
    certificates about to end."""
    found: list[str] = []
    paths = PkiPaths.from_settings(rt.settings)
    for place in dict.fromkeys((rt.settings.storage.data_dir / "recovery.key", paths.recovery_private_key)):
        if place.exists():
            where = (
                "in the data folder, beside the master key"
                if place.parent == rt.settings.storage.data_dir
                else "on this machine"
            )
            found.append(
                f"the recovery private key {place} is {where}: move it offline (see README, Keys),"
                " it opens every account's key"
            )
    processes = rt.settings.relay.processes
    if processes > 1 and rt.settings.operator.metrics_enabled and not metrics.counts_every_process():
        found.append(
            f"MSS_SMTP_PROCESSES is {processes} but PROMETHEUS_MULTIPROC_DIR is not set: the metrics count"
            " only the first process's messages (see README, Metrics)"
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
