"""The time machine's commands: restore, diff, tag, tags, gc, verify (issue 6).

They read the catalog and the content store of the host's config; the ones that change
something (tag, gc) write to the catalog, whose outbox the running daemon publishes from.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from daemon.cli_options import config_option
from daemon.errors import StrandlineError

if TYPE_CHECKING:
    from daemon.catalog import Catalog, VersionRow
    from daemon.content_store import ContentStore
    from schemas.config import DatasetConfig, StrandlineConfig

TAG_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")


def _base() -> Any:
    from daemon import cli

    return cli


def _catalog(cfg: StrandlineConfig, *, write: bool = False) -> Catalog:
    from daemon.catalog import Catalog
    from daemon.config import catalog_path

    return Catalog(catalog_path(cfg), readonly=not write)


def _store(cfg: StrandlineConfig, *, must_exist: bool = True) -> ContentStore | None:
    from daemon.store_open import store_site

    site = store_site(cfg)
    # A bucket store has no marker file: opening it lists its packs (an empty prefix is an empty store).
    if not site.is_bucket and not (Path(site.location) / "FORMAT").exists():
        if must_exist:
            raise StrandlineError(
                f"no content store at {site.location}: versions are snapshotted there by `strandline watch` or"
                " `scan` (unless their dataset has snapshot = 'none'); check [store] path"
            )
        return None
    return site.open()


def why_not_restorable(row: VersionRow) -> str:
    ref = f"{row.dataset}@{row.seq}"
    if row.collected_at is not None:
        return (
            f"{ref} cannot be restored: gc collected its bytes on {row.collected_at:%Y-%m-%d %H:%M} UTC"
            " (tag a version to keep it)"
        )
    if row.snapshot == "none":
        return (
            f"{ref} cannot be restored: it was recorded without a snapshot (snapshot = 'none', or a Strandline"
            " before snapshots); only its metadata was kept"
        )
    return f"{ref} cannot be restored: {row.snapshot_note or 'its snapshot did not complete'}"


def dataset_config(cfg: StrandlineConfig, catalog: Catalog, name: str) -> DatasetConfig:
    """The dataset's config, or, for a folder watched without one, what discovery made of it."""
    from schemas.config import DatasetConfig

    for ds in cfg.datasets:
        if ds.name == name:
            return ds
    root = catalog.dataset(name).root
    # Discovery makes the watched folder itself a non-recursive dataset of its loose files and
    # each subfolder a dataset of its own: a root holding other datasets' roots is the former.
    prefix = root.rstrip("/") + "/"
    holds_others = any(catalog.dataset(other).root.startswith(prefix) for other in catalog.dataset_names())
    return DatasetConfig(name=name, root=root, recursive=not holds_others)


def _progress(enabled: bool) -> Any:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        disable=not enabled,
        transient=True,
    )


# -- restore ------------------------------------------------------------------------------------


