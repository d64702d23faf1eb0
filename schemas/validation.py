"""Validation contract: what a Great Expectations suite said about one dataset version.

The daemon validates a version's table against the dataset's GX 1.x suite and keeps the
result beside the version; events carry it (or its summary). Every value here is plain JSON:
numpy scalars become Python numbers, NaN and NaT become null, timestamps ISO 8601 strings.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

MAX_PARTIAL_UNEXPECTED: Final = 20

ValidationStatus = Literal["valid", "invalid", "unreadable", "unvalidated"]
"""A version's validation state: ``valid`` (every expectation met), ``invalid`` (at least one
failed or raised), ``unreadable`` (the files could not be read as one table, so nothing was
validated), ``unvalidated`` (the dataset has no suite)."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ExpectationOutcome(_Model):
    """One expectation of the suite and what it found in the table."""

    expectation: str = Field(description="GX expectation type, e.g. expect_column_values_to_not_be_null.")
    column: str | None = Field(None, description="The column the expectation is about; null for table-level ones.")
    kwargs: dict[str, JsonValue] = Field(description="The expectation's arguments as written in the suite file.")
    success: bool = Field(description="True when the expectation was met; false when it failed or raised.")
    observed_value: JsonValue = Field(
        None, description="What GX measured (a max, a mean, a row count...); null when the expectation has none."
    )
    unexpected_count: int | None = Field(
        None, ge=0, description="Rows that broke a per-row expectation; null for aggregate expectations."
    )
    unexpected_percent: float | None = Field(
        None, ge=0, le=100, description="unexpected_count as a percentage of the non-null rows."
    )
    partial_unexpected: list[JsonValue] = Field(
        default_factory=list,
        max_length=MAX_PARTIAL_UNEXPECTED,
        description=f"Up to {MAX_PARTIAL_UNEXPECTED} of the offending values, in table order.",
    )
    error: str | None = Field(
        None, description="Why the expectation could not be evaluated (a missing column, a type clash); null if it ran."
    )


class ValidationResult(_Model):
    """A suite's verdict on one table."""

    suite: str = Field(description="The suite's name, from its file.")
    success: bool = Field(description="True when every expectation was met.")
    evaluated: int = Field(ge=0, description="Expectations in the suite, all of which have an outcome.")
    failed: int = Field(ge=0, description="Expectations that failed or could not be evaluated.")
    outcomes: list[ExpectationOutcome] = Field(description="One per expectation, in the suite file's order.")

    @property
    def status(self) -> ValidationStatus:
        """``valid`` or ``invalid``; the other two states have no result."""
        return "valid" if self.success else "invalid"
