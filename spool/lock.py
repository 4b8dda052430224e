"""One writer per home: an exclusive ``flock`` on ``<home>/lock`` that records pid and host.

The kernel drops a ``flock`` when its process dies, so a lock left by a crashed process
never blocks a restart; the recorded pid/host only tell the operator who holds a live
lock, and let us say "stale lock from pid N (not running), taken over" when we find one.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path
from types import TracebackType

from bundle.errors import LLTokenError


class LockedError(LLTokenError):
    """Another process holds this home's writer lock."""

    exit_code = 50


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class HomeLock:
    """Exclusive writer lock for a home directory (a context manager)."""

    def __init__(self, home: Path) -> None:
        self.path = home / "lock"
        self.fd: int | None = None
        self.stale: dict[str, object] | None = None

    def _read_owner(self) -> dict[str, object]:
        try:
            owner = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return owner if isinstance(owner, dict) else {}

    def acquire(self) -> HomeLock:
        """Take the lock or fail at once.

        Raises:
            LockedError: a live process holds it (its pid and host are in the message).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = self._read_owner()
            raise LockedError(
                "home is in use by another process; wait for it or stop it",
                expected="no other writer",
                found=f"pid {owner.get('pid')} on host {owner.get('host')}",
                where=str(self.path),
            ) from None
        previous = self._read_owner()
        pid = previous.get("pid")
        if isinstance(pid, int) and pid != os.getpid():
            same_host = previous.get("host") == socket.gethostname()
            if not same_host or not _pid_alive(pid):
                self.stale = previous
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> HomeLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


__all__ = ["HomeLock", "LockedError"]
