"""Atomic file writes, shared by every writer of the project (runs, training, problem files,
reports). It imports only :mod:`sbn_bench.errors`, so any module can use it.

A file is written to a temporary file in the same folder, flushed to disk, given the usual mode
and renamed over the target (``os.replace``): a reader, or a process killed at any moment, only
ever sees the old complete file or the new complete file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

from sbn_bench.errors import SbnBenchError

DEFAULT_HINT = "free space or fix the folder's permissions, then continue with --resume"


class WriteError(SbnBenchError, OSError):
    """A file could not be written (full disk, read-only folder, …).

    An ``OSError`` (``errno`` is the cause's) with a one-line message: the file, the reason, and that
    the files written before it are intact. ``argument`` is the file's path.
    """

    def __init__(self, path: Path, cause: OSError, hint: str = DEFAULT_HINT) -> None:
        reason = cause.strerror or str(cause)
        code = errno.errorcode.get(cause.errno or 0)
        message = (f"cannot write {str(path)!r}: {reason}" + (f" [{code}]" if code else "")
                   + f"; the files written before are complete and intact ({hint})")
        SbnBenchError.__init__(self, message, argument=str(path), expected="a writable file")
        self.errno = cause.errno
        self.strerror = cause.strerror
        self.filename = str(path)
        self.path = path


def _umask() -> int:
    umask = os.umask(0)  # the only way to read the umask; set straight back
    os.umask(umask)
    return umask


def file_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file, ``0o666 & ~umask`` (``mkstemp``
    creates ``0o600``, which would make results unreadable to the rest of a group or machine)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode ``mkdir`` gives a new folder, ``0o777 & ~umask`` (``mkdtemp`` creates ``0o700``)."""
    return 0o777 & ~_umask()


def make_folder(path: str | os.PathLike[str]) -> None:
    """``mkdir -p``, with the file named where one stands in the way of a folder of the path
    (``mkdir`` says "File exists" or "Not a directory" about the path itself).

    Raises:
        OSError: ``NotADirectoryError`` naming the file in the way, or the system's error.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        dangling = next((a for a in (path, *path.parents) if a.is_symlink() and not a.exists()),
                        None)
        if dangling is not None:  # mkdir will not make a folder through a link to nowhere
            raise NotADirectoryError(
                errno.ENOTDIR, f"Not a directory: {str(dangling)!r} is a symbolic link to "
                f"{os.readlink(dangling)!r}, which does not exist (make that folder, or remove "
                "the link)") from None
        blocker = next((a for a in (path, *path.parents) if a.exists() and not a.is_dir()), path)
        raise NotADirectoryError(errno.ENOTDIR, f"Not a directory: {str(blocker)!r} is a file, "
                                 "not a folder") from None


LOCK = ".lock"
"""The lock file of an output folder (a run's, a training's, a study's): one process at a time
writes into it."""


def _open_lock(path: Path) -> int:
    """The lock file, opened for ``flock`` (made if missing). Read-only where read-write is
    refused (a lock file another user made in a shared folder): ``flock`` needs no write access."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        return os.open(path, os.O_RDONLY)


def wait_lock(folder: str | os.PathLike[str], name: str = LOCK) -> int:
    """Take a lock of ``folder`` (an ``flock`` on its file ``name``, made if missing, with the
    folder), waiting while another process holds it: the open descriptor, to close to release it.
    For writers that should queue rather than refuse (two reports into one folder). Its holder may
    remove the lock file, and the folder it made, before it releases it (to leave things as it
    found them): the waiter then takes the lock again, as :func:`try_lock`."""
    make_folder(folder)
    return cast(int, _take_lock(folder, name, wait=True))  # a waiting lock is taken or raises


def try_lock(folder: str | os.PathLike[str]) -> int | None:
    """Take ``folder``'s exclusive lock (an ``flock`` on its :data:`LOCK` file, made if missing;
    released by the system when the process ends, however it ends): the open descriptor, to close
    to release it, or None when another process holds it.

    A lock taken on a file that its holder removed meanwhile (:func:`folder_lock` removes a lock
    file it made when nothing else was written) locks nothing another process can see: the lock
    is taken again on the file now at the path."""
    return _take_lock(folder, LOCK, wait=False)


def _take_lock(folder: str | os.PathLike[str], name: str, wait: bool) -> int | None:
    """:func:`try_lock` (``wait`` false: None when another process holds the lock) and
    :func:`wait_lock`: an ``flock`` on ``folder/name``, taken again while the file it was taken on
    is no longer the one at the path (removed or replaced by its holder meanwhile)."""
    path = Path(folder) / name
    for _ in range(100):
        fd = _open_lock(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            if wait:
                raise
            return None
        except BaseException:  # Ctrl-C while waiting
            os.close(fd)
            raise
        held = os.fstat(fd)
        try:
            now = os.stat(path)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            return fd
        os.close(fd)  # the file was removed (or replaced) after we opened it: try again
        make_folder(folder)  # its folder too, when it was empty
    raise OSError(errno.EAGAIN, f"cannot take the lock {str(path)!r}: it keeps being removed")


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str], busy: Callable[[], BaseException],
                cannot: Callable[[OSError], BaseException] | None = None) -> Iterator[None]:
    """Hold ``folder``'s lock (:func:`try_lock`; the folder is made if missing) inside the block;
    ``busy()`` is raised when another process holds it, ``cannot(e)`` (default: ``e``) when the
    folder or its lock file cannot be made. When the block raises having added no file to the
    folder (a refusal), a lock file (and a folder) that was not there before is removed again: a
    refused call leaves nothing. Once something is written, the lock file stays, as a run's does."""
    d = Path(folder)
    try:
        existed = d.is_dir()
        before = {p.name for p in d.iterdir()} if existed else set()
        lock_existed = LOCK in before
        make_folder(d)
        fd = try_lock(d)
    except OSError as e:
        if cannot is None:
            raise
        raise cannot(e) from None
    if fd is None:
        raise busy()
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            if not lock_existed and {p.name for p in d.iterdir()} - {LOCK} <= before:
                (d / LOCK).unlink()  # still held: a process that opened it meanwhile retries
                if not existed:
                    d.rmdir()  # only when empty
        raise
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, hint: str = DEFAULT_HINT) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``, with the usual mode
    (:func:`file_mode`); the folder is created if needed.

    Raises:
        WriteError: the folder, the temporary file or the rename failed (the temporary file is
            removed; ``path`` keeps its previous content, if any); ``hint`` ends its message.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        make_folder(path.parent)
        fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, WriteError):
            raise
        raise WriteError(path, e, hint) from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str, hint: str = DEFAULT_HINT) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8, newlines as given."""
    atomic_write_bytes(path, text.encode("utf-8"), hint)


def slug(*parts: str) -> str:
    """A file- and anchor-safe name: ``slug("paper-seed0", "epoch 1") == "paper-seed0_epoch-1"``
    (the report's figure files and anchors; a run refuses problems whose names give the same
    one, :class:`sbn_bench.config.RunConfig`)."""
    out = []
    for p in parts:
        s = re.sub(r"[^A-Za-z0-9.=-]+", "-", str(p)).strip("-")
        out.append(s.replace("=", "") or "x")
    return "_".join(out)
