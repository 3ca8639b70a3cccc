"""The ``mss`` command: parse, call one service function, print.

Secrets are prompted with hidden input, or read one per line from standard input with
``--password-stdin`` (in the order the prompts would ask them); there is never a password
flag. Errors print one line on stderr and exit with status 1.
"""

from __future__ import annotations

import contextlib
import csv
import enum
import functools
import getpass
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from mss.db import session_scope, sqlite_path
from mss.errors import MssError, NoSuchAccount, StorageError
from mss.files import replacing, unfit_output, write_file
from mss.runtime import Runtime, open_runtime
from mss.settings import Settings

# Not on a terminal (a pipe, a log), tables keep their full width instead of wrapping at 80.
# No markup: what is printed holds the operator's input (paths, addresses, file lines), whose
# brackets must print as they are; the few coloured words are styled explicitly (``said``).
out = Console(width=None if sys.stdout.isatty() else 200, markup=False)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200, markup=False)


def said(console: Console, label: str, colour: str, rest: str) -> None:
    """``label`` in ``colour``, then ``rest`` as it is."""
    console.print(Text.assemble((label, colour), " ", rest), highlight=False)


F = TypeVar("F", bound=Callable[..., Any])
# The last page a listing may ask for (500 entries a page: 50 million entries).
MAX_PAGE = 100_000


def _utf8(value: str) -> bool:
    """False for a command-line argument that was not UTF-8 (Python keeps its bytes as
    surrogates, which no address, reason or path of this service may hold)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def handles_errors(fn: F) -> F:
    """Turn an MssError into one line on stderr and exit status 1; a database failure too,
    by its kind (its text names the statement, not something an operator acts on), and a
    file the system refuses, by its name and the system's reason."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for name, value in kwargs.items():
            if isinstance(value, str) and not _utf8(value):
                said(err, "error:", "red", f"{name.replace('_', '-')} is not valid UTF-8")
                raise typer.Exit(2)
        try:
            return fn(*args, **kwargs)
        except MssError as exc:
            said(err, "error:", "red", exc.message)
            raise typer.Exit(1) from None
        except SQLAlchemyError as exc:
            said(err, "error:", "red", f"the database failed ({type(exc).__name__}); `mss doctor` checks it")
            raise typer.Exit(1) from None
        except OSError as exc:
            # A file or folder the command needs (a read-only data folder, a full disk): its
            # name and the system's word for it, not a traceback.
            where = f" ({exc.filename})" if exc.filename else ""
            said(err, "error:", "red", f"{exc.strerror or type(exc).__name__}{where}")
            raise typer.Exit(1) from None

    # functools.wraps keeps the signature Typer reads; mypy sees only the wrapper
    return wrapper  # type: ignore[return-value]


class CommandGroup(typer.Typer):
    """A group of commands, each of which handles errors (``handles_errors``)."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[F], F]:
        register = super().command(*args, **kwargs)

        def decorator(fn: F) -> F:
            return register(handles_errors(fn))

        return decorator


# Plain help (no rich boxes): Typer's rich help labels every flag "<bool>" as if it took a
# value; the plain form shows a flag as a flag, and reads the same in a pipe or a log.


def _group(help_text: str, *, add_completion: bool = True) -> CommandGroup:
    """A command group: plain help text, and its help when called with no command."""
    return CommandGroup(help=help_text, rich_markup_mode=None, no_args_is_help=True, add_completion=add_completion)


app = _group("mss: secure messaging for health professionals.", add_completion=False)
pki_app = _group("Development PKI and S/MIME certificates.")
directory_app = _group("The directory of professionals.")
account_app = _group("Accounts, passwords, second factor and keys.")
audit_app = _group("The audit trail.")
trust_app = _group("The trust list: other operators' domains, and their routes.")
queue_app = _group("The outbound queue: messages for other operators.")
report_app = _group("Reports for the operator.")
lifecycle_app = _group("Inactive mailboxes and audit retention.")
app.add_typer(pki_app, name="pki")
app.add_typer(directory_app, name="directory")
app.add_typer(account_app, name="account")
app.add_typer(audit_app, name="audit")
app.add_typer(trust_app, name="trust")
app.add_typer(queue_app, name="queue")
app.add_typer(report_app, name="report")
app.add_typer(lifecycle_app, name="lifecycle")

PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read secrets one per line from standard input, in prompt order.")
]
Pkcs12File = Annotated[
    Path, typer.Option("--out", help="Where to write the key and certificate (a PKCS#12 .p12 file).")
]
RevocationReason = Annotated[
    str,
    typer.Option(
        help="Why the certificate is revoked (RFC 5280): keyCompromise, affiliationChanged, superseded,"
        " cessationOfOperation ..."
    ),
]
Compatible = Annotated[
    bool,
    typer.Option(
        "--compatible",
        help=(
            "PKCS#12 with SHA-1/3DES password encryption, for gpgsm 2.2 (Debian 12);"
            " export password in Latin-1, at most 31 characters, each one outside ASCII counting as two."
        ),
    ),
]


class Format(enum.StrEnum):
    """How a listing is printed."""

    table = "table"
    json = "json"
    csv = "csv"


FormatOption = Annotated[
    Format, typer.Option("--format", case_sensitive=False, help="table (for people), json or csv (for programs).")
]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M}"
    return str(value)


def print_listing(
    columns: Sequence[tuple[str, str]], rows: Sequence[dict[str, Any]], fmt: Format, *, summary: str
) -> None:
    """Rows (dicts keyed by the first item of each column) as a table, a JSON array or CSV
    with a header line. The summary (a count, "no match") follows a table on standard
    output, and goes to standard error with json and csv so that the data stays parseable."""
    if fmt is Format.json:
        data = [{key: (v.isoformat() if isinstance(v, datetime) else v) for key, v in row.items()} for row in rows]
        print(json.dumps(data, ensure_ascii=False, indent=2))
        err.print(summary, highlight=False)
    elif fmt is Format.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow([key for key, _title in columns])
        for row in rows:
            writer.writerow([_cell(row.get(key)) for key, _title in columns])
        err.print(summary, highlight=False)
    else:
        if rows:
            table = Table(*(title for _key, title in columns))
            for row in rows:
                table.add_row(*(_cell(row.get(key)) for key, _title in columns))
            out.print(table)
        out.print(summary, highlight=False)


def actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def runtime() -> Runtime:
    """The service's runtime for a command. A SQLite database that was not there is made (a
    first run), and the operator told so: a mistyped MSS_DATABASE_URL shows at once."""
    settings = Settings.from_env()
    file = sqlite_path(settings.storage.database_url)
    new = file is not None and not file.exists()
    rt = open_runtime(settings)
    if new:
        err.print(f"note: there was no database at {file}: a new, empty one is made there (MSS_DATABASE_URL)")
    return rt


@contextlib.contextmanager
def transaction(*, readonly: bool = False) -> Iterator[tuple[Runtime, Session]]:
    """The runtime and one database session on it, committed when the block ends
    (``readonly``: a session that writes nothing)."""
    rt = runtime()
    with session_scope(rt.engine, readonly=readonly) as session:
        yield rt, session


class SecretReader:
    """Prompts for secrets (hidden), or reads them line by line from stdin."""

    def __init__(self, from_stdin: bool) -> None:
        self.from_stdin = from_stdin

    def read(self, prompt: str, *, confirm: bool = False) -> str:
        if self.from_stdin:
            line = sys.stdin.readline()
            if not line:
                raise MssError(f"standard input ended before: {prompt}")
            return line.rstrip("\r\n")
        return typer.prompt(prompt, hide_input=True, confirmation_prompt=confirm)


def export_protection(reader: SecretReader, compatible: bool) -> tuple[str, str]:
    """The password protecting a PKCS#12 file (asked twice) and its profile."""
    from mss.crypto import keys

    export_password = reader.read("Export password (protects the .p12 file)", confirm=True)
    return export_password, keys.PKCS12_COMPATIBLE if compatible else keys.PKCS12_STRONG


