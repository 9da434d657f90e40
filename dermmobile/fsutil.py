"""Writing files: atomic, never through a link, only into folders that are really ours; hashing; locks.

Every path dermmobile writes is its own. A symlink planted where a manifest, a report, a
plot, a checkpoint or a lock file will be written must never make it write somewhere
else, and an interrupted run must never leave a half-written file. So every write goes
through `atomic_path`:

- the output folder must be a real folder (not a symlink, not a file); it is created if missing;
- a private staging folder (mode 0700, unique name) is created inside it, and the new file
  is written there, by us with O_CREAT|O_EXCL|O_NOFOLLOW (`atomic_file`) or by a converter
  or plotting library that insists on opening a path itself: nothing can be planted in a
  folder only we can enter;
- on success the file is renamed over the final name. A rename replaces a symlink found
  there instead of following it; on failure or interruption the staging folder is removed.

Locks (`exclusive_lock`) use `filelock`, which also works on Windows; its lock file lives in
the output folder and is refused when it is a link or not a regular file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from dermmobile.errors import BadInputError, UnsafeFileError
from dermmobile.interrupts import deferred
from dermmobile.readers import file_kind, open_regular


def sha256_file(path: Path, what: str = "file", chunk: int = 1 << 20) -> str:
    """sha256 of a regular file (a FIFO or device is refused, not read)."""
    digest = hashlib.sha256()
    with open_regular(path, what) as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_output_dir(folder: Path, what: str = "--out") -> Path:
    """Refuse an output folder that is a link, a file or inside a file, before any work starts; nothing is created."""
    folder = Path(folder)
    if folder.is_symlink():
        raise UnsafeFileError(
            f"{what} {folder} is a symbolic link (to {os.readlink(folder)}); dermmobile writes only into real folders. "
            "Give the folder it points to, or another folder"
        )
    if os.path.lexists(folder):
        mode = os.stat(folder).st_mode
        if not stat.S_ISDIR(mode):
            raise BadInputError(f"{what} {folder} is {file_kind(mode)}, not a folder; choose a folder for the output")
        return folder
    for parent in folder.parents:  # the nearest existing ancestor must be a folder
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise BadInputError(f"{what} {folder} cannot be created: {parent} is {file_kind(os.stat(parent).st_mode)}")
            break
    return folder


def ensure_output_dir(folder: Path, what: str = "output folder") -> Path:
    """`check_output_dir`, then create the folder (and its parents)."""
    folder = check_output_dir(folder, what)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"{what} {folder} cannot be created ({exc.strerror or exc})") from None
    return check_output_dir(folder, what)  # a link planted while it was being created


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a path in a private staging folder beside `final`; rename it over `final` only on success.

    For writers that open the path themselves (converters, safetensors, torch.save): they
    may create a file or a folder (a Core ML package) there.
    """
    final = Path(final)
    folder = ensure_output_dir(final.parent)
    staging = None
    try:
        with deferred():  # an interruption cannot fall between creating the folder and knowing its name
            staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=folder))
        tmp = staging / final.name
        yield tmp
        if not os.path.lexists(tmp):
            raise FileNotFoundError(f"nothing was written to {tmp} for {final}")
        if tmp.is_symlink():
            raise UnsafeFileError(f"the writer of {final} left a symbolic link instead of a file; refused")
        with deferred():  # the rename and the removal of the staging folder run whole; a signal waits for them
            try:
                _replace(tmp, final, staging)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
                staging = None
    finally:
        if staging is not None:  # failed or interrupted before the rename
            with deferred():
                shutil.rmtree(staging, ignore_errors=True)


