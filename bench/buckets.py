"""Buckets: a prefix of 100,000 small objects; first listing, steady-state poll, detection latency.

How it is measured
  * A moto server (``scripts/s3_server.py``, the project's test S3 server: in memory, one
    process) starts for the run in a new temp dir, with a fake key pair. ``--objects``
    (default 100,000) objects of 64..200 bytes are uploaded to ``s3://BUCKET/data/`` by
    ``--threads`` boto3 threads (setup, not measured), keys
    ``data/part-NNN/obj-NNNNNN.EXT``, 1,000 to a part. ``--ext bin`` (default): random
    bytes, versioned by hash only; ``--ext csv``: small CSV tables, so every version is also
    profiled (much slower on big prefixes: see bench/README.md).
  * Every measured step runs in a fresh child process (this script with ``--child``), so the
    upload's memory does not count: wall time, CPU of the child (utime+stime, all threads),
    peak RSS (the child's VmHWM, and the same after its imports and set-up, before the step),
    and the requests the S3 server logged during the step (LIST pages, GETs of objects, HEADs),
    plus the server's own CPU. The S3 server and the child share the 2 cores.
  * **First full pass**: what the daemon does at start for a bucket dataset it has never
    seen: ``Daemon.scan`` (the code of ``strandline scan --no-publish``), one reconcile of the
    dataset with an empty catalog: list the prefix, GET and hash every object, commit one
    version (events go to the outbox, not timed here).
  * **Steady-state poll**, with that catalog: one ``BucketPoller._compare`` (the paged listing
    merged with the catalog's stat cache, what every poll does), timed alone; then the keys it
    found are handed to the engine with their listed stats (``note_listed``) and one versioning
    pass runs (``process_due(ignore_settle=True)``), timed apart. Once with nothing changed, once
    after ``--changes`` (default 10) objects were overwritten. The child's S3 clients are made and
    used once, and the engine's view of the dataset is built (``prepare``, what a daemon does at
    start; timed apart), before the timed part.
  * **Detection latency** (needs Kafka, see bench/README.md): ``strandline watch --config``
    runs as a subprocess on that catalog and bucket, with settle ``--settle`` (default 0.2 s),
    the default periodic reconcile (300 s) and a topic prefix unique to the run; timing starts
    once its start-up reconcile and first listing are done and its outbox is empty (scraped
    from its /metrics). Latency = from ``put_object`` returning to the moment a kafka-python
    consumer reads the ``dataset.version.created`` event whose changes hold the key.
    - poll: the dataset is polled at ``--interval`` (default: the [s3] default, 10 s);
      ``--poll-samples`` (20) new objects are uploaded at random gaps of 0.5..1.5 intervals,
      each at a random part of the prefix, without waiting for their events (an event may
      hold several).
    - notifications: ``detect = "notifications"``; after each upload the benchmark itself
      publishes the S3 event JSON (the AWS format MinIO's Kafka target writes) to the
      notification topic, as the store would; ``--notify-samples`` (50) uploads, each after
      the previous one's event plus ``settle + 0.3..0.6 s``, so none coalesce. Target: p99
      minus the settle window <= 250 ms.
    Each daemon is then stopped with SIGTERM; the time to its clean exit is shown ("-" when it
    had to be killed after ``--timeout``).

What the listing costs: S3 has no "what changed since" call, so every poll lists the whole
prefix, one LIST request per 1,000 keys (100 at 100,000 objects); only the work after the
listing (HEAD, GET, hash, commit) can follow the changes. moto answers a LIST page far more
slowly than S3 does (it filters and sorts every key of the bucket for each page), so listing
wall times here are moto's; the daemon's own CPU for them is shown beside them (the client side
of a listing costs the same against S3).

Run: .venv/bin/python bench/buckets.py [--objects 100000] [--ext bin|csv] [--changes 10] [--settle 0.2]
     [--interval 10] [--poll-samples 20] [--notify-samples 50] [--no-latency] [--profile DIR] [--json]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import _common as c

BUCKET = "strandline-bench"
PREFIX = "data/"
DATASET = "lake"
PER_PART = 1000
TARGET_NOTIFY_P99_MS = 250.0
STRANDLINE = Path(sys.executable).parent / "strandline"


# -- the objects ----------------------------------------------------------------------------


def object_rel(i: int, ext: str) -> str:
    return f"part-{i // PER_PART:03}/obj-{i:06}.{ext}"


def object_body(rng: random.Random, ext: str) -> bytes:
    """64..200 bytes: a small CSV table (header and 2..5 rows) or random bytes."""
    if ext == "bin":
        return rng.randbytes(rng.randint(64, 200))
    rows = ["id,amount,label"]
    while True:
        row = f"{rng.randrange(10**6)},{rng.uniform(0, 1000):.4f},{rng.choice('abcdefgh')}"
        if len("\n".join([*rows, row])) + 1 > 200:
            break
        rows.append(row)
        if len(rows) > 2 and len("\n".join(rows)) + 1 >= 64 and rng.random() < 0.4:
            break
    return ("\n".join(rows) + "\n").encode()


def s3_client(endpoint: str, pool: int = 10) -> Any:
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    return boto3.client("s3", endpoint_url=endpoint, config=Config(max_pool_connections=pool))


def upload(client: Any, count: int, ext: str, threads: int, seed: int) -> None:
    def put(part: int) -> None:
        rng = random.Random(seed * 1_000_003 + part)  # per part: same bytes whatever the thread order
        for i in range(part * PER_PART, min(count, (part + 1) * PER_PART)):
            client.put_object(Bucket=BUCKET, Key=PREFIX + object_rel(i, ext), Body=object_body(rng, ext))

    parts = range(-(-count // PER_PART))
    done = 0
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(put, parts):
            done += 1
            if done % 10 == 0:
                c.note(f"  uploaded {min(done * PER_PART, count):,} objects")


# -- configuration ----------------------------------------------------------------------------


def config_dict(spec: dict[str, Any]) -> dict[str, Any]:
    """The daemon's configuration for a step, as the TOML file would hold it."""
    dataset: dict[str, Any] = {"name": DATASET, "root": f"s3://{BUCKET}/{PREFIX}", "settle_seconds": spec["settle"]}
    s3: dict[str, Any] = {"endpoint_url": spec["endpoint"]}
    if spec.get("interval") is not None:
        s3["poll_interval_seconds"] = spec["interval"]
    if spec.get("detect") == "notifications":
        dataset["detect"] = "notifications"
        s3["notifications"] = {"topic": spec["notify_topic"], "group_id": f"{spec['prefix']}-notifications"}
    out: dict[str, Any] = {
        "state_dir": spec["state_dir"],
        "settle_seconds": spec["settle"],
        "kafka": {"bootstrap": spec.get("bootstrap") or "127.0.0.1:9", "topic_prefix": spec.get("prefix") or "bench"},
        "s3": s3,
        "datasets": [dataset],
    }
    if spec.get("http"):
        out["http"] = spec["http"]
    return out


