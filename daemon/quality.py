"""What a version's data is like, as values: per-file table reads and the version's verdict.

Kept apart from the code that computes them (``daemon.assess``) so the catalog, the event
builders and the CLI can share them without importing pyarrow or Great Expectations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from schemas.events import FileProblem
from schemas.profiles import SchemaChange, TableProfile, TableSchema
from schemas.validation import ValidationResult, ValidationStatus


@dataclass(frozen=True, slots=True)
class FileTable:
    """One file's bytes read as a table: its schema and profile, or why it could not be read.

    Keyed by content hash and format, so a file's profile is computed once per content and
    reused by every later version (and by a renamed or copied file with the same bytes).
    """

    hash: str
    format: str
    schema: TableSchema | None
    profile: TableProfile | None
    error: str | None


@dataclass(frozen=True, slots=True)
class Quality:
    """A version's verdict: status, schema, merged profile, validation result and bad files."""

    status: ValidationStatus = "unvalidated"
    reason: str | None = None
    schema: TableSchema | None = None
    schema_change: SchemaChange | None = None
    profile: TableProfile | None = None
    validation: ValidationResult | None = None
    validation_scope: Literal["changed", "version"] | None = None
    problems: tuple[FileProblem, ...] = field(default_factory=tuple)
    table_files: int = 0
    readable_files: int = 0

    @property
    def has_tables(self) -> bool:
        return self.table_files > 0
