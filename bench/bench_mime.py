"""How ``mss.mime.parse_bytes`` parses against the ``email`` package's own parser.

Both parse the same bytes with the pipeline's policy (``email.policy.default``); the
baseline is ``BytesParser(policy=...).parsebytes``, which ``parse_bytes`` calls on the
message with its long runs of base64 lines handed over as marks. Messages:

- ``10KB`` and ``1MB``: the letter with a PDF of ``bench_relay.py`` (CRLF, as received);
- ``63-line runs``: 1 MB of runs of 63 base64 lines, each broken by a line that is not
  base64: the longest runs that are never handed over, the worst case of the run search;
- ``short runs``: 1 MB of single 40-character base64 lines between lines that are not.

The two parsers alternate within each round (the order swaps every round); each times a
batch with the process's CPU time. Printed per message: the CPU of each, and the ratio
``parse_bytes`` / parser of each round as min / median / max.

    .venv/bin/python bench/bench_mime.py            # 7 rounds
    .venv/bin/python bench/bench_mime.py --rounds 3
"""

from __future__ import annotations

import argparse
import email.policy
import functools
import sys
import time
from collections.abc import Callable
from email.parser import BytesParser
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(PROJECT_ROOT), str(PROJECT_ROOT / "bench"), str(PROJECT_ROOT / "tests")]

from mss import mime

from _support import against_baseline, referral

POLICY = email.policy.default


def _crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _repeated(unit: bytes, size: int) -> bytes:
    return b"Subject: hostile\r\nContent-Transfer-Encoding: base64\r\n\r\n" + unit * (size // len(unit))


MESSAGES: dict[str, tuple[bytes, int]] = {
    "10KB": (_crlf(referral("a@chu.test", ["b@medecin.test"], 10_000, 1)), 400),
    "1MB": (_crlf(referral("a@chu.test", ["b@medecin.test"], 1_000_000, 1)), 20),
    "63-line runs": (_repeated((b"Q" * 76 + b"\r\n") * 63 + b"-\r\n", 1_000_000), 20),
    "short runs": (_repeated(b"Q" * 40 + b"\r\n-\r\n", 1_000_000), 20),
}


def _batch(parse: Callable[[bytes], object], raw: bytes, count: int) -> float:
    start = time.process_time()
    for _ in range(count):
        parse(raw)
    return (time.process_time() - start) / count * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    parsers: dict[str, Callable[[bytes], object]] = {
        "email": BytesParser(policy=POLICY).parsebytes,
        "parse_bytes": lambda raw: mime.parse_bytes(raw, POLICY),
    }
    print(f"# {args.rounds} rounds; CPU ms per message (median of the rounds), ratio parse_bytes / email")
    for name, (raw, count) in MESSAGES.items():
        batches = {kind: functools.partial(_batch, parse, raw, count) for kind, parse in parsers.items()}
        print(against_baseline(name, "email", batches, args.rounds))


if __name__ == "__main__":
    main()
