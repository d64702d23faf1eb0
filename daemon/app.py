"""Composition of the daemon: catalog, publisher, engine and watcher, stacked in an ExitStack.

The only module that knows all the parts; each part knows only the ones it is handed.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.catalog import Catalog, VersionRow
from daemon.config import catalog_path, discover_datasets, load_config, state_dir
from daemon.engine import STALL_SECONDS, Engine
from daemon.errors import CatalogError, ConfigError, StrandlineError
from daemon.publisher import Publisher
from daemon.sdnotify import Notifier, WatchdogPinger
from daemon.signals import install_stop_handlers
from daemon.watcher import Watcher
from schemas.config import DatasetConfig, StrandlineConfig

if TYPE_CHECKING:
    from daemon.bucket_notifications import NotificationListener
    from daemon.bucket_poller import BucketPoller
from schemas.events import FileChange

log = logging.getLogger(__name__)


OnVersion = Callable[[VersionRow, list[FileChange]], None]


@contextlib.contextmanager
def state_lock(directory: Path) -> Iterator[None]:
    """One daemon (or scan) per state directory at a time."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "daemon.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise CatalogError(
                f"another Strandline process (pid {holder}) uses {directory}; stop it or choose another state_dir"
            ) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Target:
    """What to watch: explicit datasets from the config, or a folder whose subfolders are datasets."""

    datasets: tuple[DatasetConfig, ...]
    auto_root: Path | None = None

    @classmethod
    def resolve(cls, config: StrandlineConfig, folder: Path | None) -> Target:
        if folder is not None and not config.datasets:
            return cls(tuple(discover_datasets(folder)), folder.resolve())
        if folder is not None and config.datasets:
            raise ConfigError(
                "give either a folder or a config with [[datasets]], not both: the config's datasets are watched"
            )
        if not config.datasets:
            raise ConfigError(
                "nothing to watch: pass a folder (strandline watch DATA_DIR) or a config with [[datasets]]"
            )
        return cls(config.datasets)

    def rediscover(self) -> list[DatasetConfig]:
        assert self.auto_root is not None
        try:
            return discover_datasets(self.auto_root)
        except ConfigError:
            return []


# What a reload applies (datasets) or does not concern (the consumers' sections: other processes).
_APPLIED_ON_RELOAD = frozenset({"datasets", "consumers", "drift", "alerts", "retrain"})


