"""A home's spool: sending into the outbox, and ingesting the inbox exactly once.

Ingest of one bundle is a fixed sequence (each step named, so tests can kill the process
at any of them and check that a restart neither loses nor repeats anything):

1. ``verified``  the name, the bundle and the replay rules check (else: quarantine);
2. ``handled``   inside one SQLite transaction: the handler's own writes, the seen-set
                 record, and the receipt to the sender, written into the outbox;
3. ``committed`` the transaction commits: from here the bundle counts as ingested;
4. ``archived``  the file moves from the inbox to the archive (or quarantine).

A crash before 3 rolls the transaction back; the file is still in the inbox and is ingested
again on restart, and :meth:`SpoolHome.recover` deletes any outbox file whose transaction
never committed.  A crash between 3 and 4 leaves a file whose id is already in the
seen-set; ``recover`` finishes moving it.  Receipts work like NNCP's ACKs: a sender keeps
each outbox copy until a receipt for it arrives (or it expires), so a lost stick can be
sent again.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bundle.envelope import (
    DEFAULT_MAX_PAYLOAD,
    OpenedBundle,
    PackedBundle,
    open_bundle,
    pack_bundle,
    parse_name,
    read_prefix,
)
from bundle.errors import FormatError, LLTokenError
from bundle.keys import Identity, PublicIdentity
from bundle.payloads import Checkpoint, Payload, Receipt
from spool.layout import BROADCAST, SpoolDirs, move_durably, quarantine
from spool.state import SpoolState, transaction


@dataclass(frozen=True)
class Outcome:
    """What a handler did with a bundle; becomes the receipt sent back to its sender."""

    status: str = "accepted"
    reason: str = ""
    ledger_index: int | None = None
    proof: tuple[bytes, ...] = ()
    checkpoint: Checkpoint | None = None


class Handler(Protocol):
    """What the coordinator or agent supplies to ingest bundles."""

    def keyring(self, key_id: bytes) -> PublicIdentity | None:
        """The enrolled, non-revoked sender with this key id, or None."""

    def current_round(self) -> int:
        """The round the receiver is in, for expiry checks and receipts."""

    def parents(self) -> Mapping[bytes, np.ndarray[Any, Any]]:
        """Known arrays by hash, for model deltas."""

    def handle(self, bundle: OpenedBundle) -> Outcome:
        """Act on a verified bundle inside the ingest transaction.

        Raises:
            LLTokenError: to refuse it; the bundle is quarantined with that reason and a
                'rejected' receipt goes back to its sender.
        """

    def refused(self, bundle: OpenedBundle, error: LLTokenError) -> None:
        """Called in the same transaction after :meth:`handle` refused ``bundle`` (its own
        writes rolled back), e.g. to lower the sender's reputation."""


@dataclass
class IngestReport:
    """What one ingest pass did, for the CLI summary and ``--json``."""

    accepted: list[str] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)

    def add_rejection(self, name: str, error: LLTokenError | str) -> None:
        reason = error.to_dict() if isinstance(error, LLTokenError) else {"reason": error}
        self.rejected.append({"file": name, **reason})

    def merge(self, other: IngestReport) -> None:
        self.accepted += other.accepted
        self.rejected += other.rejected
        self.duplicates += other.duplicates


RECEIPT_TTL_ROUNDS = 10


def _crash_point(step: str) -> None:
    """No-op in production; tests replace it in a child process to kill -9 at ``step``."""


