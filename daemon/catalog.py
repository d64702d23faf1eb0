"""The SQLite catalog: datasets, versions, file entries (with the stat cache) and the outbox.

File entries carry the range of versions they belong to (``from_seq`` inclusive, ``to_seq``
exclusive, NULL while current), so a version costs rows in proportion to its changes, and
the manifest of any version is one indexed query. WAL mode with ``synchronous=FULL``: a
version and its outbox rows are durable together or not at all.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from pydantic import BaseModel

from daemon.errors import CatalogError, VersionNotFoundError
from daemon.manifest import FileState
from daemon.outbox import OutboxMessage, PendingMessage
from daemon.quality import FileTable, Quality
from schemas.events import FileChange, FileProblem
from schemas.profiles import SchemaChange, TableProfile, TableSchema
from schemas.validation import ValidationResult

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3

# Forward migrations: the statements that take a catalog from version N-1 to N, run in one
# transaction after a backup copy. _SCHEMA below always describes the newest version.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 2: the stat cache remembers an object's ETag (bucket roots).
    2: ("ALTER TABLE entries ADD COLUMN etag TEXT NOT NULL DEFAULT ''",),
    # 3: versions keep their bytes in the content store (issue 6); the tags and lineage tables
    # are new, so _SCHEMA creates them. Older versions had no snapshot: they cannot be restored.
    3: (
        "ALTER TABLE versions ADD COLUMN snapshot TEXT NOT NULL DEFAULT 'none'",
        "ALTER TABLE versions ADD COLUMN restorable INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE versions ADD COLUMN snapshot_note TEXT",
        "ALTER TABLE versions ADD COLUMN collected_at TEXT",
    ),
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    root TEXT NOT NULL,
    created_at TEXT NOT NULL,
    marker_stat TEXT
);
CREATE TABLE IF NOT EXISTS versions (
    id INTEGER PRIMARY KEY,
    dataset_id INTEGER NOT NULL REFERENCES datasets(id),
    seq INTEGER NOT NULL,
    version_id TEXT NOT NULL,
    parent_seq INTEGER,
    parent_version_id TEXT,
    created_at TEXT NOT NULL,
    files INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    added INTEGER NOT NULL,
    modified INTEGER NOT NULL,
    removed INTEGER NOT NULL,
    snapshot TEXT NOT NULL DEFAULT 'none',
    restorable INTEGER NOT NULL DEFAULT 0,
    snapshot_note TEXT,
    collected_at TEXT,
    UNIQUE (dataset_id, seq)
);
CREATE TABLE IF NOT EXISTS entries (
    dataset_id INTEGER NOT NULL REFERENCES datasets(id),
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    hash TEXT NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    from_seq INTEGER NOT NULL,
    to_seq INTEGER,
    etag TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS entries_current ON entries(dataset_id, path) WHERE to_seq IS NULL;
CREATE INDEX IF NOT EXISTS entries_from ON entries(dataset_id, from_seq);
-- Entries closed by a version (its modified and removed files). Current entries stay out of
-- it, so the rows a version adds cost no insert here (20,000 new files: 17 ms less a commit).
-- It replaced entries_to, which held every entry; an index only, so no schema version.
DROP INDEX IF EXISTS entries_to;
CREATE INDEX IF NOT EXISTS entries_closed ON entries(dataset_id, to_seq) WHERE to_seq IS NOT NULL;
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    headers TEXT NOT NULL,
    created_at REAL NOT NULL,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(id) WHERE delivered_at IS NULL;
-- Each distinct file content read as a table, once per dataset: later versions reuse it.
CREATE TABLE IF NOT EXISTS file_tables (
    dataset_id INTEGER NOT NULL REFERENCES datasets(id),
    hash TEXT NOT NULL,
    format TEXT NOT NULL,
    read_seq INTEGER NOT NULL,
    schema TEXT,
    profile TEXT,
    error TEXT,
    PRIMARY KEY (dataset_id, hash, format)
);
CREATE TABLE IF NOT EXISTS version_quality (
    dataset_id INTEGER NOT NULL REFERENCES datasets(id),
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    schema TEXT,
    schema_change TEXT,
    profile TEXT,
    validation TEXT,
    validation_scope TEXT,
    problems TEXT NOT NULL,
    table_files INTEGER NOT NULL,
    readable_files INTEGER NOT NULL,
    PRIMARY KEY (dataset_id, seq)
);
-- Labels naming versions (sales@prod). A label names one version of its dataset at a time.
CREATE TABLE IF NOT EXISTS tags (
    dataset_id INTEGER NOT NULL REFERENCES datasets(id),
    label TEXT NOT NULL,
    seq INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (dataset_id, label)
);
-- Versions that recorded retraining runs used (model.retrain.* events): gc keeps their bytes.
CREATE TABLE IF NOT EXISTS lineage (
    dataset_id INTEGER NOT NULL REFERENCES datasets(id),
    seq INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    version_id TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (run_id, dataset_id, seq)
);
"""


