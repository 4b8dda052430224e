"""Removable media: copy bundles between a home's spool and a mounted stick.

Layout on the stick (any mounted folder; typically FAT32, so names are lower-case)::

    lltoken/<federation id hex>/<recipient>/<sender>/<bundle name>.llb

``<recipient>`` and ``<sender>`` are key ids in hex (32 characters); ``<recipient>`` is
``all`` for bundles every agent may read (rosters, global models).  Files larger than
FAT32's 4 GiB limit travel as parts ``<bundle name>.NNN-of-MMM.part``.

Outbound, for each bundle in our outbox: write ``.<name>.<random>.tmp`` on the stick,
fsync, rename, fsync the folder, drop it from the page cache and read it back, comparing
SHA-256 with the source; a stick pulled mid-copy leaves only a temporary name, which no
receiver reads and our next sync removes.  Copies of bundles that have left our outbox
(receipted or expired) are removed from the stick.

Inbound, from our folder and ``all``: only regular files with valid names, within a count
and byte budget per pass; symlinks, devices, odd names and oversized files are skipped
with a reason.  Each file is copied into private staging, checked (name, structure and
payload hash), moved into the inbox and ingested; only then is it removed from the stick
(or, on a read-only stick, remembered as delivered).  Files in ``all`` stay for the others.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import click

from bundle.durable import fsync_dir
from bundle.envelope import check_bundle, parse_name
from bundle.errors import FormatError, IntegrityError, LLTokenError
from spool.home import Handler, IngestReport, SpoolHome, peek_header
from spool.layout import BROADCAST, PEER_RE, move_durably, quarantine

FAT32_MAX_FILE = (4 << 30) - 1
MAX_FILES_PER_PASS = 10_000
MAX_BYTES_PER_PASS = 64 << 30
MAX_FILE_BYTES = 8 << 30
_COPY_CHUNK = 4 << 20
_PROGRESS_MIN = 32 << 20
PART_RE = re.compile(r"^(.+\.llb)\.(\d{3})-of-(\d{3})\.part$")


@dataclass
class SyncSummary:
    """Counts, bytes and reasons from one sync pass."""

    files_out: int = 0
    bytes_out: int = 0
    files_in: int = 0
    bytes_in: int = 0
    removed_from_stick: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    ingest: IngestReport = field(default_factory=IngestReport)
    safe_to_remove: bool = False

    def skip(self, where: Path | str, reason: str) -> None:
        self.skipped.append({"file": str(where), "reason": reason})

    def to_dict(self) -> dict[str, Any]:
        return {
            "files_out": self.files_out,
            "bytes_out": self.bytes_out,
            "files_in": self.files_in,
            "bytes_in": self.bytes_in,
            "removed_from_stick": self.removed_from_stick,
            "skipped": self.skipped,
            "accepted": self.ingest.accepted,
            "rejected": self.ingest.rejected,
            "duplicates": self.ingest.duplicates,
            "safe_to_remove": self.safe_to_remove,
        }

    def lines(self) -> list[str]:
        out = [
            f"out: {self.files_out} files, {self.bytes_out:,} bytes",
            f"in:  {self.files_in} files, {self.bytes_in:,} bytes "
            f"({len(self.ingest.accepted)} accepted, {len(self.ingest.rejected)} rejected, "
            f"{len(self.ingest.duplicates)} duplicates)",
            f"removed from stick after delivery: {self.removed_from_stick}",
        ]
        for item in self.skipped:
            out.append(f"skipped {item['file']}: {item['reason']}")
        for item in self.ingest.rejected:
            out.append(f"rejected {item['file']}: {item.get('reason')}")
        out.append(
            "safe to remove the stick"
            if self.safe_to_remove
            else "NOT safe to remove the stick yet"
        )
        return out


def _progress(total: int, label: str, enabled: bool) -> Any:
    if not enabled or total < _PROGRESS_MIN:
        return None
    return click.progressbar(length=total, label=label, file=click.get_text_stream("stderr"))


def _copy_stream(src: BinaryIO, dst: BinaryIO, length: int, bar: Any) -> bytes:
    """Copy ``length`` bytes, returning their SHA-256."""
    digest = hashlib.sha256()
    left = length
    while left:
        data = src.read(min(_COPY_CHUNK, left))
        if not data:
            raise FormatError(
                "source ended early while copying", expected=length, found=length - left
            )
        digest.update(data)
        dst.write(data)
        left -= len(data)
        if bar is not None:
            bar.update(len(data))
    return digest.digest()


def _hash_uncached(path: Path) -> bytes:
    """SHA-256 of what is on the device: drop the page cache for the file first."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        with os.fdopen(fd, "rb", closefd=False) as f:
            for data in iter(lambda: f.read(_COPY_CHUNK), b""):
                digest.update(data)
    finally:
        os.close(fd)
    return digest.digest()