def print_enrolment(enrolment: Any) -> None:
    import segno

    out.print(f"TOTP enrolment for {enrolment.address} (scan with an authenticator app):")
    out.print(enrolment.otpauth_uri, highlight=False, soft_wrap=True)
    if sys.stdout.isatty():
        segno.make(enrolment.otpauth_uri, error="m").terminal(compact=True)


# -- pki ---------------------------------------------------------------------------------


@pki_app.command("init")
def pki_init(
    if_missing: Annotated[
        bool,
        typer.Option(
            "--if-missing",
            help="Do nothing when the PKI exists (but make a recovery public key left unwritten beside its key).",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Regenerate everything (invalidates issued certificates).")
    ] = False,
) -> None:
    """Create the development CA, CRL, TLS certificate and recovery key pair."""
    from directory import certificates
    from mss.crypto import pki

    settings = Settings.from_env()
    if if_missing and not force and (settings.pki.certs_dir / "ca.pem").exists():
        # The PKI exists: nothing of it is made again (a TLS certificate installed by hand,
        # the CRL), only a recovery public key an earlier run left unwritten beside its
        # private key is completed (development only).
        if not settings.is_production and pki.complete_recovery_public_key(settings):
            out.print(f"recovery public key made from its private key: {settings.pki.recovery_public_key}")
        return
    dev = pki.init_dev_pki(settings, force=force)
    if "crl" in dev.generated and "ca" not in dev.generated:
        # A CRL missing or unreadable under a CA that stays: made again from the directory's
        # revocations, never left empty.
        with transaction() as (rt, session):
            crl = certificates.refresh_crl(session, rt.settings)
        out.print(f"CRL published again: {len(crl)} revoked certificate(s)")
    out.print(f"development PKI ready in {settings.pki.certs_dir} (for development only)")
    out.print(f"recovery public key: {settings.pki.recovery_public_key}")
    if "recovery" in dev.generated:
        out.print(
            f"recovery PRIVATE key: {dev.paths.recovery_private_key} - move it offline now (a safe, an offline"
            " USB key): it opens every account's key; `mss account recover` and `rekey --recovery-key`"
            " read it from there",
            highlight=False,
        )


@pki_app.command("issue")
def pki_issue(
    address: str, out_file: Pkcs12File, password_stdin: PasswordStdin = False, compatible: Compatible = False
) -> None:
    """Issue an S/MIME certificate for an entry without an account; the key goes to a .p12 file."""
    from mss import accounts

    rt = runtime()
    export_password, profile = export_protection(SecretReader(password_stdin), compatible)
    output_file(out_file, then="; nothing was issued")
    # The file holds the key's only copy: written beside its place before the certificate is
    # committed (a place that cannot be written issues nothing), and put in its place once it
    # is (a commit that fails leaves whatever was there as it was).
    pending = out_file.with_name(f".{out_file.name}.{os.getpid()}.pending")
    committed = False
    try:
        with session_scope(rt.engine) as session:
            row, blob = accounts.issue_external_certificate(
                session, rt.settings, address, export_password, actor=actor(), profile=profile
            )
            try:
                write_file(pending, blob, private=True)
            except OSError as exc:
                raise cannot_write(out_file, exc, then="; nothing was issued") from None
        committed = True
        os.replace(pending, out_file)
    except OSError as exc:
        if not committed:
            raise
        raise MssError(
            f"certificate {row.serial} is issued, but {out_file} cannot be written"
            f" ({exc.strerror or type(exc).__name__}): its key is in {pending}"
        ) from None
    finally:
        if not committed:
            pending.unlink(missing_ok=True)
    out.print(
        f"issued certificate {row.serial} for {row.address}, valid until {row.not_after:%Y-%m-%d}; key in {out_file}"
    )


@pki_app.command("revoke")
def pki_revoke(address: str, reason: RevocationReason = "unspecified") -> None:
    """Revoke the certificates of an address and publish the new CRL."""
    from directory import certificates

    with transaction() as (rt, session):
        rows = certificates.revoke_for_address(session, rt.settings, address, reason=reason, actor=actor())
        if not rows and not certificates.ever_issued(session, address):
            raise MssError(f"{address.strip().lower()} has no certificate here: none was ever issued")
    for row in rows:
        out.print(f"revoked certificate {row.serial} of {row.address}")
    if rows:
        out.print(
            f"{rows[0].address} can no longer log in or send until it is rekeyed (`mss account rekey`); "
            "its web and API sessions have ended"
        )
    else:
        out.print(f"{address.strip().lower()} has no certificate left to revoke")
    crl_not_published(session)


@pki_app.command("crl")
def pki_crl() -> None:
    """Publish the CRL again from the directory's revocations (after one could not be written)."""
    from directory import certificates

    with transaction() as (rt, session):
        crl = certificates.refresh_crl(session, rt.settings)
    out.print(
        f"published the CRL: {len(crl)} revoked certificate(s), next update {crl.next_update_utc:%Y-%m-%d %H:%M} UTC",
        highlight=False,
    )


def cannot_write(path: Path, why: str | OSError, *, then: str = "") -> MssError:
    """The one-line error of an ``--out`` that cannot be written, and why."""
    reason = why if isinstance(why, str) else (why.strerror or type(why).__name__)
    return MssError(f"cannot write {path}: {reason}{then}")


def output_file(path: Path, *, then: str = "") -> Path:
    """An ``--out`` checked before any work is done: a regular file, or a new one (what is
    there is replaced, never written through: no device, link or folder)."""
    why = unfit_output(path)
    if why is not None:
        raise cannot_write(path, why, then=then)
    return path


def write_output(path: Path, data: bytes, *, private: bool) -> None:
    """``data`` written to ``path`` whole, or a one-line error and nothing there."""
    try:
        write_file(path, data, private=private)
    except OSError as exc:
        raise cannot_write(path, exc) from None


def crl_not_published(session: Session) -> None:
    """After a revocation that committed: exit 1 saying so when its CRL could not be written."""
    from directory import certificates

    crl_reason_or_exit(certificates.crl_not_written(session))


def crl_reason_or_exit(reason: str | None) -> None:
    """Exit 1 saying so when the CRL of a committed revocation could not be written."""
    if reason is not None:
        err.print(
            f"error: the revocation is done (no door accepts the certificate any more), but the CRL that"
            f" publishes it could not be written: {reason}. Publish it with `mss pki crl` once that is mended.",
            highlight=False,
        )
        raise typer.Exit(1)


@pki_app.command("renew")
def pki_renew(
    within: Annotated[
        str, typer.Option("--within", help="Renew certificates ending within this time: 30d, 8w ...")
    ] = "30d",
) -> None:
    """Renew the certificates of accounts that end soon (same key pair); list the others."""
    from mss import accounts

    days = parse_days(within)
    with transaction() as (rt, session):
        renewal = accounts.renew_certificates(session, rt.settings, within_days=days, actor=actor())
    for address, serial, not_after in renewal.renewed:
        out.print(f"renewed {address}: certificate {serial}, valid until {not_after:%Y-%m-%d}", highlight=False)
    for who, why in renewal.skipped:
        out.print(f"not renewed {who}: {why}", highlight=False)
    out.print(
        f"{len(renewal.renewed)} renewed, {len(renewal.skipped)} not renewed (certificates ending within {days} days)"
    )


def parse_days(text: str) -> int:
    """Days in ``30d``, ``8w`` or a bare number of days. Raises typer.BadParameter."""
    value = text.strip().lower()
    unit = 7 if value.endswith("w") else 1
    number = value[:-1] if value[-1:] in ("d", "w") else value  # one unit, once
    if not (number.isascii() and number.isdigit()) or not 0 < int(number) * unit <= 3650:
        raise typer.BadParameter(
            f"{text!r} is not a duration such as 30d or 8w (at most 10 years)", param_hint="--within"
        )
    return int(number) * unit


# -- directory ---------------------------------------------------------------------------

# The exit status of an import that kept the good lines of its file and rejected others (each
# reported with its line number): a scheduled import's failure shows, and 1 stays "nothing done".
LINES_REJECTED = 3


@directory_app.command("import")
def directory_import(
    path: Annotated[Path, typer.Argument(help="An Extraction_Correspondance_MSSante file.")],
    prune: Annotated[bool, typer.Option("--prune", help="Deactivate entries missing from the file.")] = False,
) -> None:
    """Import (upsert) the public MSSanté directory extract."""
    from directory.importer import import_extract

    rt = runtime()
    if sys.stderr.isatty():
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=err,
        ) as bar:
            task = bar.add_task("importing", total=path.stat().st_size if path.exists() else None)
            summary = import_extract(
                rt.engine,
                path,
                prune=prune,
                actor=actor(),
                progress=lambda _lines, done, total: bar.update(task, completed=done, total=total),
            )
    else:
        summary = import_extract(rt.engine, path, prune=prune, actor=actor())
    for line, reason in summary.errors:
        err.print(f"line {line}: {reason}", highlight=False)
    out.print(
        f"added {summary.added}, updated {summary.updated}, unchanged {summary.unchanged}, "
        f"reactivated {summary.reactivated}, rejected {summary.rejected}, deactivated {summary.deactivated}"
    )
    if summary.rejected:
        raise typer.Exit(LINES_REJECTED)


