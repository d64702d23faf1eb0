"""Validate a dataset version's table against a Great Expectations 1.x suite.

A dataset names a suite file in GX 1.x's own JSON, the form ``ExpectationSuite.to_json_dict()``
writes::

    {"name": "sales", "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "order_id"}, "meta": {}}
    ], "meta": {}}

(``id``, ``notes``, ``suite_parameters`` and each expectation's ``id``, ``severity``, ``notes``,
``description``, ``rendered_content`` are accepted as GX writes them.) ``load_suite`` checks the
file against GX when the daemon starts, so a typo is a ``SuiteError`` naming the file and the
expectation, not a failure at the first version. ``validate_table`` runs it on a ``pyarrow.Table``.

GX takes ~3 s to import, so it is imported only inside functions here: commands that never
validate (``--help``, ``status``) do not pay for it. One ephemeral GX context per process, with
progress bars off, is created at the first validation and reused, as are the GX objects built for
each suite; validations are serialised by a lock because the context is not thread-safe.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from daemon.errors import SuiteError
from daemon.fingerprint import hash_bytes
from schemas.validation import MAX_PARTIAL_UNEXPECTED, ExpectationOutcome, ValidationResult

if TYPE_CHECKING:
    import pyarrow as pa
    from pydantic import JsonValue

__all__ = ["ExpectationSpec", "Suite", "load_suite", "validate_table"]

log = logging.getLogger(__name__)

# GX's own result format: BASIC carries observed values, unexpected counts and the first
# offending values, without SUMMARY's per-value counts and row indexes, which we do not report.
_RESULT_FORMAT: Final = {"result_format": "BASIC", "partial_unexpected_count": MAX_PARTIAL_UNEXPECTED}

# Our copy of each expectation carries its position in the suite under this meta key, so that
# results (which GX returns in its own order) map back to the suite's order.
_INDEX_KEY: Final = "strandline_index"

# Column-domain kwargs that must name a column of the table. Table-level expectations and
# expect_column_to_exist take column names as the thing they test, so they are not pre-checked.
_COLUMN_KWARGS: Final = ("column", "column_A", "column_B", "column_list")
_TESTS_COLUMN_NAMES: Final = frozenset({"expect_column_to_exist"})


@dataclass(frozen=True, slots=True)
class ExpectationSpec:
    """One expectation as the suite file states it (GX checked it when the suite was loaded)."""

    type: str
    kwargs: Mapping[str, Any]
    meta: Mapping[str, Any]

    @property
    def column(self) -> str | None:
        """The column a single-column expectation is about, else ``None``."""
        column = self.kwargs.get("column")
        return column if isinstance(column, str) else None

    def columns(self) -> list[str]:
        """The table columns this expectation is about, in kwargs order.

        Empty for table-level expectations and expect_column_to_exist, whose subject is the
        table's set of column names rather than the values of some columns.
        """
        if self.type.startswith("expect_table_") or self.type in _TESTS_COLUMN_NAMES:
            return []
        names: list[str] = []
        for key in _COLUMN_KWARGS:
            value = self.kwargs.get(key)
            if isinstance(value, str):
                names.append(value)
            elif isinstance(value, list):
                names.extend(v for v in value if isinstance(v, str))
        return names


@dataclass(frozen=True, slots=True)
class Suite:
    """A loaded, checked suite. Plain values: no GX object is needed to hold or compare one."""

    path: Path
    name: str
    expectations: tuple[ExpectationSpec, ...]
    digest: str
    """XXH3-128 of the suite's canonical JSON: the key of the GX objects cached for it."""


