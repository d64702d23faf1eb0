"""Great Expectations suites on real files: written with pandas, read back with pyarrow, no mocks."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import warnings
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import pytest
import xxhash

from daemon import validation
from daemon.errors import ConfigError, SuiteError
from daemon.validation import Suite, load_suite, validate_table
from schemas.validation import ValidationResult

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def write_suite(path: Path, *expectations: dict[str, Any], name: str = "orders") -> Path:
    path.write_text(json.dumps({"name": name, "expectations": list(expectations), "meta": {}}))
    return path


def expect(type_: str, **kwargs: Any) -> dict[str, Any]:
    return {"type": type_, "kwargs": kwargs, "meta": {}}


@pytest.fixture
def orders(tmp_path: Path) -> pa.Table:
    """Four order lines as a parquet file, read back the way the daemon reads it."""
    frame = pd.DataFrame(
        {
            "order_id": ["O-1", "O-2", "O-3", "O-4"],
            "region": ["north", "south", "mars", None],
            "quantity": [1, 3, 5000, 2],
            "price": [1.5, float("nan"), 3.25, 4.0],
            "ordered_at": pd.to_datetime(
                ["2024-01-01T08:00:00Z", "2024-01-02T09:30:00Z", "2024-01-03T10:00:00Z", "2024-01-04T11:15:00Z"]
            ),
        }
    )
    path = tmp_path / "orders.parquet"
    frame.to_parquet(path, index=False)
    return pq.read_table(path)


def outcome_of(result: ValidationResult, expectation: str, column: str | None = None) -> Any:
    (found,) = [o for o in result.outcomes if o.expectation == expectation and o.column == column]
    return found


def test_a_suite_gx_itself_wrote_loads_and_passes_on_matching_data(tmp_path: Path, orders: pa.Table) -> None:
    with warnings.catch_warnings():
        # GX 1.24 imports the deprecated sre_constants; pytest here turns warnings into errors.
        warnings.simplefilter("ignore", DeprecationWarning)
        import great_expectations as gx

    written = gx.ExpectationSuite(
        name="orders",
        expectations=[
            gx.expectations.ExpectColumnValuesToNotBeNull(column="order_id"),
            gx.expectations.ExpectColumnValuesToBeUnique(column="order_id"),
            gx.expectations.ExpectTableRowCountToBeBetween(min_value=1, max_value=10),
        ],
    )
    path = tmp_path / "orders.json"
    path.write_text(json.dumps(written.to_json_dict()))

    suite = load_suite(path)
    result = validate_table(suite, orders)

    assert suite.name == "orders" and len(suite.expectations) == 3
    assert result.success and result.status == "valid"
    assert (result.evaluated, result.failed) == (3, 0)
    assert [o.expectation for o in result.outcomes] == [e["type"] for e in written.to_json_dict()["expectations"]]
    assert outcome_of(result, "expect_table_row_count_to_be_between").observed_value == 4


def test_a_failed_expectation_shows_what_was_observed(tmp_path: Path, orders: pa.Table) -> None:
    suite = load_suite(
        write_suite(
            tmp_path / "s.json",
            expect("expect_column_max_to_be_between", column="quantity", max_value=1000),
            expect("expect_column_values_to_not_be_null", column="order_id"),
        )
    )

    result = validate_table(suite, orders)

    assert not result.success and result.status == "invalid"
    assert (result.evaluated, result.failed) == (2, 1)
    failed = outcome_of(result, "expect_column_max_to_be_between", "quantity")
    assert failed.success is False and failed.error is None
    assert failed.observed_value == 5000 and type(failed.observed_value) is int
    assert failed.kwargs == {"column": "quantity", "max_value": 1000}
    assert outcome_of(result, "expect_column_values_to_not_be_null", "order_id").success


def test_per_row_expectations_list_the_offending_values(tmp_path: Path, orders: pa.Table) -> None:
    suite = load_suite(
        write_suite(
            tmp_path / "s.json",
            expect("expect_column_values_to_be_in_set", column="region", value_set=["north", "south", "east", "west"]),
            expect("expect_column_values_to_not_be_null", column="price"),
            expect("expect_column_values_to_not_be_null", column="region", mostly=0.7),
        )
    )

    result = validate_table(suite, orders)

    in_set = outcome_of(result, "expect_column_values_to_be_in_set", "region")
    assert not in_set.success
    assert in_set.partial_unexpected == ["mars"]  # the null is missing, not unexpected
    assert in_set.unexpected_count == 1
    not_null = outcome_of(result, "expect_column_values_to_not_be_null", "price")
    assert not not_null.success and not_null.unexpected_count == 1
    assert not_null.partial_unexpected == [None]  # NaN, made JSON-safe
    assert not_null.unexpected_percent == pytest.approx(25.0)
    assert outcome_of(result, "expect_column_values_to_not_be_null", "region").success  # 75% >= mostly
    assert result.failed == 2


def test_a_column_the_table_lacks_is_a_failed_outcome_not_an_exception(tmp_path: Path, orders: pa.Table) -> None:
    suite = load_suite(
        write_suite(
            tmp_path / "s.json",
            expect("expect_column_values_to_not_be_null", column="customer_id"),
            expect("expect_column_pair_values_to_be_equal", column_A="quantity", column_B="units"),
            expect("expect_column_to_exist", column="discount"),
            expect("expect_column_values_to_be_unique", column="order_id"),
        )
    )

    result = validate_table(suite, orders)

    assert (result.evaluated, result.failed) == (4, 3)
    missing = result.outcomes[0]
    assert not missing.success and missing.error is not None
    assert "'customer_id' is not in the table" in missing.error and "order_id" in missing.error
    assert "'units'" in (result.outcomes[1].error or "")
    # Its column missing is exactly what expect_column_to_exist tests: a plain failure from GX.
    assert not result.outcomes[2].success and result.outcomes[2].error is None
    assert result.outcomes[3].success


def test_an_expectation_gx_cannot_evaluate_is_a_failed_outcome_with_its_error(tmp_path: Path, orders: pa.Table) -> None:
    suite = load_suite(
        write_suite(
            tmp_path / "s.json",
            expect("expect_column_mean_to_be_between", column="ordered_at", min_value=0),
            expect("expect_column_values_to_be_unique", column="order_id"),
        )
    )

    result = validate_table(suite, orders)

    broken, fine = result.outcomes
    assert not broken.success and broken.error and "Timestamp" in broken.error
    assert fine.success and fine.error is None


def test_results_are_plain_json(tmp_path: Path, orders: pa.Table) -> None:
    suite = load_suite(
        write_suite(
            tmp_path / "s.json",
            expect("expect_column_max_to_be_between", column="ordered_at"),
            expect("expect_column_mean_to_be_between", column="price", min_value=0, max_value=10),
            expect("expect_column_values_to_not_be_null", column="price"),
        )
    )

    result = validate_table(suite, orders)
    document = json.loads(result.model_dump_json())

    assert document["outcomes"][0]["observed_value"] == "2024-01-04T11:15:00+00:00"
    assert document["outcomes"][1]["observed_value"] == pytest.approx((1.5 + 3.25 + 4.0) / 3)
    assert document["outcomes"][2]["partial_unexpected"] == [None]
    # Python's json writes NaN as a bare NaN token, which is not JSON: none must be left anywhere.
    json.dumps(result.model_dump(), allow_nan=False)
    assert ValidationResult.model_validate_json(result.model_dump_json()) == result


def test_decimal_columns_are_measured_as_numbers(tmp_path: Path) -> None:
    path = tmp_path / "amounts.parquet"
    amounts = pa.array([Decimal("1.50"), Decimal("2.25"), None, Decimal("384.00")], pa.decimal128(9, 2))
    pq.write_table(pa.table({"amount": amounts, "quantity": pa.array([1, 2, 3, 4], pa.int32())}), path)
    suite = load_suite(
        write_suite(
            tmp_path / "s.json",
            expect("expect_column_mean_to_be_between", column="amount", min_value=0, max_value=100),
            expect("expect_column_min_to_be_between", column="amount", min_value=0),
            expect("expect_column_sum_to_be_between", column="quantity", min_value=10, max_value=10),
        )
    )

    mean, minimum, total = validate_table(suite, pq.read_table(path)).outcomes

    assert not mean.success and mean.observed_value == pytest.approx((1.5 + 2.25 + 384.0) / 3)
    assert minimum.success and minimum.observed_value == 1.5
    assert total.success and total.observed_value == 10


def test_a_row_condition_may_read_columns_the_expectation_is_not_about(tmp_path: Path, orders: pa.Table) -> None:
    north_or_south = {
        "type": "or",
        "conditions": [
            {"type": "comparison", "column": {"name": "region"}, "operator": "==", "parameter": "north"},
            {"type": "comparison", "column": {"name": "region"}, "operator": "==", "parameter": "south"},
        ],
    }
    suite = load_suite(
        write_suite(
            tmp_path / "s.json",
            expect("expect_column_values_to_be_between", column="quantity", max_value=10, row_condition=north_or_south),
            expect("expect_column_values_to_be_between", column="quantity", max_value=10),
        )
    )

    conditional, plain = validate_table(suite, orders).outcomes

    assert conditional.success and conditional.error is None  # the 5000 is in a "mars" row
    assert not plain.success and plain.partial_unexpected == [5000]


def test_a_deprecated_kwarg_is_logged_at_load_naming_the_file(
    tmp_path: Path, orders: pa.Table, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_suite(
        tmp_path / "legacy-condition.json",
        expect(
            "expect_column_values_to_be_between",
            column="quantity",
            max_value=10,
            row_condition='region=="north"',
            condition_parser="pandas",
        ),
    )

    with caplog.at_level(logging.WARNING, logger="daemon.validation"):
        suite = load_suite(path)
    result = validate_table(suite, orders)

    (record,) = [r for r in caplog.records if "condition_parser" in r.getMessage()]
    assert "legacy-condition.json" in record.getMessage() and "expectations[0]" in record.getMessage()
    assert result.success  # still honoured by GX 1.24


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"name": "orders", "expectations": [', r"not valid JSON at line 1"),
        ("[]", r"JSON object"),
        (json.dumps({"expectations": [expect("expect_column_to_exist", column="a")]}), r'"name"'),
        (json.dumps({"name": "x", "expectations": []}), r'"expectations" must be a non-empty list'),
        (
            json.dumps({"name": "x", "expectations": [expect("expect_column_to_be_purple", column="a")]}),
            r"expectations\[0\].*unknown expectation type 'expect_column_to_be_purple'",
        ),
        (
            json.dumps({"name": "x", "expectations": [expect("expect_column_max_to_be_between", colum="a")]}),
            r"expectations\[0\] \(expect_column_max_to_be_between\): invalid kwargs: column: field required; "
            r"colum='a': unexpected argument",
        ),
        (
            json.dumps(
                {"name": "x", "expectations": [expect("expect_column_max_to_be_between", column="a", max_value="big")]}
            ),
            r"max_value='big': value is not a valid float",
        ),
        (
            json.dumps(
                {"name": "x", "expectations": [expect("expect_column_values_to_be_in_set", column="a", mostly=0.5)]}
            ),
            r"value_set: field required",
        ),
        (
            json.dumps({"name": "x", "expectations": [{"type": "expect_column_to_exist"}]}),
            r'"kwargs" must be an object',
        ),
        (
            json.dumps({"name": "x", "expectations": [expect("expect_column_to_exist", column="a")], "owner": "me"}),
            r"owner: Unknown field",
        ),
        (
            json.dumps(
                {"expectation_suite_name": "x", "expectations": [{"expectation_type": "expect_column_to_exist"}]}
            ),
            r"GX 0\.x suite",
        ),
        (
            json.dumps({"name": "x", "expectations": [expect("expect_column_to_exist", column="a")] * 2}),
            r"expectations\[1\] .* repeats expectations\[0\]",
        ),
    ],
    ids=[
        "bad-json",
        "not-an-object",
        "no-name",
        "no-expectations",
        "unknown-type",
        "misspelt-kwarg",
        "wrong-kwarg-type",
        "missing-kwarg",
        "no-kwargs",
        "unknown-key",
        "gx-0x-format",
        "repeat",
    ],
)
def test_an_invalid_suite_file_is_a_suite_error_naming_the_file(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "broken-suite.json"
    path.write_text(content)

    with pytest.raises(SuiteError, match=reason) as caught:
        load_suite(path)

    assert "broken-suite.json" in str(caught.value)
    assert isinstance(caught.value, ConfigError)  # a bad suite stops the daemon at start like bad config


def test_a_missing_suite_file_is_a_suite_error(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match=r"nowhere\.json: cannot be read"):
        load_suite(tmp_path / "nowhere.json")


def test_validation_prints_nothing(
    tmp_path: Path, orders: pa.Table, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    capfd.readouterr()
    suite = load_suite(
        write_suite(
            tmp_path / "s.json",
            expect("expect_column_values_to_be_in_set", column="region", value_set=["north"]),
            expect("expect_column_max_to_be_between", column="quantity", max_value=10),
            expect("expect_column_values_to_not_be_null", column="missing"),
        )
    )
    # A fresh engine, so the context's creation is inside the captured window as well.
    monkeypatch.setattr(validation, "_engine", None)

    result = validate_table(suite, orders)
    validate_table(suite, orders)

    assert result.failed == 3  # it ran, and GX had failures to report (and bars to draw)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_loading_and_validating_open_no_network_connection() -> None:
    """No analytics, no usage statistics: GX is imported, a context made and a suite run offline."""
    code = """