def to_toml(data: dict[str, Any]) -> str:
    """TOML for ``config_dict``'s shapes: scalars, nested tables, one array of tables."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        return json.dumps(str(v))  # a JSON string is a TOML basic string

    lines: list[str] = []

    def table(name: str, body: dict[str, Any], header: str) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict | list)}
        if header:
            lines.append(header)
        lines.extend(f"{k} = {value(v)}" for k, v in scalars.items())
        lines.append("")
        for k, v in body.items():
            if isinstance(v, dict):
                full = f"{name}.{k}" if name else k
                table(full, v, f"[{full}]")
            elif isinstance(v, list):
                for item in v:
                    table(k, item, f"[[{k}]]")

    table("", data, "")
    return "\n".join(lines)


# -- the children ---------------------------------------------------------------------------


def child_main(step: str, spec: dict[str, Any]) -> None:
    """One measured step in this fresh process; prints its figures as one JSON line."""
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    import s3fs  # type: ignore[import-untyped]  # noqa: F401 - imported before the step, as a running daemon has

    from daemon.app import Daemon, Target
    from daemon.bucket_poller import BucketPoller
    from daemon.catalog import Catalog
    from daemon.config import catalog_path
    from daemon.engine import Engine
    from schemas.config import StrandlineConfig

    config = StrandlineConfig(**config_dict(spec))
    log_path = Path(spec["log"])
    result: dict[str, Any] = {}

    def mark() -> int:
        return log_path.stat().st_size

    def timed(what: str, call: Callable[[], Any]) -> Any:
        before = mark()
        cpu0, t0 = c.cpu_seconds(), time.perf_counter()
        value = call()
        result[what] = {
            "wall": time.perf_counter() - t0,
            "cpu": c.cpu_seconds() - cpu0,
            "since": before,
            "until": mark(),
        }
        return value

    if step == "first":
        daemon = Daemon(config, Target.resolve(config, None))
        result["hwm_setup_kib"] = c.vmhwm_kib()
        created, _backlog = timed("pass", lambda: daemon.scan(publish_timeout=None))
        result["versions"] = created
    elif step == "steady":
        path = catalog_path(config)
        with Catalog(path) as catalog, Catalog(path) as poll_catalog:
            engine = Engine(catalog, config, list(config.datasets))
            poller = BucketPoller(path, config, list(config.datasets), note=engine.note_listed)
            polled = poller._datasets[0]
            # Clients made and connected before the timed part, as in a running daemon: one
            # LIST page for the poller's, one HEAD (of a key that is not there) for the engine's.
            from daemon.objectstore import check_root

            check_root(polled.source.fs, polled.source.root)
            engine.note_rels(DATASET, {"strandline-bench-no-such-key"})
            engine.process_due(ignore_settle=True)
            timed("prepare", engine.prepare)  # what Engine.run does at start
            result["hwm_setup_kib"] = c.vmhwm_kib()
            changed, _rejections = timed("merge", lambda: poller._compare(poll_catalog, polled))
            result["changed"] = len(changed)
            if changed:
                engine.note_listed(DATASET, changed)
                timed("versioning", lambda: engine.process_due(ignore_settle=True))
            result["versions"] = engine.versions_created
    else:
        raise SystemExit(f"unknown child step {step!r}")
    result["hwm_peak_kib"] = c.vmhwm_kib()
    print(json.dumps(result))


def run_child(step: str, spec: dict[str, Any], timeout: float, profile: Path | None = None) -> dict[str, Any]:
    """The step in a fresh process; with ``profile`` (a file), py-spy records it there and a summary is shown."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", step, "--child-spec", json.dumps(spec)]
    spies: list[c.PySpy] = []
    try:
        return c.run_json_child(
            argv, timeout, on_start=None if profile is None else lambda pid: spies.append(c.PySpy(pid, profile))
        )
    finally:
        for spy in spies:
            c.note(f"py-spy profile of the {step} child, set-up included ({spy.out}):\n{spy.stop()}")


