"""A consumer's own durable state: processed event ids, and whatever its handler keeps.

One SQLite file per consumer kind (``<state_dir>/<name>.sqlite``), shared by the copies of that
kind running on one host. The runner records an event id as processed right after the handler
acted, so a restart that re-reads an uncommitted offset skips the event instead of acting
twice. Handlers add their own tables (retrain runs, alert state) through ``execute`` and
``transaction``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from daemon.errors import CatalogError

_PRUNE_AFTER_SECONDS = 30 * 86400


class ConsumerState:
    """SQLite-backed state of one consumer kind; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS processed (event_id TEXT PRIMARY KEY, processed_at REAL NOT NULL)"
            )
        except (sqlite3.Error, OSError) as exc:
            raise CatalogError(f"cannot open consumer state {path}: {exc}; check the folder's permissions") from exc
        self._lock = threading.RLock()
        self._in_txn = False

    def __enter__(self) -> ConsumerState:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit of writes (re-entrant: an inner block joins the outer one)."""
        with self._lock:
            if self._in_txn:
                yield self._db
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._in_txn = True
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
            finally:
                self._in_txn = False

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def seen(self, event_id: str) -> bool:
        return bool(self.execute("SELECT 1 FROM processed WHERE event_id = ?", (event_id,)))

    def mark_processed(self, event_id: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO processed VALUES (?, ?)", (event_id, time.time()))

    def prune(self, older_than: float = _PRUNE_AFTER_SECONDS) -> int:
        """Forget ids processed long ago: Kafka's retention has dropped those records anyway."""
        with self.transaction() as db:
            return db.execute("DELETE FROM processed WHERE processed_at < ?", (time.time() - older_than,)).rowcount
