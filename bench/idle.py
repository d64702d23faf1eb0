"""Idle cost: memory and CPU of the daemon watching 100,000 files in 1,000 folders, nothing changing.

How it is measured
  * A fresh temp folder ``watched/`` holds ``--datasets`` dataset folders (default 10), with
    ``--dirs`` folders in all (default 1,000, spread evenly) and ``--files`` files in all
    (default 100,000, spread evenly over the folders), each ``--file-size`` bytes of random data
    (default 1 KiB).
  * ``strandline watch watched`` starts as a subprocess with a fresh state dir and a unique
    topic prefix on a real Kafka broker. The start-up reconcile versions every dataset; the run
    waits until the catalog holds a version of every dataset covering all the files and the
    outbox is empty (every event delivered), plus ``--quiet`` seconds (default 3).
  * Then, for ``--window`` seconds (default 30) with nothing changing: CPU = the growth of
    utime+stime in /proc/PID/stat (all threads; plus any child processes) / wall time, as a
    percentage of one core (those count 1/CLK_TCK ticks, so the same is also shown from the
    threads' /proc/PID/task/TID/schedstat, in nanoseconds); RSS = VmRSS of /proc/PID/status
    (plus children), sampled every second: the last sample and the largest are shown. VmHWM (the peak since start, i.e.
    during the reconcile), thread count and inotify watch count are shown too.
  * The window leaves out the periodic reconcile (every ``reconcile_interval_seconds``,
    default 300 s), which re-lists every root. Its cost is shown apart: after the daemon is
    stopped, ``strandline scan`` of the unchanged tree with the same catalog, run twice (the
    first may re-hash files written too recently for their mtime to be trusted; the second is
    the steady state), CPU from wait4's rusage less that of a scan of an empty folder (the
    interpreter's start-up and imports), and that CPU spread over the interval.

Targets: RSS <= 150 MiB, CPU <= 1 % (of one core, averaged over the window).

Creating 100,000 files takes a while on this disk and deleting them slows the next mass
creation: the data is created fresh in a new folder per run and deleted only at the end.

Run: .venv/bin/python bench/idle.py [--files 100000] [--dirs 1000] [--window 30] [--json]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import _common as c

from schemas.config import StrandlineConfig

TARGET_RSS_MIB = 150.0
TARGET_CPU_PCT = 1.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
STRANDLINE = Path(sys.executable).parent / "strandline"


def main() -> None:
    p = c.parser(__doc__)
    c.add_kafka_args(p)
    p.add_argument("--files", type=int, default=100_000, help="files in all (default 100000)")
    p.add_argument("--dirs", type=int, default=1000, help="folders holding them (default 1000)")
    p.add_argument("--datasets", type=int, default=10, help="dataset folders the folders are spread over")
    p.add_argument("--file-size", type=int, default=1024, help="bytes per file (default 1024)")
    p.add_argument("--window", type=float, default=30.0, help="idle measurement window, seconds (default 30)")
    p.add_argument("--quiet", type=float, default=3.0, help="seconds to let the daemon calm down first")
    p.add_argument("--timeout", type=float, default=240.0, help="longest wait for the start-up reconcile")
    p.add_argument(
        "--no-rescan",
        action="store_true",
        help="skip timing one reconcile of the unchanged tree (`strandline scan`) at the end",
    )
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy (bench/.venv-peers) records the idle window and one re-scan into DIR",
    )
    args = p.parse_args()
    if args.dirs % args.datasets or args.files % args.dirs:
        p.error("--dirs must be a multiple of --datasets and --files a multiple of --dirs")

    report = c.Report(
        "idle: daemon watching many files, nothing changing",
        {
            "files": args.files,
            "dirs": args.dirs,
            "datasets": args.datasets,
            "file_size": args.file_size,
            "window_s": args.window,
        },
    )
    work = c.fresh_tempdir("idle")
    try:
        with c.kafka_broker(args.bootstrap) as bootstrap:
            report.params["bootstrap"] = bootstrap
            run(args, work, bootstrap, report)
    finally:
        c.note("deleting the run's files")
        c.remove_tree(work)
    report.emit(args.json)


def make_tree(args: argparse.Namespace, root: Path) -> None:
    t0 = time.monotonic()
    dirs_per_ds = args.dirs // args.datasets
    per_dir = args.files // args.dirs
    pool = os.urandom(args.file_size * 64)
    n = 0
    for ds in range(args.datasets):
        for d in range(dirs_per_ds):
            folder = root / f"ds{ds:02d}" / f"d{d:04d}"
            folder.mkdir(parents=True)
            for _ in range(per_dir):
                start = (n * 7919) % (len(pool) - args.file_size)
                (folder / f"f{n:06d}.bin").write_bytes(pool[start : start + args.file_size])
                n += 1
    c.note(f"created {n} files in {args.dirs} folders in {time.monotonic() - t0:.1f} s")


def reconciled(catalog: Path, datasets: int, files: int) -> bool:
    """Every dataset has a version, together they cover every file, and the outbox is empty."""
    if not catalog.exists():
        return False
    try:
        db = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=1)
        try:
            latest = db.execute(
                "SELECT v.files FROM versions v JOIN (SELECT dataset_id, MAX(seq) AS seq FROM versions"
                " GROUP BY dataset_id) m ON v.dataset_id = m.dataset_id AND v.seq = m.seq"
            ).fetchall()
            backlog = db.execute("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return False
    return len(latest) >= datasets and sum(r[0] for r in latest) >= files and backlog == 0


def family(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat(5))
    return total


def cpu_ns(pids: list[int]) -> int:
    """On-CPU nanoseconds of every live thread (/proc/PID/task/TID/schedstat): finer than ticks."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total


