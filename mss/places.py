"""Places at a door: who holds one, bounded in all and from one client address (so that one
client cannot take every place there is). In-process: each process of a door counts its own.

The SMTP doors (``mss.relay.protocol.SessionRegistry``) and IMAP (``mss.imap.server.Registry``)
each keep one, and answer a refusal in their own protocol.
"""

from __future__ import annotations

from collections import Counter
from typing import Generic, TypeVar

T = TypeVar("T")


class Places(Generic[T]):
    """The holders of places, at most ``limit`` in all and ``per_client`` from one address."""

    def __init__(self, limit: int, per_client: int) -> None:
        self.limit = limit
        self.per_client = per_client
        self.holders: dict[T, str] = {}
        """Each holder, with the client address it came from."""
        self._by_client: Counter[str] = Counter()

    def full(self) -> bool:
        """No place is left at all."""
        return len(self.holders) >= self.limit

    def full_for(self, client: str) -> bool:
        """``client``'s address holds its share."""
        return self._by_client[client] >= self.per_client

    def take(self, holder: T, client: str) -> None:
        self.holders[holder] = client
        self._by_client[client] += 1

    def give_back(self, holder: T) -> None:
        """Let go of ``holder``'s place (once: a second call changes nothing)."""
        client = self.holders.pop(holder, None)
        if client is not None:
            self._by_client[client] -= 1
            if self._by_client[client] <= 0:
                del self._by_client[client]