@click.command()
@click.argument("ref")
@click.option("--to", "to", type=click.Path(path_type=Path, file_okay=False), help="Folder to write the files into.")
@click.option("--in-place", is_flag=True, help="Make the dataset's own folder hold exactly this version (a revert).")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def restore(ref: str, to: Path | None, in_place: bool, config: Path | None, as_json: bool) -> None:
    """Bring a version's files back, every byte checked against its hash.

    \b
      strandline restore sales@3 --to /tmp/sales-v3   version 3's files in a folder of their own
      strandline restore sales@prod --in-place        revert sales' folder to the version tagged prod

    --to writes the version's files into DIR (made if needed) and leaves other files there alone.
    --in-place makes the dataset's folder hold exactly that version: files that differ are
    rewritten, files the version lacks are removed (only the dataset's own: hidden, excluded and
    temporary files stay). The daemon then records a new version with the same content, a
    revert: history is never rewritten.

    Nothing is put in place until every file is staged and checked; a damaged object fails the
    restore naming the file, with the target untouched; no path can land outside the target.
    """
    from daemon.restore import restore as restore_files

    base = _base()
    if (to is not None) == in_place:
        raise click.UsageError("give --to DIR or --in-place (one of them)")
    try:
        cfg = base._load(config)
        with _catalog(cfg) as catalog:
            row = base._resolve(catalog, ref)
            if not row.restorable:
                raise StrandlineError(why_not_restorable(row))
            manifest = catalog.manifest(row.dataset, row.seq)
            kwargs: dict[str, Any] = {}
            if in_place:
                ds = dataset_config(cfg, catalog, row.dataset)
                if ds.is_bucket:
                    raise StrandlineError(
                        f"{row.dataset} is a bucket dataset: --in-place restores folders only; restore it --to DIR"
                        " and upload that"
                    )
                from daemon.filters import PathFilter

                target = Path(ds.root)
                current = catalog.current_states(catalog.dataset(row.dataset).id)
                kwargs["prune"] = True
                kwargs["owned"] = PathFilter.for_dataset(ds).wants_file
                kwargs["unchanged"] = lambda rel, st, want: (
                    (cur := current.get(rel)) is not None
                    and cur.hash == want.hash
                    and cur.stat_matches(st.st_size, st.st_mtime_ns, st.st_ino)
                )
            else:
                assert to is not None
                target = to
        store = _store(cfg)
        assert store is not None
        total = sum(s.size for s in manifest.values())
        with _progress(not as_json and sys.stderr.isatty()) as bar:
            task = bar.add_task(f"restoring {row.dataset}@{row.seq}", total=total)
            summary = restore_files(store, manifest, target, progress=lambda n: bar.advance(task, n), **kwargs)
    except StrandlineError as exc:
        base._fail(exc)
        return
    result = {
        "dataset": row.dataset,
        "version": row.seq,
        "version_id": row.version_id,
        "target": str(target.resolve()),
        "files": summary.files,
        "bytes_written": summary.bytes,
        "unchanged": summary.unchanged,
        "removed": summary.removed,
        "in_place": in_place,
    }
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(
        f"restored {row.dataset}@{row.seq} ({summary.files} files) into {result['target']}:"
        f" {base._human_bytes(summary.bytes)} written, {summary.unchanged} already in place,"
        f" {summary.removed} removed"
    )
    if in_place:
        click.echo(
            f"the daemon records this as a new version of {row.dataset} whose content equals version {row.seq}"
            " (run `strandline scan` if no daemon is watching)"
        )


# -- diff ---------------------------------------------------------------------------------------


@click.command("diff")
@click.argument("a")
@click.argument("b")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the whole comparison as JSON.")
@click.option("--limit", default=50, show_default=True, help="Most file changes to list (0: all).")
def diff_versions_cmd(a: str, b: str, config: Path | None, as_json: bool, limit: int) -> None:
    """Compare two versions: files added, removed and changed, schema, rows and column statistics.

    \b
      strandline diff sales@3 sales@latest
      strandline diff sales@prod sales@7 --json

    Statistics come from the versions' stored profiles, so no data file is read again and
    versions whose bytes were collected can still be compared.
    """
    from daemon.version_diff import diff_versions

    base = _base()
    try:
        cfg = base._load(config)
        with _catalog(cfg) as catalog:
            ra, rb = base._resolve(catalog, a), base._resolve(catalog, b)
            result = diff_versions(
                f"{ra.dataset}@{ra.seq}",
                f"{rb.dataset}@{rb.seq}",
                ra.version_id,
                rb.version_id,
                catalog.manifest(ra.dataset, ra.seq),
                catalog.manifest(rb.dataset, rb.seq),
                catalog.quality(ra.dataset, ra.seq),
                catalog.quality(rb.dataset, rb.seq),
            )
    except StrandlineError as exc:
        base._fail(exc)
        return
    if as_json:
        click.echo(result.model_dump_json())
        return
    _print_diff(result, limit)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.4g}"


def _signed(value: float | None) -> str:
    if value is None:
        return ""
    text = _fmt(value)
    return f" ({'+' if value >= 0 else ''}{text})"


