"""A version costs work in proportion to its changes, not to the dataset (issue 5).

The pure parts (the incremental manifest, the roll-up) are checked against the flat functions
they replace on random inputs; the catalog's queries by the plans SQLite chooses for them; the
versioner end to end on a real folder and catalog, with no broker (events stay in the outbox).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from daemon.catalog import Catalog
from daemon.config import catalog_path
from daemon.engine import Engine
from schemas.config import DatasetConfig, StrandlineConfig

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
        engine = Engine(catalog, config, list(config.datasets))
        engine.request_reconcile()
        engine.process_due(ignore_settle=True)
        ds = catalog.dataset("d").id
        assert set(catalog.current_states(ds, ["a"])) == {"a/x", "a/y/z"}
        assert set(catalog.current_states(ds, ["a/x", "b.bin"])) == {"a/x", "b.bin"}
        plans = list(_plans(catalog, lambda: catalog.current_states(ds, ["a", "many/0001.bin"])))
        assert plans and all("entries_current" in p and "entries_to" not in p for p in plans), plans
        assert all("path=?" in p and "path>? AND path<?" in p for p in plans), plans


def test_stored_table_reads_are_found_by_primary_key_not_by_a_scan(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _write(root, {f"t{i:03}.csv": f"x,y\n{i},{i * 2}\n" for i in range(50)})
    config = _config(tmp_path, root)
    with Catalog(catalog_path(config)) as catalog:
        engine = Engine(catalog, config, list(config.datasets))
        engine.request_reconcile()
        engine.process_due(ignore_settle=True)
        ds = catalog.dataset("d").id
        keys = [(st.hash, "csv") for st in list(catalog.current_states(ds).values())[:7]]
        assert set(catalog.file_tables(ds, keys)) == set(keys)
        assert catalog.file_tables(ds, [(keys[0][0], "parquet")]) == {}  # same bytes, other format: not read
        plans = list(_plans(catalog, lambda: catalog.file_tables(ds, keys)))
        assert plans == ["SEARCH file_tables USING INDEX sqlite_autoindex_file_tables_1 (dataset_id=? AND hash=?)"]
