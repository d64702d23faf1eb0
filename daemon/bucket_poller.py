"""Polling bucket roots: list each prefix on its interval and tell the engine which keys changed.

A poll is one paged listing merged, in key order, with the catalog's current entries (the stat
cache): memory holds a page and a row, never the bucket. Only keys whose (size, last-modified,
ETag) differ are handed to the engine, which versions them once quiet; so after the first
listing the work that follows a poll (HEAD, GET, hash) grows with the changes, not the bucket.

A key already handed over with the same stat is not handed over again (its quiet period is not
restarted by every poll), but a key that changes again is, so an object overwritten during its
settle window gets one version of its final content. A listing that fails is abandoned whole:
it never reads as "every key was deleted"; one cut short by a stop is given up at once.

The listed stats are handed over with the keys, so the engine hashes on them instead of asking
for each key again. The engine also asks this thread for its reconciles of bucket datasets
(``request_listing``): a complete listing is handed over whole, even when nothing differs, so the
engine's thread never spends a listing (minutes at 100,000 keys) during which nothing would be
versioned (issue 5).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from daemon.bucket_source import BucketSource
from daemon.catalog import Catalog
from daemon.errors import ListingStoppedError, StrandlineError
from daemon.filters import PathFilter
from daemon.manifest import FileState
from daemon.scanner import FileStat, Rejection
from schemas.config import DatasetConfig, StrandlineConfig

log = logging.getLogger(__name__)

_RETRY_MAX_SECONDS = 300.0


def changed_paths(
    listed: Iterable[tuple[str, FileStat]], known: Iterable[tuple[str, FileState]]
) -> Iterator[tuple[str, FileStat | None]]:
    """Paths added, modified or removed (with their listed stat, None when removed), from two
    streams both sorted by path: a merge, one pass.

    Pure. Python orders ``str`` by code point, which is the UTF-8 byte order S3 lists keys in and
    SQLite's BINARY collation sorts the catalog in.
    """
    lit, kit = iter(listed), iter(known)
    lrow, krow = next(lit, None), next(kit, None)
    while lrow is not None or krow is not None:
        if krow is None or (lrow is not None and lrow[0] < krow[0]):
            assert lrow is not None
            yield lrow  # added
            lrow = next(lit, None)
        elif lrow is None or krow[0] < lrow[0]:
            yield krow[0], None  # removed
            krow = next(kit, None)
        else:
            if not krow[1].stat_matches(*lrow[1]):
                yield lrow  # modified (or only touched: the versioner sorts that out by hash)
            lrow, krow = next(lit, None), next(kit, None)


class NoteListed(Protocol):
    """Where a listing's findings go (``Engine.note_listed``)."""

    def __call__(
        self,
        name: str,
        changed: Mapping[str, FileStat | None],
        *,
        rejections: Sequence[Rejection] = (),
        complete: bool = False,
    ) -> None: ...


@dataclass
class _Polled:
    config: DatasetConfig
    source: BucketSource
    filter: PathFilter
    interval: float
    next_due: float = 0.0
    failures: int = 0
    noted: dict[str, FileStat | None] = field(default_factory=dict)
    rejected: set[str] = field(default_factory=set)
    # The next listing is a reconcile, handed over whole. The first one is: a start is one.
    complete_wanted: bool = True
    listed_once: bool = False


