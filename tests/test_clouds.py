"""gs:// and az:// roots against real emulators: fake-gcs-server (built with Go) and Azurite (from npm).

Every test that needs an emulator runs once per store (``cloud`` is parametrised), against a
server process on loopback started for the session (``gcs_endpoint``, ``azurite_endpoint``, in
tests/conftest.py) with a fresh bucket or container per test; a test skips only when the Go or npm
toolchain that installs its emulator is missing. The end-to-end tests run the real daemon and
the real broker, as tests/test_buckets.py does for S3, and reuse its helpers.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import tracemalloc
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash
from pydantic import SecretStr

from daemon.doctor import check_bucket
from daemon.errors import SourceError, UnreadableDataError
from daemon.objectstore import (
    BucketRoot,
    ObjectEntry,
    ObjectRejection,
    check_root,
    filesystem_for,
    hash_object,
    head_object,
    list_prefix,
    open_object,
    parse_root,
)
from schemas.config import AzureConfig, DatasetConfig, GcsConfig, StrandlineConfig
from tests.conftest import REPO, azurite_server, gcs_server
from tests.helpers import RunningDaemon, read_events, start_daemon, version_events, wait_for
from tests.test_buckets import manifest, started

PREFIX = "data/"

# --- the two stores, driven by their plain APIs --------------------------------------------------


class GcsBucket:
    """A bucket of the GCS emulator, written through the JSON API (no client library in between)."""

    scheme = "gs"
    section = "gcs"

    def __init__(self, endpoint: str, log: Path, name: str | None = None) -> None:
        self.endpoint = endpoint
        self.log = log
        self.name = name or f"t-{uuid.uuid4().hex[:16]}"

    @property
    def settings(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint, "anonymous": True}

    def store_settings(self, **more: Any) -> GcsConfig:
        return GcsConfig(**{**self.settings, **more})

    def _send(self, method: str, path: str, body: bytes | None = None, content_type: str = "") -> bytes:
        headers = {"Content-Type": content_type} if content_type else {}
        url = self.endpoint + path
        request = urllib.request.Request(url, data=body, method=method, headers=headers)  # noqa: S310 - loopback
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - the loopback emulator
            return bytes(response.read())

    def create(self) -> None:
        self._send("POST", "/storage/v1/b", json.dumps({"name": self.name}).encode(), "application/json")

    def put(self, key: str, body: bytes) -> None:
        self._send("POST", f"/upload/storage/v1/b/{self.name}/o?uploadType=media&name={quote(key, safe='')}", body)

    def delete(self, key: str) -> None:
        self._send("DELETE", f"/storage/v1/b/{self.name}/o/{quote(key, safe='')}")

    def list_requests(self) -> int:
        """List requests for this bucket in the emulator's access log."""
        needle = f"GET /storage/v1/b/{self.name}/o?"
        return sum(needle in line for line in self.log.read_text(errors="replace").splitlines())


class AzureContainer:
    """A container of Azurite's development account, written with the plain azure-storage-blob client."""

    scheme = "az"
    section = "azure"

    def __init__(self, endpoint: str, log: Path, name: str | None = None) -> None:
        from azure.storage.blob import BlobServiceClient

        self.endpoint = endpoint
        self.log = log
        self.name = name or f"t-{uuid.uuid4().hex[:16]}"
        self.connection_string = azurite_server.connection_string(endpoint)
        self._client = BlobServiceClient.from_connection_string(self.connection_string, retry_total=0)

    @property
    def settings(self) -> dict[str, Any]:
        return {"connection_string": self.connection_string}

    def store_settings(self, **more: Any) -> AzureConfig:
        return AzureConfig(**{**self.settings, **more})

    def create(self) -> None:
        self._client.create_container(self.name)

    def put(self, key: str, body: bytes) -> None:
        self._client.get_blob_client(self.name, key).upload_blob(body, overwrite=True)

    def delete(self, key: str) -> None:
        self._client.get_blob_client(self.name, key).delete_blob()

    def list_requests(self) -> int:
        needle = f"GET /{azurite_server.ACCOUNT}/{self.name}?"
        lines = self.log.read_text(errors="replace").splitlines()
        return sum(needle in line and "comp=list" in line for line in lines)

    def close(self) -> None:
        self._client.close()


