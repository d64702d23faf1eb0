"""Great Expectations overhead per version: ``daemon.validation.validate_table`` on 1M rows x 20 columns.

How it is measured
  * A seeded table of ``--rows`` (default 1,000,000) rows and 20 columns, as the daemon holds it
    after reading a version (a ``pyarrow.Table``): 10 float64 (normal, 1% nulls except f0),
    5 int64 (uniform 0..999), 5 categorical (dictionary-encoded strings, 5 regions).
  * A 5-expectation suite in GX 1.x JSON, written to a temp file and read with ``load_suite``:
    not-null (f0), values between (f1), values in set (c0), max between (i0), mean between (f2).
    It passes on the table, so every figure is the cost of a clean version.
  * GX import: ``import great_expectations`` in a fresh interpreter (what the daemon pays once,
    at start, when a dataset has a suite). ``load_suite``: in this process, GX imported by it.
  * First validation: the first ``validate_table``, which creates the ephemeral GX context.
  * Steady state: the median of ``--reps`` (default 5) further ``validate_table`` calls, each
    including the pyarrow -> pandas conversion; the conversion alone is timed the same way and
    given as a share. Each expectation alone (median of 3) shows where the time goes.
  * For reference: the same suite plus a table-level expectation (row count), with which GX is
    given all 20 columns rather than the 5 the suite names; and the steady state with GX's own
    per-batch DataFrame md5 re-enabled (``HASH_THRESHOLD``, which ``daemon.validation`` turns off).

Target: steady state <= 0.25 s per version (1M rows, 5 expectations).

Run: .venv/bin/python bench/validate.py [--rows 1000000] [--reps 5] [--json]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common as c

TARGET_SECONDS = 0.25
REGIONS = ["north", "south", "east", "west", "central"]

SUITE: list[dict[str, Any]] = [
    {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "f0"}},
    {"type": "expect_column_values_to_be_between", "kwargs": {"column": "f1", "min_value": -10, "max_value": 10}},
    {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "c0", "value_set": REGIONS}},
    {"type": "expect_column_max_to_be_between", "kwargs": {"column": "i0", "min_value": 0, "max_value": 1000}},
    {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "f2", "min_value": -1, "max_value": 1}},
]


# A table-level expectation: with one in the suite, GX gets every column, not just those named.
ROW_COUNT: dict[str, Any] = {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}}


def build_table(rows: int, seed: int) -> Any:
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {}
    for i in range(10):
        values = rng.normal(size=rows)
        mask = None if i == 0 else rng.random(rows) < 0.01
        columns[f"f{i}"] = pa.array(values, mask=mask)
    for i in range(5):
        columns[f"i{i}"] = pa.array(rng.integers(0, 1000, size=rows))
    dictionary = pa.array(REGIONS)
    for i in range(5):
        indices = pa.array(rng.integers(0, len(REGIONS), size=rows).astype("int8"))
        columns[f"c{i}"] = pa.DictionaryArray.from_arrays(indices, dictionary)
    return pa.table(columns)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def median_time(fn: Callable[[], Any], reps: int) -> float:
    return statistics.median(timed(fn)[0] for _ in range(reps))


def gx_import_seconds() -> float:
    code = "import time; t = time.perf_counter(); import great_expectations; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return float(out.stdout.strip().splitlines()[-1])


def write_suite(path: Path, expectations: list[dict[str, Any]], name: str = "bench") -> Path:
    path.write_text(json.dumps({"name": name, "expectations": expectations, "meta": {}}))
    return path


def main() -> None:
    p = c.parser(__doc__)
    p.add_argument("--rows", type=int, default=1_000_000, help="table rows (default 1000000)")
    p.add_argument("--reps", type=int, default=5, help="timed steady-state validations (default 5)")
    p.add_argument("--seed", type=int, default=7, help="random seed of the table (default 7)")
    args = p.parse_args()

    c.note("importing great_expectations in a fresh interpreter …")
    gx_import = gx_import_seconds()

    c.note(f"building a {args.rows:,} x 20 table …")
    table = build_table(args.rows, args.seed)

    from daemon.validation import _columns_for, load_suite, validate_table

    report = c.Report(
        "validate: GX 1.x suite on a pyarrow table (daemon.validation.validate_table)",
        {"rows": args.rows, "columns": table.num_columns, "expectations": len(SUITE), "reps": args.reps},
    )
    work = c.fresh_tempdir("validate")
    try:
        load_time, suite = timed(lambda: load_suite(write_suite(work / "suite.json", SUITE)))
        first_time, first = timed(lambda: validate_table(suite, table))
        if not first.success:
            failures = [(o.expectation, o.column, o.observed_value, o.error) for o in first.outcomes if not o.success]
            raise SystemExit(f"the bench suite should pass on its table: {failures}")
        c.note("steady state …")
        steady = median_time(lambda: validate_table(suite, table), args.reps)
        # What validate_table converts: the columns the suite reads (see daemon.validation._columns_for).
        read = _columns_for(suite, table)
        convert = median_time(lambda: read.to_pandas(split_blocks=True), args.reps)

        report.add("GX import (fresh interpreter)", gx_import, "s")
        report.add("load_suite (imports GX here)", load_time, "s")
        report.add("first validation (creates the context)", first_time, "s")
        report.add("steady state per version (median)", steady, "s", f"<= {TARGET_SECONDS:g}", steady <= TARGET_SECONDS)
        report.add(f"  of which pyarrow -> pandas ({read.num_columns} columns)", convert, "s")
        report.add("  pyarrow -> pandas share", 100 * convert / steady, "%")
        report.add("  per million rows", steady * 1e6 / args.rows, "s")

        for index, expectation in enumerate(SUITE):
            alone = load_suite(write_suite(work / f"alone-{index}.json", [expectation], name=f"alone-{index}"))
            validate_table(alone, table)  # builds its GX suite once
            seconds = median_time(lambda alone=alone: validate_table(alone, table), 3)
            column = expectation["kwargs"].get("column")
            report.add(f"  alone: {expectation['type']} ({column})", seconds, "s")

        whole = load_suite(write_suite(work / "whole.json", [*SUITE, ROW_COUNT], name="whole"))
        validate_table(whole, table)
        report.add(
            "reference: + a table-level expectation (all 20 columns)",
            median_time(lambda: validate_table(whole, table), 3),
            "s",
        )

        from great_expectations.execution_engine import pandas_execution_engine

        saved = pandas_execution_engine.HASH_THRESHOLD
        pandas_execution_engine.HASH_THRESHOLD = 1e9  # GX's default
        try:
            with_md5 = median_time(lambda: validate_table(suite, table), 3)
        finally:
            pandas_execution_engine.HASH_THRESHOLD = saved
        report.add("reference: with GX's per-batch md5 (default)", with_md5, "s")
    finally:
        c.remove_tree(work)
    report.emit(args.json)


if __name__ == "__main__":
    main()
