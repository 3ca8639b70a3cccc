"""Security of the web inbox: isolation between mailboxes, CSRF, second-factor replay,
lockout, inert hostile content, cookie flags, server-side logout and timeouts, sealed session
keys, security headers and clean error pages."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import select, text, update

from mss import accounts
from mss.db import session_scope, utcnow
from mss.errors import ConfigError
from mss.models import Message, WebSession
from mss.runtime import Runtime
from mss.web.context import SESSION_COOKIE
from mss.web.server import uvicorn_config
from mss.web.sessions import SessionToken

from web_support import CDA_SAMPLE, DOCTOR, GP, create_person, csrf, login, pdf_bytes, post_compose, submit, totp_page


def _session_rows(rt) -> list[WebSession]:
    with session_scope(rt.engine) as session:
        return list(session.execute(select(WebSession)).scalars())


def test_another_mailbox_message_is_not_found(rt, clients, doctor, gp):
    nurse = create_person(rt, "matheo.moreau@infirmier.mss.test")
    private = submit(
        rt,
        gp,
        [DOCTOR],
        "Secret médical Dupont",
        "Contenu confidentiel.",
        [("bilan.pdf", "application/pdf", pdf_bytes())],
    )
    intruder = clients()
    login(intruder, nurse)
    for path in (
        f"/messages/{private.queue_id}",
        f"/messages/{private.queue_id}/attachments/0",
        f"/messages/{private.queue_id}/attachments/0/view",
        f"/messages/{private.queue_id}?folder=sent",
        "/messages/00000000000000000000",
    ):
        response = intruder.get(path)
        assert response.status_code == 404, path
        assert "Dupont" not in response.text and "confidentiel" not in response.text
    page = intruder.get("/inbox")
    archive = intruder.post(f"/messages/{private.queue_id}/archive", data={"csrf_token": csrf(page.text)})
    assert archive.status_code == 404
    reply = intruder.get(f"/compose?forward={private.queue_id}")
    assert reply.status_code == 404
    sneaky = post_compose(
        intruder, page, {"to": GP, "subject": "x", "body": "x", "source": private.queue_id, "keep": "0"}
    )
    assert sneaky.status_code == 422 and "bilan.pdf" not in sneaky.text
    # The owner still reads it.
    owner = clients()
    login(owner, doctor)
    assert "Contenu confidentiel." in owner.get(f"/messages/{private.queue_id}").text


def test_state_changes_need_the_csrf_token_of_the_session(rt, clients, doctor, gp):
    accepted = submit(rt, gp, [DOCTOR], "Test CSRF", "Texte.")
    client = clients()
    login(client, doctor)
    good = csrf(client.get("/inbox").text)
    other = clients()
    other_token = csrf(other.get("/login").text)  # a valid token, of another client's secret
    for token in (None, "", "0" * 64, other_token):
        data = {} if token is None else {"csrf_token": token}
        for path in (f"/messages/{accepted.queue_id}/archive", "/logout", "/account/password"):
            response = client.post(path, data=data, follow_redirects=False)
            assert response.status_code == 403, (path, token)
        compose = client.post("/compose", data={**data, "to": GP, "subject": "x", "body": "y"}, follow_redirects=False)
        assert compose.status_code == 403
    assert client.get("/inbox").status_code == 200  # still logged in: the forged logout did nothing
    header = client.post(
        f"/messages/{accepted.queue_id}/archive", headers={"x-csrf-token": good}, follow_redirects=False
    )
    assert header.status_code == 303
    # A login form posted without the pre-login token is refused too (login CSRF).
    fresh = clients()
    assert fresh.post("/login", data={"address": DOCTOR, "password": doctor.password}).status_code == 403
    # Refused before its body is read: a body that could not even be read gets the same 403.
    unreadable = clients().post(
        "/login", content=b"\xff" * 64, headers={"content-type": "multipart/form-data; boundary=missing"}
    )
    assert unreadable.status_code == 403, unreadable.status_code
    # With a pre-login secret, which anyone can make, a body is read only when it is small.
    page = fresh.get("/login")
    token = csrf(page.text)
    huge = fresh.post("/login", data={"csrf_token": token, "address": DOCTOR, "password": "x" * 100_000})
    assert huge.status_code == 413, huge.status_code
    unsized = fresh.post(
        "/login",
        content=iter([f"csrf_token={token}&address={DOCTOR}&password=x".encode()]),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert unsized.status_code == 411, unsized.status_code
    # A session cookie of the right form that names no session is no login either.
    forged = SessionToken.new()
    pretender = clients()
    pretender.cookies.set(SESSION_COOKIE, forged.encode())
    posted = {"csrf_token": forged.csrf_token, "address": DOCTOR, "password": "x" * 100_000}
    assert pretender.post("/login", data=posted).status_code == 413
    assert (
        fresh.post(
            "/login", data={"csrf_token": token, "address": DOCTOR, "password": doctor.password}, follow_redirects=False
        ).status_code
        == 303
    )


def test_totp_code_works_once(rt, clients, doctor):
    first = clients()
    login(first, doctor)  # enrolment consumed one code
    code = doctor.code()
    results = []
    for _attempt in range(2):
        client = clients()
        page = totp_page(client, doctor)
        results.append(
            client.post(
                "/login/totp", data={"code": code, "csrf_token": csrf(page.text)}, follow_redirects=False
            ).status_code
        )
    assert results == [303, 401]


def test_lockout_after_repeated_failures(rt, clients, doctor):
    client = clients()
    page = client.get("/login")
    token = csrf(page.text)
    for _attempt in range(rt.settings.security.max_login_failures):
        bad = client.post("/login", data={"address": DOCTOR, "password": "wrong password!!", "csrf_token": token})
        assert bad.status_code == 401 and "Adresse ou mot de passe incorrect." in bad.text
    locked = client.post("/login", data={"address": DOCTOR, "password": doctor.password, "csrf_token": token})
    assert locked.status_code == 423 and "verrouillé" in locked.text
    assert not _session_rows(rt)


def test_wrong_totp_codes_lock_the_account(rt, clients, doctor):
    first = clients()
    login(first, doctor)
    client = clients()
    page = totp_page(client, doctor)
    statuses = [
        client.post(
            "/login/totp",
            data={"code": "000000" if n % 2 else "zzzz-zzzz-zzzz", "csrf_token": csrf(page.text)},
            follow_redirects=False,
        ).status_code
        for n in range(rt.settings.security.max_login_failures + 1)
    ]
    assert statuses[:-1] == [401] * (len(statuses) - 1) and statuses[-1] == 423
    with session_scope(rt.engine) as session:
        account = accounts.get_account(session, DOCTOR)
        assert account.locked_until is not None and account.locked_until > utcnow()


def test_hostile_content_is_inert(rt, clients, doctor, gp):
    script = "<script>alert('x')</script>"
    cda = CDA_SAMPLE.read_bytes()
    marker = b"<title>"
    assert marker in cda
    hostile_cda = cda.replace(marker, marker + b"&lt;script&gt;alert(1)&lt;/script&gt;", 1)
    accepted = submit(
        rt,
        gp,
        [DOCTOR],
        f"Objet {script}",
        f"Corps {script}<img src=x onerror=alert(2)>",
        [(f"{script}.xml", "text/xml", hostile_cda)],
    )
    client = clients()
    login(client, doctor)
    for path in ("/inbox", f"/messages/{accepted.queue_id}", f"/messages/{accepted.queue_id}/attachments/0/view"):
        html = client.get(path).text
        assert "<script>alert" not in html and "<img src=x" not in html, path
        assert "&lt;script&gt;alert" in html, path


def test_session_cookie_flags_and_rotation(rt, clients, doctor):
    client = clients()
    page = client.get("/login")
    pre = page.headers["set-cookie"].lower()
    assert pre.startswith("__host-mss-pre=") and "secure" in pre and "httponly" in pre and "samesite=strict" in pre
    response = client.post(
        "/login",
        data={"address": DOCTOR, "password": doctor.password, "csrf_token": csrf(page.text)},
        follow_redirects=False,
    )
    cookies = response.headers.get_list("set-cookie")
    session_cookie = next(c for c in cookies if c.startswith("__Host-mss="))
    lowered = session_cookie.lower()
    assert "secure" in lowered and "httponly" in lowered and "samesite=strict" in lowered and "path=/" in lowered
    assert "domain=" not in lowered and "max-age" not in lowered  # a browser-session cookie, host only


def test_logout_ends_the_session_on_the_server(rt, clients, doctor):
    client = clients()
    login(client, doctor)
    cookie = client.cookies.get("__Host-mss")
    assert len(_session_rows(rt)) == 1
    page = client.get("/inbox")
    response = client.post("/logout", data={"csrf_token": csrf(page.text)}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert _session_rows(rt) == []
    replay = clients()
    replay.cookies.set("__Host-mss", cookie, domain="mss.test")
    assert replay.get("/inbox", follow_redirects=False).headers["location"] == "/login"
    with session_scope(rt.engine) as session:
        actions = session.execute(text("select action from audit_event where action = 'web.logout'")).scalars().all()
    assert actions == ["web.logout"]


def test_idle_and_absolute_timeouts(rt, clients, doctor):
    client = clients()
    login(client, doctor)
    assert client.get("/inbox").status_code == 200
    with session_scope(rt.engine) as session:
        session.execute(update(WebSession).values(last_seen_at=utcnow() - timedelta(minutes=16)))
    assert client.get("/inbox", follow_redirects=False).headers["location"] == "/login"
    assert _session_rows(rt) == []  # the idle session was deleted on the way
    again = clients()
    login(again, doctor)
    with session_scope(rt.engine) as session:
        session.execute(update(WebSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert again.get("/inbox", follow_redirects=False).headers["location"] == "/login"


def test_session_key_and_private_key_are_not_in_the_database(rt, clients, doctor):
    client = clients()
    login(client, doctor)
    raw = base64.urlsafe_b64decode(client.cookies.get("__Host-mss") + "==")
    session_id, session_key = raw[:32], raw[32:]
    private_key = accounts.authenticate(
        rt.engine, rt.settings, DOCTOR, doctor.password, accounts.Origin("cli")
    ).private_key_der
    (row,) = _session_rows(rt)
    stored = b"".join(value if isinstance(value, bytes) else str(value).encode() for value in row.model_dump().values())
    assert row.token_hash == hashlib.sha256(session_id).hexdigest()
    for secret in (
        session_id,
        session_key,
        private_key,
        private_key[-64:],
        session_key.hex().encode(),
        base64.b64encode(session_key),
    ):
        assert secret not in stored
    if rt.settings.storage.database_url.startswith("sqlite:///"):
        database = rt.settings.storage.database_url.removeprefix("sqlite:///")
        for path in (database, database + "-wal"):
            try:
                content = open(path, "rb").read()
            except FileNotFoundError:
                continue
            assert session_key not in content and session_id not in content


def test_security_headers_and_clean_errors(rt, clients, doctor):
    client = clients()
    page = client.get("/login")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store"
    assert "<script>" not in page.text and " style=" not in page.text  # nothing inline for the CSP to allow
    missing = client.get("/no/such/page")
    assert missing.status_code == 404 and missing.headers["content-security-policy"] == csp
    assert missing.headers["x-request-id"] in missing.text and "Traceback" not in missing.text
    nul = client.post(
        "/login", data={"address": "a\x00b@mss.test", "password": "x" * 12, "csrf_token": csrf(page.text)}
    )
    assert nul.status_code == 401  # refused like any wrong address, never a database error
    api = client.post("/api/v1/sessions", json={"address": "a\x00b@mss.test", "password": "x", "code": "1"})
    assert api.status_code == 401
    login(client, doctor)
    for path in ("/messages/%00%27%22", "/messages/%00/attachments/0", "/compose?reply=%00"):
        bad = client.get(path)
        assert bad.status_code == 404 and "Traceback" not in bad.text, path
    static = client.get("/static/app.css")
    assert static.status_code == 200 and "max-age" in static.headers["cache-control"]


def test_https_unless_behind_a_tls_proxy(rt):
    direct = uvicorn_config(rt)
    assert direct.ssl_certfile == str(rt.settings.pki.certs_dir / "server.pem")
    assert direct.ssl_keyfile == str(rt.settings.pki.certs_dir / "server.key")
    assert direct.port == rt.settings.web.port == 8443 and not direct.proxy_headers
    proxied = Runtime(
        settings=rt.settings.with_changes(web=replace(rt.settings.web, behind_tls_proxy=True)),
        engine=rt.engine,
        master_key=rt.master_key,
    )
    behind = uvicorn_config(proxied)
    assert behind.ssl_certfile is None and behind.proxy_headers
    (rt.settings.pki.certs_dir / "server.key").unlink()
    with pytest.raises(ConfigError):
        uvicorn_config(rt)


def test_a_server_error_is_a_clean_page_with_a_reference(rt, clients, doctor, gp, caplog):
    accepted = submit(rt, gp, [DOCTOR], "Sera altéré", "Texte.")
    with session_scope(rt.engine) as session:  # someone altered the sealed metadata in the database
        session.execute(update(Message).where(Message.queue_id == accepted.queue_id).values(meta_sealed=b"\0" * 64))
    client = clients()
    login(client, doctor)
    page = client.get("/inbox")
    assert page.status_code == 500
    reference = page.headers["x-request-id"]
    assert reference in page.text and "Traceback" not in page.text and "CryptoError" not in page.text
    assert "master key" not in page.text
    assert any(reference in record.getMessage() and record.exc_info for record in caplog.records)
