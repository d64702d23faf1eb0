"""Writing a version's files back from the content store: all of them, checked, or none.

``restore(store, manifest, target_dir)`` makes ``target_dir`` hold exactly the manifest's
files with exactly their bytes:

1. Every path is checked before anything is written (``check_path``): relative POSIX paths of
   non-empty segments, no ``.``/``..``, no NUL, no segment longer than the filesystem allows,
   no path that is both a file and a folder of another. A bad one raises ``UnsafePathError``.
2. The target is inspected without following symlinks: a symlink, file or folder standing
   where the manifest needs a folder (or a folder where it needs a file) is a conflict. Without
   ``prune`` a conflict raises ``RestoreError``; with it, the thing in the way is removed (it
   is not in the manifest, so pruning would remove it anyway).
3. Every file is staged in ``<target>/.strandline-restore-<random>/`` (same filesystem, so the
   final step is renames), its bytes checked against the manifest's hash and size as they are
   written; then one syncfs makes them all durable. A missing or damaged object raises
   ``RestoreError`` naming the file; the staging folder is removed and the target is as it was.
4. Only then are the staged files renamed into place, through folder file descriptors opened
   with ``O_NOFOLLOW``: no symlink under the target is ever followed, so nothing can be written
   outside it, even if the target changes while we work. An existing file (or symlink) at a
   file's path is replaced, never written through.
5. With ``prune``, everything else under the target is removed (symlinks unlinked, never
   followed), and folders that this emptied; folders that were empty before are kept.

Restored files get the process's umask and the current time; nothing else is preserved.
The staging folder's name starts with ``STAGING_PREFIX``: a watcher over the target should
ignore it. While a restore works, ``RESTORING_MARKER`` in the target holds its pid
(``restoring_pid``): the daemon waits for it to go, so an in-place revert becomes one version,
and a second restore into the same target is refused. A crash before step 4 leaves only that
folder, which the next prune removes, and a marker naming a dead pid, which the next restore
replaces; a crash during step 4 leaves some files restored and some not, and running restore
again finishes the job.

Errors: ``RestoreError`` (a ``StrandlineError``) and its ``UnsafePathError``.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import stat
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Final, Protocol

from daemon.durability import syncfs
from daemon.errors import StrandlineError
from daemon.manifest import FileState
from daemon.temps import pid_alive

__all__ = [
    "RESTORING_MARKER",
    "STAGING_PREFIX",
    "ContentSource",
    "RestoreError",
    "RestoreSummary",
    "UnsafePathError",
    "check_path",
    "restore",
    "restoring_pid",
]

log = logging.getLogger(__name__)

STAGING_PREFIX: Final = ".strandline-restore-"
# In the target while a restore works, holding its pid: a watcher of the target waits for it to
# go (one stat, however big the folder), and a second restore into the same target is refused.
RESTORING_MARKER: Final = ".strandline-restoring"
_HEX32 = re.compile(r"[0-9a-f]{32}")
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Files above this are cloned out of the store where it kept them as clones (reflink), not copied.
_CLONE_ABOVE: Final = 1024 * 1024

Parts = tuple[str, ...]


class RestoreError(StrandlineError):
    """A version cannot be restored; the message names the file and whether the target was changed."""


class UnsafePathError(RestoreError):
    """A manifest path could land outside the target (absolute, ``..``, NUL) or is not a clean relative path."""


class ContentSource(Protocol):
    """What restore needs of a store (``daemon.content_store.ContentStore`` is one)."""

    def missing(self, wanted: Mapping[str, int]) -> set[str]: ...

    def prefetch(self, digests: Iterable[str]) -> None: ...

    def iter_content(self, digest: str) -> Iterator[bytes]: ...

    def clone_to(self, digest: str, fd: int) -> bool: ...


@dataclass(frozen=True, slots=True)
class RestoreSummary:
    files: int  # files of the version now in the target
    bytes: int  # bytes written
    removed: int = 0
    unchanged: int = 0  # files already in place with the right bytes, left alone


@dataclass(frozen=True, slots=True)
class _Entry:
    rel: str
    parts: Parts
    size: int
    digest: str


# -- the pure part: paths and the plan -------------------------------------------------------


def check_path(rel: str, name_max: int = 255) -> Parts:
    """The segments of a manifest path, or ``UnsafePathError`` saying why it cannot be restored."""
    shown = rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if not rel:
        raise UnsafePathError("a manifest path is empty")
    if "\0" in rel:
        raise UnsafePathError(f"manifest path {shown!r} contains a NUL byte")
    if rel.startswith("/"):
        raise UnsafePathError(f"manifest path {shown!r} is absolute; only paths relative to the target are restored")
    parts = tuple(rel.split("/"))
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePathError(f"manifest path {shown!r} has an empty, '.' or '..' segment")
        if len(os.fsencode(part)) > name_max:
            raise UnsafePathError(f"manifest path {shown!r} has a segment longer than {name_max} bytes")
    return parts


def _plan(manifest: Mapping[str, tuple[int, str]] | Mapping[str, FileState], name_max: int) -> list[_Entry]:
    entries: list[_Entry] = []
    for rel, value in manifest.items():
        size, digest = (value.size, value.hash) if isinstance(value, FileState) else value
        parts = check_path(rel, name_max)
        if not _HEX32.fullmatch(digest) or size < 0:
            raise RestoreError(f"manifest entry {rel!r} has no valid size and XXH3-128 hash")
        entries.append(_Entry(rel, parts, size, digest))
    files = {e.parts for e in entries}
    for e in entries:
        for depth in range(1, len(e.parts)):
            if e.parts[:depth] in files:
                raise UnsafePathError(
                    f"manifest has {'/'.join(e.parts[:depth])!r} both as a file and as a folder of {e.rel!r}"
                )
    entries.sort(key=lambda e: e.parts)
    return entries


def _needed_dirs(entries: list[_Entry]) -> set[Parts]:
    return {e.parts[:depth] for e in entries for depth in range(1, len(e.parts))}


# -- the target: inspection, staging, commit, prune ----------------------------------------


def _lstat(root: str, parts: Parts) -> os.stat_result | None:
    try:
        return os.lstat(os.path.join(root, *parts))
    except FileNotFoundError:
        return None


def _conflicts(root: str, entries: list[_Entry], dirs: set[Parts]) -> list[Parts]:
    """What stands where a folder or file must go. Parents are checked first, so no lstat passes a symlink."""
    blocked: list[Parts] = []
    gone: set[Parts] = set()  # absent or blocked: nothing beneath them is looked at

    def unreachable(parts: Parts) -> bool:
        return any(parts[:d] in gone for d in range(1, len(parts)))

    for parts in sorted(dirs, key=len):
        if unreachable(parts):
            gone.add(parts)
            continue
        st = _lstat(root, parts)
        if st is None:
            gone.add(parts)
        elif not stat.S_ISDIR(st.st_mode):
            blocked.append(parts)
            gone.add(parts)
    for e in entries:
        if unreachable(e.parts):
            continue
        st = _lstat(root, e.parts)
        if st is not None and stat.S_ISDIR(st.st_mode):
            blocked.append(e.parts)
    return blocked


def _remove(parent_fd: int, name: str) -> None:
    """Remove one entry without following it: a folder's tree (fd-based, symlink-safe) or anything else."""
    st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=parent_fd)
    else:
        os.unlink(name, dir_fd=parent_fd)