import socket, sys
from pathlib import Path
import pyarrow as pa
attempts = []
real_connect = socket.socket.connect
def connect(sock, address):
    attempts.append(address)
    return real_connect(sock, address)
socket.socket.connect = connect
from daemon.validation import load_suite, validate_table
suite = load_suite(Path("examples/suites/sales.json"))
table = pa.table({"order_id": ["O-000001"], "region": ["north"], "quantity": [1], "discount_pct": [0]})
assert validate_table(suite, table).success
assert "great_expectations" in sys.modules
print(attempts)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)

    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
    assert out.stderr == ""


def test_the_context_and_suite_are_built_once_and_reused(tmp_path: Path, orders: pa.Table) -> None:
    suite = load_suite(write_suite(tmp_path / "s.json", expect("expect_column_values_to_be_unique", column="order_id")))

    validate_table(suite, orders)
    engine = validation._engine
    cached = dict(engine._suites) if engine else {}
    validate_table(suite, orders.slice(0, 2))

    assert engine is not None and validation._engine is engine
    assert dict(engine._suites) == cached and (suite.digest, (0,)) in cached
    # The batch is released after each validation: GX does not hold the table until the next one.
    assert not engine.execution_engine.batch_manager.batch_cache


def test_the_same_suite_file_loads_to_an_equal_suite(tmp_path: Path) -> None:
    path = write_suite(tmp_path / "s.json", expect("expect_column_values_to_be_unique", column="order_id"))
    first, second = load_suite(path), load_suite(path)
    other = load_suite(write_suite(tmp_path / "t.json", expect("expect_column_values_to_be_unique", column="sku")))

    assert isinstance(first, Suite) and first == second and first.digest == second.digest
    assert other.digest != first.digest


