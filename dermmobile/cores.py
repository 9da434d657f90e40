"""How many CPU cores this process may use: the one answer for thread pools, worker counts and the bench's defaults.

Standard library only, so that the test suite's conftest can ask before numpy or torch load.
"""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (taskset, a container's cpuset), else every core the OS
    reports (macOS has no affinity call)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
