"""The content store on real files: chunking, dedup, appends, crash and disk-full safety, verify, gc, modes."""

from __future__ import annotations

import contextlib
import errno
import io
import itertools
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash

from daemon.chunking import DEFAULT_PARAMS, ChunkParams, chunk_boundaries, iter_buffer_chunks, iter_chunks
from daemon.content_store import (
    ContentStore,
    DamagedObjectError,
    HardlinkUnsupportedError,
    ObjectMissingError,
    PageRef,
    PutMode,
    PutResult,
    Recipe,
    ReflinkUnsupportedError,
    SourceChangedError,
    StoreError,
    StoreFullError,
    decode_recipe,
    encode_recipe,
    reflink_supported,
)
from daemon.errors import UnreadableDataError
from daemon.fingerprint import hash_file
from tests.helpers import disk_full_at_call, fail_pack_fsyncs

REPO = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
# Small enough that a 2 MiB file is chunked, so chunked paths run on small data.
SMALL_THRESHOLD = 64 * 1024


def csv_bytes(size: int, seed: int) -> bytes:
    """CSV-like text (rows of varying width) of exactly ``size`` bytes; random, so chunks do not repeat."""
    rng = random.Random(seed)
    text = rng.randbytes(size // 2 + 1).hex()
    out = io.StringIO()
    pos = row = 0
    while pos < size:
        width = rng.randint(30, 120)
        piece = text[pos : pos + width]
        out.write(f"{row},{piece[:8]},{piece[8:]}\n")
        pos += width
        row += 1
    return out.getvalue().encode()[:size]


def put_file(store: ContentStore, path: Path, mode: PutMode = "copy") -> PutResult:
    digest, st = hash_file(path)
    return store.put(path, digest, st.st_size, mode)


def content(store: ContentStore, digest: str) -> bytes:
    with store.open_file(digest) as fh:
        return fh.read()


def object_files(root: Path) -> list[Path]:
    """Every file that holds stored bytes: loose objects and packs."""
    return [p for kind in ("blob", "recipe", "page", "chunk", "packs") for p in (root / kind).rglob("*") if p.is_file()]


def _offset_of(store: ContentStore, kind: str, digest: str) -> int:
    found = store.backend.locate(kind, digest)  # type: ignore[arg-type]
    assert found is not None
    return found[1]


def packs(store: ContentStore) -> list[Path]:
    return sorted((Path(store.root) / "packs").glob("*.pack"))


def flip_stored_byte(store: ContentStore, kind: str, digest: str, offset: int) -> None:
    """Damage a stored object where it lies: in its pack or its own file."""
    found = store.backend.locate(kind, digest)  # type: ignore[arg-type]
    assert found is not None, f"{kind} {digest} is not stored"
    path, start, size = found
    assert offset < size
    _flip_a_byte(Path(path), start + offset)


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "store", chunk_threshold=SMALL_THRESHOLD)


# -- chunking -------------------------------------------------------------------------------


def test_chunks_cover_the_stream_in_order_within_the_size_bounds() -> None:
    data = csv_bytes(3 * MiB + 123, seed=1)
    cuts = list(chunk_boundaries(io.BytesIO(data)))
    assert cuts[0][0] == 0
    assert all(a[0] + a[1] == b[0] for a, b in itertools.pairwise(cuts))
    assert sum(length for _, length in cuts) == len(data)
    assert all(DEFAULT_PARAMS.min_size <= length <= DEFAULT_PARAMS.max_size for _, length in cuts[:-1])
    # A stream and the same bytes in memory are cut the same way.
    assert [data[o : o + n] for o, n in cuts] == list(iter_buffer_chunks(data))


