"""The webhook sender inside ``mss serve``: takes due events from the outbox, POSTs each to
``MSS_WEBHOOK_URL`` signed (``mss.webhooks.signing``), and writes what came of it.

A ``2xx`` answer delivers the event. No answer (a network error, a timeout), ``408``,
``429`` or a ``5xx`` plans another attempt (``MSS_WEBHOOK_RETRY_MIN`` doubling up to
``MSS_WEBHOOK_RETRY_MAX``, or the ``Retry-After`` the receiver asked for, up to that
maximum); once no attempt is left within ``MSS_WEBHOOK_LIFETIME`` of the event, or on any
other answer (a redirect is not followed, a ``4xx`` would say the same again), the event is
given up and audited. Several senders, in one process or several, share the outbox through
its leases.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from datetime import timedelta
from urllib.parse import urlsplit

import httpx

from mss.db import utcnow
from mss.runtime import Runtime
from mss.webhooks import outbox, signing

log = logging.getLogger("mss.webhooks")

# Events POSTed at once by one sender.
BATCH = 8
# Events delivered or given up are kept this long (``mss trace`` and the audit trail keep
# the rest), then deleted; the purge runs this often.
KEEP = timedelta(days=30)
PURGE_SECONDS = 3600.0
RETRY_STATUSES = frozenset({408, 429})


def where(url: str) -> str:
    """The URL as the log shows it: scheme, host and port only (a path or query string
    may hold a receiver's token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/…"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    return float(value) if value.isascii() and value.isdigit() else None


def outcome_of(response: httpx.Response) -> outbox.Outcome:
    """What an answer means for the event (see the module's docstring)."""
    code = response.status_code
    if 200 <= code < 300:
        return outbox.Outcome(accepted=True)
    retryable = code >= 500 or code in RETRY_STATUSES
    return outbox.Outcome(
        accepted=False,
        retryable=retryable,
        error=f"HTTP {code}",
        retry_after=_retry_after(response) if retryable else None,
    )


class WebhookSender:
    """POSTs due events, up to ``BATCH`` at once, until cancelled."""

    def __init__(self, rt: Runtime, *, name: str | None = None) -> None:
        self.rt = rt
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.sent = 0

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        settings = self.rt.settings.webhook
        log.info("webhook sender %s: final statuses to %s", self.name, where(settings.url))
        last_purge = 0.0
        async with httpx.AsyncClient(timeout=settings.timeout, follow_redirects=False) as client:
            if ready is not None:
                ready.set()
            while True:
                try:
                    claimed = await asyncio.to_thread(
                        outbox.claim, self.rt.engine, self.rt.settings, self.name, limit=BATCH
                    )
                    if claimed:
                        await asyncio.gather(*(self._send(client, event) for event in claimed))
                    if time.monotonic() - last_purge >= PURGE_SECONDS:
                        last_purge = time.monotonic()
                        await asyncio.to_thread(outbox.purge, self.rt.engine, before=utcnow() - KEEP)
                except asyncio.CancelledError:
                    raise
                except Exception:  # logged; leases let the next pass take over
                    log.exception("the webhook pass failed")
                    claimed = []
                if len(claimed) < BATCH:
                    await asyncio.sleep(settings.poll)

    async def _send(self, client: httpx.AsyncClient, event: outbox.Claimed) -> None:
        settings = self.rt.settings.webhook
        headers = signing.headers(settings.secret, event.event_id, int(time.time()), event.payload)
        started = time.monotonic()
        try:
            async with asyncio.timeout(settings.timeout):
                response = await client.post(settings.url, content=event.payload, headers=headers)
            result = outcome_of(response)
        except (httpx.HTTPError, TimeoutError) as error:
            # By class only: an exception's text may quote the URL.
            result = outbox.Outcome(accepted=False, retryable=True, error=type(error).__name__)
        state = await asyncio.to_thread(outbox.finish, self.rt.engine, self.rt.settings, event, result)
        if state == outbox.DELIVERED:
            self.sent += 1
        level = logging.WARNING if state == outbox.ABANDONED else logging.INFO
        log.log(
            level,
            "webhook %s (%s %s, attempt %d): %s, %s, seconds=%.3f",
            event.event_id,
            event.queue_id,
            event.status,
            event.attempts,
            result.error or "accepted",
            state,
            time.monotonic() - started,
        )


async def serve_webhooks(rt: Runtime, *, ready: asyncio.Event | None = None) -> None:
    """Run a webhook sender until cancelled (``mss serve``)."""
    await WebhookSender(rt).run(ready=ready)
