"""The daemon end to end: real files written by real tools, events read back from the real broker."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from schemas.config import DatasetConfig
from tests.helpers import probe_dataset, read_events, start_daemon, version_events, wait_for


def _xxh(path: Path) -> str:
    return xxhash.xxh3_128_hexdigest(path.read_bytes())


def test_parquet_and_csv_dropped_in_each_yield_one_event_with_hash_and_headers(
    config_for, data_dir: Path, tmp_path: Path, kafka_bootstrap: str
) -> None:
    config = config_for([DatasetConfig(name="sales", root=data_dir)])
    running = start_daemon(config)
    try:
        table = pa.table({"id": list(range(1000)), "amount": [i * 0.5 for i in range(1000)]})
        pq.write_table(table, data_dir / "orders.parquet")
        wait_for(lambda: len(running.versions("sales")) == 1, what="first version")
        pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]}).to_csv(data_dir / "items.csv", index=False)
        wait_for(lambda: len(running.versions("sales")) == 2, what="second version")
        events = version_events(read_events(kafka_bootstrap, config.kafka.versions_topic, min_count=2))
    finally:
        running.stop()
    assert [e.data["version"] for e in events] == [1, 2]
    first, second = events
    assert first.key == "sales"
    assert first.data["changes"] == [
        {
            "path": "orders.parquet",
            "change": "added",
            "size": (data_dir / "orders.parquet").stat().st_size,
            "new_hash": _xxh(data_dir / "orders.parquet"),
        }
    ]
    assert second.data["changes"][0]["path"] == "items.csv"
    assert second.data["changes"][0]["new_hash"] == _xxh(data_dir / "items.csv")
    assert second.data["parent_version_id"] == first.data["version_id"]
    assert second.data["totals"]["files"] == 2
    h = first.headers
    assert h["ce_specversion"] == "1.0" and h["ce_type"] == "dataset.version.created"
    assert h["ce_source"] == "strandline://test-host/sales" and h["ce_subject"] == "sales@1"
    assert h["content-type"] == "application/json" and h["ce_id"] and h["ce_time"]
    assert len({e.headers["ce_id"] for e in events}) == 2


def test_a_burst_of_200_files_yields_one_version(config_for, data_dir: Path, kafka_bootstrap: str) -> None:
    config = config_for([DatasetConfig(name="burst", root=data_dir, settle_seconds=0.5)])
    running = start_daemon(config)
    try:
        for i in range(200):
            (data_dir / f"part-{i:03d}.csv").write_text(f"id,value\n{i},{i * i}\n")
        events = version_events(
            read_events(kafka_bootstrap, config.kafka.versions_topic, min_count=1, settle=1.5), "burst"
        )
        versions = running.versions("burst")
    finally:
        running.stop()
    assert len(versions) == 1 and len(events) == 1
    assert events[0].data["totals"]["added"] == 200 and versions[0].files == 200


def test_slow_chunked_write_yields_one_version_of_the_final_content(
    config_for, data_dir: Path, kafka_bootstrap: str
) -> None:
    config = config_for([DatasetConfig(name="slow", root=data_dir, settle_seconds=0.2)])
    running = start_daemon(config)
    target = data_dir / "slow.jsonl"
    try:
        with target.open("w") as fh:
            for i in range(5):
                fh.write(f'{{"row": {i}}}\n')
                fh.flush()
                time.sleep(0.5)  # the writer pauses longer than the settle window, file still open
        final = _xxh(target)
        wait_for(lambda: running.versions("slow"), what="a version after the close")
        events = version_events(read_events(kafka_bootstrap, config.kafka.versions_topic, settle=1.0))
        versions = running.versions("slow")
    finally:
        running.stop()
    assert len(versions) == 1 and len(events) == 1
    assert events[0].data["changes"][0]["new_hash"] == final


def test_write_to_temp_name_then_rename_yields_one_version_and_no_temp_file(
    config_for, data_dir: Path, tmp_path: Path, kafka_bootstrap: str
) -> None:
    config = config_for([DatasetConfig(name="renamed", root=data_dir, settle_seconds=0.2)])
    running = start_daemon(config)
    try:
        tmp = data_dir / "report.csv.tmp"
        tmp.write_text("a,b\n" + "1,2\n" * 1000)
        time.sleep(0.5)  # a pause longer than settle while only the temp file exists
        subprocess.run(["mv", str(tmp), str(data_dir / "report.csv")], check=True)
        events = version_events(read_events(kafka_bootstrap, config.kafka.versions_topic, settle=1.0))
    finally:
        running.stop()
    assert len(events) == 1
    assert [c["path"] for c in events[0].data["changes"]] == ["report.csv"]
    assert events[0].data["changes"][0]["new_hash"] == _xxh(data_dir / "report.csv")


def test_touch_without_change_and_a_reverted_edit_make_no_version(config_for, data_dir: Path) -> None:
    (data_dir / "stable.csv").write_text("a\n1\n")
    # The edit and its revert must both land inside the window: 1 s, not 0.3 s, because a loaded
    # CI machine once descheduled this test between the two writes for longer than 0.3 s.
    config = config_for([DatasetConfig(name="stable", root=data_dir, settle_seconds=1.0)])
    running = start_daemon(config)
    try:
        wait_for(lambda: running.versions("stable"), what="initial version")
        subprocess.run(["touch", str(data_dir / "stable.csv")], check=True)
        original = (data_dir / "stable.csv").read_bytes()
        (data_dir / "stable.csv").write_text("a\n2\n")
        (data_dir / "stable.csv").write_bytes(original)  # reverted inside the window
        # A later real change proves the daemon is live and has processed what came before.
        (data_dir / "other.csv").write_text("b\n")
        wait_for(lambda: len(running.versions("stable")) >= 2, what="version for other.csv")
        versions = running.versions("stable")
        with running.catalog() as c:
            changes = c.changes("stable", versions[-1].seq)
    finally:
        running.stop()
    assert len(versions) == 2
    assert [ch.path for ch in changes] == ["other.csv"]


def test_rsync_and_tar_and_cp_yield_one_version_each(config_for, data_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}.csv").write_text(f"x\n{i}\n" * 100)
    config = config_for([DatasetConfig(name="tools", root=data_dir, settle_seconds=0.4), probe_dataset(tmp_path)])
    running = start_daemon(config)
    try:
        subprocess.run(["cp", "-r", str(src), str(data_dir / "copied")], check=True)
        wait_for(lambda: len(running.versions("tools")) == 1, what="cp version")
        if shutil.which("rsync"):
            subprocess.run(["rsync", "-a", f"{src}/", str(data_dir / "synced")], check=True)
            wait_for(lambda: len(running.versions("tools")) == 2, what="rsync version")
        archive = tmp_path / "a.tar"
        subprocess.run(["tar", "-cf", str(archive), "-C", str(tmp_path), "src"], check=True)
        (data_dir / "untarred").mkdir()
        expected = len(running.versions("tools")) + 1
        subprocess.run(["tar", "-xf", str(archive), "-C", str(data_dir / "untarred")], check=True)
        wait_for(lambda: len(running.versions("tools")) == expected, what="tar version")
        running.barrier("tools")  # no further version may follow (e.g. from tar restoring mtimes)
        versions = running.versions("tools")
    finally:
        running.stop()
    assert len(versions) == expected
    assert versions[-1].added == 20


def test_folders_moved_in_and_renamed_inside_yield_one_version_each(config_for, data_dir: Path, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    (staging / "batch" / "nested").mkdir(parents=True)
    for i in range(300):
        (staging / "batch" / f"f{i:03d}.csv").write_text(f"{i}\n")
    (staging / "batch" / "nested" / "deep.csv").write_text("deep\n")
    config = config_for([DatasetConfig(name="moves", root=data_dir, settle_seconds=0.3)])
    running = start_daemon(config)
    try:
        subprocess.run(["mv", str(staging / "batch"), str(data_dir / "batch")], check=True)
        wait_for(lambda: len(running.versions("moves")) == 1, what="version of the moved-in folder")
        subprocess.run(["mv", str(data_dir / "batch"), str(data_dir / "renamed")], check=True)
        wait_for(lambda: len(running.versions("moves")) == 2, what="version of the rename")
        (data_dir / "renamed" / "nested" / "deep.csv").write_text("deeper\n")  # still watched after the move
        wait_for(lambda: len(running.versions("moves")) == 3, what="version of an edit inside")
        versions = running.versions("moves")
        with running.catalog() as c:
            manifest = c.manifest("moves", 3)
    finally:
        running.stop()
    assert (versions[0].added, versions[0].files) == (301, 301)
    assert (versions[1].added, versions[1].removed, versions[1].files) == (301, 301, 301)
    assert (versions[2].modified, versions[2].files) == (1, 301)
    assert set(manifest) == {f"renamed/f{i:03d}.csv" for i in range(300)} | {"renamed/nested/deep.csv"}


def test_a_symlink_escaping_the_root_is_not_followed_and_is_reported(
    config_for, data_dir: Path, tmp_path: Path, kafka_bootstrap: str
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not version me")
    config = config_for([DatasetConfig(name="links", root=data_dir, settle_seconds=0.2)])
    running = start_daemon(config)
    try:
        os.symlink(secret, data_dir / "escape.txt")
        os.symlink(data_dir / "loop", data_dir / "loop")
        (data_dir / "real.csv").write_text("a\n")
        wait_for(lambda: running.versions("links"), what="version with real.csv")
        events = read_events(kafka_bootstrap, config.kafka.versions_topic, min_count=3, settle=0.5)
        with running.catalog() as c:
            manifest = c.manifest("links", 1)
    finally:
        running.stop()
    assert set(manifest) == {"real.csv"}
    rejected = {e.data["path"]: e.data["reason"] for e in events if e.headers["ce_type"] == "dataset.input.rejected"}
    assert rejected["escape.txt"] == "symlink_escapes_root"
    assert "loop" in rejected


def test_commit_marker_cuts_a_version_only_when_it_appears(config_for, data_dir: Path, tmp_path: Path) -> None:
    config = config_for(
        [
            DatasetConfig(name="spark", root=data_dir, settle_seconds=0.2, commit_marker="_SUCCESS"),
            probe_dataset(tmp_path),
        ]
    )
    running = start_daemon(config)
    try:
        (data_dir / "part-00000.parquet").write_bytes(b"PAR1" + os.urandom(100))
        (data_dir / "part-00001.parquet").write_bytes(b"PAR1" + os.urandom(100))
        running.barrier("spark")  # the parts were seen and acted on: without the marker, no version
        assert running.versions("spark") == []
        (data_dir / "_SUCCESS").touch()
        wait_for(lambda: running.versions("spark"), what="version after marker")
        versions = running.versions("spark")
        with running.catalog() as c:
            manifest = c.manifest("spark", 1)
    finally:
        running.stop()
    assert len(versions) == 1
    assert set(manifest) == {"part-00000.parquet", "part-00001.parquet"}


def test_folder_mode_makes_a_dataset_per_subfolder_including_new_ones(config_for, data_dir: Path) -> None:
    (data_dir / "sales").mkdir()
    (data_dir / "sales" / "a.csv").write_text("a\n")
    (data_dir / "loose.csv").write_text("b\n")
    config = config_for()
    running = start_daemon(config, folder=data_dir)
    try:
        wait_for(lambda: running.versions("sales") and running.versions("data"), what="initial versions")
        (data_dir / "late").mkdir()
        (data_dir / "late" / "x.csv").write_text("c\n")
        wait_for(lambda: running.versions("late"), what="dataset for a new subfolder")
        with running.catalog() as c:
            top = c.manifest("data", 1)
    finally:
        running.stop()
    assert set(top) == {"loose.csv"}


def test_changes_made_while_stopped_are_versioned_once_at_start(config_for, data_dir: Path) -> None:
    config = config_for([DatasetConfig(name="offline", root=data_dir)])
    (data_dir / "a.csv").write_text("1\n")
    running = start_daemon(config)
    wait_for(lambda: running.versions("offline"), what="first version")
    running.stop()
    (data_dir / "a.csv").write_text("2\n")
    (data_dir / "b.csv").write_text("3\n")
    running = start_daemon(config)
    try:
        wait_for(lambda: len(running.versions("offline")) == 2, what="catch-up version")
        running.stop()
        running = start_daemon(config)  # and a third start with no change makes nothing
        engine = running.daemon.engine
        assert engine is not None
        wait_for(lambda: engine.passes >= 1 and engine.settled("offline"), what="start-up reconcile done")
        versions = running.versions("offline")
    finally:
        running.stop()
    assert len(versions) == 2
    assert (versions[1].added, versions[1].modified) == (1, 1)
