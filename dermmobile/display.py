"""Untrusted text on its way to a person: terminals and plots.

Labels, file names and runtime messages come from files anyone may have written. Printed
raw, an ANSI escape sequence in a class name can rewrite the terminal, and `$...$` in a
label is mathtext to matplotlib, which raises on an unknown command and takes the whole
report with it.

- `printable` replaces control characters (C0, DEL, C1, and the bidirectional overrides
  that reorder what is shown) with visible escapes; newline and tab stay unless asked.
  `dermmobile.cli.main` passes everything a command prints to stdout, and every error
  message, through it; code printing other untrusted text to stderr calls it itself.
- `pyplot` returns matplotlib's pyplot with the Agg backend and mathtext off, so every
  label is drawn as the plain text it is.
"""

from __future__ import annotations

import io
import re

# C0 controls except tab/newline, DEL, C1 controls, Unicode's bidirectional formatting characters, and
# lone surrogates (undecodable bytes of a file name, which a strict UTF-8 terminal stream cannot encode).
_OTHERS = "\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_CONTROL = re.compile(f"[\x00-\x08\x0b-\x1f{_OTHERS}]")
_CONTROL_ALL = re.compile(f"[\x00-\x1f{_OTHERS}]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, keep_newlines: bool = True) -> str:
    """`text` with control characters shown as escapes (ESC becomes the four characters \\x1b)."""
    return (_CONTROL if keep_newlines else _CONTROL_ALL).sub(_escape, str(text))


class PrintableStream(io.TextIOBase):
    """A text stream that escapes control characters on their way to another stream (stdout of the CLI)."""

    def __init__(self, inner):
        self.inner = inner

    def write(self, text: str) -> int:
        self.inner.write(printable(text))
        return len(text)

    def flush(self) -> None:
        self.inner.flush()

    def isatty(self) -> bool:
        return self.inner.isatty()

    def fileno(self) -> int:
        return self.inner.fileno()

    @property
    def encoding(self):
        return getattr(self.inner, "encoding", "utf-8")


def pyplot():
    """matplotlib.pyplot, headless, drawing every string as plain text (no mathtext, no TeX)."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False
    matplotlib.rcParams["text.usetex"] = False
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig, dpi: int = 120) -> bytes:
    """The PNG bytes of a figure: written by us (atomically), never by matplotlib opening a path."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    return buffer.getvalue()
