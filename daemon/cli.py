"""The `strandline` command line: one entry point for the daemon, its catalog and its events.

Imports stay light at module level (click, pydantic config); everything heavier is imported
inside the command that needs it, so `strandline --help` answers at once.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from daemon.errors import StrandlineError, VersionNotFoundError

if TYPE_CHECKING:
    from daemon.catalog import VersionRow
    from schemas.config import StrandlineConfig
    from schemas.events import FileChange

CONFIG_HELP = "TOML config file (default: $STRANDLINE_CONFIG, else ./strandline.toml if present)."


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


def _fail(exc: Exception) -> None:
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
        f"{row.created_at.astimezone().strftime('%Y-%m-%d %H:%M:%S')}"
    )


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
    }


def _parse_ref(ref: str) -> tuple[str, str]:
    name, sep, which = ref.partition("@")
    if not sep or not name or not which:
        raise click.BadParameter(f"{ref!r}: write NAME@N or NAME@latest, e.g. sales@3", param_hint="REF")
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
@click.option("--config", "-c", type=click.Path(path_type=Path, dir_okay=False), help=CONFIG_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print each new version as a JSON line instead of text.")
@_log_options
def watch(folder: Path | None, config: Path | None, as_json: bool, log_format: str) -> None:
    """Watch datasets and version every quiet change-set, until SIGTERM or Ctrl-C.

    With FOLDER and no [[datasets]] in the config, each immediate subfolder of FOLDER is a
    dataset named after it, and loose files in FOLDER form a dataset named after FOLDER.
    New subfolders become datasets as they appear.

    Changes are grouped until a dataset has been quiet for its settle window (default 1 s)
    and no file in it is still open for writing. Changes made while the daemon was down are
    found by the start-up reconcile. Events go to Kafka through an outbox: if Kafka is down,
    versions are still recorded and delivered, in order, when it returns.

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
        setup_logging(cfg.log_level, log_format)  # type: ignore[arg-type]
        target = Target.resolve(cfg, folder)

        def printer(row: VersionRow, changes: list[FileChange]) -> None:
            line = json.dumps(_version_dict(row)) if as_json else _version_line(row)
            click.echo(line)

        daemon = Daemon(cfg, target, on_version=printer)
        daemon.install_signal_handlers()
        daemon.run()
    except StrandlineError as exc:
        _fail(exc)


@cli.command()
@click.argument("folder", required=False, type=click.Path(path_type=Path, file_okay=False))
@click.option("--config", "-c", type=click.Path(path_type=Path, dir_okay=False), help=CONFIG_HELP)
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
@click.option("--config", "-c", type=click.Path(path_type=Path, dir_okay=False), help=CONFIG_HELP)
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
@click.option("--config", "-c", type=click.Path(path_type=Path, dir_okay=False), help=CONFIG_HELP)
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
@click.option("--config", "-c", type=click.Path(path_type=Path, dir_okay=False), help=CONFIG_HELP)
@click.option("--files", is_flag=True, help="Also list every file of the version (its manifest).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(ref: str, config: Path | None, files: bool, as_json: bool) -> None:
    """Show one version: REF is NAME@N or NAME@latest (e.g. sales@3)."""
    name, which = _parse_ref(ref)
    try:
        with _open_catalog(config) as catalog:
            if which == "latest":
                row = catalog.latest_version(name)
                if row is None:
                    catalog.dataset(name)
                    raise VersionNotFoundError(f"dataset {name!r} has no versions yet")
            elif which.isdigit():
                row = catalog.version(name, int(which))
            else:
                raise click.BadParameter(f"{which!r} is not a version number or 'latest'", param_hint="REF")
            changes = catalog.changes(name, row.seq)
            manifest = catalog.manifest(name, row.seq) if files else None
    except StrandlineError as exc:
        _fail(exc)
        return
    if as_json:
        out = _version_dict(row) | {"changes": [c.model_dump(exclude_none=True) for c in changes]}
        if manifest is not None:
            out["files_list"] = [{"path": p, "size": s.size, "hash": s.hash} for p, s in sorted(manifest.items())]
        click.echo(json.dumps(out))
        return
    click.echo(_version_line(row))
    click.echo(f"version id {row.version_id}  parent {row.parent_version_id or '-'}")
    marks = {"added": "+", "modified": "~", "removed": "-"}
    for c in changes:
        size = c.size if c.size is not None else c.old_size
        click.echo(f"  {marks[c.change]} {c.path}  {_human_bytes(size or 0)}  {c.new_hash or c.old_hash}")
    if manifest is not None:
        click.echo("files:")
        for p, s in sorted(manifest.items()):
            click.echo(f"  {p}  {_human_bytes(s.size)}  {s.hash}")


@cli.group()
def events() -> None:
    """Read the events Strandline publishes to Kafka."""


@events.command("tail")
@click.option("--config", "-c", type=click.Path(path_type=Path, dir_okay=False), help=CONFIG_HELP)
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
@click.option("--config", "-c", type=click.Path(path_type=Path, dir_okay=False), help=CONFIG_HELP)
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


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
