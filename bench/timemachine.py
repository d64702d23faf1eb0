"""Time machine vs DVC, same data, same run: add, restore (checkout) and append storage (issue 6).

How it is measured
  * One fresh run folder: ``watched/`` (the daemon's datasets ``warm``, ``big`` and ``small``,
    each with ``snapshot = "copy"``, or ``"reflink"`` with ``--reflink``), ``staging/`` (outside
    the watched root), ``dvc/`` (``dvc init --no-scm``; DVC's default cache type
    ``reflink,copy``, so copy on ext4 and reflink on XFS), ``state/`` (the daemon's catalog and
    content store). ``strandline watch -c strandline.toml`` runs as a subprocess, settle
    ``--settle`` (0.2 s), topic prefix unique to the run; one small version of ``warm`` first,
    so Kafka connections are up before anything is timed.
  * **add, 1 GiB** (``--reps-big`` times): ``sync``; a 1 GiB file of random bytes is written
    into ``staging/`` (not timed); t0; it is renamed to ``watched/big/rN.bin``. Strandline time =
    t0 until a kafka-python consumer reads the ``big`` version event and its
    ``snapshot.restorable`` is true (the bytes were in the store before the event was
    published). Then ``sync``; the same bytes (same seed) are written fresh into ``dvc/`` and
    ``dvc add big-rN.bin`` is timed as a subprocess. Both tools read data that was just written
    (dirty in the page cache, nothing else dirty), so page-cache state is the same for both.
  * **add, small files** (``--reps-small`` times): the same with ``--files`` (20,000) files of
    1..8 KiB in one folder, renamed to ``watched/small/rN``; ``dvc add small-rN``.
  * **restore vs checkout** (``--restore-reps`` times, after the daemon is stopped): ``sync``;
    ``strandline restore big@1 --to DIR`` (and ``small@1``), a subprocess, vs ``dvc checkout``
    of the same content: the workspace copy (``big-r1.bin``, ``small-r1``) is first moved out
    of the DVC repo (a rename, not a deletion), then ``dvc checkout big-r1.bin.dvc`` is timed.
    The restored trees are compared (XXH3-128 of every file) once.
  * **append storage** (ext4 run only): ``bench/append_storage.py``'s measurement, called:
    a 200 MiB CSV, ten appends of 1 MiB; Strandline's content store growth (``ContentStore.put``
    after each append) vs DVC's cache growth (``dvc add`` after each), each over the bytes
    appended. Target: Strandline <= 1.2x.
  * ratio = DVC time / Strandline time, per repetition; the medians are compared with the
    target (>= 5x for both add cases).
  * **the same durability** (a figure, not the target): DVC never syncs, so after ``dvc add``
    its cache may still be lost with the page cache, while Strandline publishes a version only
    once its bytes are on disk. ``dvc add`` + an fsync of every file it put in its cache (and
    of their folders), timed right after it, is what the same promise costs DVC.
  * ``--profile DIR`` records the daemon with py-spy during each add.

``--reflink``: runs everything on a loop-mounted XFS image made with ``mkfs.xfs -m reflink=1``
inside a private mount namespace (``unshare -m``: the mount vanishes with the process), with
``snapshot = "reflink"``. Needs root and mkfs.xfs; otherwise it says why and exits. Files above
the store's 8 MiB threshold are cloned whole; smaller files are copied into packs.

Mass deletion on this disk slows the next mass creation for a while, so every run creates its
data fresh in new folders and deletes all of it only at the end, after the figures are taken.

Run: .venv/bin/python bench/timemachine.py [--cases add-big,add-small,restore,append]
         [--reps-big 2] [--reps-small 3] [--restore-reps 2] [--reflink] [--profile DIR] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import _common as c
import append_storage
import burst

MiB = 1024 * 1024
TARGET_ADD = 5.0
CASES = ("add-big", "add-small", "restore", "append")
INSIDE_NS = "STRANDLINE_BENCH_TIMEMACHINE_NS"  # set on the re-executed child in its mount namespace


def main() -> None:
    p = c.parser(__doc__)
    c.add_kafka_args(p)
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)} (default all)")
    p.add_argument("--big-mib", type=int, default=1024, help="size of the big file, MiB (default 1024)")
    p.add_argument("--files", type=int, default=20_000, help="small files per add (default 20000)")
    p.add_argument("--min-kib", type=int, default=1, help="smallest small file, KiB (default 1)")
    p.add_argument("--max-kib", type=int, default=8, help="largest small file, KiB (default 8)")
    p.add_argument("--reps-big", type=int, default=2, help="1 GiB adds per tool (default 2)")
    p.add_argument("--reps-small", type=int, default=3, help="small-file adds per tool (default 3)")
    p.add_argument("--restore-reps", type=int, default=2, help="restores/checkouts per case and tool (default 2)")
    p.add_argument("--settle", type=float, default=0.2, help="settle window in seconds (default 0.2)")
    p.add_argument("--base-mib", type=int, default=200, help="append case: CSV size before the appends (200)")
    p.add_argument("--appends", type=int, default=10, help="append case: appends (default 10)")
    p.add_argument("--append-mib", type=int, default=1, help="append case: MiB per append (default 1)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for one version event")
    p.add_argument("--seed", type=int, default=6, help="random seed for the data")
    p.add_argument(
        "--dvc", type=Path, default=burst.PEERS / "bin" / "dvc", help="dvc executable (default bench/.venv-peers)"
    )
    p.add_argument("--reflink", action="store_true", help="run on a loop-mounted XFS with reflink (root only)")
    p.add_argument("--xfs-gib", type=int, default=16, help="--reflink: size of the sparse XFS image (default 16)")
    p.add_argument("--keep", action="store_true", help="leave the run's folders in place (prints where)")
    p.add_argument("--profile", type=Path, metavar="DIR", help="py-spy the daemon during each add (bench/.venv-peers)")
    args = p.parse_args()
    cases = [x.strip() for x in args.cases.split(",") if x.strip()]
    if bad := set(cases) - set(CASES):
        p.error(f"unknown cases: {', '.join(sorted(bad))}")
    if "restore" in cases and not {"add-big", "add-small"} & set(cases):
        p.error("restore needs add-big or add-small (it restores what they versioned)")
    if not args.dvc.exists():
        p.error(f"{args.dvc} not found: run `bash bench/setup_peers.sh` first")
    if args.reflink and os.environ.get(INSIDE_NS) is None:
        reexec_in_namespace(args)  # does not return
    fs = "xfs-reflink" if args.reflink else "ext4 (copy)"
    report = c.Report(
        "timemachine: Strandline version-with-snapshot vs DVC, same data, same run",
        {
            "filesystem": fs,
            "snapshot": "reflink" if args.reflink else "copy",
            "big_mib": args.big_mib,
            "files": args.files,
            "reps": f"big {args.reps_big}, small {args.reps_small}, restore {args.restore_reps}",
            "settle_s": args.settle,
        },
    )
    with c.kafka_broker(args.bootstrap) as bootstrap, run_folder(args) as work:
        report.params["bootstrap"] = bootstrap
        run(args, cases, work, bootstrap, report)
    report.emit(args.json)


# -- where the run happens ------------------------------------------------------------------


def reflink_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "not root (a loop mount needs it)"
    for tool in ("mkfs.xfs", "unshare", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    return None


def reexec_in_namespace(args: argparse.Namespace) -> None:
    """Run this script again in a private mount namespace, where it mounts the XFS image."""
    why = reflink_unavailable()
    if why is not None:
        print(f"reflink mode skipped: {why}; run without --reflink for the ext4 (copy) figures", file=sys.stderr)
        if args.json:
            print(json.dumps({"benchmark": "timemachine", "skipped": f"reflink: {why}"}))
        sys.exit(0)
    env = dict(os.environ, **{INSIDE_NS: "1"})
    cmd = ["unshare", "--mount", "--propagation", "private", sys.executable, *sys.argv]
    sys.exit(subprocess.run(cmd, env=env, check=False).returncode)


@contextlib.contextmanager
def run_folder(args: argparse.Namespace) -> Iterator[Path]:
    """A fresh folder on /tmp's disk, or (``--reflink``) on an XFS image mounted for this run."""
    if not args.reflink:
        with c.run_folder("timemachine", args.keep) as work:
            yield work
        return
    holder = c.fresh_tempdir("timemachine-xfs")
    image, mount = holder / "xfs.img", holder / "mnt"
    mount.mkdir()
    try:
        with open(image, "wb") as fh:
            fh.truncate(args.xfs_gib * 1024 * MiB)  # sparse: only what the run writes takes space
        subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
        try:
            c.note(f"XFS (reflink=1) image {image} mounted on {mount}")
            with c.run_folder("timemachine", args.keep, mount) as work:
                yield work
        finally:
            subprocess.run(["umount", str(mount)], check=False)
    finally:
        shutil.rmtree(holder, ignore_errors=True)