def load_suite(path: Path) -> Suite:
    """Read a GX 1.x suite file and check every expectation against GX.

    Raises ``SuiteError`` naming the file and what is wrong: unreadable, not JSON, not the GX 1.x
    layout, an unknown expectation type, or kwargs the expectation does not accept.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SuiteError(f"suite file {path}: cannot be read ({reason}); check the dataset's suite path") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SuiteError(
            f"suite file {path}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    with _quiet_gx():
        return _suite_from_document(path, document)


def _suite_error(path: Path, what: str) -> SuiteError:
    return SuiteError(f"suite file {path}: {what}")


def _suite_from_document(path: Path, document: Any) -> Suite:
    def fail(what: str) -> SuiteError:
        return _suite_error(path, what)

    if not isinstance(document, dict):
        raise fail(f'a GX suite is a JSON object with "name" and "expectations", not a {type(document).__name__}')
    if "expectation_suite_name" in document or any(
        isinstance(e, dict) and "expectation_type" in e for e in document.get("expectations") or []
    ):
        raise fail(
            'this is a GX 0.x suite ("expectation_suite_name", "expectation_type"); '
            'GX 1.x names them "name" and "type": re-save the suite with GX 1.x'
        )
    name = document.get("name")
    if not isinstance(name, str) or not name.strip():
        raise fail('"name" must be a non-empty string')
    if not isinstance(document.get("expectations"), list) or not document["expectations"]:
        raise fail('"expectations" must be a non-empty list of {"type": ..., "kwargs": {...}} objects')

    for index, item in enumerate(document["expectations"]):
        # GX's schema would raise a bare TypeError for these; say which entry is wrong instead.
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise fail(f'expectations[{index}] must be an object with a "type" string')
        if not isinstance(item.get("kwargs"), dict):
            raise fail(f'expectations[{index}] ({item["type"]}): "kwargs" must be an object')

    from great_expectations.core.expectation_suite import ExpectationSuiteSchema
    from great_expectations.exceptions.exceptions import GreatExpectationsError
    from marshmallow import ValidationError as MarshmallowError

    try:
        # GX's own schema for the file layout: unknown keys, wrong field types.
        loaded = ExpectationSuiteSchema().load(document)
    except MarshmallowError as exc:
        raise fail(f"not a GX 1.x suite: {_marshmallow_message(exc.messages)}") from exc
    except (GreatExpectationsError, ValueError, TypeError) as exc:
        raise fail(f"not a GX 1.x suite: {exc}") from exc

    specs: list[ExpectationSpec] = []
    for index, config in enumerate(loaded["expectations"]):
        where = f"expectations[{index}] ({config.type})"
        kwargs = dict(config.kwargs)
        _check_expectation(path, where, config)
        spec = ExpectationSpec(type=config.type, kwargs=kwargs, meta=dict(config.meta or {}))
        for earlier, other in enumerate(specs):
            if (other.type, dict(other.kwargs)) == (spec.type, kwargs):
                # GX treats a suite as a set and would silently drop the repeat.
                raise fail(f"{where} repeats expectations[{earlier}]")
        specs.append(spec)

    canonical = json.dumps(
        [name, [[s.type, s.kwargs] for s in specs]], sort_keys=True, separators=(",", ":"), default=str
    )
    return Suite(path=path, name=name, expectations=tuple(specs), digest=hash_bytes(canonical.encode()))


def _check_expectation(path: Path, where: str, config: Any) -> None:
    """Build the GX expectation once, which validates the type and its kwargs."""
    from great_expectations.exceptions.exceptions import ExpectationNotFoundError, GreatExpectationsError

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            config.to_domain_obj()
    except ExpectationNotFoundError as exc:
        raise _suite_error(path, f"{where}: unknown expectation type {config.type!r}") from exc
    except (GreatExpectationsError, ValueError, TypeError) as exc:
        # GX expectations are pydantic v1 models; their ValidationError is a ValueError.
        raise _suite_error(path, f"{where}: invalid kwargs: {_pydantic_v1_message(exc, config.kwargs)}") from exc
    # What GX warns about while building an expectation (a deprecated kwarg) is the suite
    # author's to fix: say so once, at start, naming the file and the expectation.
    for warning in dict.fromkeys(str(w.message) for w in caught):
        log.warning("suite file %s: %s: %s", path, where, warning)


def _marshmallow_message(messages: Any, prefix: str = "") -> str:
    """Flatten marshmallow's nested error dict into ``expectations[0].bogus: Unknown field.``."""
    if isinstance(messages, dict):
        parts = []
        for key, value in messages.items():
            here = f"{prefix}[{key}]" if isinstance(key, int) else (f"{prefix}.{key}" if prefix else str(key))
            parts.append(_marshmallow_message(value, here))
        return "; ".join(parts)
    if isinstance(messages, list):
        return f"{prefix}: {' '.join(str(m) for m in messages)}" if prefix else " ".join(map(str, messages))
    return f"{prefix}: {messages}" if prefix else str(messages)


