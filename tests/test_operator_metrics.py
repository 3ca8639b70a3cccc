"""``MSS_METRICS=false``: the instruments do nothing, so nothing is counted (what counting
costs the relay is measured by ``bench/bench_metrics.py``)."""

from __future__ import annotations

import pytest

from mss import metrics
from mss.errors import ConfigError
from mss.runtime import Runtime
from mss.settings import Settings

from web_support import GP, doctor, gp, submit  # noqa: F401  (fixtures)


def test_metrics_off_counts_nothing(rt, env, doctor, gp):
    counter = metrics.SUBMITTED.labels(door="smtp")
    before = counter._value.get()
    off = Runtime(
        settings=Settings.from_env({**env, "MSS_METRICS": "false"}), engine=rt.engine, master_key=rt.master_key
    )
    try:
        submit(off, doctor, [GP], "Suivi", "Bonjour")
        assert counter._value.get() == before
    finally:
        metrics.set_enabled(True)
    submit(rt, doctor, [GP], "Suivi", "Bonjour")
    assert counter._value.get() == before + 1
    with pytest.raises(ConfigError, match="MSS_METRICS must be true or false"):
        Settings.from_env({**env, "MSS_METRICS": "sometimes"})
