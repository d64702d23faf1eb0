"""Judge a version's data: read the tables it changed, merge profiles, unify schemas, validate.

Only files whose content (hash, format) was never read for this dataset are opened; every
other file's schema and profile come from the catalog. The version's profile is the merge of
its files' profiles, its schema the union of theirs.

Status, by precedence: ``unreadable`` (a table cannot be read), ``invalid`` (the files' schemas
conflict, or the suite failed), ``valid`` (the suite passed), ``unvalidated`` (no suite or no
table).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from daemon.errors import SourceError, UnreadableDataError, VanishedError
from daemon.filters import PathFilter
from daemon.manifest import FileState
from daemon.profile import merge_profiles
from daemon.quality import FileTable, Quality
from daemon.scanner import walk
from daemon.tables import detect_format, profile_file, read_table
from daemon.tableschema import schema_change, unify
from daemon.validation import Suite, validate_table
from schemas.config import DatasetConfig
from schemas.events import FileProblem
from schemas.profiles import TableSchema
from schemas.validation import ValidationResult, ValidationStatus

log = logging.getLogger(__name__)

TableKey = tuple[str, str]  # (content hash, format)
LookupTables = Callable[[Sequence[TableKey]], Mapping[TableKey, FileTable]]


class ChangedWhileProfilingError(Exception):
    """A file changed between its hash and its profile: the pass is retried."""


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
        formats = {rel: fmt for rel in current if (fmt := self.table_format(rel)) is not None}
        if not formats:
            return Quality(), []
        keys = {rel: (current[rel].hash, fmt) for rel, fmt in formats.items()}
        known = dict(lookup(sorted(set(keys.values()))))
        fresh: list[FileTable] = []
        for rel in sorted(formats, key=lambda p: p.encode("utf-8")):
            key = keys[rel]
            if key not in known:
                table = self._read(rel, current[rel], key[1])
                known[key] = table
                fresh.append(table)
        tables = {rel: known[keys[rel]] for rel in sorted(formats, key=lambda p: p.encode("utf-8"))}
        return self._judge(tables, formats, changed, parent, current), fresh

    def check_folder(self, only: str | None = None) -> Quality:
        """The Quality of the root's table files as they are now (or of the one file ``only``),
        with nothing cached: for `strandline validate`."""
        if only is not None:
            rels = [only]
        else:
            rels = [rel for rel, _ in walk(self.root, PathFilter.for_dataset(self.dataset), lambda _: None)]
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

    def _judge(
        self,
        tables: dict[str, FileTable],
        formats: dict[str, str],
        changed: set[str],
        parent: TableSchema | None,
        current: Mapping[str, FileState],
    ) -> Quality:
        problems = tuple(FileProblem(path=rel, reason=t.error) for rel, t in tables.items() if t.error is not None)
        readable = {rel: t for rel, t in tables.items() if t.error is None}
        schema, conflict = unify([t.schema for t in readable.values() if t.schema is not None])
        profile = merge_profiles([t.profile for t in readable.values() if t.profile is not None]) if readable else None
        change = schema_change(parent, schema) if schema is not None and parent is not None else None
        status: ValidationStatus = "unvalidated"
        reasons: list[str] = []
        validation: ValidationResult | None = None
        scope: Literal["changed", "version"] | None = None
        if conflict is not None:
            status = "invalid"
            reasons.append(f"schemas conflict: {conflict}")
        if self.suite is not None and readable:
            scope = self.dataset.validate_scope
            targets = [rel for rel in readable if scope == "version" or rel in changed]
            if targets:
                validation, failure = self._validate(targets, formats, current)
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
            table_files=len(tables),
            readable_files=len(readable),
        )

    def _validate(
        self, targets: list[str], formats: dict[str, str], current: Mapping[str, FileState]
    ) -> tuple[ValidationResult | None, str | None]:
        import pyarrow as pa

        assert self.suite is not None
        parts = []
        for rel in targets:
            try:
                parts.append(read_table(self._locate(rel, current[rel]), formats[rel]))  # type: ignore[arg-type]
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
