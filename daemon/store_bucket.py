"""The content store in a bucket: packs uploaded whole to ``s3://``, ``gs://`` or ``az://``, read by range (issue 6).

``[store] path = "s3://bucket/prefix"`` keeps a version's bytes in a bucket instead of a local
folder. ``ContentStore`` is the same; only its ``Backend`` differs. Layout under the URL::

    <prefix>/packs/<32 hex>.pack   a pack (the ``daemon.store_packs`` format), uploaded whole once sealed
    <prefix>/packs/<32 hex>.idx    its records (kind, digest, offset, size), uploaded after the pack

and on this host, in ``<state_dir>/store-spool/<slug of the URL>/`` (``spool_dir``)::

    tmp/PID.<32 hex>.pack   the pack being written
    index.db                the ``PackIndex``: a cache of the .idx objects, rebuilt from the bucket
    LOCK                    ``daemon.snapshots.StoreLock``'s file

Writing: objects are appended to a pack in the spool as for a local store; sealing it (per put,
per batch, every ``PACK_TARGET`` bytes) uploads it as one object (one PUT, or a multipart upload
for a big pack: either way the object appears whole or not at all, which is what the fsync and
rename give locally), then its .idx, then indexes it. When an upload fails the put fails with
``StoreError``, nothing of it is indexed, and a pack already uploaded without its .idx is removed
again when the store still answers (else it is a pack of whole objects no version names: gc
removes it).

Opening reconciles the index with a listing of ``packs/``: packs that are gone (another host's
gc) are forgotten, then packs it does not know (another host's, or one a crash left unindexed)
are indexed from their .idx, or by streaming the pack's record headers when the .idx is missing
(a crash between the two uploads) or does not match the pack. A read that finds its pack gone
lists once more before it reports the object missing.

Reading: ranged GETs. An object of up to ``SMALL_OBJECT`` bytes is one GET; when reads walk a
pack in order (the chunks of a file, ``verify``, whose listing comes in pack order here) the
next ``READ_AHEAD`` bytes come with it. A bigger blob is read in ``PART``-sized ranges as it is
consumed, never held whole.

gc: index rows are deleted as locally; a pack nothing lives in is deleted (.pack, then .idx);
the live objects of a mostly dead one are downloaded into a new pack, uploaded, indexed, and the
old pack deleted.

Several hosts may share one bucket store: each has its own index and picks up the others' packs
on open. ``StoreLock`` is a local flock, so ``strandline gc`` on one host does not hold off a
versioner on another, and gc only knows its own host's catalog: see the README.

Errors: the store's failures (network, access denied, bucket missing, throttling after the
retries) become ``StoreError`` saying what to do; a pack or range that is gone is
``FileNotFoundError`` to ``ContentStore`` (which reports the object missing). Throttling and
dropped connections are retried as ``daemon.objectstore`` does: botocore's standard mode for S3,
``[gcs]``/``[azure] max_attempts`` tries for the others. No message carries a credential.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import random
import re
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO, Final, TypeVar, cast

import xxhash

from daemon.content_store import PackingBackend, StoreError, StoreFullError
from daemon.errors import StrandlineError
from daemon.objectstore import BucketRoot, ObjectEntry, adapter_for, classify_failure, list_prefix, tuning_of
from daemon.store_packs import (
    CODE_KINDS,
    KIND_CODES,
    PACK_HEADER,
    Kind,
    Location,
    PackIndex,
    PackWriter,
    Row,
    parse_records,
)
from daemon.temps import remove_dead_writers_temps

__all__ = [
    "PART",
    "READ_AHEAD",
    "SMALL_OBJECT",
    "BucketBackend",
    "decode_index",
    "encode_index",
    "spool_dir",
]

log = logging.getLogger(__name__)

MiB: Final = 1024 * 1024
# A blob bigger than this is read in PART ranges as it is consumed; a smaller object is one GET.
SMALL_OBJECT: Final = 1 * MiB
PART: Final = 1 * MiB
# Fetched along with an object when reads walk a pack in order: one GET for many chunks.
READ_AHEAD: Final = 4 * MiB

_PACKS: Final = "packs/"
_HEX32 = re.compile(r"[0-9a-f]{32}")
_FULL: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
_T = TypeVar("_T")

# -- the .idx format: the pure part ------------------------------------------------------------
#
# idx = header (magic "SLIDX\0\0\1", pack size u64, record count u32)
#       + N x (kind u8, digest 16 bytes, offset u64, size u64)
#       + XXH3-64 of everything before it.

_IDX_MAGIC: Final = b"SLIDX\x00\x00\x01"
_IDX_HEAD = struct.Struct("<8sQI")
_IDX_ROW = struct.Struct("<B16sQQ")
_IDX_TRAILER = struct.Struct("<Q")


def encode_index(pack_size: int, rows: list[Row]) -> bytes:
    """The .idx object of a pack of ``pack_size`` bytes holding ``rows``."""
    body = _IDX_HEAD.pack(_IDX_MAGIC, pack_size, len(rows)) + b"".join(
        _IDX_ROW.pack(KIND_CODES[kind], digest, offset, size) for kind, digest, offset, size in rows
    )
    return body + _IDX_TRAILER.pack(xxhash.xxh3_64_intdigest(body))


def decode_index(data: bytes) -> tuple[int, list[Row]]:
    """(pack size, rows) of an .idx object; ``ValueError`` saying what is wrong with a damaged one."""
    if len(data) < _IDX_HEAD.size + _IDX_TRAILER.size:
        raise ValueError("index is truncated")
    body, (check,) = data[: -_IDX_TRAILER.size], _IDX_TRAILER.unpack(data[-_IDX_TRAILER.size :])
    if xxhash.xxh3_64_intdigest(body) != check:
        raise ValueError("index checksum does not match")
    magic, pack_size, count = _IDX_HEAD.unpack_from(body)
    if magic != _IDX_MAGIC:
        raise ValueError("not a version-1 pack index")
    if len(body) != _IDX_HEAD.size + count * _IDX_ROW.size:
        raise ValueError("index length does not match its record count")
    rows: list[Row] = []
    for code, digest, offset, size in _IDX_ROW.iter_unpack(body[_IDX_HEAD.size :]):
        if code not in CODE_KINDS or offset < len(PACK_HEADER) or offset + size > pack_size:
            raise ValueError(f"index names a record outside its pack at byte {offset}")
        rows.append((CODE_KINDS[code], bytes(digest), offset, size))
    return pack_size, rows


def spool_dir(state_dir: str | os.PathLike[str], location: BucketRoot) -> Path:
    """This host's folder for a bucket store: a readable slug of the URL plus its hash (two URLs never share one)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{location.scheme}-{location.bucket}-{location.prefix}").strip("-")[:80]
    return Path(state_dir) / "store-spool" / f"{slug}-{xxhash.xxh3_64_hexdigest(location.url.encode())}"


