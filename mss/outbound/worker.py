"""The delivery worker inside ``mss serve``: takes due entries, delivers them, records what
happened, and tells senders.

Per recipient of an attempt: ``2xx`` marks it relayed (and sends the sender a ``relayed``
DSN if they asked for SUCCESS and the peer does not speak DSN; otherwise the peer reports
delivery itself, RFC 3461 5.2); ``5xx`` fails it at once with the peer's reply in a
``failed`` DSN; ``4xx`` or no answer leaves it queued for a later attempt, waiting longer
each time (``MSS_RETRY_MIN`` doubling up to ``MSS_RETRY_MAX``). A message still queued after
``MSS_DELAY_WARNING`` gets one ``delayed`` DSN; after ``MSS_QUEUE_LIFETIME`` its remaining
recipients fail (``4.4.7``). The sender's Sent view follows each step (``delivery`` rows).

Several workers, in one process or several, share the queue through ``mss.outbound.queue``'s
leases. The queue's size and age go to the log every ``MSS_QUEUE_REPORT``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterable
from datetime import timedelta

from sqlalchemy import select
from sqlmodel import Session, col

from mss import audit, receipts, trust, webhooks
from mss.db import key_of, session_scope, utcnow
from mss.models import Delivery, Message, Outbound, OutboundRecipient
from mss.outbound import queue
from mss.outbound.client import DEFERRED, FAILED, RELAYED, Attempt, Connections, Reply, deliver, peer_context
from mss.outbound.routes import RouteFailure, resolve
from mss.receipts import federation as notices
from mss.receipts.wire import Action
from mss.runtime import Runtime

log = logging.getLogger("mss.outbound")

# How long a stopping worker lets deliveries in flight finish before cancelling them.
STOP_GRACE = 10.0


def _notify(value: str) -> frozenset[str]:
    return frozenset() if value == "NEVER" else frozenset(w for w in value.split(",") if w)


def _status(
    action: Action,
    address: str,
    reply: Reply | None,
    orcpt: str | None,
    status: str | None = None,
    text: str | None = None,
) -> receipts.RecipientStatus:
    diagnostic = None
    if reply is not None and reply.code:
        diagnostic = f"smtp; {reply.text}"
    elif text:
        diagnostic = f"x-mss; {text}"
    code = status or (reply.status if reply is not None else "4.0.0")
    if action == "failed" and code[0] == "2":
        code = "5.0.0"
    if action == "delayed":
        code = "4" + code[1:] if code[0] != "4" else code
    return receipts.RecipientStatus(
        address=address, action=action, status=code, diagnostic=diagnostic, original_recipient=orcpt
    )


class Outcome:
    """What to write for one attempt (or a bounce, or an expiry), then notices to send."""

    def __init__(self) -> None:
        self.relayed: list[tuple[OutboundRecipient, Reply]] = []
        self.failed: list[tuple[OutboundRecipient, Reply | None, str, str]] = []  # item, reply, status, reason
        self.deferred: list[tuple[OutboundRecipient, Reply]] = []


def _apply(
    session: Session,
    rt: Runtime,
    row: Outbound,
    outcome: Outcome,
    *,
    peer: str,
    peer_dsn: bool,
    request_id: str,
    worker: str = "",
) -> None:
    """Write recipients' states, the sender's delivery rows and notices, in ``session``."""
    now = utcnow()
    message = session.get(Message, row.message_id) if row.message_id is not None else None
    local_sender = message is not None and row.kind == queue.MESSAGE
    deliveries: dict[str, Delivery] = {}
    if local_sender:
        for delivery in session.execute(select(Delivery).where(col(Delivery.message_id) == row.message_id)).scalars():
            deliveries[delivery.recipient] = delivery
    subject = message.queue_id if message is not None else row.queue_id

    def audited(item: OutboundRecipient, action: str, outcome: str = audit.SUCCESS, **detail: object) -> None:
        audit.record(
            session,
            actor="system",
            action=action,
            object=subject,
            outcome=outcome,
            request_id=request_id,
            queue=row.queue_id,
            recipient=item.address,
            **detail,
        )

    relayed_dsn, failed_dsn = [], []
    for item, reply in outcome.relayed:
        item.state, item.reply, item.updated_at = queue.RELAYED, reply.text, now
        session.add(item)
        delivery = deliveries.get(item.address)
        if delivery is not None:
            delivery.status, delivery.at = "relayed", now
            delivery.reason = f"relayed to {peer}, {queue.protection_text(row.protection)}"[:500]
            session.add(delivery)
        audited(item, "queue.relay", peer=peer, reply=reply.text[:200], worker=worker)
        if "SUCCESS" in _notify(item.notify) and not peer_dsn:
            relayed_dsn.append(_status("relayed", item.address, reply, item.orcpt, "2.0.0"))
    # a failure may have no reply (connection refused, timeout)
    for item, reply, status, reason in outcome.failed:  # type: ignore[assignment]
        item.state, item.reply, item.updated_at = queue.FAILED, (reply.text if reply else reason)[:500], now
        session.add(item)
        delivery = deliveries.get(item.address)
        if delivery is not None:
            delivery.status, delivery.at, delivery.reason = "failed", now, reason[:500]
            session.add(delivery)
        audited(item, "queue.fail", audit.FAILURE, reason=reason[:200])
        if "FAILURE" in _notify(item.notify):
            failed_dsn.append(_status("failed", item.address, reply, item.orcpt, status, reason))
    for item, reply in outcome.deferred:
        item.reply, item.updated_at = reply.text, now
        session.add(item)
        delivery = deliveries.get(item.address)
        if delivery is not None:
            delivery.reason = f"{queue.protection_text(row.protection)}; waiting: {reply.text}"[:500]
            session.add(delivery)
    if local_sender and message is not None:
        if relayed_dsn:
            notices.to_local_sender(
                session,
                rt,
                message,
                relayed_dsn,
                envelope_id=row.envelope_id,
                reason=queue.protection_text(row.protection),
                request_id=request_id,
            )
        if failed_dsn:
            reasons = "; ".join(reason for _i, _r, _s, reason in outcome.failed)
            notices.to_local_sender(
                session,
                rt,
                message,
                failed_dsn,
                envelope_id=row.envelope_id,
                reason=reasons[:500],
                request_id=request_id,
            )
        if outcome.failed:
            webhooks.record_final(
                session,
                rt.settings,
                message,
                codes={item.address: status for item, _reply, status, _reason in outcome.failed},
            )
    elif outcome.failed:
        log.warning(
            "receipt %s for %s could not be delivered: %s",
            row.queue_id,
            ", ".join(i.address for i, *_ in outcome.failed),
            outcome.failed[0][3],
        )


def record_attempt(rt: Runtime, claimed: queue.Claimed, attempt: Attempt, *, request_id: str = "") -> str:
    """Write an attempt's outcome if ``claimed``'s lease still holds; return the entry's
    new state (``lost`` when another worker owns it now)."""
    settings = rt.settings
    with session_scope(rt.engine) as session:
        row = queue.held(session, claimed)
        if row is None:
            log.warning("delivery %s: lease lost, its outcome is left to the worker that holds it", claimed.queue_id)
            return "lost"
        items = {i.address: i for i in queue.recipients_of(session, key_of(row)) if i.state == queue.PENDING}
        outcome = Outcome()
        for address, item in items.items():
            reply = attempt.replies.get(address) or Reply(DEFERRED, 0, "not attempted")
            if reply.outcome == RELAYED:
                outcome.relayed.append((item, reply))
            elif reply.outcome == FAILED:
                outcome.failed.append((item, reply, reply.status, f"{attempt.peer} answered: {reply.text}"))
            else:
                outcome.deferred.append((item, reply))
        now = utcnow()
        expired = now >= row.expires_at
        if expired and outcome.deferred:
            for item, reply in outcome.deferred:
                why = f"still undelivered after {_span(now - row.created_at)}; last: {reply.text}"
                outcome.failed.append((item, reply if reply.code else None, "4.4.7", why))
            outcome.deferred = []
        _apply(
            session,
            rt,
            row,
            outcome,
            peer=attempt.peer,
            peer_dsn=attempt.peer_dsn,
            request_id=request_id,
            worker=claimed.lease_owner,
        )
        if outcome.deferred:
            error = outcome.deferred[0][1].text
            queue.release(
                row, next_attempt_at=now + queue.backoff(settings, row.attempts), state=queue.QUEUED, error=error
            )
            _warn_if_due(session, rt, row, [i for i, _r in outcome.deferred], request_id=request_id)
        else:
            relayed_any = bool(outcome.relayed) or any(
                i.state == queue.RELAYED for i in queue.recipients_of(session, key_of(row))
            )
            queue.release(row, next_attempt_at=None, state=queue.DONE if relayed_any else queue.FAILED)
        session.add(row)
        return row.state


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 86400:
        return f"{seconds // 86400} d {seconds % 86400 // 3600} h"
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    if seconds >= 60:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def _warn_if_due(
    session: Session, rt: Runtime, row: Outbound, pending: Iterable[OutboundRecipient], *, request_id: str = ""
) -> None:
    """The one ``delayed`` DSN, once the message has waited ``MSS_DELAY_WARNING``."""
    if row.delay_warned or utcnow() - row.created_at < timedelta(seconds=rt.settings.federation.delay_warning):
        return
    row.delay_warned = True
    session.add(row)
    if row.kind != queue.MESSAGE or row.message_id is None:
        return
    message = session.get(Message, row.message_id)
    if message is None:
        return
    waiting = [i for i in pending if "DELAY" in _notify(i.notify)]
    statuses = [
        _status("delayed", i.address, None, i.orcpt, "4.4.1", i.reply or row.last_error or "waiting for the peer")
        for i in waiting
    ]
    if statuses:
        notices.to_local_sender(
            session,
            rt,
            message,
            statuses,
            envelope_id=row.envelope_id,
            reason=f"waiting since {_span(utcnow() - row.created_at)}: {row.last_error}"[:500],
            request_id=request_id,
        )
    audit.record(
        session,
        actor="system",
        action="queue.delay",
        object=message.queue_id,
        request_id=request_id,
        queue=row.queue_id,
        recipients=len(statuses),
    )


def housekeeping(rt: Runtime) -> int:
    """Send due ``delayed`` DSNs and fail what outlived ``MSS_QUEUE_LIFETIME`` among entries
    nobody is delivering; return how many entries were touched."""
    touched = 0
    with session_scope(rt.engine, readonly=True) as session:
        if not queue.due_warnings(session, rt.settings):
            return 0  # the usual case: no write transaction at all
    with session_scope(rt.engine) as session:
        for row in queue.due_warnings(session, rt.settings):
            pending = [i for i in queue.recipients_of(session, key_of(row)) if i.state == queue.PENDING]
            now = utcnow()
            if now >= row.expires_at:
                outcome = Outcome()
                why = f"still undelivered after {_span(now - row.created_at)}; last: {row.last_error or 'no attempt'}"
                outcome.failed = [(i, None, "4.4.7", why) for i in pending]
                _apply(session, rt, row, outcome, peer="", peer_dsn=False, request_id="")
                queue.release(row, next_attempt_at=None, state=queue.FAILED)
            else:
                _warn_if_due(session, rt, row, pending)
            session.add(row)
            touched += 1
    return touched


def bounce(rt: Runtime, queue_id: str, *, actor: str) -> list[str]:
    """Fail every pending recipient of a queued entry now (``mss queue bounce``), with a
    ``failed`` DSN to the sender; return the recipients. Raises QueueError."""
    with session_scope(rt.engine) as session:
        row, pending = queue.take_for_bounce(session, queue_id, actor=actor)
        outcome = Outcome()
        outcome.failed = [(i, None, "5.3.0", f"returned by the operator's administrator ({actor})") for i in pending]
        _apply(session, rt, row, outcome, peer="", peer_dsn=False, request_id="")
        queue.release(row, next_attempt_at=None, state=queue.BOUNCED)
        session.add(row)
        return [i.address for i in pending]


# -- the loop --------------------------------------------------------------------------------


class DeliveryWorker:
    """Delivers due entries, up to ``MSS_DELIVERY_CONCURRENCY`` at once, until cancelled."""

    def __init__(self, rt: Runtime, *, name: str | None = None) -> None:
        self.rt = rt
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.concurrency = rt.settings.federation.delivery_concurrency
        self.local_hostname = rt.settings.pki.own_name
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._connections = Connections(per_peer=max(1, self.concurrency))
        self.delivered = 0

    def _waker(self) -> None:
        # Called after the commit of an entry, in the committing thread: nothing here may
        # fail that commit's caller (a stored message would be reported as not taken).
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:
                pass  # closed meanwhile (the worker stopped): the entry waits for the next one

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        """Deliver until cancelled; on cancellation let deliveries in flight end first
        (up to ``STOP_GRACE``: after that their leases let another worker take over)."""
        if self.concurrency < 1:
            log.info("outbound: this process delivers nothing (MSS_DELIVERY_CONCURRENCY=0)")
            if ready is not None:
                ready.set()
            await asyncio.Event().wait()
        self._loop = asyncio.get_running_loop()
        context = peer_context(self.rt.settings)
        queue.add_waker(self._waker)
        log.info("outbound worker %s: up to %d deliveries at once", self.name, self.concurrency)
        federation = self.rt.settings.federation
        last_report = last_housekeeping = 0.0
        try:
            if ready is not None:
                ready.set()
            while True:
                self._wake.clear()
                if time.monotonic() - last_housekeeping >= federation.queue_poll:
                    last_housekeeping = time.monotonic()
                    await asyncio.to_thread(housekeeping, self.rt)
                free = self.concurrency - len(self._in_flight)
                if free > 0:
                    claimed = await asyncio.to_thread(
                        queue.claim, self.rt.engine, self.rt.settings, self.rt.master_key, self.name, limit=free
                    )
                    for entry in claimed:
                        task = asyncio.create_task(self._deliver(context, entry))
                        self._in_flight.add(task)
                        task.add_done_callback(self._done)
                if time.monotonic() - last_report >= federation.queue_report:
                    last_report = time.monotonic()
                    await asyncio.to_thread(self._report)
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for may turn a
                # cancellation that coincides with its timeout into a TimeoutError, and a
                # stopping worker would then poll on forever.
                try:
                    async with asyncio.timeout(federation.queue_poll):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            queue.remove_waker(self._waker)
            if self._in_flight:
                done, pending = await asyncio.wait(set(self._in_flight), timeout=STOP_GRACE)
                for task in pending:
                    task.cancel()
            await self._connections.close()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._waker()  # a slot is free: look for more work now

    def _report(self) -> None:
        with session_scope(self.rt.engine, readonly=True) as session:
            stats = queue.stats(session)
        oldest = _span(stats.oldest) if stats.oldest is not None else "-"
        log.info(
            "queue: %d waiting for %d recipients, oldest %s, %d deferred, %d being delivered",
            stats.waiting,
            stats.recipients,
            oldest,
            stats.deferred,
            stats.in_flight,
        )

    async def _deliver(self, context, entry: queue.Claimed) -> None:
        started = time.monotonic()
        request_id = f"{entry.queue_id}.{entry.attempts}"
        try:
            attempt = await self._attempt(context, entry)
            state = await asyncio.to_thread(record_attempt, self.rt, entry, attempt, request_id=request_id)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the lease ends by itself; another attempt follows
            log.exception("delivery %s: unexpected %s", entry.queue_id, type(error).__name__)
            return
        outcomes = [r.outcome for r in attempt.replies.values()]
        self.delivered += outcomes.count(RELAYED)
        log.info(
            "delivery %s to %s (%s): relayed=%d failed=%d deferred=%d state=%s seconds=%.3f",
            entry.queue_id,
            attempt.peer or entry.domain,
            entry.protection,
            outcomes.count(RELAYED),
            outcomes.count(FAILED),
            outcomes.count(DEFERRED),
            state,
            time.monotonic() - started,
        )

    async def _attempt(self, context, entry: queue.Claimed) -> Attempt:
        with session_scope(self.rt.engine, readonly=True) as session:
            route = trust.route_for(session, entry.domain)
            trusted = trust.is_trusted(session, entry.domain)
        attempt = Attempt(peer=entry.domain)
        if not trusted:
            reply = Reply(FAILED, 0, f"550 5.7.1 {entry.domain} is no longer on the trust list")
            attempt.replies = {r.address: reply for r in entry.recipients}
            return attempt
        try:
            hops = await resolve(self.rt.settings, entry.domain, route)
        except RouteFailure as failure:
            outcome = FAILED if failure.permanent else DEFERRED
            code = 550 if failure.permanent else 451
            reply = Reply(outcome, 0, f"{code} {failure.status} {failure.text}")
            attempt.replies = {r.address: reply for r in entry.recipients}
            return attempt
        return await deliver(
            self.rt.settings, context, hops, entry, local_hostname=self.local_hostname, connections=self._connections
        )


async def serve_outbound(rt: Runtime, *, ready: asyncio.Event | None = None) -> None:
    """Run a delivery worker until cancelled (``mss serve``)."""
    await DeliveryWorker(rt).run(ready=ready)
