"""Bad input never stops the daemon: each bad file gets a log line and an event, the rest goes on."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from schemas.config import DatasetConfig
from tests.helpers import read_events, start_daemon, unprivileged_prefix, wait_for


def test_odd_files_are_reported_and_good_files_still_versioned(
    config_for, data_dir: Path, kafka_bootstrap: str
) -> None:
    config = config_for([DatasetConfig(name="odd", root=data_dir, settle_seconds=0.2)])
    running = start_daemon(config)
    try:
        os.mkfifo(data_dir / "pipe")
        with open(os.path.join(os.fsencode(data_dir), b"latin1-\xe9.csv"), "wb") as fh:
            fh.write(b"x\n")
        long_name = "L" * 250 + ".csv"
        (data_dir / long_name).write_text("long\n")
        (data_dir / "empty.csv").write_bytes(b"")
        (data_dir / "spaces and ünïcode $(reboot).csv").write_text("ok\n")
        wait_for(lambda: (v := running.versions("odd")) and v[-1].files == 3, what="good files versioned")
        events = read_events(kafka_bootstrap, config.kafka.versions_topic, min_count=3, settle=0.5)
        with running.catalog() as c:
            manifest = c.manifest("odd", running.versions("odd")[-1].seq)
    finally:
        running.stop()
    assert set(manifest) == {long_name, "empty.csv", "spaces and ünïcode $(reboot).csv"}
    rejected = {e.data["path"]: e.data["reason"] for e in events if e.headers["ce_type"] == "dataset.input.rejected"}
    assert rejected["pipe"] == "not_regular_file"
    assert rejected["latin1-\\xe9.csv"] == "non_utf8_name"


def test_a_root_that_disappears_is_reported_and_resumes_when_back(config_for, tmp_path: Path) -> None:
    root = tmp_path / "vanishing"
    root.mkdir()
    (root / "a.csv").write_text("1\n")
    config = config_for([DatasetConfig(name="gone", root=root, settle_seconds=0.2)], reconcile_interval_seconds=0.5)
    running = start_daemon(config)
    try:
        wait_for(lambda: running.versions("gone"), what="first version")
        shutil.rmtree(root)
        wait_for(
            lambda: (
                running.daemon.engine is not None and running.daemon.engine._datasets["gone"].versioner._root_missing
            ),
            what="root missing noticed",
        )
        root.mkdir()
        (root / "a.csv").write_text("1\n")
        (root / "b.csv").write_text("2\n")
        wait_for(lambda: len(running.versions("gone")) == 2, what="version after the root came back")
        versions = running.versions("gone")
    finally:
        running.stop()
    assert versions[-1].files == 2 and versions[-1].added == 1 and versions[-1].removed == 0


def test_unreadable_files_and_folders_are_reported_and_the_rest_is_versioned(tmp_path: Path) -> None:
    prefix = unprivileged_prefix()
    base = Path(tempfile.mkdtemp(prefix="strandline-perm-"))  # outside tmp_path: that is root-only
    try:
        base.chmod(0o755)
        ds = base / "lake" / "ds"
        (ds / "locked").mkdir(parents=True)
        (ds / "good.csv").write_text("a\n1\n")
        (ds / "secret.csv").write_text("a\n2\n")
        (ds / "locked" / "inside.csv").write_text("a\n3\n")
        (ds / "secret.csv").chmod(0o000)
        (ds / "locked").chmod(0o000)
        state = base / "state"
        state.mkdir()
        if prefix:
            os.chown(state, 65534, 65534)
        env = {k: v for k, v in os.environ.items() if not k.startswith("STRANDLINE_")}
        env |= {"STRANDLINE_STATE_DIR": str(state)}
        cli = [*prefix, sys.executable, "-m", "daemon.cli"]
        scan = subprocess.run(
            [*cli, "scan", str(base / "lake"), "--no-publish", "--json", "--log-format", "json"],
            capture_output=True,
            text=True,
            env=env,
            cwd=base,
            timeout=120,
        )
        show = subprocess.run(
            [*cli, "show", "ds@latest", "--files", "--json"],
            capture_output=True,
            text=True,
            env=env,
            cwd=base,
            timeout=60,
        )
    finally:
        for p in (base / "lake" / "ds" / "locked", base / "lake" / "ds" / "secret.csv"):
            p.chmod(0o700)
        shutil.rmtree(base)
    assert scan.returncode == 0, scan.stderr
    logs = [json.loads(line) for line in scan.stderr.splitlines() if line.startswith("{")]
    denied = {m for r in logs if "permission_denied" in (m := r["message"])}
    assert any("secret.csv" in m and "grant the daemon's user read access" in m for m in denied), logs
    assert any("locked" in m for m in denied), logs
    assert show.returncode == 0, show.stderr
    assert [f["path"] for f in json.loads(show.stdout)["files_list"]] == ["good.csv"]
