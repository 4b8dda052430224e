"""Moving files across the air gap: spool layout, durable writes, watcher, media sync.

Not built yet (see the spool issue); only the durable write helper exists, in
``bundle.durable``, and is re-exported here so callers already import it from its home.
"""

from bundle.durable import atomic_write, fsync_dir, write_bytes_atomic

__all__ = ["atomic_write", "fsync_dir", "write_bytes_atomic"]
