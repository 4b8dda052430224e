"""Atomic, durable file writes: the one helper every durable write in the project uses.

The recipe is Borg's ``SaveFile``: write a temporary file in the destination directory,
flush and fsync it, ``os.replace`` it onto the final name, then fsync the directory so
the rename itself survives a power cut.  On any failure the temporary file is removed
and the destination is untouched, so a reader sees either the old file or the new one,
never a torn one.  It lives in ``bundle/`` (the bottom layer) so the keystore can use it;
``spool`` re-exports it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path_for(path: Path) -> Path:
    """A temporary name beside ``path``; the leading dot and ``.tmp`` keep watchers off."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def atomic_write(path: Path, *, mode: int = 0o644, overwrite: bool = True) -> Iterator[BinaryIO]:
    """Open a temporary file that becomes ``path`` atomically when the block ends cleanly.

    Args:
        path: the final name.
        mode: permission bits of the new file (0600 for secrets).
        overwrite: if False, fail instead of replacing an existing ``path``.

    Raises:
        FileExistsError: ``overwrite`` is False and ``path`` exists.
        OSError: the write, fsync or rename failed (the temporary file is removed).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if not overwrite and path.exists():
            raise FileExistsError(f"refusing to replace {path}")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def write_bytes_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Durably replace ``path`` with ``data``."""
    with atomic_write(path, mode=mode) as f:
        f.write(data)


__all__ = ["atomic_write", "fsync_dir", "temp_path_for", "write_bytes_atomic"]
