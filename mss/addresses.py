"""Mail addresses as mss stores and compares them.

One rule for every door and every table: no surrounding blanks, no angle brackets (as an
SMTP path or a header writes them), lower case. Imports nothing of mss, so every layer can
use it.
"""

from __future__ import annotations


def normalise_address(address: str) -> str:
    """``address`` without surrounding blanks or angle brackets, lower-case."""
    return address.strip().strip("<>").strip().lower()


def domain_of(address: str) -> str:
    """The domain part of a normalised address (empty when there is no ``@``)."""
    return address.rpartition("@")[2]
