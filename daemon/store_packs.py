"""Pack files: many store objects in one file, made durable with one fsync, found through an index.

Storing each small file or chunk as a file of its own cost a create, a rename and (eventually)
a sync per object: 20,000 small files took 3-7 s on this machine's ext4, and the 13,400 chunks
of a 1 GiB file 2.8 s in ``open(O_CREAT)`` alone. A pack is one file that objects are appended
to; it is fsynced once and then renamed into ``packs/``, so its objects appear together, whole,
or not at all (git and restic do the same).

Layout::

    packs/<32 hex>.pack      header b"SLPACK\\x00\\x01", then records
    tmp/PID.<32 hex>.pack    the pack being written (removed on open once its writer is gone)
    index.db                 SQLite: (kind, digest) -> (pack, offset, size); rebuilt from the packs

A record is ``b"SLRE"``, the object's kind (u8), three zero bytes, its 16-byte digest, its
length (u64), then the bytes. Records describe themselves, so the index is a cache: a pack that
a crash left out of the index (sealed, but its rows never committed) is read and indexed on
the next open, and rows of a pack that is gone are dropped (their objects are then reported
missing and stored again by the next version that has them). Packs are never written after they
are named; ``compact`` rewrites the live records of mostly-dead packs into new ones.

Only this module knows the format; ``daemon.content_store`` sees (kind, digest) objects.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import sqlite3
import struct
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from contextlib import suppress
from operator import itemgetter
from typing import Any, BinaryIO, Final, Literal, NamedTuple, cast

__all__ = [
    "PACK_HEADER",
    "RECORD",
    "IndexPayload",
    "Location",
    "PackIndex",
    "PackReaders",
    "PackWriter",
    "RangeReader",
    "index_payload",
    "parse_records",
    "read_records",
]

log = logging.getLogger(__name__)

Kind = Literal["blob", "recipe", "page", "chunk"]
KIND_CODES: Final[dict[str, int]] = {"blob": 1, "recipe": 2, "page": 3, "chunk": 4}
CODE_KINDS: Final[dict[int, Kind]] = {1: "blob", 2: "recipe", 3: "page", 4: "chunk"}

PACK_HEADER: Final = b"SLPACK\x00\x01"
RECORD: Final = struct.Struct("<4sB3x16sQ")
RECORD_MAGIC: Final = b"SLRE"
# Writeback of a pack being written is started every this many bytes (sync_file_range), so the
# fsync that seals it waits for the tail only, not for the whole pack.
WRITEBACK_STEP: Final = 8 * 1024 * 1024
# Digests asked about in one query (SQLite allows 32,766 parameters).
_QUERY_BATCH: Final = 500
# Records smaller than this are buffered in memory and written to the pack file together.
WRITE_BUFFER: Final = 1024 * 1024
# Buffers one pwritev may take (the kernel's UIO_MAXIOV).
_IOV_MAX: Final = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS packs (
    name TEXT PRIMARY KEY,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS objects (
    kind INTEGER NOT NULL,
    digest BLOB NOT NULL,
    pack TEXT NOT NULL,
    offset INTEGER NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (kind, digest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS objects_by_pack ON objects (pack);
CREATE TABLE IF NOT EXISTS retired (
    name TEXT PRIMARY KEY
);
"""


# One statement for a pack's rows: ?1 a JSON array of [kind, offset, size], ?2 the 16-byte
# digests end to end in the same order, ?3 the pack's name.
_INSERT_ROWS: Final = """
INSERT OR IGNORE INTO objects (kind, digest, pack, offset, size)
SELECT json_extract(value, '$[0]'), substr(?2, key * 16 + 1, 16), ?3,
       json_extract(value, '$[1]'), json_extract(value, '$[2]')
FROM json_each(?1)
"""


class Location(NamedTuple):
    """Where an object's bytes are: ``size`` bytes at ``offset`` of pack ``pack`` (its 32-hex name)."""

    pack: str
    offset: int
    size: int


Row = tuple[Kind, bytes, int, int]  # kind, digest, offset of the data, size