# -- the run --------------------------------------------------------------------------------


class Daemon:
    """The watch daemon over the run's datasets, its Kafka reader and its config."""

    def __init__(self, args: argparse.Namespace, work: Path, bootstrap: str) -> None:
        self.work = work
        self.watched = work / "watched"
        mode = "reflink" if args.reflink else "copy"
        lines = []
        for name in ("warm", "big", "small"):
            (self.watched / name).mkdir(parents=True)
            lines += ["[[datasets]]", f'name = "{name}"', f'root = "{self.watched / name}"', f'snapshot = "{mode}"', ""]
        self.config = work / "strandline.toml"
        self.config.write_text("\n".join(lines))
        self.prefix = c.unique_prefix("timemachine")
        self.env = c.daemon_env(bootstrap, self.prefix, args.settle, work / "state")
        self.reader = c.VersionsReader(bootstrap, self.prefix)
        self.proc = c.DaemonProcess(None, work, self.env, ["-c", str(self.config)])
        self.proc.wait_for_log("started:", 60)
        burst.warm_up(self.watched / "warm", self.reader, "warm")

    def version_event(self, dataset: str, version: int, timeout: float) -> c.Event:
        return self.reader.wait_for(
            lambda e: (
                e.type == "dataset.version.created"
                and e.data.get("dataset") == dataset
                and e.data.get("version") == version
            ),
            timeout,
        )

    def stop(self) -> None:
        self.reader.close()
        self.proc.stop()

    def restore(self, ref: str, to: Path) -> float:
        exe = Path(sys.executable).parent / "strandline"
        cmd = [str(exe), "restore", ref, "--to", str(to), "-c", str(self.config), "--json"]
        c.note(f"strandline restore {ref} …")
        t0 = time.monotonic()
        out = subprocess.run(cmd, env=self.env, check=True, capture_output=True, text=True)
        elapsed = time.monotonic() - t0
        c.note(f"strandline restore took {elapsed:.2f} s: {out.stdout.strip()}")
        return elapsed