Cloud = GcsBucket | AzureContainer


@pytest.fixture(autouse=True)
def _no_cloud_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's Google and Azure settings must not leak in: the libraries read them themselves."""
    for name in list(os.environ):
        if name.startswith(("AZURE_", "GOOGLE_", "GCE_", "CLOUDSDK_")) or name == "STORAGE_EMULATOR_HOST":
            monkeypatch.delenv(name)


@pytest.fixture(params=["gs", "az"])
def cloud(request: pytest.FixtureRequest) -> Iterator[Cloud]:
    """A fresh, empty bucket (gs) or container (az) on the session's emulator."""
    made: Cloud
    if request.param == "gs":
        made = GcsBucket(
            request.getfixturevalue("gcs_endpoint"), request.getfixturevalue("gcs_directory") / "server.log"
        )
    else:
        made = AzureContainer(
            request.getfixturevalue("azurite_endpoint"), request.getfixturevalue("azurite_directory") / "server.log"
        )
    made.create()
    yield made
    if isinstance(made, AzureContainer):
        made.close()


def root_of(cloud: Cloud, prefix: str = PREFIX) -> BucketRoot:
    return parse_root(f"{cloud.scheme}://{cloud.name}/{prefix}")


def fs_of(cloud: Cloud, **more: Any) -> Any:
    return filesystem_for(root_of(cloud), cloud.store_settings(**more))


def put(cloud: Cloud, rel: str, body: bytes) -> str:
    cloud.put(PREFIX + rel, body)
    return xxhash.xxh3_128_hexdigest(body)


def cloud_config(config_for: Any, cloud: Cloud, **dataset: Any) -> StrandlineConfig:
    settings = {"name": "lake", "root": f"{cloud.scheme}://{cloud.name}/{PREFIX}", "settle_seconds": 0.3, **dataset}
    ds = DatasetConfig(**settings)
    return config_for([ds], **{cloud.section: {**cloud.settings, "poll_interval_seconds": 0.2}})  # type: ignore[no-any-return]


def probe(running: RunningDaemon, cloud: Cloud, rel: str | None = None) -> int:
    """Upload a fresh object and wait for the version holding it; return that version's number.

    Listings are consistent, so once an object uploaded after the thing under test is versioned,
    that thing was listed and acted on: this proves the absence of extra versions.
    """
    rel = rel or f"probe-{uuid.uuid4().hex[:8]}.txt"
    put(cloud, rel, rel.encode())
    wait_for(lambda: any(rel in manifest(running, v.seq) for v in running.versions("lake")[-1:]), what="the probe")
    return running.versions("lake")[-1].seq


def parquet_bytes(rows: int) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"id": list(range(rows)), "amount": [i * 1.5 for i in range(rows)]}), sink)
    return sink.getvalue()


# --- the daemon end to end -----------------------------------------------------------------------


def test_upload_gives_one_version_with_the_right_hash_and_profile(config_for: Any, cloud: Cloud) -> None:
    config = cloud_config(config_for, cloud)
    running = start_daemon(config)
    try:
        body = parquet_bytes(100)
        digest = put(cloud, "sales/part-0.parquet", body)
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
        assert events[0].data["root"] == f"{cloud.scheme}://{cloud.name}/{PREFIX}"
        assert [c["new_hash"] for c in events[0].data["changes"]] == [digest]
        spool = Path(str(config.state_dir)) / "spool"
        assert not [p for p in spool.rglob("*") if p.is_file()], "the spool copy is removed after the pass"
        assert probe(running, cloud) == 2  # and no second version of the same upload came first
    finally:
        running.stop()


def test_overwrite_gives_a_new_version_of_the_final_content(config_for: Any, cloud: Cloud) -> None:
    running = started(start_daemon(cloud_config(config_for, cloud)))
    try:
        first = put(cloud, "t.csv", b"a,b\n1,x\n2,y\n")
        wait_for(lambda: running.versions("lake"), what="the first version")
        assert manifest(running, 1)["t.csv"].hash == first
        final = put(cloud, "t.csv", b"a,b\n1,x\n2,y\n3,z\n")
        wait_for(lambda: len(running.versions("lake")) == 2, what="the overwrite's version")
        assert manifest(running, 2)["t.csv"].hash == final
        with running.catalog() as c:
            assert [(ch.path, ch.change) for ch in c.changes("lake", 2)] == [("t.csv", "modified")]
            quality = c.quality("lake", 2)
        assert quality is not None and quality.profile is not None and quality.profile.rows == 3
        assert probe(running, cloud) == 3
    finally:
        running.stop()


