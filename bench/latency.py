"""Detection latency: from a file's close to its version event being readable on Kafka.

How it is measured
  * A fresh temp folder ``watched/`` with one dataset folder ``watched/lat/`` is watched by the
    daemon (``strandline watch watched`` as a subprocess by default, or ``Daemon.run`` in a
    thread of this process with ``--mode thread``), with its own state dir, a short settle
    window (``--settle``, default 0.2 s) and a topic prefix unique to the run.
  * A kafka-python consumer, assigned to every partition of ``<prefix>.versions`` (no group,
    ``fetch_max_wait_ms`` small), reads the events.
  * ``--changes`` times (default 200), one after another: rewrite ``lat/data.bin`` with new
    random bytes (open, write, close), note the time right after ``close()``, and wait until the
    consumer hands over the event ``lat@N`` for that change before making the next one.
  * latency = time the event came out of ``poll()`` - close time - settle window. The settle
    window is the quiet time the daemon waits on purpose, so it is not part of the latency.
    ``--warmup`` changes (default 5) come first and are not counted.
  * Also shown, from the event's ``created_at`` (the daemon's commit time, wall clock):
    close→commit (minus settle) and commit→readable, to tell detection from delivery apart.

Targets: p50 <= 25 ms, p99 <= 100 ms.

Run: .venv/bin/python bench/latency.py [--changes 200] [--settle 0.2] [--mode subprocess|thread] [--json]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from datetime import datetime
from functools import partial
from pathlib import Path

import _common as c

TARGET_P50_MS = 25.0
TARGET_P99_MS = 100.0


def main() -> None:
    p = c.parser(__doc__)
    c.add_kafka_args(p)
    p.add_argument("--changes", type=int, default=200, help="timed single-file changes (default 200)")
    p.add_argument("--warmup", type=int, default=5, help="untimed changes first (default 5)")
    p.add_argument("--settle", type=float, default=0.2, help="settle window in seconds (default 0.2)")
    p.add_argument("--size", type=int, default=4096, help="bytes written per change (default 4096)")
    p.add_argument(
        "--mode",
        choices=["subprocess", "thread"],
        default="subprocess",
        help="run the daemon as `strandline watch` (default) or in a thread of this process",
    )
    p.add_argument("--fetch-max-wait-ms", type=int, default=5, help="consumer fetch_max_wait_ms (default 5)")
    args = p.parse_args()

    report = c.Report(
        "latency: file close → version event readable on Kafka",
        {
            "changes": args.changes,
            "settle_s": args.settle,
            "mode": args.mode,
            "size_bytes": args.size,
            "fetch_max_wait_ms": args.fetch_max_wait_ms,
        },
    )
    work = c.fresh_tempdir("latency")
    try:
        with c.kafka_broker(args.bootstrap) as bootstrap:
            report.params["bootstrap"] = bootstrap
            lat, commit, deliver = run(args, work, bootstrap)
    finally:
        c.remove_tree(work)

    ms = [x * 1000 for x in lat]
    p50, p99 = c.percentile(ms, 50), c.percentile(ms, 99)
    report.add("latency p50", p50, "ms", f"<= {TARGET_P50_MS:g}", p50 <= TARGET_P50_MS)
    report.add("latency p99", p99, "ms", f"<= {TARGET_P99_MS:g}", p99 <= TARGET_P99_MS)
    report.add("latency max", max(ms), "ms")
    report.add("latency min", min(ms), "ms")
    report.add("latency mean", sum(ms) / len(ms), "ms")
    report.add("close→commit p50 (minus settle)", c.percentile([x * 1000 for x in commit], 50), "ms")
    report.add("close→commit p99 (minus settle)", c.percentile([x * 1000 for x in commit], 99), "ms")
    report.add("commit→readable p50", c.percentile([x * 1000 for x in deliver], 50), "ms")
    report.add("commit→readable p99", c.percentile([x * 1000 for x in deliver], 99), "ms")
    report.emit(args.json)


def is_version(subject: str, ev: c.Event) -> bool:
    return ev.type == "dataset.version.created" and ev.subject == subject


def run(args: argparse.Namespace, work: Path, bootstrap: str) -> tuple[list[float], list[float], list[float]]:
    settle: float = args.settle
    mode: str = args.mode
    root = work / "watched"
    (root / "lat").mkdir(parents=True)
    prefix = c.unique_prefix("latency")
    reader = c.VersionsReader(bootstrap, prefix, fetch_max_wait_ms=args.fetch_max_wait_ms)
    stop = threading.Event()
    proc: c.DaemonProcess | None = None
    thread: threading.Thread | None = None
    if mode == "subprocess":
        proc = c.DaemonProcess(root, work, c.daemon_env(bootstrap, prefix, settle, work / "state"))
        proc.wait_for_log("started:", 60)
    else:
        from daemon.app import Daemon, Target
        from schemas.config import KafkaConfig, StrandlineConfig

        cfg = StrandlineConfig(
            state_dir=work / "state", settle_seconds=settle, kafka=KafkaConfig(bootstrap=bootstrap, topic_prefix=prefix)
        )
        daemon = Daemon(cfg, Target.resolve(cfg, root))
        thread = threading.Thread(target=daemon.run, args=(stop,), name="daemon", daemon=True)
        thread.start()
    c.note(f"daemon running ({mode}); topic {reader.topic}")

    target = root / "lat" / "data.bin"
    rng = os.urandom
    seq = 0
    latencies: list[float] = []
    to_commit: list[float] = []
    to_read: list[float] = []
    total = args.warmup + args.changes
    try:
        for i in range(total):
            payload = rng(args.size)
            with open(target, "wb") as fh:
                fh.write(payload)
            closed = time.monotonic()
            closed_wall = time.time()
            seq += 1
            subject = f"lat@{seq}"
            ev = reader.wait_for(partial(is_version, subject), 30)
            read_wall = closed_wall + (ev.received - closed)
            if i >= args.warmup:
                created = datetime.fromisoformat(ev.data["created_at"]).timestamp()
                latencies.append(ev.received - closed - settle)
                to_commit.append(created - closed_wall - settle)
                to_read.append(read_wall - created)
            if (i + 1) % 50 == 0:
                c.note(f"{i + 1}/{total} changes")
    finally:
        reader.close()
        if proc is not None:
            proc.stop()
        if thread is not None:
            stop.set()
            thread.join(30)
    return latencies, to_commit, to_read


if __name__ == "__main__":
    main()
