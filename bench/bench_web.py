"""Web inbox and API latency on a 10,000-message mailbox, against a trivial route of the same app.

The web server runs as its own process (``serve_web``: uvicorn over HTTPS with the
development TLS certificate, the whole middleware stack), on a fresh data folder with the
demo directory and accounts. One real message is submitted through the pipeline (signed
with the sender's key, encrypted to the reader); the mailbox is then filled to 10,000
messages by copying its CMS under distinct sealed metadata (subjects, senders, documents,
patient INS, dates over two years). A listing never decrypts the CMS, so the copies cost
the listing what real messages would; opening one decrypts and verifies it for real.

One httpx client with keep-alive logs in through the pages (password, TOTP enrolment) and
through the API (bearer token), then times each case: the trivial ``/healthz`` route, the
inbox page (first and a deep page), filtered pages (subject words, patient INS, sender
name), the API listing, and opening a message. The first filtered request, which writes the
search tokens of all 10,000 rows, is reported on its own.

Usage::

    .venv/bin/python bench/bench_web.py            # 10,000 messages, 200 requests per case
    .venv/bin/python bench/bench_web.py --quick    # 2,000 messages, 50 requests per case

Settings are the defaults (argon2id moderate, RSA 3072 user keys, SQLite WAL with
synchronous=FULL in a temporary folder) unless ``MSS_DATABASE_URL`` names another database.
"""

from __future__ import annotations

import argparse
import asyncio
import email.policy
import email.utils
import os
import platform
import random
import re
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pyotp

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(PROJECT_ROOT), str(PROJECT_ROOT / "tests")]

from sqlalchemy import insert, select

from directory.models import DirectoryEntry
from mss import accounts, pipeline
from mss.db import session_scope, utcnow
from mss.demo import DEMO_ADDRESSES, load_demo
from mss.models import Delivery, MailboxItem, Message
from mss.pipeline import RecipientRequest, Submission
from mss.runtime import open_runtime
from mss.settings import Settings
from mss.store import MessageMeta

from _support import bench_env, percentile
from server_process import free_port

READER, SENDER = DEMO_ADDRESSES[0], DEMO_ADDRESSES[1]
SUBJECTS = (
    "Compte rendu de consultation de cardiologie",
    "Lettre de liaison de sortie",
    "Résultats de biologie",
    "Demande d'avis dermatologique",
    "Compte rendu opératoire",
    "Ordonnance de sortie",
    "Bilan orthophonique",
    "Courrier d'adressage",
    "Compte rendu d'imagerie",
    "Synthèse médicale",
    "Certificat de santé",
)
PATIENTS = ("Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy", "Moreau")
CDA_TYPES = (
    ("11490-0", "Lettre de liaison à la sortie d'un établissement de soins"),
    ("11502-2", "CR d'examens biologiques"),
    ("18748-4", "CR d'imagerie médicale"),
)


def serve() -> None:
    """Child process: the web server on MSS_WEB_PORT until terminated."""
    from mss.web import serve_web

    rt = open_runtime(Settings.from_env())

    async def main() -> None:
        task = asyncio.ensure_future(serve_web(rt))
        loop = asyncio.get_running_loop()
        import signal

        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(main())


