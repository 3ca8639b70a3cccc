"""Document checks in worker processes: off the event loop, off the GIL, within a deadline.

lxml and pypdf hold the GIL through long calls, so a check running in a thread of the relay
or the web still stops their event loop while it runs; a hostile document can make that last
long. The services therefore never check a document in their own process: each function
here hands the check to a pool of worker processes (pebble's ``ProcessPool``) and waits for
it in the calling thread. The checks themselves bound their work (``DocumentLimits``:
depth, elements, attributes per element, narrative text, PDF objects, archive sizes); the
pool adds the last bound, time: a check that runs past ``limits.max_check_seconds`` has its
worker stopped and replaced, and the document is refused (``DocumentTooComplex``, a
permanent refusal); so is one whose worker dies under it (a parser crash, memory).

Workers are started from a fork server that has already imported ``mss.documents``, so a
replaced worker is ready in milliseconds and holds nothing of the parent (no database
connection, no key). The pool is one per process, started on first use or by ``start``.
As with any multiprocessing start method but fork, a worker imports the parent's main
module: every entry point keeps its ``if __name__ == "__main__"`` guard.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import TimeoutError as CheckTimedOut
from typing import Any, Final, TypeVar

from pebble import ProcessExpired

from mss import cores
from mss.documents import cda, detect, xdm
from mss.documents.base import Document, DocumentLimits, DocumentTooComplex
from mss.documents.cda import CdaInfo
from mss.documents.xdm import XdmInfo
from mss.processes import WorkerPool

log = logging.getLogger("mss.documents")

T = TypeVar("T")

# As many as the cores the process may use (two at least, eight at most). A check is CPU
# work: more workers than cores run no more checks in a second, and each one holds its own
# memory (about 8 MiB at start, 11 to 13 under a load of 1 MB PDFs). A check waiting on a
# slow hostile document holds one worker until its deadline, and an account holds at most
# half of them (``account_share``), so the others stay free for everyone else.
WORKERS: Final = min(8, max(2, cores.usable()))

_lock = threading.Lock()
# pypdf is imported where a PDF is read (``pdf_reading``): by the fork server, not by the
# process that hands the checks over.
_workers = WorkerPool(("mss.documents", "mss.documents.pdf_reading"), WORKERS, name="mss-documents")
stop = _workers.stop


def account_share() -> int:
    """Checks one account may have running at once, half of the workers: an account that
    sends costly documents from many sessions waits for its own turn and leaves workers to
    everybody else."""
    return max(1, _workers.workers // 2)


_shares: collections.defaultdict[str, threading.BoundedSemaphore] = collections.defaultdict(
    lambda: threading.BoundedSemaphore(account_share())
)


def start(processes: int = 1) -> None:
    """Start the workers now (a server's start-up; blocking): WORKERS, or, when
    ``processes`` processes of the service each have a pool (``MSS_SMTP_PROCESSES``),
    this one's share of them, at least two. A pool of another size is replaced, and the
    accounts' shares follow it."""
    size = max(2, WORKERS // processes)
    if size != _workers.workers:
        with _lock:
            _shares.clear()
    _workers.start(size)


def _in_worker(
    check: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    filename: str,
    limits: DocumentLimits,
    owner: str | None = None,
) -> T:
    """``check(*args, **kwargs)`` in a worker process, within ``owner``'s share of the
    workers (``account_share``); its DocumentError is raised here."""
    with _lock:
        share = _shares[owner] if owner else None
    if share is None:
        return _wait(check, args, kwargs, filename, limits)
    with share:
        return _wait(check, args, kwargs, filename, limits)


def _size(args: tuple[Any, ...]) -> int:
    """The bytes of the document a check was given (its first bytes argument)."""
    return next((len(a) for a in args if isinstance(a, (bytes, bytearray, memoryview))), 0)


def _wait(
    check: Callable[..., T], args: tuple[Any, ...], kwargs: Mapping[str, Any], filename: str, limits: DocumentLimits
) -> T:
    # After a large document, the worker gives back what its parse took (mss.processes).
    future = _workers.schedule(check, args=args, kwargs=kwargs, timeout=limits.max_check_seconds)
    try:
        return future.result()
    except CheckTimedOut as exc:
        # Not the file's name: a sender's, which may name the patient.
        log.warning("a document check stopped after %g s (%d bytes)", limits.max_check_seconds, _size(args))
        raise DocumentTooComplex(
            filename, f"takes longer than {limits.max_check_seconds:g} seconds to check, which is not allowed"
        ) from exc
    except ProcessExpired as exc:
        log.warning("a document check's worker died (exit code %s, %d bytes)", exc.exitcode, _size(args))
        raise DocumentTooComplex(filename, "stopped the program that checks it, which is not allowed") from exc


def inspect_attachment(
    filename: str,
    content_type: str,
    data: bytes,
    *,
    limits: DocumentLimits,
    allow_archive: bool = True,
    owner: str | None = None,
) -> Document:
    """``mss.documents.inspect_attachment`` in a worker, for ``owner`` (the account that
    sends or reads it). Raises what it raises, and DocumentTooComplex past the deadline."""
    return _in_worker(
        detect.inspect_attachment,
        (filename, content_type, data),
        {"limits": limits, "allow_archive": allow_archive},
        filename,
        limits,
        owner,
    )


def parse_cda(data: bytes, *, filename: str, limits: DocumentLimits, owner: str | None = None) -> CdaInfo:
    """``mss.documents.parse_cda`` in a worker (the web renders what it returns)."""
    return _in_worker(cda.parse_cda, (data,), {"filename": filename, "limits": limits}, filename, limits, owner)


def parse_xdm(data: bytes, *, filename: str, limits: DocumentLimits, owner: str | None = None) -> XdmInfo:
    """``mss.documents.parse_xdm`` in a worker."""
    return _in_worker(xdm.parse_xdm, (data,), {"filename": filename, "limits": limits}, filename, limits, owner)


def read_xdm_document(
    data: bytes, index: int, *, filename: str, limits: DocumentLimits, owner: str | None = None
) -> tuple[xdm.XdmDocument, bytes]:
    """``mss.documents.xdm.read_document`` (one document of a package, read through the
    package's checks) in a worker."""
    return _in_worker(
        xdm.read_document, (data, index), {"filename": filename, "limits": limits}, filename, limits, owner
    )


def level_one_pdf(data: bytes, *, filename: str, limits: DocumentLimits, owner: str | None = None) -> bytes | None:
    """``mss.documents.level_one_pdf`` (the PDF body of a level-1 CDA) in a worker."""
    return _in_worker(cda.level_one_pdf, (data,), {"filename": filename, "limits": limits}, filename, limits, owner)


def embedded_file(
    data: bytes, *, filename: str, limits: DocumentLimits, index: int, owner: str | None = None
) -> tuple[str, bytes] | None:
    """``mss.documents.embedded_file`` (a PDF or image a CDA carries) in a worker."""
    return _in_worker(
        cda.embedded_file, (data,), {"filename": filename, "limits": limits, "index": index}, filename, limits, owner
    )
