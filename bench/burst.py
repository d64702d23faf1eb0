"""Burst: 20,000 small files land in a dataset at once; time until their version is on Kafka.

How it is measured
  * Fresh folders under one new temp dir: ``watched/`` (the daemon's root, with the empty
    dataset folders ``mvds/`` and ``directds/``), ``staging/`` (outside the watched root), and
    ``dvc/`` (a DVC repo). ``strandline watch watched`` runs as a subprocess with its own state
    dir, settle window ``--settle`` (default 0.2 s) and a topic prefix unique to the run; a
    kafka-python consumer reads ``<prefix>.versions``.
  * Files: ``--files`` (default 20,000) of random size ``--min-kib``..``--max-kib`` (1..8 KiB),
    random bytes, in one folder.
  * Variant ``mv``: the files are written into ``staging/batch/`` first (not timed), then the
    folder is renamed (what ``mv`` does on one filesystem) to ``watched/mvds/batch``. Time =
    from the rename until the consumer reads the ``mvds`` version event whose totals count all
    the files.
  * Variant ``direct``: the files are written straight into ``watched/directds/batch/``. Time =
    from the first file opened until that event is readable; also shown from the last file's
    close, and how many versions the daemon cut while the files were arriving.
  * DVC: after the daemon is stopped, the very folder the ``mv`` variant versioned is renamed
    into ``dvc/`` (where ``dvc init --no-scm`` ran, not timed) and ``dvc add batch`` is timed,
    wall clock, as a subprocess of ``bench/.venv-peers/bin/dvc`` (``bench/setup_peers.sh``
    makes that venv; DVC's analytics and update checks are off). Its page cache state is the
    same as Strandline's: both read files that were just written.
  * ratio = dvc add time / Strandline time (mv variant; direct variant from its last close).
    Target: >= 5x (dvc add takes ~7.8 s on this machine).

Mass deletion on this disk slows the next mass creation for a while, so every run creates its
data fresh in new folders and deletes all of it only at the very end of the run (after the
figures are taken). Do not run two burst benchmarks back to back expecting equal times for
file creation; the timed parts above do not include creating files, except ``direct``.

Run: .venv/bin/python bench/burst.py [--files 20000] [--settle 0.2] [--variants mv,direct] [--no-dvc] [--json]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

import _common as c

TARGET_RATIO = 5.0
PEERS = Path(__file__).resolve().parent / ".venv-peers"


def main() -> None:
    p = c.parser(__doc__)
    c.add_kafka_args(p)
    p.add_argument("--files", type=int, default=20_000, help="files per burst (default 20000)")
    p.add_argument("--min-kib", type=int, default=1, help="smallest file, KiB (default 1)")
    p.add_argument("--max-kib", type=int, default=8, help="largest file, KiB (default 8)")
    p.add_argument("--settle", type=float, default=0.2, help="settle window in seconds (default 0.2)")
    p.add_argument("--variants", default="mv,direct", help="comma-separated: mv, direct (default both)")
    p.add_argument("--no-dvc", action="store_true", help="skip the dvc add comparison")
    p.add_argument(
        "--dvc",
        type=Path,
        default=PEERS / "bin" / "dvc",
        help="dvc executable (default bench/.venv-peers/bin/dvc, made by bench/setup_peers.sh)",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one burst's event")
    p.add_argument("--seed", type=int, default=20_000, help="random seed for sizes and bytes")
    p.add_argument("--keep", action="store_true", help="leave the run's folders in place (prints where)")
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record each variant with py-spy (bench/.venv-peers) into DIR and print a summary",
    )
    args = p.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if bad := set(variants) - {"mv", "direct"}:
        p.error(f"unknown variants: {', '.join(sorted(bad))}")
    if not args.no_dvc and not args.dvc.exists():
        p.error(f"{args.dvc} not found: run `bash bench/setup_peers.sh` first, or pass --no-dvc")

    report = c.Report(
        "burst: many small files at once → version event on Kafka, vs dvc add",
        {
            "files": args.files,
            "size_kib": f"{args.min_kib}..{args.max_kib}",
            "settle_s": args.settle,
            "variants": ",".join(variants),
        },
    )
    with c.run_folder("burst", args.keep) as work, c.kafka_broker(args.bootstrap) as bootstrap:
        report.params["bootstrap"] = bootstrap
        run(args, variants, work, bootstrap, report)
    report.emit(args.json)


def run(args: argparse.Namespace, variants: list[str], work: Path, bootstrap: str, report: c.Report) -> None:
    lo, hi = args.min_kib * 1024, args.max_kib * 1024
    watched, staging = work / "watched", work / "staging"
    for name in ("mvds", "directds"):
        (watched / name).mkdir(parents=True)
    if "mv" in variants:
        t = time.monotonic()
        size = c.write_random_files(staging / "batch", args.files, lo, hi, args.seed)
        c.note(f"staged {args.files} files ({size / 2**20:.1f} MiB) in {time.monotonic() - t:.2f} s")
        report.params["mv_bytes"] = size

    prefix = c.unique_prefix("burst")
    reader = c.VersionsReader(bootstrap, prefix)
    daemon = c.DaemonProcess(watched, work, c.daemon_env(bootstrap, prefix, args.settle, work / "state"))
    strandline: dict[str, float] = {}
    try:
        daemon.wait_for_log("started:", 60)
        warm_up(watched / "mvds", reader)

        def complete(dataset: str) -> c.Event | None:
            try:
                return wait_complete(reader, dataset, args.files + (1 if dataset == "mvds" else 0), args.timeout)
            except TimeoutError:
                saved = Path(tempfile.gettempdir()) / f"{work.name}-daemon.log"
                shutil.copy(daemon.log_path, saved)
                c.note(f"no complete {dataset} event within {args.timeout:.0f} s; daemon log kept in {saved}")
                report.add(f"strandline {dataset}: TIMED OUT after", args.timeout, "s", ok=False)
                return None

        if "mv" in variants:
            c.note("variant mv: rename the staged folder into the watched dataset")
            spy = profiler(args, daemon, "mv")
            t0 = move_in(staging / "batch", watched / "mvds")
            ev = complete("mvds")
            show_profile(spy, "mv")
            if ev is not None:
                strandline["mv"] = ev.received - t0
                report.add("strandline mv → event", strandline["mv"], "s")
                report.add("  rename → commit", commit_delay(ev, t0), "s")
                report.add("  commit → readable (mv)", strandline["mv"] - commit_delay(ev, t0), "s")
                report.add("  versions of mvds for the burst", ev.data["version"] - 1)

        if "direct" in variants:
            c.note("variant direct: write the files straight into the watched dataset")
            spy = profiler(args, daemon, "direct")
            t0 = time.monotonic()
            c.write_random_files(watched / "directds" / "batch", args.files, lo, hi, args.seed + 1)
            t_last = time.monotonic()
            ev = complete("directds")
            show_profile(spy, "direct")
            report.add("strandline direct: writing the files", t_last - t0, "s")
            if ev is not None:
                strandline["direct"] = ev.received - t_last
                report.add("strandline direct: first write → event", ev.received - t0, "s")
                report.add("strandline direct: last close → event", strandline["direct"], "s")
                report.add("  last close → commit", commit_delay(ev, t_last), "s")
                report.add("  commit → readable (direct)", strandline["direct"] - commit_delay(ev, t_last), "s")
                report.add("  versions of directds for the burst", ev.data["version"])
    finally:
        reader.close()
        daemon.stop()
    log_text = daemon.log_path.read_text(errors="replace")
    report.add("inotify queue overflows (watchdog's log)", log_text.count("filesystem events were lost"))
    report.add("overflows the daemon acted on", log_text.count("watcher overflowed below"))

    if args.no_dvc:
        return
    source = watched / "mvds" / "batch" if "mv" in variants and (watched / "mvds" / "batch").is_dir() else None
    dvc_time = time_dvc_add(args, work, source, lo, hi)
    report.add("dvc add", dvc_time, "s", "~7.8 s")
    for variant, seconds in strandline.items():
        ratio = dvc_time / seconds
        report.add(f"ratio dvc add / strandline {variant}", ratio, "x", f">= {TARGET_RATIO:g}", ratio >= TARGET_RATIO)


def move_in(batch: Path, dataset_dir: Path) -> float:
    """Rename the staged folder ``batch`` into ``dataset_dir`` (what ``mv`` does); the monotonic time of the rename."""
    t0 = time.monotonic()
    os.rename(batch, dataset_dir / batch.name)
    return t0


def wait_complete(reader: c.VersionsReader, dataset: str, files: int, timeout: float) -> c.Event:
    """The first version event of ``dataset`` that counts at least ``files`` files; TimeoutError after ``timeout``."""
    return reader.wait_for(
        lambda e: (
            e.type == "dataset.version.created"
            and e.data.get("dataset") == dataset
            and e.data["totals"]["files"] >= files
        ),
        timeout,
    )


def commit_delay(ev: c.Event, since: float) -> float:
    """From ``since`` (monotonic) to the version's commit (the event's created_at, wall clock)."""
    since_wall = time.time() - (time.monotonic() - since)
    return datetime.fromisoformat(ev.data["created_at"]).timestamp() - since_wall


def profiler(args: argparse.Namespace, daemon: c.DaemonProcess, variant: str) -> c.PySpy | None:
    if args.profile is None:
        return None
    args.profile.mkdir(parents=True, exist_ok=True)
    return c.PySpy(daemon.pid, args.profile / f"burst-{variant}.collapsed.txt")


def show_profile(spy: c.PySpy | None, variant: str) -> None:
    if spy is not None:
        c.note(f"py-spy profile of the daemon, variant {variant} ({spy.out}):\n{spy.stop()}")


def warm_up(folder: Path, reader: c.VersionsReader, dataset: str = "mvds") -> None:
    """One small version first, so the producer's connection and the topics are up before timing."""
    (folder / "warmup.txt").write_bytes(random.randbytes(64))
    reader.wait_for(lambda e: e.type == "dataset.version.created" and e.data.get("dataset") == dataset, 60)