@directory_app.command("search")
def directory_search(
    query: str,
    page: Annotated[int, typer.Option(min=1, max=MAX_PAGE)] = 1,
    per_page: Annotated[int, typer.Option(min=1, max=200)] = 20,
    fmt: FormatOption = Format.table,
) -> None:
    """Search by name, RPPS, address, profession, organisation or city."""
    from directory.search import search

    with transaction(readonly=True) as (rt, session):
        result = search(session, query, page=page, per_page=per_page, with_total=True)
    rows = [entry_dict(e) for e in result.items]
    if not result.total:
        summary = f"no match for {query!r}"
    else:
        summary = f"{result.total} match{'es' if result.total > 1 else ''}, page {result.page} of {result.pages}"
        if not rows:
            summary += " (no entry on this page)"
        elif result.has_next:
            summary += " (more with --page)"
    print_listing(ENTRY_COLUMNS, rows, fmt, summary=summary)


ENTRY_COLUMNS = (
    ("address", "address"),
    ("name", "name"),
    ("rpps", "RPPS"),
    ("profession", "profession"),
    ("organisation", "organisation"),
    ("city", "city"),
    ("status", "status"),
)


@directory_app.command("list")
def directory_list(
    kind: Annotated[str, typer.Option(help="PER (people) or ORG (organisations' mailboxes).")] = "",
    status: Annotated[str, typer.Option(help="active, revoked, inactive or all.")] = "active",
    domain: Annotated[str, typer.Option(help="Mail domain (and its subdomains).")] = "",
    profession: Annotated[str, typer.Option(help="Profession code (10) or words of the profession or specialty.")] = "",
    city: Annotated[str, typer.Option(help="Words of the town, or the start of a postal code.")] = "",
    organisation: Annotated[str, typer.Option(help="Words of the organisation's name.")] = "",
    page: Annotated[int, typer.Option(min=1, max=MAX_PAGE)] = 1,
    per_page: Annotated[int, typer.Option(min=1, max=500)] = 50,
    fmt: FormatOption = Format.table,
) -> None:
    """List entries with filters, in address order."""
    from directory.listing import ListFilters, list_entries

    filters = ListFilters(
        kind=kind, status=status, domain=domain, profession=profession, city=city, organisation=organisation
    )
    with transaction(readonly=True) as (rt, session):
        result = list_entries(session, filters, page=page, per_page=per_page)
    rows = [entry_dict(e) for e in result.items]
    if not result.total:
        summary = "no match"
    else:
        summary = f"{result.total} entr{'ies' if result.total > 1 else 'y'}, page {result.page} of {result.pages}"
        if not rows:
            summary += " (no entry on this page)"
        elif result.page < result.pages:
            summary += " (more with --page)"
    print_listing(ENTRY_COLUMNS, rows, fmt, summary=summary)


