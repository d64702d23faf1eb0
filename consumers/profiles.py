"""Rebuild a version's schema and column profiles from Kafka alone (the compacted profiles topic).

A consumer on another host needs no access to the daemon's catalog or the data: it reads the
``dataset.version.profile`` parts of a version id and puts them back together.
"""

from __future__ import annotations

import time

from daemon.errors import VersionNotFoundError
from daemon.kafka_client import make_consumer
from schemas.config import KafkaConfig
from schemas.events import VersionProfile
from schemas.profiles import TableProfile, TableSchema


def assemble(parts: list[VersionProfile]) -> tuple[TableSchema | None, TableProfile]:
    """Join the parts of one version's profile (any order) into its schema and profile."""
    ordered = sorted(parts, key=lambda p: p.part)
    if not ordered or [p.part for p in ordered] != list(range(ordered[0].parts)):
        have = [p.part for p in ordered]
        raise VersionNotFoundError(f"incomplete profile: have parts {have} of {ordered[0].parts if ordered else '?'}")
    columns = tuple(c for p in ordered for c in p.columns)
    return ordered[0].table_schema, TableProfile(rows=ordered[0].rows, columns=columns)


def fetch_profile(
    kafka: KafkaConfig, version_id: str, *, timeout: float = 30.0
) -> tuple[TableSchema | None, TableProfile]:
    """Read the profiles topic from the start to its end and assemble ``version_id``'s profile."""
    from kafka import TopicPartition

    consumer = make_consumer(kafka, group_id=None)
    try:
        deadline = time.monotonic() + timeout
        partitions = None
        while not partitions:
            partitions = consumer.partitions_for_topic(kafka.profiles_topic)
            if time.monotonic() > deadline:
                raise VersionNotFoundError(f"topic {kafka.profiles_topic} does not exist on {kafka.bootstrap}")
            if not partitions:
                time.sleep(0.1)
        tps = [TopicPartition(kafka.profiles_topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        found: dict[int, VersionProfile] = {}
        prefix = f"{version_id}/".encode()
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise VersionNotFoundError(f"timed out reading {kafka.profiles_topic}")
            for records in consumer.poll(timeout_ms=200).values():
                for r in records:
                    if r.key is not None and r.key.startswith(prefix):
                        part = VersionProfile.model_validate_json(r.value)
                        found[part.part] = part  # compaction or a retry may repeat a part: the last wins
        if not found:
            raise VersionNotFoundError(f"no profile of version {version_id} on {kafka.profiles_topic}")
        return assemble(list(found.values()))
    finally:
        consumer.close()
