"""A drift report as one self-contained HTML page: inline CSS and SVG, no script, no external URL.

``strandline drift NAME@A NAME@B --html FILE`` writes it for a person to open in a browser: the
dataset's verdict and reasons at the top, then per column the two distributions side by side
(histograms for numbers and times, bars for categories) with the test, score, threshold and
verdict. Everything drawn comes from the two profiles (``consumers.distributions`` reads their
sketches), never from the data, so the page's size depends on the number of columns, not rows.

Every string from data (dataset, column and category names, type names, details) reaches the
page through Jinja2 with autoescape on: the chart geometry is computed here as numbers and
strings, and the template alone writes markup.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import jinja2
from markupsafe import Markup

from consumers.distributions import category_shares, numeric_histogram
from schemas.drift import ColumnDrift, DriftReport
from schemas.profiles import ColumnProfile, TableProfile

__all__ = ["render_drift_html"]

# Chart geometry, in SVG user units (CSS pixels at 100 %).
_HIST_W: Final = 320.0
_HIST_H: Final = 130.0
_HIST_LEFT: Final = 8.0
_HIST_BOTTOM: Final = 20.0
_HIST_TOP: Final = 16.0
_HIST_RIGHT: Final = 8.0
_CAT_W: Final = 660.0
_CAT_LABEL_W: Final = 190.0
_CAT_ROW_H: Final = 24.0
_CAT_VALUE_W: Final = 120.0
_LABEL_CHARS: Final = 28
_DASH: Final = "\N{EN DASH}"

_PER_SECOND: Final = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


@dataclass(frozen=True)
class _Bar:
    x: float
    y: float
    w: float
    h: float
    tip: str


@dataclass(frozen=True)
class _Tick:
    x: float
    text: str
    anchor: str


@dataclass(frozen=True)
class _Histogram:
    reference: tuple[_Bar, ...]
    current: tuple[_Bar, ...]
    ticks: tuple[_Tick, ...]
    y_max: str
    width: float = _HIST_W
    height: float = _HIST_H
    left: float = _HIST_LEFT
    top: float = _HIST_TOP
    base: float = _HIST_H - _HIST_BOTTOM
    right: float = _HIST_W - _HIST_RIGHT


@dataclass(frozen=True)
class _CategoryRow:
    y: float
    label: str
    short: str
    reference_w: float
    current_w: float
    reference: str
    current: str


@dataclass(frozen=True)
class _Categories:
    rows: tuple[_CategoryRow, ...]
    height: float
    width: float = _CAT_W
    bars_x: float = _CAT_LABEL_W
    values_x: float = _CAT_W - _CAT_VALUE_W + 6


@dataclass(frozen=True)
class _ColumnView:
    anchor: str
    drift: ColumnDrift
    reference_type: str
    current_type: str
    score: str
    threshold: str
    psi: str
    histogram: _Histogram | None
    categories: _Categories | None
    no_chart: str | None


def _num(value: float | None) -> str:
    if value is None:
        return _DASH
    if math.isnan(value):
        return "NaN"
    if value == 0:
        return "0"
    return f"{value:.4g}"


def _pct(share: float) -> str:
    """A share as a percentage: one decimal, or two significant digits below 0.1 %."""
    return f"{share * 100:.1f} %" if abs(share) >= 0.001 or share == 0 else f"{share * 100:.2g} %"


def _share(value: float) -> float:
    """A share fit to draw: NaN, infinite or negative (a sketch's rounding) count as nothing."""
    return value if math.isfinite(value) and value > 0 else 0.0


def _shares(values: list[float]) -> list[float]:
    return [_share(v) for v in values]


def _short(text: str, limit: int = _LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _time_label(value: float, col: ColumnProfile) -> str | None:
    """A time axis value as a date or date-time, for timestamp and date columns; None for others."""
    try:
        if col.type.startswith("timestamp") and col.unit in _PER_SECOND:
            moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=value / _PER_SECOND[col.unit])
            return moment.strftime("%Y-%m-%d %H:%M")
        if col.type == "date32[day]":
            return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=value)).strftime("%Y-%m-%d")
        if col.type == "date64[ms]":
            return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=value)).strftime("%Y-%m-%d")
    except (OverflowError, ValueError):
        return None
    return None


