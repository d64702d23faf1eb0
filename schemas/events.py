"""Event contract, version 1.

Every event is a Kafka record whose value is the JSON of one model below and whose
headers carry the CloudEvents 1.0 attributes in binary content mode (``ce_id``,
``ce_source``, ``ce_type``, ``ce_specversion``, ``ce_time``, ``ce_subject``,
``ce_dataschema``, ``content-type``). ``ce_id`` is deterministic: the same fact always
has the same id, so a consumer de-duplicates on it.

Adding optional fields is a compatible change; removing or retyping one bumps
``schema_version`` and the ``ce_dataschema`` URN.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

ChangeKind = Literal["added", "modified", "removed"]


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class FileChange(_Event):
    """One file's change between a version and its parent."""

    path: str = Field(description="POSIX path relative to the dataset root.")
    change: ChangeKind
    size: int | None = Field(None, ge=0, description="New size in bytes (null when removed).")
    old_size: int | None = Field(None, ge=0, description="Size in the parent version (null when added).")
    new_hash: str | None = Field(None, description="XXH3-128 of the new bytes, 32 hex digits.")
    old_hash: str | None = Field(None, description="XXH3-128 in the parent version.")


class VersionTotals(_Event):
    files: int = Field(ge=0, description="Files in the new version.")
    bytes: int = Field(ge=0, description="Bytes in the new version.")
    added: int = Field(ge=0)
    modified: int = Field(ge=0)
    removed: int = Field(ge=0)


class ChangeListRef(_Event):
    """Where the complete change list lives when the event carries only its first entries."""

    topic: str = Field(description="Kafka topic of dataset.version.changes chunks, keyed by version_id.")
    chunks: int = Field(ge=0, description="Number of chunks published for this version.")


class VersionCreated(_Event):
    """``dataset.version.created``: a quiet change-set became an immutable dataset version."""

    schema_version: Literal[1] = 1
    dataset: str
    version: int = Field(ge=1, description="Sequence number within the dataset, from 1.")
    version_id: str = Field(description="XXH3-128 of the canonical manifest (see README).")
    parent_version: int | None = None
    parent_version_id: str | None = None
    created_at: datetime
    host: str
    root: str
    totals: VersionTotals
    changes: tuple[FileChange, ...] = Field(description="The changes, complete unless changes_truncated.")
    changes_truncated: bool = False
    complete_changes: ChangeListRef | None = Field(
        None, description="Set when changes_truncated: where to read every change."
    )


class VersionChanges(_Event):
    """``dataset.version.changes``: one chunk of a version's complete change list."""

    schema_version: Literal[1] = 1
    dataset: str
    version: int = Field(ge=1)
    version_id: str
    chunk: int = Field(ge=0)
    chunks: int = Field(ge=1)
    changes: tuple[FileChange, ...]


RejectReason = Literal[
    "vanished",
    "permission_denied",
    "symlink_escapes_root",
    "symlink_not_followed",
    "not_regular_file",
    "non_utf8_name",
    "name_too_long",
    "changed_while_reading",
    "root_missing",
    "io_error",
]


class InputRejected(_Event):
    """``dataset.input.rejected``: a file (or a root) could not be versioned, and why."""

    schema_version: Literal[1] = 1
    dataset: str
    path: str = Field(description="Path relative to the root; undecodable bytes shown as \\xNN escapes.")
    reason: RejectReason
    detail: str = Field(description="What happened and what to do about it.")
    host: str
    detected_at: datetime


EVENT_TYPES: dict[str, type[_Event]] = {
    "dataset.version.created": VersionCreated,
    "dataset.version.changes": VersionChanges,
    "dataset.input.rejected": InputRejected,
}


def dataschema_urn(event_type: str) -> str:
    """The ``ce_dataschema`` attribute of an event type."""
    return f"urn:strandline:schema:{event_type}:{SCHEMA_VERSION}"
