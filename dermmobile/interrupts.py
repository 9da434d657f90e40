"""Ctrl-C and SIGTERM become a KeyboardInterrupt, but never in the middle of an import.

Why: the converters import native extensions lazily, and some of those (onnx's nanobind
core) run Python code from their C++ initialiser. An exception raised there cannot cross
the C++ frame: the process aborts with SIGABRT and the cleanup that keeps finished
artifacts and removes partial ones never runs. So while any import is on the stack the
handler only notes the signal and sends it again a moment later; it is raised at the
first point where Python owns the stack again.

`deferred()` holds a signal back the same way around the few steps that must not be cut in
two: creating a staging folder and noting its name, renaming a finished file into place and
removing its staging folder. Cut there, a `.partial` folder was left behind (CI, 2026-11-28:
SIGTERM sent the moment a manifest appeared landed in the removal of its staging folder).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)
RETRY_SECONDS = 0.05

_held = {"depth": 0, "signal": None}  # deferred() blocks open, and the first signal that arrived inside them


def _inside_import(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


def _handle(signum: int, frame: FrameType | None) -> None:
    if _held["depth"]:
        _held["signal"] = _held["signal"] or signum
        return
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


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Run the block whole: a SIGINT or SIGTERM arriving inside it is raised when it ends (as KeyboardInterrupt).

    Only for short steps (a mkdtemp, a rename, removing a staging folder): a signal waits for them. Nests; where
    install() was not called, Python's own handlers apply and nothing is held. Python runs signal handlers in the
    main thread only, so other threads hold nothing: a signal held there would be raised in that thread, which
    nobody stops on.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _held["depth"] += 1
    try:
        yield
    finally:
        _held["depth"] -= 1
        if not _held["depth"] and _held["signal"] is not None:
            signum, _held["signal"] = _held["signal"], None
            raise KeyboardInterrupt(signal.Signals(signum).name)
