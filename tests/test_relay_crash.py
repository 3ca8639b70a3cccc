"""A relay process killed with SIGKILL under load loses no acknowledged message, half-stores none.

500 messages from 20 concurrent clients go to ``python -m mss.relay`` (the relay process
``mss serve relay`` runs); the process is killed mid-way and restarted, and the clients
reconnect and go on. Then: every message that got ``250`` is stored under its queue id and
decrypts with a recipient's key to what was sent; every stored message has all its mailbox
rows, deliveries and audit events; the audit chain verifies.
"""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mss import accounts, audit
from mss.crypto import keys, smime
from mss.db import session_scope
from mss.documents import workers as document_workers
from mss.models import AuditEvent, Delivery, MailboxItem, Message

from relay_support import RECIPIENTS, SENDER, Stack, build_stack, message, pdf_bytes
from server_process import RELAY_ALONE, children, free_port, processes, sockets_of, start_server, tcp_sockets

CLIENTS = 20
MESSAGES = 500
KILL_AFTER = 200  # acknowledged messages before the SIGKILL
PROJECT_ROOT = Path(__file__).resolve().parent.parent


# How a relay process is started: alone, or as ``mss serve relay`` starts it (with its
# outbound queue and housekeeping; no MX door, no metrics port).
RELAY_COMMANDS = {
    "python -m mss.relay": ([sys.executable, "-m", "mss.relay"], {}),
    "mss serve relay": ([str(Path(sys.executable).with_name("mss")), "serve", "relay"], RELAY_ALONE),
}


# The relays and client loads of the running test (the ``stack`` fixture ends them).
_STARTED: list[RelayProcess] = []
_LOADS: list[Load] = []


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """The test's installation. However the test ends (a failure, Ctrl-C), its client loads
    stop, then the relays it started are killed, and only then is the installation closed:
    a relay would otherwise go on listening and holding its database, and a client retrying
    its port would fail in a later test."""
    built = build_stack(tmp_path)
    try:
        yield built
    finally:
        for load in _LOADS:
            load.stop()
        _LOADS.clear()
        while _STARTED:
            _STARTED.pop().close()
        built.close()