def fill(rt, reader: accounts.UnlockedAccount, sender: accounts.UnlockedAccount, count: int) -> tuple[str, str]:
    """One real message, then ``count - 1`` copies of its CMS; returns (real queue id, one INS)."""
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"], message["To"], message["Subject"] = sender.address, reader.address, "Message de référence"
    message["Date"] = email.utils.format_datetime(email.utils.localtime())
    message.set_content("Bonjour,\nmessage de référence du banc d'essai.\n")
    accepted = pipeline.submit(
        rt,
        Submission(
            sender=sender, recipients=(RecipientRequest(reader.address),), raw=message.as_bytes(), channel="smtp"
        ),
    )
    with session_scope(rt.engine) as session:
        original = session.execute(select(Message).where(Message.queue_id == accepted.queue_id)).scalar_one()
        cms, sha = original.cms, original.cms_sha256
        senders = list(session.execute(select(DirectoryEntry.address).limit(40)).scalars())
    rng = random.Random(2026)
    now = utcnow()
    some_ins = ""
    chunk = 1000
    for start in range(1, count, chunk):
        messages, metas = [], []
        for n in range(start, min(count, start + chunk)):
            documents: list[dict[str, object]] = [
                {"filename": "document.pdf", "kind": "pdf", "size": 48_000, "sha256": ""}
            ]
            headers: dict[str, str] = {}
            if n % 3 == 0:
                code, label = CDA_TYPES[n % len(CDA_TYPES)]
                ins = f"{rng.randrange(1, 3)}{rng.randrange(10**12, 10**13)}{rng.randrange(10, 98):02d}"
                some_ins = some_ins or ins
                documents.append(
                    {
                        "filename": "document.xml",
                        "kind": "cda",
                        "size": 30_000,
                        "sha256": "",
                        "cda": [
                            {"title": label, "type_code": code, "type_label": label, "ins": ins, "effective_time": ""}
                        ],
                    }
                )
                headers = {"X-MSS-CODECDA": code, "X-MSS-INS": "N"}
            meta = MessageMeta(
                sender=rng.choice(senders),
                recipients=[reader.address],
                subject=f"{rng.choice(SUBJECTS)} - {rng.choice(PATIENTS)} {n}",
                date=email.utils.format_datetime(now),
                message_id=f"<bench{n}.{secrets.token_hex(4)}@mss.test>",
                headers=headers,
                documents=documents,
            )
            metas.append(meta)
            messages.append(
                {
                    "queue_id": secrets.token_hex(10).upper(),
                    "message_id": meta.message_id,
                    "sender": meta.sender,
                    "kind": "signed",
                    "size": len(cms),
                    "cms": cms,
                    "cms_sha256": sha,
                    "meta_sealed": meta.seal(rt.master_key),
                    "submitted_at": now - timedelta(minutes=n * 100),
                }
            )
        with session_scope(rt.engine) as session:
            session.execute(insert(Message), messages)
            ids = dict(
                session.execute(
                    select(Message.queue_id, Message.id).where(Message.queue_id.in_([m["queue_id"] for m in messages]))
                ).all()
            )
            session.execute(
                insert(MailboxItem),
                [
                    {
                        "message_id": ids[m["queue_id"]],
                        "owner": reader.address,
                        "folder": "inbox",
                        "unread": rng.random() < 0.2,
                        "created_at": m["submitted_at"],
                    }
                    for m in messages
                ],
            )
            session.execute(
                insert(Delivery),
                [
                    {
                        "message_id": ids[m["queue_id"]],
                        "recipient": reader.address,
                        "status": "delivered",
                        "reason": "",
                        "notify": "FAILURE",
                        "mdn_requested": False,
                        "at": m["submitted_at"],
                    }
                    for m in messages
                ],
            )
    return accepted.queue_id, some_ins


def timed(client: httpx.Client, url: str, rounds: int, headers: dict[str, str] | None = None) -> list[float]:
    client.get(url, headers=headers).raise_for_status()  # warm-up
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        response = client.get(url, headers=headers)
        samples.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
    return samples


