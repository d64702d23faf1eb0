"""The content store: the bytes of every versioned file, kept once, addressed by their XXH3-128.

A version in the catalog is a manifest {path: (size, hash)}; this store keeps the bytes behind
each hash so a version can be restored (issue 6). The same bytes are stored once however many
versions and datasets name them.

Layout of a local store (``<state_dir>/store``)::

    FORMAT                   "strandline-content-store 2"
    packs/<32 hex>.pack      objects appended one after another (``daemon.store_packs``)
    index.db                 where each packed object is: (kind, hash) -> (pack, offset, size)
    blob/ab/ab12…            a whole file kept as a file of its own: a clone or a hard link
    tmp/                     packs and clones being written

The objects are of four kinds: a *blob* is a whole file; a *recipe* lists the pages of a larger
file; a *page* lists up to 256 (chunk hash, length) entries; a *chunk* is a content-defined
piece (~80 KiB) of a larger file. Each is named by its XXH3-128 (a recipe by its file's).

Copied bytes go to packs: one file written, fsynced once and renamed per put (or per batch, or
every ``PACK_TARGET`` bytes), instead of a file, a rename and a sync per object, which cost
3-7 s for 20,000 small files and 2.8 s of creates for the 13,400 chunks of 1 GiB here.
Version-1 stores (every object a loose file under ``<kind>/ab/…``) are read as they are; new
objects go to packs.

Files above ``chunk_threshold`` (8 MiB) are cut by ``daemon.chunking`` (FastCDC) and stored as
chunks plus a recipe, so a 200 MiB CSV that grows by 1 MiB adds ~1 MiB: the chunks before the
old end of file are cut the same way again. Whether the writer appended in place or rewrote
the whole file (pandas, Spark) makes no difference. Recipes are two-level (recipe → pages →
chunks) and pages are cut where a chunk's hash says, so an append rewrites the last page or
two and a small recipe, never a list that grows with the file. Smaller files are kept whole.

``put(path, hash, size, mode)`` stores a local file; ``put_stream(stream, hash, size)`` stores
bytes read from anything with ``readinto`` (a bucket object's GET), by copy. Both check the
bytes against the expected size and hash while they store them and keep nothing otherwise.

Put modes:

- ``copy``: read the file once, hash it while appending it to the pack (or chunking it), keep
  it if it matches.
- ``reflink``: a file above ``chunk_threshold`` is cloned whole (``FICLONE``) into a temp file
  (copy-on-write: shares the extents, writes no data), its hash checked, and named. A file that
  grows by appends in place keeps sharing its old extents with the earlier clones, so an append
  costs about the appended bytes there too; a file rewritten whole costs a full copy per
  version (as with DVC). Smaller files are copied into packs: a clone would cost a file of its
  own and a flush of the source to save a few KiB. ``clone_to`` clones a stored clone back out
  (restore). ``ReflinkUnsupportedError`` when the filesystem cannot clone (ext4, tmpfs, another
  filesystem); ``reflink_supported(dir)`` probes. The caller's policy: reflink where
  supported, else copy.
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

Crash safety: a pack is written in ``tmp/``, fsynced, then renamed into ``packs/`` and its
folder fsynced, then indexed; a clone is fsynced and renamed likewise (in a ``batch`` clones
and links share one syncfs instead). A recipe is appended after its chunks and pages, so it is
named with them or after them. An interrupted put leaves only temp files, removed when the
next store is opened (once their writer's pid is gone); a pack named but not yet indexed is
indexed on open. A put that fails (source changed, disk full) takes back what it appended.
The source file is only read (and, in hardlink mode, made read-only).

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

Concurrency: one writer (the engine thread) puts and deletes; readers, in this process or
others, may run alongside puts. ``gc``/``delete`` must not run while a put whose hash is not yet
recorded as live is in flight, or they may delete what it just stored (``StoreLock``).

Hashes are XXH3-128, as in the catalog: fast and well spread, but not collision-resistant
against someone crafting files to collide. The store trusts its inputs as the catalog does.

The storage is behind ``Backend`` (append objects, read, list, delete, compact): ``LocalBackend``
here, or ``daemon.store_bucket.BucketBackend`` for a store in a bucket (``[store] path =
"s3://..."``; ``daemon.store_open`` picks one from the config). Clone and link need the local one.
"""

from __future__ import annotations

import errno
import fcntl
import io
import logging
import os
import re
import sqlite3
import stat
import struct
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from typing import BinaryIO, Final, Literal, NoReturn, Protocol

import xxhash

from daemon.chunking import DEFAULT_PARAMS, ChunkParams, Readable, iter_chunk_windows
from daemon.durability import fsync_dir, start_writeback, syncfs
from daemon.errors import StrandlineError, UnreadableDataError
from daemon.fingerprint import hash_fd
from daemon.store_packs import (
    PACK_HEADER,
    RECORD,
    Kind,
    Location,
    PackIndex,
    PackReaders,
    PackWriter,
    Row,
    index_payload,
    reconcile,
)
from daemon.temps import remove_dead_writers_temps

__all__ = [
    "CHUNK_THRESHOLD",
    "Backend",
    "ContentStore",
    "DamagedObjectError",
    "GcResult",
    "HardlinkUnsupportedError",
    "LocalBackend",
    "ObjectMissingError",
    "PackedWriter",
    "Problem",
    "PutMode",
    "PutResult",
    "ReflinkUnsupportedError",
    "Sealing",
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
FORMAT_LINE: Final = "strandline-content-store 2\n"
_FORMAT_V1: Final = "strandline-content-store 1\n"
# A pack is sealed (fsynced, named, indexed) once it would grow past this, or when a put or batch ends.
PACK_TARGET: Final = 128 * MiB

PutMode = Literal["copy", "reflink", "hardlink"]
KINDS: Final[tuple[Kind, ...]] = ("blob", "recipe", "page", "chunk")
_FILE_KINDS: Final[tuple[Kind, ...]] = ("blob", "recipe")
_PIECE_KINDS: Final[tuple[Kind, ...]] = ("page", "chunk")

_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX_RUN = re.compile(r"[0-9a-f]*")
_READ_BLOCK: Final = 1024 * 1024
# Errors that mean "this filesystem (pair) cannot clone", as opposed to a failing disk.
_NO_REFLINK: Final = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS})
_NO_HARDLINK: Final = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.EACCES})
_FULL: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


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
# Bytes of a big file chunked before its chunks are looked up together: small enough that the
# chunks are still in the CPU's cache when they are hashed and copied (32 MiB made both slower).
_CHUNK_WINDOW: Final = 8 * 1024 * 1024

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


