"""Where the samples of a py-spy profile fall: by thread, and below a function.

Reads the collapsed stacks that ``bench_relay.py --py-spy FILE.txt`` writes (one line per
distinct stack: frames separated by ``;``, then its sample count). The start-up (module
imports) is left out: the relay's work under load is what a profile is taken for.

Usage::

    .venv/bin/python bench/stacks.py relay.txt                       # by thread, and the pipeline
    .venv/bin/python bench/stacks.py relay.txt --below "submit (mss/pipeline.py"
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)")


def stacks(path: Path) -> list[tuple[list[str], int]]:
    """Each stack's frames (without line numbers) and samples, start-up left out."""
    found = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "_find_and_load" in stack:
            continue
        found.append(([_LINE.sub(")", frame) for frame in stack.split(";")], int(count)))
    return found


def _names(frame: str, start: str) -> bool:
    """Whether ``frame`` is the function ``start`` names, a method with or without its class."""
    return frame.startswith(start) or f".{start}" in frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path, help="collapsed stacks (py-spy --format raw)")
    parser.add_argument(
        "--below",
        action="append",
        default=[],
        help="a function and its file, as py-spy names them, e.g. 'submit (mss/pipeline.py' or "
        "'_handle_client (mss/relay/protocol.py' (a method without its class): the share of each function it "
        "calls; repeatable (default: the pipeline's submit)",
    )
    args = parser.parse_args()
    found = stacks(args.profile)
    total = sum(count for _, count in found)
    threads: Counter[str] = Counter()
    for frames, count in found:
        threads[frames[0].partition(": ")[2] or frames[0]] += count
    print(f"{total} samples")
    for thread, count in threads.most_common(12):
        print(f"  {100 * count / total:5.1f} %  {thread}")
    for start in args.below or ["submit (mss/pipeline.py"]:
        below: Counter[str] = Counter()
        inside = 0
        for frames, count in found:
            at = next((i for i, frame in enumerate(frames) if _names(frame, start)), None)
            if at is None:
                continue
            inside += count
            below[frames[at + 1] if at + 1 < len(frames) else "(itself)"] += count
        print(f"{start}...: {100 * inside / total:.1f} % of all samples; of those:")
        for frame, count in below.most_common(15):
            print(f"  {100 * count / max(inside, 1):5.1f} %  {frame}")


if __name__ == "__main__":
    main()
