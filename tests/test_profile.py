"""Column profiles against numpy: exact statistics equal, sketches within their stated error.

Pure: tables are built in memory and fed to ``Profiler`` in small batches, so every statistic
goes through the per-batch merge as well as the per-file ``merge_profiles``.
"""

from __future__ import annotations

import base64
from datetime import date, datetime, time, timedelta
from decimal import Decimal

import datasketches as ds
import numpy as np
import pyarrow as pa
import pytest

from daemon.profile import (
    DOMAIN_MAX,
    EXACT_SAMPLE_MAX,
    Profiler,
    distinct_estimate,
    domain_counts,
    exact_sample,
    merge_profiles,
    quantiles,
    top_items,
)
from schemas.profiles import ColumnProfile, TableProfile

ROWS = 20_000
# KLL's rank error bound (99 % confidence) for the default k; the data are seeded, so fixed.
KLL_EPS = ds.kll_doubles_sketch.get_normalized_rank_error(200, False)
CATEGORIES = ["red", "green", "blue", "cyan", "magenta"]
WEIGHTS = [0.4, 0.25, 0.2, 0.1, 0.05]


def _known_table(rows: int = ROWS, seed: int = 7) -> pa.Table:
    rng = np.random.default_rng(seed)
    floats = rng.normal(50.0, 10.0, rows)
    floats[rng.random(rows) < 0.01] = np.nan
    float_nulls = rng.random(rows) < 0.05
    ints = rng.integers(-1_000, 1_000_000, rows)
    int_nulls = rng.random(rows) < 0.02
    start = datetime(2024, 1, 1)
    times = [start + timedelta(seconds=int(s)) for s in rng.integers(0, 86_400 * 30, rows)]
    words = [f"w{int(i)}" for i in rng.zipf(1.3, rows) % 5_000]
    return pa.table(
        {
            "f": pa.array(floats, mask=float_nulls),
            "i": pa.array(ints, mask=int_nulls),
            "big": pa.array(2**62 + rng.integers(0, 1_000, rows)),
            "t": pa.array(times, pa.timestamp("us", tz="UTC")),
            "b": pa.array(rng.random(rows) < 0.3),
            "s": pa.array(words),
            "cat": pa.array(rng.choice(CATEGORIES, rows, p=WEIGHTS)).dictionary_encode(),
            "empty": pa.nulls(rows, pa.float64()),
            "nothing": pa.nulls(rows),
            "tags": pa.array([[1, 2]] * rows, pa.list_(pa.int64())),
        }
    )


def _profile(table: pa.Table, batch_rows: int = 3_000) -> TableProfile:
    profiler = Profiler(table.schema)
    for batch in table.to_batches(max_chunksize=batch_rows):
        profiler.add(batch)
    return profiler.finish()


def _col(profile: TableProfile, name: str) -> ColumnProfile:
    column = profile.column(name)
    assert column is not None, name
    return column


def _assert_quantiles_within_rank_error(col: ColumnProfile, values: np.ndarray, eps: float = KLL_EPS) -> None:
    ordered = np.sort(values)
    qs = [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99]
    estimates = quantiles(col, qs)
    assert estimates is not None
    for q, estimate in zip(qs, estimates, strict=True):
        # The estimate's true rank, as a fraction, within eps of the rank asked for.
        low = np.searchsorted(ordered, estimate, side="left") / len(ordered)
        high = np.searchsorted(ordered, estimate, side="right") / len(ordered)
        assert low - eps <= q <= high + eps, (col.name, q, estimate, low, high)


def test_float_column_matches_numpy_exactly_and_quantiles_within_rank_error() -> None:
    table = _known_table()
    col = _col(_profile(table), "f")
    raw = table.column("f").to_numpy(zero_copy_only=False)  # nulls as NaN
    nulls = table.column("f").null_count
    valid = raw[~np.isnan(raw)]
    assert (col.kind, col.type, col.count, col.null_count) == ("numeric", "double", ROWS, nulls)
    assert col.nan_count == int(np.isnan(raw).sum()) - nulls > 0
    assert col.valid_count == len(valid)
    assert col.min == valid.min() and col.max == valid.max()
    assert col.mean == pytest.approx(valid.mean(), rel=1e-12)
    assert col.stddev == pytest.approx(valid.std(ddof=1), rel=1e-10)
    _assert_quantiles_within_rank_error(col, valid)


