"""The spool's durable state in the home's SQLite database.

Tables (all prefixed ``spool_``, created in the caller's database so that a handler's own
writes and the seen-set commit in one transaction):

``spool_seen``       every bundle ingested or refused after its signature checked:
                     bundle id, sender, sequence, round, outcome.  Ingest is idempotent
                     because a bundle id is recorded once.
``spool_floor``      per sender, the highest sequence number pruned from the seen-set.
``spool_meta``       ``next_seq`` (our own per-sender sequence) and ``horizon`` (the
                     oldest round still remembered).
``spool_outbox``     bundles we sent and keep until receipted or expired.
``spool_delivered``  bundles taken from a read-only stick (so they are not copied again).

Pruning keeps the seen-set bounded without reopening replays: rows of rounds before the
horizon are dropped, their senders' highest sequence numbers are kept as floors, and the
replay rules refuse any bundle from before the horizon or at or below its sender's floor.
A sender's sequence and round only grow, so anything those rules refuse is older than
what was pruned.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bundle.envelope import Header
from bundle.errors import AddressError, ReplayError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool_seen (
    bundle_id BLOB PRIMARY KEY,
    sender BLOB NOT NULL,
    seq INTEGER NOT NULL,
    round INTEGER NOT NULL,
    kind TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    at INTEGER NOT NULL,
    UNIQUE (sender, seq)
);
CREATE INDEX IF NOT EXISTS spool_seen_round ON spool_seen (round);
CREATE TABLE IF NOT EXISTS spool_floor (sender BLOB PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS spool_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS spool_outbox (
    bundle_id BLOB PRIMARY KEY,
    peer TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    seq INTEGER NOT NULL,
    round INTEGER NOT NULL,
    expires INTEGER
);
CREATE TABLE IF NOT EXISTS spool_delivered (bundle_id BLOB PRIMARY KEY);
CREATE TABLE IF NOT EXISTS spool_waiting (
    bundle_id BLOB NOT NULL, recipient BLOB NOT NULL, PRIMARY KEY (bundle_id, recipient)
);
"""


