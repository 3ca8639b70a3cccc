"""``mss lifecycle run``: a mailbox aged by the test's clock gets one inactivity notice, is
then closed with its keys destroyed and its messages gone, while the others' copies stay
and the audit chain still verifies; the audit retention purge leaves a checkpoint."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from sqlalchemy import select

from mss import accounts
from mss.db import session_scope, utcnow
from mss.errors import AccountDisabled
from mss.models import Account, MailboxItem, Message

from web_support import GP, NURSE, PASSWORD, create_person, doctor, gp, pdf_bytes, submit  # noqa: F401  (fixtures)


def _age(rt, address: str, days: int, *, notice_days: int | None = None) -> None:
    """Move the account's last login (and notice) ``days`` into the past: the test's clock."""
    with session_scope(rt.engine) as session:
        account = session.execute(select(Account).where(Account.address == address)).scalar_one()
        account.last_login_at = account.created_at = utcnow() - timedelta(days=days)
        if notice_days is not None:
            account.inactivity_notice_at = utcnow() - timedelta(days=notice_days)
        session.add(account)


def _items(rt, owner: str) -> list[tuple[str, str]]:
    with session_scope(rt.engine) as session:
        return [
            (folder, kind)
            for folder, kind in session.execute(
                select(MailboxItem.folder, Message.kind)
                .join(Message, Message.id == MailboxItem.message_id)
                .where(MailboxItem.owner == owner)
            )
        ]


def test_an_inactive_mailbox_is_noticed_then_closed(rt, doctor, gp, mss, env):
    nurse = create_person(rt, NURSE)
    to_nurse = submit(rt, doctor, [NURSE], "Pansements", "Bonjour", [("soins.pdf", "application/pdf", pdf_bytes())])
    from_nurse = submit(rt, nurse, [GP], "Retour", "Bonjour")
    assert mss("lifecycle", "run").stdout.count("noticed") == 0

    _age(rt, NURSE, 336)
    result = mss("lifecycle", "run")
    assert f"noticed {NURSE}" in result.stdout and "mailboxes closed: 0" in result.stdout
    assert doctor.address not in result.stdout and GP not in result.stdout
    assert ("inbox", "notice") in _items(rt, NURSE)
    with session_scope(rt.engine) as session:
        notice = session.execute(select(Message).where(Message.kind == "notice")).scalar_one()
        digest = hashlib.sha256(notice.cms).hexdigest()
        # The row names its CMS by the digest of the bytes stored, and so does its queue id.
        assert (notice.cms_sha256, notice.size) == (digest, len(notice.cms))
        assert notice.queue_id == f"NOTICE-{digest[:20].upper()}"
    # Once.
    assert "inactivity notices sent: 0" in mss("lifecycle", "run").stdout

    # A year without login, the notice sent 31 days ago: closed.
    _age(rt, NURSE, 366, notice_days=31)
    result = mss("lifecycle", "run")
    assert f"closed {NURSE}" in result.stdout
    with session_scope(rt.engine) as session:
        account = session.execute(select(Account).where(Account.address == NURSE)).scalar_one()
        assert account.wrapped_key == b"" and account.recovery_sealed_key == b"" and account.totp_secret_sealed == b""
        assert account.disabled and account.closed_at is not None
        stored = {m.queue_id for m in session.execute(select(Message)).scalars()}
    assert _items(rt, NURSE) == []
    # The others keep their copies: the doctor's sent message, the GP's received one.
    assert to_nurse.queue_id in stored and from_nurse.queue_id in stored
    assert ("inbox", "signed") in _items(rt, GP)
    with pytest.raises(AccountDisabled):
        accounts.authenticate(rt.engine, rt.settings, NURSE, PASSWORD, accounts.Origin("smtp"))
    assert "audit chain intact" in mss("audit", "verify").stdout

    # The retention purge runs on the same schedule.
    env["MSS_AUDIT_RETENTION_DAYS"] = "0"
    purged = mss("lifecycle", "run").stdout
    assert "audit events purged: 0" not in purged
    assert "audit chain intact" in mss("audit", "verify").stdout


def test_a_login_keeps_a_mailbox_alive(rt, doctor, mss):
    _age(rt, doctor.address, 336)
    accounts.authenticate(rt.engine, rt.settings, doctor.address, doctor.password, accounts.Origin("smtp"))
    assert "inactivity notices sent: 0" in mss("lifecycle", "run").stdout


def test_a_closure_whose_crl_cannot_be_written_holds_and_says_so(rt, doctor, mss):
    """Closing a mailbox revokes its certificate: when the CRL that lists it cannot be
    written, the closure holds, and the run ends with status 1 saying what to do."""
    _age(rt, doctor.address, 366, notice_days=31)
    crl_file = rt.settings.pki.certs_dir / "ca.crl.pem"
    published = crl_file.read_bytes()
    crl_file.unlink()
    crl_file.mkdir()  # a CRL that cannot be written (even by root): a folder in its place
    try:
        result = mss("lifecycle", "run", ok=False)
    finally:
        crl_file.rmdir()
        crl_file.write_bytes(published)
    assert result.exit_code == 1 and f"closed {doctor.address}" in result.stdout
    assert "the revocation is done" in result.stderr and "mss pki crl" in result.stderr
    with session_scope(rt.engine) as session:
        assert session.execute(select(Account.closed_at).where(Account.address == doctor.address)).scalar_one()
    assert "1 revoked certificate(s)" in mss("pki", "crl").stdout