def test_integer_column_keeps_exact_integer_min_max() -> None:
    table = _known_table()
    col = _col(_profile(table), "i")
    valid = table.column("i").drop_null().to_numpy()
    assert col.null_count == table.column("i").null_count > 0
    assert isinstance(col.min, int) and isinstance(col.max, int)
    assert (col.min, col.max) == (int(valid.min()), int(valid.max()))
    assert col.mean == pytest.approx(valid.mean(), rel=1e-12)
    assert col.stddev == pytest.approx(valid.std(ddof=1), rel=1e-10)
    _assert_quantiles_within_rank_error(col, valid.astype(np.float64))


def test_huge_integers_keep_their_spread() -> None:
    # As doubles, 2**62 + k are all equal: a naive variance would be 0.
    table = _known_table()
    col = _col(_profile(table), "big")
    offsets = table.column("big").to_numpy() - 2**62
    assert col.min == 2**62 + int(offsets.min()) and col.max == 2**62 + int(offsets.max())
    assert col.stddev == pytest.approx(offsets.std(ddof=1), rel=1e-9)


def test_timestamps_are_profiled_in_their_unit_since_the_epoch() -> None:
    table = _known_table()
    col = _col(_profile(table), "t")
    micros = table.column("t").cast(pa.int64()).to_numpy()
    assert (col.kind, col.unit, col.type) == ("time", "us", "timestamp[us, tz=UTC]")
    assert (col.min, col.max) == (int(micros.min()), int(micros.max()))
    earliest = min(table.column("t").to_pylist())
    assert col.min == int(earliest.timestamp()) * 1_000_000 and earliest.year == 2024
    assert col.mean == pytest.approx(micros.mean(), rel=1e-12)
    _assert_quantiles_within_rank_error(col, micros.astype(np.float64))


def test_booleans_have_the_share_of_true_as_mean() -> None:
    table = _known_table()
    col = _col(_profile(table), "b")
    values = table.column("b").to_numpy()
    assert (col.kind, col.min, col.max) == ("boolean", False, True)
    assert col.mean == pytest.approx(values.mean(), rel=1e-12)
    assert col.stddev == pytest.approx(values.astype(float).std(ddof=1), rel=1e-10)


def test_strings_have_distinct_count_within_hll_error_and_exact_top_items() -> None:
    table = _known_table()
    col = _col(_profile(table), "s")
    words = table.column("s").to_pylist()
    true_distinct = len(set(words))
    assert col.kind == "string" and col.quantiles is None and col.mean is None
    assert (col.min, col.max) == (min(words), max(words))
    estimate = distinct_estimate(col)
    assert estimate is not None and col.distinct is not None
    sketch = ds.hll_sketch.deserialize(base64.b64decode(col.distinct))
    assert sketch.get_lower_bound(2) <= true_distinct <= sketch.get_upper_bound(2)
    assert abs(estimate - true_distinct) / true_distinct < 0.05
    # Zipf-distributed: the heaviest words stand far above the sketch's error, so they are exact.
    values, counts = np.unique(np.array(words), return_counts=True)
    expected = sorted(zip(values.tolist(), counts.tolist(), strict=True), key=lambda vc: (-vc[1], vc[0]))[:3]
    assert top_items(col, 3) == expected


def test_categorical_column_is_profiled_as_strings() -> None:
    table = _known_table()
    col = _col(_profile(table), "cat")
    values, counts = np.unique(np.array(table.column("cat").to_pylist()), return_counts=True)
    assert col.kind == "string" and col.type.startswith("dictionary<values=string")
    assert top_items(col, 10) == sorted(zip(values.tolist(), counts.tolist(), strict=True), key=lambda vc: -vc[1])
    assert distinct_estimate(col) == pytest.approx(len(CATEGORIES), abs=0.01)
    assert (col.min, col.max) == ("blue", "red")


def test_columns_without_values_have_counts_only() -> None:
    profile = _profile(_known_table())
    for name, kind in (("empty", "numeric"), ("nothing", "other"), ("tags", "other")):
        col = _col(profile, name)
        assert (col.kind, col.count) == (kind, ROWS)
        assert (col.min, col.mean, col.stddev, col.quantiles, col.distinct) == (None, None, None, None, None)
    assert _col(profile, "empty").null_count == ROWS
    assert _col(profile, "tags").null_count == 0


def test_an_empty_table_has_a_profile() -> None:
    profile = _profile(_known_table().slice(0, 0))
    assert profile.rows == 0 and len(profile.columns) == 10
    assert all(c.count == 0 and c.min is None for c in profile.columns)


def test_profiler_refuses_a_batch_of_another_schema() -> None:
    profiler = Profiler(pa.schema([("a", pa.int64())]))
    with pytest.raises(ValueError, match="not the profiler's schema"):
        profiler.add(pa.record_batch({"a": pa.array(["x"])}))


