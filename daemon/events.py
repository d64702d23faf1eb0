"""Turning versions and rejections into Kafka records (CloudEvents binary mode). Pure functions.

A version event lists its changes until it reaches ``EVENT_CHANGES_BUDGET`` bytes; the rest is
marked truncated and the complete list goes out as ``dataset.version.changes`` chunks keyed by
version id, each under ``CHUNK_BUDGET`` bytes, so no record nears the broker's 1 MB default.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import xxhash

from daemon.catalog import VersionRow
from daemon.outbox import OutboxMessage
from schemas.config import KafkaConfig
from schemas.events import (
    ChangeListRef,
    FileChange,
    InputRejected,
    VersionChanges,
    VersionCreated,
    VersionTotals,
    dataschema_urn,
)

EVENT_CHANGES_BUDGET = 256 * 1024
CHUNK_BUDGET = 512 * 1024
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


def _split_by_size(changes: Sequence[FileChange], budget: int) -> list[list[FileChange]]:
    chunks: list[list[FileChange]] = [[]]
    used = 0
    for change in changes:
        size = len(change.model_dump_json(exclude_none=True)) + _SIZE_SLACK
        if chunks[-1] and used + size > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(change)
        used += size
    return chunks


def version_messages(
    kafka: KafkaConfig, host: str, root: str, row: VersionRow, changes: Sequence[FileChange]
) -> list[OutboxMessage]:
    """The version event and, for a large change-set, the chunks of its complete change list."""
    head = _split_by_size(changes, EVENT_CHANGES_BUDGET)[0] if changes else []
    truncated = len(head) < len(changes)
    chunks = _split_by_size(changes, CHUNK_BUDGET) if truncated else []
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
    )
    source = source_uri(host, row.dataset)
    subject = f"{row.dataset}@{row.seq}"
    messages = [
        OutboxMessage(
            topic=kafka.manifests_topic,
            key=row.version_id.encode(),
            value=VersionChanges(
                dataset=row.dataset,
                version=row.seq,
                version_id=row.version_id,
                chunk=i,
                chunks=len(chunks),
                changes=tuple(chunk),
            )
            .model_dump_json(exclude_none=True)
            .encode(),
            headers=_headers(
                "dataset.version.changes",
                event_id("dataset.version.changes", source, str(row.seq), row.version_id, str(i)),
                source,
                subject,
                row.created_at,
            ),
        )
        for i, chunk in enumerate(chunks)
    ]
    # Chunks first: a subscriber that sees a truncated event can already read the full list.
    messages.append(
        OutboxMessage(
            topic=kafka.versions_topic,
            key=row.dataset.encode("utf-8"),
            value=event.model_dump_json(exclude_none=True).encode(),
            headers=_headers(
                "dataset.version.created",
                event_id("dataset.version.created", source, str(row.seq), row.version_id),
                source,
                subject,
                row.created_at,
            ),
        )
    )
    return messages


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
