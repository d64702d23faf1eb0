"""Consumers on a real broker: retraining runs, alerts to real HTTP receivers, delivery guarantees."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from consumers.app import state_path
from consumers.retrain_service import runs_for_version
from consumers.state import ConsumerState
from daemon.events import cloud_event, event_id
from daemon.outbox import OutboxMessage
from schemas.config import KafkaConfig
from schemas.events import FileChange, TableSummary, ValidationFailed, VersionCreated, VersionTotals
from tests.helpers import Receiver, publish, read_events, start_consumer, wait_for

HOSTILE = "$(touch PWNED); `touch PWNED2` && rm -rf ~ #.csv"


def version_event(
    kafka: KafkaConfig, dataset: str, version: int, *, status: str = "valid", rows: int = 1000, path: str = "a.csv"
) -> OutboxMessage:
    vid = f"{dataset}-{version:04d}".ljust(32, "0")
    value = VersionCreated(
        dataset=dataset,
        version=version,
        version_id=vid,
        parent_version=version - 1 if version > 1 else None,
        created_at=datetime.now(UTC),
        host="data-host",
        root="/data",
        totals=VersionTotals(files=1, bytes=10, added=1, modified=0, removed=0),
        changes=(FileChange(path=path, change="added", size=10, new_hash="0" * 32),),
        status=status,  # type: ignore[arg-type]
        table=TableSummary(files=1, readable_files=1, rows=rows, columns=2),
    )
    return cloud_event(
        kafka.versions_topic,
        dataset,
        "dataset.version.created",
        value,
        ce_id=event_id("test", dataset, str(version), status),
        source="strandline://data-host/" + dataset,
        subject=f"{dataset}@{version}",
        time=value.created_at,
    )


def failed_event(kafka: KafkaConfig, dataset: str, version: int) -> OutboxMessage:
    value = ValidationFailed(
        dataset=dataset,
        version=version,
        version_id=f"{dataset}-{version:04d}".ljust(32, "0"),
        created_at=datetime.now(UTC),
        host="data-host",
        status="invalid",
        reason="expect_column_max_to_be_between(amount): observed 5000",
    )
    return cloud_event(
        kafka.versions_topic,
        dataset,
        "dataset.validation.failed",
        value,
        ce_id=event_id("test-failed", dataset, str(version)),
        source="strandline://data-host/" + dataset,
        subject=f"{dataset}@{version}",
        time=value.created_at,
    )


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent(body))
    return path


def _recording_script(tmp_path: Path, out: Path, gate: Path | None = None) -> Path:
    """A training command that appends its version and start time to ``out``, then, with ``gate``,
    holds until that file exists (for at most 60 s)."""
    wait = (
        f"""
        deadline = time.time() + 60
        while not pathlib.Path({str(gate)!r}).exists() and time.time() < deadline:
            time.sleep(0.05)"""
        if gate is not None
        else ""
    )
    return _script(
        tmp_path,
        f"""
        import json, os, pathlib, time
        with open({str(out)!r}, "a") as fh:
            fh.write(json.dumps({{"version": int(os.environ["STRANDLINE_VERSION"]), "start": time.time()}}) + "\\n")"""
        + wait
        + "\n",
    )


def _run_lines(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


# -- retraining --------------------------------------------------------------------------------


def test_a_retrain_command_gets_the_run_in_its_environment_and_a_hostile_file_name_stays_data(
    config_for, tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:

    out = tmp_path / "runs.jsonl"
    workdir = tmp_path / "work"
    workdir.mkdir()
    script = _script(
        tmp_path,
        f"""
        import json, os, pathlib
        event = json.load(open(os.environ["STRANDLINE_EVENT_FILE"]))
        keys = ["STRANDLINE_RUN_ID", "STRANDLINE_DATASET", "STRANDLINE_VERSION", "STRANDLINE_VERSION_ID",
                "STRANDLINE_TRIGGER"]
        pathlib.Path("model.bin").write_bytes(b"weights " + os.environ["STRANDLINE_VERSION"].encode())
        json.dump({{"model_path": "model.bin"}}, open(os.environ["STRANDLINE_RESULT_FILE"], "w"))
        with open({str(out)!r}, "a") as fh:
            fh.write(json.dumps({{"env": {{k: os.environ[k] for k in keys}},
                                 "inherited": os.environ.get("PATH_FOR_TRAINING"),
                                 "leaked": [k for k in os.environ if k.startswith("STRANDLINE_") and k not in keys
                                            and k not in ("STRANDLINE_EVENT_FILE", "STRANDLINE_RESULT_FILE")],
                                 "paths": [c["path"] for c in event["event"]["changes"]]}}) + "\\n")
    """,
    )
    config = config_for(
        retrain={
            "policies": [
                {
                    "datasets": ["sales*"],
                    "on": "version",
                    "action": {"type": "command", "argv": [sys.executable, str(script)], "cwd": str(workdir)},
                }
            ]
        }
    )
    # The consumer's own secrets (as systemd's EnvironmentFile gives them) must not reach the run.
    monkeypatch.setenv("STRANDLINE_KAFKA_SASL_PASSWORD", "consumer-secret")
    monkeypatch.setenv("PATH_FOR_TRAINING", "kept")
    consumer = start_consumer(config, "retrain")
    try:
        publish(
            kafka_bootstrap,
            [
                version_event(config.kafka, "sales", 1, path=HOSTILE),
                version_event(config.kafka, "sales", 2, status="invalid"),
                version_event(config.kafka, "other", 1),
            ],
        )
        wait_for(lambda: _run_lines(out), 30, what="the training command's record")
        models = read_events(kafka_bootstrap, config.kafka.models_topic, min_count=2, timeout=30, settle=1.0)
        metrics = consumer.runner.metrics
        wait_for(lambda: metrics.count("acted") + metrics.count("skipped") >= 3, 30, what="all three events handled")
        runs = _run_lines(out)
    finally:
        consumer.stop()
        monkeypatch.delenv("STRANDLINE_KAFKA_SASL_PASSWORD")  # the CLI below reads its config from the env
    assert len(runs) == 1, "only the valid version of a matching dataset trains"
    env = runs[0]["env"]
    assert env["STRANDLINE_DATASET"] == "sales" and env["STRANDLINE_VERSION"] == "1"
    assert env["STRANDLINE_VERSION_ID"] == "sales-0001".ljust(32, "0") and env["STRANDLINE_TRIGGER"] == "version"
    assert runs[0]["paths"] == [HOSTILE], "the file name reaches the command as a string"
    assert runs[0]["inherited"] == "kept" and runs[0]["leaked"] == []
    assert not (workdir / "PWNED").exists() and not (workdir / "PWNED2").exists()
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()
    types = [e.headers["ce_type"] for e in models]
    assert types == ["model.retrain.started", "model.retrain.finished"]
    finished = models[1].data
    assert finished["status"] == "succeeded" and finished["exit_code"] == 0
    assert finished["run_id"] == env["STRANDLINE_RUN_ID"] == models[0].data["run_id"]
    assert finished["model_path"] == "model.bin"
    import xxhash

    assert finished["model_hash"] == xxhash.xxh3_128_hexdigest(b"weights 1")
    # Lineage: the run is recorded against the version it used, and the CLI finds it both ways.
    with ConsumerState(state_path(config, "retrain")) as state:
        recorded = runs_for_version(state, "sales", 1)
    assert [r.run_id for r in recorded] == [env["STRANDLINE_RUN_ID"]]
    cfg_file = tmp_path / "strandline.toml"
    cfg_file.write_text(f'state_dir = "{config.state_dir}"\n')
    by_version = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "lineage", "sales@1", "--config", str(cfg_file), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(by_version.stdout)[0]["run_id"] == env["STRANDLINE_RUN_ID"]
    by_run = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "lineage", "--run", env["STRANDLINE_RUN_ID"], "--config", str(cfg_file)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "sales@1" in by_run.stdout and "succeeded" in by_run.stdout


def test_a_burst_of_twenty_versions_during_a_run_leads_to_one_more_run_on_the_newest(
    config_for, tmp_path: Path, kafka_bootstrap: str
) -> None:
    out = tmp_path / "runs.jsonl"
    gate = tmp_path / "gate"
    script = _recording_script(tmp_path, out, gate)
    config = config_for(
        retrain={
            "policies": [
                {
                    "on": "version",
                    "action": {"type": "command", "argv": [sys.executable, str(script)]},
                }
            ]
        }
    )
    consumer = start_consumer(config, "retrain")
    try:
        publish(kafka_bootstrap, [version_event(config.kafka, "sales", 1)])
        wait_for(lambda: len(_run_lines(out)) == 1, 30, what="the first run")
        publish(kafka_bootstrap, [version_event(config.kafka, "sales", v) for v in range(2, 21)])
        # Every version is taken in (committed) while the first run still holds the gate.
        wait_for(lambda: consumer.runner.metrics.count("acted") == 20, 30, what="20 versions taken in")
        assert len(_run_lines(out)) == 1
        gate.write_text("go")
        wait_for(lambda: len(_run_lines(out)) == 2, 30, what="the coalesced run")
        models = read_events(kafka_bootstrap, config.kafka.models_topic, min_count=4, timeout=30, settle=1.0)
    finally:
        consumer.stop()
    assert [r["version"] for r in _run_lines(out)] == [1, 20]
    started = [e.data for e in models if e.headers["ce_type"] == "model.retrain.started"]
    assert [(s["version"], s["coalesced"]) for s in started] == [(1, 0), (20, 18)]


def test_cooldown_holds_back_the_next_run_and_coalesces_what_arrives_meanwhile(
    config_for, tmp_path: Path, kafka_bootstrap: str
) -> None:
    out = tmp_path / "runs.jsonl"
    script = _recording_script(tmp_path, out)
    cooldown = 3.0
    config = config_for(
        retrain={
            "policies": [
                {
                    "on": "version",
                    "cooldown_seconds": cooldown,
                    "action": {"type": "command", "argv": [sys.executable, str(script)]},
                }
            ]
        }
    )
    consumer = start_consumer(config, "retrain")
    try:
        publish(kafka_bootstrap, [version_event(config.kafka, "sales", v) for v in range(1, 21)])
        wait_for(lambda: len(_run_lines(out)) == 2, 30, what="the run after the cooldown")
        wait_for(lambda: consumer.runner.metrics.count("acted") == 20, 30, what="all versions taken in")
    finally:
        consumer.stop()
    runs = _run_lines(out)
    assert [r["version"] for r in runs] == [1, 20]
    assert runs[1]["start"] - runs[0]["start"] >= cooldown - 0.1


# -- alerts ------------------------------------------------------------------------------------


@pytest.fixture
def receivers():  # type: ignore[no-untyped-def]
    made: list[Receiver] = []

    def make(status: int = 200) -> Receiver:
        made.append(Receiver(status))
        return made[-1]

    yield make
    for r in made:
        r.close()


def _alert_config(config_for, slack: Receiver, pd: Receiver, **alerts: Any):  # type: ignore[no-untyped-def]
    return config_for(
        alerts={
            "channels": {
                "ops-slack": {"type": "slack", "webhook_url": slack.url + "/services/T000/B000/XXXX"},
                "ops-pd": {
                    "type": "pagerduty",
                    "routing_key": "R0UT1NGKEY0000000000000000000000",
                    "events_url": pd.url + "/v2/enqueue",
                },
            },
            "routes": [{"kinds": ["validation"], "channels": ["ops-slack", "ops-pd"]}],
            "min_interval_seconds": 0,
            **alerts,
        }
    )


def test_a_validation_failure_pages_once_and_the_next_valid_version_resolves_it(
    config_for, receivers, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    slack, pd = receivers(200), receivers(202)
    config = _alert_config(config_for, slack, pd)
    consumer = start_consumer(config, "alerts")
    try:
        publish(kafka_bootstrap, [failed_event(config.kafka, "sales", 7), failed_event(config.kafka, "sales", 8)])
        wait_for(lambda: consumer.runner.metrics.count("acted") == 2, 30, what="two failures handled")
        publish(kafka_bootstrap, [version_event(config.kafka, "sales", 9)])
        wait_for(lambda: len(pd.requests) == 2 and len(slack.requests) == 2, 30, what="trigger and resolve")
    finally:
        consumer.stop()
    trigger, resolve = (r.json() for r in pd.requests)
    assert trigger["event_action"] == "trigger" and resolve["event_action"] == "resolve"
    assert trigger["dedup_key"] == resolve["dedup_key"] == "strandline/sales/validation"
    assert trigger["routing_key"] == "R0UT1NGKEY0000000000000000000000"
    payload = trigger["payload"]
    assert payload["severity"] == "error" and payload["source"] == "data-host"
    assert "sales@7" in payload["summary"] and "observed 5000" in payload["summary"]
    assert set(resolve) == {"routing_key", "event_action", "dedup_key"}
    first, second = (r.json() for r in slack.requests)
    assert "sales@7" in first["text"] and isinstance(first["blocks"], list) and first["blocks"][0]["type"] == "header"
    assert "valid" in second["text"]
    logs = caplog.text
    assert "R0UT1NGKEY" not in logs and "/services/T000/B000/XXXX" not in logs


def test_a_flapping_dataset_pages_once_within_the_window(config_for, receivers, kafka_bootstrap: str) -> None:
    slack, pd = receivers(200), receivers(202)
    config = _alert_config(config_for, slack, pd, min_interval_seconds=600)
    consumer = start_consumer(config, "alerts")
    try:
        flaps: list[OutboxMessage] = []
        for v in range(1, 51):
            flaps.append(failed_event(config.kafka, "sales", v) if v % 2 else version_event(config.kafka, "sales", v))
        publish(kafka_bootstrap, flaps)
        wait_for(lambda: consumer.runner.metrics.count("acted") == 50, 60, what="50 events handled")
    finally:
        consumer.stop()
    assert [r.json()["event_action"] for r in pd.requests] == ["trigger"]
    assert len(slack.requests) == 1


def test_a_consumer_killed_after_acting_but_before_committing_does_not_act_twice(
    config_for, receivers, kafka_bootstrap: str
) -> None:
    slack, pd = receivers(200), receivers(202)
    config = _alert_config(config_for, slack, pd)

    class Killed(BaseException):
        pass

    def die(event: Any) -> None:
        raise Killed

    consumer = start_consumer(config, "alerts", before_commit=die)
    publish(kafka_bootstrap, [failed_event(config.kafka, "sales", 3)])
    wait_for(lambda: consumer.errors, 30, what="the crash before the commit")
    consumer.thread.join(30)
    assert isinstance(consumer.errors[0], Killed)
    assert len(pd.requests) == 1, "it acted before it died"
    again = start_consumer(config, "alerts")
    try:
        wait_for(lambda: again.runner.metrics.count("duplicate") == 1, 30, what="the redelivered event skipped")
    finally:
        again.stop()
    assert len(pd.requests) == 1 and len(slack.requests) == 1


def test_a_poison_message_goes_to_the_dead_letter_topic_and_the_consumer_goes_on(
    config_for, receivers, kafka_bootstrap: str
) -> None:
    slack, pd = receivers(200), receivers(202)
    config = _alert_config(config_for, slack, pd)
    kafka = config.kafka
    garbage = OutboxMessage(kafka.versions_topic, b"sales", b"\xff\x00 not json", ())
    broken = OutboxMessage(
        kafka.versions_topic,
        b"sales",
        b'{"dataset": "sales"}',
        (("ce_id", b"broken-1"), ("ce_type", b"dataset.validation.failed")),
    )
    unknown = OutboxMessage(
        kafka.versions_topic, b"sales", b"{}", (("ce_id", b"future-1"), ("ce_type", b"dataset.something.new"))
    )
    consumer = start_consumer(config, "alerts")
    try:
        publish(kafka_bootstrap, [garbage, broken, unknown, failed_event(kafka, "sales", 4)])
        wait_for(lambda: len(pd.requests) == 1, 30, what="the good event acted on")
        dead = read_events_raw(kafka_bootstrap, kafka.dead_letter_topic, 2)
    finally:
        consumer.stop()
    reasons = sorted(h["dlq_reason"] for h in dead)
    assert any("ce_id or ce_type header is missing" in r for r in reasons)
    assert any("does not match its schema" in r for r in reasons)
    assert all(h["dlq_topic"] == kafka.versions_topic for h in dead)
    assert consumer.runner.metrics.count("skipped") == 1


def read_events_raw(bootstrap: str, topic: str, count: int) -> list[dict[str, str]]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        partitions = wait_for(lambda: consumer.partitions_for_topic(topic), 20, what=topic)
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[dict[str, str]] = []
        deadline = time.monotonic() + 30
        while len(out) < count and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                out += [{k: v.decode("utf-8", "replace") for k, v in r.headers} for r in records]
        assert len(out) >= count, f"{len(out)} dead letters, wanted {count}"
        return out
    finally:
        consumer.close()


def test_consume_serves_its_lag_and_stops_cleanly_on_sigterm(config_for, tmp_path: Path, kafka_bootstrap: str) -> None:
    config = config_for()
    cfg_file = tmp_path / "strandline.toml"
    cfg_file.write_text(
        f'state_dir = "{config.state_dir}"\n[kafka]\nbootstrap = "{kafka_bootstrap}"\n'
        f'topic_prefix = "{config.kafka.topic_prefix}"\npartitions = 1\n'
        f'[consumers]\ngroup_prefix = "{config.kafka.topic_prefix}"\n'
    )
    publish(kafka_bootstrap, [version_event(config.kafka, "sales", v, status="invalid") for v in (1, 2, 3)])
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_file = tmp_path / "consumer.log"
    with log_file.open("w") as log_fh:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daemon.cli",
                "consume",
                "drift",
                "--config",
                str(cfg_file),
                "--metrics-port",
                str(port),
                "--log-format",
                "json",
            ],
            stderr=log_fh,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
        )
    try:

        def metrics() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    return r.read().decode()
            except OSError:
                return ""

        text = wait_for(
            lambda: (m := metrics()) and 'outcome="acted"} 3.0' in m and "strandline_consumer_lag{" in m and m,
            60,
            what="metrics with the lag",
        )
        assert (
            f'strandline_consumer_lag{{consumer="drift",partition="0",topic="{config.kafka.versions_topic}"}} 0.0'
            in text
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "consumer drift stopped" in log_file.read_text()


# -- drift, end to end ---------------------------------------------------------------------------


def _table(seed: int, n: int, *, shifted: bool) -> Any:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    shift = 1.0 if shifted else 0.0
    mix = [0.1, 0.2, 0.7] if shifted else [0.5, 0.3, 0.2]
    return pd.DataFrame(
        {
            "a": rng.normal(10 + shift * 2, 2, n),
            "b": rng.normal(0 + shift, 1, n),
            "c": rng.normal(100 + shift * 5, 5, n),
            "d": rng.normal(3, 1, n),
            "e": rng.normal(-7, 3, n),
            "city": rng.choice(["oslo", "lima", "pune"], n, p=mix),
            "kind": rng.choice(["x", "y", "z"], n),
        }
    )


def test_the_drift_consumer_flags_the_shifted_columns_from_kafka_alone_then_clears(
    config_for, data_dir: Path, tmp_path: Path, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    from schemas.config import DatasetConfig
    from tests.helpers import start_daemon

    caplog.set_level(logging.INFO, logger="daemon.kafka_client")

    config = config_for(
        [DatasetConfig(name="sensors", root=data_dir, settle_seconds=0.2)],
        drift={"share": 0.5},
    )
    daemon = start_daemon(config)
    # The consumer has its own state folder: it reads nothing of the daemon's catalog.
    consumer_config = config.model_copy(
        update={"consumers": config.consumers.model_copy(update={"state_dir": tmp_path / "elsewhere"})}
    )
    consumer = start_consumer(consumer_config, "drift")
    try:
        for version, (seed, shifted) in enumerate([(1, False), (2, True), (3, True)], start=1):
            _table(seed, 20_000, shifted=shifted).to_parquet(data_dir / "part.parquet")
            wait_for(lambda v=version: len(daemon.versions("sensors")) == v, 60, what=f"version {version}")
        wait_for(lambda: consumer.runner.metrics.count("acted") >= 3, 60, what="three versions compared")
        events = read_events(kafka_bootstrap, config.kafka.drift_topic, min_count=2, timeout=30, settle=1.0)
    finally:
        consumer.stop()
        daemon.stop()
    assert [e.headers["ce_type"] for e in events] == ["dataset.drift.detected", "dataset.drift.cleared"]
    # The consumer made its output topic itself: a broker may not auto-create topics.
    created = [r.getMessage() for r in caplog.records if r.getMessage().startswith("created Kafka topics")]
    assert any(config.kafka.drift_topic in line.split(" ", 3)[3].split(", ") for line in created)
    detected = events[0].data["report"]
    drifted = {c["name"] for c in detected["columns"] if c["drifted"]}
    assert drifted == {"a", "b", "c", "city"}
    assert detected["drifted"] is True and detected["reference_version"] == 1 and detected["current_version"] == 2
    tests = {c["name"]: c["test"] for c in detected["columns"]}
    assert tests["a"] == "wasserstein" and tests["city"] == "jensenshannon"
    cleared = events[1].data["report"]
    assert cleared["drifted"] is False and cleared["reference_version"] == 2 and cleared["current_version"] == 3
    # The same verdict on demand from the daemon's catalog, with an HTML report.
    cfg_file = tmp_path / "strandline.toml"
    cfg_file.write_text(f'state_dir = "{config.state_dir}"\n')
    html = tmp_path / "drift.html"
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "daemon.cli",
            "drift",
            "sensors@1",
            "sensors@2",
            "--config",
            str(cfg_file),
            "--json",
            "--html",
            str(html),
        ],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 1, cli.stderr
    on_demand = json.loads(cli.stdout)
    assert {c["name"] for c in on_demand["columns"] if c["drifted"]} == drifted
    page = html.read_text()
    assert "city" in page and "wasserstein" in page and "<svg" in page


def test_retrain_triggers_an_airflow_dag_run_and_a_signed_webhook(config_for, receivers, kafka_bootstrap: str) -> None:
    import base64

    from consumers.channels import verify_signature

    airflow, hook = receivers(200), receivers(204)
    config = config_for(
        retrain={
            "policies": [
                {
                    "datasets": ["sales"],
                    "action": {
                        "type": "airflow",
                        "url": airflow.url,
                        "dag_id": "train_sales",
                        "username": "strandline",
                        "password": "s3cret-pass",
                    },
                },
                {
                    "datasets": ["sales"],
                    "action": {"type": "webhook", "url": hook.url + "/retrain", "secret": "hmac-key"},
                },
            ]
        }
    )
    consumer = start_consumer(config, "retrain")
    try:
        publish(kafka_bootstrap, [version_event(config.kafka, "sales", 5)])
        wait_for(lambda: airflow.requests and hook.requests, 30, what="both endpoints called")
        models = read_events(kafka_bootstrap, config.kafka.models_topic, min_count=4, timeout=30)
    finally:
        consumer.stop()
    (dag_run,) = airflow.requests
    assert dag_run.path == "/api/v1/dags/train_sales/dagRuns"
    body = dag_run.json()
    assert body["dag_run_id"].startswith("strandline-")
    assert body["conf"]["dataset"] == "sales" and body["conf"]["version"] == 5
    assert dag_run.headers["Authorization"] == "Basic " + base64.b64encode(b"strandline:s3cret-pass").decode()
    (call,) = hook.requests
    assert verify_signature(call.body, call.headers, b"hmac-key")
    assert not verify_signature(call.body, call.headers, b"other-key")
    assert call.json()["version_id"] == "sales-0005".ljust(32, "0")
    finished = [e.data for e in models if e.headers["ce_type"] == "model.retrain.finished"]
    assert sorted((f["action"], f["status"], f["http_status"]) for f in finished) == [
        ("airflow", "succeeded", 200),
        ("webhook", "succeeded", 204),
    ]


def test_daemon_degradation_pages_the_daemon_route_and_recovery_resolves_it(
    config_for, receivers, kafka_bootstrap: str
) -> None:
    from daemon.events import health_message
    from schemas.events import DaemonHealth

    slack, pd = receivers(200), receivers(202)
    config = _alert_config(config_for, slack, pd)
    config = config.model_copy(
        update={
            "alerts": config.alerts.model_copy(
                update={
                    "routes": (
                        config.alerts.routes[0].model_copy(update={"kinds": ("daemon",), "channels": ("ops-pd",)}),
                    )
                }
            )
        }
    )
    since = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    down = DaemonHealth(
        host="ingest-7", component="kafka", reason="no broker answers", since=since, at=since, backlog=40
    )
    up = down.model_copy(update={"reason": "Kafka reachable again after 90 s", "at": datetime.now(UTC)})
    consumer = start_consumer(config, "alerts")
    try:
        publish(
            kafka_bootstrap,
            [
                health_message(config.kafka, "daemon.degraded", down),
                failed_event(config.kafka, "sales", 1),  # a validation problem: not on this route
                health_message(config.kafka, "daemon.recovered", up),
            ],
        )
        wait_for(lambda: len(pd.requests) == 2, 30, what="trigger and resolve")
    finally:
        consumer.stop()
    trigger, resolve = (r.json() for r in pd.requests)
    assert trigger["event_action"] == "trigger" and trigger["payload"]["severity"] == "critical"
    assert "ingest-7" in trigger["payload"]["summary"] and "40 waiting" in trigger["payload"]["summary"]
    assert resolve["event_action"] == "resolve"
    assert trigger["dedup_key"] == resolve["dedup_key"] == "strandline/ingest-7/daemon/kafka"
    assert slack.requests == []


def _drift_detected(kafka: KafkaConfig, dataset: str, version: int, rows: int) -> OutboxMessage:
    from schemas.drift import DriftReport
    from schemas.events import DriftDetected

    report = DriftReport(
        dataset=dataset,
        reference_version=version - 1,
        reference_version_id="r" * 32,
        current_version=version,
        current_version_id=f"{dataset}-{version:04d}".ljust(32, "0"),
        reference_rows=rows,
        current_rows=rows,
        columns=(),
        tested_columns=0,
        drifted_columns=0,
        share=0.0,
        share_threshold=0.5,
        drifted=True,
        reasons=("schema changed",),
        schema_drifted=True,
    )
    value = DriftDetected(
        dataset=dataset,
        version=version,
        version_id=report.current_version_id,
        host="data-host",
        detected_at=datetime.now(UTC),
        report=report,
    )
    return cloud_event(
        kafka.drift_topic,
        dataset,
        "dataset.drift.detected",
        value,
        ce_id=event_id("drift", dataset, str(version)),
        source="strandline://data-host/consumers/drift",
        subject=f"{dataset}@{version}",
        time=value.detected_at,
    )


def test_drift_and_rows_policies_start_runs_only_when_their_condition_holds(
    config_for, tmp_path: Path, kafka_bootstrap: str
) -> None:
    out = tmp_path / "runs.jsonl"
    script = _script(
        tmp_path,
        f"""
        import json, os
        with open({str(out)!r}, "a") as fh:
            fh.write(json.dumps({{"dataset": os.environ["STRANDLINE_DATASET"],
                                 "version": int(os.environ["STRANDLINE_VERSION"]),
                                 "trigger": os.environ["STRANDLINE_TRIGGER"]}}) + "\\n")
    """,
    )
    action = {"type": "command", "argv": [sys.executable, str(script)]}
    config = config_for(
        retrain={
            "policies": [
                {"datasets": ["clicks"], "on": "drift", "action": action},
                {"datasets": ["orders"], "on": "rows", "min_row_change": 0.2, "action": action},
            ]
        }
    )
    consumer = start_consumer(config, "retrain")
    kafka = config.kafka
    try:
        publish(
            kafka_bootstrap,
            [
                version_event(kafka, "clicks", 1),  # a drift policy ignores plain versions
                _drift_detected(kafka, "clicks", 2, 1000),
                version_event(kafka, "orders", 1, rows=1000),  # first: no run yet, so it runs
            ],
        )
        wait_for(lambda: len(_run_lines(out)) == 2, 30, what="two runs")
        publish(
            kafka_bootstrap,
            [
                version_event(kafka, "orders", 2, rows=1100),  # +10 %: below 20 %
                version_event(kafka, "orders", 3, rows=1250),  # +25 % against the last run's 1000
            ],
        )
        wait_for(lambda: len(_run_lines(out)) == 3, 30, what="the rows run")
        wait_for(lambda: consumer.runner.metrics.count("acted") == 5, 30, what="all events taken in")
    finally:
        consumer.stop()
    runs = sorted((r["dataset"], r["version"], r["trigger"]) for r in _run_lines(out))
    assert runs == [("clicks", 2, "drift"), ("orders", 1, "rows"), ("orders", 3, "rows")]


def test_an_event_that_keeps_failing_is_dead_lettered_after_the_retries_and_the_next_is_handled(
    config_for, kafka_bootstrap: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import consumers.drift_service as drift_service

    # A version whose profile never reaches the profiles topic: a retriable failure every time.
    monkeypatch.setattr(drift_service, "PROFILE_WAIT_SECONDS", 0.2)
    config = config_for(consumers={"group_prefix": topic_prefix, "retries": 2, "retry_backoff_seconds": 0.1})
    kafka = config.kafka
    orphan = version_event(kafka, "sales", 1)
    value = json.loads(orphan.value)
    value["table"]["profile"] = {"topic": kafka.profiles_topic, "key": "x/0", "parts": 1}
    orphan = OutboxMessage(orphan.topic, orphan.key, json.dumps(value).encode(), orphan.headers)
    consumer = start_consumer(config, "drift")
    try:
        publish(kafka_bootstrap, [orphan, version_event(kafka, "sales", 2, status="invalid")])
        wait_for(lambda: consumer.runner.metrics.count("acted") == 1, 60, what="the next event handled")
        (dead,) = read_events_raw(kafka_bootstrap, kafka.dead_letter_topic, 1)
    finally:
        consumer.stop()
    assert dead["dlq_attempts"] == "3" and "is not on" in dead["dlq_reason"]
    assert dead["dlq_consumer"] == "drift" and dead["ce_type"] == "dataset.version.created"
    assert consumer.runner.metrics.count("dead_lettered") == 1


def test_a_run_that_reports_its_mlflow_run_gets_the_dataset_version_as_an_input(
    config_for, tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    tracking = (tmp_path / "mlruns").as_uri()
    client = MlflowClient(tracking_uri=tracking)
    mlflow_run = client.create_run(client.create_experiment("sales-model")).info.run_id
    script = _script(
        tmp_path,
        f"""
        import json, os
        json.dump({{"mlflow_run_id": {mlflow_run!r}}}, open(os.environ["STRANDLINE_RESULT_FILE"], "w"))
    """,
    )
    config = config_for(
        retrain={
            "mlflow_tracking_uri": tracking,
            "policies": [{"action": {"type": "command", "argv": [sys.executable, str(script)]}}],
        }
    )
    consumer = start_consumer(config, "retrain")
    try:
        publish(kafka_bootstrap, [version_event(config.kafka, "sales", 3)])
        inputs = wait_for(lambda: client.get_run(mlflow_run).inputs.dataset_inputs, 60, what="the MLflow input")
    finally:
        consumer.stop()
    (logged,) = inputs
    assert logged.dataset.name == "sales" and logged.dataset.digest == "sales-0003".ljust(32, "0")
    assert json.loads(logged.dataset.source)["version"] == 3
    assert {t.key: t.value for t in logged.tags}["mlflow.data.context"] == "training"


def test_a_run_cut_short_by_a_stop_is_recorded_interrupted_and_runs_again_at_the_next_start(
    config_for, tmp_path: Path, kafka_bootstrap: str
) -> None:
    out = tmp_path / "runs.jsonl"
    gate = tmp_path / "gate"
    script = _recording_script(tmp_path, out, gate)
    config = config_for(
        retrain={
            "stop_grace_seconds": 2,
            "policies": [{"action": {"type": "command", "argv": [sys.executable, str(script)]}}],
        }
    )
    first = start_consumer(config, "retrain")
    try:
        publish(kafka_bootstrap, [version_event(config.kafka, "sales", 1)])
        wait_for(lambda: len(_run_lines(out)) == 1, 30, what="the run started")
    finally:
        first.stop()  # SIGTERM to the command, which ignores the gate: it is killed, then recorded
    second = start_consumer(config, "retrain")
    try:
        wait_for(lambda: len(_run_lines(out)) == 2, 30, what="the run started again")
        gate.write_text("go")
        models = read_events(kafka_bootstrap, config.kafka.models_topic, min_count=4, timeout=30, settle=1.0)
    finally:
        second.stop()
    finished = [e.data for e in models if e.headers["ce_type"] == "model.retrain.finished"]
    assert [(f["version"], f["status"]) for f in finished] == [(1, "interrupted"), (1, "succeeded")]
    assert [r["version"] for r in _run_lines(out)] == [1, 1]