def _pydantic_v1_message(exc: Exception, kwargs: Mapping[str, Any]) -> str:
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    by_field: dict[str, list[str]] = {}
    for error in errors():
        loc = error.get("loc", ())
        field = ".".join(str(part) for part in loc) or "kwargs"
        if len(loc) == 1 and loc[0] in kwargs:
            field = f"{field}={kwargs[loc[0]]!r}"
        message = "unexpected argument" if error.get("type") == "value_error.extra" else error.get("msg", "")
        if message not in by_field.setdefault(field, []):
            by_field[field].append(message)
    # A union-typed kwarg (max_value: float | date | ...) reports one error per member: keep them on one line.
    return "; ".join(f"{field}: {' or '.join(messages)}" for field, messages in by_field.items())


@contextmanager
def _quiet_gx() -> Iterator[None]:
    """Silence warnings while GX runs: its import-time deprecations, pandas' and numpy's about how
    GX calls them (attributed to GX, pydantic or numpy frames alike).

    None is actionable for a version, and each would be printed on stderr for every version (or
    raised, under ``-W error``); what a suite author can act on is logged by ``load_suite``.
    ``catch_warnings`` swaps the process-wide filter list, so this is held only around GX calls.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class _Engine:
    """The process's one ephemeral GX context with a pandas data source, and the suites built for it."""

    def __init__(self) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )
        from great_expectations.execution_engine import pandas_execution_engine

        # GX md5-hashes every DataFrame under HASH_THRESHOLD bytes (twice per validation) for a
        # batch marker we never read: 0.45 s of a 0.65 s validation of 1M rows x 20 columns.
        # Strandline already fingerprints the files. Setting the threshold to 0 skips only that.
        if hasattr(pandas_execution_engine, "HASH_THRESHOLD"):
            pandas_execution_engine.HASH_THRESHOLD = 0
        _skip_decimal_scan_of_numeric_columns()

        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            # The supported switch for GX's tqdm bars (metric resolution prints one per validation).
            progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
            # GX 1.24 ships no analytics client (no great_expectations.analytics, no posthog); the
            # documented switch is set anyway so that a GX that brings it back stays silent.
            analytics_enabled=False,
        )
        self.context = gx.get_context(mode="ephemeral", project_config=config)
        source = self.context.data_sources.add_pandas("strandline")
        self.batch_definition = source.add_dataframe_asset("table").add_batch_definition_whole_dataframe("whole")
        self.execution_engine = source.get_execution_engine()
        self._suites: dict[tuple[str, tuple[int, ...]], Any] = {}

    def gx_suite(self, suite: Suite, indexes: tuple[int, ...]) -> Any:
        """The GX ExpectationSuite of ``suite``'s expectations at ``indexes``, built once."""
        key = (suite.digest, indexes)
        cached = self._suites.get(key)
        if cached is None:
            import great_expectations as gx
            from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

            expectations = [
                ExpectationConfiguration(
                    type=suite.expectations[i].type,
                    kwargs=dict(suite.expectations[i].kwargs),
                    meta={**suite.expectations[i].meta, _INDEX_KEY: i},
                ).to_domain_obj()
                for i in indexes
            ]
            cached = gx.ExpectationSuite(name=suite.name, expectations=expectations)
            self._suites[key] = cached
        return cached

    def validate(self, gx_suite: Any, frame: Any) -> list[Any]:
        batch = self.batch_definition.get_batch(batch_parameters={"dataframe": frame})
        try:
            return list(batch.validate(gx_suite, result_format=_RESULT_FORMAT).results)
        finally:
            # GX keeps the last batch (the whole DataFrame) until the next one: let it go now.
            self.execution_engine.batch_manager.reset_batch_cache()