_CURRENT = "SELECT path, size, hash, mtime_ns, inode, etag FROM entries WHERE dataset_id=? AND to_seq IS NULL"
# A path and its subtree as two lookups of the `entries_current` index. Written as one
# `path=? OR (path>=? AND path<?)`, SQLite answered it through the index on `to_seq` of that
# time (every entry was in it), reading every current entry of the dataset: 25 ms a path at
# 100,000 entries (issue 5). tests/test_scale.py checks the plan.
_CURRENT_AT_OR_BELOW = f"{_CURRENT} AND path=? UNION ALL {_CURRENT} AND path>=? AND path<?"
_FILE_TABLES_OF = (
    "SELECT hash, format, schema, profile, error FROM file_tables WHERE dataset_id=? AND hash IN ({marks})"
)


@dataclass(frozen=True, slots=True)
class DatasetRow:
    id: int
    name: str
    root: str
    marker_stat: str | None


@dataclass(frozen=True, slots=True)
class VersionRow:
    dataset: str
    seq: int
    version_id: str
    parent_seq: int | None
    parent_version_id: str | None
    created_at: datetime
    files: int
    bytes: int
    added: int
    modified: int
    removed: int
    snapshot: str = "none"  # the policy the version's bytes were kept by (none: metadata only)
    restorable: bool = False  # every file's bytes were in the content store when it was recorded
    snapshot_note: str | None = None  # why a version that wanted a snapshot is not restorable
    collected_at: datetime | None = None  # when gc dropped its bytes (it stays in the catalog)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """How a new version's bytes were kept, as recorded with it."""

    policy: str
    restorable: bool
    note: str | None = None


@dataclass(frozen=True, slots=True)
class TagRow:
    dataset: str
    label: str
    seq: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DatasetSummary:
    name: str
    root: str
    versions: int
    latest: VersionRow | None


