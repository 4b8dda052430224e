"""The spool folders of a home, and quarantine.

Every home (coordinator or agent) has::

    spool/inbox/          bundles waiting to be ingested (final names only count)
    spool/outbox/<peer>/  bundles for one peer (its key id in hex), or for ``all``
    spool/tmp/            temporary files and private staging for media copies
    spool/archive/        bundles that were ingested
    spool/quarantine/     rejected bundles, each with ``<name>.reason.json`` beside it

Nothing is deleted silently: a file leaves the inbox by being archived or quarantined.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from bundle.durable import fsync_dir, write_bytes_atomic
from bundle.errors import LLTokenError

BROADCAST = "all"
PEER_RE = re.compile(r"^(all|[0-9a-f]{32})$")


@dataclass(frozen=True)
class SpoolDirs:
    """The folder names of one home's spool."""

    root: Path

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def outbox_root(self) -> Path:
        return self.root / "outbox"

    def outbox(self, peer: str) -> Path:
        if not PEER_RE.match(peer):
            raise ValueError(f"not a peer folder name: {peer!r}")
        return self.outbox_root / peer

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def staging(self) -> Path:
        return self.root / "tmp" / "staging"

    @property
    def archive(self) -> Path:
        return self.root / "archive"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    def create(self) -> SpoolDirs:
        for path in (
            self.inbox,
            self.outbox_root,
            self.tmp,
            self.staging,
            self.archive,
            self.quarantine,
        ):
            path.mkdir(parents=True, exist_ok=True)
        return self


def move_durably(src: Path, dest_dir: Path) -> Path:
    """Rename ``src`` into ``dest_dir`` (same filesystem) and make both directories durable."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / src.name
    os.replace(src, dest)
    fsync_dir(dest_dir)
    fsync_dir(src.parent)
    return dest


def reason_record(error: LLTokenError | str, check: str | None = None) -> dict[str, object]:
    """The machine-readable reason written beside a quarantined file."""
    if isinstance(error, LLTokenError):
        record = error.to_dict()
        record["check"] = check or type(error).__name__
    else:
        record = {
            "check": check or "rejected",
            "reason": error,
            "expected": None,
            "found": None,
            "where": None,
            "error": None,
            "exit_code": None,
        }
    record["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return record


def quarantine(
    dirs: SpoolDirs, path: Path, error: LLTokenError | str, check: str | None = None
) -> Path:
    """Move ``path`` to quarantine with a ``.reason.json`` beside it; returns the new path.

    The reason is written first, so a crash in between leaves the file where it was
    (to be retried) rather than a quarantined file without its reason.
    """
    dirs.quarantine.mkdir(parents=True, exist_ok=True)
    record = reason_record(error, check)
    record["file"] = path.name
    reason = dirs.quarantine / f"{path.name}.reason.json"
    write_bytes_atomic(reason, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    if path.parent.resolve() == dirs.quarantine.resolve():
        return path
    return move_durably(path, dirs.quarantine)


__all__ = ["BROADCAST", "SpoolDirs", "move_durably", "quarantine", "reason_record"]
