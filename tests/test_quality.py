"""Versions know their schema, profile and validation verdict: end to end, real files, real broker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from consumers.profiles import fetch_profile
from schemas.config import DatasetConfig
from tests.helpers import read_events, start_daemon, wait_for

SUITE = {
    "name": "orders",
    "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "id"}, "meta": {}},
        {"type": "expect_column_max_to_be_between", "kwargs": {"column": "amount", "max_value": 1000}, "meta": {}},
    ],
    "meta": {},
}


def _orders(n: int, top: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    amount = rng.uniform(0, 900, n)
    amount[-1] = top
    return pd.DataFrame({"id": np.arange(n), "amount": amount, "shop": rng.choice(["north", "south"], n)})


def _events_of(events: list, ce_type: str) -> list:
    return [e for e in events if e.headers.get("ce_type") == ce_type]


def test_a_failing_expectation_is_recorded_with_its_observed_value_and_announced(
    config_for, data_dir: Path, tmp_path: Path, kafka_bootstrap: str
) -> None:
    suite = tmp_path / "orders.json"
    suite.write_text(json.dumps(SUITE))
    config = config_for([DatasetConfig(name="orders", root=data_dir, settle_seconds=0.2, suite=suite)])
    running = start_daemon(config)
    try:
        _orders(1000, 500.0, 1).to_parquet(data_dir / "day1.parquet")
        wait_for(lambda: running.versions("orders"), 60, what="first version")
        _orders(1000, 5000.0, 2).to_parquet(data_dir / "day2.parquet")
        wait_for(lambda: len(running.versions("orders")) == 2, 60, what="second version")
        with running.catalog() as c:
            first, second = c.quality("orders", 1), c.quality("orders", 2)
        events = read_events(kafka_bootstrap, config.kafka.versions_topic, min_count=3, settle=0.5)
    finally:
        running.stop()
    assert first is not None and first.status == "valid"
    assert second is not None and second.status == "invalid"
    assert "expect_column_max_to_be_between(amount): observed 5000" in (second.reason or "")
    created = _events_of(events, "dataset.version.created")
    assert [e.data["status"] for e in created] == ["valid", "invalid"]
    failure = created[1].data["validation"]["failures"][0]
    assert failure["expectation"] == "expect_column_max_to_be_between" and failure["observed_value"] == 5000.0
    alerts = _events_of(events, "dataset.validation.failed")
    assert len(alerts) == 1 and alerts[0].data["version"] == 2 and alerts[0].data["status"] == "invalid"
    assert created[1].data["table"]["rows"] == 2000 and created[1].data["table"]["readable_files"] == 2


def test_a_schema_change_is_reported_against_the_parent(config_for, data_dir: Path, kafka_bootstrap: str) -> None:
    config = config_for([DatasetConfig(name="evolve", root=data_dir, settle_seconds=0.2)])
    running = start_daemon(config)
    try:
        pq.write_table(pa.table({"id": pa.array([1, 2], pa.int32()), "v": [0.5, 1.5]}), data_dir / "t.parquet")
        wait_for(lambda: running.versions("evolve"), 60, what="first version")
        pq.write_table(
            pa.table({"id": pa.array([1, 2], pa.int64()), "v": [0.5, 1.5], "note": ["a", None]}),
            data_dir / "t.parquet",
        )
        wait_for(lambda: len(running.versions("evolve")) == 2, 60, what="second version")
        events = read_events(kafka_bootstrap, config.kafka.versions_topic, min_count=2)
    finally:
        running.stop()
    created = _events_of(events, "dataset.version.created")
    assert created[0].data["table"].get("schema_change") is None
    change = created[1].data["table"]["schema_change"]
    assert [f["name"] for f in change["added"]] == ["note"]
    assert change["type_changed"] == [{"name": "id", "old": "int32", "new": "int64"}]
    assert created[0].data["table"]["schema_fingerprint"] != created[1].data["table"]["schema_fingerprint"]


def test_changing_one_file_of_ten_reads_only_that_file(config_for, data_dir: Path) -> None:
    for i in range(10):
        pd.DataFrame({"x": np.arange(100) + i}).to_csv(data_dir / f"part{i}.csv", index=False)
    config = config_for([DatasetConfig(name="ten", root=data_dir, settle_seconds=0.2)])
    running = start_daemon(config)
    try:
        wait_for(lambda: running.versions("ten"), 60, what="first version")
        pd.DataFrame({"x": np.arange(100) * 7}).to_csv(data_dir / "part3.csv", index=False)
        wait_for(lambda: len(running.versions("ten")) == 2, 60, what="second version")
        with running.catalog() as c:
            read_first, read_second = c.tables_read("ten", 1), c.tables_read("ten", 2)
            profile = c.quality("ten", 2).profile  # type: ignore[union-attr]
    finally:
        running.stop()
    assert len(read_first) == 10
    assert read_second == [(xxhash.xxh3_128_hexdigest((data_dir / "part3.csv").read_bytes()), "csv")]
    assert profile is not None and profile.rows == 1000
    col = profile.column("x")
    expected = np.concatenate([np.arange(100) + i for i in range(10) if i != 3] + [np.arange(100) * 7])
    assert col is not None and col.max == expected.max() and abs((col.mean or 0) - expected.mean()) < 1e-9


def test_each_kind_of_bad_file_is_recorded_as_unreadable_and_the_next_file_is_processed(
    config_for, data_dir: Path, tmp_path: Path
) -> None:
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"a": list(range(1000))}), good)
    bad: dict[str, bytes] = {
        "truncated.parquet": good.read_bytes()[: good.stat().st_size // 2],
        "random.parquet": bytes(range(256)) * 4,
        "ragged.csv": b"a,b\n1,2\n3,4,5\n6,7\n",
        "latin1.csv": "name\ncaf\u00e9\n".encode("latin-1"),
        "empty.jsonl": b"",
        "broken.jsonl": b'{"a": 1}\n{"a": \n',
    }
    config = config_for([DatasetConfig(name="bad", root=data_dir, settle_seconds=0.2)])
    running = start_daemon(config)
    try:
        for i, (name, payload) in enumerate(bad.items()):
            (data_dir / name).write_bytes(payload)
            wait_for(lambda n=2 * i + 1: len(running.versions("bad")) == n, 60, what=f"version with {name}")
            (data_dir / name).unlink()
            pq.write_table(pa.table({"a": [i]}), data_dir / f"good{i}.parquet")
            wait_for(lambda n=2 * i + 2: len(running.versions("bad")) == n, 60, what=f"version after {name}")
        with running.catalog() as c:
            qualities = [c.quality("bad", v.seq) for v in c.versions("bad")]
    finally:
        running.stop()
    for i, name in enumerate(bad):
        broken, after = qualities[2 * i], qualities[2 * i + 1]
        assert broken is not None and broken.status == "unreadable", name
        assert [p.path for p in broken.problems] == [name] and broken.problems[0].reason, name
        assert after is not None and after.status == "unvalidated" and not after.problems, name
    reasons = {q.problems[0].path: q.problems[0].reason for q in qualities[::2] if q is not None}
    assert "empty" in reasons["empty.jsonl"].lower()
    assert "utf-8" in reasons["latin1.csv"].lower() or "encoding" in reasons["latin1.csv"].lower()


def test_a_500_column_table_publishes_within_the_message_limit_and_its_profile_rebuilds_from_kafka(
    config_for, data_dir: Path, kafka_bootstrap: str
) -> None:
    rng = np.random.default_rng(7)
    columns: dict[str, object] = {}
    for i in range(500):
        if i % 2:
            columns[f"c{i:03d}"] = rng.normal(i, 1.0, 2000)
        else:
            columns[f"c{i:03d}"] = [f"v{x}" for x in rng.integers(0, 5000, 2000)]
    pd.DataFrame(columns).to_parquet(data_dir / "wide.parquet")
    config = config_for([DatasetConfig(name="wide", root=data_dir, settle_seconds=0.2)])
    running = start_daemon(config)
    try:
        wait_for(lambda: running.versions("wide") and running.backlog() == 0, 120, what="version delivered")
        version = running.versions("wide")[0]
        with running.catalog() as c:
            stored = c.quality("wide", 1)
    finally:
        running.stop()
    assert stored is not None and stored.profile is not None
    events = read_events(kafka_bootstrap, config.kafka.versions_topic, min_count=1)
    profiles = read_events(kafka_bootstrap, config.kafka.profiles_topic, min_count=1, settle=0.5)
    limit = 1_000_000  # the broker's default message.max.bytes (1 MB)
    assert max(e.size for e in events + profiles) < limit
    assert len(profiles) > 1  # the profile did not fit one record, so it was split
    schema, rebuilt = fetch_profile(config.kafka, version.version_id)
    assert rebuilt == stored.profile and schema == stored.schema
    assert len(rebuilt.columns) == 500


def test_validate_command_exits_0_only_when_valid(tmp_path: Path) -> None:
    suite = tmp_path / "orders.json"
    suite.write_text(json.dumps(SUITE))
    ok, bad = tmp_path / "ok", tmp_path / "bad"
    ok.mkdir()
    bad.mkdir()
    _orders(100, 10.0, 3).to_parquet(ok / "a.parquet")
    _orders(100, 10.0, 3).to_csv(ok / "b.csv.gz", index=False, compression="gzip")
    _orders(100, 5000.0, 4).to_parquet(bad / "a.parquet")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "daemon.cli", "validate", *args], capture_output=True, text=True, timeout=120
        )

    passed = run(str(ok), "--suite", str(suite), "--json")
    failed = run(str(bad / "a.parquet"), "--suite", str(suite))
    broken_suite = tmp_path / "broken.json"
    broken_suite.write_text('{"name": "x", "expectations": [{"type": "expect_no_such_thing", "kwargs": {}}]}')
    misconfigured = run(str(ok), "--suite", str(broken_suite))
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert json.loads(passed.stdout)["rows"] == 200
    assert failed.returncode == 1 and "observed 5000" in failed.stdout
    assert misconfigured.returncode == 2 and "broken.json" in misconfigured.stderr
