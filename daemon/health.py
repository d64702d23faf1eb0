"""What `strandline watch --http` tells operators: liveness, readiness and Prometheus metrics.

Everything is read at scrape time from the running parts (engine, publisher, watcher) and from a
read-only connection to the catalog, so nothing on the hot path pays for metrics.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from daemon.catalog import Catalog
from daemon.config import catalog_path
from daemon.http_endpoint import Route

if TYPE_CHECKING:
    from daemon.app import Daemon

# An undelivered event older than this makes the daemon not ready even before Kafka errors.
BACKLOG_AGE_NOT_READY_SECONDS = 120.0


def _backlog(daemon: Daemon) -> tuple[int, float]:
    with Catalog(catalog_path(daemon.config), readonly=True) as catalog:
        count, oldest = catalog.backlog()
    return count, (time.time() - oldest) if oldest is not None else 0.0


class DaemonCollector(Collector):
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Any]:
        engine, publisher, watcher = self.daemon.engine, self.daemon.publisher, self.daemon.watcher
        if engine is not None:
            yield CounterMetricFamily(
                "strandline_versions_created", "Dataset versions recorded since start.", value=engine.versions_created
            )
            yield CounterMetricFamily(
                "strandline_versioning_passes",
                "Versioning passes (quiet change-sets and reconciles).",
                value=engine.passes,
            )
            yield CounterMetricFamily(
                "strandline_watcher_overflows",
                "inotify queue overflows (each followed by a re-scan).",
                value=engine.overflows,
            )
        if publisher is not None:
            yield CounterMetricFamily(
                "strandline_events_published", "Events acknowledged by Kafka since start.", value=publisher.published
            )
            yield GaugeMetricFamily(
                "strandline_kafka_degraded",
                "1 while events cannot be delivered to Kafka.",
                value=1 if publisher.degraded_since is not None else 0,
            )
        if watcher is not None:
            yield CounterMetricFamily(
                "strandline_watcher_restarts",
                "Times the filesystem watcher died and was restarted.",
                value=watcher.restarts,
            )
        backlog, age = _backlog(self.daemon)
        yield GaugeMetricFamily("strandline_outbox_backlog", "Events waiting in the outbox.", value=backlog)
        yield GaugeMetricFamily(
            "strandline_outbox_oldest_age_seconds", "Age of the oldest undelivered event (0 when none).", value=age
        )


def readiness(daemon: Daemon) -> tuple[bool, dict[str, Any]]:
    """Whether the daemon is ready, and every degraded part with why."""
    degraded: list[dict[str, Any]] = []
    publisher = daemon.publisher
    if daemon.engine is None or publisher is None:
        return False, {"ready": False, "degraded": [{"part": "startup", "reason": "still starting"}]}
    if publisher.degraded_since is not None:
        degraded.append(
            {
                "part": "kafka",
                "reason": f"cannot deliver to {daemon.config.kafka.bootstrap}: {publisher.last_error or 'no answer'}",
                "since": publisher.degraded_since,
            }
        )
    backlog, age = _backlog(daemon)
    if backlog and age > BACKLOG_AGE_NOT_READY_SECONDS:
        degraded.append(
            {
                "part": "outbox",
                "reason": f"{backlog} events wait; the oldest for {age:.0f} s",
                "backlog": backlog,
            }
        )
    return not degraded, {"ready": not degraded, "degraded": degraded, "outbox_backlog": backlog}


def routes(daemon: Daemon) -> dict[str, Route]:
    registry = CollectorRegistry()
    registry.register(DaemonCollector(daemon))

    def healthz() -> tuple[int, str, bytes]:
        return 200, "text/plain; charset=utf-8", b"ok\n"

    def readyz() -> tuple[int, str, bytes]:
        ready, body = readiness(daemon)
        return (200 if ready else 503), "application/json", json.dumps(body).encode()

    def metrics() -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(registry)

    return {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics}
