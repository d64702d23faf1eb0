"""The content store: the bytes of every versioned file, kept once, addressed by their XXH3-128.

A version in the catalog is a manifest {path: (size, hash)}; this store keeps the bytes behind
each hash so a version can be restored (issue 6). The same bytes are stored once however many
versions and datasets name them.

Layout of a local store (``<state_dir>/store``)::

    FORMAT                   "strandline-content-store 1"
    blob/ab/ab12…            a whole file, named by its hash (files up to ``chunk_threshold``)
    recipe/ab/ab12…          a larger file: the list of its pages, named by the file's hash
    page/cd/cd34…            up to 256 (chunk hash, length) entries, named by their own hash
    chunk/ef/ef56…           a content-defined chunk (~80 KiB), named by its own hash
    tmp/PID.RANDOM.tmp       objects being written

Files above ``chunk_threshold`` (8 MiB) are cut by ``daemon.chunking`` (FastCDC) and stored as
chunks plus a recipe, so a 200 MiB CSV that grows by 1 MiB adds ~1 MiB: the chunks before the
old end of file are cut the same way again. Whether the writer appended in place or rewrote
the whole file (pandas, Spark) makes no difference. Recipes are two-level (recipe → pages →
chunks) and pages are cut where a chunk's hash says, so an append rewrites the last page or
two and a small recipe, never a list that grows with the file. Smaller files are kept whole:
chunking them would cost a file and an fsync per ~80 KiB for at most 8 MiB saved per change,
and a whole file can be cloned or linked.

``put(path, hash, size, mode)`` stores a local file; ``put_stream(stream, hash, size)`` stores
bytes read from anything with ``readinto`` (a bucket object's GET), by copy. Both check the
bytes against the expected size and hash while they store them and keep nothing otherwise.

Put modes (they apply to whole files; larger files are always chunked, because a clone or a
link keeps a full copy per version as soon as the writer rewrites the file):

- ``copy``: read the file once, hash it while writing it to a temp file, commit if it matches.
- ``reflink``: ``FICLONE`` the file into a temp file (copy-on-write: shares the extents, writes
  no data), hash the clone, commit if it matches. ``ReflinkUnsupportedError`` when the
  filesystem cannot clone (ext4, tmpfs, another filesystem); ``reflink_supported(dir)`` probes.
  The caller's policy: reflink where supported, else copy.
- ``hardlink``: link the file into the store, then take the write bits off the shared inode
  (as DVC does for its cache), then hash it and commit if it matches. What this guarantees:
  an in-place write (open for writing, truncate, append) by any process without
  ``CAP_DAC_OVERRIDE`` now fails with EACCES, so it cannot change the stored version; a writer
  that replaces the file (new file + rename, or delete and create, as most editors and tools
  do) gets a new inode and the store keeps the old one. What it does not guarantee: root (or a
  process that already had the file open for writing before the link) can still write in
  place; the read path re-hashes everything it returns, so such a write is reported by
  ``verify()`` and refused by ``iter_content``/restore (``DamagedObjectError``), never
  returned as good bytes. The user's file stays read-only after the store drops the object.
  Use copy or reflink where writers run as root. ``HardlinkUnsupportedError`` when the file is
  on another filesystem or cannot be linked or made read-only.

Crash safety: every object is written to ``tmp/``, fsynced, renamed to its final name, and
its folder fsynced (a chunked put writes all its new chunks before it fsyncs them, and names
none before its own fsync; in a ``batch`` blobs share one syncfs instead); a recipe is
written only after its chunks and pages are durable, and a file counts as stored only once
its blob or recipe exists. An interrupted put leaves only temp files, removed when the next
store is opened (once their writer's pid is gone), and complete chunks nobody references,
which ``gc`` removes. A put that fails (source changed, disk full) removes the chunks it
created itself. The source file is only read (and, in hardlink mode, made read-only).

Errors (``StoreError`` and below join the tree of ``daemon.errors``)::

    StrandlineError
    ├── UnreadableDataError         the source file cannot be opened or read (vanished, denied)
    └── StoreError                  the store cannot keep or return bytes (I/O error, bad layout)
        ├── StoreFullError          no space left (ENOSPC, EDQUOT) while storing; nothing partial kept
        ├── SourceChangedError      the file no longer has the expected size or hash: retry once it settles
        ├── ReflinkUnsupportedError the filesystem cannot clone: fall back to copy
        ├── HardlinkUnsupportedError the file cannot be linked or made read-only: fall back to copy
        ├── ObjectMissingError      nothing stored under a hash, or a chunk or page of it is gone
        └── DamagedObjectError      stored bytes no longer hash to their name, or cannot be read

Concurrency: one writer (the engine thread) puts and deletes; readers may run alongside
puts. (A chunked put writes all its new chunks to temp files first, then fsyncs and names
them on four short-lived threads of its own; it returns only when they are done.)
``gc``/``delete`` must not run while a put whose hash is not yet recorded as live is in
flight, or they may delete what it just stored.

Hashes are XXH3-128, as in the catalog: fast and well spread, but not collision-resistant
against someone crafting files to collide. The store trusts its inputs as the catalog does.

The storage is behind ``Backend`` (put object bytes atomically, read, list, delete) so a bucket
backend can follow; only ``LocalBackend`` exists now, and clone and link need it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import io
import logging
import os
import re
import stat
import struct
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import BinaryIO, Final, Literal, NoReturn, Protocol

import xxhash

from daemon.chunking import DEFAULT_PARAMS, ChunkParams, Readable, iter_chunks
from daemon.errors import StrandlineError, UnreadableDataError
from daemon.fingerprint import hash_fd

__all__ = [
    "CHUNK_THRESHOLD",
    "Backend",
    "ContentStore",
    "DamagedObjectError",
    "GcResult",
    "HardlinkUnsupportedError",
    "LocalBackend",
    "ObjectMissingError",
    "Problem",
    "PutMode",
    "PutResult",
    "ReflinkUnsupportedError",
    "SourceChangedError",
    "StoreError",
    "StoreFullError",
    "StoreStats",
    "reflink_supported",
]

log = logging.getLogger(__name__)

MiB: Final = 1024 * 1024
CHUNK_THRESHOLD: Final = 8 * MiB
# FICLONE from <linux/fs.h>: _IOW(0x94, 9, int). Not in the fcntl module.
FICLONE: Final = 0x40049409
FORMAT_LINE: Final = "strandline-content-store 1\n"

PutMode = Literal["copy", "reflink", "hardlink"]
Kind = Literal["blob", "recipe", "page", "chunk"]
KINDS: Final[tuple[Kind, ...]] = ("blob", "recipe", "page", "chunk")
_FILE_KINDS: Final[tuple[Kind, ...]] = ("blob", "recipe")
_PIECE_KINDS: Final[tuple[Kind, ...]] = ("page", "chunk")

_HEX32 = re.compile(r"[0-9a-f]{32}")
_READ_BLOCK: Final = 1024 * 1024
# Errors that mean "this filesystem (pair) cannot clone", as opposed to a failing disk.
_NO_REFLINK: Final = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS})
_NO_HARDLINK: Final = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.EACCES})
_FULL: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
# Threads that fsync and name the pieces of a chunked put once they are all written; see _PieceWriter.
_SYNC_THREADS: Final = 4
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
# A temp file whose writer is alive is kept on open, unless it is older than this (pid reused).
_STALE_TEMP_SECONDS: Final = 24 * 3600


class StoreError(StrandlineError):
    """The content store cannot keep or return bytes; the message says which object and why."""


class StoreFullError(StoreError):
    """No space left on the store's filesystem (or quota) while storing; nothing partial was kept."""


