"""Helpers shared by tests: waiting on conditions, reading events back from the real broker."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kafka import KafkaConsumer, TopicPartition

from daemon.app import Daemon, Target
from daemon.catalog import Catalog, VersionRow
from daemon.config import catalog_path
from schemas.config import DatasetConfig, StrandlineConfig

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 20.0, interval: float = 0.05, what: str = "") -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)


@dataclass
class Event:
    key: str | None
    headers: dict[str, str]
    data: dict[str, Any]
    size: int


def read_events(
    bootstrap: str, topic: str, *, min_count: int = 1, timeout: float = 20.0, settle: float = 0.0
) -> list[Event]:
    """Every record of ``topic`` (all partitions) from the beginning, once at least ``min_count`` arrived.

    With ``settle`` > 0, keep reading that long after reaching ``min_count`` to catch extras.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        partitions = wait_for(lambda: consumer.partitions_for_topic(topic), timeout, what=f"topic {topic}")
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[Event] = []
        deadline = time.monotonic() + timeout
        reached: float | None = None
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=100).values():
                for r in records:
                    out.append(
                        Event(
                            r.key.decode() if r.key else None,
                            {k: v.decode() for k, v in r.headers},
                            json.loads(r.value),
                            len(r.value),
                        )
                    )
            if len(out) >= min_count:
                reached = reached or time.monotonic()
                if time.monotonic() - reached >= settle:
                    return out
        raise AssertionError(f"read {len(out)} events from {topic}, wanted {min_count}")
    finally:
        consumer.close()


def json_log_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON log records of a service's log file (other lines, e.g. a traceback's, skipped)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def version_events(events: list[Event], dataset: str | None = None) -> list[Event]:
    return [
        e
        for e in events
        if e.headers.get("ce_type") == "dataset.version.created" and (dataset is None or e.key == dataset)
    ]


@dataclass
class RunningDaemon:
    config: StrandlineConfig
    daemon: Daemon
    thread: threading.Thread
    created: list[VersionRow] = field(default_factory=list)

    def catalog(self) -> Catalog:
        return Catalog(catalog_path(self.config), readonly=True)

    def versions(self, dataset: str) -> list[VersionRow]:
        with self.catalog() as c:
            try:
                return c.versions(dataset)
            except Exception:
                return []

    def backlog(self) -> int:
        with self.catalog() as c:
            return c.backlog()[0]

    def barrier(self, *datasets: str) -> None:
        """Return once every filesystem event from before the call has been acted on for ``datasets``.

        Needs the ``probe`` dataset (``probe_dataset``): inotify delivers events in order on one
        descriptor, so once a file written now to the probe is versioned, every earlier event
        was noted; then wait until the datasets have nothing pending. Proves absence of a
        version without sleeping.
        """
        probe = next(d for d in self.config.datasets if d.name == "probe")
        n = len(self.versions("probe"))
        (Path(probe.root) / f"barrier-{n}.txt").write_text(str(n))
        wait_for(lambda: len(self.versions("probe")) > n, what="the probe's version")
        engine = self.daemon.engine
        assert engine is not None
        wait_for(lambda: all(engine.settled(d) for d in datasets), what=f"{datasets} settled")

    def stop(self) -> None:
        self.daemon.request_stop()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "daemon did not stop within 60 s"


def unprivileged_prefix() -> list[str]:
    """A command prefix that drops root (permission bits do not stop root), or [] when not root."""
    import os
    import shutil

    import pytest

    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot drop privileges to test permissions")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


def probe_dataset(tmp_path: Path) -> DatasetConfig:
    """A dataset beside the ones under test, for ``RunningDaemon.barrier``."""
    root = tmp_path / "probe"
    root.mkdir(exist_ok=True)
    return DatasetConfig(name="probe", root=root, settle_seconds=0.05, snapshot="none")  # nothing to restore


