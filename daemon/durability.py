"""Making bytes durable: fsync of folders, syncfs of a whole filesystem, and a writeback hint.

Shared by the content store (packs, clones) and restore (staged files), which both need "these
bytes are on disk before they get their name" and both want one sync for many files, not one
each: on this machine's ext4 every fsync is a journal commit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Callable
from typing import Final

__all__ = ["fsync_dir", "start_writeback", "syncfs"]

try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
except OSError:
    _LIBC = None
# sync_file_range(2): start writing a file's dirty pages back now, without waiting (a hint, not durability).
_SYNC_FILE_RANGE_WRITE: Final = 2
_sync_file_range: Callable[[int, int, int, int], int] | None = None
if _LIBC is not None and hasattr(_LIBC, "sync_file_range"):
    _LIBC.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    _LIBC.sync_file_range.restype = ctypes.c_int
    _sync_file_range = _LIBC.sync_file_range


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a folder's entries (names created, renamed or removed in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def syncfs(path: str | os.PathLike[str]) -> None:
    """Flush the whole filesystem holding ``path`` (syncfs(2)); all of the system's if that is missing."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _LIBC is not None and _LIBC.syncfs(fd) == 0:
            return
        if _LIBC is not None and ctypes.get_errno() not in (0, errno.ENOSYS):
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        os.sync()
    finally:
        os.close(fd)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing this range back now; failures surface at the later fsync."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)
