"""sd_notify against real AF_UNIX datagram sockets standing in for systemd's notification socket."""

from __future__ import annotations

import logging
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon.sdnotify import Heartbeat, Notifier, WatchdogPinger

_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid


class Systemd:
    """The receiving end of NOTIFY_SOCKET, as systemd sees it: each datagram and its sender's pid."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address  # what NOTIFY_SOCKET says

    def recv(self, timeout: float = 10.0) -> tuple[str, int]:
        self.sock.settimeout(timeout)
        data, ancdata, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(_CREDS.size))
        pid = next(
            _CREDS.unpack(cdata[: _CREDS.size])[0]
            for level, kind, cdata in ancdata
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
        )
        return data.decode(), pid

    def message(self, timeout: float = 10.0) -> str:
        return self.recv(timeout)[0]

    def pending(self) -> list[str]:
        """What has arrived so far, without waiting."""
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return out


def _bind(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # what systemd does, for NotifyAccess=main
    sock.bind(address)
    return sock


@pytest.fixture(autouse=True)
def _no_systemd_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run under systemd or not, each test sets the variables it means."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Systemd]:
    path = tmp_path / "notify"
    assert len(str(path)) < 100, f"{path} is too long for an AF_UNIX address (108 bytes): use a shorter --basetemp"
    with _bind(str(path)) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield Systemd(sock, str(path))


@pytest.fixture
def abstract_systemd(monkeypatch: pytest.MonkeyPatch) -> Iterator[Systemd]:
    name = f"strandline-test/{uuid.uuid4().hex}"
    with _bind(b"\0" + name.encode()) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield Systemd(sock, "@" + name)


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


# -- Notifier ------------------------------------------------------------------------------------


def test_lifecycle_messages_arrive_as_the_exact_datagrams_systemd_expects(
    systemd: Systemd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    notifier = Notifier.from_environ()
    assert notifier.ready()
    assert systemd.message() == "READY=1"
    assert notifier.ready("watching 3 datasets")
    assert systemd.message() == "READY=1\nSTATUS=watching 3 datasets"
    assert notifier.status("Kafka unreachable: 12 events in the outbox")
    assert systemd.message() == "STATUS=Kafka unreachable: 12 events in the outbox"
    assert notifier.watchdog()
    assert systemd.message() == "WATCHDOG=1"
    assert notifier.stopping()
    assert systemd.message() == "STOPPING=1"
    assert systemd.pending() == []


def test_abstract_socket_addresses_are_supported(abstract_systemd: Systemd) -> None:
    assert Notifier.from_environ().ready("up")
    message, pid = abstract_systemd.recv()
    assert (message, pid) == ("READY=1\nSTATUS=up", os.getpid())


def test_a_newline_in_a_status_cannot_smuggle_in_another_assignment(systemd: Systemd) -> None:
    Notifier.from_environ().status("new file sales\nREADY=1.csv")
    assert systemd.message() == "STATUS=new file sales READY=1.csv"


def test_reloading_carries_the_monotonic_clock_for_notify_reload(systemd: Systemd) -> None:
    before = time.monotonic_ns() // 1000
    Notifier.from_environ().reloading()
    after = time.monotonic_ns() // 1000
    first, second = systemd.message().split("\n")
    assert first == "RELOADING=1"
    key, _, usec = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(usec) <= after


def test_extend_timeout_asks_for_whole_microseconds(systemd: Systemd) -> None:
    notifier = Notifier.from_environ()
    assert notifier.extend_timeout(61.5)
    assert systemd.message() == "EXTEND_TIMEOUT_USEC=61500000"


def test_watchdog_interval_is_half_of_watchdog_usec(systemd: Systemd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert Notifier.from_environ().watchdog_interval == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier.from_environ().watchdog_interval == 15.0


def test_no_watchdog_pings_for_a_watchdog_meant_for_another_process(
    systemd: Systemd, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A child (say, a retrain command) inherits WATCHDOG_PID of its parent: it must not ping for it.
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    notifier = Notifier.from_environ()
    assert notifier.watchdog_interval is None
    assert not notifier.watchdog()
    with WatchdogPinger(notifier, lambda: True) as pinger:
        assert not pinger._thread.is_alive()
    assert notifier.ready()  # the rest of the protocol still works
    assert systemd.pending() == ["READY=1"]


def test_without_watchdog_usec_there_is_no_watchdog(systemd: Systemd) -> None:
    notifier = Notifier.from_environ()
    assert notifier.watchdog_interval is None
    assert not notifier.watchdog()
    assert systemd.pending() == []


def test_without_notify_socket_every_call_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    notifier = Notifier.from_environ()
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert [notifier.ready("x"), notifier.status("x"), notifier.reloading(), notifier.stopping()] == [False] * 4
    assert not notifier.watchdog()


def test_an_unreachable_socket_never_raises_and_warns_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    notifier = Notifier.from_environ()
    with caplog.at_level(logging.DEBUG, logger="daemon.sdnotify"):
        assert [notifier.ready(), notifier.watchdog(), notifier.watchdog(), notifier.stopping()] == [False] * 4
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.DEBUG, logging.DEBUG, logging.DEBUG]
    assert str(tmp_path / "gone") in caplog.records[0].getMessage()


def test_an_unsupported_address_disables_notifications(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    notifier = Notifier.from_environ()
    assert not notifier.enabled
    assert not notifier.ready()


# -- WatchdogPinger ------------------------------------------------------------------------------


class _Health:
    """healthy() for the pinger: True for the first ``good`` calls, then False until ``recover()``."""

    def __init__(self, good: int) -> None:
        self.good = good
        self.calls = 0
        self._lock = threading.Lock()
        self._recovered = False

    def __call__(self) -> bool:
        with self._lock:
            self.calls += 1
            return self._recovered or self.calls <= self.good

    def recover(self) -> None:
        with self._lock:
            self._recovered = True


def test_pinger_stops_pinging_while_unhealthy_and_resumes_when_healthy_again(
    systemd: Systemd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000")  # WatchdogSec=20ms: a ping every 10 ms
    notifier = Notifier.from_environ()
    health = _Health(good=3)
    with WatchdogPinger(notifier, health) as pinger:
        assert pinger.interval == 0.01
        # Each check runs after the previous ping was sent, so once healthy() has said False
        # three times every ping of the healthy phase is in the socket, and no later one.
        _wait_for(lambda: health.calls >= 6)
        assert systemd.pending() == ["WATCHDOG=1"] * 3
        assert pinger.pings == 3
        health.recover()
        assert systemd.message() == "WATCHDOG=1"
    assert not pinger._thread.is_alive()


def test_pinger_counts_a_failing_health_check_as_unhealthy(systemd: Systemd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000")
    calls: list[int] = []

    def broken() -> bool:
        calls.append(1)
        raise RuntimeError("engine gone")

    with WatchdogPinger(Notifier.from_environ(), broken):
        _wait_for(lambda: len(calls) >= 3)
    assert systemd.pending() == []


def test_pinger_stops_at_once_however_long_its_interval(systemd: Systemd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", str(3600 * 1_000_000))
    pinger = WatchdogPinger(Notifier.from_environ(), lambda: True)
    pinger.start()
    assert systemd.message() == "WATCHDOG=1"  # the first ping goes out at start, not after an interval
    started = time.monotonic()
    pinger.stop()
    assert not pinger._thread.is_alive()
    assert time.monotonic() - started < 5.0


def test_heartbeat_is_fresh_only_within_its_window() -> None:
    now = [100.0]
    heartbeat = Heartbeat(clock=lambda: now[0])
    now[0] = 129.0
    assert heartbeat.fresh(30.0)
    now[0] = 131.0
    assert not heartbeat.fresh(30.0)
    heartbeat.beat()
    assert heartbeat.fresh(30.0)
    assert heartbeat.age() == 0.0


# -- end to end: another process, as systemd would start it -------------------------------------

_CHILD = textwrap.dedent(
    """
    import threading
    from daemon.sdnotify import Notifier, WatchdogPinger

    notifier = Notifier.from_environ()
    checked = threading.Event()

    def healthy():
        checked.set()  # the first ping follows at once
        return True

    with WatchdogPinger(notifier, healthy):
        notifier.ready("watching")
        checked.wait(30)
    notifier.stopping()
    """
)


def test_a_child_process_reports_ready_pings_from_its_main_pid_and_stops(systemd: Systemd, tmp_path: Path) -> None:
    # systemd's NotifyAccess=main accepts only datagrams whose SCM_CREDENTIALS pid is the main
    # pid: the pinger's thread must send as the process itself.
    env = {**os.environ, "WATCHDOG_USEC": "60000000"}
    with subprocess.Popen([sys.executable, "-c", _CHILD], env=env, cwd=Path(__file__).parent.parent) as proc:
        messages = [systemd.recv() for _ in range(3)]
        assert proc.wait(timeout=30) == 0
    assert sorted(m for m, _ in messages[:2]) == ["READY=1\nSTATUS=watching", "WATCHDOG=1"]
    assert messages[2][0] == "STOPPING=1"
    assert {pid for _, pid in messages} == {proc.pid}
