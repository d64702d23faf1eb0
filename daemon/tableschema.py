"""Table schemas as values: from Arrow, their change between versions, and one schema for many files.

Pure functions on ``schemas.profiles`` models; nothing here reads a file.

Unifying the files of a version follows what concatenating them would need (and what
``pyarrow.unify_schemas(promote_options="permissive")`` does for the common cases):

* a ``null`` column (a CSV column with no values) takes the other file's type;
* a dictionary-encoded column and a plain column of its value type unify to the value type;
  ``string``/``large_string``/``string_view`` unify to ``large_string`` if either is large;
* integers unify to the wider integer; signed and unsigned to a signed integer wide enough for
  both (``uint64`` and a signed integer have none: a conflict);
* an integer and a float unify to ``double``, and two floats to the wider one. This is a
  promotion, not a conflict: ``1`` and ``1.5`` in two CSV files are one numeric column;
* timestamps of the same zone and different units unify to the finer unit (writers differ:
  pandas ns, Spark us, CSV s); a decimal and a number (a Parquet decimal beside the same column
  read from CSV) unify to ``double``;
* anything else that differs (``int64`` and ``string``, two time zones) is a conflict: the
  version has no one schema, and the reason says which column.

A column missing from some files is nullable in the unified schema.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import pyarrow as pa

from schemas.profiles import FieldSpec, NullabilityChange, SchemaChange, TableSchema, TypeChange

__all__ = ["SchemaUnion", "promote_types", "schema_change", "table_schema", "unify"]

_DICTIONARY = re.compile(r"^dictionary<values=(?P<values>.+), indices=\w+, ordered=[01]>$")
_SIGNED: Final = {"int8": 8, "int16": 16, "int32": 32, "int64": 64}
_UNSIGNED: Final = {"uint8": 8, "uint16": 16, "uint32": 32, "uint64": 64}
_FLOATS: Final = {"halffloat": 16, "float": 32, "double": 64}
_STRINGS: Final = ("string", "large_string", "string_view")
_BINARIES: Final = ("binary", "large_binary", "binary_view")


def table_schema(schema: pa.Schema) -> TableSchema:
    """The contract form of an Arrow schema: name, ``str(type)`` and nullability of each field."""
    return TableSchema.of([FieldSpec(name=f.name, type=str(f.type), nullable=f.nullable) for f in schema])


def schema_change(parent: TableSchema | None, new: TableSchema) -> SchemaChange:
    """What changed from ``parent`` to ``new``, columns matched by name (no parent: all added)."""
    if parent is None:
        return SchemaChange(added=new.fields)
    old = {f.name: f for f in parent.fields}
    now = {f.name: f for f in new.fields}
    return SchemaChange(
        added=tuple(f for f in new.fields if f.name not in old),
        removed=tuple(f for f in parent.fields if f.name not in now),
        type_changed=tuple(
            TypeChange(name=f.name, old=old[f.name].type, new=f.type)
            for f in new.fields
            if f.name in old and old[f.name].type != f.type
        ),
        nullability_changed=tuple(
            NullabilityChange(name=f.name, old=old[f.name].nullable, new=f.nullable)
            for f in new.fields
            if f.name in old and old[f.name].nullable != f.nullable
        ),
    )


def unify(schemas: list[TableSchema]) -> tuple[TableSchema | None, str | None]:
    """One schema for files read together, or why there is none.

    Returns ``(schema, None)``, or ``(None, reason)`` when a column has types that do not unify
    (see the module docstring). Columns come in first-seen order. No schemas: ``(None, None)``.
    """
    return SchemaUnion.merge([SchemaUnion.of(s) for s in schemas]).result()


@dataclass(frozen=True, slots=True)
class SchemaUnion:
    """``unify`` as a value that merges: the unified fields so far, each with the number of
    schemas that had it, so a version's schema can be kept up to date file by file (issue 5)."""

    fields: tuple[tuple[FieldSpec, int], ...] = ()  # unified field, how many schemas had it; first-seen order
    schemas: int = 0
    conflict: str | None = None

    @classmethod
    def of(cls, schema: TableSchema) -> SchemaUnion:
        return cls.merge([cls(tuple((f, 1) for f in schema.fields), 1)])

    @classmethod
    def merge(cls, parts: list[SchemaUnion]) -> SchemaUnion:
        """The union of ``parts`` in order; the first conflict met is kept."""
        merged: dict[str, FieldSpec] = {}
        seen_in: dict[str, int] = {}
        schemas = 0
        for part in parts:
            schemas += part.schemas
            if part.conflict is not None:
                return cls((), schemas, part.conflict)
            for f, count in part.fields:
                have = merged.get(f.name)
                if have is None:
                    merged[f.name] = f
                    seen_in[f.name] = count
                    continue
                unified = promote_types(have.type, f.type)
                if unified is None:
                    return cls((), schemas, f"column {f.name!r} is {have.type} in one file and {f.type} in another")
                merged[f.name] = FieldSpec(name=f.name, type=unified, nullable=have.nullable or f.nullable)
                seen_in[f.name] += count
        return cls(tuple((f, seen_in[f.name]) for f in merged.values()), schemas)

    def result(self) -> tuple[TableSchema | None, str | None]:
        """``(schema, None)``, ``(None, reason)`` on a conflict, ``(None, None)`` with no schema."""
        if self.conflict is not None:
            return None, self.conflict
        if not self.schemas:
            return None, None
        # A column some files lack reads as nulls in those files' rows.
        return TableSchema.of(
            [f if count == self.schemas else f.model_copy(update={"nullable": True}) for f, count in self.fields]
        ), None


