"""Composition of the daemon: catalog, publisher, engine and watcher, stacked in an ExitStack.

The only module that knows all the parts; each part knows only the ones it is handed.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from daemon.catalog import Catalog, VersionRow
from daemon.config import catalog_path, discover_datasets, state_dir
from daemon.engine import Engine
from daemon.errors import CatalogError, ConfigError
from daemon.publisher import Publisher
from daemon.signals import install_stop_handlers
from daemon.watcher import Watcher
from schemas.config import DatasetConfig, StrandlineConfig
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


class Daemon:
    def __init__(self, config: StrandlineConfig, target: Target, *, on_version: OnVersion | None = None) -> None:
        self.config = config
        self.target = target
        self.on_version = on_version
        self.engine: Engine | None = None
        self.publisher: Publisher | None = None
        self.watcher: Watcher | None = None
        self.http_address: tuple[str, int] | None = None
        self._stop = threading.Event()

    def request_stop(self) -> None:
        self._stop.set()
        if self.engine is not None:
            self.engine.wake()
        if self.publisher is not None:
            self.publisher.wake()

    def install_signal_handlers(self) -> None:
        """First SIGTERM/SIGINT asks for a clean stop; a second one exits at once."""
        install_stop_handlers(self.request_stop, self._stop.is_set)

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
            watcher = self.watcher = stack.enter_context(Watcher(engine.note_path, engine.note_overflow))
            watcher.ensure(engine.watch_roots())
            publishing = threading.Thread(target=publisher.run, args=(self._stop,), name="publisher", daemon=True)
            publishing.start()
            log.info(
                "started: %d datasets, catalog %s, Kafka %s",
                len(engine.dataset_names),
                path,
                self.config.kafka.bootstrap,
            )
            try:
                engine.run(self._stop, check_watch=lambda: watcher.ensure(engine.watch_roots()))
            finally:
                self._stop.set()
                publisher.wake()
                publishing.join()
                backlog = catalog.backlog()[0]
                log.info(
                    "stopped: %d versions created this run, %d events wait in the outbox",
                    engine.versions_created,
                    backlog,
                )

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