class SourceChangedError(StoreError):
    """The source file's size or bytes are not the expected ones: it changed since it was hashed. Retry later."""


class ReflinkUnsupportedError(StoreError):
    """The filesystem cannot clone this file into the store: store it by copy instead."""


class HardlinkUnsupportedError(StoreError):
    """This file cannot be hard-linked into the store or made read-only: store it by copy instead."""


class ObjectMissingError(StoreError):
    """Nothing is stored under a hash, or a chunk or page it needs is gone."""


class DamagedObjectError(StoreError):
    """Stored bytes no longer hash to their name, a recipe is malformed, or an object cannot be read."""


# -- recipes and pages: the pure format -----------------------------------------------------
#
# page   = N x (16-byte chunk digest, u32 length), little-endian, nothing else; named by its hash.
# recipe = header (magic "SLRC", version 1, file size u64, page count u32)
#          + P x (16-byte page digest, bytes covered u64, entries u32)
#          + XXH3-64 of everything before it (a recipe is named by the file's hash, not its own).

_ENTRY = struct.Struct("<16sI")
_HEADER = struct.Struct("<4sB3xQI")
_PAGE_REF = struct.Struct("<16sQI")
_TRAILER = struct.Struct("<Q")
_MAGIC: Final = b"SLRC"
_RECIPE_VERSION: Final = 1
# A page ends after a chunk whose hash has these low bits clear (1 in 64: ~1.3 KiB pages), or at
# the cap. Cuts depend on the chunks alone, so an append keeps every page but the last ones.
_PAGE_MASK: Final = 63
_PAGE_MAX_ENTRIES: Final = 256

Entry = tuple[bytes, int]


@dataclass(frozen=True, slots=True)
class PageRef:
    digest: bytes
    covered: int
    entries: int


@dataclass(frozen=True, slots=True)
class Recipe:
    size: int
    pages: tuple[PageRef, ...]


def page_ends_after(chunk_digest: bytes, entries_in_page: int) -> bool:
    """True when a page should end after this chunk."""
    return chunk_digest[-1] & _PAGE_MASK == 0 or entries_in_page >= _PAGE_MAX_ENTRIES


def encode_page(entries: Iterable[Entry]) -> bytes:
    return b"".join(_ENTRY.pack(digest, length) for digest, length in entries)


def decode_page(data: bytes) -> list[Entry]:
    if len(data) % _ENTRY.size:
        raise ValueError(f"page of {len(data)} bytes is not a whole number of entries")
    return [(bytes(d), n) for d, n in _ENTRY.iter_unpack(data)]


def encode_recipe(recipe: Recipe) -> bytes:
    body = _HEADER.pack(_MAGIC, _RECIPE_VERSION, recipe.size, len(recipe.pages)) + b"".join(
        _PAGE_REF.pack(p.digest, p.covered, p.entries) for p in recipe.pages
    )
    return body + _TRAILER.pack(xxhash.xxh3_64_intdigest(body))


def decode_recipe(data: bytes) -> Recipe:
    """Parse a recipe; ``ValueError`` says what is wrong with a malformed one."""
    if len(data) < _HEADER.size + _TRAILER.size:
        raise ValueError("recipe is truncated")
    body, (check,) = data[: -_TRAILER.size], _TRAILER.unpack(data[-_TRAILER.size :])
    if xxhash.xxh3_64_intdigest(body) != check:
        raise ValueError("recipe checksum does not match")
    magic, version, size, count = _HEADER.unpack_from(body)
    if magic != _MAGIC or version != _RECIPE_VERSION:
        raise ValueError(f"not a version-{_RECIPE_VERSION} recipe")
    if len(body) != _HEADER.size + count * _PAGE_REF.size:
        raise ValueError("recipe length does not match its page count")
    pages = tuple(PageRef(bytes(d), c, n) for d, c, n in _PAGE_REF.iter_unpack(body[_HEADER.size :]))
    if sum(p.covered for p in pages) != size:
        raise ValueError("recipe pages do not add up to the file size")
    return Recipe(size, pages)


def _check_digest(digest: str) -> str:
    if not _HEX32.fullmatch(digest):
        raise ValueError(f"not an XXH3-128 hex digest: {digest!r}")
    return digest


