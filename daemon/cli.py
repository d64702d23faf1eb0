"""The `strandline` command line: one entry point for the daemon, its catalog and its events.

Imports stay light at module level (click, pydantic config); everything heavier is imported
inside the command that needs it, so `strandline --help` answers at once.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from daemon.cli_options import config_option
from daemon.errors import StrandlineError, VersionNotFoundError

if TYPE_CHECKING:
    from daemon.catalog import VersionRow
    from daemon.quality import Quality
    from schemas.config import StrandlineConfig
    from schemas.events import FileChange


def _config_path(given: Path | None) -> Path | None:
    if given is not None:
        return given
    env = os.environ.get("STRANDLINE_CONFIG")
    if env:
        return Path(env)
    default = Path("strandline.toml")
    return default if default.exists() else None


def _load(config: Path | None) -> StrandlineConfig:
    from daemon.config import load_config

    return load_config(_config_path(config))


def _fail(exc: Exception) -> NoReturn:
    click.secho(f"error: {exc}", fg="red", err=True)
    sys.exit(2)


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _version_line(row: VersionRow) -> str:
    return (
        f"{row.dataset}@{row.seq}  +{row.added} ~{row.modified} -{row.removed}  "
        f"{row.files} files {_human_bytes(row.bytes)}  id {row.version_id[:12]}  "
        f"{row.created_at.astimezone().strftime('%Y-%m-%d %H:%M:%S')}{_restorable_mark(row)}"
    )


def _restorable_mark(row: VersionRow) -> str:
    if row.restorable:
        return ""
    if row.collected_at is not None:
        return "  [collected]"
    return "  [no snapshot]" if row.snapshot == "none" else "  [not restorable]"


def _version_dict(row: VersionRow) -> dict[str, Any]:
    return {
        "dataset": row.dataset,
        "version": row.seq,
        "version_id": row.version_id,
        "parent_version": row.parent_seq,
        "parent_version_id": row.parent_version_id,
        "created_at": row.created_at.isoformat(),
        "files": row.files,
        "bytes": row.bytes,
        "added": row.added,
        "modified": row.modified,
        "removed": row.removed,
        "snapshot": row.snapshot,
        "restorable": row.restorable,
        "snapshot_note": row.snapshot_note,
        "collected_at": row.collected_at.isoformat() if row.collected_at else None,
    }


def _parse_ref(ref: str) -> tuple[str, str]:
    name, sep, which = ref.partition("@")
    if not sep or not name or not which:
        raise click.BadParameter(f"{ref!r}: write NAME@N, NAME@latest or NAME@TAG, e.g. sales@3", param_hint="REF")
    return name, which


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="strandline")
def cli() -> None:
    """Strandline watches data folders, makes an immutable version of every quiet
    change-set, and publishes each version to Kafka.

    \b
    Start here:
      strandline watch examples/data      watch a folder; each subfolder is a dataset
      strandline versions NAME            list a dataset's versions
      strandline show NAME@latest         what changed in the newest version
      strandline events tail              read the events other systems receive
      strandline restore NAME@N --to DIR  bring a version's files back
      strandline diff NAME@A NAME@B       files, schema and statistics that changed
      strandline consume drift|retrain|alerts   act on the events
      strandline drift NAME@A NAME@B      did the data drift between two versions?
      strandline doctor                   is everything set up right?
    """


def _log_options(f: Any) -> Any:
    f = click.option(
        "--log-format",
        type=click.Choice(["auto", "json", "text"]),
        default="auto",
        show_default=True,
        help="Logs on stderr: JSON lines (auto when not a terminal) or text.",
    )(f)
    return f


@cli.command()
@click.argument("folder", required=False, type=click.Path(path_type=Path, file_okay=False))
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print each new version as a JSON line instead of text.")
@click.option("--http", "http", metavar="HOST:PORT", help="Serve /healthz, /readyz and /metrics (e.g. 127.0.0.1:9464).")
@_log_options
def watch(folder: Path | None, config: Path | None, as_json: bool, http: str | None, log_format: str) -> None:
    """Watch datasets and version every quiet change-set, until SIGTERM or Ctrl-C.

    With FOLDER and no [[datasets]] in the config, each immediate subfolder of FOLDER is a
    dataset named after it, and loose files in FOLDER form a dataset named after FOLDER.
    New subfolders become datasets as they appear.

    Changes are grouped until a dataset has been quiet for its settle window (default 1 s)
    and no file in it is still open for writing. Changes made while the daemon was down are
    found by the start-up reconcile. Events go to Kafka through an outbox: if Kafka is down,
    versions are still recorded and delivered, in order, when it returns.

    SIGHUP re-reads the config: added datasets start, removed ones stop, changed ones restart
    with a full look at their root. A dataset root may be a bucket prefix (s3://bucket/prefix/,
    gs://bucket/prefix/, az://container/prefix/; see [s3], [gcs], [azure] in the config).

    \b
    Examples:
      strandline watch examples/data
      strandline watch --config /etc/strandline/strandline.toml
      STRANDLINE_KAFKA_BOOTSTRAP=kafka:9092 strandline watch /data
    """
    from daemon.app import Daemon, Target
    from daemon.logs import setup_logging

    try:
        cfg = _load(config)
        if http is not None:
            cfg = cfg.model_copy(update={"http": http})
        setup_logging(cfg.log_level, log_format)  # type: ignore[arg-type]
        target = Target.resolve(cfg, folder)

        def printer(row: VersionRow, changes: list[FileChange]) -> None:
            line = json.dumps(_version_dict(row)) if as_json else _version_line(row)
            click.echo(line)

        daemon = Daemon(cfg, target, on_version=printer, config_path=_config_path(config))
        daemon.install_signal_handlers()
        daemon.run()
    except StrandlineError as exc:
        _fail(exc)


@cli.command()
@click.argument("folder", required=False, type=click.Path(path_type=Path, file_okay=False))
@config_option
@click.option("--no-publish", is_flag=True, help="Only record versions; leave their events in the outbox.")
@click.option("--publish-timeout", default=30.0, show_default=True, help="Seconds to wait for Kafka.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@_log_options
def scan(
    folder: Path | None, config: Path | None, no_publish: bool, publish_timeout: float, as_json: bool, log_format: str
) -> None:
    """Reconcile every dataset with its folder once, version what changed, and exit.

    Use it from cron or CI where a long-running watcher is not wanted. Exits 0 when the
    events were delivered (or --no-publish), 1 when some still wait for Kafka.
    """
    from daemon.app import Daemon, Target
    from daemon.logs import setup_logging

    try:
        cfg = _load(config)
        setup_logging(cfg.log_level, log_format)  # type: ignore[arg-type]
        rows: list[VersionRow] = []
        daemon = Daemon(cfg, Target.resolve(cfg, folder), on_version=lambda r, c: rows.append(r))
        from rich.console import Console

        with Console(stderr=True).status("scanning datasets…", spinner="dots"):
            created, backlog = daemon.scan(publish_timeout=None if no_publish else publish_timeout)
    except StrandlineError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps({"versions": [_version_dict(r) for r in rows], "outbox_backlog": backlog}))
    else:
        for r in rows:
            click.echo(_version_line(r))
        click.echo(f"{created} versions created; {backlog} events wait in the outbox")
    sys.exit(0 if no_publish or backlog == 0 else 1)


def _open_catalog(config: Path | None) -> Any:
    from daemon.catalog import Catalog
    from daemon.config import catalog_path

    return Catalog(catalog_path(_load(config)), readonly=True)


@cli.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def datasets(config: Path | None, as_json: bool) -> None:
    """List datasets with their newest version."""
    try:
        with _open_catalog(config) as catalog:
            summaries = catalog.summaries()
    except StrandlineError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "name": s.name,
                        "root": s.root,
                        "versions": s.versions,
                        "latest": _version_dict(s.latest) if s.latest else None,
                    }
                    for s in summaries
                ]
            )
        )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("dataset", "versions", "latest", "files", "size", "root")
    for s in summaries:
        latest = s.latest
        table.add_row(
            s.name,
            str(s.versions),
            f"@{latest.seq}" if latest else "-",
            str(latest.files) if latest else "-",
            _human_bytes(latest.bytes) if latest else "-",
            s.root,
        )
    Console().print(table)


@cli.command()
@click.argument("name")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def versions(name: str, config: Path | None, as_json: bool) -> None:
    """List the versions of dataset NAME, oldest first."""
    try:
        with _open_catalog(config) as catalog:
            rows = catalog.versions(name)
    except StrandlineError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps([_version_dict(r) for r in rows]))
    else:
        for r in rows:
            click.echo(_version_line(r))


@cli.command()
@click.argument("ref")
@config_option
@click.option("--files", is_flag=True, help="Also list every file of the version (its manifest).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(ref: str, config: Path | None, files: bool, as_json: bool) -> None:
    """Show one version: REF is NAME@N or NAME@latest (e.g. sales@3)."""
    from daemon.report import status_lines

    try:
        with _open_catalog(config) as catalog:
            row = _resolve(catalog, ref)
            changes = catalog.changes(row.dataset, row.seq)
            manifest = catalog.manifest(row.dataset, row.seq) if files else None
            quality = catalog.quality(row.dataset, row.seq)
    except StrandlineError as exc:
        _fail(exc)
        return
    if as_json:
        out = _version_dict(row) | {"changes": [c.model_dump(exclude_none=True) for c in changes]}
        out |= _quality_dict(quality)
        if manifest is not None:
            out["files_list"] = [{"path": p, "size": s.size, "hash": s.hash} for p, s in sorted(manifest.items())]
        click.echo(json.dumps(out))
        return
    click.echo(_version_line(row))
    click.echo(f"version id {row.version_id}  parent {row.parent_version_id or '-'}")
    for line in status_lines(quality):
        click.echo(line)
    if quality is not None and quality.profile is not None and quality.profile.columns:
        from rich.console import Console

        from daemon.report import profile_table

        Console(width=160).print(profile_table(quality.profile.columns, "column statistics"))
    marks = {"added": "+", "modified": "~", "removed": "-"}
    for c in changes:
        size = c.size if c.size is not None else c.old_size
        click.echo(f"  {marks[c.change]} {c.path}  {_human_bytes(size or 0)}  {c.new_hash or c.old_hash}")
    if manifest is not None:
        click.echo("files:")
        for p, s in sorted(manifest.items()):
            click.echo(f"  {p}  {_human_bytes(s.size)}  {s.hash}")


def _resolve(catalog: Any, ref: str) -> VersionRow:
    """The version a NAME@N / NAME@latest / NAME@TAG reference names."""
    name, which = _parse_ref(ref)
    if which == "latest":
        row: VersionRow | None = catalog.latest_version(name)
        if row is None:
            catalog.dataset(name)
            raise VersionNotFoundError(f"dataset {name!r} has no versions yet")
        return row
    if which.isdigit():
        return catalog.version(name, int(which))  # type: ignore[no-any-return]
    seq = catalog.tag_seq(name, which)
    if seq is None:
        raise VersionNotFoundError(f"{name} has no version tagged {which!r}: `strandline tags {name}` lists its tags")
    return catalog.version(name, seq)  # type: ignore[no-any-return]


def _quality_dict(quality: Quality | None) -> dict[str, Any]:
    if quality is None:
        return {"status": "unvalidated"}
    return {
        "status": quality.status,
        "status_reason": quality.reason,
        "schema": quality.schema.model_dump() if quality.schema else None,
        "schema_change": quality.schema_change.model_dump() if quality.schema_change else None,
        "validation": quality.validation.model_dump(mode="json") if quality.validation else None,
        "validation_scope": quality.validation_scope,
        "problems": [p.model_dump() for p in quality.problems],
        "rows": quality.profile.rows if quality.profile else None,
    }


def _table_version(config: Path | None, ref: str, what: str) -> tuple[VersionRow, Quality]:
    """The version REF names and its quality; exits with a clear error when it has no tables."""
    try:
        with _open_catalog(config) as catalog:
            row = _resolve(catalog, ref)
            quality = catalog.quality(row.dataset, row.seq)
            if quality is None or quality.schema is None:
                raise VersionNotFoundError(f"{row.dataset}@{row.seq} has no readable table files, so no {what}")
    except StrandlineError as exc:
        _fail(exc)
    return row, quality


@cli.command()
@click.argument("ref")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the schema and its change as JSON.")
def schema(ref: str, config: Path | None, as_json: bool) -> None:
    """Print the table schema of a version (REF is NAME@N or NAME@latest) and how it
    changed against the parent version.

    The schema is the union of the schemas of the version's table files (Parquet, CSV,
    JSON Lines, Arrow/Feather, ORC), in first-seen column order; its fingerprint changes
    whenever a column is added, removed, renamed, retyped or changes nullability.

    Example: strandline schema sales@latest
    """
    from daemon.report import change_lines, schema_lines

    row, quality = _table_version(config, ref, "schema")
    if quality.schema is None:
        return
    if as_json:
        change = quality.schema_change.model_dump() if quality.schema_change else None
        click.echo(json.dumps({"schema": quality.schema.model_dump(), "schema_change": change}))
        return
    for line in schema_lines(quality.schema):
        click.echo(line)
    if quality.schema_change is not None:
        lines = change_lines(quality.schema_change)
        click.echo(f"against {row.dataset}@{row.parent_seq}: " + ("" if lines else "unchanged"))
        for line in lines:
            click.echo("  " + line)


@cli.command()
@click.argument("ref")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the full profile (with base64 sketches) as JSON.")
def profile(ref: str, config: Path | None, as_json: bool) -> None:
    """Print the column statistics of a version (REF is NAME@N or NAME@latest).

    Per column: count, nulls, min, max, mean, standard deviation, median (from a KLL
    quantile sketch), distinct values (HLL sketch) and most frequent values. The
    version's profile is the merge of its files' profiles; --json prints it whole,
    sketches included, in the same form as the <prefix>.profiles Kafka topic.

    Example: strandline profile sales@3 --json > sales-3.json
    """
    row, quality = _table_version(config, ref, "profile")
    if quality.profile is None:
        return
    if as_json:
        click.echo(quality.profile.model_dump_json())
        return
    from rich.console import Console

    from daemon.report import profile_table

    title = f"{row.dataset}@{row.seq}: {quality.profile.rows} rows"
    Console(width=200).print(profile_table(quality.profile.columns, title))


@cli.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--suite",
    "-s",
    "suite_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Great Expectations 1.x suite (JSON).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["parquet", "csv", "jsonl", "arrow", "orc"]),
    help="Read every file as this format (default: from the extension).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def validate(path: Path, suite_path: Path, fmt: str | None, as_json: bool) -> None:
    """Validate a table file, or every table file in a folder (as one table), against a
    suite, without watching: for CI pipelines.

    Exit code 0 when every expectation is met; 1 when one fails or a file cannot be read;
    2 when the suite or the arguments are wrong.

    Example: strandline validate data/sales --suite suites/sales.json
    """
    import logging

    from daemon.assess import Assessor
    from daemon.validation import load_suite
    from schemas.config import DatasetConfig

    logging.disable(logging.WARNING)  # the report below says it all, once

    try:
        suite = load_suite(suite_path)
        root = path if path.is_dir() else path.parent
        only = None if path.is_dir() else path.name
        ds = DatasetConfig(name="validate", root=root, suite=suite_path, format=fmt)
        quality = Assessor(str(root.resolve()), ds, suite).check_folder(only=only)
    except StrandlineError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps(_quality_dict(quality)))
    else:
        from daemon.report import status_lines

        for line in status_lines(quality):
            click.echo(line)
    sys.exit(0 if quality.status == "valid" else 1)


@cli.group()
def events() -> None:
    """Read the events Strandline publishes to Kafka."""


@events.command("tail")
@config_option
@click.option("--from-beginning", is_flag=True, help="Start at the topic's oldest event, not the newest.")
@click.option("--count", "-n", type=int, help="Exit after this many events.")
@click.option("--timeout", type=float, help="Exit after this many seconds without an event.")
@click.option("--json", "as_json", is_flag=True, help="Print each event as JSON with its CloudEvents headers.")
def events_tail(
    config: Path | None, from_beginning: bool, count: int | None, timeout: float | None, as_json: bool
) -> None:
    """Print events from the <topic_prefix>.versions topic as they arrive."""
    from consumers.tail import tail

    try:
        cfg = _load(config)
        for ev in tail(cfg.kafka, from_beginning=from_beginning, count=count, timeout=timeout):
            if as_json:
                click.echo(json.dumps({"headers": ev.headers, "key": ev.key, "offset": ev.offset, "data": ev.data}))
            else:
                d = ev.data
                what = f"{d.get('dataset')}@{d.get('version')}" if "version" in d else d.get("dataset", "?")
                extra = ""
                if ev.type == "dataset.version.created":
                    t = d.get("totals", {})
                    extra = f"+{t.get('added')} ~{t.get('modified')} -{t.get('removed')}"
                elif ev.type == "dataset.input.rejected":
                    extra = f"{d.get('path')}: {d.get('reason')}"
                click.echo(f"{ev.headers.get('ce_time', '')}  {ev.type}  {what}  {extra}")
    except StrandlineError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        pass


@cli.command()
@click.argument("folder", required=False, type=click.Path(path_type=Path, file_okay=False))
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def doctor(folder: Path | None, config: Path | None, as_json: bool) -> None:
    """Check the set-up: config, dataset roots, inotify limits, Kafka, outbox backlog.

    Exits 0 when every check passes, 1 otherwise; each failed check says how to fix it.
    """
    from daemon.app import Target
    from daemon.doctor import Check, run_checks

    try:
        cfg = _load(config)
        target = Target.resolve(cfg, folder)
        checks = run_checks(cfg, list(target.datasets))
    except StrandlineError as exc:
        checks = [Check("config", False, str(exc), "fix the config and run doctor again")]
        cfg = None
    if as_json:
        click.echo(json.dumps([c.__dict__ for c in checks]))
    else:
        for c in checks:
            mark = click.style("ok  ", fg="green") if c.ok else click.style("FAIL", fg="red")
            click.echo(f"{mark} {c.name}: {c.detail}")
            if c.fix:
                click.echo(f"     → {c.fix}")
    sys.exit(0 if all(c.ok for c in checks) else 1)


def _register_consumer_commands() -> None:
    # At import, so that `cli` (and the tests' CliRunner) has every command; consumers.cli is light.
    from consumers.cli import register
    from daemon.cli_timemachine import register as register_time_machine

    register(cli)
    register_time_machine(cli)


_register_consumer_commands()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