# -- reading by range ----------------------------------------------------------------------------


class _RangedObject(io.RawIOBase):
    """``size`` bytes at ``start`` of a pack object, fetched ``PART`` bytes at a time as they are read."""

    def __init__(self, fetch: Callable[[int, int], bytes], start: int, size: int, first: bytes) -> None:
        self._fetch = fetch
        self._start = start
        self._size = size
        self._position = 0
        self._buffer = first  # the bytes from _position on, already fetched

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence] + offset
        if target < 0:
            raise ValueError("negative seek position")
        if self._position <= target < self._position + len(self._buffer):
            self._buffer = self._buffer[target - self._position :]
        else:
            self._buffer = b""
        self._position = target
        return target

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self._size - self._position)
        if want <= 0:
            return 0
        if not self._buffer:
            begin = self._start + self._position
            self._buffer = self._fetch(begin, begin + min(max(want, PART), self._size - self._position))
            if not self._buffer:
                raise OSError(errno.EIO, "the pack ends before the object does (truncated)")
        n = min(want, len(self._buffer))
        memoryview(buffer)[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        self._position += n
        return n


# -- the backend -------------------------------------------------------------------------------


class BucketBackend(PackingBackend):
    """``daemon.content_store.Backend`` over a bucket prefix, with a local spool for the pack being written.

    ``fs`` is the prefix's fsspec filesystem, built from the config's [s3]/[gcs]/[azure] section
    by ``daemon.objectstore.filesystem_for``. Opening lists ``packs/`` (``refresh``).
    """

    def __init__(self, location: BucketRoot, fs: Any, spool: str | os.PathLike[str]) -> None:
        self.location = location
        self.root = location.url
        self.fs = fs
        self.endpoint = adapter_for(fs, location).endpoint
        self._packs_root = BucketRoot(location.scheme, location.bucket, location.prefix + _PACKS)
        # botocore retries S3 calls itself (standard mode); the GCS and Azure filesystems are
        # built with their own retries off or short, and retried here as their adapters do.
        self._attempts = 1 if location.scheme == "s3" else tuning_of(fs).max_attempts
        self.spool = os.path.abspath(spool)
        self.lock_dir = self.spool
        self.tmp = os.path.join(self.spool, "tmp")
        self.batching = False
        self.unsynced = 0  # nothing here is named before its bytes are uploaded: never set
        self._pack: PackWriter | None = None
        self._absent: set[bytes] = set()  # not stored, as ``missing`` found in this batch
        self._located: dict[tuple[Kind, bytes], Location] = {}  # from ``prefetch``, until read
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()
        self._window: tuple[str, int, bytes] | None = None  # read ahead: (pack, offset, bytes)
        self._last: tuple[str, int] | None = None  # (pack, end) of the last range read
        try:
            os.makedirs(self.tmp, exist_ok=True)
            self.index = PackIndex(os.path.join(self.spool, "index.db"))
            self._clean_temps()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"cannot open this host's index of the content store {self.root} in {self.spool}: {exc}; "
                "check state_dir"
            ) from exc
        try:
            self.refresh()
        except BaseException:
            self.index.close()
            raise

    def close(self) -> None:
        self.discard_pack()
        self.index.close()

    def _clean_temps(self) -> None:
        """Remove packs left in the spool by writers that died (their pid is gone)."""
        remove_dead_writers_temps(self.tmp)

    # -- talking to the bucket ----------------------------------------------------------------

    def _path(self, name: str) -> str:
        return f"{self.location.bucket}/{self._packs_root.prefix}{name}"

    def _call(self, action: str, name: str, call: Callable[[], _T]) -> _T:
        """``call()``, retried on throttling and dropped connections; its failure as ``StoreError``.

        An object that is not there is ``FileNotFoundError`` (a pack another host's gc removed).
        """
        for attempt in range(1, self._attempts + 1):
            try:
                return call()
            except Exception as exc:
                kind, _code = classify_failure(exc)
                if kind == "vanished":
                    raise FileNotFoundError(errno.ENOENT, f"{name} is not in the content store {self.root}") from exc
                if attempt < self._attempts and kind in ("throttled", "unreachable"):
                    time.sleep(min(5.0, 0.2 * 2 ** (attempt - 1)) * (0.5 + random.random() / 2))  # noqa: S311 - jitter
                    continue
                raise self._failure(exc, action, name) from exc
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _failure(self, exc: BaseException, action: str, name: str | None = None) -> StoreError:
        """Our error for a failed call, saying what to do; the library's text only when nothing better is known."""
        kind, code = classify_failure(exc)
        section = {"s3": "[s3]", "gs": "[gcs]", "az": "[azure]"}[self.location.scheme]
        what = f"{action} {name + ' in ' if name else ''}the content store {self.root} at {self.endpoint}"
        suffix = f" ({code})" if code else ""
        if kind == "bucket_missing":
            return StoreError(
                f"the bucket {self.location.bucket!r} of the content store does not exist at {self.endpoint}: "
                "create it, or fix [store] path"
            )
        if kind == "no_credentials":
            return StoreError(
                f"no credentials to {what}{suffix}: give the daemon credentials as for bucket datasets "
                f"({section} settings or the environment)"
            )
        if kind == "access_denied":
            return StoreError(
                f"access denied to {what}{suffix}: the store needs to list, read, write and delete objects "
                f"under {self._packs_root.url}; grant that to the daemon's credentials"
            )
        if kind == "unreachable":
            return StoreError(
                f"cannot reach {self.endpoint} to {what}{suffix}: check {section} endpoint_url, the network and "
                "that the store runs, then retry"
            )
        if kind == "throttled":
            return StoreError(f"{self.endpoint} is throttling requests to {what}{suffix}: retry later")
        text = str(exc).strip().splitlines()
        return StoreError(f"cannot {what}{suffix}: {text[0] if text else type(exc).__name__}")

    def _list(self) -> Iterator[ObjectEntry]:
        try:
            for entry in list_prefix(self.fs, self._packs_root):
                if isinstance(entry, ObjectEntry):
                    yield entry
        except StrandlineError as exc:
            raise self._failure(exc, "list") from exc

    def _get_range(self, pack: str, start: int, end: int) -> bytes:
        path = self._path(f"{pack}.pack")
        return cast(bytes, self._call("read", f"pack {pack}", lambda: self.fs.cat_file(path, start=start, end=end)))

    def _remove(self, name: str) -> None:
        path = self._path(name)
        with suppress(FileNotFoundError):
            self._call("delete", name, lambda: self.fs.rm_file(path))

    # -- the index, a cache of the bucket -------------------------------------------------------

    def refresh(self) -> tuple[int, int]:
        """Bring the index in line with the bucket: (packs indexed, packs forgotten)."""
        # Known before the listing: a pack this host seals meanwhile is not taken for a gone one.
        known = self.index.packs()
        packs: dict[str, int] = {}
        indexes: set[str] = set()
        for entry in self._list():
            stem, _dot, ext = entry.rel_path.partition(".")
            if _HEX32.fullmatch(stem):
                if ext == "pack":
                    packs[stem] = entry.size
                elif ext == "idx":
                    indexes.add(stem)
        forgotten = added = 0
        # Forget before adding: a rewritten pack's objects are then indexed at their new place.
        for name in sorted(set(known) - set(packs)):
            with self.storing(f"the index of pack {name}"):
                lost = self.index.forget_pack(name)
            forgotten += 1
            log.warning(
                "content store %s: pack %s is gone (another host's gc, or deleted); %d objects of it are "
                "forgotten here (`strandline verify` names versions that needed them)",
                self.root,
                name,
                lost,
            )
        for name, size in sorted(packs.items()):
            if name in known:
                continue
            rows = self._rows_of(name, size, name in indexes)
            if rows is None:
                continue
            with self.storing(f"the index of pack {name}"):
                self.index.add_pack(name, size, rows)
            added += 1
        with self._lock:
            self._sizes = packs
        if added or forgotten:
            log.info("content store %s: %d packs indexed, %d forgotten", self.root, added, forgotten)
        return added, forgotten

    def _rows_of(self, name: str, size: int, has_idx: bool) -> list[Row] | None:
        """The records of a listed pack: from its .idx, else from its record headers; None if unreadable."""
        if has_idx:
            path = self._path(f"{name}.idx")
            try:
                pack_size, rows = decode_index(
                    cast(bytes, self._call("read", f"{name}.idx", lambda: self.fs.cat_file(path)))
                )
                if pack_size == size:
                    return rows
                log.warning("content store %s: %s.idx does not match its pack; reading the pack", self.root, name)
            except FileNotFoundError:
                pass
            except ValueError as exc:
                log.warning("content store %s: %s.idx is damaged (%s); reading the pack", self.root, name, exc)
        raw = _RangedObject(lambda start, end: self._get_range(name, start, end), 0, size, b"")
        try:
            rows, _whole = parse_records(cast(BinaryIO, io.BufferedReader(raw, buffer_size=PART)), size, name)
        except FileNotFoundError:
            return None  # deleted since the listing
        except (OSError, ValueError) as exc:
            log.error(
                "content store %s: pack %s cannot be indexed (%s); its objects count as missing", self.root, name, exc
            )
            return None
        if not has_idx:
            log.info(
                "content store %s: indexed pack %s (%d objects), whose .idx is missing", self.root, name, len(rows)
            )
        return rows

    # -- error translation ------------------------------------------------------------------

    @contextmanager
    def storing(self, what: str) -> Iterator[None]:
        """Local failures (the spool, the index) of storing ``what`` as ``StoreError``; the bucket's are already."""
        try:
            yield
        except OSError as exc:
            if exc.errno in _FULL:
                raise StoreFullError(
                    f"no space left in {self.spool} (this host's spool of the content store {self.root}) while "
                    f"storing {what}: free space and retry"
                ) from exc
            raise StoreError(
                f"cannot store {what} in the content store {self.root} (spool {self.spool}): {exc}"
            ) from exc
        except sqlite3.Error as exc:
            raise StoreError(
                f"this host's index of the content store {self.root} failed while storing {what}: {exc}"
            ) from exc

    # -- the pack being written ---------------------------------------------------------------

    def _persist(self, pack: PackWriter) -> None:
        """The pack as one object, then its .idx; a pack left without its .idx is taken back if possible."""
        with self.storing(f"pack {pack.name}"):
            pack.drain()  # records still in its write buffer go to the file first
        pack_path, temp = self._path(f"{pack.name}.pack"), pack.temp
        self._call("upload", f"pack {pack.name}", lambda: self.fs.put_file(temp, pack_path))
        idx_path, idx = self._path(f"{pack.name}.idx"), encode_index(pack.size, pack.rows)
        try:
            self._call("upload", f"{pack.name}.idx", lambda: self.fs.pipe_file(idx_path, idx))
        except (StoreError, FileNotFoundError):
            with suppress(StoreError):
                self._remove(f"{pack.name}.pack")
            raise
        with self._lock:
            self._sizes[pack.name] = pack.size

    def flush_removals(self) -> int:
        self.flush()
        return 0  # nothing is a file of its own here: packs give space back at compact

    # -- reading ----------------------------------------------------------------------------

    def open(self, kind: Kind, digest: str) -> BinaryIO:
        raw = bytes.fromhex(digest)
        if self._pack is not None and (pending := self._pack.pending.get((kind, raw))) is not None:
            return self._pack.pread(pending)
        for attempt in (1, 2):
            found = self._locate(kind, raw, fresh=attempt == 2)
            if found is None:
                break
            try:
                if found.size <= SMALL_OBJECT:
                    return cast(BinaryIO, io.BytesIO(self._fetch(found)))
                first = self._get_range(found.pack, found.offset, found.offset + PART)
                fetch = self._ranged_fetch(found.pack)
                return cast(BinaryIO, _RangedObject(fetch, found.offset, found.size, first))
            except FileNotFoundError:
                if attempt == 2:
                    raise
                self.refresh()  # another host's gc may have moved it to a new pack
        raise FileNotFoundError(errno.ENOENT, f"no {kind} {digest} in the content store {self.root}")

    def _ranged_fetch(self, pack: str) -> Callable[[int, int], bytes]:
        return lambda start, end: self._get_range(pack, start, end)

    def read(self, kind: Kind, digest: str) -> bytes:
        with self.open(kind, digest) as fh:
            return fh.read()

    def _fetch(self, found: Location) -> bytes:
        """A small object's bytes: from the read-ahead window, else one GET (with a window when reading in order)."""
        end = found.offset + found.size
        with self._lock:
            window, last = self._window, self._last
            if window is not None and window[0] == found.pack and window[1] <= found.offset:
                start = found.offset - window[1]
                if end - window[1] <= len(window[2]):
                    self._last = (found.pack, end)
                    return window[2][start : start + found.size]
            pack_size = self._sizes.get(found.pack, end)
        fetch_end = end
        if last is not None and last[0] == found.pack and last[1] <= found.offset < last[1] + READ_AHEAD:
            fetch_end = max(end, min(found.offset + READ_AHEAD, pack_size))
        data = self._get_range(found.pack, found.offset, fetch_end)
        if len(data) < found.size:
            raise OSError(errno.EIO, f"pack {found.pack} ends before the object does (truncated)")
        with self._lock:
            if len(data) > found.size:
                self._window = (found.pack, found.offset, data)
            self._last = (found.pack, end)
        return data[: found.size]

    def scan(self, kind: Kind) -> Iterator[tuple[str, int]]:
        # In pack order: a walk over every object (verify) then reads each pack front to back.
        yield from self.index.scan(kind, in_pack_order=True)

    # -- removing ---------------------------------------------------------------------------

    def delete(self, kind: Kind, digest: str) -> int:
        """Forget an object (its pack's bytes go at ``compact``); its size, or 0."""
        found = self.index.remove(kind, bytes.fromhex(digest))
        return found.size if found is not None else 0

    def compact(self, *, dead_share: float = 0.5) -> int:
        """Delete the packs nothing lives in and rewrite those mostly dead; the bucket bytes freed."""
        self.seal()
        live = self.index.live()
        empty: list[str] = []
        sparse: list[str] = []
        sizes = self.index.packs()
        for name, size in sizes.items():
            objects, live_bytes = live.get(name, (0, 0))
            if objects == 0:
                empty.append(name)
            elif live_bytes < size * (1 - dead_share):
                sparse.append(name)
        freed = 0
        for name in empty:
            with self.storing(f"the removal of pack {name}"):
                self.index.forget_pack(name)
            self._drop(name)
            freed += sizes[name]
        if sparse:
            freed += self._rewrite(sparse, sizes)
        return freed

    def _drop(self, name: str) -> None:
        # The pack first: an .idx left by a failure here names no pack, and opening ignores it.
        self._remove(f"{name}.pack")
        self._remove(f"{name}.idx")
        with self._lock:
            self._sizes.pop(name, None)
            if self._window is not None and self._window[0] == name:
                self._window = None

    def _rewrite(self, names: list[str], sizes: dict[str, int]) -> int:
        """Copy the live objects of ``names`` into one new pack, upload it, point the index at it, delete them."""
        with self.storing(f"a rewrite of {len(names)} packs"):
            pack = PackWriter(self.tmp, None)
        moved: list[Row] = []
        try:
            for name in names:
                for kind, digest, offset, size in self.index.rows_of(name):
                    with self.storing(f"a rewrite of pack {name}"):
                        pack.begin(kind, digest, size)
                    done = 0
                    while done < size:
                        part = self._get_range(name, offset + done, offset + min(size, done + PART))
                        if not part:
                            raise StoreError(f"pack {name} is shorter than its index says; run `strandline verify`")
                        with self.storing(f"a rewrite of pack {name}"):
                            pack.write(part)
                        done += len(part)
                    location = pack.end(kind, digest, size)
                    moved.append((kind, digest, location.offset, size))
            self._persist(pack)
            with self.storing(f"the index of pack {pack.name}"):
                self.index.move(pack.name, pack.size, moved, names)
            new_size = pack.size
        finally:
            pack.discard()
        freed = -new_size
        for name in names:
            self._drop(name)
            freed += sizes[name]
        log.info(
            "content store %s: rewrote %d mostly-dead packs into %s, %d bytes freed",
            self.root,
            len(names),
            pack.name,
            freed,
        )
        return freed