def test_one_value_has_no_sample_stddev() -> None:
    col = _col(_profile(pa.table({"x": [3.5]})), "x")
    assert (col.mean, col.stddev, col.m2, col.min, col.max) == (3.5, None, 0.0, 3.5, 3.5)


def _assert_same_profile(merged: TableProfile, whole: TableProfile) -> None:
    """Exact statistics equal (moments to rounding); sketches within their error of each other."""
    assert merged.rows == whole.rows
    assert [c.name for c in merged.columns] == [c.name for c in whole.columns]
    for m, w in zip(merged.columns, whole.columns, strict=True):
        exact = ("kind", "unit", "count", "null_count", "nan_count", "min", "max", "sample", "domain")
        assert {k: getattr(m, k) for k in exact} == {k: getattr(w, k) for k in exact}, m.name
        for stat in ("mean", "stddev", "m2"):
            a, b = getattr(m, stat), getattr(w, stat)
            assert (a is None) == (b is None), (m.name, stat)
            if a is not None:
                assert a == pytest.approx(b, rel=1e-9, abs=1e-12), (m.name, stat)
        qm, qw = quantiles(m, [0.1, 0.5, 0.9]), quantiles(w, [0.1, 0.5, 0.9])
        assert (qm is None) == (qw is None), m.name
        if m.name == "f" and qm is not None and qw is not None:
            # Both are within eps in rank; for N(50, 10) a rank of 2 eps is well under 1.
            assert qm == pytest.approx(qw, abs=1.0)
        dm, dw = distinct_estimate(m), distinct_estimate(w)
        assert (dm is None) == (dw is None)
        if dm is not None and dw is not None:
            assert dm == pytest.approx(dw, rel=0.05)
        assert top_items(m, 3) == top_items(w, 3), m.name


def test_merged_file_profiles_equal_the_profile_of_the_concatenated_table() -> None:
    table = _known_table()
    first, second = table.slice(0, 7_000), table.slice(7_000)
    merged = merge_profiles([_profile(first), _profile(second, batch_rows=5_000)])
    _assert_same_profile(merged, _profile(table))


def test_a_column_missing_from_a_file_counts_as_nulls_in_its_rows() -> None:
    table = _known_table()
    first = table.slice(0, 5_000).drop_columns(["i", "s"])
    second = table.slice(5_000)
    merged = merge_profiles([_profile(first), _profile(second)])
    assert [c.name for c in merged.columns][-2:] == ["i", "s"]  # first-seen order
    assert _col(merged, "i").null_count == 5_000 + second.column("i").null_count
    # What concatenating the files would give: those rows of "i" and "s" filled with nulls.
    filled = pa.concat_tables([first, second], promote_options="default")
    _assert_same_profile(merged, _profile(filled.select([c.name for c in merged.columns])))


def test_merging_integers_and_floats_gives_a_double_numeric_column() -> None:
    merged = merge_profiles([_profile(pa.table({"x": [1, 2, 3]})), _profile(pa.table({"x": [4.5, 5.5]}))])
    col = _col(merged, "x")
    assert (col.type, col.kind, col.count, col.min, col.max) == ("double", "numeric", 5, 1, 5.5)
    assert col.mean == pytest.approx(np.mean([1, 2, 3, 4.5, 5.5]))
    assert col.stddev == pytest.approx(np.std([1, 2, 3, 4.5, 5.5], ddof=1))


def test_merging_a_column_of_different_kinds_keeps_counts_only() -> None:
    merged = merge_profiles([_profile(pa.table({"x": [1, 2]})), _profile(pa.table({"x": ["a", None]}))])
    col = _col(merged, "x")
    assert (col.kind, col.type, col.count, col.null_count) == ("other", "int64 | string", 4, 1)
    assert (col.min, col.mean, col.quantiles, col.frequent) == (None, None, None, None)


def test_an_all_null_csv_column_merges_with_its_typed_twin() -> None:
    # A CSV file whose column is empty reads as type `null`: it must not hide the other's stats.
    merged = merge_profiles([_profile(pa.table({"x": pa.nulls(3)})), _profile(pa.table({"x": [1.0, 3.0]}))])
    col = _col(merged, "x")
    assert (col.kind, col.type, col.count, col.null_count, col.mean) == ("numeric", "double", 5, 3, 2.0)


def test_merge_of_nothing_is_an_empty_profile() -> None:
    assert merge_profiles([]) == TableProfile(rows=0, columns=())