def _write_verified(src: BinaryIO, length: int, dest: Path, bar: Any) -> None:
    """Temp name on the stick, fsync, rename, fsync folder, read back and compare."""
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as out:
            expected = _copy_stream(src, out, length, bar)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)
    found = _hash_uncached(dest)
    if found != expected:
        dest.unlink(missing_ok=True)
        raise IntegrityError(
            "copy on the stick does not read back the same; the stick may be failing",
            expected=expected.hex(),
            found=found.hex(),
            where=str(dest),
        )


def part_names(name: str, size: int, split_size: int) -> list[str]:
    """The file names a bundle of ``size`` bytes travels under (itself, or its parts)."""
    if size <= split_size:
        return [name]
    count = -(-size // split_size)
    if count > 999:
        raise FormatError("bundle too large to split", expected="<= 999 parts", found=count)
    return [f"{name}.{i:03d}-of-{count:03d}.part" for i in range(1, count + 1)]


def _copy_out(path: Path, dest_dir: Path, split_size: int, bar: Any) -> bool:
    """Put one outbox bundle on the stick unless a complete copy is there; True if copied."""
    size = path.stat().st_size
    names = part_names(path.name, size, split_size)
    sizes = [min(split_size, size - i * split_size) for i in range(len(names))]
    if all(
        (dest_dir / n).is_file() and (dest_dir / n).stat().st_size == s
        for n, s in zip(names, sizes, strict=True)
    ):
        return False
    dest_dir.mkdir(parents=True, exist_ok=True)
    with open(path, "rb") as src:
        for name, part_size in zip(names, sizes, strict=True):
            _write_verified(src, part_size, dest_dir / name, bar)
    return True


def sync_out(
    home: SpoolHome,
    base: Path,
    summary: SyncSummary,
    *,
    split_size: int = FAT32_MAX_FILE,
    progress: bool = False,
) -> None:
    """Copy our outbox onto the stick and tidy our own folders there."""
    me = home.identity.key_id.hex()
    outbox = home.outbox_files()
    wanted: set[str] = set()
    total = sum(p.stat().st_size for p in outbox)
    with ExitStack() as stack:
        bar = _progress(total, "to stick", progress)
        if bar is not None:
            stack.enter_context(bar)
        for path in outbox:
            peer = path.parent.name
            dest_dir = base / peer / me
            wanted.update(
                f"{peer}/{n}" for n in part_names(path.name, path.stat().st_size, split_size)
            )
            if _copy_out(path, dest_dir, split_size, bar):
                summary.files_out += 1
                summary.bytes_out += path.stat().st_size
            elif bar is not None:
                bar.update(path.stat().st_size)
    # Remove what we put there earlier that has left our outbox, and stale temp files.
    if base.is_dir():
        for peer_dir in base.iterdir():
            mine = peer_dir / me
            if not PEER_RE.match(peer_dir.name) or mine.is_symlink() or not mine.is_dir():
                continue
            for entry in mine.iterdir():
                if entry.is_symlink() or not entry.is_file():
                    continue
                stale_tmp = entry.name.startswith(".") and entry.name.endswith(".tmp")
                if stale_tmp or f"{peer_dir.name}/{entry.name}" not in wanted:
                    entry.unlink()
            fsync_dir(mine)


@dataclass
class _Candidate:
    recipient: str
    sender_dir: Path
    name: str
    parts: list[Path]
    size: int


def _scan(base: Path, me: str, summary: SyncSummary, max_files: int) -> Iterator[_Candidate]:
    """Yield complete, regular, well-named bundles addressed to us or to everyone."""
    seen_files = 0
    for recipient in (me, BROADCAST):
        recipient_dir = base / recipient
        if recipient_dir.is_symlink() or not recipient_dir.is_dir():
            continue
        for sender_dir in sorted(recipient_dir.iterdir()):
            if sender_dir.is_symlink() or not sender_dir.is_dir():
                summary.skip(sender_dir, "not a sender folder (symlink or file)")
                continue
            if not PEER_RE.match(sender_dir.name) or sender_dir.name == BROADCAST:
                summary.skip(sender_dir, "sender folder name is not a key id")
                continue
            groups: dict[str, dict[int, Path]] = {}
            counts: dict[str, int] = {}
            with os.scandir(sender_dir) as entries:
                for entry in entries:
                    seen_files += 1
                    if seen_files > max_files:
                        summary.skip(
                            sender_dir,
                            f"more than {max_files} files in one pass; run sync again for the rest",
                        )
                        return
                    path = Path(entry.path)
                    if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                        summary.skip(path, "incomplete copy (temporary name)")
                        continue
                    if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
                        summary.skip(path, "not a regular file (symlink, device or folder)")
                        continue
                    part = PART_RE.match(entry.name)
                    name = part.group(1) if part else entry.name
                    try:
                        parse_name(name)
                    except FormatError:
                        summary.skip(path, "not a valid bundle name")
                        continue
                    if part:
                        groups.setdefault(name, {})[int(part.group(2))] = path
                        counts[name] = int(part.group(3))
                    else:
                        groups.setdefault(name, {})[0] = path
            for name, parts in sorted(groups.items()):
                if 0 in parts:
                    ordered = [parts[0]]
                else:
                    count = counts[name]
                    if sorted(parts) != list(range(1, count + 1)):
                        summary.skip(
                            sender_dir / name, f"only {len(parts)} of {count} parts present"
                        )
                        continue
                    ordered = [parts[i] for i in range(1, count + 1)]
                size = sum(p.lstat().st_size for p in ordered)
                yield _Candidate(recipient, sender_dir, name, ordered, size)


def _same_bytes(path: Path, parts: list[Path]) -> bool:
    if path.stat().st_size != sum(p.lstat().st_size for p in parts):
        return False
    digest = hashlib.sha256()
    for part in parts:
        with open(part, "rb") as f:
            while data := f.read(_COPY_CHUNK):
                digest.update(data)
    return digest.digest() == _hash_uncached(path)


def _remove_from_stick(
    home: SpoolHome, candidate: _Candidate, bundle_id: bytes, summary: SyncSummary
) -> None:
    if candidate.recipient == BROADCAST:
        return
    try:
        for part in candidate.parts:
            part.unlink()
        fsync_dir(candidate.sender_dir)
        summary.removed_from_stick += 1
    except OSError:
        # A read-only stick: remember the delivery so the next sync skips it.
        with home.transaction():
            home.state.mark_delivered(bundle_id)


def sync_in(
    home: SpoolHome,
    handler: Handler,
    base: Path,
    summary: SyncSummary,
    *,
    max_files: int = MAX_FILES_PER_PASS,
    max_bytes: int = MAX_BYTES_PER_PASS,
    max_file_bytes: int = MAX_FILE_BYTES,
    progress: bool = False,
) -> None:
    """Copy our bundles (and everyone's) from the stick, verify, ingest, then remove."""
    me = home.identity.key_id.hex()
    budget = max_bytes
    for candidate in list(_scan(base, me, summary, max_files)):
        first = candidate.parts[0]
        _, bundle_id = parse_name(candidate.name)
        if home.state.seen(bundle_id) is not None or home.state.delivered(bundle_id):
            _remove_from_stick(home, candidate, bundle_id, summary)
            continue
        quarantined = home.dirs.quarantine / candidate.name
        if quarantined.exists() and _same_bytes(quarantined, candidate.parts):
            # The very bytes we refused before: no need to copy and judge them again.  A
            # different copy under the same name (re-sent intact) is taken in as usual.
            summary.skip(first, "already quarantined here (see its .reason.json)")
            continue
        if candidate.size > max_file_bytes:
            summary.skip(first, f"larger than the {max_file_bytes:,}-byte limit")
            continue
        if candidate.size > budget:
            summary.skip(first, "over this pass's byte budget; run sync again")
            continue
        if candidate.recipient == BROADCAST and len(candidate.parts) == 1:
            try:
                header = peek_header(first)
            except LLTokenError as e:
                summary.skip(first, f"unreadable header: {e}")
                continue
            if header.recipients and home.identity.key_id not in header.recipients:
                continue  # addressed to other agents: theirs to take, not ours
        budget -= candidate.size
        staged = home.dirs.staging / candidate.name
        with ExitStack() as stack:
            bar = _progress(candidate.size, candidate.name[:24], progress)
            if bar is not None:
                stack.enter_context(bar)
            with open(staged, "wb") as out:
                for part in candidate.parts:
                    with open(part, "rb") as src:
                        _copy_stream(src, out, part.lstat().st_size, bar)
                out.flush()
                os.fsync(out.fileno())
        summary.files_in += 1
        summary.bytes_in += candidate.size
        try:
            check_bundle(staged)
        except LLTokenError as e:
            quarantine(home.dirs, staged, e, check="media copy")
            summary.ingest.add_rejection(candidate.name, e)
            continue
        inbox_path = move_durably(staged, home.dirs.inbox)
        home.ingest_one(inbox_path, handler, summary.ingest)
        if home.state.seen(bundle_id) is not None:
            _remove_from_stick(home, candidate, bundle_id, summary)


def sync_media(
    home: SpoolHome,
    handler: Handler,
    media: Path,
    *,
    split_size: int = FAT32_MAX_FILE,
    max_files: int = MAX_FILES_PER_PASS,
    max_bytes: int = MAX_BYTES_PER_PASS,
    progress: bool = False,
) -> SyncSummary:
    """One full sync with the stick mounted at ``media``: in, then out."""
    summary = SyncSummary()
    base = media / "lltoken" / home.federation.hex()
    if media.is_symlink() or not media.is_dir():
        raise FormatError(
            "media folder does not exist", expected="a mounted folder", found=str(media)
        )
    # In first, so the receipts it produces (and the outbox copies they clear) are
    # reflected in what goes out in the same pass.
    sync_in(
        home, handler, base, summary, max_files=max_files, max_bytes=max_bytes, progress=progress
    )
    if os.access(media, os.W_OK):
        base.mkdir(parents=True, exist_ok=True)
        sync_out(home, base, summary, split_size=split_size, progress=progress)
    else:
        summary.skip(media, "stick is read-only: nothing written to it")
    os.sync()
    summary.safe_to_remove = True
    return summary


def find_sticks(media_root: Path) -> list[Path]:
    """Mounted folders under ``media_root`` (or it itself) that hold an ``lltoken/`` folder."""
    found = []
    candidates = [media_root]
    if media_root.is_dir():
        for child in sorted(media_root.iterdir()):
            if child.is_dir() and not child.is_symlink():
                candidates.append(child)
                candidates.extend(
                    c for c in sorted(child.iterdir()) if c.is_dir() and not c.is_symlink()
                )
    for candidate in candidates:
        with_tree = candidate / "lltoken"
        if with_tree.is_dir() and not with_tree.is_symlink():
            found.append(candidate)
    return found


class MediaWatcher:
    """Polls a media root and syncs each stick once when it appears (mounts emit no
    reliable file events, so polling every second is the robust choice)."""

    def __init__(self, media_root: Path, on_stick: Callable[[Path], None]) -> None:
        self.media_root = media_root
        self.on_stick = on_stick
        self.present: set[Path] = set()

    def poll(self) -> list[Path]:
        current = set(find_sticks(self.media_root))
        new = sorted(current - self.present)
        self.present = current
        for stick in new:
            self.on_stick(stick)
        return new


__all__ = [
    "FAT32_MAX_FILE",
    "MediaWatcher",
    "SyncSummary",
    "find_sticks",
    "part_names",
    "sync_in",
    "sync_media",
    "sync_out",
]
