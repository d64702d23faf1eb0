"""The time machine end to end: snapshots before publish, restore, diff, tags, gc, verify.

Versions are made by the real daemon (or `strandline scan`) from files written by real tools;
the commands run as `strandline` subprocesses on the same config; events are read back from
the real broker.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from daemon.catalog import Catalog
from daemon.config import catalog_path, store_path
from daemon.content_store import ContentStore
from daemon.events import cloud_event
from daemon.restore import RESTORING_MARKER
from schemas.config import DatasetConfig, StrandlineConfig
from schemas.events import RetrainStarted
from tests.helpers import (
    fail_pack_fsyncs,
    probe_dataset,
    publish,
    read_events,
    start_daemon,
    version_events,
    wait_for,
)

MiB = 1024 * 1024


def write_toml(config: StrandlineConfig, path: Path, *, s3_endpoint: str | None = None) -> Path:
    """The config as a TOML file, for the `strandline` subprocesses (only what these tests set)."""
    lines = [
        f'state_dir = "{config.state_dir}"',
        f"settle_seconds = {config.settle_seconds}",
        "reconcile_interval_seconds = 0",
        f'host = "{config.host}"',
        "[kafka]",
        f'bootstrap = "{config.kafka.bootstrap}"',
        f'topic_prefix = "{config.kafka.topic_prefix}"',
        "partitions = 1",
    ]
    if config.store.path is not None:
        lines += ["[store]", f'path = "{config.store.path}"']
    if s3_endpoint is not None:
        lines += ["[s3]", f'endpoint_url = "{s3_endpoint}"']
    for ds in config.datasets:
        lines += ["[[datasets]]", f'name = "{ds.name}"', f'root = "{ds.root}"', f'snapshot = "{ds.snapshot}"']
        if ds.settle_seconds is not None:
            lines.append(f"settle_seconds = {ds.settle_seconds}")
        if ds.keep_last is not None:
            lines.append(f"keep_last = {ds.keep_last}")
    path.write_text("\n".join(lines) + "\n")
    return path


def strandline(cfg: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRANDLINE_")}
    done = subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args, "-c", str(cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    if check:
        assert done.returncode == 0, f"strandline {' '.join(args)}: {done.stderr}"
    return done


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file under root (hidden ones too) by relative path."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()
    }


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def snapshot_of(event: Any) -> dict[str, Any]:
    return event.data["snapshot"]  # type: ignore[no-any-return]


# -- round trip --------------------------------------------------------------------------------


def test_every_version_of_a_changing_dataset_restores_byte_for_byte(
    config_for: Any, data_dir: Path, tmp_path: Path, kafka_bootstrap: str
) -> None:
    config = config_for([DatasetConfig(name="sales", root=data_dir, snapshot="copy"), probe_dataset(tmp_path)])
    cfg = write_toml(config, tmp_path / "strandline.toml")
    expected: dict[int, dict[str, bytes]] = {}  # version -> the files it holds
    running = start_daemon(config)

    def settled() -> None:
        # A barrier, not a version count: under load two writes may straddle a quiet period.
        running.barrier("sales")
        expected[running.versions("sales")[-1].seq] = tree(data_dir)

    try:
        # 1: a CSV from pandas, a binary file in a subfolder.
        pd.DataFrame({"id": range(100), "v": [i * 0.5 for i in range(100)]}).to_csv(data_dir / "t.csv", index=False)
        (data_dir / "raw").mkdir()
        (data_dir / "raw" / "blob.bin").write_bytes(random_bytes(300_000, 1))
        settled()
        # 2: a modification, an addition, a removal.
        with open(data_dir / "t.csv", "a") as fh:
            fh.write("100,50.0\n")
        (data_dir / "notes.txt").write_text("hello\n")
        (data_dir / "raw" / "blob.bin").unlink()
        settled()
        # 3: a file over the chunking threshold, copied in with cp.
        big = tmp_path / "big.bin"
        big.write_bytes(random_bytes(12 * MiB, 3))
        subprocess.run(["cp", str(big), str(data_dir / "big.bin")], check=True)
        settled()
        made = len(running.versions("sales")) + len(running.versions("probe"))
        events = version_events(read_events(kafka_bootstrap, config.kafka.versions_topic, min_count=made), "sales")
    finally:
        running.stop()
    assert len(expected) == 3  # each step made a version
    assert [snapshot_of(e) for e in events] == [{"policy": "copy", "restorable": True}] * len(events)
    for n, files in expected.items():
        out = tmp_path / f"restored-{n}"
        done = strandline(cfg, "restore", f"sales@{n}", "--to", str(out), "--json")
        assert json.loads(done.stdout)["files"] == len(files)
        assert tree(out) == files, f"version {n} did not come back byte for byte"
    # Each content once: t.csv and blob.bin (version 1), the new t.csv and notes.txt (2), and
    # big.bin, chunked (3).
    store = ContentStore(store_path(config))
    assert store.stats().blobs == 4 and store.stats().recipes == 1


def test_the_same_bytes_are_stored_once_across_versions_and_datasets(config_for: Any, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    shared = random_bytes(200_000, 7)
    (a / "x.bin").write_bytes(shared)
    (b / "copy-of-x.bin").write_bytes(shared)
    (b / "own.bin").write_bytes(random_bytes(50_000, 8))
    config = config_for(
        [DatasetConfig(name="a", root=a, snapshot="copy"), DatasetConfig(name="b", root=b, snapshot="copy")]
    )
    cfg = write_toml(config, tmp_path / "strandline.toml")
    strandline(cfg, "scan", "--no-publish")
    (a / "also-x.bin").write_bytes(shared)  # a second version of a, naming the same bytes again
    strandline(cfg, "scan", "--no-publish")
    stats = ContentStore(store_path(config)).stats()
    assert stats.blobs == 2 and stats.blob_bytes == 250_000
    with Catalog(catalog_path(config), readonly=True) as catalog:
        assert [v.restorable for v in catalog.versions("a")] == [True, True]


def test_appending_1_mib_to_a_large_csv_stores_about_1_mib(config_for: Any, data_dir: Path, tmp_path: Path) -> None:
    rng = random.Random(5)

    def rows(n: int) -> str:
        return "".join(f"{rng.randrange(10**9)},{rng.random():.6f},name-{rng.randrange(10**6)}\n" for _ in range(n))

    csv = data_dir / "events.csv"
    with open(csv, "w") as fh:
        while fh.tell() < 40 * MiB:
            fh.write(rows(10_000))
    config = config_for([DatasetConfig(name="ev", root=data_dir, snapshot="copy")])
    cfg = write_toml(config, tmp_path / "strandline.toml")
    strandline(cfg, "scan", "--no-publish")
    before = ContentStore(store_path(config)).stats().bytes
    appended = 0
    with open(csv, "a") as fh:
        while appended < MiB:
            chunk = rows(1000)
            fh.write(chunk)
            appended += len(chunk)
    strandline(cfg, "scan", "--no-publish")
    grew = ContentStore(store_path(config)).stats().bytes - before
    assert appended <= grew <= 1.2 * appended + 256 * 1024, (grew, appended)  # one chunk of slack at the seam


# -- diff --------------------------------------------------------------------------------------


def test_diff_reports_the_files_schema_rows_and_statistics_that_changed(
    config_for: Any, data_dir: Path, tmp_path: Path
) -> None:
    config = config_for([DatasetConfig(name="m", root=data_dir, snapshot="copy")])
    cfg = write_toml(config, tmp_path / "strandline.toml")
    pd.DataFrame({"id": [1, 2, 3, 4], "price": [10.0, 20.0, 30.0, 40.0]}).to_parquet(data_dir / "p.parquet")
    (data_dir / "readme.txt").write_text("v1\n")
    strandline(cfg, "scan", "--no-publish")
    df = pd.DataFrame({"id": range(1, 7), "price": [10.0, 20.0, 30.0, 40.0, 50.0, None], "region": ["eu"] * 6})
    df.to_parquet(data_dir / "p.parquet")
    (data_dir / "readme.txt").unlink()
    (data_dir / "extra.txt").write_text("new\n")
    strandline(cfg, "scan", "--no-publish")

    got = json.loads(strandline(cfg, "diff", "m@1", "m@latest", "--json").stdout)
    assert (got["a"], got["b"], got["identical"]) == ("m@1", "m@2", False)
    assert {(c["path"], c["change"]) for c in got["changes"]} == {
        ("p.parquet", "modified"),
        ("readme.txt", "removed"),
        ("extra.txt", "added"),
    }
    modified = next(c for c in got["changes"] if c["change"] == "modified")
    assert modified["size"] == (data_dir / "p.parquet").stat().st_size
    assert got["rows"] == {"a": 4, "b": 6, "change": 2}
    assert [f["name"] for f in got["schema_change"]["added"]] == ["region"]
    cols = {c["name"]: c for c in got["columns"]}
    assert cols["price"]["mean"] == {"a": 25.0, "b": 30.0, "change": 5.0}
    assert cols["price"]["null_rate"]["a"] == 0.0 and cols["price"]["null_rate"]["b"] == pytest.approx(1 / 6)
    assert cols["id"]["max"] == {"a": 4.0, "b": 6.0, "change": 2.0}
    assert cols["region"]["presence"] == "added"
    human = strandline(cfg, "diff", "m@1", "m@2").stdout
    assert "rows: 4 → 6 (+2)" in human and "+ region" in human and "- readme.txt" in human


# -- tags, gc, lineage ---------------------------------------------------------------------------


def test_gc_keeps_the_newest_tagged_and_lineage_versions_and_marks_the_rest(
    config_for: Any, data_dir: Path, tmp_path: Path, kafka_bootstrap: str
) -> None:
    config = config_for([DatasetConfig(name="g", root=data_dir, snapshot="copy", keep_last=1)])
    cfg = write_toml(config, tmp_path / "strandline.toml")
    contents = {}
    for n in range(1, 5):
        contents[n] = random_bytes(100_000 + n, n)
        (data_dir / "data.bin").write_bytes(contents[n])
        strandline(cfg, "scan", "--no-publish")
    strandline(cfg, "tag", "g@1", "baseline")
    with Catalog(catalog_path(config), readonly=True) as catalog:
        v2 = catalog.version("g", 2)
    # A retraining run on version 2, published by a retrain consumer (possibly on another host).
    run = RetrainStarted(
        run_id="run-42",
        dataset="g",
        version=2,
        version_id=v2.version_id,
        trigger="version",
        action="command",
        started_at=v2.created_at,
        host="trainer",
    )
    publish(
        kafka_bootstrap,
        [
            cloud_event(
                config.kafka.models_topic,
                "g",
                "model.retrain.started",
                run,
                ce_id="run-42",
                source="strandline://trainer/retrain",
                subject="g@2",
                time=v2.created_at,
            )
        ],
    )

    dry = json.loads(strandline(cfg, "gc", "--dry-run", "--json").stdout)
    assert dry["collected"] == {"g": [3]} and dry["bytes"] == 100_003 and dry["objects"] == 1
    assert dry["lineage_events_read"] == 1
    assert json.loads(strandline(cfg, "versions", "g", "--json").stdout)[2]["restorable"] is True  # dry: no change

    done = json.loads(strandline(cfg, "gc", "--json").stdout)
    assert done["collected"] == {"g": [3]} and done["bytes"] == 100_003
    versions = json.loads(strandline(cfg, "versions", "g", "--json").stdout)
    assert [(v["restorable"], v["collected_at"] is not None) for v in versions] == [
        (True, False),
        (True, False),
        (False, True),
        (True, False),
    ]
    refused = strandline(cfg, "restore", "g@3", "--to", str(tmp_path / "r3"), check=False)
    assert refused.returncode == 2 and "gc collected its bytes" in refused.stderr
    assert not (tmp_path / "r3").exists()
    for ref, n in (("g@baseline", 1), ("g@2", 2), ("g@latest", 4)):
        strandline(cfg, "restore", ref, "--to", str(tmp_path / f"r{n}"))
        assert (tmp_path / f"r{n}" / "data.bin").read_bytes() == contents[n]
    assert strandline(cfg, "verify").returncode == 0
    again = json.loads(strandline(cfg, "gc", "--json").stdout)
    assert again["collected"] == {} and again["bytes"] == 0


# -- damage and hostile manifests ----------------------------------------------------------------


def test_a_corrupted_object_is_caught_by_verify_and_by_restore_which_leaves_the_target_alone(
    config_for: Any, data_dir: Path, tmp_path: Path
) -> None:
    config = config_for([DatasetConfig(name="c", root=data_dir, snapshot="copy")])
    cfg = write_toml(config, tmp_path / "strandline.toml")
    (data_dir / "good.txt").write_text("fine\n")
    (data_dir / "victim.bin").write_bytes(random_bytes(10_000, 9))
    strandline(cfg, "scan", "--no-publish")
    with Catalog(catalog_path(config), readonly=True) as catalog:
        digest = catalog.manifest("c", 1)["victim.bin"].hash
    found = ContentStore(store_path(config)).backend.locate("blob", digest)
    assert found is not None
    blob, start, _size = found
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as fh:  # one flipped byte, same size: only hashing can tell
        fh.seek(start + 5000)
        byte = fh.read(1)
        fh.seek(start + 5000)
        fh.write(bytes([byte[0] ^ 0xFF]))

    checked = strandline(cfg, "verify", "--json", check=False)
    assert checked.returncode == 1
    problems = json.loads(checked.stdout)["problems"]
    assert [(p["hash"], p["problem"]) for p in problems] == [(digest, "damaged")]
    assert problems[0]["used_by"] == [["c", 1, "victim.bin"]]

    target = tmp_path / "target"
    target.mkdir()
    (target / "mine.txt").write_text("keep me\n")
    failed = strandline(cfg, "restore", "c@1", "--to", str(target), check=False)
    assert failed.returncode == 2 and "victim.bin" in failed.stderr
    assert tree(target) == {"mine.txt": b"keep me\n"}


def test_verify_names_every_content_a_version_needs_that_the_store_lost(
    config_for: Any, data_dir: Path, tmp_path: Path
) -> None:
    config = config_for([DatasetConfig(name="m", root=data_dir, snapshot="copy")])
    cfg = write_toml(config, tmp_path / "strandline.toml")
    for i in range(30):
        (data_dir / f"f{i:02}.txt").write_text(f"file {i}\n")
    strandline(cfg, "scan", "--no-publish")
    with Catalog(catalog_path(config), readonly=True) as catalog:
        manifest = catalog.manifest("m", 1)
    packs = list((Path(store_path(config)) / "packs").glob("*.pack"))
    assert packs
    for pack in packs:  # lost with the disk that held them; the index forgets them on open
        pack.unlink()
    checked = strandline(cfg, "verify", "--json", check=False)
    assert checked.returncode == 1
    problems = json.loads(checked.stdout)["problems"]
    assert sorted(p["hash"] for p in problems) == sorted(st.hash for st in manifest.values())
    assert {p["problem"] for p in problems} == {"missing"}
    by_hash = {p["hash"]: p["used_by"] for p in problems}
    assert by_hash[manifest["f07.txt"].hash] == [["m", 1, "f07.txt"]]


def test_a_manifest_path_with_dotdot_cannot_make_restore_write_outside_the_target(
    config_for: Any, data_dir: Path, tmp_path: Path
) -> None:
    config = config_for([DatasetConfig(name="h", root=data_dir, snapshot="copy")])
    cfg = write_toml(config, tmp_path / "strandline.toml")
    (data_dir / "a.txt").write_text("payload\n")
    strandline(cfg, "scan", "--no-publish")
    # A catalog edited by someone hostile: the entry now points two folders up.
    with sqlite3.connect(catalog_path(config)) as db:
        db.execute("UPDATE entries SET path='../../escaped.txt' WHERE path='a.txt'")
    target = tmp_path / "deep" / "target"
    failed = strandline(cfg, "restore", "h@1", "--to", str(target), check=False)
    assert failed.returncode == 2 and "'..'" in failed.stderr
    assert not (tmp_path / "escaped.txt").exists() and not target.exists()


# -- in place, tags on Kafka ------------------------------------------------------------------


def test_an_in_place_restore_is_recorded_as_a_new_version_equal_to_the_old_one(
    config_for: Any, data_dir: Path, tmp_path: Path, kafka_bootstrap: str
) -> None:
    config = config_for([DatasetConfig(name="r", root=data_dir, snapshot="copy"), probe_dataset(tmp_path)])
    cfg = write_toml(config, tmp_path / "strandline.toml")
    running = start_daemon(config)
    try:
        (data_dir / "keep.csv").write_text("a\n1\n")
        (data_dir / "edit.csv").write_text("a\n2\n")
        # Barriers, not version counts: under load two writes may straddle a quiet period.
        running.barrier("r")
        v1 = running.versions("r")[-1]
        (data_dir / "edit.csv").write_text("a\n3\n")
        (data_dir / "later.csv").write_text("a\n4\n")
        (data_dir / ".private").write_text("not the dataset's\n")  # hidden: not part of the data
        running.barrier("r")
        before = len(running.versions("r"))
        keep_inode = (data_dir / "keep.csv").stat().st_ino

        strandline(cfg, "tag", f"r@{v1.seq}", "good")
        done = json.loads(strandline(cfg, "restore", "r@good", "--in-place", "--json").stdout)
        assert (done["unchanged"], done["removed"]) == (1, 1)
        wait_for(lambda: len(running.versions("r")) > before, what="the revert's version")
        running.barrier("r")  # and no half-restored version before or after it
        assert len(running.versions("r")) == before + 1
        made = len(running.versions("r")) + len(running.versions("probe"))
        events = read_events(kafka_bootstrap, config.kafka.versions_topic, min_count=made + 1)  # and the tag
    finally:
        running.stop()
    revert = running.versions("r")[-1]
    assert revert.version_id == v1.version_id and (revert.added, revert.modified, revert.removed) == (0, 1, 1)
    assert (data_dir / "edit.csv").read_text() == "a\n2\n" and not (data_dir / "later.csv").exists()
    assert (data_dir / ".private").read_text() == "not the dataset's\n"
    assert (data_dir / "keep.csv").stat().st_ino == keep_inode  # already right: not rewritten
    assert not [p for p in data_dir.iterdir() if p.name.startswith((".strandline-restore", RESTORING_MARKER))]
    tagged = [e for e in events if e.headers["ce_type"] == "dataset.version.tagged"]
    assert [(e.key, e.data["tag"], e.data["version"], e.data["version_id"]) for e in tagged] == [
        ("r", "good", v1.seq, v1.version_id)
    ]
    assert tagged[0].headers["ce_subject"] == f"r@{v1.seq}#good"


# -- the commit waits for the snapshot's bytes ---------------------------------------------------


def _engine_over(tmp_path: Path, files: int) -> tuple[StrandlineConfig, Path]:
    root = tmp_path / "d"
    root.mkdir()
    for n in range(files):
        (root / f"f{n:03}.bin").write_bytes(random_bytes(2000 + n, seed=n))
    config = StrandlineConfig(
        state_dir=tmp_path / "state",
        reconcile_interval_seconds=0,
        datasets=[DatasetConfig(name="d", root=root, snapshot="copy")],
    )
    return config, root


def test_a_version_is_committed_only_once_its_snapshot_pack_is_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pack is sealed in the background while the version is prepared; the commit waits for it."""
    import threading

    from daemon.engine import Engine
    from daemon.store_packs import PackWriter

    config, root = _engine_over(tmp_path, 30)
    real_seal = PackWriter.seal
    sealing, release = threading.Event(), threading.Event()

    def seal(self: PackWriter, packs_dir: str) -> str:
        sealing.set()
        assert release.wait(60), "the test never let the pack be sealed"
        return real_seal(self, packs_dir)

    monkeypatch.setattr(PackWriter, "seal", seal)
    with Catalog(catalog_path(config)) as catalog:
        engine = Engine(catalog, config, list(config.datasets))
        engine.request_reconcile()
        worker = threading.Thread(target=engine.process_due, kwargs={"ignore_settle": True})
        worker.start()
        wait_for(sealing.is_set, 30, what="the snapshot's pack to be sealed")
        with Catalog(catalog_path(config)) as reader:
            assert reader.versions("d") == [], "a version was committed before its bytes were durable"
        release.set()
        worker.join(60)
        assert not worker.is_alive()
        (version,) = catalog.versions("d")
    assert version.restorable and version.files == 30
    store = ContentStore(store_path(config))
    for path in root.iterdir():
        assert b"".join(store.iter_content(xxhash_of(path))) == path.read_bytes()


