"""The pure core: fingerprints, manifests, diffs, filters and event sizing, with no broker."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
import xxhash

from daemon.catalog import VersionRow
from daemon.events import CHUNK_BUDGET, version_messages
from daemon.filters import PathFilter
from daemon.fingerprint import hash_file
from daemon.manifest import FileState, canonical_manifest, diff, version_id
from schemas.config import KafkaConfig
from schemas.events import FileChange, VersionChanges, VersionCreated


@pytest.mark.parametrize("size", [0, 1, 4096, 1024 * 1024 + 17, 9 * 1024 * 1024 + 3])
def test_file_hash_is_xxh3_128_of_its_bytes(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    digest, st = hash_file(path)
    assert digest == xxhash.xxh3_128_hexdigest(data)
    assert st.st_size == size


def test_hash_refuses_to_follow_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "target").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(OSError):
        hash_file(tmp_path / "link")


def test_version_id_ignores_listing_order_but_not_content() -> None:
    a = {"x.csv": FileState(3, "aa"), "y/z.parquet": FileState(5, "bb")}
    b = dict(reversed(list(a.items())))
    assert version_id(a) == version_id(b)
    assert version_id(a) != version_id({**a, "x.csv": FileState(3, "ab")})
    assert version_id(a) != version_id({**a, "x.csv": FileState(4, "aa")})


def test_canonical_manifest_is_json_lines_sorted_by_utf8_path() -> None:
    data = canonical_manifest([("é", 1, "h1"), ("z", 2, "h2"), ("a\tb", 3, "h3")])
    lines = data.decode().splitlines()
    assert [json.loads(line)[0] for line in lines] == ["a\tb", "z", "é"]


def test_canonical_manifest_lines_are_compact_json_byte_for_byte_for_odd_names() -> None:
    """The version id is a public contract: each line must stay exactly what json.dumps writes."""
    import random

    rng = random.Random(7)
    alphabet = "abc xyz.-_/é漢字😀\t\n\r\x00\x1f\x7f\u2028\u2029\"\\'"
    entries = [
        ("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24))) + str(n), rng.randint(0, 2**53), f"{n:032x}")
        for n in range(2000)
    ]
    expected = b"".join(
        (json.dumps(list(e), ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        for e in sorted(entries, key=lambda e: e[0].encode("utf-8"))
    )
    assert canonical_manifest(entries) == expected


def test_diff_reports_added_modified_removed_and_ignores_stat_only_changes() -> None:
    old = {"keep": FileState(1, "k", 10, 1), "mod": FileState(1, "m1"), "gone": FileState(2, "g")}
    new = {"keep": FileState(1, "k", 99, 7), "mod": FileState(2, "m2"), "new": FileState(3, "n")}
    changes = {c.path: c for c in diff(old, new)}
    assert set(changes) == {"mod", "gone", "new"}
    assert changes["mod"].change == "modified" and changes["mod"].old_hash == "m1" and changes["mod"].new_hash == "m2"
    assert changes["gone"].change == "removed" and changes["gone"].old_size == 2
    assert changes["new"].change == "added" and changes["new"].size == 3


@pytest.mark.parametrize(
    ("path", "wanted"),
    [
        ("sales.csv", True),
        ("2024/01/part-0.parquet", True),
        (".hidden", False),
        ("dir/.git/config", False),
        ("upload.tmp", False),
        ("big.parquet.part", False),
        (".sales.csv.swp", False),
        ("_temporary/0/task/part-0", False),
        ("out/_temporary/x", False),
        ("file.csv~", False),
        ("f.csv._COPYING_", False),
    ],
)
def test_default_filter_ignores_tool_temporaries(path: str, wanted: bool) -> None:
    assert PathFilter().wants_file(path) is wanted


def test_include_and_exclude_globs_cross_folders() -> None:
    f = PathFilter(include=("**/*.parquet",), exclude=("staging/**",))
    assert f.wants_file("a.parquet") and f.wants_file("x/y/a.parquet")
    assert not f.wants_file("staging/a.parquet") and not f.wants_file("a.csv")


def test_non_recursive_filter_takes_only_top_level_files() -> None:
    f = PathFilter(recursive=False)
    assert f.wants_file("a.csv") and not f.wants_file("sub/a.csv") and not f.wants_dir("sub")


def _row(seq: int = 1) -> VersionRow:
    return VersionRow("big", seq, "v" * 32, None, None, datetime.now(UTC), 0, 0, 0, 0, 0)


def test_a_huge_change_set_is_truncated_and_chunked_under_the_broker_limit() -> None:
    kafka = KafkaConfig()
    changes = [
        FileChange(path=f"folder/{i:06d}-{'x' * 80}.parquet", change="added", size=i, new_hash=f"{i:032x}")
        for i in range(30_000)
    ]
    messages = version_messages(kafka, "h", "/data/big", _row(), changes)
    assert all(len(m.value) < 1_000_000 for m in messages)
    event = VersionCreated.model_validate_json(messages[-1].value)
    assert messages[-1].topic == kafka.versions_topic
    assert event.changes_truncated and event.complete_changes is not None
    assert 0 < len(event.changes) < len(changes)
    chunks = [VersionChanges.model_validate_json(m.value) for m in messages[:-1]]
    assert event.complete_changes.chunks == len(chunks) > 1
    assert all(len(m.value) <= CHUNK_BUDGET + 1024 for m in messages[:-1])
    assert [c for chunk in chunks for c in chunk.changes] == changes
    assert {m.key for m in messages[:-1]} == {b"v" * 32}


def test_change_chunks_spliced_from_one_serialization_are_byte_for_byte_the_models_json() -> None:
    # The chunks' values are cut from one serialization of the whole list: they must be exactly
    # what serializing each VersionChanges gives, whatever the names hold (quotes, braces, the
    # separator itself, controls, non-ASCII; names that are not UTF-8 are never versioned).
    odd = ['a,{"path":b', "}{", 'q"uote', "back\\slash", "tab\tnl\n", "日本", "😀", "\u2028"]
    kinds = ("added", "modified", "removed")
    changes = []
    for i in range(12_000):
        kind = kinds[i % 3]
        hashes = {"new_hash": f"{i:032x}"} if kind != "removed" else {}
        old = {"old_hash": f"{i + 1:032x}", "old_size": i + 1} if kind != "added" else {}
        size = {"size": i} if kind != "removed" else {}
        changes.append(FileChange(path=f"{odd[i % len(odd)]}/{i:05d}-{'x' * 40}", change=kind, **size, **hashes, **old))
    messages = version_messages(KafkaConfig(), "h", "/r", _row(), changes)
    chunk_messages = messages[:-1]
    assert len(chunk_messages) > 2
    seen: list[FileChange] = []
    for i, message in enumerate(chunk_messages):
        parsed = VersionChanges.model_validate_json(message.value)
        assert (parsed.chunk, parsed.chunks) == (i, len(chunk_messages))
        assert message.value == parsed.model_dump_json(exclude_none=True).encode()
        seen += parsed.changes
    assert seen == changes


def test_version_event_headers_are_cloudevents_binary_mode_with_deterministic_id() -> None:
    kafka = KafkaConfig()
    changes = [FileChange(path="a.csv", change="added", size=1, new_hash="0" * 32)]
    first = version_messages(kafka, "h", "/r", _row(), changes)[-1]
    again = version_messages(kafka, "h", "/r", _row(), changes)[-1]
    headers = dict(first.headers)
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_type"] == b"dataset.version.created"
    assert headers["ce_source"] == b"strandline://h/big"
    assert headers["content-type"] == b"application/json"
    assert dict(again.headers)["ce_id"] == headers["ce_id"]
    other = version_messages(kafka, "h", "/r", _row(2), changes)[-1]
    assert dict(other.headers)["ce_id"] != headers["ce_id"]


def test_the_fast_default_ignore_rules_agree_with_the_documented_globs() -> None:
    # filters.py decides DEFAULT_IGNORES with string tests for speed; the globs are the contract.
    from wcmatch import glob

    from daemon.filters import _default_ignored
    from schemas.config import DEFAULT_IGNORES

    paths = [
        "a.csv",
        "dir/a.parquet",
        ".hidden",
        "dir/.hidden",
        ".git/config",
        "d/.cache/x/y.csv",
        "a.tmp",
        "d/a.temp",
        "x.part",
        "x.partial",
        "x.crdownload",
        ".a.swp",
        "a.swp",
        "a.swx",
        "a~",
        "a._COPYING_",
        "_temporary/0/part-0",
        "out/_temporary",
        "out/_temporary/x",
        "__pycache__/m.pyc",
        "my_temporary.csv",
        "a.tmp.csv",
        "notes.part1",
        "x/y.z/file",
        "dir.d/a",
        "a..b",
        "tmp/a.csv",
        "_temporaryx/a",
        "a/__pycache__",
        "pycache/a",
    ]
    flags = glob.GLOBSTAR | glob.DOTGLOB
    for p in paths:
        assert _default_ignored(p) == glob.globmatch(p, list(DEFAULT_IGNORES), flags=flags), p
