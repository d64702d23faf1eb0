"""Opening a catalog written by an older Strandline: backed up, migrated in one transaction, nothing lost.

``tests/data/catalog-v1.sql`` is the dump of a real catalog written by the release with catalog
schema 1 (commit b9e7c53): three versions of dataset "sales", with profiles and an outbox.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import xxhash

from daemon.catalog import SCHEMA_VERSION, Catalog
from daemon.errors import CatalogError
from schemas.config import DatasetConfig
from tests.conftest import REPO

V1_DUMP = REPO / "tests" / "data" / "catalog-v1.sql"


def _v1_catalog(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.executescript(V1_DUMP.read_text())
    db.close()
    return path


def _schema_version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        value = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    db.close()
    return int(value)


def test_a_schema_1_catalog_is_backed_up_migrated_and_keeps_every_version(tmp_path: Path) -> None:
    path = _v1_catalog(tmp_path / "state" / "catalog.sqlite")
    assert _schema_version(path) == 1
    with sqlite3.connect(path) as raw:
        before = {
            table: raw.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # noqa: S608
            for table in ("versions", "entries", "outbox", "file_tables", "version_quality")
        }
    raw.close()

    with Catalog(path) as catalog:
        versions = catalog.versions("sales")
        assert [(v.seq, v.added, v.modified, v.removed) for v in versions] == [(1, 2, 0, 0), (2, 1, 1, 0), (3, 0, 0, 1)]
        assert set(catalog.manifest("sales", 2)) == {"a.csv", "notes.txt", "sub/b.csv"}
        assert set(catalog.manifest("sales", 3)) == {"a.csv", "sub/b.csv"}
        assert all(st.etag == "" for st in catalog.manifest("sales", 3).values())
        quality = catalog.quality("sales", 2)
        assert quality is not None and quality.profile is not None and quality.profile.rows == 4
        assert catalog.backlog()[0] == before["outbox"]

    assert _schema_version(path) == SCHEMA_VERSION
    backup = path.with_name("catalog.sqlite.schema1.bak")
    assert backup.exists() and _schema_version(backup) == 1
    with sqlite3.connect(path) as raw:
        after = {table: raw.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in before}  # noqa: S608
    raw.close()
    assert after == before
    # Opening again migrates nothing and makes no second backup.
    with Catalog(path):
        pass
    assert sorted(p.name for p in path.parent.glob("*.bak")) == ["catalog.sqlite.schema1.bak"]


def test_the_daemon_goes_on_versioning_a_migrated_catalog(tmp_path: Path, config_for: object) -> None:
    from daemon.app import Daemon, Target

    root = tmp_path / "sales"
    (root / "sub").mkdir(parents=True)
    # The files of version 3, as they were on the host that wrote the catalog.
    (root / "a.csv").write_text("id,amount\n1,10\n2,20\n3,30\n")
    (root / "sub" / "b.csv").write_text("id,amount\n9,90\n")
    config = config_for([DatasetConfig(name="sales", root=root)])  # type: ignore[operator]
    _v1_catalog(Path(str(config.state_dir)) / "catalog.sqlite")
    daemon = Daemon(config, Target.resolve(config, None))
    created, _ = daemon.scan(publish_timeout=None)
    assert created == 0  # same bytes as version 3: the stat cache was re-filled, nothing versioned
    c_csv = b"id,amount\n4,40\n"
    (root / "c.csv").write_bytes(c_csv)
    created, _ = daemon.scan(publish_timeout=None)
    assert created == 1
    with Catalog(Path(str(config.state_dir)) / "catalog.sqlite") as catalog:
        v4 = catalog.latest_version("sales")
        assert v4 is not None and (v4.seq, v4.parent_seq, v4.added) == (4, 3, 1)
        state = catalog.manifest("sales", 4)["c.csv"]
        assert (state.size, state.hash) == (len(c_csv), xxhash.xxh3_128_hexdigest(c_csv))


def test_a_catalog_from_a_newer_strandline_is_refused(tmp_path: Path) -> None:
    path = _v1_catalog(tmp_path / "catalog.sqlite")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    db.close()
    with pytest.raises(CatalogError, match="upgrade Strandline"):
        Catalog(path)