def test_overwrite_during_settle_gives_one_version_of_the_final_content(config_for: Any, cloud: Cloud) -> None:
    running = started(start_daemon(cloud_config(config_for, cloud, settle_seconds=2.0)))
    try:
        engine = running.daemon.engine
        assert engine is not None
        put(cloud, "t.csv", b"a\n1\n")
        wait_for(lambda: "t.csv" in engine.pending("lake"), what="the first upload noticed")
        final = put(cloud, "t.csv", b"a\n2\n3\n")
        wait_for(lambda: running.versions("lake"), what="a version")
        assert manifest(running, 1)["t.csv"].hash == final
        assert probe(running, cloud, "probe.txt") == 2
        with running.catalog() as c:
            assert [ch.path for ch in c.changes("lake", 2)] == ["probe.txt"]  # no second version of t.csv
    finally:
        running.stop()


def test_delete_gives_a_version_with_the_removal(config_for: Any, cloud: Cloud) -> None:
    put(cloud, "keep.txt", b"keep")
    put(cloud, "gone.txt", b"gone")
    running = start_daemon(cloud_config(config_for, cloud))
    try:
        wait_for(lambda: running.versions("lake"), what="the first version")
        assert set(manifest(running, 1)) == {"keep.txt", "gone.txt"}
        cloud.delete(PREFIX + "gone.txt")
        wait_for(lambda: len(running.versions("lake")) == 2, what="the removal")
        with running.catalog() as c:
            assert [(ch.path, ch.change) for ch in c.changes("lake", 2)] == [("gone.txt", "removed")]
    finally:
        running.stop()


# Keys each store keeps as written (Azure folds "\\" into "/" and its URLs lose ".." segments, so
# those two are GCS-only; Azurite cannot list names with C0 controls other than tab).
HOSTILE = {
    "gs": ["../escape.txt", "a/../../escape2.txt", "%2e%2e/encoded.txt", "/absolute.txt", "nul\x01ctl.txt"],
    "az": ["%2e%2e/encoded.txt", "/absolute.txt", "tab\tctl.txt", "cafe\u0301.csv", "bidi\u202eevil.txt"],
}


def test_hostile_keys_are_reported_and_skipped(config_for: Any, cloud: Cloud, tmp_path: Path) -> None:
    keys = [*HOSTILE[cloud.scheme], "look\u2215alike.txt"]
    for rel in keys:
        put(cloud, rel, b"evil")
    put(cloud, "ok.csv", b"a\n1\n")
    config = cloud_config(config_for, cloud)
    running = start_daemon(config)
    try:
        wait_for(lambda: running.versions("lake"), what="a version")
        assert set(manifest(running, 1)) == {"ok.csv"}
        events = read_events(config.kafka.bootstrap, config.kafka.versions_topic, min_count=1 + len(keys))
        rejected = [e for e in events if e.headers.get("ce_type") == "dataset.input.rejected"]
        assert {e.data["reason"] for e in rejected} == {"unsafe_key"}
        assert len(rejected) == len(keys)
        assert probe(running, cloud) == 2
        assert not list(tmp_path.rglob("*escape*")), "no hostile key became a local path"
    finally:
        running.stop()


def _own_emulator(cloud_kind: str, directory: Path) -> Cloud:
    """An emulator of our own that keeps its objects across a restart, with one bucket."""
    if cloud_kind == "gs":
        try:
            endpoint = gcs_server.start(directory, backend="filesystem")
        except gcs_server.ToolMissingError as exc:
            pytest.skip(str(exc))
        made: Cloud = GcsBucket(endpoint, directory / "server.log", name="restart-bucket")
    else:
        try:
            endpoint = azurite_server.start(directory)
        except azurite_server.ToolMissingError as exc:
            pytest.skip(str(exc))
        made = AzureContainer(endpoint, directory / "server.log", name="restart-container")
    made.create()
    return made


