"""When a process that takes messages gives the memory they used back to the system.

A 1 MB message passes through buffers of 1 to 2 MB each (the received bytes, the parsed
tree, the signed entity, its base64 text, the envelope), and sixteen sessions at once leave
the C allocator (glibc's malloc) with tens of megabytes free in its heaps once they are
done. glibc returns free memory on its own only from the very top of a heap; what lies free
below a block still in use stays with the process. :func:`give_back` returns it all
(``malloc_trim``); ``MessageThreads`` calls it once no message has been under way for a
few seconds, so that a burst of messages does not leave the process at its peak.

Python's cyclic collector, for its part, walks every object it tracks at each full pass: a
serving relay holds about 150,000 from start-up alone (modules, classes, the ORM's
mappings, the runtime's caches), which made each full pass cost about 50 ms of CPU with the
GIL held. :func:`settle` sets those aside once the doors listen (``gc.freeze``): they live
as long as the process, and a full pass then walks only what came after them. (Should one
of them become garbage in a cycle later, a pool replaced after it broke, it stays: at most
once, and no more than start-up made.)

Elsewhere than glibc (musl, macOS) it does nothing: those allocators have no such call.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable
from typing import Final


def _malloc_trim() -> Callable[[int], int] | None:
    # The symbols the process already has (the C library it runs on), without looking for
    # the library by name: ctypes.util.find_library runs ldconfig in a subprocess.
    return getattr(ctypes.CDLL(None), "malloc_trim", None)


_MALLOC_TRIM: Final = _malloc_trim()


def give_back() -> bool:
    """Return to the system the memory that lies free in every heap of the process;
    whether some was returned (False where the allocator cannot). It takes each heap's lock
    in turn: call it when the process is idle."""
    return _MALLOC_TRIM is not None and bool(_MALLOC_TRIM(0))


def settle() -> None:
    """Leave every object the process holds now out of the cyclic collector's passes, for
    the rest of its life; call it once, when start-up is over and before the first message.
    What start-up made stays as long as the process: freezing it loses nothing, and spares
    each full pass a walk through it."""
    gc.collect()
    gc.freeze()
