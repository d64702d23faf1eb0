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

from schemas.drift import DriftReport
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


SnapshotPolicyName = Literal["copy", "reflink", "hardlink", "none"]


class SnapshotInfo(_Event):
    """Whether a subscriber can restore this version (`strandline restore NAME@N`)."""

    policy: SnapshotPolicyName = Field(
        description="How the version's bytes were kept: copy, reflink, hardlink, or none (metadata only)."
    )
    restorable: bool = Field(
        description="Every file's bytes were in the content store before this event was published."
    )
    reason: str | None = Field(None, description="Why a version that wanted a snapshot is not restorable.")


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
    snapshot: SnapshotInfo | None = Field(
        None, description="Whether the version can be restored; absent from daemons older than the time machine."
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
    status: ValidationStatus | None = Field(
        None, description="The version's status, so a consumer finds the previous valid version from this topic alone."
    )
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
    "unsafe_key",
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


class _DriftEvent(_Event):
    schema_version: Literal[1] = 1
    dataset: str
    version: int = Field(ge=1, description="The current version, compared with report.reference_version.")
    version_id: str
    host: str = Field(description="The host whose daemon created the version.")
    detected_at: datetime = Field(description="When the drift consumer compared the versions.")
    report: DriftReport = Field(description="The verdict with every column's test, score and threshold.")
    columns_truncated: bool = Field(
        False, description="True when only the drifted columns are listed, to keep the record under 1 MB."
    )


class DriftDetected(_DriftEvent):
    """``dataset.drift.detected`` (on ``<prefix>.drift``): a version drifted from the previous valid version."""


class DriftCleared(_DriftEvent):
    """``dataset.drift.cleared``: the version after a drifted one is back within bounds."""


RetrainTrigger = Literal["version", "drift", "rows"]
RetrainStatus = Literal["succeeded", "failed", "interrupted"]


class RetrainStarted(_Event):
    """``model.retrain.started`` (on ``<prefix>.models``): a retraining run began on a dataset version."""

    schema_version: Literal[1] = 1
    run_id: str
    dataset: str
    version: int = Field(ge=1)
    version_id: str
    trigger: RetrainTrigger = Field(description="The policy that fired: every valid version, drift, or rows changed.")
    action: Literal["command", "airflow", "webhook"]
    coalesced: int = Field(0, ge=0, description="Newer versions folded into this run while the previous one ran.")
    started_at: datetime
    host: str = Field(description="The host running the retrain consumer.")


class RetrainFinished(_Event):
    """``model.retrain.finished``: how a run ended, and the model it made when the command said so."""

    schema_version: Literal[1] = 1
    run_id: str
    dataset: str
    version: int = Field(ge=1)
    version_id: str
    trigger: RetrainTrigger
    action: Literal["command", "airflow", "webhook"]
    status: RetrainStatus
    started_at: datetime
    finished_at: datetime
    exit_code: int | None = Field(None, description="The command's exit status; null for HTTP actions.")
    http_status: int | None = None
    reason: str | None = Field(None, description="Why the run failed or was interrupted, in one line.")
    model_path: str | None = Field(None, description="The model the command reported writing.")
    model_hash: str | None = Field(
        None, description="XXH3-128 of the model file's bytes (of a folder: of its manifest)."
    )
    host: str


class VersionTagged(_Event):
    """``dataset.version.tagged`` / ``dataset.version.untagged`` (on ``<prefix>.versions``, key = dataset).

    A label (``prod``, ``baseline``) names one version of a dataset at a time: tagging another
    version moves it (``previous_version`` says from where); untagging removes it.
    """

    schema_version: Literal[1] = 1
    dataset: str
    tag: str = Field(description="The label, usable as NAME@LABEL wherever a version is named.")
    version: int | None = Field(None, ge=1, description="The version the label now names (null once untagged).")
    version_id: str | None = None
    previous_version: int | None = Field(None, ge=1, description="The version the label named before, if any.")
    host: str
    at: datetime


class DaemonHealth(_Event):
    """``daemon.degraded`` / ``daemon.recovered`` (on ``<prefix>.versions``, key = host).

    Degraded is published once a problem has lasted ``degraded_event_seconds`` (Kafka
    unreachable: the event waits in the outbox and arrives with the backlog); recovered when it
    cleared, with how long it lasted. Versioning goes on meanwhile: nothing is lost.
    """

    schema_version: Literal[1] = 1
    host: str
    component: Literal["kafka"] = Field(description="What is degraded: 'kafka' (events cannot be delivered).")
    reason: str = Field(description="The last error, in one line.")
    since: datetime = Field(description="When the problem started.")
    at: datetime = Field(description="When it was noticed as lasting (degraded) or cleared (recovered).")
    backlog: int = Field(0, ge=0, description="Events waiting in the outbox at that moment.")


EVENT_TYPES: dict[str, type[_Event]] = {
    "dataset.version.created": VersionCreated,
    "dataset.version.changes": VersionChanges,
    "dataset.input.rejected": InputRejected,
    "dataset.validation.failed": ValidationFailed,
    "dataset.version.profile": VersionProfile,
    "dataset.drift.detected": DriftDetected,
    "dataset.drift.cleared": DriftCleared,
    "model.retrain.started": RetrainStarted,
    "model.retrain.finished": RetrainFinished,
    "dataset.version.tagged": VersionTagged,
    "dataset.version.untagged": VersionTagged,
    "daemon.degraded": DaemonHealth,
    "daemon.recovered": DaemonHealth,
}


def dataschema_urn(event_type: str) -> str:
    """The ``ce_dataschema`` attribute of an event type."""
    return f"urn:strandline:schema:{event_type}:{SCHEMA_VERSION}"
