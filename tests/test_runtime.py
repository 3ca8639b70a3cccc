"""The runtime's message threads: as many messages go through the pipeline at once as there
are threads, the others wait their turn with nothing but their bytes, and none is lost; the
memory a burst of messages leaves free goes back to the system once they are all done; what
start-up made is set aside from the cyclic collector once every door listens; verdicts kept
by the directory's revision; every pool and turn sized to the cores the process may use."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import threading
import time
import weakref

import pytest

from mss import memory
from mss.background import settle_once_listening
from mss.runtime import KeptVerdicts, MessageThreads


def test_message_threads_take_as_many_messages_at_once_as_they_have_threads() -> None:
    threads = MessageThreads(size=2)
    lock = threading.Lock()
    running: list[str] = []
    most = 0
    two_running = threading.Event()
    release = threading.Event()

    def work(n: int) -> tuple[int, str]:
        nonlocal most
        with lock:
            running.append(threading.current_thread().name)
            most = max(most, len(running))
            if len(running) == 2:
                two_running.set()
        release.wait(30)
        with lock:
            running.pop()
        return n * 2, threading.current_thread().name

    async def scenario() -> list[tuple[int, str]]:
        tasks = [asyncio.create_task(threads.run(work, n)) for n in range(6)]
        assert await asyncio.to_thread(two_running.wait, 30)
        await asyncio.sleep(0.3)  # time for a third to start, were it allowed to
        with lock:
            assert len(running) == 2
        release.set()
        return await asyncio.gather(*tasks)

    try:
        results = asyncio.run(scenario())
    finally:
        threads.close()
    assert [value for value, _ in results] == [0, 2, 4, 6, 8, 10]
    assert most == 2
    assert all(name.startswith("mss-message") for _, name in results)


def test_message_threads_default_to_the_cores_the_process_may_use() -> None:
    assert MessageThreads().size == max(2, len(os.sched_getaffinity(0)))


def test_pools_and_turns_count_the_cores_the_process_may_use_not_the_machine() -> None:
    # A container's CPU set, or taskset, gives a process fewer cores than the machine has:
    # here one. Each pool and turn is sized to that one, with its own floor.
    pinned = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from mss import cores; from mss.crypto import keys; from mss.runtime import MessageThreads; "
            "from mss.documents import workers as documents; from mss.imap import workers as imap; "
            "print(os.cpu_count(), cores.usable(), MessageThreads().size, keys.ARGON2_AT_ONCE, "
            "documents.WORKERS, imap.WORKERS)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    machine, usable, message_threads, argon2, document_workers, imap_workers = map(int, pinned.stdout.split())
    assert machine == os.cpu_count()
    assert (usable, message_threads, argon2, document_workers, imap_workers) == (1, 2, 1, 2, 1)


def _resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_memory_a_burst_left_free_goes_back_to_the_system_once_idle() -> None:
    threads = MessageThreads(size=1, idle_seconds=0.5)
    kept: list[bytearray] = []

    def burst() -> None:
        # A message's buffers, each followed by a small block that stays: freed, they are
        # holes below blocks in use, which the allocator does not return on its own. 100 KB
        # each: under the size that glibc would map on its own (128 KiB at first).
        blocks = []
        for _ in range(640):
            blocks.append(b"x" * 100_000)
            kept.append(bytearray(4000))
        del blocks

    async def scenario() -> tuple[float, float]:
        await threads.run(burst)
        after_burst = _resident_mib()
        await asyncio.sleep(0.2)
        await threads.run(burst)  # a message within the idle time: the wait starts again
        await asyncio.sleep(2.0)
        return after_burst, _resident_mib()

    memory.give_back()  # what earlier tests left free is not there for the burst to reuse
    before = _resident_mib()
    try:
        after_burst, idle = asyncio.run(scenario())
    finally:
        threads.close()
    assert after_burst - before > 40, (before, after_burst)  # freed, but still the process's
    assert after_burst - idle > 40, (before, after_burst, idle)  # given back once idle


def test_an_idle_timer_that_cannot_start_costs_no_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """The idle timer is armed once a message's work is over, its commit included: a
    process that has no thread left to give it (threading's RuntimeError) still returns the
    message's result, and the next message arms the timer again."""
    threads = MessageThreads(size=1, idle_seconds=0.05)

    def no_thread(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    try:
        with monkeypatch.context() as patched:
            patched.setattr(threading.Timer, "start", no_thread)
            assert asyncio.run(threads.run(lambda: "stored")) == "stored"
            assert threads._idle_timer is None
        assert asyncio.run(threads.run(lambda: "stored too")) == "stored too"
        assert threads._idle_timer is not None
    finally:
        threads.close()


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_memory_start_up_is_set_aside_once_every_door_listens_and_later_cycles_still_go() -> None:
    async def scenario() -> tuple[int, int, int]:
        relay, web = asyncio.Event(), asyncio.Event()
        settling = asyncio.ensure_future(settle_once_listening([relay, web]))
        relay.set()
        await asyncio.sleep(0.05)
        one_listening = gc.get_freeze_count()
        web.set()
        await asyncio.wait_for(settling, 5)
        return one_listening, gc.get_freeze_count(), len(gc.get_objects())

    gc.unfreeze()
    try:
        one_listening, frozen, tracked = asyncio.run(scenario())
        # A cycle made after start-up (a message's objects) is still collected.
        a, b = _Node(), _Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()
    assert one_listening == 0  # not while a door is still starting
    assert frozen > 10_000, frozen  # this process's modules and objects
    assert tracked < frozen / 10, (tracked, frozen)  # full passes walk only what came after


def test_kept_verdicts_hold_only_at_their_revision_for_a_while_and_within_their_limit() -> None:
    verdicts: KeptVerdicts[str] = KeptVerdicts(limit=3, max_age=0.2)
    verdicts.keep(7, {"a@mss.test": "A", "b@mss.test": "B"})
    assert verdicts.get("a@mss.test", 7) == "A"
    assert verdicts.get("a@mss.test", 8) is None  # the directory changed since
    assert verdicts.get("c@mss.test", 7) is None
    verdicts.keep(8, {"a@mss.test": "A2"})  # read again at a newer revision
    assert (verdicts.get("a@mss.test", 8), verdicts.get("a@mss.test", 7)) == ("A2", None)
    # Full: it starts again empty rather than growing.
    verdicts.keep(8, {"c@mss.test": "C", "d@mss.test": "D"})
    assert verdicts.get("b@mss.test", 7) is None and verdicts.get("d@mss.test", 8) == "D"
    # Past its age, a verdict is read again whatever the revision.
    time.sleep(0.25)
    assert verdicts.get("d@mss.test", 8) is None