def test_a_profile_survives_json_and_its_sketches_still_answer() -> None:
    profile = _profile(_known_table())
    again = TableProfile.model_validate_json(profile.model_dump_json())
    assert again == profile
    big = _col(again, "big")
    assert isinstance(big.min, int) and big.min >= 2**62  # not rounded through a float
    assert isinstance(_col(again, "b").min, bool)
    assert quantiles(_col(again, "f"), [0.5]) == quantiles(_col(profile, "f"), [0.5])
    assert top_items(_col(again, "cat"), 1)[0][0] == "red"


def test_a_500_column_profile_is_compact_json() -> None:
    rng = np.random.default_rng(1)
    rows = 50_000
    columns: dict[str, pa.Array] = {}
    for i in range(300):
        columns[f"f{i}"] = pa.array(rng.normal(size=rows))
    for i in range(100):
        columns[f"i{i}"] = pa.array(rng.integers(0, 10_000, rows))
    for i in range(100):
        columns[f"c{i}"] = pa.array(rng.choice([f"v{j}" for j in range(30)], rows)).dictionary_encode()
    profile = _profile(pa.table(columns), batch_rows=25_000)
    encoded = profile.model_dump_json()
    # ~6.5 KB of KLL sketch per number column (base64), ~0.6 KB per categorical column.
    assert len(encoded) < 3_000_000, len(encoded)
    assert TableProfile.model_validate_json(encoded) == profile


def test_other_number_and_time_types_are_profiled_exactly() -> None:
    table = pa.table(
        {
            "dec": pa.array([Decimal("1.25"), Decimal("-3.50"), None], pa.decimal128(6, 2)),
            "f32": pa.array([1.5, None, -2.25], pa.float32()),
            "f16": pa.array(np.array([0.5, 1.0, 2.0], np.float16)),
            "u64": pa.array([2**64 - 1, 2**63, 2**63 + 2], pa.uint64()),
            "i8": pa.array([-128, 127, None], pa.int8()),
            "day": pa.array([date(1970, 1, 2), date(1969, 12, 31), None], pa.date32()),
            "tod": pa.array([time(0, 0, 1), time(23, 59, 59), None], pa.time32("s")),
            "dur": pa.array([timedelta(milliseconds=5), timedelta(seconds=-1), None], pa.duration("ms")),
        }
    )
    profile = _profile(table, batch_rows=2)
    got = {c.name: (c.kind, c.unit, c.min, c.max, c.mean) for c in profile.columns}
    assert got == {
        "dec": ("numeric", None, -3.5, 1.25, -1.125),
        "f32": ("numeric", None, -2.25, 1.5, -0.375),
        "f16": ("numeric", None, 0.5, 2.0, pytest.approx(3.5 / 3)),
        "u64": ("numeric", None, 2**63, 2**64 - 1, pytest.approx((2**64 - 1 + 2**63 + 2**63 + 2) / 3)),
        "i8": ("numeric", None, -128, 127, -0.5),
        "day": ("time", "day", -1, 1, 0.0),
        "tod": ("time", "s", 1, 86_399, 43_200.0),
        "dur": ("time", "ms", -1_000, 5, -497.5),
    }
    u64 = _col(profile, "u64")
    assert u64.sum == 2**64 - 1 + 2**63 + 2**63 + 2  # exact, though past int64
    assert u64.stddev == pytest.approx(np.std([2**63 - 1, 0, 2], ddof=1), rel=1e-12)


# -- exact values of small columns (sample, domain) -------------------------------------------


def _valid(table: pa.Table, name: str) -> np.ndarray:
    values = table.column(name).drop_null().to_numpy()
    return values[~np.isnan(values)] if values.dtype.kind == "f" else values


def _unique_counts(values: np.ndarray) -> dict[int | float, int]:
    keys, counts = np.unique(values, return_counts=True)
    return dict(zip(keys.tolist(), counts.tolist(), strict=True))


def _small_table(rows: int, seed: int = 3) -> pa.Table:
    rng = np.random.default_rng(seed)
    floats = rng.normal(5.0, 2.0, rows)
    floats[rng.random(rows) < 0.05] = np.nan
    return pa.table(
        {
            "f": pa.array(floats, mask=rng.random(rows) < 0.1),
            "grade": pa.array(rng.integers(1, 6, rows), mask=rng.random(rows) < 0.1),
            "rating": pa.array(rng.integers(0, 11, rows) / 2.0),
            "t": pa.array(rng.integers(0, 10**6, rows), pa.timestamp("s")),
        }
    )


