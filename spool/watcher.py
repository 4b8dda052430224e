"""The inbox watcher: hand each arriving bundle to ingest as soon as it is whole.

Bundles arrive two ways.  By rename (our own writers, ``sync``, ``mv`` from another folder on
the same filesystem): the file is whole the moment its final name appears, and is handed
over at once.  By copy in place (``cp``, a file manager): the final name appears first and
the size grows; we wait until the file is as long as its own header says, or until its
size has been stable for ``settle`` seconds (then ingest quarantines what is there, with a
reason).  Names starting with ``.`` are other programs' temporary files and are ignored.

watchdog delivers the events; a periodic rescan catches anything an event missed (for
example files that were already there at start).  SIGINT and SIGTERM stop the loop
cleanly between two bundles.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from bundle.envelope import read_prefix
from bundle.errors import LLTokenError


def is_complete(path: Path) -> bool:
    """True when ``path`` is as long as its header declares (cheap: reads the prefix)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            read_prefix(f, size, str(path))
    except (OSError, LLTokenError):
        return False
    return True


class _Events(FileSystemEventHandler):
    def __init__(self, inbox: Path, out: queue.Queue[Path]) -> None:
        self.inbox = inbox
        self.out = out

    def _push(self, raw: bytes | str) -> None:
        path = Path(raw.decode() if isinstance(raw, bytes) else raw)
        if path.parent == self.inbox and not path.name.startswith("."):
            self.out.put(path)

    def on_created(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._push(event.src_path)

    def on_modified(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._push(event.src_path)

    def on_closed(self, event: FileSystemEvent) -> None:
        self._push(event.src_path)

    def on_moved(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._push(event.dest_path)


def stop_on_signals(stop: threading.Event) -> None:
    """Make SIGINT and SIGTERM set ``stop`` (main thread only)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


class InboxWatcher:
    """Calls ``on_ready(paths)`` with whole bundles from ``inbox`` until stopped."""

    def __init__(
        self,
        inbox: Path,
        on_ready: Callable[[list[Path]], None],
        *,
        settle: float = 2.0,
        # A cheap listing every tick: watchdog holds moved-out events for 0.5 s, which
        # would otherwise delay files arriving right after an ingest archived one.
        rescan: float = 0.1,
        tick: float = 0.05,
    ) -> None:
        self.inbox = inbox
        self.on_ready = on_ready
        self.settle = settle
        self.rescan = rescan
        self.tick = tick
        self.events: queue.Queue[Path] = queue.Queue()
        # path -> (last size seen, when that size was first seen)
        self.pending: dict[Path, tuple[int, float]] = {}
        # path -> (size, mtime) when handed over, so a late event for the same file in the
        # same state (e.g. its close) does not hand it over twice
        self.handed: dict[Path, tuple[int, int]] = {}

    def _note(self, path: Path, now: float) -> None:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            self.pending.pop(path, None)
            return
        last = self.pending.get(path)
        if last is None or last[0] != size:
            self.pending[path] = (size, now)

    def _ready(self, now: float) -> list[Path]:
        ready = []
        for path, (_size, since) in list(self.pending.items()):
            try:
                stat = path.stat()
            except FileNotFoundError:
                del self.pending[path]
                self.handed.pop(path, None)
                continue
            state = (stat.st_size, stat.st_mtime_ns)
            if self.handed.get(path) == state:
                del self.pending[path]
            elif is_complete(path) or now - since >= self.settle:
                ready.append(path)
                self.handed[path] = state
                del self.pending[path]
        for path in [p for p in self.handed if not p.exists()]:
            del self.handed[path]
        return sorted(ready)

    def run(self, stop: threading.Event, on_tick: Callable[[], None] | None = None) -> None:
        """Watch until ``stop`` is set; ``on_tick`` runs about once a second (media polls,
        deadline checks)."""
        self.inbox.mkdir(parents=True, exist_ok=True)
        observer = Observer()
        observer.schedule(_Events(self.inbox, self.events), str(self.inbox), recursive=False)
        observer.start()
        last_scan = 0.0
        last_tick = 0.0
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now - last_scan >= self.rescan:
                    for path in self.inbox.iterdir():
                        if not path.name.startswith(".") and path.is_file():
                            self._note(path, now)
                    last_scan = now
                try:
                    path = self.events.get(timeout=self.tick)
                    self._note(path, time.monotonic())
                    while True:  # drain a burst before acting on it
                        self._note(self.events.get_nowait(), time.monotonic())
                except queue.Empty:
                    pass
                ready = self._ready(time.monotonic())
                if ready:
                    self.on_ready(ready)
                if on_tick is not None and now - last_tick >= 1.0:
                    on_tick()
                    last_tick = now
        finally:
            observer.stop()
            observer.join(timeout=5)


__all__ = ["InboxWatcher", "is_complete", "stop_on_signals"]