class BucketPoller:
    """One thread polling every polled bucket dataset in turn; it has its own catalog connection."""

    def __init__(
        self,
        catalog_path: Path,
        config: StrandlineConfig,
        datasets: list[DatasetConfig],
        *,
        note: NoteListed,
    ) -> None:
        self._catalog_path = catalog_path
        self._note = note
        self.problems: dict[str, str] = {}  # dataset -> why its last poll failed
        self.polls = 0
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()  # the run's stop, checked between the keys of a listing
        self._catalog: Catalog | None = None
        self._datasets = [
            _Polled(
                ds,
                BucketSource(ds.root, spool_dir="", settings=config.store_settings(ds.root)),  # lists only
                PathFilter.for_dataset(ds),
                ds.poll_interval_seconds or config.store_settings(ds.root).poll_interval_seconds,
            )
            for ds in datasets
        ]

    def run(self, stop: threading.Event) -> None:
        if not self._datasets:
            return
        self._stop = stop
        try:
            while not stop.is_set():
                now = time.monotonic()
                for polled in self._datasets:
                    if polled.next_due <= now and not stop.is_set():
                        self._poll(polled)
                wait = min(p.next_due for p in self._datasets) - time.monotonic()
                if wait > 0:
                    self._wake.wait(wait)
                    self._wake.clear()
        finally:
            self._close_catalog()

    def _close_catalog(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    def wake(self) -> None:
        self._wake.set()

    def request_listing(self, name: str) -> bool:
        """List dataset ``name`` as soon as this thread can and hand over every difference (a
        reconcile). False when this poller does not list that dataset. Any thread may call it."""
        for polled in self._datasets:
            if polled.config.name == name:
                with self._lock:
                    if not polled.listed_once:
                        return True  # the first listing, which is a reconcile, is to come or under way
                    polled.complete_wanted = True
                    polled.next_due = 0.0
                self._wake.set()
                return True
        return False

    def _poll(self, polled: _Polled) -> None:
        name = polled.config.name
        started = time.monotonic()
        with self._lock:
            # Taken before listing: a request that comes during this listing gets one of its own.
            complete, polled.complete_wanted = polled.complete_wanted, False
        try:
            if self._catalog is None:
                self._catalog = Catalog(self._catalog_path, readonly=True)  # the poller only reads
            changed, rejections = self._compare(self._catalog, polled, complete=complete)
        except ListingStoppedError:
            return  # the daemon is stopping: nothing to retry
        except Exception as exc:
            with self._lock:
                polled.complete_wanted |= complete  # the reconcile is still owed
            if not isinstance(exc, StrandlineError):
                # A bug or a catalog error must cost a retry, never the poller thread.
                log.exception("dataset %s: unexpected error while polling", name, extra={"dataset": name})
                self._close_catalog()
            polled.failures += 1
            delay = min(polled.interval * 2.0 ** min(polled.failures, 10), max(_RETRY_MAX_SECONDS, polled.interval))
            if self.problems.get(name) != str(exc):
                log.warning("dataset %s: cannot poll now: %s", name, exc, extra={"dataset": name})
            self.problems[name] = str(exc)
            polled.next_due = time.monotonic() + delay
            return
        self.polls += 1
        with self._lock:
            polled.listed_once = True
        if polled.failures:
            log.info("dataset %s: %s answers again", name, polled.source.location, extra={"dataset": name})
            polled.failures = 0
            self.problems.pop(name, None)
        with self._lock:
            if not polled.complete_wanted:
                polled.next_due = started + polled.interval
        if changed or rejections or complete:
            self._note(name, changed, rejections=rejections, complete=complete)

    def _compare(
        self, catalog: Catalog, polled: _Polled, *, complete: bool = False
    ) -> tuple[dict[str, FileStat | None], list[Rejection]]:
        """One listing merged with the stat cache: the keys to hand to the engine now, with their
        listed stat (None: no longer listed), and the unsafe keys not reported yet. ``complete``:
        every key that differs, even one already handed over with the same stat."""
        dataset_id = catalog.dataset(polled.config.name).id
        rejections: dict[str, Rejection] = {}

        def on_reject(rejection: Rejection) -> None:
            if rejection.rel not in polled.rejected:
                rejections.setdefault(rejection.rel, rejection)

        # Materialised: a listing cut short must raise before anything is handed over.
        listed = polled.source.walk(polled.filter, on_reject, stop=self._stop)
        differing = list(changed_paths(listed, catalog.iter_current(dataset_id)))
        polled.rejected.update(rejections)
        out: dict[str, FileStat | None] = {}
        noted: dict[str, FileStat | None] = {}
        for rel, st in differing:
            if not complete and rel in polled.noted and polled.noted[rel] == st:
                noted[rel] = st  # already handed over with this stat: let its quiet period run
                continue
            noted[rel] = st
            out[rel] = st
        polled.noted = noted  # keys that match the catalog again were versioned: forget them
        return out, list(rejections.values())