def _print_diff(result: Any, limit: int) -> None:
    from rich.console import Console
    from rich.table import Table

    from daemon.report import change_lines

    base = _base()
    f = result.files
    click.echo(
        f"{result.a} → {result.b}: +{f.added} ~{f.modified} -{f.removed} files,"
        f" {base._human_bytes(f.bytes_a)} → {base._human_bytes(f.bytes_b)}"
        + ("  (identical content)" if result.identical else "")
    )
    marks = {"added": "+", "modified": "~", "removed": "-"}
    shown = result.changes if limit == 0 else result.changes[:limit]
    for c in shown:
        if c.change == "modified":
            sizes = f"{base._human_bytes(c.old_size or 0)} → {base._human_bytes(c.size or 0)}"
        else:
            sizes = base._human_bytes((c.size if c.size is not None else c.old_size) or 0)
        click.echo(f"  {marks[c.change]} {c.path}  {sizes}")
    if len(shown) < len(result.changes):
        click.echo(f"  … and {len(result.changes) - len(shown)} more (--limit 0 lists all)")
    if result.rows.a is not None or result.rows.b is not None:
        click.echo(f"rows: {_fmt(result.rows.a)} → {_fmt(result.rows.b)}{_signed(result.rows.change)}")
    if result.schema_change is not None:
        lines = change_lines(result.schema_change)
        click.echo("schema: " + ("unchanged" if not lines else ""))
        for line in lines:
            click.echo(f"  {line}")
    if result.columns:
        table = Table(title="column statistics (A → B)")
        for name in ("column", "", "type", "null rate", "mean", "stddev", "min", "max"):
            table.add_column(name)
        for col in result.columns:
            mark = {"both": "", "added": "+", "removed": "-"}[col.presence]
            typ = col.type_b or col.type_a or ""
            if col.type_a and col.type_b and col.type_a != col.type_b:
                typ = f"{col.type_a} → {col.type_b}"

            def pair(d: Any, text: tuple[str | None, str | None] | None = None) -> str:
                if text is not None:
                    return f"{text[0] or '-'} → {text[1] or '-'}"
                return f"{_fmt(d.a)} → {_fmt(d.b)}{_signed(d.change)}"

            rate = col.null_rate
            null_text = (
                "-"
                if rate.a is None and rate.b is None
                else (f"{(rate.a or 0) * 100:.1f}% → {(rate.b or 0) * 100:.1f}%")
            )
            table.add_row(
                col.name,
                mark,
                typ,
                null_text,
                pair(col.mean),
                pair(col.stddev),
                pair(col.min, col.min_text),
                pair(col.max, col.max_text),
            )
        Console(width=160).print(table)


# -- tags ---------------------------------------------------------------------------------------