def run(args: argparse.Namespace, cases: list[str], work: Path, bootstrap: str, report: c.Report) -> None:
    staging, repo = work / "staging", work / "dvc"
    staging.mkdir()
    env = burst.init_dvc_repo(args.dvc, repo)
    daemon = Daemon(args, work, bootstrap)
    lo, hi = args.min_kib * 1024, args.max_kib * 1024
    big = args.big_mib * MiB

    def write_big(path: Path, rep: int) -> None:
        t = time.monotonic()
        c.write_random_file(path, big, args.seed * 1000 + rep)
        c.note(f"wrote {path.name} ({args.big_mib} MiB) in {time.monotonic() - t:.1f} s")

    def write_small(path: Path, rep: int) -> None:
        t = time.monotonic()
        size = c.write_random_files(path, args.files, lo, hi, args.seed * 1000 + 500 + rep)
        c.note(f"wrote {args.files} files ({size / MiB:.1f} MiB) in {time.monotonic() - t:.1f} s")

    try:
        if "add-big" in cases:
            add_case(args, "big", args.reps_big, daemon, report, staging, repo, env, write_big, ".bin")
        if "add-small" in cases:
            add_case(args, "small", args.reps_small, daemon, report, staging, repo, env, write_small, "")
    finally:
        daemon.stop()
    if "restore" in cases:
        for case in ("big", "small"):
            if f"add-{case}" in cases:
                restore_case(args, case, daemon, report, work, repo, env)
    report_store(report, work / "state" / "store", repo / ".dvc" / "cache")
    if "append" in cases:
        if args.reflink:
            report.add("append storage", "skipped with --reflink (run without it)")
        else:
            append_case(args, work, report)