def _json(model: BaseModel | None) -> str | None:
    return None if model is None else model.model_dump_json()


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class Catalog:
    """One connection to the catalog; open one per thread."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        try:
            if readonly:
                if not path.exists():
                    raise CatalogError(f"no catalog at {path}: run `strandline scan` or `strandline watch` first")
                self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=False)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._migrate()
            self._db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            raise CatalogError(f"cannot open catalog {path}: {exc}; check the state_dir setting") from exc

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def _schema_version(self) -> int | None:
        has_meta = self._db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if not has_meta:
            return None
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return None if row is None else int(row[0])

    def _migrate(self) -> None:
        found = self._schema_version()
        if found is not None and found > SCHEMA_VERSION:
            raise CatalogError(
                f"catalog {self.path} has schema {found}, newer than this Strandline ({SCHEMA_VERSION}):"
                " upgrade Strandline"
            )
        if found is not None and found < SCHEMA_VERSION:
            backup = self._backup(found)
            with self.transaction() as db:
                for version in range(found + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[version]:
                        db.execute(statement)
                db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
            log.info(
                "catalog %s migrated from schema %d to %d; the old catalog is kept at %s",
                self.path,
                found,
                SCHEMA_VERSION,
                backup,
            )
        # executescript commits implicitly, so the idempotent DDL runs outside any transaction.
        self._db.executescript(_SCHEMA)
        if found is None:
            with self.transaction() as db:
                db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _backup(self, version: int) -> Path:
        """A consistent copy of the catalog before migrating it, next to it; never overwritten."""
        target = self.path.with_name(f"{self.path.name}.schema{version}.bak")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.schema{version}.{n}.bak")
        try:
            with closing(sqlite3.connect(target)) as copy:
                self._db.backup(copy)
        except sqlite3.Error as exc:
            target.unlink(missing_ok=True)
            raise CatalogError(
                f"cannot back up catalog {self.path} before migrating it ({exc}): free disk space next to it"
            ) from exc
        return target

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- datasets -------------------------------------------------------------------------

    def ensure_dataset(self, name: str, root: str) -> DatasetRow:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO datasets(name, root, created_at) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET root=excluded.root",
                (name, root, _now_iso()),
            )
        return self.dataset(name)

    def dataset(self, name: str) -> DatasetRow:
        row = self._db.execute("SELECT id, name, root, marker_stat FROM datasets WHERE name=?", (name,)).fetchone()
        if row is None:
            raise VersionNotFoundError(f"no dataset named {name!r}: `strandline datasets` lists them")
        return DatasetRow(*row)

    def set_marker_stat(self, dataset_id: int, marker_stat: str | None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE datasets SET marker_stat=? WHERE id=?", (marker_stat, dataset_id))

    def summaries(self) -> list[DatasetSummary]:
        out = []
        for ds_id, name, root in self._db.execute("SELECT id, name, root FROM datasets ORDER BY name"):
            count = self._db.execute("SELECT COUNT(*) FROM versions WHERE dataset_id=?", (ds_id,)).fetchone()[0]
            out.append(DatasetSummary(name, root, count, self.latest_version(name)))
        return out

    # -- versions -------------------------------------------------------------------------

    _VERSION_COLS = (
        "d.name, v.seq, v.version_id, v.parent_seq, v.parent_version_id, v.created_at,"
        " v.files, v.bytes, v.added, v.modified, v.removed,"
        " v.snapshot, v.restorable, v.snapshot_note, v.collected_at"
    )

    @staticmethod
    def _version_row(row: Sequence[object]) -> VersionRow:
        values = list(row)
        values[5] = datetime.fromisoformat(str(values[5]))
        values[12] = bool(values[12])
        if values[14] is not None:
            values[14] = datetime.fromisoformat(str(values[14]))
        return VersionRow(*values)  # type: ignore[arg-type]

    def latest_version(self, dataset: str) -> VersionRow | None:
        row = self._db.execute(
            f"SELECT {self._VERSION_COLS} FROM versions v JOIN datasets d ON d.id=v.dataset_id"  # noqa: S608
            " WHERE d.name=? ORDER BY v.seq DESC LIMIT 1",
            (dataset,),
        ).fetchone()
        return None if row is None else self._version_row(row)

    def version(self, dataset: str, seq: int) -> VersionRow:
        row = self._db.execute(
            f"SELECT {self._VERSION_COLS} FROM versions v JOIN datasets d ON d.id=v.dataset_id"  # noqa: S608
            " WHERE d.name=? AND v.seq=?",
            (dataset, seq),
        ).fetchone()
        if row is None:
            raise VersionNotFoundError(f"{dataset}@{seq} does not exist: `strandline versions {dataset}` lists them")
        return self._version_row(row)

    def versions(self, dataset: str) -> list[VersionRow]:
        self.dataset(dataset)
        rows = self._db.execute(
            f"SELECT {self._VERSION_COLS} FROM versions v JOIN datasets d ON d.id=v.dataset_id"  # noqa: S608
            " WHERE d.name=? ORDER BY v.seq",
            (dataset,),
        ).fetchall()
        return [self._version_row(r) for r in rows]

    def manifest(self, dataset: str, seq: int) -> dict[str, FileState]:
        ds = self.dataset(dataset)
        rows = self._db.execute(
            "SELECT path, size, hash, mtime_ns, inode, etag FROM entries WHERE dataset_id=? AND from_seq<=?"
            " AND (to_seq IS NULL OR to_seq>?)",
            (ds.id, seq, seq),
        )
        return {path: FileState(size, digest, mtime, ino, etag) for path, size, digest, mtime, ino, etag in rows}

    def changes(self, dataset: str, seq: int) -> list[FileChange]:
        """The changes a version made to its parent, from the entry ranges."""
        ds = self.dataset(dataset)
        new = {
            p: (s, h)
            for p, s, h in self._db.execute(
                "SELECT path, size, hash FROM entries WHERE dataset_id=? AND from_seq=?", (ds.id, seq)
            )
        }
        old = {
            p: (s, h)
            for p, s, h in self._db.execute(
                "SELECT path, size, hash FROM entries WHERE dataset_id=? AND to_seq=?", (ds.id, seq)
            )
        }
        out = []
        for path in sorted(new.keys() | old.keys(), key=lambda p: p.encode("utf-8")):
            n, o = new.get(path), old.get(path)
            if n and o:
                out.append(
                    FileChange(path=path, change="modified", size=n[0], new_hash=n[1], old_size=o[0], old_hash=o[1])
                )
            elif n:
                out.append(FileChange(path=path, change="added", size=n[0], new_hash=n[1]))
            elif o:
                out.append(FileChange(path=path, change="removed", old_size=o[0], old_hash=o[1]))
        return out

    # -- current state and the stat cache -----------------------------------------------

    def current_states(self, dataset_id: int, prefixes: Iterable[str] | None = None) -> dict[str, FileState]:
        """Current entries of a dataset, all of them or those at or below the given paths."""
        if prefixes is None:
            rows: Iterable[tuple[str, int, str, int, int, str]] = self._db.execute(_CURRENT, (dataset_id,))
            return {p: FileState(s, h, m, i, e) for p, s, h, m, i, e in rows}
        out: dict[str, FileState] = {}
        for prefix in set(prefixes):
            if prefix in ("", "."):
                return self.current_states(dataset_id)
            upper = prefix + "0"  # '0' follows '/' in byte order: [prefix/, prefix0) is the subtree
            rows = self._db.execute(_CURRENT_AT_OR_BELOW, (dataset_id, prefix, dataset_id, prefix + "/", upper))
            out.update({p: FileState(s, h, m, i, e) for p, s, h, m, i, e in rows})
        return out

    def iter_current(self, dataset_id: int) -> Iterator[tuple[str, FileState]]:
        """Current entries in path order (UTF-8 bytes, as S3 lists keys), streamed from one cursor."""
        rows = self._db.execute(
            "SELECT path, size, hash, mtime_ns, inode, etag FROM entries WHERE dataset_id=? AND to_seq IS NULL"
            " ORDER BY path",
            (dataset_id,),
        )
        for p, s, h, m, i, e in rows:
            yield p, FileState(s, h, m, i, e)

    def update_stats(self, dataset_id: int, states: dict[str, FileState]) -> None:
        """Refresh the stat cache of current entries whose bytes did not change."""
        if not states:
            return
        with self.transaction() as db:
            db.executemany(
                "UPDATE entries SET mtime_ns=?, inode=?, etag=? WHERE dataset_id=? AND path=? AND to_seq IS NULL",
                [(st.mtime_ns, st.inode, st.etag, dataset_id, path) for path, st in states.items()],
            )

    def commit_version(
        self,
        dataset: DatasetRow,
        version_id: str,
        changes: Sequence[FileChange],
        new_states: dict[str, FileState],
        totals: tuple[int, int],
        build_messages: Callable[[VersionRow], list[OutboxMessage]],
        marker_stat: str | None = None,
        quality: Quality | None = None,
        tables: Sequence[FileTable] = (),
        snapshot: Snapshot | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> VersionRow:
        """Record a version, its entries, its quality, the tables read and its outbox messages in one transaction.

        ``before_commit`` runs last inside the transaction: an error from it rolls everything
        back (the versioner waits there for the snapshot's bytes to be durable).
        """
        counts = {"added": 0, "modified": 0, "removed": 0}
        for c in changes:
            counts[c.change] += 1
        with self.transaction() as db:
            parent = db.execute(
                "SELECT seq, version_id FROM versions WHERE dataset_id=? ORDER BY seq DESC LIMIT 1", (dataset.id,)
            ).fetchone()
            seq = 1 if parent is None else parent[0] + 1
            row = VersionRow(
                dataset=dataset.name,
                seq=seq,
                version_id=version_id,
                parent_seq=None if parent is None else parent[0],
                parent_version_id=None if parent is None else parent[1],
                created_at=datetime.now(UTC),
                files=totals[0],
                bytes=totals[1],
                added=counts["added"],
                modified=counts["modified"],
                removed=counts["removed"],
                snapshot=snapshot.policy if snapshot else "none",
                restorable=snapshot.restorable if snapshot else False,
                snapshot_note=snapshot.note if snapshot else None,
            )
            db.execute(
                "INSERT INTO versions(dataset_id, seq, version_id, parent_seq, parent_version_id, created_at,"
                " files, bytes, added, modified, removed, snapshot, restorable, snapshot_note)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    dataset.id,
                    seq,
                    version_id,
                    row.parent_seq,
                    row.parent_version_id,
                    row.created_at.isoformat(timespec="microseconds"),
                    row.files,
                    row.bytes,
                    row.added,
                    row.modified,
                    row.removed,
                    row.snapshot,
                    int(row.restorable),
                    row.snapshot_note,
                ),
            )
            closing = [(seq, dataset.id, c.path) for c in changes if c.change != "added"]
            db.executemany("UPDATE entries SET to_seq=? WHERE dataset_id=? AND path=? AND to_seq IS NULL", closing)
            opening = []
            for c in changes:
                if c.change != "removed":
                    st = new_states[c.path]
                    opening.append((dataset.id, c.path, st.size, st.hash, st.mtime_ns, st.inode, st.etag, seq))
            db.executemany(
                "INSERT INTO entries(dataset_id, path, size, hash, mtime_ns, inode, etag, from_seq)"
                " VALUES (?,?,?,?,?,?,?,?)",
                opening,
            )
            if marker_stat is not None:
                db.execute("UPDATE datasets SET marker_stat=? WHERE id=?", (marker_stat, dataset.id))
            db.executemany(
                "INSERT OR REPLACE INTO file_tables(dataset_id, hash, format, read_seq, schema, profile, error)"
                " VALUES (?,?,?,?,?,?,?)",
                [(dataset.id, t.hash, t.format, seq, _json(t.schema), _json(t.profile), t.error) for t in tables],
            )
            if quality is not None:
                db.execute(
                    "INSERT INTO version_quality(dataset_id, seq, status, reason, schema, schema_change, profile,"
                    " validation, validation_scope, problems, table_files, readable_files)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        dataset.id,
                        seq,
                        quality.status,
                        quality.reason,
                        _json(quality.schema),
                        _json(quality.schema_change),
                        _json(quality.profile),
                        _json(quality.validation),
                        quality.validation_scope,
                        json.dumps([p.model_dump() for p in quality.problems]),
                        quality.table_files,
                        quality.readable_files,
                    ),
                )
            self._enqueue(db, build_messages(row))
            if before_commit is not None:
                before_commit()
        return row

    # -- tables and quality -------------------------------------------------------------

    def file_tables(self, dataset_id: int, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], FileTable]:
        """Stored reads of the given (hash, format) contents."""
        out: dict[tuple[str, str], FileTable] = {}
        wanted = set(keys)
        hashes = sorted({digest for digest, _ in wanted})
        for i in range(0, len(hashes), 500):  # SQLite's bound-parameter limit
            chunk = hashes[i : i + 500]
            # `hash IN (...)` is one primary-key lookup per hash; an OR of (hash, format) pairs made
            # SQLite scan every row of the dataset once per 400 keys (issue 5).
            rows = self._db.execute(_FILE_TABLES_OF.format(marks=",".join("?" * len(chunk))), (dataset_id, *chunk))
            for digest, fmt, schema, profile, error in rows:
                if (digest, fmt) not in wanted:
                    continue
                out[(digest, fmt)] = FileTable(
                    digest,
                    fmt,
                    TableSchema.model_validate_json(schema) if schema else None,
                    TableProfile.model_validate_json(profile) if profile else None,
                    error,
                )
        return out

    def tables_read(self, dataset: str, seq: int) -> list[tuple[str, str]]:
        """(hash, format) of every file content first read as a table by version ``seq``."""
        ds = self.dataset(dataset)
        rows = self._db.execute(
            "SELECT hash, format FROM file_tables WHERE dataset_id=? AND read_seq=? ORDER BY hash", (ds.id, seq)
        )
        return [(h, f) for h, f in rows]

    def version_schema(self, dataset_id: int, seq: int) -> TableSchema | None:
        """Only the schema of a version: what the next version's schema change is computed against.

        A version without tables has the empty schema (its child's columns are all "added");
        None means the version was recorded before schemas were.
        """
        row = self._db.execute(
            "SELECT schema FROM version_quality WHERE dataset_id=? AND seq=?", (dataset_id, seq)
        ).fetchone()
        if row is None:
            return None
        return TableSchema.model_validate_json(row[0]) if row[0] else TableSchema.of([])

    def quality(self, dataset: str, seq: int) -> Quality | None:
        """The stored verdict of ``dataset@seq`` (None for versions recorded before quality existed)."""
        ds = self.dataset(dataset)
        row = self._db.execute(
            "SELECT status, reason, schema, schema_change, profile, validation, validation_scope, problems,"
            " table_files, readable_files FROM version_quality WHERE dataset_id=? AND seq=?",
            (ds.id, seq),
        ).fetchone()
        if row is None:
            return None
        status, reason, schema, change, profile, validation, scope, problems, files, readable = row
        return Quality(
            status=status,
            reason=reason,
            schema=TableSchema.model_validate_json(schema) if schema else None,
            schema_change=SchemaChange.model_validate_json(change) if change else None,
            profile=TableProfile.model_validate_json(profile) if profile else None,
            validation=ValidationResult.model_validate_json(validation) if validation else None,
            validation_scope=scope,
            problems=tuple(FileProblem.model_validate(p) for p in json.loads(problems)),
            table_files=files,
            readable_files=readable,
        )

    # -- outbox ---------------------------------------------------------------------------

    @staticmethod
    def _enqueue(db: sqlite3.Connection, messages: Iterable[OutboxMessage]) -> None:
        now = time.time()
        db.executemany(
            "INSERT INTO outbox(topic, key, value, headers, created_at) VALUES (?,?,?,?,?)",
            [
                (m.topic, m.key, m.value, json.dumps({k: v.decode("utf-8") for k, v in m.headers}), now)
                for m in messages
            ],
        )

    def enqueue(self, messages: Iterable[OutboxMessage]) -> None:
        with self.transaction() as db:
            self._enqueue(db, messages)

    def pending(self, limit: int) -> list[PendingMessage]:
        rows = self._db.execute(
            "SELECT id, topic, key, value, headers, created_at FROM outbox WHERE delivered_at IS NULL"
            " ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
        out = []
        for row_id, topic, key, value, headers, created in rows:
            hdrs = tuple((k, v.encode("utf-8")) for k, v in json.loads(headers).items())
            out.append(PendingMessage(row_id, OutboxMessage(topic, bytes(key), bytes(value), hdrs), created))
        return out

    def mark_delivered(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        now = time.time()
        with self.transaction() as db:
            db.executemany("UPDATE outbox SET delivered_at=? WHERE id=?", [(now, i) for i in ids])

    def backlog(self) -> tuple[int, float | None]:
        """Undelivered outbox rows and the creation time of the oldest."""
        count, oldest = self._db.execute(
            "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE delivered_at IS NULL"
        ).fetchone()
        return int(count), oldest

    def prune_delivered(self, older_than_seconds: float) -> int:
        with self.transaction() as db:
            cur = db.execute(
                "DELETE FROM outbox WHERE delivered_at IS NOT NULL AND delivered_at < ?",
                (time.time() - older_than_seconds,),
            )
            return cur.rowcount

    # -- tags -----------------------------------------------------------------------------

    def tags(self, dataset: str) -> list[TagRow]:
        ds = self.dataset(dataset)
        rows = self._db.execute(
            "SELECT label, seq, created_at FROM tags WHERE dataset_id=? ORDER BY seq, label", (ds.id,)
        ).fetchall()
        return [TagRow(dataset, label, seq, datetime.fromisoformat(created)) for label, seq, created in rows]

    def tag_seq(self, dataset: str, label: str) -> int | None:
        ds = self.dataset(dataset)
        row = self._db.execute("SELECT seq FROM tags WHERE dataset_id=? AND label=?", (ds.id, label)).fetchone()
        return None if row is None else int(row[0])

    def set_tag(
        self,
        dataset: str,
        label: str,
        seq: int | None,
        build_messages: Callable[[int | None], list[OutboxMessage]],
    ) -> int | None:
        """Point ``label`` at version ``seq`` (None: remove it) and queue its event; the version it named before.

        ``build_messages`` gets that previous version, so the event can say the label moved.
        """
        ds = self.dataset(dataset)
        with self.transaction() as db:
            row = db.execute("SELECT seq FROM tags WHERE dataset_id=? AND label=?", (ds.id, label)).fetchone()
            previous = None if row is None else int(row[0])
            if seq is None:
                db.execute("DELETE FROM tags WHERE dataset_id=? AND label=?", (ds.id, label))
            else:
                db.execute(
                    "INSERT INTO tags(dataset_id, label, seq, created_at) VALUES (?,?,?,?)"
                    " ON CONFLICT(dataset_id, label) DO UPDATE SET seq=excluded.seq, created_at=excluded.created_at",
                    (ds.id, label, seq, _now_iso()),
                )
            self._enqueue(db, build_messages(previous))
        return previous

    # -- lineage and retention ------------------------------------------------------------

    def record_lineage(self, dataset: str, seq: int, version_id: str, run_id: str) -> bool:
        """Remember that retraining run ``run_id`` used ``dataset@seq``; False when known or not ours.

        A run naming a version this catalog does not have (another host's dataset of the same
        name, a version id that does not match) is not recorded.
        """
        try:
            ds = self.dataset(dataset)
        except VersionNotFoundError:
            return False
        with self.transaction() as db:
            found = db.execute(
                "SELECT 1 FROM versions WHERE dataset_id=? AND seq=? AND version_id=?", (ds.id, seq, version_id)
            ).fetchone()
            if found is None:
                return False
            cur = db.execute(
                "INSERT OR IGNORE INTO lineage(dataset_id, seq, run_id, version_id, recorded_at) VALUES (?,?,?,?,?)",
                (ds.id, seq, run_id, version_id, _now_iso()),
            )
            return cur.rowcount == 1

    def lineage_runs(self, dataset: str) -> dict[int, list[str]]:
        """Recorded retraining runs by the version they used."""
        ds = self.dataset(dataset)
        out: dict[int, list[str]] = {}
        for seq, run_id in self._db.execute(
            "SELECT seq, run_id FROM lineage WHERE dataset_id=? ORDER BY seq, recorded_at", (ds.id,)
        ):
            out.setdefault(int(seq), []).append(str(run_id))
        return out

    def dataset_names(self) -> list[str]:
        return [str(r[0]) for r in self._db.execute("SELECT name FROM datasets ORDER BY name")]

    def mark_collected(self, dataset: str, seqs: Iterable[int]) -> int:
        """Record that these versions' bytes are no longer kept; they stay in the catalog."""
        ds = self.dataset(dataset)
        now = _now_iso()
        with self.transaction() as db:
            cur = db.executemany(
                "UPDATE versions SET restorable=0, collected_at=?"
                " WHERE dataset_id=? AND seq=? AND collected_at IS NULL",
                [(now, ds.id, seq) for seq in seqs],
            )
            return cur.rowcount

    def live_hashes(self, excluding: Mapping[str, Iterable[int]] | None = None) -> set[str]:
        """Every hash a restorable version of any dataset needs: what the content store must keep.

        ``excluding`` leaves some versions out (by dataset name), to see what collecting them frees.
        """
        left_out = {(name, seq) for name, seqs in (excluding or {}).items() for seq in seqs}
        kept: dict[int, list[int]] = {}
        for dataset_id, name, seq in self._db.execute(
            "SELECT v.dataset_id, d.name, v.seq FROM versions v JOIN datasets d ON d.id=v.dataset_id"
            " WHERE v.restorable=1 AND v.collected_at IS NULL ORDER BY v.dataset_id, v.seq"
        ):
            if (name, seq) not in left_out:
                kept.setdefault(int(dataset_id), []).append(int(seq))
        live: set[str] = set()
        for dataset_id, seqs in kept.items():
            rows = self._db.execute(
                "SELECT hash, from_seq, to_seq FROM entries WHERE dataset_id=? AND from_seq<=?", (dataset_id, seqs[-1])
            )
            for digest, first, end in rows:
                # The entry belongs to versions first..end-1: is one of the kept versions in there?
                i = bisect_left(seqs, first)
                if i < len(seqs) and (end is None or seqs[i] < end):
                    live.add(str(digest))
        return live

    def users_of(self, hashes: Iterable[str]) -> dict[str, list[tuple[str, int, str]]]:
        """For each hash, the restorable versions (dataset, seq, path) whose files have those bytes."""
        wanted = set(hashes)
        out: dict[str, list[tuple[str, int, str]]] = {}
        if not wanted:
            return out
        rows = self._db.execute(
            "SELECT d.name, v.seq, e.path, e.hash FROM versions v JOIN datasets d ON d.id=v.dataset_id"
            " JOIN entries e ON e.dataset_id=v.dataset_id AND e.from_seq<=v.seq"
            " AND (e.to_seq IS NULL OR e.to_seq>v.seq)"
            " WHERE v.restorable=1 AND v.collected_at IS NULL"
        )
        for name, seq, path, digest in rows:
            if digest in wanted:
                out.setdefault(str(digest), []).append((str(name), int(seq), str(path)))
        return out
