"""Moving files across the air gap: spool layout, durable writes, the seen-set and ingest,
the inbox watcher, removable-media sync and receipts.  Knows nothing about FL.
"""

from bundle.durable import atomic_write, fsync_dir, write_bytes_atomic
from spool.home import Handler, IngestReport, Outcome, SpoolHome
from spool.layout import BROADCAST, SpoolDirs, quarantine
from spool.lock import HomeLock, LockedError
from spool.media import MediaWatcher, SyncSummary, find_sticks, sync_media
from spool.state import SpoolState, connect, transaction
from spool.watcher import InboxWatcher, is_complete, stop_on_signals

__all__ = [
    "BROADCAST",
    "Handler",
    "HomeLock",
    "InboxWatcher",
    "IngestReport",
    "LockedError",
    "MediaWatcher",
    "Outcome",
    "SpoolDirs",
    "SpoolHome",
    "SpoolState",
    "SyncSummary",
    "atomic_write",
    "connect",
    "find_sticks",
    "fsync_dir",
    "is_complete",
    "quarantine",
    "stop_on_signals",
    "sync_media",
    "transaction",
    "write_bytes_atomic",
]
