"""The HTML drift report from real profiles: content, escaping, self-containment and size.

Pure: tables are built in memory, profiled with ``daemon.profile.Profiler`` and rendered; the
drift verdicts are written out as ``DriftReport`` values, so these tests pin the page, not the
statistics.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa

from consumers.drift import VersionSide, compare
from consumers.drift_html import render_drift_html
from daemon.profile import Profiler
from schemas.config import DriftSettings
from schemas.drift import ColumnDrift, DriftReport, DriftTest
from schemas.profiles import FieldSpec, SchemaChange, TableProfile, TableSchema, TypeChange

HOSTILE_COLUMN = '<script>alert("col")</script>'
HOSTILE_CATEGORY = "<img src=x onerror=alert(1)>"
HOSTILE_DATASET = "sales<svg onload=alert(2)>"


def _profile(table: pa.Table) -> TableProfile:
    profiler = Profiler(table.schema)
    for batch in table.to_batches(max_chunksize=100_000):
        profiler.add(batch)
    return profiler.finish()


def _table(rows: int, *, seed: int, shift: float = 0.0) -> pa.Table:
    rng = np.random.default_rng(seed)
    colours = ["red", "green", "blue", HOSTILE_CATEGORY, *[f"rare{i}" for i in range(30)]]
    weights = np.array([30, 25, 20, 15, *[10 / 30] * 30]) / 100
    start = np.datetime64("2024-01-01T00:00:00", "ms")
    return pa.table(
        {
            "price": rng.normal(50.0 + shift, 10.0, rows),
            "colour": pa.array(rng.choice(colours, rows, p=weights)).dictionary_encode(),
            "created": pa.array(start + rng.integers(0, 86_400_000 * 30, rows).astype("timedelta64[ms]")),
            "active": pa.array(rng.random(rows) < 0.3 + shift / 100),
            HOSTILE_COLUMN: rng.integers(0, 1_000, rows),
            "empty": pa.nulls(rows, pa.float64()),
            "tags": pa.array([[1, 2]] * rows, pa.list_(pa.int64())),
        }
    )


_TESTS: dict[str, tuple[DriftTest, float, float, bool]] = {
    # column: test, score, threshold, drifted
    "price": ("wasserstein", 0.4821, 0.1, True),
    "colour": ("jensenshannon", 0.0312, 0.1, False),
    "created": ("wasserstein", 0.0051, 0.1, False),
    "active": ("z", 0.0004, 0.05, True),
    HOSTILE_COLUMN: ("wasserstein", 0.0203, 0.1, False),
}


def _report(reference: TableProfile, current: TableProfile, **changes: Any) -> DriftReport:
    columns = []
    for col in current.columns:
        ref = reference.column(col.name)
        assert ref is not None
        test = _TESTS.get(col.name)
        null_ref, null_cur = ref.null_count / max(ref.count, 1), col.null_count / max(col.count, 1)
        if test is None:
            columns.append(
                ColumnDrift(
                    name=col.name,
                    kind=col.kind,
                    drifted=False,
                    null_rate_reference=null_ref,
                    null_rate_current=null_cur,
                    skipped="no values" if col.kind != "other" else "kind 'other'",
                    detail=f"{col.name} <not tested>",
                )
            )
            continue
        name, score, threshold, moved = test
        columns.append(
            ColumnDrift(
                name=col.name,
                kind=col.kind,
                test=name,
                score=score,
                threshold=threshold,
                drifted=moved,
                distribution_drifted=moved,
                psi=0.1234,
                null_rate_reference=null_ref,
                null_rate_current=null_cur,
                detail=f"{name} {score} vs {threshold} for {col.name}",
            )
        )
    tested = sum(c.test is not None for c in columns)
    drifted = sum(c.drifted for c in columns)
    values: dict[str, Any] = {
        "dataset": "sales",
        "reference_version": 3,
        "reference_version_id": "a" * 32,
        "current_version": 4,
        "current_version_id": "b" * 32,
        "reference_rows": reference.rows,
        "current_rows": current.rows,
        "row_change": (current.rows - reference.rows) / reference.rows if reference.rows else None,
        "columns": tuple(columns),
        "tested_columns": tested,
        "drifted_columns": drifted,
        "share": drifted / tested if tested else 0.0,
        "share_threshold": 0.5,
        "drifted": drifted / tested >= 0.5 if tested else False,
        "reasons": ("2 of 5 tested columns drifted (40 %) <below 50 %>",),
    }
    values.update(changes)
    return DriftReport(**values)


def _render(rows: int = 5_000, **changes: Any) -> tuple[str, DriftReport]:
    reference, current = _profile(_table(rows, seed=1)), _profile(_table(rows, seed=2, shift=8.0))
    report = _report(reference, current, **changes)
    return render_drift_html(report, reference, current), report


def _sections(html: str) -> dict[str, str]:
    """Each column's section, keyed by its anchor."""
    return dict(re.findall(r'<section class="col[^"]*" id="(c\d+)">(.*?)</section>', html, re.S))