def add_case(
    args: argparse.Namespace,
    case: str,
    reps: int,
    daemon: Daemon,
    report: c.Report,
    staging: Path,
    repo: Path,
    env: dict[str, str],
    write: Callable[[Path, int], None],
    suffix: str,
) -> None:
    """``reps`` times: the same data lands in Strandline's dataset, then (fresh) in DVC's repo."""
    ours: list[float] = []
    theirs: list[float] = []
    durable: list[float] = []  # dvc add, then its cache made durable
    label = f"{args.big_mib} MiB file" if case == "big" else f"{args.files} files"
    for rep in range(1, reps + 1):
        name = f"r{rep}{suffix}"
        os.sync()  # nothing dirty but the data about to be written
        write(staging / name, rep)
        spy = burst.profiler(args, daemon.proc, f"{case}-r{rep}")
        t0 = time.monotonic()
        os.rename(staging / name, daemon.watched / case / name)
        ev = daemon.version_event(case, rep, args.timeout)
        burst.show_profile(spy, f"{case}-r{rep}")
        snap = ev.data.get("snapshot") or {}
        if not snap.get("restorable"):
            raise RuntimeError(f"{case}@{rep} is not restorable: {snap}")
        ours.append(ev.received - t0)
        c.note(
            f"strandline {case}@{rep}: {ours[-1]:.2f} s (rename → commit {burst.commit_delay(ev, t0):.2f} s), "
            f"snapshot {snap.get('policy')}"
        )
        os.sync()
        dvc_name = f"{case}-{name}"
        write(repo / dvc_name, rep)
        since = time.time()
        theirs.append(burst.time_dvc(args.dvc, repo, env, "add", "-q", dvc_name))
        durable.append(theirs[-1] + fsync_new_files(repo / ".dvc" / "cache", since))
    add_series(report, f"strandline add {label} → event, restorable", ours)
    add_series(report, f"dvc add {label}", theirs)
    ratios = [d / s for d, s in zip(theirs, ours, strict=True)]
    report.add(f"  ratios dvc/strandline, add {label}", " ".join(f"{r:.2f}" for r in ratios), "x")
    ratio = statistics.median(theirs) / statistics.median(ours)
    report.add(f"ratio add {label}, medians", ratio, "x", f">= {TARGET_ADD:g}", ratio >= TARGET_ADD)
    add_series(report, f"dvc add {label} + fsync of what it cached (our event's durability)", durable)
    same = statistics.median(durable) / statistics.median(ours)
    report.add(f"  ratio with the same durability, {label}, medians", same, "x")


def fsync_new_files(cache: Path, since: float) -> float:
    """Seconds to fsync the files ``dvc add`` put in its cache (and their folders).

    DVC never syncs: after ``dvc add`` its cache is in the page cache only, where Strandline's
    event is published once the bytes are on disk. This is what the same promise costs DVC.
    """
    from daemon.durability import fsync_dir

    t0 = time.monotonic()
    folders: set[Path] = set()
    for path in cache.rglob("*"):
        if path.is_file() and path.stat().st_mtime >= since - 1:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            folders.add(path.parent)
    for folder in folders:
        fsync_dir(folder)
    return time.monotonic() - t0


