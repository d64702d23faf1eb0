"""Reading real table files: formats, schemas and their changes, and every bad file as UnreadableTableError."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.feather as feather
import pyarrow.orc as pa_orc
import pyarrow.parquet as pq
import pytest

from daemon.errors import UnreadableDataError, UnreadableTableError
from daemon.profile import Profiler, top_items
from daemon.tables import _read_ahead, detect_format, open_table, profile_file, read_table
from daemon.tableschema import promote_types, schema_change, table_schema, unify
from schemas.profiles import FieldSpec, NullabilityChange, TableSchema, TypeChange
from tests.helpers import unprivileged_prefix


def _frame(rows: int = 1_000, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "id": np.arange(rows, dtype=np.int64),
            "x": rng.normal(size=rows),
            "name": [f"n{i % 17}" for i in range(rows)],
            "flag": rng.random(rows) < 0.5,
        }
    )


# -- formats ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a/b.parquet", "parquet"),
        ("B.PQ", "parquet"),
        ("x.csv", "csv"),
        ("x.CSV.GZ", "csv"),
        ("x.tsv", "csv"),
        ("x.jsonl", "jsonl"),
        ("x.ndjson.gz", "jsonl"),
        ("x.arrow", "arrow"),
        ("x.feather", "arrow"),
        ("x.ipc", "arrow"),
        ("x.orc", "orc"),
        ("x.json", None),
        ("x.gz", None),
        ("parquet", None),
        ("notes.txt", None),
    ],
)
def test_format_comes_from_the_extension(name: str, expected: str | None) -> None:
    assert detect_format(name) == expected


def test_a_dataset_override_wins_over_the_extension() -> None:
    assert detect_format("export.txt", "csv") == "csv"
    assert detect_format("x.parquet", "orc") == "orc"


def _write(df: pd.DataFrame, path: Path) -> None:
    table = pa.Table.from_pandas(df, preserve_index=False)
    name = path.name
    if name.endswith(".parquet"):
        pq.write_table(table, path, row_group_size=300)
    elif name.endswith(".csv"):
        df.to_csv(path, index=False)
    elif name.endswith(".csv.gz"):
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            df.to_csv(fh, index=False)
    elif name.endswith(".tsv"):
        df.to_csv(path, index=False, sep="\t")
    elif name.endswith(".jsonl"):
        df.to_json(path, orient="records", lines=True)
    elif name.endswith(".jsonl.gz"):
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            df.to_json(fh, orient="records", lines=True)
    elif name.endswith(".feather"):
        feather.write_feather(table, path, chunksize=300)
    elif name.endswith(".arrows"):
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=300)
    elif name.endswith(".orc"):
        pa_orc.write_table(table, path)
    else:
        raise AssertionError(name)


@pytest.mark.parametrize(
    "name", ["t.parquet", "t.csv", "t.csv.gz", "t.tsv", "t.jsonl", "t.jsonl.gz", "t.feather", "t.arrows", "t.orc"]
)
def test_each_format_round_trips_its_schema_and_rows(tmp_path: Path, name: str) -> None:
    df = _frame()
    path = tmp_path / name
    _write(df, path)
    fmt = detect_format(str(path))
    assert fmt is not None
    with open_table(str(path), fmt, batch_rows=256) as reader:
        # pandas 3 hands its strings to Arrow as large_string; CSV and JSON infer string.
        types = [str(f.type).replace("large_string", "string") for f in reader.schema]
        assert (reader.schema.names, types) == (["id", "x", "name", "flag"], ["int64", "double", "string", "bool"])
        sizes = [b.num_rows for b in reader.batches()]
    assert sum(sizes) == len(df) and max(sizes) <= 256 and len(sizes) >= 4
    table = read_table(str(path), fmt)
    assert table.column("id").to_pylist() == df["id"].tolist()
    assert table.column("name").to_pylist() == df["name"].tolist()
    # pandas writes JSON floats with 10 decimals; the other formats are exact.
    atol = 1e-9 if fmt == "jsonl" else 0.0
    assert np.allclose(table.column("x").to_numpy(), df["x"].to_numpy(), rtol=0, atol=atol)


def test_profile_file_equals_the_profile_of_the_table_in_memory(tmp_path: Path) -> None:
    df = _frame(rows=5_000)
    path = tmp_path / "t.parquet"
    _write(df, path)
    schema, profile = profile_file(str(path), "parquet", batch_rows=700)
    table = pa.Table.from_pandas(df, preserve_index=False)
    profiler = Profiler(table.schema)
    for batch in table.to_batches():
        profiler.add(batch)
    expected = profiler.finish()
    assert schema == table_schema(table.schema)
    assert profile.rows == expected.rows == 5_000
    for got, want in zip(profile.columns, expected.columns, strict=True):
        assert (got.count, got.null_count, got.min, got.max) == (want.count, want.null_count, want.min, want.max)
        assert got.mean == pytest.approx(want.mean) if want.mean is not None else got.mean is None
    name = profile.column("name")
    assert name is not None and top_items(name, 1) == [("n0", 295)]


def test_a_categorical_written_by_pandas_is_profiled_as_strings(tmp_path: Path) -> None:
    path = tmp_path / "cat.parquet"
    pd.DataFrame({"c": pd.Categorical(["a", "b", "a", None])}).to_parquet(path)
    schema, profile = profile_file(str(path), "parquet")
    col = profile.column("c")
    assert col is not None and schema.fields[0].type.startswith("dictionary<values=string")
    assert (col.kind, col.null_count, top_items(col, 2)) == ("string", 1, [("a", 2), ("b", 1)])


def test_a_csv_column_that_turns_float_after_the_first_block_is_read_again_as_double(tmp_path: Path) -> None:
    path = tmp_path / "late.csv"
    rows = 600_000  # ~6 MB: past the 4 MiB block that types are inferred from
    with open(path, "w") as fh:
        fh.write("n,label\n")
        fh.writelines(f"{i},abc\n" for i in range(rows))
        fh.write("2.5,abc\n")
    schema, profile = profile_file(str(path), "csv")
    assert [(f.name, f.type) for f in schema.fields] == [("n", "double"), ("label", "string")]
    n = profile.column("n")
    assert profile.rows == rows + 1 and n is not None and n.max == rows - 1 and n.min == 0
    assert read_table(str(path), "csv").column("n").type == pa.float64()


def test_a_csv_column_that_turns_text_late_is_read_again_as_string(tmp_path: Path) -> None:
    path = tmp_path / "late.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("n\n")
        fh.writelines(f"{i}\n" for i in range(900_000))
        fh.write("n/a (unknown)\n")
    schema, profile = profile_file(str(path), "csv")
    assert schema.fields[0].type == "string" and profile.rows == 900_001


def test_json_lines_with_a_late_new_field_and_a_late_float_are_read_again(tmp_path: Path) -> None:
    path = tmp_path / "late.jsonl"
    with open(path, "w") as fh:
        fh.writelines('{"a":1,"b":"x"}\n' for _ in range(400_000))
        fh.write('{"a":1.5,"b":"y","c":true}\n')
    schema, profile = profile_file(str(path), "jsonl")
    assert [(f.name, f.type) for f in schema.fields] == [("a", "double"), ("b", "string"), ("c", "bool")]
    c = profile.column("c")
    assert profile.rows == 400_001 and c is not None and c.null_count == 400_000


def test_a_header_only_csv_is_a_table_of_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("a,b\n")
    schema, profile = profile_file(str(path), "csv")
    assert [f.name for f in schema.fields] == ["a", "b"] and profile.rows == 0


def test_read_ahead_stops_its_thread_when_the_consumer_stops_early() -> None:
    before = threading.active_count()
    batches = (pa.record_batch({"a": [i]}) for i in range(1_000))
    for n, _ in enumerate(_read_ahead(batches)):
        if n == 3:
            break
    assert threading.active_count() == before


def test_read_ahead_raises_the_readers_error_in_the_consumer() -> None:
    def failing() -> object:
        yield pa.record_batch({"a": [1]})
        raise UnreadableTableError("boom")

    with pytest.raises(UnreadableTableError, match="boom"):
        list(_read_ahead(failing()))  # type: ignore[arg-type]


# -- bad files ---------------------------------------------------------------------------------


def _parquet_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "good.parquet"
    pq.write_table(pa.Table.from_pandas(_frame(rows=20_000), preserve_index=False), path)
    return path.read_bytes()


def _raises(path: Path, fmt: str, match: str) -> str:
    with pytest.raises(UnreadableTableError, match=match) as caught:
        profile_file(str(path), fmt)  # type: ignore[arg-type]
    with pytest.raises(UnreadableTableError, match=match):
        read_table(str(path), fmt)  # type: ignore[arg-type]
    message = str(caught.value)
    assert len(message) < 250 and "\n" not in message
    return message


def test_a_truncated_parquet_file_is_corrupt(tmp_path: Path) -> None:
    data = _parquet_bytes(tmp_path)
    path = tmp_path / "t.parquet"
    path.write_bytes(data[: len(data) // 2])
    _raises(path, "parquet", r"^corrupt Parquet: .*footer")


def test_random_bytes_named_parquet_are_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    path.write_bytes(np.random.default_rng(0).bytes(10_000))
    _raises(path, "parquet", r"^corrupt Parquet: ")


def test_a_parquet_file_with_damaged_pages_is_corrupt(tmp_path: Path) -> None:
    data = bytearray(_parquet_bytes(tmp_path))
    for i in range(64, len(data) // 2, 5):  # the column chunks; the footer at the end stays readable
        data[i] ^= 0xFF
    path = tmp_path / "d.parquet"
    path.write_bytes(bytes(data))
    _raises(path, "parquet", r"^corrupt Parquet: ")


def test_a_ragged_csv_row_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("a,b\n" + "".join(f"{i},{i}\n" for i in range(15)) + "1,2,3\n4,5\n")
    assert _raises(path, "csv", "row") == "CSV row 17 has 3 columns, expected 2"


def test_a_short_csv_row_deep_in_a_gzip_file_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "r.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write('a,b\n"multi\nline",1\n')  # a quoted newline is a value, not a row end
        fh.writelines(f"{i},{i}\n" for i in range(300_000))
        fh.write("only-one\n")
    assert _raises(path, "csv", "row") == "CSV row 300004 has 1 columns, expected 2"


def test_a_latin1_csv_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "l.csv"
    path.write_bytes("name,n\nJosé,1\n".encode("latin-1"))
    assert _raises(path, "csv", "UTF-8") == "CSV is not valid UTF-8 (column 'name'): save it as UTF-8"


def test_invalid_utf8_after_the_first_block_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "l.csv"
    path.write_bytes(b"name,n\n" + b"abc,1\n" * 1_000_000 + b"Jos\xe9,1\n")
    _raises(path, "csv", r"^CSV is not valid UTF-8 \(column 'name'\)")


@pytest.mark.parametrize("name", ["e.parquet", "e.csv", "e.jsonl", "e.arrow", "e.orc", "e.tsv"])
def test_an_empty_file_of_each_format_is_an_empty_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"")
    fmt = detect_format(name)
    assert fmt is not None
    assert _raises(path, fmt, "empty") == "empty file"


@pytest.mark.parametrize(("name", "fmt"), [("e.csv.gz", "csv"), ("e.jsonl.gz", "jsonl"), ("blank.jsonl", "jsonl")])
def test_compressed_or_blank_nothing_is_an_empty_file(tmp_path: Path, name: str, fmt: str) -> None:
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wb") as fh:
            fh.write(b"")
    else:
        path.write_text("\n  \n")
    assert _raises(path, fmt, "empty") == "empty file"


def test_a_broken_json_line_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "b.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3\n{"a": 4}\n')
    assert _raises(path, "jsonl", "line") == "JSON Lines line 3 is not valid JSON (Expecting ',' delimiter)"


def test_a_json_line_that_is_not_an_object_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "b.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n')
    assert _raises(path, "jsonl", "line") == "JSON Lines line 2 is not a JSON object"


def test_a_json_field_with_numbers_and_strings_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with open(path, "w") as fh:
        fh.writelines('{"a": 1}\n' for _ in range(600_000))
        fh.write('{"a": "one"}\n')
    _raises(path, "jsonl", r"^JSON Lines field 'a' holds both (number|int64) and (string|str)")


def test_a_corrupt_gzip_csv_is_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "c.csv.gz"
    good = gzip.compress(b"a,b\n" + b"1,2\n" * 10_000)
    path.write_bytes(good[: len(good) // 2])
    _raises(path, "csv", r"^corrupt gzip: ")


def test_a_truncated_arrow_file_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "t.arrow"
    feather.write_feather(pa.Table.from_pandas(_frame(rows=20_000), preserve_index=False), path, chunksize=1_000)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _raises(path, "arrow", r"Arrow IPC")


def test_random_bytes_named_orc_are_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "r.orc"
    path.write_bytes(np.random.default_rng(1).bytes(4_000))
    _raises(path, "orc", r"^corrupt ORC: ")


def test_a_csv_with_a_column_name_twice_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b,a\n1,2,3\n")
    assert _raises(path, "csv", "twice|more than once") == "column 'a' appears more than once"


def test_a_vanished_file_is_unreadable_data_not_a_bad_table(tmp_path: Path) -> None:
    with pytest.raises(UnreadableDataError, match="vanished") as caught:
        profile_file(str(tmp_path / "gone.parquet"), "parquet")
    assert not isinstance(caught.value, UnreadableTableError)


def test_an_unreadable_file_is_permission_denied() -> None:
    # As an unprivileged user (root reads any file), in a folder it may enter.
    base = Path(tempfile.mkdtemp(prefix="strandline-perm-"))
    try:
        base.chmod(0o755)
        path = base / "secret.csv"
        path.write_text("a\n1\n")
        path.chmod(0)
        probe = (
            "from daemon.errors import UnreadableDataError, UnreadableTableError\n"
            "from daemon.tables import profile_file\n"
            "try:\n"
            f"    profile_file({str(path)!r}, 'csv')\n"
            "except UnreadableDataError as exc:\n"
            "    print(type(exc).__name__, exc)\n"
        )
        out = subprocess.run(
            [*unprivileged_prefix(), sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=Path(__file__).parent.parent,
        )
    finally:
        shutil.rmtree(base)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("UnreadableDataError ") and "permission denied" in out.stdout


# -- schemas -----------------------------------------------------------------------------------


def _schema(*fields: tuple[str, str, bool]) -> TableSchema:
    return TableSchema.of([FieldSpec(name=n, type=t, nullable=nullable) for n, t, nullable in fields])


def test_a_files_schema_records_types_nullability_and_a_stable_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "s.parquet"
    arrow_schema = pa.schema([pa.field("id", pa.int64(), nullable=False), ("t", pa.timestamp("ms", tz="UTC"))])
    pq.write_table(pa.table({"id": [1], "t": [None]}, schema=arrow_schema), path)
    schema, _ = profile_file(str(path), "parquet")
    assert schema == _schema(("id", "int64", False), ("t", "timestamp[ms, tz=UTC]", True))
    assert len(schema.fingerprint) == 32 and int(schema.fingerprint, 16) >= 0
    fingerprints = {
        schema.fingerprint,
        _schema(("t", "timestamp[ms, tz=UTC]", True), ("id", "int64", False)).fingerprint,  # order
        _schema(("id", "int64", True), ("t", "timestamp[ms, tz=UTC]", True)).fingerprint,  # nullability
        _schema(("id", "int32", False), ("t", "timestamp[ms, tz=UTC]", True)).fingerprint,  # type
    }
    assert len(fingerprints) == 4


def test_a_schema_with_a_wrong_fingerprint_is_refused() -> None:
    good = _schema(("a", "int64", True))
    with pytest.raises(ValueError, match="does not match"):
        TableSchema(fields=good.fields, fingerprint="0" * 32)


def test_schema_change_reports_added_removed_retyped_and_nullability() -> None:
    parent = _schema(("id", "int64", False), ("gone", "string", True), ("x", "int64", True), ("y", "double", True))
    new = _schema(("id", "int64", True), ("x", "double", True), ("y", "double", True), ("z", "bool", True))
    change = schema_change(parent, new)
    assert change.changed
    assert change.added == (FieldSpec(name="z", type="bool", nullable=True),)
    assert change.removed == (FieldSpec(name="gone", type="string", nullable=True),)
    assert change.type_changed == (TypeChange(name="x", old="int64", new="double"),)
    assert change.nullability_changed == (NullabilityChange(name="id", old=False, new=True),)
    assert "changed" not in change.model_dump()


def test_an_unchanged_schema_has_no_change_and_a_first_version_adds_everything() -> None:
    schema = _schema(("a", "int64", True), ("b", "string", True))
    assert not schema_change(schema, schema).changed
    assert schema_change(None, schema).added == schema.fields


def test_unify_reports_a_column_of_incompatible_types() -> None:
    unified, reason = unify([_schema(("a", "int64", True)), _schema(("a", "string", True))])
    assert unified is None
    assert reason == "column 'a' is int64 in one file and string in another"


def test_unify_promotes_numbers_and_fills_the_gaps_in_first_seen_order() -> None:
    unified, reason = unify(
        [
            _schema(("id", "int32", False), ("x", "int64", False), ("empty", "null", True)),
            _schema(("x", "double", False), ("id", "int64", False), ("c", "string", False), ("empty", "int64", True)),
            _schema(
                ("id", "int64", False),
                ("x", "float", False),
                ("c", "dictionary<values=string, indices=int8, ordered=0>", False),
            ),
        ]
    )
    assert reason is None and unified is not None
    assert [(f.name, f.type, f.nullable) for f in unified.fields] == [
        ("id", "int64", False),
        ("x", "double", False),
        ("empty", "int64", True),
        ("c", "string", True),  # missing from the first file
    ]


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("int8", "uint8", "int16"),
        ("uint32", "int64", "int64"),
        ("uint64", "int64", None),
        ("uint16", "uint64", "uint64"),
        ("float", "halffloat", "float"),
        ("string", "large_string", "large_string"),
        ("timestamp[ms]", "timestamp[us]", "timestamp[us]"),
        ("timestamp[ms, tz=UTC]", "timestamp[s]", None),
        ("decimal128(10, 2)", "double", "double"),
        ("null", "date32[day]", "date32[day]"),
    ],
)
def test_type_promotion(a: str, b: str, expected: str | None) -> None:
    assert promote_types(a, b) == promote_types(b, a) == expected


def test_unify_of_nothing_is_nothing() -> None:
    assert unify([]) == (None, None)


def test_csv_types_are_pyarrows_inference(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("d,t,n,s\n2024-01-02,2024-01-02T03:04:05,,x\n")
    schema, _ = profile_file(str(path), "csv")
    assert [f.type for f in schema.fields] == ["date32[day]", "timestamp[s]", "null", "string"]
    assert pa_csv.read_csv(path).schema.types == [pa.date32(), pa.timestamp("s"), pa.null(), pa.string()]