def test_report_shows_each_columns_name_test_score_threshold_and_verdict() -> None:
    html, report = _render(drifted=True, reasons=("price and active drifted", "row count -12.0 %"))

    assert html.startswith("<!DOCTYPE html>")
    assert "<strong>Drifted</strong>" in html
    assert "price and active drifted" in html and "row count -12.0 %" in html
    assert "5,000" in html  # row counts
    sections = _sections(html)
    assert len(sections) == len(report.columns) == 7
    for i, col in enumerate(report.columns):
        section = sections[f"c{i}"]
        if col.name != HOSTILE_COLUMN:
            assert f"<code>{col.name}</code>" in section
        if col.test is not None:
            assert f"<td>{col.test}</td>" in section
            assert f"{col.score:.4g}" in section and f"{col.threshold:.4g}" in section
            assert ("drifted</span>" if col.drifted else "stable</span>") in section
        else:
            assert "skipped</span>" in section and "No chart" in section
    # The overview links every column to its section.
    assert all(f'href="#c{i}"' in html for i in range(len(report.columns)))


def test_numbers_get_two_histograms_and_categories_grouped_bars() -> None:
    reference, current = _profile(_table(5_000, seed=1)), _profile(_table(5_000, seed=2, shift=8.0))
    html = render_drift_html(_report(reference, current), reference, current, bins=12, top=3)

    sections = _sections(html)
    price, colour, created, active = sections["c0"], sections["c1"], sections["c2"], sections["c3"]
    for numeric in (price, created):
        assert numeric.count("<figure>") == 2  # reference and current side by side
        assert numeric.count('<rect class="r"') == numeric.count('<rect class="c"') == 12
    assert "2024-01-" in created  # timestamps are labelled as dates, not epoch numbers
    assert colour.count("<figure>") == 1
    assert colour.count('<rect class="r"') == colour.count('<rect class="c"') >= 3
    assert "(other)" in colour and ">red<" in colour
    # A boolean column: one grouped chart of its two values, reference against current.
    assert active.count("<figure>") == 1 and "No chart" not in active
    assert active.count('<rect class="r"') == active.count('<rect class="c"') == 2


def test_hostile_names_and_labels_are_escaped_never_raw() -> None:
    html, _ = _render(dataset=HOSTILE_DATASET)

    for raw in (HOSTILE_COLUMN, HOSTILE_CATEGORY, HOSTILE_DATASET, "<not tested>", "<below 50 %>"):
        assert raw not in html
    assert "&lt;script&gt;alert(&#34;col&#34;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "sales&lt;svg onload=alert(2)&gt;" in html
    assert not re.search(r"<(script|img|svg onload)", html, re.IGNORECASE)


def test_report_is_self_contained() -> None:
    html, _ = _render()

    lowered = html.lower()
    for outside in ("http://", "https://", "<script", "<link", "<img", "<iframe", "<object", "@import", "url("):
        assert outside not in lowered, outside
    assert not re.search(r"<[a-z]+[^>]*\s(?:src|href)=(?![\"']?#)", lowered)  # only in-page links
    assert "<style>" in html and "<svg " in html


def test_size_depends_on_columns_not_rows() -> None:
    small, _ = _render(10_000)
    large, _ = _render(1_000_000)

    assert 0.95 < len(large) / len(small) < 1.05


def test_five_hundred_columns_stay_under_five_megabytes() -> None:
    n = 500

    def wide(seed: int) -> pa.Table:
        rng = np.random.default_rng(seed)
        data: dict[str, Any] = {}
        for i in range(n):
            if i % 2:
                data[f"n{i:03}"] = rng.normal(i + seed, 1.0 + i % 7, 2_000)
            else:
                data[f"s{i:03}"] = pa.array(rng.choice([f"value-{j}" for j in range(40)], 2_000))
        return pa.table(data)

    reference, current = _profile(wide(1)), _profile(wide(2))
    columns = tuple(
        ColumnDrift(
            name=c.name,
            kind=c.kind,
            test="wasserstein" if c.kind == "numeric" else "jensenshannon",
            score=0.01,
            threshold=0.1,
            drifted=False,
            null_rate_reference=0.0,
            null_rate_current=0.0,
            detail="wasserstein 0.01 < 0.1",
        )
        for c in current.columns
    )
    report = _report(reference, current, columns=columns, tested_columns=n, drifted_columns=0, share=0.0)

    html = render_drift_html(report, reference, current)

    assert len(html.encode()) < 5 * 1024 * 1024
    assert len(_sections(html)) == n
    assert "<code>n499</code>" in html and "<code>s000</code>" in html


