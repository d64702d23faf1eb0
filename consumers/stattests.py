"""Drift tests on column profiles, chosen and computed the way Evidently 0.7 does (issue #4).

Pure. Each test takes the reference and current ``Distribution`` of one column (see
``consumers.distributions``) and mirrors an Evidently function, cited at each; Evidently runs
them on the data, these on the profiles:

* exact where the profile keeps the values: KS, chi-square and z on references of at most 1,000
  values (``sample``), and every count-based test on numbers with at most 20 distinct values
  (``domain``), booleans and strings with fewer distinct values than the frequent-items sketch
  keeps (about 96);
* otherwise from the sketches: normed Wasserstein between the KLL sketches' weighted items, KS's
  statistic from their CDFs, Jensen-Shannon and chi-square on the frequent items plus an
  ``(other)`` bucket.

How Evidently 0.7 (``DataDriftPreset`` with defaults) picks a column's test, mirrored by
``choose_test``:

1. The column's type is inferred from the *current* data (``infer_column_type`` in
   ``evidently/core/datasets.py``): floats are numerical; integers are categorical with at most
   10 distinct values (``INTEGER_CARDINALITY_LIMIT``), else numerical (and numerical when the
   column has nulls: pandas reads it as float64); booleans and pandas
   categoricals (our dictionary-encoded strings) are categorical; other strings are text when
   more than half the non-null values are distinct, else categorical; datetimes are not tested.
2. Infinite values become NaN and NaNs are dropped on both sides (``get_one_column_drift`` in
   ``evidently/legacy/calculations/data_drift.py``).
3. ``_get_default_stattest`` (``evidently/legacy/calculations/stattests/registry.py``), with
   ``n_values`` the distinct values of reference and current together: a reference of at most
   1,000 values gets, for numbers, chi-square (more than 2 values) or z (2 at most) when
   ``n_values <= 5``, else KS; for categories chi-square or z the same way. A larger reference
   gets Jensen-Shannon for numbers with ``n_values <= 5`` and for categories, else normed
   Wasserstein. Text gets a classifier on the text, which needs the data: skipped here.
"""

from __future__ import annotations

import math
from typing import Final, Literal

import numpy as np

# No stubs for scipy; unused-ignore keeps this clean once pyproject's mypy overrides list scipy.
from scipy import stats
from scipy.spatial import distance

from consumers.distributions import CategoryCounts, Distribution, category_counts, sturges_edges
from daemon.profile import distinct_estimate
from schemas.config import ColumnDriftSettings, DriftSettings
from schemas.drift import ColumnDrift, DriftTest
from schemas.profiles import ColumnProfile

__all__ = [
    "EvidentlyType",
    "chisquare",
    "choose_test",
    "column_drift",
    "evidently_type",
    "jensenshannon",
    "ks",
    "psi",
    "wasserstein",
    "z",
]

EvidentlyType = Literal["numerical", "categorical", "text", "datetime"]

# evidently/core/datasets.py: integer columns with at most this many distinct values are categorical.
INTEGER_CARDINALITY_LIMIT: Final = 10
# evidently/legacy/calculations/stattests/utils.py get_binned_data: numbers with more distinct
# reference values than this are binned (Sturges) for PSI and Jensen-Shannon, else counted by value.
BINNED_ABOVE_DISTINCT: Final = 20
_INTEGER_TYPES: Final = frozenset({"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"})
_P_VALUE_TESTS: Final = frozenset({"ks", "chisquare", "z"})
_NUMBER_TESTS: Final = frozenset({"ks", "wasserstein"})
# A null-rate change exactly at the threshold (0.3 - 0.2 against 0.1) must count despite rounding.
_ROUNDING: Final = 1e-12


# -- the tests -------------------------------------------------------------------------------------


def ks(ref: Distribution, cur: Distribution) -> float:
    """Two-sample Kolmogorov-Smirnov p-value (Evidently ``_ks_stat_test``: ``scipy.stats.ks_2samp``).

    Exact (``ks_2samp`` itself) when both sides kept their values. Otherwise the statistic is the
    largest CDF difference at every value or sketch item of either side, and the p-value
    Smirnov's asymptotic one, as ``ks_2samp(method="asymp")``.
    """
    if ref.sample is not None and cur.sample is not None:
        return float(stats.ks_2samp(ref.sample, cur.sample).pvalue)
    points = np.unique(np.concatenate([ref.weighted_values[0], cur.weighted_values[0]]))
    d = float(np.max(np.abs(ref.cdf(points) - cur.cdf(points)))) if len(points) else 0.0
    n, m = ref.n, cur.n
    return float(np.clip(stats.kstwo.sf(d, np.round(n * m / (n + m))), 0.0, 1.0))


