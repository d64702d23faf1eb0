"""Drift contract, version 1: how a version's data compares with the previous usable version's.

Computed from profiles alone (``schemas.profiles.TableProfile``), never from the data, by
``consumers.drift.compare``. The per-column test follows Evidently's defaults so that verdicts
mean what users of that tool expect:

* reference with at most ``small_sample_rows`` (1,000) valid values: Kolmogorov-Smirnov for
  numbers, chi-square for categories (a two-proportion z-test for two categories), drifted when
  the p-value is below ``p_value`` (0.05);
* larger: normed Wasserstein distance (Wasserstein-1 divided by the reference's standard
  deviation) for numbers, Jensen-Shannon distance for categories, drifted when the distance
  reaches ``distance`` (0.1);
* numbers with at most five distinct values are treated as categories.

PSI is reported beside every test. Null-rate change, row-count change and schema change are
flagged too. The dataset is drifted when the share of drifted columns reaches ``share`` (0.5),
or its schema or row count drifted.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.profiles import ColumnKind, SchemaChange

DriftTest = Literal["ks", "chisquare", "z", "wasserstein", "jensenshannon"]
"""``ks``, ``chisquare`` and ``z`` score a p-value (drifted below the threshold); ``wasserstein``
(normed) and ``jensenshannon`` score a distance (drifted at or above the threshold)."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ColumnDrift(_Model):
    """The verdict on one column present in both versions."""

    name: str
    kind: ColumnKind = Field(description="The column's kind in the current version.")
    test: DriftTest | None = Field(None, description="The test used; null when the column was not tested.")
    score: float | None = Field(
        None, description="p-value (ks, chisquare, z) or distance (wasserstein, jensenshannon)."
    )
    threshold: float | None = Field(None, description="The threshold the score was compared with.")
    drifted: bool = Field(description="True when the distribution drifted or the null rate changed beyond bounds.")
    distribution_drifted: bool = Field(False, description="The test's own verdict.")
    psi: float | None = Field(None, description="Population stability index, reported, not used for the verdict.")
    null_rate_reference: float = Field(ge=0, le=1)
    null_rate_current: float = Field(ge=0, le=1)
    null_rate_drifted: bool = Field(False, description="The null rate moved by at least the null_rate threshold.")
    skipped: str | None = Field(
        None, description="Why the column was not tested (no values, kind 'other', kinds differ, ignored by config)."
    )
    detail: str = Field(description="One line for people, e.g. 'wasserstein 0.31 >= 0.1; mean 10.0 -> 13.1'.")


class DriftReport(_Model):
    """Current version against reference version of one dataset."""

    schema_version: Literal[1] = 1
    dataset: str
    reference_version: int = Field(ge=1)
    reference_version_id: str
    current_version: int = Field(ge=1)
    current_version_id: str
    reference_rows: int = Field(ge=0)
    current_rows: int = Field(ge=0)
    row_change: float | None = Field(
        None, description="(current - reference) / reference rows; null when the reference is empty."
    )
    row_count_drifted: bool = False
    schema_change: SchemaChange | None = Field(None, description="Columns added, removed or retyped.")
    schema_drifted: bool = False
    columns: tuple[ColumnDrift, ...] = Field(description="Every column present in both versions, in schema order.")
    tested_columns: int = Field(ge=0, description="Columns a test was run on.")
    drifted_columns: int = Field(ge=0, description="Columns whose verdict is drifted.")
    share: float = Field(ge=0, le=1, description="drifted_columns / tested_columns (0 when none tested).")
    share_threshold: float = Field(gt=0, le=1)
    drifted: bool = Field(description="share >= share_threshold, or the schema or row count drifted.")
    reasons: tuple[str, ...] = Field(description="Why the dataset is drifted, one line each; empty when it is not.")

    def column(self, name: str) -> ColumnDrift | None:
        return next((c for c in self.columns if c.name == name), None)
