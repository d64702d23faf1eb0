"""The content store in a bucket: a real S3-compatible server (moto), real packs, real hosts' indexes.

"Another host" is another ContentStore with another state_dir: its own spool and SQLite index,
the same bucket prefix.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import xxhash

from daemon.catalog import Catalog
from daemon.config import catalog_path, load_config, store_location, store_path
from daemon.content_store import (
    ContentStore,
    DamagedObjectError,
    HardlinkUnsupportedError,
    ReflinkUnsupportedError,
    StoreError,
)
from daemon.errors import ConfigError
from daemon.objectstore import filesystem_for, list_prefix, parse_root
from daemon.store_bucket import PART, decode_index, encode_index
from daemon.store_open import open_store, store_site
from schemas.config import DatasetConfig, StrandlineConfig
from tests.conftest import s3_server
from tests.helpers import probe_dataset, start_daemon
from tests.test_clouds import AzureContainer, Cloud, GcsBucket
from tests.test_time_machine import strandline, tree, write_toml

MiB = 1024 * 1024
SMALL_THRESHOLD = 64 * 1024
PACK_KEY = re.compile(r"store/packs/[0-9a-f]{32}\.(pack|idx)")


@pytest.fixture
def s3(s3_endpoint: str, bucket: str) -> Iterator[Any]:
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    yield client
    client.close()


def host_config(tmp_path: Path, host: str, endpoint: str, bucket: str, **overrides: Any) -> StrandlineConfig:
    """A host's config: its own state_dir (so its own spool and index), the shared bucket store."""
    settings: dict[str, Any] = {
        "state_dir": tmp_path / host,
        "store": {"path": f"s3://{bucket}/store"},
        "s3": {"endpoint_url": endpoint},
    }
    settings.update(overrides)
    return StrandlineConfig(**settings)


def open_host(tmp_path: Path, host: str, endpoint: str, bucket: str) -> ContentStore:
    return open_store(host_config(tmp_path, host, endpoint, bucket), chunk_threshold=SMALL_THRESHOLD)


