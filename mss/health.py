"""What an operator must hear about the running service, without a secret in any line.

``startup_warnings`` is what ``mss serve`` logs when it starts.
"""

from __future__ import annotations

from mss import accounts
from mss.crypto.pki import PkiPaths
from mss.db import session_scope
from mss.runtime import Runtime


def startup_warnings(rt: Runtime) -> list[str]:
    """What an operator must hear about when the service starts (no secret in any line):
    the recovery private key still on this machine, certificates about to end."""
    found: list[str] = []
    paths = PkiPaths.from_settings(rt.settings)
    for place in dict.fromkeys((rt.settings.storage.data_dir / "recovery.key", paths.recovery_private_key)):
        if place.exists():
            where = "in the data folder, beside the master key" if place.parent == rt.settings.storage.data_dir else "on this machine"
            found.append(
                f"the recovery private key {place} is {where}: move it offline (see README, Keys), it opens every account's key"
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
