"""What the relay's bound on messages taken in at once costs, against a plain semaphore.

``DataSlots`` (``mss/relay/protocol.py``) lets one client address hold ``per_client``
messages at once and the server one more; a waiting DATA takes a freed slot in turn. The
baseline is an ``asyncio.Semaphore`` of the same size: the same waits on the same event
loop, without the turns or the share per address. Sessions of one address (a gateway
that submits for a whole hospital) each take a slot, yield once to the loop (the message)
and give it back, over and over, until the batch is done.

The two alternate within each round (the order swaps every round); each times a batch with
the process's CPU time. Printed per message, for each number of sessions: the CPU of each,
and the ratio slots / semaphore of each round as min / median / max.

    .venv/bin/python bench/bench_data_slots.py             # 7 rounds, 4, 16 and 48 sessions
    .venv/bin/python bench/bench_data_slots.py --rounds 3 --sessions 16
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(PROJECT_ROOT)]

from mss.relay.protocol import DataSlots

PER_CLIENT = 4  # two message threads, two messages each: this machine's share
MESSAGES = 4000
CLIENT = "192.0.2.10"


def slots_guard() -> Callable[[], Any]:
    slots = DataSlots(PER_CLIENT, wait=60.0, longest=60.0)
    return lambda: slots.slot(CLIENT)


def semaphore_guard() -> Callable[[], Any]:
    semaphore = asyncio.Semaphore(PER_CLIENT + 1)

    @contextlib.asynccontextmanager
    async def held() -> AsyncIterator[bool]:
        async with semaphore:
            yield True

    return held


async def batch(make_guard: Callable[[], Callable[[], Any]], sessions: int) -> float:
    """CPU microseconds per message of ``MESSAGES`` taken in by ``sessions`` sessions."""
    guard = make_guard()
    done = 0

    async def session() -> None:
        nonlocal done
        while done < MESSAGES:
            async with guard():
                await asyncio.sleep(0)
                done += 1

    started = time.process_time()
    await asyncio.gather(*(session() for _ in range(sessions)))
    return (time.process_time() - started) / done * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--sessions", type=int, action="append", help="repeatable (default 4, 16, 48)")
    args = parser.parse_args()
    print(f"# {MESSAGES} messages a batch, {PER_CLIENT} per address and one more; {args.rounds} rounds")
    for sessions in args.sessions or [4, 16, 48]:
        cpu: dict[str, list[float]] = {"slots": [], "semaphore": []}
        ratios = []
        for round_ in range(args.rounds):
            order = [("slots", slots_guard), ("semaphore", semaphore_guard)]
            for name, make in order if round_ % 2 == 0 else reversed(order):
                cpu[name].append(asyncio.run(batch(make, sessions)))
            ratios.append(cpu["slots"][-1] / cpu["semaphore"][-1])
        print(
            f"{sessions:3} sessions  slots {statistics.median(cpu['slots']):6.1f} us/msg"
            f"  semaphore {statistics.median(cpu['semaphore']):6.1f} us/msg"
            f"  slots / semaphore {min(ratios):.2f} / {statistics.median(ratios):.2f} / {max(ratios):.2f}"
        )


if __name__ == "__main__":
    main()
