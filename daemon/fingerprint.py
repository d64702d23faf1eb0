"""XXH3-128 fingerprints of files, streamed so a large file is never loaded whole."""

from __future__ import annotations

import errno
import mmap
import os
import stat
from typing import Final

import xxhash

# Below this size one read into a reused buffer is cheapest; above it mmap lets xxhash read
# the page cache directly, without copying every byte into Python first.
_MMAP_THRESHOLD: Final = 8 * 1024 * 1024
_CHUNK: Final = 1024 * 1024
_MMAP_WINDOW: Final = 256 * 1024 * 1024

HASH_ALGORITHM: Final = "xxh3-128"
_NOATIME: Final = getattr(os, "O_NOATIME", 0)


def hash_bytes(data: bytes | memoryview) -> str:
    """XXH3-128 of ``data`` as 32 lowercase hex digits."""
    return xxhash.xxh3_128_hexdigest(data)


def hash_fd(fd: int, size: int) -> str:
    """XXH3-128 of an open file's bytes; ``size`` is its size from ``fstat``."""
    hasher = xxhash.xxh3_128()
    if size >= _MMAP_THRESHOLD:
        offset = 0
        while offset < size:
            length = min(_MMAP_WINDOW, size - offset)
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            with mmap.mmap(fd, length, flags=flags, prot=mmap.PROT_READ, offset=offset) as window:
                window.madvise(mmap.MADV_SEQUENTIAL)
                hasher.update(window)
            offset += length
        # The file may have grown after fstat: hash the tail too, so the digest is of what we read.
        os.lseek(fd, size, os.SEEK_SET)
    # Sized to the file: a fresh 1 MiB buffer per small file cost more than hashing it.
    buffer = bytearray(min(_CHUNK, max(size, 4096) + 1))
    view = memoryview(buffer)
    while True:
        n = os.readv(fd, [buffer])
        if n <= 0:
            break
        hasher.update(view[:n])
    return hasher.hexdigest()


class ChangedWhileReadingError(OSError):
    """The file's size or mtime moved while it was hashed: a writer is still at work."""


def hash_file(path: str | os.PathLike[str]) -> tuple[str, os.stat_result]:
    """Hash a regular file without following a final symlink.

    Returns the digest and the ``fstat`` taken before reading. Raises ``OSError`` as the
    OS reports it (vanished, permission denied, a symlink), and ``ChangedWhileReadingError``
    when the file changed under us; callers translate both.
    """
    digest, st, _data = hash_file_keeping(path, -1)
    return digest, st


def hash_file_keeping(
    path: str | os.PathLike[str], limit: int, dir_fd: int | None = None
) -> tuple[str, os.stat_result, bytes | None]:
    """``hash_file``, also returning the bytes hashed when the file has at most ``limit`` of them.

    The snapshot of a small file then stores exactly these bytes, without opening, reading
    and hashing the file a second time (for 20,000 small files that was most of the cost).
    ``dir_fd``: ``path`` is relative to that open folder (no lookup of the folders above it).
    """
    # O_NONBLOCK: a FIFO swapped in after the stat must not hang us; regular files ignore it.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        # O_NOATIME keeps our reads from touching the user's files; only the owner may ask for it.
        fd = os.open(path, flags | _NOATIME, dir_fd=dir_fd)
    except PermissionError:
        fd = os.open(path, flags, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        data: bytes | None = None
        if st.st_size <= limit:
            data = _read_all(fd, st.st_size)
            digest = hash_bytes(data)
        else:
            digest = hash_fd(fd, st.st_size)
        after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns) or (
            data is not None and len(data) != st.st_size
        ):
            raise ChangedWhileReadingError(errno.EAGAIN, "file changed while it was read", os.fspath(path))
        return digest, st, data
    finally:
        os.close(fd)


def _read_all(fd: int, size: int) -> bytes:
    """Every byte up to end of file (one more than ``size`` is asked for, to see growth).

    A regular file's read returns less than asked only at its end, so a first read of at most
    ``size`` bytes is the whole file: the read that would return b"" is not made.
    """
    part = os.read(fd, size + 1)
    if len(part) <= size:
        return part
    parts = [part]
    while part := os.read(fd, size + 1):
        parts.append(part)
    return b"".join(parts)
