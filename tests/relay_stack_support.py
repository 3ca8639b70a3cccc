"""The relay stack a module of SMTP tests shares: one stack and relay, started once for the
module and removed after it (``relay_support.running_stack``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from relay_support import Stack, running_stack


@pytest.fixture(scope="module")
def relay_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack and relay for the tests of this module."""
    yield from running_stack(tmp_path_factory)