def chisquare(counts: CategoryCounts) -> float:
    """Chi-square p-value of the current counts against the reference's, scaled to the current's size.

    Evidently ``_chi_stat_test`` (``chisquare_stattest.py``): ``scipy.stats.chisquare(f_obs,
    f_exp)`` with ``f_exp = reference count * (current size / reference size)`` over the values of
    either side; a value only the current has makes the p-value 0.
    """
    _, ref_counts, cur_counts = counts.with_other()
    k_norm = cur_counts.sum() / ref_counts.sum()
    with np.errstate(divide="ignore", invalid="ignore"):  # expected 0 for a new value: statistic inf
        return float(stats.chisquare(cur_counts, ref_counts * k_norm).pvalue)


def z(counts: CategoryCounts) -> float:
    """Two-proportion z-test p-value of the first value (in value order) against the others.

    Evidently ``_z_stat_test`` (``z_stattest.py``): 1 when both sides hold the same single
    value; else the share of values other than the smallest on each side, the pooled share, and
    ``2 * (1 - norm.cdf(|z|))``.
    """
    _, ref_counts, cur_counts = counts.with_other()
    n1, n2 = float(ref_counts.sum()), float(cur_counts.sum())
    ref_present, cur_present = np.flatnonzero(ref_counts), np.flatnonzero(cur_counts)
    if len(ref_present) == 1 and len(cur_present) == 1 and ref_present[0] == cur_present[0]:
        return 1.0
    # The same operations in the same order as Evidently's proportions_diff_z_stat_ind.
    p1 = float(n1 - ref_counts[0]) / n1
    p2 = float(n2 - cur_counts[0]) / n2
    pooled = float(p1 * n1 + p2 * n2) / (n1 + n2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z_stat = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return float(2 * (1 - stats.norm.cdf(np.abs(z_stat))))


def wasserstein(ref: Distribution, cur: Distribution) -> float:
    """Wasserstein-1 distance divided by the reference's standard deviation (at least 0.001).

    Evidently ``_wasserstein_distance_norm``: ``scipy.stats.wasserstein_distance(ref, cur) /
    max(np.std(ref), 0.001)``. The values are the exact sample or the KLL sketch's retained items
    with their weights; the standard deviation is the population one (``ddof=0``), exact from
    ``m2``.
    """
    ref_values, ref_weights = ref.weighted_values
    cur_values, cur_weights = cur.weighted_values
    std = _population_std(ref)
    return float(stats.wasserstein_distance(ref_values, cur_values, ref_weights, cur_weights)) / max(std, 0.001)


def _population_std(dist: Distribution) -> float:
    """``np.std`` of the finite values: of the sample as Evidently takes it, else from the exact m2,
    else (infinite values spoil m2) of the sketch's finite items."""
    if dist.sample is not None:
        return float(np.std(dist.sample))
    col = dist.col
    if col.mean is not None and col.m2 is not None:
        return math.sqrt(max(col.m2, 0.0) / dist.n)
    values, weights = dist.weighted_values
    if not len(values):
        return 0.0
    mean = float(np.average(values, weights=weights))
    return math.sqrt(float(np.average((values - mean) ** 2, weights=weights)))


def _binned_shares(
    ref: Distribution, cur: Distribution, numerical: bool, counts: CategoryCounts | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Each side's share per bin, as Evidently's ``get_binned_data`` (``stattests/utils.py``).

    Numbers with more than 20 distinct reference values: Sturges bins over both sides' values,
    shares of each side's size. Otherwise each value of either side, shares of each side's size.
    """
    if _binned(ref, numerical):
        edges = sturges_edges(ref, cur)
        if edges is None:
            return None
        return ref.bin_shares(edges), cur.bin_shares(edges)
    if counts is None:
        return None
    _, ref_counts, cur_counts = counts.with_other()
    return ref_counts / ref.n, cur_counts / cur.n


def _binned(ref: Distribution, numerical: bool) -> bool:
    return numerical and (ref.distinct is None or ref.distinct > BINNED_ABOVE_DISTINCT)


def jensenshannon(ref: Distribution, cur: Distribution, *, numerical: bool, counts: CategoryCounts | None) -> float:
    """Jensen-Shannon distance (natural log) of the binned shares.

    Evidently ``_jensenshannon``: ``scipy.spatial.distance.jensenshannon(ref, cur, base=None)`` of
    ``get_binned_data(..., feel_zeroes=False)``.
    """
    shares = _binned_shares(ref, cur, numerical, counts)
    if shares is None:
        return math.nan
    return float(distance.jensenshannon(shares[0], shares[1]))


def psi(ref: Distribution, cur: Distribution, *, numerical: bool, counts: CategoryCounts | None) -> float:
    """Population stability index of the binned shares, empty bins filled as Evidently's.

    Evidently ``_psi``: ``get_binned_data(..., feel_zeroes=True)``, which puts ``min(non-zero) /
    1e6`` (or 0.0001 when the smallest non-zero share is above 0.0001) in empty bins, then
    ``sum((ref - cur) * ln(ref / cur))``. Its ``n_bins`` is unused for numbers (Sturges bins).
    """
    shares = _binned_shares(ref, cur, numerical, counts)
    if shares is None:
        return math.nan
    ref_shares, cur_shares = (_fill_zeroes(s) for s in shares)
    return float(np.sum((ref_shares - cur_shares) * np.log(ref_shares / cur_shares)))


def _fill_zeroes(shares: np.ndarray) -> np.ndarray:
    filled = np.array(shares, dtype=np.float64)
    nonzero = filled[filled != 0]
    if len(nonzero) == 0:
        return filled
    smallest = float(nonzero.min())
    np.place(filled, filled == 0, smallest / 10**6 if smallest <= 0.0001 else 0.0001)
    return filled


# -- choosing a test -------------------------------------------------------------------------------


def _distinct_estimate(dist: Distribution) -> float:
    if dist.distinct is not None:
        return float(dist.distinct)
    return distinct_estimate(dist.col) or 0.0


def evidently_type(cur: Distribution) -> EvidentlyType | None:
    """The type Evidently infers for the current column (``infer_column_type``), None for 'other'."""
    col = cur.col
    if col.kind == "boolean":
        return "categorical"
    if col.kind == "time":
        return "datetime"
    if col.kind == "numeric":
        # pandas reads an integer column with nulls as float64, which Evidently takes as numerical.
        distinct = cur.distinct
        integers = col.type in _INTEGER_TYPES and col.null_count == 0
        if integers and distinct is not None and distinct <= INTEGER_CARDINALITY_LIMIT:
            return "categorical"
        return "numerical"
    if col.kind == "string":
        if col.type.startswith("dictionary<"):  # pandas 'category' dtype: always categorical
            return "categorical"
        return "text" if _distinct_estimate(cur) > 0.5 * (col.count - col.null_count) else "categorical"
    return None


def _n_values(ref: Distribution, cur: Distribution) -> int | None:
    """Distinct values of both sides together, or None when more than the profiles count exactly."""
    if ref.distinct is None or cur.distinct is None:
        return None
    a, b = ref.exact_counts, cur.exact_counts
    return None if a is None or b is None else len(set(a) | set(b))


def choose_test(ref: Distribution, cur: Distribution, settings: DriftSettings) -> tuple[DriftTest | None, str | None]:
    """Evidently's default test for the column (``_get_default_stattest``), or None and why not.

    ``settings.categorical_max_distinct`` above 20 acts as 20: past that the profile only knows
    that a number column has many distinct values.
    """
    kind = evidently_type(cur)
    if kind is None:
        return None, "kind 'other' has counts only"
    if kind == "text":
        return None, "text (over half the values distinct): Evidently tests text with a classifier on the data"
    if kind == "datetime":
        return None, "a time column: Evidently's data drift does not test dates and times (force a test to)"
    n_values = _n_values(ref, cur)
    few = n_values is not None and n_values <= settings.categorical_max_distinct
    two = n_values is not None and n_values <= 2
    if ref.n <= settings.small_sample_rows:
        if kind == "numerical" and not few:
            return "ks", None
        return ("z" if two else "chisquare"), None
    if kind == "numerical" and not few:
        return "wasserstein", None
    return "jensenshannon", None


def _applies(test: DriftTest, ref: Distribution, cur: Distribution) -> str | None:
    """Why a forced test cannot run on the column, or None when it can."""
    if test in _NUMBER_TESTS:
        return None if cur.kind in ("numeric", "time") else f"{test} needs numbers, not a {cur.kind} column"
    if test in ("chisquare", "z") and not (ref.countable and cur.countable):
        return f"{test} needs each value's count: more than 20 distinct values and 1,000 values"
    return None


# -- the verdict -----------------------------------------------------------------------------------


def _null_rate(col: ColumnProfile) -> float:
    # Evidently drops NaN with the nulls: both are missing values here.
    return (col.null_count + col.nan_count) / col.count if col.count else 0.0


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _percent(share: float) -> str:
    return f"{share * 100:.1f}%"


def _describe(ref: Distribution, cur: Distribution, counts: CategoryCounts | None) -> str:
    """The change a person looks at first: mean for numbers, the most moved share for categories."""
    if ref.kind in ("numeric", "time") and ref.col.mean is not None and cur.col.mean is not None:
        return f"mean {_fmt(ref.col.mean)} -> {_fmt(cur.col.mean)}"
    if counts is not None and ref.n and cur.n:
        labels, ref_counts, cur_counts = counts.with_other()
        if labels:
            moved = np.abs(ref_counts / ref.n - cur_counts / cur.n)
            i = int(np.argmax(moved))
            return f"{labels[i]!r} {_percent(ref_counts[i] / ref.n)} -> {_percent(cur_counts[i] / cur.n)}"
    return ""


def column_drift(
    ref: ColumnProfile, cur: ColumnProfile, settings: DriftSettings, column_settings: ColumnDriftSettings | None
) -> ColumnDrift:
    """The verdict on one column: its test (Evidently's choice unless forced), PSI and null rate.

    Drifted when the test says so (p-value below ``p_value``, ``<=`` for KS as Evidently's;
    distance at least ``distance``) or the null share moved by at least ``null_rate``. Skipped
    (no test) when ignored, the kinds differ, a side has no values, or Evidently would not test
    the column (kind 'other', text, times) and no test is forced.
    """
    overrides = column_settings or ColumnDriftSettings()
    null_ref, null_cur = _null_rate(ref), _null_rate(cur)
    base = {"name": cur.name, "kind": cur.kind, "null_rate_reference": null_ref, "null_rate_current": null_cur}
    if overrides.ignore:
        return ColumnDrift(**base, drifted=False, skipped="ignored by config", detail="not tested: ignored by config")
    null_limit = overrides.null_rate if overrides.null_rate is not None else settings.null_rate
    null_drifted = abs(null_cur - null_ref) >= null_limit - _ROUNDING
    nulls = f"nulls {_percent(null_ref)} -> {_percent(null_cur)}"

    r, c = Distribution(ref), Distribution(cur)
    test: DriftTest | None = overrides.test
    reason: str | None = None
    if ref.kind != cur.kind:
        reason = f"kinds differ: {ref.kind} -> {cur.kind}"
    elif cur.kind == "other":
        reason = "kind 'other' has counts only"
    elif r.n == 0 or c.n == 0:
        reason = "no values in the " + ("reference" if r.n == 0 else "current version")
    elif test is not None:
        reason = _applies(test, r, c)
    else:
        test, reason = choose_test(r, c, settings)
    if reason is not None or test is None:
        why = reason or "no test"
        detail = f"not tested: {why}" + (f"; {nulls}" if null_drifted else "")
        return ColumnDrift(**base, drifted=null_drifted, null_rate_drifted=null_drifted, skipped=why, detail=detail)

    numerical = evidently_type(c) in ("numerical", "datetime") or test in _NUMBER_TESTS
    # Counting by value is only needed for categories and numbers of few distinct values.
    counts = category_counts(r, c) if test in ("chisquare", "z") or not _binned(r, numerical) else None
    if test == "ks":
        score = ks(r, c)
    elif test == "wasserstein":
        score = wasserstein(r, c)
    elif test == "jensenshannon":
        score = jensenshannon(r, c, numerical=numerical, counts=counts)
    elif counts is not None:
        score = chisquare(counts) if test == "chisquare" else z(counts)
    else:  # pragma: no cover - _applies refused it
        score = math.nan
    if test in _P_VALUE_TESTS:
        threshold = overrides.p_value if overrides.p_value is not None else settings.p_value
        # Evidently: ks drifts at p <= threshold, chi-square and z at p < threshold.
        distribution_drifted = score <= threshold if test == "ks" else score < threshold
        sign = ("<=" if test == "ks" else "<") if distribution_drifted else ">"
        scored = f"{test} p={_fmt(score)} {sign} {_fmt(threshold)}"
    else:
        threshold = overrides.distance if overrides.distance is not None else settings.distance
        distribution_drifted = score >= threshold
        scored = f"{test} {_fmt(score)} {'>=' if distribution_drifted else '<'} {_fmt(threshold)}"
    population = psi(r, c, numerical=numerical, counts=counts)
    parts = [scored, _describe(r, c, counts if not numerical else None)]
    if null_drifted:
        parts.append(nulls)
    return ColumnDrift(
        **base,
        test=test,
        score=score,
        threshold=threshold,
        drifted=distribution_drifted or null_drifted,
        distribution_drifted=distribution_drifted,
        psi=population if math.isfinite(population) else None,
        null_rate_drifted=null_drifted,
        detail="; ".join(p for p in parts if p),
    )