class PackIndex:
    """The SQLite index of the packs of one store. Safe to share between threads (one lock)."""

    def __init__(self, path: str) -> None:
        self.path = path
        # Autocommit; transactions are opened explicitly. A crash may lose the last commits
        # (synchronous=NORMAL in WAL) but never the packs: ``reconcile`` indexes them again.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        try:  # add_pack needs SQLite's JSON functions (built in since 3.38, in most builds before)
            self._db.execute("SELECT json_extract('[1]', '$[0]')").fetchone()
        except sqlite3.OperationalError as exc:
            self._db.close()
            raise sqlite3.OperationalError(
                f"the SQLite library Python uses ({sqlite3.sqlite_version}) lacks the JSON functions the "
                "content store's index needs: use a Python built with SQLite 3.38 or later"
            ) from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def lookup_file(self, digest: bytes) -> tuple[Kind, Location] | None:
        """Where the content of a file is: its blob, else its recipe."""
        with self._lock:
            row = self._db.execute(
                "SELECT kind, pack, offset, size FROM objects WHERE kind IN (1, 2) AND digest = ? "
                "ORDER BY kind LIMIT 1",
                (digest,),
            ).fetchone()
        return (CODE_KINDS[row[0]], Location(*row[1:])) if row else None

    def _by_digest(self, columns: str, kinds: tuple[Kind, ...], digests: list[bytes]) -> list[Any]:
        """``SELECT columns`` of the objects of ``kinds`` among ``digests``, 500 digests a query."""
        codes = tuple(KIND_CODES[k] for k in kinds)
        rows: list[Any] = []  # sqlite3 rows of the columns asked for
        with self._lock:
            for start in range(0, len(digests), _QUERY_BATCH):
                part = digests[start : start + _QUERY_BATCH]
                # Only our column list and placeholders are formatted in.
                query = (
                    f"SELECT {columns} FROM objects WHERE kind IN ({','.join('?' * len(codes))})"  # noqa: S608
                    f" AND digest IN ({','.join('?' * len(part))})"
                )
                rows += self._db.execute(query, (*codes, *part)).fetchall()
        return rows

    def locate_files(self, digests: list[bytes]) -> dict[tuple[Kind, bytes], Location]:
        """Where the contents of ``digests`` are (blobs and recipes), as ``lookup`` gives them; batched queries."""
        rows = self._by_digest("kind, digest, pack, offset, size", ("blob", "recipe"), digests)
        return {(CODE_KINDS[code], bytes(d)): Location(p, o, s) for code, d, p, o, s in rows}

    def files_present(self, digests: list[bytes]) -> dict[bytes, tuple[Kind, int]]:
        """Of ``digests``, those stored as a file's content: (``blob`` or ``recipe``, size); batched queries."""
        found: dict[bytes, tuple[Kind, int]] = {}
        for code, digest, size in self._by_digest("kind, digest, size", ("blob", "recipe"), digests):
            kind = CODE_KINDS[code]
            if bytes(digest) not in found or kind == "blob":
                found[bytes(digest)] = (kind, size)
        return found

    def sizes(self, kind: Kind, digests: list[bytes]) -> dict[bytes, int]:
        """Of ``digests``, those indexed as ``kind``, with their sizes; batched queries."""
        return {bytes(d): s for d, s in self._by_digest("digest, size", (kind,), digests)}

    def lookup(self, kind: Kind, digest: bytes) -> Location | None:
        with self._lock:
            row = self._db.execute(
                "SELECT pack, offset, size FROM objects WHERE kind = ? AND digest = ?", (KIND_CODES[kind], digest)
            ).fetchone()
        return Location(*row) if row else None

    def add_pack(self, name: str, size: int, rows: Iterable[Row], payload: IndexPayload | None = None) -> None:
        """Index a sealed pack; an object already indexed elsewhere keeps its first location.

        The rows go in as one statement over a JSON array (offsets, sizes) and one blob (the
        digests), not one ``executemany`` step per row: the sqlite3 module gives the GIL back
        for each step, and a pack indexed in the background (``ContentStore.batch``) then
        waited up to a switch interval (5 ms) per row for it while the versioner ran Python.
        ``payload``: ``index_payload(rows)``, made earlier by a thread that holds the GIL anyway.
        """
        triples, digests = payload if payload is not None else index_payload(rows)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT OR REPLACE INTO packs (name, size) VALUES (?, ?)", (name, size))
                self._db.execute(_INSERT_ROWS, (triples, digests, name))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def move(self, name: str, size: int, rows: Iterable[Row], dropped: Iterable[str]) -> None:
        """Point objects at their copies in the new pack ``name`` and forget the packs ``dropped``."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT OR REPLACE INTO packs (name, size) VALUES (?, ?)", (name, size))
                self._db.executemany(
                    "UPDATE objects SET pack = ?, offset = ?, size = ? WHERE kind = ? AND digest = ?",
                    ((name, o, s, KIND_CODES[k], d) for k, d, o, s in rows),
                )
                for old in dropped:
                    self._forget_pack(old, retire=True)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def forget_pack(self, name: str, *, retire: bool = False) -> int:
        """Drop a pack and its objects' rows; how many objects it held.

        ``retire``: the pack is about to be deleted (gc). It is remembered as retired until it
        is gone, so an open in between does not index it again, dead objects and all.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                count = self._forget_pack(name, retire=retire)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return count

    def _forget_pack(self, name: str, *, retire: bool = False) -> int:
        count = self._db.execute("DELETE FROM objects WHERE pack = ?", (name,)).rowcount
        self._db.execute("DELETE FROM packs WHERE name = ?", (name,))
        if retire:
            self._db.execute("INSERT OR IGNORE INTO retired (name) VALUES (?)", (name,))
        return int(count)

    def retired(self) -> set[str]:
        with self._lock:
            return {name for (name,) in self._db.execute("SELECT name FROM retired")}

    def gone(self, names: Iterable[str]) -> None:
        """Retired packs now deleted: nothing to remember about them."""
        with self._lock:
            self._db.executemany("DELETE FROM retired WHERE name = ?", ((name,) for name in names))

    def remove(self, kind: Kind, digest: bytes) -> Location | None:
        with self._lock:
            row = self._db.execute(
                "DELETE FROM objects WHERE kind = ? AND digest = ? RETURNING pack, offset, size",
                (KIND_CODES[kind], digest),
            ).fetchone()
        return Location(*row) if row else None

    def scan(self, kind: Kind, *, in_pack_order: bool = False) -> list[tuple[str, int]]:
        """(hex digest, size) of every indexed object of a kind; ``in_pack_order``: by pack, then offset.

        Pack order lets a reader of a remote pack fetch neighbouring objects in one request.
        """
        order = " ORDER BY pack, offset" if in_pack_order else ""
        with self._lock:
            rows = self._db.execute(
                "SELECT digest, size FROM objects WHERE kind = ?" + order,  # noqa: S608 - a fixed clause
                (KIND_CODES[kind],),
            ).fetchall()
        return [(bytes(d).hex(), s) for d, s in rows]

    def packs(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT name, size FROM packs").fetchall())

    def live(self) -> dict[str, tuple[int, int]]:
        """Per pack: (objects, bytes of their records) still indexed."""
        with self._lock:
            rows = self._db.execute(
                "SELECT pack, count(*), sum(size) + count(*) * ? FROM objects GROUP BY pack", (RECORD.size,)
            ).fetchall()
        return {name: (n, total) for name, n, total in rows}

    def rows_of(self, name: str) -> list[Row]:
        with self._lock:
            rows = self._db.execute(
                "SELECT kind, digest, offset, size FROM objects WHERE pack = ? ORDER BY offset", (name,)
            ).fetchall()
        return [(CODE_KINDS[k], bytes(d), o, s) for k, d, o, s in rows]


IndexPayload = tuple[str, bytes]  # what ``_INSERT_ROWS`` takes: the JSON of (kind, offset, size), the digests


def index_payload(rows: Iterable[Row]) -> IndexPayload:
    """A pack's rows as ``PackIndex.add_pack`` inserts them, by digest (B-tree inserts in order are faster).

    By digest alone, not (kind, digest): a pack's rows are mostly of one kind, and the order
    is only a speed-up. Sorting tuples made first took a third of this, in the versioner's thread.
    """
    ordered = sorted(rows, key=itemgetter(1))
    if any(len(d) != 16 for _k, d, _o, _s in ordered):
        raise ValueError("a digest is not 16 bytes")
    codes = KIND_CODES
    triples = json.dumps([(codes[k], o, s) for k, _d, o, s in ordered], separators=(",", ":"))
    return triples, b"".join(d for _k, d, _o, _s in ordered)


def read_records(path: str) -> tuple[list[Row], int]:
    """The records of a pack file and the length of its whole records (a torn tail is left out)."""
    with open(path, "rb") as fh:
        return parse_records(cast(BinaryIO, fh), os.fstat(fh.fileno()).st_size, path)


def parse_records(fh: BinaryIO, end: int, name: str) -> tuple[list[Row], int]:
    """``read_records`` of a pack of ``end`` bytes open as ``fh`` (seekable; a bucket object's too).

    Only the record headers are read: the data between them is skipped with ``seek``.
    """
    rows: list[Row] = []
    if fh.read(len(PACK_HEADER)) != PACK_HEADER:
        raise ValueError(f"{name} is not a Strandline pack (bad header)")
    offset = len(PACK_HEADER)
    while offset + RECORD.size <= end:
        header = fh.read(RECORD.size)
        if len(header) != RECORD.size:
            raise ValueError(f"{name}: the pack ends inside the record header at byte {offset}")
        magic, code, digest, size = RECORD.unpack(header)
        if magic != RECORD_MAGIC or code not in CODE_KINDS or offset + RECORD.size + size > end:
            raise ValueError(f"{name}: damaged record header at byte {offset}")
        rows.append((CODE_KINDS[code], digest, offset + RECORD.size, size))
        offset += RECORD.size + size
        fh.seek(offset)
    return rows, offset


class PackWriter:
    """The pack being written: records appended to a temp file, then ``seal`` names it.

    Objects appended are visible to this process at once (``pending``), and to everyone once the
    pack is sealed and indexed. ``mark``/``rewind`` drop what was appended since a mark (a put
    that failed half-way), by truncating the file.
    """

    def __init__(self, tmp_dir: str, hint: Callable[[int, int, int], object] | None) -> None:
        self.name = uuid.uuid4().hex
        self.temp = os.path.join(tmp_dir, f"{os.getpid()}.{self.name}.pack")
        self._hint = hint
        self.fd: int | None = os.open(self.temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        self.pending: dict[tuple[Kind, bytes], Location] = {}
        self.rows: list[Row] = []
        self.payload: IndexPayload | None = None  # ``index_payload(rows)`` once no more is appended
        self.size = 0  # of the pack so far, buffer included
        # Small records are gathered here and written together: 20,000 small files are then
        # ~100 writes, not 40,000. ``_written`` is where the buffer starts in the file.
        self._buffer = bytearray()
        self._written = 0
        self._hinted = 0
        try:
            self._write(PACK_HEADER)
        except BaseException:
            self.discard()
            raise

    def _write(self, data: bytes | memoryview) -> None:
        if len(data) < WRITE_BUFFER:
            self._buffer += data
            self.size += len(data)
            if len(self._buffer) >= WRITE_BUFFER:
                self.drain()
            return
        self.drain()
        self._pwrite(memoryview(data))
        self.size = self._written

    def _pwrite(self, view: memoryview) -> None:
        fd = self.fileno()
        while view:
            n = os.pwrite(fd, view, self._written)
            view = view[n:]
            self._written += n
        self._written_hint(fd)

    def _written_hint(self, fd: int) -> None:
        if self._hint is not None and self._written - self._hinted >= WRITEBACK_STEP:
            self._hint(fd, self._hinted, self._written - self._hinted)  # a hint: failures surface at the fsync
            self._hinted = self._written

    def _pwritev(self, parts: list[bytes | memoryview]) -> None:
        """Write ``parts`` one after another where the file ends, in as few calls as the OS allows."""
        fd = self.fileno()
        for start in range(0, len(parts), _IOV_MAX):
            group = parts[start : start + _IOV_MAX]
            left = sum(map(len, group))
            while True:
                n = os.pwritev(fd, group, self._written)
                if n <= 0:
                    raise OSError(errno.EIO, "the pack being written accepted no more bytes", self.temp)
                self._written += n
                left -= n
                if not left:
                    break
                # A short write (a signal, the disk filling up): resume after the last byte written.
                done = 0
                while n >= len(group[done]):
                    n -= len(group[done])
                    done += 1
                group = [memoryview(group[done])[n:], *group[done + 1 :]]
            self._written_hint(fd)

    def _forget_unwritten(self) -> None:
        # What did not reach the file is lost, with the records it held (of earlier puts too).
        self._buffer.clear()
        self.size = self._written
        lost = [row for row in self.rows if row[2] + row[3] > self._written]
        for kind, digest, _offset, _size in lost:
            self.pending.pop((kind, digest), None)
        self.rows = self.rows[: len(self.rows) - len(lost)]
        self.payload = None

    def drain(self) -> None:
        """Write the buffered records to the file."""
        if self._buffer:
            buffer, self._buffer = self._buffer, bytearray()
            try:
                self._pwrite(memoryview(buffer))
            except BaseException:
                self._forget_unwritten()
                raise

    def fileno(self) -> int:
        if self.fd is None:
            raise OSError(errno.EBADF, "the pack is closed")
        return self.fd

    def append(self, kind: Kind, digest: bytes, data: bytes | memoryview) -> Location:
        """Append one whole object."""
        size = len(data)
        if size + RECORD.size < WRITE_BUFFER:  # a small file: header and bytes in one buffered write
            self._write(RECORD.pack(RECORD_MAGIC, KIND_CODES[kind], digest, size) + data)
        else:
            self.begin(kind, digest, size)
            self._write(data)
        return self.end(kind, digest, size)

    def append_many(self, kind: Kind, objects: Iterable[tuple[bytes, bytes | memoryview]]) -> None:
        """Append whole objects, (digest, bytes) each, written straight from their buffers.

        For many small files: one ``pwritev`` per 512 records, where ``append`` copies each
        record into the write buffer first. On failure the records not written are forgotten.
        """
        self.drain()
        code = KIND_CODES[kind]
        pack, pending, rows = self.name, self.pending, self.rows
        header = RECORD.pack
        parts: list[bytes | memoryview] = []
        offset = self.size
        for digest, data in objects:
            size = len(data)
            parts += (header(RECORD_MAGIC, code, digest, size), data)
            offset += RECORD.size
            pending[(kind, digest)] = Location(pack, offset, size)
            rows.append((kind, digest, offset, size))
            offset += size
        self.size = offset
        self.payload = None
        try:
            self._pwritev(parts)
        except BaseException:
            self._forget_unwritten()
            raise

    def begin(self, kind: Kind, digest: bytes, size: int) -> int:
        """Start an object of ``size`` bytes whose data follows with ``write``; the mark to rewind to."""
        start = self.size
        self._write(RECORD.pack(RECORD_MAGIC, KIND_CODES[kind], digest, size))
        return start

    def write(self, data: bytes | memoryview) -> None:
        self._write(data)

    def end(self, kind: Kind, digest: bytes, size: int) -> Location:
        """Finish the object started last; it must have had exactly ``size`` bytes written."""
        offset = self.size - size
        location = Location(self.name, offset, size)
        self.pending[(kind, digest)] = location
        self.rows.append((kind, digest, offset, size))
        self.payload = None
        return location

    def mark(self) -> int:
        return self.size

    def rewind(self, mark: int) -> None:
        """Forget every record from ``mark`` on (the put that wrote them failed)."""
        if self.fd is None or mark >= self.size:
            return
        if mark >= self._written:
            del self._buffer[mark - self._written :]
        else:
            self._buffer.clear()
            os.ftruncate(self.fd, mark)
            self._written = mark
        self.size = mark
        self._hinted = min(self._hinted, mark)
        keep = [row for row in self.rows if row[2] < mark]
        for kind, digest, _offset, _size in self.rows[len(keep) :]:
            self.pending.pop((kind, digest), None)
        self.rows = keep
        self.payload = None

    def pread(self, location: Location) -> BinaryIO:
        """A reader of a pending object's bytes."""
        self.drain()
        return cast(BinaryIO, RangeReader(os.dup(self.fileno()), location.offset, location.size))

    def seal(self, packs_dir: str) -> str:
        """Fsync, close and rename the pack into ``packs_dir``; the path it now has."""
        self.drain()
        fd = self.fileno()
        os.fsync(fd)
        self.fd = None
        os.close(fd)
        final = os.path.join(packs_dir, f"{self.name}.pack")
        os.rename(self.temp, final)
        return final

    def discard(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            with suppress(OSError):
                os.close(fd)
        with suppress(FileNotFoundError):
            os.unlink(self.temp)
        self.pending.clear()
        self.rows.clear()


class RangeReader(io.RawIOBase):
    """Reads ``size`` bytes at ``offset`` of an open file descriptor (which it owns and closes)."""

    def __init__(self, fd: int, offset: int, size: int, *, owns: bool = True) -> None:
        self._fd: int | None = fd
        self._owns = owns
        self._position = offset
        self._end = offset + size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._fd is None:
            raise ValueError("read from a closed pack reader")
        want = min(len(buffer), self._end - self._position)
        if want <= 0:
            return 0
        n = os.preadv(self._fd, [memoryview(buffer)[:want]], self._position)
        if n == 0:
            raise OSError(errno.EIO, "the pack ends before the object does (truncated)")
        self._position += n
        return n

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            if self._owns:
                os.close(fd)
        super().close()


class PackReaders:
    """Open pack files kept for reading, the most recently used ``limit`` of them.

    A restore of 20,000 small files reads them from a handful of packs: opening the pack again
    for each would cost an open and a close per file.
    """

    def __init__(self, packs_dir: str, limit: int = 64) -> None:
        self._packs_dir = packs_dir
        self._limit = limit
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, location: Location) -> BinaryIO:
        """A reader of the object's bytes; ``FileNotFoundError`` when its pack is gone."""
        with self._lock:
            fd = self._fds.get(location.pack)
            if fd is None:
                fd = os.open(os.path.join(self._packs_dir, f"{location.pack}.pack"), os.O_RDONLY | os.O_CLOEXEC)
                self._fds[location.pack] = fd
                if len(self._fds) > self._limit:
                    os.close(self._fds.popitem(last=False)[1])
            else:
                self._fds.move_to_end(location.pack)
            # Its own descriptor: the reader may outlive this cache's (closed on eviction).
            return cast(BinaryIO, RangeReader(os.dup(fd), location.offset, location.size))

    def forget(self, name: str) -> None:
        with self._lock:
            fd = self._fds.pop(name, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            fds, self._fds = list(self._fds.values()), OrderedDict()
        for fd in fds:
            os.close(fd)


def reconcile(index: PackIndex, packs_dir: str) -> tuple[int, int]:
    """Index packs that a crash left out, forget packs that are gone: (packs indexed, packs forgotten)."""
    on_disk = {}
    with os.scandir(packs_dir) as entries:
        for entry in entries:
            stem, dot, ext = entry.name.partition(".")
            if dot and ext == "pack" and len(stem) == 32:
                on_disk[stem] = entry.path
    known = index.packs()
    retired = index.retired()
    for name in retired & set(on_disk):
        # A pack gc retired (its live objects moved in the same commit) but did not get to
        # delete: delete it now rather than index its dead objects again.
        with suppress(FileNotFoundError):
            os.unlink(on_disk.pop(name))
        log.info("content store: removed pack %s, retired by an interrupted gc", name)
    index.gone(retired)
    added = forgotten = 0
    for name, path in sorted(on_disk.items()):
        if name in known:
            continue
        try:
            rows, whole = read_records(path)
        except (OSError, ValueError) as exc:
            log.error("content store: pack %s cannot be indexed (%s); its objects count as missing", path, exc)
            continue
        index.add_pack(name, whole, rows)
        added += 1
        log.info("content store: indexed pack %s (%d objects) that an interrupted write left out", name, len(rows))
    for name in sorted(set(known) - set(on_disk)):
        lost = index.forget_pack(name)
        forgotten += 1
        log.error(
            "content store: pack %s is gone; its %d objects count as missing (`strandline verify` names the "
            "versions; the next version of a file that still exists stores it again)",
            name,
            lost,
        )
    return added, forgotten
