"""The delivery loop every `strandline consume` process runs; handlers only decide what to do.

Per record, in this order:

1. a record that is not a CloudEvent of ours (no ``ce_id``/``ce_type``) goes to the dead-letter
   topic at once; a type the handler does not know is skipped on purpose;
2. an event id already in the consumer's state is a redelivery: skipped, not acted on twice;
3. the handler acts. A retriable failure (an endpoint down) is retried with backoff
   (``[consumers] retries``); what still fails, and what cannot be parsed, goes to the
   dead-letter topic with the reason in its headers, and the loop goes on;
4. in one SQLite transaction the event id is marked processed and the handler's output events
   are put in the consumer's outbox; the outbox is delivered to Kafka and acknowledged;
5. only then is the offset committed (auto-commit is off).

A crash between 3 and 4 acts twice (the side effect cannot join the transaction); between 4 and
5 it does not: the redelivered record is found in ``processed``. Stopping (SIGTERM, ``stop``)
finishes the record in hand, delivers the outbox, commits and closes.

Before any of that the runner must reach Kafka (create the topics, join the group). A broker that
is down, or refuses the login, does not end the process: one WARNING line says why, /readyz
answers 503 with the reason, and the runner tries again with backoff (1 s doubling to 30 s) until
it gets in or is stopped. Exiting would be worse: systemd's start limit gives up on a unit that
failed five times in ten minutes, for good, while Kafka may only be a minute late.
"""

from __future__ import annotations

import base64
import builtins
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from consumers.metrics import ConsumerMetrics
from consumers.state import ConsumerState
from daemon.errors import BadEventError, DeliveryError, PublishError
from daemon.kafka_client import ensure_topics, make_consumer, make_producer
from daemon.outbox import OutboxMessage
from schemas.config import ConsumersConfig, KafkaConfig

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

_LAG_EVERY_SECONDS = 5.0
_PRUNE_EVERY_SECONDS = 3600.0
_CONNECT_BACKOFF_FIRST_SECONDS = 1.0
_CONNECT_BACKOFF_MAX_SECONDS = 30.0


