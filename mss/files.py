"""Writing files that hold secrets or must never be seen half-written: one way, everywhere.

A file is written next to its final name, flushed to disk and renamed into place, so a
reader never sees a partial file. A private file is *born* 0600 in a folder made 0700 when
it is created here (never narrowed after the fact, never keeping an older file's wider
mode); a public one is 0644. Imports nothing of mss.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_file(path: Path, data: bytes, *, private: bool) -> None:
    """Write ``data`` to ``path`` atomically (0600 when ``private``, else 0644)."""
    path = Path(path)
    path.parent.mkdir(mode=0o700 if private else 0o755, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def create_private(path: Path, data: bytes) -> bool:
    """Create ``path`` 0600 with ``data`` unless it exists; True when this call created it.

    Two processes starting at once: exactly one creates the file, the other reads theirs.
    The content appears under the final name only once it is complete.
    """
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)  # fails when the file exists: the first writer wins
        except FileExistsError:
            return False
        return True
    finally:
        temporary.unlink(missing_ok=True)
