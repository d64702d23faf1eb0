"""Turning versions and rejections into Kafka records (CloudEvents binary mode). Pure functions.

No record nears the broker's 1 MB default, whatever the version:
- a version event lists its changes until it reaches ``EVENT_CHANGES_BUDGET`` bytes; the rest is
  marked truncated and the complete list goes out as ``dataset.version.changes`` chunks keyed by
  version id, each under ``CHUNK_BUDGET`` bytes;
- a version's profile goes to the profiles topic as ``dataset.version.profile`` parts of at most
  ``CHUNK_BUDGET`` bytes of columns; schema changes and validation failures in the event are cut
  to their own budgets;
- an invalid or unreadable version also gets a ``dataset.validation.failed`` event.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TypeVar

import xxhash
from pydantic import BaseModel

from daemon.catalog import VersionRow
from daemon.outbox import OutboxMessage
from daemon.quality import Quality
from schemas.config import KafkaConfig
from schemas.events import (
    ChangeListRef,
    DaemonHealth,
    FileChange,
    InputRejected,
    ProfileRef,
    SnapshotInfo,
    TableSummary,
    ValidationFailed,
    ValidationSummary,
    VersionChanges,
    VersionCreated,
    VersionProfile,
    VersionTagged,
    VersionTotals,
    dataschema_urn,
)
from schemas.profiles import SchemaChange

M = TypeVar("M", bound=BaseModel)

EVENT_CHANGES_BUDGET = 256 * 1024
CHUNK_BUDGET = 512 * 1024
SCHEMA_CHANGE_BUDGET = 64 * 1024
SCHEMA_CHANGE_ITEMS = 200
VALIDATION_BUDGET = 128 * 1024
MAX_FAILURES_IN_EVENT = 20
MAX_PROBLEMS_IN_EVENT = 50
_SIZE_SLACK = 64  # per-entry separators and the chunk's own fields


def event_id(*parts: str) -> str:
    """Deterministic CloudEvents id: the same fact always gets the same id."""
    return xxhash.xxh3_128_hexdigest("\x1f".join(parts).encode("utf-8"))


def _headers(event_type: str, ce_id: str, source: str, subject: str, time: datetime) -> tuple[tuple[str, bytes], ...]:
    return (
        ("ce_specversion", b"1.0"),
        ("ce_id", ce_id.encode()),
        ("ce_source", source.encode("utf-8")),
        ("ce_type", event_type.encode()),
        ("ce_subject", subject.encode("utf-8")),
        ("ce_time", time.astimezone(UTC).isoformat().encode()),
        ("ce_dataschema", dataschema_urn(event_type).encode()),
        ("content-type", b"application/json"),
    )


def source_uri(host: str, dataset: str) -> str:
    return f"strandline://{host}/{dataset}"


def cloud_event(
    topic: str, key: str, event_type: str, value: BaseModel, *, ce_id: str, source: str, subject: str, time: datetime
) -> OutboxMessage:
    """A Kafka record of ``value`` in CloudEvents binary mode (None fields left out of the JSON)."""
    return OutboxMessage(
        topic=topic,
        key=key.encode("utf-8"),
        value=value.model_dump_json(exclude_none=True).encode(),
        headers=_headers(event_type, ce_id, source, subject, time),
    )


def _json_sizes(items: Sequence[BaseModel]) -> list[int]:
    return [len(item.model_dump_json(exclude_none=True)) + _SIZE_SLACK for item in items]


def _split_by_size(items: Sequence[M], budget: int, sizes: Sequence[int] | None = None) -> list[list[M]]:
    """Consecutive runs of ``items`` whose JSON stays within ``budget`` bytes (one item at least).

    ``sizes``: ``_json_sizes(items)``, when the caller splits the same items more than once.
    """
    chunks: list[list[M]] = [[]]
    used = 0
    for item, size in zip(items, sizes if sizes is not None else _json_sizes(items), strict=True):
        if chunks[-1] and used + size > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(item)
        used += size
    return chunks


def _bounded_change(change: SchemaChange) -> tuple[SchemaChange, bool]:
    if len(change.model_dump_json()) <= SCHEMA_CHANGE_BUDGET:
        return change, False
    cut = SchemaChange(
        added=change.added[:SCHEMA_CHANGE_ITEMS],
        removed=change.removed[:SCHEMA_CHANGE_ITEMS],
        type_changed=change.type_changed[:SCHEMA_CHANGE_ITEMS],
        nullability_changed=change.nullability_changed[:SCHEMA_CHANGE_ITEMS],
    )
    return cut, True


def _validation_summary(quality: Quality) -> ValidationSummary | None:
    result = quality.validation
    if result is None or quality.validation_scope is None:
        return None
    failed = [o for o in result.outcomes if not o.success]
    summary = ValidationSummary(
        suite=result.suite,
        scope=quality.validation_scope,
        success=result.success,
        evaluated=result.evaluated,
        failed=result.failed,
        failures=tuple(failed[:MAX_FAILURES_IN_EVENT]),
        failures_truncated=len(failed) > MAX_FAILURES_IN_EVENT,
    )
    if len(summary.model_dump_json()) > VALIDATION_BUDGET:  # long offending values: keep the verdicts
        slim = tuple(o.model_copy(update={"partial_unexpected": []}) for o in summary.failures)
        summary = summary.model_copy(update={"failures": slim})
    return summary


def version_messages(
    kafka: KafkaConfig,
    host: str,
    root: str,
    row: VersionRow,
    changes: Sequence[FileChange],
    quality: Quality | None = None,
) -> list[OutboxMessage]:
    """The version event; for a large change-set the chunks of its complete change list; for
    tables the parts of its profile; for an invalid or unreadable version a validation failure."""
    sizes = _json_sizes(changes)
    head = _split_by_size(changes, EVENT_CHANGES_BUDGET, sizes)[0] if changes else []
    truncated = len(head) < len(changes)
    chunks = _split_by_size(changes, CHUNK_BUDGET, sizes) if truncated else []
    quality = quality or Quality()
    source = source_uri(host, row.dataset)
    subject = f"{row.dataset}@{row.seq}"

    def record(topic: str, key: str, event_type: str, value: BaseModel, *id_extra: str) -> OutboxMessage:
        ce_id = event_id(event_type, source, str(row.seq), row.version_id, *id_extra)
        return cloud_event(
            topic, key, event_type, value, ce_id=ce_id, source=source, subject=subject, time=row.created_at
        )

    messages: list[OutboxMessage] = []
    table: TableSummary | None = None
    if quality.has_tables:
        parts = _split_by_size(quality.profile.columns, CHUNK_BUDGET) if quality.profile is not None else []
        for i, columns in enumerate(parts):
            value = VersionProfile(
                dataset=row.dataset,
                version=row.seq,
                version_id=row.version_id,
                part=i,
                parts=len(parts),
                rows=quality.profile.rows if quality.profile else 0,
                status=quality.status,
                table_schema=quality.schema if i == 0 else None,
                columns=tuple(columns),
            )
            messages.append(
                record(kafka.profiles_topic, f"{row.version_id}/{i}", "dataset.version.profile", value, str(i))
            )
        change, change_cut = _bounded_change(quality.schema_change) if quality.schema_change else (None, False)
        table = TableSummary(
            files=quality.table_files,
            readable_files=quality.readable_files,
            rows=quality.profile.rows if quality.profile else 0,
            columns=len(quality.schema.fields) if quality.schema else 0,
            schema_fingerprint=quality.schema.fingerprint if quality.schema else None,
            schema_change=change,
            schema_change_truncated=change_cut,
            profile=ProfileRef(topic=kafka.profiles_topic, key=f"{row.version_id}/0", parts=len(parts))
            if parts
            else None,
        )
    validation = _validation_summary(quality)
    problems = quality.problems[:MAX_PROBLEMS_IN_EVENT]
    event = VersionCreated(
        dataset=row.dataset,
        version=row.seq,
        version_id=row.version_id,
        parent_version=row.parent_seq,
        parent_version_id=row.parent_version_id,
        created_at=row.created_at,
        host=host,
        root=root,
        totals=VersionTotals(
            files=row.files, bytes=row.bytes, added=row.added, modified=row.modified, removed=row.removed
        ),
        changes=tuple(head),
        changes_truncated=truncated,
        complete_changes=ChangeListRef(topic=kafka.manifests_topic, chunks=len(chunks)) if truncated else None,
        status=quality.status,
        status_reason=quality.reason,
        table=table,
        validation=validation,
        problems=problems,
        problems_truncated=len(quality.problems) > len(problems),
        snapshot=SnapshotInfo(
            policy=row.snapshot,
            restorable=row.restorable,
            reason=row.snapshot_note,
        ),
    )
    messages += [
        record(
            kafka.manifests_topic,
            row.version_id,
            "dataset.version.changes",
            VersionChanges(
                dataset=row.dataset,
                version=row.seq,
                version_id=row.version_id,
                chunk=i,
                chunks=len(chunks),
                changes=tuple(chunk),
            ),
            str(i),
        )
        for i, chunk in enumerate(chunks)
    ]
    # Chunks first: a subscriber that sees a truncated event can already read the full list.
    messages.append(record(kafka.versions_topic, row.dataset, "dataset.version.created", event))
    if quality.status in ("invalid", "unreadable"):
        failed = ValidationFailed(
            dataset=row.dataset,
            version=row.seq,
            version_id=row.version_id,
            created_at=row.created_at,
            host=host,
            status=quality.status,
            reason=quality.reason or quality.status,
            validation=validation,
            problems=problems,
        )
        messages.append(record(kafka.versions_topic, row.dataset, "dataset.validation.failed", failed))
    return messages


def health_message(kafka: KafkaConfig, event_type: str, health: DaemonHealth) -> OutboxMessage:
    """A ``daemon.degraded`` or ``daemon.recovered`` record, keyed by host."""
    source = f"strandline://{health.host}"
    ce_id = event_id(event_type, source, health.component, health.since.isoformat())
    return cloud_event(
        kafka.versions_topic,
        health.host,
        event_type,
        health,
        ce_id=ce_id,
        source=source,
        subject=f"{health.host}/{health.component}",
        time=health.at,
    )


def rejection_message(kafka: KafkaConfig, host: str, rejected: InputRejected) -> OutboxMessage:
    source = source_uri(host, rejected.dataset)
    return OutboxMessage(
        topic=kafka.versions_topic,
        key=rejected.dataset.encode("utf-8"),
        value=rejected.model_dump_json().encode(),
        headers=_headers(
            "dataset.input.rejected",
            event_id(
                "dataset.input.rejected", source, rejected.path, rejected.reason, rejected.detected_at.isoformat()
            ),
            source,
            f"{rejected.dataset}:{rejected.path}",
            rejected.detected_at,
        ),
    )


def tag_message(kafka: KafkaConfig, tagged: VersionTagged) -> OutboxMessage:
    """``dataset.version.tagged`` / ``untagged``, keyed by dataset so it stays in order with its versions."""
    event_type = "dataset.version.tagged" if tagged.version is not None else "dataset.version.untagged"
    source = source_uri(tagged.host, tagged.dataset)
    target = f"{tagged.dataset}@{tagged.version}" if tagged.version is not None else tagged.dataset
    return cloud_event(
        kafka.versions_topic,
        tagged.dataset,
        event_type,
        tagged,
        ce_id=event_id(event_type, source, tagged.tag, str(tagged.version), tagged.at.isoformat()),
        source=source,
        subject=f"{target}#{tagged.tag}",
        time=tagged.at,
    )