# -- the parent -------------------------------------------------------------------------------


def main() -> None:
    p = c.parser(__doc__)
    c.add_kafka_args(p)
    p.add_argument("--objects", type=int, default=100_000, help="objects in the prefix (default 100000)")
    p.add_argument(
        "--ext",
        choices=("bin", "csv"),
        default="bin",
        help="bin: random bytes, versioned by hash (default); csv: small tables, also profiled",
    )
    p.add_argument("--threads", type=int, default=16, help="upload threads (default 16)")
    p.add_argument("--changes", type=int, default=10, help="objects overwritten for the steady poll (default 10)")
    p.add_argument("--settle", type=float, default=0.2, help="settle window in seconds (default 0.2)")
    p.add_argument("--interval", type=float, default=None, help="poll interval, s (default: the [s3] default, 10)")
    p.add_argument("--poll-samples", type=int, default=20, help="uploads timed in poll mode (default 20)")
    p.add_argument("--notify-samples", type=int, default=50, help="uploads timed with notifications (default 50)")
    p.add_argument("--no-latency", action="store_true", help="skip the detection latency runs (no Kafka needed)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for one event (default 600)")
    p.add_argument("--seed", type=int, default=100_000, help="random seed for the objects and the schedule")
    p.add_argument("--keep", action="store_true", help="leave the run's folder in place (prints where)")
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record the measured children with py-spy (bench/.venv-peers) into DIR and print a summary",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-spec", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child_main(args.child, json.loads(args.child_spec))
        return
    if args.changes < 1 or args.changes > args.objects:
        p.error("--changes must be 1..--objects")

    from schemas.config import S3Config

    interval = args.interval if args.interval is not None else S3Config().poll_interval_seconds
    report = c.Report(
        "buckets: a prefix of small objects in S3 (moto) — first listing, steady poll, detection latency",
        {
            "objects": args.objects,
            "ext": args.ext,
            "changes": args.changes,
            "settle_s": args.settle,
            "poll_interval_s": interval,
        },
    )
    c.use_fake_s3_credentials()
    with c.run_folder("buckets", args.keep) as work, c.s3_server(work / "s3") as server:
        run(args, interval, work, server, report)
    report.emit(args.json)