def entry_dict(e: Any) -> dict[str, Any]:
    return {
        "address": e.address,
        "kind": e.kind,
        "name": e.display_name,
        "rpps": e.rpps,
        "civility": e.civility,
        "last_name": e.last_name,
        "first_name": e.first_name,
        "profession": e.profession_label,
        "skill": e.skill_label,
        "organisation": e.org_name,
        "service": e.service,
        "city": e.city,
        "postal_code": e.postal_code,
        "status": e.status,
        "status_reason": e.status_reason,
    }


@directory_app.command("show")
def directory_show(address: str) -> None:
    """Show one entry, whose operator it belongs to, and its certificates."""
    from directory import service

    with transaction(readonly=True) as (rt, session):
        entry, certs = service.entry_with_certificates(session, address)
    for key, value in entry_dict(entry).items():
        out.print(f"{key:>14}: {value}", highlight=False)
    domain = entry.address.rpartition("@")[2]
    operator = (
        "this operator"
        if rt.settings.serves(entry.address)
        else f"another operator ({domain}): no account or certificate here"
    )
    out.print(f"{'operator':>14}: {operator}", highlight=False)
    for c in certs:
        state = (
            f"revoked {c.revoked_at:%Y-%m-%d} ({c.revocation_reason})"
            if c.revoked_at
            else f"valid until {c.not_after:%Y-%m-%d}"
        )
        out.print(f"   certificate: {c.serial} ({state})", highlight=False)


@directory_app.command("add")
def directory_add(
    address: Annotated[str, typer.Option(help="Mailbox address.")],
    kind: Annotated[str, typer.Option(help="PER (a person) or ORG (an organisation).")] = "PER",
    rpps: Annotated[str, typer.Option(help="Professional identifier (PER): RPPS (11 digits) or ADELI (9).")] = "",
    rpps_type: Annotated[
        str,
        typer.Option(
            "--rpps-type", help="Identifier type: 8 or rpps, 0 or adeli (guessed from its shape when left out)."
        ),
    ] = "",
    last_name: Annotated[str, typer.Option()] = "",
    first_name: Annotated[str, typer.Option()] = "",
    civility: Annotated[str, typer.Option()] = "",
    profession_code: Annotated[str, typer.Option()] = "",
    profession_label: Annotated[str, typer.Option()] = "",
    org_name: Annotated[str, typer.Option("--organisation")] = "",
    service_name: Annotated[str, typer.Option("--service")] = "",
    postal_code: Annotated[str, typer.Option()] = "",
    city: Annotated[str, typer.Option()] = "",
) -> None:
    """Add one entry by hand."""
    from directory import service

    types = {"rpps": "8", "adeli": "0", "8": "8", "0": "0", "": ""}
    if rpps_type.strip().lower() not in types:
        raise typer.BadParameter("use 8 (or rpps) or 0 (or adeli)", param_hint="--rpps-type")
    fields = {
        "address": address,
        "kind": kind.upper(),
        "rpps": rpps,
        "rpps_type": types[rpps_type.strip().lower()],
        "last_name": last_name,
        "first_name": first_name,
        "civility": civility,
        "profession_code": profession_code,
        "profession_label": profession_label,
        "org_name": org_name,
        "service": service_name,
        "postal_code": postal_code,
        "city": city,
    }
    with transaction() as (rt, session):
        entry = service.add_entry(session, actor=actor(), **fields)
    out.print(f"added {entry.address}")


@directory_app.command("revoke")
def directory_revoke(address: str, reason: Annotated[str, typer.Option(help="Why (kept in the trail).")]) -> None:
    """Revoke an entry: it can no longer send or receive."""
    from directory import service

    with transaction() as (rt, session):
        service.revoke_entry(session, address, reason=reason, actor=actor())
    out.print(f"revoked {address.strip().lower()}")


