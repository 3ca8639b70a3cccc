"""Accounts: creation rules, wrapped keys, password checks, lockout, TOTP, recovery, export."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from urllib.parse import parse_qs, urlparse

import nacl.pwhash.argon2id
import pyotp
import pytest
from sqlalchemy import select

from directory import service
from mss import accounts, audit
from mss.crypto import keys
from mss.db import session_scope
from mss.errors import (
    AccountDisabled,
    AccountExists,
    AccountLocked,
    BadCredentials,
    BadTotp,
    CryptoError,
    PasswordPolicyError,
    RevokedAddress,
    TooManyAttempts,
    UnknownAddress,
)
from mss.models import Account, AuditEvent

DOCTOR = "marc.robert@chu-demo.mss.test"
PASSWORD = "correct horse battery staple"


def _create(rt, address=DOCTOR, password=PASSWORD):
    with session_scope(rt.engine) as session:
        return accounts.create_account(session, rt.settings, rt.master_key, address, password, actor="test")


def _secret(enrolment) -> str:
    return parse_qs(urlparse(enrolment.otpauth_uri).query)["secret"][0]


def test_create_stores_no_secret_in_clear(rt, directory_loaded):
    enrolment = _create(rt)
    assert enrolment.otpauth_uri.startswith("otpauth://totp/")
    with session_scope(rt.engine) as session:
        account = session.execute(select(Account)).scalars().one()
        events = session.execute(select(AuditEvent.action)).scalars().all()
    secret = _secret(enrolment).encode()
    assert account.password_hash.startswith("$argon2id$")
    assert PASSWORD.encode() not in account.wrapped_key
    assert secret not in account.totp_secret_sealed
    assert b"PRIVATE KEY" not in account.wrapped_key
    # The escrow opens with the recovery key and yields the same key the password unwraps.
    recovery = keys.load_recovery_private_key(rt.settings.pki.recovery_private_key_out)
    escrowed = keys.open_recovery(account.recovery_sealed_key, recovery)
    unlocked = accounts.authenticate(rt.engine, rt.settings, DOCTOR, PASSWORD, accounts.Origin("cli"))
    assert escrowed == unlocked.private_key_der
    assert "account.create" in events and "pki.issue" in events


def test_create_refuses_unknown_revoked_duplicate_and_weak(rt, directory_loaded):
    with pytest.raises(UnknownAddress):
        _create(rt, "nobody@chu-demo.mss.test")
    with session_scope(rt.engine) as session:
        service.revoke_entry(session, "joel.petit@chu-demo.mss.test", reason="left", actor="test")
    with pytest.raises(RevokedAddress):
        _create(rt, "joel.petit@chu-demo.mss.test")
    with pytest.raises(PasswordPolicyError):
        _create(rt, password="short")
    # Bytes that are not UTF-8, as a terminal hands them on (surrogateescape): no door but
    # IMAP would read them alike.
    with pytest.raises(PasswordPolicyError, match="UTF-8"):
        _create(rt, password=b"long enough but \xe9t\xe9".decode("utf-8", "surrogateescape"))
    # A NUL ends the password at SMTP AUTH PLAIN; a tab or a line end cannot be typed in a form.
    for control in ("\x00", "\t", "\n", "\x7f"):
        with pytest.raises(PasswordPolicyError, match="control characters"):
            _create(rt, password=f"long enough{control}password")
    _create(rt, f" {DOCTOR.upper()} ")  # as typed: blanks around, capitals
    with pytest.raises(AccountExists):
        _create(rt)
    with session_scope(rt.engine) as session:
        assert session.execute(select(Account)).scalars().all()[0].address == DOCTOR


def test_wrong_password_and_unknown_address_look_alike(rt, directory_loaded):
    _create(rt)
    with pytest.raises(BadCredentials) as wrong:
        accounts.authenticate(rt.engine, rt.settings, DOCTOR, "wrong password!!", accounts.Origin("smtp"))
    with pytest.raises(BadCredentials) as unknown:
        accounts.authenticate(
            rt.engine, rt.settings, "ghost@chu-demo.mss.test", "wrong password!!", accounts.Origin("smtp")
        )
    assert str(wrong.value) == str(unknown.value)


def test_unknown_address_costs_as_much_as_a_wrong_password(rt, directory_loaded):
    # Both paths run one argon2id verification; without the dummy hash the unknown-address
    # path would be orders of magnitude faster. Medians over a few runs, generous factor.
    _create(rt)

    def cost(address: str) -> float:
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            with pytest.raises(BadCredentials):
                accounts.authenticate(rt.engine, rt.settings, address, "wrong password!!", accounts.Origin("smtp"))
            runs.append(time.perf_counter() - start)
        return statistics.median(runs)

    known, unknown = cost(DOCTOR), cost("ghost@chu-demo.mss.test")
    assert unknown > known / 3


def test_a_login_costs_one_argon2id_computation(rt, directory_loaded, monkeypatch):
    # Each computation holds its memory cost and is most of a login's CPU, and a mail client
    # that connects to send logs in for every message. Opening the private keys is the
    # password's check: a login, a wrong password and an unknown address cost one each.
    _create(rt)
    counted: list[str] = []
    for name in ("kdf", "verify", "str"):
        original = getattr(nacl.pwhash.argon2id, name)

        def counting(*args, _original=original, _name=name, **kwargs):
            counted.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(nacl.pwhash.argon2id, name, counting)

    def computations(address: str, password: str) -> list[str]:
        counted.clear()
        try:
            accounts.authenticate(rt.engine, rt.settings, address, password, accounts.Origin("smtp"))
        except BadCredentials:
            pass
        return list(counted)

    computations("ghost@chu-demo.mss.test", "wrong password!!")  # makes the dummy hash once
    assert computations(DOCTOR, PASSWORD) == ["kdf"]
    assert computations(DOCTOR, "wrong password!!") == ["kdf"]
    assert computations("ghost@chu-demo.mss.test", "wrong password!!") == ["verify"]
    # A wrapped key altered in the database is refused like a wrong password, and counted so.
    with session_scope(rt.engine) as session:
        account = session.execute(select(Account)).scalars().one()
        account.wrapped_key = account.wrapped_key[:-1] + bytes([account.wrapped_key[-1] ^ 1])
    with pytest.raises(BadCredentials):
        accounts.authenticate(rt.engine, rt.settings, DOCTOR, PASSWORD, accounts.Origin("smtp"))
    with session_scope(rt.engine) as session:
        last = session.execute(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1)).scalars().one()
    assert last.action == "smtp.login" and "bad-password" in last.detail
    # A closed mailbox has no keys left (mss.lifecycle erases them): the password's hash is
    # its check, so that its owner is told it is closed, not that the password is wrong.
    with session_scope(rt.engine) as session:
        account = session.execute(select(Account)).scalars().one()
        account.wrapped_key, account.disabled = b"", True
    counted.clear()
    with pytest.raises(AccountDisabled):
        accounts.authenticate(rt.engine, rt.settings, DOCTOR, PASSWORD, accounts.Origin("smtp"))
    assert counted == ["verify"]
    assert computations(DOCTOR, "wrong password!!") == ["verify"]
    # Keys erased on an account in good standing: there is nothing to log in with; refused,
    # and audited as such, after the same one computation.
    with session_scope(rt.engine) as session:
        session.execute(select(Account)).scalars().one().disabled = False
    assert computations(DOCTOR, PASSWORD) == ["verify"]
    with session_scope(rt.engine) as session:
        last = session.execute(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1)).scalars().one()
    assert last.action == "smtp.login" and "no-keys" in last.detail


def test_a_password_change_checks_the_old_password_by_opening_the_keys(rt, directory_loaded, monkeypatch):
    # The same check as a login's (accounts._common.open_keys): the keys opened with the
    # old password, then wrapped again and the new password's hash made; no hash checked.
    _create(rt)
    counted: list[str] = []
    for name in ("kdf", "verify", "str"):
        original = getattr(nacl.pwhash.argon2id, name)

        def counting(*args, _original=original, _name=name, **kwargs):
            counted.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(nacl.pwhash.argon2id, name, counting)
    with pytest.raises(BadCredentials), session_scope(rt.engine) as session:
        accounts.change_password(session, rt.settings, DOCTOR, "wrong password!!", "another long password", actor="t")
    assert counted == ["kdf"]
    counted.clear()
    with session_scope(rt.engine) as session:
        accounts.change_password(session, rt.settings, DOCTOR, PASSWORD, "another long password", actor="t")
    assert counted == ["kdf", "kdf", "str"]
    unlocked = accounts.authenticate(rt.engine, rt.settings, DOCTOR, "another long password", accounts.Origin("cli"))
    assert unlocked.address == DOCTOR


def test_credentials_no_account_can_have_are_refused_before_any_lookup(rt, directory_loaded):
    # One rule for every door: nothing is looked up, hashed, audited or counted for them, so
    # they neither lock the account nor slow its owner down.
    _create(rt)
    with session_scope(rt.engine) as session:
        events_before = len(session.execute(select(AuditEvent.id)).all())
    implausible = [
        ("", PASSWORD),
        ("marc.robert", PASSWORD),
        ("marc robert@chu-demo.mss.test", PASSWORD),
        ("marc.robert@chu-demo.mss.test@x", PASSWORD),
        ("marc\x00robert@chu-demo.mss.test", PASSWORD),
        ("m" * 255 + "@chu-demo.mss.test", PASSWORD),
        (DOCTOR, ""),
        (DOCTOR, PASSWORD + "x" * accounts.MAX_PASSWORD),
    ]
    for door in ("smtp", "imap", "web", "api"):
        for _ in range(rt.settings.security.max_login_failures):
            for address, password in implausible:
                with pytest.raises(BadCredentials):
                    accounts.authenticate(rt.engine, rt.settings, address, password, accounts.Origin(door, "192.0.2.7"))
    with session_scope(rt.engine) as session:
        assert len(session.execute(select(AuditEvent.id)).all()) == events_before
    unlocked = accounts.authenticate(rt.engine, rt.settings, DOCTOR, PASSWORD, accounts.Origin("smtp", "192.0.2.7"))
    assert unlocked.address == DOCTOR


def test_lockout_after_repeated_failures(rt, directory_loaded):
    _create(rt)
    for _ in range(rt.settings.security.max_login_failures):
        with pytest.raises(BadCredentials):
            accounts.authenticate(rt.engine, rt.settings, DOCTOR, "wrong password!!", accounts.Origin("smtp"))
    with pytest.raises(AccountLocked):
        accounts.authenticate(rt.engine, rt.settings, DOCTOR, PASSWORD, accounts.Origin("smtp"))
    with session_scope(rt.engine) as session:
        actions = session.execute(select(AuditEvent.action, AuditEvent.outcome)).all()
        assert ("account.lock", "success") in actions
        assert ("smtp.login", "failure") in actions
        assert audit.verify(session, rt.master_key).ok


def test_tries_at_a_locked_account_count_toward_their_client_limit(rt, directory_loaded):
    """A try at a locked account costs no argon2id work: it counts toward its client
    address's limit, past which that client waits and its tries write no more audit rows."""
    _create(rt)
    guesser = accounts.Origin("api", "192.0.2.66")
    for _ in range(rt.settings.security.max_login_failures):  # locked for this client
        with pytest.raises(BadCredentials):
            accounts.authenticate(rt.engine, rt.settings, DOCTOR, "wrong password!!", guesser)

    def rows() -> int:
        with session_scope(rt.engine) as session:
            return len(session.execute(select(AuditEvent.id)).all())

    refusals: list[type[Exception]] = []
    for _ in range(rt.settings.security.client_max_failures + 1):
        try:
            accounts.authenticate(rt.engine, rt.settings, DOCTOR, PASSWORD, guesser)
        except (AccountLocked, TooManyAttempts) as exc:
            refusals.append(type(exc))
            if isinstance(exc, TooManyAttempts):
                break
    assert refusals[0] is AccountLocked and refusals[-1] is TooManyAttempts, refusals
    before = rows()
    for _ in range(20):
        with pytest.raises(TooManyAttempts):
            accounts.authenticate(rt.engine, rt.settings, DOCTOR, PASSWORD, guesser)
    assert rows() == before


