"""Listing a dataset root: regular files with their stat, and the reasons others were left out.

Symlinks are never followed (a link may point outside the root, or loop); folders that
cannot be read are reported and skipped; the walk itself never raises for one bad entry.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final, NamedTuple

from daemon.filters import PathFilter
from schemas.events import RejectReason


class FileStat(NamedTuple):
    """What vouches for a file's bytes: its stat, or an object's size, last-modified and ETag."""

    size: int
    mtime_ns: int
    inode: int
    etag: str = ""


# A regular file a lazy walk listed without its stat (``size`` < 0). The stat of a file the
# catalog does not know is never used: fingerprinting it takes its own (``fstat``). Skipping it
# saved an ``lstat`` a file, 50 ms of a pass over 20,000 new files.
UNSTATED: Final = FileStat(-1, -1, -1)


@dataclass(frozen=True, slots=True)
class Rejection:
    rel: str
    reason: RejectReason
    detail: str


OnReject = Callable[[Rejection], None]


def display_path(rel: str) -> str:
    """A printable form of a path that may hold undecodable bytes (shown as \\xNN)."""
    return os.fsencode(rel).decode("utf-8", "backslashreplace")


def is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def classify_symlink(root: str, full: str) -> Rejection:
    rel = os.path.relpath(full, root)
    real_root = os.path.realpath(root)
    target = os.path.realpath(full)
    if target != real_root and not target.startswith(real_root + os.sep):
        return Rejection(rel, "symlink_escapes_root", "symlink points outside the dataset root; not followed")
    return Rejection(rel, "symlink_not_followed", "symlinks are not followed; version the target itself")


def stat_error(rel: str, exc: OSError) -> Rejection:
    if isinstance(exc, PermissionError):
        return Rejection(rel, "permission_denied", "permission denied: grant the daemon's user read access")
    if exc.errno == errno.ENAMETOOLONG:
        return Rejection(rel, "name_too_long", "path longer than the OS allows; not versioned")
    if isinstance(exc, FileNotFoundError):
        return Rejection(rel, "vanished", "file disappeared before it could be read")
    if exc.errno == errno.ELOOP:
        return Rejection(rel, "symlink_not_followed", "symlink loop; not followed")
    return Rejection(rel, "io_error", f"cannot read: {exc.strerror or exc}")


def _non_utf8(rel: str) -> Rejection:
    return Rejection(rel, "non_utf8_name", "file name is not valid UTF-8; rename it to version it")


def classify_entry(root: str, rel: str, st: os.stat_result, filt: PathFilter, on_reject: OnReject) -> FileStat | None:
    """The FileStat of a wanted regular file, or None (reporting why when it matters)."""
    if not filt.wants_file(rel):
        return None
    if not is_utf8(rel):
        on_reject(_non_utf8(rel))
        return None
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        on_reject(classify_symlink(root, os.path.join(root, rel)))
        return None
    if not stat.S_ISREG(mode):
        on_reject(Rejection(rel, "not_regular_file", "not a regular file (FIFO, socket or device); skipped"))
        return None
    return FileStat(st.st_size, st.st_mtime_ns, st.st_ino)


def walk(
    root: str, filt: PathFilter, on_reject: OnReject, start: str = "", *, lazy: bool = False
) -> Iterator[tuple[str, FileStat]]:
    """Yield (relative path, stat) of every wanted regular file below ``root/start``.

    ``lazy``: a regular file's stat is ``UNSTATED``; only the folder entry's type is looked at
    (no syscall where the file system reports it, as ext4 and XFS do).
    """
    for rel, entry in _entries_below(root, filt, on_reject, start):
        try:
            if lazy and entry.is_file(follow_symlinks=False):
                if filt.wants_file(rel):
                    if is_utf8(rel):
                        yield rel, UNSTATED
                    else:
                        on_reject(_non_utf8(rel))
                continue
            st = entry.stat(follow_symlinks=False)  # lazy: a symlink or a special file, to say which
        except OSError as exc:
            if filt.wants_file(rel):
                on_reject(stat_error(rel, exc))
            continue
        fs = classify_entry(root, rel, st, filt, on_reject)
        if fs is not None:
            yield rel, fs


def _entries_below(
    root: str, filt: PathFilter, on_reject: OnReject, start: str
) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Every entry that is not a folder below ``root/start``, in the folders the filter wants."""
    stack = [start]
    while stack:
        rel_dir = stack.pop()
        full_dir = os.path.join(root, rel_dir) if rel_dir else root
        try:
            it = os.scandir(full_dir)
        except FileNotFoundError:
            continue
        except OSError as exc:
            on_reject(stat_error(rel_dir or ".", exc))
            continue
        with it:
            for entry in it:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError as exc:
                    if filt.wants_file(rel):
                        on_reject(stat_error(rel, exc))
                    continue
                if not is_dir:
                    yield rel, entry
                elif filt.wants_dir(rel):
                    stack.append(rel)


def stat_paths(
    root: str, rels: Iterable[str], filt: PathFilter, on_reject: OnReject, *, lazy: bool = False
) -> tuple[dict[str, FileStat], set[str]]:
    """Current state of the given paths: files found (folders are walked) and paths now absent.

    ``lazy``: as ``walk``'s, for the files of folders walked (a path given is always stat'ed).
    """
    found: dict[str, FileStat] = {}
    absent: set[str] = set()
    for rel in rels:
        full = os.path.join(root, rel)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            absent.add(rel)
            continue
        except NotADirectoryError:
            absent.add(rel)
            continue
        except OSError as exc:
            if filt.wants_file(rel):
                on_reject(stat_error(rel, exc))
            continue
        if stat.S_ISDIR(st.st_mode):
            # Anything previously known below it but not found now is gone.
            absent.add(rel)
            if filt.wants_dir(rel):
                found.update(walk(root, filt, on_reject, start=rel, lazy=lazy))
            continue
        fs = classify_entry(root, rel, st, filt, on_reject)
        if fs is None:
            absent.add(rel)
        else:
            found[rel] = fs
    return found, absent