def run(args: argparse.Namespace, interval: float, work: Path, server: c.S3Server, report: c.Report) -> None:
    client = s3_client(server.endpoint, pool=args.threads + 4)
    client.create_bucket(Bucket=BUCKET)
    c.note(f"uploading {args.objects:,} objects with {args.threads} threads …")
    t0 = time.monotonic()
    upload(client, args.objects, args.ext, args.threads, args.seed)
    elapsed = time.monotonic() - t0
    c.note(f"uploaded in {elapsed:.1f} s ({args.objects / elapsed:.0f} objects/s)")
    report.params["upload_s"] = round(elapsed, 1)
    report.params["s3_server_rss_mib"] = round(server.rss_kib() / 1024)

    spec: dict[str, Any] = {
        "endpoint": server.endpoint,
        "state_dir": str(work / "state"),
        "settle": args.settle,
        "interval": args.interval,
        "log": str(server.log_path),
    }
    pages = -(-args.objects // 1000)

    c.note("first full pass (empty catalog) …")
    first = measured_child(server, "first", spec, 7200, profile_path(args.profile, "first"))
    req = first["pass"]["requests"]
    report.add("first pass: time", first["pass"]["wall"], "s")
    report.add("first pass: CPU of the daemon", first["pass"]["cpu"], "s")
    report.add("first pass: CPU of the S3 server", first["server_cpu"], "s")
    report.add("first pass: peak RSS", first["hwm_peak_kib"] / 1024, "MiB")
    report.add("first pass: RSS after imports", first["hwm_setup_kib"] / 1024, "MiB")
    report.add("first pass: LIST / GET / HEAD", f"{req['list']} / {req['get']} / {req['head']}")
    listing = log_span(server, first["pass"]["since"], first["pass"]["until"])
    if listing is not None:
        report.add("first pass: of which listing (server log, ±1 s)", listing, "s")
    report.add("first pass: versions", first["versions"])
    report.params["catalog_mib"] = round(catalog_bytes(work / "state") / 2**20, 1)

    c.note("steady poll, nothing changed …")
    idle = measured_child(server, "steady", spec, 3600, profile_path(args.profile, "steady-0"))
    merge_figures(report, "poll, 0 changed", idle, pages)

    rng = random.Random(args.seed + 1)
    changed_keys = sorted(rng.sample(range(args.objects), args.changes), key=lambda i: object_rel(i, args.ext).encode())
    for i in changed_keys:
        client.put_object(Bucket=BUCKET, Key=PREFIX + object_rel(i, args.ext), Body=object_body(rng, args.ext))
    c.note(f"overwrote {args.changes} objects; steady poll …")
    busy = measured_child(server, "steady", spec, 3600, profile_path(args.profile, f"steady-{args.changes}"))
    label = f"poll, {args.changes} changed"
    merge_figures(report, label, busy, pages)
    report.add(f"{label}: keys handed to the engine", busy["changed"], "", f"= {args.changes}")
    if "versioning" in busy:
        v = busy["versioning"]
        report.add(f"{label}: versioning pass", v["wall"], "s")
        report.add(f"{label}: versioning pass, CPU of the daemon", v["cpu"], "s")
        report.add(
            f"{label}: versioning pass, HEAD / GET / LIST",
            f"{v['requests']['head']} / {v['requests']['get']} / {v['requests']['list']}",
            "",
            f"0 / {args.changes} / 0",  # hashed on the listed stats: no HEAD
        )
        report.add(f"{label}: the engine's view, built once at start (prepare)", busy["prepare"]["wall"], "s")
        report.add(f"{label}: versions", busy["versions"], "", "1")
        total = busy["merge"]["wall"] + v["wall"]
        report.add(f"{label}: listing + versioning", total, "s")
        cpu = busy["merge"]["cpu"] + v["cpu"]
        report.add(f"{label}: listing + versioning, CPU of the daemon", cpu, "s")
        report.add("steady poll / first pass, wall", total / first["pass"]["wall"], "x")
        report.add("steady poll / first pass, CPU of the daemon", cpu / first["pass"]["cpu"], "x")
    if args.no_latency:
        return
    with c.kafka_broker(args.bootstrap) as bootstrap:
        report.params["bootstrap"] = bootstrap
        prefix = c.unique_prefix("buckets")
        try:
            latency_runs(args, interval, work, server, client, report, bootstrap, prefix, spec)
        finally:
            deleted = c.delete_topics(bootstrap, prefix)
            c.note(f"deleted the run's topics: {', '.join(deleted) or '-'}")


def profile_path(folder: Path | None, name: str) -> Path | None:
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"buckets-{name}.collapsed.txt"


def measured_child(
    server: c.S3Server, step: str, spec: dict[str, Any], timeout: float, profile: Path | None
) -> dict[str, Any]:
    """A child step, with the S3 requests of each of its timed parts and the server's CPU."""
    server_cpu0 = server.cpu_seconds()
    result = run_child(step, spec, timeout, profile)
    server_cpu = server.cpu_seconds() - server_cpu0
    for part in ("pass", "merge", "versioning"):
        if part in result:
            r = result[part]
            r["requests"] = server.requests(BUCKET, r["since"], r["until"])
    result["server_cpu"] = server_cpu  # the whole child: set-up, and every timed part
    c.note(f"  {step}: {json.dumps({k: v for k, v in result.items() if k != 'hwm_setup_kib'}, default=str)}")
    return result


def merge_figures(report: c.Report, label: str, result: dict[str, Any], pages: int) -> None:
    m = result["merge"]
    report.add(f"{label}: listing merge", m["wall"], "s")
    report.add(f"{label}: listing merge, CPU of the daemon", m["cpu"], "s")
    report.add(f"{label}: listing merge, per LIST page", m["wall"] / max(1, m["requests"]["list"]) * 1000, "ms")
    report.add(
        f"{label}: listing merge, LIST / GET / HEAD",
        f"{m['requests']['list']} / {m['requests']['get']} / {m['requests']['head']}",
        "",
        f"{pages} / 0 / 0",
    )
    report.add(f"{label}: S3 server CPU (whole child)", result["server_cpu"], "s")
    report.add(f"{label}: peak RSS", result["hwm_peak_kib"] / 1024, "MiB")
    report.add(f"{label}: RSS before the poll", result["hwm_setup_kib"] / 1024, "MiB")


def log_span(server: c.S3Server, since: int, until: int) -> float | None:
    """Seconds from the first request to the last LIST request between two marks, from the
    access log's timestamps (whole seconds): how long a pass spent listing before it read objects."""
    with server.log_path.open("rb") as fh:
        fh.seek(since)
        lines = fh.read(until - since).decode(errors="replace").splitlines()
    first: datetime | None = None
    last_list: datetime | None = None
    for line in lines:
        stamp = line.partition("[")[2].partition("]")[0]
        try:
            at = datetime.strptime(stamp, "%d/%b/%Y %H:%M:%S")
        except ValueError:
            continue
        first = first or at
        if "list-type=" in line:
            last_list = at
    if first is None or last_list is None:
        return None
    return (last_list - first).total_seconds()


def catalog_bytes(state: Path) -> int:
    return sum(p.stat().st_size for p in state.glob("*") if p.is_file())


# -- detection latency ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(http: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{http}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, val = line.partition(" ")
            out[name] = float(val)
    return out


class WatchProcess:
    """``strandline watch --config`` on the run's catalog, JSON logs in a file."""

    def __init__(self, work: Path, name: str, config: dict[str, Any]) -> None:
        self.http = str(config["http"])
        path = work / f"{name}.toml"
        path.write_text(to_toml(config))
        self.log_path = work / f"{name}.log"
        self.started = time.monotonic()
        self._log = self.log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("STRANDLINE_")}
        self.proc = subprocess.Popen(
            [str(STRANDLINE), "watch", "--config", str(path), "--log-format", "json"],
            cwd=work,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            start_new_session=True,
        )

    def metrics(self) -> dict[str, float]:
        try:
            return scrape(self.http)
        except OSError:
            return {}

    def wait_ready(self, timeout: float) -> float:
        """Until the start-up reconcile and one listing are done and the outbox is empty; seconds taken."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited ({self.proc.returncode}); see {self.log_path}")
            m = self.metrics()
            if (
                m.get("strandline_versioning_passes_total", 0) >= 1
                and m.get("strandline_bucket_polls_total", 0) >= 1
                and m.get("strandline_outbox_backlog", 1) == 0
            ):
                return time.monotonic() - t0
            time.sleep(0.5)
        raise TimeoutError(f"daemon not ready within {timeout:.0f} s; see {self.log_path}")

    def stop(self, timeout: float) -> float | None:
        """SIGTERM, then wait for a clean exit: seconds it took, None if it had to be killed."""
        took: float | None = 0.0
        if self.proc.poll() is None:
            t0 = time.monotonic()
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
                took = time.monotonic() - t0
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                took = None
        self._log.close()
        return took


def s3_event(bucket: str, key: str) -> bytes:
    """The S3 event notification for a PUT, as MinIO's Kafka target writes it."""
    record = {
        "eventVersion": "2.0",
        "eventSource": "minio:s3",
        "eventName": "s3:ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket}, "object": {"key": quote_plus(key)}},
    }
    return json.dumps({"EventName": "s3:ObjectCreated:Put", "Key": f"{bucket}/{key}", "Records": [record]}).encode()