_TIMESTAMP = re.compile(r"timestamp\[(?P<unit>s|ms|us|ns)(?:, tz=(?P<tz>[^\]]+))?\]")
_TIME_UNITS = ("s", "ms", "us", "ns")


def promote_types(a: str, b: str) -> str | None:
    """The type that holds values of Arrow types ``a`` and ``b`` (their ``str``), or None if none does."""
    if a == b:
        return a
    if a == "null":
        return b
    if b == "null":
        return a
    va, vb = _value_type(a), _value_type(b)
    if va == vb:
        return va
    for family in (_STRINGS, _BINARIES):
        if va in family and vb in family:
            return family[1] if family[1] in (va, vb) else family[0]
    if va in _SIGNED and vb in _SIGNED:
        return va if _SIGNED[va] >= _SIGNED[vb] else vb
    if va in _UNSIGNED and vb in _UNSIGNED:
        return va if _UNSIGNED[va] >= _UNSIGNED[vb] else vb
    if {va, vb} <= _SIGNED.keys() | _UNSIGNED.keys():
        signed, unsigned = (va, vb) if va in _SIGNED else (vb, va)
        bits = max(_SIGNED[signed], 2 * _UNSIGNED[unsigned])
        return f"int{bits}" if bits <= 64 else None
    if va in _FLOATS and vb in _FLOATS:
        return va if _FLOATS[va] >= _FLOATS[vb] else vb
    if {va, vb} <= _FLOATS.keys() | _SIGNED.keys() | _UNSIGNED.keys():
        return "double"
    numeric = _FLOATS.keys() | _SIGNED.keys() | _UNSIGNED.keys()
    if (va.startswith("decimal") and (vb in numeric or vb.startswith("decimal"))) or (
        vb.startswith("decimal") and va in numeric
    ):
        return "double"  # a Parquet decimal beside the same column read from CSV: compare as numbers
    ta, tb = _TIMESTAMP.fullmatch(va), _TIMESTAMP.fullmatch(vb)
    if ta and tb and ta.group("tz") == tb.group("tz"):
        # Writers differ in resolution (pandas ns or us, Spark us, CSV s): the finer unit holds both.
        return va if _TIME_UNITS.index(ta.group("unit")) >= _TIME_UNITS.index(tb.group("unit")) else vb
    return None


def _value_type(arrow_type: str) -> str:
    """A dictionary type's value type; other types unchanged."""
    match = _DICTIONARY.match(arrow_type)
    return match.group("values") if match else arrow_type
