"""What differs between two versions: files, schema, rows and per-column statistics. Pure.

``strandline diff A B`` prints this as tables, or as the JSON of ``VersionDiff``. Column
statistics come from the versions' stored profiles (no data file is read again), so a diff
works for versions whose bytes were collected, and for bucket datasets.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from daemon.manifest import FileState, diff
from daemon.quality import Quality
from daemon.tableschema import schema_change
from schemas.events import FileChange
from schemas.profiles import ColumnProfile, SchemaChange


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class Delta(_Model):
    """A number in A and in B; ``change`` is B - A when both exist."""

    a: float | None = None
    b: float | None = None
    change: float | None = None


class ColumnDiff(_Model):
    name: str
    presence: str = Field(description="both, added (only in B) or removed (only in A).")
    type_a: str | None = None
    type_b: str | None = None
    count: Delta
    null_rate: Delta
    mean: Delta
    stddev: Delta
    min: Delta
    max: Delta
    min_text: tuple[str | None, str | None] | None = Field(None, description="min of non-numeric columns, A and B.")
    max_text: tuple[str | None, str | None] | None = None


class FileTotals(_Model):
    added: int
    removed: int
    modified: int
    bytes_a: int
    bytes_b: int


class VersionDiff(_Model):
    a: str = Field(description="NAME@N of the first version.")
    b: str
    a_version_id: str
    b_version_id: str
    identical: bool = Field(description="Same files with the same bytes (equal version ids).")
    files: FileTotals
    changes: tuple[FileChange, ...]
    rows: Delta
    schema_change: SchemaChange | None = Field(None, description="From A's schema to B's; null when neither has one.")
    columns: tuple[ColumnDiff, ...] = Field((), description="Columns in A or B, in B's order then A's.")


def _delta(a: float | None, b: float | None) -> Delta:
    return Delta(a=a, b=b, change=None if a is None or b is None else b - a)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _null_rate(col: ColumnProfile | None) -> float | None:
    if col is None or col.count == 0:
        return None
    return col.null_count / col.count


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def column_diff(name: str, a: ColumnProfile | None, b: ColumnProfile | None) -> ColumnDiff:
    presence = "both" if a is not None and b is not None else ("added" if a is None else "removed")
    # Strings and other non-numbers have a min and max to show but no difference to compute.
    numeric = not any(c is not None and c.min is not None and _number(c.min) is None for c in (a, b))
    return ColumnDiff(
        name=name,
        presence=presence,
        type_a=a.type if a else None,
        type_b=b.type if b else None,
        count=_delta(a.count if a else None, b.count if b else None),
        null_rate=_delta(_null_rate(a), _null_rate(b)),
        mean=_delta(a.mean if a else None, b.mean if b else None),
        stddev=_delta(a.stddev if a else None, b.stddev if b else None),
        min=_delta(_number(a.min) if a else None, _number(b.min) if b else None),
        max=_delta(_number(a.max) if a else None, _number(b.max) if b else None),
        min_text=None if numeric else (_text(a.min) if a else None, _text(b.min) if b else None),
        max_text=None if numeric else (_text(a.max) if a else None, _text(b.max) if b else None),
    )


def diff_versions(
    a_ref: str,
    b_ref: str,
    a_version_id: str,
    b_version_id: str,
    a_files: Mapping[str, FileState],
    b_files: Mapping[str, FileState],
    a_quality: Quality | None,
    b_quality: Quality | None,
) -> VersionDiff:
    """Compare version A (the older, usually) with version B."""
    changes = diff(a_files, b_files)
    counts = {"added": 0, "removed": 0, "modified": 0}
    for c in changes:
        counts[c.change] += 1
    a_schema = a_quality.schema if a_quality else None
    b_schema = b_quality.schema if b_quality else None
    if b_schema is not None:
        change: SchemaChange | None = schema_change(a_schema, b_schema)
    elif a_schema is not None:
        change = SchemaChange(removed=a_schema.fields)
    else:
        change = None
    a_profile = a_quality.profile if a_quality else None
    b_profile = b_quality.profile if b_quality else None
    a_cols = {c.name: c for c in a_profile.columns} if a_profile else {}
    b_cols = {c.name: c for c in b_profile.columns} if b_profile else {}
    names = list(b_cols) + [n for n in a_cols if n not in b_cols]
    return VersionDiff(
        a=a_ref,
        b=b_ref,
        a_version_id=a_version_id,
        b_version_id=b_version_id,
        identical=a_version_id == b_version_id,
        files=FileTotals(
            **counts,
            bytes_a=sum(s.size for s in a_files.values()),
            bytes_b=sum(s.size for s in b_files.values()),
        ),
        changes=tuple(changes),
        rows=_delta(a_profile.rows if a_profile else None, b_profile.rows if b_profile else None),
        schema_change=change,
        columns=tuple(column_diff(n, a_cols.get(n), b_cols.get(n)) for n in names),
    )
