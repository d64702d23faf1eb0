"""What a column's distribution looks like, read from its profile alone (no data).

Pure. A ``Distribution`` wraps one ``schemas.profiles.ColumnProfile`` and answers from the most
exact source the profile has:

* numbers and times: every value (``sample``, up to 1,000 values), else each distinct value's
  count (``domain``, up to 20 distinct values), else the KLL quantile sketch, whose ranks are
  within about 1.3 % (k = 200);
* booleans: the exact counts of true and false (``sum`` and the valid count);
* strings: the frequent-items sketch, exact while the column has fewer distinct values than the
  sketch keeps (about 96), else estimates of the frequent ones and an ``(other)`` bucket.

``numeric_histogram`` and ``category_shares`` are what people see (the drift report);
``consumers.stattests`` runs the drift tests on the same ``Distribution`` objects.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final

import datasketches as ds
import numpy as np

from daemon.profile import domain_counts, exact_sample
from schemas.profiles import ColumnProfile

__all__ = [
    "OTHER",
    "CategoryCounts",
    "Distribution",
    "category_counts",
    "category_shares",
    "kll_items",
    "numeric_histogram",
    "sturges_edges",
]

OTHER: Final = "(other)"
"""The label of the values a profile does not name (past the frequent-items sketch's capacity)."""

Key = bool | int | float | str
FloatArray = np.ndarray[Any, np.dtype[np.float64]]


class Distribution:
    """The valid values of one column as its profile knows them (see the module docstring).

    Sketches are decoded once, on first use.
    """

    def __init__(self, col: ColumnProfile) -> None:
        self.col = col
        self.kind = col.kind

    @cached_property
    def n(self) -> int:
        """Valid values the tests count: not null, not NaN and, as Evidently drops them, finite.

        Infinite values leave the exact mean out of the profile; their number is then estimated
        from the share of the KLL sketch's weight they carry.
        """
        n = self.col.valid_count
        if n and self.kind in ("numeric", "time") and self.col.mean is None and self.kll_items is not None:
            values, weights = self.kll_items
            total = float(weights.sum())
            return round(n * float(weights[np.isfinite(values)].sum()) / total) if total else 0
        return n

    @cached_property
    def sample(self) -> FloatArray | None:
        """Every valid value, sorted (numbers and times of at most 1,000 values, all finite)."""
        return exact_sample(self.col) if self.kind in ("numeric", "time") else None

    @cached_property
    def exact_counts(self) -> dict[Key, float] | None:
        """Each distinct valid value's exact count, when the profile has them."""
        col = self.col
        if self.n == 0:
            return {}
        if self.kind == "boolean":
            trues = col.sum if col.sum is not None else round((col.mean or 0.0) * self.n)
            return {k: float(c) for k, c in ((False, self.n - trues), (True, trues)) if c > 0}
        if self.kind in ("numeric", "time"):
            domain = domain_counts(col)
            if domain is not None:
                return {k: float(c) for k, c in domain.items()}
            if self.sample is not None:
                values, counts = np.unique(self.sample, return_counts=True)
                return {float(v): float(c) for v, c in zip(values, counts, strict=True)}
            return None
        if self.kind == "string" and self.frequent is not None:
            rows = self.frequent.get_frequent_items(ds.frequent_items_error_type.NO_FALSE_NEGATIVES, 0)
            # Exact while nothing was ever purged: the lower bounds then add up to every value.
            if sum(int(r[2]) for r in rows) == self.frequent.total_weight:
                return {str(r[0]): float(r[2]) for r in rows if r[2] > 0}
        return None

    @cached_property
    def kll_items(self) -> tuple[FloatArray, FloatArray] | None:
        """The KLL sketch's retained items and their weights, or None without a sketch."""
        if self.col.quantiles is None:
            return None
        items = kll_items(base64.b64decode(self.col.quantiles))
        return items if len(items[0]) else None

    @cached_property
    def frequent(self) -> Any:
        """The frequent-strings sketch of a string column, or None."""
        if self.col.frequent is None:
            return None
        return ds.frequent_strings_sketch.deserialize(base64.b64decode(self.col.frequent))

    @cached_property
    def distinct(self) -> int | None:
        """The number of distinct valid values while the profile counts them exactly, else None.

        For numbers and times that is up to ``DOMAIN_MAX`` (20): None means more.
        """
        if self.n == 0:
            return 0
        if self.kind in ("numeric", "time"):
            return None if self.col.domain is None else len(self.col.domain)
        exact = self.exact_counts
        return None if exact is None else len(exact)

    @property
    def countable(self) -> bool:
        """Whether the values can be counted one by one, exactly or by the frequent-items sketch."""
        return self.exact_counts is not None or self.frequent is not None

    def estimated_counts(self) -> dict[Key, float]:
        """The counts of the values this column names: exact, or the frequent items' estimates."""
        exact = self.exact_counts
        if exact is not None:
            return exact
        if self.frequent is None:
            return {}
        rows = self.frequent.get_frequent_items(ds.frequent_items_error_type.NO_FALSE_POSITIVES)
        return {str(r[0]): float(r[1]) for r in rows}

    def count_of(self, key: Key) -> float:
        """The (estimated) count of one value, for a value the other side named."""
        exact = self.exact_counts
        if exact is not None:
            return exact.get(key, 0.0)
        if self.frequent is not None:
            return float(self.frequent.get_estimate(str(key)))
        values, weights = self.weighted_values
        if len(values) and isinstance(key, int | float) and not isinstance(key, bool):
            # The sketch's point mass at the value: the weight of its items equal to it.
            low, high = (int(np.searchsorted(values, float(key), side=side)) for side in ("left", "right"))
            mass = float(weights[low:high].sum()) if weights is not None else float(high - low)
            total = float(weights.sum()) if weights is not None else float(len(values))
            return mass / total * self.n
        return 0.0

    @cached_property
    def weighted_values(self) -> tuple[FloatArray, FloatArray | None]:
        """The finite values, sorted, and their weights: the exact sample (weights None), the
        domain's values and counts, or the KLL sketch's retained items and weights.

        A KLL sketch's CDF is its items' cumulative weight, so every distribution question below
        (CDF, histogram, Wasserstein) is answered from these alone.
        """
        if self.sample is not None:
            return self.sample, None
        domain = self.col.domain
        if domain is not None and self.kind != "string":
            return np.array([float(v) for v, _ in domain]), np.array([float(c) for _, c in domain])
        if self.kll_items is None:
            return np.zeros(0), None
        values, weights = self.kll_items
        order = np.argsort(values)
        values, weights = values[order], weights[order]
        finite = np.isfinite(values)
        return (values, weights) if finite.all() else (values[finite], weights[finite])

    def cdf(self, points: FloatArray) -> FloatArray:
        """P(X <= x) at each of ``points``, of the finite values."""
        values, weights = self.weighted_values
        if not len(values):
            return np.zeros(len(points))
        if weights is None:
            return np.searchsorted(values, points, side="right") / len(values)
        cumulative: FloatArray = np.concatenate([[0.0], np.cumsum(weights)])
        at: FloatArray = cumulative[np.searchsorted(values, points, side="right")] / cumulative[-1]
        return at

    def bin_shares(self, edges: FloatArray) -> FloatArray:
        """The share of the finite values in each bin, as ``np.histogram``: [a, b), the last [a, b].

        Values outside the edges are in no bin but count in the whole, as Evidently's
        ``np.histogram(data, bins)[0] / len(data)``.
        """
        bins = len(edges) - 1
        values, weights = self.weighted_values
        if bins < 1 or not len(values):
            return np.zeros(max(bins, 0))
        total = len(values) if weights is None else float(weights.sum())
        shares: FloatArray = np.histogram(values, edges, weights=weights)[0] / total
        return shares

    def value_range(self) -> tuple[float, float] | None:
        """The smallest and largest finite value, or None (exact unless infinite values hide them)."""
        col = self.col
        if self.kind not in ("numeric", "time") or not self.n:
            return None
        if isinstance(col.min, int | float) and isinstance(col.max, int | float):
            low, high = float(col.min), float(col.max)
            if math.isfinite(low) and math.isfinite(high):
                return low, high
        values, _ = self.weighted_values
        return (float(values[0]), float(values[-1])) if len(values) else None


def kll_items(data: bytes) -> tuple[FloatArray, FloatArray]:
    """The retained items of a serialised KLL doubles sketch and their weights (2**level).

    The same pairs as iterating the deserialised sketch (``for item, weight in sketch``), read
    straight from the DataSketches binary format (serial version 1: 20 bytes of preamble, the
    level offsets as uint32, min and max, then the items, level 0 first), 10 times faster; any
    other layout goes through the sketch.
    """
    if len(data) >= 20 and data[:3] == bytes((5, 1, 15)):  # 5 preamble ints, version 1, family KLL
        n = int.from_bytes(data[8:16], "little")
        levels = int(data[18])
        offsets = np.frombuffer(data, "<u4", levels, 20).astype(np.int64)
        items = np.frombuffer(data, "<f8", offset=20 + 4 * levels + 16)
        sizes = np.diff(np.append(offsets - offsets[0], len(items)))
        if len(sizes) == levels and (sizes >= 0).all():
            weights = np.repeat(2.0 ** np.arange(levels), sizes)
            if int(weights.sum()) == n:
                return items.astype(np.float64), weights
    sketch = ds.kll_doubles_sketch.deserialize(data)
    pairs = list(sketch)
    return np.array([v for v, _ in pairs], dtype=np.float64), np.array([w for _, w in pairs], dtype=np.float64)


@dataclass(frozen=True)
class CategoryCounts:
    """Two columns' counts per value: the values either names, in value order, then ``(other)``.

    ``exact`` is False when a frequent-items or quantile sketch estimated some count; the counts of
    each side then still add up to its valid values, the rest being in ``(other)``.
    """

    keys: tuple[Key, ...]
    reference: FloatArray
    current: FloatArray
    reference_other: float
    current_other: float
    exact: bool

    @property
    def labels(self) -> list[str]:
        return [_label(k) for k in self.keys]

    def with_other(self) -> tuple[list[str], FloatArray, FloatArray]:
        """Labels and counts, with the ``(other)`` bucket last when either side has one."""
        if self.reference_other > 0 or self.current_other > 0:
            return (
                [*self.labels, OTHER],
                np.append(self.reference, self.reference_other),
                np.append(self.current, self.current_other),
            )
        return self.labels, self.reference, self.current


def _label(key: Key) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return key if isinstance(key, str) else repr(key)


def _side_counts(side: Distribution, keys: list[Key]) -> tuple[FloatArray, float]:
    counts = np.array([side.count_of(k) for k in keys], dtype=np.float64)
    total = float(side.n)
    named = float(counts.sum())
    if side.exact_counts is None and named > total > 0:  # estimates past the total: scale them down
        counts *= total / named
        named = total
    return counts, max(total - named, 0.0)


def category_counts(ref: Distribution, cur: Distribution) -> CategoryCounts | None:
    """Each value's count on both sides: the values either side names, the other side's counts of
    them (exact, or estimated by its sketch), the rest in ``(other)``.

    None when neither side can be counted by value: numbers with more than 20 distinct values
    and more than 1,000 values on both sides.
    """
    if not (ref.countable or cur.countable):
        return None
    named = set(ref.estimated_counts()) | set(cur.estimated_counts())
    keys: list[Key] = sorted(named)  # one kind of key per column: str, bool or numbers
    ref_counts, ref_other = _side_counts(ref, keys)
    cur_counts, cur_other = _side_counts(cur, keys)
    return CategoryCounts(
        keys=tuple(keys),
        reference=ref_counts,
        current=cur_counts,
        reference_other=ref_other,
        current_other=cur_other,
        exact=ref.exact_counts is not None and cur.exact_counts is not None,
    )


def sturges_edges(ref: Distribution, cur: Distribution) -> FloatArray | None:
    """``np.histogram_bin_edges`` of both sides' values together with ``bins="sturges"``.

    Evidently bins numbers so for PSI and Jensen-Shannon (``get_binned_data`` in
    ``evidently/legacy/calculations/stattests/utils.py``). Exact when both sides kept their
    values; else the same formula on the profiles' exact min, max and counts.
    """
    if ref.sample is not None and cur.sample is not None:
        return np.histogram_bin_edges(np.concatenate([ref.sample, cur.sample]), bins="sturges")
    ranges = [r for r in (ref.value_range(), cur.value_range()) if r is not None]
    n = ref.n + cur.n
    if not ranges or n == 0:
        return None
    low, high = min(r[0] for r in ranges), max(r[1] for r in ranges)
    # numpy: width = ptp / (log2(n) + 1); bins = ceil(ptp / width); a zero range widens by 0.5.
    width = (high - low) / (np.log2(n) + 1.0)
    bins = int(np.ceil((high - low) / width)) if width else 1
    if low == high:
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, bins + 1, endpoint=True)


