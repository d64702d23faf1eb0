"""Profile contract, version 1: table schemas, schema changes and column profiles.

These values travel on Kafka inside version events, so they are compact JSON: sketches are the
base64 of their Apache DataSketches bytes (``kll_doubles_sketch``, ``frequent_strings_sketch``,
``hll_sketch``), which any DataSketches binding (Python, Java, C++) deserialises.

A profile is *mergeable*: the profile of a version is the merge of its files' profiles
(``daemon.profile.merge_profiles``), so the exact statistics are kept in a form that merges
without the data (``count``, ``null_count``, ``nan_count``, ``mean`` and ``m2``; min and max).

Times (``kind == "time"``) are numbers in the column's own ``unit``: timestamps and dates count
from the Unix epoch (dates in days for ``date32``, in ms for ``date64``), times of day from
midnight, durations from zero. So ``min``/``max`` are exact integers and mean, stddev and
quantiles are floats in the same unit; the time zone, if any, is in ``type``.
"""

from __future__ import annotations

import json
from typing import Literal, Self

import xxhash
from pydantic import BaseModel, ConfigDict, Field, model_validator

ColumnKind = Literal["numeric", "time", "string", "boolean", "other"]
TimeUnit = Literal["s", "ms", "us", "ns", "day"]
Scalar = bool | int | float | str


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FieldSpec(_Model):
    """One column of a table schema."""

    name: str
    type: str = Field(description="str() of the Arrow type, e.g. 'int64', 'timestamp[us, tz=UTC]'.")
    nullable: bool = Field(description="Whether the schema allows nulls (Arrow field nullability).")


def schema_fingerprint(fields: tuple[FieldSpec, ...] | list[FieldSpec]) -> str:
    """XXH3-128 (32 hex digits) of the canonical JSON of ``fields``.

    Canonical: a JSON array of ``[name, type, nullable]`` in column order, no spaces, non-ASCII
    kept as UTF-8. Column order is part of the schema; field metadata is not.
    """
    canonical = json.dumps([[f.name, f.type, f.nullable] for f in fields], separators=(",", ":"), ensure_ascii=False)
    return xxhash.xxh3_128_hexdigest(canonical.encode())


class TableSchema(_Model):
    """The Arrow schema of a file or a version, and its fingerprint."""

    fields: tuple[FieldSpec, ...] = Field(description="The columns, in order.")
    fingerprint: str = Field(description="XXH3-128 of the canonical JSON of fields (see schema_fingerprint).")

    @model_validator(mode="after")
    def _fingerprint_matches(self) -> Self:
        # A fingerprint that does not match its fields would make two different schemas look equal.
        expected = schema_fingerprint(self.fields)
        if self.fingerprint != expected:
            raise ValueError(f"fingerprint {self.fingerprint!r} does not match the fields ({expected!r})")
        return self

    @classmethod
    def of(cls, fields: tuple[FieldSpec, ...] | list[FieldSpec]) -> TableSchema:
        """A schema of ``fields`` with its fingerprint computed."""
        return cls(fields=tuple(fields), fingerprint=schema_fingerprint(fields))

    def field(self, name: str) -> FieldSpec | None:
        """The column called ``name``, if there is one."""
        return next((f for f in self.fields if f.name == name), None)


class TypeChange(_Model):
    name: str
    old: str = Field(description="Arrow type in the parent version.")
    new: str = Field(description="Arrow type in the new version.")


class NullabilityChange(_Model):
    name: str
    old: bool
    new: bool


class SchemaChange(_Model):
    """How a version's schema differs from its parent's; columns are matched by name."""

    added: tuple[FieldSpec, ...] = ()
    removed: tuple[FieldSpec, ...] = ()
    type_changed: tuple[TypeChange, ...] = ()
    nullability_changed: tuple[NullabilityChange, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether anything differs (a reordering of columns alone is not a change here)."""
        return bool(self.added or self.removed or self.type_changed or self.nullability_changed)


class ColumnProfile(_Model):
    """Statistics and sketches of one column.

    ``count`` counts every row, null or not. The value statistics (min to quantiles) cover the
    valid values: not null and, for floats, not NaN. Numbers and times have min, max, mean, stddev
    and a quantile sketch; strings (and dictionary-encoded strings) have min and max
    (lexicographic by code point, null when longer than 200 characters), a frequent-items and a
    distinct-count sketch; booleans have min, max and the share of true as mean. Non-finite
    floats serialise as null. Small number and time columns also keep their values (``sample``)
    and their distinct values' counts (``domain``) exactly.
    """

    name: str
    type: str = Field(description="str() of the Arrow type; 'A | B' when merged files disagree on it.")
    kind: ColumnKind = Field(description="Which statistics apply; 'other' has counts only.")
    unit: TimeUnit | None = Field(None, description="For kind 'time': the unit of min, max, mean, stddev, quantiles.")
    count: int = Field(ge=0, description="Rows, including nulls.")
    null_count: int = Field(ge=0, description="Null rows (in a merge, also the rows of files without the column).")
    nan_count: int = Field(0, ge=0, description="NaN floats, counted as values but left out of the statistics.")
    min: Scalar | None = None
    max: Scalar | None = None
    mean: float | None = Field(None, description="Mean of the valid values; for booleans the share of true.")
    stddev: float | None = Field(None, description="Sample standard deviation (n - 1) of the valid values.")
    m2: float | None = Field(
        None, description="Sum of squared deviations from the mean, kept so that profiles merge (Chan et al.)."
    )
    sum: int | None = Field(
        None,
        description="Exact sum of integer, time and boolean values, so that a merge keeps every digit of the "
        "mean (a double near 2**62 has a spacing of 1024).",
    )
    quantiles: str | None = Field(None, description="base64 of a KLL doubles sketch of the valid values.")
    sample: str | None = Field(
        None,
        description="Numbers and times with at most 1,000 valid values, all finite: base64 of every valid value "
        "as little-endian float64, sorted, so that small-sample drift tests are exact (absent past that).",
    )
    domain: tuple[tuple[int | float, int], ...] | None = Field(
        None,
        description="Numbers and times with at most 20 distinct valid values, all finite: each value and its "
        "count, in value order (absent past that).",
    )
    frequent: str | None = Field(None, description="base64 of a frequent_strings sketch of the values.")
    distinct: str | None = Field(None, description="base64 of a compact HLL sketch of the distinct values.")

    @property
    def valid_count(self) -> int:
        """Values the statistics cover: not null and not NaN."""
        return self.count - self.null_count - self.nan_count


class TableProfile(_Model):
    """The profile of a file, or of a version (the merge of its files' profiles)."""

    rows: int = Field(ge=0)
    columns: tuple[ColumnProfile, ...] = Field(description="One per column, in schema (first-seen) order.")

    def column(self, name: str) -> ColumnProfile | None:
        """The profile of the column called ``name``, if there is one."""
        return next((c for c in self.columns if c.name == name), None)
