"""The settle loop: coalesce filesystem events per dataset until it is quiet, then version it.

Watchdog's thread calls ``note_path``/``note_overflow``; the engine's own thread waits for
the earliest deadline (a dataset's quiet period ending, or the periodic reconcile) and runs
its Versioner. A dataset is quiet when no event came for its settle window and no file is
still open for writing (no close-write seen yet), the latter bounded by ``max_open_seconds``.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from daemon.catalog import Catalog, VersionRow
from daemon.errors import StrandlineError
from daemon.versioner import Versioner
from daemon.watcher import Kind
from schemas.config import DatasetConfig, StrandlineConfig
from schemas.events import FileChange

log = logging.getLogger(__name__)

_ERROR_RETRY_SECONDS = 5.0
# How often the loop checks that the watcher is alive and every root is watched.
_WATCH_CHECK_SECONDS = 2.0


def _below_any(rel: str, folders: set[str]) -> bool:
    """True when a parent folder of ``rel`` is in ``folders``."""
    cut = rel.rfind("/")
    while cut > 0:
        rel = rel[:cut]
        if rel in folders:
            return True
        cut = rel.rfind("/")
    return False


@dataclass
class _Pending:
    paths: set[str] = field(default_factory=set)
    full: bool = False
    first_event: float = 0.0
    last_event: float = 0.0
    open: set[str] = field(default_factory=set)

    @property
    def any(self) -> bool:
        return self.full or bool(self.paths)


@dataclass
class _Dataset:
    config: DatasetConfig
    versioner: Versioner
    root: str
    settle: float
    pending: _Pending = field(default_factory=_Pending)


class Engine:
    """Routes paths to datasets and versions each dataset once its change-set is quiet."""

    def __init__(
        self,
        catalog: Catalog,
        config: StrandlineConfig,
        datasets: list[DatasetConfig],
        *,
        on_version: Callable[[VersionRow, list[FileChange]], None] | None = None,
        on_commit: Callable[[], None] | None = None,
        discover: Callable[[], list[DatasetConfig]] | None = None,
        auto_root: str | None = None,
    ) -> None:
        self.catalog = catalog
        self.config = config
        self._on_version = on_version
        self._on_commit = on_commit or (lambda: None)
        self._discover = discover
        self._auto_root = os.path.abspath(auto_root) if auto_root else None
        self._cond = threading.Condition()
        self._datasets: dict[str, _Dataset] = {}
        self._routes: list[tuple[str, _Dataset]] = []
        self._rediscover = False
        self._in_flight: set[str] = set()
        self.overflows = 0
        self.versions_created = 0
        self.passes = 0  # versioning passes run (one per quiet change-set or reconcile)
        for ds in datasets:
            self._add(ds)

    # -- datasets and routing -----------------------------------------------------------

    def _add(self, ds: DatasetConfig) -> None:
        versioner = Versioner(self.catalog, self.config, ds, on_version=self._on_version)
        entry = _Dataset(
            ds,
            versioner,
            versioner.root,
            ds.settle_seconds if ds.settle_seconds is not None else self.config.settle_seconds,
        )
        with self._cond:
            self._datasets[ds.name] = entry
            self._routes = sorted(((d.root, d) for d in self._datasets.values()), key=lambda r: len(r[0]), reverse=True)
        log.info("watching dataset %s at %s", ds.name, entry.root, extra={"dataset": ds.name})

    @property
    def dataset_names(self) -> list[str]:
        return sorted(self._datasets)

    def watch_roots(self) -> dict[str, bool]:
        """The fewest roots (path → recursive) whose watches cover every dataset."""
        if self._auto_root is not None:
            return {self._auto_root: True}
        roots: dict[str, bool] = {}
        for d in sorted(self._datasets.values(), key=lambda d: len(d.root)):
            covered = any(d.root.startswith(r + os.sep) and rec for r, rec in roots.items())
            if not covered:
                roots[d.root] = roots.get(d.root, False) or d.config.recursive
        return roots

    def _route(self, path: str) -> tuple[_Dataset, str] | None:
        for root, d in self._routes:
            if path.startswith(root + os.sep):
                rel = path[len(root) + 1 :]
                if not d.config.recursive and os.sep in rel:
                    continue
                return d, rel
            if path == root:
                return d, ""
        return None

    # -- called from the watcher's thread -----------------------------------------------

    def note_path(self, path: str, kind: Kind) -> None:
        if (
            self._auto_root is not None
            and kind == "dir"
            and os.path.dirname(path) == self._auto_root
            and os.path.basename(path) not in self._datasets
        ):
            with self._cond:
                self._rediscover = True
                self._cond.notify()
            return
        routed = self._route(path)
        if routed is None:
            return
        d, rel = routed
        filt = d.versioner.filter
        if rel == "":
            if kind == "gone":
                self._request_full(d, immediate=False)
            return
        if kind in ("write", "done", "created", "touch"):
            if not (filt.wants_file(rel) or filt.is_marker(rel)):
                return
        elif not (filt.wants_file(rel) or filt.wants_dir(rel) or filt.is_marker(rel)):
            return
        now = time.monotonic()
        with self._cond:
            p = d.pending
            if not p.any:
                p.first_event = now
            p.last_event = now
            # A folder (or everything) already due for a walk covers the files below it: a
            # folder of 20,000 files being written costs one walk, not 20,000 extra stats.
            if not (p.full or _below_any(rel, p.paths)):
                p.paths.add(rel)
            if kind == "write":
                p.open.add(rel)
            elif kind in ("done", "gone"):
                p.open.discard(rel)
            self._cond.notify()

    def note_overflow(self, root: str) -> None:
        """The kernel dropped events below ``root``: reconcile what it covers once quiet."""
        self.overflows += 1
        log.warning("watcher overflowed below %s; events were lost, re-scanning the datasets there", root)
        self._rescan_below(root, immediate=False)

    def _rescan_below(self, root: str, *, immediate: bool) -> None:
        for d in list(self._datasets.values()):
            if d.root == root or d.root.startswith(root + os.sep) or root.startswith(d.root + os.sep):
                with self._cond:
                    d.pending.open.clear()
                self._request_full(d, immediate=immediate)

    # -- scheduling -------------------------------------------------------------------------

    def _request_full(self, d: _Dataset, *, immediate: bool) -> None:
        now = time.monotonic()
        with self._cond:
            p = d.pending
            if not p.any:
                p.first_event = now
                p.last_event = -1e9 if immediate else now
            elif not immediate:
                p.last_event = now
            p.full = True
            self._cond.notify()

    def request_reconcile(self) -> None:
        """Compare every dataset with its root now (start-up catch-up, periodic, or on demand)."""
        for d in list(self._datasets.values()):
            self._request_full(d, immediate=True)

    def _deadline(self, d: _Dataset) -> float | None:
        p = d.pending
        if not p.any:
            return None
        deadline = p.last_event + d.settle
        if p.open:
            deadline = max(deadline, p.first_event + self.config.max_open_seconds)
        return deadline

    def _take_due(self, now: float) -> tuple[list[tuple[_Dataset, set[str] | None]], float | None]:
        due: list[tuple[_Dataset, set[str] | None]] = []
        next_deadline: float | None = None
        with self._cond:
            for d in self._datasets.values():
                deadline = self._deadline(d)
                if deadline is None:
                    continue
                if deadline <= now:
                    p = d.pending
                    due.append((d, None if p.full else set(p.paths)))
                    self._in_flight.add(d.config.name)
                    # Files still open stay tracked, unless their allowance just ran out.
                    expired = p.open and now >= p.first_event + self.config.max_open_seconds
                    d.pending = _Pending(open=set() if expired else p.open)
                elif next_deadline is None or deadline < next_deadline:
                    next_deadline = deadline
        return due, next_deadline

    def _process(self, d: _Dataset, dirty: set[str] | None) -> None:
        self.passes += 1
        try:
            outcome = d.versioner.process(dirty)
        except (StrandlineError, OSError, sqlite3.Error) as exc:
            log.error(
                "dataset %s: cannot version now (%s); retrying in %.0f s",
                d.config.name,
                exc,
                _ERROR_RETRY_SECONDS,
                extra={"dataset": d.config.name},
            )
            self._requeue(d, dirty, delay=_ERROR_RETRY_SECONDS)
            return
        except Exception:
            # A bug must cost one dataset a retry, never the daemon: log it whole and go on.
            log.exception(
                "dataset %s: unexpected error while versioning; retrying in %.0f s",
                d.config.name,
                _ERROR_RETRY_SECONDS,
                extra={"dataset": d.config.name},
            )
            self._requeue(d, dirty, delay=_ERROR_RETRY_SECONDS)
            return
        if outcome.version is not None:
            self.versions_created += 1
        self._on_commit()
        if outcome.retry:
            self._requeue(d, dirty, delay=0.0)

    def _requeue(self, d: _Dataset, dirty: set[str] | None, delay: float) -> None:
        now = time.monotonic()
        with self._cond:
            p = d.pending
            if not p.any:
                p.first_event = now
            p.last_event = max(p.last_event, now + delay)
            if dirty is None:
                p.full = True
            else:
                p.paths |= dirty

    def process_due(self, *, ignore_settle: bool = False) -> float | None:
        """Version every dataset whose change-set is quiet; return the next deadline."""
        now = float("inf") if ignore_settle else time.monotonic()
        due, next_deadline = self._take_due(now)
        for d, dirty in due:
            try:
                self._process(d, dirty)
            finally:
                with self._cond:
                    self._in_flight.discard(d.config.name)
        return next_deadline

    def settled(self, name: str) -> bool:
        """True when every event noted for dataset ``name`` so far has been acted on."""
        with self._cond:
            d = self._datasets.get(name)
            return d is not None and not d.pending.any and name not in self._in_flight

    def _maybe_discover(self) -> None:
        with self._cond:
            wanted, self._rediscover = self._rediscover, False
        if not wanted or self._discover is None:
            return
        for ds in self._discover():
            if ds.name not in self._datasets:
                self._add(ds)
                self._request_full(self._datasets[ds.name], immediate=False)

    def run(self, stop: threading.Event, *, check_watch: Callable[[], list[str]] | None = None) -> None:
        """Loop until ``stop`` is set: version quiet datasets, reconcile periodically.

        ``check_watch`` makes sure every root is watched by a live watcher and returns the roots
        it (re)started watching: events there may have been missed, so they are re-scanned.
        """
        interval = self.config.reconcile_interval_seconds
        next_reconcile = time.monotonic() + interval if interval > 0 else float("inf")
        next_check = time.monotonic() + _WATCH_CHECK_SECONDS
        self.request_reconcile()
        while not stop.is_set():
            self._maybe_discover()
            self.process_due()
            now = time.monotonic()
            if check_watch is not None and now >= next_check:
                for root in check_watch():
                    self._rescan_below(root, immediate=True)
                next_check = now + _WATCH_CHECK_SECONDS
            if now >= next_reconcile:
                with self._cond:
                    self._rediscover = True
                self._maybe_discover()
                self.request_reconcile()
                next_reconcile = now + interval
                continue
            with self._cond:
                if stop.is_set() or self._rediscover:
                    continue
                # Recomputed under the lock: an event may have arrived since _take_due.
                deadlines = [dl for d in self._datasets.values() if (dl := self._deadline(d)) is not None]
                timeout = min([next_reconcile, next_check if check_watch else math.inf, *deadlines]) - time.monotonic()
                if timeout > 0:
                    self._cond.wait(timeout=min(timeout, 5.0))

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()
