"""Bucket roots end to end: the real daemon, a real S3-compatible server (moto) and the real broker.

Absence of a version is proved with a probe object: listings are consistent, so once an object
uploaded after the thing under test is versioned, that thing was listed and acted on.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash

from daemon.bucket_poller import changed_paths
from daemon.manifest import FileState
from daemon.scanner import FileStat
from schemas.config import DatasetConfig, StrandlineConfig
from tests.conftest import s3_server
from tests.helpers import RunningDaemon, read_events, start_daemon, version_events, wait_for

PREFIX = "data/"


@pytest.fixture
def s3(s3_endpoint: str, bucket: str) -> Iterator[Any]:
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    yield client
    client.close()


def bucket_config(config_for: Any, endpoint: str, bucket: str, **dataset: Any) -> StrandlineConfig:
    settings = {"name": "lake", "root": f"s3://{bucket}/{PREFIX}", "settle_seconds": 0.3, **dataset}
    s3 = {"endpoint_url": endpoint, "poll_interval_seconds": 0.2}
    if dataset.get("detect") == "notifications":
        notifications = dict(dataset.pop("_notifications"))
        # A group per test: the default (strandline-notifications-HOST) is the same for every test.
        notifications.setdefault("group_id", f"{notifications['topic']}.group")
        s3["notifications"] = notifications
        settings.pop("_notifications")
    return config_for([DatasetConfig(**settings)], s3=s3)  # type: ignore[no-any-return]


def put(s3: Any, bucket: str, rel: str, body: bytes) -> str:
    s3.put_object(Bucket=bucket, Key=PREFIX + rel, Body=body)
    return xxhash.xxh3_128_hexdigest(body)


def manifest(running: RunningDaemon, seq: int) -> dict[str, FileState]:
    with running.catalog() as c:
        return c.manifest("lake", seq)


def started(running: RunningDaemon) -> RunningDaemon:
    """Wait until the start-up reconcile ran and the poller listed once: later uploads are news."""
    engine = running.daemon.engine
    assert engine is not None
    # The poller starts just after the engine exists.
    poller = wait_for(lambda: running.daemon.poller, what="the poller")
    wait_for(lambda: engine.passes >= 1 and poller.polls >= 1 and engine.settled("lake"), what="the first passes")
    return running


def probe(running: RunningDaemon, s3: Any, bucket: str, rel: str | None = None) -> int:
    """Upload a fresh object and wait for the version holding it; return that version's number."""
    rel = rel or f"probe-{uuid.uuid4().hex[:8]}.txt"
    put(s3, bucket, rel, rel.encode())
    wait_for(lambda: any(rel in manifest(running, v.seq) for v in running.versions("lake")[-1:]), what="the probe")
    return running.versions("lake")[-1].seq


def test_changed_paths_is_a_sorted_merge() -> None:
    listed = [("a", FileStat(1, 10, 0, "e1")), ("b", FileStat(2, 10, 0, "e2")), ("d", FileStat(4, 10, 0, "e4"))]
    known = [("b", FileState(2, "h", 10, 0, "e2")), ("c", FileState(3, "h", 10, 0, "e3")), ("d", FileState(4, "h", 10))]
    assert list(changed_paths(listed, known)) == [("a", listed[0][1]), ("c", None), ("d", listed[2][1])]
    assert list(changed_paths([], [])) == []


def test_upload_gives_one_version_with_the_right_hash_and_profile(
    config_for: Any, s3_endpoint: str, bucket: str, s3: Any
) -> None:
    config = bucket_config(config_for, s3_endpoint, bucket)
    running = start_daemon(config)
    try:
        table = pa.table({"id": list(range(100)), "amount": [i * 1.5 for i in range(100)]})
        sink = io.BytesIO()
        pq.write_table(table, sink)
        body = sink.getvalue()
        digest = put(s3, bucket, "sales/part-0.parquet", body)
        wait_for(lambda: running.versions("lake"), what="a version")
        assert len(running.versions("lake")) == 1
        state = manifest(running, 1)["sales/part-0.parquet"]
        assert (state.size, state.hash) == (len(body), digest)
        with running.catalog() as c:
            quality = c.quality("lake", 1)
        assert quality is not None and quality.schema is not None
        assert [f.name for f in quality.schema.fields] == ["id", "amount"]
        assert quality.profile is not None and quality.profile.rows == 100
        events = version_events(read_events(config.kafka.bootstrap, config.kafka.versions_topic), "lake")
        assert len(events) == 1
        assert events[0].data["root"] == f"s3://{bucket}/{PREFIX}"
        assert [c["new_hash"] for c in events[0].data["changes"]] == [digest]
        # Nothing of the object is left on local disk once the pass is over.
        spool = Path(str(config.state_dir)) / "spool"
        assert not [p for p in spool.rglob("*") if p.is_file()]
        assert probe(running, s3, bucket) == 2  # and no second version of the same upload came first
    finally:
        running.stop()