def _check_digests(digests: Collection[str]) -> None:
    # One regular-expression pass over all of them (20,000 matches cost 10 ms); a bad one is
    # then looked for, to be named.
    if all(len(d) == 32 for d in digests) and _HEX_RUN.fullmatch("".join(digests)):
        return
    for digest in digests:
        _check_digest(digest)


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
    """What a gc or delete removed: files, chunks and pages, their bytes, and the disk space given back.

    ``disk_bytes`` can differ from ``bytes``: a pack is rewritten only once at least half of it
    is dead, so some freed objects keep their space until later collections.
    """

    objects: int
    pieces: int
    bytes: int
    disk_bytes: int = 0


# -- the backend: named objects, written atomically -----------------------------------------


class ObjectWriter(Protocol):
    def __enter__(self) -> ObjectWriter: ...

    def __exit__(self, *exc: object) -> None: ...

    def write(self, data: bytes | memoryview) -> None: ...

    def commit(self) -> None: ...


class Backend(Protocol):
    """Where objects live. Names are (kind, 32-hex digest); an object appears whole or not at all.

    Objects written with ``append``/``packed_writer`` are visible to this backend at once and
    durable (and visible to other processes) after ``flush``, or at the end of a batch.
    ``LocalBackend`` keeps them in a folder; ``daemon.store_bucket.BucketBackend`` in a bucket.
    """

    root: str
    """Where the store is, for messages: a folder, or a bucket URL."""
    batching: bool
    """Set by ``ContentStore.batch``: ``flush`` waits for the end of the batch."""
    unsynced: int
    """Objects named in this batch whose bytes still need a sync of the filesystem (local clones, links)."""

    def storing(self, what: str) -> AbstractContextManager[None]:
        """Turn the failures of storing ``what`` into ``StoreError``/``StoreFullError``."""
        ...

    def prepare_seal(self) -> None:
        """Do now the work of sealing that holds the GIL (``flush`` may then run in a thread)."""
        ...

    def discard_pack(self) -> None:
        """Drop the pack being written, unsealed (what a failed put left in it)."""
        ...

    def flush_removals(self) -> int:
        """``flush``, and the bytes of files of their own deleted since the last call."""
        ...

    def close(self) -> None: ...

    def size(self, kind: Kind, digest: str) -> int | None:
        """The object's size, or None when it does not exist."""
        ...

    def sizes(self, kind: Kind, digests: list[bytes]) -> dict[bytes, int]:
        """``size`` of many objects of one kind (raw 16-byte digests) in a few queries: those stored."""
        ...

    def stored(self, digest: str) -> tuple[Kind, int] | None:
        """How a file's content is stored: (``blob`` or ``recipe``, its size), or None."""
        ...

    def prefetch(self, digests: list[str]) -> None:
        """Look up where these contents are in a few queries, for the reads that follow (restore)."""
        ...

    def stored_for_reading(self, digest: str) -> tuple[Kind, int] | None:
        """``stored``, answered from a ``prefetch`` when it can be; for reads only."""
        ...

    def missing(self, wanted: Mapping[str, int | None]) -> set[str]:
        """Of ``wanted`` (hash: size, None for any), the hashes not stored; remembered until the batch ends."""
        ...

    def append(self, kind: Kind, digest: str, data: bytes | memoryview) -> None:
        """Add a whole object (a chunk, a page, a recipe)."""
        ...

    def append_many(self, kind: Kind, objects: Sequence[tuple[str, bytes | memoryview]]) -> None:
        """Add many whole small objects, (digest, bytes) each."""
        ...

    def packed_writer(self, kind: Kind, digest: str, size: int) -> ObjectWriter:
        """A writer of exactly ``size`` bytes, the object once committed; leaving ``with`` uncommitted drops them."""
        ...

    def pack_mark(self) -> tuple[str, int] | None:
        """A mark to ``rewind_pack`` to: what is appended after it can still be dropped."""
        ...

    def rewind_pack(self, mark: tuple[str, int] | None) -> None: ...

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

    def compact(self) -> int:
        """Give back the space of deleted objects; the bytes freed."""
        ...

    def flush(self, on_durable: Callable[[], None] | None = None) -> None:
        """Make every committed object durable (after a crash it is there, whole).

        ``on_durable`` is called as soon as they are, before the rest (indexing) is done.
        """
        ...


