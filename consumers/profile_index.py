"""A local copy of the compacted profiles topic, so a consumer on any host finds profiles by version.

The drift consumer needs the profile of the version it was told about and of the previous
valid version of the same dataset; both live on ``<prefix>.profiles`` (keyed
``<version_id>/<part>``, every part carrying dataset, version and status). The index reads that
topic with its own group-less consumer into the consumer's SQLite state, remembering how far it
read, so a restart continues where it stopped and a rebalance needs nothing from another host.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from consumers.profiles import assemble
from consumers.state import ConsumerState
from daemon.errors import VersionNotFoundError
from daemon.kafka_client import make_consumer
from schemas.config import KafkaConfig
from schemas.events import VersionProfile
from schemas.profiles import TableProfile, TableSchema

log = logging.getLogger(__name__)

# Versions whose data a drift verdict may be computed on: valid, or tables of a dataset with no suite.
USABLE_STATUSES = ("valid", "unvalidated")


class ProfileIndex:
    def __init__(self, kafka: KafkaConfig, state: ConsumerState) -> None:
        self.kafka = kafka
        self.state = state
        self._consumer: Any = None
        with state.transaction() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS profile_parts (version_id TEXT NOT NULL, part INTEGER NOT NULL,"
                " parts INTEGER NOT NULL, dataset TEXT NOT NULL, version INTEGER NOT NULL, status TEXT,"
                " value BLOB NOT NULL, PRIMARY KEY (version_id, part))"
            )
            db.execute("CREATE INDEX IF NOT EXISTS profile_parts_by_dataset ON profile_parts (dataset, version)")
            db.execute(
                "CREATE TABLE IF NOT EXISTS profile_positions (partition INTEGER PRIMARY KEY, next_offset INTEGER)"
            )

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
            self._consumer = None

    def catch_up(self, timeout: float = 10.0) -> int:
        """Read the topic up to its end as of now; returns the parts stored."""
        from kafka import TopicPartition

        consumer = self._open()
        partitions = consumer.partitions_for_topic(self.kafka.profiles_topic) or set()
        tps = [TopicPartition(self.kafka.profiles_topic, p) for p in sorted(partitions)]
        if not tps:
            return 0
        if set(consumer.assignment()) != set(tps):
            consumer.assign(tps)
            known = dict(self.state.execute("SELECT partition, next_offset FROM profile_positions"))
            for tp in tps:
                if tp.partition in known:
                    consumer.seek(tp, known[tp.partition])
                else:
                    consumer.seek_to_beginning(tp)
        ends = consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout
        stored = 0
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise VersionNotFoundError(f"timed out reading {self.kafka.profiles_topic}")
            batches = consumer.poll(timeout_ms=200)
            with self.state.transaction() as db:
                for tp, records in batches.items():
                    for r in records:
                        stored += self._store(db, r)
                    db.execute(
                        "INSERT OR REPLACE INTO profile_positions VALUES (?, ?)", (tp.partition, consumer.position(tp))
                    )
        return stored

    def _open(self) -> Any:
        if self._consumer is None:
            self._consumer = make_consumer(self.kafka, group_id=None)
        return self._consumer

    def _store(self, db: Any, record: Any) -> int:
        try:
            part = VersionProfile.model_validate_json(record.value)
        except ValueError:
            log.warning(
                "ignoring a record of %s at offset %d that is not a version profile",
                self.kafka.profiles_topic,
                record.offset,
            )
            return 0
        # A retry or compaction may repeat a part: the newest copy wins.
        db.execute(
            "INSERT OR REPLACE INTO profile_parts VALUES (?, ?, ?, ?, ?, ?, ?)",
            (part.version_id, part.part, part.parts, part.dataset, part.version, part.status, record.value),
        )
        return 1

    def _complete(self, version_id: str) -> list[VersionProfile] | None:
        rows = self.state.execute("SELECT parts, value FROM profile_parts WHERE version_id = ?", (version_id,))
        if not rows or len(rows) != rows[0][0]:
            return None
        return [VersionProfile.model_validate_json(value) for _, value in rows]

    def profile(
        self, version_id: str, *, wait: float = 0.0
    ) -> tuple[VersionProfile, TableSchema | None, TableProfile] | None:
        """The first part (dataset, version, status), schema and profile of ``version_id``, if all parts are in.

        With ``wait``, reads on from the topic for up to that long while parts are missing: the
        daemon publishes a version's profile before its event, but another partition may lag.
        """
        deadline = time.monotonic() + wait
        while True:
            parts = self._complete(version_id)
            if parts is not None:
                schema, profile = assemble(parts)
                head = min(parts, key=lambda p: p.part)
                return head, schema, profile
            if time.monotonic() >= deadline:
                return None
            self.catch_up(timeout=max(0.5, deadline - time.monotonic()))
            if self._complete(version_id) is None:
                time.sleep(0.2)

    def previous_usable(self, dataset: str, before: int) -> str | None:
        """The version id of the newest usable version of ``dataset`` older than version ``before``."""
        placeholders = ", ".join("?" * len(USABLE_STATUSES))
        rows = self.state.execute(
            "SELECT version_id, parts, COUNT(*) FROM profile_parts WHERE dataset = ? AND version < ?"  # noqa: S608
            f" AND status IN ({placeholders}) GROUP BY version_id, version ORDER BY version DESC",
            (dataset, before, *USABLE_STATUSES),
        )
        for version_id, parts, have in rows:
            if parts == have:
                return str(version_id)
        return None