class _Folders:
    """Folder fds under the target, opened one segment at a time with O_NOFOLLOW (and created on demand)."""

    def __init__(self, root_fd: int) -> None:
        self._fds: dict[Parts, int] = {(): root_fd}
        self.touched: set[Parts] = set()

    def fd(self, parts: Parts, create: bool = True) -> int:
        if parts in self._fds:
            return self._fds[parts]
        parent = self.fd(parts[:-1], create)
        name = parts[-1]
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(name, 0o777, dir_fd=parent)
            self.touched.add(parts[:-1])
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        self._fds[parts] = fd
        return fd

    def close(self) -> None:
        for parts, fd in self._fds.items():
            if parts:
                os.close(fd)
        self._fds = {(): self._fds[()]}


def restoring_pid(target: str | os.PathLike[str]) -> int | None:
    """The pid of a live restore working in ``target`` now, or None."""
    try:
        with open(os.path.join(target, RESTORING_MARKER), encoding="ascii") as fh:
            pid = int(fh.read().strip() or 0)
    except (OSError, ValueError):
        return None
    return pid if pid > 0 and pid_alive(pid) else None


def _mark(root_fd: int, target: str) -> None:
    """Leave RESTORING_MARKER with our pid in the target; refuse if a live restore left one."""
    for _attempt in range(2):
        try:
            fd = os.open(RESTORING_MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644, dir_fd=root_fd)
        except FileExistsError:
            other = restoring_pid(target)
            if other is not None:
                raise RestoreError(
                    f"another restore into {target} is running (pid {other}); wait for it to finish; target unchanged"
                ) from None
            with suppress(FileNotFoundError):
                os.unlink(RESTORING_MARKER, dir_fd=root_fd)  # left by a restore that died
            continue
        try:
            os.write(fd, str(os.getpid()).encode("ascii"))
        finally:
            os.close(fd)
        return
    raise RestoreError(f"cannot mark {target} as being restored; target unchanged")


