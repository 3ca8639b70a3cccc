"""The cores this process may run on, which its pools and turns are sized to.

A container's CPU set or ``taskset`` may give the process fewer cores than the machine has,
and ``os.cpu_count()`` counts the machine's: pools sized to it would start workers and
threads that only wait (an IMAP worker holds about 10 MiB). This counts the process's CPU
affinity where the system has one (Linux), and the machine's cores elsewhere (macOS).
"""

from __future__ import annotations

import os


def usable() -> int:
    """How many cores this process may run on (1 at least)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no CPU affinity on this system
        return max(1, os.cpu_count() or 1)
