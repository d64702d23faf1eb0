"""Prometheus metrics of a consumer, and the /metrics + /healthz endpoint that serves them.

Each runner has its own registry, so several consumers (and tests) in one process never share
counters. Names follow Prometheus conventions: ``strandline_consumer_*`` with a ``consumer``
label (drift, retrain, alerts).
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

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
        self._lags: dict[tuple[str, int], int] = {}
        self.last_loop = time.time()

    def processed(self, outcome: str) -> None:
        self._processed.labels(self.consumer, outcome).inc()

    def count(self, outcome: str) -> int:
        return int(self._processed.labels(self.consumer, outcome)._value.get())

    def published(self, n: int) -> None:
        self._published.labels(self.consumer).inc(n)

    def lag(self, topic: str, partition: int, value: int) -> None:
        self._lags[(topic, partition)] = value
        self._lag.labels(self.consumer, topic, str(partition)).set(value)

    @property
    def total_lag(self) -> int:
        return sum(self._lags.values())

    def heartbeat(self) -> None:
        self.last_loop = time.time()
        self._heartbeat.labels(self.consumer).set(self.last_loop)

    @property
    def healthy(self) -> bool:
        return time.time() - self.last_loop < _STALE_SECONDS


def serve_metrics(metrics: ConsumerMetrics, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:  # noqa: S104
    """Serve /metrics and /healthz in a daemon thread; ``server.shutdown()`` stops it."""

    class _Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                body, status, ctype = generate_latest(metrics.registry), 200, CONTENT_TYPE_LATEST
            elif self.path == "/healthz":
                ok = metrics.healthy
                body = b"ok\n" if ok else b"poll loop stalled\n"
                status, ctype = (200 if ok else 503), "text/plain; charset=utf-8"
            else:
                body, status, ctype = b"not found: try /metrics or /healthz\n", 404, "text/plain; charset=utf-8"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes every few seconds: not worth a log line
            pass

    server = ThreadingHTTPServer((host, port), _Handler)
    threading.Thread(target=server.serve_forever, name=f"metrics-{metrics.consumer}", daemon=True).start()
    return server
