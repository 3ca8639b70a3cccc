"""The ``mss`` command run in-process, as an operator runs it at a shell, with the
environment of the service it administers."""

from __future__ import annotations

from typer.testing import CliRunner, Result

from cli.main import app


def invoke(env: dict[str, str], *args: str, input: str | None = None, ok: bool = True) -> Result:
    """The result of ``mss *args`` under ``env``; asserts success unless ``ok=False``."""
    result = CliRunner().invoke(app, list(args), input=input, env=env, catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, (result.stdout, result.stderr)
    return result