def start_daemon(config: StrandlineConfig, folder: Path | None = None) -> RunningDaemon:
    created: list[VersionRow] = []
    daemon = Daemon(config, Target.resolve(config, folder), on_version=lambda r, c: created.append(r))
    errors: list[BaseException] = []

    def body() -> None:
        try:
            daemon.run()
        except BaseException as exc:
            errors.append(exc)
            raise

    thread = threading.Thread(target=body, name="daemon-under-test", daemon=True)
    thread.start()
    running = RunningDaemon(config, daemon, thread, created)
    # Ready once the start-up reconcile ran and every thread (publisher, bucket poller) is up.
    wait_for(lambda: errors or daemon.started.is_set(), 30, what="daemon start")
    if errors:
        raise errors[0]
    return running


@dataclass
class RunningConsumer:
    runner: Any
    thread: threading.Thread
    stop_event: threading.Event
    errors: list[BaseException]

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "consumer did not stop within 60 s"


def start_consumer(config: StrandlineConfig, kind: str, *, before_commit: Any = None) -> RunningConsumer:
    """A real `strandline consume KIND` loop in a thread, with its own state under the config's state_dir."""
    from consumers.app import group_id, make_handler, state_path
    from consumers.runner import ConsumerRunner
    from consumers.state import ConsumerState

    state = ConsumerState(state_path(config, kind))  # type: ignore[arg-type]
    handler = make_handler(config, kind, state)  # type: ignore[arg-type]
    runner = ConsumerRunner(
        config.kafka,
        config.consumers,
        handler,
        state,
        group_id=group_id(config, kind),  # type: ignore[arg-type]
        before_commit=before_commit,
    )
    stop = threading.Event()
    errors: list[BaseException] = []

    def body() -> None:
        try:
            runner.run(stop)
        except BaseException as exc:
            errors.append(exc)
        finally:
            state.close()

    thread = threading.Thread(target=body, name=f"consumer-{kind}", daemon=True)
    thread.start()
    return RunningConsumer(runner, thread, stop, errors)


def publish(bootstrap: str, messages: list[Any]) -> None:
    """Send OutboxMessages (topic, key, value, headers) and wait for the broker's acks."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        futures = [producer.send(m.topic, key=m.key, value=m.value, headers=list(m.headers)) for m in messages]
        for f in futures:
            f.get(timeout=30)
    finally:
        producer.close()


class NotifySocket:
    """A real NOTIFY_SOCKET, as systemd binds it: every datagram a service sends is kept in ``seen``."""

    def __init__(self, path: Path) -> None:
        import socket

        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.seen: list[str] = []

    def _receive(self) -> None:
        with contextlib.suppress(TimeoutError):
            self.seen.append(self.sock.recv(4096).decode())

    def lines(self, prefix: str) -> list[str]:
        """Every assignment seen so far that starts with ``prefix`` (``READY=1``, ``STATUS=``...)."""
        return [line for m in self.seen for line in m.split("\n") if line.startswith(prefix)]

    def wait(self, text: str, timeout: float = 30.0, count: int = 1) -> None:
        """Until ``count`` assignments starting with ``text`` have arrived."""

        def arrived() -> bool:
            self._receive()
            return len(self.lines(text)) >= count

        wait_for(arrived, timeout, interval=0, what=f"{text} x{count} on NOTIFY_SOCKET (saw {self.seen})")

    def close(self) -> None:
        self.sock.close()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A real HTTP server on loopback that records every POST and answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.status = status
        self.requests: list[Received] = []
        receiver = self

        class _Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                receiver.requests.append(Received(self.path, dict(self.headers.items()), body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def fail_pack_fsyncs(monkeypatch: Any) -> Callable[[], None]:
    """Make ``os.fsync`` of any content-store pack fail with EIO (as a dying disk would); the undo."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".pack"):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return lambda: monkeypatch.setattr(os, "fsync", real_fsync)


def disk_full_at_call(monkeypatch: Any, name: str, call: int) -> None:
    """Make the ``call``-th call of ``os.<name>`` (``pwrite``, ``pwritev``) fail with ENOSPC; the others go through."""
    real = getattr(os, name)
    calls = 0

    def write(*args: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == call:
            raise OSError(errno.ENOSPC, "No space left on device")
        return int(real(*args))

    monkeypatch.setattr(os, name, write)