def _still_to_write(
    target: str,
    entries: list[_Entry],
    blocked: list[Parts],
    manifest: Mapping[str, tuple[int, str]] | Mapping[str, FileState],
    unchanged: Callable[[str, os.stat_result, FileState | tuple[int, str]], bool],
) -> list[_Entry]:
    """The entries whose file is not already in place (as ``unchanged`` vouches), in order."""
    stop = set(blocked)
    out: list[_Entry] = []
    for e in entries:
        # Only below real folders (a blocked one may be a symlink): lstat never passes a link.
        if not any(e.parts[:d] in stop for d in range(1, len(e.parts) + 1)):
            st = _lstat(target, e.parts)
            regular = st is not None and stat.S_ISREG(st.st_mode) and st.st_size == e.size
            if regular and st is not None and unchanged(e.rel, st, manifest[e.rel]):
                continue
        out.append(e)
    return out


def _stage(store: ContentSource, staging_fd: int, index: int, entry: _Entry) -> int:
    fd = os.open(str(index), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666, dir_fd=staging_fd)
    written = 0
    try:
        if entry.size > _CLONE_ABOVE and store.clone_to(entry.digest, fd):
            # Shares the store's extents: no bytes written (reflink stores), checked all the same.
            if os.fstat(fd).st_size != entry.size:
                raise RestoreError(
                    f"cannot restore {entry.rel!r}: the store holds a different size than the manifest's"
                )
            return entry.size
        for part in store.iter_content(entry.digest):
            view = memoryview(part)
            written += len(view)
            if written > entry.size:
                break
            while view:
                view = view[os.write(fd, view) :]
        if written != entry.size:
            raise RestoreError(f"cannot restore {entry.rel!r}: the store holds a different size than the manifest's")
    finally:
        os.close(fd)
    return written


