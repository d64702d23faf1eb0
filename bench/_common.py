"""Shared plumbing of the benchmarks: a Kafka broker, a versions-topic reader, the daemon, output.

Not a benchmark itself. The scripts in this folder import it as ``_common`` (they run as
``.venv/bin/python bench/NAME.py`` from the repo root, so this folder is on ``sys.path``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BROKER_SCRIPT = REPO / "scripts" / "kafka_broker.py"
SHARED_BROKER = "127.0.0.1:19092"

if str(REPO) not in sys.path:  # run from anywhere: the daemon's packages come from the repo
    sys.path.insert(0, str(REPO))


# -- command line and output ----------------------------------------------------------------


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose --help shows the script's docstring, with the common options."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object on stdout")
    return p


def add_kafka_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bootstrap",
        default=os.environ.get("STRANDLINE_KAFKA_BOOTSTRAP"),
        help="Kafka bootstrap host:port (default: $STRANDLINE_KAFKA_BOOTSTRAP, else the broker at "
        f"{SHARED_BROKER} if one answers, else a broker started for this run and stopped after it)",
    )


def note(msg: str) -> None:
    """Progress for people, on stderr so that --json output stays clean."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Figure:
    name: str
    value: float | int | str | None
    unit: str = ""
    target: str = ""
    ok: bool | None = None


@dataclass
class Report:
    benchmark: str
    params: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)

    def add(
        self, name: str, value: float | int | str | None, unit: str = "", target: str = "", ok: bool | None = None
    ) -> None:
        if any(f.name == name for f in self.figures):
            raise ValueError(f"figure {name!r} added twice")  # --json keys figures by name
        self.figures.append(Figure(name, value, unit, target, ok))

    def emit(self, as_json: bool) -> None:
        if as_json:
            out = {
                "benchmark": self.benchmark,
                "params": self.params,
                "figures": {
                    f.name: {"value": f.value, "unit": f.unit, "target": f.target or None, "ok": f.ok}
                    for f in self.figures
                },
            }
            print(json.dumps(out, indent=2, default=str))
            return
        print(f"\n{self.benchmark}")
        print("  " + ", ".join(f"{k}={v}" for k, v in self.params.items()))
        rows = [("figure", "value", "unit", "target", "")]
        for f in self.figures:
            mark = "" if f.ok is None else ("ok" if f.ok else "MISS")
            rows.append((f.name, _fmt(f.value), f.unit, f.target, mark))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for n, r in enumerate(rows):
            cells = (
                cell.rjust(w) if i == 1 else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths, strict=True))
            )
            print("  " + "  ".join(cells).rstrip())
            if n == 0:
                print("  " + "  ".join("-" * w for w in widths))