@pytest.mark.slow
@pytest.mark.parametrize("cloud_kind", ["gs", "az"])
def test_emulator_stopped_and_restarted_catches_up_without_loss(
    config_for: Any, tmp_path: Path, cloud_kind: str
) -> None:
    directory = tmp_path / "own-emulator"
    server = gcs_server if cloud_kind == "gs" else azurite_server
    store = _own_emulator(cloud_kind, directory)
    running: RunningDaemon | None = None
    try:
        a = put(store, "a.txt", b"a")
        config = cloud_config(config_for, store)
        running = start_daemon(config)
        wait_for(lambda: running is not None and running.versions("lake"), what="the first version")
        server.stop(directory)
        poller = running.daemon.poller
        assert poller is not None
        wait_for(lambda: "lake" in poller.problems, what="the poll failure noticed")
        assert "cannot reach" in poller.problems["lake"]
        from daemon.health import readiness

        ready, body = readiness(running.daemon)
        assert not ready and any(d["part"] == "bucket" for d in body["degraded"])

        # Same port, same objects as before (fake-gcs-server's filesystem backend, Azurite's files).
        restarted = gcs_server.start(directory, backend="filesystem") if cloud_kind == "gs" else server.start(directory)
        assert restarted == store.endpoint
        b = put(store, "b.txt", b"written after the outage")
        wait_for(lambda: len(running.versions("lake")) == 2, timeout=60, what="the catch-up version")
        with running.catalog() as c:
            assert [(ch.path, ch.change, ch.new_hash) for ch in c.changes("lake", 2)] == [("b.txt", "added", b)]
        assert manifest(running, 2)["a.txt"].hash == a  # the outage never read as "everything was deleted"
        wait_for(lambda: "lake" not in poller.problems, what="the poller recovered")
        assert readiness(running.daemon)[0]

        # Changes made while the daemon is down are found by its start-up listing, exactly once.
        running.stop()
        running = None
        store.delete(PREFIX + "a.txt")
        c_digest = put(store, "c.txt", b"written while the daemon was down")
        running = start_daemon(config)
        wait_for(lambda: running is not None and len(running.versions("lake")) == 3, what="the start-up catch-up")
        with running.catalog() as c:
            changes = sorted((ch.path, ch.change, ch.new_hash) for ch in c.changes("lake", 3))
        assert changes == [("a.txt", "removed", None), ("c.txt", "added", c_digest)]
        assert probe(running, store) == 4
    finally:
        if running is not None:
            running.stop()
        if isinstance(store, AzureContainer):
            store.close()
        server.stop(directory)


# --- the adapters on their own ---------------------------------------------------------------------


def test_listing_pages_with_a_cursor_one_page_in_memory_at_a_time(cloud: Cloud) -> None:
    keys = [f"{PREFIX}obj-{i:04d}.bin" for i in range(250)]
    for key in keys:
        cloud.put(key, key.encode())
    cloud.put("data2/not-mine.bin", b"x")  # shares the prefix's first letters
    root = root_of(cloud)
    fs = fs_of(cloud)
    before = cloud.list_requests()

    listing = list_prefix(fs, root, page_size=100)
    assert cloud.list_requests() == before, "nothing is fetched before the first item is asked for"
    first = next(listing)
    assert isinstance(first, ObjectEntry) and first.key == keys[0]
    wait_for(lambda: cloud.list_requests() == before + 1, 5, what="one list request")
    for _ in range(99):
        next(listing)
    assert cloud.list_requests() == before + 1, "a page's 100 keys come from one request"
    next(listing)
    wait_for(lambda: cloud.list_requests() == before + 2, 5, what="the second page")
    rest = list(listing)
    assert [e.key for e in [first, *rest]][:1] + [e.key for e in rest][-1:] == [keys[0], keys[-1]]
    assert len(rest) == 250 - 101
    wait_for(lambda: cloud.list_requests() == before + 3, 5, what="the third and last page")

    resumed = [e.key for e in list_prefix(fs, root, start_after=keys[199])]
    assert resumed == keys[200:]