def keys(s3: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def packs(s3: Any, bucket: str) -> set[str]:
    return {k.rsplit("/", 1)[1].split(".")[0] for k in keys(s3, bucket) if k.endswith(".pack")}


def write(path: Path, data: bytes) -> tuple[Path, str, int]:
    path.write_bytes(data)
    return path, xxhash.xxh3_128_hexdigest(data), len(data)


def spy_ranges(store: ContentStore, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every range GET the store's backend makes from now on, as (start, end): a spy on the real calls."""
    ranges: list[tuple[int, int]] = []
    get_range = store.backend._get_range  # type: ignore[attr-defined]

    def spy(pack: str, start: int, end: int) -> bytes:
        ranges.append((start, end))
        return get_range(pack, start, end)  # type: ignore[no-any-return]

    monkeypatch.setattr(store.backend, "_get_range", spy)
    return ranges


def content(store: ContentStore, digest: str) -> bytes:
    return b"".join(store.iter_content(digest))


def test_the_idx_format_round_trips_and_refuses_damage() -> None:
    rows = [("blob", b"\x01" * 16, 8 + 32, 100), ("chunk", b"\x02" * 16, 8 + 32 + 100 + 32, 5)]
    data = encode_index(8 + 32 + 100 + 32 + 5, rows)  # type: ignore[arg-type]
    assert decode_index(data) == (177, rows)
    flipped = bytearray(data)
    flipped[20] ^= 1
    with pytest.raises(ValueError, match="checksum"):
        decode_index(bytes(flipped))
    with pytest.raises(ValueError, match="outside its pack"):
        decode_index(encode_index(50, rows))  # type: ignore[arg-type]


def test_puts_land_in_the_bucket_as_packs_and_come_back_byte_for_byte(
    tmp_path: Path, s3_endpoint: str, bucket: str, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(1)
    store = open_host(tmp_path, "a", s3_endpoint, bucket)
    small = write(tmp_path / "small.csv", b"id,v\n1,2\n")
    chunked = write(tmp_path / "chunked.bin", rng.randbytes(600_000))
    assert store.put(*small).method == "copy"
    result = store.put(*chunked)
    assert result.layout == "chunked" and result.chunks > 1
    assert len(packs(s3, bucket)) == 2  # one upload per put
    before = packs(s3, bucket)
    batch = [write(tmp_path / f"f{i}.txt", f"file {i}\n".encode() * (i + 1)) for i in range(50)]
    with store.batch():
        for item in batch:
            store.put(*item)
    assert len(packs(s3, bucket) - before) == 1  # the batch of 50 is one pack object
    ranges = spy_ranges(store, monkeypatch)
    for path, digest, _size in [small, *batch]:
        assert content(store, digest) == path.read_bytes()
    ranges.clear()
    assert content(store, chunked[1]) == chunked[0].read_bytes()
    assert len(ranges) < result.chunks / 2  # chunks read in pack order come several to a GET
    # Under the default chunking threshold (8 MiB) a 3 MiB file is one blob: read back in 1 MiB ranges.
    whole = open_store(host_config(tmp_path, "a", s3_endpoint, bucket))
    big = write(tmp_path / "big.bin", rng.randbytes(3 * MiB))
    assert whole.put(*big).layout == "blob"
    ranges = spy_ranges(whole, monkeypatch)
    assert b"".join(whole.iter_content(big[1])) == big[0].read_bytes()
    assert len(ranges) == 3 and max(end - start for start, end in ranges) <= PART  # never the whole blob at once
    # Nothing but packs and their indexes in the bucket, each pack with its .idx.
    found = keys(s3, bucket)
    assert found and all(PACK_KEY.fullmatch(k) for k in found), found
    assert {k[:-5] for k in found if k.endswith(".pack")} == {k[:-4] for k in found if k.endswith(".idx")}
    assert not list((store_site(host_config(tmp_path, "a", s3_endpoint, bucket)).lock_dir / "tmp").iterdir())


def test_another_host_sees_every_object_from_the_idx_or_from_the_pack_itself(
    tmp_path: Path, s3_endpoint: str, bucket: str, s3: Any
) -> None:
    rng = random.Random(2)
    a = open_host(tmp_path, "a", s3_endpoint, bucket)
    first = write(tmp_path / "one.bin", rng.randbytes(300_000))  # chunked
    a.put(*first)
    lone = write(tmp_path / "lone.txt", b"kept in a pack of its own\n")
    before = packs(s3, bucket)
    a.put(*lone)
    (lone_pack,) = packs(s3, bucket) - before
    b = open_host(tmp_path, "b", s3_endpoint, bucket)
    assert b.backend.index.packs().keys() == packs(s3, bucket)
    for path, digest, _size in (first, lone):
        assert b.has(digest) and content(b, digest) == path.read_bytes()
    assert b.stats() == a.stats()
    # A crash between the pack's upload and its .idx's: a third host indexes it from its records.
    s3.delete_object(Bucket=bucket, Key=f"store/packs/{lone_pack}.idx")
    c = open_host(tmp_path, "c", s3_endpoint, bucket)
    assert c.has(lone[1]) and content(c, lone[1]) == lone[0].read_bytes()
    assert c.backend.index.rows_of(lone_pack) == a.backend.index.rows_of(lone_pack)
    # And B, already open, learns of a pack A stores later when it next opens.
    later = write(tmp_path / "later.txt", b"stored after B opened\n")
    a.put(*later)
    assert not b.has(later[1])
    assert open_host(tmp_path, "b", s3_endpoint, bucket).has(later[1])


def test_a_flipped_byte_in_an_uploaded_pack_is_caught_by_verify_and_on_read(
    tmp_path: Path, s3_endpoint: str, bucket: str, s3: Any
) -> None:
    store = open_host(tmp_path, "a", s3_endpoint, bucket)
    good = write(tmp_path / "good.txt", b"untouched\n" * 100)
    bad = write(tmp_path / "bad.txt", b"to be damaged\n" * 100)
    store.put(*good)
    store.put(*bad)
    assert store.verify() == []
    located = store.backend.index.lookup("blob", bytes.fromhex(bad[1]))
    assert located is not None
    key = f"store/packs/{located.pack}.pack"
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[located.offset + 5] ^= 0x01
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    fresh = open_host(tmp_path, "b", s3_endpoint, bucket)
    for reader in (store, fresh):
        problems = reader.verify()
        assert [(p.digest, p.kind, p.obj) for p in problems] == [(bad[1], "damaged", f"blob/{bad[1]}")]
        with pytest.raises(DamagedObjectError, match="damaged"):
            content(reader, bad[1])
        assert content(reader, good[1]) == good[0].read_bytes()


def test_gc_keeps_the_live_deletes_dead_packs_and_rewrites_half_dead_ones(
    tmp_path: Path, s3_endpoint: str, bucket: str, s3: Any
) -> None:
    rng = random.Random(4)
    store = open_host(tmp_path, "a", s3_endpoint, bucket)

    def batch(name: str, n: int) -> tuple[str, list[tuple[Path, str, int]]]:
        files = [write(tmp_path / f"{name}{i}.bin", rng.randbytes(20_000)) for i in range(n)]
        before = packs(s3, bucket)
        with store.batch():
            for item in files:
                store.put(*item)
        (pack,) = packs(s3, bucket) - before
        return pack, files

    live_pack, live = batch("live", 3)
    dead_pack, dead = batch("dead", 2)
    half_pack, half = batch("half", 3)
    keep = [d for _, d, _ in live] + [half[0][1]]
    other = open_host(tmp_path, "b", s3_endpoint, bucket)  # another host, open while A collects
    result = store.gc(keep)
    assert (result.objects, result.pieces) == (4, 0) and result.disk_bytes > 0
    after = packs(s3, bucket)
    assert live_pack in after  # all live: untouched
    assert dead_pack not in after and half_pack not in after
    assert not [k for k in keys(s3, bucket) if dead_pack in k or half_pack in k]  # .pack and .idx both gone
    (rewritten,) = after - {live_pack}
    assert {row[1].hex() for row in store.backend.index.rows_of(rewritten)} == {half[0][1]}
    # B's index still points at the rewritten pack: its read finds it gone, lists again, finds the copy.
    assert content(other, half[0][1]) == half[0][0].read_bytes()
    assert half_pack not in other.backend.index.packs() and rewritten in other.backend.index.packs()
    for reader in (store, other, open_host(tmp_path, "c", s3_endpoint, bucket)):
        for path, digest, _size in [*live, half[0]]:
            assert content(reader, digest) == path.read_bytes()
        for _path, digest, _size in [*dead, *half[1:]]:
            assert not reader.has(digest)
        assert reader.verify() == []


def test_an_unreachable_or_missing_bucket_fails_the_put_with_a_clear_error_and_indexes_nothing(
    tmp_path: Path, bucket: str
) -> None:
    directory = tmp_path / "s3-private"
    directory.mkdir()
    endpoint = s3_server.start(directory)
    try:
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=bucket)
        store = open_host(tmp_path, "a", endpoint, bucket)
        item = write(tmp_path / "f.txt", b"never stored\n")
        s3_server.stop(directory)
        with pytest.raises(StoreError, match=r"cannot reach http://127\.0\.0\.1:\d+ .*check \[s3\] endpoint_url"):
            store.put(*item)
        assert not store.has(item[1]) and store.backend.index.packs() == {}
        assert not list(Path(store_site(host_config(tmp_path, "a", endpoint, bucket)).lock_dir, "tmp").iterdir())
        s3_server.start(directory)  # same port, but an empty server: the bucket is gone
        with pytest.raises(StoreError, match=f"bucket '{bucket}' of the content store does not exist"):
            store.put(*item)
        assert not store.has(item[1])
        client.create_bucket(Bucket=bucket)
        assert store.put(*item).method == "copy" and content(store, item[1]) == item[0].read_bytes()
        client.close()
    finally:
        s3_server.stop(directory)


# -- through the daemon ---------------------------------------------------------------------------


def test_the_daemon_snapshots_into_a_bucket_store_and_restore_brings_it_back(
    config_for: Any, tmp_path: Path, s3_endpoint: str, bucket: str, s3: Any, caplog: pytest.LogCaptureFixture
) -> None:
    data, linked = tmp_path / "data", tmp_path / "linked"
    data.mkdir()
    linked.mkdir()
    config = config_for(
        [
            DatasetConfig(name="sales", root=data, snapshot="copy"),
            DatasetConfig(name="linked", root=linked, snapshot="hardlink"),
            probe_dataset(tmp_path),
        ],
        store={"path": f"s3://{bucket}/store"},
        s3={"endpoint_url": s3_endpoint},
    )
    cfg = write_toml(config, tmp_path / "strandline.toml", s3_endpoint=s3_endpoint)
    (data / "t.csv").write_text("id,v\n" + "".join(f"{i},{i * 0.5}\n" for i in range(1000)))
    (data / "sub").mkdir()
    (data / "sub" / "blob.bin").write_bytes(random.Random(5).randbytes(200_000))
    (linked / "l.txt").write_text("asked for a hard link\n")
    running = start_daemon(config)
    try:
        running.barrier("sales", "linked")
        sales, hard = running.versions("sales"), running.versions("linked")
    finally:
        running.stop()
    assert [(v.seq, v.snapshot, v.restorable) for v in sales] == [(1, "copy", True)]
    assert [(v.snapshot, v.restorable) for v in hard] == [("copy", True)]  # a bucket store copies
    assert (linked / "l.txt").stat().st_mode & 0o222  # not made read-only: nothing was linked
    warned = [
        r.getMessage() for r in caplog.records if "cannot apply to the content store in the bucket" in r.getMessage()
    ]
    assert len(warned) == 1 and "linked" in warned[0]
    assert packs(s3, bucket) and all(PACK_KEY.fullmatch(k) for k in keys(s3, bucket))
    out = tmp_path / "restored"
    done = strandline(cfg, "restore", "sales@1", "--to", str(out), "--json")
    assert json.loads(done.stdout)["files"] == 2
    assert tree(out) == tree(data)
    verified = strandline(cfg, "verify", "--json", check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_an_unreachable_bucket_store_makes_versions_unrestorable_and_the_daemon_goes_on(
    config_for: Any, tmp_path: Path, bucket: str
) -> None:
    directory = tmp_path / "s3-private"
    directory.mkdir()
    endpoint = s3_server.start(directory)
    try:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        data = tmp_path / "data"
        data.mkdir()
        config = config_for(
            [DatasetConfig(name="sales", root=data, snapshot="copy"), probe_dataset(tmp_path)],
            store={"path": f"s3://{bucket}/store"},
            s3={"endpoint_url": endpoint},
        )
        running = start_daemon(config)
        try:
            (data / "a.txt").write_text("stored\n")
            running.barrier("sales")
            s3_server.stop(directory)
            (data / "b.txt").write_text("the store is down\n")
            running.barrier("sales")
            (data / "c.txt").write_text("still down\n")
            running.barrier("sales")
            versions = running.versions("sales")
        finally:
            running.stop()
    finally:
        s3_server.stop(directory)
    assert [(v.seq, v.restorable) for v in versions] == [(1, True), (2, False), (3, False)]
    for v in versions[1:]:
        assert v.snapshot_note is not None and "cannot reach" in v.snapshot_note, v.snapshot_note
    with Catalog(catalog_path(config), readonly=True) as catalog:
        assert set(catalog.manifest("sales", 3)) == {"a.txt", "b.txt", "c.txt"}


def test_store_path_in_a_config_file_may_be_a_bucket_url_or_a_relative_folder(tmp_path: Path) -> None:
    config_file = tmp_path / "strandline.toml"
    config_file.write_text('[store]\npath = "s3://snapshots/strandline"\n')
    config = load_config(config_file)
    assert store_location(config) == "s3://snapshots/strandline"
    assert store_site(config).lock_dir.is_relative_to(tmp_path / ".strandline" / "store-spool")
    with pytest.raises(ConfigError, match="in a bucket"):
        store_path(config)
    config_file.write_text('[store]\npath = "kept"\n')
    assert store_location(load_config(config_file)) == str(tmp_path / "kept")
    config_file.write_text('[store]\npath = "s3://Not_A_Bucket/x"\n')
    with pytest.raises(ConfigError, match=r"\[store\] path: .*not a valid bucket name"):
        load_config(config_file)


def test_a_bucket_store_refuses_to_clone_or_link_and_leaves_the_file_alone(
    tmp_path: Path, s3_endpoint: str, bucket: str, s3: Any
) -> None:
    store = open_host(tmp_path, "a", s3_endpoint, bucket)
    big = write(tmp_path / "big.txt", b"x" * (SMALL_THRESHOLD + 1))  # reflink clones only files above it
    with pytest.raises(ReflinkUnsupportedError, match="in a bucket"):
        store.put(*big, "reflink")
    item = write(tmp_path / "f.txt", b"mine\n")
    mode = item[0].stat().st_mode
    with pytest.raises(HardlinkUnsupportedError, match="in a bucket"):
        store.put(*item, "hardlink")
    assert item[0].stat().st_mode == mode and item[0].stat().st_nlink == 1
    assert not store.has(item[1]) and not store.has(big[1]) and keys(s3, bucket) == []


# -- GCS and Azure: the same backend on fake-gcs-server and Azurite -------------------------------


@pytest.fixture(params=["gs", "az"])
def cloud(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cloud]:
    """A fresh bucket (gs) or container (az) on the session's emulator; the caller's cloud settings hidden."""
    for name in list(os.environ):
        if name.startswith(("AZURE_", "GOOGLE_", "GCE_", "CLOUDSDK_")) or name == "STORAGE_EMULATOR_HOST":
            monkeypatch.delenv(name)
    made: Cloud
    if request.param == "gs":
        made = GcsBucket(request.getfixturevalue("gcs_endpoint"), request.getfixturevalue("gcs_directory") / "log")
    else:
        made = AzureContainer(
            request.getfixturevalue("azurite_endpoint"), request.getfixturevalue("azurite_directory") / "log"
        )
    made.create()
    yield made
    if isinstance(made, AzureContainer):
        made.close()


def test_a_store_in_gcs_or_azure_round_trips_is_shared_and_collected(tmp_path: Path, cloud: Cloud) -> None:
    rng = random.Random(7)

    def host(name: str) -> ContentStore:
        config = StrandlineConfig(
            state_dir=tmp_path / name,
            store={"path": f"{cloud.scheme}://{cloud.name}/store"},
            **{cloud.section: cloud.settings},  # type: ignore[arg-type]
        )
        return open_store(config, chunk_threshold=SMALL_THRESHOLD)

    def cloud_packs() -> set[str]:
        root = parse_root(f"{cloud.scheme}://{cloud.name}/")
        found = [e.key for e in list_prefix(filesystem_for(root, cloud.store_settings()), root)]
        assert all(PACK_KEY.fullmatch(k) for k in found), found
        return {k.rsplit("/", 1)[1].split(".")[0] for k in found if k.endswith(".pack")}

    a = host("a")
    chunked = write(tmp_path / "chunked.bin", rng.randbytes(400_000))
    a.put(*chunked)
    lone = write(tmp_path / "lone.txt", b"alone\n")
    before = cloud_packs()
    a.put(*lone)
    (lone_pack,) = cloud_packs() - before
    batch = [write(tmp_path / f"f{i}.txt", rng.randbytes(1000 + i)) for i in range(20)]
    with a.batch():
        for item in batch:
            a.put(*item)
    assert len(cloud_packs()) == 3
    cloud.delete(f"store/packs/{lone_pack}.idx")  # as if the host died between the two uploads
    b = host("b")
    for path, digest, _size in [chunked, lone, *batch]:
        assert content(b, digest) == path.read_bytes()
    assert b.verify() == []
    result = b.gc([chunked[1], *(d for _, d, _ in batch)])
    assert result.objects == 1 and lone_pack not in cloud_packs()
    c = host("c")
    assert not c.has(lone[1]) and content(c, chunked[1]) == chunked[0].read_bytes()
