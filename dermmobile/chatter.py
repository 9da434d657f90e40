"""Third-party output goes to a log file; dermmobile's own lines stay on the terminal.

Converters talk a lot, and much of it comes from C++ writing straight to file descriptors
1 and 2 (absl's `flatbuffer_export.cc` op counts, `cpuinfo_utils.cpp`, XNNPACK delegate
lines), where no Python-level redirect reaches. While `to_log` is active, descriptors 1
and 2 point at the log file, so C++ output, Python warnings, other libraries' logging and
progress bars all land there. dermmobile's own messages go through `say`, which writes to a
duplicate of the terminal's stderr taken before the switch.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import TextIO

_terminal: TextIO | None = None  # our own channel while a capture is active


def terminal() -> TextIO:
    """Where dermmobile's own messages and progress bars go: the terminal's stderr, also during a capture."""
    return _terminal or sys.stderr


def say(message: str) -> None:
    """One line of dermmobile's own, on the terminal even while third-party output is captured."""
    print(message, file=terminal(), flush=True)


@contextlib.contextmanager
def to_log(log_file: Path):
    """Send everything written to stdout/stderr (C++ included) to `log_file`, appending; nested calls share the first."""
    global _terminal
    if _terminal is not None:
        yield
        return
    from dermmobile.fsutil import append_text

    append_text(Path(log_file), "")  # creates it as ours (refuses a link), before the descriptors move
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    log_fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0))
    terminal = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        _terminal = terminal
        yield
    finally:
        _terminal = None
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log_fd):
            os.close(fd)
        terminal.close()
