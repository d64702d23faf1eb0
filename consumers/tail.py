"""`strandline events tail`: read Strandline's events from Kafka and hand them to a printer."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from daemon.kafka_client import make_consumer
from schemas.config import KafkaConfig


@dataclass(frozen=True)
class ReceivedEvent:
    topic: str
    partition: int
    offset: int
    key: str | None
    headers: dict[str, str]
    data: dict[str, Any]

    @property
    def type(self) -> str:
        return self.headers.get("ce_type", "?")


def tail(
    kafka: KafkaConfig,
    *,
    from_beginning: bool,
    count: int | None,
    timeout: float | None,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[ReceivedEvent]:
    """Yield events from the versions topic until ``count`` are read, ``timeout`` passes idle, or ``stop``."""
    consumer = make_consumer(
        kafka,
        kafka.versions_topic,
        group_id=None,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    seen = 0
    idle_since = time.monotonic()
    try:
        while not stop():
            batches = consumer.poll(timeout_ms=200)
            if not batches:
                if timeout is not None and time.monotonic() - idle_since > timeout:
                    return
                continue
            idle_since = time.monotonic()
            for records in batches.values():
                for r in records:
                    headers = {k: v.decode("utf-8", "replace") for k, v in (r.headers or [])}
                    try:
                        data = json.loads(r.value)
                    except (ValueError, TypeError):
                        data = {"unparseable": repr(r.value[:200])}
                    yield ReceivedEvent(
                        r.topic,
                        r.partition,
                        r.offset,
                        r.key.decode("utf-8", "replace") if r.key else None,
                        headers,
                        data,
                    )
                    seen += 1
                    if count is not None and seen >= count:
                        return
    finally:
        consumer.close()
