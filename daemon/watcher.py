"""The watchdog adapter: filesystem events in, "this dataset changed at this path" out.

Kept thin on purpose: the handler runs on watchdog's thread, so it only routes a path to its
dataset and records it; hashing and versioning happen on the engine's thread.

watchdog does not pass the kernel's inotify queue-overflow signal to handlers (its issue
#654), so an emitter subclass turns it into an ``OverflowEvent``; the engine answers an
overflow with a full reconcile of the affected roots.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver, ObservedWatch

log = logging.getLogger(__name__)

# watchdog re-adds every sub-folder watch after an overflow, then replays the queued IN_CREATE
# of a folder it just re-added and warns; harmless, and it must not reach stderr (or, under a
# strict warnings filter, kill watchdog's reader thread).
warnings.filterwarnings("ignore", message=r"Callback with id .* already exists", category=RuntimeWarning)


# "write": bytes may still be coming (modified, no close yet); "done": the file is complete
# (closed after writing, renamed into place); "created"; "touch": attributes only; "gone";
# "dir": a folder appeared (walk it).
Kind = Literal["write", "done", "created", "touch", "gone", "dir"]
OnPath = Callable[[str, Kind], None]
OnOverflow = Callable[[str], None]


class OverflowEvent(FileSystemEvent):
    """The kernel dropped events for the watch at ``src_path``."""

    event_type = "overflow"


# What we subscribe to. Not opens and no-write closes: our own reads would echo back.
_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    OverflowEvent,  # ours; emitters drop event classes missing from the filter
]


_EVENT_CLASSES = tuple(_EVENTS)


def _make_observer(handler: FileSystemEventHandler) -> BaseObserver:
    if sys.platform.startswith("linux"):
        from watchdog.observers.inotify import InotifyEmitter, InotifyObserver, InotifyWatchGroup
        from watchdog.observers.inotify_move_event_grouper import PathedInotifyEvent

        class _SignallingWatchGroup(InotifyWatchGroup):
            emitter: Any = None

            def on_queue_overflow(self) -> None:
                super().on_queue_overflow()
                if self.emitter is not None:
                    self.emitter.queue_event(OverflowEvent(self.emitter.watch.path))

        class _SignallingEmitter(InotifyEmitter):
            def queue_event(self, event: FileSystemEvent) -> None:
                # Handled right here on the emitter's thread: the observer's queue and dispatcher
                # thread cost two more thread hand-offs per event (most of the daemon's CPU in a
                # 20,000-file burst), and the handler only routes a path under a lock.
                if isinstance(event, _EVENT_CLASSES):
                    handler.dispatch(event)

            def build_and_queue_event(self, event: Any, *, full_events: bool = False) -> None:
                # A folder moved in (or within): watchdog would walk it and queue an event per
                # file inside (20,000 for a 20,000-file folder), each then routed and stat'ed
                # again; the engine walks a "dir" path itself, so one event is enough.
                if isinstance(event, PathedInotifyEvent):
                    if event.ev.is_moved_to and event.ev.is_directory:
                        self.queue_event(DirCreatedEvent(self._decode_path(event.path)))
                        return
                else:
                    move_from, move_to = event
                    if move_from.ev.is_directory:
                        self.queue_event(
                            DirMovedEvent(self._decode_path(move_from.path), self._decode_path(move_to.path))
                        )
                        return
                super().build_and_queue_event(event, full_events=full_events)

            def on_thread_start(self) -> None:
                path = os.fsencode(self.watch.path)
                group = _SignallingWatchGroup(
                    self._inotify_fd,
                    path,
                    is_recursive=self.watch.is_recursive,
                    event_mask=self.get_event_mask_from_filter(),
                    follow_symlink=self.watch.follow_symlink,
                )
                group.emitter = self
                self._inotify = group

        observer = InotifyObserver()
        observer._emitter_class = _SignallingEmitter
        return observer
    from watchdog.observers import Observer

    return Observer()


class _Handler(FileSystemEventHandler):
    def __init__(self, on_path: OnPath, on_overflow: OnOverflow) -> None:
        self._on_path = on_path
        self._on_overflow = on_overflow

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._route(event)
        except Exception:  # a bug here must not kill watchdog's thread
            log.exception("cannot handle filesystem event %r", event)

    def _route(self, event: FileSystemEvent) -> None:
        src = os.fsdecode(event.src_path)
        if isinstance(event, OverflowEvent):
            self._on_overflow(src)
        elif isinstance(event, FileClosedEvent):
            self._on_path(src, "done")
        elif isinstance(event, FileModifiedEvent):
            self._on_path(src, "write")
        elif isinstance(event, FileCreatedEvent):
            # Not "write": watchdog also emits creations it simulates for files found in a new
            # folder, and those never get a close event. Real writes follow as IN_MODIFY.
            self._on_path(src, "created")
        elif isinstance(event, FileAttribEvent):
            self._on_path(src, "touch")
        elif isinstance(event, FileDeletedEvent | DirDeletedEvent):
            self._on_path(src, "gone")
        elif isinstance(event, FileMovedEvent):
            self._on_path(src, "gone")
            if event.dest_path:
                self._on_path(os.fsdecode(event.dest_path), "done")
        elif isinstance(event, DirMovedEvent):
            self._on_path(src, "gone")
            if event.dest_path:
                self._on_path(os.fsdecode(event.dest_path), "dir")
        elif isinstance(event, DirCreatedEvent):
            self._on_path(src, "dir")


class Watcher:
    """Watches a set of roots; (re)schedules roots that appear and forgets roots that vanish."""

    def __init__(self, on_path: OnPath, on_overflow: OnOverflow) -> None:
        self._handler = _Handler(on_path, on_overflow)
        self._observer = _make_observer(self._handler)
        self._watches: dict[tuple[str, bool], ObservedWatch] = {}
        self.restarts = 0

    def __enter__(self) -> Watcher:
        self._observer.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self._stop_observer()

    def _stop_observer(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=10)

    def _threads_alive(self) -> bool:
        # The observer and, on Linux, the one thread that reads the inotify descriptor: if either
        # died, no event arrives any more, silently.
        reader = getattr(self._observer, "_inotify_fd", None)
        return self._observer.is_alive() and (reader is None or reader.is_alive())

    def _restart_if_dead(self) -> bool:
        if self._threads_alive():
            return False
        self.restarts += 1
        log.error("the filesystem watcher stopped; restarting it and re-scanning every root")
        with contextlib.suppress(Exception):
            self._stop_observer()
        self._observer = _make_observer(self._handler)
        self._watches.clear()
        self._observer.start()
        return True

    def ensure(self, roots: dict[str, bool]) -> list[str]:
        """Watch each existing root (path → recursive); return roots newly watched.

        Newly watched roots may have missed events (they appeared, or the watcher was restarted),
        so the caller reconciles them.
        """
        self._restart_if_dead()
        added = []
        alive = {e.watch for e in self._observer.emitters if e.is_alive()}
        for key, watch in list(self._watches.items()):
            if roots.get(key[0]) != key[1] or watch not in alive:
                self._observer.unschedule(watch)
                del self._watches[key]
        for root, recursive in roots.items():
            key = (root, recursive)
            if key in self._watches or not os.path.isdir(root):
                continue
            try:
                self._watches[key] = self._observer.schedule(
                    self._handler, root, recursive=recursive, event_filter=_EVENTS
                )
            except OSError as exc:
                log.warning("cannot watch %s: %s; it is reconciled periodically instead", root, exc)
                continue
            added.append(root)
        return added
