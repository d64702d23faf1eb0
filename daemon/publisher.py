"""Drains the outbox to Kafka, in outbox order, marking rows delivered only once acknowledged.

When Kafka is unreachable the daemon goes on versioning; the publisher logs one "degraded"
line, retries with backoff, and one "recovered" line when the backlog starts moving again.
With nothing to send, it asks Kafka for its cluster metadata every ``IDLE_PROBE_SECONDS``, so a
broker lost while the daemon is idle still shows (``/readyz`` 503) before the next version.
Delivery is at-least-once: a crash between the broker's ack and the catalog update re-sends
a record with the same ``ce_id``, which consumers de-duplicate on.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from daemon.catalog import Catalog
from daemon.errors import PublishError
from daemon.events import health_message
from daemon.kafka_client import check_connection, ensure_topics, make_producer
from daemon.metrics import latency_histogram
from daemon.outbox import PendingMessage
from schemas.config import KafkaConfig
from schemas.events import DaemonHealth

log = logging.getLogger(__name__)

_BATCH = 1000
_SLOW_ACK_SECONDS = 10.0
_PRUNE_AFTER_SECONDS = 7 * 86400
# An idle publisher checks Kafka this often (it would otherwise only notice at the next send).
IDLE_PROBE_SECONDS = 15.0


class Publisher:
    """Outbox → Kafka. ``run`` is a thread body; ``drain`` delivers what is pending and returns."""

    def __init__(
        self, catalog_path: Path, kafka: KafkaConfig, *, host: str = "", degraded_event_seconds: float | None = None
    ) -> None:
        self._catalog_path = catalog_path
        self._kafka = kafka
        self._host = host
        # None: no daemon.degraded events (one-shot commands such as `scan`).
        self._degraded_event_seconds = degraded_event_seconds
        self._degraded_announced = False
        self._wake = threading.Event()
        self._producer: Any = None
        self._catalog: Catalog | None = None
        self.degraded_since: float | None = None
        self.last_error: str | None = None
        self.published = 0  # events acknowledged since start (the /metrics counter)
        self.publish_seconds = latency_histogram(
            "strandline_publish_latency_seconds", "From a version's commit to Kafka's acknowledgement of its event."
        )
        self._backoff = 0.5
        self._topics_checked = False
        self._stop = threading.Event()
        self._give_up_at = float("inf")
        # Monotonic time Kafka last answered us. Counted from the start: the first idle check
        # waits IDLE_PROBE_SECONDS, so a broker still starting next to us is not called lost.
        self._last_contact = time.monotonic()

    def __enter__(self) -> Publisher:
        self._catalog = Catalog(self._catalog_path)
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self._close_producer(timeout=5)
        if self._catalog is not None:
            self._catalog.close()

    def wake(self) -> None:
        self._wake.set()

    def _close_producer(self, timeout: float) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=timeout)
            except Exception:  # closing a broken producer must not hide the original problem
                log.debug("error while closing the Kafka producer", exc_info=True)
            self._producer = None

    def _degraded(self, reason: str, backlog: int) -> None:
        self.last_error = reason
        if self.degraded_since is None:
            self.degraded_since = time.time()
            log.warning(
                "degraded: cannot publish to Kafka at %s (%s); versioning continues, %d events wait in the outbox",
                self._kafka.bootstrap,
                reason,
                backlog,
            )
        after = self._degraded_event_seconds
        if after is not None and not self._degraded_announced and time.time() - self.degraded_since >= after:
            self._announce("daemon.degraded", reason, backlog)
            self._degraded_announced = True

    def _announce(self, event_type: str, reason: str, backlog: int) -> None:
        """Put a health event in the outbox: it goes out, in order, once Kafka answers again."""
        from datetime import UTC, datetime

        assert self._catalog is not None and self.degraded_since is not None
        health = DaemonHealth(
            host=self._host,
            component="kafka",
            reason=reason[:1000],
            since=datetime.fromtimestamp(self.degraded_since, UTC),
            at=datetime.now(UTC),
            backlog=backlog,
        )
        try:
            self._catalog.enqueue([health_message(self._kafka, event_type, health)])
        except Exception:  # the catalog's own trouble (disk full) must not stop the publisher
            log.warning("cannot record %s in the outbox", event_type, exc_info=True)

    def _recovered(self) -> None:
        if self.degraded_since is not None:
            log.info(
                "recovered: Kafka at %s reachable again after %.1f s; delivering the backlog",
                self._kafka.bootstrap,
                time.time() - self.degraded_since,
            )
            if self._degraded_announced:
                assert self._catalog is not None
                self._announce(
                    "daemon.recovered",
                    f"Kafka reachable again after {time.time() - self.degraded_since:.0f} s",
                    self._catalog.backlog()[0],
                )
                self._degraded_announced = False
        self.degraded_since = None
        self.last_error = None
        self._backoff = 0.5

    def _send_batch(self, batch: list[PendingMessage]) -> int:
        """Send in order; mark the acknowledged prefix delivered; return how many were."""
        from kafka.errors import KafkaError

        assert self._catalog is not None
        if self._producer is None:
            if not self._topics_checked:
                ensure_topics(self._kafka)
                self._topics_checked = True
            self._producer = make_producer(self._kafka)
        futures = []
        try:
            for item in batch:
                m = item.message
                futures.append(self._producer.send(m.topic, value=m.value, key=m.key, headers=list(m.headers)))
        except KafkaError as exc:
            self.last_error = str(exc)
        acked: list[int] = []
        failure: Exception | None = None
        slow_after = time.monotonic() + _SLOW_ACK_SECONDS
        for item, future in zip(batch, futures, strict=False):
            while True:
                try:
                    future.get(timeout=0.25)
                    break
                except Exception as exc:
                    if future.is_done:
                        failure = exc
                        break
                if self._stop.is_set() or time.monotonic() > self._give_up_at:
                    failure = PublishError("stopping before the broker acknowledged")
                    break
                if time.monotonic() > slow_after:
                    self._degraded(f"no acknowledgement within {_SLOW_ACK_SECONDS:.0f} s", self._catalog.backlog()[0])
            if failure is not None:
                break
            acked.append(item.id)
            # From the version's commit (the outbox row) to the broker's acknowledgement.
            self.publish_seconds.observe(max(0.0, time.time() - item.created_at))
        self._catalog.mark_delivered(acked)
        if failure is not None or len(acked) < len(batch):
            # Drop whatever is still queued so nothing after the failure is delivered out of order.
            self._close_producer(timeout=0)
            raise PublishError(str(failure or self.last_error or "send failed"))
        return len(acked)

    def step(self) -> int:
        """Deliver one batch of pending rows; returns rows delivered, raises PublishError."""
        assert self._catalog is not None
        batch = self._catalog.pending(_BATCH)
        if not batch:
            return 0
        sent = self._send_batch(batch)
        self.published += sent
        self._last_contact = time.monotonic()
        self._recovered()
        return sent

    def probe(self) -> None:
        """Ask Kafka for its cluster metadata (logged in as our clients are); degraded or recovered by the answer."""
        assert self._catalog is not None
        try:
            check_connection(self._kafka)
        except PublishError as exc:
            self._degraded(str(exc), self._catalog.backlog()[0])
            return
        self._last_contact = time.monotonic()
        self._recovered()

    def run(self, stop: threading.Event) -> None:
        assert self._catalog is not None
        self._stop = stop
        last_prune = 0.0
        while not stop.is_set():
            try:
                sent = self.step()
            except PublishError as exc:
                self._degraded(str(exc), self._catalog.backlog()[0])
                self._wake.wait(self._backoff)
                self._wake.clear()
                self._backoff = min(self._backoff * 2, 10.0)
                continue
            except Exception:
                log.exception("publisher error; retrying")
                stop.wait(1.0)
                continue
            if sent:
                continue
            if time.monotonic() - self._last_contact > IDLE_PROBE_SECONDS:
                self.probe()
            if time.time() - last_prune > 3600:
                last_prune = time.time()
                self._catalog.prune_delivered(_PRUNE_AFTER_SECONDS)
            self._wake.wait(5.0)
            self._wake.clear()
        # Last chance for what the engine committed while stopping; the rest waits in the outbox.
        self._stop = threading.Event()
        self.drain(timeout=5.0 if self.degraded_since is None else 0.0)

    def drain(self, timeout: float) -> bool:
        """Deliver everything pending within ``timeout`` seconds; True when the outbox is empty."""
        assert self._catalog is not None
        deadline = time.monotonic() + timeout
        self._give_up_at = deadline
        while time.monotonic() < deadline:
            try:
                if self.step() == 0:
                    self._give_up_at = float("inf")
                    return True
            except PublishError as exc:
                self._degraded(str(exc), self._catalog.backlog()[0])
                time.sleep(min(self._backoff, max(0.0, deadline - time.monotonic())))
                self._backoff = min(self._backoff * 2, 10.0)
        self._give_up_at = float("inf")
        return self._catalog.backlog()[0] == 0
