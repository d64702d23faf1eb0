"""Readable text for people: a version's status, its schema and its column profiles.

Pure functions from values to lines (or a rich Table), shared by `show`, `schema`, `profile`
and `validate`; the JSON forms are the models' own dumps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from daemon.quality import Quality
from schemas.profiles import ColumnProfile, SchemaChange, TableSchema
from schemas.validation import ValidationResult

if TYPE_CHECKING:
    from rich.table import Table


def _short(value: Any, width: int = 40) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0 or 1e-3 <= abs(value) < 1e9:
        return f"{value:.6g}"
    return f"{value:.3e}"


def status_lines(quality: Quality | None) -> list[str]:
    if quality is None:
        return ["status unvalidated (recorded before validation existed)"]
    lines = [f"status {quality.status}" + (f": {quality.reason}" if quality.reason else "")]
    if quality.has_tables:
        rows = quality.profile.rows if quality.profile else 0
        cols = len(quality.schema.fields) if quality.schema else 0
        fp = quality.schema.fingerprint[:12] if quality.schema else "-"
        lines.append(
            f"tables {quality.readable_files}/{quality.table_files} readable, {rows} rows, {cols} columns, schema {fp}"
        )
    if quality.schema_change is not None and quality.schema_change.changed:
        lines += ["schema change against the parent:", *("  " + line for line in change_lines(quality.schema_change))]
    if quality.validation is not None:
        lines += validation_lines(quality.validation, scope=quality.validation_scope)
    for p in quality.problems:
        lines.append(f"  unreadable {p.path}: {p.reason}")
    return lines


def validation_lines(result: ValidationResult, *, scope: str | None = None) -> list[str]:
    where = f" on the {'changed files' if scope == 'changed' else 'whole version'}" if scope else ""
    lines = [f"suite {result.suite}{where}: {result.evaluated - result.failed}/{result.evaluated} expectations met"]
    for o in result.outcomes:
        mark = "ok  " if o.success else "FAIL"
        what = o.expectation + (f"({o.column})" if o.column else "")
        detail = []
        if o.observed_value is not None:
            detail.append(f"observed {_short(o.observed_value)}")
        if o.unexpected_count:
            pct = f" ({o.unexpected_percent:.2f}%)" if o.unexpected_percent is not None else ""
            detail.append(f"{o.unexpected_count} unexpected{pct}")
        if o.partial_unexpected and not o.success:
            detail.append("e.g. " + ", ".join(_short(v, 20) for v in o.partial_unexpected[:5]))
        if o.error:
            detail.append(o.error)
        lines.append(f"  {mark} {what}" + (f": {'; '.join(detail)}" if detail else ""))
    return lines


def change_lines(change: SchemaChange) -> list[str]:
    lines = [f"+ {f.name} {f.type}{'' if f.nullable else ' not null'}" for f in change.added]
    lines += [f"- {f.name} {f.type}" for f in change.removed]
    lines += [f"~ {t.name} {t.old} -> {t.new}" for t in change.type_changed]
    lines += [
        f"~ {n.name} {'nullable' if n.old else 'not null'} -> {'nullable' if n.new else 'not null'}"
        for n in change.nullability_changed
    ]
    return lines


def schema_lines(schema: TableSchema) -> list[str]:
    width = max((len(f.name) for f in schema.fields), default=0)
    lines = [f"{f.name.ljust(width)}  {f.type}{'' if f.nullable else '  not null'}" for f in schema.fields]
    return [*lines, f"fingerprint {schema.fingerprint}"]


def column_summary(col: ColumnProfile) -> dict[str, str]:
    """The figures of one column as short strings, for a table row."""
    # Sketch readers pull in numpy and datasketches: only the column table needs them.
    from daemon.profile import distinct_estimate, quantiles, top_items

    q = quantiles(col, [0.5]) if col.kind in ("numeric", "time") else None
    distinct = distinct_estimate(col)
    top = top_items(col, 3) if col.kind == "string" else []
    return {
        "column": col.name,
        "type": col.type,
        "count": str(col.count),
        "nulls": str(col.null_count),
        "min": "-" if col.min is None else _short(col.min, 16),
        "max": "-" if col.max is None else _short(col.max, 16),
        "mean": _num(col.mean),
        "stddev": _num(col.stddev),
        "median": _num(q[0]) if q else "-",
        "distinct": "-" if distinct is None else f"~{distinct:.0f}",
        "top": ", ".join(f"{_short(v, 12)} ({n})" for v, n in top) or "-",
    }


def profile_table(columns: tuple[ColumnProfile, ...], title: str) -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    rows = [column_summary(c) for c in columns]
    for key in ("column", "type", "count", "nulls", "min", "max", "mean", "stddev", "median", "distinct", "top"):
        table.add_column(key, justify="right" if key not in ("column", "type", "top", "min", "max") else "left")
    for r in rows:
        table.add_row(*r.values())
    return table
