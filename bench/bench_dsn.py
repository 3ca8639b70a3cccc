"""What a requested success DSN adds to a submission, in process: ``pipeline.submit`` of the
10 KB letter of ``bench_relay.py`` to two recipients, with NOTIFY=SUCCESS,FAILURE (a
success DSN, built, signed by the operator, encrypted to the sender and stored in their
inbox) and, as the baseline, the same submission with the default NOTIFY=FAILURE,DELAY
(no DSN when all goes well). Everything else is the same: the same account, message size,
recipients and database, default settings (argon2id moderate, RSA 3072 keys for the
accounts, the operator's receipts signed with ECDSA P-256 unless ``MSS_OPERATOR_KEY=rsa``
is set, SQLite WAL).

The two kinds alternate within each round (the order swaps from one round to the next);
each round times a batch of each with the process's CPU time (the document checks run in
worker processes and are the same for both, so they are left out). Printed: the CPU per
message of each, and the difference (what a DSN adds), min / median / max over the rounds.

    .venv/bin/python bench/bench_dsn.py             # 7 rounds of 20 messages
    .venv/bin/python bench/bench_dsn.py --rounds 3 --batch 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(PROJECT_ROOT), str(PROJECT_ROOT / "bench"), str(PROJECT_ROOT / "tests")]

from mss import accounts, pipeline
from mss.receipts import Notify
from mss.runtime import open_runtime

from _support import bench_env, demo_installation, referral


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=20, help="messages of each kind per round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mss-bench-dsn-") as folder:
        settings, demo = demo_installation(bench_env(Path(folder)))
        rt = open_runtime(settings)
        try:
            sender, *others = demo
            unlocked = accounts.authenticate(
                rt.engine, rt.settings, sender.address, sender.password, accounts.Origin("smtp", "127.0.0.1")
            )
            recipients = [o.address for o in others[:2]]
            kinds = {"no DSN": Notify(("FAILURE", "DELAY")), "success DSN": Notify(("SUCCESS", "FAILURE"))}
            number = 0

            def batch(notify: Notify) -> float:
                nonlocal number
                raws = []
                for _ in range(args.batch):
                    number += 1
                    raws.append(referral(unlocked.address, recipients, 10_000, number))
                start = time.process_time()
                for raw in raws:
                    submission = pipeline.Submission(
                        sender=unlocked,
                        recipients=tuple(pipeline.RecipientRequest(r, notify) for r in recipients),
                        raw=raw,
                        channel="smtp",
                    )
                    pipeline.submit(rt, submission)
                return (time.process_time() - start) / args.batch * 1000

            batch(kinds["no DSN"])  # warm-up: caches, the operator's identity, the workers
            batch(kinds["success DSN"])
            per: dict[str, list[float]] = {name: [] for name in kinds}
            added = []
            for round_number in range(args.rounds):
                names = list(kinds) if round_number % 2 == 0 else list(reversed(kinds))
                measured = {name: batch(kinds[name]) for name in names}
                for name, value in measured.items():
                    per[name].append(value)
                added.append(measured["success DSN"] - measured["no DSN"])
        finally:
            rt.close()

    def spread(values: list[float]) -> str:
        return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"

    print(f"# {args.rounds} rounds of {args.batch} messages of each kind; CPU ms per message, min / median / max")
    for name, values in per.items():
        print(f"{name:<14} {spread(values)}")
    print(f"{'DSN adds':<14} {spread(added)}")


if __name__ == "__main__":
    main()