class SpoolHome:
    """One home's spool folders and spool state, bound to its identity and federation."""

    def __init__(
        self,
        root: Path,
        conn: sqlite3.Connection,
        identity: Identity,
        federation: bytes,
        *,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        self.dirs = SpoolDirs(root).create()
        self.conn = conn
        self.identity = identity
        self.federation = federation
        self.state = SpoolState(conn, federation, identity.key_id)
        self.max_payload = max_payload
        self._after_commit: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ transactions

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic step; file removals queued with :meth:`after_commit` run after it."""
        self._after_commit.clear()
        with transaction(self.conn) as conn:
            yield conn
        actions, self._after_commit = self._after_commit, []
        for action in actions:
            action()

    def after_commit(self, action: Callable[[], None]) -> None:
        self._after_commit.append(action)

    # ------------------------------------------------------------------ sending

    def send(
        self,
        payload: Payload,
        *,
        to: Sequence[PublicIdentity] = (),
        round: int = 0,
        expires: int | None = None,
        encrypt: bool = False,
        parents: Mapping[str, tuple[bytes, np.ndarray[Any, Any]]] | None = None,
    ) -> PackedBundle:
        """Seal ``payload`` into the outbox; call inside :meth:`transaction`.

        One recipient gets its own folder; several (or none: everyone) share ``all``, so a
        global model is written once per round, not once per agent.
        """
        if not self.conn.in_transaction:
            raise RuntimeError("send() must run inside SpoolHome.transaction()")
        peer = to[0].key_id.hex() if len(to) == 1 else BROADCAST
        packed = pack_bundle(
            self.dirs.outbox(peer),
            payload,
            self.identity,
            federation=self.federation,
            round=round,
            seq=self.state.take_seq(),
            recipients=to,
            encrypt=encrypt,
            expires=expires,
            parents=parents,
        )
        self.state.remember_sent(packed.bundle_id, peer, packed.name, packed.header)
        return packed

    def outbox_files(self) -> list[Path]:
        return sorted(p for p in self.dirs.outbox_root.glob("*/*.llb") if p.is_file())

    def clear_sent(self, bundle_id: bytes) -> bool:
        """Forget an outbox copy (receipted); the file goes after commit."""
        sent = self.state.sent(bundle_id)
        if sent is None:
            return False
        peer, name = sent
        self.state.forget_sent(bundle_id)
        path = self.dirs.outbox(peer) / name
        self.after_commit(lambda: path.unlink(missing_ok=True))
        return True

    def expire_outbox(self, current_round: int) -> int:
        """Drop outbox copies whose expiry round has passed."""
        with self.transaction():
            expired = self.state.expired_sent(current_round)
            for bundle_id, _peer, _name in expired:
                self.clear_sent(bundle_id)
        return len(expired)

    # ------------------------------------------------------------------ recovery

    def recover(self) -> None:
        """Finish or undo whatever a crash interrupted (run on open, under the home lock)."""
        for path in self.dirs.outbox_root.glob("*/*.llb"):
            try:
                _, bundle_id = parse_name(path.name)
            except FormatError:
                continue
            if self.state.sent(bundle_id) is None:
                path.unlink()  # written by a transaction that never committed
        for path in list(self.dirs.root.rglob(".*.tmp")):
            path.unlink(missing_ok=True)
        for path in self.dirs.staging.iterdir():  # half-copied from a pulled stick
            path.unlink()
        for path in sorted(self.dirs.inbox.glob("*.llb")):
            try:
                _, bundle_id = parse_name(path.name)
            except FormatError:
                continue
            record = self.state.seen(bundle_id)
            if record is None:
                continue
            if record.outcome == "rejected":
                quarantine(self.dirs, path, record.reason, check="handler")
            else:
                move_durably(path, self.dirs.archive)

    # ------------------------------------------------------------------ ingest

    def ingest(self, handler: Handler, paths: Sequence[Path] | None = None) -> IngestReport:
        """Ingest ``paths`` (default: every file in the inbox), each exactly once."""
        report = IngestReport()
        for path in sorted(self.dirs.inbox.iterdir()) if paths is None else paths:
            if path.name.startswith(".") or not path.is_file():
                continue
            self.ingest_one(path, handler, report)
        return report

    def ingest_one(self, path: Path, handler: Handler, report: IngestReport) -> None:
        """Verify, handle, record and archive one inbox file (see the module docstring)."""
        try:
            _, bundle_id = parse_name(path.name)
        except FormatError as e:
            quarantine(self.dirs, path, e, check="name")
            report.add_rejection(path.name, e)
            return
        if self.state.seen(bundle_id) is not None:
            # Same id, same signed header: a second delivery.  The first copy is archived
            # (or quarantined) and its receipt is still in our outbox, so drop this one.
            path.unlink()
            report.duplicates.append(path.name)
            return
        current = handler.current_round()
        try:
            opened = open_bundle(
                path,
                handler.keyring,
                identity=self.identity,
                policy=lambda header: self.state.check_fresh(header, current),
                parents=handler.parents(),
                max_payload=self.max_payload,
            )
        except LLTokenError as e:
            quarantine(self.dirs, path, e)
            report.add_rejection(path.name, e)
            return
        _crash_point("verified")
        refused: LLTokenError | None = None
        with self.transaction() as conn:
            conn.execute("SAVEPOINT handler")
            try:
                if isinstance(opened.payload, Receipt):
                    self.clear_sent(opened.payload.bundle_id)
                outcome = handler.handle(opened)
                conn.execute("RELEASE handler")
            except LLTokenError as e:
                conn.execute("ROLLBACK TO handler")
                conn.execute("RELEASE handler")
                handler.refused(opened, e)
                refused = e
                outcome = Outcome("rejected", str(e)[:1000])
            _crash_point("handled")
            self.state.record(bundle_id, opened.header, outcome.status, outcome.reason)
            if opened.header.kind != Receipt.KIND:
                self.send(
                    Receipt(
                        bundle_id,
                        outcome.status,
                        outcome.reason,
                        outcome.ledger_index,
                        outcome.proof,
                        outcome.checkpoint,
                    ),
                    to=[opened.sender],
                    round=current,
                    # Kept for re-sending until then; receipts are never receipted.
                    expires=current + RECEIPT_TTL_ROUNDS,
                )
            _crash_point("receipted")
        _crash_point("committed")
        if refused is not None:
            quarantine(self.dirs, path, refused, check="handler")
            report.add_rejection(path.name, refused)
        else:
            move_durably(path, self.dirs.archive)
            report.accepted.append(path.name)
        _crash_point("archived")


def peek_header(path: Path) -> Any:
    """Read a bundle's header without keys (for routing decisions before copying)."""
    with open(path, "rb") as f:
        return read_prefix(f, path.stat().st_size, str(path)).header


__all__ = ["Handler", "IngestReport", "Outcome", "SpoolHome", "peek_header"]