def _skip_decimal_scan_of_numeric_columns() -> None:
    """Let GX's mean, sum and stdev skip their Decimal scan on columns that cannot hold a Decimal.

    Before every mean/sum/stdev GX tests each value with ``isinstance(v, Decimal)`` in a Python
    loop: 0.12 s per million rows, more than the statistic. Only an object array can hold a
    Decimal, so for numeric arrays the answer is known; object arrays keep GX's own scan.
    """
    from great_expectations import util as gx_util

    scan = getattr(gx_util, "does_ndarray_contain_decimal_dtype", None)
    if scan is None or getattr(scan, "_strandline", False):
        return

    def contains_decimal(data: Any) -> bool:
        kind = getattr(getattr(data, "dtype", None), "kind", "O")  # "O": object, or not an array at all
        return kind == "O" and bool(scan(data))

    contains_decimal._strandline = True  # type: ignore[attr-defined]
    gx_util.does_ndarray_contain_decimal_dtype = contains_decimal  # type: ignore[assignment]


_engine: _Engine | None = None
_engine_lock = threading.Lock()


def validate_table(suite: Suite, table: pa.Table) -> ValidationResult:
    """Run ``suite`` on ``table``; every expectation gets an outcome, in the suite's order.

    An expectation about a column the table lacks, or one GX cannot evaluate (a type clash), is a
    failed outcome with ``error`` set, not an exception.
    """
    global _engine

    present = set(table.column_names)
    outcomes: dict[int, ExpectationOutcome] = {}
    runnable: list[int] = []
    for index, spec in enumerate(suite.expectations):
        missing = [c for c in spec.columns() if c not in present]
        if missing:
            error = f"column {', '.join(map(repr, missing))} is not in the table ({_column_list(table.column_names)})"
            outcomes[index] = _outcome(spec, success=False, error=error)
        else:
            runnable.append(index)

    if runnable:
        try:
            frame = _to_frame(_columns_for(suite, table))
            with _engine_lock, _quiet_gx():
                if _engine is None:
                    _engine = _Engine()
                gx_suite = _engine.gx_suite(suite, tuple(runnable))
                results = _engine.validate(gx_suite, frame)
        except Exception as exc:
            # GX reports what one expectation raises in its result; this is the rest (a table
            # pandas or GX cannot take at all). The version still gets a verdict, not a crash.
            log.warning("suite %s could not run on the table: %s", suite.path, exc, exc_info=True)
            results = []
            error = f"the suite could not run on this table: {type(exc).__name__}: {exc}"
            for index in runnable:
                outcomes[index] = _outcome(suite.expectations[index], success=False, error=error)
        for result in results:
            index = int(result.expectation_config.meta[_INDEX_KEY])
            outcomes[index] = _outcome_from_gx(suite.expectations[index], result)

    ordered = [
        outcomes.get(i) or _outcome(spec, success=False, error="Great Expectations returned no result for it")
        for i, spec in enumerate(suite.expectations)
    ]
    failed = sum(not o.success for o in ordered)
    return ValidationResult(
        suite=suite.name, success=failed == 0, evaluated=len(ordered), failed=failed, outcomes=ordered
    )


