"""Restoring versions from the content store into real folders: exact bytes, safe paths, all or nothing."""

from __future__ import annotations

import errno
import os
import random
import subprocess
from pathlib import Path

import pytest

from daemon.content_store import ContentStore
from daemon.fingerprint import hash_file
from daemon.manifest import FileState
from daemon.restore import (
    RESTORING_MARKER,
    STAGING_PREFIX,
    RestoreError,
    UnsafePathError,
    check_path,
    restore,
    restoring_pid,
)

MiB = 1024 * 1024

Snapshot = dict[str, bytes]
Manifest = dict[str, tuple[int, str]]


def rows(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return b"".join(b"%d,%s,%d\n" % (i, rng.randbytes(12).hex().encode(), rng.randrange(1000)) for i in range(n))


def tree(root: Path) -> Snapshot:
    """Every regular file under ``root`` with its bytes (symlinks listed by their target)."""
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            out[rel] = b"-> " + os.readlink(full).encode() if os.path.islink(full) else Path(full).read_bytes()
    return out


def write_tree(root: Path, files: Snapshot) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def version(store: ContentStore, root: Path) -> tuple[Manifest, Snapshot]:
    """What the versioner will do: hash every file, put its bytes, record the manifest and (for the test) the bytes."""
    manifest: Manifest = {}
    for rel in tree(root):
        digest, st = hash_file(root / rel)
        store.put(root / rel, digest, st.st_size)
        manifest[rel] = (st.st_size, digest)
    return manifest, tree(root)


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    # A low threshold so the bigger files of these tests are chunked.
    return ContentStore(tmp_path / "store", chunk_threshold=64 * 1024)


def test_every_version_of_a_changing_folder_restores_byte_for_byte(store: ContentStore, tmp_path: Path) -> None:
    live = tmp_path / "sales"
    write_tree(
        live,
        {
            "orders.csv": rows(20_000, 1),
            "lookup/regions.csv": b"id,name\n1,north\n2,south\n",
            "lookup/empty.csv": b"",
            "deep/a/b/c.parquet": os.urandom(100_000),
        },
    )
    versions = [version(store, live)]
    with open(live / "orders.csv", "ab") as fh:  # append
        fh.write(rows(500, 2))
    (live / "lookup/regions.csv").write_bytes(b"id,name\n1,north\n2,south\n3,east\n")  # rewrite
    (live / "deep/a/b/c.parquet").unlink()  # delete
    (live / "new.csv").write_bytes(b"x\n")  # add
    versions.append(version(store, live))
    (live / "orders.csv").write_bytes(rows(20_000, 1)[:300_000])  # truncate to an older prefix
    os.rename(live / "new.csv", live / "lookup/new.csv")  # move
    versions.append(version(store, live))

    for n, (manifest, expected) in enumerate(versions):
        target = tmp_path / f"restored-{n}"
        summary = restore(store, manifest, target)
        assert tree(target) == expected
        assert (summary.files, summary.bytes) == (len(expected), sum(map(len, expected.values())))

    # In-place revert of the live root, back to the first version and forward to the last.
    for manifest, expected in (versions[0], versions[2]):
        restore(store, manifest, live, prune=True)
        assert tree(live) == expected
        assert not [p for p in live.iterdir() if p.name.startswith(STAGING_PREFIX)]


def test_a_manifest_of_file_states_is_accepted(store: ContentStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tree(src, {"a.csv": b"1\n"})
    manifest, expected = version(store, src)
    states = {rel: FileState(size, digest, mtime_ns=1, inode=2) for rel, (size, digest) in manifest.items()}
    restore(store, states, tmp_path / "out")
    assert tree(tmp_path / "out") == expected


def _flip_stored_byte(store: ContentStore, digest: str) -> None:
    kind = "blob" if store.backend.size("blob", digest) is not None else "chunk"
    if kind == "chunk":
        from daemon.content_store import decode_recipe

        recipe = decode_recipe(store.backend.read("recipe", digest))
        digest = store._page(recipe.pages[-1], digest)[-1][0].hex()
    found = store.backend.locate(kind, digest)
    assert found is not None
    path, start, size = found
    os.chmod(path, 0o644)
    with open(path, "r+b") as fh:
        fh.seek(start + size // 2)
        byte = fh.read(1)
        fh.seek(start + size // 2)
        fh.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.parametrize("victim", ["small.csv", "big.csv"])
def test_damaged_content_fails_the_restore_naming_the_file_and_leaves_the_target_as_it_was(
    store: ContentStore, tmp_path: Path, victim: str
) -> None:
    src = tmp_path / "src"
    write_tree(src, {"a.csv": b"a\n", "small.csv": b"s,m\n" * 100, "big.csv": rows(10_000, 3), "z/z.csv": b"z\n"})
    manifest, _expected = version(store, src)
    target = tmp_path / "target"
    write_tree(target, {"a.csv": b"old a\n", "keep.txt": b"mine\n"})
    before = tree(target)
    _flip_stored_byte(store, manifest[victim][1])
    for prune in (False, True):
        with pytest.raises(RestoreError, match=rf"{victim}.*damaged.*target unchanged"):
            restore(store, manifest, target, prune=prune)
        assert tree(target) == before
        assert sorted(p.name for p in target.iterdir()) == ["a.csv", "keep.txt"]


def test_missing_content_fails_before_anything_is_written(store: ContentStore, tmp_path: Path) -> None:
    target = tmp_path / "new" / "target"
    with pytest.raises(RestoreError, match=r"'gone.csv'.*not in the store"):
        restore(store, {"gone.csv": (3, "ab" * 16)}, target)
    assert not (tmp_path / "new").exists(), "folders the restore created are removed again"


@pytest.mark.parametrize(
    "bad",
    ["../evil", "/abs", "a/../../b", "a/./b", "./a", "a//b", "a/", "", "a\0b", "..", "x/.."],
)
def test_a_path_that_could_leave_the_target_is_rejected_and_nothing_is_written(
    store: ContentStore, tmp_path: Path, bad: str
) -> None:
    src = tmp_path / "src"
    write_tree(src, {"ok.csv": b"1\n"})
    manifest, _ = version(store, src)
    digest = manifest["ok.csv"][1]
    target = tmp_path / "deep" / "target"
    target.mkdir(parents=True)
    outside_before = tree(tmp_path / "deep")
    with pytest.raises(UnsafePathError):
        restore(store, {"ok.csv": (2, digest), bad: (2, digest)}, target)
    assert tree(tmp_path / "deep") == outside_before
    assert not (tmp_path / "evil").exists() and not Path("/abs").exists()


def test_check_path_splits_clean_paths() -> None:
    assert check_path("a/b c/d.csv") == ("a", "b c", "d.csv")
    assert check_path("..hidden/…/x") == ("..hidden", "…", "x")
    with pytest.raises(UnsafePathError, match="longer than"):
        check_path("a" * 256)


def test_a_path_that_is_both_file_and_folder_is_rejected(store: ContentStore, tmp_path: Path) -> None:
    digest = hash_file(_one_file(tmp_path))[0]
    with pytest.raises(UnsafePathError, match="both as a file and as a folder"):
        restore(store, {"a": (2, digest), "a/b": (2, digest)}, tmp_path / "t")


def _one_file(tmp_path: Path) -> Path:
    path = tmp_path / "one.csv"
    path.write_bytes(b"1\n")
    return path


def test_a_symlinked_folder_in_the_target_is_never_written_through(store: ContentStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tree(src, {"link/f.csv": b"new\n", "top.csv": b"t\n"})
    manifest, expected = version(store, src)
    outside = tmp_path / "outside"
    write_tree(outside, {"secret.csv": b"do not touch\n"})
    target = tmp_path / "target"
    target.mkdir()
    (target / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(RestoreError, match="symlink is never written through"):
        restore(store, manifest, target)
    assert tree(outside) == {"secret.csv": b"do not touch\n"}
    assert (target / "link").is_symlink() and sorted(os.listdir(target)) == ["link"]
    # With prune the link is not in the version, so it goes and a real folder takes its place.
    restore(store, manifest, target, prune=True)
    assert tree(target) == expected
    assert not (target / "link").is_symlink()
    assert tree(outside) == {"secret.csv": b"do not touch\n"}


def test_a_symlink_where_a_file_goes_is_replaced_not_followed(store: ContentStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tree(src, {"data.csv": b"restored\n"})
    manifest, expected = version(store, src)
    outside = tmp_path / "outside.csv"
    outside.write_bytes(b"do not touch\n")
    target = tmp_path / "target"
    target.mkdir()
    (target / "data.csv").symlink_to(outside)
    restore(store, manifest, target)
    assert not (target / "data.csv").is_symlink()
    assert tree(target) == expected
    assert outside.read_bytes() == b"do not touch\n"


def test_prune_unlinks_symlinks_without_following_them(store: ContentStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tree(src, {"keep.csv": b"k\n"})
    manifest, expected = version(store, src)
    outside = tmp_path / "outside"
    write_tree(outside, {"a.csv": b"a\n", "sub/b.csv": b"b\n"})
    target = tmp_path / "target"
    write_tree(target, {"stale.csv": b"s\n", "old/x.csv": b"x\n"})
    (target / "dirlink").symlink_to(outside, target_is_directory=True)
    (target / "filelink").symlink_to(outside / "a.csv")
    (target / "was-empty").mkdir()
    summary = restore(store, manifest, target, prune=True)
    assert tree(target) == expected
    assert tree(outside) == {"a.csv": b"a\n", "sub/b.csv": b"b\n"}
    # The folder prune emptied goes; the one that was empty before is not ours to remove.
    assert sorted(os.listdir(target)) == ["keep.csv", "was-empty"]
    assert summary.removed == 5  # stale.csv, old/x.csv, old/, dirlink, filelink


def test_a_file_where_the_version_has_a_folder_needs_prune(store: ContentStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tree(src, {"part/0.csv": b"0\n", "flat.csv": b"f\n"})
    manifest, expected = version(store, src)
    target = tmp_path / "target"
    write_tree(target, {"part": b"I am a file\n", "flat.csv/inner.csv": b"I am a folder\n"})
    before = tree(target)
    with pytest.raises(RestoreError, match="stand"):
        restore(store, manifest, target)
    assert tree(target) == before
    restore(store, manifest, target, prune=True)
    assert tree(target) == expected


def test_a_full_disk_while_staging_leaves_the_target_as_it_was(
    store: ContentStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Injected: the store and the target share tmp_path's disk, so a real ENOSPC here would need
    # the store on one filesystem and a tiny one for the target (root only; see test_content_store's tmpfs case).
    src = tmp_path / "src"
    write_tree(src, {"a.csv": b"a\n" * 1000, "b.csv": rows(5000, 4)})
    manifest, _ = version(store, src)
    target = tmp_path / "target"
    write_tree(target, {"a.csv": b"old\n"})
    before = tree(target)
    real_write = os.write
    calls = 0

    def full_after_one_file(fd: int, data: bytes | memoryview) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_after_one_file)
    with pytest.raises(RestoreError, match=r"disk is full.*target unchanged"):
        restore(store, manifest, target)
    monkeypatch.undo()
    assert tree(target) == before


def test_restoring_an_empty_version_with_prune_empties_the_folder(store: ContentStore, tmp_path: Path) -> None:
    target = tmp_path / "target"
    write_tree(target, {"a.csv": b"a\n", "d/b.csv": b"b\n"})
    summary = restore(store, {}, target, prune=True)
    assert (summary.files, summary.bytes, summary.removed) == (0, 0, 3)
    assert list(target.iterdir()) == []


def test_a_second_restore_into_a_target_being_restored_is_refused_and_a_dead_ones_marker_is_replaced(
    store: ContentStore, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    write_tree(source, {"a.csv": rows(100, 1)})
    manifest, files = version(store, source)
    target = tmp_path / "target"
    target.mkdir()
    marker = target / RESTORING_MARKER
    busy = subprocess.Popen(["sleep", "600"])  # stands in for a restore at work
    try:
        marker.write_text(str(busy.pid))
        assert restoring_pid(target) == busy.pid
        with pytest.raises(RestoreError, match=f"another restore into .* is running \\(pid {busy.pid}\\)"):
            restore(store, manifest, target)
        assert sorted(p.name for p in target.iterdir()) == [RESTORING_MARKER]
    finally:
        busy.kill()
        busy.wait()
    assert restoring_pid(target) is None  # a dead restore's marker holds nothing back
    restore(store, manifest, target)
    assert tree(target) == files  # its marker was replaced, and ours removed when done
