"""Keeping a new version's bytes in the content store before the version is recorded (issue 6).

The versioner hands over the files a version needs; ``Snapshotter.keep`` stores what the store
does not have yet and says whether the version is restorable. It runs before the catalog
transaction that records the version and queues its event, so a subscriber that sees a
version can restore it, unless the event says otherwise:

- policy ``none``: nothing is stored, the version is recorded as not restorable;
- a full disk or a failing store: the version is still recorded (a change seen is a change
  versioned) but as not restorable, with the reason; the user's files are only ever read;
- a file that changed or vanished since it was hashed: ``SnapshotRetry``, and the versioner
  runs the pass again once the file settles, as it does when a table changes while profiled.

Policies: ``copy``; ``reflink`` (copy-on-write clone, falls back to copy where the filesystem
cannot clone); ``hardlink`` (the file is linked into the store and made read-only, so a later
in-place edit fails instead of corrupting the stored version; falls back to copy per file);
``auto``: reflink where the store's filesystem can clone the data's files, else copy. A store in a
bucket (``[store] path = "s3://..."``) keeps no files of its own: every policy but ``none`` copies
there, and a dataset that asked for reflink or hardlink says so once in the log.

``StoreLock`` keeps ``strandline gc`` from deleting objects between their put and the commit
of the version that needs them: versioners hold it shared from the first put to the commit,
gc holds it exclusively while it deletes. It is a local flock (in the spool folder for a bucket
store): it orders the processes of one host, not those of several hosts sharing a bucket store.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from daemon.catalog import Snapshot
from daemon.content_store import (
    ContentStore,
    HardlinkUnsupportedError,
    PutMode,
    PutResult,
    ReflinkUnsupportedError,
    Sealing,
    SourceChangedError,
    StoreError,
    StoreFullError,
    reflink_supported,
)
from daemon.errors import StrandlineError, UnreadableDataError
from daemon.manifest import FileState
from daemon.sources import Source
from daemon.store_open import StoreSite
from schemas.config import SnapshotPolicy, is_bucket_url

log = logging.getLogger(__name__)

_LOCK_NAME: Final = "LOCK"


class SnapshotRetry(StrandlineError):
    """A file changed or vanished between its hash and its snapshot: version it once it settles."""


class StoreLockTimeout(StrandlineError):
    """The content store stayed busy (a versioner mid-commit, or another gc) for too long."""


class StoreLock:
    """An advisory lock file in the store folder (flock: released when the holder dies)."""

    def __init__(self, store_root: str | os.PathLike[str]) -> None:
        self.path = Path(store_root) / _LOCK_NAME

    @contextmanager
    def _held(self, operation: int, timeout: float | None) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, operation | (fcntl.LOCK_NB if deadline is not None else 0))
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() > deadline:
                        raise StoreLockTimeout(
                            f"the content store {self.path.parent} stayed busy for {timeout:.0f} s; try again"
                        ) from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def shared(self) -> AbstractContextManager[None]:
        """Held by a versioner from its first put until its version is committed."""
        return self._held(fcntl.LOCK_SH, None)

    def exclusive(self, timeout: float = 600.0) -> AbstractContextManager[None]:
        """Held by gc while it deletes; waits for versioners mid-commit."""
        return self._held(fcntl.LOCK_EX, timeout)


@dataclass(frozen=True, slots=True)
class KeepResult:
    snapshot: Snapshot
    stored_files: int = 0  # files whose bytes were new to the store
    stored_bytes: int = 0


def resolve_policy(policy: SnapshotPolicy, store: StoreSite, source: Source) -> PutMode | None:
    """The put mode a dataset's policy means here; None for ``none``."""
    if policy == "none":
        return None
    if is_bucket_url(source.location):
        return "copy"  # a bucket's bytes arrive as a stream: nothing to clone or link
    if store.is_bucket:
        return "copy"  # the store is a bucket: packs are uploaded, nothing can be cloned or linked into it
    store_root = Path(store.location)
    if policy == "auto":
        store_root.mkdir(parents=True, exist_ok=True)
        try:
            same_fs = os.stat(source.location).st_dev == os.stat(store_root).st_dev
        except OSError:
            same_fs = False
        return "reflink" if same_fs and reflink_supported(store_root) else "copy"
    return policy