class Daemon:
    def __init__(
        self,
        config: StrandlineConfig,
        target: Target,
        *,
        on_version: OnVersion | None = None,
        config_path: Path | None = None,
    ) -> None:
        self.config = config
        self.target = target
        self.config_path = config_path  # re-read on SIGHUP
        self.on_version = on_version
        self.engine: Engine | None = None
        self.publisher: Publisher | None = None
        self.watcher: Watcher | None = None
        self.poller: BucketPoller | None = None
        self.started = threading.Event()  # set once every thread runs (what systemd's READY=1 says)
        self.listener: NotificationListener | None = None
        self.http_address: tuple[str, int] | None = None
        self.notifier = Notifier.from_environ()
        self._stop = threading.Event()
        self._reload_wanted = threading.Event()
        self._bucket_stop = threading.Event()
        self._bucket_threads: list[threading.Thread] = []

    def request_stop(self) -> None:
        self.notifier.stopping()
        self._stop.set()
        if self.engine is not None:
            self.engine.wake()
        if self.publisher is not None:
            self.publisher.wake()
        self._bucket_stop.set()
        if self.poller is not None:
            self.poller.wake()

    def request_reload(self) -> None:
        """Re-read the config file at the engine's next turn (what SIGHUP does)."""
        self._reload_wanted.set()
        if self.engine is not None:
            self.engine.wake()

    def install_signal_handlers(self) -> None:
        """First SIGTERM/SIGINT asks for a clean stop; a second one exits at once. SIGHUP reloads."""
        install_stop_handlers(self.request_stop, self._stop.is_set)
        signal.signal(signal.SIGHUP, lambda signum, frame: self.request_reload())

    def _maybe_reload(self) -> None:
        if not self._reload_wanted.is_set():
            return
        self._reload_wanted.clear()
        engine = self.engine
        assert engine is not None
        self.notifier.reloading()
        try:
            self._reload(engine)
        except StrandlineError as exc:
            log.error("reload: %s; the daemon goes on with what it had", exc)
        finally:
            self.notifier.ready(f"watching {len(engine.dataset_names)} datasets")

    def _reload(self, engine: Engine) -> None:
        if self.target.auto_root is not None:
            engine.request_discover()
            log.info("reload: looking for new subfolders of %s", self.target.auto_root)
            return
        if self.config_path is None:
            log.warning("reload: the daemon was started without a config file; nothing to re-read")
            return
        # `watch --http` overrides the file; the override still holds after a reload.
        fresh = load_config(self.config_path).model_copy(update={"http": self.config.http})
        moved = [
            name
            for name in type(fresh).model_fields
            if name not in _APPLIED_ON_RELOAD and getattr(fresh, name) != getattr(self.config, name)
        ]
        if moved:
            log.warning("reload: changes to %s take effect at the next restart", ", ".join(moved))
        buckets_before = [ds for ds in self.target.datasets if ds.is_bucket]
        try:
            added, removed, changed = engine.replace_datasets(list(fresh.datasets))
            log.info(
                "reload: %d datasets added (%s), %d removed (%s), %d changed (%s)",
                len(added),
                ", ".join(added) or "-",
                len(removed),
                ", ".join(removed) or "-",
                len(changed),
                ", ".join(changed) or "-",
            )
        finally:
            # What the engine runs now: a dataset whose new settings failed kept its old ones.
            self.target = Target(tuple(engine.dataset_configs()))
            if [ds for ds in self.target.datasets if ds.is_bucket] != buckets_before:
                self._restart_bucket_threads(engine)

    def _engine(self, catalog: Catalog, on_commit: Callable[[], None]) -> Engine:
        auto = self.target.auto_root
        return Engine(
            catalog,
            self.config,
            list(self.target.datasets),
            on_version=self.on_version,
            on_commit=on_commit,
            discover=self.target.rediscover if auto else None,
            auto_root=str(auto) if auto else None,
        )

    def run(self, stop: threading.Event | None = None) -> None:
        """Watch until stopped (by ``stop``, ``request_stop`` or a signal)."""
        if stop is not None:
            self._stop = stop
        path = catalog_path(self.config)
        with contextlib.ExitStack() as stack:
            stack.enter_context(state_lock(state_dir(self.config)))
            catalog = stack.enter_context(Catalog(path))
            if self.config.http is not None:
                from daemon.health import routes
                from daemon.http_endpoint import parse_address, serve

                server = serve(*parse_address(self.config.http), routes(self), name="http")
                stack.callback(server.server_close)
                stack.callback(server.shutdown)
                host, port = str(server.server_address[0]), int(server.server_address[1])
                self.http_address = (host, port)
                log.info("serving /healthz, /readyz and /metrics on http://%s:%d", host, port)
            publisher = self.publisher = stack.enter_context(
                Publisher(
                    path,
                    self.config.kafka,
                    host=self.config.host,
                    degraded_event_seconds=self.config.degraded_event_seconds,
                )
            )
            engine = self.engine = self._engine(catalog, publisher.wake)
            # Bucket reconciles are listed on the poller's thread, not the engine's.
            engine.set_lister(lambda name: self.poller is not None and self.poller.request_listing(name))
            watcher = self.watcher = stack.enter_context(Watcher(engine.note_path, engine.note_overflow))
            watcher.ensure(engine.watch_roots())
            publishing = threading.Thread(target=publisher.run, args=(self._stop,), name="publisher", daemon=True)
            publishing.start()
            self._restart_bucket_threads(engine)
            log.info(
                "started: %d datasets, catalog %s, Kafka %s",
                len(engine.dataset_names),
                path,
                self.config.kafka.bootstrap,
            )
            # systemd: ready now; watchdog pings only while the engine loop keeps coming round.
            stack.enter_context(WatchdogPinger(self.notifier, lambda: engine.heartbeat.fresh(STALL_SECONDS)))
            self.notifier.ready(f"watching {len(engine.dataset_names)} datasets")
            self.started.set()
            try:
                engine.run(
                    self._stop,
                    check_watch=lambda: watcher.ensure(engine.watch_roots()),
                    each_turn=self._maybe_reload,
                )
            finally:
                self.notifier.stopping()
                self._stop.set()
                publisher.wake()
                self._stop_bucket_threads()
                publishing.join()
                backlog = catalog.backlog()[0]
                log.info(
                    "stopped: %d versions created this run, %d events wait in the outbox",
                    engine.versions_created,
                    backlog,
                )

    def _stop_bucket_threads(self) -> None:
        self._bucket_stop.set()
        if self.poller is not None:
            self.poller.wake()
        for thread in self._bucket_threads:
            thread.join()
        self._bucket_threads = []
        self.poller = self.listener = None

    def _restart_bucket_threads(self, engine: Engine) -> None:
        """(Re)start the poller of bucket datasets (notified ones too: their slow safety re-list)
        and the notification listener, for the datasets of ``self.target``."""
        self._stop_bucket_threads()
        self._bucket_stop = threading.Event()
        self._bucket_threads = self._bucket_threads_for(engine, catalog_path(self.config))
        for thread in self._bucket_threads:
            thread.start()

    def _bucket_threads_for(self, engine: Engine, catalog_file: Path) -> list[threading.Thread]:
        buckets = [ds for ds in self.target.datasets if ds.is_bucket]
        if not buckets:
            return []
        from daemon.bucket_poller import BucketPoller

        s3 = self.config.s3
        relist = s3.notifications.relist_interval_seconds
        polled = [
            ds if ds.detect == "poll" else ds.model_copy(update={"poll_interval_seconds": relist}) for ds in buckets
        ]
        self.poller = BucketPoller(catalog_file, self.config, polled, note=engine.note_listed)
        stop = self._bucket_stop
        threads = [threading.Thread(target=self.poller.run, args=(stop,), name="bucket-poller", daemon=True)]
        notified = [ds for ds in buckets if ds.detect == "notifications"]
        if notified:
            from daemon.bucket_notifications import NotificationListener

            self.listener = NotificationListener(
                self.config.kafka,
                s3.notifications,
                notified,
                host=self.config.host,
                note=engine.note_rels,
                request_full=engine.request_full,
            )
            threads.append(threading.Thread(target=self.listener.run, args=(stop,), name="notifications", daemon=True))
        return threads

    def scan(self, *, publish_timeout: float | None) -> tuple[int, int]:
        """One reconcile of every dataset, then (optionally) deliver the outbox. Returns (versions, backlog)."""
        path = catalog_path(self.config)
        with state_lock(state_dir(self.config)), Catalog(path) as catalog:
            engine = self.engine = self._engine(catalog, lambda: None)
            engine.request_reconcile()
            engine.process_due(ignore_settle=True)
            if publish_timeout is not None:
                with Publisher(path, self.config.kafka) as publisher:
                    publisher.drain(publish_timeout)
            return engine.versions_created, catalog.backlog()[0]
