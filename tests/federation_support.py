"""Two (or more) mss operators on loopback, each with its own data folder, database, CA and
domain, exchanging mail over mutual TLS.

``build_operator`` makes what an operator has after ``mss pki init``, a directory import (the
same national extract everywhere) and a few ``mss account create``; ``link`` writes each
one's peer CA file and puts the other's domain on its trust list with a route to its MX
port and its certificate publication; ``linked_operators`` does both for operators A and B. ``Services`` runs the real doors of one operator in
a thread: submission relay, MX listener, delivery worker and the plain-HTTP publication
(CRL, CA, S/MIME certificates). ``OperatorProcess`` runs ``mss serve relay`` instead, for
the tests that kill it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from mss import trust
from mss.crypto.pki import PkiPaths
from mss.db import session_scope
from mss.models import MailboxItem, Message
from mss.outbound.worker import DeliveryWorker
from mss.relay.mx import start_mx_listener
from mss.relay.server import start_listener
from mss.runtime import Runtime
from mss.web.server import serve_publication

from installation import Installation, install
from server_process import free_port, start_server
from task_thread import TaskThread
from web_support import Person, create_person

A_DOMAIN, B_DOMAIN = "chu-demo.mss.test", "medecin.mss.test"
A_USERS = ("marc.robert@chu-demo.mss.test", "cedric.petit@chu-demo.mss.test")
B_USERS = ("joel.michel@medecin.mss.test", "eloise.fournier@medecin.mss.test")
B_NO_ACCOUNT = "lea.bernard@medecin.mss.test"  # active in the directory, no mailbox at B
# Fast queue timings: the tests check behaviour, not patience.
FAST = {
    "MSS_RETRY_MIN": "0.3s",
    "MSS_RETRY_MAX": "1s",
    "MSS_QUEUE_POLL": "0.2s",
    "MSS_QUEUE_LEASE": "3s",
    "MSS_QUEUE_REPORT": "1s",
    "MSS_DELIVERY_TIMEOUT": "10s",
    "MSS_CERT_FETCH_TIMEOUT": "3s",
    "MSS_DELIVERY_CONCURRENCY": "4",
}


@dataclass
class Operator(Installation):
    """One operator of the trust space: its settings, runtime, people and ports."""

    name: str
    domain: str
    smtp_port: int
    mx_port: int
    pki_port: int
    people: dict[str, Person] = field(default_factory=dict)
    services: Services | None = None
    extra: list[Any] = field(default_factory=list)

    @property
    def certificates_url(self) -> str:
        return f"http://127.0.0.1:{self.pki_port}/pki/certificates/"

    def peer_context(self, *, certificate: bool = True) -> ssl.SSLContext:
        """What another operator's server uses towards an MX: the peers' CAs, and (unless
        ``certificate`` is False) this operator's TLS certificate as client certificate."""
        context = ssl.create_default_context(cafile=str(self.settings.federation.peer_ca_file))
        if certificate:
            paths = PkiPaths.from_settings(self.settings)
            context.load_cert_chain(paths.tls_certificate, paths.tls_key)
        return context

    def submit(
        self,
        sender: str,
        recipients: list[str] | tuple[str, ...],
        raw: bytes,
        *,
        rcpt_options: tuple[str, ...] = (),
        mail_options: tuple[str, ...] = (),
    ) -> str:
        """Send through this operator's submission relay; return the queue id of the 250."""
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30) as client:
            client.starttls(context=self.client_context())
            client.login(sender, self.people[sender].password)
            client.mail(sender, list(mail_options))
            for recipient in recipients:
                code, text = client.rcpt(recipient, list(rcpt_options))
                assert code == 250, (recipient, code, text)
            code, text = client.data(raw)
            assert code == 250, (code, text)
            return text.decode().rsplit(" ", 1)[1]

    def count(self, model: Any, *where: Any) -> int:
        with session_scope(self.rt.engine) as session:
            return int(session.execute(select(func.count()).select_from(model).where(*where)).scalar_one())

    def inbox(self, owner: str) -> list[Message]:
        with session_scope(self.rt.engine) as session:
            return list(
                session.execute(
                    select(Message)
                    .join(MailboxItem, MailboxItem.message_id == Message.id)
                    .where(MailboxItem.owner == owner, MailboxItem.folder == "inbox")
                    .order_by(Message.id)
                ).scalars()
            )

    def close(self) -> None:
        if self.services is not None:
            self.services.stop()
        for item in self.extra:
            item.stop()
        super().close()