def _example_tables(dataset: str) -> list[tuple[str, pa.Table]]:
    root = EXAMPLES / "data" / dataset
    if dataset == "sales":
        return [
            ("orders-2024-q1.parquet", pq.read_table(root / "orders-2024-q1.parquet")),
            ("orders-2024-q2.csv", pa_csv.read_csv(root / "orders-2024-q2.csv")),
        ]
    readings = sorted(root.glob("readings-*.jsonl"))
    assert len(readings) == 2
    return [("readings-*.jsonl", pa.concat_tables([pa_json.read_json(p) for p in readings]))]


@pytest.mark.parametrize("dataset", ["sales", "sensors"])
def test_the_example_suites_pass_on_the_example_data(dataset: str) -> None:
    suite = load_suite(EXAMPLES / "suites" / f"{dataset}.json")
    assert suite.name == dataset and 3 <= len(suite.expectations) <= 5

    for name, table in _example_tables(dataset):
        result = validate_table(suite, table)
        failures = [(o.expectation, o.column, o.observed_value, o.error) for o in result.outcomes if not o.success]
        assert result.success, f"{dataset} suite fails on {name}: {failures}"
        assert result.evaluated == len(suite.expectations)


def test_the_sensors_suite_catches_a_flat_battery() -> None:
    suite = load_suite(EXAMPLES / "suites" / "sensors.json")
    ((_, table),) = _example_tables("sensors")
    volts = table.column("battery_v").to_pylist()
    volts[7] = 2.9
    flat = table.set_column(table.schema.get_field_index("battery_v"), "battery_v", pa.array(volts))

    result = validate_table(suite, flat)

    failed = [o for o in result.outcomes if not o.success]
    assert [(o.column, o.partial_unexpected) for o in failed] == [("battery_v", [2.9])]


