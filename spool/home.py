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

``ingest(handler, batch=N)`` runs the same steps for up to N bundles in one transaction,
to spend a few fsyncs per batch instead of five per bundle.  Steps 1 and 2 run per bundle
inside the transaction (so the replay rules see the bundles before them in the batch);
each receipt is written to the outbox but not yet fsynced.  Then ``synced``: all the
receipts are fsynced at once (on a few threads) and so are their folders, so every
receipt is durable before step 3, one COMMIT for the batch.  Only then does any file
move (step 4 for each, then one fsync of the archive and of the inbox); verification
failures and duplicates move after the commit too, so a crash before it leaves every
file where it was.  Recovery is the same as for one bundle.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bundle.durable import fsync_dir, temp_path_for
from bundle.envelope import (
    DEFAULT_MAX_PAYLOAD,
    OpenedBundle,
    PackedBundle,
    open_bundle,
    pack_bundle,
    pack_bytes,
    parse_name,
    read_prefix,
)
from bundle.errors import FormatError, IntegrityError, LLTokenError
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


def _receipt(bundle_id: bytes, outcome: Outcome) -> Receipt:
    return Receipt(
        bundle_id,
        outcome.status,
        outcome.reason,
        outcome.ledger_index,
        outcome.proof,
        outcome.checkpoint,
    )