# -- results --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PutResult:
    """What ``put`` did.

    ``method`` is ``present`` when the hash was already stored (nothing read or written).
    ``new_bytes`` is the data the store wrote for this call (new chunks, pages and recipe, or
    the copied blob); a clone or a link writes none, though ``stats()`` then counts the blob's
    size as it does any blob's.
    """

    hash: str
    size: int
    layout: Literal["blob", "chunked"]
    method: Literal["present", "copy", "reflink", "hardlink", "chunked"]
    new_bytes: int
    chunks: int = 0
    new_chunks: int = 0


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Objects in the store and the bytes of their files (apparent sizes, recipes and pages included)."""

    blobs: int
    recipes: int
    pages: int
    chunks: int
    blob_bytes: int
    recipe_bytes: int
    page_bytes: int
    chunk_bytes: int

    @property
    def objects(self) -> int:
        """Stored files (contents you can ask for by hash)."""
        return self.blobs + self.recipes

    @property
    def bytes(self) -> int:
        return self.blob_bytes + self.recipe_bytes + self.page_bytes + self.chunk_bytes


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing ``verify`` found wrong.

    ``digest`` is the hash of the stored file whose content is affected (for a damaged chunk
    that no file uses, the chunk's own hash); ``obj`` is the object at fault, e.g. ``chunk/ef56…``.
    """

    digest: str
    kind: Literal["damaged", "missing", "unreadable"]
    obj: str
    detail: str


@dataclass(frozen=True, slots=True)
class GcResult:
    objects: int
    pieces: int
    bytes: int


# -- the backend: named objects, written atomically -----------------------------------------


class ObjectWriter(Protocol):
    def __enter__(self) -> ObjectWriter: ...

    def __exit__(self, *exc: object) -> None: ...

    def write(self, data: bytes | memoryview) -> None: ...

    def commit(self) -> None: ...