class RelayProcess:
    """``python -m mss.relay`` (or another of RELAY_COMMANDS) with the stack's environment
    on a fixed port."""

    def __init__(self, stack: Stack, port: int, log: Path, command: str = "python -m mss.relay") -> None:
        self.command, extra = RELAY_COMMANDS[command]
        self.env = {**os.environ, **stack.env, **extra, "MSS_SMTP_HOST": "127.0.0.1", "MSS_SMTP_PORT": str(port)}
        self.port = port
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.command, env=self.env, cwd=PROJECT_ROOT, stdout=out, stderr=out)
        if self not in _STARTED:
            _STARTED.append(self)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(100).startswith(b"220 "):
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the relay did not start: " + self.log.read_text()[-3000:])

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def close(self) -> None:
        """Killed if still running (``stop`` is the clean way a test checks)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Load:
    """Client threads sending numbered messages; what was acknowledged, under which id.
    They run as daemons, and end at their next step once stopped (``stop``)."""

    def __init__(self, stack: Stack, port: int, total: int = MESSAGES, first: int = 1) -> None:
        _LOADS.append(self)
        self.stopped = False
        self.stack = stack
        self.port = port
        self.total = total
        self.first = first
        self.lock = threading.Lock()
        self.next = 0
        self.acked: dict[str, str] = {}  # queue id -> Message-ID sent
        self.unacked: list[str] = []
        self.acked_count = threading.Condition(self.lock)

    def stop(self) -> None:
        """No more messages, nor connections."""
        self.stopped = True

    def take(self) -> int | None:
        with self.lock:
            if self.stopped or self.next >= self.total:
                return None
            self.next += 1
            return self.first + self.next - 1

    def _session(self) -> smtplib.SMTP | None:
        """A session logged in, or None once stopped."""
        deadline = time.monotonic() + 60
        while not self.stopped:
            try:
                client = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
                client.starttls(context=self.stack.client_context())
                client.login(SENDER, self.stack.passwords[SENDER])
                return client
            except (OSError, smtplib.SMTPException):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        return None

    def run(self) -> None:
        client = self._session()
        while client is not None and (number := self.take()) is not None:
            message_id = f"<crash-{number}@client.test>"
            raw = message(SENDER, RECIPIENTS, subject=f"message {number}", message_id=message_id)
            try:
                client.mail(SENDER)
                client.rcpt(RECIPIENTS[0])
                client.rcpt(RECIPIENTS[1])
                code, text = client.data(raw)
            except (OSError, smtplib.SMTPException):
                code, text = 0, b""
            with self.lock:
                if code == 250:
                    self.acked[text.decode().rsplit(" ", 1)[1]] = message_id
                    self.acked_count.notify_all()
                else:
                    self.unacked.append(message_id)
            if code != 250:
                try:
                    client.close()
                finally:
                    client = self._session()
        if client is not None:
            client.quit()


def test_sigkill_mid_load_loses_nothing_acknowledged(stack: Stack, tmp_path: Path) -> None:
    relay = RelayProcess(stack, free_port(), tmp_path / "relay.log")
    relay.start()
    load = Load(stack, relay.port)
    threads = [threading.Thread(target=load.run, name=f"client-{i}", daemon=True) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    with load.lock:
        assert load.acked_count.wait_for(lambda: len(load.acked) >= KILL_AFTER, timeout=120)
    relay.kill()
    killed_at = len(load.acked)
    relay.start()
    for thread in threads:
        thread.join(timeout=300)
        assert not thread.is_alive()
    assert relay.stop() == 0

    assert killed_at < MESSAGES and len(load.acked) + len(load.unacked) == MESSAGES
    assert load.unacked, "the kill interrupted no transaction"
    check_store(stack, load.acked)


@pytest.mark.parametrize("command", list(RELAY_COMMANDS))
def test_a_second_stop_signal_does_not_cut_short_the_storing_of_a_message(
    stack: Stack, tmp_path: Path, command: str
) -> None:
    """A supervisor may signal every process of the service, and the process that started
    a submission process signals it too: the second SIGTERM must not end the drain the
    first began. The message is held in its document check (the relay's document workers
    stopped) while both signals arrive; once they go on, it is stored and answered 250."""
    relay = RelayProcess(stack, free_port(), tmp_path / "relay.log", command)
    relay.start()
    assert relay.process is not None
    running = processes()
    fork_servers = [
        p for p in children(relay.process.pid, running) if b"forkserver" in (running[p][1] / "cmdline").read_bytes()
    ]
    document_workers_of_relay = [w for f in fork_servers for w in children(f, running)]
    assert document_workers_of_relay
    client = smtplib.SMTP("127.0.0.1", relay.port, timeout=60)
    client.starttls(context=stack.client_context())
    client.login(SENDER, stack.passwords[SENDER])
    client.mail(SENDER)
    client.rcpt(RECIPIENTS[0])
    client.rcpt(RECIPIENTS[1])
    raw = message(SENDER, RECIPIENTS, [("lettre.pdf", "application/pdf", pdf_bytes())])
    answer: list[tuple[int, bytes]] = []
    try:
        for worker in document_workers_of_relay:
            os.kill(worker, signal.SIGSTOP)
        sending = threading.Thread(target=lambda: answer.append(client.data(raw)), daemon=True)
        sending.start()
        time.sleep(1.0)  # the message is in, waiting for its document check
        relay.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        relay.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
    finally:
        for worker in document_workers_of_relay:
            os.kill(worker, signal.SIGCONT)
    sending.join(timeout=60)
    client.close()
    assert answer and answer[0][0] == 250, (answer, relay.log.read_text()[-2000:])
    assert relay.process.wait(timeout=60) == 0
    check_store(stack, {answer[0][1].decode().rsplit(" ", 1)[1]: str(message_from_bytes(raw)["Message-ID"])})


def test_two_relay_processes_share_one_database(stack: Stack, tmp_path: Path) -> None:
    """Relays hold nothing another needs: two processes, one database, one audit chain."""
    relays, loads, threads = _two_relays_under_load(stack, tmp_path, per_relay=20, sessions=4)
    for thread in threads:
        thread.join(timeout=300)
    for relay in relays:
        assert relay.stop() == 0
    acked = _acked_by_any(loads)
    assert len(acked) == 40 and not any(load.unacked for load in loads)
    check_store(stack, acked)


def test_sigkill_of_one_of_two_relays_loses_nothing_acknowledged(stack: Stack, tmp_path: Path) -> None:
    """One of two relays on one database killed mid-load while the other keeps writing:
    what either acknowledged is stored, the rest whole or not at all, one chain that verifies."""
    relays, loads, threads = _two_relays_under_load(stack, tmp_path, per_relay=80, sessions=8)
    killed = loads[0]
    with killed.lock:
        assert killed.acked_count.wait_for(lambda: len(killed.acked) >= 20, timeout=120)
    relays[0].kill()
    relays[0].start()
    for thread in threads:
        thread.join(timeout=300)
        assert not thread.is_alive()
    for relay in relays:
        assert relay.stop() == 0
    assert killed.unacked, "the kill interrupted no transaction"
    assert all(len(load.acked) + len(load.unacked) == 80 for load in loads)
    check_store(stack, _acked_by_any(loads))


def _listening(pids: list[int], port: int) -> list[int]:
    """Those of ``pids`` that listen on ``port``."""
    listening = tcp_sockets(port, "0A")
    return [pid for pid in pids if sockets_of(pid) & listening]


def _submission_processes(server: subprocess.Popen[bytes], port: int, count: int, *, not_: int = 0) -> list[int]:
    """``server`` and its children that listen on ``port``, once there are ``count`` of them
    (and ``not_`` is not one)."""
    found: list[int] = []
    for _ in range(600):
        found = _listening([server.pid, *children(server.pid, processes())], port)
        if len(found) == count and not_ not in found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"listening on {port}: {found}")


def test_processes_of_one_submission_port_share_it_and_a_killed_one_is_replaced(stack: Stack, tmp_path: Path) -> None:
    """`mss serve relay` with MSS_SMTP_PROCESSES=2: two processes listen on the one port and
    each takes connections; one killed under load is started again while the other serves,
    and nothing acknowledged is lost; SIGTERM stops both."""
    port = free_port()
    env = {
        **os.environ,
        **stack.env,
        **RELAY_ALONE,
        "MSS_SMTP_PORT": str(port),
        "MSS_SMTP_PROCESSES": "2",
        "MSS_MAX_SESSIONS_PER_CLIENT": "64",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    (tmp_path / "metrics").mkdir()
    server = start_server(
        [str(Path(sys.executable).with_name("mss")), "serve", "relay"], env, tmp_path / "serve.log", port
    )
    try:
        first = _submission_processes(server, port, 2)
        (replica,) = [pid for pid in first if pid != server.pid]
        # Each has its own document workers (started before it listens): its share of them.
        running = processes()
        for pid in first:
            fork_servers = [
                p for p in children(pid, running) if b"forkserver" in (running[p][1] / "cmdline").read_bytes()
            ]
            assert [len(children(f, running)) for f in fork_servers] == [max(2, document_workers.WORKERS // 2)], pid
        # The kernel hands each connection to one of them: 24 connections all to one
        # process would happen once in eight million runs.
        connections = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(24)]
        try:
            assert all(connection.recv(100).startswith(b"220 ") for connection in connections)
            established = tcp_sockets(port, "01")
            held = {pid: len(sockets_of(pid) & established) for pid in first}
            assert sum(held.values()) == 24 and min(held.values()) > 0, held
        finally:
            for connection in connections:
                connection.close()

        load = Load(stack, port, total=120)
        threads = [threading.Thread(target=load.run, name=f"client-{i}", daemon=True) for i in range(8)]
        for thread in threads:
            thread.start()
        with load.lock:
            assert load.acked_count.wait_for(lambda: len(load.acked) >= 30, timeout=120)
        # Its open sessions counted in the metrics every process shares, until it died.
        live = tmp_path / "metrics" / f"gauge_livesum_{replica}.db"
        assert live.exists()
        os.kill(replica, signal.SIGKILL)
        _submission_processes(server, port, 2, not_=replica)
        assert not live.exists()
        for thread in threads:
            thread.join(timeout=300)
            assert not thread.is_alive()
        assert len(load.acked) + len(load.unacked) == 120 and len(load.acked) >= 30
        check_store(stack, load.acked)
        said = (tmp_path / "serve.log").read_bytes()
        assert f"(pid {replica}) ended with status -9".encode() in said and b"starting it again" in said

        last = children(server.pid, processes())
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=90) == 0
        assert not [pid for pid in last if Path(f"/proc/{pid}").exists() and _listening([pid], port)]
    finally:
        if server.poll() is None:
            server.kill()


def _two_relays_under_load(
    stack: Stack, folder: Path, *, per_relay: int, sessions: int
) -> tuple[list[RelayProcess], list[Load], list[threading.Thread]]:
    """Two relay processes on the stack's database, each sent ``per_relay`` messages (their
    numbers apart) by ``sessions`` client threads, started."""
    relays = [RelayProcess(stack, free_port(), folder / f"relay-{n}.log") for n in (1, 2)]
    for relay in relays:
        relay.start()
    loads = [Load(stack, relay.port, total=per_relay, first=1 + 1000 * n) for n, relay in enumerate(relays)]
    threads = [threading.Thread(target=load.run, daemon=True) for load in loads for _ in range(sessions)]
    for thread in threads:
        thread.start()
    return relays, loads, threads


def _acked_by_any(loads: list[Load]) -> dict[str, str]:
    return {queue: message_id for load in loads for queue, message_id in load.acked.items()}


def check_store(stack: Stack, acked: dict[str, str]) -> None:
    engine = stack.rt.engine
    with session_scope(engine) as session:
        stored = dict(session.execute(select(Message.queue_id, Message.id)).all())
        items = Counter(session.execute(select(MailboxItem.message_id)).scalars())
        deliveries = Counter(session.execute(select(Delivery.message_id)).scalars())
        submitted = Counter(
            session.execute(select(AuditEvent.object).where(AuditEvent.action == "message.submit")).scalars()
        )
        report = audit.verify(session, stack.rt.master_key)
        total = session.execute(select(func.count()).select_from(Message)).scalar_one()
    # Acknowledged: stored. Not acknowledged: stored whole or not at all.
    assert set(acked) <= set(stored)
    assert total == len(stored)
    for queue, row_id in stored.items():
        assert items[row_id] == 3, queue  # two inboxes and the sender's Sent
        assert deliveries[row_id] == 2, queue
        assert submitted[queue] == 1, queue
    assert report.ok, report.reason
    reader = accounts.authenticate(
        engine,
        stack.settings,
        RECIPIENTS[1],
        stack.passwords[RECIPIENTS[1]],
        accounts.Origin("cli", request_id="check"),
    )
    key = keys.private_key_from_der(reader.private_key_der)
    with session_scope(engine) as session:
        cms = dict(session.execute(select(Message.queue_id, Message.cms)).all())
    for queue, message_id in acked.items():
        signed = smime.smime_payload(smime.decrypt(cms[queue], reader.certificate, key))
        entity = message_from_bytes(smime.signed_content(signed), policy=policy.default)
        assert entity["Message-ID"] == message_id
