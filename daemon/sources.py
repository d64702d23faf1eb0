"""Where a dataset's files live: one interface for a local folder and for a bucket prefix.

The versioner asks a ``Source`` to list its files (with the stat that vouches for their bytes),
to look at a few paths, to fingerprint a file and to hand a table file to the readers as a local
path. Everything after detection (diff, versions, profiles, validation, events) is the same for
both kinds; only this module and ``daemon.bucket_source`` know which kind a root is.

Errors of the whole root (a bucket unreachable, a listing cut short) raise ``SourceError``: the
pass is abandoned and retried, never mistaken for "every file was removed".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol

from daemon.filters import PathFilter
from daemon.fingerprint import ChangedWhileReadingError, hash_file_keeping
from daemon.manifest import FileState
from daemon.restore import restoring_pid
from daemon.scanner import FileStat, OnReject, Rejection, stat_error, stat_paths, walk
from schemas.config import StoreSettings, is_bucket_url

if TYPE_CHECKING:
    from daemon.content_store import ContentStore, PutMode, PutResult

# A local file modified this recently may change again within the same mtime tick; its stat is
# not trusted for the cache ("racy git"), so it is simply re-hashed next time.
_RACY_NS = 50_000_000
# Small files' bytes kept between fingerprint and snapshot: up to this size each, this much a pass.
KEEP_FILE = 64 * 1024
KEEP_TOTAL = 128 * 1024 * 1024
_TRIM_AFTER = 4 * 1024 * 1024
_O_PATH = getattr(os, "O_PATH", os.O_RDONLY)
try:
    _malloc_trim: Callable[[int], int] | None = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
except (OSError, AttributeError):  # not glibc
    _malloc_trim = None


class KeptBytes:
    """Small files' bytes read while fingerprinting them, kept for the pass's snapshot.

    Kept as the reads returned them (copying 20,000 of them into one buffer cost 0.06 s) and
    freed together at the end of the pass, when the heap they leave is handed back to the OS.
    """

    def __init__(self) -> None:
        self._where: dict[str, tuple[str, bytes]] = {}  # rel: (hash, bytes)
        self._held = 0  # bytes held now
        self._read = 0  # bytes kept this pass

    def room_for(self, size: int) -> int:
        """The most bytes a file may have to be kept now (-1: none)."""
        return KEEP_FILE if self._held + size <= KEEP_TOTAL else -1

    def add(self, rel: str, digest: str, data: bytes) -> None:
        self._where[rel] = (digest, data)
        self._held += len(data)
        self._read += len(data)

    def store_many(self, states: Mapping[str, FileState], store: ContentStore) -> tuple[set[str], int, int]:
        """Put the kept bytes of those of ``states`` that have theirs: (paths done, files stored, bytes stored)."""
        where = self._where
        items = [
            (rel, kept[0], kept[1])
            for rel, state in states.items()
            if (kept := where.get(rel)) is not None and kept[0] == state.hash and len(kept[1]) == state.size
        ]
        files, stored = store.put_many_bytes(items)
        for rel, _digest, data in items:
            del where[rel]
            self._held -= len(data)
        return {rel for rel, _digest, _data in items}, files, stored

    def clear(self) -> None:
        large = self._read >= _TRIM_AFTER
        self._where.clear()
        self._held = self._read = 0
        if large and _malloc_trim is not None:
            # glibc keeps the freed heap (thousands of small blocks, or one large one once its
            # mmap threshold rose) with the process: hand it back, or an idle daemon keeps the
            # memory of its largest pass (12 MiB more idle RSS in bench/idle.py).
            _malloc_trim(0)


class Source(Protocol):
    """A dataset root, local or remote. Not thread-safe: one versioner drives it."""

    # Set while the dataset's versions are snapshotted by copy: ``fingerprint`` keeps the bytes
    # of small files it reads (up to KEEP_FILE each, KEEP_TOTAL a pass), and ``keep_bytes``
    # stores those, without reading the file (or GETting the object) again.
    keep_small_files: bool

    @property
    def location(self) -> str:
        """The root as users write it: an absolute folder or ``s3://bucket/prefix/``."""
        ...

    @property
    def racy_ns(self) -> int:
        """How recent a modification time must be for its stat not to be trusted by the cache."""
        ...

    def missing(self) -> str | None:
        """Why the root cannot be looked at now (announced as ``root_missing``), or None."""
        ...

    def busy(self) -> str | None:
        """What is rewriting the root as one unit right now (an in-place restore), or None.

        The versioner waits for it to finish so that a revert becomes one version.
        """
        ...

    def walk(self, filt: PathFilter, on_reject: OnReject) -> Iterator[tuple[str, FileStat]]:
        """Every wanted file with its stat. Raises ``SourceError`` if the listing cannot finish."""
        ...

    def stat_paths(
        self, rels: Iterable[str], filt: PathFilter, on_reject: OnReject
    ) -> tuple[dict[str, FileStat], set[str]]:
        """The current state of some paths: files found, and paths (or folders) now absent.

        A file named in ``rels`` has its stat; one found in a folder named may be ``UNSTATED``.
        """
        ...

    def marker_stat(self, rel: str) -> str | None:
        """A string that changes whenever the commit marker ``rel`` is rewritten; None if absent."""
        ...

    def fingerprint(self, rel: str, fs: FileStat, *, keep: bool) -> FileState | Rejection | None:
        """Hash one file. None when it vanished; a Rejection when it cannot be read.

        ``keep``: the file will be read as a table in this pass, so a remote source keeps a local
        copy of exactly the hashed bytes for ``table_path``. Raises ``ChangedWhileReadingError``
        when the file changed while being read (the pass is retried), ``SourceError`` for the root.
        """
        ...

    def table_path(self, rel: str, state: FileState) -> str:
        """A local path holding the bytes of ``rel`` whose hash is ``state.hash``, for the table readers."""
        ...

    def finish_pass(self) -> None:
        """Drop anything kept for the pass that just ended."""
        ...

    def keep_bytes(self, rel: str, state: FileState, store: ContentStore, mode: PutMode) -> PutResult:
        """Put the bytes of ``rel``, which must still be ``state``, into the content store (a snapshot).

        For the files ``keep_kept`` did not store. Raises what ``ContentStore.put`` raises:
        ``SourceChangedError`` when the bytes moved on.
        """
        ...

    def keep_kept(self, states: Mapping[str, FileState], store: ContentStore) -> tuple[set[str], int, int]:
        """Put the small files of ``states`` whose bytes ``fingerprint`` kept: (paths done, files, bytes stored).

        The paths not done are left to ``keep_bytes``. Raises ``SourceChangedError`` as it does.
        """
        ...