def test_disabled_account_cannot_log_in(rt, directory_loaded):
    _create(rt)
    with session_scope(rt.engine) as session:
        accounts.set_disabled(session, DOCTOR, True, actor="test")
    with pytest.raises(AccountDisabled):
        accounts.authenticate(rt.engine, rt.settings, DOCTOR, PASSWORD, accounts.Origin("web"))
    with session_scope(rt.engine) as session:
        accounts.set_disabled(session, DOCTOR, False, actor="test")
    assert accounts.authenticate(rt.engine, rt.settings, DOCTOR, PASSWORD, accounts.Origin("web")).address == DOCTOR


def test_totp_works_once_and_refuses_replay(rt, directory_loaded):
    totp = pyotp.TOTP(_secret(_create(rt)))
    now = time.time()
    code = totp.at(now)
    accounts.verify_totp(rt.engine, rt.settings, rt.master_key, DOCTOR, code, at=now)
    with pytest.raises(BadTotp):
        accounts.verify_totp(rt.engine, rt.settings, rt.master_key, DOCTOR, code, at=now)
    with pytest.raises(BadTotp):
        accounts.verify_totp(
            rt.engine, rt.settings, rt.master_key, DOCTOR, "000000" if code != "000000" else "111111", at=now + 30
        )
    accounts.verify_totp(rt.engine, rt.settings, rt.master_key, DOCTOR, totp.at(now + 30), at=now + 30)


