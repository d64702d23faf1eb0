"""Turning the state of one dataset's files into a version: stat, hash what changed, diff, commit.

Given the paths that changed (or ``None`` for a full reconcile) it re-reads only files whose
(size, mtime_ns, inode) differ from the stat cache, and commits a version with its events
in one catalog transaction when the manifest really changed.

The dataset as of its latest version (its canonical manifest and its tables' roll-up) is kept
between passes, so the next version's id, totals and quality cost work in proportion to its
changes, not to the dataset (issue 5); it is rebuilt from the catalog whenever it may differ.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime

from daemon.assess import Assessor, ChangedWhileProfilingError, LookupTables, TableIndex
from daemon.catalog import Catalog, DatasetRow, Snapshot, VersionRow
from daemon.content_store import StoreError
from daemon.events import rejection_message, version_messages
from daemon.filters import PathFilter
from daemon.fingerprint import ChangedWhileReadingError
from daemon.manifest import FileState, ManifestIndex, diff
from daemon.quality import FileTable, Quality
from daemon.scanner import FileStat, Rejection, display_path, is_utf8
from daemon.snapshots import KeepResult, SnapshotRetry, Snapshotter
from daemon.sources import Source
from daemon.validation import load_suite
from schemas.config import DatasetConfig, StrandlineConfig
from schemas.events import FileChange, InputRejected

log = logging.getLogger(__name__)

# Above this many changed paths, and above 1/_BULK_SHARE of the dataset, one query for the
# whole current state beats a query per path (~40 us a path, ~4 us a row of the whole state).
_BULK_LOOKUP = 256
_BULK_SHARE = 10


@dataclass
class _View:
    """The dataset as of version ``seq`` (0: none yet): what the next version is computed from."""

    seq: int
    manifest: ManifestIndex
    tables: TableIndex


@dataclass
class Outcome:
    """What one pass produced."""

    version: VersionRow | None = None
    changes: list[FileChange] = field(default_factory=list)
    retry: bool = False  # a file was still being written: run again after the next quiet period
    stored_bytes: int = 0  # new bytes the snapshot put in the content store


class Versioner:
    """Versions one dataset. Not thread-safe: one engine thread drives it."""

    def __init__(
        self,
        catalog: Catalog,
        config: StrandlineConfig,
        dataset: DatasetConfig,
        on_version: Callable[[VersionRow, list[FileChange]], None] | None = None,
        *,
        source: Source,
        snapshotter: Snapshotter | None = None,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.config = config
        self.dataset = dataset
        self.source = source
        self.root = source.location
        self.filter = PathFilter.for_dataset(dataset)
        self.row: DatasetRow = catalog.ensure_dataset(dataset.name, self.root)
        # The suite is loaded (and checked by GX) now, so a bad suite file stops the start.
        self.assessor = Assessor(
            self.root, dataset, load_suite(dataset.suite) if dataset.suite else None, source.table_path
        )
        self.snapshotter = snapshotter  # None: versions are recorded as not restorable (policy none)
        self._on_version = on_version
        # Called as soon as a version is committed (the publisher's wake-up): freeing a pass's
        # objects after it took 20 ms at 20,000 new files, which the event need not wait for.
        self._on_commit = on_commit or (lambda: None)
        self._view: _View | None = None
        self._reported: set[tuple[str, str]] = set()
        self.rejections: Counter[str] = Counter()  # rejected paths by reason (for /metrics)
        self._root_missing = False

    # -- rejections -----------------------------------------------------------------------

    def _reject(self, rej: Rejection) -> None:
        """Log and announce a rejected path, once per path and reason while the daemon lives."""
        shown = display_path(rej.rel)
        if (shown, rej.reason) in self._reported:
            return
        self._reported.add((shown, rej.reason))
        self.rejections[rej.reason] += 1
        log.warning(
            "dataset %s: %s not versioned (%s): %s",
            self.dataset.name,
            shown,
            rej.reason,
            rej.detail,
            extra={"dataset": self.dataset.name},
        )
        event = InputRejected(
            dataset=self.dataset.name,
            path=shown,
            reason=rej.reason,
            detail=rej.detail,
            host=self.config.host,
            detected_at=datetime.now(UTC),
        )
        self.catalog.enqueue([rejection_message(self.config.kafka, self.config.host, event)])

    def report(self, rejections: Iterable[Rejection]) -> None:
        """Announce paths found unusable elsewhere (a listing on the poller's thread)."""
        for rej in rejections:
            self._reject(rej)

    # -- the pass -------------------------------------------------------------------------

    def prepare(self) -> None:
        """Build the view of the latest version now, so that the next version does not pay for it;
        skipped when a table would have to be read (that happens with the next version)."""
        self._current_view(self.catalog.latest_version(self.dataset.name), read=False)

    def _lookup(self) -> LookupTables:
        return lambda keys: self.catalog.file_tables(self.row.id, keys)

    def _current_view(self, latest: VersionRow | None, *, read: bool = True) -> tuple[_View, list[FileTable]] | None:
        """The view of version ``latest`` and the tables read to build it (to be stored with the
        next version); None when it had to be built, ``read`` is False and a table was never read."""
        seq = 0 if latest is None else latest.seq
        view = self._view
        totals = (0, 0) if latest is None else (latest.files, latest.bytes)
        if view is not None and view.seq == seq and (view.manifest.files, view.manifest.bytes) == totals:
            return view, []
        self._view = None
        # Streamed in path order: the whole state is never held as FileStates (~30 MiB at 100,000).
        table_files: dict[str, FileState] = {}

        def entries() -> Iterator[tuple[str, int, str]]:
            for path, st in self.catalog.iter_current(self.row.id):
                if self.assessor.table_format(path) is not None:
                    table_files[path] = st
                yield path, st.size, st.hash

        manifest = ManifestIndex(entries(), ordered=True)
        tables = TableIndex()
        updated = self.assessor.update(tables, table_files, (), self._lookup(), read=read)
        if updated is None:
            return None
        known, fresh = updated
        tables.summary(self._lookup(), known)  # merged now, while every read is at hand
        self._view = view = _View(seq, manifest, tables)
        return view, fresh

    def process(self, dirty: set[str] | None, listed: Mapping[str, FileStat] | None = None) -> Outcome:
        """Version the dataset's current state; ``dirty`` limits the look to those paths.

        ``listed`` has the stat a complete listing just gave some of the dirty paths (bucket
        polls): they are hashed on that stat instead of being looked at again one by one. A read
        is conditional on the listed ETag, so an object changed since is retried, never mixed up.
        """
        try:
            return self._process(dirty, listed or {})
        finally:
            self.source.finish_pass()

    def _process(self, dirty: set[str] | None, listed: Mapping[str, FileStat]) -> Outcome:
        missing = self.source.missing()
        if missing is not None:
            if not self._root_missing:
                self._root_missing = True
                self._reject(Rejection(".", "root_missing", missing))
            return Outcome()
        if self._root_missing:
            log.info("dataset %s: root %s is back", self.dataset.name, self.root)
            self._root_missing = False
            self._reported.discard((".", "root_missing"))
        busy = self.source.busy()
        if busy is not None:
            # A revert must become one version, not the half-restored state in between.
            log.info(
                "dataset %s: %s; versioning once it is done",
                self.dataset.name,
                busy,
                extra={"dataset": self.dataset.name},
            )
            return Outcome(retry=True)
        marker_stat: str | None = None
        if self.dataset.commit_marker is not None:
            marker_stat = self.source.marker_stat(self.dataset.commit_marker)
            if marker_stat is None or marker_stat == self.catalog.dataset(self.dataset.name).marker_stat:
                return Outcome()  # no new commit marker: the writer has not finished
            dirty = None  # a job that writes a marker may rewrite anything: look at all of it

        if dirty is None:
            found = dict(self.source.walk(self.filter, self._reject))
            known = self.catalog.current_states(self.row.id)
            removed = [p for p in known if p not in found]
        else:
            found, absent = self.source.stat_paths([p for p in dirty if p not in listed], self.filter, self._reject)
            found.update((p, st) for p, st in listed.items() if p in dirty)
            bulk = len(dirty) > _BULK_LOOKUP and (
                self._view is None or len(dirty) * _BULK_SHARE > self._view.manifest.files
            )
            # Undecodable names were rejected above and can never be in the catalog.
            known = self.catalog.current_states(self.row.id, None if bulk else filter(is_utf8, dirty))
            # A folder named in ``dirty`` is listed without its files' stats (Source.stat_paths).
            self._stat_known(found, known, absent)
            removed = [p for p in known if p not in found and _under_any(p, absent)]

        outcome = Outcome()
        fresh: dict[str, FileState] = {}
        stat_only: dict[str, FileState] = {}
        racy_limit = time.time_ns() - self.source.racy_ns
        for rel, fs in found.items():
            before = known.get(rel)
            if before is not None and before.stat_matches(*fs):
                continue
            state = self._hash(rel, fs, outcome)
            if state is None:
                if before is not None:
                    found[rel] = FileStat(before.size, before.mtime_ns, before.inode, before.etag)
                continue
            if self.source.racy_ns and state.mtime_ns > racy_limit:
                state = FileState(state.size, state.hash, 0, state.inode, state.etag)
            if before is not None and (before.size, before.hash) == (state.size, state.hash):
                stat_only[rel] = state
            else:
                fresh[rel] = state

        changes = diff({p: known[p] for p in fresh if p in known} | {p: known[p] for p in removed}, fresh)
        self.catalog.update_stats(self.row.id, stat_only)
        if self._view is not None:
            self._view.tables.restat(stat_only)
        if not changes:
            if marker_stat is not None:
                self.catalog.set_marker_stat(self.row.id, marker_stat)
            return outcome
        # The parent's schema only: its stored profile can be megabytes of sketches.
        latest = self.catalog.latest_version(self.dataset.name)
        parent = self.catalog.version_schema(self.row.id, latest.seq) if latest else None
        try:
            built = self._current_view(latest)
            assert built is not None  # it reads what it must
            view, tables = built
            updated = self.assessor.update(
                view.tables, fresh, [c.path for c in changes if c.change == "removed"], self._lookup()
            )
            assert updated is not None
            known_tables, read_now = updated
            tables += read_now
            quality = self.assessor.judge(
                view.tables, {c.path for c in changes if c.change != "removed"}, self._lookup(), parent, known_tables
            )
            view.manifest.apply(changes)
            # The bytes go to the store before the version and its event are recorded, and gc
            # waits (the shared lock) until the version that needs them is committed.
            with self._store_lock():
                kept, durable = self._keep(fresh, removed, latest)
                try:
                    row = self._commit(view, changes, fresh, quality, tables, marker_stat, kept, durable)
                except StoreError as exc:  # from ``durable`` alone: the batch's closing sync failed
                    assert self.snapshotter is not None  # only a snapshot waits for the store
                    kept = self.snapshotter.failed(f"the content store could not sync ({exc})")
                    row = self._commit(view, changes, fresh, quality, tables, marker_stat, kept, None)
        except (SnapshotRetry, ChangedWhileProfilingError) as exc:
            # A file moved on while it was stored or profiled: the view holds some of this
            # pass's changes, so it is built again from the catalog, and the pass retried.
            self._view = None
            what = "changed while being profiled" if isinstance(exc, ChangedWhileProfilingError) else ""
            log.info(
                "dataset %s: %s%s; versioning after it settles",
                self.dataset.name,
                exc,
                f" {what}" if what else "",
                extra={"dataset": self.dataset.name},
            )
            outcome.retry = True
            return outcome
        except BaseException:
            self._view = None
            raise
        self._on_commit()
        view.seq = row.seq
        outcome.version, outcome.changes = row, changes
        outcome.stored_bytes = kept.stored_bytes
        log.info(
            "dataset %s: version %d created (+%d ~%d -%d, %d files, %d bytes, id %s, %s)",
            row.dataset,
            row.seq,
            row.added,
            row.modified,
            row.removed,
            row.files,
            row.bytes,
            row.version_id,
            quality.status,
            extra={"dataset": row.dataset, "version": row.seq, "status": quality.status},
        )
        if quality.status in ("invalid", "unreadable"):
            log.warning(
                "dataset %s: version %d is %s: %s",
                row.dataset,
                row.seq,
                quality.status,
                quality.reason,
                extra={"dataset": row.dataset, "version": row.seq, "status": quality.status},
            )
        if self._on_version is not None:
            self._on_version(row, changes)
        return outcome

    def _store_lock(self) -> AbstractContextManager[None]:
        return self.snapshotter.lock.shared() if self.snapshotter is not None else nullcontext()

    def _commit(
        self,
        view: _View,
        changes: list[FileChange],
        fresh: dict[str, FileState],
        quality: Quality,
        tables: list[FileTable],
        marker_stat: str | None,
        kept: KeepResult,
        before_commit: Callable[[], None] | None,
    ) -> VersionRow:
        return self.catalog.commit_version(
            self.row,
            view.manifest.version_id(),
            changes,
            fresh,
            (view.manifest.files, view.manifest.bytes),
            lambda r: version_messages(self.config.kafka, self.config.host, self.root, r, changes, quality),
            marker_stat=marker_stat,
            quality=quality,
            tables=tables,
            snapshot=kept.snapshot,
            before_commit=before_commit,
        )

    def _keep(
        self, fresh: dict[str, FileState], removed: Iterable[str], parent: VersionRow | None
    ) -> tuple[KeepResult, Callable[[], None] | None]:
        """Snapshot the version: its new files, or all of them when the parent is not restorable.

        The store makes them durable in the background: the commit calls the function returned
        with the result, which returns once they are (``StoreError`` when they cannot be).
        """
        if self.snapshotter is None or self.snapshotter.wanted == "none":
            return KeepResult(Snapshot("none", False, None)), None
        needed = fresh
        if parent is None or not parent.restorable:
            # Nothing vouches for the unchanged files (first version, a full disk last time, a
            # policy that was none): whatever of the whole version is missing is stored now.
            needed = self.catalog.current_states(self.row.id)
            for path in removed:
                needed.pop(path, None)
            needed.update(fresh)
        with self.snapshotter.batch() as sealing:
            kept = self.snapshotter.keep(needed)
        # A version recorded as not restorable does not wait for the store; the rest is kept anyway.
        return kept, sealing.wait if kept.snapshot.restorable else None

    def _stat_known(self, found: dict[str, FileStat], known: Mapping[str, FileState], absent: set[str]) -> None:
        """Stat the files listed without one (``UNSTATED``) that the catalog knows: their stat
        may prove them unchanged. A file gone since the listing joins ``absent``."""
        unstated = [p for p, fs in found.items() if fs.size < 0 and p in known]
        if not unstated:
            return
        stated, gone = self.source.stat_paths(unstated, self.filter, self._reject)
        for rel in unstated:
            if rel not in stated:
                del found[rel]
        found.update(stated)  # a folder now in a file's place is walked: its files too
        absent |= gone

    def _hash(self, rel: str, fs: FileStat, outcome: Outcome) -> FileState | None:
        """The file's fresh state; None when it vanished, cannot be read, or is still changing."""
        try:
            result = self.source.fingerprint(rel, fs, keep=self.assessor.table_format(rel) is not None)
        except ChangedWhileReadingError:
            outcome.retry = True
            return None
        if isinstance(result, Rejection):
            self._reject(result)
            return None
        return result


def _under_any(path: str, prefixes: set[str]) -> bool:
    if path in prefixes:
        return True
    parts = path.split("/")
    return any("/".join(parts[:i]) in prefixes for i in range(1, len(parts)))