def _replace(tmp: Path, final: Path, staging: Path) -> None:
    """Rename `tmp` over `final`. A link there is replaced, not followed; a package folder is swapped whole."""
    if final.is_dir() and not final.is_symlink():
        if not tmp.is_dir():
            raise BadInputError(f"{final} is a folder where dermmobile writes a file; remove it or choose another output folder")
        os.replace(final, staging / ".previous")  # the old package goes away with the staging folder
    try:
        os.replace(tmp, final)
    except OSError as exc:
        if exc.errno in (errno.EISDIR, errno.ENOTDIR, errno.ENOTEMPTY, errno.EEXIST):
            raise BadInputError(f"cannot replace {final} ({exc.strerror}); remove it or choose another output folder") from None
        raise


@contextlib.contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """Yield a new, empty folder beside `final` to fill; when the block ends well it replaces `final` whole.

    For what is written as a set (the web site, the Android app's assets): a failure or an
    interruption removes the new folder and leaves the previous `final` as it was, which is
    kept until the new one is in place. A link planted where `final` was is dropped, never
    what it points to. The caller checks `final` and its parents beforehand; this only swaps.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = old = None
    try:
        with deferred():  # see atomic_path
            staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
            staging.chmod(0o755)  # mkdtemp makes it private; it becomes an ordinary folder
        yield staging
    except BaseException:
        if staging is not None:
            with deferred():
                shutil.rmtree(staging, ignore_errors=True)
        raise
    with deferred():  # the swap and the removal of the previous set run whole; a signal waits for them
        try:
            if os.path.lexists(final):
                old = final.parent / f".{final.name}.old-{os.getpid()}"
                os.replace(final, old)
            os.replace(staging, final)
        except BaseException:
            if old is not None and os.path.lexists(old) and not os.path.lexists(final):
                os.replace(old, final)  # put the previous set back
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if old is not None:
            if old.is_symlink() or not old.is_dir():  # a link: drop it, never what it points to
                old.unlink()
            else:
                shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[BinaryIO]:
    """A binary file to write `final`'s content into; created O_EXCL|O_NOFOLLOW, fsynced, renamed into place."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0)
    with atomic_path(final) as tmp, os.fdopen(os.open(tmp, flags, 0o666), "wb") as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_bytes(final: Path, data: bytes) -> None:
    with atomic_file(final) as handle:
        handle.write(data)


def atomic_write_text(final: Path, text: str) -> None:
    atomic_write_bytes(final, text.encode("utf-8"))


def atomic_write_json(final: Path, obj, allow_nan: bool = True) -> None:
    atomic_write_text(final, json.dumps(obj, indent=2, sort_keys=False, default=str, allow_nan=allow_nan) + "\n")


def append_text(path: Path, text: str) -> None:
    """Append to a log file we own: never through a symlink, never to a FIFO or device."""
    path = Path(path)
    ensure_output_dir(path.parent)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_NONBLOCK", 0), 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFileError(f"{path} is a symbolic link; dermmobile appends only to its own files. Remove it") from None
        raise BadInputError(f"{path} cannot be opened for appending ({exc.strerror or exc})") from None
    with os.fdopen(fd, "ab") as handle:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafeFileError(f"{path} is {file_kind(mode)}, not a regular file; remove it")
        handle.write(text.encode("utf-8"))


@contextlib.contextmanager
def exclusive_lock(folder: Path, name: str) -> Iterator[Path]:
    """Hold the lock `.<name>.lock` in `folder` (another process waits for it) for the duration of the block."""
    from filelock import FileLock

    folder = ensure_output_dir(folder)
    lock_file = folder / f".{name}.lock"
    if os.path.lexists(lock_file) and not stat.S_ISREG(os.lstat(lock_file).st_mode):
        raise UnsafeFileError(
            f"lock file {lock_file} is {file_kind(os.lstat(lock_file).st_mode)}, not a regular file (planted?); "
            "remove it and run again"
        )
    lock = FileLock(str(lock_file))
    try:
        lock.acquire()  # filelock opens with O_NOFOLLOW and never truncates
    except OSError as exc:
        raise UnsafeFileError(f"cannot take the lock {lock_file} ({exc.strerror or exc}); remove it and run again") from None
    try:
        yield lock_file
    finally:
        lock.release()