def test_password_change_rewraps_the_key(rt, directory_loaded):
    _create(rt)
    before = accounts.authenticate(rt.engine, rt.settings, DOCTOR, PASSWORD, accounts.Origin("cli")).private_key_der
    with session_scope(rt.engine) as session:
        with pytest.raises(BadCredentials):
            accounts.change_password(
                session, rt.settings, DOCTOR, "not my password", "a brand new passphrase", actor="t"
            )
    with session_scope(rt.engine) as session:
        accounts.change_password(session, rt.settings, DOCTOR, PASSWORD, "a brand new passphrase", actor="test")
    with pytest.raises(BadCredentials):
        accounts.authenticate(rt.engine, rt.settings, DOCTOR, PASSWORD, accounts.Origin("cli"))
    after = accounts.authenticate(rt.engine, rt.settings, DOCTOR, "a brand new passphrase", accounts.Origin("cli"))
    assert after.private_key_der == before


def test_recover_with_the_offline_key(rt, directory_loaded, tmp_path):
    _create(rt)
    before = accounts.authenticate(rt.engine, rt.settings, DOCTOR, PASSWORD, accounts.Origin("cli")).private_key_der
    stranger = tmp_path / "other.key"
    keys.generate_recovery_keypair(stranger, tmp_path / "other.pub")
    with session_scope(rt.engine) as session:
        with pytest.raises(CryptoError):
            accounts.recover_account(session, rt.settings, DOCTOR, stranger, "recovered passphrase", actor="test")
    with session_scope(rt.engine) as session:
        accounts.recover_account(
            session, rt.settings, DOCTOR, rt.settings.pki.recovery_private_key_out, "recovered passphrase", actor="test"
        )
    after = accounts.authenticate(rt.engine, rt.settings, DOCTOR, "recovered passphrase", accounts.Origin("cli"))
    assert after.private_key_der == before


