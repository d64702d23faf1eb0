"""SIGTERM/SIGINT for long-running loops (the daemon, the consumers): ask once, force twice."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)


def install_stop_handlers(request_stop: Callable[[], None], stopping: Callable[[], bool]) -> None:
    """The first SIGTERM/SIGINT calls ``request_stop``; a second one, once ``stopping``, exits at once."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if stopping():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("%s received: finishing in-flight work", signal.Signals(signum).name)
        request_stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
