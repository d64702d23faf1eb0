"""Temp files named after the process writing them, and their removal once that process is gone.

The content store (its ``tmp/`` and a bucket store's spool) and restore (its marker) name
what they are writing ``<pid>.…``, so whoever opens the folder next can tell a live writer's
file from one a crash left behind.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import suppress
from typing import Final

__all__ = ["STALE_SECONDS", "pid_alive", "remove_dead_writers_temps"]

log = logging.getLogger(__name__)

# A temp file whose writer is alive is kept, unless it is older than this (the pid was reused).
STALE_SECONDS: Final = 24 * 3600


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_writers_temps(folder: str) -> int:
    """Remove the files in ``folder`` whose writer (the pid their name starts with) is gone; how many."""
    removed = 0
    now = time.time()
    with os.scandir(folder) as entries:
        for entry in entries:
            pid_text = entry.name.split(".", 1)[0]
            try:
                pid = int(pid_text)
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except (ValueError, OSError):
                pid, age = 0, STALE_SECONDS
            if pid > 0 and pid_alive(pid) and age < STALE_SECONDS:
                continue
            with suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
    return removed
