"""S3 event notifications as hints: which keys of which notified dataset to look at now.

Messages are the AWS event JSON (``{"Records": [...]}``) that S3 sends to SQS/SNS and that MinIO
writes to its Kafka target (with ``EventName`` and ``Key`` beside ``Records``). A notification
is never trusted as the truth about an object: it only names a key, which the versioner then
HEADs and hashes. So duplicated, late or out-of-order notifications cannot make a wrong or a
duplicate version, and a lost one is caught by the dataset's slow safety re-list.

Offsets are committed once the keys are handed to the engine. A crash before they are versioned
loses nothing: every start begins with a full reconcile of every dataset.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from daemon.errors import StrandlineError
from daemon.objectstore import BucketRoot, KeyRejection, check_key, parse_root
from schemas.config import DatasetConfig, KafkaConfig, S3NotificationsConfig

log = logging.getLogger(__name__)


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class S3Object(_Loose):
    key: str = Field(max_length=4096, description="URL-encoded (form encoding: '+' is a space).")


class S3Bucket(_Loose):
    name: str = Field(max_length=255)


class S3Entity(_Loose):
    bucket: S3Bucket
    object: S3Object


class S3Record(_Loose):
    eventName: str = Field(max_length=200)
    s3: S3Entity


class S3EventMessage(_Loose):
    Records: tuple[S3Record, ...] = Field(max_length=10_000)


@dataclass(frozen=True)
class Hint:
    dataset: str
    rel: str | None  # None: the key is unsafe; a full pass reports it


def parse_message(value: bytes) -> list[tuple[str, str]]:
    """(bucket, key) of every object event in one message; ``ValueError`` if it is not one."""
    try:
        message = S3EventMessage.model_validate_json(value)
    except ValidationError as exc:
        raise ValueError(f"not an S3 event notification: {exc.errors()[0]['msg']}") from exc
    out = []
    for record in message.Records:
        name = record.eventName.removeprefix("s3:")
        if name.startswith(("ObjectCreated:", "ObjectRemoved:", "ObjectRestore:", "LifecycleExpiration:")):
            out.append((record.s3.bucket.name, unquote_plus(record.s3.object.key)))
    return out


def route(events: Iterable[tuple[str, str]], roots: dict[str, BucketRoot]) -> list[Hint]:
    """Which dataset each (bucket, key) belongs to, and the path it is versioned under. Pure."""
    hints = []
    for bucket, key in events:
        for name, root in roots.items():
            if root.bucket != bucket or not key.startswith(root.prefix):
                continue
            verdict = check_key(key, root.prefix)
            hints.append(Hint(name, None if isinstance(verdict, KeyRejection) else verdict))
    return hints


class NotificationListener:
    """Reads the notification topic and hands each notified key to the engine."""

    def __init__(
        self,
        kafka: KafkaConfig,
        settings: S3NotificationsConfig,
        datasets: list[DatasetConfig],
        *,
        host: str,
        note: Callable[[str, set[str]], None],
        request_full: Callable[[str], None],
    ) -> None:
        assert settings.topic is not None
        self._kafka = kafka.model_copy(update={"bootstrap": settings.bootstrap}) if settings.bootstrap else kafka
        self._topic = settings.topic
        self._group = settings.group_id or f"strandline-notifications-{host}"
        self._roots = {ds.name: parse_root(ds.root) for ds in datasets}
        self._note = note
        self._request_full = request_full
        self.problem: str | None = None
        self.assigned = threading.Event()  # set once the consumer holds its partitions

    def _check_new_group(self, consumer: Any) -> bool:
        """After the first assignment: True when it is done (partitions held), False to ask again.

        A new group starts at "latest": objects changed after the start's listing but before the
        assignment would be notified into the void and wait for the safety re-list. So a group
        with no committed offset asks for one full pass of every dataset once it holds them.
        """
        partitions = consumer.assignment()
        if not partitions:
            return False
        if any(consumer.committed(tp) is None for tp in partitions):
            for name in self._roots:
                self._request_full(name)
        self.assigned.set()
        return True

    def run(self, stop: threading.Event) -> None:
        from kafka.errors import KafkaError

        from daemon.kafka_client import make_consumer

        consumer = None
        checked = False
        while not stop.is_set():
            try:
                if consumer is None:
                    # "latest" for a new group: what came before is covered by the start's full reconcile.
                    consumer = make_consumer(
                        self._kafka,
                        self._topic,
                        group_id=self._group,
                        auto_offset_reset="latest",
                        fetch_max_wait_ms=50,
                        max_poll_records=500,
                    )
                    log.info("following S3 notifications on topic %s (group %s)", self._topic, self._group)
                    checked = False
                batch = consumer.poll(timeout_ms=200)
                if not checked:
                    checked = self._check_new_group(consumer)
                if batch:
                    self._handle(record.value for records in batch.values() for record in records)
                    consumer.commit()
                self.problem = None
            except (KafkaError, StrandlineError) as exc:
                if self.problem is None:
                    log.warning("S3 notifications on %s unavailable (%s); retrying", self._topic, exc)
                self.problem = f"notification topic {self._topic}: {exc}"
                if consumer is not None:
                    consumer.close()
                    consumer = None
                stop.wait(2.0)
        if consumer is not None:
            consumer.close()

    def _handle(self, values: Iterable[bytes]) -> None:
        per_dataset: dict[str, set[str]] = {}
        for value in values:
            try:
                events = parse_message(value)
            except ValueError as exc:
                log.warning("skipping a message on %s: %s", self._topic, exc)
                continue
            for hint in route(events, self._roots):
                if hint.rel is None:
                    self._request_full(hint.dataset)
                else:
                    per_dataset.setdefault(hint.dataset, set()).add(hint.rel)
        for name, rels in per_dataset.items():
            self._note(name, rels)