def test_a_small_column_keeps_every_valid_value_sorted() -> None:
    table = _small_table(EXACT_SAMPLE_MAX + 200)
    profile = _profile(table.slice(0, 900), batch_rows=128)
    for name in ("f", "grade", "rating", "t"):
        col = _col(profile, name)
        sample = exact_sample(col)
        expected = np.sort(_valid(table.slice(0, 900), name).astype(np.float64))
        assert sample is not None and col.valid_count == len(sample) <= EXACT_SAMPLE_MAX, name
        np.testing.assert_array_equal(sample, expected)


def test_the_sample_is_dropped_past_the_cap_in_a_file_and_in_a_merge() -> None:
    rows = EXACT_SAMPLE_MAX + 1
    table = pa.table({"x": np.arange(rows, dtype=np.float64)})
    assert exact_sample(_col(_profile(table.slice(0, EXACT_SAMPLE_MAX), batch_rows=300), "x")) is not None
    assert _col(_profile(table, batch_rows=300), "x").sample is None
    head, tail = _profile(table.slice(0, 600)), _profile(table.slice(600, EXACT_SAMPLE_MAX - 600))
    merged = merge_profiles([head, tail, _profile(table.slice(0, 0))])
    np.testing.assert_array_equal(exact_sample(_col(merged, "x")), np.arange(EXACT_SAMPLE_MAX, dtype=np.float64))
    assert _col(merge_profiles([head, _profile(table.slice(600))]), "x").sample is None


def test_few_distinct_numbers_keep_their_exact_counts() -> None:
    table = _small_table(50_000)
    profile = _profile(table, batch_rows=4_096)
    for name in ("grade", "rating"):
        col = _col(profile, name)
        assert col.sample is None
        assert domain_counts(col) == _unique_counts(_valid(table, name)), name
        assert len(_unique_counts(_valid(table, name))) <= DOMAIN_MAX
    assert all(isinstance(v, int) for v, _ in _col(profile, "grade").domain or ())
    assert all(isinstance(v, float) for v, _ in _col(profile, "rating").domain or ())
    assert _col(profile, "f").domain is None and _col(profile, "t").domain is None


def test_the_domain_is_dropped_for_good_past_the_cap() -> None:
    # 20 values in the first batches, a 21st in the last: one more than the cap.
    values = np.concatenate([np.tile(np.arange(DOMAIN_MAX), 500), [DOMAIN_MAX]])
    assert _col(_profile(pa.table({"x": values[:-1]}), batch_rows=1_000), "x").domain is not None
    assert _col(_profile(pa.table({"x": values}), batch_rows=1_000), "x").domain is None
    # Merging: 15 + 15 values, overlapping in 10, is 20; shifted by one more it is 21.
    low = _profile(pa.table({"x": np.arange(15)}))
    overlapping = _profile(pa.table({"x": np.arange(5, 20)}))
    too_many = _profile(pa.table({"x": np.arange(6, 21)}))
    assert domain_counts(_col(merge_profiles([low, overlapping]), "x")) == _unique_counts(
        np.concatenate([np.arange(15), np.arange(5, 20)])
    )
    assert _col(merge_profiles([low, too_many]), "x").domain is None


def test_the_domain_counts_integers_far_apart_and_near_the_uint64_limit() -> None:
    # Spans too wide for bincount, and unsigned values past int64, both counted exactly.
    wide = np.array([0, 10**12, -(10**15), 10**12] * 100, dtype=np.int64)
    top = np.array([2**64 - 1, 2**64 - 3, 2**63 - 1, 2**64 - 1] * 100, dtype=np.uint64)
    profile = _profile(pa.table({"wide": wide, "top": pa.array(top, pa.uint64())}), batch_rows=150)
    assert domain_counts(_col(profile, "wide")) == {-(10**15): 100, 0: 100, 10**12: 200}
    assert domain_counts(_col(profile, "top")) == {2**63 - 1: 100, 2**64 - 3: 100, 2**64 - 1: 200}


def test_infinite_values_leave_no_sample_and_no_domain() -> None:
    # No numpy warning either (the tests turn warnings into errors): inf - inf in the variance.
    col = _col(_profile(pa.table({"x": [1.0, 2.0, np.inf]})), "x")
    assert (col.sample, col.domain, col.valid_count, col.max) == (None, None, 3, np.inf)


def test_sample_and_domain_survive_json() -> None:
    profile = _profile(_small_table(500))
    again = TableProfile.model_validate_json(profile.model_dump_json())
    assert again == profile
    assert _col(again, "rating").domain == _col(profile, "rating").domain