def test_multipart_upload_is_versioned_once_complete(config_for: Any, s3_endpoint: str, bucket: str, s3: Any) -> None:
    running = started(start_daemon(bucket_config(config_for, s3_endpoint, bucket)))
    try:
        key = PREFIX + "big.bin"
        upload = s3.create_multipart_upload(Bucket=bucket, Key=key)
        parts = [random.Random(i).randbytes(5 * 1024 * 1024) for i in range(2)] + [b"tail"]
        etags = []
        for n, part in enumerate(parts, start=1):
            r = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=n, Body=part)
            etags.append({"PartNumber": n, "ETag": r["ETag"]})
        first = probe(running, s3, bucket)  # parts uploaded, not completed: no object yet
        assert "big.bin" not in manifest(running, first)
        s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": etags}
        )
        wait_for(lambda: len(running.versions("lake")) > first, what="the completed upload's version")
        state = manifest(running, first + 1)["big.bin"]
        assert state.hash == xxhash.xxh3_128_hexdigest(b"".join(parts))
        assert state.size == sum(map(len, parts))
        assert probe(running, s3, bucket) == first + 2
    finally:
        running.stop()


def test_overwrite_during_settle_gives_one_version_of_the_final_content(
    config_for: Any, s3_endpoint: str, bucket: str, s3: Any
) -> None:
    running = started(start_daemon(bucket_config(config_for, s3_endpoint, bucket, settle_seconds=2.0)))
    try:
        engine = running.daemon.engine
        assert engine is not None
        put(s3, bucket, "t.csv", b"a\n1\n")
        wait_for(lambda: "t.csv" in engine.pending("lake"), what="the first upload noticed")
        final = put(s3, bucket, "t.csv", b"a\n2\n3\n")
        wait_for(lambda: running.versions("lake"), what="a version")
        assert manifest(running, 1)["t.csv"].hash == final
        assert probe(running, s3, bucket, "probe.txt") == 2
        with running.catalog() as c:
            assert [ch.path for ch in c.changes("lake", 2)] == ["probe.txt"]  # no second version of t.csv
    finally:
        running.stop()


def test_delete_gives_a_version_with_the_removal(config_for: Any, s3_endpoint: str, bucket: str, s3: Any) -> None:
    put(s3, bucket, "keep.txt", b"keep")
    put(s3, bucket, "gone.txt", b"gone")
    running = start_daemon(bucket_config(config_for, s3_endpoint, bucket))
    try:
        wait_for(lambda: running.versions("lake"), what="the first version")
        assert set(manifest(running, 1)) == {"keep.txt", "gone.txt"}
        s3.delete_object(Bucket=bucket, Key=PREFIX + "gone.txt")
        wait_for(lambda: len(running.versions("lake")) == 2, what="the removal")
        with running.catalog() as c:
            changes = c.changes("lake", 2)
        assert [(ch.path, ch.change) for ch in changes] == [("gone.txt", "removed")]
    finally:
        running.stop()


HOSTILE_KEYS = [
    PREFIX + "../escape.txt",
    PREFIX + "a/../../escape2.txt",
    PREFIX + "%2e%2e/encoded.txt",
    PREFIX + "/absolute.txt",
    PREFIX + "nul\x01ctl.txt",
    PREFIX + "look\u2215alike.txt",
]


