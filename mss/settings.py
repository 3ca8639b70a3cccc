"""The service's settings: one typed object built once from ``MSS_*`` environment variables.

Nothing here is read at import time. ``Settings.from_env()`` builds the object; the CLI, the
SMTP server factory and the web app factory take it as an argument.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Final, TypeVar
from urllib.parse import urlsplit

from mss.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
# The kinds of key the operator's receipt-signing certificate can carry (MSS_OPERATOR_KEY).
OPERATOR_KEY_EC, OPERATOR_KEY_RSA = "ec-p256", "rsa"
OPERATOR_KEYS = (OPERATOR_KEY_EC, OPERATOR_KEY_RSA)


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip().lower() for part in value.split(",") if part.strip())


def _webhook_url(raw: str) -> str:
    """``MSS_WEBHOOK_URL`` checked: https, or http to a loopback address only (the body
    travels in clear otherwise); no user name or password in it (URLs reach the log).
    Errors name the scheme and host only: a path or query may hold the receiver's token."""
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        raise ConfigError("MSS_WEBHOOK_URL is not a valid URL (a port out of range, a malformed host?)") from None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if scheme not in {"https", "http"} or not host:
        raise ConfigError(
            f"MSS_WEBHOOK_URL must be an https:// URL with a host name, not one with scheme {scheme or 'none'!r}"
            f" and host {host or 'none'!r}"
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigError("MSS_WEBHOOK_URL must not carry a user name or password; the signature authenticates")
    if parts.fragment:
        raise ConfigError("MSS_WEBHOOK_URL must not have a #fragment")
    if port == 0:
        raise ConfigError("MSS_WEBHOOK_URL must not name port 0")
    if scheme == "http":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host.lower() == "localhost"
        if not loopback:
            raise ConfigError(
                f"MSS_WEBHOOK_URL must use https:// (plain http:// only to a loopback address), not http:// to {host}"
            )
    return raw


def _webhook_secret(raw: str) -> bytes:
    """The key of ``MSS_WEBHOOK_SECRET``, written as Standard Webhooks secrets are:
    ``whsec_`` and the base64 of 24 to 64 random bytes. The value itself never appears in
    an error."""
    if not raw.startswith("whsec_"):
        raise ConfigError("MSS_WEBHOOK_SECRET must start with whsec_ followed by base64 (Standard Webhooks form)")
    try:
        key = base64.b64decode(raw[len("whsec_") :], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("MSS_WEBHOOK_SECRET is not valid base64 after whsec_") from None
    if not 24 <= len(key) <= 64:
        raise ConfigError(f"MSS_WEBHOOK_SECRET must hold 24 to 64 bytes of key, not {len(key)}")
    return key


def _url_host(host: str) -> str:
    """``host`` as written in a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class StorageSettings:
    """Where data lives."""

    data_dir: Path
    """``MSS_DATA_DIR``: database (SQLite), master key, recovery key. Default ``./var``."""
    database_url: str
    """``MSS_DATABASE_URL``: SQLAlchemy URL. Default ``sqlite:///<data_dir>/mss.db``."""
    master_key_file: Path
    """``MSS_MASTER_KEY_FILE``: 32-byte key sealing server secrets. Default ``<data_dir>/master.key``."""


@dataclass(frozen=True)
class PkiSettings:
    """Certificates and keys."""

    certs_dir: Path
    """``MSS_CERTS_DIR``: CA, CRL and TLS server material. Default ``certs/dev``."""
    hostnames: tuple[str, ...]
    """``MSS_HOSTNAMES``: comma-separated names in the TLS certificate. Default ``localhost``."""
    user_key_bits: int
    """``MSS_USER_KEY_BITS``: RSA size of issued S/MIME keys. Default 3072."""
    operator_key: str
    """``MSS_OPERATOR_KEY``: the key of the operator's receipt-signing certificate when one is
    made: ``ec-p256`` (ECDSA P-256) or ``rsa`` (RSA of ``MSS_USER_KEY_BITS``, for a trust
    space that accepts only RSA signatures). Default ``ec-p256``."""
    certificate_days: int
    """``MSS_CERTIFICATE_DAYS``: validity of issued S/MIME certificates. Default 1095."""
    recovery_public_key: Path
    """``MSS_RECOVERY_PUBLIC_KEY``: X25519 public key that escrows private keys. Default ``<data_dir>/recovery.pub``."""
    recovery_private_key_out: Path
    """``MSS_RECOVERY_KEY_OUT``: where ``mss pki init`` writes the recovery *private* key, to be
    moved offline; never in the data folder. Default ``./offline/recovery.key``."""
    crl_url: str
    """``MSS_CRL_URL``: the CRL distribution point written into issued certificates. Default
    ``http://<first hostname>:<MSS_PKI_HTTP_PORT>/pki/ca.crl``."""
    http_host: str
    """``MSS_PKI_HTTP_HOST``: listen address of the plain-HTTP CRL and CA publication. Default ``127.0.0.1``."""
    http_port: int
    """``MSS_PKI_HTTP_PORT``: its port (0 turns it off). Default 8080 (80 in production, behind the CRL URL)."""
    expiry_warning_days: int
    """``MSS_CERT_WARNING_DAYS``: certificates ending within this many days are announced
    (web banner, ``mss serve`` log) and renewed by ``mss pki renew``. Default 30."""

    @cached_property
    def own_name(self) -> str:
        """The name the operator gives itself (SMTP greeting and EHLO, reporting MTA or UA
        of its receipts): the first of ``MSS_HOSTNAMES``, else the machine's own (looked up
        once: every receipt names it)."""
        return self.hostnames[0] if self.hostnames else socket.getfqdn()


@dataclass(frozen=True)
class SecuritySettings:
    """Password hashing, lockout and TOTP."""

    argon2_opslimit: int
    """``MSS_ARGON2_OPSLIMIT``: argon2id passes. Default 3 (libsodium's moderate-interactive)."""
    argon2_memlimit: int
    """``MSS_ARGON2_MEMLIMIT``: argon2id memory in bytes. Default 64 MiB."""
    max_login_failures: int
    """``MSS_MAX_LOGIN_FAILURES``: failures before the account is locked. Default 5."""
    lockout_seconds: int
    """``MSS_LOCKOUT_SECONDS``: how long a lock lasts, and the window failures are counted in. Default 900."""
    account_max_failures: int
    """``MSS_ACCOUNT_MAX_FAILURES``: wrong passwords for one account from all client addresses
    together before it is locked for everyone (distributed guessing). Default 50."""
    client_free_failures: int
    """``MSS_CLIENT_FREE_FAILURES``: failed logins from one client address before each further
    try must wait (1 s, then doubling up to 60 s). Default 10."""
    client_max_failures: int
    """``MSS_CLIENT_MAX_FAILURES``: failed logins from one client address before it is refused
    for ``MSS_LOCKOUT_SECONDS``. Default 100 (a hospital's users may share one address)."""
    totp_issuer: str
    """``MSS_TOTP_ISSUER``: issuer shown in authenticator apps. Default ``mss``."""


# Processes that may share the submission port: a few per core is already more than helps.
MAX_SMTP_PROCESSES: Final = 32
# The longest a setting counted in days may be (a century): dates beyond are not dates.
MAX_DAYS: Final = 36_500


@dataclass(frozen=True)
class RelaySettings:
    """The SMTP submission server."""

    host: str
    """``MSS_SMTP_HOST``: listen address. Default ``127.0.0.1``."""
    port: int
    """``MSS_SMTP_PORT``: submission port (STARTTLS). Default 2587."""
    processes: int
    """``MSS_SMTP_PROCESSES``: processes that serve the submission port together (1 to 32;
    more than one share the port with ``SO_REUSEPORT``, Linux). Default 1."""
    max_message_size: int
    """``MSS_MAX_MESSAGE_SIZE``: bytes, advertised with SIZE. Default 20 MB."""
    max_recipients: int
    """``MSS_MAX_RECIPIENTS``: recipients per message. Default 50."""
    max_sessions: int
    """``MSS_MAX_SESSIONS``: concurrent SMTP sessions. Default 100. With several processes,
    each takes its share (``session_share``)."""
    max_sessions_per_client: int
    """``MSS_MAX_SESSIONS_PER_CLIENT``: concurrent SMTP sessions from one client address. Default
    10. With several processes, each takes its share."""
    login_timeout: float
    """``MSS_SMTP_LOGIN_TIMEOUT``: seconds from connection to successful AUTH, not extended by
    any command. Default 30."""
    command_timeout: float
    """``MSS_SMTP_TIMEOUT``: seconds a client may stay idle. Default 300."""
    dsn_on_success: bool
    """``MSS_DSN_ON_SUCCESS``: send a success DSN even when not asked. Default off."""

    def session_share(self) -> tuple[int, int]:
        """The sessions one process of the submission port may hold, in all and from one
        client address: the limits divided among the processes, so that together they
        never hold more than the limits say (``from_env`` refuses limits below the number
        of processes). The kernel spreads connections by a hash of their addresses, so one
        client may meet its share in one process before its limit in all."""
        return self.max_sessions // self.processes, self.max_sessions_per_client // self.processes


@dataclass(frozen=True)
class WebSettings:
    """The web inbox."""

    host: str
    """``MSS_WEB_HOST``: listen address. Default ``127.0.0.1``."""
    port: int
    """``MSS_WEB_PORT``: HTTPS port. Default 8443."""
    behind_tls_proxy: bool
    """``MSS_WEB_BEHIND_TLS_PROXY``: serve plain HTTP behind a TLS-terminating proxy. Default off."""


@dataclass(frozen=True)
class ImapSettings:
    """The IMAP server for mail clients (``mss.imap``)."""

    host: str
    """``MSS_IMAP_HOST``: listen address. Default ``127.0.0.1``."""
    port: int
    """``MSS_IMAP_PORT``: IMAP with STARTTLS required before any login. Default 2143 (143 in production)."""
    tls_port: int
    """``MSS_IMAPS_PORT``: IMAP over implicit TLS (0 turns it off). Default 2993 (993 in production)."""
    max_sessions: int
    """``MSS_IMAP_MAX_SESSIONS``: concurrent IMAP connections per process. Default 500."""
    max_sessions_per_client: int
    """``MSS_IMAP_MAX_SESSIONS_PER_CLIENT``: concurrent IMAP connections per process from one
    client address (a practice behind one address, each mail client holding a few). Default 100."""
    idle_timeout: float
    """``MSS_IMAP_TIMEOUT``: seconds a client may stay silent (RFC 3501 asks at least 30 minutes). Default 1860."""
    login_timeout: float
    """``MSS_IMAP_LOGIN_TIMEOUT``: seconds from connection to a successful login, not extended
    by any command (a connection that never logs in holds no place for long). Default 60."""
    session_seconds: int
    """``MSS_IMAP_SESSION_SECONDS``: the longest an IMAP login lasts before it must log in
    again. Default 43200 (12 h)."""
    poll_seconds: float
    """``MSS_IMAP_POLL_SECONDS``: how often IDLE looks for changes made by any process. Default 1."""
    max_literal: int
    """``MSS_IMAP_MAX_LITERAL``: largest literal a client may send (APPEND). Default the message size limit + 1 MB."""


@dataclass(frozen=True)
class FederationSettings:
    """Mail with other operators of the trust space: the MX listener and the outbound queue."""

    mx_host: str
    """``MSS_MX_HOST``: listen address of the inbound MX port. Default ``127.0.0.1``."""
    mx_port: int
    """``MSS_MX_PORT``: inbound SMTP from other operators (STARTTLS and a client certificate
    required; 0 turns it off). Default 2525 (25 in production)."""
    mx_max_sessions_per_client: int
    """``MSS_MX_MAX_SESSIONS_PER_CLIENT``: concurrent sessions at the MX port from one client
    address (the next gets ``421 4.7.0``); a peer's MTA opens up to 20 to one destination
    by default (Postfix). Default 25. The MX port's sessions in all: ``MSS_MAX_SESSIONS``."""
    peer_ca_file: Path
    """``MSS_PEER_CA_FILE``: PEM CA certificates that issue other operators' TLS and S/MIME
    certificates (the health PKI chain in production). Default ``<certs dir>/ca.pem``."""
    peer_smtp_port: int
    """``MSS_PEER_SMTP_PORT``: port of a peer found through its DNS MX. Default 25."""
    delay_warning: float
    """``MSS_DELAY_WARNING``: a message still queued this long gets a ``delayed`` DSN. Default 4h."""
    queue_lifetime: float
    """``MSS_QUEUE_LIFETIME``: retries end and a ``failed`` DSN goes out after this. Default 5d."""
    retry_min: float
    """``MSS_RETRY_MIN``: first wait after a temporary failure, doubled at each one. Default 5m."""
    retry_max: float
    """``MSS_RETRY_MAX``: the longest wait between two attempts. Default 1h."""
    queue_lease: float
    """``MSS_QUEUE_LEASE``: how long a worker holds a message it is delivering; after a crash
    another worker takes it over once this has passed. Default 10m."""
    delivery_concurrency: int
    """``MSS_DELIVERY_CONCURRENCY``: deliveries in flight per ``mss serve`` process (0: this
    process delivers nothing). Default 4."""
    queue_poll: float
    """``MSS_QUEUE_POLL``: how often an idle worker looks for due messages. Default 1s."""
    queue_report: float
    """``MSS_QUEUE_REPORT``: how often the queue size and age are logged. Default 60s."""
    delivery_timeout: float
    """``MSS_DELIVERY_TIMEOUT``: seconds to wait for a peer's answer to one SMTP command. Default 120."""
    certificate_fetch_timeout: float
    """``MSS_CERT_FETCH_TIMEOUT``: seconds to wait for a peer's certificate or CRL publication. Default 5."""
    certificate_cache: float
    """``MSS_CERT_CACHE``: how long a certificate fetched from a peer (or its absence) is used
    before asking again. Default 1d."""


@dataclass(frozen=True)
class OperatorSettings:
    """What the operator watches: metrics, logs, delivery deadlines, mailbox life cycle."""

    metrics_host: str
    """``MSS_METRICS_HOST``: listen address of the Prometheus metrics. Default ``127.0.0.1``."""
    metrics_port: int
    """``MSS_METRICS_PORT``: their port (0 turns them off). Default 9464."""
    metrics_enabled: bool
    """``MSS_METRICS``: false counts nothing at all (the instruments do nothing) and serves no
    metrics. Default true."""
    log_format: str
    """``MSS_LOG_FORMAT``: ``text`` or ``json`` (one JSON object a line). Default ``text``."""
    receipt_deadline: float
    """``MSS_RECEIPT_DEADLINE``: seconds a delivery may wait for its final status before the
    sender gets a delayed DSN. Default 3600."""
    inactive_notice_days: int
    """``MSS_INACTIVE_NOTICE_DAYS``: days without login before a mailbox gets an inactivity notice. Default 335."""
    inactive_close_days: int
    """``MSS_INACTIVE_CLOSE_DAYS``: days without login before it is closed and its messages deleted. Default 365."""


@dataclass(frozen=True)
class WebhookSettings:
    """The webhook that tells an integrator each final status of a sent message (``mss.webhooks``)."""

    url: str
    """``MSS_WEBHOOK_URL``: where events are POSTed: https, or http to a loopback address. Empty
    (the default): no webhook."""
    secret: bytes = field(repr=False)
    """``MSS_WEBHOOK_SECRET``: ``whsec_`` + base64 of the HMAC key (Standard Webhooks); required
    with the URL, never logged."""
    retry_min: float
    """``MSS_WEBHOOK_RETRY_MIN``: first wait after a failed attempt, doubled at each one. Default 10s."""
    retry_max: float
    """``MSS_WEBHOOK_RETRY_MAX``: the longest wait between two attempts. Default 1h."""
    lifetime: float
    """``MSS_WEBHOOK_LIFETIME``: an event not accepted this long after it was recorded is given
    up (and audited). Default 1d."""
    timeout: float
    """``MSS_WEBHOOK_TIMEOUT``: seconds one POST may take. Default 10s."""
    poll: float
    """``MSS_WEBHOOK_POLL``: how often the sender looks for due events. Default 1s."""

    @property
    def enabled(self) -> bool:
        return bool(self.url)


@dataclass(frozen=True)
class Settings:
    """Everything the service needs, grouped by concern."""

    environment: str
    """``MSS_ENV``: ``development`` (generates missing dev material) or ``production``."""
    domains: tuple[str, ...]
    """``MSS_DOMAINS``: mail domains this operator serves (and their subdomains). Default ``mss.test``."""
    audit_retention_days: int
    """``MSS_AUDIT_RETENTION_DAYS``: audit events kept before purge. Default 183 (six months)."""
    storage: StorageSettings
    pki: PkiSettings
    security: SecuritySettings
    relay: RelaySettings
    web: WebSettings
    imap: ImapSettings
    federation: FederationSettings
    operator: OperatorSettings
    webhook: WebhookSettings

    @property
    def is_production(self) -> bool:
        return self.environment == "production"

    def serves(self, address: str) -> bool:
        """True when the address's domain is one of ours or a subdomain of one."""
        domain = address.rpartition("@")[2].lower()
        return any(domain == d or domain.endswith("." + d) for d in self.domains)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build the settings from ``env`` (default: the process environment).

        Raises ConfigError on a malformed value.
        """
        env = os.environ if env is None else env

        def get(name: str, default: str) -> str:
            return env.get(name, default).strip() or default

        def parsed(name: str, default: T, parse: Callable[[str], T], expected: str) -> T:
            raw = get(name, str(default))
            try:
                return parse(raw)
            except ValueError:
                raise ConfigError(f"{name} must be {expected}, not {raw!r}") from None

        def integer(name: str, default: int) -> int:
            return parsed(name, default, int, "a whole number")

        def number(name: str, default: float) -> float:
            return parsed(name, default, float, "a number")

        def duration(name: str, default: str) -> float:
            # 90, 90s, 15m, 4h, 5d: seconds unless a unit says otherwise.
            raw = get(name, default).lower()
            unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}.get(raw[-1:], 0)
            try:
                value = float(raw[:-1] if unit else raw) * (unit or 1)
            except ValueError:
                raise ConfigError(f"{name} must be a duration such as 90, 15m, 4h or 5d, not {raw!r}") from None
            if value <= 0:
                raise ConfigError(f"{name} must be longer than zero")
            return value

        def retry_waits(first: tuple[str, str], longest: tuple[str, str]) -> dict[str, float]:
            # The first wait after a failure and the longest one: (variable, default) each.
            waits = {"retry_min": duration(*first), "retry_max": duration(*longest)}
            if waits["retry_max"] < waits["retry_min"]:
                raise ConfigError(f"{longest[0]} must not be shorter than {first[0]}")
            return waits

        def flag(name: str, default: bool) -> bool:
            raw = get(name, "1" if default else "0").lower()
            if raw in {"1", "true", "yes", "on"}:
                return True
            if raw in {"0", "false", "no", "off"}:
                return False
            raise ConfigError(f"{name} must be true or false, not {raw!r}")

        environment = get("MSS_ENV", "development").lower()
        if environment not in {"development", "production"}:
            raise ConfigError(f"MSS_ENV must be development or production, not {environment!r}")
        data_dir = Path(get("MSS_DATA_DIR", str(PROJECT_ROOT / "var"))).expanduser().resolve()
        storage = StorageSettings(
            data_dir=data_dir,
            database_url=get("MSS_DATABASE_URL", f"sqlite:///{data_dir / 'mss.db'}"),
            master_key_file=Path(get("MSS_MASTER_KEY_FILE", str(data_dir / "master.key"))),
        )
        hostnames = _split(get("MSS_HOSTNAMES", "localhost,127.0.0.1"))
        http_port = integer("MSS_PKI_HTTP_PORT", 8080)
        first_host = hostnames[0] if hostnames else "localhost"
        pki = PkiSettings(
            certs_dir=Path(get("MSS_CERTS_DIR", str(PROJECT_ROOT / "certs" / "dev"))).resolve(),
            hostnames=hostnames,
            user_key_bits=integer("MSS_USER_KEY_BITS", 3072),
            operator_key=get("MSS_OPERATOR_KEY", OPERATOR_KEY_EC).lower(),
            certificate_days=integer("MSS_CERTIFICATE_DAYS", 1095),
            recovery_public_key=Path(get("MSS_RECOVERY_PUBLIC_KEY", str(data_dir / "recovery.pub"))),
            recovery_private_key_out=Path(get("MSS_RECOVERY_KEY_OUT", str(PROJECT_ROOT / "offline" / "recovery.key")))
            .expanduser()
            .resolve(),
            crl_url=get("MSS_CRL_URL", f"http://{_url_host(first_host)}:{http_port or 8080}/pki/ca.crl"),
            http_host=get("MSS_PKI_HTTP_HOST", "127.0.0.1"),
            http_port=http_port,
            expiry_warning_days=integer("MSS_CERT_WARNING_DAYS", 30),
        )
        if pki.recovery_private_key_out.is_relative_to(data_dir):
            raise ConfigError("MSS_RECOVERY_KEY_OUT must not be in the data folder, beside the master key")
        if not pki.crl_url.startswith("http://"):
            # RFC 5280 4.2.1.13 / RFC 8550: relying parties fetch CRLs over plain HTTP (the
            # list is signed); an https URL would need a revocation check of its own.
            raise ConfigError("MSS_CRL_URL must be an http:// URL")
        if pki.user_key_bits < 2048:
            raise ConfigError("MSS_USER_KEY_BITS must be at least 2048")
        if pki.operator_key not in OPERATOR_KEYS:
            raise ConfigError(f"MSS_OPERATOR_KEY must be ec-p256 or rsa, not {pki.operator_key!r}")
        security = SecuritySettings(
            argon2_opslimit=integer("MSS_ARGON2_OPSLIMIT", 3),
            argon2_memlimit=integer("MSS_ARGON2_MEMLIMIT", 64 * 1024 * 1024),
            max_login_failures=integer("MSS_MAX_LOGIN_FAILURES", 5),
            lockout_seconds=integer("MSS_LOCKOUT_SECONDS", 900),
            account_max_failures=integer("MSS_ACCOUNT_MAX_FAILURES", 50),
            client_free_failures=integer("MSS_CLIENT_FREE_FAILURES", 10),
            client_max_failures=integer("MSS_CLIENT_MAX_FAILURES", 100),
            totp_issuer=get("MSS_TOTP_ISSUER", "mss"),
        )
        relay = RelaySettings(
            host=get("MSS_SMTP_HOST", "127.0.0.1"),
            port=integer("MSS_SMTP_PORT", 2587),
            processes=integer("MSS_SMTP_PROCESSES", 1),
            max_message_size=integer("MSS_MAX_MESSAGE_SIZE", 20 * 1000 * 1000),
            max_recipients=integer("MSS_MAX_RECIPIENTS", 50),
            max_sessions=integer("MSS_MAX_SESSIONS", 100),
            max_sessions_per_client=integer("MSS_MAX_SESSIONS_PER_CLIENT", 10),
            login_timeout=number("MSS_SMTP_LOGIN_TIMEOUT", 30.0),
            command_timeout=number("MSS_SMTP_TIMEOUT", 300.0),
            dsn_on_success=flag("MSS_DSN_ON_SUCCESS", False),
        )
        if not 1 <= relay.processes <= MAX_SMTP_PROCESSES:
            raise ConfigError(f"MSS_SMTP_PROCESSES must be 1 to {MAX_SMTP_PROCESSES}, not {relay.processes}")
        if relay.processes > 1:
            if not sys.platform.startswith("linux"):
                raise ConfigError("MSS_SMTP_PROCESSES above 1 needs Linux (SO_REUSEPORT, PR_SET_PDEATHSIG)")
            for name, limit in (
                ("MSS_MAX_SESSIONS", relay.max_sessions),
                ("MSS_MAX_SESSIONS_PER_CLIENT", relay.max_sessions_per_client),
            ):
                if limit < relay.processes:
                    raise ConfigError(
                        f"{name} ({limit}) must be at least MSS_SMTP_PROCESSES ({relay.processes}):"
                        " each process takes an equal share of it"
                    )
        web = WebSettings(
            host=get("MSS_WEB_HOST", "127.0.0.1"),
            port=integer("MSS_WEB_PORT", 8443),
            behind_tls_proxy=flag("MSS_WEB_BEHIND_TLS_PROXY", False),
        )
        production = environment == "production"
        imap = ImapSettings(
            host=get("MSS_IMAP_HOST", "127.0.0.1"),
            port=integer("MSS_IMAP_PORT", 143 if production else 2143),
            tls_port=integer("MSS_IMAPS_PORT", 993 if production else 2993),
            max_sessions=integer("MSS_IMAP_MAX_SESSIONS", 500),
            max_sessions_per_client=integer("MSS_IMAP_MAX_SESSIONS_PER_CLIENT", 100),
            idle_timeout=number("MSS_IMAP_TIMEOUT", 1860.0),
            login_timeout=number("MSS_IMAP_LOGIN_TIMEOUT", 60.0),
            session_seconds=integer("MSS_IMAP_SESSION_SECONDS", 12 * 3600),
            poll_seconds=number("MSS_IMAP_POLL_SECONDS", 1.0),
            max_literal=integer("MSS_IMAP_MAX_LITERAL", relay.max_message_size + 1_000_000),
        )
        if imap.poll_seconds <= 0 or imap.idle_timeout <= 0 or imap.login_timeout <= 0:
            raise ConfigError("MSS_IMAP_POLL_SECONDS, MSS_IMAP_TIMEOUT and MSS_IMAP_LOGIN_TIMEOUT must be positive")
        if imap.max_sessions_per_client < 1:
            raise ConfigError("MSS_IMAP_MAX_SESSIONS_PER_CLIENT must be at least 1")
        certs_dir = pki.certs_dir
        federation = FederationSettings(
            mx_host=get("MSS_MX_HOST", "127.0.0.1"),
            mx_port=integer("MSS_MX_PORT", 25 if environment == "production" else 2525),
            mx_max_sessions_per_client=integer("MSS_MX_MAX_SESSIONS_PER_CLIENT", 25),
            peer_ca_file=Path(get("MSS_PEER_CA_FILE", str(certs_dir / "ca.pem"))).expanduser().resolve(),
            peer_smtp_port=integer("MSS_PEER_SMTP_PORT", 25),
            delay_warning=duration("MSS_DELAY_WARNING", "4h"),
            queue_lifetime=duration("MSS_QUEUE_LIFETIME", "5d"),
            **retry_waits(("MSS_RETRY_MIN", "5m"), ("MSS_RETRY_MAX", "1h")),
            queue_lease=duration("MSS_QUEUE_LEASE", "10m"),
            delivery_concurrency=integer("MSS_DELIVERY_CONCURRENCY", 4),
            queue_poll=duration("MSS_QUEUE_POLL", "1s"),
            queue_report=duration("MSS_QUEUE_REPORT", "60s"),
            delivery_timeout=duration("MSS_DELIVERY_TIMEOUT", "120s"),
            certificate_fetch_timeout=duration("MSS_CERT_FETCH_TIMEOUT", "5s"),
            certificate_cache=duration("MSS_CERT_CACHE", "1d"),
        )
        if federation.mx_max_sessions_per_client < 1:
            raise ConfigError("MSS_MX_MAX_SESSIONS_PER_CLIENT must be at least 1")
        if federation.delivery_concurrency < 0:
            raise ConfigError("MSS_DELIVERY_CONCURRENCY must be 0 or more")
        log_format = get("MSS_LOG_FORMAT", "text").lower()
        if log_format not in {"text", "json"}:
            raise ConfigError(f"MSS_LOG_FORMAT must be text or json, not {log_format!r}")
        operator = OperatorSettings(
            metrics_host=get("MSS_METRICS_HOST", "127.0.0.1"),
            metrics_port=integer("MSS_METRICS_PORT", 9464),
            metrics_enabled=flag("MSS_METRICS", True),
            log_format=log_format,
            receipt_deadline=number("MSS_RECEIPT_DEADLINE", 3600.0),
            inactive_notice_days=integer("MSS_INACTIVE_NOTICE_DAYS", 335),
            inactive_close_days=integer("MSS_INACTIVE_CLOSE_DAYS", 365),
        )
        if operator.inactive_close_days > MAX_DAYS:
            raise ConfigError(f"MSS_INACTIVE_CLOSE_DAYS must be at most {MAX_DAYS}")
        if not 0 < operator.inactive_notice_days < operator.inactive_close_days:
            raise ConfigError("MSS_INACTIVE_NOTICE_DAYS must be positive and less than MSS_INACTIVE_CLOSE_DAYS")
        if operator.receipt_deadline <= 0:
            raise ConfigError("MSS_RECEIPT_DEADLINE must be a positive number of seconds")
        webhook_url = env.get("MSS_WEBHOOK_URL", "").strip()
        webhook_secret = env.get("MSS_WEBHOOK_SECRET", "").strip()
        if webhook_url and not webhook_secret:
            raise ConfigError("MSS_WEBHOOK_SECRET is required when MSS_WEBHOOK_URL is set")
        webhook = WebhookSettings(
            url=_webhook_url(webhook_url) if webhook_url else "",
            secret=_webhook_secret(webhook_secret) if webhook_url else b"",
            **retry_waits(("MSS_WEBHOOK_RETRY_MIN", "10s"), ("MSS_WEBHOOK_RETRY_MAX", "1h")),
            lifetime=duration("MSS_WEBHOOK_LIFETIME", "1d"),
            timeout=duration("MSS_WEBHOOK_TIMEOUT", "10s"),
            poll=duration("MSS_WEBHOOK_POLL", "1s"),
        )
        audit_retention_days = integer("MSS_AUDIT_RETENTION_DAYS", 183)
        if not 0 <= audit_retention_days <= MAX_DAYS:
            raise ConfigError(f"MSS_AUDIT_RETENTION_DAYS must be 0 to {MAX_DAYS}")
        return cls(
            environment=environment,
            domains=_split(get("MSS_DOMAINS", "mss.test")),
            audit_retention_days=audit_retention_days,
            storage=storage,
            pki=pki,
            security=security,
            relay=relay,
            web=web,
            imap=imap,
            federation=federation,
            operator=operator,
            webhook=webhook,
        )

    def with_changes(self, **changes: object) -> Settings:
        """A copy with some top-level fields replaced (tests use it)."""
        # dataclasses.replace checks the names and the values are the caller's to get right.
        return replace(self, **changes)  # type: ignore[arg-type]
