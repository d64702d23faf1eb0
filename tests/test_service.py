"""`strandline watch` as systemd runs it: a real process, NOTIFY_SOCKET, SIGHUP reloads, JSON logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from daemon.catalog import Catalog
from tests.helpers import NotifySocket, json_log_lines, wait_for


def _config(state: Path, bootstrap: str, prefix: str, datasets: dict[str, Path], suite: Path | None = None) -> str:
    text = (
        f'state_dir = "{state}"\nsettle_seconds = 0.2\nreconcile_interval_seconds = 0\n'
        f'[kafka]\nbootstrap = "{bootstrap}"\ntopic_prefix = "{prefix}"\npartitions = 1\n'
    )
    for name, root in datasets.items():
        text += f'[[datasets]]\nname = "{name}"\nroot = "{root}"\n'
        if suite is not None and name == "sales":
            text += f'suite = "{suite}"\n'
    return text


def _versions(state: Path, name: str) -> list[int]:
    if not (state / "catalog.sqlite").exists():
        return []
    with Catalog(state / "catalog.sqlite", readonly=True) as c:
        try:
            return [v.seq for v in c.versions(name)]
        except Exception:
            return []


def test_watch_notifies_systemd_reloads_on_sighup_and_logs_json(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    state, cfg = tmp_path / "state", tmp_path / "strandline.toml"
    sales, extra = tmp_path / "sales", tmp_path / "extra"
    sales.mkdir()
    extra.mkdir()
    cfg.write_text(_config(state, kafka_bootstrap, topic_prefix, {"sales": sales}))
    notify = NotifySocket(tmp_path / "notify.sock")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRANDLINE_")}
    env |= {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "2000000"}
    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "watch", "--config", str(cfg)], stdout=log, stderr=log, env=env
        )
    try:
        notify.wait("READY=1")
        notify.wait("WATCHDOG=1")
        (sales / "a.csv").write_text("id\n1\n")
        wait_for(lambda: _versions(state, "sales") == [1], what="sales@1")

        # A dataset added to the config starts on SIGHUP and versions a file.
        cfg.write_text(_config(state, kafka_bootstrap, topic_prefix, {"sales": sales, "extra": extra}))
        notify.seen.clear()
        proc.send_signal(signal.SIGHUP)
        notify.wait("RELOADING=1")
        notify.wait("READY=1")
        (extra / "b.txt").write_text("new dataset")
        wait_for(lambda: _versions(state, "extra") == [1], what="extra@1 after the reload")

        # A broken config is refused with a clear log line; the daemon keeps what it had.
        cfg.write_text("this is [not toml")
        notify.seen.clear()
        proc.send_signal(signal.SIGHUP)
        notify.wait("READY=1")
        (sales / "c.csv").write_text("id\n3\n")
        wait_for(lambda: _versions(state, "sales") == [1, 2], what="sales@2 after a failed reload")
        assert proc.poll() is None

        # Removing a dataset stops it: a later file there makes no version.
        cfg.write_text(_config(state, kafka_bootstrap, topic_prefix, {"sales": sales}))
        notify.seen.clear()
        proc.send_signal(signal.SIGHUP)
        notify.wait("READY=1")
        (extra / "late.txt").write_text("not watched any more")
        (sales / "d.csv").write_text("id\n4\n")
        wait_for(lambda: _versions(state, "sales") == [1, 2, 3], what="sales@3")
        assert _versions(state, "extra") == [1]

        proc.send_signal(signal.SIGTERM)
        notify.wait("STOPPING=1")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()

    lines = json_log_lines(log_path)
    assert lines, log_path.read_text()
    assert all({"ts", "level", "logger", "message"} <= line.keys() for line in lines)
    created = [line for line in lines if "version 1 created" in line["message"] and line.get("dataset") == "extra"]
    assert created and created[0]["version"] == 1
    reloads = [line for line in lines if line["message"].startswith("reload:")]
    assert any("1 datasets added (extra)" in line["message"] for line in reloads)
    assert any(line["level"] == "ERROR" and "not valid TOML" in line["message"] for line in reloads)
    assert any("1 removed (extra)" in line["message"] for line in reloads)
