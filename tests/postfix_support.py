"""Debian's Postfix as another operator of the trust space, in a private instance.

Everything lives in a temporary folder (its own ``config_directory``, ``queue_directory``,
``data_directory``, maildirs and log): the instance listens on loopback high ports only
(``inet_interfaces = loopback-only``, no ``smtp inet`` service on port 25), delivers its own
domain to maildirs, sends the domains the test names to their loopback routes and refuses
to relay anything else (``default_transport = error``). Its MX service requires TLS and a
client certificate (``smtpd_tls_req_ccert``); its SMTP client presents its own certificate
and verifies the peer's. A second smtpd on another port, without TLS and open to loopback
only, is how the test hands it a message to send. Postfix runs as root, as it must.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from mss.crypto import keys, pki

POSTFIX = Path("/usr/sbin/postfix")
POSTCONF = Path("/usr/sbin/postconf")
IN_CI = os.environ.get("CI", "").lower() == "true"

_MASTER = """\
127.0.0.1:{mx_port} inet n - n - - smtpd
127.0.0.1:{submission_port} inet n - n - - smtpd -o smtpd_tls_security_level=none -o smtpd_tls_ask_ccert=no -o smtpd_tls_req_ccert=no -o smtpd_relay_restrictions=permit_mynetworks,reject
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def require_postfix() -> None:
    """Skip (fail under CI=true) when Postfix is missing or cannot run here."""
    problem = None
    if not POSTFIX.exists() or not POSTCONF.exists():
        problem = "Postfix is not installed (run tests/sysdeps.sh)"
    elif os.geteuid() != 0:
        problem = "Postfix runs as root; these tests need root"
    else:
        try:
            pwd.getpwnam("postfix")
        except KeyError:
            problem = "the postfix user is missing (reinstall the postfix package)"
    if problem is not None:
        if IN_CI:
            pytest.fail(f"{problem}: required under CI=true")
        pytest.skip(problem)


class PostfixPeer:
    """A private Postfix instance serving ``domain`` with maildirs for ``mailboxes``."""

    def __init__(
        self,
        *,
        domain: str,
        mailboxes: list[str],
        mx_port: int,
        submission_port: int,
        trusted_cas: list[Path],
        routes: dict[str, tuple[str, int]],
    ) -> None:
        self.domain = domain
        self.mx_port = mx_port
        self.submission_port = submission_port
        # Not under pytest's 0700 folders: the postfix user must reach its queue.
        self.root = Path(tempfile.mkdtemp(prefix="mss-postfix-"))
        self.root.chmod(0o755)
        self.conf = self.root / "conf"
        self.conf.mkdir(mode=0o755)
        self.ca = pki.new_certificate_authority(
            common_name=f"Postfix operator CA {domain}", organisation="postfix peer"
        )
        key, certificate = pki.issue_tls_certificate(self.ca, ["localhost", "127.0.0.1"])
        (self.conf / "tls.pem").write_bytes(
            certificate.public_bytes(Encoding.PEM) + self.ca.certificate.public_bytes(Encoding.PEM)
        )
        (self.conf / "tls.key").write_bytes(keys.private_key_to_pem(key))
        (self.conf / "tls.key").chmod(0o600)
        self.ca_file.write_bytes(self.ca.certificate.public_bytes(Encoding.PEM))
        (self.conf / "peers-ca.pem").write_bytes(b"".join(path.read_bytes() for path in trusted_cas))
        uid, gid = pwd.getpwnam("postfix").pw_uid, grp.getgrnam("postfix").gr_gid
        for name, owner, mode in (("queue", None, 0o755), ("data", (uid, gid), 0o700), ("mail", (uid, gid), 0o755)):
            (self.root / name).mkdir(mode=mode)
            if owner:
                os.chown(self.root / name, *owner)
        self.mailboxes = {address: address.partition("@")[0] + "/" for address in mailboxes}
        mailbox_map = ", ".join(f"{a}={d}" for a, d in self.mailboxes.items())
        transports = ", ".join(f"{d}=smtp:[{h}]:{p}" for d, (h, p) in routes.items())
        # Postfix matches DNS names only, not IP addresses: the peers' certificates name localhost.
        policies = ", ".join(f"{{[{h}]:{p}=secure match=localhost}}" for h, p in routes.values())
        main = f"""\
compatibility_level = 3.6
queue_directory = {self.root}/queue
data_directory = {self.root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = {domain}
mydomain = {domain}
myorigin = $myhostname
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost =
maillog_file = {self.root}/maillog
maillog_file_prefixes = {self.root}
alias_maps =
alias_database =
biff = no
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {self.root}/mail
virtual_mailbox_maps = inline:{{ {mailbox_map} }}
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
transport_maps = inline:{{ {transports} }}
default_transport = error:this test instance sends on loopback only
relay_transport = error:this test instance sends on loopback only
smtpd_tls_cert_file = {self.conf}/tls.pem
smtpd_tls_key_file = {self.conf}/tls.key
smtpd_tls_CAfile = {self.conf}/peers-ca.pem
smtpd_tls_security_level = encrypt
smtpd_tls_ask_ccert = yes
smtpd_tls_req_ccert = yes
smtpd_tls_received_header = yes
smtpd_tls_loglevel = 1
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtp_tls_cert_file = {self.conf}/tls.pem
smtp_tls_key_file = {self.conf}/tls.key
smtp_tls_CAfile = {self.conf}/peers-ca.pem
smtp_tls_security_level = secure
smtp_tls_policy_maps = inline:{{ {policies} }}
smtp_tls_loglevel = 1
minimal_backoff_time = 1s
maximal_backoff_time = 2s
queue_run_delay = 1s
"""
        (self.conf / "main.cf").write_text(main)
        (self.conf / "master.cf").write_text(_MASTER.format(mx_port=mx_port, submission_port=submission_port))

    @property
    def ca_file(self) -> Path:
        return self.conf / "ca.pem"

    def _postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(POSTFIX), "-c", str(self.conf), *args], capture_output=True, text=True, timeout=60)

    def start(self) -> PostfixPeer:
        done = self._postfix("start")
        if done.returncode != 0:
            raise RuntimeError(f"postfix did not start: {done.stderr} {self.log()[-2000:]}")
        return self

    def stop(self) -> None:
        self._postfix("stop")
        deadline = time.monotonic() + 30
        while self._postfix("status").returncode == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def mailbox(self, address: str) -> list[EmailMessage]:
        """The messages delivered to ``address``'s maildir, oldest first."""
        folder = self.root / "mail" / self.mailboxes[address] / "new"
        if not folder.exists():
            return []
        files = sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime)
        return [message_from_bytes(path.read_bytes(), policy=policy.default) for path in files]
