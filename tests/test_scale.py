"""A version costs work in proportion to its changes, not to the dataset (issue 5).

The pure parts (the incremental manifest, the roll-up) are checked against the flat functions
they replace on random inputs; the catalog's queries by the plans SQLite chooses for them; the
versioner end to end on a real folder and catalog, with no broker (events stay in the outbox).
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from daemon.catalog import Catalog
from daemon.config import catalog_path
from daemon.engine import Engine
from daemon.manifest import FileState, ManifestIndex, diff, version_id
from daemon.profile import merge_profiles
from daemon.rollup import FANOUT, OrderedRollup
from daemon.tables import profile_file
from daemon.tableschema import unify
from schemas.config import DatasetConfig, StrandlineConfig
from schemas.events import FileChange

NAMES = ["a", "b", "é", "z", "a b", 'q"uote', "back\\slash", "tab\tx", "😀", "a.b", "a0", "日本", "\u2028"]


def _random_manifest(rng: random.Random, n: int) -> dict[str, FileState]:
    out = {}
    for _ in range(n):
        path = "/".join(rng.choice(NAMES) for _ in range(rng.randint(1, 3))) + f"-{rng.randrange(50)}"
        out[path] = FileState(rng.randrange(10**6), f"{rng.getrandbits(128):032x}")
    return out


# -- the manifest ------------------------------------------------------------------------------


def test_the_kept_manifest_gives_the_version_id_of_the_whole_manifest_after_any_changes() -> None:
    rng = random.Random(5)
    manifest = _random_manifest(rng, 1000)
    index = ManifestIndex((p, st.size, st.hash) for p, st in manifest.items())
    assert index.version_id() == version_id(manifest)
    ordered = ManifestIndex(sorted((p, st.size, st.hash) for p, st in manifest.items()), ordered=True)
    assert ordered.version_id() == version_id(manifest)

    def edit(child: dict[str, FileState]) -> None:
        nonlocal manifest
        index.apply(diff(manifest, child))
        manifest = child
        assert index.version_id() == version_id(manifest)
        assert (index.files, index.bytes) == (len(manifest), sum(st.size for st in manifest.values()))

    for _ in range(40):
        child = dict(manifest)
        for path in rng.sample(sorted(child), min(len(child), rng.randint(0, 5))):
            del child[path]
        for path in rng.sample(sorted(child), min(len(child), rng.randint(0, 5))):
            child[path] = FileState(rng.randrange(10**6), f"{rng.getrandbits(128):032x}")
        edit(child | _random_manifest(rng, rng.randint(0, 5)))
    # Many files added at one place (chunks split), most removed (chunks dropped), then all.
    edit(manifest | {f"a/burst-{i:04}": FileState(i, f"{i:032x}") for i in range(700)})
    edit(dict(rng.sample(sorted(manifest.items()), 30)))
    edit({})
    assert index.version_id() == version_id({}) == ManifestIndex().version_id()
    edit(_random_manifest(rng, 300))


def test_a_diff_lists_changes_in_the_utf8_byte_order_of_their_paths() -> None:
    rng = random.Random(8)
    old, new = _random_manifest(rng, 400), _random_manifest(rng, 400)
    paths = [c.path for c in diff(old, new)]
    assert len(paths) > 700  # mostly added and removed, a few in both
    assert paths == sorted(paths, key=lambda p: p.encode("utf-8"))
    assert any(ord(ch) > 0xFFFF for p in paths for ch in p)  # beyond UTF-16's order too


def test_ordered_entries_must_come_in_path_order() -> None:
    with pytest.raises(ValueError, match="out of path order"):
        ManifestIndex([("b", 1, "h"), ("a", 1, "h")], ordered=True)
    with pytest.raises(ValueError, match="twice"):
        ManifestIndex([("a", 1, "h"), ("a", 2, "h")])


def test_the_kept_manifest_refuses_changes_that_do_not_fit_it() -> None:
    index = ManifestIndex([("a", 1, "h")])
    with pytest.raises(ValueError, match="already"):
        index.apply([FileChange(path="a", change="added", size=1, new_hash="h")])
    with pytest.raises(ValueError, match="not in the manifest"):
        index.apply([FileChange(path="b", change="removed", old_size=1, old_hash="h")])
    twice = [FileChange(path="c", change="added", size=1, new_hash="h")] * 2
    with pytest.raises(ValueError, match="twice"):
        index.apply(twice)


# -- the roll-up -------------------------------------------------------------------------------


class _Counted:
    """A load function that serves each key as its own value and counts what it was asked for."""

    def __init__(self) -> None:
        self.keys = 0
        self.calls = 0

    def __call__(self, keys: Sequence[str]) -> list[str]:
        self.calls += 1
        self.keys += len(keys)
        return [f"{k};" for k in keys]


def test_the_roll_up_equals_the_flat_merge_in_key_order_after_adds_removes_and_touches() -> None:
    rng = random.Random(11)
    keys = {f"k{rng.randrange(10**6):07}" for _ in range(2000)}
    # Concatenation is associative but not commutative: any order slip shows.
    rollup: OrderedRollup[str] = OrderedRollup("".join, keys, fanout=4)
    load = _Counted()
    assert rollup.total(load) == "".join(f"{k};" for k in sorted(keys))
    for step in range(300):
        op = rng.random()
        if op < 0.45 or not keys:
            key = f"k{rng.randrange(10**6):07}"
            if key not in keys:
                keys.add(key)
                rollup.add(key)
        elif op < 0.9:
            key = rng.choice(sorted(keys))
            keys.remove(key)
            rollup.remove(key)
        else:
            rollup.touch(rng.choice(sorted(keys)))
        if step % 7 == 0:
            assert rollup.total(load) == "".join(f"{k};" for k in sorted(keys))
    assert list(rollup.keys()) == sorted(keys) and len(rollup) == len(keys)
    for key in sorted(keys):
        rollup.remove(key)
    assert rollup.total(load) is None and list(rollup.keys()) == []
    rollup.add("again")
    assert rollup.total(load) == "again;"


def test_a_change_to_ten_of_100000_keys_loads_ten_leaves() -> None:
    keys = [f"part-{i // 1000:03}/obj-{i:06}" for i in range(100_000)]
    rollup: OrderedRollup[str] = OrderedRollup("".join, keys)
    first = _Counted()
    total = rollup.total(first)
    assert first.keys == 100_000
    assert total is not None and total.startswith("part-000/obj-000000;") and len(total) == 2_000_000
    rng = random.Random(3)
    again = _Counted()
    changed = rng.sample(keys, 10)
    for key in changed:
        rollup.touch(key)
    rollup.remove(changed[0])
    rollup.add("part-050/new")
    total = rollup.total(again)
    assert again.calls <= 11 and again.keys <= 11 * 2 * FANOUT
    assert total is not None and total == "".join(f"{k};" for k in sorted({*keys, "part-050/new"} - {changed[0]}))
    untouched = _Counted()
    assert rollup.total(untouched) == total and untouched.calls == 0


# -- the catalog's queries ---------------------------------------------------------------------


def _plans(catalog: Catalog, call: object) -> Iterator[str]:
    """The query plan of every SELECT the catalog ran during ``call()``, as SQLite chose it."""
    statements: list[str] = []
    db: sqlite3.Connection = catalog._db
    db.set_trace_callback(statements.append)
    try:
        call()  # type: ignore[operator]
    finally:
        db.set_trace_callback(None)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert selects, "the call ran no query"
    for sql in selects:
        yield " / ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql))


def _config(tmp_path: Path, root: Path, **dataset: object) -> StrandlineConfig:
    return StrandlineConfig(
        state_dir=tmp_path / "state",
        reconcile_interval_seconds=0,
        datasets=[DatasetConfig(name="d", root=root, settle_seconds=0.05, **dataset)],  # type: ignore[arg-type]
    )


def _reconciled(catalog: Catalog, config: StrandlineConfig) -> Engine:
    """An engine that has versioned its datasets once, as at start."""
    engine = Engine(catalog, config, list(config.datasets))
    engine.request_reconcile()
    engine.process_due(ignore_settle=True)
    return engine


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_looking_up_changed_paths_uses_the_index_of_current_entries(tmp_path: Path) -> None:
    root = tmp_path / "d"
    # Beside folder "a": names that sort right after "a/" or share its first letter.
    names = ["a/x", "a/y/z", "a.b", "a0", "ab", "b.bin", *[f"many/{i:04}.bin" for i in range(300)]]
    _write(root, {n: n for n in names})
    config = _config(tmp_path, root)
    with Catalog(catalog_path(config)) as catalog:
        _reconciled(catalog, config)
        ds = catalog.dataset("d").id
        assert set(catalog.current_states(ds, ["a"])) == {"a/x", "a/y/z"}
        assert set(catalog.current_states(ds, ["a/x", "b.bin"])) == {"a/x", "b.bin"}
        plans = list(_plans(catalog, lambda: catalog.current_states(ds, ["a", "many/0001.bin"])))
        assert plans and all("entries_current" in p and "entries_closed" not in p for p in plans), plans
        assert all("path=?" in p and "path>? AND path<?" in p for p in plans), plans


def test_a_versions_changes_are_read_through_indexes_that_new_entries_do_not_enter(tmp_path: Path) -> None:
    # entries_closed holds closed entries only: a version adding 20,000 files inserts nothing there.
    root = tmp_path / "d"
    _write(root, {f"f{i:03}.bin": str(i) for i in range(40)})
    config = _config(tmp_path, root)
    with Catalog(catalog_path(config)) as catalog:
        engine = _reconciled(catalog, config)
        _write(root, {"f001.bin": "changed", "new.bin": "new"})
        (root / "f002.bin").unlink()
        engine.request_reconcile()
        engine.process_due(ignore_settle=True)
        assert [(c.path, c.change) for c in catalog.changes("d", 2)] == [
            ("f001.bin", "modified"),
            ("f002.bin", "removed"),
            ("new.bin", "added"),
        ]
        plans = list(_plans(catalog, lambda: catalog.changes("d", 2)))
        assert any("USING INDEX entries_from (dataset_id=? AND from_seq=?)" in p for p in plans), plans
        assert any("USING INDEX entries_closed (dataset_id=? AND to_seq=?)" in p for p in plans), plans
        indexed = catalog._db.execute("SELECT COUNT(*) FROM entries INDEXED BY entries_closed WHERE to_seq > 0")
        assert indexed.fetchone()[0] == 2, "only the two closed entries are in the index"


def test_stored_table_reads_are_found_by_primary_key_not_by_a_scan(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _write(root, {f"t{i:03}.csv": f"x,y\n{i},{i * 2}\n" for i in range(50)})
    config = _config(tmp_path, root)
    with Catalog(catalog_path(config)) as catalog:
        _reconciled(catalog, config)
        ds = catalog.dataset("d").id
        keys = [(st.hash, "csv") for st in list(catalog.current_states(ds).values())[:7]]
        assert set(catalog.file_tables(ds, keys)) == set(keys)
        assert catalog.file_tables(ds, [(keys[0][0], "parquet")]) == {}  # same bytes, other format: not read
        plans = list(_plans(catalog, lambda: catalog.file_tables(ds, keys)))
        assert plans == ["SEARCH file_tables USING INDEX sqlite_autoindex_file_tables_1 (dataset_id=? AND hash=?)"]


# -- versions end to end -----------------------------------------------------------------------


def _csv(i: int, *, extra: bool = False) -> str:
    header = "id,amount,label" + (",note" if extra else "")
    rows = [f"{i * 10 + r},{(i * 7 + r) % 101}.5,{'abc'[r % 3]}" + (",n" if extra else "") for r in range(3)]
    return "\n".join([header, *rows]) + "\n"


def test_a_version_of_many_tables_equals_the_flat_merge_and_asks_for_few_stored_reads(tmp_path: Path) -> None:
    root = tmp_path / "d"
    n = 6 * FANOUT * FANOUT // 4  # several levels of the roll-up
    files = {f"p{i % 7}/t{i:04}.csv": _csv(i) for i in range(n)}
    _write(root, files)
    config = _config(tmp_path, root)
    with Catalog(catalog_path(config)) as catalog:
        engine = _reconciled(catalog, config)
        assert engine.versions_created == 1
        rng = random.Random(2)
        edited = rng.sample(sorted(files), 5)
        for i, rel in enumerate(edited):
            files[rel] = _csv(1000 + i, extra=(i == 0))  # one file gains a column
        gone = edited[-1]
        del files[gone]
        added = {"p3/zz-new.csv": _csv(5000), "p0/broken.csv": "a,b\n1,2,3\n"}  # ragged: unreadable
        files |= added
        _write(root, {rel: files[rel] for rel in edited[:-1]} | added)
        (root / gone).unlink()
        asked: list[str] = []
        catalog._db.set_trace_callback(lambda sql: asked.append(sql) if "FROM file_tables" in sql else None)
        engine.note_rels("d", {*edited, *added})
        engine.process_due(ignore_settle=True)
        catalog._db.set_trace_callback(None)
        assert engine.versions_created == 2
        # Stored reads looked up: the changed files' and those of the few leaves they sit in.
        looked_up = sum(sql.count("'") // 2 for sql in asked)
        assert 0 < looked_up <= 7 * 2 * FANOUT, looked_up
        quality = catalog.quality("d", 2)
        manifest = catalog.manifest("d", 2)
    assert quality is not None and set(manifest) == set(files)
    flat_profiles, flat_schemas = [], []
    for rel in sorted(files, key=lambda p: p.encode()):
        if rel == "p0/broken.csv":
            continue
        schema, profile = profile_file(str(root / rel), "csv")
        flat_schemas.append(schema)
        flat_profiles.append(profile)
    flat = merge_profiles(flat_profiles)
    assert quality.schema == unify(flat_schemas)[0]
    assert [f.name for f in quality.schema.fields] == ["id", "amount", "label", "note"]
    assert quality.status == "unreadable" and [p.path for p in quality.problems] == ["p0/broken.csv"]
    assert (quality.table_files, quality.readable_files) == (len(files), len(files) - 1)
    assert quality.profile is not None and quality.profile.rows == flat.rows == 3 * (len(files) - 1)
    for got, want in zip(quality.profile.columns, flat.columns, strict=True):
        assert (got.name, got.type, got.count, got.null_count, got.min, got.max, got.sum) == (
            want.name,
            want.type,
            want.count,
            want.null_count,
            want.min,
            want.max,
            want.sum,
        )
        assert got.mean == pytest.approx(want.mean) and got.stddev == pytest.approx(want.stddev)


def test_a_restarted_versioner_gives_the_same_ids_as_one_that_kept_its_view(tmp_path: Path) -> None:
    """The kept view is a cache: a version made by a fresh engine (which builds it from the
    catalog) and one made by a long-running engine agree, and both equal the flat version id."""
    root = tmp_path / "d"
    _write(root, {f"f{i:03}.bin": f"content {i}" for i in range(80)})
    config = _config(tmp_path, root)
    with Catalog(catalog_path(config)) as catalog:
        kept = _reconciled(catalog, config)
        for round_ in range(4):
            _write(root, {f"f{round_:03}.bin": f"edit {round_}", f"new{round_}.bin": "n"})
            (root / f"f{70 + round_:03}.bin").unlink()
            engine = kept if round_ % 2 else Engine(catalog, config, list(config.datasets))
            engine.note_rels("d", {f"f{round_:03}.bin", f"new{round_}.bin", f"f{70 + round_:03}.bin"})
            engine.process_due(ignore_settle=True)
            latest = catalog.latest_version("d")
            assert latest is not None and latest.seq == round_ + 2
            manifest = catalog.manifest("d", latest.seq)
            assert latest.version_id == version_id(manifest)
            assert (latest.files, latest.bytes) == (len(manifest), sum(st.size for st in manifest.values()))


def test_a_merge_of_merges_names_conflicting_types_once(tmp_path: Path) -> None:
    (tmp_path / "n.csv").write_text("c\n1\n2\n")
    (tmp_path / "s.csv").write_text("c\nx\ny\n")
    n, s = (profile_file(str(tmp_path / f), "csv")[1] for f in ("n.csv", "s.csv"))
    flat = merge_profiles([n, s, n])
    nested = merge_profiles([merge_profiles([n, s]), n])
    assert flat.columns[0].type == nested.columns[0].type == "int64 | string"
    assert (nested.rows, nested.columns[0].kind, nested.columns[0].count) == (6, "other", 6)


# -- listings handed over by the poller ----------------------------------------------------------


def test_a_listing_never_overrides_a_notification_that_came_before_it(tmp_path: Path) -> None:
    """Listed stats spare a request per object, but a listing may be older than a notification
    noted before it: the object is then looked at again, so a stale stat cannot hide a change."""
    from daemon.scanner import FileStat

    root = tmp_path / "d"
    _write(root, {"a.bin": "first", "b.bin": "first"})
    config = _config(tmp_path, root)
    with Catalog(catalog_path(config)) as catalog:
        engine = _reconciled(catalog, config)
        known = catalog.current_states(catalog.dataset("d").id)
        stale = {rel: FileStat(st.size, st.mtime_ns, st.inode, st.etag) for rel, st in known.items()}
        _write(root, {"a.bin": "second!", "b.bin": "second!"})
        engine.note_rels("d", {"a.bin"})  # a notification, then a listing made before the write
        engine.note_listed("d", stale)
        engine.process_due(ignore_settle=True)
        latest = catalog.latest_version("d")
        assert latest is not None and latest.seq == 2
        # b.bin came from the listing alone: its listed stat is taken as it is (the next listing
        # would bring the newer one).
        assert [(c.path, c.change) for c in catalog.changes("d", 2)] == [("a.bin", "modified")]
        engine.note_listed("d", {}, complete=True)
        passes = engine.passes
        engine.process_due(ignore_settle=True)
        assert engine.passes == passes + 1  # a reconcile with nothing to do is still a pass


def test_the_cyclic_collector_waits_for_the_end_of_a_pass_even_a_failed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    from daemon.versioner import Versioner

    root = tmp_path / "d"
    _write(root, {"a.txt": "a"})
    config = _config(tmp_path, root)
    seen: list[bool] = []
    real = Versioner.process

    def process(self: Versioner, *args: object, **kwargs: object) -> object:
        seen.append(gc.isenabled())
        if len(seen) == 2:
            raise RuntimeError("a bug in a pass")
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Versioner, "process", process)
    assert gc.isenabled()
    with Catalog(catalog_path(config)) as catalog:
        engine = _reconciled(catalog, config)
        assert engine.versions_created == 1 and gc.isenabled()
        (root / "b.txt").write_text("b")
        engine.note_path(str(root / "b.txt"), "done")
        engine.process_due(ignore_settle=True)  # the engine logs the bug and retries later
        assert engine.versions_created == 1
    assert seen == [False, False], "the collector ran during a pass"
    assert gc.isenabled(), "the collector stayed off after a failed pass"


def test_a_lazy_listing_finds_the_same_files_and_rejects_the_same_entries(tmp_path: Path) -> None:
    import os

    from daemon.filters import PathFilter
    from daemon.scanner import UNSTATED, FileStat, walk

    root = tmp_path / "d"
    _write(root, {"a.csv": "1", "sub/b.csv": "2", "sub/deeper/c.csv": "3", "sub/.~lock.x#": "tmp"})
    os.symlink(root / "a.csv", root / "link.csv")
    os.symlink("/etc/hostname", root / "sub" / "escape.csv")
    os.mkfifo(root / "fifo.csv")
    (root / os.fsdecode(b"bad\xff.csv")).write_bytes(b"x")

    def listing(lazy: bool) -> tuple[dict[str, FileStat], list[tuple[str, str]]]:
        rejected: list[tuple[str, str]] = []
        found = dict(walk(str(root), PathFilter(), lambda r: rejected.append((r.rel, r.reason)), lazy=lazy))
        return found, sorted(rejected)

    (eager, eager_rejected), (lazy, lazy_rejected) = listing(False), listing(True)
    assert set(lazy) == set(eager) == {"a.csv", "sub/b.csv", "sub/deeper/c.csv"}
    assert set(lazy.values()) == {UNSTATED}
    assert all(st.size == 1 for st in eager.values())
    assert lazy_rejected == eager_rejected
    assert {reason for _rel, reason in lazy_rejected} == {
        "symlink_not_followed",
        "symlink_escapes_root",
        "not_regular_file",
        "non_utf8_name",
    }


def test_a_folder_noticed_again_rereads_only_new_files_and_sees_a_known_one_gone_after_the_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The files of a folder are listed without their stat; the ones the catalog knows are stat'ed
    # after (their stat may prove them unchanged). b.bin goes between the two, for real.
    import os

    from daemon import fingerprint, scanner, sources

    root = tmp_path / "d"
    _write(root, {"f/a.bin": "a", "f/b.bin": "b", "f/c.bin": "c"})
    for rel in ("f/a.bin", "f/b.bin", "f/c.bin"):
        os.utime(root / rel, (1_700_000_000, 1_700_000_000))  # not "racy": their stat is trusted
    config = _config(tmp_path, root)
    real_stat_paths, real_hash = scanner.stat_paths, fingerprint.hash_file_keeping
    restated: list[list[str]] = []
    read: list[str] = []

    def stat_paths(root_: str, rels: list[str], *args: object, **kwargs: object) -> object:
        if all(not os.path.isdir(os.path.join(root_, rel)) for rel in rels):  # the known files' stat
            restated.append(sorted(rels))
            (root / "f" / "b.bin").unlink()
        return real_stat_paths(root_, rels, *args, **kwargs)  # type: ignore[arg-type]

    def hash_file_keeping(path: str, limit: int, dir_fd: int | None = None) -> object:
        folder = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else ""
        read.append(os.path.relpath(os.path.join(folder, path), root))
        return real_hash(path, limit, dir_fd)

    with Catalog(catalog_path(config)) as catalog:
        engine = _reconciled(catalog, config)
        _write(root, {"f/new.bin": "new"})
        monkeypatch.setattr(sources, "stat_paths", stat_paths)
        monkeypatch.setattr(sources, "hash_file_keeping", hash_file_keeping)
        engine.note_path(str(root / "f"), "created")
        engine.process_due(ignore_settle=True)
        assert restated == [["f/a.bin", "f/b.bin", "f/c.bin"]]
        assert read == ["f/new.bin"], "a known file whose stat matched was read again"
        latest = catalog.latest_version("d")
        assert latest is not None and latest.seq == 2
        assert [(c.path, c.change) for c in catalog.changes("d", 2)] == [
            ("f/b.bin", "removed"),
            ("f/new.bin", "added"),
        ]


def test_the_publisher_is_woken_as_soon_as_a_version_and_its_event_are_committed(tmp_path: Path) -> None:
    # The engine wakes the publisher through the versioner right after the commit, not once the
    # pass has freed its objects: the wake must find the version and its event recorded.
    root = tmp_path / "d"
    _write(root, {f"f{i:03}.bin": str(i) for i in range(30)})
    config = _config(tmp_path, root)
    with Catalog(catalog_path(config)) as catalog:
        seen: list[tuple[int | None, int]] = []

        def woken() -> None:
            latest = catalog.latest_version("d")
            seen.append((latest.seq if latest else None, len(catalog.pending(100))))

        engine = Engine(catalog, config, list(config.datasets), on_commit=woken)
        engine.request_reconcile()
        engine.process_due(ignore_settle=True)
        assert seen[0][0] == 1 and seen[0][1] >= 1, seen
        assert len(seen) == 2, "the versioner's wake, then the engine's at the end of the pass"


def test_fingerprinting_a_tree_of_many_folders_holds_one_folder_open_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import contextlib
    import os

    from daemon import fingerprint, sources

    root = tmp_path / "d"
    _write(root, {f"p{i:03}/f{j}.bin": f"{i}-{j}" for i in range(150) for j in range(2)})
    config = _config(tmp_path, root)
    real_hash = fingerprint.hash_file_keeping
    open_fds: list[int] = []

    def hash_file_keeping(path: str, limit: int, dir_fd: int | None = None) -> object:
        open_fds.append(len(os.listdir("/proc/self/fd")))
        return real_hash(path, limit, dir_fd)

    monkeypatch.setattr(sources, "hash_file_keeping", hash_file_keeping)

    def folders_open() -> list[str]:
        targets = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        return [t for t in targets if t == str(root) or t.startswith(f"{root}/")]

    with Catalog(catalog_path(config)) as catalog:
        _reconciled(catalog, config)
        latest = catalog.latest_version("d")
        assert latest is not None and latest.files == 300
        assert len(open_fds) == 300 and max(open_fds) - min(open_fds) <= 1, (min(open_fds), max(open_fds))
        assert folders_open() == [], "a folder stayed open after the pass"