def _prune(
    dir_fd: int,
    prefix: Parts,
    keep_files: set[Parts],
    keep_dirs: set[Parts],
    staging: str,
    owned: Callable[[str], bool] | None = None,
) -> tuple[int, bool]:
    """Remove what is not kept under one folder; (entries removed, folder now empty).

    With ``owned``, only files it claims are removed; folders are still entered, and go only when emptied.
    """
    removed = 0
    left = 0
    with os.scandir(dir_fd) as it:
        listing = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in it]
    for name, is_dir in listing:
        parts = (*prefix, name)
        if not prefix and name in (staging, RESTORING_MARKER):
            left += 1
            continue
        if parts in keep_files:
            left += 1
            continue
        if is_dir:
            sub_fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            try:
                sub_removed, empty = _prune(sub_fd, parts, keep_files, keep_dirs, staging, owned)
            finally:
                os.close(sub_fd)
            removed += sub_removed
            # A folder this prune emptied goes; one the manifest needs, or that was empty already, stays.
            if empty and sub_removed and parts not in keep_dirs:
                os.rmdir(name, dir_fd=dir_fd)
                removed += 1
            else:
                left += 1
            continue
        if owned is not None and not owned("/".join(parts)):
            left += 1
            continue
        os.unlink(name, dir_fd=dir_fd)
        removed += 1
    return removed, left == 0


def restore(
    store: ContentSource,
    manifest: Mapping[str, tuple[int, str]] | Mapping[str, FileState],
    target_dir: str | os.PathLike[str],
    *,
    prune: bool = False,
    owned: Callable[[str], bool] | None = None,
    unchanged: Callable[[str, os.stat_result, FileState | tuple[int, str]], bool] | None = None,
    progress: Callable[[int], None] | None = None,
) -> RestoreSummary:
    """Write exactly the manifest's files into ``target_dir`` (see the module docstring).

    ``manifest`` maps relative paths to ``(size, hash)`` or to ``FileState``. With ``prune``,
    files under ``target_dir`` that the manifest does not name are removed (an in-place revert).
    Raises ``UnsafePathError`` for a path that is not clean and relative, and ``RestoreError``
    when a file's content is missing or damaged in the store, something stands in the way, or
    the disk fails; the target is then unchanged, unless the message says otherwise.

    For an in-place revert: ``owned(rel)`` limits pruning to the files it returns True for (the
    dataset's, not the files its filters leave out); ``unchanged(rel, lstat, wanted)`` vouches
    that a regular file already at ``rel`` holds the wanted bytes (e.g. the catalog's stat cache
    says so), so it is not rewritten. ``progress(bytes)`` is called as each file is staged.
    """
    target = os.path.realpath(target_dir)
    created: list[str] = []  # folders this call makes, deepest first, to remove again on failure
    folder = target
    while not os.path.lexists(folder):
        created.append(folder)
        folder = os.path.dirname(folder)
    try:
        os.makedirs(target, exist_ok=True)
        name_max = os.pathconf(target, "PC_NAME_MAX")
    except OSError as exc:
        raise RestoreError(f"cannot use {target} as the restore target: {exc}") from exc
    try:
        summary = _restore(store, manifest, target, name_max, prune, owned, unchanged, progress)
    except BaseException:
        for folder in created:
            with suppress(OSError):
                os.rmdir(folder)
        raise
    log.info(
        "restored %d files (%d bytes) into %s%s",
        summary.files,
        summary.bytes,
        target,
        f", removed {summary.removed} entries" if prune else "",
    )
    return summary


