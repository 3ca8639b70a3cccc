"""The webhook: each final status of a sent message's recipient POSTed to ``MSS_WEBHOOK_URL``
with a Standard Webhooks signature, durably (an outbox row in the status's transaction),
retried on errors, given up (and audited) after its lifetime, sent once by several senders.

A real HTTP server on loopback receives the POSTs; the test checks each signature itself
with ``hmac``, as an integrator's receiver would.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select

from mss import trust
from mss.db import session_scope
from mss.errors import ConfigError
from mss.models import AuditEvent, Message, Outbound, WebhookEvent
from mss.outbound import worker
from mss.runtime import Runtime
from mss.settings import Settings
from mss.webhooks import outbox
from mss.webhooks.sender import WebhookSender

from task_thread import TaskThread
from web_support import DOCTOR, GP, NURSE, build_message, create_person, doctor, gp, submit  # noqa: F401  (fixtures)

KEY = secrets.token_bytes(32)
SECRET = "whsec_" + base64.b64encode(KEY).decode()
SUBJECT = "Suivi de Mme Confidentielle"
BODY = "Résultats de la biopsie: confidentiel."
REMOTE = "joel.michel@medecin.mss.test"  # in the directory, at another operator's domain


class Receiver:
    """An HTTP server on loopback that records each POST and answers from a script
    (then 200)."""

    def __init__(self, answers: tuple[int, ...] = ()) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.answers = list(answers)
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the name http.server calls
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with outer._lock:
                    outer.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    code = outer.answers.pop(0) if outer.answers else 200
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/hooks/mss?token=receiver-token"

    def received(self) -> list[tuple[dict[str, str], bytes]]:
        with self._lock:
            return list(self.requests)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class SenderThread(TaskThread):
    """A webhook sender of ``rt`` on its own event loop, as ``mss serve`` runs it."""

    def __init__(self, rt: Runtime, name: str = "test-sender") -> None:
        super().__init__(lambda ready: WebhookSender(rt, name=name).run(ready=ready), name=name)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def hooked(rt: Runtime, env: dict[str, str], url: str, **more: str) -> Runtime:
    """``rt`` with the webhook set, through the environment as an operator sets it."""
    settings = Settings.from_env(
        {
            **env,
            "MSS_WEBHOOK_URL": url,
            "MSS_WEBHOOK_SECRET": SECRET,
            "MSS_WEBHOOK_POLL": "0.1s",
            "MSS_WEBHOOK_RETRY_MIN": "0.2s",
            "MSS_WEBHOOK_RETRY_MAX": "1s",
            "MSS_WEBHOOK_TIMEOUT": "5s",
            **more,
        }
    )
    return Runtime(settings=settings, engine=rt.engine, master_key=rt.master_key)


def check_signature(headers: dict[str, str], body: bytes) -> None:
    """The Standard Webhooks check, written out: HMAC-SHA256 of ``id.timestamp.body``."""
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(KEY, signed, hashlib.sha256).digest()).decode()
    assert f"v1,{expected}" in headers["webhook-signature"].split(" ")
    assert abs(time.time() - int(headers["webhook-timestamp"])) < 300
    assert headers["content-type"] == "application/json"


def wait_for(predicate, *, timeout: float = 20, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def events(rt: Runtime, queue_id: str) -> list[WebhookEvent]:
    with session_scope(rt.engine, readonly=True) as session:
        return list(
            session.execute(
                select(WebhookEvent).where(WebhookEvent.queue_id == queue_id).order_by(WebhookEvent.id)
            ).scalars()
        )


def test_a_delivered_message_fires_one_signed_event_per_recipient(rt, env, doctor, gp, receiver):
    create_person(rt, NURSE)
    hook = hooked(rt, env, receiver.url)
    accepted = submit(hook, doctor, [GP, NURSE], SUBJECT, BODY)
    # Written with the delivery, before anything is sent.
    assert sorted((e.recipient, e.status, e.state) for e in events(hook, accepted.queue_id)) == [
        (GP, "delivered", "pending"),
        (NURSE, "delivered", "pending"),
    ]

    with SenderThread(hook):
        wait_for(lambda: len(receiver.received()) >= 2, what="two POSTs")
        wait_for(lambda: all(e.state == "delivered" for e in events(hook, accepted.queue_id)), what="delivered rows")
        time.sleep(0.5)  # nothing more comes
    requests = receiver.received()
    assert len(requests) == 2
    seen = {}
    for headers, body in requests:
        check_signature(headers, body)
        payload = json.loads(body)
        assert payload["type"] == "message.final_status"
        data = payload["data"]
        seen[data["recipient"]] = data
        assert headers["webhook-id"] in {e.event_id for e in events(hook, accepted.queue_id)}
        # Metadata only: nothing of the subject or the content, in any form.
        for word in ("Confidentielle", "Suivi", "biopsie", "confidentiel"):
            assert word.lower() not in body.decode().lower()
        assert set(data) == {"queue_id", "message_id", "sender", "recipient", "status", "enhanced_status_code", "at"}
    assert set(seen) == {GP, NURSE}
    for data in seen.values():
        assert data["queue_id"] == accepted.queue_id and data["message_id"] == accepted.message_id
        assert data["sender"] == DOCTOR and data["status"] == "delivered" and data["enhanced_status_code"] == "2.0.0"
    assert len({h["webhook-id"] for h, _b in requests}) == 2


def test_no_webhook_no_event(rt, doctor, gp):
    accepted = submit(rt, doctor, [GP], SUBJECT, BODY)
    assert events(rt, accepted.queue_id) == []


def test_a_receiver_error_is_retried_with_the_same_webhook_id(rt, env, doctor, gp):
    receiver = Receiver(answers=(500, 429))
    try:
        hook = hooked(rt, env, receiver.url)
        accepted = submit(hook, doctor, [GP], SUBJECT, BODY)
        with SenderThread(hook):
            wait_for(lambda: events(hook, accepted.queue_id)[0].state == "delivered", what="the delivery")
        requests = receiver.received()
        assert len(requests) == 3
        assert len({h["webhook-id"] for h, _b in requests}) == 1
        assert len({b for _h, b in requests}) == 1  # the same body each time
        for headers, body in requests:
            check_signature(headers, body)
        event = events(hook, accepted.queue_id)[0]
        assert event.attempts == 3 and event.last_error == "HTTP 429"
    finally:
        receiver.close()


def test_an_event_nobody_accepts_is_given_up_and_audited(rt, env, doctor, gp):
    down = Receiver(answers=(503,) * 100)
    refusing = Receiver(answers=(400,))
    try:
        # Always 503: retried until MSS_WEBHOOK_LIFETIME, then given up.
        hook = hooked(rt, env, down.url, MSS_WEBHOOK_LIFETIME="1.5s")
        first = submit(hook, doctor, [GP], SUBJECT, BODY)
        with SenderThread(hook):
            wait_for(lambda: events(hook, first.queue_id)[0].state == "abandoned", what="the give-up")
        assert len(down.received()) >= 2
        # 400: retrying would not change the answer; given up at once.
        hook = hooked(rt, env, refusing.url)
        second = submit(hook, doctor, [GP], SUBJECT, BODY)
        with SenderThread(hook):
            wait_for(lambda: events(hook, second.queue_id)[0].state == "abandoned", what="the refusal")
        assert len(refusing.received()) == 1 and events(hook, second.queue_id)[0].last_error == "HTTP 400"
        with session_scope(rt.engine, readonly=True) as session:
            audited = list(
                session.execute(
                    select(AuditEvent).where(AuditEvent.action == "webhook.abandon").order_by(AuditEvent.seq)
                ).scalars()
            )
        assert [a.object for a in audited] == [first.queue_id, second.queue_id]
        detail = json.loads(audited[0].detail)
        assert detail["recipient"] == GP and detail["status"] == "delivered" and detail["reason"] == "HTTP 503"
        assert audited[0].outcome == "failure"
        # A network error (nothing listens) is retried like a 5xx.
        down.close()
        hook = hooked(rt, env, down.url, MSS_WEBHOOK_LIFETIME="1s")
        third = submit(hook, doctor, [GP], SUBJECT, BODY)
        with SenderThread(hook):
            wait_for(lambda: events(hook, third.queue_id)[0].state == "abandoned", what="the give-up")
        assert events(hook, third.queue_id)[0].attempts >= 2
        assert events(hook, third.queue_id)[0].last_error == "ConnectError"
    finally:
        refusing.close()


def test_failed_and_expired_deliveries_fire_too(rt, env, directory_loaded, receiver):
    # This operator serves chu-demo.mss.test; medecin.mss.test is another operator's, on the
    # trust list, routed to a port where nothing listens.
    hook = hooked(rt, env, receiver.url, MSS_DOMAINS="chu-demo.mss.test")
    doctor = create_person(hook, DOCTOR)
    with session_scope(hook.engine) as session:
        trust.add(session, hook.settings, "medecin.mss.test", actor="test")
        trust.set_route(session, hook.settings, "medecin.mss.test", "127.0.0.1:9", actor="test")

    def entry_of(queue_id: str) -> str:
        with session_scope(hook.engine, readonly=True) as session:
            message = session.execute(select(Message).where(Message.queue_id == queue_id)).scalar_one()
            return session.execute(select(Outbound.queue_id).where(Outbound.message_id == message.id)).scalar_one()

    # Returned by the administrator: failed, 5.3.0.
    bounced = submit(hook, doctor, [REMOTE], SUBJECT, BODY)
    assert events(hook, bounced.queue_id) == []  # queued: no final status yet
    assert worker.bounce(hook, entry_of(bounced.queue_id), actor="admin@chu-demo.mss.test") == [REMOTE]
    # Past MSS_QUEUE_LIFETIME: failed, 4.4.7.
    short = Runtime(
        settings=hook.settings.with_changes(federation=replace(hook.settings.federation, queue_lifetime=0.5)),
        engine=hook.engine,
        master_key=hook.master_key,
    )
    expired = submit(short, doctor, [REMOTE], SUBJECT, BODY)
    time.sleep(0.7)
    assert worker.housekeeping(short) == 1

    with SenderThread(hook):
        wait_for(lambda: len(receiver.received()) >= 2, what="two POSTs")
        time.sleep(0.3)
    found = {}
    for headers, body in receiver.received():
        check_signature(headers, body)
        assert b"Confidentielle" not in body and b"biopsie" not in body
        data = json.loads(body)["data"]
        found[data["queue_id"]] = (data["recipient"], data["status"], data["enhanced_status_code"])
    assert found == {bounced.queue_id: (REMOTE, "failed", "5.3.0"), expired.queue_id: (REMOTE, "failed", "4.4.7")}


def test_several_senders_never_take_the_same_event(rt, env, doctor, gp, receiver):
    create_person(rt, NURSE)
    hook = hooked(rt, env, receiver.url)
    for _ in range(3):
        submit(hook, doctor, [GP, NURSE], SUBJECT, BODY)
    start = threading.Barrier(2)
    taken: dict[str, list[outbox.Claimed]] = {}

    def take(name: str) -> None:
        start.wait()
        taken[name] = outbox.claim(hook.engine, hook.settings, name, limit=6)

    threads = [threading.Thread(target=take, args=(name,)) for name in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    ids = [c.event_id for claimed in taken.values() for c in claimed]
    assert len(ids) == 6 and len(set(ids)) == 6  # each event once, none twice
    # Held by their leases: a third sender finds nothing.
    assert outbox.claim(hook.engine, hook.settings, "three", limit=6) == []
    # An outcome counts only from the holder of the lease.
    claimed = next(c for claimed in taken.values() for c in claimed)
    stranger = replace(claimed, lease_owner="three")
    assert outbox.finish(hook.engine, hook.settings, stranger, outbox.Outcome(accepted=True)) == "lost"
    assert outbox.finish(hook.engine, hook.settings, claimed, outbox.Outcome(accepted=True)) == "delivered"


@pytest.mark.sqlite_only
@pytest.mark.parametrize(
    ("url", "secret", "message"),
    [
        ("ftp://hooks.example.org/mss", SECRET, "must be an https:// URL"),
        ("hooks.example.org/mss", SECRET, "must be an https:// URL"),
        ("http://hooks.example.org/mss", SECRET, "plain http:// only to a loopback address"),
        ("http://10.0.0.8/mss", SECRET, "plain http:// only to a loopback address"),
        ("https://user:pw@hooks.example.org/mss", SECRET, "must not carry a user name or password"),
        ("https://hooks.example.org:99999/mss", SECRET, "is not a valid URL"),
        ("https://hooks.example.org/mss", "", "MSS_WEBHOOK_SECRET is required"),
        ("https://hooks.example.org/mss", "not-a-whsec-secret", "must start with whsec_"),
        ("https://hooks.example.org/mss", "whsec_***", "not valid base64"),
        ("https://hooks.example.org/mss", "whsec_" + base64.b64encode(b"short").decode(), "24 to 64 bytes"),
    ],
)
def test_bad_webhook_settings_are_refused_with_a_clear_error(env, url, secret, message):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({**env, "MSS_WEBHOOK_URL": url, "MSS_WEBHOOK_SECRET": secret})
    assert message in refused.value.message
    if secret:
        assert secret.removeprefix("whsec_") not in refused.value.message


@pytest.mark.sqlite_only
def test_serve_refuses_to_start_on_a_bad_webhook_url(env, mss):
    env.update({"MSS_WEBHOOK_URL": "http://hooks.example.org/mss", "MSS_WEBHOOK_SECRET": SECRET})
    result = mss("serve", ok=False)
    assert result.exit_code == 1
    assert "MSS_WEBHOOK_URL must use https://" in result.stderr
    assert SECRET[6:] not in result.stdout + result.stderr


@pytest.mark.sqlite_only
def test_good_webhook_settings_and_the_secret_stays_out_of_sight(env):
    for url in (
        "https://hooks.example.org/mss?token=x",
        "http://127.0.0.1:8000/hook",
        "http://[::1]/h",
        "http://localhost/h",
    ):
        settings = Settings.from_env({**env, "MSS_WEBHOOK_URL": url, "MSS_WEBHOOK_SECRET": SECRET})
        assert settings.webhook.enabled and settings.webhook.secret == KEY
        assert SECRET[6:] not in repr(settings) and repr(KEY) not in repr(settings)
    assert not Settings.from_env(env).webhook.enabled
    with pytest.raises(ConfigError, match="MSS_WEBHOOK_RETRY_MAX must not be shorter"):
        Settings.from_env({**env, "MSS_WEBHOOK_RETRY_MIN": "2h", "MSS_WEBHOOK_RETRY_MAX": "1h"})


def test_reports_from_another_operator_fire_their_final_statuses(tmp_path, receiver):
    from federation_support import A_DOMAIN, A_USERS, B_DOMAIN, B_USERS, build_operator, link, start

    marc, joel = A_USERS[0], B_USERS[0]
    a = build_operator(
        tmp_path / "a",
        "a",
        A_DOMAIN,
        A_USERS,
        MSS_WEBHOOK_URL=receiver.url,
        MSS_WEBHOOK_SECRET=SECRET,
        MSS_WEBHOOK_POLL="0.1s",
    )
    b = build_operator(tmp_path / "b", "b", B_DOMAIN, B_USERS)
    try:
        link(a, b)
        start(a, b)
        raw = build_message(marc, [joel], SUBJECT, BODY, read_receipt=True)
        queue_id = a.submit(marc, [joel], raw, rcpt_options=("NOTIFY=SUCCESS,FAILURE",))
        # B reports delivery (DSN) and its mailbox's processing (MDN): two final statuses.
        with SenderThread(a.rt):
            wait_for(lambda: len(receiver.received()) >= 2, timeout=60, what="the two events")
            time.sleep(0.3)
        statuses = []
        for headers, body in receiver.received():
            check_signature(headers, body)
            assert b"Confidentielle" not in body and b"biopsie" not in body
            data = json.loads(body)["data"]
            assert data["queue_id"] == queue_id and data["recipient"] == joel and data["sender"] == marc
            statuses.append(data["status"])
        assert sorted(statuses) == ["delivered", "processed"]
    finally:
        a.close()
        b.close()