def test_schema_change_and_row_count_are_listed_at_the_top() -> None:
    change = SchemaChange(
        added=(FieldSpec(name="discount<%>", type="double", nullable=True),),
        removed=(FieldSpec(name="legacy_id", type="int64", nullable=False),),
        type_changed=(TypeChange(name="qty", old="int32", new="string"),),
    )
    html, _ = _render(schema_change=change, schema_drifted=True, row_count_drifted=True, row_change=-0.62)

    top = html[: html.index("<h2>Columns</h2>")]
    assert "discount&lt;%&gt;" in top and "legacy_id" in top and "qty" in top
    assert "int32</code> → <code>string" in top
    assert "-62.0 %" in top
    assert top.count('<span class="badge bad">drifted</span>') == 2  # rows and schema


def test_an_undrifted_report_says_so() -> None:
    html, _ = _render(drifted=False, reasons=())

    assert "<strong>No drift</strong>" in html
    assert '<div class="verdict ok">' in html


def test_time_axis_of_dates_reads_as_dates() -> None:
    start = datetime(2024, 3, 1)
    days = [start + timedelta(days=int(d)) for d in np.random.default_rng(3).integers(0, 60, 3_000)]
    table = pa.table({"day": pa.array([d.date() for d in days], pa.date32())})
    reference = current = _profile(table)
    column = ColumnDrift(
        name="day",
        kind="time",
        test="wasserstein",
        score=0.0,
        threshold=0.1,
        drifted=False,
        null_rate_reference=0.0,
        null_rate_current=0.0,
        detail="same",
    )
    report = _report(reference, current, columns=(column,), tested_columns=1, drifted_columns=0, share=0.0)

    html = render_drift_html(report, reference, current)

    assert re.search(r">2024-0[345]-\d\d<", html)


def test_a_number_tested_as_categories_is_drawn_as_categories() -> None:
    rng = np.random.default_rng(4)
    reference = _profile(pa.table({"stars": rng.integers(1, 4, 5_000)}))
    current = _profile(pa.table({"stars": rng.integers(1, 5, 5_000)}))
    column = ColumnDrift(
        name="stars",
        kind="numeric",
        test="chisquare",
        score=1e-12,
        threshold=0.05,
        drifted=True,
        distribution_drifted=True,
        null_rate_reference=0.0,
        null_rate_current=0.0,
        detail="chisquare p=1e-12 < 0.05",
    )
    report = _report(reference, current, columns=(column,), tested_columns=1, drifted_columns=1, share=1.0)

    section = _sections(render_drift_html(report, reference, current))["c0"]

    assert section.count("<figure>") == 1
    assert section.count('<rect class="c"') == 4  # the values 1 to 4, the last new in the current version
    assert "1e-12" in section


def test_report_of_compare_renders_every_column_it_judged() -> None:
    ref_table, cur_table = _table(20_000, seed=1), _table(20_000, seed=2, shift=8.0)
    schema = TableSchema.of([FieldSpec(name=f.name, type=str(f.type), nullable=True) for f in ref_table.schema])
    reference = VersionSide(version=3, version_id="a" * 32, schema=schema, profile=_profile(ref_table))
    current = VersionSide(version=4, version_id="b" * 32, schema=schema, profile=_profile(cur_table))
    report = compare(reference, current, DriftSettings(), dataset="sales")

    html = render_drift_html(report, reference.profile, current.profile)

    sections = _sections(html)
    assert len(sections) == len(report.columns)
    for i, col in enumerate(report.columns):
        verdict = "drifted" if col.drifted else ("skipped" if col.test is None else "stable")
        assert f"{verdict}</span>" in sections[f"c{i}"]
        if col.test is not None:
            assert f"<td>{col.test}</td>" in sections[f"c{i}"]
    price = report.column("price")
    assert price is not None and price.drifted
    assert "<script" not in html and "http" not in html