class _LocalWriter:
    """A temp file in the store's ``tmp/``; ``commit`` fsyncs and renames it to the object's name.

    Used for the blobs that must be files of their own: clones (reflink) and, through
    ``install``, hard links. Everything else is appended to a pack.
    """

    def __init__(self, backend: LocalBackend, kind: Kind, digest: str) -> None:
        self._backend = backend
        self._kind = kind
        self._digest = digest
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

    def abort(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            with suppress(OSError):
                os.close(fd)
        with suppress(FileNotFoundError):
            os.unlink(self.temp)


class PackingBackend:
    """What both backends share: the pack being written, appends to it, lookups of file contents.

    A subclass sets ``root``, ``index``, ``tmp``, ``batching``, ``_pack = None``, ``_absent = set()``
    and ``_located = {}``, and provides ``storing`` (its errors as ``StoreError``) and ``_persist``
    (make a pack durable under its name: an fsync and a rename locally, an upload for a bucket).
    """

    root: str
    index: PackIndex
    tmp: str
    batching: bool
    _pack: PackWriter | None
    _absent: set[bytes]  # not stored, as ``missing`` found in this batch
    # sync_file_range as the pack grows (local); None where the pack is only a spool to upload.
    _writeback: Callable[[int, int, int], object] | None = None

    # Locations looked up ahead of reads (``prefetch``); a stale one (gc moved the object since)
    # fails to open, and the index is asked again.
    _located: dict[tuple[Kind, bytes], Location]

    def storing(self, what: str) -> AbstractContextManager[None]:
        raise NotImplementedError

    def _persist(self, pack: PackWriter) -> None:
        """Make a pack durable under its name: an fsync and a rename locally, an upload to a bucket."""
        raise NotImplementedError

    def _sync_folders(self) -> None:
        """Make new folders durable (loose objects' folders, locally); nothing by default."""

    def _seal_durably(self) -> PackWriter | None:
        """Make the pack being written durable and name it; it, if it held anything.

        On failure its objects are dropped.
        """
        pack, self._pack = self._pack, None
        if pack is None:
            return None
        if not pack.rows:
            pack.discard()
            return None
        try:
            self._persist(pack)
        except BaseException:
            pack.discard()
            raise
        log.debug(
            "content store %s: sealed pack %s (%d objects, %d bytes)", self.root, pack.name, len(pack.rows), pack.size
        )
        return pack

    def flush(self, on_durable: Callable[[], None] | None = None) -> None:
        """Seal the pack being written (not inside a batch: its end does that once)."""
        if self.batching:
            return
        self._absent.clear()
        sealed = self._seal_durably()
        try:
            self._sync_folders()
            if on_durable is not None:
                on_durable()
        finally:
            if sealed is not None:
                self._index_sealed(sealed)

    def seal(self) -> None:
        """Make the pack being written durable, name it and index it."""
        sealed = self._seal_durably()
        if sealed is not None:
            self._index_sealed(sealed)

    def _index_sealed(self, pack: PackWriter) -> None:
        # A crash (or an error) before these rows are committed costs nothing but time: the
        # pack is named, and the next open indexes it from its records.
        try:
            with self.storing(f"the index of pack {pack.name}"):
                self.index.add_pack(pack.name, pack.size, pack.rows, pack.payload)
        finally:
            pack.discard()

    def prepare_seal(self) -> None:
        """Do the Python part of indexing the pack being written now, before a thread seals it.

        A thread sealing in the background should make only calls that give the GIL back
        (pwrite, fsync, one SQL statement): its Python work would stall the versioner's.
        """
        pack = self._pack
        if pack is not None and pack.rows:
            pack.payload = index_payload(pack.rows)

    def _loose_size(self, kind: Kind, digest: str) -> int | None:
        """The size of an object kept outside the packs (a loose file); none by default."""
        return None

    def _also_stored(self, digest: str) -> tuple[Kind, int] | None:
        """A file's content kept outside the packs: its blob or recipe as a loose file."""
        for kind in _FILE_KINDS:
            if (size := self._loose_size(kind, digest)) is not None:
                return kind, size
        return None

    def size(self, kind: Kind, digest: str) -> int | None:
        """The object's size, or None when it is not stored (no read: the pack being written is not drained)."""
        raw = bytes.fromhex(digest)
        if self._pack is not None and (found := self._pack.pending.get((kind, raw))) is not None:
            return found.size
        location = self.index.lookup(kind, raw)
        return location.size if location is not None else self._loose_size(kind, digest)

    def sizes(self, kind: Kind, digests: list[bytes]) -> dict[bytes, int]:
        found: dict[bytes, int] = {}
        pending = self._pack.pending if self._pack is not None else {}
        rest = []
        for raw in digests:
            if (location := pending.get((kind, raw))) is not None:
                found[raw] = location.size
            else:
                rest.append(raw)
        found.update(self.index.sizes(kind, rest))
        for raw in rest:
            if raw not in found and (size := self._loose_size(kind, raw.hex())) is not None:
                found[raw] = size
        return found

    def pack_for(self, size: int) -> PackWriter:
        """The pack to append an object of ``size`` bytes to (a full one is sealed first)."""
        pack = self._pack
        if pack is not None and pack.size > len(PACK_HEADER) and pack.size + size > PACK_TARGET:
            self.seal()
            pack = None
        if pack is None:
            with self.storing("a new pack"):
                pack = self._pack = PackWriter(self.tmp, self._writeback)
        return pack

    def append(self, kind: Kind, digest: str, data: bytes | memoryview) -> None:
        pack = self.pack_for(len(data))
        try:  # ``storing()`` only on failure: a context manager per object was 6 % of snapshotting small files
            pack.append(kind, bytes.fromhex(digest), data)
        except OSError as exc:
            with self.storing(f"{kind} {digest}"):
                raise exc

    def append_many(self, kind: Kind, objects: Sequence[tuple[str, bytes | memoryview]]) -> None:
        """``append`` of many small objects, (digest, bytes) each: written without copying each first."""
        start = 0
        while start < len(objects):
            pack = self.pack_for(len(objects[start][1]))
            room = PACK_TARGET - pack.size
            end = start
            while end < len(objects) and (end == start or len(objects[end][1]) + RECORD.size <= room):
                room -= len(objects[end][1]) + RECORD.size
                end += 1
            try:
                pack.append_many(kind, [(bytes.fromhex(digest), data) for digest, data in objects[start:end]])
            except OSError as exc:
                with self.storing(f"{end - start} {kind}s"):
                    raise exc
            start = end

    def packed_writer(self, kind: Kind, digest: str, size: int) -> PackedWriter:
        return PackedWriter(self, kind, digest, size)

    def pack_mark(self) -> tuple[str, int] | None:
        """Where the pack being written ends now (to ``rewind_pack`` to if a put fails)."""
        return (self._pack.name, self._pack.mark()) if self._pack is not None else None

    def rewind_pack(self, mark: tuple[str, int] | None) -> None:
        """Drop what was appended since ``mark``, if it is still in the pack being written.

        Pieces that went to a pack sealed since (a put larger than a pack) stay: complete
        objects no file uses, which gc removes.
        """
        pack = self._pack
        if pack is None:
            return
        if mark is None:
            self.discard_pack()
        elif mark[0] == pack.name:
            with suppress(OSError):
                pack.rewind(mark[1])

    def discard_pack(self) -> None:
        pack, self._pack = self._pack, None
        if pack is not None:
            pack.discard()

    def stored(self, digest: str) -> tuple[Kind, int] | None:
        """How a file's content is stored, (``blob`` or ``recipe``, size), or None: one index query.

        The pack being written is asked first; a hash ``missing`` found absent in this batch is
        not asked about again (neither the index nor the loose files: ``install`` forgets it).
        """
        raw = bytes.fromhex(digest)
        if self._pack is not None:
            pending = self._pack.pending
            for kind in _FILE_KINDS:
                if (found := pending.get((kind, raw))) is not None:
                    return kind, found.size
        if raw in self._absent:
            return None
        if (hit := self.index.lookup_file(raw)) is not None:
            return hit[0], hit[1].size
        return self._also_stored(digest)

    def stored_for_reading(self, digest: str) -> tuple[Kind, int] | None:
        # A prefetched answer may be stale (gc moved or deleted the object since): good enough
        # for a read, which asks again when the object is not where it was said to be, never
        # for a put, which would then skip bytes that are gone.
        raw = bytes.fromhex(digest)
        for kind in _FILE_KINDS:
            if (hit := self._located.get((kind, raw))) is not None:
                return kind, hit.size
        return self.stored(digest)

    def prefetch(self, digests: list[str]) -> None:
        # Restoring 20,000 small files asked the index twice a file (``stored``, then ``open``):
        # 0.6 s of 3.2 s. The answers are kept until read (``_locate``) or the next prefetch.
        self._located = self.index.locate_files([bytes.fromhex(d) for d in digests])

    def _locate(self, kind: Kind, raw: bytes, *, fresh: bool) -> Location | None:
        """Where an object is: a prefetched answer (taken), else, or when ``fresh``, the index's."""
        if not fresh and (hit := self._located.pop((kind, raw), None)) is not None:
            return hit
        return self.index.lookup(kind, raw)

    def missing(self, wanted: Mapping[str, int | None]) -> set[str]:
        """Of ``wanted`` (hash: size, None for any), the hashes whose content is not stored; batched index queries."""
        absent = missing_files(self.index, wanted, self._also_stored)
        if self.batching:
            self._absent.update(bytes.fromhex(digest) for digest in absent)
        return absent


class PackedWriter:
    """One object streamed into the pack being written; ``commit`` ends its record, leaving ``with`` before drops it."""

    def __init__(self, backend: PackingBackend, kind: Kind, digest: str, size: int) -> None:
        self._backend = backend
        self._kind = kind
        self._digest = bytes.fromhex(digest)
        self._size = size
        self._written = 0
        self._pack = backend.pack_for(size)
        with backend.storing(f"{kind} {digest}"):
            self._mark = self._pack.begin(kind, self._digest, size)
        self.committed = False

    def __enter__(self) -> PackedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.committed:
            with suppress(OSError):
                self._pack.rewind(self._mark)

    def write(self, data: bytes | memoryview) -> None:
        if self._written + len(data) > self._size:
            raise StoreError(f"{self._kind} {self._digest.hex()}: more bytes than the {self._size} announced")
        with self._backend.storing(f"{self._kind} {self._digest.hex()}"):
            self._pack.write(data)
        self._written += len(data)

    def commit(self) -> None:
        if self._written != self._size:
            raise StoreError(f"{self._kind} {self._digest.hex()}: {self._written} bytes of {self._size} written")
        self._pack.end(self._kind, self._digest, self._size)
        self.committed = True


class LocalBackend(PackingBackend):
    """Objects in one local folder: appended to pack files, or files of their own where they must be.

    Clones and hard links (and every object of a version-1 store) are files under
    ``<kind>/<first two hex>/<digest>``; all else goes to packs (``daemon.store_packs``). A
    lookup asks the pack being written, then the index, then the loose files.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(root)
        self.tmp = os.path.join(self.root, "tmp")
        self.packs_dir = os.path.join(self.root, "packs")
        self._dirty: set[str] = set()
        # In a batch (ContentStore.batch) the pack is sealed once at the end, and loose blobs are
        # not fsynced one by one: one syncfs, needed only when ``unsynced`` blobs were named in it.
        self.batching = False
        self.unsynced = 0
        self._pack: PackWriter | None = None
        self._absent: set[bytes] = set()
        self._located: dict[tuple[Kind, bytes], Location] = {}  # from ``prefetch``, until read
        self._writeback = start_writeback
        self._readers = PackReaders(self.packs_dir)
        self._loose_freed = 0
        try:
            for sub in (*KINDS, "tmp", "packs"):
                os.makedirs(os.path.join(self.root, sub), exist_ok=True)
            self._check_format()
            self._loose: set[Kind] = {kind for kind in KINDS if _has_subfolder(os.path.join(self.root, kind))}
            self.index = PackIndex(os.path.join(self.root, "index.db"))
            self.removed_temps = self._clean_temps()
            reconcile(self.index, self.packs_dir)
        except (OSError, sqlite3.Error) as exc:
            if _is_full(exc):
                raise StoreFullError(
                    f"no space left to open the content store at {self.root}: free space (or run gc) and retry"
                ) from exc
            raise StoreError(
                f"cannot open the content store at {self.root}: {exc}; check the [store] path setting"
            ) from exc

    def _check_format(self) -> None:
        path = os.path.join(self.root, "FORMAT")
        try:
            with open(path, encoding="utf-8") as fh:
                found = fh.read()
        except FileNotFoundError:
            found = None
        if found == FORMAT_LINE:
            return
        if found not in (None, _FORMAT_V1):
            raise StoreError(
                f"this Strandline cannot use the content store at {self.root} (its FORMAT says "
                f"{found.strip()!r}); upgrade Strandline, or set [store] path to another folder"
            )
        # New, or version 1 (loose files only, which version 2 still reads): say version 2 now,
        # so an older Strandline refuses the store rather than missing the packed objects.
        with open(path + ".tmp", "w", encoding="utf-8") as fh:
            fh.write(FORMAT_LINE)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(path + ".tmp", path)
        fsync_dir(self.root)

    def _clean_temps(self) -> int:
        """Remove temp files left by writers that died; a live writer's file is left alone."""
        removed = remove_dead_writers_temps(self.tmp)
        if removed:
            log.info("content store %s: removed %d temp files of interrupted writes", self.root, removed)
        return removed

    def close(self) -> None:
        self.discard_pack()
        self._readers.close()
        self.index.close()

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
        except sqlite3.Error as exc:
            if _is_full(exc):
                raise StoreFullError(
                    f"no space left for the content store index at {self.root} while storing {what}; "
                    "free space (or run gc) and retry"
                ) from exc
            raise StoreError(
                f"the index of the content store at {self.root} failed while storing {what}: {exc}"
            ) from exc

    # -- names ------------------------------------------------------------------------------

    def path(self, kind: Kind, digest: str) -> str:
        """Where a loose object is (or would be)."""
        return os.path.join(self.root, kind, digest[:2], digest)

    def pack_path(self, name: str) -> str:
        return os.path.join(self.packs_dir, f"{name}.pack")

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
        self._loose.add(kind)
        self._absent.discard(bytes.fromhex(digest))

    def locate(self, kind: Kind, digest: str) -> tuple[str, int, int] | None:
        """(file, offset, size) of an object's bytes, or None when it is not stored."""
        raw = bytes.fromhex(digest)
        if self._pack is not None and (found := self._pack.pending.get((kind, raw))) is not None:
            self._pack.drain()
            return self._pack.temp, found.offset, found.size
        if (found := self.index.lookup(kind, raw)) is not None:
            return self.pack_path(found.pack), found.offset, found.size
        size = self._loose_size(kind, digest)
        return (self.path(kind, digest), 0, size) if size is not None else None

    @property
    def loose_kinds(self) -> frozenset[Kind]:
        """Kinds of which this store has objects as files of their own (clones, links, version 1)."""
        return frozenset(self._loose)

    def _loose_size(self, kind: Kind, digest: str) -> int | None:
        # A store without loose objects of a kind (no clone, link or version-1 object yet) skips
        # the stat: it would cost one per file looked up. Loose objects appear only through this
        # backend's ``install``, or through another process (seen when the store is opened again).
        if kind not in self._loose:
            return None
        path = self.path(kind, digest)
        # Most files asked about have none (a clone is made only of a big file): access() says
        # so without the exception a failed stat costs (20,000 new files: 37 ms -> 16 ms).
        if not os.access(path, os.F_OK):
            return None
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            return None

    # -- the pack being written ---------------------------------------------------------------

    def _persist(self, pack: PackWriter) -> None:
        with self.storing(f"pack {pack.name}"):
            pack.seal(self.packs_dir)
            fsync_dir(self.packs_dir)

    def writer(self, kind: Kind, digest: str) -> _LocalWriter:
        """A loose object (a clone); see ``packed_writer`` for bytes that are copied."""
        return _LocalWriter(self, kind, digest)

    def open(self, kind: Kind, digest: str) -> BinaryIO:
        raw = bytes.fromhex(digest)
        if self._pack is not None and (found := self._pack.pending.get((kind, raw))) is not None:
            return self._pack.pread(found)
        for attempt in (1, 2):
            found = self._locate(kind, raw, fresh=attempt == 2)
            if found is None:
                break
            try:
                return self._readers.open(found)
            except FileNotFoundError:
                if attempt == 2:
                    raise  # compaction moves objects before it removes a pack: asked again once
        return open(self.path(kind, digest), "rb", buffering=0)

    def read(self, kind: Kind, digest: str) -> bytes:
        with self.open(kind, digest) as fh:
            return fh.read()

    def scan(self, kind: Kind) -> Iterator[tuple[str, int]]:
        yield from self.index.scan(kind)
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
        """Forget an object: its index row (the pack's bytes go at ``compact``) or its file; its size."""
        found = self.index.remove(kind, bytes.fromhex(digest))
        if found is not None:
            return found.size
        path = self.path(kind, digest)
        try:
            size = os.stat(path).st_size
            os.unlink(path)
        except FileNotFoundError:
            return 0
        self._dirty.add(os.path.dirname(path))
        self._loose_freed += size
        return size

    def flush_removals(self) -> int:
        """``flush``, and the bytes of loose files deleted since the last call."""
        self.flush()
        freed, self._loose_freed = self._loose_freed, 0
        return freed

    def compact(self, *, dead_share: float = 0.5) -> int:
        """Remove packs nothing lives in and rewrite those mostly dead; the bytes of disk freed."""
        self.seal()
        live = self.index.live()
        empty: list[str] = []
        sparse: list[str] = []
        for name, size in self.index.packs().items():
            objects, live_bytes = live.get(name, (0, 0))
            if objects == 0:
                empty.append(name)
            elif live_bytes < size * (1 - dead_share):
                sparse.append(name)
        freed = 0
        for name in empty:
            freed += self._drop_pack(name)
        if sparse:
            freed += self._rewrite(sparse)
        if empty or sparse:
            with self.storing("a sync of the packs folder"):
                fsync_dir(self.packs_dir)
        return freed

    def _drop_pack(self, name: str) -> int:
        self._readers.forget(name)
        path = self.pack_path(name)
        with self.storing(f"removal of pack {name}"):
            self.index.forget_pack(name, retire=True)
            try:
                size = os.stat(path).st_size
                os.unlink(path)
            except FileNotFoundError:
                return 0
            self.index.gone([name])
        return size

    def _rewrite(self, names: list[str]) -> int:
        """Copy the live objects of ``names`` into one new pack, then point the index at it and drop them."""
        pack = self.pack_for(0)
        moved: list[Row] = []
        with self.storing(f"a rewrite of {len(names)} packs"):
            for name in names:
                with open(self.pack_path(name), "rb", buffering=0) as fh:
                    for kind, digest, offset, size in self.index.rows_of(name):
                        data = os.pread(fh.fileno(), size, offset)
                        if len(data) != size:
                            raise StoreError(f"pack {name} is shorter than its index says; run `strandline verify`")
                        location = pack.append(kind, digest, data)
                        moved.append((kind, digest, location.offset, size))
            self._pack = None
            try:
                pack.seal(self.packs_dir)
                fsync_dir(self.packs_dir)
                self.index.move(pack.name, pack.size, moved, names)
            except BaseException:
                pack.discard()
                raise
        freed = -pack.size
        for name in names:
            self._readers.forget(name)
            with suppress(FileNotFoundError):
                freed += os.stat(self.pack_path(name)).st_size
                os.unlink(self.pack_path(name))
        with self.storing("the index"):
            self.index.gone(names)
        log.info("content store: rewrote %d mostly-dead packs into %s, %d bytes freed", len(names), pack.name, freed)
        return freed

    def _sync_folders(self) -> None:
        dirty, self._dirty = self._dirty, set()
        for folder in sorted(dirty):
            with self.storing(f"folder {folder}"):
                fsync_dir(folder)


def missing_files(
    index: PackIndex, wanted: Mapping[str, int | None], also: Callable[[str], object | None] | None = None
) -> set[str]:
    """Of ``wanted`` (hash: size), those the index lacks (a blob of another size counts as lacking,
    unless the size is None).

    Asked in batches (a query per file was an eighth of snapshotting 20,000 small files);
    ``also`` is asked about each one the index lacks (loose files), when given.
    """
    raws = {bytes.fromhex(digest): size for digest, size in wanted.items()}
    found = index.files_present(list(raws))
    absent: set[str] = set()
    for raw, size in raws.items():
        hit = found.get(raw)
        if hit is not None and (hit[0] == "recipe" or size is None or hit[1] == size):
            continue
        digest = raw.hex()
        if also is not None and also(digest) is not None:
            continue
        absent.add(digest)
    return absent


def _has_subfolder(path: str) -> bool:
    with os.scandir(path) as entries:
        return any(entry.is_dir(follow_symlinks=False) for entry in entries)


def _is_full(exc: OSError | sqlite3.Error) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in _FULL
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


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


class Sealing:
    """The end of a batch: ``wait()`` returns once what it stored is durable, or raises why not.

    Inline (the default), that is done when the batch block exits. In the background
    (``ContentStore.batch(seal_in_background=True)``) a thread does it: ``wait()`` returns as
    soon as the bytes are durable, while the thread goes on indexing them; ``join()`` waits for
    all of it. An error after the bytes are durable only costs the index rows (the next open
    indexes the pack), so it is logged, not raised.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._durable = threading.Event()
        self._error: BaseException | None = None

    def start(self, seal: Callable[[Callable[[], None]], None]) -> None:
        """Run ``seal`` in a thread; it calls the function it is given once the bytes are durable."""

        def run() -> None:
            try:
                seal(self._durable.set)
            except BaseException as exc:
                if not self._durable.is_set():
                    self._error = exc  # handed to whoever waits
                else:
                    log.warning("content store: a sealed pack is not indexed yet (%s); the next open indexes it", exc)
            finally:
                self._durable.set()

        # Not a daemon thread: an exit waits for the index rows rather than leave them to the next open.
        self._thread = threading.Thread(target=run, name="strandline-seal")
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._durable.wait()
        if self._error is not None:
            raise self._error

    def join(self) -> None:
        """Wait until the background seal has finished, indexing included; raises as ``wait``."""
        if self._thread is not None:
            self._thread.join()
        self.wait()


# -- the store ------------------------------------------------------------------------------


class ContentStore:
    """Bytes of files by XXH3-128 hash. See the module docstring for layout, modes and guarantees."""

    def __init__(
        self,
        root: str | os.PathLike[str] | Backend,
        *,
        chunk_threshold: int = CHUNK_THRESHOLD,
        chunk_params: ChunkParams = DEFAULT_PARAMS,
    ) -> None:
        """A store in the folder ``root``, or on an opened ``Backend`` (``daemon.store_open`` opens bucket stores)."""
        if isinstance(root, str | os.PathLike):
            if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", os.fspath(root)):
                raise StoreError(f"{os.fspath(root)} is a bucket URL: open it with daemon.store_open.open_store")
            self.backend: Backend = LocalBackend(root)
        else:
            self.backend = root
        self.root = self.backend.root
        self.chunk_threshold = chunk_threshold
        self.chunk_params = chunk_params
        self._sealing: Sealing | None = None  # a batch sealed in the background, until waited for

    # -- writing ----------------------------------------------------------------------------

    def has(self, digest: str, size: int | None = None) -> bool:
        """True when the content of ``digest`` is stored (its blob or recipe exists).

        With ``size``, a blob must also have that size: a blob cut short by a crash during a
        ``batch`` (named, but its data never reached the disk) does not count as stored.
        """
        self.settle()
        _check_digest(digest)
        found = self.backend.stored(digest)
        if found is None:
            return False
        if found[0] == "recipe" or size is None or found[1] == size:
            return True
        return self.backend.size("recipe", digest) is not None

    def missing(self, wanted: Mapping[str, int | None]) -> set[str]:
        """Of ``wanted`` (hash: size), the hashes not stored yet; use it before many puts in a batch.

        A size of None asks for the content whatever the size of its blob (as ``has`` without one).
        """
        self.settle()
        _check_digests(wanted.keys())
        with self.backend.storing("a lookup"):
            return self.backend.missing(wanted)

    @contextmanager
    def batch(self, *, seal_in_background: bool = False) -> Iterator[Sealing]:
        """Store many files with one sync at the end instead of one per put.

        What was put in the batch is durable when the block exits normally (a version must be
        committed only after that): the pack it wrote to is fsynced and named then, and a
        syncfs runs when clones or links were named without their own fsync. The block raises
        ``StoreError`` when that fails, and then nothing it stored counts as stored. Leaving the
        block by an exception still seals what was stored (whole, checked objects).

        ``seal_in_background``: the exit only starts that sync, in a thread, so the caller can
        prepare its commit meanwhile (the fsync of a batch of 20,000 small files is ~0.25 s,
        as long as recording their version). The yielded ``Sealing``'s ``wait()`` returns once
        the batch is durable and raises the ``StoreError`` the exit would have raised; until
        then the store must not be used (the next ``batch`` waits for it first).
        """
        backend = self.backend
        sealing = Sealing()
        if backend.batching:
            yield sealing
            return
        self.settle()
        backend.batching = True
        backend.unsynced = 0
        try:
            yield sealing
        except BaseException:
            backend.batching = False
            try:
                backend.flush()
            except StoreError as exc:
                log.warning("content store: what this batch stored is dropped: %s", exc)
            raise
        backend.batching = False
        if seal_in_background:
            backend.prepare_seal()
            self._sealing = sealing
            sealing.start(self._seal_batch)
        else:
            self._seal_batch()

    def _seal_batch(self, on_durable: Callable[[], None] | None = None) -> None:
        backend = self.backend
        # Only loose blobs named without their fsync need the syncfs; it would also flush every
        # other dirty file of the filesystem (a big file just versioned), so a batch that named
        # none skips it.
        if backend.unsynced:
            with backend.storing("a sync of the store"):
                syncfs(backend.root)
            backend.unsynced = 0
        backend.flush(on_durable)

    def settle(self) -> None:
        """Wait for a batch still being sealed in the background; its error is its waiter's to report."""
        sealing, self._sealing = self._sealing, None
        if sealing is not None:
            with suppress(StoreError):
                sealing.join()

    def put(self, path: str | os.PathLike[str], expected_hash: str, size: int, mode: PutMode = "copy") -> PutResult:
        """Store the bytes of the file at ``path``, which must be ``size`` bytes hashing to ``expected_hash``.

        Idempotent: a hash already stored returns ``method="present"`` without reading the file.
        Raises ``SourceChangedError`` when the file no longer matches (retry after it settles),
        ``StoreFullError`` on a full disk, ``ReflinkUnsupportedError``/``HardlinkUnsupportedError``
        when ``mode`` cannot be used here (fall back to copy), ``UnreadableDataError`` when the
        file cannot be read. On any error nothing new is left under a final name.
        """
        self.settle()
        digest = _check_digest(expected_hash)
        if mode not in ("copy", "reflink", "hardlink"):
            raise ValueError(f"unknown put mode {mode!r}; use copy, reflink or hardlink")
        if (present := self._present(digest, size)) is not None:
            return present
        name = os.fspath(path)
        fd, st = _open_source(name)
        try:
            if st.st_size != size:
                raise _changed(name, f"it is {st.st_size} bytes, expected {size}")

            def unchanged() -> None:
                after = os.fstat(fd)
                if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                    raise _changed(name, "its size or mtime moved")

            if mode == "reflink" and size > self.chunk_threshold:
                return self._put_reflink(fd, st, name, digest, unchanged)
            if size > self.chunk_threshold:
                return self._put_chunked(_SourceReader.of_fd(fd, name), name, digest, size, unchanged)
            if mode == "hardlink":
                return self._put_hardlink(fd, st, name, digest, unchanged)
            # Copy, and reflink below the threshold: a clone of a small file costs a file of its
            # own and the flush of the source (20,000 clones of 1-8 KiB took 11 s, 1.4x dvc's
            # time), while its bytes cost next to nothing in a pack.
            return self._put_copy(_SourceReader.of_fd(fd, name), name, digest, size, unchanged)
        finally:
            os.close(fd)
            self._end_put()

    def put_bytes(self, data: bytes | memoryview, expected_hash: str, *, name: str = "bytes") -> PutResult:
        """Store ``data``, which must hash to ``expected_hash`` (a small file read once while fingerprinted).

        As ``put`` by copy, for files up to ``chunk_threshold``; raises ``SourceChangedError``
        when the bytes do not hash to ``expected_hash``.
        """
        self.settle()
        digest = _check_digest(expected_hash)
        if (present := self._present(digest, len(data))) is not None:
            return present
        self.put_many_bytes([(name, digest, data)])
        return PutResult(digest, len(data), "blob", "copy", len(data))

    def put_many_bytes(self, items: Iterable[tuple[str, str, bytes | memoryview]]) -> tuple[int, int]:
        """``put_bytes`` for many small files at once: ``(name, expected_hash, data)`` each.

        The same checks and the same layout, without a call and a result per file (a snapshot
        of 20,000 small files spent more in that than in copying their bytes). Returns (files
        stored, bytes stored), the present ones left out; raises as ``put_bytes`` does, on the
        first file whose bytes do not hash to its digest (the ones before it stay stored).
        """
        self.settle()
        backend = self.backend
        new: dict[str, bytes | memoryview] = {}  # appended together, in one call
        stored = 0
        try:
            try:
                for name, expected_hash, data in items:
                    size = len(data)
                    if size > self.chunk_threshold:
                        limit = self.chunk_threshold
                        raise ValueError(f"{name}: put_bytes takes files up to {limit} bytes, not {size}")
                    if expected_hash in new or self._present(_check_digest(expected_hash), size) is not None:
                        continue
                    if (got := xxhash.xxh3_128_hexdigest(data)) != expected_hash:
                        raise _changed(name, f"its bytes hash to {got}, expected {expected_hash}")
                    new[expected_hash] = data
                    stored += size
            finally:
                backend.append_many("blob", list(new.items()))
            backend.flush()
        finally:
            self._end_put()
        return len(new), stored

    def _present(self, digest: str, size: int) -> PutResult | None:
        found = self.backend.stored(digest)
        if found is None:
            return None
        if found == ("blob", size):
            return PutResult(digest, size, "blob", "present", 0)
        if found[0] == "recipe" or self.backend.size("recipe", digest) is not None:
            return PutResult(digest, size, "chunked", "present", 0)
        return None  # a blob cut short by a crash in a batch: stored again

    def put_stream(self, stream: Readable, expected_hash: str, size: int, *, name: str = "a stream") -> PutResult:
        """Store ``size`` bytes read from ``stream`` (an object's GET, a pipe) that must hash to ``expected_hash``.

        As ``put`` by copy, for bytes that are not a local file (bucket datasets). ``name`` is
        used in messages. Raises ``SourceChangedError`` when the bytes read are not the
        expected ones, ``UnreadableDataError`` when the stream raises ``OSError``.
        """
        self.settle()
        digest = _check_digest(expected_hash)
        if (present := self._present(digest, size)) is not None:
            return present
        reader = _SourceReader(stream.readinto, name)
        try:
            if size > self.chunk_threshold:
                return self._put_chunked(reader, name, digest, size, lambda: None)
            return self._put_copy(reader, name, digest, size, lambda: None)
        finally:
            self._end_put()

    def _end_put(self) -> None:
        """Outside a batch, a put leaves no pack open: a failed one's (emptied by its rewind) is removed."""
        if not self.backend.batching:
            self.backend.discard_pack()

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
        with self.backend.packed_writer("blob", digest, size) as writer:
            while n := reader.readinto(view):
                read += n
                if read > size:
                    break  # growing: no need to copy the rest to know it is not the expected bytes
                hasher.update(view[:n])
                writer.write(view[:n])
            self._check_read(name, digest, size, hasher.hexdigest(), read, unchanged)
            writer.commit()
        self.backend.flush()
        log.debug("stored %s (%d bytes) by copy", digest, read)
        return PutResult(digest, read, "blob", "copy", read)

    def _local(self, mode: PutMode) -> LocalBackend:
        """The local backend that clones and links need; a bucket store keeps no files of its own."""
        if isinstance(self.backend, LocalBackend):
            return self.backend
        error = ReflinkUnsupportedError if mode == "reflink" else HardlinkUnsupportedError
        raise error(f"the content store at {self.root} is in a bucket: it cannot {mode} files; store them by copy")

    def _put_reflink(
        self, fd: int, st: os.stat_result, name: str, digest: str, unchanged: Callable[[], None]
    ) -> PutResult:
        with self._local("reflink").writer("blob", digest) as writer:
            writer.clone_from(fd)
            clone_fd = writer.fileno()
            clone_size = os.fstat(clone_fd).st_size
            if clone_size <= self.chunk_threshold:
                # Hash the clone, not the source: what is checked is exactly what is kept.
                got = hash_fd(clone_fd, clone_size)
            else:
                # A big clone's pages are not in memory (the page cache is per file) while the
                # source's usually are, having just been fingerprinted: hash the source, and
                # trust the clone because the source did not move from before the clone until
                # after the hash (``unchanged`` checks it again below).
                unchanged()
                got = hash_fd(fd, st.st_size)
            self._check_read(name, digest, st.st_size, got, clone_size, unchanged)
            writer.commit()
        self.backend.flush()
        log.debug("stored %s (%d bytes) by reflink", digest, st.st_size)
        return PutResult(digest, st.st_size, "blob", "reflink", 0)

    def _put_hardlink(
        self, fd: int, st: os.stat_result, name: str, digest: str, unchanged: Callable[[], None]
    ) -> PutResult:
        backend = self._local("hardlink")
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
        backend = self.backend
        mark = backend.pack_mark()

        def end_page() -> None:
            nonlocal new_bytes, page_bytes
            data = encode_page(page)
            page_digest = xxhash.xxh3_128_digest(data)
            # A piece of the right size under its name is taken as good: verify() re-hashes them all.
            if backend.size("page", page_digest.hex()) != len(data):
                backend.append("page", page_digest.hex(), data)
                new_bytes += len(data)
            pages.append(PageRef(page_digest, page_bytes, len(page)))
            page.clear()
            page_bytes = 0

        try:
            # A window of chunks at a time: which of them are stored already is one query for
            # the window, not one a chunk (13,000 queries were 0.2 s of storing a new 1 GiB file).
            for window in iter_chunk_windows(reader, self.chunk_params, _CHUNK_WINDOW):
                digests = [xxhash.xxh3_128_digest(data) for _offset, data in window]
                stored = backend.sizes("chunk", digests)
                for (_offset, data), chunk_digest in zip(window, digests, strict=True):
                    hasher.update(data)
                    length = len(data)
                    chunks += 1
                    if stored.get(chunk_digest) != length:
                        backend.append("chunk", chunk_digest.hex(), data)
                        stored[chunk_digest] = length  # the same chunk again later in the file
                        new_chunks += 1
                        new_bytes += length
                    read += length
                    page.append((chunk_digest, length))
                    page_bytes += length
                    if page_ends_after(chunk_digest, len(page)):
                        end_page()
                if read > size:
                    break  # growing: it cannot be the expected bytes
            if page:
                end_page()
            self._check_read(name, digest, size, hasher.hexdigest(), read, unchanged)
            # The recipe goes to the pack after its chunks and pages: it is named with them when
            # the pack is sealed, or after them when they filled earlier packs, never before.
            recipe = encode_recipe(Recipe(read, tuple(pages)))
            backend.append("recipe", digest, recipe)
            new_bytes += len(recipe)
        except BaseException:
            backend.rewind_pack(mark)
            raise
        backend.flush()
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
        self.settle()
        _check_digest(digest)
        found = self.backend.stored_for_reading(digest)
        if found is None:
            raise ObjectMissingError(f"no content stored for hash {digest}")
        return self._iter_blob(digest) if found[0] == "blob" else self._iter_recipe(digest)

    def prefetch(self, digests: Iterable[str]) -> None:
        """Look up where the contents of ``digests`` are in a few queries, before reading them all (restore)."""
        self.settle()
        wanted = list(digests)
        _check_digests(wanted)
        with self.backend.storing("a lookup"):
            self.backend.prefetch(wanted)

    def clone_to(self, digest: str, fd: int) -> bool:
        """Make the empty file ``fd`` a copy-on-write clone of ``digest``'s bytes, checked; False when it cannot.

        Only content kept as a file of its own (a clone) can be cloned out, and only onto the
        same reflink-capable filesystem. The clone is hashed before this returns True: a damaged
        object raises ``DamagedObjectError`` as ``iter_content`` would.
        """
        self.settle()
        _check_digest(digest)
        backend = self.backend
        if not isinstance(backend, LocalBackend) or "blob" not in backend.loose_kinds:
            return False
        path = backend.path("blob", digest)
        try:
            src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False  # packed, not loose
        try:
            size = os.fstat(src).st_size
            try:
                fcntl.ioctl(fd, FICLONE, src)
            except OSError as exc:
                if exc.errno in _NO_REFLINK:
                    return False
                raise DamagedObjectError(f"stored content {digest} cannot be cloned: {exc}") from exc
        finally:
            os.close(src)
        got = hash_fd(fd, size)
        if got != digest:
            raise DamagedObjectError(f"stored content {digest} is damaged: its bytes now hash to {got}")
        return True

    def open_file(self, digest: str) -> io.BufferedReader:
        """A binary stream of the stored bytes of ``digest``, checked as by ``iter_content``."""
        self.settle()
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
        self.settle()
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
        self.settle()
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
        self.settle()
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
        self.settle()
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
        loose_freed = self.backend.flush_removals()
        disk = self.backend.compact() + loose_freed
        if objects or pieces:
            log.info(
                "content store: removed %d files and %d chunks/pages (%d bytes); %d bytes of disk given back",
                objects,
                pieces,
                freed,
                disk,
            )
        return GcResult(objects, pieces, freed, disk)
