"""Helpers for the web tests: accounts with their TOTP secret, messages submitted through the
real pipeline, and a browser-like client that logs in through the real pages.

Nothing here stands in for mss code: accounts are created by ``mss.accounts``, messages go
through ``mss.pipeline.submit``, logins through the app's own login pages.
"""

from __future__ import annotations

import asyncio
import email.policy
import email.utils
import io
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pyotp
import pytest
from litestar.testing import TestClient
from pypdf import PdfWriter

from mss import accounts, pipeline
from mss.db import session_scope
from mss.pipeline import Accepted, RecipientRequest, Submission
from mss.relay import RelayServer

from relay_support import Stack, build_stack

DOCTOR = "marc.robert@chu-demo.mss.test"  # Médecin, CHU de Démo
GP = "eloise.fournier@medecin.mss.test"  # Médecin, Cabinet médical des Tilleuls
NURSE = "matheo.moreau@infirmier.mss.test"  # Infirmier, Cabinet infirmier Seine-Aval
PASSWORD = "correct horse battery staple"
BASE_URL = "https://mss.test"
SAMPLES = Path(__file__).resolve().parent / "samples"
CDA_SAMPLE = SAMPLES / "cda" / "CSE-CS8_2024.01.xml"
_CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


@dataclass
class Person:
    """An account of the test: its address, password and authenticator."""

    address: str
    password: str
    secret: str
    last_step: int = field(default=0)

    def code(self) -> str:
        """A TOTP code not used yet (the server refuses a step it has seen, or an earlier one)
        that the server will still accept when it checks it: the previous step only while more
        than 10 s of the current one remain (it leaves the drift window when the step ends).
        When every such step is used, waits for the next step."""
        while True:
            now = time.time()
            current = int(now // 30)
            steps = (current - 1, current, current + 1) if 30 - now % 30 > 10 else (current, current + 1)
            for step in steps:
                if step > self.last_step:
                    self.last_step = step
                    return pyotp.TOTP(self.secret).at(step * 30)
            time.sleep(30 - now % 30)


def create_person(rt, address: str, password: str = PASSWORD) -> Person:
    with session_scope(rt.engine) as session:
        enrolment = accounts.create_account(session, rt.settings, rt.master_key, address, password, actor="test")
    secret = parse_qs(urlparse(enrolment.otpauth_uri).query)["secret"][0]
    return Person(address=address, password=password, secret=secret)


def unlocked(rt, person: Person) -> accounts.UnlockedAccount:
    return accounts.authenticate(rt.engine, rt.settings, person.address, person.password, accounts.Origin("cli"))


def build_message(
    sender: str,
    to: list[str],
    subject: str,
    body: str,
    attachments: list[tuple[str, str, bytes]] = (),
    *,
    read_receipt: bool = False,
    html: str | None = None,
) -> bytes:
    """An RFC 5322 message as a mail client would write it."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Date"] = email.utils.format_datetime(email.utils.localtime())
    if read_receipt:
        message["Disposition-Notification-To"] = sender
    message.set_content(body)
    if html is not None:
        message.add_alternative(html, subtype="html")
    for filename, content_type, data in attachments:
        maintype, subtype = content_type.split("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return message.as_bytes(policy=email.policy.SMTP)


def submit(rt, person: Person, to: list[str], subject: str, body: str, attachments=(), **options) -> Accepted:
    """Submit a message through the real pipeline, as the relay would."""
    raw = build_message(person.address, to, subject, body, list(attachments), **options)
    return pipeline.submit(
        rt,
        Submission(
            sender=unlocked(rt, person), recipients=tuple(RecipientRequest(a) for a in to), raw=raw, channel="smtp"
        ),
    )


def csrf(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "no CSRF token on the page"
    return found.group(1)


def login(client, person: Person) -> None:
    """Log in through the pages (enrolling the authenticator on the first login)."""
    page = client.get("/login")
    response = client.post(
        "/login",
        data={"address": person.address, "password": person.password, "csrf_token": csrf(page.text)},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    step = response.headers["location"]
    page = client.get(step)
    response = client.post(step, data={"code": person.code(), "csrf_token": csrf(page.text)}, follow_redirects=False)
    assert response.status_code in {200, 303}, response.text


def compose_page(client, person: Person):
    """Log ``person`` in on ``client``; the compose page."""
    login(client, person)
    return client.get("/compose")


def post_compose(client, form, fields: dict[str, str], *, attachments=(), **options):
    """Send the compose form with ``fields``, the files ``attachments`` (each a filename, its
    content and its content type) and the CSRF token of the page ``form``; the response."""
    if attachments:
        options["files"] = [("attachments", attachment) for attachment in attachments]
    return client.post("/compose", data={"csrf_token": csrf(form.text), **fields}, **options)


def sent_queue_id(response) -> str:
    """The queue id of the message a compose form sent, from the redirect to its page."""
    return response.headers["location"].split("/")[2].split("?")[0]


def totp_page(client, person: Person):
    """Send the address and password of an enrolled account through the login page; the
    second-factor page that follows."""
    page = client.get("/login")
    client.post("/login", data={"address": person.address, "password": person.password, "csrf_token": csrf(page.text)})
    return client.get("/login/totp")


def pdf_bytes(text: str = "Compte rendu") -> bytes:
    """A small valid one-page PDF."""
    writer = PdfWriter()
    writer.add_blank_page(width=200, height=200)
    writer.add_metadata({"/Title": text})
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# -- a real server on loopback -------------------------------------------------------------


class WebServer:
    """``serve_web`` (uvicorn over HTTPS) in a thread of its own, on a free loopback port."""

    def __init__(self, rt) -> None:
        self.rt = rt
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"https://localhost:{self.port}"
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Future | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mss-web", daemon=True)

    def _run(self) -> None:
        from mss.web import serve_web

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            started = asyncio.Event()
            self._task = asyncio.ensure_future(serve_web(self.rt, sock=self.sock, started=started))
            waiter = asyncio.ensure_future(started.wait())
            await asyncio.wait({self._task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            self._started.set()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._error = exc
            self._started.set()

    def start(self) -> WebServer:
        self._thread.start()
        self._started.wait(30)
        if self._error is not None or self._task is None or self._task.done():
            raise RuntimeError(f"the web server did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(30)
        self.sock.close()


@contextmanager
def serving(root: Path, **environment: str) -> Iterator[tuple[Stack, WebServer]]:
    """A stack (``relay_support.build_stack``) with its relay and its HTTPS web server on
    loopback, both stopped and the stack removed after the block."""
    stack = build_stack(root, **environment)
    stack.relay = RelayServer(stack.rt).start()
    web = WebServer(stack.rt).start()
    try:
        yield stack, web
    finally:
        web.stop()
        stack.close()


# -- fixtures (imported by the web test modules) -------------------------------------------


@pytest.fixture
def app(rt, directory_loaded):
    from mss.web import create_app

    return create_app(rt)


def client_maker(app):
    """Yields a maker of browser-like clients of ``app`` (one cookie jar each), over HTTPS,
    and closes them afterwards."""
    made = []

    def make() -> TestClient:
        client = TestClient(app, base_url=BASE_URL)
        client.__enter__()
        made.append(client)
        return client

    yield make
    for client in reversed(made):  # last in, first out: the clients share the app's portal
        client.__exit__(None, None, None)


@pytest.fixture
def clients(app):
    """Makes browser-like clients of the app (one cookie jar each), over HTTPS."""
    yield from client_maker(app)


@pytest.fixture
def doctor(rt, directory_loaded) -> Person:
    return create_person(rt, DOCTOR)


@pytest.fixture
def gp(rt, directory_loaded) -> Person:
    return create_person(rt, GP)
