"""Nothing lost: Kafka outages, a SIGKILLed daemon, an overflowing inotify queue."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import xxhash

from daemon.catalog import Catalog
from daemon.config import catalog_path, load_config
from schemas.config import DatasetConfig
from tests.conftest import kafka_broker
from tests.helpers import NotifySocket, json_log_lines, publish, read_events, start_daemon, version_events, wait_for

pytestmark = pytest.mark.slow


def _added_counts(catalog: Catalog, dataset: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for v in catalog.versions(dataset):
        counts.update(c.path for c in catalog.changes(dataset, v.seq) if c.change == "added")
    return counts


def test_broker_down_while_1000_files_arrive_then_everything_is_delivered_once(
    config_for, data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="daemon")
    broker_dir = tmp_path / "own-broker"
    bootstrap = kafka_broker.start(broker_dir)
    config = config_for(
        [DatasetConfig(name="outage", root=data_dir, settle_seconds=0.2)],
        kafka={"bootstrap": bootstrap, "topic_prefix": "outage", "partitions": 1, "delivery_timeout_seconds": 15},
        degraded_event_seconds=1.0,
        http="127.0.0.1:0",
    )
    running = start_daemon(config)
    try:
        (data_dir / "before.csv").write_text("x\n")
        wait_for(lambda: running.versions("outage") and running.backlog() == 0, 30, what="first delivery")
        assert running.daemon.http_address is not None
        host, port = running.daemon.http_address
        base = f"http://{host}:{port}"
        wait_for(lambda: _get(base + "/readyz")[0] == 200, 30, what="ready")
        metrics = _metrics(base)
        assert metrics["strandline_versions_created_total"] >= 1 and metrics["strandline_events_published_total"] >= 1
        assert metrics["strandline_outbox_backlog"] == 0 and metrics["strandline_kafka_degraded"] == 0
        # One start-up reconcile, one version noticed and recorded, its event(s) acknowledged.
        assert metrics["strandline_reconcile_seconds_count"] >= 1
        assert metrics["strandline_detection_latency_seconds_count"] == metrics["strandline_versions_created_total"]
        assert 0.2 <= metrics["strandline_detection_latency_seconds_sum"] < 30  # the settle window is included
        assert metrics["strandline_publish_latency_seconds_count"] == metrics["strandline_events_published_total"]
        kafka_broker.stop(broker_dir)
        for burst in range(20):
            for i in range(50):
                (data_dir / f"f{burst:02d}-{i:02d}.csv").write_text(f"{burst},{i}\n")
            time.sleep(0.4)
        wait_for(lambda: (v := running.versions("outage")) and v[-1].files == 1001, 60, what="all versioned")
        assert running.backlog() > 0
        wait_for(lambda: any("degraded" in r.getMessage() for r in caplog.records), 60, what="degraded log")
        _, body = wait_for(lambda: (r := _get(base + "/readyz"))[0] == 503 and r, 30, what="not ready")
        assert [d["part"] for d in json.loads(body)["degraded"]] == ["kafka"]
        during = _metrics(base)
        assert during["strandline_kafka_degraded"] == 1 and during["strandline_outbox_backlog"] > 0
        assert during["strandline_versions_created_total"] > metrics["strandline_versions_created_total"]
        kafka_broker.start(broker_dir)
        wait_for(lambda: running.backlog() == 0, 90, what="backlog delivered")
        wait_for(lambda: _get(base + "/readyz")[0] == 200, 30, what="ready again")
        after = _metrics(base)
        # Events that waited out the outage were acknowledged late, and the histogram shows it.
        assert after["strandline_publish_latency_seconds_count"] == after["strandline_events_published_total"]
        key = "strandline_publish_latency_seconds_sum"
        waited = after[key] - during.get(key, 0)
        assert waited > 1
        versions = running.versions("outage")
        everything = read_events(bootstrap, config.kafka.versions_topic, min_count=len(versions) + 2, settle=1.0)
        events = version_events(everything)
        with running.catalog() as c:
            added = _added_counts(c, "outage")
    finally:
        running.stop()
        kafka_broker.stop(broker_dir)
    degraded = [r for r in caplog.records if "degraded" in r.getMessage()]
    assert len(degraded) == 1, "one degraded line per outage, not one per retry"
    assert any("recovered" in r.getMessage() for r in caplog.records)
    seqs = [v.seq for v in versions]
    assert seqs == list(range(1, len(versions) + 1))
    assert len(added) == 1001 and set(added.values()) == {1}
    first_seen: list[int] = []
    for e in events:
        if e.data["version"] not in first_seen:
            first_seen.append(e.data["version"])
    assert first_seen == seqs, "every version delivered, in order"
    by_id = {e.headers["ce_id"]: e.data["version"] for e in events}
    assert sorted(by_id.values()) == seqs, "re-sends, if any, carry the same ce_id"
    # The outage itself is announced once, for on-call: degraded, then recovered, with the backlog.
    health = {e.headers["ce_id"]: e for e in everything if e.headers["ce_type"].startswith("daemon.")}
    kinds = [e.headers["ce_type"] for e in health.values()]
    assert kinds == ["daemon.degraded", "daemon.recovered"]
    degraded_event, recovered_event = health.values()
    assert degraded_event.data["component"] == "kafka" and degraded_event.data["backlog"] > 0
    assert degraded_event.key == "test-host" and recovered_event.data["since"] == degraded_event.data["since"]


def _get(url: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (a loopback URL of the test)
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _metrics(base: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    status, text = _get(base + "/metrics")
    assert status == 200
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}


def _write_config(path: Path, state: Path, root: Path, bootstrap: str, prefix: str) -> None:
    path.write_text(
        f'state_dir = "{state}"\nsettle_seconds = 0.2\nreconcile_interval_seconds = 0\n'
        f'[kafka]\nbootstrap = "{bootstrap}"\ntopic_prefix = "{prefix}"\npartitions = 1\n'
        f'[[datasets]]\nname = "killed"\nroot = "{root}"\n'
    )


def test_daemon_killed_while_files_arrive_versions_every_change_exactly_once(
    data_dir: Path, tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    cfg = tmp_path / "strandline.toml"
    state = tmp_path / "state"
    _write_config(cfg, state, data_dir, kafka_bootstrap, topic_prefix)
    cmd = [sys.executable, "-m", "daemon.cli", "watch", "--config", str(cfg), "--log-format", "json"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRANDLINE_")}
    log = (tmp_path / "daemon.log").open("wb")

    def versions() -> list[int]:
        if not catalog_path_exists():
            return []
        with Catalog(state / "catalog.sqlite", readonly=True) as c:
            try:
                return [v.seq for v in c.versions("killed")]
            except Exception:
                return []

    def catalog_path_exists() -> bool:
        return (state / "catalog.sqlite").exists()

    proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
    try:
        written = []
        for burst in range(30):
            for i in range(20):
                p = data_dir / f"b{burst:02d}-{i:02d}.dat"
                p.write_bytes(os.urandom(512))
                written.append(p)
            time.sleep(0.1)
            if burst == 12:
                wait_for(versions, 30, what="some versions before the kill")
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)

        def all_in() -> bool:
            if not versions():
                return False
            with Catalog(state / "catalog.sqlite", readonly=True) as c:
                latest = c.latest_version("killed")
                return latest is not None and latest.files == len(written)

        wait_for(all_in, 60, what="every file versioned after restart")

        def delivered() -> bool:
            with Catalog(state / "catalog.sqlite", readonly=True) as c:
                return c.backlog()[0] == 0

        wait_for(delivered, 60, what="delivery")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    with Catalog(state / "catalog.sqlite", readonly=True) as c:
        added = _added_counts(c, "killed")
        manifest = c.manifest("killed", c.latest_version("killed").seq)  # type: ignore[union-attr]
        seqs = [v.seq for v in c.versions("killed")]
    assert len(added) == len(written) and set(added.values()) == {1}, "each file added exactly once"
    assert all(manifest[p.name].hash == xxhash.xxh3_128_hexdigest(p.read_bytes()) for p in written)
    events = version_events(read_events(kafka_bootstrap, f"{topic_prefix}.versions", min_count=len(seqs), settle=1.0))
    assert sorted({e.data["version"] for e in events}) == seqs


MAX_QUEUED = Path("/proc/sys/fs/inotify/max_queued_events")


@pytest.fixture
def tiny_inotify_queue():  # type: ignore[no-untyped-def]
    """Shrink the kernel's inotify queue so a burst overflows it (needs root)."""
    try:
        original = MAX_QUEUED.read_text()
        MAX_QUEUED.write_text("32\n")
    except OSError as exc:
        pytest.skip(f"cannot lower fs.inotify.max_queued_events here: {exc}")
    try:
        yield
    finally:
        MAX_QUEUED.write_text(original)


