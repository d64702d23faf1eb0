"""Compare two versions of a dataset from their profiles alone: the drift verdict (issue #4).

Pure: ``compare`` takes each version's schema and profile (from the catalog or the profiles
topic) and gives a ``schemas.drift.DriftReport``. The per-column tests are in
``consumers.stattests`` and follow Evidently 0.7's defaults; this module adds what is about the
whole dataset:

* columns present in both versions are tested, in the current schema's order;
* the schema changed (``daemon.tableschema.schema_change``: columns added, removed, retyped or
  of another nullability) -> ``schema_drifted``;
* the row count moved by at least ``row_count`` of the reference's -> ``row_count_drifted``;
* ``share`` = drifted columns / tested columns, where a column counts as tested when a test ran
  on it or its null rate alone drifted (so a column that became all null counts);
* drifted when ``share >= settings.share`` (Evidently's ``drift_share``), or the schema or row
  count drifted.
"""

from __future__ import annotations

from dataclasses import dataclass

from consumers.stattests import column_drift
from daemon.tableschema import schema_change
from schemas.config import DriftSettings
from schemas.drift import ColumnDrift, DriftReport
from schemas.profiles import SchemaChange, TableProfile, TableSchema

__all__ = ["VersionSide", "compare"]


@dataclass(frozen=True)
class VersionSide:
    """One version's side of a comparison."""

    version: int
    version_id: str
    schema: TableSchema | None
    profile: TableProfile


def _schema_reason(change: SchemaChange) -> str:
    parts = []
    if change.added:
        parts.append("added " + ", ".join(f.name for f in change.added))
    if change.removed:
        parts.append("removed " + ", ".join(f.name for f in change.removed))
    if change.type_changed:
        parts.append("retyped " + ", ".join(f"{t.name} ({t.old} -> {t.new})" for t in change.type_changed))
    if change.nullability_changed:
        parts.append("nullability of " + ", ".join(n.name for n in change.nullability_changed))
    return "schema changed: " + "; ".join(parts)


def compare(reference: VersionSide, current: VersionSide, settings: DriftSettings, *, dataset: str) -> DriftReport:
    """The drift of ``current`` against ``reference`` (see the module docstring for the rules)."""
    ref_rows, cur_rows = reference.profile.rows, current.profile.rows
    row_change = (cur_rows - ref_rows) / ref_rows if ref_rows else None
    # An empty reference has no rate to move by; rows appearing in it is still a change of count.
    row_drifted = abs(row_change) >= settings.row_count if row_change is not None else cur_rows > 0

    change: SchemaChange | None = None
    if current.schema is not None:
        change = schema_change(reference.schema, current.schema) if reference.schema is not None else None
    schema_drifted = change is not None and change.changed

    ref_columns = {c.name: c for c in reference.profile.columns}
    order = [f.name for f in current.schema.fields] if current.schema is not None else []
    order += [c.name for c in current.profile.columns if c.name not in order]
    columns: list[ColumnDrift] = []
    for name in order:
        cur_col, ref_col = current.profile.column(name), ref_columns.get(name)
        if cur_col is None or ref_col is None:
            continue
        columns.append(column_drift(ref_col, cur_col, settings, settings.columns.get(name)))

    tested = [c for c in columns if c.test is not None or c.null_rate_drifted]
    drifted = [c for c in tested if c.drifted]
    share = len(drifted) / len(tested) if tested else 0.0
    reasons: list[str] = []
    if share >= settings.share:
        reasons.append(f"{len(drifted)} of {len(tested)} columns drifted ({share:.0%} >= {settings.share:.0%})")
    if schema_drifted and change is not None:
        reasons.append(_schema_reason(change))
    if row_drifted:
        moved = f"{row_change:+.1%}" if row_change is not None else "from none"
        reasons.append(f"row count {ref_rows} -> {cur_rows} ({moved}; threshold {settings.row_count:.0%})")
    is_drifted = bool(reasons)
    if is_drifted:
        reasons += [f"{c.name}: {c.detail}" for c in drifted]
    return DriftReport(
        dataset=dataset,
        reference_version=reference.version,
        reference_version_id=reference.version_id,
        current_version=current.version,
        current_version_id=current.version_id,
        reference_rows=ref_rows,
        current_rows=cur_rows,
        row_change=row_change,
        row_count_drifted=row_drifted,
        schema_change=change,
        schema_drifted=schema_drifted,
        columns=tuple(columns),
        tested_columns=len(tested),
        drifted_columns=len(drifted),
        share=share,
        share_threshold=settings.share,
        drifted=is_drifted,
        reasons=tuple(reasons),
    )