@directory_app.command("reactivate")
def directory_reactivate(address: str) -> None:
    """Make a revoked or inactive entry active again."""
    from directory import service

    with transaction() as (rt, session):
        service.reactivate_entry(session, address, actor=actor())
    out.print(f"reactivated {address.strip().lower()}")


# -- accounts ----------------------------------------------------------------------------


@account_app.command("create")
def account_create(address: str, password_stdin: PasswordStdin = False) -> None:
    """Create the account of an active directory entry (key pair, certificate, TOTP)."""
    from mss import accounts

    rt = runtime()
    password = SecretReader(password_stdin).read("Password", confirm=True)
    with session_scope(rt.engine) as session:
        enrolment = accounts.create_account(session, rt.settings, rt.master_key, address, password, actor=actor())
    out.print(f"account created for {enrolment.address}")
    print_enrolment(enrolment)


ACCOUNT_COLUMNS = (
    ("address", "address"),
    ("state", "state"),
    ("two_factor", "2FA"),
    ("certificate_not_after", "certificate until"),
    ("last_login", "last login (UTC)"),
    ("reason", "why"),
)


@account_app.command("list")
def account_list(
    state: Annotated[
        str,
        typer.Option(
            help="Only accounts in this state: active, locked, disabled, entry-revoked, "
            "certificate-revoked, certificate-expired, domain-not-served."
        ),
    ] = "",
    fmt: FormatOption = Format.table,
) -> None:
    """Accounts: state, second factor, certificate expiry, last login."""
    from mss import accounts

    with transaction(readonly=True) as (rt, session):
        found = accounts.list_accounts(session, rt.settings, state=state.strip().lower())
    rows = [
        {
            "address": a.address,
            "state": a.state,
            "two_factor": a.two_factor,
            "certificate_serial": a.certificate_serial,
            "certificate_not_after": a.certificate_not_after,
            "last_login": a.last_login,
            "reason": a.reason,
        }
        for a in found
    ]
    summary = f"{len(rows)} account{'s' if len(rows) != 1 else ''}" if rows else "no match"
    print_listing(ACCOUNT_COLUMNS, rows, fmt, summary=summary)


@account_app.command("passwd")
def account_passwd(address: str, password_stdin: PasswordStdin = False) -> None:
    """Change the password (the private key is re-wrapped)."""
    from mss import accounts

    rt = runtime()
    reader = SecretReader(password_stdin)
    old = reader.read("Current password")
    new = reader.read("New password", confirm=True)
    with session_scope(rt.engine) as session:
        accounts.change_password(session, rt.settings, address, old, new, actor=actor())
    out.print("password changed")


@account_app.command("reset-2fa")
def account_reset_2fa(address: str) -> None:
    """Replace the TOTP secret and print the new enrolment."""
    from mss import accounts

    with transaction() as (rt, session):
        enrolment = accounts.reset_2fa(session, rt.settings, rt.master_key, address, actor=actor())
    print_enrolment(enrolment)


@account_app.command("disable")
def account_disable(address: str) -> None:
    """Disable an account (it can no longer log in)."""
    _set_disabled(address, True)
    out.print(f"disabled {address.strip().lower()}")


@account_app.command("enable")
def account_enable(address: str) -> None:
    """Enable a disabled account again."""
    _set_disabled(address, False)
    out.print(f"enabled {address.strip().lower()}")


def _set_disabled(address: str, disabled: bool) -> None:
    from mss import accounts

    with transaction() as (rt, session):
        accounts.set_disabled(session, address, disabled, actor=actor())


@account_app.command("admin")
def account_admin(
    address: str, withdraw: Annotated[bool, typer.Option("--withdraw", help="Take the role away.")] = False
) -> None:
    """Grant the administrator role (the activity pages under /admin)."""
    from mss import accounts

    with transaction() as (rt, session):
        accounts.set_admin(session, address, not withdraw, actor=actor())
    out.print(f"{address}: administrator role {'withdrawn' if withdraw else 'granted'}", highlight=False)


@account_app.command("recover")
def account_recover(
    address: str,
    recovery_key: Annotated[Path, typer.Option("--recovery-key", help="The offline recovery private key file.")],
    password_stdin: PasswordStdin = False,
) -> None:
    """Restore access after a lost password, with the offline recovery key."""
    from mss import accounts

    rt = runtime()
    new = SecretReader(password_stdin).read("New password", confirm=True)
    with session_scope(rt.engine) as session:
        accounts.recover_account(session, rt.settings, address, recovery_key, new, actor=actor())
    out.print(f"new password set for {address.strip().lower()}")


@account_app.command("rekey")
def account_rekey(
    address: str,
    reason: RevocationReason = "superseded",
    recovery_key: Annotated[
        Path | None,
        typer.Option("--recovery-key", help="Open the keys with the offline recovery key (then set a new password)."),
    ] = None,
    password_stdin: PasswordStdin = False,
) -> None:
    """A new key pair and certificate; the old certificate is revoked, the old key kept to read older mail."""
    from mss import accounts

    rt = runtime()
    reader = SecretReader(password_stdin)
    if recovery_key is None:
        secrets: dict[str, Any] = {"password": reader.read("Account password")}
    else:
        secrets = {"recovery_private_key_file": recovery_key, "new_password": reader.read("New password", confirm=True)}
    with session_scope(rt.engine) as session:
        done = accounts.rekey(session, rt.settings, address, actor=actor(), reason=reason, **secrets)
    for serial in done.revoked_serials:
        out.print(f"revoked certificate {serial} ({reason})")
    out.print(f"new certificate {done.serial} for {done.address}, valid until {done.not_after:%Y-%m-%d}")
    crl_not_published(session)