def test_chunking_reads_a_stream_in_bounded_pieces() -> None:
    class Recording(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.inner = io.BytesIO(data)
            self.largest = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            self.largest = max(self.largest, len(buffer))
            return self.inner.readinto(buffer)

    stream = Recording(csv_bytes(8 * MiB, seed=2))
    total = sum(len(data) for _, data in iter_chunks(stream))
    assert total == 8 * MiB
    assert stream.largest <= 2 * DEFAULT_PARAMS.max_size + 8192


def test_an_insertion_moves_only_the_chunks_around_it() -> None:
    data = csv_bytes(4 * MiB, seed=3)
    edited = data[: 2 * MiB] + b"a new row that was not there before\n" + data[2 * MiB :]
    before, after = set(iter_buffer_chunks(data)), list(iter_buffer_chunks(edited))
    new = [c for c in after if c not in before]
    assert sum(map(len, new)) <= 3 * DEFAULT_PARAMS.max_size


@pytest.mark.parametrize("window", [1, 5000, 64 * 1024])
def test_chunking_a_window_at_a_time_cuts_where_one_pass_over_the_stream_does(window: int) -> None:
    from daemon.chunking import iter_chunk_windows

    params = ChunkParams(min_size=256, avg_size=1024, max_size=4096)
    data = random.Random(window).randbytes(300_000)

    class ShortReads(io.RawIOBase):
        """A stream that hands out at most a few KiB a read, as a pipe or a socket may."""

        def __init__(self) -> None:
            self._data = io.BytesIO(data)
            self._rng = random.Random(1)

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            return self._data.readinto(buffer[: self._rng.randint(1, 3000)])

    one_pass = [(offset, bytes(chunk)) for offset, chunk in iter_chunks(io.BytesIO(data), params)]
    windowed = [(offset, bytes(chunk)) for w in iter_chunk_windows(ShortReads(), params, window) for offset, chunk in w]
    assert windowed == one_pass and len(one_pass) > 100
    assert b"".join(chunk for _offset, chunk in windowed) == data


def test_chunk_params_are_checked() -> None:
    with pytest.raises(ValueError, match="min <= avg <= max"):
        ChunkParams(min_size=64 * 1024, avg_size=16 * 1024, max_size=256 * 1024)


# -- put and read back ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 4096, SMALL_THRESHOLD, SMALL_THRESHOLD + 1, 3 * MiB + 7])
def test_put_then_read_gives_the_same_bytes(store: ContentStore, tmp_path: Path, size: int) -> None:
    data = csv_bytes(size, seed=size)
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    result = put_file(store, path)
    assert result.layout == ("chunked" if size > SMALL_THRESHOLD else "blob")
    assert store.has(result.hash)
    assert content(store, result.hash) == data
    assert b"".join(store.iter_content(result.hash)) == data


def test_put_is_idempotent(store: ContentStore, tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(csv_bytes(2 * MiB, seed=4))
    first = put_file(store, path)
    before = store.stats()
    again = put_file(store, path)
    assert first.new_bytes > 0
    assert (again.method, again.new_bytes) == ("present", 0)
    assert store.stats() == before


def test_the_same_file_in_two_datasets_is_stored_once(store: ContentStore, tmp_path: Path) -> None:
    shared_big, shared_small = csv_bytes(2 * MiB, seed=5), csv_bytes(10_000, seed=6)
    for name in ("sales", "sales-copy"):
        root = tmp_path / name
        root.mkdir()
        (root / "big.csv").write_bytes(shared_big)
        (root / "lookup.csv").write_bytes(shared_small)
    sizes = []
    for name in ("sales", "sales-copy"):
        for f in ("big.csv", "lookup.csv"):
            put_file(store, tmp_path / name / f)
        sizes.append(store.stats())
    assert sizes[1] == sizes[0]
    assert sizes[0].objects == 2
    assert len(shared_big) + len(shared_small) <= sizes[0].bytes <= 1.05 * (len(shared_big) + len(shared_small))


def test_a_one_mib_append_to_a_40_mib_csv_adds_at_most_1_2_mib(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store")  # the real threshold and chunk sizes
    path = tmp_path / "events.csv"
    data = csv_bytes(41 * MiB, seed=7)
    path.write_bytes(data[: 40 * MiB])
    first = put_file(store, path)
    assert first.layout == "chunked"
    before = store.stats().bytes
    with open(path, "ab") as fh:
        fh.write(data[40 * MiB :])
    second = put_file(store, path)
    added = store.stats().bytes - before
    assert second.new_bytes == added
    assert 1 * MiB <= added <= 1.2 * MiB, f"{added} new bytes for a 1 MiB append"
    assert content(store, second.hash) == data
    assert content(store, first.hash) == data[: 40 * MiB]


def test_a_file_that_changed_since_it_was_hashed_is_refused(store: ContentStore, tmp_path: Path) -> None:
    small, big = tmp_path / "small.csv", tmp_path / "big.csv"
    small.write_bytes(b"a,b\n1,2\n")
    big.write_bytes(csv_bytes(2 * MiB, seed=8))
    for path in (small, big):
        digest, st = hash_file(path)
        data = path.read_bytes()
        path.write_bytes(data[:-1] + b"!")  # same size, other bytes
        with pytest.raises(SourceChangedError, match="changed while it was being stored"):
            store.put(path, digest, st.st_size)
        with pytest.raises(SourceChangedError):
            store.put(path, digest, st.st_size + 1)  # other size
        assert not store.has(digest)
    assert object_files(Path(store.root)) == []
    assert list((Path(store.root) / "tmp").iterdir()) == []


@pytest.mark.parametrize("size", [5000, 2 * MiB], ids=["blob", "chunked"])
def test_bytes_from_a_stream_are_stored_and_checked(store: ContentStore, size: int) -> None:
    data = csv_bytes(size, seed=23)
    digest = xxhash.xxh3_128_hexdigest(data)
    with pytest.raises(SourceChangedError, match="hash to"):
        store.put_stream(io.BytesIO(data[:-1] + b"?"), digest, size, name="s3://b/k.csv")
    with pytest.raises(SourceChangedError, match="bytes were read"):
        store.put_stream(io.BytesIO(data + b"more"), digest, size)
    assert object_files(Path(store.root)) == []
    result = store.put_stream(io.BytesIO(data), digest, size)
    assert (result.hash, result.size) == (digest, size)
    assert content(store, digest) == data

    class Broken(io.RawIOBase):
        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            raise ConnectionResetError(errno.ECONNRESET, "connection reset by peer")

    with pytest.raises(UnreadableDataError, match=r"cannot read s3://b/other\.csv"):
        store.put_stream(Broken(), "cd" * 16, size, name="s3://b/other.csv")


def test_an_unreadable_source_is_reported_as_such(store: ContentStore, tmp_path: Path) -> None:
    with pytest.raises(UnreadableDataError, match="cannot open"):
        store.put(tmp_path / "missing.csv", "0" * 32, 1)
    (tmp_path / "link").symlink_to(tmp_path)
    with pytest.raises(UnreadableDataError):
        store.put(tmp_path / "link", "0" * 32, 1)
    with pytest.raises(ValueError, match="not an XXH3-128"):
        store.has("../../etc/passwd")
    # Checked all at once: a bad one among good ones is still named, even one that realigns
    # the hex of its neighbours (31 + 33 characters).
    good = [f"{i:032x}" for i in range(50)]
    for bad in (["../" + "0" * 29], ["A" * 32], ["0" * 31, "0" * 33]):
        with pytest.raises(ValueError, match="not an XXH3-128"):
            store.missing(dict.fromkeys([*good, *bad], 1))


def test_reading_a_hash_that_is_not_stored_raises(store: ContentStore) -> None:
    with pytest.raises(ObjectMissingError, match="no content stored"):
        store.open_file("ab" * 16)


# -- crashes and full disks -----------------------------------------------------------------

_KILL_CHILD = textwrap.dedent(
    """
    import os, sys, time
    from daemon.content_store import ContentStore
    from daemon.fingerprint import hash_file

    root, source, ready, threshold = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    store = ContentStore(root, chunk_threshold=threshold)

    def stuck(fd):  # the bytes are in the temp file; the parent kills us before they are committed
        open(ready, "w").close()
        time.sleep(60)

    os.fsync = stuck
    digest, st = hash_file(source)
    store.put(source, digest, st.st_size)
    """
)


@pytest.mark.parametrize("size", [32 * 1024, 2 * MiB], ids=["blob", "chunked"])
def test_a_put_killed_mid_write_leaves_no_object_and_its_temp_is_cleaned_on_open(tmp_path: Path, size: int) -> None:
    root, source, ready = tmp_path / "store", tmp_path / "f.csv", tmp_path / "ready"
    source.write_bytes(csv_bytes(size, seed=9))
    child = subprocess.Popen(
        [sys.executable, "-c", _KILL_CHILD, str(root), str(source), str(ready), str(SMALL_THRESHOLD)], cwd=REPO
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert child.poll() is None, "the child ended before it was killed"
            assert time.monotonic() < deadline, "the child never reached its first fsync"
            time.sleep(0.02)
        assert list((root / "tmp").iterdir()), "the interrupted write should have a temp file"
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(10)
    digest, _st = hash_file(source)
    reopened = ContentStore(root, chunk_threshold=SMALL_THRESHOLD)
    assert reopened.backend.removed_temps >= 1
    assert list((root / "tmp").iterdir()) == []
    assert not reopened.has(digest)
    assert object_files(root) == []
    put_file(reopened, source)
    assert content(reopened, digest) == source.read_bytes()


def test_a_live_writers_temp_file_is_kept_on_open(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store")
    mine = Path(store.backend.temp_path())
    mine.write_bytes(b"being written")
    dead = Path(store.root) / "tmp" / "999999999.abc.tmp"  # above pid_max: no such process
    dead.write_bytes(b"left by a crash")
    reopened = ContentStore(tmp_path / "store")
    assert reopened.backend.removed_temps == 1
    assert mine.exists() and not dead.exists()


def test_a_failure_after_the_temp_write_leaves_no_object(
    store: ContentStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(b"x" * 1000)

    # Injected: an I/O error at the rename that names the pack cannot be produced on demand on a real disk.
    real_rename = os.rename

    def broken_rename(src: str, dst: str) -> None:
        if "packs" in str(dst):
            raise OSError(errno.EIO, "Input/output error")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", broken_rename)
    with pytest.raises(StoreError, match="Input/output error"):
        put_file(store, path)
    monkeypatch.undo()
    assert not store.has(hash_file(path)[0])
    assert object_files(Path(store.root)) == []
    assert list((Path(store.root) / "tmp").iterdir()) == []


@pytest.mark.parametrize("size", [32 * 1024, 2 * MiB], ids=["blob", "chunked"])
def test_a_full_disk_raises_store_full_and_keeps_nothing(
    store: ContentStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    # Injected, so it runs without root; the real-ENOSPC twin on a 1 MiB tmpfs is further down.
    path = tmp_path / "f.csv"
    data = csv_bytes(size, seed=10)
    path.write_bytes(data)
    before = os.stat(path)
    tmp_dir = os.path.join(store.root, "tmp")
    real_write = os.pwrite
    writes = 0

    def write_until_full(fd: int, payload: bytes | memoryview, offset: int) -> int:
        # Only the store's temp files run out of space, after the first 1 MiB of chunks went through.
        nonlocal writes
        target = ""
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
        if target.startswith(tmp_dir):
            writes += 1
            if writes > 1 or size < SMALL_THRESHOLD:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, payload, offset)

    monkeypatch.setattr(os, "pwrite", write_until_full)
    with pytest.raises(StoreFullError, match="no space left"):
        put_file(store, path)
    monkeypatch.undo()
    assert object_files(Path(store.root)) == [], "chunks written before the failure must be removed"
    assert list((Path(store.root) / "tmp").iterdir()) == []
    after = os.stat(path)
    assert path.read_bytes() == data
    assert (after.st_mode, after.st_mtime_ns, after.st_size) == (before.st_mode, before.st_mtime_ns, before.st_size)


def _private_mount_or_skip(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (sh) in a private mount namespace (its mounts vanish with it); skip where that is not allowed."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private mount namespace here: {probe.stderr.strip()}")
    return subprocess.run(
        ["unshare", "-m", "sh", "-ec", script, "sh", *args], capture_output=True, text=True, timeout=120, cwd=REPO
    )


_TMPFS_CHILD = textwrap.dedent(
    """
    import os, sys
    from daemon.content_store import ContentStore, StoreFullError
    from daemon.fingerprint import hash_file

    root = sys.argv[1]
    store = ContentStore(root, chunk_threshold=64 * 1024)  # opened while there is room, as a daemon's is
    for source in sys.argv[2:]:
        vfs = os.statvfs(root)
        with open(os.path.join(os.path.dirname(root), "filler"), "wb") as fh:
            fh.write(bytes(vfs.f_bavail * vfs.f_frsize - 32 * 1024))  # leave 32 KiB
        digest, st = hash_file(source)
        try:
            store.put(source, digest, st.st_size)
        except StoreFullError:
            pass
        else:
            raise SystemExit(f"{source} fit on a full filesystem")
        leftovers = [f for d, _, fs in os.walk(root) for f in fs if f != "FORMAT" and not f.startswith("index.db")]
        assert leftovers == [], leftovers
        assert not store.has(digest)
        os.unlink(os.path.join(os.path.dirname(root), "filler"))
        print("full and clean")
    """
)


def test_a_really_full_filesystem_raises_store_full_and_keeps_nothing(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    blob, chunked = tmp_path / "blob.csv", tmp_path / "chunked.csv"
    blob.write_bytes(csv_bytes(SMALL_THRESHOLD, seed=11))
    chunked.write_bytes(csv_bytes(3 * MiB, seed=12))
    done = _private_mount_or_skip(
        f'mount -t tmpfs -o size=1m tmpfs "$1" || exit 77; "{sys.executable}" -c "$2" "$1/store" "$3" "$4"',
        str(mnt),
        _TMPFS_CHILD,
        str(blob),
        str(chunked),
    )
    if done.returncode == 77:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("full and clean") == 2


# -- when bytes become durable --------------------------------------------------------------


def test_a_chunked_put_is_one_pack_fsynced_once_before_it_is_named_with_its_recipe_last(
    store: ContentStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f.csv"
    data = csv_bytes(2 * MiB, seed=30)
    path.write_bytes(data)
    real_fsync, real_rename = os.fsync, os.rename
    synced_files: list[int] = []
    renamed: list[str] = []

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            synced_files.append(st.st_ino)
        real_fsync(fd)

    def rename(src: str, dst: str) -> None:
        assert os.stat(src).st_ino in synced_files, f"{dst} was named before its fsync"
        renamed.append(str(dst))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    result = put_file(store, path)
    monkeypatch.undo()
    assert result.layout == "chunked" and result.new_chunks > 10
    assert len(synced_files) == 1, "one fsync for the whole put, not one per chunk"
    assert [Path(p).parent.name for p in renamed] == ["packs"]
    assert packs(store) == [Path(renamed[0])]
    assert list((Path(store.root) / "tmp").iterdir()) == []
    chunk_offsets = [_offset_of(store, "chunk", d) for d in _chunks_of(store, result.hash)]
    assert _offset_of(store, "recipe", result.hash) > max(chunk_offsets), "the recipe follows every chunk it names"
    assert content(store, result.hash) == data


def test_a_batch_seals_one_pack_for_all_its_copies_and_syncs_the_filesystem_only_for_links(
    store: ContentStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import daemon.content_store as content_store

    calls: list[str] = []
    real_syncfs = content_store.syncfs

    def syncfs(path: str) -> None:
        calls.append(path)
        real_syncfs(path)

    monkeypatch.setattr(content_store, "syncfs", syncfs)
    big = tmp_path / "big.csv"
    big.write_bytes(csv_bytes(2 * MiB, seed=31))
    smalls = [tmp_path / f"small{n}.csv" for n in range(20)]
    for n, small in enumerate(smalls):
        small.write_bytes(csv_bytes(1000 + n, seed=32 + n))
    with store.batch():
        assert put_file(store, big).layout == "chunked"
        assert {put_file(store, small).method for small in smalls} == {"copy"}
        assert packs(store) == [], "nothing is named before the batch ends"
    assert len(packs(store)) == 1
    assert calls == [], "copies need no syncfs: the pack's own fsync covers them"
    for small in smalls:
        assert content(store, hash_file(small)[0]) == small.read_bytes()
    with store.batch():
        assert put_file(store, smalls[0]).method == "present"
    assert len(packs(store)) == 1 and calls == []


def test_a_hardlinked_file_is_durable_before_it_is_named(
    store: ContentStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import daemon.content_store as content_store

    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    one.write_bytes(csv_bytes(5000, seed=33))
    two.write_bytes(csv_bytes(5000, seed=34))
    real_fsync, real_syncfs = os.fsync, content_store.syncfs
    synced: list[int] = []
    syncfs_calls: list[str] = []

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    def syncfs(path: str) -> None:
        syncfs_calls.append(path)
        real_syncfs(path)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(content_store, "syncfs", syncfs)
    assert put_file(store, one, "hardlink").method == "hardlink"
    assert one.stat().st_ino in synced, "outside a batch the linked file itself is fsynced"
    with store.batch():
        assert put_file(store, two, "hardlink").method == "hardlink"
    assert two.stat().st_ino not in synced
    assert syncfs_calls == [store.root], "in a batch the batch's syncfs covers it"


# -- verify, damage, delete and gc ----------------------------------------------------------


def _flip_a_byte(path: Path, offset: int = 100) -> None:
    os.chmod(path, 0o644)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))


def test_a_flipped_byte_in_a_blob_is_reported_and_never_read_back(store: ContentStore, tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(csv_bytes(20_000, seed=13))
    result = put_file(store, path)
    assert store.verify() == []
    flip_stored_byte(store, "blob", result.hash, 100)
    problems = store.verify()
    assert [(p.digest, p.kind, p.obj) for p in problems] == [(result.hash, "damaged", f"blob/{result.hash}")]
    with pytest.raises(DamagedObjectError, match=result.hash):
        content(store, result.hash)


def test_a_flipped_byte_in_a_shared_chunk_names_every_file_that_uses_it(store: ContentStore, tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    data = csv_bytes(2 * MiB, seed=14)
    path.write_bytes(data)
    first = put_file(store, path)
    path.write_bytes(data + b"one more row\n")
    second = put_file(store, path)
    victim = sorted(_chunks_of(store, first.hash) & _chunks_of(store, second.hash))[0]
    flip_stored_byte(store, "chunk", victim, 10)
    problems = store.verify()
    assert sorted((p.digest, p.kind, p.obj) for p in problems) == sorted(
        (r.hash, "damaged", f"chunk/{victim}") for r in (first, second)
    )
    for r in (first, second):
        with pytest.raises(DamagedObjectError, match=victim):
            content(store, r.hash)


def _chunks_of(store: ContentStore, digest: str) -> set[str]:
    recipe = decode_recipe(store.backend.read("recipe", digest))
    return {d.hex() for ref in recipe.pages for d, _ in store._page(ref, digest)}


def test_a_missing_chunk_is_reported(store: ContentStore, tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(csv_bytes(2 * MiB, seed=15))
    result = put_file(store, path)
    victim = sorted(_chunks_of(store, result.hash))[0]
    store.backend.delete("chunk", victim)
    assert [(p.digest, p.kind, p.obj) for p in store.verify()] == [(result.hash, "missing", f"chunk/{victim}")]
    with pytest.raises(ObjectMissingError, match=victim):
        content(store, result.hash)


def test_a_damaged_recipe_is_reported(store: ContentStore, tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(csv_bytes(2 * MiB, seed=16))
    result = put_file(store, path)
    flip_stored_byte(store, "recipe", result.hash, 30)
    assert [(p.digest, p.kind) for p in store.verify()] == [(result.hash, "damaged")]
    with pytest.raises(DamagedObjectError, match="recipe"):
        content(store, result.hash)


def test_recipes_round_trip_and_refuse_damage() -> None:
    recipe = Recipe(300, (PageRef(b"\x01" * 16, 100, 2), PageRef(b"\x02" * 16, 200, 3)))
    data = encode_recipe(recipe)
    assert decode_recipe(data) == recipe
    for bad in (data[:-1], data[:10], b"x" + data[1:], data[:20] + b"\xff" + data[21:]):
        with pytest.raises(ValueError):
            decode_recipe(bad)


def test_deleting_a_version_keeps_the_chunks_another_version_shares(store: ContentStore, tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    data = csv_bytes(3 * MiB, seed=17)
    path.write_bytes(data)
    old = put_file(store, path)
    path.write_bytes(data + csv_bytes(300_000, seed=18))
    new = put_file(store, path)
    shared = _chunks_of(store, old.hash) & _chunks_of(store, new.hash)
    assert len(shared) > 10
    result = store.delete([old.hash])
    assert result.objects == 1
    assert not store.has(old.hash)
    assert content(store, new.hash) == path.read_bytes()
    assert store.verify() == []
    left = {digest for digest, _size in store.backend.scan("chunk")}
    assert left == _chunks_of(store, new.hash)
    gone = store.gc(live=[])
    assert gone.objects == 1
    assert store.stats().bytes == 0


def test_gc_keeps_what_is_live_and_frees_the_rest(store: ContentStore, tmp_path: Path) -> None:
    kept, dropped = tmp_path / "kept.csv", tmp_path / "dropped.csv"
    kept.write_bytes(csv_bytes(2 * MiB, seed=19))
    dropped.write_bytes(csv_bytes(2 * MiB, seed=20))
    small = tmp_path / "small.csv"
    small.write_bytes(b"a\n")
    live = [put_file(store, kept).hash, put_file(store, small).hash]
    put_file(store, dropped)
    before = store.stats()
    result = store.gc(live)
    after = store.stats()
    assert (after.objects, result.objects) == (2, 1)
    assert before.bytes - after.bytes == result.bytes >= 2 * MiB
    assert content(store, live[0]) == kept.read_bytes()
    assert store.verify() == []


# -- reflink --------------------------------------------------------------------------------


def test_reflink_probe_answers_and_copy_is_the_fallback(store: ContentStore, tmp_path: Path) -> None:
    supported = reflink_supported(store.root)
    assert isinstance(supported, bool)
    assert [p.name for p in Path(store.root).iterdir() if p.name.startswith(".reflink")] == []
    path = tmp_path / "f.csv"
    path.write_bytes(csv_bytes(SMALL_THRESHOLD + 1, seed=60))  # above the threshold: cloned, not copied
    if supported:
        assert put_file(store, path, "reflink").method == "reflink"
        return
    with pytest.raises(ReflinkUnsupportedError, match="reflink not supported"):
        put_file(store, path, "reflink")
    assert object_files(Path(store.root)) == []
    assert put_file(store, path, "copy").method == "chunked"
    assert content(store, hash_file(path)[0]) == path.read_bytes()
    small = tmp_path / "small.csv"
    small.write_bytes(b"id,v\n1,2\n")
    assert put_file(store, small, "reflink").method == "copy", "small files go to a pack in every mode but hardlink"


_XFS_CHILD = textwrap.dedent(
    """
    import os, sys
    from daemon.content_store import ContentStore, reflink_supported
    from daemon.fingerprint import hash_file

    mnt = sys.argv[1]
    assert reflink_supported(mnt)
    store = ContentStore(os.path.join(mnt, "store"), chunk_threshold=64 * 1024)
    path = os.path.join(mnt, "f.csv")
    with open(path, "wb") as fh:
        fh.write(b"a,b\\n" * 5000)
    digest, st = hash_file(path)
    result = store.put(path, digest, st.st_size, "reflink")
    assert (result.method, result.new_bytes) == ("copy", 20000), "below the threshold: copied into a pack"
    with open(path, "r+b") as fh:  # an in-place edit of the user's file
        fh.write(b"X")
    with store.open_file(digest) as fh:
        assert fh.read() == b"a,b\\n" * 5000
    assert store.verify() == []
    # Above the chunk threshold too: cloned whole, no bytes written, and an append in place
    # leaves the earlier clone as it was.
    big = os.path.join(mnt, "big.csv")
    with open(big, "wb") as fh:
        fh.write(b"1,2,3\\n" * 100_000)
    first, st = hash_file(big)
    result = store.put(big, first, st.st_size, "reflink")
    assert (result.method, result.layout, result.new_bytes) == ("reflink", "blob", 0), result
    with open(big, "ab") as fh:
        fh.write(b"4,5,6\\n" * 1000)
    second, st = hash_file(big)
    assert store.put(big, second, st.st_size, "reflink").method == "reflink"
    with store.open_file(first) as fh:
        assert fh.read() == b"1,2,3\\n" * 100_000
    with store.open_file(second) as fh:
        assert fh.read() == b"1,2,3\\n" * 100_000 + b"4,5,6\\n" * 1000
    assert store.verify() == []
    # Restore clones it back out (and checks it); a packed file cannot be cloned and is copied.
    fd = os.open(os.path.join(mnt, "out.csv"), os.O_RDWR | os.O_CREAT, 0o644)
    assert store.clone_to(second, fd)
    os.close(fd)
    with open(os.path.join(mnt, "out.csv"), "rb") as fh:
        assert fh.read() == b"1,2,3\\n" * 100_000 + b"4,5,6\\n" * 1000
    fd = os.open(os.path.join(mnt, "small-out.csv"), os.O_RDWR | os.O_CREAT, 0o644)
    assert not store.clone_to(digest, fd)
    os.close(fd)
    from daemon.restore import restore
    target = os.path.join(mnt, "restored")
    os.mkdir(target)
    restore(store, {"big.csv": (st.st_size, second), "f.csv": (20000, digest)}, target)
    with open(os.path.join(target, "big.csv"), "rb") as fh:
        assert fh.read() == b"1,2,3\\n" * 100_000 + b"4,5,6\\n" * 1000
    with open(os.path.join(target, "f.csv"), "rb") as fh:
        assert fh.read() == b"a,b\\n" * 5000
    print("cloned and intact")
    """
)


def test_reflink_on_a_filesystem_that_clones(tmp_path: Path) -> None:
    if shutil.which("mkfs.xfs") is None:
        pytest.skip("mkfs.xfs is not installed (apt-get install xfsprogs) to make a reflink filesystem")
    image, mnt = tmp_path / "xfs.img", tmp_path / "xfs"
    mnt.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(300 * MiB)  # sparse: XFS's smallest size
    made = subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    done = _private_mount_or_skip(
        f'mount -o loop "$1" "$2" || exit 77; "{sys.executable}" -c "$3" "$2"', str(image), str(mnt), _XFS_CHILD
    )
    if done.returncode == 77:
        pytest.skip(f"cannot loop-mount a filesystem here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert "cloned and intact" in done.stdout


# -- hardlink -------------------------------------------------------------------------------

# sh, not Python: the unprivileged user may not reach our interpreter. "1<>" opens read-write without truncating.
_IN_PLACE_WRITE = 'if printf X 1<>"$1"; then echo written; else echo denied; fi'


def _write_in_place_as_owner(path: Path) -> str:
    """Try an in-place write as the file's owner without privileges (as nobody when we are root)."""
    if os.geteuid() != 0:
        return subprocess.run(["sh", "-c", _IN_PLACE_WRITE, "sh", str(path)], capture_output=True, text=True).stdout
    os.chown(path, 65534, 65534)
    done = subprocess.run(
        ["sh", "-c", _IN_PLACE_WRITE, "sh", str(path)],
        capture_output=True,
        text=True,
        user=65534,
        group=65534,
        extra_groups=[],
        cwd="/",
    )
    return done.stdout


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder that an unprivileged user can reach (pytest's tmp_path is private to us)."""
    folder = Path(tempfile.mkdtemp(prefix="strandline-hardlink-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def test_hardlink_mode_makes_in_place_writes_fail_and_keeps_the_stored_bytes(shared_dir: Path) -> None:
    store = ContentStore(shared_dir / "store", chunk_threshold=SMALL_THRESHOLD)
    control, path = shared_dir / "control.csv", shared_dir / "data.csv"
    for f in (control, path):
        f.write_bytes(b"id,v\n1,2\n")
        f.chmod(0o644)
    assert _write_in_place_as_owner(control).strip() == "written", "the writer must be able to write unprotected files"
    result = put_file(store, path, "hardlink")
    stored = Path(store.root) / "blob" / result.hash[:2] / result.hash
    assert (result.method, result.new_bytes) == ("hardlink", 0)
    assert os.stat(stored).st_ino == os.stat(path).st_ino
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o222 == 0
    assert _write_in_place_as_owner(path).strip() == "denied"
    assert content(store, result.hash) == b"id,v\n1,2\n"
    # A writer that replaces the file gets a new inode; the store keeps the old one.
    replacement = shared_dir / "data.csv.new"
    replacement.write_bytes(b"id,v\n3,4\n")
    os.replace(replacement, path)
    assert content(store, result.hash) == b"id,v\n1,2\n"
    assert store.verify() == []


def test_a_deliberate_in_place_write_to_a_hardlinked_file_is_caught(store: ContentStore, tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(b"id,v\n1,2\n")
    result = put_file(store, path, "hardlink")
    path.chmod(0o644)  # what root, or an owner who insists, can do
    with open(path, "r+b") as fh:
        fh.write(b"X")
    assert [(p.digest, p.kind) for p in store.verify()] == [(result.hash, "damaged")]
    with pytest.raises(DamagedObjectError):
        content(store, result.hash)


def test_hardlink_mode_stores_a_large_file_as_chunks_without_touching_it(store: ContentStore, tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_bytes(csv_bytes(2 * MiB, seed=21))
    mode = os.stat(path).st_mode
    result = put_file(store, path, "hardlink")
    assert (result.layout, result.method) == ("chunked", "chunked")
    assert os.stat(path).st_mode == mode
    assert content(store, result.hash) == path.read_bytes()


def test_hardlink_across_filesystems_is_refused_and_the_file_left_alone(tmp_path: Path) -> None:
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm to put the store on another filesystem")
    other = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="strandline-test-"))
    try:
        if os.stat(other).st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("/dev/shm is on the same filesystem here")
        store = ContentStore(other / "store")
        path = tmp_path / "f.csv"
        path.write_bytes(b"a\n")
        mode = os.stat(path).st_mode
        with pytest.raises(HardlinkUnsupportedError, match="store it by copy"):
            put_file(store, path, "hardlink")
        assert os.stat(path).st_mode == mode
        assert object_files(Path(store.root)) == []
        assert put_file(store, path, "copy").method == "copy"
    finally:
        shutil.rmtree(other)


def test_stats_count_objects_and_their_bytes(store: ContentStore, tmp_path: Path) -> None:
    assert store.stats().bytes == 0
    small, big = tmp_path / "s.csv", tmp_path / "b.csv"
    small.write_bytes(b"x" * 1000)
    big.write_bytes(csv_bytes(2 * MiB, seed=22))
    put_file(store, small)
    put_file(store, big)
    stats = store.stats()
    assert (stats.objects, stats.blobs, stats.recipes) == (2, 1, 1)
    assert stats.blob_bytes == 1000
    assert stats.chunk_bytes == 2 * MiB
    assert stats.chunks >= 2 * MiB // DEFAULT_PARAMS.max_size
    assert stats.bytes == 1000 + 2 * MiB + stats.recipe_bytes + stats.page_bytes
    assert xxhash.xxh3_128_hexdigest(content(store, hash_file(big)[0])) == hash_file(big)[0]


# -- packs: index, recovery, compaction, version-1 stores ----------------------------------


def _put_smalls(store: ContentStore, folder: Path, count: int, size: int = 3000) -> list[tuple[Path, str]]:
    folder.mkdir(exist_ok=True)
    out = []
    with store.batch():
        for n in range(count):
            path = folder / f"f{n}.csv"
            path.write_bytes(csv_bytes(size, seed=1000 + n))
            out.append((path, put_file(store, path).hash))
    return out


def test_a_pack_left_out_of_the_index_is_indexed_on_open(store: ContentStore, tmp_path: Path) -> None:
    files = _put_smalls(store, tmp_path / "src", 30)
    chunked = tmp_path / "big.csv"
    chunked.write_bytes(csv_bytes(2 * MiB, seed=40))
    big = put_file(store, chunked)
    store.backend.close()
    # As after a crash between the pack's rename and its index commit: the index knows nothing.
    for name in ("index.db", "index.db-wal", "index.db-shm"):
        with contextlib.suppress(FileNotFoundError):
            (Path(store.root) / name).unlink()
    reopened = ContentStore(store.root, chunk_threshold=SMALL_THRESHOLD)
    for path, digest in files:
        assert content(reopened, digest) == path.read_bytes()
    assert content(reopened, big.hash) == chunked.read_bytes()
    assert reopened.verify(deep=True) == []


def test_a_pack_that_is_gone_makes_its_objects_missing_and_they_are_stored_again(
    store: ContentStore, tmp_path: Path
) -> None:
    files = _put_smalls(store, tmp_path / "src", 5)
    [pack] = packs(store)
    pack.unlink()
    reopened = ContentStore(store.root, chunk_threshold=SMALL_THRESHOLD)
    assert not any(reopened.has(digest) for _path, digest in files)
    path, digest = files[0]
    assert put_file(reopened, path).method == "copy"
    assert content(reopened, digest) == path.read_bytes()


def test_gc_rewrites_mostly_dead_packs_and_gives_the_disk_back(store: ContentStore, tmp_path: Path) -> None:
    files = _put_smalls(store, tmp_path / "src", 200, size=20_000)
    [old_pack] = packs(store)
    old_size = old_pack.stat().st_size
    live = [digest for _path, digest in files[:20]]
    result = store.gc(live)
    assert result.objects == 180
    assert result.bytes == 180 * 20_000
    [new_pack] = packs(store)
    assert new_pack != old_pack and not old_pack.exists()
    assert old_size - new_pack.stat().st_size == result.disk_bytes >= 180 * 20_000
    for path, digest in files[:20]:
        assert content(store, digest) == path.read_bytes()
    assert store.verify() == []
    assert store.gc([]).objects == 20
    assert packs(store) == [] and store.stats().bytes == 0


def test_a_few_dead_objects_leave_their_pack_alone_until_half_of_it_is_dead(
    store: ContentStore, tmp_path: Path
) -> None:
    files = _put_smalls(store, tmp_path / "src", 10, size=20_000)
    [pack] = packs(store)
    result = store.gc([digest for _path, digest in files[2:]])
    assert (result.objects, result.bytes, result.disk_bytes) == (2, 40_000, 0)
    assert packs(store) == [pack]
    assert not store.has(files[0][1]) and store.has(files[2][1])


def test_a_version_1_store_of_loose_files_is_still_read_and_written(tmp_path: Path) -> None:
    root = tmp_path / "store"
    source = tmp_path / "old.csv"
    source.write_bytes(b"id,v\n1,2\n")
    digest, _st = hash_file(source)
    (root / "blob" / digest[:2]).mkdir(parents=True)
    (root / "blob" / digest[:2] / digest).write_bytes(source.read_bytes())
    (root / "FORMAT").write_text("strandline-content-store 1\n")
    store = ContentStore(root)
    assert (root / "FORMAT").read_text() == "strandline-content-store 2\n"
    assert put_file(store, source).method == "present"
    assert content(store, digest) == b"id,v\n1,2\n"
    newer = tmp_path / "new.csv"
    newer.write_bytes(b"id,v\n3,4\n")
    assert put_file(store, newer).method == "copy"
    assert store.verify() == [] and store.stats().objects == 2
    assert store.gc([hash_file(newer)[0]]).disk_bytes == len(b"id,v\n1,2\n")
    (root / "FORMAT").write_text("strandline-content-store 3\n")
    with pytest.raises(StoreError, match="cannot use"):
        ContentStore(root)


def test_a_full_disk_in_the_middle_of_a_batch_never_leaves_a_file_stored_without_its_bytes(
    store: ContentStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Injected ENOSPC on the pack's second write: the first MiB of records reached the file,
    # the records gathered after it (of puts that had already returned) did not.
    folder = tmp_path / "src"
    folder.mkdir()
    sources = []
    for n in range(400):
        path = folder / f"f{n}.csv"
        path.write_bytes(csv_bytes(6000, seed=5000 + n))
        sources.append(path)
    disk_full_at_call(monkeypatch, "pwrite", 2)
    returned = []
    with pytest.raises(StoreFullError), store.batch():
        for path in sources:
            returned.append(put_file(store, path).hash)
    monkeypatch.undo()
    assert 150 < len(returned) < 400
    kept = [digest for digest in returned if store.has(digest)]
    assert 0 < len(kept) < len(returned), "some records reached the disk, the later ones did not"
    for digest in kept:
        assert xxhash.xxh3_128_hexdigest(content(store, digest)) == digest
    assert store.verify() == []


def test_put_bytes_stores_exactly_the_bytes_that_hash_to_the_digest(store: ContentStore) -> None:
    data = csv_bytes(5000, seed=70)
    digest = xxhash.xxh3_128_hexdigest(data)
    with pytest.raises(SourceChangedError):
        store.put_bytes(data[:-1] + b"!", digest)
    assert not store.has(digest) and packs(store) == []
    assert store.put_bytes(data, digest).method == "copy"
    assert store.put_bytes(data, digest).method == "present"
    assert content(store, digest) == data


def test_a_local_source_stores_the_small_file_bytes_it_hashed_not_what_the_file_became(
    store: ContentStore, tmp_path: Path
) -> None:
    from daemon.manifest import FileState
    from daemon.scanner import FileStat
    from daemon.sources import LocalSource

    for keep in (True, False):
        root = tmp_path / f"data-{keep}"
        root.mkdir()
        original = csv_bytes(3000, seed=71 if keep else 72)
        (root / "t.csv").write_bytes(original)
        source = LocalSource(str(root))
        source.keep_small_files = keep
        st = (root / "t.csv").stat()
        state = source.fingerprint("t.csv", FileStat(st.st_size, st.st_mtime_ns, st.st_ino), keep=False)
        assert isinstance(state, FileState)
        (root / "t.csv").write_bytes(original[:-1] + b"!")  # rewritten between fingerprint and snapshot
        if keep:
            # The bytes read to fingerprint it are the version's bytes: they are what is stored.
            assert source.keep_kept({"t.csv": state}, store) == ({"t.csv"}, 1, len(original))
            assert content(store, state.hash) == original
        else:
            with pytest.raises(SourceChangedError):
                source.keep_bytes("t.csv", state, store, "copy")
            assert not store.has(state.hash)
        source.finish_pass()


def test_missing_names_what_is_not_stored_and_a_batch_then_stores_it_without_asking_again(
    store: ContentStore, tmp_path: Path
) -> None:
    files = _put_smalls(store, tmp_path / "old", 3)
    new = tmp_path / "new.csv"
    new.write_bytes(csv_bytes(4000, seed=80))
    new_hash, st = hash_file(new)
    wanted = {digest: path.stat().st_size for path, digest in files} | {new_hash: st.st_size}
    wanted[files[0][1]] += 1  # a blob of another size does not count as stored
    with store.batch():
        assert store.missing(wanted) == {new_hash, files[0][1]}
        assert put_file(store, new).method == "copy"
        assert put_file(store, new).method == "present", "the batch's own puts are seen"
    assert store.missing(wanted) == {files[0][1]}
    assert content(store, new_hash) == new.read_bytes()
    # Without a size, any blob of the content counts, as has() says; a chunked file's too.
    big = tmp_path / "big.csv"
    big.write_bytes(csv_bytes(3 * SMALL_THRESHOLD, seed=81))
    big_hash = put_file(store, big).hash
    unknown = "f" * 32
    anysize = dict.fromkeys([*wanted, big_hash, unknown])
    assert store.missing(anysize) == {unknown} == {h for h in anysize if not store.has(h)}


def test_a_pack_gc_retired_but_did_not_delete_is_deleted_on_open_not_indexed_again(
    store: ContentStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _put_smalls(store, tmp_path / "src", 3, size=20_000)
    [old_pack] = packs(store)
    live = files[0][1]
    real_unlink = os.unlink

    def killed_at_unlink(path: str, *args: object, **kwargs: object) -> None:
        if str(path).endswith(".pack"):
            raise SystemExit("killed")  # gc dies between its index commit and deleting the old pack
        real_unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "unlink", killed_at_unlink)
    with pytest.raises(SystemExit):
        store.gc([live])
    monkeypatch.undo()
    assert old_pack.exists() and len(packs(store)) == 2
    reopened = ContentStore(store.root, chunk_threshold=SMALL_THRESHOLD)
    assert not old_pack.exists() and len(packs(reopened)) == 1
    assert reopened.has(live) and not reopened.has(files[1][1]) and not reopened.has(files[2][1])
    assert content(reopened, live) == files[0][0].read_bytes()
    assert reopened.verify() == []


# -- a batch sealed in the background -----------------------------------------------------------


def test_a_batch_sealed_in_the_background_is_durable_before_it_is_indexed(
    store: ContentStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``wait()`` returns once the pack is fsynced and named, while the index rows are still to come."""
    import threading

    from daemon.store_packs import PackIndex

    real_add_pack = PackIndex.add_pack
    indexing, release = threading.Event(), threading.Event()

    def add_pack(self: PackIndex, *args: object, **kwargs: object) -> None:
        indexing.set()
        assert release.wait(30), "the test never let the index rows in"
        real_add_pack(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(PackIndex, "add_pack", add_pack)
    blobs = {xxhash.xxh3_128_hexdigest(data): data for data in (csv_bytes(3000 + n, seed=80 + n) for n in range(5))}
    with store.batch(seal_in_background=True) as sealing:
        for digest, data in blobs.items():
            store.put_bytes(data, digest)
        assert packs(store) == []
    sealing.wait()
    assert indexing.is_set(), "wait() returned before the pack was even sealed"
    assert len(packs(store)) == 1, "durable means fsynced and named"
    assert not release.is_set()
    release.set()
    sealing.join()
    for digest, data in blobs.items():
        assert content(store, digest) == data
    reopened = ContentStore(Path(store.root))
    assert all(reopened.has(digest) for digest in blobs)


def test_a_background_seal_that_cannot_sync_raises_from_wait_and_keeps_nothing(
    store: ContentStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    restore_fsync = fail_pack_fsyncs(monkeypatch)
    data = csv_bytes(4000, seed=90)
    digest = xxhash.xxh3_128_hexdigest(data)
    with store.batch(seal_in_background=True) as sealing:
        store.put_bytes(data, digest)
    with pytest.raises(StoreError, match="Input/output error"):
        sealing.wait()
    with pytest.raises(StoreError):
        sealing.join()  # the same error, however often it is asked
    restore_fsync()
    assert not store.has(digest) and packs(store) == []
    assert store.put_bytes(data, digest).method == "copy", "stored again by the next put"
    assert content(store, digest) == data


def test_the_store_waits_for_a_background_seal_before_it_is_used_again(
    store: ContentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from daemon.store_packs import PackIndex

    real_add_pack = PackIndex.add_pack
    release = threading.Event()

    def add_pack(self: PackIndex, *args: object, **kwargs: object) -> None:
        assert release.wait(30)
        real_add_pack(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(PackIndex, "add_pack", add_pack)
    data = csv_bytes(4000, seed=91)
    digest = xxhash.xxh3_128_hexdigest(data)
    with store.batch(seal_in_background=True) as sealing:
        store.put_bytes(data, digest)
    sealing.wait()
    answer: list[bool] = []
    asker = threading.Thread(target=lambda: answer.append(store.has(digest)))
    asker.start()
    asker.join(0.5)
    assert asker.is_alive() and answer == [], "has() answered while the batch was still being indexed"
    release.set()
    asker.join(30)
    assert answer == [True]


def test_put_many_bytes_stores_each_content_once_and_refuses_bytes_that_moved_on(store: ContentStore) -> None:
    datas = [csv_bytes(2000 + n, seed=100 + n) for n in range(6)]
    items = [(f"f{n}.csv", xxhash.xxh3_128_hexdigest(d), d) for n, d in enumerate(datas)]
    twice = [*items, ("copy-of-f0.csv", items[0][1], datas[0])]  # the same content under two names
    with store.batch():
        assert store.put_many_bytes(twice) == (6, sum(map(len, datas)))
        assert store.put_many_bytes(items[:2]) == (0, 0), "already stored: nothing written"
    assert [content(store, digest) for _name, digest, _data in items] == datas
    moved = csv_bytes(3000, seed=120)
    bad = ("moved.csv", xxhash.xxh3_128_hexdigest(moved), moved[:-1] + b"!")
    with pytest.raises(SourceChangedError, match=r"moved\.csv"):
        store.put_many_bytes([bad])
    assert not store.has(bad[1])


def test_many_small_contents_survive_short_writes_and_fill_several_packs(
    store: ContentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # put_many_bytes writes records straight from the callers' buffers, up to 1,024 a call: a
    # short write (a signal, a filling disk) must resume exactly where it stopped, and a pack
    # that fills up must be sealed with the next records going to a new one.
    import daemon.content_store as content_store_module

    monkeypatch.setattr(content_store_module, "PACK_TARGET", 256 * 1024)
    real = os.pwritev
    calls: list[int] = []

    def pwritev_short(fd: int, buffers: list[bytes | memoryview], offset: int) -> int:
        # The kernel's own call, asked for at most 10,000 bytes each time (the rest is "not yet").
        budget, cut = 10_000, []
        for buffer in buffers:
            view = memoryview(buffer)[:budget]
            cut.append(view)
            budget -= len(view)
            if not budget:
                break
        calls.append(len(buffers))
        return real(fd, cut, offset)

    monkeypatch.setattr(os, "pwritev", pwritev_short)
    datas = [csv_bytes(1000 + 37 * n, seed=400 + n) for n in range(300)]
    items = [(f"f{n}.csv", xxhash.xxh3_128_hexdigest(d), d) for n, d in enumerate(datas)]
    with store.batch():
        assert store.put_many_bytes(items) == (300, sum(map(len, datas)))
    monkeypatch.undo()
    assert len(calls) > 50, "the writes were not cut short"
    assert len(packs(store)) >= 3
    assert [content(store, digest) for _name, digest, _data in items] == datas
    assert store.verify() == []


def test_a_full_disk_while_many_small_contents_are_written_keeps_only_whole_ones(
    store: ContentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk_full_at_call(monkeypatch, "pwritev", 2)
    datas = [csv_bytes(2000, seed=900 + n) for n in range(1500)]  # over 1,024 buffers: two calls
    items = [(f"f{n}.csv", xxhash.xxh3_128_hexdigest(d), d) for n, d in enumerate(datas)]
    with pytest.raises(StoreFullError), store.batch():
        store.put_many_bytes(items)
    monkeypatch.undo()
    kept = [digest for _name, digest, _data in items if store.has(digest)]
    assert len(kept) == 512, "the records of the first call (512 of them) are whole and stored"
    for _name, digest, data in items[:512]:
        assert content(store, digest) == data
    assert store.verify() == []


def test_prefetched_contents_are_read_without_a_query_each_and_a_stale_answer_asks_again(
    store: ContentStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from daemon.store_packs import PackIndex

    files = _put_smalls(store, tmp_path / "src", 60, size=3000)
    reader = ContentStore(Path(store.root), chunk_threshold=SMALL_THRESHOLD)  # another process's view
    asked: list[str] = []
    for name in ("lookup", "lookup_file"):
        real = getattr(PackIndex, name)

        def spy(self: PackIndex, *args: object, _real: object = real, _name: str = name) -> object:
            asked.append(_name)
            return _real(self, *args)  # type: ignore[operator]

        monkeypatch.setattr(PackIndex, name, spy)
    reader.prefetch(digest for _path, digest in files)
    for path, digest in files[:30]:
        assert content(reader, digest) == path.read_bytes()
    assert asked == [], "a prefetched content was looked up again"
    # gc (another process) moves the 30 live objects into a new pack and deletes the old one:
    # what a fresh reader prefetched before that is stale, and reading asks the index again.
    fresh = ContentStore(Path(store.root), chunk_threshold=SMALL_THRESHOLD)
    fresh.prefetch(digest for _path, digest in files)
    [old_pack] = packs(store)
    assert store.gc([digest for _path, digest in files[30:]]).objects == 30
    assert not old_pack.exists()
    asked.clear()
    for path, digest in files[30:]:
        assert content(fresh, digest) == path.read_bytes()
    assert asked == ["lookup"] * 30, "each stale answer is asked again, once"