def web_login(client: httpx.Client, address: str, password: str, secret: str) -> tuple[int, str]:
    """Pages login with TOTP enrolment; returns the next unused TOTP step and the CSRF token."""
    token = re.search(r'name="csrf_token" value="(\w+)"', client.get("/login").text).group(1)
    client.post("/login", data={"address": address, "password": password, "csrf_token": token})
    page = client.get("/login/enrol")
    token = re.search(r'name="csrf_token" value="(\w+)"', page.text).group(1)
    step = int(time.time() // 30) - 1
    response = client.post("/login/enrol", data={"code": pyotp.TOTP(secret).at(step * 30), "csrf_token": token})
    response.raise_for_status()
    return step + 1, token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="2,000 messages, 50 requests per case")
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    count = args.messages or (2_000 if args.quick else 10_000)
    rounds = args.rounds or (50 if args.quick else 200)

    with tempfile.TemporaryDirectory(prefix="mss-bench-web-") as folder:
        root = Path(folder)
        port = free_port()
        env = bench_env(root, MSS_WEB_PORT=str(port))
        settings = Settings.from_env(env)
        rt = open_runtime(settings)
        demo = {d.address: d for d in load_demo(rt, actor="bench")}
        reader = accounts.authenticate(rt.engine, settings, READER, demo[READER].password, accounts.Origin("cli"))
        sender = accounts.authenticate(rt.engine, settings, SENDER, demo[SENDER].password, accounts.Origin("cli"))
        started = time.perf_counter()
        queue_id, ins = fill(rt, reader, sender, count)
        print(f"filled {count} messages in {time.perf_counter() - started:.1f} s", flush=True)
        rt.close()

        log = (root / "server.log").open("wb")
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve"], env=env, cwd=PROJECT_ROOT, stdout=log, stderr=log
        )
        try:
            ca = str(root / "certs" / "ca.pem")
            with httpx.Client(base_url=f"https://localhost:{port}", verify=ca, timeout=120) as client:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        client.get("/healthz").raise_for_status()
                        break
                    except httpx.TransportError:
                        if time.monotonic() > deadline or server.poll() is not None:
                            raise SystemExit("the web server did not start; see its log") from None
                        time.sleep(0.2)
                secret = parse_qs(urlparse(demo[READER].enrolment.otpauth_uri).query)["secret"][0]
                step, _token = web_login(client, READER, demo[READER].password, secret)
                api = client.post(
                    "/api/v1/sessions",
                    json={
                        "address": READER,
                        "password": demo[READER].password,
                        "code": pyotp.TOTP(secret).at(step * 30),
                    },
                )
                api.raise_for_status()
                bearer = {"authorization": "Bearer " + api.json()["token"]}

                start = time.perf_counter()
                client.get("/inbox", params={"subject": "cardiologie"}).raise_for_status()
                first_filtered = (time.perf_counter() - start) * 1000

                cases = [
                    ("trivial route GET /healthz", "/healthz", None),
                    ("inbox page 1 (25 rows)", "/inbox", None),
                    ("inbox page 200", "/inbox?page=200", None),
                    ("inbox, subject words", "/inbox?subject=compte+cardio", None),
                    ("inbox, patient INS", f"/inbox?ins={ins}", None),
                    ("inbox, sender name", "/inbox?sender=fournier", None),
                    ("API list page 1", "/api/v1/messages?per_page=25", bearer),
                    ("API list, subject word", "/api/v1/messages?subject=biologie", bearer),
                    ("API read one (decrypt + verify)", f"/api/v1/messages/{queue_id}", bearer),
                ]
                results = []
                for label, url, headers in cases:
                    samples = timed(client, url, rounds, headers)
                    results.append((label, percentile(samples, 50), percentile(samples, 95)))
                    print(f"{label:34s} p50 {results[-1][1]:7.1f} ms   p95 {results[-1][2]:7.1f} ms", flush=True)
        finally:
            server.terminate()
            server.wait(30)
            log.close()

    print()
    print(
        f"{count} messages in the inbox, {rounds} requests per case, one keep-alive HTTPS client; "
        f"{os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"first filtered request (writes the search tokens of {count} rows): {first_filtered:.0f} ms")
    print()
    print("| case | p50 (ms) | p95 (ms) |")
    print("|---|---:|---:|")
    for label, p50, p95 in results:
        print(f"| {label} | {p50:.1f} | {p95:.1f} |")


if __name__ == "__main__":
    main()