def test_inotify_queue_overflow_is_noticed_and_nothing_is_missed(
    tiny_inotify_queue, config_for, data_dir: Path
) -> None:
    # Periodic reconcile is off: only overflow detection can find the dropped events.
    config = config_for([DatasetConfig(name="flood", root=data_dir, settle_seconds=0.5)], reconcile_interval_seconds=0)
    running = start_daemon(config)
    try:
        for sub in range(10):
            d = data_dir / f"d{sub}"
            d.mkdir()
            for i in range(300):
                (d / f"f{i:04d}.csv").write_text(f"{sub},{i}\n")
        wait_for(lambda: (v := running.versions("flood")) and v[-1].files == 3000, 60, what="all 3000 versioned")
        assert running.daemon.engine is not None and running.daemon.engine.overflows >= 1
    finally:
        running.stop()
    with Catalog(catalog_path(config), readonly=True) as c:
        added = _added_counts(c, "flood")
    assert len(added) == 3000 and set(added.values()) == {1}


def test_a_dead_watcher_is_restarted_and_what_it_missed_is_versioned(config_for, data_dir: Path) -> None:
    # Periodic reconcile is off: only the watcher check can bring the events back.
    config = config_for([DatasetConfig(name="revive", root=data_dir, settle_seconds=0.2)], reconcile_interval_seconds=0)
    running = start_daemon(config)
    try:
        (data_dir / "first.csv").write_text("1\n")
        wait_for(lambda: running.versions("revive"), what="first version")
        watcher = running.daemon.watcher
        assert watcher is not None
        reader = watcher._observer._inotify_fd  # type: ignore[attr-defined]
        reader.stop()  # the thread that reads inotify exits: from here on no event arrives
        reader.join(timeout=10)
        (data_dir / "while-dead.csv").write_text("2\n")
        wait_for(lambda: watcher.restarts == 1, 15, what="watcher restart")
        wait_for(lambda: len(running.versions("revive")) == 2, 15, what="missed file versioned")
        (data_dir / "after.csv").write_text("3\n")  # seen by the new watcher's events
        wait_for(lambda: len(running.versions("revive")) == 3, 15, what="new events after restart")
        with running.catalog() as c:
            manifest = c.manifest("revive", 3)
    finally:
        running.stop()
    assert set(manifest) == {"first.csv", "while-dead.csv", "after.csv"}


