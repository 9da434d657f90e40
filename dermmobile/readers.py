"""Reading untrusted files: regular files only, bounded in size, JSON bounded in depth.

Every file dermmobile reads may be hostile. A FIFO or a device named like a manifest
would make a plain `open()` block or read forever, and a 100,000-level nested JSON
document exhausts Python's recursion. So every reader goes through here:

- `open_regular` opens with O_NONBLOCK (a FIFO opens at once instead of waiting for a
  writer), then checks with `fstat` on the open descriptor that it is a regular file,
  so the check and the read concern the same file. A symlink is followed (users link
  their data), but what it points to must be a regular file too.
- `read_bytes` reads at most a stated number of bytes and says so when a file is larger.
- `read_json` / `parse_json` bound the nesting depth (the C parser's recursion guard
  stops a 100,000-level document at once; an iterative pass enforces the lower
  limit), refuse NaN, Infinity and numbers that overflow to infinity (1e400), and
  duplicate keys (two parsers, Python's and the app's, could pick different values).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from dermmobile.errors import BadInputError

MB = 1 << 20
# Limits per kind of file. Generous for what dermmobile writes, far below what would hurt.
MAX_MANIFEST_BYTES = 16 * MB  # a 198-class manifest with parity details is well under 1 MB
MAX_CHECKPOINT_HEADER_BYTES = 64 * MB  # safetensors header: tensor table + metadata (test file lists)
MAX_MERGE_BYTES = 16 * MB  # a phone's bench rows: hundreds of bytes each
MAX_REPORT_BYTES = 64 * MB  # a whole bench.json (flips and confusion matrices included)
MAX_JSON_DEPTH = 32  # our deepest document (bench.json) nests 6 levels

_KIND = {
    stat.S_IFDIR: "a folder",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symbolic link",
}


def file_kind(mode: int) -> str:
    return "a regular file" if stat.S_ISREG(mode) else _KIND.get(stat.S_IFMT(mode), "a special file")


def _not_regular(path: Path, what: str, kind: str) -> BadInputError:
    via = ""
    with contextlib.suppress(OSError):
        if os.path.islink(path):
            via = f" (through a symbolic link to {os.readlink(path)})"
    return BadInputError(f"{what} {path} is {kind}{via}, not a regular file; give the path of a regular file")


def check_regular(path: Path, what: str = "file") -> os.stat_result:
    """stat() `path` (following links) and refuse anything but a regular file, naming what it is."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise BadInputError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise BadInputError(f"{what} {path} cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        raise _not_regular(path, what, file_kind(info.st_mode))
    return info


def regular_file_problem(path: Path) -> str | None:
    """Why `path` cannot be read as a regular file ("file not found", "a FIFO (named pipe), not a regular file"), or None."""
    try:
        check_regular(path, "file")
    except BadInputError as exc:
        return str(exc).split(f"{path} ", 1)[-1].split("; give the path", 1)[0]
    return None


@contextlib.contextmanager
def open_regular(path: Path, what: str = "file") -> Iterator[BinaryIO]:
    """Open a regular file for reading in binary mode, or raise BadInputError naming what it is instead.

    Never blocks on a FIFO, never reads a device; the type check is made on the opened descriptor.
    """
    path = Path(path)
    check_regular(path, what)  # names sockets (which cannot be opened) and missing files clearly
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise BadInputError(f"{what} {path} cannot be opened ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # swapped between the stat and the open
            raise _not_regular(path, what, file_kind(info.st_mode))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle


def read_bytes(path: Path, what: str = "file", max_bytes: int = MAX_MANIFEST_BYTES) -> bytes:
    """The whole content of a regular file of at most `max_bytes` bytes."""
    with open_regular(path, what) as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise BadInputError(f"{what} {path} is larger than the {_size(max_bytes)} limit for this kind of file; refused")
    return data


def _size(n: int) -> str:
    return f"{n // MB} MB" if n >= MB else f"{n} bytes"


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _no_duplicates(pairs: list) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"the key {twice[:80]!r} appears twice in one object")
    return out


def parse_json(data: bytes | str, what: str, max_depth: int = MAX_JSON_DEPTH):
    """Parse a JSON text that came from a file, with the limits above; errors name `what`."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{what}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_no_duplicates)
    except RecursionError:  # the C parser's own guard, long before the stack is at risk
        raise BadInputError(f"{what}: JSON nested more than {max_depth} levels deep; refused") from None
    except ValueError as exc:  # JSONDecodeError, the hooks' refusals, a 5000-digit integer
        raise BadInputError(f"{what}: not valid JSON ({' '.join(str(exc).split())[:300]})") from None
    _check_tree(value, what, max_depth)
    return value


def _check_tree(value, what: str, max_depth: int) -> None:
    """Depth and finite numbers, without recursion (1e400 parses as infinity). One pass, leaves checked in place."""
    level = [value] if isinstance(value, dict | list) else []
    depth = 0
    isfinite = math.isfinite
    while level:
        depth += 1
        if depth > max_depth:
            raise BadInputError(f"{what}: JSON nested more than {max_depth} levels deep; refused")
        below = []
        for container in level:
            for child in container.values() if type(container) is dict else container:
                kind = type(child)
                if kind is dict or kind is list:
                    below.append(child)
                elif kind is float and not isfinite(child):
                    raise BadInputError(f"{what}: a number overflows a 64-bit float (like 1e400); refused")
        level = below


def read_json(path: Path, what: str = "JSON file", max_bytes: int = MAX_MANIFEST_BYTES, max_depth: int = MAX_JSON_DEPTH):
    """Read and parse a JSON file with every limit above; errors name `what` and the path."""
    path = Path(path)
    return parse_json(read_bytes(path, what, max_bytes), f"{what} {path}", max_depth)
