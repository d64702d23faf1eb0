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

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import ClassVar, TypeVar

import xxhash
from pydantic import BaseModel, TypeAdapter

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
        value=_json(value),
        headers=_headers(event_type, ce_id, source, subject, time),
    )


def _json(value: BaseModel) -> bytes:
    return value.model_dump_json(exclude_none=True).encode()


def _json_sizes(items: Sequence[BaseModel]) -> list[int]:
    return [len(_json(item)) + _SIZE_SLACK for item in items]


def _runs(sizes: Sequence[int], budget: int) -> list[range]:
    """Consecutive runs of items of these sizes that stay within ``budget`` (one item at least)."""
    runs: list[range] = []
    start = used = 0
    for i, size in enumerate(sizes):
        if i > start and used + size > budget:
            runs.append(range(start, i))
            start, used = i, 0
        used += size
    runs.append(range(start, len(sizes)))
    return runs


def _split_by_size(items: Sequence[M], budget: int) -> list[list[M]]:
    """Consecutive runs of ``items`` whose JSON stays within ``budget`` bytes (one item at least)."""
    return [list(items[run.start : run.stop]) for run in _runs(_json_sizes(items), budget)]


class _ChangeList:
    """A version's changes serialized once (not once to measure and again to publish): each
    change's JSON, and any run of them as the JSON array a ``VersionChanges`` value holds.

    A change's JSON starts with ``{"path":``, and ``,{"path":`` (an unescaped quote) cannot
    occur inside a JSON string: the array splits exactly there, into the items as
    ``model_dump_json`` writes them.
    """

    _ADAPTER: ClassVar[TypeAdapter[list[FileChange]]] = TypeAdapter(list[FileChange])

    def __init__(self, changes: Sequence[FileChange]) -> None:
        self.whole = self._ADAPTER.dump_json(list(changes), exclude_none=True)
        pieces = self.whole[1:-1].split(b',{"path":') if changes else []
        # Where each item starts and ends in ``whole``; the split took 8 bytes off all but the first.
        self.starts: list[int] = []
        self.ends: list[int] = []
        at = 1
        for i, piece in enumerate(pieces):
            start = at if i == 0 else at + 1
            end = start + len(piece) + (0 if i == 0 else 8)
            self.starts.append(start)
            self.ends.append(end)
            at = end
        assert len(pieces) == len(changes) and (not changes or at == len(self.whole) - 1)

    def sizes(self) -> list[int]:
        return [end - start + _SIZE_SLACK for start, end in zip(self.starts, self.ends, strict=True)]

    def array(self, run: range) -> bytes:
        """The JSON array of the changes in ``run``."""
        return b"[" + self.whole[self.starts[run.start] : self.ends[run.stop - 1]] + b"]"


def _with_changes(value: VersionChanges, changes: bytes) -> bytes:
    """``value`` (its ``changes`` empty) as JSON, with the JSON array ``changes`` in their place."""
    empty = _json(value)
    assert not value.changes and empty.endswith(b'"changes":[]}'), "changes must stay the last field"
    return empty[: -len(b"[]}")] + changes + b"}"


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
    listed = _ChangeList(changes)
    sizes = listed.sizes()
    head = changes[: len(_runs(sizes, EVENT_CHANGES_BUDGET)[0])]
    truncated = len(head) < len(changes)
    chunks = _runs(sizes, CHUNK_BUDGET) if truncated else []
    quality = quality or Quality()
    source = source_uri(host, row.dataset)
    subject = f"{row.dataset}@{row.seq}"

    def record(topic: str, key: str, event_type: str, value: BaseModel, *id_extra: str) -> OutboxMessage:
        ce_id = event_id(event_type, source, str(row.seq), row.version_id, *id_extra)
        return cloud_event(
            topic, key, event_type, value, ce_id=ce_id, source=source, subject=subject, time=row.created_at
        )

    def changes_record(i: int, run: range) -> OutboxMessage:
        empty = VersionChanges(
            dataset=row.dataset, version=row.seq, version_id=row.version_id, chunk=i, chunks=len(chunks), changes=()
        )
        message = record(kafka.manifests_topic, row.version_id, "dataset.version.changes", empty, str(i))
        return dataclasses.replace(message, value=_with_changes(empty, listed.array(run)))

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
    messages += [changes_record(i, run) for i, run in enumerate(chunks)]
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
