"""`strandline consume drift`: compare each new valid version with the previous valid one.

For every ``dataset.version.created`` of a usable version (valid, or tables with no suite) the
handler gets both profiles from the profile index (Kafka alone: no catalog, no data files),
runs ``consumers.drift.compare`` with the dataset's thresholds and publishes
``dataset.drift.detected`` when the version drifted, or ``dataset.drift.cleared`` when the
previous usable version had drifted and this one did not. The previous verdict is recomputed
from the profiles rather than remembered, so any copy of the consumer on any host agrees.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import ClassVar

from consumers.drift import VersionSide, compare
from consumers.profile_index import USABLE_STATUSES, ProfileIndex
from consumers.runner import ConsumedEvent
from consumers.state import ConsumerState
from daemon.errors import DeliveryError
from daemon.events import cloud_event, event_id
from daemon.outbox import OutboxMessage
from schemas.config import DriftConfig, KafkaConfig
from schemas.drift import DriftReport
from schemas.events import DriftCleared, DriftDetected, VersionCreated

log = logging.getLogger(__name__)

# How long to wait for a version's profile parts when its event arrives first.
PROFILE_WAIT_SECONDS = 15.0
# Keep a drift event well under the broker's 1 MB default.
EVENT_BUDGET = 900 * 1024


class DriftHandler:
    name: ClassVar[str] = "drift"

    def __init__(self, kafka: KafkaConfig, config: DriftConfig, state: ConsumerState, *, host: str) -> None:
        self.kafka = kafka
        self.config = config
        self.host = host
        self.index = ProfileIndex(kafka, state)

    @property
    def topics(self) -> tuple[str, ...]:
        return (self.kafka.versions_topic,)

    @property
    def event_types(self) -> frozenset[str]:
        return frozenset({"dataset.version.created"})

    def close(self) -> Sequence[OutboxMessage]:
        self.index.close()
        return ()

    def tick(self) -> Sequence[OutboxMessage]:
        return ()

    def _side(self, version_id: str, wait: float) -> VersionSide | None:
        found = self.index.profile(version_id, wait=wait)
        if found is None:
            return None
        head, schema, profile = found
        return VersionSide(version=head.version, version_id=version_id, schema=schema, profile=profile)

    def verdict(self, dataset: str, current: VersionSide) -> tuple[DriftReport, VersionSide] | None:
        """``current`` against the previous usable version of ``dataset``, and that reference;
        None for the first one."""
        previous_id = self.index.previous_usable(dataset, current.version)
        if previous_id is None:
            return None
        reference = self._side(previous_id, 0.0)
        if reference is None:
            return None
        return compare(reference, current, self.config.for_dataset(dataset), dataset=dataset), reference

    def handle(self, event: ConsumedEvent) -> Sequence[OutboxMessage]:
        created = event.parse(VersionCreated)
        if created.status not in USABLE_STATUSES or created.table is None or created.table.profile is None:
            log.debug("%s@%d is %s or has no table: no drift check", created.dataset, created.version, created.status)
            return ()
        current = self._side(created.version_id, PROFILE_WAIT_SECONDS)
        if current is None:
            raise DeliveryError(
                f"the profile of {created.dataset}@{created.version} ({created.version_id}) is not on"
                f" {self.kafka.profiles_topic} yet"
            )
        found = self.verdict(created.dataset, current)
        if found is None:
            log.info(
                "%s@%d is the first valid version: it is the reference for the next", created.dataset, created.version
            )
            return ()
        report, reference = found
        if report.drifted:
            log.warning(
                "%s@%d drifted from @%d: %s",
                created.dataset,
                created.version,
                report.reference_version,
                "; ".join(report.reasons),
            )
            return [self._message("dataset.drift.detected", DriftDetected, created, report)]
        # Cleared means: the reference itself had drifted from its own reference.
        earlier = self.verdict(created.dataset, reference)
        was_drifted = earlier is not None and earlier[0].drifted
        log.info(
            "%s@%d within bounds of @%d (%d of %d columns drifted)%s",
            created.dataset,
            created.version,
            report.reference_version,
            report.drifted_columns,
            report.tested_columns,
            ": drift cleared" if was_drifted else "",
        )
        if was_drifted:
            return [self._message("dataset.drift.cleared", DriftCleared, created, report)]
        return ()

    def _message(
        self,
        event_type: str,
        model: type[DriftDetected] | type[DriftCleared],
        created: VersionCreated,
        report: DriftReport,
    ) -> OutboxMessage:
        now = datetime.now(UTC)
        value = model(
            dataset=created.dataset,
            version=created.version,
            version_id=created.version_id,
            host=created.host,
            detected_at=now,
            report=report,
        )
        if len(value.model_dump_json()) > EVENT_BUDGET:
            slim = report.model_copy(update={"columns": tuple(c for c in report.columns if c.drifted)})
            value = value.model_copy(update={"report": slim, "columns_truncated": True})
        source = f"strandline://{self.host}/consumers/drift"
        return cloud_event(
            self.kafka.drift_topic,
            created.dataset,
            event_type,
            value,
            ce_id=event_id(event_type, created.version_id, report.reference_version_id),
            source=source,
            subject=f"{created.dataset}@{created.version}",
            time=now,
        )
