"""The errors dermmobile raises on purpose, each with the exit code the CLI returns.

Every message says what went wrong, what was expected and what to do next.
Anything that is not a DermmobileError is a bug and exits with 1 and a traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_GATE_FAILED = 3
EXIT_MISSING_BACKEND = 4
EXIT_EXPORT_FAILED = 5
EXIT_INTERRUPTED = 130


class DermmobileError(Exception):
    """Base class: an expected failure with a message meant for a person."""

    exit_code = EXIT_INTERNAL


class BadInputError(DermmobileError):
    """A file, folder, option or value given to dermmobile is not usable."""

    exit_code = EXIT_BAD_INPUT


class BadImageError(BadInputError):
    """One image file cannot be decoded; callers skip it and report the path."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class UnsafeFileError(BadInputError):
    """A file asks for something dermmobile refuses to do (run pickled code, escape its folder)."""


class GateFailedError(DermmobileError):
    """An artifact failed a parity gate (agreement, logit error, NaN)."""

    exit_code = EXIT_GATE_FAILED


class MissingBackendError(DermmobileError):
    """A format's converter or runtime is not installed, or needs another OS."""

    exit_code = EXIT_MISSING_BACKEND


class ExportFailedError(DermmobileError):
    """A converter raised, crashed or timed out while writing an artifact."""

    exit_code = EXIT_EXPORT_FAILED


def require(module: str, extra: str):
    """Import a heavy optional module or explain which extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingBackendError(
            f"{module} is not installed ({exc}). Install it with: pip install 'dermmobile[{extra}]'"
        ) from exc
