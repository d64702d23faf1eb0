"""The settle loop: coalesce filesystem events per dataset until it is quiet, then version it.

Watchdog's thread calls ``note_path``/``note_overflow``; the engine's own thread waits for
the earliest deadline (a dataset's quiet period ending, or the periodic reconcile) and runs
its Versioner. A dataset is quiet when no event came for its settle window and no file is
still open for writing (no close-write seen yet), the latter bounded by ``max_open_seconds``.

With a ``lister`` (the daemon's bucket poller), the reconciles of bucket datasets are listed on
the poller's thread and handed back (``note_listed``): the engine's thread never waits for a
listing, so other changes are versioned while a big prefix is listed (issue 5).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from daemon.catalog import Catalog, VersionRow
from daemon.config import state_dir
from daemon.errors import ConfigError, StrandlineError
from daemon.metrics import EngineMetrics
from daemon.scanner import FileStat, Rejection
from daemon.sdnotify import Heartbeat
from daemon.snapshots import Snapshotter
from daemon.sources import open_source
from daemon.store_open import StoreSite, store_site
from daemon.versioner import Versioner
from daemon.watcher import Kind
from schemas.config import DatasetConfig, StrandlineConfig
from schemas.events import FileChange

log = logging.getLogger(__name__)

# A dataset whose pass failed (bucket unreachable, disk error) is retried after this, doubling
# up to the cap while it keeps failing.
_ERROR_RETRY_SECONDS = 5.0
_ERROR_RETRY_MAX_SECONDS = 60.0
# The loop counts as stalled (systemd's watchdog stops, /healthz fails) when it has not come round
# for this long. A pass hashing a huge change-set blocks the loop, so this is generous.
STALL_SECONDS = 900.0
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
    listed: dict[str, FileStat] = field(default_factory=dict)  # stats a listing gave some of ``paths``
    rejections: list[Rejection] = field(default_factory=list)  # found by a listing, to report
    reconcile: bool = False  # ``paths`` hold every difference a complete listing found

    @property
    def any(self) -> bool:
        return self.full or bool(self.paths) or self.reconcile or bool(self.rejections)

    def touch(self, now: float, quiet_from: float | None = None) -> None:
        """Something is due: it starts the change-set if none is pending, and its quiet period
        runs from ``quiet_from`` (default: now) unless it already runs from later."""
        if not self.any:
            self.first_event = now
            self.last_event = now if quiet_from is None else quiet_from
        else:
            self.last_event = max(self.last_event, now if quiet_from is None else quiet_from)


@dataclass
class _Dataset:
    config: DatasetConfig
    versioner: Versioner
    root: str
    settle: float
    pending: _Pending = field(default_factory=_Pending)
    failures: int = 0  # consecutive failed passes
    last_error: str | None = None  # why the last pass failed; None once one succeeds
    rescanning: bool = False  # events were lost (watcher overflow) and the re-scan has not run yet


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
        self._lister: Callable[[str], bool] | None = None
        self._cond = threading.Condition()
        self._datasets: dict[str, _Dataset] = {}
        self._routes: list[tuple[str, _Dataset]] = []
        self._rediscover = False
        self._woken = False
        self._in_flight: set[str] = set()
        self.overflows = 0
        self.versions_created = 0
        self.passes = 0  # versioning passes run (one per quiet change-set or reconcile)
        self.heartbeat = Heartbeat()  # beaten each time the loop comes round (systemd's watchdog)
        self.metrics = EngineMetrics()
        self._store_sites: dict[str, StoreSite] = {}
        for ds in datasets:
            self._add(ds)

    # -- datasets and routing -----------------------------------------------------------

    def _store_site(self) -> StoreSite:
        """The content store's site, one per location for all datasets (they share the opened store)."""
        site = store_site(self.config)
        return self._store_sites.setdefault(site.location, site)

    def _build(self, ds: DatasetConfig) -> _Dataset:
        spool = str(state_dir(self.config) / "spool" / ds.name)
        source = open_source(ds.root, spool_dir=spool, settings=self.config.store_settings(ds.root))
        snapshotter = None
        if ds.snapshot != "none":
            snapshotter = Snapshotter(self._store_site(), ds.name, ds.snapshot, source)
        versioner = Versioner(
            self.catalog,
            self.config,
            ds,
            on_version=self._on_version,
            source=source,
            snapshotter=snapshotter,
            on_commit=self._on_commit,
        )
        return _Dataset(
            ds,
            versioner,
            versioner.root,
            ds.settle_seconds if ds.settle_seconds is not None else self.config.settle_seconds,
        )

    def _add(self, ds: DatasetConfig, entry: _Dataset | None = None) -> None:
        entry = entry or self._build(ds)
        with self._cond:
            self._datasets[ds.name] = entry
            self._reroute()
        log.info("watching dataset %s at %s", ds.name, entry.root, extra={"dataset": ds.name})

    def _reroute(self) -> None:
        local = [d for d in self._datasets.values() if not d.config.is_bucket]
        self._routes = sorted(((d.root, d) for d in local), key=lambda r: len(r[0]), reverse=True)

    def replace_datasets(self, datasets: list[DatasetConfig]) -> tuple[list[str], list[str], list[str]]:
        """Make the watched datasets ``datasets`` (a reloaded config): (added, removed, changed) names.

        Call from the engine's thread. A changed dataset starts afresh with a full pass, so nothing
        seen under the old settings is lost; a dataset whose new settings fail (a bad suite) keeps
        running as it was, and the error is raised after the others were applied.
        """
        wanted = {ds.name: ds for ds in datasets}
        added: list[str] = []
        removed: list[str] = []
        changed: list[str] = []
        failures: list[str] = []
        for name in list(self._datasets):
            if name not in wanted:
                with self._cond:
                    del self._datasets[name]
                    self._reroute()
                removed.append(name)
                log.info("dataset %s is no longer watched", name, extra={"dataset": name})
        for name, ds in wanted.items():
            current = self._datasets.get(name)
            if current is not None and current.config == ds:
                continue
            try:
                entry = self._build(ds)
            except StrandlineError as exc:
                failures.append(f"{name}: {exc}")
                continue
            (changed if current is not None else added).append(name)
            self._add(ds, entry)
            self._request_full(entry, immediate=True)
        if failures:
            raise ConfigError("kept the previous settings of " + "; ".join(failures))
        return added, removed, changed

    @property
    def dataset_names(self) -> list[str]:
        return sorted(self._datasets)

    @property
    def problems(self) -> dict[str, str]:
        """Datasets whose last pass failed, and why."""
        return {name: d.last_error for name, d in list(self._datasets.items()) if d.last_error is not None}

    @property
    def rescanning(self) -> list[str]:
        """Datasets that lost events to a watcher overflow and wait for their re-scan."""
        return sorted(name for name, d in list(self._datasets.items()) if d.rescanning)

    def dataset_configs(self) -> list[DatasetConfig]:
        """The settings each watched dataset runs with, by name."""
        return [self._datasets[name].config for name in sorted(self._datasets)]

    def watch_roots(self) -> dict[str, bool]:
        """The fewest roots (path → recursive) whose watches cover every dataset."""
        if self._auto_root is not None:
            return {self._auto_root: True}
        roots: dict[str, bool] = {}
        for d in sorted(self._datasets.values(), key=lambda d: len(d.root)):
            if d.config.is_bucket:
                continue
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
            p.touch(now)
            # A folder (or everything) already due for a walk covers the files below it: a
            # folder of 20,000 files being written costs one walk, not 20,000 extra stats.
            if not (p.full or _below_any(rel, p.paths)):
                p.paths.add(rel)
            if kind == "write":
                p.open.add(rel)
            elif kind in ("done", "gone"):
                p.open.discard(rel)
            self._cond.notify()

    def note_rels(self, name: str, rels: set[str]) -> None:
        """Paths of dataset ``name`` that changed (from a bucket notification): version them once quiet."""
        d = self._datasets.get(name)
        if d is None or not rels:
            return
        now = time.monotonic()
        with self._cond:
            p = d.pending
            p.touch(now)
            if not p.full:
                p.paths |= rels
                for rel in rels:
                    p.listed.pop(rel, None)  # news after the listing: look at the object again
            self._cond.notify()

    def note_listed(
        self,
        name: str,
        changed: Mapping[str, FileStat | None],
        *,
        rejections: Sequence[Rejection] = (),
        complete: bool = False,
    ) -> None:
        """What a listing of bucket dataset ``name`` found: keys that differ from the catalog with
        their listed stat (None: no longer listed) and unsafe keys; version them once quiet.
        ``complete``: a reconcile, so a pass runs (and counts as one) even if nothing differs."""
        d = self._datasets.get(name)
        if d is None or not (changed or rejections or complete):
            return
        now = time.monotonic()
        with self._cond:
            p = d.pending
            p.touch(now)
            p.rejections.extend(rejections)
            p.reconcile = p.reconcile or complete
            if not p.full:
                for rel, st in changed.items():
                    if st is None:
                        p.listed.pop(rel, None)
                    elif rel not in p.paths or rel in p.listed:
                        p.listed[rel] = st
                    # else: noted by a notification since the last pass, which may be newer than
                    # this listing: the object is looked at again, never taken as listed.
                    p.paths.add(rel)
            self._cond.notify()

    def set_lister(self, lister: Callable[[str], bool] | None) -> None:
        """Have bucket datasets' reconciles listed elsewhere: ``lister(name)`` starts a listing whose
        findings come back through ``note_listed``, and returns False when it cannot list ``name``.
        Datasets with a commit marker keep their full passes (a marker must be seen before the listing)."""
        self._lister = lister

    def request_full(self, name: str) -> None:
        """Look at all of dataset ``name`` once quiet (a notification that names no key)."""
        d = self._datasets.get(name)
        if d is not None:
            self._request_full(d, immediate=False)

    def pending(self, name: str) -> set[str]:
        """Paths of ``name`` waiting for their quiet period (a copy)."""
        with self._cond:
            d = self._datasets.get(name)
            return set() if d is None else set(d.pending.paths)

    def note_overflow(self, root: str) -> None:
        """The kernel dropped events below ``root``: reconcile what it covers once quiet."""
        self.overflows += 1
        log.warning("watcher overflowed below %s; events were lost, re-scanning the datasets there", root)
        for d in self._overlapping(root):
            d.rescanning = True
        self._rescan_below(root, immediate=False)

    def _overlapping(self, root: str) -> list[_Dataset]:
        """Local datasets whose root is ``root``, below it, or holds it."""
        return [
            d
            for d in list(self._datasets.values())
            if d.root == root or d.root.startswith(root + os.sep) or root.startswith(d.root + os.sep)
        ]

    def _rescan_below(self, root: str, *, immediate: bool) -> None:
        for d in self._overlapping(root):
            with self._cond:
                d.pending.open.clear()
            self._request_full(d, immediate=immediate)

    # -- scheduling -------------------------------------------------------------------------

    def _request_full(self, d: _Dataset, *, immediate: bool) -> None:
        lister = self._lister
        if lister is not None and d.config.is_bucket and d.config.commit_marker is None and lister(d.config.name):
            return
        now = time.monotonic()
        with self._cond:
            p = d.pending
            if immediate:
                # Due at once: an already pending change-set keeps its own quiet period.
                if not p.any:
                    p.touch(now, quiet_from=-1e9)
            else:
                p.touch(now)
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

    def _take_due(self, now: float) -> tuple[list[tuple[_Dataset, _Pending]], float | None]:
        due: list[tuple[_Dataset, _Pending]] = []
        next_deadline: float | None = None
        with self._cond:
            for d in self._datasets.values():
                deadline = self._deadline(d)
                if deadline is None:
                    continue
                if deadline <= now:
                    p = d.pending
                    due.append((d, p))
                    self._in_flight.add(d.config.name)
                    # Files still open stay tracked, unless their allowance just ran out.
                    expired = p.open and now >= p.first_event + self.config.max_open_seconds
                    d.pending = _Pending(open=set() if expired else p.open)
                elif next_deadline is None or deadline < next_deadline:
                    next_deadline = deadline
        return due, next_deadline

    def _process(self, d: _Dataset, taken: _Pending) -> None:
        # A pass makes tens of thousands of objects that live until it ends (stats, states,
        # changes, rows): the cyclic collector's full collections walked them 2-3 times a pass
        # of 20,000 new files (40 ms each here) and found nothing, as reference counting frees
        # them. It waits for the end of the pass; cycles made meanwhile are collected after.
        paused = gc.isenabled()
        gc.disable()
        try:
            self._process_paused(d, taken)
        finally:
            if paused:
                gc.enable()

    def _process_paused(self, d: _Dataset, taken: _Pending) -> None:
        self.passes += 1
        name = d.config.name
        dirty = None if taken.full else taken.paths
        started = time.monotonic()
        try:
            d.versioner.report(taken.rejections)
            outcome = d.versioner.process(dirty, taken.listed)
        except (StrandlineError, OSError, sqlite3.Error) as exc:
            self.metrics.errors[type(exc).__name__] += 1
            delay = self._failed(d, str(exc))
            log.error(
                "dataset %s: cannot version now (%s); retrying in %.0f s",
                name,
                exc,
                delay,
                extra={"dataset": name},
            )
            self._requeue(d, taken, delay=delay)
            return
        except Exception as exc:
            # A bug must cost one dataset a retry, never the daemon: log it whole and go on.
            self.metrics.errors[type(exc).__name__] += 1
            delay = self._failed(d, f"unexpected error: {type(exc).__name__}")
            log.exception(
                "dataset %s: unexpected error while versioning; retrying in %.0f s",
                name,
                delay,
                extra={"dataset": name},
            )
            self._requeue(d, taken, delay=delay)
            return
        if d.failures:
            log.info("dataset %s: versioning works again", name, extra={"dataset": name})
            d.failures = 0
            d.last_error = None
        finished = time.monotonic()
        if dirty is None or taken.reconcile:
            self.metrics.reconcile_seconds.observe(finished - started)
            d.rescanning = False
        if outcome.version is not None:
            self.versions_created += 1
            # From the first change noticed to the version recorded (settle window included).
            self.metrics.detection_seconds.observe(max(0.0, finished - taken.first_event))
        self._on_commit()
        if outcome.retry:
            self._requeue(d, taken, delay=0.0)

    def _failed(self, d: _Dataset, reason: str) -> float:
        """Record a failed pass; the delay before the next try."""
        d.failures += 1
        d.last_error = reason
        return min(_ERROR_RETRY_SECONDS * 2.0 ** min(d.failures - 1, 8), _ERROR_RETRY_MAX_SECONDS)

    def _requeue(self, d: _Dataset, taken: _Pending, delay: float) -> None:
        """Run the pass ``taken`` again after ``delay``; its listed stats are dropped (the
        objects are looked at again) and its rejections kept (each is reported once anyway)."""
        now = time.monotonic()
        with self._cond:
            p = d.pending
            p.touch(now, quiet_from=now + delay)
            p.rejections.extend(taken.rejections)
            p.reconcile = p.reconcile or taken.reconcile
            if taken.full:
                p.full = True
            else:
                p.paths |= taken.paths

    def process_due(self, *, ignore_settle: bool = False) -> float | None:
        """Version every dataset whose change-set is quiet; return the next deadline."""
        now = float("inf") if ignore_settle else time.monotonic()
        due, next_deadline = self._take_due(now)
        for d, taken in due:
            try:
                self._process(d, taken)
            finally:
                with self._cond:
                    self._in_flight.discard(d.config.name)
        return next_deadline

    def settled(self, name: str) -> bool:
        """True when every event noted for dataset ``name`` so far has been acted on."""
        with self._cond:
            d = self._datasets.get(name)
            return d is not None and not d.pending.any and name not in self._in_flight

    def rejections(self) -> Counter[str]:
        """Paths rejected since start, by reason, over every dataset."""
        total: Counter[str] = Counter()
        for d in list(self._datasets.values()):
            # A copy first: the engine thread may add a reason while the HTTP thread reads.
            total.update(dict(d.versioner.rejections))
        return total

    def prepare(self) -> None:
        """Build each dataset's view of its latest version before the first change arrives: the
        one pass over the catalog a view costs is paid at start, not by the first version."""
        for d in list(self._datasets.values()):
            try:
                d.versioner.prepare()
            except (StrandlineError, OSError, sqlite3.Error) as exc:
                # Not fatal: the first version builds it instead.
                log.warning("dataset %s: cannot prepare now (%s)", d.config.name, exc, extra={"dataset": d.config.name})

    def request_discover(self) -> None:
        """Look for new subfolders of the auto root at the next turn."""
        with self._cond:
            self._rediscover = True
            self._cond.notify()

    def _maybe_discover(self) -> None:
        with self._cond:
            wanted, self._rediscover = self._rediscover, False
        if not wanted or self._discover is None:
            return
        for ds in self._discover():
            if ds.name not in self._datasets:
                self._add(ds)
                self._request_full(self._datasets[ds.name], immediate=False)

    def run(
        self,
        stop: threading.Event,
        *,
        check_watch: Callable[[], list[str]] | None = None,
        each_turn: Callable[[], None] | None = None,
    ) -> None:
        """Loop until ``stop`` is set: version quiet datasets, reconcile periodically.

        ``check_watch`` makes sure every root is watched by a live watcher and returns the roots
        it (re)started watching: events there may have been missed, so they are re-scanned.
        ``each_turn`` runs in this thread at every turn of the loop (a config reload, say);
        ``wake`` makes the loop turn at once.
        """
        interval = self.config.reconcile_interval_seconds
        self.prepare()
        next_reconcile = time.monotonic() + interval if interval > 0 else float("inf")
        next_check = time.monotonic() + _WATCH_CHECK_SECONDS
        self.request_reconcile()
        while not stop.is_set():
            self.heartbeat.beat()
            if each_turn is not None:
                each_turn()
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
                if stop.is_set() or self._rediscover or self._woken:
                    self._woken = False
                    continue
                # Recomputed under the lock: an event may have arrived since _take_due.
                deadlines = [dl for d in self._datasets.values() if (dl := self._deadline(d)) is not None]
                timeout = min([next_reconcile, next_check if check_watch else math.inf, *deadlines]) - time.monotonic()
                if timeout > 0:
                    self._cond.wait(timeout=min(timeout, 5.0))

    def wake(self) -> None:
        with self._cond:
            self._woken = True
            self._cond.notify_all()
