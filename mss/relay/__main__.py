"""``python -m mss.relay``: run one relay process with the settings from the environment.

The submission door of ``mss serve relay``: logs to stderr, stops on SIGTERM or SIGINT after
letting sessions that are storing a message reply. ``mss serve`` also starts it for the
submission port's other processes (``mss.relay.replicas``).
"""

from __future__ import annotations

import sys

from mss import logs
from mss.errors import MssError
from mss.relay.replicas import follow_parent
from mss.relay.server import run_relay
from mss.runtime import open_runtime
from mss.settings import Settings


def main() -> int:
    """Run the relay until stopped; return the process exit status."""
    follow_parent()
    try:
        settings = Settings.from_env()
    except MssError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    logs.configure(settings.operator.log_format)
    try:
        rt = open_runtime(settings)
    except MssError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    try:
        run_relay(rt)
    except MssError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f"{rt.settings.relay.host}:{rt.settings.relay.port}"
        print(f"error: cannot listen on {where}: {exc.strerror}", file=sys.stderr)
        return 1
    finally:
        rt.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