# -- what people see -----------------------------------------------------------------------------


def numeric_histogram(
    ref: ColumnProfile, cur: ColumnProfile, bins: int
) -> tuple[list[float], list[float], list[float]]:
    """Equal-width bin edges over both columns' range, and each side's share of values per bin.

    Shares are of the finite valid values (exact from ``sample`` or ``domain``, else from the
    KLL sketch's weighted items, each share within about twice the sketch's rank error); bins are
    closed on the left, the last on both sides, as ``np.histogram``'s.
    Empty lists when neither side has a finite value.
    """
    r, c = Distribution(ref), Distribution(cur)
    ranges = [x for x in (r.value_range(), c.value_range()) if x is not None]
    if not ranges or bins < 1:
        return [], [], []
    low, high = min(x[0] for x in ranges), max(x[1] for x in ranges)
    if low == high:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)
    return edges.tolist(), r.bin_shares(edges).tolist(), c.bin_shares(edges).tolist()


def category_shares(ref: ColumnProfile, cur: ColumnProfile, top: int) -> list[tuple[str, float, float]]:
    """(label, reference share, current share) of the ``top`` values of either side, then ``(other)``.

    For strings, booleans (``true``/``false``) and numbers with a ``domain`` or ``sample``; shares
    are of each side's valid values, most frequent in the reference first; ``(other)`` holds the
    rest when there is any. Empty for columns that cannot be counted by value.
    """
    r, c = Distribution(ref), Distribution(cur)
    counts = category_counts(r, c)
    if counts is None:
        return []
    ref_total, cur_total = max(r.n, 1), max(c.n, 1)
    order = range(len(counts.keys))
    chosen = set(sorted(order, key=lambda i: -counts.reference[i])[:top])
    chosen |= set(sorted(order, key=lambda i: -counts.current[i])[:top])
    ranked = sorted(chosen, key=lambda i: (-counts.reference[i], -counts.current[i], i))
    rows = [(_label(counts.keys[i]), counts.reference[i] / ref_total, counts.current[i] / cur_total) for i in ranked]
    rest = [i for i in order if i not in chosen]
    ref_rest = float(counts.reference[rest].sum()) + counts.reference_other
    cur_rest = float(counts.current[rest].sum()) + counts.current_other
    if ref_rest > 0 or cur_rest > 0:
        rows.append((OTHER, ref_rest / ref_total, cur_rest / cur_total))
    return [(label, float(a), float(b)) for label, a, b in rows]
