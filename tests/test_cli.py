"""The command line as a person and a script use it: real subprocesses, real output."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.cli import cli

COMMANDS = [
    "watch",
    "scan",
    "datasets",
    "versions",
    "show",
    "events",
    "doctor",
    "restore",
    "diff",
    "tag",
    "tags",
    "gc",
    "verify",
]


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("STRANDLINE_")}
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        capture_output=True,
        text=True,
        env=base | (env or {}),
        cwd=cwd,
        timeout=120,
    )


def test_every_command_has_help_with_an_example_or_explanation() -> None:
    assert set(COMMANDS) <= set(cli.commands)  # type: ignore[attr-defined]
    for name in COMMANDS:
        out = run(name, "--help")
        assert out.returncode == 0, out.stderr
        assert "Usage: " in out.stdout and len(out.stdout.splitlines()) > 5


@pytest.fixture
def scanned(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str) -> tuple[Path, dict[str, str]]:
    data = tmp_path / "lake"
    (data / "sales").mkdir(parents=True)
    (data / "sales" / "a.csv").write_text("id\n1\n")
    (data / "sales" / "b.csv").write_text("id\n2\n")
    env = {
        "STRANDLINE_STATE_DIR": str(tmp_path / "state"),
        "STRANDLINE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "STRANDLINE_KAFKA_TOPIC_PREFIX": topic_prefix,
    }
    out = run("scan", str(data), "--json", env=env)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["outbox_backlog"] == 0
    assert [v["dataset"] for v in summary["versions"]] == ["sales"]
    return data, env


def test_scan_then_list_and_show_versions_as_json(scanned: tuple[Path, dict[str, str]]) -> None:
    data, env = scanned
    (data / "sales" / "b.csv").write_text("id\n3\n")
    assert run("scan", str(data), env=env).returncode == 0
    versions = json.loads(run("versions", "sales", "--json", env=env).stdout)
    assert [v["version"] for v in versions] == [1, 2]
    shown = json.loads(run("show", "sales@latest", "--json", "--files", env=env).stdout)
    assert shown["version"] == 2 and [c["path"] for c in shown["changes"]] == ["b.csv"]
    assert {f["path"] for f in shown["files_list"]} == {"a.csv", "b.csv"}
    datasets = json.loads(run("datasets", "--json", env=env).stdout)
    assert {d["name"]: d["versions"] for d in datasets} == {"lake": 0, "sales": 2}


def test_events_tail_prints_the_published_events(scanned: tuple[Path, dict[str, str]]) -> None:
    _, env = scanned
    out = run("events", "tail", "--from-beginning", "-n", "1", "--timeout", "20", "--json", env=env)
    assert out.returncode == 0, out.stderr
    event = json.loads(out.stdout.splitlines()[0])
    assert event["headers"]["ce_type"] == "dataset.version.created" and event["data"]["dataset"] == "sales"


def test_unknown_versions_and_bad_refs_say_what_to_do(scanned: tuple[Path, dict[str, str]]) -> None:
    _, env = scanned
    missing = run("show", "sales@9", env=env)
    assert missing.returncode == 2 and "strandline versions sales" in missing.stderr
    bad = run("show", "sales", env=env)
    assert bad.returncode == 2 and "NAME@N" in bad.stderr
    nobody = run("versions", "nope", env=env)
    assert nobody.returncode == 2 and "strandline datasets" in nobody.stderr


def test_doctor_fails_on_unreachable_kafka_and_says_how_to_fix_it(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    out = run(
        "doctor",
        str(tmp_path),
        env={"STRANDLINE_KAFKA_BOOTSTRAP": "127.0.0.1:1", "STRANDLINE_STATE_DIR": str(tmp_path / "s")},
    )
    assert out.returncode == 1
    assert "FAIL kafka" in out.stdout and "STRANDLINE_KAFKA_BOOTSTRAP" in out.stdout
    assert "max_user_watches" in out.stdout


def test_doctor_logs_in_to_the_real_broker_and_names_the_daemons_topics(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    (tmp_path / "d").mkdir()
    env = {
        "STRANDLINE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "STRANDLINE_KAFKA_TOPIC_PREFIX": topic_prefix,
        "STRANDLINE_STATE_DIR": str(tmp_path / "s"),
    }
    out = run("doctor", str(tmp_path), "--json", env=env)
    kafka = {c["name"]: c for c in json.loads(out.stdout)}["kafka"]
    assert kafka["ok"], kafka
    assert re.match(
        rf"logged in at {re.escape(kafka_bootstrap)} over PLAINTEXT: [1-9][0-9]* broker\(s\)", kafka["detail"]
    )
    assert f"topics {topic_prefix}.versions, {topic_prefix}.manifests" in kafka["detail"]
    assert "not there yet (the daemon creates them)" in kafka["detail"]  # a fresh prefix: no topics yet


def test_doctor_fails_when_the_port_is_not_a_kafka_listener_and_says_what_to_check(tmp_path: Path) -> None:
    import socket

    (tmp_path / "d").mkdir()
    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts connections, never answers Kafka
        port = listener.getsockname()[1]
        out = run(
            "doctor",
            str(tmp_path),
            env={"STRANDLINE_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}", "STRANDLINE_STATE_DIR": str(tmp_path / "s")},
        )
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    failed = lines.index(next(line for line in lines if line.startswith("FAIL kafka: cannot log in over PLAINTEXT")))
    assert f"no Kafka broker answers at 127.0.0.1:{port}" in lines[failed]
    assert lines[failed + 1].strip().startswith(f"→ something listens at 127.0.0.1:{port} but no Kafka answered")
    assert "check [kafka] bootstrap" in lines[failed + 1] and "security_protocol" in lines[failed + 1]


def test_scan_with_kafka_down_keeps_the_version_and_reports_the_backlog(tmp_path: Path) -> None:
    (tmp_path / "lake" / "x").mkdir(parents=True)
    (tmp_path / "lake" / "x" / "f.dat").write_text("1\n")
    env = {"STRANDLINE_KAFKA_BOOTSTRAP": "127.0.0.1:1", "STRANDLINE_STATE_DIR": str(tmp_path / "s")}
    out = run("scan", str(tmp_path / "lake"), "--publish-timeout", "2", env=env)
    assert out.returncode == 1
    assert "1 versions created; 1 events wait in the outbox" in out.stdout
    doctor = run("doctor", str(tmp_path / "lake"), "--json", env=env)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)}
    assert "1 events wait" in checks["outbox"]["detail"]


def test_a_config_error_is_one_clear_line_not_a_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text("settle_seconds = -1\n")
    out = run("watch", "--config", str(cfg))
    assert out.returncode == 2
    assert "settle_seconds" in out.stderr and "Traceback" not in out.stderr
