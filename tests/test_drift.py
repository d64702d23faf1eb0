"""Drift verdicts from profiles against scipy on the raw data (issue #4).

Pure: tables are built in memory (seeded), profiled by the real ``Profiler`` (or written to
Parquet and read by ``profile_file``), and compared with ``consumers.drift.compare``. Every
expected score is computed here from the raw values with scipy, the way Evidently 0.7 calls it,
never taken from our own code:

* references of at most 1,000 values: KS, chi-square and z p-values equal scipy's exactly (the
  profile keeps every value of such a column);
* larger ones: normed Wasserstein from the KLL sketches within ``WASSERSTEIN_TOLERANCE`` of
  scipy's on the data, Jensen-Shannon of categories exact (the frequent-items sketch keeps every
  value of a column with fewer than ~96 distinct values).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import datasketches as ds
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats
from scipy.spatial import distance

from consumers.distributions import category_shares, kll_items, numeric_histogram
from consumers.drift import VersionSide, compare
from daemon.profile import Profiler, merge_profiles
from daemon.tables import profile_file
from daemon.tableschema import table_schema
from schemas.config import ColumnDriftSettings, DriftSettings
from schemas.drift import ColumnDrift, DriftReport
from schemas.profiles import TableProfile

SMALL, LARGE = 800, 100_000
SHIFTED = {"num_a", "num_b", "num_c", "cat_mix"}
# Normed Wasserstein from two KLL sketches (k=200, rank error ~1.3 % at 99 %), measured against
# the exact value over many seeds: within 0.03 for normal and uniform data (typically 0.01),
# within 0.09 for a heavy tail (lognormal, sigma 0.8), whose sparse extreme items weigh most.
WASSERSTEIN_TOLERANCE = 0.1
# Jensen-Shannon of Sturges bins (a forced test on numbers) with shares from the sketches: their
# noise only adds divergence, measured at 0.03 on average and at most 0.07.
BINNED_JS_TOLERANCE = 0.1
KLL_EPS = ds.kll_doubles_sketch.get_normalized_rank_error(200, False)


def _table(rows: int, *, shifted: bool, seed: int) -> pa.Table:
    """Three numbers that move by one standard deviation, a category mix that changes, and
    columns that stay put (drawn afresh from the same distribution)."""
    rng = np.random.default_rng(seed)
    shift = 1.0 if shifted else 0.0
    num_a = rng.normal(10.0 + 2.0 * shift, 2.0, rows)
    num_a[rng.random(rows) < 0.02] = np.nan  # NaN, not null: dropped like Evidently does
    mix = [0.2, 0.3, 0.5] if shifted else [0.5, 0.3, 0.2]
    return pa.table(
        {
            "num_a": pa.array(num_a, mask=rng.random(rows) < 0.03),
            "num_b": pa.array(rng.lognormal(1.0 + 0.8 * shift, 0.8, rows)),
            "num_c": pa.array(rng.integers(0, 1_000, rows) + int(300 * shift)),
            "num_same": pa.array(rng.normal(-5.0, 3.0, rows)),
            "int_same": pa.array(rng.integers(-10_000, 10_000, rows)),
            "grade": pa.array(rng.choice([1, 2, 3, 4, 5], rows, p=[0.1, 0.2, 0.4, 0.2, 0.1])),
            "ratio": pa.array(rng.choice([0.25, 0.5, 0.75], rows)),
            "flag": pa.array(rng.random(rows) < 0.3),
            "cat_mix": pa.array(rng.choice(["red", "green", "blue"], rows, p=mix)),
            "cat_same": pa.array(rng.choice([f"k{i}" for i in range(12)], rows)),
        }
    )


def _profile(table: pa.Table, batch_rows: int = 7_000) -> TableProfile:
    profiler = Profiler(table.schema)
    for batch in table.to_batches(max_chunksize=batch_rows):
        profiler.add(batch)
    return profiler.finish()


def _side(table: pa.Table, version: int, profile: TableProfile | None = None) -> VersionSide:
    return VersionSide(version, f"v{version}", table_schema(table.schema), profile or _profile(table))


def _compare(reference: pa.Table, current: pa.Table, settings: DriftSettings | None = None) -> DriftReport:
    return compare(_side(reference, 1), _side(current, 2), settings or DriftSettings(), dataset="sales")


def _pair(rows: int, seed: int = 12) -> tuple[pa.Table, pa.Table]:
    # Current a little larger than the reference: the tests scale by both sizes.
    return _table(rows, shifted=False, seed=seed), _table(rows + rows // 8, shifted=True, seed=seed + 1)


def _col(report: DriftReport, name: str) -> ColumnDrift:
    column = report.column(name)
    assert column is not None, name
    return column


def _valid(table: pa.Table, name: str) -> list[Any]:
    """The values Evidently tests: nulls, NaN and infinities dropped."""
    values = table.column(name).drop_null().to_pylist()
    return [v for v in values if not (isinstance(v, float) and not np.isfinite(v))]


# -- what Evidently computes, on the raw data -------------------------------------------------------


def _chisquare(ref: list[Any], cur: list[Any]) -> float:
    """evidently/legacy/calculations/stattests/chisquare_stattest.py, _chi_stat_test."""
    keys = sorted(set(ref) | set(cur))
    ref_counts, cur_counts = Counter(ref), Counter(cur)
    k_norm = len(cur) / len(ref)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(stats.chisquare([cur_counts[k] for k in keys], [ref_counts[k] * k_norm for k in keys]).pvalue)


def _z(ref: list[Any], cur: list[Any]) -> float:
    """evidently/legacy/calculations/stattests/z_stattest.py, _z_stat_test."""
    if len(set(ref)) == 1 and set(ref) == set(cur):
        return 1.0
    first = sorted(set(ref) | set(cur))[0]
    n1, n2 = len(ref), len(cur)
    p1 = float(sum(0 if x == first else 1 for x in ref)) / n1
    p2 = float(sum(0 if x == first else 1 for x in cur)) / n2
    pooled = float(p1 * n1 + p2 * n2) / (n1 + n2)
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return float(2 * (1 - stats.norm.cdf(np.abs(z))))


def _wasserstein(ref: list[float], cur: list[float]) -> float:
    """evidently/legacy/calculations/stattests/wasserstein_distance_norm.py."""
    return float(stats.wasserstein_distance(ref, cur) / max(float(np.std(ref)), 0.001))


def _shares(ref: list[Any], cur: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """get_binned_data in evidently/legacy/calculations/stattests/utils.py, by value."""
    keys = sorted(set(ref) | set(cur))
    ref_counts, cur_counts = Counter(ref), Counter(cur)
    return (
        np.array([ref_counts[k] / len(ref) for k in keys]),
        np.array([cur_counts[k] / len(cur) for k in keys]),
    )


def _jensenshannon(ref: list[Any], cur: list[Any]) -> float:
    """evidently/legacy/calculations/stattests/jensenshannon.py, categories (or <= 20 numbers)."""
    return float(distance.jensenshannon(*_shares(ref, cur)))


def _binned_jensenshannon(ref: list[float], cur: list[float]) -> float:
    """The same for numbers of more than 20 distinct values: Sturges bins over both sides."""
    edges = np.histogram_bin_edges(np.array(ref + cur), bins="sturges")
    ref_shares = np.histogram(ref, edges)[0] / len(ref)
    cur_shares = np.histogram(cur, edges)[0] / len(cur)
    return float(distance.jensenshannon(ref_shares, cur_shares))


def _psi(ref: list[Any], cur: list[Any]) -> float:
    """evidently/legacy/calculations/stattests/psi.py for categories: empty bins filled."""
    shares = []
    for s in _shares(ref, cur):
        smallest = s[s != 0].min()
        shares.append(np.where(s == 0, smallest / 10**6 if smallest <= 0.0001 else 0.0001, s))
    return float(np.sum((shares[0] - shares[1]) * np.log(shares[0] / shares[1])))


# -- (a) shifted columns are flagged, unchanged ones are not ------------------------------------------


@pytest.mark.parametrize("rows", [SMALL, LARGE])
def test_shifted_numbers_and_a_new_category_mix_are_flagged_and_nothing_else(rows: int) -> None:
    reference, current = _pair(rows)
    report = _compare(reference, current)
    flagged = {c.name for c in report.columns if c.drifted}
    assert flagged == SHIFTED, [(c.name, c.detail) for c in report.columns]
    assert report.tested_columns == len(reference.column_names)
    assert report.drifted_columns == len(SHIFTED)
    assert report.share == pytest.approx(len(SHIFTED) / len(reference.column_names))
    assert report.drifted is (report.share >= 0.5)
    assert not report.schema_drifted and not report.row_count_drifted
    assert all(not c.null_rate_drifted and c.skipped is None for c in report.columns)
    # Evidently's choice: p-value tests up to 1,000 reference values, distances past that.
    small = rows <= 1000
    expected_tests = {
        "num_a": "ks" if small else "wasserstein",
        "num_c": "ks" if small else "wasserstein",
        "grade": "chisquare" if small else "jensenshannon",  # integers of <= 10 values: categories
        "ratio": "chisquare" if small else "jensenshannon",  # numbers of <= 5 values: categories
        "flag": "z" if small else "jensenshannon",  # two values: the z-test
        "cat_mix": "chisquare" if small else "jensenshannon",
    }
    assert {name: _col(report, name).test for name in expected_tests} == expected_tests


def test_the_reasons_name_the_drifted_columns_with_their_detail() -> None:
    reference, current = _pair(LARGE)
    settings = DriftSettings(share=0.3)
    report = _compare(reference, current, settings)
    assert report.drifted and report.share >= 0.3
    assert report.reasons[0].startswith(f"{len(SHIFTED)} of {report.tested_columns} columns drifted")
    named = {line.split(":")[0] for line in report.reasons[1:]}
    assert named == SHIFTED
    num_a = _col(report, "num_a")
    assert num_a.detail.startswith("wasserstein ") and ">= 0.1" in num_a.detail and "mean " in num_a.detail
    assert "'blue' 20.0% -> 49.9%" in _col(report, "cat_mix").detail  # the share that moved most
    assert _compare(reference, current, DriftSettings(share=0.9)).reasons == ()


# -- (b) small samples: exactly scipy's p-values on the raw data ---------------------------------------


def test_small_sample_p_values_equal_scipy_on_the_raw_data() -> None:
    reference, current = _pair(SMALL)
    report = _compare(reference, current)
    for name in ("num_a", "num_b", "num_c", "num_same", "int_same"):
        col, ref, cur = _col(report, name), _valid(reference, name), _valid(current, name)
        expected = float(stats.ks_2samp(ref, cur).pvalue)
        assert (col.test, col.score) == ("ks", expected), name
        assert col.distribution_drifted is bool(expected <= 0.05), name  # Evidently: p <= threshold
    for name in ("grade", "ratio", "cat_mix", "cat_same"):
        col, ref, cur = _col(report, name), _valid(reference, name), _valid(current, name)
        expected = _chisquare(ref, cur)
        assert col.test == "chisquare" and col.score == pytest.approx(expected, rel=1e-12), name
        assert col.distribution_drifted is bool(expected < 0.05), name
        assert col.psi == pytest.approx(_psi(ref, cur), rel=1e-9), name
    flag = _col(report, "flag")
    expected = _z(_valid(reference, "flag"), _valid(current, "flag"))
    assert flag.test == "z" and flag.score == pytest.approx(expected, rel=1e-12)
    assert flag.distribution_drifted is bool(expected < 0.05)


def test_a_category_new_in_the_current_version_gives_chi_square_p_zero() -> None:
    reference = pa.table({"c": ["a", "b", "c"] * 100})
    current = pa.table({"c": ["a", "b", "c", "d"] * 75})
    col = _col(_compare(reference, current), "c")
    expected = _chisquare(_valid(reference, "c"), _valid(current, "c"))
    assert (col.test, col.score, col.drifted) == ("chisquare", expected, True)
    assert expected == 0.0


def test_ks_falls_back_to_the_sketch_when_the_current_version_is_large() -> None:
    # A small reference keeps its values; the current's 50,000 are in a KLL sketch only.
    reference = _table(SMALL, shifted=False, seed=3)
    current = _table(50_000, shifted=True, seed=4)
    report = _compare(reference, current)
    for name in ("num_a", "num_same"):
        col = _col(report, name)
        result = stats.ks_2samp(_valid(reference, name), _valid(current, name))
        assert col.test == "ks" and col.score is not None
        assert col.distribution_drifted is bool(result.pvalue <= 0.05), name
        # The statistic is within the sketch's rank error, so the p-value is Smirnov's at D +- eps.
        n, m = len(_valid(reference, name)), len(_valid(current, name))
        en = np.round(n * m / (n + m))
        low, high = (float(stats.kstwo.sf(result.statistic + d, en)) for d in (KLL_EPS, -KLL_EPS))
        assert low <= col.score <= high, (name, low, col.score, high)


# -- (c) large samples: sketch scores within a stated tolerance of scipy's ------------------------------


def test_large_sample_wasserstein_is_within_tolerance_of_scipy_and_verdicts_agree() -> None:
    reference, current = _pair(LARGE)
    report = _compare(reference, current)
    for name in ("num_a", "num_b", "num_c", "num_same", "int_same"):
        col = _col(report, name)
        expected = _wasserstein(_valid(reference, name), _valid(current, name))
        assert col.test == "wasserstein" and col.score is not None
        assert abs(col.score - expected) <= WASSERSTEIN_TOLERANCE, (name, col.score, expected)
        assert col.distribution_drifted is bool(expected >= 0.1), name


def test_large_sample_jensen_shannon_of_categories_is_exact() -> None:
    reference, current = _pair(LARGE)
    report = _compare(reference, current)
    for name in ("grade", "ratio", "flag", "cat_mix", "cat_same"):
        col, ref, cur = _col(report, name), _valid(reference, name), _valid(current, name)
        expected = _jensenshannon(ref, cur)
        assert col.test == "jensenshannon" and col.score == pytest.approx(expected, rel=1e-9, abs=1e-12), name
        assert col.distribution_drifted is bool(expected >= 0.1), name
        assert col.psi == pytest.approx(_psi(ref, cur), rel=1e-9, abs=1e-15), name


def test_an_integer_with_few_values_now_is_tested_as_categories_against_a_wide_reference() -> None:
    # Evidently types columns on the current data: 6 values now make it categorical; the
    # reference's 500 values are counted from its sketch, the rest in one "(other)" bucket.
    rng = np.random.default_rng(5)
    reference = pa.table({"x": rng.integers(0, 500, LARGE)})
    current = pa.table({"x": rng.integers(0, 6, LARGE)})
    col = _col(_compare(reference, current), "x")
    expected = _jensenshannon(_valid(reference, "x"), _valid(current, "x"))
    assert col.test == "jensenshannon" and col.drifted and expected >= 0.1
    assert col.score == pytest.approx(expected, abs=0.02)


# -- (d) per-column settings -----------------------------------------------------------------------


def test_an_ignored_column_is_left_out_of_the_verdict() -> None:
    reference, current = _pair(LARGE)
    settings = DriftSettings(columns={"num_a": ColumnDriftSettings(ignore=True)})
    report = _compare(reference, current, settings)
    num_a = _col(report, "num_a")
    assert (num_a.test, num_a.drifted, num_a.skipped) == (None, False, "ignored by config")
    assert report.tested_columns == len(reference.column_names) - 1
    assert report.drifted_columns == len(SHIFTED) - 1


@pytest.mark.parametrize("rows", [SMALL, LARGE])
def test_a_forced_test_replaces_evidentlys_choice(rows: int) -> None:
    reference, current = _pair(rows)
    settings = DriftSettings(
        columns={
            "num_same": ColumnDriftSettings(test="jensenshannon"),
            "num_b": ColumnDriftSettings(test="ks"),
            "cat_same": ColumnDriftSettings(test="jensenshannon"),
        }
    )
    report = _compare(reference, current, settings)
    num_same, num_b, cat_same = (_col(report, n) for n in ("num_same", "num_b", "cat_same"))
    ref, cur = _valid(reference, "num_same"), _valid(current, "num_same")
    expected = _binned_jensenshannon(ref, cur)
    assert num_same.test == "jensenshannon" and num_same.score is not None
    if rows <= 1000:  # both sides keep their values: Evidently's Sturges bins exactly
        assert num_same.score == pytest.approx(expected, rel=1e-9)
    else:  # bin shares from the sketches: their noise adds divergence (measured <= 0.07)
        assert abs(num_same.score - expected) <= BINNED_JS_TOLERANCE, (num_same.score, expected)
    assert num_same.distribution_drifted is bool(expected >= 0.1)
    ks = stats.ks_2samp(_valid(reference, "num_b"), _valid(current, "num_b")).pvalue
    assert num_b.test == "ks" and num_b.distribution_drifted is bool(ks <= 0.05)
    assert cat_same.test == "jensenshannon"
    assert cat_same.score == pytest.approx(_jensenshannon(_valid(reference, "cat_same"), _valid(current, "cat_same")))


def test_a_forced_test_that_does_not_fit_the_column_skips_it() -> None:
    reference, current = _pair(SMALL)
    settings = DriftSettings(columns={"cat_same": ColumnDriftSettings(test="ks")})
    col = _col(_compare(reference, current, settings), "cat_same")
    assert col.test is None and col.skipped is not None and "ks needs numbers" in col.skipped


def test_a_p_value_threshold_per_column_moves_the_verdict() -> None:
    reference, current = _pair(SMALL)
    p = float(stats.ks_2samp(_valid(reference, "num_c"), _valid(current, "num_c")).pvalue)
    assert 0 < p < 0.05
    strict = DriftSettings(columns={"num_c": ColumnDriftSettings(p_value=p / 2)})
    lenient = DriftSettings(columns={"num_same": ColumnDriftSettings(p_value=1.0)})
    col = _col(_compare(reference, current, strict), "num_c")
    assert (col.threshold, col.distribution_drifted, col.drifted) == (p / 2, False, False)
    assert _col(_compare(reference, current, lenient), "num_same").drifted  # any p <= 1
    assert _col(_compare(reference, current, DriftSettings(p_value=p)), "num_c").drifted  # p <= p


def test_a_distance_threshold_per_column_moves_the_verdict() -> None:
    reference, current = _pair(LARGE)
    exact = _jensenshannon(_valid(reference, "cat_mix"), _valid(current, "cat_mix"))
    settings = DriftSettings(columns={"cat_mix": ColumnDriftSettings(distance=exact + 0.01)})
    col = _col(_compare(reference, current, settings), "cat_mix")
    assert (col.threshold, col.drifted) == (exact + 0.01, False)


# -- (e) schema, row count and null rate ---------------------------------------------------------


def test_an_added_column_and_a_type_change_drift_the_dataset() -> None:
    reference, current = _pair(SMALL, seed=21)
    reference = reference.drop_columns(list(SHIFTED))
    current = current.drop_columns(list(SHIFTED))
    assert not _compare(reference, current).drifted  # the same data, the same schema
    extra = current.append_column("discount", pa.array(np.zeros(current.num_rows)))
    retyped = current.set_column(
        current.column_names.index("int_same"), "int_same", current.column("int_same").cast(pa.float64())
    )
    added = _compare(reference, extra)
    assert added.schema_drifted and added.drifted
    assert added.schema_change is not None and [f.name for f in added.schema_change.added] == ["discount"]
    assert added.column("discount") is None  # only in the current version: nothing to compare
    assert any("added discount" in line for line in added.reasons)
    changed = _compare(reference, retyped)
    assert changed.schema_drifted and changed.drifted
    assert changed.schema_change is not None
    assert [(t.name, t.old, t.new) for t in changed.schema_change.type_changed] == [("int_same", "int64", "double")]
    assert _col(changed, "int_same").test == "ks"  # still numbers: still tested


def test_a_row_count_change_beyond_the_threshold_drifts_the_dataset() -> None:
    reference = _table(2_000, shifted=False, seed=31)
    same = _table(2_000, shifted=False, seed=31)
    bigger = pa.concat_tables([same, same, same])  # the same distribution, three times the rows
    little = same.slice(0, 1_500)
    # share 1.0: the columns (the same data) cannot drift the dataset, only the row count can.
    settings = DriftSettings(share=1.0)
    steady = _compare(reference, little, settings)
    assert steady.row_change == pytest.approx(-0.25) and not steady.row_count_drifted and not steady.drifted
    report = _compare(reference, bigger, settings)
    assert report.row_change == pytest.approx(2.0)
    assert report.row_count_drifted and report.drifted
    assert report.reasons[0] == "row count 2000 -> 6000 (+200.0%; threshold 50%)"


def test_a_null_rate_change_drifts_the_column() -> None:
    reference, current = _pair(LARGE, seed=41)
    rng = np.random.default_rng(42)
    holes = rng.random(current.num_rows) < 0.3
    values = current.column("num_same").combine_chunks()
    current = current.set_column(
        current.column_names.index("num_same"), "num_same", pa.array(values.to_numpy(), mask=holes)
    )
    col = _col(_compare(reference, current), "num_same")
    assert col.null_rate_reference == 0.0 and col.null_rate_current == pytest.approx(holes.mean())
    assert col.null_rate_drifted and col.drifted and not col.distribution_drifted
    assert f"nulls 0.0% -> {holes.mean():.1%}" in col.detail
    lenient = DriftSettings(columns={"num_same": ColumnDriftSettings(null_rate=0.5)})
    assert not _col(_compare(reference, current, lenient), "num_same").drifted


def test_a_column_that_became_all_null_is_skipped_but_drifted() -> None:
    reference, current = _pair(SMALL, seed=51)
    index = current.column_names.index("num_same")
    current = current.set_column(index, "num_same", pa.nulls(current.num_rows, pa.float64()))
    report = _compare(reference, current)
    col = _col(report, "num_same")
    assert col.test is None and col.skipped == "no values in the current version"
    assert col.drifted and col.null_rate_drifted and col.null_rate_current == 1.0


def test_times_text_and_other_columns_are_not_tested_unless_forced() -> None:
    rng = np.random.default_rng(61)
    rows = 3_000

    def table(offset: int) -> pa.Table:
        return pa.table(
            {
                "at": pa.array(rng.integers(0, 10**6, rows) + offset, pa.timestamp("s")),
                "note": pa.array([f"note {offset} {i}" for i in range(rows)]),
                "tags": pa.array([[1, 2]] * rows, pa.list_(pa.int64())),
            }
        )

    reference, current = table(0), table(10**6)
    report = _compare(reference, current)
    assert [(c.name, c.test) for c in report.columns] == [("at", None), ("note", None), ("tags", None)]
    assert report.tested_columns == 0 and report.share == 0 and not report.drifted
    forced = DriftSettings(columns={"at": ColumnDriftSettings(test="wasserstein")})
    at = _col(_compare(reference, current, forced), "at")
    ref = reference.column("at").cast(pa.int64()).to_numpy().astype(float).tolist()
    cur = current.column("at").cast(pa.int64()).to_numpy().astype(float).tolist()
    assert at.test == "wasserstein" and at.drifted and _wasserstein(ref, cur) >= 0.1


# -- (f) merged profiles -------------------------------------------------------------------------


def _write_in_two(table: pa.Table, folder: Path, name: str) -> TableProfile:
    half = table.num_rows // 3
    profiles = []
    for i, part in enumerate((table.slice(0, half), table.slice(half))):
        path = folder / f"{name}-{i}.parquet"
        pq.write_table(part, path)
        profiles.append(profile_file(str(path), "parquet")[1])
    return merge_profiles(profiles)


@pytest.mark.parametrize("rows", [SMALL, LARGE])
def test_profiles_merged_from_two_files_give_the_verdicts_of_one_file(rows: int, tmp_path: Path) -> None:
    reference, current = _pair(rows, seed=71)
    merged = compare(
        _side(reference, 1, _write_in_two(reference, tmp_path, "ref")),
        _side(current, 2, _write_in_two(current, tmp_path, "cur")),
        DriftSettings(),
        dataset="sales",
    )
    whole = _compare(reference, current)
    assert [(c.name, c.test, c.drifted) for c in merged.columns] == [(c.name, c.test, c.drifted) for c in whole.columns]
    assert merged.drifted == whole.drifted
    if rows <= 1000:  # the merged samples are the file's values: the same p-values
        assert [c.score for c in merged.columns] == pytest.approx([c.score for c in whole.columns], rel=1e-12)


# -- (g) determinism -----------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [SMALL, LARGE])
def test_profiling_the_same_data_twice_gives_the_same_verdicts(rows: int) -> None:
    reference, current = _pair(rows, seed=81)
    first, second = _compare(reference, current), _compare(reference, current)
    assert [(c.name, c.test, c.drifted) for c in first.columns] == [(c.name, c.test, c.drifted) for c in second.columns]
    assert (first.drifted, first.share) == (second.drifted, second.share)
    for a, b in zip(first.columns, second.columns, strict=True):
        assert a.score is not None and b.score is not None
        if a.test == "wasserstein":  # KLL compaction is randomised: the sketch differs a little
            assert abs(a.score - b.score) <= 2 * WASSERSTEIN_TOLERANCE, a.name
        else:  # exact from the sample, the domain or the frequent items
            assert a.score == pytest.approx(b.score, rel=1e-12), a.name


# -- what people see --------------------------------------------------------------------------------


def test_numeric_histograms_are_exact_for_small_columns_and_within_rank_error_for_large() -> None:
    for rows, tolerance in ((SMALL, 1e-12), (LARGE, 2 * KLL_EPS)):
        reference, current = _pair(rows, seed=91)
        ref_profile, cur_profile = _profile(reference), _profile(current)
        for name in ("num_a", "num_same"):
            ref_col, cur_col = ref_profile.column(name), cur_profile.column(name)
            assert ref_col is not None and cur_col is not None
            edges, ref_shares, cur_shares = numeric_histogram(ref_col, cur_col, 12)
            ref, cur = np.array(_valid(reference, name)), np.array(_valid(current, name))
            assert edges[0] == min(ref.min(), cur.min()) and edges[-1] == max(ref.max(), cur.max())
            assert len(edges) == 13
            expected_ref = np.histogram(ref, np.array(edges))[0] / len(ref)
            expected_cur = np.histogram(cur, np.array(edges))[0] / len(cur)
            assert np.abs(np.array(ref_shares) - expected_ref).max() <= tolerance, (rows, name)
            assert np.abs(np.array(cur_shares) - expected_cur).max() <= tolerance, (rows, name)


def test_category_shares_name_the_top_values_and_put_the_rest_in_other() -> None:
    reference, current = _pair(LARGE, seed=101)
    ref_profile, cur_profile = _profile(reference), _profile(current)
    cat_same = ref_profile.column("cat_same"), cur_profile.column("cat_same")
    assert cat_same[0] is not None and cat_same[1] is not None
    rows = category_shares(cat_same[0], cat_same[1], 3)
    ref, cur = Counter(_valid(reference, "cat_same")), Counter(_valid(current, "cat_same"))
    top = {k for k, _ in ref.most_common(3)} | {k for k, _ in cur.most_common(3)}
    assert {label for label, _, _ in rows[:-1]} == top and rows[-1][0] == "(other)"
    for label, ref_share, cur_share in rows[:-1]:
        assert ref_share == pytest.approx(ref[label] / ref.total())
        assert cur_share == pytest.approx(cur[label] / cur.total())
    assert sum(r for _, r, _ in rows) == pytest.approx(1.0) and sum(c for _, _, c in rows) == pytest.approx(1.0)
    flag = ref_profile.column("flag"), cur_profile.column("flag")
    assert flag[0] is not None and flag[1] is not None
    shares = {label: (r, c) for label, r, c in category_shares(flag[0], flag[1], 5)}
    trues = reference.column("flag").to_numpy().mean(), current.column("flag").to_numpy().mean()
    assert shares["true"] == pytest.approx(trues) and set(shares) == {"true", "false"}


def test_kll_items_read_from_the_bytes_equal_the_sketchs_own_iteration() -> None:
    rng = np.random.default_rng(111)
    for n in (0, 1, 150, 5_000, 300_000):
        sketch = ds.kll_doubles_sketch(200)
        sketch.update(rng.normal(size=n))
        other = ds.kll_doubles_sketch(200)
        other.update(rng.normal(size=n // 2))
        sketch.merge(other)
        values, weights = kll_items(sketch.serialize())
        assert sorted(zip(values.tolist(), weights.tolist(), strict=True)) == sorted(sketch), n


def test_infinite_values_are_dropped_as_evidently_drops_them() -> None:
    rng = np.random.default_rng(121)

    def table(rows: int, mean: float) -> pa.Table:
        values = rng.normal(mean, 1.0, rows)
        values[rng.random(rows) < 0.02] = np.inf
        return pa.table({"x": values})

    reference, same, moved = table(3_000, 0.0), table(3_000, 0.0), table(3_000, 1.0)
    for current, drifted in ((same, False), (moved, True)):
        col = _col(_compare(reference, current), "x")
        expected = _wasserstein(_valid(reference, "x"), _valid(current, "x"))
        assert col.test == "wasserstein" and col.score is not None
        assert abs(col.score - expected) <= WASSERSTEIN_TOLERANCE and col.drifted is drifted is bool(expected >= 0.1)
