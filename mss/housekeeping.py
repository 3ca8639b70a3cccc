"""The periodic work of a running service: delayed DSNs for deliveries past their deadline,
and once a day the mailbox life cycle and the audit retention (``mss.lifecycle``).

``mss serve`` runs :func:`run` beside the relay and the web; each pass runs in a worker
thread and is safe to run in several processes at once (the services lock what they
change). A pass that fails is logged and the next one runs as planned.
"""

from __future__ import annotations

import asyncio
import logging

from mss import lifecycle
from mss.receipts import issuer
from mss.runtime import Runtime

log = logging.getLogger("mss.housekeeping")

# The delayed-DSN sweep runs this often, or every quarter of the deadline if that is shorter.
SWEEP_SECONDS = 60.0
LIFECYCLE_SECONDS = 24 * 3600.0


def sweep_interval(rt: Runtime) -> float:
    """Seconds between two delayed-DSN sweeps."""
    return max(0.1, min(SWEEP_SECONDS, rt.settings.operator.receipt_deadline / 4))


async def run(rt: Runtime) -> None:
    """Sweep until cancelled; the life cycle at start and then once a day."""
    interval = sweep_interval(rt)
    next_lifecycle = 0.0
    loop = asyncio.get_running_loop()
    while True:
        if loop.time() >= next_lifecycle:
            next_lifecycle = loop.time() + LIFECYCLE_SECONDS
            try:
                summary = await asyncio.to_thread(lifecycle.run, rt)
                log.info(
                    "life cycle: %d notice(s), %d mailbox(es) closed, %d message(s) deleted, %d audit event(s) purged",
                    len(summary.noticed),
                    len(summary.closed),
                    summary.messages_deleted,
                    summary.audit_events_purged,
                )
            except Exception:
                log.exception("the life cycle pass failed")
        try:
            sent = await asyncio.to_thread(issuer.send_delayed, rt)
            if sent:
                log.info("delayed DSN sent for %d recipient(s) past MSS_RECEIPT_DEADLINE", sent)
        except Exception:
            log.exception("the delayed-DSN sweep failed")
        await asyncio.sleep(interval)
