"""The README's commands as written, run against a real relay on loopback."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from mss import accounts, mailbox
from mss.db import session_scope
from mss.relay import RelayServer

from relay_support import SENDER, build_stack

README = Path(__file__).resolve().parent.parent / "README.md"
ROOT = README.parent


def readme_command(program: str) -> list[str]:
    """The first shell command of the README that starts with ``program``, its
    backslash-continued lines joined, split as the shell would."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    for block in blocks:
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            if line.strip().startswith(program + " "):
                return shlex.split(line)
    raise AssertionError(f"the README has no {program} command")


@pytest.fixture
def relay(tmp_path):
    stack = build_stack(tmp_path)
    stack.relay = RelayServer(stack.rt).start()
    try:
        yield stack
    finally:
        stack.close()


def test_readme_swaks_example_sends_the_cda_as_xml(relay):
    """The first-message example, word for word but for the relay's port and the printed
    password: the CDA must arrive as text/xml, read as a CDA R2 document."""
    command = readme_command("swaks")
    server = command.index("--server")
    assert command[server + 1] == "127.0.0.1:2587"
    command[server + 1] = f"127.0.0.1:{relay.port}"
    password = command.index("--auth-password")
    assert command[password + 1] == "<printed password>"
    command[password + 1] = relay.passwords[SENDER]
    recipient = command[command.index("--to") + 1]
    with session_scope(relay.rt.engine) as session:
        accounts.create_account(
            session, relay.settings, relay.rt.master_key, recipient, "recipient password", actor="test"
        )

    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "<~  250 2.0.0 Ok: queued as " in result.stdout, result.stdout[-3000:]
    queued = result.stdout.split("<~  250 2.0.0 Ok: queued as ")[1].split()[0]

    reader = accounts.authenticate(
        relay.rt.engine, relay.settings, recipient, "recipient password", accounts.Origin("cli")
    )
    opened = mailbox.open_message(relay.rt, reader, queued)
    assert [(a.filename, a.content_type, a.kind) for a in opened.attachments] == [
        ("LDL-SES_2022.01.xml", "text/xml", "cda")
    ]
