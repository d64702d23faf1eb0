"""Judge a version's data: read the tables it changed, merge profiles, unify schemas, validate.

Only files whose content (hash, format) was never read for this dataset are opened; every
other file's schema and profile come from the catalog. The version's profile is the merge of
its files' profiles, its schema the union of theirs. A ``TableIndex`` kept from one version to
the next holds these merges in a roll-up, so a version re-merges what its changes touched.

Status, by precedence: ``unreadable`` (a table cannot be read), ``invalid`` (the files' schemas
conflict, or the suite failed), ``valid`` (the suite passed), ``unvalidated`` (no suite or no
table).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from daemon.errors import SourceError, UnreadableDataError, VanishedError
from daemon.filters import PathFilter
from daemon.manifest import FileState
from daemon.profile import merge_profiles
from daemon.quality import FileTable, Quality
from daemon.rollup import OrderedRollup
from daemon.scanner import walk
from daemon.tables import detect_format, profile_file, read_table
from daemon.tableschema import SchemaUnion, schema_change
from daemon.validation import Suite, validate_table
from schemas.config import DatasetConfig
from schemas.events import FileProblem
from schemas.profiles import TableProfile, TableSchema
from schemas.validation import ValidationResult, ValidationStatus

log = logging.getLogger(__name__)

TableKey = tuple[str, str]  # (content hash, format)
LookupTables = Callable[[Sequence[TableKey]], Mapping[TableKey, FileTable]]


class ChangedWhileProfilingError(Exception):
    """A file changed between its hash and its profile: the pass is retried."""


def _utf8(path: str) -> bytes:
    return path.encode("utf-8")


@dataclass(frozen=True, slots=True)
class TableSummary:
    """The schema union and merged profile of some readable tables: what the roll-up keeps."""

    union: SchemaUnion
    profile: TableProfile | None

    @classmethod
    def of(cls, table: FileTable) -> TableSummary:
        return cls(SchemaUnion.of(table.schema) if table.schema is not None else SchemaUnion(), table.profile)

    @staticmethod
    def merge(parts: list[TableSummary]) -> TableSummary:
        profiles = [p.profile for p in parts if p.profile is not None]
        return TableSummary(SchemaUnion.merge([p.union for p in parts]), merge_profiles(profiles) if profiles else None)


class TableIndex:
    """A dataset's table files as of one version: their state and format, which cannot be read
    (and why), and the roll-up of the readable ones' schemas and profiles.

    Kept from version to version, so a version looks at the formats, reads and merges of the
    files it changed, not of every file (issue 5). Values only: the catalog's stored reads are
    reached through the ``lookup`` the Assessor is given.
    """

    def __init__(self) -> None:
        self.files: dict[str, tuple[FileState, str]] = {}  # path -> (state, format) of every table file
        self.errors: dict[str, str] = {}  # path -> why that table cannot be read
        self.readable: OrderedRollup[TableSummary] = OrderedRollup(TableSummary.merge)

    def key(self, rel: str) -> TableKey:
        state, fmt = self.files[rel]
        return state.hash, fmt

    def put(self, rel: str, state: FileState, fmt: str, table: FileTable) -> None:
        was_readable = rel in self.files and rel not in self.errors
        self.files[rel] = (state, fmt)
        if table.error is not None:
            self.errors[rel] = table.error
            if was_readable:
                self.readable.remove(rel)
        else:
            self.errors.pop(rel, None)
            if was_readable:
                self.readable.touch(rel)
            else:
                self.readable.add(rel)

    def discard(self, rel: str) -> None:
        if self.files.pop(rel, None) is None:
            return
        if self.errors.pop(rel, None) is None:
            self.readable.remove(rel)

    def restat(self, states: Mapping[str, FileState]) -> None:
        """New stats (mtime, ETag) of files whose bytes did not change: where the readers find them."""
        for rel, state in states.items():
            if rel in self.files:
                self.files[rel] = (state, self.files[rel][1])

    def summary(self, lookup: LookupTables, known: dict[TableKey, FileTable] | None = None) -> TableSummary | None:
        """The roll-up of the readable tables; the stored reads of the leaves that changed since
        the last call come from ``known`` or else from ``lookup`` (which ``known`` then keeps)."""
        seen = known if known is not None else {}

        def load(rels: Sequence[str]) -> list[TableSummary]:
            keys = [self.key(rel) for rel in rels]
            missing = sorted({k for k in keys if k not in seen})
            if missing:
                seen.update(lookup(missing))
            return [TableSummary.of(seen[k]) for k in keys]

        return self.readable.total(load)


class Assessor:
    """Computes the Quality of a dataset's versions; one per dataset."""

    def __init__(
        self,
        root: str,
        dataset: DatasetConfig,
        suite: Suite | None,
        locate: Callable[[str, FileState], str] | None = None,
    ) -> None:
        self.root = root
        self.dataset = dataset
        self.suite = suite
        # Where the readers find a file's bytes: in place for a folder, a spooled copy for a bucket.
        self._locate = locate or (lambda rel, _state: os.path.join(root, rel))

    def table_format(self, rel: str) -> str | None:
        return detect_format(rel, self.dataset.format)

    def assess(
        self,
        current: Mapping[str, FileState],
        changed: set[str],
        lookup: LookupTables,
        parent: TableSchema | None,
    ) -> tuple[Quality, list[FileTable]]:
        """The Quality of the version whose files are ``current``; and the tables newly read.

        ``changed`` are the paths added or modified by the version (for the "changed" scope).
        """
        index = TableIndex()
        updated = self.update(index, current, (), lookup)
        assert updated is not None  # it reads what it must
        known, fresh = updated
        return self.judge(index, changed, lookup, parent, known), fresh

    def update(
        self,
        index: TableIndex,
        upserts: Mapping[str, FileState],
        removed: Iterable[str],
        lookup: LookupTables,
        *,
        read: bool = True,
    ) -> tuple[dict[TableKey, FileTable], list[FileTable]] | None:
        """Bring ``index`` to the files ``upserts`` (added or modified) and ``removed`` changed.

        Only these paths are looked at: their formats detected, their stored reads looked up, the
        contents never read for this dataset read. Returns the tables looked at and those newly
        read; with ``read=False``, None (and ``index`` untouched) when a content would have to be
        read. Raises ``ChangedWhileProfilingError`` before touching ``index``.
        """
        formats = {rel: fmt for rel in upserts if (fmt := self.table_format(rel)) is not None}
        keys = {rel: (upserts[rel].hash, fmt) for rel, fmt in formats.items()}
        known = dict(lookup(sorted(set(keys.values())))) if keys else {}
        fresh: list[FileTable] = []
        for rel in sorted(formats, key=_utf8):
            key = keys[rel]
            if key not in known:
                if not read:
                    return None
                table = self._read(rel, upserts[rel], key[1])
                known[key] = table
                fresh.append(table)
        for rel in removed:
            index.discard(rel)
        for rel in sorted(formats, key=_utf8):
            index.put(rel, upserts[rel], formats[rel], known[keys[rel]])
        return known, fresh

    def judge(
        self,
        index: TableIndex,
        changed: set[str],
        lookup: LookupTables,
        parent: TableSchema | None,
        known: dict[TableKey, FileTable] | None = None,
    ) -> Quality:
        """The Quality of the version whose table files ``index`` holds. Reads from the catalog
        (``lookup``) only the tables of the roll-up's leaves that changed, unless ``known`` has them."""
        if not index.files:
            return Quality()
        summary = index.summary(lookup, known)
        problems = tuple(FileProblem(path=rel, reason=index.errors[rel]) for rel in sorted(index.errors, key=_utf8))
        schema, conflict = summary.union.result() if summary is not None else (None, None)
        profile = summary.profile if summary is not None else None
        change = schema_change(parent, schema) if schema is not None and parent is not None else None
        status: ValidationStatus = "unvalidated"
        reasons: list[str] = []
        validation: ValidationResult | None = None
        scope: Literal["changed", "version"] | None = None
        if conflict is not None:
            status = "invalid"
            reasons.append(f"schemas conflict: {conflict}")
        if self.suite is not None and len(index.readable):
            scope = self.dataset.validate_scope
            if scope == "version":
                targets = list(index.readable.keys())
            else:
                targets = sorted((rel for rel in changed if rel in index.readable), key=_utf8)
            if targets:
                validation, failure = self._validate(targets, index)
                if failure is not None:
                    status = "invalid"
                    reasons.append(failure)
                elif validation is not None and not validation.success:
                    status = "invalid"
                    reasons.append(_failed_line(validation))
                elif status == "unvalidated":
                    status = "valid"
        if problems:
            status = "unreadable"
            shown = ", ".join(f"{p.path} ({p.reason})" for p in problems[:3])
            more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
            reasons.insert(0, f"{len(problems)} unreadable table file(s): {shown}{more}")
        return Quality(
            status=status,
            reason="; ".join(reasons) or None,
            schema=schema,
            schema_change=change,
            profile=profile,
            validation=validation,
            validation_scope=scope,
            problems=problems,
            table_files=len(index.files),
            readable_files=len(index.readable),
        )

    def check_folder(self, only: str | None = None) -> Quality:
        """The Quality of the root's table files as they are now (or of the one file ``only``),
        with nothing cached: for `strandline validate`."""
        if only is not None:
            rels = [only]
        else:
            rels = [rel for rel, _ in walk(self.root, PathFilter.for_dataset(self.dataset), lambda _: None, lazy=True)]
        # Keyed by path, not hash: nothing is looked up or stored, so the bytes need no hash.
        current = {rel: FileState(os.path.getsize(os.path.join(self.root, rel)), rel, 0, 0) for rel in rels}
        quality, _ = self.assess(current, set(current), lambda _: {}, None)
        if not quality.has_tables:
            kinds = "Parquet, CSV (.csv, .csv.gz), JSON Lines, Arrow/Feather or ORC"
            raise SourceError(f"no table file in {only or self.root}: expected {kinds}, or pass --format")
        return quality

    def _read(self, rel: str, state: FileState, fmt: str) -> FileTable:
        try:
            full = self._locate(rel, state)
            before = os.stat(full, follow_symlinks=False)
            schema, profile = profile_file(full, fmt)  # type: ignore[arg-type]
            after = os.stat(full, follow_symlinks=False)
        except (FileNotFoundError, VanishedError) as exc:
            raise ChangedWhileProfilingError(rel) from exc
        except UnreadableDataError as exc:
            log.warning(
                "dataset %s: %s is not a readable %s table: %s",
                self.dataset.name,
                rel,
                fmt,
                exc,
                extra={"dataset": self.dataset.name},
            )
            return FileTable(state.hash, fmt, None, None, str(exc))
        except OSError as exc:
            return FileTable(state.hash, fmt, None, None, f"cannot read: {exc.strerror or exc}")
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or after.st_size != state.size:
            raise ChangedWhileProfilingError(rel)
        return FileTable(state.hash, fmt, schema, profile, None)

    def _validate(self, targets: list[str], index: TableIndex) -> tuple[ValidationResult | None, str | None]:
        import pyarrow as pa

        assert self.suite is not None
        parts = []
        for rel in targets:
            try:
                state, fmt = index.files[rel]
                parts.append(read_table(self._locate(rel, state), fmt))  # type: ignore[arg-type]
            except (FileNotFoundError, VanishedError) as exc:
                raise ChangedWhileProfilingError(rel) from exc  # gone since hashed: judge the next state
            except (UnreadableDataError, OSError) as exc:
                return None, f"{rel} could not be read for validation: {exc}"
        try:
            table = pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            return None, f"the files cannot be validated as one table: {exc}"
        return validate_table(self.suite, table), None


def _failed_line(result: ValidationResult) -> str:
    failed = [o for o in result.outcomes if not o.success]
    shown = []
    for o in failed[:3]:
        what = o.expectation + (f"({o.column})" if o.column else "")
        if o.error:
            shown.append(f"{what}: {o.error}")
        elif o.observed_value is not None:
            shown.append(f"{what}: observed {o.observed_value!r}")
        elif o.unexpected_count is not None:
            shown.append(f"{what}: {o.unexpected_count} unexpected values")
        else:
            shown.append(what)
    more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
    return (
        f"suite {result.suite}: {result.failed} of {result.evaluated} expectations failed: " + "; ".join(shown) + more
    )
