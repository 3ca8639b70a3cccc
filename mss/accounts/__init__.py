"""Accounts: a login for a directory address, its wrapped private keys and its second factor.

This service owns every credential and every rule about them, for every door (SMTP, web,
API, IMAP, the command line): passwords, TOTP codes, recovery codes, the lockouts, the keys'
custody. The doors translate; they call these functions and keep no rule of their own.

- ``_common``: the unlocked account, the enrolment, the password policy, key wrapping;
- ``lockout``: where an attempt comes from (``Origin``), counting failures and locking
  (with ``mss.throttle`` by client address);
- ``twofactor``: TOTP enrolment and codes, recovery codes;
- ``login``: the login service (password, standing, keys opened; both factors at once);
- ``custody``: creation, passwords, recovery, rekey, renewal, disable, export;
- ``listing``: the accounts as an administrator reviews them (state, 2FA, last login);
- ``preferences``: what an account chose for itself (read receipts: ask, always, never).

Who opens the transaction: a function that *changes an account as an administrator's or a
person's deliberate act* (create, passwd, recover, rekey, renew, reset-2fa, disable) takes
the caller's ``Session``, so the caller can make it one transaction with its own writes and
its audit event. A function on the *login path* (authenticate, the second factor, failures)
takes the ``Engine`` and commits on its own: a failure must be counted and audited even
though the login is refused, which a caller's rollback would undo; they run in worker
threads of the doors.
"""

from mss.accounts._common import (
    MIN_PASSWORD_LENGTH,
    Enrolment,
    UnlockedAccount,
    check_password_policy,
    get_account,
    require_account,
)
from mss.accounts.custody import (
    Rekeyed,
    Renewal,
    change_password,
    create_account,
    expiring_certificates,
    export_key,
    is_admin,
    issue_external_certificate,
    recover_account,
    rekey,
    renew_certificates,
    set_admin,
    set_disabled,
)
from mss.accounts.listing import AccountRow, list_accounts
from mss.accounts.lockout import COUNTED_FAILURES, LOCAL, Origin, is_locked, login_completed, record_failure
from mss.accounts.login import MAX_PASSWORD, authenticate, login_with_code
from mss.accounts.preferences import (
    ALWAYS,
    ASK,
    NEVER,
    READ_RECEIPT_CHOICES,
    read_receipt_choice,
    set_read_receipt_choice,
)
from mss.accounts.twofactor import (
    check_second_factor,
    new_recovery_codes,
    new_recovery_codes_in,
    pending_enrolment,
    remaining_recovery_codes,
    reset_2fa,
    totp_confirmed,
    use_recovery_code,
    verify_totp,
)
from mss.errors import AccountExists

__all__ = [
    "ALWAYS",
    "ASK",
    "NEVER",
    "READ_RECEIPT_CHOICES",
    "COUNTED_FAILURES",
    "LOCAL",
    "MAX_PASSWORD",
    "MIN_PASSWORD_LENGTH",
    "AccountExists",
    "AccountRow",
    "Enrolment",
    "Origin",
    "Rekeyed",
    "Renewal",
    "UnlockedAccount",
    "authenticate",
    "change_password",
    "check_password_policy",
    "check_second_factor",
    "create_account",
    "expiring_certificates",
    "export_key",
    "get_account",
    "is_locked",
    "issue_external_certificate",
    "list_accounts",
    "login_completed",
    "login_with_code",
    "new_recovery_codes",
    "new_recovery_codes_in",
    "pending_enrolment",
    "read_receipt_choice",
    "recover_account",
    "record_failure",
    "set_admin",
    "is_admin",
    "rekey",
    "remaining_recovery_codes",
    "renew_certificates",
    "require_account",
    "reset_2fa",
    "set_disabled",
    "set_read_receipt_choice",
    "totp_confirmed",
    "use_recovery_code",
    "verify_totp",
]