def test_a_snapshot_whose_pack_cannot_be_synced_is_committed_as_not_restorable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from daemon.engine import Engine

    config, root = _engine_over(tmp_path, 10)
    restore_fsync = fail_pack_fsyncs(monkeypatch)
    with Catalog(catalog_path(config)) as catalog:
        engine = Engine(catalog, config, list(config.datasets))
        engine.request_reconcile()
        engine.process_due(ignore_settle=True)
        (first,) = catalog.versions("d")
        assert not first.restorable
        assert "could not sync" in (first.snapshot_note or "") and "Input/output error" in (first.snapshot_note or "")
        pending = [p.message for p in catalog.pending(100)]
        (created,) = [m for m in pending if dict(m.headers)["ce_type"].endswith(b"dataset.version.created")]
        assert json.loads(created.value)["snapshot"]["restorable"] is False
        restore_fsync()
        (root / "f000.bin").write_bytes(b"changed")
        engine.note_path(str(root / "f000.bin"), "done")
        engine.process_due(ignore_settle=True)
        second = catalog.versions("d")[-1]
    assert second.seq == 2 and second.restorable, "the next version stores what the failed one could not"


def xxhash_of(path: Path) -> str:
    from daemon.fingerprint import hash_file

    return hash_file(path)[0]


# -- a full disk -------------------------------------------------------------------------------


