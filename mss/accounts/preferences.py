"""What an account chose for itself: for now, what happens to requested read receipts.

RFC 8098 2.1: a ``displayed`` notification is sent only with the recipient's consent, given
each time or once for all by a setting. ``ask`` (the default) asks on each message that
requests one; ``always`` sends them; ``never`` declines them.
"""

from __future__ import annotations

from sqlmodel import Session

from mss.accounts._common import get_account, record_change, require_account
from mss.errors import AccountError

ASK, ALWAYS, NEVER = "ask", "always", "never"
READ_RECEIPT_CHOICES = (ASK, ALWAYS, NEVER)


def read_receipt_choice(session: Session, address: str) -> str:
    """The account's choice for requested read receipts (``ask`` without an account)."""
    account = get_account(session, address)
    if account is None or account.read_receipts not in READ_RECEIPT_CHOICES:
        return ASK
    return account.read_receipts


def set_read_receipt_choice(session: Session, address: str, choice: str, *, actor: str, request_id: str = "") -> None:
    """Set what happens to requested read receipts; audited as ``account.read-receipts``.
    Raises AccountError for a choice that is not ask, always or never, NoSuchAccount."""
    if choice not in READ_RECEIPT_CHOICES:
        raise AccountError(f"unknown read receipt choice {choice!r}: use ask, always or never")
    account = require_account(session, address)
    if account.read_receipts == choice:
        return
    account.read_receipts = choice
    record_change(session, account, "account.read-receipts", actor=actor, request_id=request_id, choice=choice)
