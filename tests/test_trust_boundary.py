"""The trust boundary at every door: revocation, disabled accounts, rekeyed and revoked
certificates, served domains, the second factor's lockout and the client-address throttle.

Each test drives the real doors: SMTP over TLS against the running relay, the web pages and
the JSON API through the app, and the services the ``mss`` command calls.
"""

from __future__ import annotations

import smtplib
import time
from dataclasses import replace
from datetime import timedelta

import pyotp
import pytest
from cryptography import x509
from litestar.testing import TestClient
from sqlalchemy import event, select, update

from directory import certificates, service
from directory.models import Certificate
from mss import accounts, audit, mailbox, trust
from mss.crypto.pki import serial_hex
from mss.db import session_scope, utcnow
from mss.errors import (
    AccountLocked,
    BadCredentials,
    CertificateExpired,
    CertificateRevoked,
    DomainNotServed,
    EntryRevoked,
    TooManyAttempts,
)
from mss.models import AuditEvent, Delivery, MailboxItem, Message, WebSession
from mss.relay import RelayServer, replies
from mss.web import create_app

from relay_support import (
    NO_ACCOUNT,
    RECIPIENTS,
    SENDER,
    Stack,
    build_stack,
    code_of,
    connect,
    login,
    message,
    pdf_bytes,
    queue_id,
    transaction,
)
from web_support import BASE_URL, Person, client_maker, csrf, totp_page
from web_support import login as web_login

READER = RECIPIENTS[0]
# An entry no test sends to: changing it changes the directory, not the recipients.
REVOKED_ELSEWHERE = NO_ACCOUNT


@pytest.fixture
def stack(tmp_path):
    """A stack of its own per test (these tests revoke and rekey its accounts)."""
    built = build_stack(tmp_path)
    built.relay = RelayServer(built.rt).start()
    yield built
    built.close()


@pytest.fixture
def web(stack):
    """Makes browser-like clients of the web app on the stack's database."""
    yield from client_maker(create_app(stack.rt))


def refused_auth(stack: Stack, address: str, password: str) -> tuple[int, bytes]:
    """The reply to AUTH from a new SMTP session that is refused."""
    client = connect(stack)
    with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
        client.login(address, password)
    client.close()
    return refused.value.smtp_code, refused.value.smtp_error


