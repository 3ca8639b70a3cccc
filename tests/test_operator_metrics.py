"""``MSS_METRICS=false``: the instruments do nothing, so nothing is counted (what counting
costs the relay is measured by ``bench/bench_metrics.py``)."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from mss import metrics
from mss.errors import ConfigError
from mss.health import startup_warnings
from mss.runtime import Runtime
from mss.settings import Settings

from web_support import GP, doctor, gp, submit  # noqa: F401  (fixtures)


def test_metrics_off_counts_nothing(rt, env, doctor, gp):
    counter = metrics.SUBMITTED.labels(door="smtp")
    before = counter._value.get()
    turns = ("mss_sqlite_write_turn_seconds_count", {"phase": "hold"})
    turns_before = REGISTRY.get_sample_value(*turns) or 0.0
    off = Runtime(
        settings=Settings.from_env({**env, "MSS_METRICS": "false"}), engine=rt.engine, master_key=rt.master_key
    )
    try:
        submit(off, doctor, [GP], "Suivi", "Bonjour")
        assert counter._value.get() == before
        # Nor its turn at SQLite's write lock.
        assert (REGISTRY.get_sample_value(*turns) or 0.0) == turns_before
        # Nor the door's DATA phases, nor the wait for a message thread.
        timed = [
            ("mss_smtp_data_seconds_count", {"door": "smtp", "phase": "receive"}),
            ("mss_pipeline_stage_seconds_count", {"stage": "queue"}),
        ]
        counts = [REGISTRY.get_sample_value(name, labels) or 0.0 for name, labels in timed]
        metrics.data_phase("smtp", "receive", 0.5)
        asyncio.run(off.messages.run(int))
        assert [REGISTRY.get_sample_value(name, labels) or 0.0 for name, labels in timed] == counts
    finally:
        off.messages.close()
        metrics.set_enabled(True)
    submit(rt, doctor, [GP], "Suivi", "Bonjour")
    assert counter._value.get() == before + 1
    taken = 1 if rt.engine.dialect.name == "sqlite" else 0
    assert (REGISTRY.get_sample_value(*turns) or 0.0) == turns_before + taken
    with pytest.raises(ConfigError, match="MSS_METRICS must be true or false"):
        Settings.from_env({**env, "MSS_METRICS": "sometimes"})


def test_several_submission_processes_without_a_shared_metrics_folder_are_warned_of(rt, env, monkeypatch):
    """With MSS_SMTP_PROCESSES above one, only the first process serves /metrics: without
    multiprocess mode it would count only its own messages, and the operator hears so."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)

    def warned(more: dict[str, str]) -> bool:
        settings = Settings.from_env({**env, **more})
        other = Runtime(settings=settings, engine=rt.engine, master_key=rt.master_key)
        return any("PROMETHEUS_MULTIPROC_DIR" in warning for warning in startup_warnings(other))

    assert not warned({})
    assert warned({"MSS_SMTP_PROCESSES": "2"})
    try:
        assert not warned({"MSS_SMTP_PROCESSES": "2", "MSS_METRICS": "false"})
    finally:
        metrics.set_enabled(True)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/nonexistent-not-read-here")
    assert not warned({"MSS_SMTP_PROCESSES": "2"})