def _restore(
    store: ContentSource,
    manifest: Mapping[str, tuple[int, str]] | Mapping[str, FileState],
    target: str,
    name_max: int,
    prune: bool,
    owned: Callable[[str], bool] | None,
    unchanged: Callable[[str, os.stat_result, FileState | tuple[int, str]], bool] | None,
    progress: Callable[[int], None] | None,
) -> RestoreSummary:
    entries = _plan(manifest, name_max)
    dirs = _needed_dirs(entries)
    absent = store.missing({e.digest: e.size for e in entries})  # batched: not a lookup per file
    for e in entries:
        if e.digest in absent:
            raise RestoreError(
                f"cannot restore {e.rel!r}: its content ({e.digest}) is not in the store; target unchanged"
            )
    store.prefetch(e.digest for e in entries)  # where each content is, in a few queries too
    blocked = _conflicts(target, entries, dirs)
    if blocked and not prune:
        shown = ", ".join(repr("/".join(p)) for p in blocked[:5])
        raise RestoreError(
            f"cannot restore into {target}: {shown} stand(s) where the version has a folder or a file "
            "(a symlink is never written through); move them away or restore with prune; target unchanged"
        )

    keep_files = {e.parts for e in entries}
    if unchanged is not None:
        entries = _still_to_write(target, entries, blocked, manifest, unchanged)
    root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    top_names = {p[0] for p in keep_files}
    staging = ""
    staging_fd = -1
    marked = False
    try:
        _mark(root_fd, target)
        marked = True
        while True:
            staging = f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
            if staging in top_names:
                continue
            try:
                os.mkdir(staging, 0o700, dir_fd=root_fd)
                break
            except FileExistsError:
                continue
        staging_fd = os.open(staging, _DIR_FLAGS, dir_fd=root_fd)
        total = 0
        for index, entry in enumerate(entries):
            try:
                written = _stage(store, staging_fd, index, entry)
                total += written
                if progress is not None:
                    progress(written)
            except RestoreError:
                raise
            except StrandlineError as exc:
                raise RestoreError(f"cannot restore {entry.rel!r}: {exc}; target unchanged") from exc
            except OSError as exc:
                full = "; the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
                raise RestoreError(f"cannot stage {entry.rel!r} in {target}: {exc}{full}; target unchanged") from exc
        if entries:
            # Staged files are made durable before they get their names, with one sync of the
            # target's filesystem: an fsync per file costs a journal commit each (20,000 files).
            try:
                syncfs(os.path.join(target, staging))
            except OSError as exc:
                raise RestoreError(f"cannot sync the files staged in {target}: {exc}; target unchanged") from exc
        removed = _commit(root_fd, staging_fd, staging, entries, keep_files, dirs, blocked, prune, owned, target)
        return RestoreSummary(len(keep_files), total, removed, len(keep_files) - len(entries))
    finally:
        if staging_fd >= 0:
            os.close(staging_fd)
        if staging:
            with suppress(OSError):
                shutil.rmtree(staging, dir_fd=root_fd)
        if marked:
            with suppress(OSError):
                os.unlink(RESTORING_MARKER, dir_fd=root_fd)
        os.close(root_fd)


def _commit(
    root_fd: int,
    staging_fd: int,
    staging: str,
    entries: list[_Entry],
    keep_files: set[Parts],
    dirs: set[Parts],
    blocked: list[Parts],
    prune: bool,
    owned: Callable[[str], bool] | None,
    target: str,
) -> int:
    """Rename every staged file into place, then prune. Past this point a failure leaves a partial restore."""
    folders = _Folders(root_fd)
    removed = 0
    done = 0
    try:
        for parts in sorted(blocked, key=len):
            try:
                _remove(folders.fd(parts[:-1], create=False), parts[-1])
                removed += 1
            except FileNotFoundError:
                pass  # inside something already removed, or gone meanwhile
        for index, entry in enumerate(entries):
            parent = folders.fd(entry.parts[:-1])
            os.rename(str(index), entry.parts[-1], src_dir_fd=staging_fd, dst_dir_fd=parent)
            folders.touched.add(entry.parts[:-1])
            done += 1
        for parts in folders.touched:
            os.fsync(folders.fd(parts, create=False))
        if prune:
            pruned, _empty = _prune(root_fd, (), keep_files, dirs, staging, owned)
            removed += pruned
            os.fsync(root_fd)
    except OSError as exc:
        where = f"after {done} of {len(entries)} files were put in place" if done < len(entries) else "while pruning"
        raise RestoreError(
            f"restore into {target} failed {where}: {exc}; the target is partly restored, run the restore again"
        ) from exc
    finally:
        folders.close()
    return removed