class Backend(Protocol):
    """Where objects live. Names are (kind, 32-hex digest); an object appears whole or not at all."""

    def size(self, kind: Kind, digest: str) -> int | None:
        """The object's size, or None when it does not exist."""
        ...

    def writer(self, kind: Kind, digest: str) -> ObjectWriter:
        """A writer whose bytes become the object on ``commit``; leaving its ``with`` uncommitted discards them."""
        ...

    def open(self, kind: Kind, digest: str) -> BinaryIO:
        """The object's bytes; ``FileNotFoundError`` when it does not exist."""
        ...

    def read(self, kind: Kind, digest: str) -> bytes:
        """All of a small object's bytes (a recipe, page or chunk); ``FileNotFoundError`` when absent."""
        ...

    def scan(self, kind: Kind) -> Iterator[tuple[str, int]]:
        """(digest, size) of every object of a kind, in no order."""
        ...

    def delete(self, kind: Kind, digest: str) -> int:
        """Remove the object; its size, or 0 if it was not there."""
        ...

    def flush(self) -> None:
        """Make every committed object durable (after a crash it is there, whole)."""
        ...


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _LocalWriter:
    """A temp file in the store's ``tmp/``; ``commit`` fsyncs and renames it to the object's name."""

    def __init__(self, backend: LocalBackend, kind: Kind, digest: str) -> None:
        self._backend = backend
        self._kind = kind
        self._digest = digest
        self.kind, self.digest = kind, digest
        self.temp = backend.temp_path()
        with backend.storing(f"{kind} {digest}"):
            # Read-only on disk: nothing should ever write an object after it is named.
            self.fd: int | None = os.open(self.temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        self.committed = False

    def __enter__(self) -> _LocalWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.committed:
            self.abort()

    def fileno(self) -> int:
        """The temp file, open for reading and writing (to hash what was cloned into it)."""
        if self.fd is None:
            raise StoreError("object writer already closed")
        return self.fd

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        with self._backend.storing(f"{self._kind} {self._digest}"):
            while view:
                n = os.write(self.fileno(), view)
                view = view[n:]

    def clone_from(self, src_fd: int) -> None:
        """Make this temp file a copy-on-write clone of ``src_fd`` (FICLONE)."""
        try:
            fcntl.ioctl(self.fileno(), FICLONE, src_fd)
        except OSError as exc:
            if exc.errno in _NO_REFLINK:
                raise ReflinkUnsupportedError(
                    f"reflink not supported between the file and the store at {self._backend.root} "
                    f"({os.strerror(exc.errno or 0)}); store it by copy"
                ) from exc
            self._backend.raise_store_error(exc, f"{self._kind} {self._digest}")

    def commit(self) -> None:
        fd = self.fileno()
        with self._backend.storing(f"{self._kind} {self._digest}"):
            if self._backend.batching and self._kind == "blob":
                self._backend.unsynced += 1  # the batch's syncfs makes it durable
            else:
                os.fsync(fd)
            self.fd = None
            os.close(fd)
            self._backend.install(self.temp, self._kind, self._digest)
        self.committed = True

    def close_unsynced(self) -> None:
        """Close the temp file with its writeback started, not yet durable; ``commit_closed`` finishes it."""
        fd = self.fileno()
        if _sync_file_range is not None:
            _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # a hint: failures surface at the fsync
        self.fd = None
        with self._backend.storing(f"{self._kind} {self._digest}"):
            os.close(fd)

    def commit_closed(self) -> None:
        """Fsync the closed temp file, then give it its name (after ``close_unsynced``)."""
        with self._backend.storing(f"{self._kind} {self._digest}"):
            fd = os.open(self.temp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._backend.install(self.temp, self._kind, self._digest)
        self.committed = True

    def abort(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            with suppress(OSError):
                os.close(fd)
        with suppress(FileNotFoundError):
            os.unlink(self.temp)


class LocalBackend:
    """Objects as files under one local folder, fanned out by the first two hex digits."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(root)
        self.tmp = os.path.join(self.root, "tmp")
        self._dirty: set[str] = set()
        # In a batch (ContentStore.batch) blobs are not fsynced one by one: one syncfs at the end,
        # needed only when ``unsynced`` blobs were named in it.
        self.batching = False
        self.unsynced = 0
        try:
            for sub in (*KINDS, "tmp"):
                os.makedirs(os.path.join(self.root, sub), exist_ok=True)
            self._check_format()
        except OSError as exc:
            raise StoreError(
                f"cannot open the content store at {self.root}: {exc}; check the state_dir setting"
            ) from exc
        self.removed_temps = self._clean_temps()

    def _check_format(self) -> None:
        path = os.path.join(self.root, "FORMAT")
        try:
            with open(path, encoding="utf-8") as fh:
                found = fh.read()
        except FileNotFoundError:
            with open(path + ".tmp", "w", encoding="utf-8") as fh:
                fh.write(FORMAT_LINE)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(path + ".tmp", path)
            return
        if found != FORMAT_LINE:
            raise StoreError(f"{self.root} is not a version-1 Strandline content store (FORMAT says {found.strip()!r})")

    def _clean_temps(self) -> int:
        """Remove temp files left by writers that died; a live writer's file is left alone."""
        removed = 0
        now = time.time()
        with os.scandir(self.tmp) as entries:
            for entry in entries:
                pid_text = entry.name.split(".", 1)[0]
                try:
                    pid = int(pid_text)
                    age = now - entry.stat(follow_symlinks=False).st_mtime
                except (ValueError, OSError):
                    pid, age = 0, _STALE_TEMP_SECONDS
                if pid > 0 and _alive(pid) and age < _STALE_TEMP_SECONDS:
                    continue
                with suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
        if removed:
            log.info("content store %s: removed %d temp files of interrupted writes", self.root, removed)
        return removed

    # -- error translation ------------------------------------------------------------------

    def raise_store_error(self, exc: OSError, what: str) -> NoReturn:
        if exc.errno in _FULL:
            raise StoreFullError(
                f"no space left for the content store at {self.root} while storing {what}; "
                "free space (or run gc) and retry"
            ) from exc
        raise StoreError(f"cannot write {what} to the content store at {self.root}: {exc}") from exc

    @contextmanager
    def storing(self, what: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            self.raise_store_error(exc, what)

    # -- names ------------------------------------------------------------------------------

    def path(self, kind: Kind, digest: str) -> str:
        return os.path.join(self.root, kind, digest[:2], digest)

    def temp_path(self) -> str:
        return os.path.join(self.tmp, f"{os.getpid()}.{uuid.uuid4().hex}.tmp")

    def install(self, temp: str, kind: Kind, digest: str) -> None:
        """Rename a finished temp file to the object's name (replacing one with the same bytes)."""
        final = self.path(kind, digest)
        folder = os.path.dirname(final)
        if not os.path.isdir(folder):
            os.makedirs(folder, exist_ok=True)
            self._dirty.add(os.path.dirname(folder))
        os.rename(temp, final)
        self._dirty.add(folder)

    # -- Backend ----------------------------------------------------------------------------

    def size(self, kind: Kind, digest: str) -> int | None:
        try:
            return os.stat(self.path(kind, digest)).st_size
        except FileNotFoundError:
            return None

    def writer(self, kind: Kind, digest: str) -> _LocalWriter:
        return _LocalWriter(self, kind, digest)

    def open(self, kind: Kind, digest: str) -> BinaryIO:
        return open(self.path(kind, digest), "rb", buffering=0)

    def read(self, kind: Kind, digest: str) -> bytes:
        with self.open(kind, digest) as fh:
            return fh.read()

    def scan(self, kind: Kind) -> Iterator[tuple[str, int]]:
        base = os.path.join(self.root, kind)
        with os.scandir(base) as folders:
            fans = [f.path for f in folders if f.is_dir(follow_symlinks=False)]
        for fan in fans:
            with os.scandir(fan) as entries:
                for entry in entries:
                    if _HEX32.fullmatch(entry.name):
                        with suppress(FileNotFoundError):
                            yield entry.name, entry.stat(follow_symlinks=False).st_size

    def delete(self, kind: Kind, digest: str) -> int:
        path = self.path(kind, digest)
        try:
            size = os.stat(path).st_size
            os.unlink(path)
        except FileNotFoundError:
            return 0
        self._dirty.add(os.path.dirname(path))
        return size

    def flush(self) -> None:
        if self.batching:
            return  # the batch's syncfs makes the folders durable
        dirty, self._dirty = self._dirty, set()
        for folder in sorted(dirty):
            with self.storing(f"folder {folder}"):
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)


class _PieceWriter:
    """Writes the new chunks and pages of one chunked put: all of them first, then fsynced and named together.

    Each piece goes to a temp file whose writeback is started at once (``sync_file_range``), and
    is closed unsynced; ``finish`` then fsyncs and renames the temps on a few threads, so a piece
    gets its name only once its bytes are durable. The first design fsynced each piece right
    after writing it (four at a time): every fsync forced a journal commit, and each create of
    the next temp waited for one. A 1 GiB put (13,400 chunks) spent 2.8 s of its 7.2 s in
    ``open(O_CREAT)`` alone on this machine's ext4; writing first and syncing after keeps the
    journal quiet while the files are created.
    """

    def __init__(self, backend: LocalBackend) -> None:
        self._backend = backend
        self._written: list[_LocalWriter] = []
        self._names: set[tuple[Kind, str]] = set()

    def store(self, kind: Kind, digest: str, data: bytes | memoryview) -> int:
        """Write a piece unless it is there; the bytes written (0 when it was)."""
        # A piece of the right size under its name is taken as good: verify() re-hashes them all.
        if (kind, digest) in self._names or self._backend.size(kind, digest) == len(data):
            return 0
        writer = self._backend.writer(kind, digest)
        try:
            writer.write(data)
            writer.close_unsynced()
        except BaseException:
            writer.abort()
            raise
        self._names.add((kind, digest))
        self._written.append(writer)
        return len(data)

    def finish(self) -> None:
        """Fsync every piece and then name it; the first failure is raised once all are done."""
        if not self._written:
            return
        with ThreadPoolExecutor(max_workers=_SYNC_THREADS, thread_name_prefix="store-sync") as pool:
            futures = [pool.submit(writer.commit_closed) for writer in self._written]
        for future in futures:
            future.result()

    def undo(self) -> None:
        """Remove everything this put created, named or not (one writer: no recipe names them yet)."""
        for writer in self._written:
            if writer.committed:
                with suppress(OSError):
                    self._backend.delete(writer.kind, writer.digest)
            else:
                writer.abort()
        self._written.clear()


def _syncfs(path: str) -> None:
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


def reflink_supported(directory: str | os.PathLike[str]) -> bool:
    """Whether files in ``directory`` can be cloned into it with FICLONE (btrfs, XFS, bcachefs; not ext4, tmpfs).

    A clone also needs the source on the same filesystem: ``put`` raises ``ReflinkUnsupportedError``
    for one that is not, even where this says True.
    """
    src = os.path.join(directory, f".reflink-probe-{uuid.uuid4().hex}")
    dst = src + ".clone"
    try:
        src_fd = os.open(src, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(src_fd, b"\0" * 4096)
            dst_fd = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                fcntl.ioctl(dst_fd, FICLONE, src_fd)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)
        return True
    except OSError:
        return False
    finally:
        for path in (src, dst):
            with suppress(OSError):
                os.unlink(path)


# -- reading the source ---------------------------------------------------------------------


def _open_source(path: str | os.PathLike[str]) -> tuple[int, os.stat_result]:
    """Open a regular file for reading without following a final symlink, as ``fingerprint`` does."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        try:
            fd = os.open(path, flags | getattr(os, "O_NOATIME", 0))
        except PermissionError:
            fd = os.open(path, flags)
    except OSError as exc:
        raise UnreadableDataError(f"cannot open {os.fspath(path)} to store it: {exc.strerror}") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnreadableDataError(f"{os.fspath(path)} is not a regular file; only regular files are stored")
    return fd, st


class _SourceReader:
    """``readinto`` over the source; its read errors become ``UnreadableDataError`` (not the store's fault)."""

    def __init__(self, readinto: Callable[[memoryview], int], name: str) -> None:
        self._readinto = readinto
        self._name = name

    @classmethod
    def of_fd(cls, fd: int, name: str) -> _SourceReader:
        return cls(lambda buffer: os.readv(fd, [buffer]), name)

    def readinto(self, buffer: memoryview) -> int:
        try:
            return self._readinto(buffer)
        except OSError as exc:
            raise UnreadableDataError(f"cannot read {self._name} to store it: {exc}") from exc


def _changed(path: str, why: str) -> SourceChangedError:
    return SourceChangedError(f"{path} changed while it was being stored ({why}); store it again once it settles")


class _IterStream(io.RawIOBase):
    """A read-only raw stream over an iterator of byte strings."""

    def __init__(self, parts: Iterator[bytes]) -> None:
        self._parts = parts
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            part = next(self._parts, None)
            if part is None:
                return 0
            self._pending = part
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        close = getattr(self._parts, "close", None)
        if close is not None:
            close()
        super().close()


# -- the store ------------------------------------------------------------------------------


class ContentStore:
    """Bytes of files by XXH3-128 hash. See the module docstring for layout, modes and guarantees."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        chunk_threshold: int = CHUNK_THRESHOLD,
        chunk_params: ChunkParams = DEFAULT_PARAMS,
    ) -> None:
        self.backend = LocalBackend(root)
        self.root = self.backend.root
        self.chunk_threshold = chunk_threshold
        self.chunk_params = chunk_params

    # -- writing ----------------------------------------------------------------------------

    def has(self, digest: str, size: int | None = None) -> bool:
        """True when the content of ``digest`` is stored (its blob or recipe exists).

        With ``size``, a blob must also have that size: a blob cut short by a crash during a
        ``batch`` (named, but its data never reached the disk) does not count as stored.
        """
        _check_digest(digest)
        blob = self.backend.size("blob", digest)
        if blob is not None and (size is None or blob == size):
            return True
        return self.backend.size("recipe", digest) is not None

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Store many small files with one filesystem sync at the end instead of an fsync per blob.

        What was put in the batch is durable when the block exits normally (a version must be
        committed only after that). The syncfs runs only when a blob was named without its own
        fsync in the batch. A crash inside may leave blobs named but short, which
        ``has(digest, size)`` and ``put`` treat as absent and ``verify`` reports. Chunked files
        keep their own per-object syncs: a recipe never points at chunks that are not durable.
        """
        backend = self.backend
        if backend.batching:
            yield
            return
        backend.batching = True
        backend.unsynced = 0
        try:
            yield
        finally:
            backend.batching = False
        # Only blobs named without their fsync need the syncfs; it would also flush every other
        # dirty file of the filesystem (the 1 GiB file just versioned, chunked and fsynced piece by
        # piece: 1.2 s here), so a batch that named none skips it.
        if backend.unsynced:
            with backend.storing("a sync of the store"):
                _syncfs(backend.root)
            backend.unsynced = 0
        backend.flush()

    def put(self, path: str | os.PathLike[str], expected_hash: str, size: int, mode: PutMode = "copy") -> PutResult:
        """Store the bytes of the file at ``path``, which must be ``size`` bytes hashing to ``expected_hash``.

        Idempotent: a hash already stored returns ``method="present"`` without reading the file.
        Raises ``SourceChangedError`` when the file no longer matches (retry after it settles),
        ``StoreFullError`` on a full disk, ``ReflinkUnsupportedError``/``HardlinkUnsupportedError``
        when ``mode`` cannot be used here (fall back to copy), ``UnreadableDataError`` when the
        file cannot be read. On any error nothing new is left under a final name.
        """
        digest = _check_digest(expected_hash)
        if mode not in ("copy", "reflink", "hardlink"):
            raise ValueError(f"unknown put mode {mode!r}; use copy, reflink or hardlink")
        if self.backend.size("blob", digest) == size:
            return PutResult(digest, size, "blob", "present", 0)
        if self.backend.size("recipe", digest) is not None:
            return PutResult(digest, size, "chunked", "present", 0)
        name = os.fspath(path)
        fd, st = _open_source(name)
        try:
            if st.st_size != size:
                raise _changed(name, f"it is {st.st_size} bytes, expected {size}")

            def unchanged() -> None:
                after = os.fstat(fd)
                if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                    raise _changed(name, "its size or mtime moved")

            if size > self.chunk_threshold:
                return self._put_chunked(_SourceReader.of_fd(fd, name), name, digest, size, unchanged)
            if mode == "copy":
                return self._put_copy(_SourceReader.of_fd(fd, name), name, digest, size, unchanged)
            if mode == "reflink":
                return self._put_reflink(fd, st, name, digest, unchanged)
            return self._put_hardlink(fd, st, name, digest, unchanged)
        finally:
            os.close(fd)

    def put_stream(self, stream: Readable, expected_hash: str, size: int, *, name: str = "a stream") -> PutResult:
        """Store ``size`` bytes read from ``stream`` (an object's GET, a pipe) that must hash to ``expected_hash``.

        As ``put`` by copy, for bytes that are not a local file (bucket datasets). ``name`` is
        used in messages. Raises ``SourceChangedError`` when the bytes read are not the
        expected ones, ``UnreadableDataError`` when the stream raises ``OSError``.
        """
        digest = _check_digest(expected_hash)
        if self.backend.size("blob", digest) == size:
            return PutResult(digest, size, "blob", "present", 0)
        if self.backend.size("recipe", digest) is not None:
            return PutResult(digest, size, "chunked", "present", 0)
        reader = _SourceReader(stream.readinto, name)
        if size > self.chunk_threshold:
            return self._put_chunked(reader, name, digest, size, lambda: None)
        return self._put_copy(reader, name, digest, size, lambda: None)

    @staticmethod
    def _check_read(name: str, digest: str, size: int, got: str, read: int, unchanged: Callable[[], None]) -> None:
        if read != size:
            raise _changed(name, f"{read} bytes were read, expected {size}")
        unchanged()
        if got != digest:
            raise _changed(name, f"its bytes hash to {got}, expected {digest}")

    def _put_copy(
        self, reader: _SourceReader, name: str, digest: str, size: int, unchanged: Callable[[], None]
    ) -> PutResult:
        hasher = xxhash.xxh3_128()
        buffer = bytearray(min(_READ_BLOCK, max(size, 4096) + 1))
        view = memoryview(buffer)
        read = 0
        with self.backend.writer("blob", digest) as writer:
            while n := reader.readinto(view):
                hasher.update(view[:n])
                writer.write(view[:n])
                read += n
                if read > size:
                    break  # growing: no need to copy the rest to know it is not the expected bytes
            self._check_read(name, digest, size, hasher.hexdigest(), read, unchanged)
            writer.commit()
        self.backend.flush()
        log.debug("stored %s (%d bytes) by copy", digest, read)
        return PutResult(digest, read, "blob", "copy", read)

    def _put_reflink(
        self, fd: int, st: os.stat_result, name: str, digest: str, unchanged: Callable[[], None]
    ) -> PutResult:
        with self.backend.writer("blob", digest) as writer:
            writer.clone_from(fd)
            clone_fd = writer.fileno()
            # Hash the clone, not the source: what is checked is exactly what is kept.
            clone_size = os.fstat(clone_fd).st_size
            self._check_read(name, digest, st.st_size, hash_fd(clone_fd, clone_size), clone_size, unchanged)
            writer.commit()
        self.backend.flush()
        log.debug("stored %s (%d bytes) by reflink", digest, st.st_size)
        return PutResult(digest, st.st_size, "blob", "reflink", 0)

    def _put_hardlink(
        self, fd: int, st: os.stat_result, name: str, digest: str, unchanged: Callable[[], None]
    ) -> PutResult:
        backend = self.backend
        temp = backend.temp_path()
        try:
            os.link(name, temp, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in _NO_HARDLINK:
                raise HardlinkUnsupportedError(
                    f"cannot hard-link {name} into the store at {backend.root} ({exc.strerror}); store it by copy"
                ) from exc
            backend.raise_store_error(exc, f"blob {digest}")
        mode = stat.S_IMODE(st.st_mode)
        protected = False
        try:
            linked = os.lstat(temp)
            if (linked.st_dev, linked.st_ino) != (st.st_dev, st.st_ino):
                raise _changed(name, "it was replaced by another file")
            if mode & 0o222:
                try:
                    os.fchmod(fd, mode & ~0o222)
                except OSError as exc:
                    raise HardlinkUnsupportedError(
                        f"cannot make {name} read-only ({exc.strerror}), so a hard link could not protect "
                        "the stored version; store it by copy"
                    ) from exc
                protected = True
            self._check_read(name, digest, st.st_size, hash_fd(fd, st.st_size), st.st_size, unchanged)
            with backend.storing(f"blob {digest}"):
                if backend.batching:
                    backend.unsynced += 1  # the batch's syncfs makes the linked bytes durable
                else:
                    os.fsync(fd)  # a user's file may still have dirty pages: durable before it is named
                backend.install(temp, "blob", digest)
            backend.flush()
        except BaseException:
            with suppress(OSError):
                os.unlink(temp)
            if protected:
                with suppress(OSError):
                    os.fchmod(fd, mode)
            raise
        log.debug("stored %s (%d bytes) by hard link; the file is now read-only", digest, st.st_size)
        return PutResult(digest, st.st_size, "blob", "hardlink", 0)

    def _put_chunked(
        self, reader: _SourceReader, name: str, digest: str, size: int, unchanged: Callable[[], None]
    ) -> PutResult:
        hasher = xxhash.xxh3_128()
        pages: list[PageRef] = []
        page: list[Entry] = []
        page_bytes = 0
        new_bytes = chunks = new_chunks = read = 0
        pieces = _PieceWriter(self.backend)

        def end_page() -> None:
            nonlocal new_bytes, page_bytes
            data = encode_page(page)
            page_digest = xxhash.xxh3_128_digest(data)
            new_bytes += pieces.store("page", page_digest.hex(), data)
            pages.append(PageRef(page_digest, page_bytes, len(page)))
            page.clear()
            page_bytes = 0

        try:
            for _offset, data in iter_chunks(reader, self.chunk_params):
                hasher.update(data)
                chunk_digest = xxhash.xxh3_128_digest(data)
                written = pieces.store("chunk", chunk_digest.hex(), data)
                chunks += 1
                new_chunks += written > 0
                new_bytes += written
                read += len(data)
                if read > size:
                    break  # growing: it cannot be the expected bytes
                page.append((chunk_digest, len(data)))
                page_bytes += len(data)
                if page_ends_after(chunk_digest, len(page)):
                    end_page()
            if page:
                end_page()
            self._check_read(name, digest, size, hasher.hexdigest(), read, unchanged)
            pieces.finish()
            self.backend.flush()  # chunks and pages durable before a recipe names them
            recipe = encode_recipe(Recipe(read, tuple(pages)))
            with self.backend.writer("recipe", digest) as writer:
                writer.write(recipe)
                writer.commit()
            self.backend.flush()
            new_bytes += len(recipe)
        except BaseException:
            pieces.undo()
            raise
        log.debug(
            "stored %s (%d bytes) as %d chunks, %d new, %d bytes new", digest, read, chunks, new_chunks, new_bytes
        )
        return PutResult(digest, read, "chunked", "chunked", new_bytes, chunks, new_chunks)

    # -- reading ----------------------------------------------------------------------------

    def iter_content(self, digest: str) -> Iterator[bytes]:
        """The stored bytes of ``digest`` in pieces, each checked before it is yielded.

        Raises ``ObjectMissingError`` at once when nothing is stored under ``digest``. A damaged
        or missing part raises ``DamagedObjectError``/``ObjectMissingError`` while iterating; a
        whole blob is checked as a whole, so its error comes after its last piece: a caller
        must treat everything it received as void when the iteration raises.
        """
        _check_digest(digest)
        if self.backend.size("blob", digest) is not None:
            return self._iter_blob(digest)
        if self.backend.size("recipe", digest) is not None:
            return self._iter_recipe(digest)
        raise ObjectMissingError(f"no content stored for hash {digest}")

    def open_file(self, digest: str) -> io.BufferedReader:
        """A binary stream of the stored bytes of ``digest``, checked as by ``iter_content``."""
        return io.BufferedReader(_IterStream(self.iter_content(digest)), buffer_size=_READ_BLOCK)

    def _read_piece(self, kind: Kind, piece: str, digest: str) -> bytes:
        try:
            return self.backend.read(kind, piece)
        except FileNotFoundError as exc:
            raise ObjectMissingError(
                f"content {digest} lacks its {kind} {piece}; that version cannot be restored"
            ) from exc
        except OSError as exc:
            raise DamagedObjectError(f"content {digest}: {kind} {piece} cannot be read: {exc}") from exc

    def _iter_blob(self, digest: str) -> Iterator[bytes]:
        hasher = xxhash.xxh3_128()
        try:
            with self.backend.open("blob", digest) as fh:
                while part := fh.read(_READ_BLOCK):
                    hasher.update(part)
                    yield part
        except FileNotFoundError as exc:
            raise ObjectMissingError(f"no content stored for hash {digest}") from exc
        except OSError as exc:
            raise DamagedObjectError(f"stored content {digest} cannot be read: {exc}") from exc
        got = hasher.hexdigest()
        if got != digest:
            raise DamagedObjectError(f"stored content {digest} is damaged: its bytes now hash to {got}")

    def _recipe(self, digest: str) -> Recipe:
        data = self._read_piece("recipe", digest, digest)
        try:
            return decode_recipe(data)
        except ValueError as exc:
            raise DamagedObjectError(f"the recipe of stored content {digest} is damaged: {exc}") from exc

    def _page(self, ref: PageRef, digest: str) -> list[Entry]:
        piece = ref.digest.hex()
        data = self._read_piece("page", piece, digest)
        if xxhash.xxh3_128_digest(data) != ref.digest:
            raise DamagedObjectError(f"content {digest}: page {piece} is damaged")
        entries = decode_page(data)
        if len(entries) != ref.entries or sum(n for _, n in entries) != ref.covered:
            raise DamagedObjectError(f"content {digest}: page {piece} does not match its recipe")
        return entries

    def _iter_recipe(self, digest: str) -> Iterator[bytes]:
        recipe = self._recipe(digest)
        hasher = xxhash.xxh3_128()
        for ref in recipe.pages:
            for chunk_digest, length in self._page(ref, digest):
                piece = chunk_digest.hex()
                data = self._read_piece("chunk", piece, digest)
                if len(data) != length or xxhash.xxh3_128_digest(data) != chunk_digest:
                    raise DamagedObjectError(f"content {digest}: chunk {piece} is damaged")
                hasher.update(data)
                yield data
        got = hasher.hexdigest()
        if got != digest:
            raise DamagedObjectError(f"stored content {digest} is damaged: its chunks hash to {got}")

    # -- inspecting -------------------------------------------------------------------------

    def stats(self) -> StoreStats:
        counts: dict[Kind, tuple[int, int]] = {}
        for kind in KINDS:
            n = total = 0
            for _digest, size in self.backend.scan(kind):
                n += 1
                total += size
            counts[kind] = (n, total)
        return StoreStats(
            blobs=counts["blob"][0],
            recipes=counts["recipe"][0],
            pages=counts["page"][0],
            chunks=counts["chunk"][0],
            blob_bytes=counts["blob"][1],
            recipe_bytes=counts["recipe"][1],
            page_bytes=counts["page"][1],
            chunk_bytes=counts["chunk"][1],
        )

    def _hash_object(self, kind: Kind, digest: str) -> str:
        hasher = xxhash.xxh3_128()
        with self.backend.open(kind, digest) as fh:
            while part := fh.read(_READ_BLOCK):
                hasher.update(part)
        return hasher.hexdigest()

    def verify(self, *, deep: bool = False) -> list[Problem]:
        """Re-hash every object and check every recipe; what is wrong, naming the stored hash.

        Each chunk is read once however many files share it. ``deep`` also re-reads each
        chunked file end to end and checks its whole-file hash (the recipe checksum, page and
        chunk hashes already make that redundant unless a put stored a wrong recipe).
        """
        problems: list[Problem] = []
        for digest, _size in self.backend.scan("blob"):
            try:
                got = self._hash_object("blob", digest)
            except OSError as exc:
                problems.append(Problem(digest, "unreadable", f"blob/{digest}", str(exc)))
                continue
            if got != digest:
                problems.append(Problem(digest, "damaged", f"blob/{digest}", f"its bytes hash to {got}"))
        bad_chunks: dict[str, tuple[Literal["damaged", "unreadable"], str]] = {}
        chunk_sizes: dict[str, int] = {}
        for piece, size in self.backend.scan("chunk"):
            chunk_sizes[piece] = size
            try:
                got = self._hash_object("chunk", piece)
            except OSError as exc:
                bad_chunks[piece] = ("unreadable", str(exc))
                continue
            if got != piece:
                bad_chunks[piece] = ("damaged", f"its bytes hash to {got}")
        used: set[str] = set()
        for digest, _size in self.backend.scan("recipe"):
            found = self._verify_recipe(digest, bad_chunks, chunk_sizes, used)
            problems.extend(found)
            if deep and not found:
                try:
                    for _part in self._iter_recipe(digest):
                        pass
                except StoreError as exc:
                    problems.append(Problem(digest, "damaged", f"recipe/{digest}", str(exc)))
        for piece, (kind, detail) in sorted(bad_chunks.items()):
            if piece not in used:
                problems.append(
                    Problem(piece, kind, f"chunk/{piece}", f"{detail}; no stored file uses it (gc removes it)")
                )
        return problems

    def _verify_recipe(
        self,
        digest: str,
        bad_chunks: dict[str, tuple[Literal["damaged", "unreadable"], str]],
        chunk_sizes: dict[str, int],
        used: set[str],
    ) -> list[Problem]:
        problems: list[Problem] = []
        try:
            recipe = self._recipe(digest)
        except ObjectMissingError:
            return []  # deleted since the listing
        except DamagedObjectError as exc:
            return [Problem(digest, "damaged", f"recipe/{digest}", str(exc))]
        for ref in recipe.pages:
            try:
                entries = self._page(ref, digest)
            except ObjectMissingError as exc:
                problems.append(Problem(digest, "missing", f"page/{ref.digest.hex()}", str(exc)))
                continue
            except DamagedObjectError as exc:
                problems.append(Problem(digest, "damaged", f"page/{ref.digest.hex()}", str(exc)))
                continue
            for chunk_digest, length in entries:
                piece = chunk_digest.hex()
                used.add(piece)
                if piece in bad_chunks:
                    kind, detail = bad_chunks[piece]
                    problems.append(Problem(digest, kind, f"chunk/{piece}", detail))
                elif piece not in chunk_sizes:
                    problems.append(Problem(digest, "missing", f"chunk/{piece}", "the chunk is gone"))
                elif chunk_sizes[piece] != length:
                    problems.append(
                        Problem(digest, "damaged", f"chunk/{piece}", f"{chunk_sizes[piece]} bytes, expected {length}")
                    )
        return problems

    # -- removing ---------------------------------------------------------------------------

    def delete(self, digests: Iterable[str]) -> GcResult:
        """Remove the content of these hashes; chunks and pages go only when no remaining file uses them."""
        objects = freed = 0
        for digest in digests:
            _check_digest(digest)
            for kind in _FILE_KINDS:
                size = self._delete(kind, digest)
                if size is not None:
                    objects += 1
                    freed += size
        return self._sweep(objects, freed)

    def gc(self, live: Iterable[str], *, dry_run: bool = False) -> GcResult:
        """Remove every stored file whose hash is not in ``live``, then the chunks and pages no file uses.

        ``dry_run``: remove nothing, and say what would go and how many bytes that frees.
        """
        keep = {_check_digest(d) for d in live}
        if dry_run:
            return self._plan_gc(keep)
        objects = freed = 0
        for kind in _FILE_KINDS:
            for digest, _size in list(self.backend.scan(kind)):
                if digest not in keep:
                    size = self._delete(kind, digest)
                    if size is not None:
                        objects += 1
                        freed += size
        return self._sweep(objects, freed)

    def _plan_gc(self, keep: set[str]) -> GcResult:
        objects = freed = 0
        live_recipes: list[str] = []
        for kind in _FILE_KINDS:
            for digest, size in self.backend.scan(kind):
                if digest in keep:
                    if kind == "recipe":
                        live_recipes.append(digest)
                    continue
                objects += 1
                freed += size
        live_pieces: set[str] = set()
        for digest in live_recipes:
            try:
                recipe = self._recipe(digest)
                for ref in recipe.pages:
                    live_pieces.add(ref.digest.hex())
                    live_pieces.update(d.hex() for d, _ in self._page(ref, digest))
            except StoreError as exc:
                log.warning("gc: cannot read the recipe of %s: %s", digest, exc)
        pieces = 0
        for kind in _PIECE_KINDS:
            for piece, size in self.backend.scan(kind):
                if piece not in live_pieces:
                    pieces += 1
                    freed += size
        return GcResult(objects, pieces, freed)

    def _delete(self, kind: Kind, digest: str) -> int | None:
        if self.backend.size(kind, digest) is None:
            return None
        with self.backend.storing(f"removal of {kind} {digest}"):
            return self.backend.delete(kind, digest)

    def _sweep(self, objects: int, freed: int) -> GcResult:
        """Delete pages and chunks that no remaining recipe reaches."""
        live_pages: set[str] = set()
        live_chunks: set[str] = set()
        for digest, _size in list(self.backend.scan("recipe")):
            try:
                recipe = self._recipe(digest)
            except StoreError as exc:
                # Its pieces cannot be known; whatever other files share stays, the rest is lost anyway.
                log.warning("gc: skipping the unreadable recipe of %s: %s", digest, exc)
                continue
            for ref in recipe.pages:
                live_pages.add(ref.digest.hex())
                try:
                    entries = self._page(ref, digest)
                except StoreError as exc:
                    log.warning("gc: %s", exc)
                    continue
                live_chunks.update(d.hex() for d, _ in entries)
        pieces = 0
        for kind in _PIECE_KINDS:
            live_set = live_pages if kind == "page" else live_chunks
            for piece, _size in list(self.backend.scan(kind)):
                if piece not in live_set:
                    with self.backend.storing(f"removal of {kind} {piece}"):
                        freed += self.backend.delete(kind, piece)
                    pieces += 1
        self.backend.flush()
        if objects or pieces:
            log.info("content store: removed %d files and %d chunks/pages, %d bytes freed", objects, pieces, freed)
        return GcResult(objects, pieces, freed)
