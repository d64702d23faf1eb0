"""What `strandline watch --http` tells operators: liveness, readiness and Prometheus metrics.

Everything is read at scrape time from the running parts (engine, publisher, watcher) and from a
read-only connection to the catalog, so nothing on the hot path pays for metrics.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from daemon.catalog import Catalog
from daemon.config import catalog_path, state_dir
from daemon.engine import STALL_SECONDS
from daemon.http_endpoint import Route

if TYPE_CHECKING:
    from daemon.app import Daemon

# An undelivered event older than this makes the daemon not ready even before Kafka errors.
BACKLOG_AGE_NOT_READY_SECONDS = 120.0
# Less free space than this share of the state directory's disk makes the daemon not ready.
DISK_FREE_NOT_READY_FRACTION = 0.05


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
            yield from engine.metrics.detection_seconds.collect()
            yield from engine.metrics.reconcile_seconds.collect()
            errors = CounterMetricFamily(
                "strandline_errors", "Failed versioning passes and rejected inputs, by kind.", labels=["kind"]
            )
            for kind, count in sorted(engine.metrics.errors.items()):
                errors.add_metric([kind], count)
            for reason, count in sorted(engine.rejections().items()):
                errors.add_metric([f"rejected_{reason}"], count)
            yield errors
        if publisher is not None:
            yield CounterMetricFamily(
                "strandline_events_published", "Events acknowledged by Kafka since start.", value=publisher.published
            )
            yield from publisher.publish_seconds.collect()
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
        poller = self.daemon.poller
        if poller is not None:
            yield CounterMetricFamily(
                "strandline_bucket_polls", "Listings of polled bucket prefixes.", value=poller.polls
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
    poller, listener = daemon.poller, daemon.listener
    for name, reason in sorted((poller.problems if poller is not None else {}).items()):
        degraded.append({"part": "bucket", "dataset": name, "reason": reason})
    for name, reason in sorted(daemon.engine.problems.items()):
        degraded.append({"part": "dataset", "dataset": name, "reason": reason})
    if listener is not None and listener.problem is not None:
        degraded.append({"part": "notifications", "reason": listener.problem})
    for name in sorted(daemon.engine.rescanning):
        degraded.append(
            {"part": "watcher", "dataset": name, "reason": "events were lost (inotify overflow); re-scanning"}
        )
    usage = shutil.disk_usage(state_dir(daemon.config))
    if usage.free < DISK_FREE_NOT_READY_FRACTION * usage.total:
        degraded.append(
            {
                "part": "disk",
                "reason": f"{usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f} GiB where the catalog is:"
                " free space before the catalog cannot grow",
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
        # Alive while the engine loop keeps turning (the same test as systemd's watchdog pings).
        engine = daemon.engine
        if engine is not None and not engine.heartbeat.fresh(STALL_SECONDS):
            return 503, "text/plain; charset=utf-8", f"stalled for {engine.heartbeat.age():.0f} s\n".encode()
        return 200, "text/plain; charset=utf-8", b"ok\n"

    def readyz() -> tuple[int, str, bytes]:
        ready, body = readiness(daemon)
        return (200 if ready else 503), "application/json", json.dumps(body).encode()

    def metrics() -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(registry)

    return {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics}