def test_listed_objects_hash_to_the_xxhash_of_their_bytes(cloud: Cloud, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    cloud.put(PREFIX + "part-0.bin", data)
    cloud.put(PREFIX + "empty.csv", b"")
    cloud.put(PREFIX + "sub/", b"")  # a console's folder placeholder
    root = root_of(cloud)
    fs = fs_of(cloud)
    check_root(fs, root)
    entries = {e.rel_path: e for e in list_prefix(fs, root) if isinstance(e, ObjectEntry)}
    assert sorted(entries) == ["empty.csv", "part-0.bin"]
    entry = entries["part-0.bin"]
    assert entry.size == len(data) and entry.etag
    assert hash_object(fs, root, entry.key, etag=entry.etag, chunk=64 * 1024) == xxhash.xxh3_128_hexdigest(data)
    assert hash_object(fs, root, entries["empty.csv"].key, etag=entries["empty.csv"].etag) == (
        xxhash.xxh3_128_hexdigest(b"")
    )
    head = head_object(fs, root, entry.key)
    assert head is not None and (head.size, head.etag.strip('"')) == (entry.size, entry.etag.strip('"'))
    assert head_object(fs, root, PREFIX + "absent.bin") is None

    local = tmp_path / "copy.bin"
    with local.open("wb") as sink:
        hash_object(fs, root, entry.key, etag=entry.etag, sink=sink)
    assert local.read_bytes() == data


def test_tables_are_read_by_pyarrow_straight_from_the_object(cloud: Cloud) -> None:
    body = parquet_bytes(1000)
    cloud.put(PREFIX + "rows.parquet", body)
    root = root_of(cloud)
    fs = fs_of(cloud)
    [entry] = [e for e in list_prefix(fs, root) if isinstance(e, ObjectEntry)]
    with open_object(fs, root, entry.key, etag=entry.etag, block_size=4096) as f:
        assert f.size == len(body)
        parquet = pq.ParquetFile(f)
        assert parquet.metadata.num_rows == 1000
        assert parquet.read().column("id").to_pylist() == list(range(1000))


def test_reads_pinned_to_a_listed_version_fail_as_changed_after_an_overwrite(cloud: Cloud) -> None:
    cloud.put(PREFIX + "a.csv", b"id\n1\n")
    root = root_of(cloud)
    fs = fs_of(cloud)
    [before] = [e for e in list_prefix(fs, root) if isinstance(e, ObjectEntry)]
    with open_object(fs, root, before.key, etag=before.etag, block_size=4) as f:
        assert f.read(3) == b"id\n"
        cloud.put(PREFIX + "a.csv", b"id\n1\n2\n")
        with pytest.raises(UnreadableDataError, match="changed since it was listed"):
            f.read(10)  # the next block would be of the new version: refused, never mixed
    [after] = [e for e in list_prefix(fs, root) if isinstance(e, ObjectEntry)]
    assert after.etag != before.etag and after.size == before.size + 2
    assert hash_object(fs, root, after.key, etag=after.etag) == xxhash.xxh3_128_hexdigest(b"id\n1\n2\n")
    with pytest.raises(UnreadableDataError, match="changed since it was listed"):
        hash_object(fs, root, before.key, etag=before.etag)
    with pytest.raises(UnreadableDataError, match="changed since it was listed"):
        open_object(fs, root, before.key, etag=before.etag)

    cloud.delete(PREFIX + "a.csv")
    with pytest.raises(UnreadableDataError, match="disappeared"):
        hash_object(fs, root, after.key, etag=after.etag)
    assert [e for e in list_prefix(fs, root)] == []


def test_hashing_a_large_object_holds_a_bounded_amount_in_memory(cloud: Cloud) -> None:
    data = os.urandom(40 * 1024 * 1024)
    cloud.put(PREFIX + "blob.bin", data)
    expected = xxhash.xxh3_128_hexdigest(data)
    del data
    root = root_of(cloud)
    fs = fs_of(cloud)
    [entry] = [e for e in list_prefix(fs, root) if isinstance(e, ObjectEntry)]
    hash_object(fs, root, entry.key, chunk=256 * 1024)  # warm up: connections, imports
    tracemalloc.start()
    try:
        digest = hash_object(fs, root, entry.key, etag=entry.etag, chunk=256 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest == expected
    # GCS streams one download in 256 KiB pieces; Azure reads 4 MiB ranges (the SDK copies one).
    bound = 6 if cloud.scheme == "gs" else 16
    assert peak < bound * 1024 * 1024, f"peak {peak} bytes while hashing a 40 MiB object"


def test_hostile_keys_in_the_store_are_reported_not_listed(cloud: Cloud) -> None:
    for rel in HOSTILE[cloud.scheme]:
        put(cloud, rel, b"1")
    put(cloud, "ok.csv", b"1")
    root = root_of(cloud)
    items = list(list_prefix(fs_of(cloud), root, page_size=2))
    assert [i.rel_path for i in items if isinstance(i, ObjectEntry)] == ["ok.csv"]
    assert sorted(i.key for i in items if isinstance(i, ObjectRejection)) == sorted(
        PREFIX + rel for rel in HOSTILE[cloud.scheme]
    )


def test_missing_bucket_is_a_source_error_saying_to_create_it(cloud: Cloud) -> None:
    root = parse_root(f"{cloud.scheme}://{cloud.name}-absent/x")
    fs = filesystem_for(root, cloud.store_settings())
    with pytest.raises(SourceError, match=r"does not exist.*create it"):
        check_root(fs, root)
    with pytest.raises(SourceError, match="does not exist"):
        list(list_prefix(fs, root))


def _unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_endpoint_is_a_source_error_without_credentials(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    endpoint = f"http://127.0.0.1:{_unused_port()}"
    key = base64.b64encode(b"never-logged-account-key-0123456789").decode()
    az_root = parse_root("az://some-container/x")
    az = filesystem_for(
        az_root,
        AzureConfig(
            account_name="devstoreaccount1",
            endpoint_url=endpoint + "/devstoreaccount1",
            account_key=SecretStr(key),
            max_attempts=2,
            connect_timeout_seconds=1,
        ),
    )
    gs_root = parse_root("gs://some-bucket/x")
    gs = filesystem_for(gs_root, GcsConfig(endpoint_url=endpoint, anonymous=True, max_attempts=2))
    for fs, root in ((az, az_root), (gs, gs_root)):
        with pytest.raises(SourceError) as info:
            list(list_prefix(fs, root))
        assert f"cannot reach {endpoint}" in str(info.value)
        assert key not in str(info.value)
        with pytest.raises(SourceError, match="cannot reach"):
            hash_object(fs, root, "x/a.csv")
    assert key not in caplog.text


def test_azure_account_key_never_reaches_logs_or_messages(
    azurite_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    root = parse_root("az://absent-container/x")
    settings = AzureConfig(connection_string=SecretStr(azurite_server.connection_string(azurite_endpoint)))
    fs = filesystem_for(root, settings)
    with pytest.raises(SourceError) as info:
        check_root(fs, root)
    assert "does not exist" in str(info.value)
    assert azurite_server.ACCOUNT_KEY not in caplog.text
    assert azurite_server.ACCOUNT_KEY not in str(info.value)
    assert azurite_server.ACCOUNT_KEY not in repr(settings)
    wrong = AzureConfig(
        account_name="devstoreaccount1",
        endpoint_url=azurite_endpoint,
        account_key=SecretStr(base64.b64encode(b"a wrong key, refused").decode()),
    )
    with pytest.raises(SourceError, match=r"access denied.*Storage Blob Data Reader"):
        check_root(filesystem_for(root, wrong), root)
    assert "a wrong key" not in caplog.text


def test_no_google_credentials_anywhere_is_a_source_error_naming_the_chain(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Nothing in the application-default chain: no variable, no gcloud login, no metadata server.
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("GCE_METADATA_HOST", f"127.0.0.1:{_unused_port()}")
    monkeypatch.setenv("GCE_METADATA_IP", f"127.0.0.1:{_unused_port()}")
    root = parse_root("gs://some-bucket/x")
    with pytest.raises(SourceError, match=r"no credentials.*GOOGLE_APPLICATION_CREDENTIALS"):
        filesystem_for(root, GcsConfig(endpoint_url="http://127.0.0.1:9"))


def test_doctor_says_whether_gs_and_az_roots_are_listable(config_for: Any, cloud: Cloud) -> None:
    config = cloud_config(config_for, cloud)
    ok = check_bucket(config.datasets[0], config)
    assert ok.ok, ok.detail
    assert f"{cloud.scheme}://{cloud.name}/{PREFIX}" in ok.detail
    absent = DatasetConfig(name="gone", root=f"{cloud.scheme}://{cloud.name}-absent/x")
    bad = check_bucket(absent, config)
    assert not bad.ok and "does not exist" in bad.detail


# --- configuration, and what the CLI does not import -----------------------------------------------


def test_gcs_and_azure_sections_take_strandline_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=ZW52LXNlY3JldA==;"  # noqa: S105 - a fake
    monkeypatch.setenv("STRANDLINE_GCS_ENDPOINT_URL", "http://127.0.0.1:4443")
    monkeypatch.setenv("STRANDLINE_GCS_ANONYMOUS", "true")
    monkeypatch.setenv("STRANDLINE_AZURE_CONNECTION_STRING", secret)
    monkeypatch.setenv("STRANDLINE_AZURE_PAGE_SIZE", "5000")
    config = StrandlineConfig(
        datasets=(
            DatasetConfig(name="g", root="gs://b/p/"),
            DatasetConfig(name="a", root="az://c/p/"),
            DatasetConfig(name="s", root="s3://b/p/"),
        )
    )
    assert (config.gcs.endpoint_url, config.gcs.anonymous) == ("http://127.0.0.1:4443", True)
    assert config.azure.connection_string is not None
    assert config.azure.connection_string.get_secret_value() == secret
    assert config.azure.page_size == 5000
    assert "ZW52LXNlY3JldA" not in repr(config) and "ZW52LXNlY3JldA" not in str(config.model_dump())
    assert [type(config.store_settings(ds.root)).__name__ for ds in config.datasets] == [
        "GcsConfig",
        "AzureConfig",
        "S3Config",
    ]
    with pytest.raises(ValueError, match="only s3:// roots"):
        StrandlineConfig(
            datasets=(DatasetConfig(name="g", root="gs://b/p/", detect="notifications"),),
            s3={"notifications": {"topic": "t"}},
        )
    with pytest.raises(ValueError, match="account_key needs account_name"):
        AzureConfig(account_key=SecretStr("k"))


def test_the_cli_does_not_import_the_cloud_sdks() -> None:
    code = (
        "import sys\n"
        "sys.argv = ['strandline', '--help']\n"
        "import daemon.cli, daemon.objectstore, daemon.sources, daemon.doctor\n"
        "try:\n    daemon.cli.main()\nexcept SystemExit as exit:\n    assert exit.code == 0, exit.code\n"
        "loaded = [m for m in ('gcsfs', 'adlfs', 'azure.storage.blob', 'google.auth', 's3fs') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "gs://" in out.stdout or "Usage" in out.stdout


@pytest.mark.parametrize("script", [gcs_server, azurite_server], ids=["gcs_server", "azurite_server"])
def test_an_emulator_without_its_toolchain_says_what_to_install(
    script: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(script, "BINARY", tmp_path / "absent" / "bin")
    monkeypatch.setattr(script, "STAMP", tmp_path / "absent" / "stamp")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    with pytest.raises(script.ToolMissingError, match=r"`go` is not on PATH|`npm`/`node` are not on PATH"):
        script.install()


@pytest.mark.parametrize("name", ["gcs_server", "azurite_server"])
def test_emulator_scripts_start_answer_and_stop_from_the_command_line(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    request.getfixturevalue("gcs_endpoint" if name == "gcs_server" else "azurite_endpoint")  # installed, or skip
    script = str(REPO / "scripts" / f"{name}.py")
    directory = tmp_path / "cli"
    started = subprocess.run(
        [sys.executable, script, "start", "--dir", str(directory)], capture_output=True, text=True, check=True
    )
    endpoint = started.stdout.strip()
    probe_url = endpoint + "/storage/v1/b" if name == "gcs_server" else endpoint.rsplit("/", 1)[0] + "/"
    module = gcs_server if name == "gcs_server" else azurite_server
    try:
        assert endpoint.startswith("http://127.0.0.1:")
        assert module.answers(probe_url)
    finally:
        subprocess.run([sys.executable, script, "stop", "--dir", str(directory)], check=True)
    assert not module.answers(probe_url)
    assert not (directory / "server.pid").exists()
