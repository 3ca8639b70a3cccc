"""Envelopes opened in worker processes, so that serving bodies uses every core.

In decrypted mode each body a client fetches is an envelope opened with the reader's key
(RSA 3072, then AES). cryptography holds the GIL through that work, so in the server's own
process a full sync keeps one core busy with it and with everything else the door does,
while the other waits. ``open_envelope`` hands the opening to a pool of worker processes
(pebble's ``ProcessPool``, one worker per core) and waits for it in the calling thread;
``open_envelopes`` opens several in one task.

The reader's key travels with each task, as the DER the session already holds unwrapped,
over the pool's pipe, and is let go of when the task ends, in the worker and in the
server's pool (``mss.processes``): a worker keeps no key and no envelope between tasks,
only the contents its last task opened, which the pool's worker loop refers to until the
next task; and it holds nothing else of the parent (started from a fork server that
imported this module; no database connection).
An envelope the worker cannot open with the reader's current certificate (one encrypted to
an earlier certificate, a malformed one) and a worker lost under a task give None: the
caller then opens the envelope in its own process, where the reader's past keys and the
errors are handled as for every other door.

The pool is one per process, started with the listeners (``start``) or on first use; as
with ``mss.documents.workers``, every entry point keeps its ``if __name__ == "__main__"``
guard.
"""

from __future__ import annotations

import logging
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING, Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from pebble import ProcessExpired

from mss import cores
from mss.crypto import keys, smime
from mss.processes import WorkerPool

if TYPE_CHECKING:  # the workers import this module alone, not the account services
    from mss.accounts import UnlockedAccount

log = logging.getLogger("mss.imap")

WORKERS: Final = cores.usable()
# An opening takes milliseconds; a task still running after this is given up (the worker is
# replaced) and the envelope opened in the server's process.
TASK_SECONDS: Final = 30.0

_workers = WorkerPool((__name__,), WORKERS, name="mss-envelopes")
start = _workers.start
stop = _workers.stop


def _open(envelopes: list[bytes], certificate_der: bytes, key_der: bytes) -> list[bytes | None]:
    """In the worker: each envelope's content, or None for one that does not open here.
    The key is loaded once for the task (its first use costs about half an RSA operation)."""
    try:
        certificate = x509.load_der_x509_certificate(certificate_der)
        private_key = keys.private_key_from_der(key_der, authenticated=True)
    except Exception:
        return [None] * len(envelopes)
    opened: list[bytes | None] = []
    for envelope in envelopes:
        try:
            opened.append(smime.decrypt(envelope, certificate, private_key))
        except Exception:
            opened.append(None)
    return opened


def open_envelopes(envelopes: list[bytes], reader: UnlockedAccount) -> list[bytes | None]:
    """The contents of envelopes addressed to ``reader``'s current certificate, opened in
    one task of a worker process (blocking: call it from a thread); None for each one that
    does not open there, for the caller to open it itself."""
    args = (envelopes, reader.certificate.public_bytes(Encoding.DER), reader.private_key_der)
    try:
        future = _workers.schedule(_open, args=args, timeout=TASK_SECONDS * max(1, len(envelopes)))
        return future.result()
    except (ProcessExpired, TimeoutError, CancelledError, RuntimeError, OSError) as exc:
        # A pool that stopped or broke is replaced at the next opening (WorkerPool.running).
        log.warning("envelope worker failed (%s): opened in the server's process", type(exc).__name__)
        return [None] * len(envelopes)


def open_envelope(envelope: bytes, reader: UnlockedAccount) -> bytes | None:
    """One envelope, as ``open_envelopes``."""
    return open_envelopes([envelope], reader)[0]