@click.command()
@click.argument("ref")
@click.argument("label", required=False)
@click.option("--delete", is_flag=True, help="Remove the tag REF names (write NAME@TAG).")
@config_option
def tag(ref: str, label: str | None, delete: bool, config: Path | None) -> None:
    """Name a version with a label, usable as NAME@LABEL wherever a version is named.

    \b
      strandline tag sales@7 prod          sales@prod now means version 7 (moved if it named another)
      strandline restore sales@prod --to /tmp/prod
      strandline tag --delete sales@prod

    Tagged versions are never collected by gc. Each change is published as a
    dataset.version.tagged / untagged event (through the daemon's outbox).
    """
    from daemon.events import tag_message
    from schemas.events import VersionTagged

    base = _base()
    try:
        cfg = base._load(config)
        with _catalog(cfg, write=True) as catalog:
            now = datetime.now(UTC)
            if delete:
                if label is not None:
                    raise click.UsageError("with --delete give only NAME@TAG")
                name, which = base._parse_ref(ref)
                if catalog.tag_seq(name, which) is None:
                    raise StrandlineError(f"{name} has no tag {which!r}: `strandline tags {name}` lists them")

                def untagged(previous: int | None) -> list[Any]:
                    event = VersionTagged(dataset=name, tag=which, previous_version=previous, host=cfg.host, at=now)
                    return [tag_message(cfg.kafka, event)]

                catalog.set_tag(name, which, None, untagged)
                click.echo(f"removed tag {which!r} from {name}")
                return
            if label is None:
                raise click.UsageError("give the LABEL to tag the version with, e.g. `strandline tag sales@7 prod`")
            if not TAG_PATTERN.match(label) or label == "latest":
                raise click.BadParameter(
                    f"{label!r}: a tag starts with a letter, then letters, digits, '.', '_' or '-' (64 at most),"
                    " and is not 'latest'",
                    param_hint="LABEL",
                )
            row = base._resolve(catalog, ref)

            def tagged(previous: int | None) -> list[Any]:
                event = VersionTagged(
                    dataset=row.dataset,
                    tag=label,
                    version=row.seq,
                    version_id=row.version_id,
                    previous_version=previous,
                    host=cfg.host,
                    at=now,
                )
                return [tag_message(cfg.kafka, event)]

            previous = catalog.set_tag(row.dataset, label, row.seq, tagged)
    except StrandlineError as exc:
        base._fail(exc)
        return
    moved = f" (moved from version {previous})" if previous is not None and previous != row.seq else ""
    click.echo(f"{row.dataset}@{label} → version {row.seq}{moved}")


@click.command()
@click.argument("name")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def tags(name: str, config: Path | None, as_json: bool) -> None:
    """List a dataset's tags and the versions they name."""
    base = _base()
    try:
        cfg = base._load(config)
        with _catalog(cfg) as catalog:
            rows = catalog.tags(name)
    except StrandlineError as exc:
        base._fail(exc)
        return
    if as_json:
        click.echo(
            json.dumps([{"tag": t.label, "version": t.seq, "created_at": t.created_at.isoformat()} for t in rows])
        )
        return
    if not rows:
        click.echo(f"{name} has no tags: `strandline tag {name}@N LABEL` adds one")
    for t in rows:
        click.echo(f"{t.label:<20} version {t.seq}  (since {t.created_at:%Y-%m-%d %H:%M} UTC)")


# -- gc -----------------------------------------------------------------------------------------


