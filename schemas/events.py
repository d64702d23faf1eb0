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

from schemas.profiles import ColumnProfile, SchemaChange, TableSchema
from schemas.validation import ExpectationOutcome, ValidationStatus

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


class FileProblem(_Event):
    """A file of the version that could not be read as a table of its format."""

    path: str = Field(description="Path relative to the dataset root.")
    reason: str = Field(description="Why, e.g. 'corrupt Parquet: ...', 'CSV row 17 has 3 columns, expected 2'.")


class ProfileRef(_Event):
    """Where the version's complete schema and column profiles live."""

    topic: str = Field(description="Compacted Kafka topic of dataset.version.profile parts.")
    key: str = Field(description="Record key of part 0; part i has key '<version_id>/<i>'.")
    parts: int = Field(ge=1, description="Number of parts (columns are split so that no record nears 1 MB).")


class TableSummary(_Event):
    """What the version's tables look like, without their statistics."""

    files: int = Field(ge=0, description="Files read as tables (by extension or the dataset's format).")
    readable_files: int = Field(ge=0)
    rows: int = Field(ge=0, description="Rows over the readable files.")
    columns: int = Field(ge=0)
    schema_fingerprint: str | None = Field(None, description="XXH3-128 of the version's schema (see TableSchema).")
    schema_change: SchemaChange | None = Field(
        None, description="Columns added, removed or retyped against the parent version; null for a first version."
    )
    schema_change_truncated: bool = Field(
        False, description="True when the change lists were cut to fit the event; the profile has the full schema."
    )
    profile: ProfileRef | None = None


class ValidationSummary(_Event):
    """The verdict of the dataset's Great Expectations suite on this version."""

    suite: str
    scope: Literal["changed", "version"] = Field(description="Validated the changed files only, or the whole version.")
    success: bool
    evaluated: int = Field(ge=0)
    failed: int = Field(ge=0)
    failures: tuple[ExpectationOutcome, ...] = Field(
        (), description="The expectations that failed, with what GX observed."
    )
    failures_truncated: bool = False


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
    status: ValidationStatus = Field(
        "unvalidated",
        description="valid / invalid (suite failed or schemas conflict) / unreadable (a table could not be read)"
        " / unvalidated (no suite, or no table).",
    )
    status_reason: str | None = Field(None, description="Why the status is invalid or unreadable, in one line.")
    table: TableSummary | None = Field(None, description="Set when the version holds tabular files.")
    validation: ValidationSummary | None = None
    problems: tuple[FileProblem, ...] = Field((), description="Tabular files that could not be read.")
    problems_truncated: bool = False


class VersionChanges(_Event):
    """``dataset.version.changes``: one chunk of a version's complete change list."""

    schema_version: Literal[1] = 1
    dataset: str
    version: int = Field(ge=1)
    version_id: str
    chunk: int = Field(ge=0)
    chunks: int = Field(ge=1)
    changes: tuple[FileChange, ...]


class ValidationFailed(_Event):
    """``dataset.validation.failed``: a new version is invalid or unreadable; on-call wants to know why."""

    schema_version: Literal[1] = 1
    dataset: str
    version: int = Field(ge=1)
    version_id: str
    created_at: datetime
    host: str
    status: Literal["invalid", "unreadable"]
    reason: str = Field(description="One line: the failed expectations or the unreadable files.")
    validation: ValidationSummary | None = None
    problems: tuple[FileProblem, ...] = ()


class VersionProfile(_Event):
    """``dataset.version.profile``: one part of a version's schema and column profiles.

    On the compacted ``<prefix>.profiles`` topic, key ``<version_id>/<part>``. Part 0 carries the
    schema; the columns are split over the parts in schema order.
    """

    schema_version: Literal[1] = 1
    dataset: str
    version: int = Field(ge=1)
    version_id: str
    part: int = Field(ge=0)
    parts: int = Field(ge=1)
    rows: int = Field(ge=0)
    table_schema: TableSchema | None = Field(None, description="The version's unified schema (part 0 only).")
    columns: tuple[ColumnProfile, ...]


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
    "dataset.validation.failed": ValidationFailed,
    "dataset.version.profile": VersionProfile,
}


def dataschema_urn(event_type: str) -> str:
    """The ``ce_dataschema`` attribute of an event type."""
    return f"urn:strandline:schema:{event_type}:{SCHEMA_VERSION}"