class LocalSource:
    """A folder on this host, read in place."""

    racy_ns = _RACY_NS

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.keep_small_files = False
        self._kept = KeptBytes()
        # The folder of the file fingerprinted last, open: files come folder by folder, and
        # opening each relative to it skips the lookup of every folder above (20,000 files in
        # one folder: 20 ms less). One at a time, so a tree of many folders holds one fd.
        self._folder: tuple[str, int] | None = None

    @property
    def location(self) -> str:
        return self.root

    def missing(self) -> str | None:
        if os.path.isdir(self.root):
            return None
        return f"dataset root {self.root} is missing; versions resume when it is back"

    def busy(self) -> str | None:
        # restore() marks its target while it works: one small read, however big the folder.
        pid = restoring_pid(self.root)
        return None if pid is None else f"a restore (pid {pid}) is writing into it"

    def walk(self, filt: PathFilter, on_reject: OnReject) -> Iterator[tuple[str, FileStat]]:
        # Stat'ed as listed: a whole-root pass looks at files the catalog mostly knows.
        return walk(self.root, filt, on_reject)

    def stat_paths(
        self, rels: Iterable[str], filt: PathFilter, on_reject: OnReject
    ) -> tuple[dict[str, FileStat], set[str]]:
        # A folder named is usually new (created, moved in): its files are listed unstated.
        return stat_paths(self.root, rels, filt, on_reject, lazy=True)

    def marker_stat(self, rel: str) -> str | None:
        try:
            st = os.lstat(os.path.join(self.root, rel))
        except OSError:
            return None
        return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"

    def fingerprint(self, rel: str, fs: FileStat, *, keep: bool) -> FileState | Rejection | None:
        # An UNSTATED file's size is known only once it is open: room for the largest kept is asked.
        limit = self._kept.room_for(fs.size if fs.size >= 0 else KEEP_FILE) if self.keep_small_files else -1
        folder, _, name = rel.rpartition("/")
        try:
            digest, st, data = hash_file_keeping(name, limit, self._folder_fd(folder))
        except ChangedWhileReadingError:
            raise
        except FileNotFoundError:
            return None  # removed after the listing; its delete event follows
        except OSError as exc:
            return stat_error(rel, exc)
        if data is not None:
            self._kept.add(rel, digest, data)
        return FileState(st.st_size, digest, st.st_mtime_ns, st.st_ino)

    def _folder_fd(self, folder: str) -> int:
        """An open fd of ``folder`` (relative to the root; "" for the root itself)."""
        if self._folder is not None:
            if self._folder[0] == folder:
                return self._folder[1]
            self._close_folder()
        path = f"{self.root}/{folder}" if folder else self.root
        # O_PATH: a folder the daemon may pass through (x) but not list (r) still works, as before.
        fd = os.open(path, _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._folder = (folder, fd)
        return fd

    def _close_folder(self) -> None:
        if self._folder is not None:
            fd, self._folder = self._folder[1], None
            os.close(fd)

    def table_path(self, rel: str, state: FileState) -> str:
        return os.path.join(self.root, rel)

    def finish_pass(self) -> None:
        self._close_folder()
        self._kept.clear()

    def keep_kept(self, states: Mapping[str, FileState], store: ContentStore) -> tuple[set[str], int, int]:
        return self._kept.store_many(states, store)

    def keep_bytes(self, rel: str, state: FileState, store: ContentStore, mode: PutMode) -> PutResult:
        return store.put(os.path.join(self.root, rel), state.hash, state.size, mode)


def open_source(location: str, *, spool_dir: str, settings: StoreSettings) -> Source:
    """The source for a dataset root: a ``BucketSource`` for ``s3://``, ``gs://``, ``az://``, else a
    ``LocalSource``.

    ``spool_dir`` holds a bucket source's temporary copies of table objects; ``settings`` say how
    to reach the root's store (``StrandlineConfig.store_settings(location)``).
    """
    if is_bucket_url(location):
        from daemon.bucket_source import BucketSource  # store SDKs are imported only when a bucket is watched

        return BucketSource(location, spool_dir=spool_dir, settings=settings)
    return LocalSource(location)