def test_the_cli_does_not_import_great_expectations() -> None:
    code = (
        "import sys, daemon.cli, daemon.validation, schemas.validation; "
        "assert 'great_expectations' not in sys.modules, 'GX imported'; "
        "assert 'pandas' not in sys.modules, 'pandas imported'"
    )
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )

    assert out.returncode == 0, out.stderr[-2000:]
    cumulative = {
        m.group(2).strip(): int(m.group(1))
        for m in re.finditer(r"^import time:\s+\d+ \|\s+(\d+) \|(.*)$", out.stderr, re.MULTILINE)
    }
    assert "great_expectations" not in cumulative
    # Import time in microseconds, summed by the interpreter: steadier than wall clock, and GX
    # alone costs ~3 s, so a lazy import that regressed would blow this by far.
    assert cumulative["daemon.cli"] + cumulative.get("daemon.validation", 0) < 1_000_000

    help_run = subprocess.run(
        [str(Path(sys.executable).parent / "strandline"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert help_run.returncode == 0 and "Usage:" in help_run.stdout


def test_values_from_numpy_and_pandas_become_plain_json() -> None:
    import numpy as np

    raw = {
        "int": np.int64(5000),
        "float": np.float32(0.5),
        "nan": np.float64("nan"),
        "inf": float("inf"),
        "nat": pd.NaT,
        "na": pd.NA,
        "timestamp": pd.Timestamp("2024-06-01T12:30:00", tz="UTC"),
        "datetime64": np.datetime64("2024-06-01T12:30:00.123456789", "ns"),
        "decimal": Decimal("12.50"),
        "array": np.array([1, 2]),
        "nested": [{"value": np.bool_(True), "count": np.uint8(2)}],
    }

    safe = validation._json_safe(raw)

    assert safe == {
        "int": 5000,
        "float": 0.5,
        "nan": None,
        "inf": None,
        "nat": None,
        "na": None,
        "timestamp": "2024-06-01T12:30:00+00:00",
        "datetime64": "2024-06-01T12:30:00.123456",
        "decimal": 12.5,
        "array": [1, 2],
        "nested": [{"value": True, "count": 2}],
    }
    assert json.loads(json.dumps(safe, allow_nan=False)) == safe
    assert type(safe["int"]) is int and type(safe["nested"][0]["value"]) is bool


def test_a_table_gone_between_its_hash_and_its_validation_is_retried_not_judged_invalid(tmp_path: Path) -> None:
    """A file removed after the pass hashed it must not make the version "invalid" (and page someone)."""
    from daemon.assess import Assessor, ChangedWhileProfilingError
    from daemon.manifest import FileState
    from daemon.quality import FileTable
    from daemon.tables import profile_file
    from schemas.config import DatasetConfig

    root = tmp_path / "data"
    root.mkdir()
    path = root / "a.csv"
    path.write_text("order_id,quantity\nO-1,1\nO-2,3\n")
    digest = xxhash.xxh3_128_hexdigest(path.read_bytes())
    schema, profile = profile_file(str(path), "csv")
    suite = load_suite(write_suite(tmp_path / "s.json", expect("expect_column_to_exist", column="quantity")))
    assessor = Assessor(str(root), DatasetConfig(name="d", root=root), suite)
    current = {"a.csv": FileState(path.stat().st_size, digest)}
    stored = {(digest, "csv"): FileTable(digest, "csv", schema, profile, None)}  # read by an earlier version

    quality, _ = assessor.assess(current, {"a.csv"}, lambda keys: stored, None)
    assert quality.status == "valid"
    path.unlink()
    with pytest.raises(ChangedWhileProfilingError):
        assessor.assess(current, {"a.csv"}, lambda keys: stored, None)
