"""IMAP full sync and IDLE load, against Dovecot serving the same messages, in the same run.

- **mss**: ``mss serve imap`` as its own process (implicit TLS, decrypted mode: every body
  fetched is decrypted with the reader's key, audited as an opening);
- **Dovecot** (Debian's ``dovecot-imapd``), started here on a loopback high port with its own
  configuration in a temporary folder (never the system's, never port 143/993), over TLS
  with the same certificate, serving a Maildir that holds the very bytes mss serves.

Full sync: ``mbsync`` pulls the INBOX into an empty Maildir, once per server per
repetition, interleaved. IDLE: 50 clients (imapclient, one thread each) IDLE on the INBOX;
new messages then arrive one at a time (mss: through the pipeline, from this process, i.e.
another process than the IMAP server; Dovecot: a file dropped in ``new/``), and the time
until all 50 clients saw ``EXISTS`` is measured for each.

Usage::

    .venv/bin/python bench/bench_imap.py                    # 10,000 messages, 3 repetitions
    .venv/bin/python bench/bench_imap.py --messages 500     # a quick run

Prints min/median/max for each side and the mss/Dovecot ratio. Settings are the defaults
(RSA 3072 user keys, SQLite WAL with synchronous=FULL, MSS_IMAP_POLL_SECONDS=1) unless the
environment says otherwise.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from email.message import EmailMessage
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from mss import accounts, pipeline
from mss.crypto.pki import PkiPaths, init_dev_pki
from mss.demo import load_demo
from mss.mailbox import sync
from mss.pipeline import RecipientRequest, Submission
from mss.runtime import open_runtime
from mss.settings import Settings

IDLE_CLIENTS = 50
DOVECOT_PASSWORD = "bench-only-password"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pdf(size: int) -> bytes:
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(width=595, height=842)
    writer.add_metadata({"/Subject": "x" * size})
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def message(sender: str, to: str, number: int, attachment: bytes) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, f"Compte rendu {number}"
    msg.set_content("Bonjour,\nle compte rendu ci-joint.\n")
    msg.add_attachment(attachment, maintype="application", subtype="pdf", filename=f"cr-{number}.pdf")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def submit(rt, sender, to: str, number: int, attachment: bytes) -> None:
    pipeline.submit(
        rt,
        Submission(
            sender=sender,
            recipients=(RecipientRequest(to),),
            raw=message(sender.address, to, number, attachment),
            channel="smtp",
        ),
    )


def dovecot_config(root: Path, port: int, certs: PkiPaths) -> Path:
    user = pwd.getpwnam("nobody")
    (root / "maildir" / "cur").mkdir(parents=True, exist_ok=True)
    (root / "maildir" / "new").mkdir(exist_ok=True)
    (root / "maildir" / "tmp").mkdir(exist_ok=True)
    for folder in ("run", "state", "home"):
        (root / folder).mkdir(exist_ok=True)
    config = root / "dovecot.conf"
    config.write_text(f"""
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{certs.tls_certificate}
ssl_key = <{certs.tls_key}
ssl_min_protocol = TLSv1.2
auth_mechanisms = plain
protocol imap {{
  mail_max_userip_connections = {IDLE_CLIENTS * 2}
}}
first_valid_uid = {user.pw_uid}
mail_location = maildir:{root}/maildir
default_internal_user = dovecot
default_login_user = dovenull
passdb {{
  driver = static
  args = password={DOVECOT_PASSWORD}
}}
userdb {{
  driver = static
  args = uid={user.pw_uid} gid={user.pw_gid} home={root}/home
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {port}
    ssl = yes
  }}
}}
""")
    return config


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def mbsync_sync(root: Path, port: int, user: str, password: str, cert: Path) -> float:
    target = root / f"sync-{time.monotonic_ns()}"
    target.mkdir()
    config = target / "mbsyncrc"
    config.write_text(f"""IMAPAccount a
Host 127.0.0.1
Port {port}
User {user}
Pass "{password}"
SSLType IMAPS
CertificateFile {cert}
PipelineDepth 50

IMAPStore r
Account a

MaildirStore l
Path {target}/mail/
Inbox {target}/mail/INBOX