def _columns_for(suite: Suite, table: pa.Table) -> pa.Table:
    """The part of ``table`` the suite reads: only its columns when every expectation names them.

    GX's per-row expectations drop null rows with a boolean mask over the whole DataFrame, so
    each one copies every column: 0.07 s per expectation on 1M rows x 20 columns when 2 would
    do. Table-level expectations (row count, column set), expect_column_to_exist and any
    ``row_condition`` (a pandas query on other columns) need the whole table.
    """
    wanted: set[str] = set()
    for spec in suite.expectations:
        columns = spec.columns()
        if not columns or spec.kwargs.get("row_condition"):
            return table
        wanted.update(columns)
    if len(wanted) >= table.num_columns:
        return table
    return table.select([name for name in table.column_names if name in wanted])


def _to_frame(table: pa.Table) -> Any:
    """The table as the pandas DataFrame GX validates.

    Decimal columns become float64: pandas has no decimal dtype, and a column of ``Decimal``
    objects breaks GX's mean, sum and stdev as soon as it holds a null, and is slow everywhere.
    float64 keeps 15 significant digits, plenty for the ranges and statistics a suite checks.
    """
    import pyarrow as pa

    for index, field in enumerate(table.schema):
        if pa.types.is_decimal(field.type):
            as_float = field.with_type(pa.float64())
            table = table.set_column(index, as_float, table.column(index).cast(pa.float64()))
    # split_blocks: one block per column, so pandas does not copy them into 2-D blocks.
    return table.to_pandas(split_blocks=True)


def _column_list(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"its columns: {shown}{more}" if names else "it has no columns"


def _outcome(spec: ExpectationSpec, **fields: Any) -> ExpectationOutcome:
    return ExpectationOutcome(expectation=spec.type, column=spec.column, kwargs=_json_safe(dict(spec.kwargs)), **fields)


def _outcome_from_gx(spec: ExpectationSpec, result: Any) -> ExpectationOutcome:
    details: Mapping[str, Any] = result.result or {}
    error = _exception_message(result.exception_info)
    unexpected_count = details.get("unexpected_count")
    unexpected_percent = _json_safe(details.get("unexpected_percent"))
    return _outcome(
        spec,
        success=bool(result.success) and error is None,
        observed_value=_json_safe(details.get("observed_value")),
        unexpected_count=None if unexpected_count is None else int(unexpected_count),
        unexpected_percent=unexpected_percent if isinstance(unexpected_percent, float | int) else None,
        partial_unexpected=_json_safe(list(details.get("partial_unexpected_list") or [])[:MAX_PARTIAL_UNEXPECTED]),
        error=error,
    )


def _exception_message(info: Any) -> str | None:
    """GX reports a raised expectation flat, or (for a failed metric) keyed by metric id."""
    if not isinstance(info, Mapping):
        return None
    if "raised_exception" in info:
        if not info.get("raised_exception"):
            return None
        return str(info.get("exception_message") or "the expectation raised an error")
    messages = [m for m in (_exception_message(v) for v in info.values()) if m]
    return "; ".join(dict.fromkeys(messages)) or None


def _json_safe(value: Any) -> JsonValue:
    """Plain JSON: numpy scalars become Python, NaN/NaT/NA None, timestamps ISO 8601 strings."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v) for v in value]
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, bytes):
        return value.hex()
    import numpy as np

    if isinstance(value, np.datetime64 | np.timedelta64):
        if np.isnat(value):
            return None
        # .item() of a nanosecond datetime64 is an int: go through microseconds to get a datetime.
        return _json_safe(
            value.astype("datetime64[us]" if isinstance(value, np.datetime64) else "timedelta64[us]").item()
        )
    if isinstance(value, np.generic | np.ndarray):
        return _json_safe(value.tolist())
    # pandas' missing values, by name: NaT is a datetime and NA has no truth value, so test them first.
    if type(value).__name__ in ("NaTType", "NAType"):
        return None
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        isoformat = getattr(value, "isoformat", None)  # pandas.Timedelta has one, datetime.timedelta not
        return str(isoformat()) if callable(isoformat) else value.total_seconds()
    tolist = getattr(value, "tolist", None)  # pandas Series, Index, extension arrays
    if callable(tolist):
        return _json_safe(tolist())
    return str(value)
