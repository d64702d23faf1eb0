"""Turning the state of one dataset's files into a version: stat, hash what changed, diff, commit.

Given the paths that changed (or ``None`` for a full reconcile) it re-reads only files whose
(size, mtime_ns, inode) differ from the stat cache, and commits a version with its events
in one catalog transaction when the manifest really changed.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime

from daemon.assess import Assessor, ChangedWhileProfilingError
from daemon.catalog import Catalog, DatasetRow, Snapshot, VersionRow
from daemon.content_store import StoreError
from daemon.events import rejection_message, version_messages
from daemon.filters import PathFilter
from daemon.fingerprint import ChangedWhileReadingError
from daemon.manifest import FileState, diff, version_id
from daemon.scanner import FileStat, Rejection, display_path, is_utf8
from daemon.snapshots import KeepResult, SnapshotRetry, Snapshotter
from daemon.sources import Source
from daemon.validation import load_suite
from schemas.config import DatasetConfig, StrandlineConfig
from schemas.events import FileChange, InputRejected

log = logging.getLogger(__name__)

# Above this many changed paths one query for the whole current state beats a query per path.
_BULK_LOOKUP = 256


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

    # -- the pass -------------------------------------------------------------------------

    def process(self, dirty: set[str] | None) -> Outcome:
        """Version the dataset's current state; ``dirty`` limits the look to those paths."""
        try:
            return self._process(dirty)
        finally:
            self.source.finish_pass()

    def _process(self, dirty: set[str] | None) -> Outcome:
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
        busy = self.source.busy(self.config.max_open_seconds)
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
            found, absent = self.source.stat_paths(dirty, self.filter, self._reject)
            bulk = len(dirty) > _BULK_LOOKUP
            # Undecodable names were rejected above and can never be in the catalog.
            known = self.catalog.current_states(self.row.id, None if bulk else filter(is_utf8, dirty))
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
        if not changes:
            if marker_stat is not None:
                self.catalog.set_marker_stat(self.row.id, marker_stat)
            return outcome
        current = self.catalog.current_states(self.row.id)
        for path in removed:
            current.pop(path, None)
        current.update(fresh)
        totals = (len(current), sum(st.size for st in current.values()))
        vid = version_id(current)
        # The parent's schema only: its stored profile can be megabytes of sketches.
        latest = self.catalog.latest_version(self.dataset.name)
        parent = self.catalog.version_schema(self.row.id, latest.seq) if latest else None
        try:
            quality, tables = self.assessor.assess(
                current,
                {c.path for c in changes if c.change != "removed"},
                lambda keys: self.catalog.file_tables(self.row.id, keys),
                parent,
            )
        except ChangedWhileProfilingError as exc:
            log.info(
                "dataset %s: %s changed while being profiled; versioning after it settles",
                self.dataset.name,
                exc,
                extra={"dataset": self.dataset.name},
            )
            outcome.retry = True
            return outcome
        # The bytes go to the store before the version and its event are recorded, and gc waits
        # (the shared lock) until the version that needs them is committed.
        with self._store_lock():
            try:
                kept = self._keep(current, fresh, latest)
            except SnapshotRetry as exc:
                log.info(
                    "dataset %s: %s; versioning after it settles",
                    self.dataset.name,
                    exc,
                    extra={"dataset": self.dataset.name},
                )
                outcome.retry = True
                return outcome
            row = self.catalog.commit_version(
                self.row,
                vid,
                changes,
                fresh,
                totals,
                lambda r: version_messages(self.config.kafka, self.config.host, self.root, r, changes, quality),
                marker_stat=marker_stat,
                quality=quality,
                tables=tables,
                snapshot=kept.snapshot,
            )
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

    def _keep(
        self, current: dict[str, FileState], fresh: dict[str, FileState], parent: VersionRow | None
    ) -> KeepResult:
        """Snapshot the version: its new files, or all of them when the parent is not restorable."""
        if self.snapshotter is None or self.snapshotter.wanted == "none":
            return KeepResult(Snapshot("none", False, None))
        # A restorable parent vouches for every unchanged file; otherwise (first version, a full
        # disk last time, a policy that was none) what is missing is stored now.
        needed = fresh if parent is not None and parent.restorable else current
        try:
            with self.snapshotter.batch():
                return self.snapshotter.keep(needed)
        except StoreError as exc:  # the batch's closing sync failed: nothing is known durable
            return self.snapshotter.failed(f"the content store could not sync ({exc})")

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
