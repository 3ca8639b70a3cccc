"""The periodic work of a running service: delayed DSNs for deliveries past their deadline.

``mss serve`` runs :func:`run` beside the relay and the web; each pass runs in a worker
thread and is safe to run in several processes at once (the services lock what they
change). A pass that fails is logged and the next one runs as planned.
"""

from __future__ import annotations

import asyncio
import logging

from mss.receipts import issuer
from mss.runtime import Runtime

log = logging.getLogger("mss.housekeeping")

# The delayed-DSN sweep runs this often, or every quarter of the deadline if that is shorter.
SWEEP_SECONDS = 60.0


def sweep_interval(rt: Runtime) -> float:
    """Seconds between two delayed-DSN sweeps."""
    return max(0.1, min(SWEEP_SECONDS, rt.settings.operator.receipt_deadline / 4))


async def run(rt: Runtime) -> None:
    """Sweep until cancelled."""
    interval = sweep_interval(rt)
    while True:
        try:
            sent = await asyncio.to_thread(issuer.send_delayed, rt)
            if sent:
                log.info("delayed DSN sent for %d recipient(s) past MSS_RECEIPT_DEADLINE", sent)
        except Exception:  # noqa: BLE001 - logged; the next pass runs as planned
            log.exception("the delayed-DSN sweep failed")
        await asyncio.sleep(interval)
