"""The durable write helper under injected faults, and the single-writer home lock."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from spool import HomeLock, LockedError, atomic_write, write_bytes_atomic


@pytest.mark.parametrize("fail", ["fsync", "replace", "write"])
def test_failed_atomic_write_leaves_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: str
) -> None:
    target = tmp_path / "state.bin"
    write_bytes_atomic(target, b"old")

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError(5, "injected I/O error")

    if fail in ("fsync", "replace"):
        monkeypatch.setattr(os, fail, boom)

    def write_new() -> None:
        with atomic_write(target) as f:
            f.write(b"new")
            if fail == "write":
                boom()

    with pytest.raises(OSError, match="injected"):
        write_new()
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.bin"]


def test_atomic_write_sets_mode_and_refuses_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    with atomic_write(target, mode=0o600) as f:
        f.write(b"x")
    assert (target.stat().st_mode & 0o777) == 0o600
    with pytest.raises(FileExistsError), atomic_write(target, overwrite=False) as f:
        f.write(b"y")
    assert target.read_bytes() == b"x"


def test_second_writer_is_refused_with_owner(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from spool import HomeLock;"
        "lock = HomeLock(Path(sys.argv[1])).acquire(); print('locked', flush=True);"
        "time.sleep(30)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError) as err:
            HomeLock(tmp_path).acquire()
        assert f"pid {holder.pid}" in str(err.value)
        assert socket.gethostname() in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    # The kernel released the dead holder's lock; its record is reported as stale.
    with HomeLock(tmp_path) as lock:
        assert lock.stale is not None
        assert lock.stale["pid"] == holder.pid
