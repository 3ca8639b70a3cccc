"""An SMTP server in a process of its own, for tests that kill it and benchmarks that time it:
a free loopback port to give it, a start that returns once it greets, and the processes it
started (Linux ``/proc``).

It imports nothing of the test suite, so that a benchmark can use it too.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Final

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# The settings with which `mss serve relay` opens its submission port only, on loopback: no
# MX door, no metrics port. The caller adds the port (MSS_SMTP_PORT).
RELAY_ALONE: Final[Mapping[str, str]] = MappingProxyType(
    {"MSS_SMTP_HOST": "127.0.0.1", "MSS_MX_PORT": "0", "MSS_METRICS_PORT": "0"}
)


def _ephemeral_ports() -> range:
    """The ports the kernel gives outgoing connections (Linux; its default elsewhere)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_port() -> int:
    """A loopback port that nothing listens on now, outside the range the kernel gives
    outgoing connections: a port chosen now is often bound seconds later (after a PKI and
    a directory are made), and meanwhile any connection of the suite (the PostgreSQL pass
    beside this one opens hundreds) could be given it as its own end."""
    ephemeral = _ephemeral_ports()
    chosen = [port for port in range(10_000, 32_768) if port not in ephemeral]
    for _ in range(50):
        port = random.choice(chosen) if chosen else 0
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # taken: another
            return sock.getsockname()[1]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def processes() -> dict[int, tuple[int, Path]]:
    """Every process now: its parent and its /proc folder."""
    found: dict[int, tuple[int, Path]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        found[int(entry.name)] = (int(text[text.rindex(")") + 2 :].split()[1]), entry)
    return found


def children(pid: int, running: Mapping[int, tuple[int, Path]]) -> list[int]:
    """The processes of ``running`` whose parent is ``pid``."""
    return [child for child, (parent, _folder) in running.items() if parent == pid]


def process_tree(pid: int, running: Mapping[int, tuple[int, Path]]) -> list[Path]:
    """The /proc folders of ``pid`` and its descendants in ``running``."""
    folders, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        if current in running:
            folders.append(running[current][1])
        frontier.extend(children(current, running))
    return folders


def greets(port: int) -> bool:
    """Whether an SMTP server on 127.0.0.1:``port`` answers a connection with ``220``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            return sock.recv(100).startswith(b"220")
    except OSError:
        return False


def start_server(
    command: Sequence[str],
    env: Mapping[str, str],
    log: Path,
    *ports: int,
    cwd: Path = PROJECT_ROOT,
    timeout: float = 60,
) -> subprocess.Popen[bytes]:
    """Start ``command`` in ``cwd``, its output appended to ``log``; return once it greets on
    each of ``ports``. Raises RuntimeError, with the end of the log, if it exits first or
    does not greet within ``timeout`` seconds."""
    with log.open("ab") as out:
        process = subprocess.Popen(list(command), env=dict(env), cwd=cwd, stdout=out, stderr=out)
    deadline = time.monotonic() + timeout
    for port in ports:
        while not greets(port):
            if process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited: {log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command[0]} did not start: {log.read_text()[-3000:]}")
            time.sleep(0.05)
    return process


def tcp_sockets(port: int, state: str) -> set[int]:
    """The inodes of the IPv4 TCP sockets of local ``port`` in ``state`` (as /proc/net/tcp
    writes it: ``0A`` listening, ``01`` established)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
            found.add(int(fields[9]))
    return found


def sockets_of(pid: int) -> set[int]:
    """The inodes of the sockets process ``pid`` holds open (none if it has ended)."""
    found = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = str(fd.readlink())
            except OSError:
                continue
            if target.startswith("socket:["):
                found.add(int(target[8:-1]))
    except OSError:
        pass
    return found


def thread_names(pid: int | str = "self") -> set[str]:
    """The names the threads of process ``pid`` show to the system (Linux)."""
    names = set()
    for comm in Path(f"/proc/{pid}/task").glob("*/comm"):
        try:
            names.add(comm.read_text().strip())
        except OSError:
            continue  # a thread that ended meanwhile
    return names
