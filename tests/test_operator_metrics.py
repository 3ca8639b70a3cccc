"""Metrics and the service: ``MSS_METRICS=false`` counts nothing (what counting costs the
relay is measured by ``bench/bench_metrics.py``), and a count that cannot be made loses
nothing else."""

from __future__ import annotations

import asyncio
import os
import shutil
import smtplib
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from mss import metrics
from mss.db import session_scope
from mss.errors import ConfigError
from mss.health import startup_warnings
from mss.models import Message
from mss.runtime import Runtime
from mss.settings import Settings

from metrics_support import counted
from relay_support import RECIPIENTS, SENDER, build_stack, message
from server_process import free_port, start_server
from web_support import GP, doctor, gp, submit  # noqa: F401  (fixtures)


def test_metrics_off_counts_nothing(rt, env, doctor, gp):
    def submitted() -> float:
        return counted("mss_messages_submitted_total", door="smtp")

    def turns() -> float:
        return counted("mss_sqlite_write_turn_seconds_count", phase="hold")

    def timed() -> list[float]:
        return [
            counted("mss_smtp_data_seconds_count", door="smtp", phase="receive"),
            counted("mss_pipeline_stage_seconds_count", stage="queue"),
        ]

    before, turns_before = submitted(), turns()
    off = Runtime(
        settings=Settings.from_env({**env, "MSS_METRICS": "false"}), engine=rt.engine, master_key=rt.master_key
    )
    try:
        submit(off, doctor, [GP], "Suivi", "Bonjour")
        assert submitted() == before
        # Nor its turn at SQLite's write lock.
        assert turns() == turns_before
        # Nor the door's DATA phases, nor the wait for a message thread.
        counts = timed()
        metrics.data_phase("smtp", "receive", 0.5)
        asyncio.run(off.messages.run(int))
        assert timed() == counts
    finally:
        off.messages.close()
        metrics.set_enabled(True)
    submit(rt, doctor, [GP], "Suivi", "Bonjour")
    assert submitted() == before + 1
    taken = 1 if rt.engine.dialect.name == "sqlite" else 0
    assert turns() == turns_before + taken
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


def test_a_metrics_folder_gone_loses_counts_not_messages(tmp_path: Path) -> None:
    """Counting never decides an outcome. With the multiprocess metrics folder removed
    after the relay started (a temporary-files cleaner, an operator's mistake), the
    relay's first timing of a DATA cannot open its file: the updates are lost and logged,
    once, and each message is still taken, stored and answered 250."""
    stack = build_stack(tmp_path)
    folder = tmp_path / "metrics"
    folder.mkdir()
    port = free_port()
    env = {
        **os.environ,
        **stack.env,
        "MSS_SMTP_HOST": "127.0.0.1",
        "MSS_SMTP_PORT": str(port),
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
    }
    log = tmp_path / "relay.log"
    relay = start_server([sys.executable, "-m", "mss.relay"], env, log, port)
    try:
        shutil.rmtree(folder)
        client = smtplib.SMTP("127.0.0.1", port, timeout=60)
        client.starttls(context=stack.client_context())
        client.login(SENDER, stack.passwords[SENDER])
        answers = []
        for number in range(2):
            client.mail(SENDER)
            client.rcpt(RECIPIENTS[0])
            answers.append(client.data(message(SENDER, RECIPIENTS[:1], subject=f"message {number}")))
        client.quit()
        assert [code for code, _ in answers] == [250, 250], (answers, log.read_text()[-2000:])
        with session_scope(stack.rt.engine) as session:
            stored = set(session.scalars(select(Message.queue_id)))
        assert {text.decode().rsplit(" ", 1)[1] for _, text in answers} <= stored
        # Reported once a minute at most, with how many were lost.
        said = log.read_text()
        assert said.count("update(s) lost") == 1 and "metrics: 1 update(s) lost" in said
    finally:
        relay.terminate()
        relay.wait(timeout=60)
        stack.close()


def test_a_wrong_use_of_an_instrument_still_raises() -> None:
    """Only values that cannot be written are let go: a mistake in the code still fails."""
    with pytest.raises(ValueError):
        metrics.SUBMITTED.labels(door="smtp").inc(-1)
    with pytest.raises(ValueError):
        metrics.REFUSED.labels(door="smtp")
