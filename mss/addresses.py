"""Mail addresses as mss stores and compares them.

One rule for every door and every table: no surrounding blanks, no angle brackets (as an
SMTP path or a header writes them), lower case. Imports nothing of mss, so every layer can
use it.
"""

from __future__ import annotations

from collections.abc import Iterable
from email.utils import getaddresses
from typing import Final

# RFC 5321 4.5.3.1.3: a path holds at most 256 octets, the angle brackets included.
MAX_ADDRESS: Final = 254


def normalise_address(address: str) -> str:
    """``address`` without surrounding blanks or angle brackets, lower-case."""
    return address.strip().strip("<>").strip().lower()


def plausible_address(address: str) -> bool:
    """True when ``address`` could be an account's: one @, printable, no blank, at most
    ``MAX_ADDRESS`` characters."""
    return 3 <= len(address) <= MAX_ADDRESS and address.count("@") == 1 and address.isprintable() and " " not in address


def domain_of(address: str) -> str:
    """The domain part of a normalised address (empty when there is no ``@``)."""
    return address.rpartition("@")[2]


def listed_addresses(fields: Iterable[str]) -> list[str]:
    """The addresses that header field values (To, Cc ...) name, normalised, each once,
    in their order; names and groups left out."""
    found: list[str] = []
    for _name, address in getaddresses(list(fields)):
        address = normalise_address(address) if "@" in address else ""
        if address and address not in found:
            found.append(address)
    return found