def test_hostile_keys_are_reported_and_skipped(
    config_for: Any, s3_endpoint: str, bucket: str, s3: Any, tmp_path: Path
) -> None:
    for key in HOSTILE_KEYS:
        s3.put_object(Bucket=bucket, Key=key, Body=b"evil")
    put(s3, bucket, "ok.csv", b"a\n1\n")
    config = bucket_config(config_for, s3_endpoint, bucket)
    running = start_daemon(config)
    try:
        wait_for(lambda: running.versions("lake"), what="a version")
        assert set(manifest(running, 1)) == {"ok.csv"}
        events = read_events(config.kafka.bootstrap, config.kafka.versions_topic, min_count=len(HOSTILE_KEYS))
        events = [e for e in events if e.headers.get("ce_type") == "dataset.input.rejected"]
        reasons = {e.data["reason"] for e in events}
        assert reasons == {"unsafe_key"}
        assert len(events) == len(HOSTILE_KEYS)
        # A hostile key uploaded while watching is reported too, and the daemon goes on.
        s3.put_object(Bucket=bucket, Key=PREFIX + "x/../../late.txt", Body=b"evil")

        def late_rejected() -> bool:
            events = read_events(config.kafka.bootstrap, config.kafka.versions_topic, timeout=5)
            return any(
                e.headers.get("ce_type") == "dataset.input.rejected" and "late.txt" in e.data["path"] for e in events
            )

        wait_for(late_rejected, 30, interval=0.2, what="the late hostile key reported")
        assert probe(running, s3, bucket) == 2
        assert not list(tmp_path.rglob("*escape*")) and not list(tmp_path.rglob("late.txt"))
    finally:
        running.stop()


def _s3_event(bucket: str, key: str, name: str = "ObjectCreated:Put") -> bytes:
    from urllib.parse import quote_plus

    record = {"eventName": f"s3:{name}", "s3": {"bucket": {"name": bucket}, "object": {"key": quote_plus(key)}}}
    return json.dumps({"EventName": f"s3:{name}", "Key": f"{bucket}/{key}", "Records": [record]}).encode()


def test_duplicated_and_shuffled_notifications_make_no_duplicate_versions(
    config_for: Any, s3_endpoint: str, bucket: str, s3: Any, topic_prefix: str, kafka_bootstrap: str
) -> None:
    from kafka import KafkaProducer

    topic = f"{topic_prefix}.s3-events"
    config = bucket_config(
        config_for,
        s3_endpoint,
        bucket,
        detect="notifications",
        _notifications={"topic": topic, "relist_interval_seconds": 3600},
    )
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    producer.send(topic, b"{}").get(timeout=30)  # the topic exists before the daemon subscribes
    running = start_daemon(config)
    try:
        listener = wait_for(lambda: running.daemon.listener, what="the listener")  # started after the engine
        wait_for(
            lambda: listener.problem is None and running.daemon.poller and running.daemon.poller.polls, what="start"
        )
        # Notifications sent before the listener holds its partitions would be skipped ("latest").
        assert listener.assigned.wait(30), "the listener never got its partitions"
        names = [f"f{i}.txt" for i in range(5)]
        digests = {n: put(s3, bucket, n, n.encode() * 10) for n in names}
        messages = [_s3_event(bucket, PREFIX + n) for n in names] * 3 + [b"not json", b'{"Records": 5}']
        random.Random(7).shuffle(messages)
        for m in messages:
            producer.send(topic, m)
        producer.flush()
        wait_for(
            lambda: running.versions("lake") and set(manifest(running, running.versions("lake")[-1].seq)) >= set(names),
            what="every notified object versioned",
        )
        # The probe goes through a notification too: the safety re-list is an hour away.
        rel = "probe.txt"
        put(s3, bucket, rel, b"probe")
        producer.send(topic, _s3_event(bucket, PREFIX + rel)).get(timeout=30)
        wait_for(lambda: rel in manifest(running, running.versions("lake")[-1].seq), what="the probe")
        with running.catalog() as c:
            added = [ch.path for v in running.versions("lake") for ch in c.changes("lake", v.seq)]
        assert sorted(added) == sorted([*names, rel])  # each object added exactly once
        final = manifest(running, running.versions("lake")[-1].seq)
        assert {n: final[n].hash for n in names} == digests
        # A removal notified out of order with a stale "created" for the same key: the store decides.
        s3.delete_object(Bucket=bucket, Key=PREFIX + "f0.txt")
        for m in (_s3_event(bucket, PREFIX + "f0.txt", "ObjectRemoved:Delete"), _s3_event(bucket, PREFIX + "f0.txt")):
            producer.send(topic, m)
        producer.flush()
        wait_for(lambda: "f0.txt" not in manifest(running, running.versions("lake")[-1].seq), what="the removal")
    finally:
        producer.close()
        running.stop()


