"""Prometheus metrics of a consumer, and the /metrics + /healthz endpoint that serves them.

Each runner has its own registry, so several consumers (and tests) in one process never share
counters. Names follow Prometheus conventions: ``strandline_consumer_*`` with a ``consumer``
label (drift, retrain, alerts).
"""

from __future__ import annotations

import time
from http.server import ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from daemon.http_endpoint import serve
from daemon.sdnotify import Heartbeat

# A loop that has not come round for this long is reported unhealthy.
_STALE_SECONDS = 60.0


class ConsumerMetrics:
    def __init__(self, consumer: str) -> None:
        self.consumer = consumer
        self.registry = CollectorRegistry()
        self._processed = Counter(
            "strandline_consumer_events",
            "Events taken from Kafka, by outcome (acted, skipped, duplicate, dead_lettered).",
            ["consumer", "outcome"],
            registry=self.registry,
        )
        self._published = Counter(
            "strandline_consumer_published_events",
            "Events this consumer published.",
            ["consumer"],
            registry=self.registry,
        )
        self._lag = Gauge(
            "strandline_consumer_lag",
            "Records between the consumer's position and the end of each assigned partition.",
            ["consumer", "topic", "partition"],
            registry=self.registry,
        )
        self._heartbeat = Gauge(
            "strandline_consumer_last_loop_timestamp_seconds",
            "When the poll loop last came round.",
            ["consumer"],
            registry=self.registry,
        )
        self._loop = Heartbeat()  # monotonic: a clock step must not look like a stalled loop
        self._heartbeat.labels(self.consumer).set(time.time())

    def processed(self, outcome: str) -> None:
        self._processed.labels(self.consumer, outcome).inc()

    def count(self, outcome: str) -> int:
        return int(self._processed.labels(self.consumer, outcome)._value.get())

    def published(self, n: int) -> None:
        self._published.labels(self.consumer).inc(n)

    def lag(self, topic: str, partition: int, value: int) -> None:
        self._lag.labels(self.consumer, topic, str(partition)).set(value)

    def heartbeat(self) -> None:
        self._loop.beat()
        self._heartbeat.labels(self.consumer).set(time.time())

    @property
    def healthy(self) -> bool:
        return self._loop.fresh(_STALE_SECONDS)


def serve_metrics(metrics: ConsumerMetrics, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:  # noqa: S104
    """Serve /metrics and /healthz in a daemon thread; ``server.shutdown()`` stops it."""

    def metrics_route() -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry)

    def health_route() -> tuple[int, str, bytes]:
        ok = metrics.healthy
        return (200 if ok else 503), "text/plain; charset=utf-8", b"ok\n" if ok else b"poll loop stalled\n"

    routes = {"/metrics": metrics_route, "/healthz": health_route}
    return serve(host, port, routes, name=f"metrics-{metrics.consumer}")