def connect(path: Path) -> sqlite3.Connection:
    """Open a home database: WAL, synchronous=FULL, explicit transactions only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@dataclass(frozen=True)
class SeenRecord:
    bundle_id: bytes
    sender: bytes
    seq: int
    round: int
    kind: str
    outcome: str
    reason: str


class SpoolState:
    """Seen-set, sequence counter and outbox ledger over one SQLite connection."""

    def __init__(self, conn: sqlite3.Connection, federation: bytes, me: bytes) -> None:
        self.conn = conn
        self.federation = federation
        self.me = me
        conn.executescript(_SCHEMA)

    # -- our own sequence numbers

    def _meta(self, key: str, default: int) -> int:
        row = self.conn.execute("SELECT value FROM spool_meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else int(row[0])

    def _set_meta(self, key: str, value: int) -> None:
        self.conn.execute(
            "INSERT INTO spool_meta (key, value) VALUES (?, ?) ON CONFLICT(key) "
            "DO UPDATE SET value = excluded.value",
            (key, value),
        )

    @property
    def next_seq(self) -> int:
        return self._meta("next_seq", 1)

    def take_seq(self) -> int:
        """Allocate our next sequence number (inside the caller's transaction)."""
        # One statement, not a read and a write: ingest takes one per receipt.
        (row,) = self.conn.execute(
            "INSERT INTO spool_meta (key, value) VALUES ('next_seq', 2) ON CONFLICT(key) "
            "DO UPDATE SET value = value + 1 RETURNING value - 1"
        ).fetchall()
        return int(row[0])

    @property
    def horizon(self) -> int:
        return self._meta("horizon", 0)

    # -- seen-set and replay rules

    def seen(self, bundle_id: bytes) -> SeenRecord | None:
        row = self.conn.execute(
            "SELECT bundle_id, sender, seq, round, kind, outcome, reason FROM spool_seen "
            "WHERE bundle_id = ?",
            (bundle_id,),
        ).fetchone()
        return None if row is None else SeenRecord(*row)

    def check_fresh(self, header: Header, current_round: int) -> None:
        """The replay, addressing and expiry rules, applied after the signature.

        Raises:
            AddressError: another federation, or addressed to other recipients.
            ReplayError: a reused sequence number, a bundle from before the pruning
                horizon or at/below its sender's floor, or an expired bundle.
        """
        if header.federation != self.federation:
            raise AddressError(
                "bundle belongs to another federation",
                expected=self.federation.hex(),
                found=header.federation.hex(),
            )
        if header.recipients and self.me not in header.recipients:
            raise AddressError(
                "bundle is addressed to someone else",
                expected=f"a recipient list with {self.me.hex()}",
                found=", ".join(r.hex() for r in header.recipients),
            )
        # The three lookups in one statement: this runs once per ingested bundle.
        used, floor, stored_horizon = self.conn.execute(
            "SELECT (SELECT 1 FROM spool_seen WHERE sender = ? AND seq = ?), "
            "(SELECT seq FROM spool_floor WHERE sender = ?), "
            "(SELECT value FROM spool_meta WHERE key = 'horizon')",
            (header.sender, header.seq, header.sender),
        ).fetchone()
        if used is not None:
            raise ReplayError(
                "sequence number already used by another bundle of this sender",
                expected="a new sequence number",
                found=header.seq,
                where=f"sender {header.sender.hex()}",
            )
        if floor is not None and header.seq <= floor:
            raise ReplayError(
                "sequence number at or below the pruned floor (a replay of an old bundle)",
                expected=f"> {floor}",
                found=header.seq,
            )
        horizon = 0 if stored_horizon is None else int(stored_horizon)
        if header.round < horizon:
            raise ReplayError(
                "bundle is older than the replay horizon",
                expected=f"round >= {horizon}",
                found=header.round,
            )
        if header.expires is not None and header.expires < current_round:
            raise ReplayError(
                "bundle expired", expected=f"expiry round >= {current_round}", found=header.expires
            )

    def record(self, bundle_id: bytes, header: Header, outcome: str, reason: str = "") -> None:
        self.conn.execute(
            "INSERT INTO spool_seen (bundle_id, sender, seq, round, kind, outcome, reason, at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                bundle_id,
                header.sender,
                header.seq,
                header.round,
                header.kind,
                outcome,
                reason,
                int(time.time()),
            ),
        )

    def prune(self, before_round: int) -> int:
        """Forget seen bundles of rounds before ``before_round``; returns rows removed."""
        with transaction(self.conn):
            self.conn.execute(
                "INSERT INTO spool_floor (sender, seq) SELECT sender, MAX(seq) FROM spool_seen "
                "WHERE round < ? GROUP BY sender ON CONFLICT(sender) DO UPDATE SET "
                "seq = MAX(seq, excluded.seq)",
                (before_round,),
            )
            removed = self.conn.execute(
                "DELETE FROM spool_seen WHERE round < ?", (before_round,)
            ).rowcount
            self._set_meta("horizon", max(self.horizon, before_round))
        return int(removed)

    def count_seen(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM spool_seen").fetchone()[0])

    # -- our outbox

    def remember_sent(self, bundle_id: bytes, peer: str, name: str, header: Header) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO spool_outbox (bundle_id, peer, name, kind, seq, round, "
            "expires) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (bundle_id, peer, name, header.kind, header.seq, header.round, header.expires),
        )
        if len(header.recipients) > 1:
            self.conn.executemany(
                "INSERT OR IGNORE INTO spool_waiting (bundle_id, recipient) VALUES (?, ?)",
                [(bundle_id, r) for r in header.recipients],
            )

    def acknowledge(self, bundle_id: bytes, recipient: bytes) -> bool:
        """Record a recipient's receipt for a shared bundle; True once none is left waiting
        (a bundle with no recipient list is cleared by the first receipt)."""
        self.conn.execute(
            "DELETE FROM spool_waiting WHERE bundle_id = ? AND recipient = ?",
            (bundle_id, recipient),
        )
        left = self.conn.execute(
            "SELECT 1 FROM spool_waiting WHERE bundle_id = ? LIMIT 1", (bundle_id,)
        ).fetchone()
        return left is None

    def sent(self, bundle_id: bytes) -> tuple[str, str] | None:
        row = self.conn.execute(
            "SELECT peer, name FROM spool_outbox WHERE bundle_id = ?", (bundle_id,)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def forget_sent(self, bundle_id: bytes) -> None:
        self.conn.execute("DELETE FROM spool_outbox WHERE bundle_id = ?", (bundle_id,))
        self.conn.execute("DELETE FROM spool_waiting WHERE bundle_id = ?", (bundle_id,))

    def expired_sent(self, current_round: int) -> list[tuple[bytes, str, str]]:
        rows = self.conn.execute(
            "SELECT bundle_id, peer, name FROM spool_outbox WHERE expires IS NOT NULL AND "
            "expires < ?",
            (current_round,),
        ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    # -- read-only sticks

    def mark_delivered(self, bundle_id: bytes) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO spool_delivered (bundle_id) VALUES (?)", (bundle_id,)
        )

    def delivered(self, bundle_id: bytes) -> bool:
        return (
            self.conn.execute(
                "SELECT 1 FROM spool_delivered WHERE bundle_id = ?", (bundle_id,)
            ).fetchone()
            is not None
        )


__all__ = ["SeenRecord", "SpoolState", "connect", "transaction"]
