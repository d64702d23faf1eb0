"""Prometheus metrics of a consumer, and the /metrics, /healthz and /readyz endpoint that serves them.

Each runner has its own registry, so several consumers (and tests) in one process never share
counters. Names follow Prometheus conventions: ``strandline_consumer_*`` with a ``consumer``
label (drift, retrain, alerts).
"""

from __future__ import annotations

import json
import time
from http.server import ThreadingHTTPServer
from typing import Any

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
        self._kafka_degraded = Gauge(
            "strandline_consumer_kafka_degraded",
            "1 while this consumer cannot reach Kafka (at start, or to deliver its events).",
            ["consumer"],
            registry=self.registry,
        )
        self._loop = Heartbeat()  # monotonic: a clock step must not look like a stalled loop
        self._heartbeat.labels(self.consumer).set(time.time())
        self._kafka_degraded.labels(self.consumer).set(0)
        # Readiness: the runner reached Kafka once (topics, group), and nothing is wrong with it now.
        self.connected = False
        self.kafka_problem: str | None = None
        self.kafka_problem_since: float | None = None

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

    def kafka_unreachable(self, reason: str) -> None:
        """Kafka cannot be reached or refuses us: /readyz says why until ``kafka_reachable``."""
        if self.kafka_problem_since is None:
            self.kafka_problem_since = time.time()
        self.kafka_problem = reason
        self._kafka_degraded.labels(self.consumer).set(1)

    def kafka_reachable(self) -> None:
        self.kafka_problem = self.kafka_problem_since = None
        self._kafka_degraded.labels(self.consumer).set(0)

    @property
    def healthy(self) -> bool:
        return self._loop.fresh(_STALE_SECONDS)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether the consumer is ready, and the degraded parts with why (the shape of the daemon's /readyz)."""
        degraded: list[dict[str, Any]] = []
        if self.kafka_problem is not None:
            degraded.append({"part": "kafka", "reason": self.kafka_problem, "since": self.kafka_problem_since})
        elif not self.connected:
            degraded.append({"part": "startup", "reason": "connecting to Kafka"})
        if not self.healthy:
            degraded.append({"part": "loop", "reason": f"the poll loop stalled {self._loop.age():.0f} s ago"})
        return not degraded, {"ready": not degraded, "consumer": self.consumer, "degraded": degraded}


def serve_metrics(metrics: ConsumerMetrics, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:  # noqa: S104
    """Serve /metrics, /healthz and /readyz in a daemon thread; ``server.shutdown()`` stops it."""

    def metrics_route() -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry)

    def health_route() -> tuple[int, str, bytes]:
        ok = metrics.healthy
        return (200 if ok else 503), "text/plain; charset=utf-8", b"ok\n" if ok else b"poll loop stalled\n"

    def ready_route() -> tuple[int, str, bytes]:
        ready, body = metrics.readiness()
        return (200 if ready else 503), "application/json", json.dumps(body).encode()

    routes = {"/metrics": metrics_route, "/healthz": health_route, "/readyz": ready_route}
    return serve(host, port, routes, name=f"metrics-{metrics.consumer}")