def status_kib(pids: list[int], key: str) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def inotify_watches(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        count += text.count("inotify wd:")
    return count


def run(args: argparse.Namespace, work: Path, bootstrap: str, report: c.Report) -> None:
    root = work / "watched"
    make_tree(args, root)
    prefix = c.unique_prefix("idle")
    state = work / "state"
    daemon = c.DaemonProcess(root, work, c.daemon_env(bootstrap, prefix, 1.0, state))
    try:
        t0 = time.monotonic()
        daemon.wait_for_log("started:", 60)
        c.note("daemon started; waiting for the start-up reconcile and its events …")
        deadline = t0 + args.timeout
        while not reconciled(state / "catalog.sqlite", args.datasets, args.files):
            if daemon.proc.poll() is not None:
                raise RuntimeError(f"daemon exited; see {daemon.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"start-up reconcile not done within {args.timeout:.0f} s")
            time.sleep(0.25)
        report.add("start-up reconcile + delivery", time.monotonic() - t0, "s")
        c.note(f"reconciled in {time.monotonic() - t0:.1f} s; letting it calm down for {args.quiet:.0f} s")
        time.sleep(args.quiet)

        pids = family(daemon.pid)
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
        spy = c.PySpy(daemon.pid, args.profile / "idle.collapsed.txt") if args.profile else None
        c.note(f"measuring {args.window:.0f} s of idling (pids {pids}) …")
        ticks0, ns0, wall0 = cpu_ticks(pids), cpu_ns(pids), time.monotonic()
        rss: list[int] = []
        while time.monotonic() - wall0 < args.window:
            pids = family(daemon.pid)
            rss.append(status_kib(pids, "VmRSS"))
            time.sleep(min(1.0, max(0.0, args.window - (time.monotonic() - wall0))))
        pids = family(daemon.pid)
        ticks1, ns1, wall1 = cpu_ticks(pids), cpu_ns(pids), time.monotonic()
        rss.append(status_kib(pids, "VmRSS"))
        if spy is not None:
            c.note(f"py-spy profile of the idle window ({spy.out}):\n{spy.stop()}")

        cpu_pct = (ticks1 - ticks0) / CLK_TCK / (wall1 - wall0) * 100
        rss_mib = rss[-1] / 1024
        report.add("RSS at end of window", rss_mib, "MiB", f"<= {TARGET_RSS_MIB:g}", rss_mib <= TARGET_RSS_MIB)
        report.add("RSS max in window", max(rss) / 1024, "MiB")
        report.add("VmHWM (peak since start)", status_kib(pids, "VmHWM") / 1024, "MiB")
        report.add("CPU over window", cpu_pct, "% of a core", f"<= {TARGET_CPU_PCT:g}", cpu_pct <= TARGET_CPU_PCT)
        report.add("CPU time in window (utime+stime)", (ticks1 - ticks0) / CLK_TCK, "s")
        report.add("CPU time in window (schedstat)", (ns1 - ns0) / 1e9, "s")
        report.add("CPU over window (schedstat)", (ns1 - ns0) / 1e9 / (wall1 - wall0) * 100, "% of a core")
        report.add("processes (daemon + children)", len(pids))
        report.add("threads", status_kib([daemon.pid], "Threads"))
        report.add("inotify watches", inotify_watches(daemon.pid))
        report.add("versions created", len(daemon.versions()))
    finally:
        daemon.stop()
    if args.no_rescan:
        return
    # What the periodic reconcile (default every 300 s) costs on this tree: one `strandline scan`
    # of the unchanged tree with the same catalog, less the CLI's start-up (`strandline --version`).
    env = c.daemon_env(bootstrap, prefix, 1.0, state)
    scan = [str(STRANDLINE), "scan", str(root), "--no-publish"]
    first_s, _ = cpu_of(scan, work, env)  # may re-hash files whose mtime was too recent to trust
    scan_s, scan_wall = cpu_of(scan, work, env)
    empty = work / "empty"
    empty.mkdir()
    base_env = c.daemon_env(bootstrap, prefix, 1.0, work / "state-empty")
    base_s, base_wall = cpu_of([str(STRANDLINE), "scan", str(empty), "--no-publish"], work, base_env)
    per_pass = max(0.0, scan_s - base_s)
    report.add("one reconcile of the unchanged tree (CPU)", per_pass, "s")
    report.add("  same, wall", max(0.0, scan_wall - base_wall), "s")
    report.add("  first scan after the daemon (CPU)", max(0.0, first_s - base_s), "s")
    if args.profile is not None:
        out = args.profile / "rescan.collapsed.txt"
        subprocess.run(
            [str(c.PY_SPY), "record", "--rate", "250", "--format", "raw", "--output", str(out), "--", *scan],
            cwd=work,
            env=env,
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        c.note(f"py-spy profile of one reconcile of the unchanged tree ({out}):\n{c.summarize_collapsed(out)}")
    config = StrandlineConfig()
    report.add(
        f"reconcile amortized over {config.reconcile_interval_seconds:g} s",
        per_pass / config.reconcile_interval_seconds * 100,
        "% of a core",
    )


def cpu_of(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """CPU seconds (user+sys) and wall seconds of one command run to its end."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}")
    return usage.ru_utime + usage.ru_stime, time.monotonic() - t0


if __name__ == "__main__":
    main()