class Snapshotter:
    """Stores one dataset's files in the content store. Driven by its versioner's thread."""

    def __init__(self, site: StoreSite, dataset: str, policy: SnapshotPolicy, source: Source) -> None:
        self.site = site
        self.dataset = dataset
        self.source = source
        self.lock = StoreLock(site.lock_dir)
        self.wanted = policy
        self.mode: PutMode | None = None if policy == "none" else "copy"  # settled when the store opens
        self._store: ContentStore | None = None
        self._warned: set[str] = set()
        self._copies_small_files()

    @property
    def policy(self) -> str:
        return self.mode or "none"

    @property
    def store(self) -> ContentStore:
        """The content store, opened on first use (a store that cannot be opened fails a snapshot, not the daemon)."""
        if self._store is None:
            self._store = self.site.shared()
            self.mode = resolve_policy(self.wanted, self.site, self.source)
            self._copies_small_files()
            if self.site.is_bucket and self.wanted in ("reflink", "hardlink"):
                self._warn_once(
                    "bucket-store",
                    f"snapshot = {self.wanted!r} cannot apply to the content store in the bucket {self.site.location}:"
                    " its files are copied (set snapshot = 'copy' to silence this)",
                )
        return self._store

    def _copies_small_files(self) -> None:
        # A source keeps the bytes of the small files it fingerprints for us to copy (in copy and
        # reflink modes: small files are copied into packs); links read nothing.
        self.source.keep_small_files = self.mode in ("copy", "reflink")

    @contextmanager
    def batch(self) -> Iterator[Sealing]:
        """The store's batch (one sync for many small files), when the store can be opened.

        The sync starts when the block exits and runs in the background: ``wait()`` on the
        yielded ``Sealing`` before the version is committed (it raises ``StoreError`` when the
        batch could not be made durable).
        """
        try:
            store = self.store
        except StoreError:
            yield Sealing()  # keep() reports it
            return
        with store.batch(seal_in_background=True) as sealing:
            yield sealing

    def keep(self, states: Mapping[str, FileState]) -> KeepResult:
        """Make sure the store has every file of ``states``; hold ``self.lock`` shared around this and the commit.

        Raises ``SnapshotRetry`` when a file no longer has the hashed bytes.
        """
        if self.wanted == "none":
            return KeepResult(Snapshot("none", False, None))
        try:
            store = self.store
        except StoreError as exc:
            return self.failed(f"the content store cannot be opened ({exc})")
        files = stored = 0
        try:
            absent = store.missing({state.hash: state.size for state in states.values()})
        except StoreError as exc:
            return self.failed(f"the content store failed ({exc}): check {store.root}")
        todo = {rel: state for rel, state in states.items() if state.hash in absent}
        try:
            if self.source.keep_small_files:  # their bytes were kept while fingerprinted
                done, files, stored = self.source.keep_kept(todo, store)
                for rel in done:
                    del todo[rel]
            for rel, state in todo.items():
                try:
                    result = self._put(rel, state)
                except (SourceChangedError, UnreadableDataError) as exc:
                    raise SnapshotRetry(f"{rel}: {exc}") from exc
                if result.method != "present":
                    files += 1
                    stored += result.new_bytes
        except SourceChangedError as exc:  # a kept file's bytes (it names the file)
            raise SnapshotRetry(str(exc)) from exc
        except StoreFullError as exc:
            return self.failed(f"the content store is full ({exc}): free space in {store.root}")
        except StoreError as exc:
            return self.failed(f"the content store failed ({exc}): check {store.root}")
        return KeepResult(Snapshot(self.policy, True, None), files, stored)

    def failed(self, note: str) -> KeepResult:
        """A snapshot that did not complete: the version is recorded, as not restorable, with ``note``."""
        log.error(
            "dataset %s: the new version will not be restorable: %s; the next version stores what is missing",
            self.dataset,
            note,
            extra={"dataset": self.dataset},
        )
        return KeepResult(Snapshot(self.policy, False, note))

    def _put(self, rel: str, state: FileState) -> PutResult:
        mode = self.mode or "copy"
        try:
            return self.source.keep_bytes(rel, state, self.store, mode)
        except ReflinkUnsupportedError as exc:
            self._warn_once("reflink", f"cannot clone into {self.store.root} ({exc}); copying instead")
            self.mode = "copy"  # the filesystem pair cannot clone at all: don't try per file
            self._copies_small_files()
        except HardlinkUnsupportedError as exc:
            self._warn_once(rel, f"cannot hard-link {rel} ({exc}); copying it instead")
        return self.source.keep_bytes(rel, state, self.store, "copy")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("dataset %s: %s", self.dataset, message, extra={"dataset": self.dataset})
