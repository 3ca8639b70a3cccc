"""Writing files that hold secrets or must never be seen half-written: one way, everywhere.

A file is written next to its final name, flushed to disk and renamed into place, so a
reader never sees a partial file. A private file is *born* 0600 in a folder made 0700 when
it is created here (never narrowed after the fact, never keeping an older file's wider
mode); a public one is 0644. Imports nothing of mss.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def write_file(path: Path, data: bytes, *, private: bool) -> None:
    """Write ``data`` to ``path`` atomically (0600 when ``private``, else 0644)."""
    with replacing(path, private=private) as handle:
        handle.write(data)


@contextmanager
def replacing(path: Path, *, private: bool) -> Iterator[BinaryIO]:
    """A handle whose bytes become ``path`` (0600 when ``private``, else 0644) once the block
    ends without an error, and nothing at all otherwise: written beside it, flushed to disk,
    renamed into place."""
    path = Path(path)
    path.parent.mkdir(mode=0o700 if private else 0o755, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def unfit_output(path: Path) -> str | None:
    """Why ``path`` cannot be a file these functions write (they replace what is there), or
    None: it is a symbolic link, a folder, a device or anything but a regular file, or a
    folder on its way is a file ("Not a directory")."""
    path = Path(path)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    if mode is not None:
        if stat.S_ISLNK(mode):
            return "it is a symbolic link (name the file itself)"
        if stat.S_ISDIR(mode):
            return "it is a folder"
        if not stat.S_ISREG(mode):
            return "it is not a regular file (a device, a pipe or a socket)"
    return None


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
