"""A dataset root in an object store (``s3://``, ``gs://``, ``az://``), seen through the ``Source`` interface.

The stat of an object is (size, last-modified, change token: S3's and Azure's ETag, GCS's
generation): when all three match the catalog's stat
cache the object is not read again, so a restart resumes instead of re-hashing the bucket.
Objects are streamed, never held whole: hashing is one GET; an object about to be read as a
table is copied to a spool file during that same GET, so the profile is of exactly the bytes
that were hashed, and the copy is removed when the pass ends.

Keys are never turned into local paths: the spool file is named by a hash of the key, and a
hostile key (``..``, absolute, encoded separators, odd Unicode) is reported and skipped.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import xxhash

from daemon.content_store import ContentStore, PutMode, PutResult, SourceChangedError
from daemon.errors import ListingStoppedError, UnreadableDataError, VanishedError
from daemon.filters import PathFilter
from daemon.fingerprint import ChangedWhileReadingError
from daemon.manifest import FileState
from daemon.objectstore import (
    BucketRoot,
    FailureKind,
    ObjectEntry,
    ObjectRejection,
    classify_failure,
    display_key,
    filesystem_for,
    hash_object,
    head_object,
    list_prefix,
    open_object,
    parse_root,
)
from daemon.scanner import FileStat, OnReject, Rejection
from daemon.sources import KeptBytes
from schemas.config import StoreSettings
from schemas.events import RejectReason

log = logging.getLogger(__name__)


def rejection_of(item: ObjectRejection) -> Rejection:
    """A hostile key as the versioner reports it: printable, with the problem and what to do."""
    return Rejection(
        display_key(item.key),
        "unsafe_key",
        f"{item.problem}: {item.detail}; the object is not versioned (rename the key to version it)",
    )


_SECOND_NS = 1_000_000_000


def entry_stat(entry: ObjectEntry) -> FileStat:
    """An object's stat, the same whether it came from LIST or HEAD: S3's LIST gives last-modified in
    milliseconds and HEAD in whole seconds, and some servers quote ETags in one and not the other."""
    etag = entry.etag.removeprefix("W/").strip('"')
    return FileStat(entry.size, entry.mtime_ns // _SECOND_NS * _SECOND_NS, 0, etag)


class BucketSource:
    """``s3://``, ``gs://`` or ``az://`` ``bucket/prefix/`` as a Source. Not thread-safe: one versioner
    (or poller) drives it. ``settings`` is the store's config section (``StrandlineConfig.store_settings``)."""

    racy_ns = 0  # a change token changes with the bytes: a recent last-modified proves nothing less

    def __init__(self, location: str, *, spool_dir: str, settings: StoreSettings) -> None:
        self.root = parse_root(location)
        self.settings = settings
        self._spool = Path(spool_dir)
        self._kept: dict[str, Path] = {}
        self.keep_small_files = False
        self._small = KeptBytes()  # small objects' bytes, read while hashed
        self._fs: Any = None

    @property
    def location(self) -> str:
        return self.root.url

    @property
    def fs(self) -> Any:
        if self._fs is None:
            self._fs = filesystem_for(self.root, self.settings)
        return self._fs

    def missing(self) -> str | None:
        return None  # a bucket that cannot be listed raises SourceError from walk: retried, not "missing"

    def busy(self) -> str | None:
        return None  # restores never write into a bucket

    def listing(self) -> Iterator[ObjectEntry | ObjectRejection]:
        """The prefix's objects in key order, one page in memory at a time."""
        return list_prefix(self.fs, self.root, page_size=self.settings.page_size)

    def walk(
        self, filt: PathFilter, on_reject: OnReject, *, stop: threading.Event | None = None
    ) -> Iterator[tuple[str, FileStat]]:
        """Every wanted object with its stat; raises ``ListingStoppedError`` soon after ``stop``
        is set (a listing of 100,000 keys takes minutes on a slow store: a stop must not wait)."""
        for item in self.listing():
            if stop is not None and stop.is_set():
                raise ListingStoppedError(f"listing of {self.root.url} stopped: the daemon is stopping")
            if isinstance(item, ObjectRejection):
                on_reject(rejection_of(item))
            elif filt.wants_file(item.rel_path):
                yield item.rel_path, entry_stat(item)

    def _head(self, rel: str) -> FileStat | None:
        entry = head_object(self.fs, self.root, self.root.prefix + rel)
        return None if entry is None else entry_stat(entry)

    def stat_paths(
        self, rels: Iterable[str], filt: PathFilter, on_reject: OnReject
    ) -> tuple[dict[str, FileStat], set[str]]:
        found: dict[str, FileStat] = {}
        absent: set[str] = set()
        for rel in rels:
            try:
                st = self._head(rel)
            except UnreadableDataError as exc:
                on_reject(Rejection(rel, _reason(exc), str(exc)))
                continue
            if st is not None:
                if filt.wants_file(rel):
                    found[rel] = st
                continue
            # Gone as an object; what was known below "rel/" is gone too unless it is listed now.
            absent.add(rel)
            below = BucketRoot(self.root.scheme, self.root.bucket, f"{self.root.prefix}{rel}/")
            for item in list_prefix(self.fs, below, page_size=self.settings.page_size):
                if isinstance(item, ObjectEntry):
                    sub = f"{rel}/{item.rel_path}"
                    if filt.wants_file(sub):
                        found[sub] = entry_stat(item)
        return found, absent

    def marker_stat(self, rel: str) -> str | None:
        try:
            st = self._head(rel)
        except UnreadableDataError:
            return None
        return None if st is None else f"{st.size}:{st.etag}:{st.mtime_ns}"

    def fingerprint(self, rel: str, fs: FileStat, *, keep: bool) -> FileState | Rejection | None:
        key = self.root.prefix + rel
        try:
            if keep:
                digest = self._download(rel, key, fs.etag)
            elif self.keep_small_files and fs.size <= self._small.room_for(fs.size):
                # The snapshot stores these bytes: no second (HEAD and) GET of the object for it.
                sink = io.BytesIO()
                digest = hash_object(self.fs, self.root, key, etag=fs.etag or None, sink=sink)
                self._small.add(rel, digest, sink.getvalue())
            else:
                digest = hash_object(self.fs, self.root, key, etag=fs.etag or None)
        except UnreadableDataError as exc:
            kind = _kind(exc)
            if kind == "vanished":
                return None
            if kind == "changed":
                raise ChangedWhileReadingError(f"{self.root.url}{rel} changed while being read") from exc
            return Rejection(rel, _reason(exc), str(exc))
        return FileState(fs.size, digest, fs.mtime_ns, 0, fs.etag)

    def _download(self, rel: str, key: str, etag: str | None) -> str:
        """Hash the object while copying it to the spool; the copy serves ``table_path``."""
        self._spool.mkdir(parents=True, exist_ok=True)
        target = self._spool / xxhash.xxh3_64_hexdigest(rel.encode("utf-8"))
        try:
            with open(target, "wb") as sink:
                digest = hash_object(self.fs, self.root, key, etag=etag or None, sink=sink)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        self._kept[rel] = target
        return digest

    def table_path(self, rel: str, state: FileState) -> str:
        kept = self._kept.get(rel)
        if kept is None:
            # Read as a table in a later pass than the one that hashed it (rare): fetch it again,
            # and only if the bytes are still those the catalog recorded.
            try:
                digest = self._download(rel, self.root.prefix + rel, state.etag or None)
            except UnreadableDataError as exc:
                if _kind(exc) in ("vanished", "changed"):
                    raise VanishedError(str(exc)) from exc
                raise
            if digest != state.hash:
                raise VanishedError(f"{self.root.url}{rel} changed since it was versioned")
            kept = self._kept[rel]
        return os.fspath(kept)

    def keep_kept(self, states: Mapping[str, FileState], store: ContentStore) -> tuple[set[str], int, int]:
        return self._small.store_many(states, store)

    def keep_bytes(self, rel: str, state: FileState, store: ContentStore, mode: PutMode) -> PutResult:
        """From the pass's spooled copy when there is one, else from one more conditional GET."""
        kept = self._kept.get(rel)
        if kept is not None:
            return store.put(kept, state.hash, state.size, "copy")
        key = self.root.prefix + rel
        try:
            with open_object(self.fs, self.root, key, etag=state.etag or None) as handle:
                return store.put_stream(handle, state.hash, state.size, name=f"{self.root.url}{rel}")
        except UnreadableDataError as exc:
            if _kind(exc) in ("vanished", "changed"):
                raise SourceChangedError(f"{self.root.url}{rel} changed since it was hashed") from exc
            raise

    def finish_pass(self) -> None:
        for path in self._kept.values():
            path.unlink(missing_ok=True)
        self._kept.clear()
        self._small.clear()


def _kind(exc: UnreadableDataError) -> FailureKind:
    """What went wrong with one object, from the store's error behind ours."""
    return classify_failure(exc.__cause__)[0] if exc.__cause__ is not None else "other"


def _reason(exc: UnreadableDataError) -> RejectReason:
    kind = _kind(exc)
    return "permission_denied" if kind == "access_denied" else "io_error"
