"""Column profiles: exact statistics plus Apache DataSketches, built batch by batch and merged.

Pure: a ``Profiler`` takes Arrow record batches and gives a ``schemas.profiles.TableProfile``;
``merge_profiles`` combines the profiles of files into the profile of a version without the
data. ``daemon.tables`` does the reading.

How the statistics merge (per batch inside a profiler, per file in ``merge_profiles``):

* count, null and NaN counts add up; min and max take the min and max;
* mean and ``m2`` (sum of squared deviations) combine with the parallel formula of Chan,
  Golub and LeVeque, which stays accurate where a sum of squares would cancel; each batch's own
  mean and m2 come from numpy's two-pass mean and variance. Integers (and times, booleans) also
  keep their exact sum, and their batch variance is taken of ``x - min``, so an int64 near 2**62
  keeps its low digits through every merge;
* numbers and times feed a KLL doubles sketch (quantiles); strings feed a frequent-strings and
  an HLL sketch with each batch's distinct values and their counts (``pyarrow.compute``'s
  ``value_counts``), so a batch of a categorical costs one update per category;
* small columns stay exact for the drift tests (``consumers.stattests``): numbers and times keep
  all their values (``sample``) while there are at most ``EXACT_SAMPLE_MAX`` of them, and each
  distinct value's count (``domain``) while there are at most ``DOMAIN_MAX`` distinct values.
  Both are given up for good once past the cap (or at the first infinite value), so a
  high-cardinality column pays for one probe of its first batch only. Merging concatenates or
  adds them while the merge stays within the cap.

A column some files lack counts as null in those files' rows, exactly as if the files had been
concatenated with that column filled with nulls.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from typing import Any, Final

import datasketches as ds
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from daemon.tableschema import promote_types
from schemas.profiles import ColumnKind, ColumnProfile, Scalar, TableProfile, TimeUnit

__all__ = [
    "DOMAIN_MAX",
    "EXACT_SAMPLE_MAX",
    "Profiler",
    "distinct_estimate",
    "domain_counts",
    "exact_sample",
    "merge_profiles",
    "quantiles",
    "top_items",
]

# Defaults sized for a profile that goes on Kafka: KLL k=200 keeps ranks within ~1.3 % in ~5 KB
# per numeric column; HLL lg_k=12 (HLL_4) estimates distinct counts within ~1.6 % in at most
# ~2.1 KB; 2**7 slots keep the ~96 most frequent strings, exact for any column with fewer.
KLL_K: Final = 200
HLL_LG_K: Final = 12
FREQUENT_LG_MAX_K: Final = 7

# A longer min or max string is left out (null): a free-text column must not bloat the event.
MAX_STRING_STAT_CHARS: Final = 200

# Below 2**53 every integer is an exact double, so no shift is needed for the moments.
_EXACT_INT: Final = 2**53

# Exact small-sample drift tests (issue #4): Evidently runs KS and chi-square on references of at
# most 1,000 values, and treats numbers with few distinct values as categories, so a profile keeps
# every value up to 1,000 values (8 KB as float64) and every distinct value's count up to 20
# distinct values (Evidently bins PSI and Jensen-Shannon by value up to 20 reference values).
EXACT_SAMPLE_MAX: Final = 1000
DOMAIN_MAX: Final = 20
# A batch's first values are checked before counting all of it: a continuous column shows more
# than DOMAIN_MAX distinct values at once and stops being counted after one cheap look.
_DOMAIN_PROBE: Final = 256
# Integer batches spanning at most this many values are counted with np.bincount, not hashed.
_BINCOUNT_SPAN: Final = 4096


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


class _Moments:
    """Count, mean and m2 of a stream of numbers, merged with Chan's formula.

    For integers ``total`` keeps the exact sum: the difference of two means then comes from
    integers, exact where two doubles near 2**62 would differ only in rounding.
    """

    __slots__ = ("m2", "mean", "n", "total")

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.total: int | None = 0

    def merge(self, n: int, mean: float, m2: float, total: int | None = None) -> None:
        if n == 0:
            return
        if self.n == 0:
            self.n, self.mean, self.m2, self.total = n, mean, m2, total
            return
        count = self.n + n
        if self.total is not None and total is not None:
            delta = (total * self.n - self.total * n) / (self.n * n)  # int / int: correctly rounded
            self.total += total
            self.mean = self.total / count
        else:
            delta = mean - self.mean
            self.total = None
            self.mean += delta * n / count
        self.m2 += m2 + delta * delta * self.n * n / count
        self.n = count


def _stddev(n: int, m2: float | None) -> float | None:
    if m2 is None or n < 2:
        return None
    return math.sqrt(max(m2, 0.0) / (n - 1))


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _classify(arrow_type: pa.DataType) -> tuple[ColumnKind, TimeUnit | None]:
    t = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
    if pa.types.is_boolean(t):
        return "boolean", None
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "numeric", None
    if pa.types.is_date32(t):
        return "time", "day"
    if pa.types.is_date64(t):
        return "time", "ms"
    if pa.types.is_timestamp(t) or pa.types.is_time(t) or pa.types.is_duration(t):
        unit: TimeUnit = t.unit
        return "time", unit
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string", None
    return "other", None


def _view(array: pa.Array) -> np.ndarray[Any, np.dtype[Any]]:
    """A read-only numpy view of the values of a non-empty int or float array without nulls.

    Not ``Array.to_numpy``: in pyarrow 26 that imports pandas on first use (0.2 s and 60 MB
    of the daemon's memory), and the daemon needs no pandas.
    """
    t = array.type
    kind = "f" if pa.types.is_floating(t) else "i" if pa.types.is_signed_integer(t) else "u"
    dtype = np.dtype(f"{kind}{t.bit_width // 8}")
    values = np.frombuffer(array.buffers()[1], dtype=dtype, count=array.offset + len(array))
    return values[array.offset :]


class _Column:
    """Counts of one column; subclasses add the statistics of their kind."""

    kind: ColumnKind = "other"

    def __init__(self, name: str, arrow_type: pa.DataType, unit: TimeUnit | None) -> None:
        self.name = name
        self.type = arrow_type
        self.unit = unit
        self.count = 0
        self.null_count = 0

    def add(self, array: pa.Array) -> None:
        self.count += len(array)
        self.null_count += array.null_count
        if array.null_count < len(array):
            if pa.types.is_dictionary(array.type) and self.kind != "string":
                array = array.dictionary_decode()
            self._add_values(array)

    def _add_values(self, array: pa.Array) -> None:
        """Statistics of a non-empty array that has at least one non-null value."""

    def finish(self) -> ColumnProfile:
        return ColumnProfile(
            name=self.name,
            type=str(self.type),
            kind=self.kind,
            unit=self.unit,
            count=self.count,
            null_count=self.null_count,
            **self._stats(),
        )

    def _stats(self) -> dict[str, Any]:
        return {}


class _Numbers(_Column):
    """Integers, floats, decimals, and times as integers in their unit."""

    kind: ColumnKind = "numeric"

    def __init__(self, name: str, arrow_type: pa.DataType, unit: TimeUnit | None, kll_k: int) -> None:
        super().__init__(name, arrow_type, unit)
        if unit is not None:
            self.kind = "time"
        self.nan_count = 0
        self.min: int | float | None = None
        self.max: int | float | None = None
        self.moments = _Moments()
        self.sketch = ds.kll_doubles_sketch(kll_k)
        # None once given up: past the cap, or an infinite value (JSON has no infinity).
        self.sample: list[np.ndarray[Any, np.dtype[np.float64]]] | None = []
        self.sample_n = 0
        self.domain: dict[int | float, int] | None = {}

    def _add_values(self, array: pa.Array) -> None:
        if self.unit is not None:  # a time: its integer count of units
            array = array.cast(pa.int32() if array.type.bit_width == 32 else pa.int64())
        elif pa.types.is_decimal(array.type) or pa.types.is_float16(array.type):
            array = array.cast(pa.float64())
        if array.null_count:
            array = array.drop_null()
        if pa.types.is_floating(array.type):
            self._add_floats(_view(array).astype(np.float64, copy=False))
        else:
            self._add_integers(_view(array))

    def _add_floats(self, values: np.ndarray[Any, np.dtype[np.float64]]) -> None:
        mean = float(values.mean())
        if math.isnan(mean):  # NaNs (or +inf and -inf) present: count NaNs and leave them out
            nans = np.isnan(values)
            self.nan_count += int(nans.sum())
            values = values[~nans]
            if not len(values):
                return
            mean = float(values.mean())
        low, high = float(values.min()), float(values.max())
        self.min = low if self.min is None else min(self.min, low)
        self.max = high if self.max is None else max(self.max, high)
        if math.isfinite(mean):
            variance = float(values.var())
        else:  # +inf or -inf among the values: inf - inf in the variance is NaN, and no exact values
            with np.errstate(invalid="ignore"):
                variance = float(values.var())
            self.sample = self.domain = None
        self.moments.merge(len(values), mean, variance * len(values))
        # The sketch's C++ signature wants a writable array; Arrow's zero-copy view is read-only.
        self.sketch.update(values if values.flags.writeable else values.copy())
        self._add_exact(values, values, low, high)

    def _add_integers(self, values: np.ndarray[Any, np.dtype[np.integer[Any]]]) -> None:
        low, high = int(values.min()), int(values.max())
        self.min = low if self.min is None else min(self.min, low)
        self.max = high if self.max is None else max(self.max, high)
        as_float = values.astype(np.float64)
        if low >= -_EXACT_INT and high <= _EXACT_INT:
            shifted = as_float
        else:  # x - min as uint64 is exact (wrap-around included); as a double it keeps the spread
            shifted = (values.astype(np.int64).view(np.uint64) - np.uint64(low % 2**64)).astype(np.float64)
        if max(-low, high) < 2**63 // len(values):  # the int64 sum cannot overflow
            total = int(values.sum(dtype=np.int64))
        else:  # add the high and low 32-bit halves apart: exact for any int64 or uint64
            total = int(np.right_shift(values, 32).sum()) * 2**32 + int(np.bitwise_and(values, 0xFFFFFFFF).sum())
        self.moments.merge(len(values), total / len(values), float(shifted.var()) * len(values), total)
        self.sketch.update(as_float)
        self._add_exact(values, as_float, low, high)

    def _add_exact(
        self,
        values: np.ndarray[Any, np.dtype[Any]],
        as_float: np.ndarray[Any, np.dtype[np.float64]],
        low: int | float,
        high: int | float,
    ) -> None:
        """Keep the values while there are few, and each value's count while there are few distinct."""
        if self.sample is not None:
            if self.sample_n + len(as_float) <= EXACT_SAMPLE_MAX:
                self.sample.append(np.array(as_float, dtype=np.float64))  # a copy: the batch goes
                self.sample_n += len(as_float)
            else:
                self.sample = None
        if self.domain is not None:
            counted = _value_counts(values, low, high)
            if counted is None:
                self.domain = None
                return
            domain = self.domain
            for value, count in zip(*counted, strict=True):
                domain[value] = domain.get(value, 0) + count
            if len(domain) > DOMAIN_MAX:
                self.domain = None

    def _stats(self) -> dict[str, Any]:
        m = self.moments
        empty = m.n == 0
        return {
            "nan_count": self.nan_count,
            "min": self.min,
            "max": self.max,
            "mean": None if empty else _finite(m.mean),
            "m2": None if empty else _finite(m.m2),
            "sum": None if empty else m.total,
            "stddev": _finite(_stddev(m.n, m.m2)),
            "quantiles": None if empty else _b64(self.sketch.serialize()),
            "sample": None if empty or self.sample is None else _encode_sample(np.concatenate(self.sample)),
            "domain": None if empty or self.domain is None else _sorted_domain(self.domain),
        }


def _value_counts(
    values: np.ndarray[Any, np.dtype[Any]], low: int | float, high: int | float
) -> tuple[list[int | float], list[int]] | None:
    """The distinct values of a batch and their counts; None when there are more than DOMAIN_MAX.

    Integers (and floats that are whole numbers, as a rating read from CSV) spanning few values
    are counted with ``np.bincount``, four times faster than hashing them with ``value_counts``.
    """
    if high - low < _BINCOUNT_SPAN:
        offsets: np.ndarray[Any, np.dtype[Any]] | None = None
        if isinstance(low, int):
            # Wrapping int64 arithmetic: exact for any integer type, as the span is small.
            as_int = values if values.dtype == np.int64 else values.astype(np.int64)
            offsets = as_int if low == 0 else as_int - np.int64(low if low < 2**63 else low - 2**64)
        elif low > -_EXACT_INT and high < _EXACT_INT:
            as_int = values.astype(np.int64)
            if np.array_equal(as_int, values):
                offsets = as_int - np.int64(low)
        if offsets is not None:
            bins = np.bincount(offsets)
            present = np.flatnonzero(bins)
            if len(present) > DOMAIN_MAX:
                return None
            base = low if isinstance(low, int) else int(low)
            keys: list[int | float] = [base + int(i) for i in present]
            if not isinstance(low, int):
                keys = [float(k) for k in keys]
            return keys, [int(c) for c in bins[present]]
    if len(values) > _DOMAIN_PROBE and len(np.unique(values[:_DOMAIN_PROBE])) > DOMAIN_MAX:
        return None
    counted = pc.value_counts(pa.array(values))
    if len(counted) > DOMAIN_MAX:
        return None
    keys = counted.field("values").to_pylist()
    return keys, counted.field("counts").to_pylist()


def _encode_sample(values: np.ndarray[Any, np.dtype[np.float64]]) -> str:
    return _b64(np.sort(values).astype("<f8").tobytes())


def _sorted_domain(counts: dict[int | float, int]) -> tuple[tuple[int | float, int], ...]:
    return tuple(sorted(counts.items()))


class _Booleans(_Column):
    kind: ColumnKind = "boolean"

    def __init__(self, name: str, arrow_type: pa.DataType, unit: TimeUnit | None) -> None:
        super().__init__(name, arrow_type, unit)
        self.valid = 0
        self.trues = 0

    def _add_values(self, array: pa.Array) -> None:
        self.valid += len(array) - array.null_count
        self.trues += pc.sum(array).as_py() or 0

    def _stats(self) -> dict[str, Any]:
        if not self.valid:
            return {}
        n, trues = self.valid, self.trues
        return {
            "min": trues == n,
            "max": trues > 0,
            "mean": trues / n,
            "m2": trues * (n - trues) / n,  # the m2 of n zeros and ones of which `trues` are 1
            "sum": trues,
            "stddev": _stddev(n, trues * (n - trues) / n),
        }


class _Strings(_Column):
    """Strings and dictionary-encoded strings (categoricals)."""

    kind: ColumnKind = "string"

    def __init__(self, name: str, arrow_type: pa.DataType, unit: TimeUnit | None, hll_lg_k: int, lg_max_k: int) -> None:
        super().__init__(name, arrow_type, unit)
        self.min: str | None = None
        self.max: str | None = None
        self.distinct = ds.hll_sketch(hll_lg_k, ds.HLL_4)
        self.frequent = ds.frequent_strings_sketch(lg_max_k)
        # Misra-Gries keeps about 0.75 * 2**lg_max_k items: a batch's rarer values past a few times
        # that many would be purged at once; skipping them keeps high-cardinality batches cheap.
        self.top_per_batch = 4 << lg_max_k

    def _add_values(self, array: pa.Array) -> None:
        if pa.types.is_string_view(array.type):
            array = array.cast(pa.string())
        counted = pc.value_counts(array)
        values, counts = counted.field("values"), counted.field("counts")
        if values.null_count:
            valid = values.is_valid()
            values, counts = values.filter(valid), counts.filter(valid)
        if pa.types.is_dictionary(values.type):
            values = values.dictionary_decode()
        low, high = pc.min_max(values).values()
        low_s, high_s = low.as_py(), high.as_py()
        self.min = low_s if self.min is None else min(self.min, low_s)
        self.max = high_s if self.max is None else max(self.max, high_s)
        items: list[str] = values.to_pylist()
        for item in items:
            self.distinct.update(item)
        if len(items) > self.top_per_batch:
            top = pc.select_k_unstable(counts, k=self.top_per_batch, sort_keys=[("dummy", "descending")])
            values, counts = values.take(top), counts.take(top)
            items = values.to_pylist()
        update = self.frequent.update
        for item, weight in zip(items, counts.to_pylist(), strict=True):
            update(item, weight)

    def _stats(self) -> dict[str, Any]:
        if self.min is None:
            return {}
        return {
            "min": self.min if len(self.min) <= MAX_STRING_STAT_CHARS else None,
            "max": self.max if self.max is not None and len(self.max) <= MAX_STRING_STAT_CHARS else None,
            "distinct": _b64(self.distinct.serialize_compact()),
            "frequent": _b64(self.frequent.serialize()),
        }


class Profiler:
    """The profile of one table, fed one record batch at a time.

    ``kll_k``, ``hll_lg_k`` and ``frequent_lg_max_k`` size the sketches (accuracy against bytes);
    profiles made with different sizes still merge.
    """

    def __init__(
        self,
        schema: pa.Schema,
        *,
        kll_k: int = KLL_K,
        hll_lg_k: int = HLL_LG_K,
        frequent_lg_max_k: int = FREQUENT_LG_MAX_K,
    ) -> None:
        self.schema = schema
        self.rows = 0
        self._columns: list[_Column] = []
        for field in schema:
            kind, unit = _classify(field.type)
            column: _Column
            if kind in ("numeric", "time"):
                column = _Numbers(field.name, field.type, unit, kll_k)
            elif kind == "boolean":
                column = _Booleans(field.name, field.type, unit)
            elif kind == "string":
                column = _Strings(field.name, field.type, unit, hll_lg_k, frequent_lg_max_k)
            else:
                column = _Column(field.name, field.type, unit)
            self._columns.append(column)

    def add(self, batch: pa.RecordBatch) -> None:
        """Count a batch of the schema given at construction (``ValueError`` for another schema)."""
        if batch.num_columns != len(self._columns) or any(
            batch.schema.field(i).type != c.type for i, c in enumerate(self._columns)
        ):
            raise ValueError(f"batch schema {batch.schema} is not the profiler's schema {self.schema}")
        self.rows += batch.num_rows
        if batch.num_rows:
            for i, column in enumerate(self._columns):
                column.add(batch.column(i))

    def finish(self) -> TableProfile:
        """The profile of every batch added so far."""
        return TableProfile(rows=self.rows, columns=tuple(c.finish() for c in self._columns))


# -- merging ---------------------------------------------------------------------------------


def merge_profiles(profiles: Sequence[TableProfile]) -> TableProfile:
    """The profile of the files whose profiles are given, as if their tables were concatenated.

    Columns are matched by name, in first-seen order. A file without a column counts its rows
    as nulls of it. When files disagree on a column's kind (numbers in one, strings in another)
    or time unit, the merged column keeps its counts only, as kind ``other``, with a ``type``
    that names both (``"int64 | string"``); ``daemon.tableschema.unify`` reports the conflict.
    """
    by_name: dict[str, list[tuple[int, ColumnProfile | None]]] = {}
    for profile in profiles:
        for column in profile.columns:
            by_name.setdefault(column.name, [])
    for profile in profiles:
        present = {c.name: c for c in profile.columns}
        for name, parts in by_name.items():
            parts.append((profile.rows, present.get(name)))
    return TableProfile(
        rows=sum(p.rows for p in profiles),
        columns=tuple(_merge_column(name, parts) for name, parts in by_name.items()),
    )


def _merge_column(name: str, parts: list[tuple[int, ColumnProfile | None]]) -> ColumnProfile:
    present = [c for _, c in parts if c is not None]
    count = sum(c.count for c in present) + sum(rows for rows, c in parts if c is None)
    null_count = sum(c.null_count for c in present) + sum(rows for rows, c in parts if c is None)
    types = list(dict.fromkeys(c.type for c in present))
    merged_type: str | None = types[0]
    for t in types[1:]:
        merged_type = promote_types(merged_type, t) if merged_type is not None else None
    # Parts without a value (all null, or an all-null CSV column typed `null`) say nothing of kind.
    valued = [c for c in present if c.count - c.null_count > 0]
    kinds = {(c.kind, c.unit) for c in valued} or {(present[0].kind, present[0].unit)}
    base = {
        "name": name,
        # A part may itself be a merge that names several types (the roll-up merges merges).
        "type": merged_type if merged_type is not None else " | ".join(_type_names(types)),
        "count": count,
        "null_count": null_count,
    }
    if len(kinds) > 1:
        return ColumnProfile(kind="other", unit=None, **base)
    ((kind, unit),) = kinds
    stats: dict[str, Any] = {}
    with_values = [c for c in valued if c.valid_count > 0]
    stats["nan_count"] = sum(c.nan_count for c in present)
    if with_values and kind != "other":
        stats["min"] = _extreme([c.min for c in with_values], min)
        stats["max"] = _extreme([c.max for c in with_values], max)
        moments = _Moments()
        if all(c.mean is not None and c.m2 is not None for c in with_values):
            for c in with_values:
                moments.merge(c.valid_count, c.mean or 0.0, c.m2 or 0.0, c.sum)
            stats["mean"], stats["m2"], stats["sum"] = _finite(moments.mean), _finite(moments.m2), moments.total
            stats["stddev"] = _finite(_stddev(moments.n, moments.m2))
        stats["quantiles"] = _merge_mergeable([c.quantiles for c in with_values], ds.kll_doubles_sketch)
        if kind in ("numeric", "time"):
            stats["sample"] = _merge_samples(with_values)
            stats["domain"] = _merge_domains(with_values)
        stats["frequent"] = _merge_mergeable([c.frequent for c in with_values], ds.frequent_strings_sketch)
        stats["distinct"] = _merge_hll([c.distinct for c in with_values])
    return ColumnProfile(kind=kind, unit=unit, **base, **stats)


def _type_names(types: list[str]) -> list[str]:
    return list(dict.fromkeys(name for t in types for name in t.split(" | ")))


def _extreme(values: list[Scalar | None], pick: Any) -> Scalar | None:
    # One unknown part (a long string left out) makes the whole unknown, never a wrong value.
    if any(v is None for v in values):
        return None
    result: Scalar = pick(values)
    return result


def _merge_mergeable(encoded: list[str | None], sketch_type: Any) -> str | None:
    """Merge base64 sketches of a type with ``deserialize`` and ``merge`` (KLL, frequent items)."""
    sketches = [sketch_type.deserialize(_unb64(e)) for e in encoded if e is not None]
    if not sketches:
        return None
    merged = sketches[0]
    for sketch in sketches[1:]:
        merged.merge(sketch)
    return _b64(merged.serialize())


def _merge_samples(parts: list[ColumnProfile]) -> str | None:
    # Every part must have kept all its values: a part without a sample had more than the cap.
    if sum(c.valid_count for c in parts) > EXACT_SAMPLE_MAX or any(c.sample is None for c in parts):
        return None
    return _encode_sample(np.concatenate([_decode_sample(c.sample) for c in parts if c.sample is not None]))


def _merge_domains(parts: list[ColumnProfile]) -> tuple[tuple[int | float, int], ...] | None:
    counts: dict[int | float, int] = {}
    for c in parts:
        if c.domain is None:
            return None
        for value, count in c.domain:
            counts[value] = counts.get(value, 0) + count
    return _sorted_domain(counts) if len(counts) <= DOMAIN_MAX else None


def _merge_hll(encoded: list[str | None]) -> str | None:
    sketches = [ds.hll_sketch.deserialize(_unb64(e)) for e in encoded if e is not None]
    if not sketches:
        return None
    union = ds.hll_union(max(s.lg_config_k for s in sketches))
    for sketch in sketches:
        union.update(sketch)
    return _b64(union.get_result(ds.HLL_4).serialize_compact())


# -- reading the sketches ----------------------------------------------------------------------


def quantiles(col: ColumnProfile, qs: Sequence[float]) -> list[float] | None:
    """Approximate quantiles (``qs`` in 0..1) of a number or time column; None without values."""
    if col.quantiles is None:
        return None
    sketch = ds.kll_doubles_sketch.deserialize(_unb64(col.quantiles))
    if sketch.is_empty():
        return None
    return [float(q) for q in sketch.get_quantiles(list(qs), inclusive=True)]


def _decode_sample(text: str) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.frombuffer(_unb64(text), dtype="<f8").astype(np.float64)


def exact_sample(col: ColumnProfile) -> np.ndarray[Any, np.dtype[np.float64]] | None:
    """Every valid value of a number or time column, sorted; None past ``EXACT_SAMPLE_MAX`` values."""
    return None if col.sample is None else _decode_sample(col.sample)


def domain_counts(col: ColumnProfile) -> dict[int | float, int] | None:
    """Each distinct valid value of a number or time column and its count; None past ``DOMAIN_MAX``."""
    return None if col.domain is None else dict(col.domain)


def distinct_estimate(col: ColumnProfile) -> float | None:
    """Estimated number of distinct values of a string column; None without a sketch."""
    if col.distinct is None:
        return None
    return float(ds.hll_sketch.deserialize(_unb64(col.distinct)).get_estimate())


def top_items(col: ColumnProfile, k: int) -> list[tuple[str, int]]:
    """Up to ``k`` most frequent strings with their estimated counts, most frequent first.

    Exact while the column has fewer distinct values than the sketch keeps (~96 by default);
    beyond that each estimate is within the sketch's a priori error of the true count.
    """
    if col.frequent is None or k <= 0:
        return []
    sketch = ds.frequent_strings_sketch.deserialize(_unb64(col.frequent))
    rows = sketch.get_frequent_items(ds.frequent_items_error_type.NO_FALSE_NEGATIVES)
    ranked = sorted(((str(r[0]), int(r[1])) for r in rows), key=lambda item: (-item[1], item[0]))
    return ranked[:k]
