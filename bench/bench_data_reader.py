"""How the relay's DATA reader reads a message against reading the same bytes and nothing else.

``RelaySMTP._receive_data`` reads a message up to ``<CRLF>.<CRLF>`` and, as it comes, checks
every line's length, the size and the header section, then removes the transparency dots.
The baseline reads the same chunks from the same ``asyncio.StreamReader`` into a buffer and
looks for the end marker the same way, with no check: the I/O of the reader and nothing
else. A message arrives in chunks of 16 KB (a TLS record), fed from another task. Messages:

- ``10KB`` and ``1MB``: the letter with a PDF of ``bench_relay.py`` (CRLF, as on the wire);
- ``1MB dotted``: the same with a line that starts with a dot (dot-stuffed), which the
  reader must copy without the dots.

The two alternate within each round (the order swaps every round); each times a batch with
the process's CPU time. Printed per message: the CPU of each, and the ratio reader /
baseline of each round as min / median / max.

The bench runs with glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_``, set here
when it is not): by default the threshold moves with what the process freed before, and
the same reading of 1 MB then costs 1.2 ms in one process and 2.4 in the next, baseline and
reader alike, which drowns the reader's own work.

    .venv/bin/python bench/bench_data_reader.py            # 7 rounds
    .venv/bin/python bench/bench_data_reader.py --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(PROJECT_ROOT), str(PROJECT_ROOT / "bench"), str(PROJECT_ROOT / "tests")]

from mss.relay.protocol import DATA_END, RelaySMTP

from _support import against_baseline, referral

CHUNK = 16 * 1024
SIZE_LIMIT = 20_000_000


def _crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _on_the_wire(raw: bytes) -> bytes:
    """``raw`` dot-stuffed (RFC 5321 4.5.2) and ended with the end-of-data marker."""
    return raw.replace(b"\r\n.", b"\r\n..") + b".\r\n"


ONE_MB = _crlf(referral("a@chu.test", ["b@medecin.test"], 1_000_000, 1))
HEAD, _, BODY = ONE_MB.partition(b"\r\n\r\n")
# name: (the message as the client writes it, batch size)
MESSAGES: dict[str, tuple[bytes, int]] = {
    "10KB": (_crlf(referral("a@chu.test", ["b@medecin.test"], 10_000, 1)), 400),
    "1MB": (ONE_MB, 30),
    "1MB dotted": (HEAD + b"\r\n\r\n.signature\r\n" + BODY, 30),
}


class _Reader:
    """What ``_receive_data`` uses of a session: its stream, its size limit, its idle timer."""

    _receive_data = RelaySMTP._receive_data

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self.data_size_limit = SIZE_LIMIT

    def _reset_timeout(self) -> None:
        pass


async def _relay_reader(reader: asyncio.StreamReader) -> bytes:
    refusal, content = await _Reader(reader)._receive_data()
    assert refusal is None
    return content


async def _baseline(reader: asyncio.StreamReader) -> bytes:
    buffer = bytearray()
    while True:
        chunk = await reader.read(1 << 30)
        scan_from = max(0, len(buffer) - len(DATA_END) + 1)
        buffer += chunk
        end = buffer.find(DATA_END, scan_from)
        if end >= 0:
            with memoryview(buffer) as view:
                return bytes(view[: end + 2])


async def _feed(reader: asyncio.StreamReader, wire: bytes) -> None:
    for start in range(0, len(wire), CHUNK):
        reader.feed_data(wire[start : start + CHUNK])
        await asyncio.sleep(0)


async def _read_once(read: Callable[[asyncio.StreamReader], Awaitable[bytes]], wire: bytes) -> bytes:
    """``wire`` read by ``read`` as it arrives, in chunks from another task."""
    reader = asyncio.StreamReader(limit=1 << 16)
    feeding = asyncio.create_task(_feed(reader, wire))
    content = await read(reader)
    await feeding
    return content


def _batch(read: Callable[[asyncio.StreamReader], Awaitable[bytes]], wire: bytes, count: int) -> float:
    async def run() -> None:
        for _ in range(count):
            await _read_once(read, wire)

    start = time.process_time()
    asyncio.run(run())
    return (time.process_time() - start) / count * 1000


def main() -> None:
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        # glibc reads it at start-up: run again with it set.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    readers: dict[str, Callable[[asyncio.StreamReader], Awaitable[bytes]]] = {
        "baseline": _baseline,
        "reader": _relay_reader,
    }
    print(f"# {args.rounds} rounds; CPU ms per message (median of the rounds), ratio reader / baseline")
    for name, (raw, count) in MESSAGES.items():
        wire = _on_the_wire(raw)
        received = asyncio.run(_read_once(_relay_reader, wire))
        assert received == raw, f"{name}: the reader did not return the message as written"
        batches = {kind: functools.partial(_batch, read, wire, count) for kind, read in readers.items()}
        print(against_baseline(name, "baseline", batches, args.rounds))


if __name__ == "__main__":
    main()