def init_dvc_repo(dvc: Path, repo: Path) -> dict[str, str]:
    """``dvc init --no-scm`` in a new folder, analytics and update checks off; the env to run dvc with."""
    repo.mkdir(parents=True)
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    subprocess.run([str(dvc), "init", "--no-scm", "-q"], cwd=repo, env=env, check=True)
    subprocess.run([str(dvc), "config", "core.analytics", "false"], cwd=repo, env=env, check=True)
    subprocess.run([str(dvc), "config", "core.check_update", "false"], cwd=repo, env=env, check=True)
    return env


def time_dvc(dvc: Path, repo: Path, env: dict[str, str], *args: str) -> float:
    """Wall time of one ``dvc ARGS…`` run in ``repo`` (a subprocess; it must succeed)."""
    c.note(f"dvc {' '.join(args)} …")
    t0 = time.monotonic()
    subprocess.run([str(dvc), *args], cwd=repo, env=env, check=True)
    elapsed = time.monotonic() - t0
    c.note(f"dvc {args[0]} took {elapsed:.2f} s")
    return elapsed


def time_dvc_add(args: argparse.Namespace, work: Path, source: Path | None, lo: int, hi: int) -> float:
    repo = work / "dvc"
    env = init_dvc_repo(args.dvc, repo)
    if source is not None:
        os.rename(source, repo / "batch")  # the same files Strandline just versioned
    else:
        c.write_random_files(repo / "batch", args.files, lo, hi, args.seed)
    elapsed = time_dvc(args.dvc, repo, env, "add", "-q", "batch")
    assert (repo / "batch.dvc").exists(), "dvc add wrote no batch.dvc"
    return elapsed


if __name__ == "__main__":
    main()