@account_app.command("imap-mode")
def account_imap_mode(
    address: Annotated[str, typer.Argument(help="The account's address.")],
    mode: Annotated[str, typer.Argument(help="decrypted (the server opens messages) or end-to-end (the client does).")],
) -> None:
    """Choose how IMAP serves the account's messages: decrypted, or the S/MIME envelope as is."""
    from mss import accounts
    from mss.mailbox import served

    with transaction(readonly=True) as (rt, session):
        if accounts.get_account(session, address) is None:
            raise NoSuchAccount(f"no account for {address.strip().lower()}")
    changed = served.set_mode(rt.engine, address, mode, actor=actor())
    out.print(f"{address.strip().lower()}: IMAP mode {mode}" + ("" if changed else " (unchanged)"))


@account_app.command("export-key")
def account_export_key(
    address: str, out_file: Pkcs12File, password_stdin: PasswordStdin = False, compatible: Compatible = False
) -> None:
    """Export the key and certificate as PKCS#12 for a mail client."""
    from mss import accounts

    output_file(out_file)
    rt = runtime()
    reader = SecretReader(password_stdin)
    password = reader.read("Account password")
    export_password, profile = export_protection(reader, compatible)
    blob = accounts.export_key(
        rt.engine, rt.settings, address, password, export_password, actor=actor(), profile=profile
    )
    write_output(out_file, blob, private=True)
    out.print(f"wrote {out_file}")