def _axis_label(value: float, col: ColumnProfile) -> str:
    if col.kind == "time":
        as_time = _time_label(value, col)
        if as_time is not None:
            return as_time
        return f"{_num(value)} {col.unit}" if col.unit else _num(value)
    return _num(value)


def _histogram(reference: ColumnProfile, current: ColumnProfile, bins: int) -> _Histogram | None:
    edges, ref_raw, cur_raw = numeric_histogram(reference, current, bins)
    ref_shares, cur_shares = _shares(ref_raw), _shares(cur_raw)
    if len(edges) < 2 or not ref_shares or not cur_shares:
        return None
    lo, hi = edges[0], edges[-1]
    plot_w = _HIST_W - _HIST_LEFT - _HIST_RIGHT
    plot_h = _HIST_H - _HIST_TOP - _HIST_BOTTOM
    span = hi - lo
    top = max(max(ref_shares), max(cur_shares)) or 1.0
    n = len(edges) - 1

    def x_of(i: int) -> float:
        # Uneven or degenerate edges (a constant column) fall back to even slots.
        fraction = (edges[i] - lo) / span if span > 0 and math.isfinite(span) else i / n
        return _HIST_LEFT + fraction * plot_w

    def bars(shares: list[float]) -> tuple[_Bar, ...]:
        out = []
        for i, share in enumerate(shares[:n]):
            x0, x1 = x_of(i), x_of(i + 1)
            h = share / top * plot_h
            tip = f"{_axis_label(edges[i], reference)} to {_axis_label(edges[i + 1], reference)}: {_pct(share)}"
            y = _HIST_TOP + plot_h - h
            out.append(_Bar(round(x0, 1), round(y, 1), round(max(x1 - x0, 0.5), 1), round(h, 1), tip))
        return tuple(out)

    ticks = (
        _Tick(_HIST_LEFT, _axis_label(lo, reference), "start"),
        _Tick(_HIST_LEFT + plot_w / 2, _axis_label(lo + span / 2, reference), "middle"),
        _Tick(_HIST_W - _HIST_RIGHT, _axis_label(hi, reference), "end"),
    )
    return _Histogram(bars(ref_shares), bars(cur_shares), ticks, _pct(top))


def _categories(reference: ColumnProfile, current: ColumnProfile, top: int) -> _Categories | None:
    shares = [(label, _share(r), _share(c)) for label, r, c in category_shares(reference, current, top)]
    if not shares:
        return None
    widest = max(max(r, c) for _, r, c in shares) or 1.0
    bar_w = _CAT_W - _CAT_LABEL_W - _CAT_VALUE_W
    rows = tuple(
        _CategoryRow(
            y=i * _CAT_ROW_H,
            label=label,
            short=_short(label),
            reference_w=round(r / widest * bar_w, 1),
            current_w=round(c / widest * bar_w, 1),
            reference=_pct(r),
            current=_pct(c),
        )
        for i, (label, r, c) in enumerate(shares)
    )
    return _Categories(rows, height=len(rows) * _CAT_ROW_H + 4)