def test_restart_resumes_without_reading_objects_again(
    config_for: Any, s3_endpoint: str, bucket: str, s3: Any, s3_server_log: Path
) -> None:
    for i in range(30):
        put(s3, bucket, f"obj-{i:03}.txt", f"object {i}".encode())
    config = bucket_config(config_for, s3_endpoint, bucket)
    running = start_daemon(config)
    wait_for(lambda: running.versions("lake"), what="the first version")
    running.stop()
    log = s3_server_log
    gets_before = _gets(log, bucket)
    assert gets_before >= 30
    running = start_daemon(config)
    try:
        assert probe(running, s3, bucket) == 2  # started, reconciled, polled: no version for the 30
        assert _gets(log, bucket) - gets_before == 1  # only the probe was read
    finally:
        running.stop()


def test_a_listed_object_is_hashed_on_its_listed_stat_without_a_head(
    config_for: Any, s3_endpoint: str, bucket: str, s3: Any, s3_server_log: Path
) -> None:
    for i in range(30):
        put(s3, bucket, f"obj-{i:03}.txt", f"object {i}".encode())
    # Without snapshots: a snapshot reads each new object once more (s3fs opens it with a HEAD);
    # tests/test_time_machine.py covers bucket snapshots. This test is about the listing path.
    running = start_daemon(bucket_config(config_for, s3_endpoint, bucket, snapshot="none"))
    try:
        wait_for(lambda: running.versions("lake"), what="the first version")
        assert len(manifest(running, 1)) == 30
        put(s3, bucket, "obj-000.txt", b"changed")  # found by a poll this time
        wait_for(lambda: len(running.versions("lake")) == 2, what="the second version")
        with running.catalog() as c:
            assert [(ch.path, ch.change) for ch in c.changes("lake", 2)] == [("obj-000.txt", "modified")]
    finally:
        running.stop()
    assert _gets(s3_server_log, bucket) == 31  # each content read once
    assert _requests(s3_server_log, f'"HEAD /{bucket}/{PREFIX}') == 0


def _requests(log: Path, needle: str) -> int:
    return sum(1 for line in log.read_text(errors="replace").splitlines() if needle in line)


def _gets(log: Path, bucket: str) -> int:
    """GET requests for objects of ``bucket`` in the server's access log (listings are GET /bucket?...)."""
    needle = f'"GET /{bucket}/{PREFIX}'
    return sum(1 for line in log.read_text(errors="replace").splitlines() if needle in line)