def build_operator(root: Path, name: str, domain: str, users: tuple[str, ...], **env_overrides: str) -> Operator:
    """PKI, the national directory extract and accounts for ``users``; nothing runs yet."""
    smtp_port, mx_port, pki_port = free_port(), free_port(), free_port()
    env = {
        **FAST,
        "MSS_DOMAINS": domain,
        "MSS_SMTP_PORT": str(smtp_port),
        "MSS_MX_PORT": str(mx_port),
        "MSS_PKI_HTTP_PORT": str(pki_port),
        "MSS_CRL_URL": f"http://127.0.0.1:{pki_port}/pki/ca.crl",
        "MSS_PEER_CA_FILE": str(root / "peers-ca.pem"),
        **env_overrides,
    }
    operator = install(
        Operator, root, env, name=name, domain=domain, smtp_port=smtp_port, mx_port=mx_port, pki_port=pki_port
    )
    operator.people.update(
        {address: create_person(operator.rt, address, "pw-" + secrets.token_urlsafe(12)) for address in users}
    )
    return operator


def write_peer_cas(operator: Operator, *cas: Path) -> None:
    """The operator's MSS_PEER_CA_FILE: its own CA and the given ones."""
    pems = [operator.ca_file.read_bytes(), *(path.read_bytes() for path in cas)]
    operator.settings.federation.peer_ca_file.write_bytes(b"".join(pems))


def trust_peer(operator: Operator, domain: str, host_port: str, certificates_url: str = "") -> None:
    with session_scope(operator.rt.engine) as session:
        if not trust.is_trusted(session, domain):
            trust.add(session, operator.settings, domain, actor="test")
        trust.set_route(session, operator.settings, domain, host_port, certificates_url=certificates_url, actor="test")


def link(a: Operator, b: Operator, *, a_publishes: bool = True, b_publishes: bool = True) -> None:
    """Each trusts the other's CA and domain, with a route to its MX (and, when it
    publishes, to its certificate publication)."""
    write_peer_cas(a, b.ca_file)
    write_peer_cas(b, a.ca_file)
    trust_peer(a, b.domain, f"127.0.0.1:{b.mx_port}", b.certificates_url if b_publishes else "")
    trust_peer(b, a.domain, f"127.0.0.1:{a.mx_port}", a.certificates_url if a_publishes else "")


@contextmanager
def linked_operators(
    root: Path, *, a_env: dict[str, str] | None = None, a_publishes: bool = True, b_publishes: bool = True
) -> Iterator[tuple[Operator, Operator]]:
    """Operator A (``A_DOMAIN``, ``A_USERS``, with ``a_env`` over its settings) and operator B
    under ``root``, linked; nothing runs yet. Both are closed on the way out."""
    a = build_operator(root / "a", "a", A_DOMAIN, A_USERS, **(a_env or {}))
    b = build_operator(root / "b", "b", B_DOMAIN, B_USERS)
    try:
        link(a, b, a_publishes=a_publishes, b_publishes=b_publishes)
        yield a, b
    finally:
        a.close()
        b.close()


# -- running the doors -------------------------------------------------------------------------


