"""Ctrl-C and SIGTERM become a KeyboardInterrupt, but never in the middle of an import.

Why: the converters import native extensions lazily, and some of those (onnx's nanobind
core) run Python code from their C++ initialiser. An exception raised there cannot cross
the C++ frame: the process aborts with SIGABRT and the cleanup that keeps finished
artifacts and removes partial ones never runs. So while any import is on the stack the
handler only notes the signal and sends it again a moment later; it is raised at the
first point where Python owns the stack again.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)
RETRY_SECONDS = 0.05


def _inside_import(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


def _handle(signum: int, frame: FrameType | None) -> None:
    if _inside_import(frame):
        # A daemon timer: if the process ends first, nothing is left behind.
        timer = threading.Timer(RETRY_SECONDS, os.kill, (os.getpid(), signum))
        timer.daemon = True
        timer.start()
        return
    raise KeyboardInterrupt(signal.Signals(signum).name)


def install() -> None:
    """Route SIGINT and SIGTERM through the import-safe handler (main thread only)."""
    for signum in INTERRUPT_SIGNALS:
        signal.signal(signum, _handle)