@click.command()
@click.option("--dry-run", is_flag=True, help="Show what would be collected and the bytes freed; change nothing.")
@click.option(
    "--skip-lineage",
    is_flag=True,
    help="Do not read retraining runs from Kafka first (versions used by runs not yet recorded may be collected).",
)
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def gc(dry_run: bool, skip_lineage: bool, config: Path | None, as_json: bool) -> None:
    """Drop the bytes of versions the retention rules no longer keep, and any bytes no version needs.

    \b
    A version's bytes are kept when any of these holds (per dataset, else [store]):
      - it is the dataset's newest version, or one of the newest keep_last;
      - it is younger than keep_days;
      - it is tagged (strandline tag);
      - a retraining run used it (read from the <prefix>.models topic first).
    With neither keep_last nor keep_days set, every version is kept.

    Collected versions stay in the catalog, marked: `versions` and `diff` still show them;
    `restore` says they were collected. Run with --dry-run first.
    """
    from daemon.errors import PublishError
    from daemon.lineage import sync_lineage
    from daemon.retention import decide, retention_for
    from daemon.snapshots import StoreLock
    from daemon.store_open import store_site

    base = _base()
    try:
        cfg = base._load(config)
        with _catalog(cfg, write=True) as catalog:
            synced = None
            if not skip_lineage:
                try:
                    synced = sync_lineage(cfg, catalog)
                except PublishError as exc:
                    raise PublishError(f"{exc}; or pass --skip-lineage to collect without them") from exc
            now = datetime.now(UTC)
            plan: dict[str, list[Any]] = {}
            for name in catalog.dataset_names():
                by_seq: dict[int, list[str]] = {}
                for t in catalog.tags(name):
                    by_seq.setdefault(t.seq, []).append(t.label)
                verdicts = decide(
                    catalog.versions(name), retention_for(cfg, name), by_seq, catalog.lineage_runs(name), now
                )
                plan[name] = [v for v in verdicts if not v.keep]
            drop = {name: [v.version.seq for v in vs] for name, vs in plan.items() if vs}
            store = _store(cfg, must_exist=False)
            if dry_run:
                freed = store.gc(catalog.live_hashes(drop), dry_run=True) if store else None
            else:
                if store is None:
                    for name, seqs in drop.items():
                        catalog.mark_collected(name, seqs)
                    freed = None
                else:
                    # Versioners hold this shared from a snapshot's first put to its version's
                    # commit: nothing they just stored can look unused while we delete. On
                    # this host only: a bucket store's versioners on other hosts are not held off.
                    with StoreLock(store_site(cfg).lock_dir).exclusive():
                        for name, seqs in drop.items():
                            catalog.mark_collected(name, seqs)
                        freed = store.gc(catalog.live_hashes())
    except StrandlineError as exc:
        base._fail(exc)
        return
    result = {
        "dry_run": dry_run,
        "collected": {name: seqs for name, seqs in drop.items()},
        "objects": freed.objects if freed else 0,
        "pieces": freed.pieces if freed else 0,
        "bytes": freed.bytes if freed else 0,
        "disk_bytes": freed.disk_bytes if freed else 0,
        "lineage_events_read": synced.read if synced else None,
    }
    if as_json:
        click.echo(json.dumps(result))
        return
    verb = "would collect" if dry_run else "collected"
    if not drop:
        click.echo("no version to collect: retention keeps every version with bytes")
    for name, seqs in drop.items():
        click.echo(f"{verb} {name}: versions {', '.join(map(str, seqs))}")
    click.echo(
        f"{'would free' if dry_run else 'freed'} {base._human_bytes(result['bytes'])}"
        f" ({result['objects']} files, {result['pieces']} chunks and pages)"
        + ("" if dry_run else f"; {base._human_bytes(result['disk_bytes'])} of disk given back")
    )


# -- verify -------------------------------------------------------------------------------------


@click.command()
@click.option("--deep", is_flag=True, help="Also re-read every chunked file end to end.")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def verify(deep: bool, config: Path | None, as_json: bool) -> None:
    """Re-hash every stored object; report damaged or missing ones and the versions they break.

    Exits 0 when every restorable version can be restored, 1 otherwise.
    """
    base = _base()
    try:
        cfg = base._load(config)
        store = _store(cfg)
        assert store is not None
        problems = store.verify(deep=deep)
        with _catalog(cfg) as catalog:
            live = catalog.live_hashes()
            missing = sorted(store.missing(dict.fromkeys(live)))  # batched: not a lookup per hash
            users = catalog.users_of({p.digest for p in problems} | set(missing))
    except StrandlineError as exc:
        base._fail(exc)
        return
    found: list[dict[str, Any]] = [
        {
            "hash": p.digest,
            "problem": p.kind,
            "object": p.obj,
            "detail": p.detail,
            "used_by": users.get(p.digest, []),
        }
        for p in problems
    ] + [
        {"hash": h, "problem": "missing", "object": None, "detail": "not in the store", "used_by": users.get(h, [])}
        for h in missing
    ]
    if as_json:
        click.echo(json.dumps({"problems": found, "checked_hashes": len(live)}))
    else:
        for p in found:
            where = ", ".join(f"{d}@{s}:{path}" for d, s, path in p["used_by"][:5]) or "no restorable version"
            click.echo(f"{p['problem'].upper()} {p['hash']} ({p['detail']}); used by {where}")
        click.echo(
            f"{len(found)} problems in the content store; {len(live)} files of restorable versions checked"
            if found
            else f"ok: {len(live)} files of restorable versions are stored and intact"
        )
    sys.exit(1 if found else 0)


def register(cli: click.Group) -> None:
    for command in (restore, diff_versions_cmd, tag, tags, gc, verify):
        cli.add_command(command)