def _column_view(
    index: int, drift: ColumnDrift, reference: ColumnProfile | None, current: ColumnProfile | None, bins: int, top: int
) -> _ColumnView:
    histogram: _Histogram | None = None
    categories: _Categories | None = None
    no_chart: str | None = None
    if reference is None or current is None:
        no_chart = "no profile of this column on one side"
    elif reference.kind != current.kind:
        no_chart = f"kinds differ ({reference.kind} → {current.kind}): nothing to compare"
    elif reference.valid_count == 0 or current.valid_count == 0:
        no_chart = "no values on one side (all null)"
    elif reference.kind in ("numeric", "time"):
        # A number column with few distinct values is tested as categories; it is drawn so too.
        if drift.test in ("chisquare", "z"):
            categories = _categories(reference, current, top)
        if categories is None:
            histogram = _histogram(reference, current, bins)
    elif reference.kind in ("string", "boolean"):
        categories = _categories(reference, current, top)
    else:
        no_chart = f"no distribution is profiled for kind {reference.kind!r}"
    if no_chart is None and histogram is None and categories is None:
        no_chart = "the profiles hold no distribution to draw"
    return _ColumnView(
        anchor=f"c{index}",
        drift=drift,
        reference_type=reference.type if reference is not None else _DASH,
        current_type=current.type if current is not None else _DASH,
        score=_num(drift.score),
        threshold=_num(drift.threshold),
        psi=_num(drift.psi),
        histogram=histogram,
        categories=categories,
        no_chart=no_chart,
    )


def render_drift_html(
    report: DriftReport, reference: TableProfile, current: TableProfile, *, bins: int = 20, top: int = 10
) -> str:
    """The report as a self-contained HTML page; ``reference`` and ``current`` are the profiles it compared.

    ``bins`` histogram bins per number column; ``top`` most frequent categories per category column
    (the rest drawn as one "(other)" bar).
    """
    ref_columns = {c.name: c for c in reference.columns}
    cur_columns = {c.name: c for c in current.columns}
    views = [
        _column_view(i, drift, ref_columns.get(drift.name), cur_columns.get(drift.name), bins, top)
        for i, drift in enumerate(report.columns)
    ]
    return _TEMPLATE.render(
        report=report,
        columns=views,
        row_change=f"{report.row_change * 100:+.1f} %" if report.row_change is not None else _DASH,
        share=_pct(report.share),
        share_threshold=_pct(report.share_threshold),
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )


def _verdict(drift: ColumnDrift) -> str:
    return "drifted" if drift.drifted else ("skipped" if drift.test is None else "stable")


def _verdict_badge(drift: ColumnDrift) -> Markup:
    # Built from fixed words only, so marking it safe cannot let data through.
    word = _verdict(drift)
    css = {"drifted": "bad", "stable": "ok", "skipped": "skip"}[word]
    return Markup(f'<span class="badge {css}">{word}</span>')  # noqa: S704


_ENV: Final = jinja2.Environment(
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)