def add_series(report: c.Report, name: str, values: list[float]) -> None:
    report.add(name + ", median", statistics.median(values), "s")
    if len(values) > 1:
        report.add(f"  {name}, runs", " / ".join(f"{v:.2f}" for v in values), "s")


def restore_case(
    args: argparse.Namespace, case: str, daemon: Daemon, report: c.Report, work: Path, repo: Path, env: dict[str, str]
) -> None:
    """``strandline restore CASE@1`` vs ``dvc checkout`` of the same content, ``--restore-reps`` times each."""
    label = f"{args.big_mib} MiB file" if case == "big" else f"{args.files} files"
    dvc_name = "big-r1.bin" if case == "big" else "small-r1"
    moved = work / "moved-out"
    moved.mkdir(exist_ok=True)
    ours: list[float] = []
    theirs: list[float] = []
    for rep in range(1, args.restore_reps + 1):
        os.sync()
        ours.append(daemon.restore(f"{case}@1", work / f"restore-{case}-{rep}"))
        os.rename(repo / dvc_name, moved / f"{dvc_name}.{rep}")  # out of the workspace, not deleted
        os.sync()
        theirs.append(burst.time_dvc(args.dvc, repo, env, "checkout", "-q", f"{dvc_name}.dvc"))
    same = tree_digest(work / f"restore-{case}-1" / ("r1.bin" if case == "big" else "r1"))
    same_dvc = tree_digest(repo / dvc_name)
    add_series(report, f"strandline restore {label}", ours)
    add_series(report, f"dvc checkout {label}", theirs)
    ratio = statistics.median(theirs) / statistics.median(ours)
    report.add(f"ratio checkout/restore {label}, medians", ratio, "x")
    report.add(f"  same bytes restored by both ({label})", "yes" if same == same_dvc else "NO", ok=same == same_dvc)


def tree_digest(path: Path) -> str:
    """XXH3-128 over (relative path, file hash) of every file under ``path`` (or of one file)."""
    import xxhash

    from daemon.fingerprint import hash_file

    if path.is_file():
        return hash_file(path)[0]
    outer = xxhash.xxh3_128()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        outer.update(f"{file.relative_to(path)}\0{hash_file(file)[0]}\n".encode())
    return outer.hexdigest()


def report_store(report: c.Report, store: Path, cache: Path) -> None:
    if store.is_dir() and cache.is_dir():
        ours, theirs = append_storage.tree_bytes(store), append_storage.tree_bytes(cache)
        report.add("content store vs DVC cache after the adds", f"{ours / MiB:.1f} / {theirs / MiB:.1f}", "MiB")


def append_case(args: argparse.Namespace, work: Path, report: c.Report) -> None:
    import random

    folder = work / "append"
    folder.mkdir()
    base = folder / "base.csv"
    c.note(f"append case: writing a {args.base_mib} MiB CSV …")
    append_storage.write_base(base, args.base_mib * MiB, random.Random(1))
    c.note(f"append case: Strandline's store, version 0 then {args.appends} appends …")
    append_storage.run_appends(folder, base, args, False, report)
    c.note(f"append case: DVC, dvc add of version 0 then after each of {args.appends} appends …")
    append_storage.dvc_appends(folder, base, args, args.dvc, report)
    ours = next(f.value for f in report.figures if f.name == "append: new store bytes / appended")
    theirs = next(f.value for f in report.figures if f.name == "dvc: new cache bytes / appended")
    assert isinstance(ours, float) and isinstance(theirs, float)
    report.add("append storage: dvc / strandline", theirs / ours, "x")


if __name__ == "__main__":
    main()
