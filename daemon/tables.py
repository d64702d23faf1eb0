"""Reading table files with pyarrow, in bounded memory, every failure as ``UnreadableTableError``.

The I/O edge of profiling: ``open_table`` yields record batches of at most ``batch_rows`` rows
from Parquet row groups, CSV and JSON Lines blocks, Arrow IPC record batches or ORC stripes;
``profile_file`` feeds them to ``daemon.profile.Profiler``. A file is never read whole except by
``read_table``, which is for small files (validation).

Errors: a file that vanished or may not be read raises ``UnreadableDataError``; bytes that are
not a table of their format raise ``UnreadableTableError`` with a short reason for the log and
the event ("corrupt Parquet: ...", "CSV row 17 has 3 columns, expected 2", "empty file").
pyarrow's and the OS's exceptions never get past this module.

CSV and JSON Lines types are inferred from the first block. When a later block does not fit
(a float after integers, a new JSON field), ``profile_file`` and ``read_table`` read the file
again with the wider types; ``TableReader.batches`` alone raises ``UnreadableTableError``.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import queue
import re
import stat
import threading
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import closing, contextmanager
from types import TracebackType
from typing import Final, Literal, TypeVar, get_args

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.orc as pa_orc
import pyarrow.parquet as pq

from daemon.errors import UnreadableDataError, UnreadableTableError, VanishedError
from daemon.profile import Profiler
from daemon.tableschema import table_schema
from schemas.profiles import TableProfile, TableSchema

__all__ = [
    "BATCH_ROWS",
    "FORMATS",
    "Format",
    "TableReader",
    "detect_format",
    "open_table",
    "profile_file",
    "read_table",
]

Format = Literal["parquet", "csv", "jsonl", "arrow", "orc"]
FORMATS: Final[tuple[Format, ...]] = get_args(Format)

# Matched case-insensitively against the end of the name. ``.gz`` means gzip-compressed text.
_SUFFIXES: Final[tuple[tuple[str, Format], ...]] = (
    (".parquet", "parquet"),
    (".pq", "parquet"),
    (".csv", "csv"),
    (".csv.gz", "csv"),
    (".tsv", "csv"),
    (".tsv.gz", "csv"),
    (".jsonl", "jsonl"),
    (".jsonl.gz", "jsonl"),
    (".ndjson", "jsonl"),
    (".ndjson.gz", "jsonl"),
    (".arrow", "arrow"),
    (".arrows", "arrow"),
    (".feather", "arrow"),
    (".ipc", "arrow"),
    (".orc", "orc"),
)

_ALL_SUFFIXES: Final = tuple(suffix for suffix, _fmt in _SUFFIXES)

BATCH_ROWS: Final = 131_072
# Text formats infer their types from the first block, so a bigger block guesses better; 4 MiB
# keeps a block's table well under the memory of a Parquet row group.
_TEXT_BLOCK: Final = 4 << 20
# Parquet column chunks are read through a buffer of this size per column instead of whole
# (pre-buffering reads a row group at once). 1 MiB: with 8 MiB, 20 columns of a 1 Mi-row row
# group doubled Arrow's peak memory (193 MiB against 92 MiB) and read no faster.
_PARQUET_BUFFER: Final = 1 << 20
# Finding the line of a CSV or JSON error re-reads the file in Python; past this many lines we
# give pyarrow's message as it is rather than spend minutes on a bad file.
_SCAN_LINES: Final = 2_000_000

T = TypeVar("T")


def detect_format(path: str, override: Format | None = None) -> Format | None:
    """The table format of ``path`` from its extension (``override`` wins); None if not a table."""
    if override is not None:
        return override
    name = path.lower()
    if not name.endswith(_ALL_SUFFIXES):  # one C call for the many files that are not tables
        return None
    return next((fmt for suffix, fmt in _SUFFIXES if name.endswith(suffix)), None)


class TableReader:
    """An open table file: ``schema`` at once, then ``batches()``. A context manager; read once."""

    schema: pa.Schema

    def __init__(self, path: str, fmt: Format, batch_rows: int) -> None:
        if batch_rows < 1:
            raise ValueError("batch_rows must be at least 1")
        self.path = path
        self.format = fmt
        self.batch_rows = batch_rows
        self._closers: list[Callable[[], object]] = []

    def __enter__(self) -> TableReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the file; idempotent."""
        while self._closers:
            self._closers.pop()()

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The record batches of the file, each of at most ``batch_rows`` rows, none empty."""
        source = self._batches()
        while True:
            with self._translating():
                batch = next(source, None)
                if batch is not None and not batch.schema.equals(self.schema):
                    batch = batch.cast(self.schema)
            if batch is None:
                return
            for start in range(0, batch.num_rows, self.batch_rows):
                yield batch.slice(start, self.batch_rows)

    # -- for the formats ----------------------------------------------------------------------

    def _open(self) -> None:
        """Open the file and set ``schema``."""
        raise NotImplementedError

    def _batches(self) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError

    def _reason(self, exc: Exception) -> UnreadableTableError:
        """Our error for a pyarrow or decoder exception raised while reading."""
        return UnreadableTableError(f"corrupt {_FORMAT_NAMES[self.format]}: {_first_line(exc)}")

    @contextmanager
    def _translating(self) -> Iterator[None]:
        try:
            yield
        except UnreadableDataError:
            raise
        except FileNotFoundError as exc:
            raise VanishedError("the file vanished before it could be read") from exc
        except PermissionError as exc:
            raise UnreadableDataError("permission denied: give the daemon's user read access") from exc
        except (IsADirectoryError, NotADirectoryError) as exc:
            raise UnreadableDataError("not a regular file") from exc
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ValueError, KeyError, ...
            raise self._reason(exc) from exc

    def _start(self) -> None:
        with self._translating():
            st = os.stat(self.path)
            if not stat.S_ISREG(st.st_mode):
                raise UnreadableDataError("not a regular file")
            if st.st_size == 0:
                raise UnreadableTableError("empty file")
            self._open()
        names = self.schema.names
        if len(set(names)) != len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise UnreadableTableError(f"column {twice!r} appears more than once")


_FORMAT_NAMES: Final[dict[Format, str]] = {
    "parquet": "Parquet",
    "csv": "CSV",
    "jsonl": "JSON Lines",
    "arrow": "Arrow IPC",
    "orc": "ORC",
}


class _ParquetReader(TableReader):
    def _open(self) -> None:
        self._file = pq.ParquetFile(self.path, memory_map=False, buffer_size=_PARQUET_BUFFER, pre_buffer=False)
        self._closers.append(self._file.close)
        self.schema = self._file.schema_arrow

    def _batches(self) -> Iterator[pa.RecordBatch]:
        return iter(self._file.iter_batches(batch_size=self.batch_rows, use_threads=True))


class _IpcReader(TableReader):
    def _open(self) -> None:
        # Not memory-mapped: a mapped file's pages count in our RSS as the batches are touched.
        self._file = pa.OSFile(self.path)
        self._closers.append(self._file.close)
        try:
            reader = pa.ipc.open_file(self._file)
        except pa.ArrowInvalid as as_file:
            self._file.seek(0)
            try:
                stream = pa.ipc.open_stream(self._file)
            except Exception as exc:
                raise UnreadableTableError(
                    f"not an Arrow IPC file or stream: {_first_line(as_file)}; {_first_line(exc)}"
                ) from exc
            self.schema = stream.schema
            self._source: Iterator[pa.RecordBatch] = iter(stream)
            return
        self.schema = reader.schema
        self._source = (reader.get_batch(i) for i in range(reader.num_record_batches))

    def _batches(self) -> Iterator[pa.RecordBatch]:
        return self._source


class _OrcReader(TableReader):
    def _open(self) -> None:
        self._file = pa.OSFile(self.path)
        self._closers.append(self._file.close)
        self._orc = pa_orc.ORCFile(self._file)
        self.schema = self._orc.schema

    def _batches(self) -> Iterator[pa.RecordBatch]:
        return (self._orc.read_stripe(i) for i in range(self._orc.nstripes))


class _TypeDrift(UnreadableTableError):
    """A later block does not fit the types inferred from the first: read again with these types.

    ``column_types`` None means: find the types by reading the whole file first (JSON Lines).
    """

    def __init__(self, message: str, column_types: dict[str, pa.DataType] | None) -> None:
        super().__init__(message)
        self.column_types = column_types


class _TextReader(TableReader):
    """CSV and JSON Lines: gzip by the ``.gz`` extension, types inferred unless given."""

    def __init__(self, path: str, fmt: Format, batch_rows: int, column_types: Mapping[str, pa.DataType] | None) -> None:
        super().__init__(path, fmt, batch_rows)
        self.gzipped = path.lower().endswith(".gz")
        self.column_types = dict(column_types or {})
        # Whether a type drift asks for another read (only before the types were fixed once).
        self.may_retry = not self.column_types

    def _input(self) -> pa.NativeFile:
        stream = pa.input_stream(self.path, compression="gzip" if self.gzipped else None, buffer_size=1 << 20)
        self._closers.append(stream.close)
        return stream

    def _text(self) -> io.BufferedIOBase:
        """The file's bytes (decompressed), for the Python scans that find an error's line."""
        return gzip.GzipFile(self.path, "rb") if self.gzipped else open(self.path, "rb")

    def _reason(self, exc: Exception) -> UnreadableTableError:
        message = _first_line(exc)
        if self.gzipped and isinstance(exc, OSError) and not isinstance(exc, pa.ArrowException):
            return UnreadableTableError(f"corrupt gzip: {message}")
        if self.gzipped and ("zlib" in message or "gzip" in message.lower()):
            return UnreadableTableError(f"corrupt gzip: {message}")
        return self._text_reason(exc, message)

    def _text_reason(self, exc: Exception, message: str) -> UnreadableTableError:
        raise NotImplementedError


_CSV_RAGGED = re.compile(r"Expected (\d+) columns, got (\d+)")
_CSV_CONVERSION = re.compile(r"In CSV column #(\d+): CSV conversion error to ([^:]+): invalid value '(.*)'")
_CSV_COLUMN = re.compile(r"In CSV column #(\d+)")


class _CsvReader(_TextReader):
    def __init__(
        self,
        path: str,
        batch_rows: int,
        delimiter: str | None,
        column_types: Mapping[str, pa.DataType] | None,
    ) -> None:
        super().__init__(path, "csv", batch_rows, column_types)
        name = path.lower().removesuffix(".gz")
        self.delimiter = delimiter or ("\t" if name.endswith(".tsv") else ",")

    def _open(self) -> None:
        self._reader = pa_csv.open_csv(
            self._input(),
            read_options=pa_csv.ReadOptions(block_size=_TEXT_BLOCK),
            # Quoted values may hold newlines in real CSVs; a ragged row is an error (the default).
            parse_options=pa_csv.ParseOptions(delimiter=self.delimiter, newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(column_types=self.column_types),
        )
        self.schema = self._reader.schema
        for field in self.schema:
            # pyarrow infers `binary` for a column that is not valid UTF-8, rather than failing.
            if pa.types.is_binary(field.type) and field.name not in self.column_types:
                raise UnreadableTableError(f"CSV is not valid UTF-8 (column {field.name!r}): save it as UTF-8")

    def _batches(self) -> Iterator[pa.RecordBatch]:
        return iter(self._reader)

    def _text_reason(self, exc: Exception, message: str) -> UnreadableTableError:
        if message == "Empty CSV file":
            return UnreadableTableError("empty file")
        if ragged := _CSV_RAGGED.search(message):
            expected, got = int(ragged.group(1)), int(ragged.group(2))
            row = self._ragged_row(expected)
            if row is None:
                text = message.split(": ", 2)[-1][:60]
                return UnreadableTableError(f"CSV has a row of {got} columns, expected {expected}: {text!r}")
            return UnreadableTableError(f"CSV row {row} has {got} columns, expected {expected}")
        column = _CSV_COLUMN.search(message)
        name = self._column_name(int(column.group(1))) if column else "?"
        if "invalid UTF8" in message:
            return UnreadableTableError(f"CSV is not valid UTF-8 (column {name!r}): save it as UTF-8")
        if conversion := _CSV_CONVERSION.search(message):
            wider = _wider_csv_type(conversion.group(2), conversion.group(3))
            return _TypeDrift(
                f"CSV column {name!r} has {conversion.group(3)[:40]!r} after rows of {conversion.group(2)}",
                {**self.column_types, name: wider},
            )
        return UnreadableTableError(f"bad CSV: {message}")

    def _column_name(self, index: int) -> str:
        schema = getattr(self, "schema", None)
        return schema.field(index).name if schema is not None and index < len(schema) else f"#{index}"

    def _ragged_row(self, expected: int) -> int | None:
        """The line number (the header is line 1) of the first row without ``expected`` columns."""
        with self._text() as raw:
            # Lines keep their line ends, so csv joins a quoted value's lines as pyarrow does.
            reader = csv.reader((line.decode("utf-8", "replace") for line in raw), delimiter=self.delimiter)
            for row in reader:
                if reader.line_num > _SCAN_LINES:
                    return None
                if row and len(row) != expected:  # pyarrow skips empty lines, and so do we
                    return reader.line_num
        return None


def _wider_csv_type(inferred: str, value: str) -> pa.DataType:
    """A type that holds ``value`` as well as the values pyarrow inferred ``inferred`` from."""
    if inferred == "null" and re.fullmatch(r"[+-]?\d+", value.strip()):
        return pa.int64()
    if inferred in ("null", "int64") and _is_float(value):
        return pa.float64()
    return pa.string()


def _is_float(text: str) -> bool:
    try:
        float(text.replace("_", "!"))  # Python reads 1_000; pyarrow does not
    except ValueError:
        return False
    return True


class _JsonReader(_TextReader):
    def _open(self) -> None:
        explicit = pa.schema(list(self.column_types.items())) if self.column_types else None
        self._reader = pa_json.open_json(
            self._input(),
            read_options=pa_json.ReadOptions(block_size=_TEXT_BLOCK),
            parse_options=pa_json.ParseOptions(explicit_schema=explicit),
        )
        self.schema = self._reader.schema

    def _batches(self) -> Iterator[pa.RecordBatch]:
        return iter(self._reader)

    def _text_reason(self, exc: Exception, message: str) -> UnreadableTableError:
        if message == "Empty JSON stream":
            return UnreadableTableError("empty file")
        drift = "changed from" in message or "unexpected field" in message or "Failed to convert JSON" in message
        if drift and self.may_retry:
            return _TypeDrift(f"JSON Lines types change after the first block: {message}", None)
        bad = self._bad_line()
        if bad is not None:
            return UnreadableTableError(f"JSON Lines line {bad[0]} {bad[1]}")
        if changed := re.search(r"Column\((.*)\) changed from (\w+) to (\w+)", message):
            column, old, new = changed.groups()
            return UnreadableTableError(f"JSON Lines field {column.lstrip('/')!r} holds both {old} and {new} values")
        return UnreadableTableError(f"bad JSON Lines: {message}")

    def _bad_line(self) -> tuple[int, str] | None:
        """The first line that is not a JSON object, and what is wrong with it."""
        with self._text() as fh:
            for number, line in enumerate(fh, start=1):
                if number > _SCAN_LINES:
                    return None
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except UnicodeDecodeError:
                    return number, "is not valid UTF-8"
                except ValueError as exc:
                    return number, f"is not valid JSON ({getattr(exc, 'msg', exc)})"
                if not isinstance(value, dict):
                    return number, "is not a JSON object"
        return None


def _discover_json_types(path: str) -> dict[str, pa.DataType]:
    """The types of every field of a JSON Lines file, unified over all its blocks (a full read)."""
    reader = _JsonReader(path, "jsonl", BATCH_ROWS, None)
    reader.may_retry = False  # a drift inside one block is a real conflict, not a reason to read again
    schemas: list[pa.Schema] = []
    with reader._translating():
        stream = reader._input()
        try:
            rest = b""
            while True:
                block = stream.read(_TEXT_BLOCK)
                data = rest + block
                cut = data.rfind(b"\n") + 1 if block else len(data)
                chunk, rest = data[:cut], data[cut:]
                if chunk.strip():
                    # One block for the whole chunk: pyarrow then infers over all of its lines.
                    options = pa_json.ReadOptions(block_size=len(chunk) + 1, use_threads=False)
                    schemas.append(pa_json.read_json(pa.BufferReader(chunk), read_options=options).schema)
                if not block:
                    break
        finally:
            reader.close()
    try:
        unified = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        field = re.search(r"Field (\S+) has incompatible types: (.+?) vs (.+?)(?:$|:)", str(exc))
        if field:
            name, a, b = field.groups()
            raise UnreadableTableError(f"JSON Lines field {name!r} holds both {a} and {b} values") from exc
        raise UnreadableTableError(f"JSON Lines fields change type: {_first_line(exc)}") from exc
    return {f.name: f.type for f in unified}


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def open_table(
    path: str,
    fmt: Format,
    *,
    batch_rows: int = BATCH_ROWS,
    delimiter: str | None = None,
    column_types: Mapping[str, pa.DataType] | None = None,
) -> TableReader:
    """Open a table file for reading in batches; the schema is known on return.

    ``delimiter`` (CSV) defaults to a tab for ``.tsv`` and a comma otherwise. ``column_types``
    (CSV, JSON Lines) fixes the types of those columns instead of inferring them; for JSON Lines
    it must name every field. Raises ``UnreadableTableError`` (or ``UnreadableDataError``).
    """
    reader: TableReader
    if fmt == "parquet":
        reader = _ParquetReader(path, fmt, batch_rows)
    elif fmt == "csv":
        reader = _CsvReader(path, batch_rows, delimiter, column_types)
    elif fmt == "jsonl":
        reader = _JsonReader(path, fmt, batch_rows, column_types)
    elif fmt == "arrow":
        reader = _IpcReader(path, fmt, batch_rows)
    elif fmt == "orc":
        reader = _OrcReader(path, fmt, batch_rows)
    else:
        raise ValueError(f"unknown table format {fmt!r}; one of {', '.join(FORMATS)}")
    try:
        reader._start()
    except BaseException:
        reader.close()
        raise
    return reader


def _read_all(path: str, fmt: Format, consume: Callable[[TableReader], T], batch_rows: int, delimiter: str | None) -> T:
    """``consume`` an opened reader, reading again with wider types while a later block needs them."""
    column_types: dict[str, pa.DataType] | None = None
    attempts = 0
    while True:
        attempts += 1
        try:
            with open_table(path, fmt, batch_rows=batch_rows, delimiter=delimiter, column_types=column_types) as reader:
                return consume(reader)
        except _TypeDrift as drift:
            # Each retry widens one column (null, int64, double, string at most) or fixes every
            # JSON field at once, so this ends; the bound only guards against a pyarrow surprise.
            if attempts > 3 * max(len(column_types or {}), 1) + 8:
                raise UnreadableTableError(f"column types keep changing: {drift}") from drift
            column_types = drift.column_types if drift.column_types is not None else _discover_json_types(path)


_DONE: Final = object()


def _read_ahead(batches: Iterator[pa.RecordBatch], depth: int = 2) -> Generator[pa.RecordBatch, None, None]:
    """``batches``, read by a thread up to ``depth`` batches ahead of the consumer.

    pyarrow decodes without the GIL while the sketches update with it, so on two cores reading
    the next batch overlaps profiling this one (a quarter off the wall time of a Parquet file).
    Memory grows by ``depth`` batches. The reader's errors are raised here, in the consumer.
    """
    slots: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, which raises it
            put(exc)

    worker = threading.Thread(target=produce, name="strandline-read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()  # the consumer stopped early (or failed): let the thread end before the file closes
        worker.join()


def profile_file(
    path: str, fmt: Format, *, batch_rows: int = BATCH_ROWS, delimiter: str | None = None
) -> tuple[TableSchema, TableProfile]:
    """The schema and profile of a table file, read batch by batch in bounded memory."""

    def consume(reader: TableReader) -> tuple[TableSchema, TableProfile]:
        profiler = Profiler(reader.schema)
        # closing(): the read-ahead thread ends before the reader closes the file, even on an error.
        with closing(_read_ahead(reader.batches())) as batches:
            for batch in batches:
                profiler.add(batch)
        return table_schema(reader.schema), profiler.finish()

    return _read_all(path, fmt, consume, batch_rows, delimiter)


def read_table(path: str, fmt: Format, *, delimiter: str | None = None) -> pa.Table:
    """The whole table in memory: for small files (validation), not for profiling."""

    def consume(reader: TableReader) -> pa.Table:
        return pa.Table.from_batches(list(reader.batches()), schema=reader.schema)

    return _read_all(path, fmt, consume, BATCH_ROWS, delimiter)