@dataclass(frozen=True)
class ConsumedEvent:
    """One Kafka record with its CloudEvents attributes."""

    topic: str
    partition: int
    offset: int
    key: str | None
    id: str
    type: str
    source: str
    value: bytes

    def parse(self, model: builtins.type[M]) -> M:
        """The record's value as ``model``; ``BadEventError`` when it does not fit the contract."""
        try:
            return model.model_validate_json(self.value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(value)"
            raise BadEventError(f"{self.type} does not match its schema: {where}: {first['msg']}") from exc


class Handler(Protocol):
    """What a consumer does with events; the runner owns delivery, retries and commits."""

    name: ClassVar[str]

    @property
    def topics(self) -> tuple[str, ...]: ...

    @property
    def event_types(self) -> frozenset[str]: ...

    def handle(self, event: ConsumedEvent) -> Sequence[OutboxMessage]:
        """Act on one event; return the events to publish. Raise DeliveryError / BadEventError."""
        ...

    def tick(self) -> Sequence[OutboxMessage]:
        """Called about twice a second: timers (grouped alerts, runs that finished). Returns events."""
        ...

    def close(self) -> Sequence[OutboxMessage]:
        """Finish or stop work in hand; return the events that records (published before exit)."""
        ...


def dead_letter(
    kafka: KafkaConfig,
    consumer: str,
    reason: str,
    *,
    key: bytes,
    value: bytes,
    headers: Sequence[tuple[str, bytes]],
    attempts: int,
    origin: tuple[str, int, int] | None = None,
) -> OutboxMessage:
    """A record for the dead-letter topic: the original key, value and headers, plus ``dlq_*`` headers
    saying which consumer gave up, why, after how many attempts, and (``origin``) where it was read."""
    out = [(k, v) for k, v in headers if not k.startswith("dlq_")]
    out += [
        ("dlq_reason", reason[:4000].encode("utf-8", "replace")),
        ("dlq_consumer", consumer.encode()),
        ("dlq_attempts", str(attempts).encode()),
        ("dlq_failed_at", str(time.time()).encode()),
    ]
    if origin is not None:
        topic, partition, offset = origin
        out += [
            ("dlq_topic", topic.encode()),
            ("dlq_partition", str(partition).encode()),
            ("dlq_offset", str(offset).encode()),
        ]
    return OutboxMessage(kafka.dead_letter_topic, key, value, tuple(out))


def _header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name:
            return value.decode("utf-8", "replace")
    return None


class ConsumerRunner:
    """Consumes ``handler.topics`` in the consumer group ``group_id`` until stopped."""

    def __init__(
        self,
        kafka: KafkaConfig,
        settings: ConsumersConfig,
        handler: Handler,
        state: ConsumerState,
        *,
        group_id: str,
        metrics: ConsumerMetrics | None = None,
        before_commit: Callable[[ConsumedEvent], None] | None = None,
    ) -> None:
        self.kafka = kafka
        self.settings = settings
        self.handler = handler
        self.state = state
        self.group_id = group_id
        self.metrics = metrics or ConsumerMetrics(handler.name)
        # A seam for tests of crash recovery: runs after the outbox is delivered, before the commit.
        self._before_commit = before_commit
        self._consumer: Any = None
        self._producer: Any = None
        self._stop = threading.Event()
        self._topics_made: set[str] = set()
        state.execute(
            "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " topic TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL, headers TEXT NOT NULL)"
        )

    # -- lifecycle -------------------------------------------------------------------------

    def run(
        self,
        stop: threading.Event,
        *,
        idle_timeout: float | None = None,
        on_connected: Callable[[], object] | None = None,
        on_waiting: Callable[[str, float], None] | None = None,
    ) -> None:
        """Consume until ``stop`` is set (or, with ``idle_timeout``, after that long without records).

        Until Kafka is reached the runner retries; before each wait it calls ``on_waiting(reason,
        seconds until the next try)``, and ``on_connected()`` once it got in (systemd's READY=1).
        ``idle_timeout`` counts from then.
        """
        self._stop = stop
        try:
            if not self._connect(stop, on_waiting):
                return
            if on_connected is not None:
                on_connected()
            log.info(
                "consumer %s started: group %s, topics %s",
                self.handler.name,
                self.group_id,
                ", ".join(self.handler.topics),
            )
            idle_since = time.monotonic()
            last_lag = last_prune = 0.0
            self._flush_outbox()
            while not stop.is_set():
                batches = self._consumer.poll(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        if stop.is_set():
                            return
                        if not self._process(record):
                            self._rewind(record)  # this record and the rest of its batch come again
                            break
                if batches:
                    idle_since = time.monotonic()
                self._guarded(self._tick)
                now = time.monotonic()
                if now - last_lag > _LAG_EVERY_SECONDS:
                    last_lag = now
                    self._guarded(self._update_lag)
                if now - last_prune > _PRUNE_EVERY_SECONDS:
                    last_prune = now
                    self._guarded(self.state.prune)
                self.metrics.heartbeat()
                if idle_timeout is not None and now - idle_since > idle_timeout:
                    return
        finally:
            self._close()

    def _connect(self, stop: threading.Event, on_waiting: Callable[[str, float], None] | None) -> bool:
        """Create the topics and join the group, retrying with backoff; False when stopped first."""
        topics = [*self.handler.topics, self.kafka.dead_letter_topic]
        backoff = _CONNECT_BACKOFF_FIRST_SECONDS
        reported: str | None = None
        while not stop.is_set():
            try:
                ensure_topics(self.kafka, topics)
                self._consumer = make_consumer(
                    self.kafka,
                    *self.handler.topics,
                    group_id=self.group_id,
                    max_poll_records=100,
                )
            except PublishError as exc:
                reason = str(exc)
                self.metrics.kafka_unreachable(reason)
                self.metrics.heartbeat()  # waiting on Kafka is not a hung loop
                if reason != reported:  # once per cause, not once per try
                    log.warning(
                        "degraded: consumer %s cannot reach Kafka (%s); not ready, trying again in %.0f s"
                        " and then up to every %.0f s (`strandline doctor` checks the connection)",
                        self.handler.name,
                        reason,
                        backoff,
                        _CONNECT_BACKOFF_MAX_SECONDS,
                    )
                    reported = reason
                else:
                    log.debug("consumer %s: Kafka still unreachable (%s)", self.handler.name, reason)
                if on_waiting is not None:
                    on_waiting(reason, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, _CONNECT_BACKOFF_MAX_SECONDS)
                continue
            self._topics_made.update(topics)
            if reported is not None:
                since = self.metrics.kafka_problem_since or time.time()
                log.info(
                    "recovered: consumer %s reached Kafka at %s after %.0f s",
                    self.handler.name,
                    self.kafka.bootstrap,
                    time.time() - since,
                )
            self.metrics.connected = True
            self.metrics.kafka_reachable()
            return True
        return False

    def _close(self) -> None:
        try:
            with self.state.transaction():
                self._enqueue(self.handler.close())
            if not self.metrics.connected:
                if backlog := self._outbox_size():
                    log.warning("stopping before Kafka was reached: %d events wait in the outbox", backlog)
                return
            self._flush_outbox(deadline=time.monotonic() + 5.0)
        except PublishError as exc:
            log.warning(
                "stopping with %d events still in the outbox (%s); they go out at the next start",
                self._outbox_size(),
                exc,
            )
        finally:
            if self._consumer is not None:
                self._consumer.close(autocommit=False)
            if self._producer is not None:
                self._producer.close(timeout=5)
            log.info("consumer %s stopped", self.handler.name)

    # -- one record ------------------------------------------------------------------------

    def _process(self, record: Any) -> bool:
        """Handle one record and commit it; False when the commit was refused (a rebalance)."""
        event_id = _header(record.headers, "ce_id")
        event_type = _header(record.headers, "ce_type")
        event = ConsumedEvent(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key.decode("utf-8", "replace") if record.key is not None else None,
            id=event_id or "",
            type=event_type or "",
            source=_header(record.headers, "ce_source") or "",
            value=record.value if record.value is not None else b"",
        )
        outcome: str | None
        if not event_id or not event_type:
            self._dead_letter(record, "not a CloudEvent: the ce_id or ce_type header is missing", attempts=0)
            outcome = "dead_lettered"
        elif event_type not in self.handler.event_types:
            log.debug(
                "skipping %s at %s/%d@%d: not handled here", event_type, record.topic, record.partition, record.offset
            )
            outcome = "skipped"
        elif self.state.seen(event_id):
            log.info("skipping %s %s: already processed (a redelivery)", event_type, event_id)
            outcome = "duplicate"
        else:
            outcome = self._act(event, record)
        if outcome is None:  # stopping in the middle of retries: not committed, redelivered later
            return False
        self.metrics.processed(outcome)
        if self._before_commit is not None:
            self._before_commit(event)
        return self._commit(record)

    def _act(self, event: ConsumedEvent, record: Any) -> str | None:
        attempts = 0
        backoff = self.settings.retry_backoff_seconds
        while True:
            attempts += 1
            try:
                with self.state.transaction():
                    outputs = self.handler.handle(event)
                    self.state.mark_processed(event.id)
                    self._enqueue(outputs)
                break
            except BadEventError as exc:
                self._dead_letter(record, str(exc), attempts)
                return "dead_lettered"
            except DeliveryError as exc:
                reason = str(exc)
                retriable = exc.retriable
            except Exception as exc:
                log.exception("consumer %s failed on %s %s", self.handler.name, event.type, event.id)
                reason = f"{type(exc).__name__}: {exc}"
                retriable = True
            if not retriable or attempts > self.settings.retries:
                self._dead_letter(record, reason, attempts)
                return "dead_lettered"
            log.warning(
                "%s %s failed (attempt %d of %d): %s; retrying in %.1f s",
                event.type,
                event.id,
                attempts,
                self.settings.retries + 1,
                reason,
                backoff,
            )
            if self._stop.wait(backoff):
                return None
            backoff = min(backoff * 2, 60.0)
        self._flush_outbox()
        return "acted"

    def _tick(self) -> None:
        with self.state.transaction():
            self._enqueue(self.handler.tick())
        self._flush_outbox()

    def _guarded(self, work: Callable[[], object]) -> None:
        """Timers, lag and pruning: a failure is logged and tried again next turn, never fatal."""
        try:
            work()
        except PublishError:
            raise  # stopping with undelivered events: run() ends, they go out at the next start
        except Exception:
            log.exception("consumer %s: %s failed; trying again next turn", self.handler.name, work.__name__)

    def _rewind(self, record: Any) -> None:
        """Fetch ``record`` again: poll() already moved past it, and its commit did not happen.

        After a refused commit (a rebalance) the partition may be someone else's now: nothing to do.
        The record comes back as a duplicate when it was already acted on, and is committed then.
        """
        from kafka import TopicPartition

        tp = TopicPartition(record.topic, record.partition)
        if tp in self._consumer.assignment():
            self._consumer.seek(tp, record.offset)

    def _commit(self, record: Any) -> bool:
        from kafka import OffsetAndMetadata, TopicPartition
        from kafka.errors import CommitFailedError, KafkaError

        tp = TopicPartition(record.topic, record.partition)
        try:
            self._consumer.commit({tp: OffsetAndMetadata(record.offset + 1, "", -1)})
        except CommitFailedError:
            log.warning(
                "commit of %s-%d@%d refused (the group rebalanced); the new owner sees it as a duplicate",
                record.topic,
                record.partition,
                record.offset,
            )
            return False
        except KafkaError as exc:
            log.warning("commit of %s-%d@%d failed: %s", record.topic, record.partition, record.offset, exc)
            return False
        return True

    # -- dead letters ----------------------------------------------------------------------

    def _dead_letter(self, record: Any, reason: str, attempts: int) -> None:
        log.error(
            "dead-lettering %s-%d@%d for consumer %s after %d attempt(s): %s",
            record.topic,
            record.partition,
            record.offset,
            self.handler.name,
            attempts,
            reason,
        )
        message = dead_letter(
            self.kafka,
            self.handler.name,
            reason,
            key=record.key or b"",
            value=record.value or b"",
            headers=record.headers or (),
            attempts=attempts,
            origin=(record.topic, record.partition, record.offset),
        )
        with self.state.transaction():
            self._enqueue([message])
        self._flush_outbox()

    # -- the consumer's outbox -------------------------------------------------------------

    def _enqueue(self, messages: Sequence[OutboxMessage]) -> None:
        for m in messages:
            self.state.execute(
                "INSERT INTO outbox (topic, key, value, headers) VALUES (?, ?, ?, ?)",
                (m.topic, m.key, m.value, json.dumps([[k, base64.b64encode(v).decode()] for k, v in m.headers])),
            )

    def _outbox_size(self) -> int:
        return int(self.state.execute("SELECT COUNT(*) FROM outbox")[0][0])

    def _flush_outbox(self, deadline: float | None = None) -> None:
        """Deliver the outbox in order and wait for the acks; retry until delivered or stopping."""
        backoff = 0.5
        while True:
            rows = self.state.execute("SELECT id, topic, key, value, headers FROM outbox ORDER BY id LIMIT 500")
            if not rows:
                return
            try:
                self._send(rows)
                backoff = 0.5
            except PublishError as exc:
                if (deadline is not None and time.monotonic() > deadline) or (deadline is None and self._stop.is_set()):
                    raise
                log.warning("cannot publish %d events yet: %s; retrying in %.1f s", len(rows), exc, backoff)
                self.metrics.kafka_unreachable(str(exc))
                self.metrics.heartbeat()  # waiting on Kafka is not a hung loop
                if deadline is None:
                    self._stop.wait(backoff)
                else:
                    time.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    def _send(self, rows: list[tuple[Any, ...]]) -> None:
        from kafka.errors import KafkaError

        if self._producer is None:
            self._producer = make_producer(self.kafka)
        # Output topics (drift, models) are created like the inputs: a broker may not auto-create.
        new_topics = sorted({row[1] for row in rows} - self._topics_made)
        if new_topics:
            ensure_topics(self.kafka, new_topics)
            self._topics_made.update(new_topics)
        try:
            futures = [
                self._producer.send(
                    topic,
                    key=bytes(key),
                    value=bytes(value),
                    headers=[(k, base64.b64decode(v)) for k, v in json.loads(headers)],
                )
                for _, topic, key, value, headers in rows
            ]
            for future in futures:
                future.get(timeout=30)
        except KafkaError as exc:
            self._producer.close(timeout=0)
            self._producer = None
            raise PublishError(f"Kafka did not acknowledge: {exc}") from exc
        ids = [row[0] for row in rows]
        with self.state.transaction() as db:
            db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
        self.metrics.published(len(rows))
        self.metrics.kafka_reachable()

    # -- lag -------------------------------------------------------------------------------

    def _update_lag(self) -> None:
        from kafka.errors import KafkaError

        try:
            assigned = list(self._consumer.assignment())
            if not assigned:
                return
            ends = self._consumer.end_offsets(assigned)
            for tp in assigned:
                self.metrics.lag(tp.topic, tp.partition, max(0, ends[tp] - self._consumer.position(tp)))
        except KafkaError as exc:
            log.debug("cannot read the lag: %s", exc)