# -- audit -------------------------------------------------------------------------------


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the hash chain; report the first broken link."""
    from mss import audit

    with transaction() as (rt, session):
        report = audit.verify(session, rt.master_key)
    if report.ok:
        out.print(f"audit chain intact: {report.checked} events verified")
        return
    said(err, "audit chain broken:", "red", report.reason)
    raise typer.Exit(2)


def parse_date(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise MssError(f"not a date: {value!r} (use YYYY-MM-DD or an ISO 8601 time)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@audit_app.command("export")
def audit_export(
    since: Annotated[str | None, typer.Option(help="YYYY-MM-DD or ISO 8601 time.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv.")] = "jsonl",
    out_file: Annotated[Path | None, typer.Option("--out", help="File to write (default: standard output).")] = None,
) -> None:
    """Export events (with their hashes, so they can be re-verified elsewhere)."""
    from mss import audit

    if fmt not in {"jsonl", "csv"}:
        raise MssError(f"unknown format {fmt!r}: use jsonl or csv")
    start = parse_date(since) if since else None
    rt = runtime()
    if out_file is None:
        with session_scope(rt.engine) as session:
            for line in audit.export(session, since=start, fmt=fmt):  # type: ignore[arg-type]  # checked above
                sys.stdout.write(line)
        return
    output_file(out_file)
    try:
        # A file replaced whole once every event is in it: a failure leaves what was there.
        with replacing(out_file, private=True) as handle, session_scope(rt.engine) as session:
            for line in audit.export(session, since=start, fmt=fmt):  # type: ignore[arg-type]  # checked above
                handle.write(line.encode("utf-8"))
    except OSError as exc:
        raise cannot_write(out_file, exc) from None


@audit_app.command("purge")
def audit_purge(
    before: Annotated[str | None, typer.Option(help="Default: now minus MSS_AUDIT_RETENTION_DAYS.")] = None,
) -> None:
    """Delete events past retention, leaving a signed checkpoint so the chain still verifies."""
    from mss import audit

    rt = runtime()
    cut = parse_date(before) if before else datetime.now(UTC) - timedelta(days=rt.settings.audit_retention_days)
    with session_scope(rt.engine) as session:
        result = audit.purge(
            session, rt.master_key, before=cut, actor=actor(), retention_days=rt.settings.audit_retention_days
        )
    out.print(f"purged {result.deleted} events before {cut:%Y-%m-%d %H:%M} (checkpoint at event {result.through_seq})")


# -- reports -----------------------------------------------------------------------------


@report_app.command("indicators")
def report_indicators(
    month: Annotated[str, typer.Option(help="The month, YYYY-MM (UTC).")],
    fmt: Annotated[str, typer.Option("--format", help="csv or json.")] = "csv",
    out_file: Annotated[Path | None, typer.Option("--out", help="File to write (default: standard output).")] = None,
) -> None:
    """Usage indicators of one month (definitions in the README, "Indicators")."""
    from mss import indicators

    if fmt not in {"csv", "json"}:
        raise MssError(f"unknown format {fmt!r}: use csv or json")
    indicators.month_bounds(month)
    if out_file:
        output_file(out_file)
    with transaction(readonly=True) as (rt, session):
        text = indicators.monthly(session, rt.master_key, month).render(fmt)
    if out_file:
        write_output(out_file, text.encode("utf-8"), private=False)
        out.print(f"wrote {out_file}")
    else:
        sys.stdout.write(text)


@lifecycle_app.command("run")
def lifecycle_run() -> None:
    """Notice mailboxes inactive for MSS_INACTIVE_NOTICE_DAYS, close those inactive for
    MSS_INACTIVE_CLOSE_DAYS (keys destroyed, messages deleted), purge the audit trail past
    MSS_AUDIT_RETENTION_DAYS; print a summary (``mss serve`` does it daily)."""
    from mss import lifecycle

    summary = lifecycle.run(runtime())
    out.print(f"inactivity notices sent: {len(summary.noticed)}", highlight=False)
    for address in summary.noticed:
        out.print(f"  noticed {address}", highlight=False)
    out.print(f"mailboxes closed: {len(summary.closed)} ({summary.messages_deleted} messages deleted)", highlight=False)
    for address in summary.closed:
        out.print(f"  closed {address}", highlight=False)
    out.print(f"audit events purged: {summary.audit_events_purged}", highlight=False)
    crl_reason_or_exit(summary.crl_not_written)


# -- messages ----------------------------------------------------------------------------

message_app = _group("Stored messages.")
app.add_typer(message_app, name="message")


TRACE_COLUMNS = (
    ("at", "time (UTC)"),
    ("action", "event"),
    ("actor", "by"),
    ("outcome", "outcome"),
    ("detail", "detail"),
)


@app.command("trace")
def trace(
    message: Annotated[str, typer.Argument(help="Message-ID or queue id.")], fmt: FormatOption = Format.table
) -> None:
    """The journey of a message: submitted, checked, signed, delivered, receipts, readings."""
    from mss import store

    with transaction(readonly=True) as (rt, session):
        journey = store.trace(session, message)
    row = journey.message
    events = [
        {"at": e.at, "action": e.action, "actor": e.actor, "outcome": e.outcome, "detail": json.loads(e.detail)}
        for e in journey.events
    ]
    deliveries = [{"recipient": d.recipient, "status": d.status, "reason": d.reason} for d in journey.deliveries]
    receipts = [
        {"kind": r.kind, "status": r.status, "recipient": r.recipient, "at": r.at.isoformat()} for r in journey.receipts
    ]
    if fmt is Format.json:
        print(
            json.dumps(
                {
                    "message_id": row.message_id,
                    "queue_id": row.queue_id,
                    "sender": row.sender,
                    "events": [{**e, "at": e["at"].isoformat()} for e in events],
                    "deliveries": deliveries,
                    "receipts": receipts,
                },
                ensure_ascii=False,
                indent=2,
            )
        )
        return
    shown = {"recipient", "status", "reason", "channel", "documents", "decision", "by"}
    rows = [{**e, "detail": ", ".join(f"{k}={v}" for k, v in e["detail"].items() if k in shown)} for e in events]
    if fmt is Format.csv:
        print_listing(TRACE_COLUMNS, rows, fmt, summary=f"{len(rows)} events for {row.queue_id}")
        return
    out.print(f"message {row.message_id}  queue id {row.queue_id}  from {row.sender}", highlight=False)
    print_listing(TRACE_COLUMNS, rows, fmt, summary=f"{len(rows)} events")
    for d in deliveries:
        out.print(f"  {d['recipient']}: {d['status']}" + (f" ({d['reason']})" if d["reason"] else ""), highlight=False)
    for r in journey.receipts:
        out.print(
            f"  receipt {r.kind.upper()} {r.status} for {r.recipient} at {r.at:%Y-%m-%d %H:%M:%S}", highlight=False
        )


@message_app.command("export")
def message_export(
    queue_id: Annotated[str, typer.Argument(help="Queue id (or Message-ID).")],
    reader: Annotated[str, typer.Option("--for", help="The recipient or sender the export is for.")],
    out_file: Annotated[Path, typer.Option("--out", help="The .eml file to write.")],
) -> None:
    """Write the stored S/MIME message as an .eml a mail client or openssl cms can open."""
    from mss import store

    output_file(out_file)
    with transaction() as (rt, session):
        eml = store.export_for(session, rt.master_key, queue_id, reader, actor=actor())
    write_output(out_file, eml, private=True)
    out.print(f"wrote {out_file}")


# -- the trust list and the outbound queue -------------------------------------------------


@trust_app.command("import")
def trust_import(
    path: Annotated[Path, typer.Argument(help='The published list (MSSanté "liste blanche" XML).')],
    prune: Annotated[bool, typer.Option("--prune", help="Drop imported domains no longer in the file.")] = False,
) -> None:
    """Put every domain of the published trust list on the list."""
    from mss import trust

    with transaction() as (rt, session):
        result = trust.import_list(session, rt.settings, path, prune=prune, actor=actor())
    for line, reason in result.rejected:
        err.print(f"line {line}: {reason}" if line else reason, highlight=False)
    for line, domain in result.served:
        out.print(f"line {line}: {domain} is served here: skipped", highlight=False)
    out.print(
        f"added {len(result.added)}, already listed {result.kept}, removed {len(result.removed)}, "
        f"served here {len(result.served)}, rejected {len(result.rejected)}"
    )
    if result.rejected:
        raise typer.Exit(LINES_REJECTED)


@trust_app.command("list")
def trust_list(as_json: Annotated[bool, typer.Option("--json", help="One JSON object per domain.")] = False) -> None:
    """The domains on the trust list, with their routes."""
    from mss import trust

    with transaction(readonly=True) as (rt, session):
        rows = trust.listed(session)
    if as_json:
        for row in rows:
            route = row.route
            print(
                json.dumps(
                    {
                        "domain": row.domain,
                        "source": row.source,
                        "route": f"{route.host}:{route.port}" if route else None,
                        "certificates": route.certificates_url if route else None,
                    }
                )
            )
        return
    table = Table("domain", "source", "route", "certificates")
    for row in rows:
        route = row.route
        default = "DNS MX" if rt.settings.is_production else "(none: mail waits)"
        table.add_row(
            row.domain,
            row.source,
            f"{route.host}:{route.port}" if route else default,
            route.certificates_url if route and route.certificates_url else "-",
        )
    out.print(table)
    out.print(f"{len(rows)} domain(s) on the trust list")


@trust_app.command("add")
def trust_add(domain: str) -> None:
    """Put a domain on the trust list by hand."""
    from mss import trust

    with transaction() as (rt, session):
        added = trust.add(session, rt.settings, domain, actor=actor())
    out.print(f"added {added}")


@trust_app.command("remove")
def trust_remove(domain: str) -> None:
    """Take a domain off the trust list: mail to and from it is refused from now on."""
    from mss import trust

    with transaction() as (rt, session):
        removed = trust.remove(session, domain, actor=actor())
    out.print(f"removed {removed}")


@trust_app.command("route")
def trust_route(
    domain: str,
    host_port: Annotated[str | None, typer.Argument(metavar="HOST:PORT", help="Where its mail goes.")] = None,
    certificates: Annotated[
        str,
        typer.Option(
            "--certificates", help="URL where its operator publishes S/MIME certificates (…/pki/certificates/)."
        ),
    ] = "",
    remove: Annotated[bool, typer.Option("--remove", help="Forget the route (DNS MX again).")] = False,
) -> None:
    """Send a domain's mail to HOST:PORT instead of its DNS MX."""
    from mss import trust

    with transaction() as (rt, session):
        if remove:
            trust.remove_route(session, domain, actor=actor())
            out.print(f"{domain.strip().lower()} has no route now")
            return
        if host_port is None:
            raise MssError("give HOST:PORT, or --remove")
        route = trust.set_route(session, rt.settings, domain, host_port, certificates_url=certificates, actor=actor())
    out.print(
        f"{route.domain} -> {route.host}:{route.port}"
        + (f", certificates from {route.certificates_url}" if route.certificates_url else "")
    )