def test_a_full_store_disk_records_the_version_as_not_restorable_and_the_daemon_goes_on(
    config_for: Any, data_dir: Path, tmp_path: Path, kafka_bootstrap: str
) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private mount namespace here: {probe.stderr.strip()}")
    small = tmp_path / "small"
    small.mkdir()
    config = config_for([DatasetConfig(name="f", root=data_dir, snapshot="copy")], store={"path": small / "store"})
    cfg = write_toml(config, tmp_path / "strandline.toml")
    big = data_dir / "big.bin"
    big.write_bytes(random_bytes(3 * MiB, 11))
    (data_dir / "small.txt").write_text("tiny\n")
    mode, data = big.stat().st_mode, big.read_bytes()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRANDLINE_")}
    # The daemon runs in a private mount namespace where the store is a 1 MiB tmpfs.
    daemon = subprocess.Popen(
        [
            "unshare",
            "-m",
            "sh",
            "-ec",
            'mount -t tmpfs -o size=1m tmpfs "$1" || exit 77; shift; exec "$@"',
            "sh",
            str(small),
            sys.executable,
            "-m",
            "daemon.cli",
            "watch",
            "-c",
            str(cfg),
            "--log-format",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )

    def versions() -> list[Any]:
        if daemon.poll() == 77:
            pytest.skip("cannot mount a tmpfs here")
        if daemon.poll() is not None:
            raise AssertionError(f"the daemon exited ({daemon.returncode}): {daemon.stderr.read()}")  # type: ignore[union-attr]
        if not catalog_path(config).exists():
            return []
        with Catalog(catalog_path(config), readonly=True) as catalog:
            try:
                return catalog.versions("f")
            except Exception:
                return []

    try:
        first = wait_for(lambda: versions()[:1], 60, what="the first version")[0]
        assert not first.restorable and "full" in (first.snapshot_note or "")
        assert big.read_bytes() == data and big.stat().st_mode == mode  # the user's file was only read
        # It keeps watching; once the big file is gone, everything the next version needs fits.
        big.unlink()
        second = wait_for(lambda: versions()[1:2], 60, what="the second version")[0]
        assert second.restorable
        events = version_events(read_events(kafka_bootstrap, config.kafka.versions_topic, min_count=2), "f")
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err
    assert [snapshot_of(e)["restorable"] for e in events] == [False, True]
    assert "full" in snapshot_of(events[0])["reason"]
    assert any('"level": "ERROR"' in line and "not be restorable" in line for line in err.splitlines())


# -- buckets -----------------------------------------------------------------------------------


def test_a_bucket_dataset_is_snapshotted_and_restores_byte_for_byte(
    config_for: Any, s3_endpoint: str, bucket: str, tmp_path: Path, kafka_bootstrap: str
) -> None:
    import boto3

    from tests.test_buckets import PREFIX, bucket_config, started

    config = bucket_config(config_for, s3_endpoint, bucket, snapshot="copy")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    table = io.BytesIO()
    pd.DataFrame({"id": [1, 2, 3]}).to_parquet(table)
    objects = {"t.parquet": table.getvalue(), "deep/raw.bin": random_bytes(2 * MiB, 21)}
    running = started(start_daemon(config))
    try:
        for rel, body in objects.items():
            s3.put_object(Bucket=bucket, Key=PREFIX + rel, Body=body)
        wait_for(lambda: sum(v.files for v in running.versions("lake")[-1:]) == 2, 60, what="both objects versioned")
        events = version_events(read_events(kafka_bootstrap, config.kafka.versions_topic, min_count=1), "lake")
    finally:
        running.stop()
        s3.close()
    assert all(snapshot_of(e) == {"policy": "copy", "restorable": True} for e in events)
    cfg = write_toml(config, tmp_path / "strandline.toml")
    with open(cfg, "a") as fh:  # the bucket dataset's endpoint, for the record; restore reads only the store
        fh.write(f'[s3]\nendpoint_url = "{s3_endpoint}"\n')
    seq = running.versions("lake")[-1].seq
    strandline(cfg, "restore", f"lake@{seq}", "--to", str(tmp_path / "out"))
    assert tree(tmp_path / "out") == objects
    refused = strandline(cfg, "restore", f"lake@{seq}", "--in-place", check=False)
    assert refused.returncode == 2 and "--to DIR" in refused.stderr


def test_a_restore_in_progress_holds_the_datasets_next_version_until_it_is_done(
    config_for: Any, data_dir: Path, tmp_path: Path
) -> None:
    config = config_for([DatasetConfig(name="w", root=data_dir, snapshot="none", settle_seconds=0.1)])
    running = start_daemon(config)
    try:
        (data_dir / "a.csv").write_text("a\n1\n")
        wait_for(lambda: len(running.versions("w")) == 1, what="version 1")
        # A restore at work marks its target with its pid: a live process stands in for it.
        restorer = subprocess.Popen(["sleep", "600"])
        (data_dir / RESTORING_MARKER).write_text(str(restorer.pid))
        (data_dir / "a.csv").write_text("a\n2\n")
        (data_dir / "b.csv").write_text("b\n3\n")
        engine = running.daemon.engine
        assert engine is not None
        passes = engine.passes
        wait_for(lambda: engine.passes >= passes + 3, what="passes that see the restore at work")
        assert len(running.versions("w")) == 1
        # It dies without removing its marker (a crash): a dead pid holds nothing back.
        restorer.kill()
        restorer.wait()
        wait_for(lambda: len(running.versions("w")) == 2, what="the version after the restore")
    finally:
        running.stop()
    second = running.versions("w")[1]
    assert (second.added, second.modified, second.snapshot, second.restorable) == (1, 1, "none", False)