# Threads that fsync a batch's receipts at its end.  fsync waits on the disk, not the CPU,
# and the kernel folds concurrent fsyncs into shared journal commits.  The batch waits
# meanwhile: fsyncing on threads while it runs costs more in GIL hand-offs than it saves.
_SYNC_THREADS = 8


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _DurableFiles:
    """A batch's receipts: each written (temporary name, then renamed) as it is made, and
    all made durable together by :meth:`sync` before the batch commits.  Until then a
    crash may leave some of them torn or missing; none is in the committed state, so
    :meth:`SpoolHome.recover` deletes them."""

    def __init__(self, pool: Executor) -> None:
        self.pool = pool
        self.paths: list[Path] = []
        self.folders: set[Path] = set()

    def write(self, path: Path, data: bytes) -> None:
        folder = path.parent
        if folder not in self.folders:
            if not folder.is_dir():
                folder.mkdir(parents=True, exist_ok=True)
                self.folders.add(folder.parent)  # makes the new folder's name durable
            self.folders.add(folder)
        tmp = temp_path_for(path)
        try:
            with open(tmp, "xb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.paths.append(path)

    def sync(self) -> None:
        """Return once every file, its name and its folder are durable.

        Raises:
            OSError: an fsync failed.
        """
        for _ in self.pool.map(_fsync_file, self.paths):
            pass
        for folder in sorted(self.folders):
            fsync_dir(folder)

    def discard(self) -> None:
        """After the batch failed (it rolls back): delete what it wrote."""
        for path in self.paths:
            path.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Move:
    """Where a file of a batch goes once the batch has committed."""

    path: Path
    to: str  # "archive", "quarantine" or "drop" (a duplicate)
    error: LLTokenError | str = ""
    check: str | None = None


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

    def clear_sent(self, bundle_id: bytes, *, by: bytes | None = None) -> bool:
        """Forget an outbox copy once receipted (the file goes after commit).

        ``by`` is the receipt's sender: only a recipient of the bundle can clear it, and a
        bundle for several recipients (the ``all`` folder) stays until each of them has
        receipted it, so one agent cannot take the global model away from the others.
        ``by=None`` (expiry) clears unconditionally.
        """
        sent = self.state.sent(bundle_id)
        if sent is None:
            return False
        peer, name = sent
        if by is not None:
            if peer != BROADCAST and peer != by.hex():
                return False
            if peer == BROADCAST and not self.state.acknowledge(bundle_id, by):
                return False
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

    def ingest(
        self, handler: Handler, paths: Sequence[Path] | None = None, *, batch: int = 1
    ) -> IngestReport:
        """Ingest ``paths`` (default: every file in the inbox), each exactly once.

        With ``batch`` > 1, up to that many bundles share one transaction and one round
        of fsyncs (see the module docstring): the same checks, the same guarantee.

        Raises:
            ValueError: ``batch`` is below 1.
        """
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        report = IngestReport()
        todo = sorted(self.dirs.inbox.iterdir()) if paths is None else paths
        if batch == 1:
            for path in todo:
                if path.name.startswith(".") or not path.is_file():
                    continue
                self.ingest_one(path, handler, report)
            return report
        with ThreadPoolExecutor(_SYNC_THREADS, thread_name_prefix="spool-fsync") as pool:
            for start in range(0, len(todo), batch):
                self._ingest_batch(todo[start : start + batch], handler, report, pool)
        return report

    def _open(self, path: Path, bundle_id: bytes, handler: Handler, current: int) -> OpenedBundle:
        """Verify a bundle, and that its content is the bundle its name says it is (the
        seen-set and receipts are keyed by that id).

        Raises:
            LLTokenError: any failed check; IntegrityError for a renamed file.
        """
        opened = open_bundle(
            path,
            handler.keyring,
            identity=self.identity,
            policy=lambda header: self.state.check_fresh(header, current),
            parents=handler.parents(),
            max_payload=self.max_payload,
        )
        if opened.bundle_id != bundle_id:
            raise IntegrityError(
                "bundle content does not match its file name",
                expected=bundle_id.hex(),
                found=opened.bundle_id.hex(),
                where=str(path),
            )
        return opened

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
            opened = self._open(path, bundle_id, handler, current)
        except LLTokenError as e:
            quarantine(self.dirs, path, e)
            report.add_rejection(path.name, e)
            return
        _crash_point("verified")
        with self.transaction() as conn:
            outcome, refused = self._handle(conn, handler, opened, bundle_id)
            if opened.header.kind != Receipt.KIND:
                self.send(
                    _receipt(bundle_id, outcome),
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

    def _handle(
        self, conn: sqlite3.Connection, handler: Handler, opened: OpenedBundle, bundle_id: bytes
    ) -> tuple[Outcome, LLTokenError | None]:
        """Step 2 up to the receipt: the handler (its writes undone if it refuses) and the
        seen-set record; returns the outcome and the refusal, if any."""
        refused: LLTokenError | None = None
        queued = len(self._after_commit)
        conn.execute("SAVEPOINT handler")
        try:
            if isinstance(opened.payload, Receipt):
                self.clear_sent(opened.payload.bundle_id, by=opened.header.sender)
            outcome = handler.handle(opened)
            conn.execute("RELEASE handler")
        except LLTokenError as e:
            conn.execute("ROLLBACK TO handler")
            conn.execute("RELEASE handler")
            del self._after_commit[queued:]  # the file removals it queued are undone too
            handler.refused(opened, e)
            refused = e
            outcome = Outcome("rejected", str(e)[:1000])
        _crash_point("handled")
        self.state.record(bundle_id, opened.header, outcome.status, outcome.reason)
        return outcome, refused

    def _ingest_batch(
        self, paths: Sequence[Path], handler: Handler, report: IngestReport, pool: Executor
    ) -> None:
        """Ingest ``paths`` in one transaction (see the module docstring)."""
        moves: list[_Move] = []
        receipts = _DurableFiles(pool)
        taken: set[Path] = set()
        with self.transaction() as conn:
            try:
                for path in paths:
                    if path in taken or path.name.startswith(".") or not path.is_file():
                        continue
                    taken.add(path)
                    moves.append(self._batch_step(conn, path, handler, receipts))
                receipts.sync()
            except BaseException:
                receipts.discard()  # the transaction rolls back: nothing refers to them
                raise
            _crash_point("synced")
        _crash_point("committed")
        self.dirs.archive.mkdir(parents=True, exist_ok=True)
        emptied: set[Path] = set()
        for move in moves:
            name = move.path.name
            if move.to == "archive":
                os.replace(move.path, self.dirs.archive / name)
                emptied.add(move.path.parent)
                report.accepted.append(name)
                _crash_point("archived")
            elif move.to == "drop":
                move.path.unlink(missing_ok=True)
                report.duplicates.append(name)
            else:
                quarantine(self.dirs, move.path, move.error, check=move.check)
                report.add_rejection(name, move.error)
        if emptied:
            fsync_dir(self.dirs.archive)
            for folder in sorted(emptied):
                fsync_dir(folder)

    def _batch_step(
        self, conn: sqlite3.Connection, path: Path, handler: Handler, receipts: _DurableFiles
    ) -> _Move:
        """Steps 1 and 2 of one bundle in a batch; returns where its file goes after 3."""
        try:
            _, bundle_id = parse_name(path.name)
        except FormatError as e:
            return _Move(path, "quarantine", e, "name")
        if self.state.seen(bundle_id) is not None:
            return _Move(path, "drop")  # delivered before, or earlier in this batch
        current = handler.current_round()
        try:
            opened = self._open(path, bundle_id, handler, current)
        except LLTokenError as e:
            return _Move(path, "quarantine", e)
        _crash_point("verified")
        outcome, refused = self._handle(conn, handler, opened, bundle_id)
        if opened.header.kind != Receipt.KIND:
            # What send() does, but fsynced with the rest of the batch before its commit.
            peer = opened.sender.key_id.hex()
            packed, data = pack_bytes(
                _receipt(bundle_id, outcome),
                self.identity,
                federation=self.federation,
                round=current,
                seq=self.state.take_seq(),
                recipients=[opened.sender],
                expires=current + RECEIPT_TTL_ROUNDS,
            )
            receipts.write(self.dirs.outbox(peer) / packed.name, data)
            self.state.remember_sent(packed.bundle_id, peer, packed.name, packed.header)
        _crash_point("receipted")
        if refused is not None:
            return _Move(path, "quarantine", refused, "handler")
        return _Move(path, "archive")


def peek_header(path: Path) -> Any:
    """Read a bundle's header without keys (for routing decisions before copying)."""
    with open(path, "rb") as f:
        return read_prefix(f, path.stat().st_size, str(path)).header


__all__ = ["Handler", "IngestReport", "Outcome", "SpoolHome", "peek_header"]
