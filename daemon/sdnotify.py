"""systemd's notification protocol: readiness, status, reload, stop, start timeouts and watchdog pings.

``Type=notify`` services send one datagram of newline-separated ``KEY=VALUE`` lines to the
AF_UNIX socket named by ``$NOTIFY_SOCKET`` (sd_notify(3)); that is the whole protocol, so no
libsystemd binding is needed. Outside systemd (no ``NOTIFY_SOCKET``: a shell, Docker, the
tests) every call is a no-op, so the daemon and the consumers call it unconditionally.

``WatchdogPinger`` sends ``WATCHDOG=1`` every half ``WatchdogSec=`` only while a ``healthy()``
callable holds (typically ``Heartbeat.fresh``): a hung loop stops the pings and systemd
kills and restarts the service, where a bare timer thread would keep a wedged daemon alive.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType

__all__ = ["Heartbeat", "Notifier", "WatchdogPinger"]

log = logging.getLogger(__name__)

# A notification must never stall the caller: systemd reads its socket promptly, and a full
# queue means systemd is in trouble, not that the daemon should wait.
_SEND_TIMEOUT_SECONDS = 2.0


class Notifier:
    """Sends sd_notify messages to ``address``; every method is a no-op when it is None."""

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self.address = address
        self._watchdog_usec = watchdog_usec
        self._failed = False
        self._target: str | bytes | None = None
        if address is not None:
            if address.startswith("@"):  # the abstract namespace: a leading NUL instead of '@'
                self._target = b"\0" + address[1:].encode()
            elif address.startswith("/"):
                self._target = address
            else:  # vsock:, relative paths: systemd never hands those to a Python daemon of ours
                log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract socket: not notifying systemd", address)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, *, pid: int | None = None) -> Notifier:
        """The notifier systemd asked for through the environment of this process.

        These variables are systemd's protocol, not Strandline configuration, hence read here
        rather than in ``daemon.config``. ``WATCHDOG_PID`` names the process the watchdog is
        meant for; a child that inherited it (e.g. a retrain command) must not ping for us.
        """
        env = os.environ if environ is None else environ
        usec: int | None = None
        try:
            usec = int(env.get("WATCHDOG_USEC", "")) or None
        except ValueError:
            usec = None
        watchdog_pid = env.get("WATCHDOG_PID", "")
        if usec is not None and watchdog_pid and watchdog_pid != str(os.getpid() if pid is None else pid):
            usec = None
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_usec=usec)

    @property
    def enabled(self) -> bool:
        return self._target is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half ``WatchdogSec=``, as sd_watchdog_enabled(3) advises)."""
        if not self.enabled or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2_000_000

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram; True when it was sent. Never raises."""
        if self._target is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:  # CLOEXEC by default
                sock.settimeout(_SEND_TIMEOUT_SECONDS)
                sock.sendto("\n".join(assignments).encode(), self._target)
        except OSError as exc:
            # Once at WARNING: an unreachable socket stays unreachable, and the watchdog pings often.
            log.log(
                logging.DEBUG if self._failed else logging.WARNING,
                "cannot notify systemd at %s: %s",
                self.address,
                exc,
            )
            self._failed = True
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete (``Type=notify`` units count as started from here)."""
        return self.notify("READY=1", *([_status(status)] if status is not None else []))

    def status(self, text: str) -> bool:
        """One line for `systemctl status`."""
        return self.notify(_status(text))

    def stopping(self) -> bool:
        """A clean stop has begun."""
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        """A reload has begun; call ``ready()`` when it is done.

        ``MONOTONIC_USEC`` (CLOCK_MONOTONIC, which ``time.monotonic_ns`` reads on Linux) lets
        systemd >= 253 match the message to its ``Type=notify-reload`` request; older ones ignore it.
        """
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before the current start (or stop) times out (``EXTEND_TIMEOUT_USEC``).

        For a start that waits on something outside (Kafka): sent again before each wait, it keeps
        ``TimeoutStartSec=`` from killing a process that is still trying, while one that hangs
        stops sending and is still killed. systemd >= 236; older ones ignore it.
        """
        return self.notify(f"EXTEND_TIMEOUT_USEC={round(seconds * 1_000_000)}")

    def watchdog(self) -> bool:
        """Ping the watchdog; a no-op when the unit has no ``WatchdogSec=`` for this process."""
        if self._watchdog_usec is None:
            return False
        return self.notify("WATCHDOG=1")


def _status(text: str) -> str:
    # A newline would start another assignment (e.g. a file name containing "\nREADY=1").
    return "STATUS=" + " ".join(text.splitlines())


class Heartbeat:
    """When a loop last came round: the loop calls ``beat()``; ``fresh(within)`` is a ``healthy``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last = clock()

    def beat(self) -> None:
        self._last = self._clock()  # one float store: atomic, no lock needed

    def age(self) -> float:
        return self._clock() - self._last

    def fresh(self, within: float) -> bool:
        return self.age() < within


class WatchdogPinger:
    """A thread that pings the watchdog every half ``WatchdogSec=`` while ``healthy()`` is True.

    Without a watchdog for this process (``notifier.watchdog_interval`` is None) ``start()``
    does nothing. Pings resume if ``healthy()`` recovers before ``WatchdogSec=`` runs out.
    """

    def __init__(
        self,
        notifier: Notifier,
        healthy: Callable[[], bool],
        *,
        name: str = "sd-watchdog",
    ) -> None:
        self.notifier = notifier
        self.healthy = healthy
        self.interval = notifier.watchdog_interval
        self.pings = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        if self.interval is None:
            log.debug("no systemd watchdog for this process: not pinging")
            return
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> WatchdogPinger:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _is_healthy(self) -> bool:
        try:
            return bool(self.healthy())
        except Exception:
            log.exception("watchdog health check failed: counted as unhealthy")
            return False

    def _run(self) -> None:
        assert self.interval is not None
        pinging = True
        while not self._stop.is_set():
            healthy = self._is_healthy()
            if healthy:
                if self.notifier.watchdog():
                    self.pings += 1
                if not pinging:
                    log.info("healthy again: pinging the systemd watchdog again")
            elif pinging:
                log.warning("unhealthy: no more systemd watchdog pings; systemd restarts the service at WatchdogSec=")
            pinging = healthy
            self._stop.wait(self.interval)