def test_server_stopped_and_restarted_catches_up_without_loss(
    config_for: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "own-s3"
    endpoint = s3_server.start(directory)
    from tests.conftest import S3_TEST_ACCESS_KEY, S3_TEST_SECRET_KEY

    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_TEST_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_TEST_SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    name = "restart-bucket"
    client = boto3.client("s3", endpoint_url=endpoint)
    running = None
    try:
        client.create_bucket(Bucket=name)
        put(client, name, "a.txt", b"a")
        running = start_daemon(bucket_config(config_for, endpoint, name))
        wait_for(lambda: running.versions("lake"), what="the first version")
        s3_server.stop(directory)
        poller = running.daemon.poller
        assert poller is not None
        wait_for(lambda: "lake" in poller.problems, what="the poll failure noticed")
        assert "cannot reach" in poller.problems["lake"]
        from daemon.health import readiness

        ready, body = readiness(running.daemon)
        assert not ready and any(d["part"] == "bucket" for d in body["degraded"])
        s3_server.start(directory)  # same port; the server starts empty
        client.create_bucket(Bucket=name)
        put(client, name, "a.txt", b"a")
        b = put(client, name, "b.txt", b"written after the outage")
        wait_for(lambda: len(running.versions("lake")) == 2, timeout=60, what="the catch-up version")
        with running.catalog() as c:
            assert [(ch.path, ch.change, ch.new_hash) for ch in c.changes("lake", 2)] == [("b.txt", "added", b)]
        wait_for(lambda: "lake" not in poller.problems, what="the poller recovered")
        assert readiness(running.daemon)[0]
        assert len(running.versions("lake")) == 2  # the outage never read as "everything was deleted"
    finally:
        if running is not None:
            running.stop()
        client.close()
        s3_server.stop(directory)


def _lists(log: Path, bucket: str) -> int:
    """LIST requests for ``bucket`` in the server's access log."""
    return _requests(log, f'"GET /{bucket}?list-type=2')


def test_a_long_listing_holds_up_neither_other_versions_nor_a_stop(
    config_for: Any, s3_endpoint: str, bucket: str, s3: Any, s3_server_log: Path, tmp_path: Path
) -> None:
    """The start-up reconcile of a bucket dataset lists its prefix on the poller's thread, so a
    local dataset is versioned meanwhile; and a stop during that listing ends it at once.

    One object per LIST page makes the listing of 800 objects take ~10 s on this server, as
    100 pages of 1,000 keys take ~80 s on a prefix of 100,000 (bench/README.md).
    """
    objects = 800
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: put(s3, bucket, f"obj-{i:04}.bin", b"%d" % i), range(objects)))
    local = tmp_path / "local"
    local.mkdir()
    config = config_for(
        [
            DatasetConfig(name="lake", root=f"s3://{bucket}/{PREFIX}", settle_seconds=0.3),
            DatasetConfig(name="local", root=local, settle_seconds=0.1),
        ],
        s3={"endpoint_url": s3_endpoint, "poll_interval_seconds": 0.2, "page_size": 1},
    )
    before = _lists(s3_server_log, bucket)
    running = start_daemon(config)
    try:
        poller = wait_for(lambda: running.daemon.poller, what="the poller")
        wait_for(lambda: _lists(s3_server_log, bucket) - before >= 20, what="the listing under way")
        listing_since = time.monotonic()
        (local / "a.csv").write_text("x\n1\n")
        wait_for(lambda: running.versions("local"), timeout=15, what="the local version")
        assert poller.polls == 0, "the listing ended before the local version: this test proves nothing"

        pages = _lists(s3_server_log, bucket) - before
        per_page = (time.monotonic() - listing_since) / max(pages - 20, 1)
        # Delivered first, so that the stop below waits for nothing but the listing.
        wait_for(lambda: running.backlog() == 0, what="the local version's events delivered")
        t0 = time.monotonic()
        running.daemon.request_stop()
        running.thread.join(timeout=60)
        took = time.monotonic() - t0
        assert not running.thread.is_alive()
        assert poller.polls == 0  # stopped during the listing, not after it
        pages_at_stop = _lists(s3_server_log, bucket) - before
        assert pages_at_stop < objects
        assert took < 3.0, f"stopping took {took:.1f} s"
        # What waiting for the listing's end would have cost instead.
        assert (objects - pages_at_stop) * per_page > 2 * took
        assert not running.versions("lake")  # nothing concluded from half a listing
    finally:
        if running.thread.is_alive():
            running.stop()


def test_a_small_objects_snapshot_stores_the_bytes_read_to_hash_it_without_another_get(
    config_for: Any, s3_endpoint: str, bucket: str, s3: Any, tmp_path: Path
) -> None:
    from daemon.bucket_source import BucketSource
    from daemon.content_store import ContentStore, SourceChangedError

    config = bucket_config(config_for, s3_endpoint, bucket)
    store = ContentStore(tmp_path / "store")
    for keep in (True, False):
        rel = f"t-{keep}.csv"
        original = f"id,v\n1,{keep}\n".encode() * 50
        digest = put(s3, bucket, rel, original)
        source = BucketSource(
            f"s3://{bucket}/{PREFIX}",
            spool_dir=str(tmp_path / "spool"),
            settings=config.store_settings(f"s3://{bucket}/{PREFIX}"),
        )
        source.keep_small_files = keep
        head = s3.head_object(Bucket=bucket, Key=PREFIX + rel)
        listed = FileStat(len(original), int(head["LastModified"].timestamp()) * 10**9, 0, head["ETag"].strip('"'))
        state = source.fingerprint(rel, listed, keep=False)
        assert isinstance(state, FileState) and state.hash == digest
        put(s3, bucket, rel, original[:-1] + b"!")  # overwritten between fingerprint and snapshot
        if keep:
            # Stored from the bytes the hashing GET read: the version's bytes, and no second GET.
            assert source.keep_kept({rel: state}, store) == ({rel}, 1, len(original))
            with store.open_file(digest) as fh:
                assert fh.read() == original
        else:
            with pytest.raises(SourceChangedError):  # the conditional GET sees the overwrite
                source.keep_bytes(rel, state, store, "copy")
            assert not store.has(digest)
        source.finish_pass()