def _fmt(value: float | int | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, int(-(-q * len(ordered) // 100)))  # ceil(q/100 * n), at least 1
    return ordered[min(rank, len(ordered)) - 1]


# -- data -----------------------------------------------------------------------------------


def write_random_files(
    folder: Path, count: int, min_size: int, max_size: int, seed: int, per_dir: int | None = None
) -> int:
    """``count`` files of random size and random bytes; ``per_dir`` spreads them over subfolders.

    Returns the bytes written. One random pool is sliced at random offsets: the bytes are
    random to the hasher while generating them stays cheap.
    """
    rng = random.Random(seed)
    pool = rng.randbytes(4 * max_size + 4096)
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    current = folder
    for i in range(count):
        if per_dir is not None and i % per_dir == 0:
            current = folder / f"d{i // per_dir:04d}"
            current.mkdir()
        size = rng.randint(min_size, max_size)
        start = rng.randrange(len(pool) - size)
        with open(current / f"f{i:06d}.bin", "wb") as fh:
            fh.write(pool[start : start + size])
        total += size
    return total


def write_random_file(path: Path, size: int, seed: int, block: int = 16 * 1024 * 1024) -> None:
    """``size`` random bytes (no repeats for a chunker to find), the same bytes for the same seed."""
    rng = random.Random(seed)
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(block, left)
            fh.write(rng.randbytes(n))
            left -= n


def fresh_tempdir(prefix: str, base: Path | None = None) -> Path:
    """A new folder for this run's data (in ``base``, else on /tmp's disk unless $TMPDIR says otherwise)."""
    return Path(tempfile.mkdtemp(prefix=f"strandline-bench-{prefix}-", dir=base))


# -- Kafka ----------------------------------------------------------------------------------


@contextlib.contextmanager
def run_folder(prefix: str, keep: bool, base: Path | None = None) -> Iterator[Path]:
    """A fresh run folder, deleted at the very end (after every figure was taken) unless ``keep``.

    Mass deletion slows the next mass creation on this disk, so nothing is deleted mid-run.
    """
    work = fresh_tempdir(prefix, base)
    note(f"run folder {work}")
    try:
        yield work
    finally:
        if keep:
            note(f"kept {work}")
        else:
            note("deleting the run's files (only now, after every figure was taken)")
            remove_tree(work)


def _answers(bootstrap: str, timeout: float = 0.5) -> bool:
    host, port = bootstrap.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def kafka_broker(bootstrap: str | None) -> Iterator[str]:
    """The given broker, else the shared one if it answers, else one of our own for this run."""
    if bootstrap:
        yield bootstrap
        return
    if _answers(SHARED_BROKER):
        note(f"using the Kafka broker at {SHARED_BROKER}")
        yield SHARED_BROKER
        return
    directory = Path(tempfile.mkdtemp(prefix="strandline-bench-kafka-"))
    note(f"starting a Kafka broker in {directory} …")
    try:
        with _script_server(BROKER_SCRIPT, directory) as started:
            note(f"Kafka broker at {started}")
            yield started
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def _script_server(script: Path, directory: Path) -> Iterator[str]:
    """``script start --dir directory`` (a server script of scripts/), its address, then ``stop``."""
    out = subprocess.run(
        [sys.executable, str(script), "start", "--dir", str(directory)], check=True, capture_output=True, text=True
    )
    try:
        yield out.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([sys.executable, str(script), "stop", "--dir", str(directory)], check=False)


def unique_prefix(name: str) -> str:
    return f"bench-{name}-{uuid.uuid4().hex[:10]}"


@dataclass
class Event:
    received: float  # time.monotonic() when poll() handed it over
    type: str
    subject: str
    data: dict[str, Any]


class VersionsReader:
    """Reads ``<prefix>.versions`` from its beginning, every partition assigned (no group)."""

    def __init__(self, bootstrap: str, prefix: str, fetch_max_wait_ms: int = 5) -> None:
        from kafka import KafkaConsumer, TopicPartition

        from daemon.kafka_client import ensure_topics
        from schemas.config import KafkaConfig

        cfg = KafkaConfig(bootstrap=bootstrap, topic_prefix=prefix)
        ensure_topics(cfg)  # the daemon would create them too; the reader must assign first
        self.topic = cfg.versions_topic
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=fetch_max_wait_ms,
            client_id="strandline-bench",
        )
        deadline = time.monotonic() + 30
        parts = None
        while not parts:
            parts = self._consumer.partitions_for_topic(self.topic)
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {self.topic} has no partitions after 30 s")
            if not parts:
                time.sleep(0.1)
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        self._consumer.assign(tps)
        self._consumer.seek_to_beginning(*tps)
        self.poll(0.2)  # first fetch: connections and offsets are set up before anything is timed

    def poll(self, timeout: float) -> list[Event]:
        batches = self._consumer.poll(timeout_ms=int(timeout * 1000))
        now = time.monotonic()
        events = []
        for records in batches.values():
            for r in records:
                headers = {k: v.decode() for k, v in r.headers or []}
                events.append(
                    Event(now, headers.get("ce_type", ""), headers.get("ce_subject", ""), json.loads(r.value))
                )
        return events

    def wait_for(self, match: Callable[[Event], bool], timeout: float) -> Event:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching event on {self.topic} within {timeout:.0f} s")
            for ev in self.poll(min(left, 0.5)):
                if match(ev):
                    return ev

    def close(self) -> None:
        self._consumer.close()


# -- the daemon as a subprocess -------------------------------------------------------------


def daemon_env(bootstrap: str, prefix: str, settle: float, state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRANDLINE_")}
    env.update(
        STRANDLINE_KAFKA_BOOTSTRAP=bootstrap,
        STRANDLINE_KAFKA_TOPIC_PREFIX=prefix,
        STRANDLINE_SETTLE_SECONDS=str(settle),
        STRANDLINE_STATE_DIR=str(state_dir),
    )
    return env


class DaemonProcess:
    """``strandline watch FOLDER``: logs (``--log-format``, JSON by default) to a file, version lines to another."""

    def __init__(
        self,
        folder: Path | None,
        workdir: Path,
        env: dict[str, str],
        extra: Sequence[str] = (),
        *,
        log_format: str = "json",
    ) -> None:
        """``folder`` None: the datasets come from a config given in ``extra`` (``["-c", FILE]``)."""
        exe = Path(sys.executable).parent / "strandline"
        self.log_path = workdir / "daemon.log"
        self.out_path = workdir / "daemon.out"
        self._log = self.log_path.open("wb")
        self._out = self.out_path.open("wb")
        target = [] if folder is None else [str(folder)]
        self.proc = subprocess.Popen(
            [str(exe), "watch", *target, "--json", "--log-format", log_format, *extra],
            cwd=workdir,
            env=env,
            stdout=self._out,
            stderr=self._log,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_path.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited ({self.proc.returncode}); see {self.log_path}")
            time.sleep(0.05)
        raise TimeoutError(f"daemon did not log {text!r} within {timeout:.0f} s; see {self.log_path}")

    def versions(self) -> list[dict[str, Any]]:
        lines = self.out_path.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self._out.close()
        return self.proc.returncode


def remove_tree(path: Path) -> None:
    subprocess.run(["rm", "-rf", str(path)], check=False)


# -- profiling (optional: py-spy from bench/.venv-peers) -----------------------------------

PY_SPY = Path(__file__).resolve().parent / ".venv-peers" / "bin" / "py-spy"


class PySpy:
    """``py-spy record`` attached to ``pid`` until ``stop()``; writes collapsed stacks (raw format)."""

    def __init__(self, pid: int, out: Path, rate: int = 250) -> None:
        if not PY_SPY.exists():
            raise RuntimeError(f"{PY_SPY} not found: run `bash bench/setup_peers.sh` first")
        self.out = out
        self.proc = subprocess.Popen(
            [
                str(PY_SPY),
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(rate),
                "--format",
                "raw",
                "--threads",
                "--nonblocking",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.3)  # attached before the timed part starts

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return summarize_collapsed(self.out) if self.out.exists() else "(py-spy wrote nothing)"


def summarize_collapsed(path: Path, top: int = 15) -> str:
    """Where the samples went: per thread, then the functions with the most inclusive and own time."""
    import collections

    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        if frames and frames[0].startswith("thread ("):
            threads[frames[0]] += count
            frames = frames[1:]
        frames = [f for f in frames if not f.startswith("process ")]
        total += count
        for f in set(frames):
            inclusive[f] += count
        if frames:
            own[frames[-1]] += count
    if not total:
        return "(no samples)"
    lines = [f"{total} samples (on-CPU, all threads)"]
    if threads:
        lines.append("  per thread:")
        lines += [f"    {n / total:6.1%}  {t}" for t, n in threads.most_common(6)]
    lines.append("  inclusive (function and what it calls):")
    lines += [f"    {n / total:6.1%}  {f}" for f, n in inclusive.most_common(top)]
    lines.append("  own time (the frame on top of the stack):")
    lines += [f"    {n / total:6.1%}  {f}" for f, n in own.most_common(top)]
    return "\n".join(lines)


# -- child processes: peak memory and CPU ---------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def vmhwm_kib(pid: int | str = "self") -> int:
    """Peak resident memory (VmHWM) of a process, KiB.

    VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child would report its
    parent's peak; VmHWM starts afresh in the new program.
    """
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def cpu_seconds(pid: int | str = "self") -> float:
    """utime + stime of a process (all its threads) from /proc/PID/stat, seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run_json_child(
    argv: Sequence[str],
    timeout: float,
    env: dict[str, str] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run ``argv``; its last stdout line is a JSON object, returned. Its stderr is shown on failure.

    ``on_start`` gets the child's pid as soon as it runs (to attach a profiler, say).
    """
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if on_start is not None:
        on_start(proc.pid)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}):\n{stderr[-3000:]}")
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


# -- S3: the project's test server (moto) ----------------------------------------------------

S3_SERVER_SCRIPT = REPO / "scripts" / "s3_server.py"

# Any key pair works with the test server; these are never real.
FAKE_S3_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIASTRANDLINEBENCH1",
    "AWS_SECRET_ACCESS_KEY": "strandline-bench-secret-not-real",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # no probe of the instance-metadata address
}


def use_fake_s3_credentials() -> None:
    """Put the fake key pair in this process's environment (children inherit it); hide the user's AWS setup."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    os.environ.update(FAKE_S3_ENV)


@dataclass
class S3Server:
    """A moto server started by ``s3_server``: its endpoint, and its access log to count requests by."""

    endpoint: str
    directory: Path

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    @property
    def pid(self) -> int:
        return int((self.directory / "server.pid").read_text())

    def mark(self) -> int:
        """A position in the access log: pass it to ``requests`` to count what came after."""
        return self.log_path.stat().st_size

    def requests(self, bucket: str, since: int, until: int | None = None) -> dict[str, int]:
        """Requests for ``bucket`` logged between two marks: list, get, head, put, other."""
        with self.log_path.open("rb") as fh:
            fh.seek(since)
            text = fh.read(None if until is None else until - since).decode(errors="replace")
        return count_s3_requests(text, bucket)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def count_s3_requests(log_text: str, bucket: str) -> dict[str, int]:
    """Count path-style requests for ``bucket`` in werkzeug access-log lines (``"GET /bucket/key HTTP/1.1"``).

    A listing is ``GET /bucket?list-type=2...``; an object read ``GET /bucket/key``.
    """
    counts = {"list": 0, "get": 0, "head": 0, "put": 0, "other": 0}
    for line in log_text.splitlines():
        _, quote, request = line.partition('"')
        if not quote:
            continue
        method, _, rest = request.partition(" ")
        path = rest.split(" ", 1)[0]
        if not (path == f"/{bucket}" or path.startswith((f"/{bucket}/", f"/{bucket}?"))):
            continue
        if method == "GET" and "list-type=" in path:
            counts["list"] += 1
        elif method == "GET" and path.startswith(f"/{bucket}/") and len(path) > len(bucket) + 2:
            counts["get"] += 1
        elif method == "HEAD" and path.startswith(f"/{bucket}/"):
            counts["head"] += 1
        elif method == "PUT" and path.startswith(f"/{bucket}/"):
            counts["put"] += 1
        else:
            counts["other"] += 1
    return counts


@contextlib.contextmanager
def s3_server(directory: Path) -> Iterator[S3Server]:
    """A moto S3 server for this run (``scripts/s3_server.py``), its pid and log in ``directory``; stopped after."""
    with _script_server(S3_SERVER_SCRIPT, directory) as endpoint:
        note(f"S3 server (moto) at {endpoint}, log {directory / 'server.log'}")
        yield S3Server(endpoint, directory)


# -- Kafka topics ---------------------------------------------------------------------------


def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    """Create ``topic`` (no error if it exists) and wait until the broker knows its partitions."""
    from kafka import KafkaAdminClient, KafkaConsumer
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="strandline-bench")
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="strandline-bench")
    try:
        deadline = time.monotonic() + 30
        while not consumer.partitions_for_topic(topic):
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {topic} has no partitions after 30 s")
            time.sleep(0.1)
    finally:
        consumer.close()


def delete_topics(bootstrap: str, prefix: str) -> list[str]:
    """Delete every topic whose name starts with ``prefix`` (a run's own); return their names."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="strandline-bench")
    try:
        doomed = sorted(t for t in admin.list_topics() if t.startswith(prefix))
        if doomed:
            admin.delete_topics(doomed)
        return doomed
    finally:
        admin.close()