def test_reset_2fa_replaces_the_secret(rt, directory_loaded):
    old = pyotp.TOTP(_secret(_create(rt)))
    with session_scope(rt.engine) as session:
        new = pyotp.TOTP(_secret(accounts.reset_2fa(session, rt.settings, rt.master_key, DOCTOR, actor="test")))
    now = time.time()
    if old.at(now) != new.at(now):
        with pytest.raises(BadTotp):
            accounts.verify_totp(rt.engine, rt.settings, rt.master_key, DOCTOR, old.at(now), at=now)
    accounts.verify_totp(rt.engine, rt.settings, rt.master_key, DOCTOR, new.at(now + 60), at=now + 60)


def test_export_pkcs12_opens_with_openssl(rt, directory_loaded, tmp_path):
    _create(rt)
    with pytest.raises(BadCredentials):
        accounts.export_key(rt.engine, rt.settings, DOCTOR, "wrong password!!", "export passphrase", actor="test")
    blob = accounts.export_key(rt.engine, rt.settings, DOCTOR, PASSWORD, "export passphrase", actor="test")
    p12 = tmp_path / "key.p12"
    p12.write_bytes(blob)
    ok = subprocess.run(
        ["openssl", "pkcs12", "-info", "-in", str(p12), "-noenc", "-passin", "pass:export passphrase"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert "BEGIN PRIVATE KEY" in ok.stdout and DOCTOR in ok.stdout
    bad = subprocess.run(
        ["openssl", "pkcs12", "-info", "-in", str(p12), "-noenc", "-passin", "pass:wrong"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0


def test_recovery_reset_and_disable_end_web_sessions(rt, directory_loaded):
    from datetime import timedelta

    from mss.db import utcnow
    from mss.models import WebSession

    _create(rt)

    def open_session() -> None:
        with session_scope(rt.engine) as session:
            session.add(
                WebSession(
                    token_hash=os.urandom(32).hex(),
                    address=DOCTOR,
                    channel="web",
                    stage="active",
                    key_sealed=b"sealed",
                    expires_at=utcnow() + timedelta(hours=1),
                )
            )

    def live() -> int:
        with session_scope(rt.engine) as session:
            return len(session.execute(select(WebSession).where(WebSession.address == DOCTOR)).scalars().all())

    open_session()
    with session_scope(rt.engine) as session:
        accounts.reset_2fa(session, rt.settings, rt.master_key, DOCTOR, actor="test")
    assert live() == 0
    open_session()
    with session_scope(rt.engine) as session:
        accounts.recover_account(
            session, rt.settings, DOCTOR, rt.settings.pki.recovery_private_key_out, "recovered passphrase", actor="test"
        )
    assert live() == 0
    open_session()
    with session_scope(rt.engine) as session:
        accounts.set_disabled(session, DOCTOR, True, actor="test")
    assert live() == 0