CONSUME = [sys.executable, "-m", "daemon.cli", "consume"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(400)
def test_a_consumer_started_before_kafka_waits_not_ready_and_starts_once_kafka_appears(
    tmp_path: Path, topic_prefix: str
) -> None:
    from tests.test_consumers import version_event

    kafka_port, metrics_port = _free_port(), _free_port()  # nothing listens on the Kafka port yet
    bootstrap = f"127.0.0.1:{kafka_port}"
    cfg = tmp_path / "strandline.toml"
    cfg.write_text(
        f'state_dir = "{tmp_path / "state"}"\n[kafka]\nbootstrap = "{bootstrap}"\n'
        f'topic_prefix = "{topic_prefix}"\npartitions = 1\n[consumers]\ngroup_prefix = "{topic_prefix}"\n'
    )
    notify = NotifySocket(tmp_path / "notify.sock")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRANDLINE_")}
    env |= {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    log_path, broker_dir = tmp_path / "consumer.log", tmp_path / "late-broker"
    base = f"http://127.0.0.1:{metrics_port}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*CONSUME, "drift", "--config", str(cfg), "--metrics-port", str(metrics_port), "--log-format", "json"],
            stderr=log,
            env=env,
        )
    try:
        # Two tries have failed (~5 s each): still running, not READY, and it says why, everywhere.
        notify.wait("STATUS=consumer drift: waiting for Kafka", timeout=60, count=2)
        assert proc.poll() is None, log_path.read_text()
        assert notify.lines("READY=1") == []
        assert notify.lines("EXTEND_TIMEOUT_USEC="), "the start timeout is extended while waiting"
        status, body = _get(base + "/readyz")
        assert status == 503
        (degraded,) = json.loads(body)["degraded"]
        assert degraded["part"] == "kafka" and f"no Kafka broker answers at {bootstrap}" in degraded["reason"]
        assert _get(base + "/healthz")[0] == 200  # waiting is alive: no restart by the watchdog
        assert _metrics(base)["strandline_consumer_kafka_degraded"] == 1
        warnings = [line for line in json_log_lines(log_path) if "cannot reach Kafka" in line["message"]]
        assert len(warnings) == 1, "one line per cause, not one per try"
        assert warnings[0]["level"] == "WARNING" and warnings[0]["message"].startswith("degraded: consumer drift")

        assert kafka_broker.start(broker_dir, kafka_port) == bootstrap
        notify.wait("READY=1", timeout=120)
        wait_for(lambda: _get(base + "/readyz")[0] == 200, 30, what="ready")
        assert _metrics(base)["strandline_consumer_kafka_degraded"] == 0
        assert any(line["message"].startswith("recovered: consumer drift") for line in json_log_lines(log_path))

        # It really consumes: an event published now is acted on.
        config = load_config(cfg)
        publish(bootstrap, [version_event(config.kafka, "sales", 1, status="invalid")])
        acted = 'strandline_consumer_events_total{consumer="drift",outcome="acted"} 1.0'
        wait_for(lambda: acted in _get(base + "/metrics")[1], 60, what="the event acted on")
        proc.send_signal(signal.SIGTERM)
        notify.wait("STOPPING=1")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
        kafka_broker.stop(broker_dir)


def test_kafka_lost_while_the_daemon_is_idle_makes_it_not_ready_and_found_again_ready(
    config_for, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import daemon.publisher

    monkeypatch.setattr(daemon.publisher, "IDLE_PROBE_SECONDS", 1.0)  # the default 15 s, shortened for the test
    broker_dir = tmp_path / "own-broker"
    bootstrap = kafka_broker.start(broker_dir)
    config = config_for(
        [DatasetConfig(name="idle", root=data_dir, settle_seconds=0.2)],
        kafka={"bootstrap": bootstrap, "topic_prefix": "idle", "partitions": 1},
        http="127.0.0.1:0",
    )
    running = start_daemon(config)
    try:
        assert running.daemon.http_address is not None
        host, port = running.daemon.http_address
        base = f"http://{host}:{port}"
        wait_for(lambda: _get(base + "/readyz")[0] == 200, 30, what="ready")
        kafka_broker.stop(broker_dir)
        # Nothing changes on disk, so nothing is sent: only the idle check can notice.
        _, body = wait_for(lambda: (r := _get(base + "/readyz"))[0] == 503 and r, 30, what="not ready")
        degraded = json.loads(body)["degraded"]
        assert [d["part"] for d in degraded] == ["kafka"] and bootstrap in degraded[0]["reason"]
        assert running.backlog() == 0
        kafka_broker.start(broker_dir)
        wait_for(lambda: _get(base + "/readyz")[0] == 200, 60, what="ready again")
    finally:
        running.stop()
        kafka_broker.stop(broker_dir)
