"""The operator's instruments: Prometheus metrics after real SMTP traffic, /healthz and
/readyz over HTTPS, ``mss doctor``, JSON log lines.

Metrics are read the way Prometheus reads them: the text scraped over HTTP from the
metrics port and parsed with ``prometheus_client.parser``. The counters belong to the test
process, so every assertion compares a scrape after the traffic with one before it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import smtplib
import sqlite3
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from directory import certificates
from directory.models import DirectoryEntry
from mss import metrics
from mss.crypto.pki import PkiPaths
from mss.db import SCHEMA_REVISION, session_scope
from mss.logs import JsonFormatter, TextFormatter

from metrics_support import scrape, value
from relay_support import RECIPIENTS, SENDER, UNKNOWN, Stack, connect, login, referral, running_stack, transaction
from server_process import thread_names
from web_support import NURSE, WebServer, create_person


@pytest.fixture(scope="module")
def relay_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from running_stack(tmp_path_factory)


@pytest.fixture(scope="module")
def metrics_url(relay_stack: Stack) -> Iterator[str]:
    server = metrics.start_server(relay_stack.rt.engine, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.port}/metrics"
    finally:
        server.close()


def test_metrics_count_real_smtp_traffic(relay_stack: Stack, metrics_url: str) -> None:
    before = scrape(metrics_url)

    client = login(relay_stack)
    replies = transaction(client, SENDER, RECIPIENTS, referral())
    assert replies[-1][0] == 250
    refused = transaction(client, SENDER, [UNKNOWN], b"")
    assert refused[-1][0] == 550 and refused[-1][1].startswith(b"5.1.1")
    client.quit()
    bad = connect(relay_stack)
    bad.user, bad.password = SENDER, "not the password"
    with pytest.raises(smtplib.SMTPAuthenticationError):
        bad.auth("PLAIN", bad.auth_plain)  # one try (login() would try each mechanism)
    open_during = scrape(metrics_url)
    bad.quit()

    after = scrape(metrics_url)
    assert (
        value(after, "mss_messages_submitted_total", door="smtp")
        - value(before, "mss_messages_submitted_total", door="smtp")
        == 1
    )
    assert value(after, "mss_deliveries_delivered_total", door="smtp") - value(
        before, "mss_deliveries_delivered_total", door="smtp"
    ) == len(RECIPIENTS)
    assert (
        value(after, "mss_messages_refused_total", door="smtp", reason="5.1.1")
        - value(before, "mss_messages_refused_total", door="smtp", reason="5.1.1")
        == 1
    )
    for kind in ("pdf", "cda", "xdm"):
        assert value(after, "mss_documents_total", kind=kind) - value(before, "mss_documents_total", kind=kind) >= 1
    for stage in metrics.STAGES:
        grown = value(after, "mss_pipeline_stage_seconds_count", stage=stage) - value(
            before, "mss_pipeline_stage_seconds_count", stage=stage
        )
        assert grown == 1, stage
    # On SQLite the message's store took one turn at the write lock, held through its commit;
    # PostgreSQL has no such turn.
    turns = 1 if relay_stack.rt.engine.dialect.name == "sqlite" else 0
    turn = {
        (phase, kind): value(after, f"mss_sqlite_write_turn_seconds_{kind}", phase=phase)
        - value(before, f"mss_sqlite_write_turn_seconds_{kind}", phase=phase)
        for phase in metrics.WRITE_TURN_PHASES
        for kind in ("count", "sum")
    }
    assert [turn[phase, "count"] for phase in metrics.WRITE_TURN_PHASES] == [turns, turns]
    assert (turn["hold", "sum"] > 0) == bool(turns)
    # One DATA (the refused transaction ended at RCPT): each phase timed once, on this door.
    for phase in metrics.DATA_PHASES:
        count, total = (
            value(after, f"mss_smtp_data_seconds_{kind}", door="smtp", phase=phase)
            - value(before, f"mss_smtp_data_seconds_{kind}", door="smtp", phase=phase)
            for kind in ("count", "sum")
        )
        assert count == 1, phase
        assert total > 0 or phase == "slot", phase  # a place was free at once
    # Nothing came in at the MX door meanwhile (other tests of this process may have counted there).
    mx = [key for key in after if key[0] == "mss_smtp_data_seconds_count" and ("door", "mx") in key[1]]
    assert all(after[key] == before.get(key, 0.0) for key in mx)
    assert (
        value(after, "mss_login_failures_total", action="smtp.login", reason="bad-password")
        - value(before, "mss_login_failures_total", action="smtp.login", reason="bad-password")
        == 1
    )
    # The unauthenticated session was open during the scrape, and is not after it: the relay
    # ends its side when it sees the connection close, a moment after the client's QUIT.
    baseline = value(before, "mss_smtp_sessions_open")
    assert value(open_during, "mss_smtp_sessions_open") >= baseline + 1
    deadline = time.monotonic() + 30
    while value(after, "mss_smtp_sessions_open") != baseline and time.monotonic() < deadline:
        time.sleep(0.1)
        after = scrape(metrics_url)
    assert value(after, "mss_smtp_sessions_open") == baseline
    with session_scope(relay_stack.rt.engine) as session:
        active = session.execute(
            select(func.count()).select_from(DirectoryEntry).where(DirectoryEntry.status == "active")
        ).scalar_one()
    assert value(after, "mss_directory_entries", status="active") == active
    assert value(after, "mss_database_up") == 1


def _get(url: str) -> tuple[int, dict]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_relay_threads_show_their_names_to_the_system(relay_stack: Stack) -> None:
    """``top -H``, ``ps -L`` and ``pidstat -t`` tell which of the relay's threads spends the
    CPU: its event loop, its message threads, the threads of its checks and those around its
    document workers are named (Linux)."""
    client = login(relay_stack)
    assert transaction(client, SENDER, RECIPIENTS, referral())[-1][0] == 250
    client.quit()
    names = thread_names()
    assert {"mss-relay", "mss-relay_0", "mss-message_0", "mss-documents"} <= names, names


def test_healthz_and_readyz_over_https(rt, directory_loaded) -> None:
    server = WebServer(rt).start()
    try:
        assert _get(server.url + "/healthz") == (200, {"status": "ok"})
        status, body = _get(server.url + "/readyz")
        assert status == 200, body
        assert body == {"status": "ready", "checks": {"database": "ok", "ca": "ok", "crl": "ok", "master-key": "ok"}}
        crl = PkiPaths.from_settings(rt.settings).crl
        saved = crl.read_bytes()
        crl.unlink()
        status, body = _get(server.url + "/readyz")
        assert status == 503
        assert body["status"] == "not-ready" and body["checks"]["crl"] == "failing"
        assert body["checks"]["database"] == "ok"
        crl.write_bytes(saved)
        assert _get(server.url + "/readyz")[0] == 200
    finally:
        server.stop()


def test_doctor_gives_a_verdict_per_item(rt, mss, directory_loaded) -> None:
    result = mss("doctor")
    for name in ("database", "ca", "crl", "master-key"):
        assert any(line.split()[:2] == ["ok", name] for line in result.stdout.splitlines()), result.stdout
    assert result.stdout.strip().endswith("ready")

    key = rt.settings.storage.master_key_file
    key.chmod(0o644)
    result = mss("doctor", ok=False)
    assert result.exit_code == 1
    assert any(line.split()[:2] == ["FAIL", "master-key"] for line in result.stdout.splitlines()), result.stdout
    assert "not ready: master-key" in result.stderr
    key.chmod(0o600)

    # A revocation committed while its CRL could not be written: not published yet.
    crl = PkiPaths.from_settings(rt.settings).crl
    published = crl.read_bytes()
    create_person(rt, NURSE)
    with session_scope(rt.engine) as session:
        certificates.revoke_for_address(session, rt.settings, NURSE, reason="superseded", actor="test")
    crl.write_bytes(published)  # the list as it was before
    result = mss("doctor", ok=False)
    assert "1 revocation(s) not in the CRL yet: run `mss pki crl`" in result.stdout, result.stdout
    mss("pki", "crl")
    assert mss("doctor").stdout.strip().endswith("ready")

    crl.write_text("not a CRL")
    result = mss("doctor", ok=False)
    assert any(line.split()[:2] == ["FAIL", "crl"] for line in result.stdout.splitlines()), result.stdout


def test_doctor_creates_no_database_where_a_mistyped_url_points(rt, mss, env, tmp_path) -> None:
    """Where MSS_DATABASE_URL points at nothing, the doctor says so and creates nothing; an
    empty database is not ready either."""
    elsewhere = tmp_path / "typo" / "mss.db"
    env["MSS_DATABASE_URL"] = f"sqlite:///{elsewhere}"
    result = mss("doctor", ok=False)
    assert result.exit_code == 1 and f"FAIL database    no database at {elsewhere}" in result.stdout, result.stdout
    assert not elsewhere.exists() and not elsewhere.parent.exists()
    elsewhere.parent.mkdir()
    sqlite3.connect(elsewhere).close()
    result = mss("doctor", ok=False)
    assert "holds no mss schema: is MSS_DATABASE_URL right?" in result.stdout, result.stdout
    # An older schema lacks what this code writes; a newer one is a rolling upgrade under way.
    with sqlite3.connect(elsewhere) as connection:
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        connection.execute("INSERT INTO alembic_version VALUES ('0001')")
    assert "its schema is at revision 0001" in mss("doctor", ok=False).stdout
    with sqlite3.connect(elsewhere) as connection:
        connection.execute(f"UPDATE alembic_version SET version_num = '{int(SCHEMA_REVISION) + 1:04d}'")
    newer = [line for line in mss("doctor", ok=False).stdout.splitlines() if line.split()[1:2] == ["database"]]
    assert newer[0].startswith("ok") and "newer than this code's" in newer[0], newer


@contextlib.contextmanager
def _written_with(formatter: logging.Formatter, name: str) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of its own whose lines ``formatter`` writes to the stream it yields with it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    log = logging.getLogger(name)
    log.addHandler(handler)
    log.propagate = False
    try:
        yield log, stream
    finally:
        log.removeHandler(handler)


def test_json_log_lines_carry_the_request_id() -> None:
    with _written_with(JsonFormatter(), "mss.test-json") as (log, stream):
        log.warning("request %s refused", "ab12", extra={"request_id": "ab12"})
        try:
            raise ValueError(" ".join(("secret", "input")))  # the text, not the source line
        except ValueError:
            log.exception("failed", extra={"request_id": "cd34"})
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["request_id"] == "ab12" and first["level"] == "warning" and first["message"] == "request ab12 refused"
    assert second["request_id"] == "cd34" and second["error"] == "ValueError"
    assert "secret input" not in stream.getvalue()


def test_text_log_lines_give_an_exception_by_class_and_stack_not_text() -> None:
    """As in JSON: a parser's or a driver's message may quote the input."""
    with _written_with(TextFormatter(), "mss.test-text") as (log, stream):
        try:
            try:
                raise ValueError(" ".join(("secret", "input")))
            except ValueError as exc:
                raise RuntimeError(" ".join(("secret", "wrapper"))) from exc
        except RuntimeError:
            log.exception("request %s failed", "ab12")
    written = stream.getvalue()
    assert "ERROR mss.test-text request ab12 failed" in written
    assert "RuntimeError" in written and "caused by:" in written and "ValueError" in written
    assert "test_operator_health.py" in written  # the stack
    assert "secret input" not in written and "secret wrapper" not in written  # the texts, not the source lines


def test_a_database_error_does_not_name_its_values(rt) -> None:
    """A logged database error shows its statement, not the values bound to it (addresses,
    password hashes, audit details): the engine hides them."""
    with pytest.raises(SQLAlchemyError) as raised:
        with session_scope(rt.engine, readonly=True) as session:
            session.execute(text("SELECT nosuchcolumn FROM account WHERE address = :a"), {"a": "hidden@mss.test"})
    assert "nosuchcolumn" in str(raised.value) and "hidden@mss.test" not in str(raised.value)


def test_the_service_logs_name_no_url_a_library_requests(capfd) -> None:
    """httpx writes each request's whole URL at INFO: a webhook's may hold its receiver's
    token. With the service's logging, a request to such a URL leaves no trace of it."""
    import http.server
    import threading

    import httpx

    from mss import logs

    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in logs.QUIETED}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        logs.configure("text")
        assert httpx.get(f"http://127.0.0.1:{server.server_port}/hook?token=receiver-secret").status_code == 204
        logging.getLogger("mss.test").info("a line of the service's own")
    finally:
        server.shutdown()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        for name, old in levels.items():
            logging.getLogger(name).setLevel(old)
    written = capfd.readouterr().err
    assert "a line of the service's own" in written and "receiver-secret" not in written