_TEMPLATE: Final = _ENV.from_string(
    """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Drift of {{ report.dataset }}: v{{ report.reference_version }} → v{{ report.current_version }}</title>
<style>
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1080px;
padding:1.5em;color:#1d2330;background:#fff}
h1{font-size:1.6em;margin:0 0 .2em}
h2{font-size:1.2em;margin:1.6em 0 .5em;border-bottom:1px solid #dde1e8}
h3{font-size:1.05em;margin:0 0 .3em;word-break:break-all}
.muted{color:#5b6475}
.verdict{padding:.8em 1em;border-radius:6px;margin:1em 0}
.verdict.bad{background:#fdecec;border:1px solid #e9a3a3}
.verdict.ok{background:#eaf6ee;border:1px solid #9fd3b0}
.verdict strong{font-size:1.15em}
table{border-collapse:collapse;margin:.4em 0}
td,th{padding:.25em .7em;text-align:left;border-bottom:1px solid #eef0f4;vertical-align:top}
th{font-weight:600;color:#3a4254}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:0 .5em;border-radius:3px;font-size:.85em;font-weight:600;color:#fff}
.badge.bad{background:#c93c3c}.badge.ok{background:#2f8f55}.badge.skip{background:#8a93a5}
tr.bad td:first-child{border-left:3px solid #c93c3c}
.col{border:1px solid #dde1e8;border-radius:6px;padding:.8em 1em;margin:1em 0}
.col.bad{border-color:#e9a3a3}
.charts{display:flex;flex-wrap:wrap;gap:1em;margin-top:.5em}
figure{margin:0}
figcaption{font-size:.85em;color:#5b6475}
svg text{font-size:10px;fill:#3a4254}
.r{fill:#6b8cc7}.c{fill:#e58a2e}.axis{stroke:#9aa3b3;stroke-width:1}
.grid{stroke:#dde1e8;stroke-dasharray:3 3}
.key{display:inline-block;width:.8em;height:.8em;margin:0 .3em 0 .8em;vertical-align:-.05em}
.key.r{background:#6b8cc7}.key.c{background:#e58a2e}
code{font-size:.92em;word-break:break-all}
</style>
</head>
<body>
<h1>Drift of {{ report.dataset }}</h1>
<p class="muted">reference v{{ report.reference_version }} <code>{{ report.reference_version_id }}</code>
→ current v{{ report.current_version }} <code>{{ report.current_version_id }}</code>
· generated {{ generated }}</p>
<div class="verdict {{ 'bad' if report.drifted else 'ok' }}">
<strong>{{ "Drifted" if report.drifted else "No drift" }}</strong>:
{{ report.drifted_columns }} of {{ report.tested_columns }} tested columns drifted
({{ share }}; the dataset drifts at {{ share_threshold }}).
{% if report.reasons %}
<ul>
{% for reason in report.reasons %}
<li>{{ reason }}</li>
{% endfor %}
</ul>
{% endif %}
</div>
<h2>Dataset</h2>
<table>
<tr><th></th><th>reference</th><th>current</th><th>change</th><th></th></tr>
<tr><th>rows</th>
<td class="n">{{ "{:,}".format(report.reference_rows) }}</td>
<td class="n">{{ "{:,}".format(report.current_rows) }}</td>
<td class="n">{{ row_change }}</td>
<td>{% if report.row_count_drifted %}<span class="badge bad">drifted</span>{% endif %}</td></tr>
<tr><th>drifted columns</th>
<td colspan="2" class="n">{{ report.drifted_columns }} of {{ report.tested_columns }} tested</td>
<td class="n">{{ share }}</td><td class="muted">threshold {{ share_threshold }}</td></tr>
{% set change = report.schema_change %}
<tr><th>schema</th>
<td colspan="3">{{ "changed" if change and change.changed else "unchanged" }}</td>
<td>{% if report.schema_drifted %}<span class="badge bad">drifted</span>{% endif %}</td></tr>
</table>
{% if change and change.changed %}
<table>
{% for f in change.added %}
<tr><th>added</th><td><code>{{ f.name }}</code></td><td><code>{{ f.type }}</code></td></tr>
{% endfor %}
{% for f in change.removed %}
<tr><th>removed</th><td><code>{{ f.name }}</code></td><td><code>{{ f.type }}</code></td></tr>
{% endfor %}
{% for t in change.type_changed %}
<tr><th>type changed</th><td><code>{{ t.name }}</code></td>
<td><code>{{ t.old }}</code> → <code>{{ t.new }}</code></td></tr>
{% endfor %}
{% for n in change.nullability_changed %}
<tr><th>nullability</th><td><code>{{ n.name }}</code></td>
<td>{{ "nullable" if n.old else "not null" }} → {{ "nullable" if n.new else "not null" }}</td></tr>
{% endfor %}
</table>
{% endif %}
<h2>Columns</h2>
<p class="muted">Columns present in both versions. p-value tests (ks, chisquare, z) drift below the
threshold; distances (wasserstein, jensenshannon) at or above it. PSI is shown, not used for the verdict.</p>
<table>
<tr><th>column</th><th>kind</th><th>test</th><th>score</th><th>threshold</th><th>PSI</th><th>nulls</th>
<th>verdict</th></tr>
{% for v in columns %}
{% set d = v.drift %}
<tr{% if d.drifted %} class="bad"{% endif %}>
<td><a href="#{{ v.anchor }}"><code>{{ d.name }}</code></a></td><td>{{ d.kind }}</td>
<td>{{ d.test or dash }}</td><td class="n">{{ v.score }}</td><td class="n">{{ v.threshold }}</td>
<td class="n">{{ v.psi }}</td>
<td class="n">{{ pct(d.null_rate_reference) }} → {{ pct(d.null_rate_current) }}</td>
<td>{{ verdict(d) }}</td></tr>
{% endfor %}
</table>
<p><span class="key r"></span>reference v{{ report.reference_version }}
<span class="key c"></span>current v{{ report.current_version }}</p>
{% for v in columns %}
{% set d = v.drift %}
<section class="col{% if d.drifted %} bad{% endif %}" id="{{ v.anchor }}">
<h3>{{ verdict(d) }} <code>{{ d.name }}</code> <span class="muted">{{ d.kind }} · {{ v.reference_type }}
{%- if v.current_type != v.reference_type %} → {{ v.current_type }}{% endif %}</span></h3>
<div>{{ d.detail }}</div>
<table>
<tr><th>test</th><td>{{ d.test or "none" }}</td><th>score</th><td class="n">{{ v.score }}</td>
<th>threshold</th><td class="n">{{ v.threshold }}</td><th>PSI</th><td class="n">{{ v.psi }}</td></tr>
<tr><th>distribution</th><td>{{ "drifted" if d.distribution_drifted else "stable" }}</td>
<th>nulls</th><td class="n">{{ pct(d.null_rate_reference) }} → {{ pct(d.null_rate_current) }}</td>
<th>null rate</th><td>{{ "drifted" if d.null_rate_drifted else "stable" }}</td>
{% if d.skipped %}<th>skipped</th><td>{{ d.skipped }}</td>{% else %}<td colspan="2"></td>{% endif %}</tr>
</table>
{% if v.histogram %}
{% set h = v.histogram %}
<div class="charts">
{% for css, side, version, bars in [
    ("r", "reference", report.reference_version, h.reference),
    ("c", "current", report.current_version, h.current),
] %}
<figure><svg width="{{ h.width }}" height="{{ h.height }}" viewBox="0 0 {{ h.width }} {{ h.height }}" role="img">
<text x="{{ h.left }}" y="{{ h.top - 5 }}">max {{ h.y_max }}</text>
<line class="grid" x1="{{ h.left }}" y1="{{ h.top }}" x2="{{ h.right }}" y2="{{ h.top }}"/>
<line class="axis" x1="{{ h.left }}" y1="{{ h.base }}" x2="{{ h.right }}" y2="{{ h.base }}"/>
{% for b in bars %}
<rect class="{{ css }}" x="{{ b.x }}" y="{{ b.y }}" width="{{ b.w }}" height="{{ b.h }}">
<title>{{ b.tip }}</title></rect>
{% endfor %}
{% for t in h.ticks %}
<text x="{{ t.x }}" y="{{ h.height - 6 }}" text-anchor="{{ t.anchor }}">{{ t.text }}</text>
{% endfor %}
</svg><figcaption>{{ side }} v{{ version }}</figcaption></figure>
{% endfor %}
</div>
{% elif v.categories %}
{% set c = v.categories %}
<div class="charts"><figure>
<svg width="{{ c.width }}" height="{{ c.height }}" viewBox="0 0 {{ c.width }} {{ c.height }}" role="img">
{% for row in c.rows %}
<g transform="translate(0 {{ row.y }})">
<text x="{{ c.bars_x - 6 }}" y="15" text-anchor="end">
{%- if row.short != row.label %}<title>{{ row.label }}</title>{% endif %}{{ row.short }}</text>
<rect class="r" x="{{ c.bars_x }}" y="2" width="{{ row.reference_w }}" height="9"/>
<rect class="c" x="{{ c.bars_x }}" y="12" width="{{ row.current_w }}" height="9"/>
<text x="{{ c.values_x }}" y="15">{{ row.reference }} → {{ row.current }}</text></g>
{% endfor %}
</svg><figcaption>share of values, reference → current</figcaption></figure></div>
{% else %}
<p class="muted">No chart: {{ v.no_chart }}.</p>
{% endif %}
</section>
{% endfor %}
</body>
</html>
""",
    globals={"pct": _pct, "verdict": _verdict_badge, "dash": _DASH},
)