def person(stack: Stack, address: str) -> Person:
    """A stack account with an enrolled authenticator whose secret the test knows."""
    with session_scope(stack.rt.engine) as session:
        enrolment = accounts.reset_2fa(session, stack.settings, stack.rt.master_key, address, actor="test")
    secret = enrolment.otpauth_uri.split("secret=")[1].split("&")[0]
    # Enrolled with a code of two steps ago, so that the three steps of the drift window
    # stay free for the test's own logins.
    at = time.time() - 60
    accounts.verify_totp(
        stack.rt.engine, stack.settings, stack.rt.master_key, address, pyotp.TOTP(secret).at(at), at=at
    )
    return Person(address=address, password=stack.passwords[address], secret=secret, last_step=int(at // 30))


def letter(sender: str = SENDER, recipients: tuple[str, ...] = RECIPIENTS[:1]) -> bytes:
    return message(sender, recipients, [("lettre.pdf", "application/pdf", pdf_bytes())])


def api_login(client: TestClient, who: Person):
    return client.post("/api/v1/sessions", json={"address": who.address, "password": who.password, "code": who.code()})


def send(stack: Stack, sender: str = SENDER, recipients: tuple[str, ...] = RECIPIENTS[:1]) -> str:
    client = login(stack, sender)
    replies_ = transaction(client, sender, recipients, letter(sender, recipients))
    client.quit()
    return queue_id(replies_[-1])


def past_rcpt(stack: Stack, *recipients: str) -> smtplib.SMTP:
    """A session of the sender with MAIL and every RCPT accepted, ready for DATA."""
    client = login(stack, SENDER)
    assert client.mail(SENDER)[0] == 250
    for recipient in recipients:
        assert client.rcpt(recipient)[0] == 250
    return client


def events(stack: Stack, action: str, address: str) -> list[AuditEvent]:
    with session_scope(stack.rt.engine) as session:
        return list(
            session.execute(
                select(AuditEvent).where(AuditEvent.action == action, AuditEvent.object == address)
            ).scalars()
        )


# -- revocation at every door, at once ------------------------------------------------------


def test_directory_revocation_ends_every_door_at_once(stack, web) -> None:
    sender = person(stack, SENDER)
    smtp = login(stack, SENDER)
    browser = web()
    web_login(browser, sender)
    assert browser.get("/inbox").status_code == 200
    api = web()
    token = api_login(api, sender).json()["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert api.get("/api/v1/messages", headers=bearer).status_code == 200

    with session_scope(stack.rt.engine) as session:
        service.revoke_entry(session, SENDER, reason="struck off", actor="test")
        assert not session.execute(select(WebSession).where(WebSession.address == SENDER)).all()

    # The SMTP session that authenticated before: its next MAIL is refused, permanently.
    assert smtp.mail(SENDER) == code_of(replies.SENDER_REVOKED)
    smtp.close()
    # New logins at every door say why.
    assert refused_auth(stack, SENDER, stack.passwords[SENDER]) == code_of(replies.AUTH_ENTRY_REVOKED)
    # The web session is gone: back to the login page, where the password says why.
    assert browser.get("/inbox", follow_redirects=False).status_code in {302, 303}
    page = browser.get("/login")
    refused_page = browser.post(
        "/login", data={"address": SENDER, "password": sender.password, "csrf_token": csrf(page.text)}
    )
    assert refused_page.status_code == 403 and "révoquée" in refused_page.text
    # The API token stops working, and a new login is refused with the reason.
    ended = api.get("/api/v1/messages", headers=bearer)
    assert ended.status_code == 401
    relogin = api_login(api, sender)
    assert relogin.status_code == 403 and relogin.json()["error"] == "entry-revoked"
    reasons = [e.detail for e in events(stack, "smtp.login", SENDER) + events(stack, "api.login", SENDER)]
    assert any("entry-revoked" in detail for detail in reasons)

    # Reactivated: every door opens again.
    with session_scope(stack.rt.engine) as session:
        service.reactivate_entry(session, SENDER, actor="test")
    assert send(stack)


def test_revocation_between_rcpt_and_data_refuses_the_message(stack) -> None:
    before = stack.counts()
    client = past_rcpt(stack, READER)
    with session_scope(stack.rt.engine) as session:
        certificates.revoke_for_address(session, stack.settings, SENDER, reason="keyCompromise", actor="test")
    assert client.data(letter()) == code_of(replies.SENDER_CERTIFICATE_REVOKED)
    client.close()
    assert stack.counts() == before
    refusals = events(stack, "smtp.refused", SENDER)
    assert refusals and "certificate-revoked" in refusals[-1].detail


def test_recipient_revoked_between_rcpt_and_data_is_refused_at_data(stack) -> None:
    # One transaction: the recipient passed RCPT, then its entry was revoked; what RCPT
    # looked up is not trusted at DATA.
    before = stack.counts()
    client = past_rcpt(stack, READER)
    with session_scope(stack.rt.engine) as session:
        service.revoke_entry(session, READER, reason="struck off", actor="test")
    assert client.data(letter()) == code_of(replies.REVOKED_RECIPIENT)
    # The session goes on; the next transaction is refused at RCPT already.
    assert client.mail(SENDER)[0] == 250
    assert client.rcpt(READER) == code_of(replies.REVOKED_RECIPIENT)
    client.close()
    assert stack.counts() == before


REMOTE_DOMAIN = "hopital-voisin.example"
REMOTE_RECIPIENT = f"helene.noel@{REMOTE_DOMAIN}"


def _refuse_reader_entry(session, stack: Stack) -> None:
    service.revoke_entry(session, READER, reason="struck off", actor="test")


def _refuse_reader_certificate(session, stack: Stack) -> None:
    certificates.revoke_for_address(session, stack.settings, READER, reason="keyCompromise", actor="test")


def _refuse_remote_domain(session, stack: Stack) -> None:
    trust.remove(session, REMOTE_DOMAIN, actor="test")


@pytest.mark.parametrize(
    ("recipient", "write", "refusal"),
    [
        (READER, _refuse_reader_entry, replies.REVOKED_RECIPIENT),
        (READER, _refuse_reader_certificate, replies.RECIPIENT_NO_CERTIFICATE),
        (REMOTE_RECIPIENT, _refuse_remote_domain, replies.RELAY_DENIED),
    ],
    ids=["entry-revoked", "certificate-revoked", "domain-off-the-trust-list"],
)
def test_a_recipient_accepted_before_is_refused_at_the_next_rcpt_after_a_directory_change(
    stack, recipient, write, refusal
) -> None:
    # A recipient found reachable is not read again while the directory stays at the same
    # revision; a write to its entry, its certificate or the trust list moves the revision,
    # and the next transaction's RCPT reads it again.
    with session_scope(stack.rt.engine) as session:
        # A doctor at another operator: in the national directory, reachable while the
        # domain is on the trust list.
        service.add_entry(
            session, actor="test", kind="PER", address=REMOTE_RECIPIENT, rpps="10009999999", last_name="B"
        )
        trust.add(session, stack.settings, REMOTE_DOMAIN, actor="test")
    client = login(stack, SENDER)
    for _ in range(2):
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt(recipient)[0] == 250
        assert client.rset()[0] == 250
    with session_scope(stack.rt.engine) as session:
        write(session, stack)
    assert client.mail(SENDER)[0] == 250
    assert client.rcpt(recipient) == code_of(refusal)
    client.quit()


def test_recipients_found_reachable_are_read_again_only_once_the_directory_changed(stack) -> None:
    # What DATA and the next transactions' RCPT read of the recipients (their entries with
    # their current certificates), seen on the database connection.
    looked_up: list[str] = []

    def seen(_conn, _cursor, statement, _parameters, _context, _executemany) -> None:
        if "certificate.der" in statement and "directory_entry.status_reason" in statement:
            looked_up.append(statement)

    event.listen(stack.rt.engine, "before_cursor_execute", seen)
    try:
        client = login(stack, SENDER)
        queue_id(transaction(client, SENDER, RECIPIENTS, letter(recipients=RECIPIENTS))[-1])
        assert looked_up  # read at RCPT
        looked_up.clear()
        queue_id(transaction(client, SENDER, RECIPIENTS, letter(recipients=RECIPIENTS))[-1])
        assert looked_up == []  # neither at RCPT nor at DATA: the directory did not change
        with session_scope(stack.rt.engine) as session:
            service.revoke_entry(session, REVOKED_ELSEWHERE, reason="retired", actor="test")
        queue_id(transaction(client, SENDER, RECIPIENTS, letter(recipients=RECIPIENTS))[-1])
        assert looked_up  # another entry changed: the revision moved, everything is read again
        client.quit()
    finally:
        event.remove(stack.rt.engine, "before_cursor_execute", seen)


def test_a_recipient_revoked_between_mail_and_rcpt_is_refused_by_data_at_the_latest(stack) -> None:
    # RCPT may answer from the revision MAIL read; DATA reads the revision again and, once it
    # moved, every recipient.
    client = login(stack, SENDER)
    queue_id(transaction(client, SENDER, (READER,), letter())[-1])
    before = stack.counts()
    assert client.mail(SENDER)[0] == 250
    with session_scope(stack.rt.engine) as session:
        service.revoke_entry(session, READER, reason="struck off", actor="test")
    if client.rcpt(READER)[0] == 250:
        assert client.data(letter()) == code_of(replies.REVOKED_RECIPIENT)
    client.close()
    assert stack.counts() == before


def test_certificate_revoked_between_rcpt_and_data_drops_that_recipient(stack) -> None:
    client = past_rcpt(stack, RECIPIENTS[0], RECIPIENTS[1])
    with session_scope(stack.rt.engine) as session:
        certificates.revoke_for_address(session, stack.settings, RECIPIENTS[1], reason="keyCompromise", actor="test")
    ident = queue_id(client.data(letter(recipients=RECIPIENTS)))
    client.quit()
    with session_scope(stack.rt.engine) as session:
        row = session.execute(select(Message).where(Message.queue_id == ident)).scalars().one()
        deliveries = dict(
            session.execute(select(Delivery.recipient, Delivery.status).where(Delivery.message_id == row.id)).all()
        )
        inboxes = set(
            session.execute(
                select(MailboxItem.owner).where(MailboxItem.message_id == row.id, MailboxItem.folder == "inbox")
            ).scalars()
        )
    assert deliveries == {RECIPIENTS[0]: "delivered", RECIPIENTS[1]: "failed"}
    assert inboxes == {RECIPIENTS[0]}


def test_compromised_key_is_never_used_again(stack, web) -> None:
    smtp = login(stack, SENDER)
    with session_scope(stack.rt.engine) as session:
        certificates.revoke_for_address(session, stack.settings, SENDER, reason="keyCompromise", actor="test")
    assert smtp.mail(SENDER) == code_of(replies.SENDER_CERTIFICATE_REVOKED)
    smtp.close()
    assert refused_auth(stack, SENDER, stack.passwords[SENDER]) == code_of(replies.AUTH_CERTIFICATE_REVOKED)
    sender = person(stack, SENDER)
    assert api_login(web(), sender).json()["error"] == "certificate-revoked"
    with pytest.raises(CertificateRevoked):
        accounts.export_key(stack.rt.engine, stack.settings, SENDER, sender.password, "export password 1", actor="t")


def test_disabled_account_is_refused_at_its_next_mail(stack) -> None:
    smtp = login(stack, SENDER)
    with session_scope(stack.rt.engine) as session:
        accounts.set_disabled(session, SENDER, True, actor="test")
    assert smtp.mail(SENDER) == code_of(replies.SENDER_DISABLED)
    smtp.close()
    assert refused_auth(stack, SENDER, stack.passwords[SENDER]) == code_of(replies.AUTH_ACCOUNT_DISABLED)
    # A wrong password still learns nothing about the account.
    assert refused_auth(stack, SENDER, "not the password at all") == code_of(replies.AUTH_FAILED)


def test_mail_signed_before_revocation_says_both_facts(stack, web) -> None:
    queued = send(stack)
    time.sleep(1.1)  # a CRL dates revocations to the second
    with session_scope(stack.rt.engine) as session:
        certificates.revoke_for_address(session, stack.settings, SENDER, reason="affiliationChanged", actor="test")
    reader = person(stack, READER)
    api = web()
    bearer = {"Authorization": f"Bearer {api_login(api, reader).json()['token']}"}
    opened = api.get(f"/api/v1/messages/{queued}", headers=bearer).json()
    signature = opened["signature"]
    assert signature["status"] == "revoked-since"
    assert signature["revoked_at"] and "valid when the message was submitted" in signature["reason"]
    browser = web()
    web_login(browser, reader)
    page = browser.get(f"/messages/{queued}")
    assert page.status_code == 200 and "révoqué depuis" in page.text


# -- keys have a life -------------------------------------------------------------------------


def _serial(stack: Stack, address: str) -> str:
    with session_scope(stack.rt.engine) as session:
        row = certificates.certificate_row(session, address)
        assert row is not None
        return row.serial


def test_a_new_password_ends_the_mail_client_sessions_the_old_one_opened(stack) -> None:
    """The web's and the API's sessions end with a password change; an SMTP session (and
    an IMAP one, tests/test_imap.py) opened with the old password is refused at its next
    command, with what a client answers by logging in again."""
    stale = login(stack, READER)
    new = "a brand new passphrase 2026"
    with session_scope(stack.rt.engine) as session:
        accounts.change_password(session, stack.settings, READER, stack.passwords[READER], new, actor=READER)
    assert stale.mail(READER) == code_of(replies.SENDER_PASSWORD_CHANGED)
    stale.close()
    stack.passwords[READER] = new
    fresh = login(stack, READER)
    assert fresh.mail(READER)[0] == 250
    fresh.quit()


def test_rekey_keeps_older_mail_readable_and_revokes_the_old_certificate(stack, web) -> None:
    old_mail = send(stack)  # encrypted to the reader's first certificate
    old_serial = _serial(stack, READER)
    stale_session = login(stack, READER)
    with session_scope(stack.rt.engine) as session:
        done = accounts.rekey(session, stack.settings, READER, password=stack.passwords[READER], actor="test")
    assert done.revoked_serials == (old_serial,) and done.serial != old_serial
    with session_scope(stack.rt.engine) as session:
        old = certificates.certificate_by_serial(session, old_serial)
        assert old is not None and old.revoked_at is not None and old.revocation_reason == "superseded"
    assert _serial(stack, READER) == done.serial
    # An SMTP session opened with the old key may not sign with it any more.
    assert stale_session.mail(READER) == code_of(replies.SENDER_CERTIFICATE_REVOKED)
    stale_session.close()
    new_mail = send(stack)  # encrypted to the new certificate

    reader = person(stack, READER)
    api = web()
    bearer = {"Authorization": f"Bearer {api_login(api, reader).json()['token']}"}
    for queued in (old_mail, new_mail):
        opened = api.get(f"/api/v1/messages/{queued}", headers=bearer)
        assert opened.status_code == 200, opened.text
        assert opened.json()["signature"]["status"] == "valid"

    # A new password re-wraps the past key too; so does a recovery.
    with session_scope(stack.rt.engine) as session:
        accounts.change_password(session, stack.settings, READER, reader.password, "another long passphrase", actor="t")
    unlocked = accounts.authenticate(
        stack.rt.engine, stack.settings, READER, "another long passphrase", accounts.Origin("cli")
    )
    assert len(unlocked.past_keys_der) == 1
    with session_scope(stack.rt.engine) as session:
        accounts.recover_account(
            session,
            stack.settings,
            READER,
            stack.settings.pki.recovery_private_key_out,
            "a recovered passphrase",
            actor="test",
        )
    unlocked = accounts.authenticate(
        stack.rt.engine, stack.settings, READER, "a recovered passphrase", accounts.Origin("cli")
    )
    assert mailbox.open_message(stack.rt, unlocked, old_mail).signature.status == "valid"
    # export-key gives the new certificate.
    from cryptography.hazmat.primitives.serialization import pkcs12

    blob = accounts.export_key(
        stack.rt.engine, stack.settings, READER, "a recovered passphrase", "export password 1", actor="test"
    )
    exported = pkcs12.load_pkcs12(blob, b"export password 1")
    assert exported.cert is not None and serial_hex(exported.cert.certificate.serial_number) == done.serial


def test_rekey_with_the_recovery_key_after_a_compromise(stack) -> None:
    with session_scope(stack.rt.engine) as session:
        certificates.revoke_for_address(session, stack.settings, SENDER, reason="keyCompromise", actor="test")
    with pytest.raises(CertificateRevoked):
        accounts.authenticate(stack.rt.engine, stack.settings, SENDER, stack.passwords[SENDER], accounts.Origin("cli"))
    with session_scope(stack.rt.engine) as session:
        with pytest.raises(accounts.AccountExists, match="rekey"):
            accounts.issue_external_certificate(session, stack.settings, SENDER, "export password 1", actor="t")
        done = accounts.rekey(
            session,
            stack.settings,
            SENDER,
            actor="test",
            recovery_private_key_file=stack.settings.pki.recovery_private_key_out,
            new_password="a brand new passphrase",
            reason="keyCompromise",
        )
    assert done.revoked_serials == ()  # already revoked
    stack.passwords[SENDER] = "a brand new passphrase"
    assert send(stack)
    assert events(stack, "account.rekey", SENDER)


def test_renewal_keeps_the_key_and_lists_who_it_cannot_renew(tmp_path) -> None:
    stack = build_stack(tmp_path, MSS_CERTIFICATE_DAYS="10")  # every certificate ends in 10 days
    try:
        with session_scope(stack.rt.engine) as session:
            accounts.set_disabled(session, RECIPIENTS[1], True, actor="test")
        reader = person(stack, READER)
        app = create_app(stack.rt)
        with TestClient(app, base_url=BASE_URL) as browser:
            web_login(browser, reader)
            assert "renouveler" in browser.get("/inbox").text  # the banner before expiry
        from mss.health import startup_warnings

        assert any(READER in warning for warning in startup_warnings(stack.rt))
        old = _serial(stack, READER)
        three_years = stack.settings.with_changes(pki=replace(stack.settings.pki, certificate_days=1095))
        with session_scope(stack.rt.engine) as session:
            renewal = accounts.renew_certificates(session, three_years, within_days=30, actor="test")
        renewed = {address for address, _serial_, _end in renewal.renewed}
        assert READER in renewed and SENDER in renewed
        assert any(who == RECIPIENTS[1] and "disabled" in why for who, why in renewal.skipped)
        with session_scope(stack.rt.engine) as session:
            rows = session.execute(select(Certificate).where(Certificate.address == READER)).scalars().all()
            current = certificates.current_certificate(session, READER)
        assert current is not None and current.not_valid_after_utc > utcnow() + timedelta(days=300)
        first = next(r for r in rows if r.serial == old)
        assert first.revoked_at is None  # same key: the old certificate simply ends
        assert x509.load_der_x509_certificate(first.der).public_key() == current.public_key()
        stack.relay = RelayServer(stack.rt).start()
        assert send(stack)
    finally:
        stack.close()


def test_expired_certificate_cannot_log_in(stack) -> None:
    with session_scope(stack.rt.engine) as session:
        session.execute(
            update(Certificate).where(Certificate.address == SENDER).values(not_after=utcnow() - timedelta(days=1))
        )
    with pytest.raises(CertificateExpired):
        accounts.authenticate(stack.rt.engine, stack.settings, SENDER, stack.passwords[SENDER], accounts.Origin("cli"))
    assert refused_auth(stack, SENDER, stack.passwords[SENDER]) == code_of(replies.AUTH_CERTIFICATE_EXPIRED)


# -- served domains ---------------------------------------------------------------------------


def test_other_operators_entries_get_no_account_and_no_certificate(stack) -> None:
    with session_scope(stack.rt.engine) as session:
        entry = service.add_entry(
            session, actor="test", address="x@gmail.com", kind="PER", rpps="10009999998", last_name="X"
        )
        assert entry.status == "active"
    with session_scope(stack.rt.engine) as session:
        with pytest.raises(DomainNotServed):
            accounts.create_account(
                session, stack.settings, stack.rt.master_key, "x@gmail.com", "a long passphrase!", actor="t"
            )
    with session_scope(stack.rt.engine) as session:
        with pytest.raises(DomainNotServed):
            accounts.issue_external_certificate(session, stack.settings, "x@gmail.com", "export password 1", actor="t")
    with session_scope(stack.rt.engine) as session:
        assert certificates.certificate_row(session, "x@gmail.com") is None


# -- the second factor and the lockouts -----------------------------------------------------


def test_right_password_does_not_reset_second_factor_failures(stack, web) -> None:
    who = person(stack, READER)
    api = web()
    statuses = []
    for _ in range(12):
        response = api.post("/api/v1/sessions", json={"address": READER, "password": who.password, "code": "000000"})
        statuses.append(response.status_code)
    max_failures = stack.settings.security.max_login_failures
    assert statuses[:max_failures] == [401] * max_failures
    assert set(statuses[max_failures:]) == {423}
    assert api_login(api, who).status_code == 423  # even the right code, while locked
    locks = events(stack, "account.lock", READER)
    assert locks and "second-factor" in locks[0].detail


def test_web_rounds_of_wrong_codes_lock_the_account(stack, web) -> None:
    who = person(stack, READER)
    results = []
    for _ in range(3):
        client = web()
        page = totp_page(client, who)
        for _ in range(2):
            results.append(
                client.post("/login/totp", data={"code": "000000", "csrf_token": csrf(page.text)}).status_code
            )
            if results[-1] == 423:
                break
    assert 423 in results
    with session_scope(stack.rt.engine) as session:
        account = accounts.get_account(session, READER)
        assert account is not None and accounts.is_locked(account)


def test_a_stranger_cannot_lock_a_doctor_out(stack) -> None:
    """Wrong passwords from one address lock the account for that address only."""

    def from_address(source: str) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", stack.port, timeout=30, source_address=(source, 0))
        client.ehlo("client.test")
        client.starttls(context=stack.client_context())
        client.ehlo("client.test")
        return client

    attacker = from_address("127.0.0.2")
    for _ in range(stack.settings.security.max_login_failures):
        with pytest.raises(smtplib.SMTPAuthenticationError):
            attacker.login(READER, "a wrong password!!")
        attacker.close()
        attacker = from_address("127.0.0.2")
    with pytest.raises(smtplib.SMTPAuthenticationError) as locked:
        attacker.login(READER, stack.passwords[READER])
    assert (locked.value.smtp_code, locked.value.smtp_error) == code_of(replies.AUTH_TEMPORARY_FAILURE)
    attacker.close()
    doctor = from_address("127.0.0.1")
    assert doctor.login(READER, stack.passwords[READER])[0] == 235
    doctor.close()
    lock = events(stack, "account.lock", READER)
    assert len(lock) == 1 and "127.0.0.2" in lock[0].detail


def test_client_address_throttle_slows_then_refuses(tmp_path) -> None:
    stack = build_stack(tmp_path, MSS_CLIENT_FREE_FAILURES="3", MSS_CLIENT_MAX_FAILURES="6")
    try:
        settings, engine = stack.settings, stack.rt.engine
        targets = [f"nobody{n}@chu-demo.mss.test" for n in range(3)]
        for address in targets:
            with pytest.raises(BadCredentials):
                accounts.authenticate(
                    engine, settings, address, "guess guess guess", accounts.Origin("smtp", client="192.0.2.7")
                )
        # Past the free failures, the next try must wait: no password is checked then.
        with pytest.raises(BadCredentials):
            accounts.authenticate(
                engine, settings, "x@chu-demo.mss.test", "guess", accounts.Origin("smtp", client="192.0.2.7")
            )
        with pytest.raises(TooManyAttempts) as wait:
            accounts.authenticate(
                engine, settings, SENDER, stack.passwords[SENDER], accounts.Origin("smtp", client="192.0.2.7")
            )
        assert 1 <= wait.value.retry_after <= 2
        # Another address is not slowed down.
        assert accounts.authenticate(
            engine, settings, SENDER, stack.passwords[SENDER], accounts.Origin("smtp", client="192.0.2.8")
        )
        # At the maximum the address is refused for the whole window.
        from mss import throttle

        with session_scope(engine) as session:
            for _ in range(2):
                throttle.record_failure(session, settings, "y@chu-demo.mss.test", "192.0.2.7", utcnow(), pair=False)
        with pytest.raises(TooManyAttempts) as blocked:
            accounts.authenticate(
                engine, settings, SENDER, stack.passwords[SENDER], accounts.Origin("smtp", client="192.0.2.7")
            )
        assert blocked.value.retry_after > 30
    finally:
        stack.close()


def test_distributed_guessing_locks_the_account_for_everyone(tmp_path) -> None:
    stack = build_stack(tmp_path, MSS_ACCOUNT_MAX_FAILURES="6")
    try:
        settings, engine = stack.settings, stack.rt.engine
        for n in range(6):
            with pytest.raises(BadCredentials):
                accounts.authenticate(
                    engine, settings, SENDER, "wrong wrong wrong", accounts.Origin("smtp", client=f"198.51.100.{n}")
                )
        with pytest.raises(AccountLocked):
            accounts.authenticate(
                engine, settings, SENDER, stack.passwords[SENDER], accounts.Origin("smtp", client="203.0.113.9")
            )
        with session_scope(engine) as session:
            assert audit.verify(session, stack.rt.master_key).ok
    finally:
        stack.close()


def test_entry_revoked_is_told_only_after_the_right_password(stack) -> None:
    with session_scope(stack.rt.engine) as session:
        service.revoke_entry(session, READER, reason="retired", actor="test")
    with pytest.raises(BadCredentials):
        accounts.authenticate(stack.rt.engine, stack.settings, READER, "wrong wrong wrong", accounts.Origin("cli"))
    with pytest.raises(EntryRevoked, match="retired"):
        accounts.authenticate(stack.rt.engine, stack.settings, READER, stack.passwords[READER], accounts.Origin("cli"))