Channel c
Far :r:
Near :l:
Patterns INBOX
Create Near
Sync Pull
SyncState *
""")
    (target / "mail").mkdir()
    start = time.perf_counter()
    subprocess.run(["mbsync", "-q", "-c", str(config), "-a"], check=True, env={**os.environ, "HOME": str(target)})
    elapsed = time.perf_counter() - start
    shutil.rmtree(target)
    return elapsed


def idle_latency(port: int, user: str, password: str, ca: str, deliver, count: int) -> list[float]:
    """Seconds from each delivery until every IDLE client saw EXISTS."""
    import ssl

    from imapclient import IMAPClient

    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False
    clients = []
    ready = threading.Barrier(IDLE_CLIENTS + 1)
    stop = threading.Event()
    rounds = [threading.Event() for _ in range(count)]
    hits = [0] * count
    lock = threading.Lock()

    def run(index: int) -> None:
        try:
            client = IMAPClient("127.0.0.1", port=port, ssl=True, ssl_context=context, timeout=60)
            client.login(user, password)
            exists = client.select_folder("INBOX")[b"EXISTS"]
            clients.append(client)
            client.idle()
        except Exception:
            ready.abort()  # the benchmark stops with the client's error instead of waiting
            raise
        ready.wait()
        seen_round = 0
        while not stop.is_set() and seen_round < count:
            for response in client.idle_check(timeout=0.5):
                if (
                    isinstance(response, tuple)
                    and len(response) > 1
                    and response[1] == b"EXISTS"
                    and response[0] > exists
                ):
                    exists = response[0]
                    with lock:
                        hits[seen_round] += 1
                        if hits[seen_round] == IDLE_CLIENTS:
                            rounds[seen_round].set()
                    seen_round += 1
        client.idle_done()
        client.logout()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(IDLE_CLIENTS)]
    for thread in threads:
        thread.start()
    ready.wait(120)
    latencies = []
    for number in range(count):
        start = time.perf_counter()
        deliver(number)
        if not rounds[number].wait(60):
            raise RuntimeError("IDLE clients did not all see the new message within 60 s")
        latencies.append(time.perf_counter() - start)
    stop.set()
    for thread in threads:
        thread.join(30)
    return latencies


def summary(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--idle-messages", type=int, default=5)
    parser.add_argument("--attachment-kb", type=int, default=20)
    args = parser.parse_args()
    for tool in ("mbsync", "/usr/sbin/dovecot"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: apt-get install isync dovecot-imapd")

    root = Path(tempfile.mkdtemp(prefix="bench-imap-"))
    os.chmod(root, 0o755)
    imaps_port, imap_port, dovecot_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "MSS_DATA_DIR": str(root / "data"),
        "MSS_CERTS_DIR": str(root / "certs"),
        "MSS_RECOVERY_KEY_OUT": str(root / "offline" / "recovery.key"),
        "MSS_IMAP_PORT": str(imap_port),
        "MSS_IMAPS_PORT": str(imaps_port),
        "MSS_PKI_HTTP_PORT": "0",
    }
    settings = Settings.from_env(env)
    init_dev_pki(settings)
    rt = open_runtime(settings)
    people = load_demo(rt, actor="bench")
    sender_item, reader_item = people[0], people[1]
    sender = accounts.authenticate(
        rt.engine, settings, sender_item.address, sender_item.password, accounts.Origin("cli")
    )
    reader = accounts.authenticate(
        rt.engine, settings, reader_item.address, reader_item.password, accounts.Origin("cli")
    )
    attachment = pdf(args.attachment_kb * 1000)
    print(f"storing {args.messages} messages of ~{len(attachment) // 1000} kB ...", flush=True)
    start = time.perf_counter()
    for number in range(args.messages):
        submit(rt, sender, reader.address, number, attachment)
    print(f"  {time.perf_counter() - start:.0f} s", flush=True)

    certs = PkiPaths.from_settings(settings)
    state = sync.folder_state(rt.engine, reader.address, sync.INBOX, "decrypted")
    config = dovecot_config(root / "dovecot", dovecot_port, certs)
    for number, item in enumerate(state.items):
        data = sync.render(rt, reader, item.item_id, "decrypted").data
        (root / "dovecot" / "maildir" / "cur" / f"{number:08d}.bench:2,").write_bytes(data)
    nobody = pwd.getpwnam("nobody")
    for path in [root / "dovecot" / "maildir", *(root / "dovecot" / "maildir").rglob("*"), root / "dovecot" / "home"]:
        os.chown(path, nobody.pw_uid, nobody.pw_gid)

    mss_cli = str(Path(sys.executable).parent / "mss")
    # The server runs this tree's code, as this process does (not whatever the virtualenv's
    # own install of mss points to).
    path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    servers = [
        subprocess.Popen(
            [mss_cli, "serve", "imap"],
            env={**env, "PYTHONPATH": path},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            ["/usr/sbin/dovecot", "-F", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ),
    ]
    try:
        wait_port(imaps_port)
        wait_port(dovecot_port)
        sides = {
            "mss": (imaps_port, reader.address, reader_item.password),
            "dovecot": (dovecot_port, reader.address, DOVECOT_PASSWORD),
        }
        times: dict[str, list[float]] = {"mss": [], "dovecot": []}
        for repetition in range(args.repetitions):
            for name in ("mss", "dovecot") if repetition % 2 == 0 else ("dovecot", "mss"):
                port, user, password = sides[name]
                times[name].append(mbsync_sync(root, port, user, password, certs.tls_certificate))
                print(f"  full sync {name}: {times[name][-1]:.2f} s", flush=True)
        ratios = [m / d for m, d in zip(times["mss"], times["dovecot"], strict=True)]

        def to_mss(number: int) -> None:
            submit(rt, sender, reader.address, args.messages + 1000 + number, attachment)

        def to_dovecot(number: int) -> None:
            tmp = root / "dovecot" / "maildir" / "tmp" / f"idle-{number}"
            tmp.write_bytes(sync.render(rt, reader, state.items[0].item_id, "decrypted").data)
            os.chown(tmp, nobody.pw_uid, nobody.pw_gid)
            tmp.rename(root / "dovecot" / "maildir" / "new" / f"idle-{number}")

        idle = {
            "mss": idle_latency(
                imaps_port, reader.address, reader_item.password, str(certs.ca_certificate), to_mss, args.idle_messages
            ),
            "dovecot": idle_latency(
                dovecot_port,
                reader.address,
                DOVECOT_PASSWORD,
                str(certs.ca_certificate),
                to_dovecot,
                args.idle_messages,
            ),
        }
    finally:
        for server in servers:
            server.terminate()
            server.wait(30)
        rt.close()

    print()
    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}")
    print(f"mailbox: {args.messages} messages, {args.repetitions} interleaved repetitions (min / median / max)")
    print(
        f"full sync (mbsync, s)   mss {summary(times['mss'])}   dovecot {summary(times['dovecot'])}"
        f"   ratio mss/dovecot {summary(ratios)}"
    )
    print(f"  mss per message: {statistics.median(times['mss']) / args.messages * 1000:.1f} ms")
    print(
        f"IDLE, {IDLE_CLIENTS} clients, seconds until all saw a new message:"
        f"   mss {summary(idle['mss'])}   dovecot {summary(idle['dovecot'])}"
    )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
