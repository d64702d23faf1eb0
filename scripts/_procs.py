"""What the server scripts (Kafka broker, S3 server, GCS and Azure emulators) share: free ports, a
one-time build under a lock, waiting for an HTTP answer and stopping a server by its pid file.

Imported as a sibling module: the scripts run as ``python scripts/NAME.py`` (their folder is on
``sys.path``), and tests/conftest.py appends this folder before loading them.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

# Servers started by this process, reaped by stop_server() (a dropped Popen would warn).
PROCS: dict[int, subprocess.Popen[bytes]] = {}


class ToolMissingError(RuntimeError):
    """A toolchain an emulator is built with (go, npm) is not installed: the message says which and how."""


@contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed): one build at a time across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def answers(url: str, timeout: float = 0.5) -> bool:
    """True when an HTTP server answers at ``url``, whatever the status (stores answer 4xx to strangers)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):  # noqa: S310 - our own loopback URL
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def track(proc: subprocess.Popen[bytes], pid_file: Path) -> None:
    """Remember a started server, here (to reap it) and in ``pid_file`` (for other processes)."""
    PROCS[proc.pid] = proc
    pid_file.write_text(str(proc.pid))


def untrack(pid_file: Path, proc: subprocess.Popen[bytes]) -> None:
    """Forget a server that exited on its own (it was waited on)."""
    PROCS.pop(proc.pid, None)
    pid_file.unlink(missing_ok=True)


def stop_server(pid_file: Path, *, hard: bool = False, grace: float = 10.0) -> None:
    """SIGTERM (SIGKILL with ``hard``) the server whose pid is in ``pid_file``, SIGKILL after ``grace``
    seconds; wait until it is gone and remove the file. No-op when there is no file."""
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    proc = PROCS.pop(pid, None)
    try:
        os.kill(pid, signal.SIGKILL if hard else signal.SIGTERM)
    except ProcessLookupError:
        if proc is not None:
            proc.wait()  # reap it
        pid_file.unlink(missing_ok=True)
        return
    if proc is not None:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    else:
        # Started by another process (the CLI): we cannot wait() on it, so poll until it is gone.
        deadline = time.monotonic() + grace
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _running(pid):
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _running(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
    pid_file.unlink(missing_ok=True)


def pick_port(directory: Path, port: int | None) -> int:
    """The port for a server kept in ``directory``: ``port``, else the one it had before (a restart
    keeps clients' endpoints), else a free one. Makes the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    port_file = directory / "server.port"
    if port is None:
        port = int(port_file.read_text()) if port_file.exists() else free_port()
    return port


def launch(
    directory: Path,
    port: int,
    command: list[str],
    probe_url: str,
    *,
    what: str,
    timeout: float,
    env: Mapping[str, str] | None = None,
    exit_hint: str = "port taken?",
) -> None:
    """Run ``command`` as a server logging to ``directory``/server.log, tracked by its pid file, and
    wait until ``probe_url`` answers. ``what`` names it in errors; a server that never answers is stopped."""
    log_path = directory / "server.log"
    pid_file = directory / "server.pid"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    track(proc, pid_file)
    (directory / "server.port").write_text(str(port))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            untrack(pid_file, proc)
            raise RuntimeError(f"{what} exited with code {proc.returncode} (port {port}: {exit_hint}); see {log_path}")
        if answers(probe_url):
            return
        time.sleep(0.05)
    stop_server(pid_file)
    raise RuntimeError(f"{what} did not answer at {probe_url} within {timeout} s; see {log_path}")


def _running(pid: int) -> bool:
    """Alive and not a zombie child of ours (reaped here if it is one)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return alive(pid)
    return done == 0