@queue_app.command("list")
def queue_list(
    everything: Annotated[bool, typer.Option("--all", help="Also entries delivered, failed or bounced.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per entry.")] = False,
) -> None:
    """Messages waiting for other operators: recipients, attempts, next attempt, last error."""
    from mss.outbound import queue

    with transaction(readonly=True) as (rt, session):
        rows = queue.listing(session, everything=everything)
        stats = queue.stats(session)
    if as_json:
        for w in rows:
            print(
                json.dumps(
                    {
                        "id": w.queue_id,
                        "message": w.message_queue_id,
                        "kind": w.kind,
                        "domain": w.domain,
                        "protection": w.protection,
                        "from": w.mail_from or "<>",
                        "state": w.state,
                        "recipients": [{"address": a, "state": st, "reply": r} for a, st, r in w.recipients],
                        "attempts": w.attempts,
                        "created": w.created_at.isoformat(),
                        "next_attempt": w.next_attempt_at.isoformat(),
                        "last_error": w.last_error,
                        "in_flight": w.in_flight,
                    }
                )
            )
        return
    table = Table(
        "id",
        "message",
        "domain",
        "protection",
        "recipients",
        "state",
        "attempts",
        "queued since",
        "next attempt",
        "last error",
    )
    for w in rows:
        pending = ", ".join(f"{a} ({st})" for a, st, _r in w.recipients)
        state = w.state + (" (delivering)" if w.in_flight else "")
        table.add_row(
            w.queue_id,
            w.message_queue_id or "-",
            w.domain,
            w.protection,
            pending,
            state,
            str(w.attempts),
            f"{w.created_at:%Y-%m-%d %H:%M:%S}",
            f"{w.next_attempt_at:%H:%M:%S}" if w.state == "queued" else "-",
            w.last_error or "-",
        )
    out.print(table)
    oldest = f", oldest {int(stats.oldest.total_seconds())} s" if stats.oldest is not None else ""
    out.print(f"{stats.waiting} waiting for {stats.recipients} recipient(s){oldest}")


@queue_app.command("retry")
def queue_retry(queue_id: Annotated[str, typer.Argument(help="The queue entry id (mss queue list).")]) -> None:
    """Try a waiting entry again now."""
    from mss.outbound import queue

    with transaction() as (rt, session):
        row = queue.retry_now(session, queue_id, actor=actor())
    out.print(f"{row.queue_id} will be tried again now")


@queue_app.command("bounce")
def queue_bounce(queue_id: Annotated[str, typer.Argument(help="The queue entry id (mss queue list).")]) -> None:
    """Give up on a waiting entry: its recipients fail and the sender gets a failure notice."""
    from mss.outbound.worker import bounce

    rt = runtime()
    recipients = bounce(rt, queue_id, actor=actor())
    out.print(
        f"returned {queue_id.strip().upper()} to its sender: {', '.join(recipients) or 'no recipient was pending'}"
    )


# -- demo and serving --------------------------------------------------------------------


@app.command("demo")
def demo(
    if_empty: Annotated[bool, typer.Option("--if-empty", help="Only when the directory is empty.")] = False,
) -> None:
    """Load the demo directory, issue certificates and create three demo accounts."""
    from mss import demo as demo_data

    rt = runtime()
    if if_empty and not demo_data.directory_is_empty(rt.engine):
        out.print(f"demo data already loaded (credentials in {demo_data.credentials_path(rt.settings)})")
        return
    accounts = demo_data.load_demo(rt, actor=actor())
    out.print("demo directory imported; demo accounts (password, then TOTP enrolment URI):")
    for item in accounts:
        out.print(f"  {item.address}  password: {item.password}", highlight=False)
        out.print(f"    {item.enrolment.otpauth_uri}", highlight=False, soft_wrap=True)
    out.print(f"(also saved, readable by you only, in {demo_data.credentials_path(rt.settings)})")


@app.command("db-upgrade")
def db_upgrade() -> None:
    """Apply schema migrations (every command also does it on start)."""
    rt = runtime()
    out.print(f"database schema up to date ({rt.settings.storage.database_url.split('://')[0]})")


@app.command("doctor")
def doctor() -> None:
    """Check what the service needs (database, CA, CRL, master key): one verdict per item;
    exit status 1 when any fails. Creates nothing and changes nothing."""
    from mss import health
    from mss.db import make_engine

    settings = Settings.from_env()
    try:
        engine = make_engine(settings, create=False)
    except StorageError as exc:
        checks = health.readiness(settings, None, no_engine=exc.message)
    else:
        try:
            checks = health.readiness(settings, engine)
        finally:
            engine.dispose()
    for check in checks:
        said(out, "ok  " if check.ok else "FAIL", "green" if check.ok else "red", f"{check.name:<11} {check.detail}")
    if all(check.ok for check in checks):
        out.print("ready")
        return
    failing = ", ".join(check.name for check in checks if not check.ok)
    said(err, "not ready:", "red", failing)
    raise typer.Exit(1)


@app.command("serve")
def serve(
    what: Annotated[
        str, typer.Argument(help="relay (submission, MX, delivery), web, imap, or all (every part in one process).")
    ] = "all",
) -> None:
    """Run the service in the foreground until SIGTERM or Ctrl-C."""
    import os

    from mss.serve import PARTS

    if what not in PARTS:
        raise MssError(f"unknown part {what!r}: use relay, web, imap or all")
    Settings.from_env()  # a wrong setting is named here, by the command line
    # The process becomes `python -m mss.serve` (the same process id): the service then
    # holds none of the command line's modules (mss.serve says why).
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-P", "-m", "mss.serve", what])


def main() -> None:  # pragma: no cover - console entry point
    app()