def changed_rels(ev: c.Event) -> list[str]:
    if ev.type != "dataset.version.created" or ev.data.get("dataset") != DATASET:
        return []
    return [str(ch["path"]) for ch in ev.data.get("changes", [])]


def holds(rel: str) -> Callable[[c.Event], bool]:
    return lambda ev: rel in changed_rels(ev)


def commit_delay(ev: c.Event, since: float) -> float:
    """From ``since`` (monotonic) to the version's commit (the event's created_at, wall clock)."""
    since_wall = time.time() - (time.monotonic() - since)
    return datetime.fromisoformat(ev.data["created_at"]).timestamp() - since_wall


def latency_runs(
    args: argparse.Namespace,
    interval: float,
    work: Path,
    server: c.S3Server,
    client: Any,
    report: c.Report,
    bootstrap: str,
    prefix: str,
    spec: dict[str, Any],
) -> None:
    base = {**spec, "bootstrap": bootstrap, "prefix": prefix}
    reader = c.VersionsReader(bootstrap, prefix)
    rng = random.Random(args.seed + 2)
    parts = -(-args.objects // PER_PART)
    try:
        # -- polling at the interval --
        cfg = config_dict({**base, "http": f"127.0.0.1:{free_port()}"})
        c.note(f"poll mode: strandline watch, poll interval {interval:g} s; waiting for its first listing …")
        daemon = WatchProcess(work, "watch-poll", cfg)
        try:
            ready = daemon.wait_ready(args.timeout)
            report.add("poll mode: daemon start → first listing done", ready, "s")
            drain(reader)
            samples = poll_latencies(args, interval, client, reader, rng, parts, daemon.started)
        finally:
            stopped = daemon.stop(args.timeout)
        report.add("poll mode: SIGTERM → clean exit", stopped, "s")
        add_latency(report, "poll", samples, args.settle, None)

        # -- notifications --
        topic = f"{prefix}.s3-events"
        c.create_topic(bootstrap, topic)
        cfg = config_dict(
            {**base, "http": f"127.0.0.1:{free_port()}", "detect": "notifications", "notify_topic": topic}
        )
        c.note("notifications mode: strandline watch; waiting for its start-up reconcile …")
        daemon = WatchProcess(work, "watch-notify", cfg)
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
        try:
            ready = daemon.wait_ready(args.timeout)
            report.add("notifications mode: daemon start → ready", ready, "s")
            drain(reader)
            samples = notify_latencies(args, client, producer, topic, reader, rng, parts, daemon.started)
        finally:
            producer.close()
            stopped = daemon.stop(args.timeout)
        report.add("notifications mode: SIGTERM → clean exit", stopped, "s")
        add_latency(report, "notifications", samples, args.settle, TARGET_NOTIFY_P99_MS)
    finally:
        reader.close()


def drain(reader: c.VersionsReader) -> None:
    """Read what is already on the topic (the start's versions), so it is not matched later."""
    while reader.poll(1.0):
        pass


def new_rel(n: int, mode: str, rng: random.Random, parts: int, ext: str) -> str:
    """A new object at a random part of the prefix: listings reach it at a random point."""
    return f"part-{rng.randrange(parts):03}/new-{mode}-{n:04}-{uuid.uuid4().hex[:6]}.{ext}"


def poll_latencies(
    args: argparse.Namespace,
    interval: float,
    client: Any,
    reader: c.VersionsReader,
    rng: random.Random,
    parts: int,
    started: float,
) -> list[tuple[float, float]]:
    """(put → readable, put → commit) of uploads at random gaps, not waiting for their events."""
    put_at: dict[str, float] = {}
    seen: dict[str, tuple[float, float]] = {}

    def collect(timeout: float) -> None:
        for ev in reader.poll(timeout):
            for rel in changed_rels(ev):
                if rel in put_at and rel not in seen:
                    seen[rel] = (ev.received - put_at[rel], commit_delay(ev, put_at[rel]))
                    c.note(
                        f"  poll: {rel}, put {put_at[rel] - started:.0f} s after the daemon started:"
                        f" event after {seen[rel][0]:.2f} s"
                    )

    for n in range(args.poll_samples):
        gap = rng.uniform(0.5, 1.5) * interval
        deadline = time.monotonic() + gap
        while (left := deadline - time.monotonic()) > 0:
            collect(min(left, 0.5))
        rel = new_rel(n, "poll", rng, parts, args.ext)
        client.put_object(Bucket=BUCKET, Key=PREFIX + rel, Body=object_body(rng, args.ext))
        put_at[rel] = time.monotonic()
    deadline = time.monotonic() + args.timeout
    while len(seen) < len(put_at) and time.monotonic() < deadline:
        collect(0.5)
    if len(seen) < len(put_at):
        c.note(f"poll mode: {len(put_at) - len(seen)} uploads had no event within {args.timeout:.0f} s")
    return list(seen.values())


def notify_latencies(
    args: argparse.Namespace,
    client: Any,
    producer: Any,
    topic: str,
    reader: c.VersionsReader,
    rng: random.Random,
    parts: int,
    started: float,
) -> list[tuple[float, float]]:
    """(put → readable, put → commit) of uploads each notified at once, one at a time."""
    # Warm-up (not timed): the listener's group must be joined before a notification counts, so
    # the first one is re-sent until its version shows up.
    rel = new_rel(0, "warmup", rng, parts, args.ext)
    client.put_object(Bucket=BUCKET, Key=PREFIX + rel, Body=object_body(rng, args.ext))
    deadline = time.monotonic() + args.timeout
    while not any(rel in changed_rels(ev) for ev in reader.poll(0.1)):
        if time.monotonic() > deadline:
            raise TimeoutError("the warm-up notification was never versioned")
        producer.send(topic, s3_event(BUCKET, PREFIX + rel)).get(timeout=30)
        t_sent = time.monotonic()
        while time.monotonic() - t_sent < 3.0:
            if any(rel in changed_rels(ev) for ev in reader.poll(0.2)):
                break
        else:
            continue
        break
    samples = []
    for n in range(args.notify_samples):
        time.sleep(args.settle + rng.uniform(0.3, 0.6))
        rel = new_rel(n, "notify", rng, parts, args.ext)
        client.put_object(Bucket=BUCKET, Key=PREFIX + rel, Body=object_body(rng, args.ext))
        t_put = time.monotonic()
        producer.send(topic, s3_event(BUCKET, PREFIX + rel)).get(timeout=30)
        try:
            ev = reader.wait_for(holds(rel), args.timeout)
        except TimeoutError:
            c.note(f"notifications: no event for {rel} within {args.timeout:.0f} s")
            continue
        samples.append((ev.received - t_put, commit_delay(ev, t_put)))
        if samples[-1][0] > 1.0:
            c.note(f"  notifications: {rel}, put {t_put - started:.0f} s after start: {samples[-1][0]:.2f} s")
        if (n + 1) % 10 == 0:
            c.note(f"  notifications: {n + 1} samples")
    return samples


def add_latency(
    report: c.Report, mode: str, samples: list[tuple[float, float]], settle: float, target_ms: float | None
) -> None:
    if not samples:
        report.add(f"{mode}: samples", 0, "", ok=False)
        return
    total = [s[0] for s in samples]
    commit = [s[1] for s in samples]
    report.add(f"{mode}: samples", len(samples))
    unit, scale = ("s", 1.0) if mode == "poll" else ("ms", 1000.0)
    for q in (50, 95, 99):
        report.add(f"{mode}: put → event readable, p{q}", c.percentile(total, q) * scale, unit)
    report.add(f"{mode}: put → event readable, max", max(total) * scale, unit)
    report.add(
        f"{mode}: put → commit, p50 / p99",
        f"{c.percentile(commit, 50) * scale:.1f} / {c.percentile(commit, 99) * scale:.1f}",
        unit,
    )
    # The rest of each sample: the publisher's send, the broker's ack and the reader's fetch.
    kafka = [s[0] - s[1] for s in samples]
    report.add(
        f"{mode}: commit → event readable, p50 / p99 / max",
        f"{c.percentile(kafka, 50) * scale:.1f} / {c.percentile(kafka, 99) * scale:.1f} / {max(kafka) * scale:.1f}",
        unit,
    )
    if target_ms is not None:
        p99 = c.percentile(total, 99) * 1000 - settle * 1000
        report.add(f"{mode}: p99 minus settle ({settle:g} s)", p99, "ms", f"<= {target_ms:g} ms", p99 <= target_ms)


if __name__ == "__main__":
    main()
