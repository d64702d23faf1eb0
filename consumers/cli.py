"""`strandline consume`, `strandline drift` and `strandline lineage`: the consumers' commands.

Registered on the main group by ``daemon.cli``; like it, imports stay light at module level.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import click

from daemon.cli_options import config_option
from daemon.errors import StrandlineError, VersionNotFoundError


@click.command()
@click.argument("kind", type=click.Choice(["drift", "retrain", "alerts"]))
@config_option
@click.option("--metrics-port", type=int, default=None, help="Serve /metrics and /healthz on this port.")
@click.option("--idle-timeout", type=float, default=None, help="Exit after this many seconds without events.")
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "text"]),
    default="auto",
    show_default=True,
    help="Logs on stderr: JSON lines (auto when not a terminal) or text.",
)
def consume(
    kind: str, config: Path | None, metrics_port: int | None, idle_timeout: float | None, log_format: str
) -> None:
    """Run a Kafka consumer until SIGTERM or Ctrl-C: KIND is drift, retrain or alerts.

    \b
      drift    compares each new valid version with the previous valid one, from
               profiles on Kafka alone; publishes dataset.drift.detected / .cleared
      retrain  starts [[retrain.policies]] actions (a command or an HTTP call) on
               valid versions, on drift, or when rows changed; records each run
      alerts   sends validation failures, drift and failed runs to Slack, PagerDuty
               or a signed webhook ([alerts] channels and routes), once per problem

    Run several copies of a KIND to share the work: they form the consumer group
    <group_prefix>-KIND. Offsets are committed only after the work is done; an event
    that cannot be processed after [consumers] retries goes to <prefix>.dead-letter.

    \b
    Examples:
      strandline consume drift
      strandline consume alerts --config /etc/strandline/strandline.toml --metrics-port 9464
    """
    from consumers.app import install_signal_handlers, run_consumer
    from daemon.cli import _fail, _load
    from daemon.logs import setup_logging

    try:
        cfg = _load(config)
        setup_logging(cfg.log_level, log_format)  # type: ignore[arg-type]
        stop = threading.Event()
        install_signal_handlers(stop)
        run_consumer(cfg, kind, stop, idle_timeout=idle_timeout, metrics_port=metrics_port)  # type: ignore[arg-type]
    except StrandlineError as exc:
        _fail(exc)


@click.command()
@click.argument("reference")
@click.argument("current")
@config_option
@click.option(
    "--html",
    "html_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write a self-contained HTML report (distributions side by side) to this file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the drift report as JSON.")
def drift(reference: str, current: str, config: Path | None, html_path: Path | None, as_json: bool) -> None:
    """Compare two versions of a dataset (NAME@A NAME@B) from their profiles: per column
    the test Evidently would pick, its score and threshold, and whether it drifted.

    Thresholds come from the [drift] section (per dataset and column overrides). Exit
    status: 0 no drift, 1 drifted, 2 error.

    \b
    Examples:
      strandline drift sales@3 sales@latest
      strandline drift sales@3 sales@4 --html drift.html
    """
    from consumers.drift import VersionSide, compare
    from daemon.cli import _fail, _load, _table_version

    try:
        cfg = _load(config)
    except StrandlineError as exc:
        _fail(exc)
    sides = []
    for ref in (reference, current):
        row, quality = _table_version(config, ref, "profile to compare")
        assert quality.profile is not None
        sides.append((row, VersionSide(row.seq, row.version_id, quality.schema, quality.profile)))
    (ref_row, ref_side), (cur_row, cur_side) = sides
    if ref_row.dataset != cur_row.dataset:
        _fail(VersionNotFoundError(f"{reference} and {current} are versions of different datasets"))
    report = compare(ref_side, cur_side, cfg.drift.for_dataset(cur_row.dataset), dataset=cur_row.dataset)
    if html_path is not None:
        from consumers.drift_html import render_drift_html

        try:
            html_path.write_text(render_drift_html(report, ref_side.profile, cur_side.profile), encoding="utf-8")
        except OSError as exc:
            _fail(StrandlineError(f"cannot write {html_path}: {exc.strerror}"))
    if as_json:
        click.echo(report.model_dump_json(indent=2))
    else:
        _print_report(report)
        if html_path is not None:
            click.echo(f"HTML report written to {html_path}")
    raise SystemExit(1 if report.drifted else 0)


def _print_report(report: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    verdict = "[red]DRIFTED[/red]" if report.drifted else "[green]no drift[/green]"
    console.print(
        f"{report.dataset}@{report.reference_version} → @{report.current_version}: {verdict} "
        f"({report.drifted_columns} of {report.tested_columns} columns, share {report.share:.2f} vs "
        f"{report.share_threshold:g}; rows {report.reference_rows:,} → {report.current_rows:,})"
    )
    for reason in report.reasons:
        console.print(f"  • {reason}", markup=False)
    table = Table("column", "test", "score", "threshold", "PSI", "nulls", "verdict", "detail")
    for c in report.columns:
        table.add_row(
            c.name,
            c.test or "-",
            "-" if c.score is None else f"{c.score:.4g}",
            "-" if c.threshold is None else f"{c.threshold:g}",
            "-" if c.psi is None else f"{c.psi:.3f}",
            f"{c.null_rate_reference:.1%} → {c.null_rate_current:.1%}",
            "[red]drift[/red]" if c.drifted else ("skipped" if c.skipped else "ok"),
            c.skipped or c.detail,
        )
    console.print(table)


@click.command()
@click.argument("ref", required=False)
@config_option
@click.option("--run", "run_id", help="Show the data version a retraining run used.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def lineage(ref: str | None, config: Path | None, run_id: str | None, as_json: bool) -> None:
    """Which retraining runs used a data version (REF is NAME@N), or which data
    version a run used (--run RUN).

    Runs are recorded by `strandline consume retrain` in its state folder
    ([consumers] state_dir).

    \b
    Examples:
      strandline lineage sales@4
      strandline lineage --run 3f2a9c0d1e4b5a6f
    """
    from consumers.app import state_path
    from consumers.retrain_service import create_tables, run_by_id, runs_for_version
    from consumers.state import ConsumerState
    from daemon.cli import _fail, _load, _parse_ref

    if (ref is None) == (run_id is None):
        raise click.UsageError("give either REF (NAME@N) or --run RUN")
    try:
        cfg = _load(config)
        path = state_path(cfg, "retrain")
        if not path.exists():
            raise VersionNotFoundError(f"no retraining runs recorded yet ({path} does not exist)")
        with ConsumerState(path) as state:
            create_tables(state)
            if run_id is not None:
                run = run_by_id(state, run_id)
                if run is None:
                    raise VersionNotFoundError(f"no retraining run {run_id!r}: see `strandline lineage NAME@N`")
                runs = [run]
            else:
                assert ref is not None
                name, which = _parse_ref(ref)
                if not which.isdigit():
                    raise click.BadParameter("write NAME@N with a version number", param_hint="REF")
                runs = runs_for_version(state, name, int(which))
    except StrandlineError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps([r.model_dump() for r in runs], indent=2))
        return
    if not runs:
        click.echo(f"no retraining run used {ref}")
        return
    from datetime import datetime

    for r in runs:
        started = datetime.fromtimestamp(r.started_at).strftime("%Y-%m-%d %H:%M:%S")
        model = f"  model {r.model_path} ({(r.model_hash or '?')[:12]})" if r.model_path else ""
        click.echo(
            f"run {r.run_id}  {r.dataset}@{r.version} ({r.version_id[:12]})  {r.trigger} → {r.action}  "
            f"started {started}  {r.status or 'running'}{model}"
        )


def register(group: click.Group) -> None:
    for command in (consume, drift, lineage):
        group.add_command(command)
