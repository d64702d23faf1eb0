"""Polling bucket roots: list each prefix on its interval and tell the engine which keys changed.

A poll is one paged listing merged, in key order, with the catalog's current entries (the stat
cache): memory holds a page and a row, never the bucket. Only keys whose (size, last-modified,
ETag) differ are handed to the engine, which versions them once quiet; so after the first
listing the work that follows a poll (HEAD, GET, hash) grows with the changes, not the bucket.

A key already handed over with the same stat is not handed over again (its quiet period is not
restarted by every poll), but a key that changes again is, so an object overwritten during its
settle window gets one version of its final content. A listing that fails is abandoned whole:
it never reads as "every key was deleted".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from daemon.bucket_source import BucketSource
from daemon.catalog import Catalog
from daemon.errors import StrandlineError
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


class BucketPoller:
    """One thread polling every polled bucket dataset in turn; it has its own catalog connection."""

    def __init__(
        self,
        catalog_path: Path,
        config: StrandlineConfig,
        datasets: list[DatasetConfig],
        *,
        note: Callable[[str, set[str]], None],
        request_full: Callable[[str], None],
    ) -> None:
        self._catalog_path = catalog_path
        self._note = note
        self._request_full = request_full
        self.problems: dict[str, str] = {}  # dataset -> why its last poll failed
        self.polls = 0
        self._wake = threading.Event()
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

    def _poll(self, polled: _Polled) -> None:
        name = polled.config.name
        started = time.monotonic()
        try:
            if self._catalog is None:
                self._catalog = Catalog(self._catalog_path, readonly=True)  # the poller only reads
            changed = self._compare(self._catalog, polled)
        except Exception as exc:
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
        if polled.failures:
            log.info("dataset %s: %s answers again", name, polled.source.location, extra={"dataset": name})
            polled.failures = 0
            self.problems.pop(name, None)
        polled.next_due = started + polled.interval
        if changed:
            self._note(name, changed)

    def _compare(self, catalog: Catalog, polled: _Polled) -> set[str]:
        """One listing merged with the stat cache: the keys to hand to the engine now."""
        dataset_id = catalog.dataset(polled.config.name).id
        new_rejections = False

        def on_reject(rejection: Rejection) -> None:
            nonlocal new_rejections
            if rejection.rel not in polled.rejected:
                polled.rejected.add(rejection.rel)
                new_rejections = True

        # Materialised: a listing cut short must raise before anything is handed over.
        listed = polled.source.walk(polled.filter, on_reject)
        differing = list(changed_paths(listed, catalog.iter_current(dataset_id)))
        out: set[str] = set()
        noted: dict[str, FileStat | None] = {}
        for rel, st in differing:
            if rel in polled.noted and polled.noted[rel] == st:
                noted[rel] = st  # already handed over with this stat: let its quiet period run
                continue
            noted[rel] = st
            out.add(rel)
        polled.noted = noted  # keys that match the catalog again were versioned: forget them
        if new_rejections:
            self._request_full(polled.config.name)  # a full pass reports the unsafe keys
        return out
