"""Recording which versions retraining runs used, from the ``model.retrain.*`` events on Kafka.

The retrain consumer may run on another host, so the catalog learns about runs the way any
subscriber does: by reading ``<prefix>.models``. ``sync_lineage`` reads that topic up to its
end with its own consumer group, records each run's version in the catalog, and commits the
offsets only after that (a crash re-reads, and recording is idempotent). ``strandline gc``
runs it first, so a version a model was trained on is never collected.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pydantic import ValidationError

from daemon.catalog import Catalog
from daemon.errors import PublishError
from daemon.kafka_client import make_consumer
from schemas.config import StrandlineConfig
from schemas.events import RetrainFinished, RetrainStarted

log = logging.getLogger(__name__)

_RUN_TYPES: dict[bytes, type[RetrainStarted] | type[RetrainFinished]] = {
    b"model.retrain.started": RetrainStarted,
    b"model.retrain.finished": RetrainFinished,
}


@dataclass(frozen=True, slots=True)
class LineageSync:
    read: int  # retraining events read
    recorded: int  # (run, version) pairs new to the catalog


def lineage_group(config: StrandlineConfig) -> str:
    return f"{config.kafka.topic_prefix}.lineage.{config.host}"


def sync_lineage(config: StrandlineConfig, catalog: Catalog, *, timeout: float = 30.0) -> LineageSync:
    """Read ``<prefix>.models`` to its end and record every run's dataset version.

    Raises ``PublishError`` when Kafka cannot be reached or the end is not reached in ``timeout``.
    """
    from kafka import TopicPartition
    from kafka.errors import KafkaError

    topic = config.kafka.models_topic
    consumer = make_consumer(config.kafka, group_id=lineage_group(config), consumer_timeout_ms=1000)
    read = recorded = 0
    try:
        deadline = time.monotonic() + timeout
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return LineageSync(0, 0)  # no retraining consumer has ever published: no lineage to keep
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        ends = consumer.end_offsets(assigned)
        while any(consumer.position(tp) < ends[tp] for tp in assigned):
            if time.monotonic() > deadline:
                raise PublishError(
                    f"could not read {topic} to its end within {timeout:.0f} s: retraining runs unknown; retry"
                )
            for _tp, records in consumer.poll(timeout_ms=500).items():
                for record in records:
                    read += 1
                    recorded += _record(catalog, record)
            consumer.commit()
    except KafkaError as exc:
        raise PublishError(f"cannot read retraining runs from {topic}: {exc}") from exc
    finally:
        consumer.close()
    if recorded:
        log.info("lineage: %d retraining runs' versions recorded from %s", recorded, topic)
    return LineageSync(read, recorded)


def _record(catalog: Catalog, record: object) -> int:
    headers = dict(getattr(record, "headers", None) or [])
    model = _RUN_TYPES.get(headers.get("ce_type", b""))
    if model is None:
        return 0
    try:
        run = model.model_validate_json(getattr(record, "value", b"") or b"")
    except ValidationError as exc:
        log.warning("lineage: skipping a malformed %s event: %s", model.__name__, exc.errors()[0]["msg"])
        return 0
    return int(catalog.record_lineage(run.dataset, run.version, run.version_id, run.run_id))