class Services:
    """Submission relay, MX, delivery worker and publication of one operator, in a thread."""

    def __init__(
        self, operator: Operator, *, worker: bool = True, mx_handler: Any = None, rt: Runtime | None = None
    ) -> None:
        self.operator = operator
        self.rt = rt or operator.rt
        self.worker = worker
        self.mx_handler = mx_handler
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> Services:
        self._started.clear()
        self._thread = threading.Thread(target=self._run, name=f"mss-{self.operator.name}", daemon=True)
        self._thread.start()
        if not self._started.wait(60) or self._error is not None:
            raise RuntimeError(f"operator {self.operator.name} did not start") from self._error
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._error = exc
            self._started.set()

    async def _serve(self) -> None:
        op, rt = self.operator, self.rt
        self._loop = asyncio.get_running_loop()
        self._main = asyncio.current_task()
        listeners = [
            await start_listener(rt, host="127.0.0.1", port=op.smtp_port),
            await start_mx_listener(rt, host="127.0.0.1", port=op.mx_port, handler=self.mx_handler),
        ]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", op.pki_port))
        published = asyncio.Event()
        tasks = [asyncio.ensure_future(serve_publication(rt, sock=sock, started=published))]
        ready = asyncio.Event()
        if self.worker:
            tasks.append(asyncio.ensure_future(DeliveryWorker(rt, name=f"test-{op.name}").run(ready=ready)))
        else:
            ready.set()
        waiters = {asyncio.ensure_future(published.wait()), asyncio.ensure_future(ready.wait())}
        while waiters:
            done, _pending = await asyncio.wait({*waiters, *tasks}, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if task in done:
                    await task  # a part that ended at start-up: raise its error to start()
            waiters -= done
        self._started.set()
        try:
            await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            pass
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for listener in listeners:
                await listener.aclose(2.0)
            sock.close()

    def stop(self) -> None:
        if self._loop is not None and self._main is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._main.cancel)
            self._thread.join(60)
        self._thread = None


def start(*operators: Operator, **options: Any) -> None:
    for operator in operators:
        operator.services = Services(operator, **options).start()


def wait_for(predicate: Callable[[], Any], *, timeout: float = 30, what: str = "the condition") -> Any:
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class OperatorProcess:
    """``mss serve relay`` (submission, MX, delivery worker) for one operator, as a process."""

    def __init__(self, operator: Operator, log: Path) -> None:
        self.operator = operator
        self.log = log
        self.env = {**os.environ, **operator.env, "MSS_SMTP_HOST": "127.0.0.1", "MSS_MX_HOST": "127.0.0.1"}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        mss = Path(sys.executable).with_name("mss")
        ports = (self.operator.smtp_port, self.operator.mx_port)
        self.process = start_server([str(mss), "serve", "relay"], self.env, self.log, *ports)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return 0 if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


class CuttingProxy:
    """A TCP relay between one operator's delivery worker and another's MX, which calls
    ``cut`` at one precise point of the first large transfer, then drops that connection.

    TLS hides the SMTP dialogue, but not its shape: once more than ``threshold`` bytes went
    from the client to the server on one connection, the client is uploading a large
    message's DATA; the first bytes the server sends after that are its reply to the end of
    DATA. ``at="upload"`` cuts during the upload (the receiving side is killed before it can
    answer); ``at="reply"`` cuts when the reply arrives, before the client reads it (the
    receiving side committed; the sending side never learns it).
    """

    def __init__(self, upstream_port: int, *, threshold: int, at: str, cut: Callable[[], None], port: int) -> None:
        assert at in {"upload", "reply"}
        self.upstream_port = upstream_port
        self.threshold = threshold
        self.at = at
        self.cut = cut
        self.fired = threading.Event()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.port = port
        self._closed = False
        self._taken = False

    def start(self) -> CuttingProxy:
        self.sock.listen(16)
        threading.Thread(target=self._accept, name="proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        self._closed = True
        self.sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _address = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _fire(self) -> bool:
        with _PROXY_LOCK:
            if self._taken:
                return False
            self._taken = True
        self.cut()
        self.fired.set()  # only once the cut is done
        return True

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=30)
        except OSError:
            client.close()
            return
        sent = [0]
        done = threading.Event()

        def close() -> None:
            done.set()
            for s in (client, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

        def pump(source: socket.socket, target: socket.socket, direction: str) -> None:
            """Copy ``source`` to ``target``; in the direction that is cut, the first bytes
            past the threshold fire the cut instead of passing on."""
            try:
                while data := source.recv(65536):
                    if direction == "upload":
                        sent[0] += len(data)
                    if self.at == direction and sent[0] > self.threshold and self._fire():
                        break
                    target.sendall(data)
            except OSError:
                pass
            close()

        threading.Thread(target=pump, args=(client, upstream, "upload"), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client, "reply"), daemon=True).start()
        done.wait()


_PROXY_LOCK = threading.Lock()


class WorkerThread(TaskThread):
    """One more delivery worker of an operator (its own event loop, its own lease name)."""

    def __init__(self, rt: Runtime, name: str) -> None:
        super().__init__(lambda ready: DeliveryWorker(rt, name=name).run(ready=ready), name=name)
