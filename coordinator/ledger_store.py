"""Durable storage of the token ledger: an append-only log (the truth) plus a SQLite index
(a cache that can always be rebuilt from the log), in the style of Borg's repository.

Directory layout (the coordinator home uses ``<home>/ledger/``)::

    LEDGER.json          format, federation id, coordinator public key (written once)
    lock                 held (flock) by the one process that has the store open
    log/00000000.seg     log segments: a 9-byte header ("LLTL", version, segment number)
    log/00000001.seg     then CRC-framed records (bundle.records); a new segment starts
    ...                  when one passes ``segment_bytes``, always at a batch boundary
    index.sqlite         the index (WAL, synchronous=FULL): entry -> position, leaf hash,
                         kind, agent; checkpoints; derived accounts and nonces

A batch of entries is written as one ``E`` record per entry followed by one ``C``
(COMMIT) record that carries the coordinator-signed checkpoint of the new tree size and
root, then the segment is fsynced once.  Only then is the index updated (one SQLite
transaction).  So the log always says everything, and a crash at any byte leaves either
the whole batch (commit record complete and valid) or none of it: on open, anything after
the last valid COMMIT is ignored, and the next append (or ``check(repair=True)``) cuts it
off.  An index that lags the log (a crash between the two writes) is caught up on open;
an index that is *ahead* of the log means the log lost committed data, which ``open``
refuses loudly and ``check(repair=True)`` settles by rebuilding the index from the log.

Leaf hashes are cached in a :class:`~bundle.merkletree.MerkleTree` (loaded from the index
on first use), so roots and proofs cost O(log n) hashes, a million entries or not.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import struct
import time as _time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundle import cbor
from bundle.checkpoint import (
    public_identity_from_json,
    public_identity_to_json,
    sign_checkpoint,
    verify_checkpoint,
)
from bundle.durable import atomic_write, fsync_dir
from bundle.envelope import open_bundle_bytes
from bundle.errors import (
    FormatError,
    IntegrityError,
    LLTokenError,
    ProofError,
    SchemaError,
)
from bundle.keys import Identity, PublicIdentity
from bundle.ledger import (
    ENTRY_KINDS,
    Account,
    Applied,
    Auditor,
    LedgerState,
    Movement,
    Transfer,
    TransferDecision,
    decode_entry,
    entry_movements,
    transfer_decision,
)
from bundle.merkle import leaf_hash
from bundle.merkletree import MerkleTree
from bundle.payloads import Checkpoint, LedgerDelta, Transaction
from bundle.records import OVERHEAD, RecordReader, frame

FORMAT = "lltoken-ledger/v1"
INDEX_FORMAT = "lltoken-ledger-index/v1"
META_NAME = "LEDGER.json"
LOCK_NAME = "lock"
LOG_DIR = "log"
INDEX_NAME = "index.sqlite"

SEGMENT_MAGIC = b"LLTL"
SEGMENT_VERSION = 1
SEGMENT_HEADER = struct.Struct(">4sBI")
HEADER_SIZE = SEGMENT_HEADER.size
TAG_ENTRY = 0x45  # "E"
TAG_COMMIT = 0x43  # "C"
TAGS = frozenset({TAG_ENTRY, TAG_COMMIT})
DEFAULT_SEGMENT_BYTES = 128 * 1024 * 1024
_CACHE_KIB = 64 * 1024  # SQLite page cache of the writer (the default 2 MiB thrashes)
_KIND_CODES = {kind: code for code, kind in enumerate(ENTRY_KINDS)}


def segment_name(number: int) -> str:
    return f"{number:08d}.seg"


def segment_header(number: int) -> bytes:
    return SEGMENT_HEADER.pack(SEGMENT_MAGIC, SEGMENT_VERSION, number)


@dataclass(frozen=True, order=True)
class Position:
    """A byte position in the log: segment number and offset in that segment."""

    segment: int
    offset: int

    def __str__(self) -> str:
        return f"segment {self.segment}, offset {self.offset}"


START = Position(0, HEADER_SIZE)


# ---------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class LogEntry:
    index: int
    position: Position
    data: bytes


@dataclass(frozen=True)
class Batch:
    """Entries that a COMMIT record made durable, and that commit's checkpoint."""

    entries: tuple[LogEntry, ...]
    checkpoint: Checkpoint
    commit: Position
    end: Position


@dataclass(frozen=True)
class Tail:
    """What lies after the last valid COMMIT: ignored on open, cut off by repair."""

    start: Position
    size: int
    problem: Position
    reason: str
    damaged: bool
    """False for what a crash mid-append leaves (a batch cut short); True for a complete
    record that fails its checksum or structure (damage, or an altered byte)."""

    def describe(self) -> str:
        what = "damaged log" if self.damaged else "torn tail"
        return (
            f"{what}: {self.size} bytes after the last valid commit at {self.start} "
            f"are not part of the ledger ({self.reason} at {self.problem})"
        )


def _segments(log_dir: Path) -> list[int]:
    numbers = []
    for path in log_dir.iterdir():
        if path.suffix != ".seg" or path.name.startswith("."):
            continue
        stem = path.stem
        if len(stem) != 8 or not stem.isdigit():
            raise FormatError("unexpected file in the ledger log", found=path.name, where=str(path))
        numbers.append(int(stem))
    numbers.sort()
    if numbers != list(range(len(numbers))):
        raise IntegrityError(
            "ledger log segments are not numbered 0, 1, 2, ...: a segment is missing",
            expected=list(range(len(numbers))),
            found=numbers,
            where=str(log_dir),
        )
    return numbers


class LogReader:
    """Walk the log from ``start`` and yield its committed batches in order.

    After iteration, :attr:`end` is the position just past the last valid COMMIT and
    :attr:`tail` describes whatever follows it (None for a clean log).  Checkpoint
    signatures and the ledger rules are for the caller; the reader checks segment
    headers, framing, checksums, and that each commit counts the entries before it.

    Raises (while iterating):
        IntegrityError: segments are missing, or the log ends before ``start``.
    """

    def __init__(self, log_dir: Path, start: Position = START, first_index: int = 0) -> None:
        self.log_dir = log_dir
        self.start = start
        self.first_index = first_index
        self.end = start
        self.tail: Tail | None = None

    def __iter__(self) -> Iterator[Batch]:
        numbers = _segments(self.log_dir)
        if self.start.segment >= len(numbers):
            raise IntegrityError(
                "the ledger log ends before the position the index records",
                expected=f"segment {self.start.segment}",
                found=f"{len(numbers)} segments",
                where=str(self.log_dir),
            )
        index = self.first_index
        for number in numbers[self.start.segment :]:
            last = number == numbers[-1]
            offset = self.start.offset if number == self.start.segment else HEADER_SIZE
            with open(self.log_dir / segment_name(number), "rb") as f:
                header = f.read(HEADER_SIZE)
                f.seek(offset)
                buf = f.read()
            if header != segment_header(number):
                # Only a crash while creating the last segment leaves a short header.
                damaged = not (last and len(header) < HEADER_SIZE)
                self._stop(Position(number, 0), "bad segment header", damaged)
                return
            reader = RecordReader(buf, 0, TAGS)
            pending: list[LogEntry] = []
            for record in reader:
                at = Position(number, offset + record.offset)
                if record.tag == TAG_ENTRY:
                    pending.append(LogEntry(index + len(pending), at, record.data))
                    continue
                try:
                    checkpoint = Checkpoint.from_cbor(
                        cbor.decode(record.data, where=f"commit at {at}"), f"commit at {at}"
                    )
                except LLTokenError as e:
                    self._stop(at, f"commit record is not a checkpoint ({e.reason})", True)
                    return
                if checkpoint.size != index + len(pending):
                    reason = f"commit says {checkpoint.size} entries, the log has " + str(
                        index + len(pending)
                    )
                    self._stop(at, reason, True)
                    return
                self.end = Position(number, offset + record.end)
                yield Batch(tuple(pending), checkpoint, at, self.end)
                index += len(pending)
                pending = []
            if reader.stop is not None:
                stop = reader.stop
                self._stop(Position(number, offset + stop.offset), stop.reason, stop.damaged)
                return
            if pending or self.end.segment != number:
                # Entries with no COMMIT after them: a crash, if this is the last segment;
                # damage, if another segment follows.
                self._stop(Position(number, offset + len(buf)), "batch without a COMMIT", not last)
                return

    def _stop(self, problem: Position, reason: str, damaged: bool) -> None:
        size = 0
        for number in _segments(self.log_dir):
            if number >= self.end.segment:
                seg_size = (self.log_dir / segment_name(number)).stat().st_size
                size += seg_size - (self.end.offset if number == self.end.segment else 0)
        self.tail = Tail(self.end, size, problem, reason, damaged)


# ---------------------------------------------------------------------------- index

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entries(
    idx INTEGER PRIMARY KEY,
    segment INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    leaf BLOB NOT NULL,
    kind TEXT NOT NULL,
    agent BLOB,
    peer BLOB,
    round INTEGER
);
CREATE INDEX IF NOT EXISTS entries_peer ON entries(peer) WHERE peer IS NOT NULL;
CREATE INDEX IF NOT EXISTS entries_round ON entries(round) WHERE kind = 'round-close';
CREATE TABLE IF NOT EXISTS checkpoints(
    size INTEGER PRIMARY KEY,
    time INTEGER NOT NULL,
    root BLOB NOT NULL,
    signature BLOB NOT NULL,
    segment INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    end_offset INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS accounts(
    agent BLOB PRIMARY KEY,
    name TEXT NOT NULL,
    suite TEXT NOT NULL,
    sign_key BLOB NOT NULL,
    box_key BLOB NOT NULL,
    enrolled_at INTEGER NOT NULL,
    revoked_at INTEGER,
    balance INTEGER NOT NULL,
    rounds INTEGER NOT NULL,
    rewards INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    allocated INTEGER NOT NULL,
    sent INTEGER NOT NULL,
    received INTEGER NOT NULL,
    reputation,
    last_round INTEGER,
    last_reward_round INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nonces(
    key BLOB PRIMARY KEY, idx INTEGER NOT NULL, bundle_id BLOB NOT NULL
) WITHOUT ROWID;
"""

_ACCOUNT_COLUMNS = (
    "agent, name, suite, sign_key, box_key, enrolled_at, revoked_at, balance, rounds, rewards, "
    "tokens, allocated, sent, received, reputation, last_round, last_reward_round"
)


def _account_row(a: Account) -> tuple[Any, ...]:
    return (
        a.agent,
        a.name,
        a.identity.suite,
        a.identity.signing_key,
        a.identity.box_key,
        a.enrolled_at,
        a.revoked_at,
        a.balance,
        a.rounds,
        a.rewards,
        a.tokens,
        a.allocated,
        a.sent,
        a.received,
        a.reputation,
        a.last_round,
        a.last_reward_round,
    )


def _account_from_row(row: Sequence[Any]) -> Account:
    return Account(
        agent=bytes(row[0]),
        name=row[1],
        identity=PublicIdentity(row[2], bytes(row[3]), bytes(row[4])),
        enrolled_at=row[5],
        revoked_at=row[6],
        balance=row[7],
        rounds=row[8],
        rewards=row[9],
        tokens=row[10],
        allocated=row[11],
        sent=row[12],
        received=row[13],
        reputation=row[14],
        last_round=row[15],
        last_reward_round=row[16],
    )


def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        if not path.exists():
            raise LLTokenError(
                "the ledger index is missing: open the ledger read-write once to rebuild it",
                where=str(path),
            )
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
    db.executescript(_SCHEMA)
    return db


def _entry_parties(applied: Applied) -> tuple[bytes | None, bytes | None]:
    entry = applied.entry
    if applied.transaction is not None:
        return applied.transaction.sender, applied.transaction.recipient
    agent = getattr(entry, "agent", None)
    return (agent if isinstance(agent, bytes) else None), None


class _Index:
    """Writes of the SQLite index; every method is one transaction's worth of rows."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def meta(self) -> dict[str, Any]:
        return dict(self.db.execute("SELECT key, value FROM meta"))

    def reset(self, federation: bytes) -> None:
        with self.transaction():
            for table in ("meta", "entries", "checkpoints", "accounts", "nonces"):
                self.db.execute(f"DELETE FROM {table}")
            self.db.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [("format", INDEX_FORMAT), ("federation", federation.hex())],
            )
            self._set_state(0, START, None, 0, dict.fromkeys(ENTRY_KINDS, 0))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def add_batch(
        self,
        batch: Sequence[tuple[Applied, Position, int]],
        checkpoint: Checkpoint,
        commit: Position,
        end: Position,
        state: LedgerState,
    ) -> None:
        rows = []
        nonces = []
        touched: set[bytes] = set()
        for applied, position, length in batch:
            agent, peer = _entry_parties(applied)
            rows.append(
                (
                    applied.index,
                    position.segment,
                    position.offset,
                    length,
                    applied.leaf_hash,
                    applied.kind,
                    agent,
                    peer,
                    getattr(applied.entry, "round", None),
                )
            )
            touched.update(applied.parties)
            if applied.nonce_key is not None:
                nonces.append((applied.nonce_key, applied.index, applied.bundle_id))
        accounts = [state.account(agent) for agent in touched]
        with self.transaction():
            self.db.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self.db.executemany("INSERT INTO nonces VALUES (?, ?, ?)", nonces)
            self.db.executemany(
                f"INSERT OR REPLACE INTO accounts ({_ACCOUNT_COLUMNS}) "
                f"VALUES ({', '.join('?' * 17)})",
                [_account_row(a) for a in accounts if a is not None],
            )
            self.db.execute(
                "INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    checkpoint.size,
                    checkpoint.time,
                    checkpoint.root,
                    checkpoint.signature,
                    commit.segment,
                    commit.offset,
                    end.offset,
                ),
            )
            self._set_state(state.size, end, state.current_round, state.total_supply, state.kinds)

    def _set_state(
        self,
        size: int,
        end: Position,
        current_round: int | None,
        total_supply: int,
        kinds: dict[str, int],
    ) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            [
                ("size", size),
                ("end_segment", end.segment),
                ("end_offset", end.offset),
                ("current_round", current_round),
                ("total_supply", total_supply),
                ("kinds", json.dumps(kinds, sort_keys=True)),
            ],
        )

    def state(self, federation: bytes, meta: dict[str, Any]) -> LedgerState:
        return LedgerState.restore(
            federation,
            size=meta["size"],
            current_round=meta["current_round"],
            total_supply=meta["total_supply"],
            kinds=json.loads(meta["kinds"]),
            accounts=(
                _account_from_row(r)
                for r in self.db.execute(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts")
            ),
            nonces=(
                (bytes(k), i, bytes(b))
                for k, i, b in self.db.execute("SELECT key, idx, bundle_id FROM nonces")
            ),
        )

    def checkpoint(self, size: int | None, federation: bytes) -> tuple[Checkpoint, Position, int]:
        if size is None:
            sql = "SELECT * FROM checkpoints ORDER BY size DESC LIMIT 1"
            row = self.db.execute(sql).fetchone()
        else:
            row = self.db.execute("SELECT * FROM checkpoints WHERE size = ?", (size,)).fetchone()
        if row is None:
            raise IntegrityError("the index has no checkpoint", expected=f"size {size}")
        cp = Checkpoint(federation, row[0], bytes(row[2]), row[1], bytes(row[3]))
        return cp, Position(row[4], row[5]), row[6]


# ---------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class CheckReport:
    """What ``check`` found (and, with ``repair``, fixed)."""

    size: int
    checkpoints: int
    tail: Tail | None = None
    checksum_errors: tuple[str, ...] = ()
    index_mismatches: tuple[str, ...] = ()
    ledger_errors: tuple[str, ...] = ()
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not (
            self.tail or self.checksum_errors or self.index_mismatches or self.ledger_errors
        )

    def problems(self) -> list[str]:
        out = [] if self.tail is None else [self.tail.describe()]
        return [*out, *self.checksum_errors, *self.index_mismatches, *self.ledger_errors]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "size": self.size,
            "checkpoints": self.checkpoints,
            "torn_tail": None
            if self.tail is None
            else {
                "segment": self.tail.start.segment,
                "offset": self.tail.start.offset,
                "bytes": self.tail.size,
                "reason": self.tail.reason,
                "damaged": self.tail.damaged,
            },
            "checksum_errors": list(self.checksum_errors),
            "index_mismatches": list(self.index_mismatches),
            "ledger_errors": list(self.ledger_errors),
            "repaired": self.repaired,
        }


@dataclass
class _Meta:
    federation: bytes
    coordinator: PublicIdentity

    @classmethod
    def load(cls, path: Path) -> _Meta:
        where = str(path / META_NAME)
        try:
            doc = json.loads((path / META_NAME).read_text())
        except FileNotFoundError as e:
            raise FormatError("not a ledger directory (no LEDGER.json)", where=str(path)) from e
        except (OSError, ValueError) as e:
            raise FormatError(f"ledger description is unreadable ({e})", where=where) from e
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise FormatError("not a ledger description", expected=FORMAT, where=where)
        try:
            federation = bytes.fromhex(doc["federation"])
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError("ledger federation id is malformed", where=where) from e
        return cls(federation, public_identity_from_json(doc.get("coordinator"), where))

    def save(self, path: Path) -> None:
        doc = {
            "format": FORMAT,
            "federation": self.federation.hex(),
            "coordinator": public_identity_to_json(self.coordinator),
        }
        with atomic_write(path / META_NAME, overwrite=False) as f:
            f.write((json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def _lock(path: Path) -> int:
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        os.close(fd)
        raise LLTokenError(
            "the ledger is in use by another process (one writer at a time)", where=str(path)
        ) from e
    return fd


@dataclass
class _Writer:
    """The open end segment."""

    number: int
    fd: int
    end: int


class LedgerStore:
    """The coordinator's ledger: append batches, serve entries and proofs, check, repair.

    ``LedgerStore(path, federation, signer)`` opens the ledger in ``path``, creating it
    (with a signed checkpoint of the empty tree) if there is none; :meth:`open` opens an
    existing one, with or without the signing key (without it, :meth:`append` refuses).
    Use it as a context manager or :meth:`close` it.  One process at a time: a lock file
    enforces it.

    Raises:
        FormatError: ``path`` holds something that is not a ledger.
        SchemaError: the ledger there belongs to another federation or coordinator.
        IntegrityError: the index records more than the log holds (the log lost
            committed data): run ``check_ledger(path, repair=True)``.
        LLTokenError: another process has it open.
    """

    def __init__(
        self,
        path: Path,
        federation: bytes,
        signer: Identity,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        time: int | None = None,
    ) -> None:
        self._start(path, signer, segment_bytes, create=(federation, time))

    @classmethod
    def open(
        cls,
        path: Path,
        signer: Identity | None = None,
        *,
        readonly: bool = False,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> LedgerStore:
        """Open the existing ledger in ``path`` (federation and coordinator key from its
        ``LEDGER.json``).

        ``readonly`` opens it beside a running writer (no lock; SQLite allows readers):
        it shows the ledger as of the index's last batch, never writes, and cannot append.

        Raises:
            As the constructor.
        """
        store = cls.__new__(cls)
        store._start(path, None if readonly else signer, segment_bytes, None, readonly)
        return store

    def _start(
        self,
        path: Path,
        signer: Identity | None,
        segment_bytes: int,
        create: tuple[bytes, int | None] | None,
        readonly: bool = False,
    ) -> None:
        self.path = path
        self.readonly = readonly
        self.segment_bytes = segment_bytes
        self._signer = signer
        self._db: sqlite3.Connection | None = None
        self._writer: _Writer | None = None
        self._tree: MerkleTree | None = None
        self._tail: Tail | None = None
        self._agents: tuple[bytearray, dict[bytes, list[int]]] | None = None
        self._stale = False
        self._broken: str | None = None
        self._checkpoint: Checkpoint | None = None
        self._end = START
        if create is not None:
            path.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = None if readonly else _lock(path)
        try:
            if create is not None and signer is not None:
                self._create_missing(signer, *create)
            meta = _Meta.load(path)
            if signer is not None and signer.public != meta.coordinator:
                raise SchemaError(
                    "this ledger belongs to another coordinator key",
                    expected=meta.coordinator.fingerprint,
                    found=signer.fingerprint,
                    where=str(path),
                )
            if create is not None and create[0] != meta.federation:
                raise SchemaError(
                    "this ledger belongs to another federation",
                    expected=create[0].hex(),
                    found=meta.federation.hex(),
                    where=str(path),
                )
            self.federation = meta.federation
            self.coordinator = meta.coordinator
            self.state = LedgerState(self.federation)
            self._load()
        except BaseException:
            self.close()
            raise

    def _create_missing(self, signer: Identity, federation: bytes, time: int | None) -> None:
        """Write LEDGER.json, then the first segment holding a signed empty checkpoint;
        either step is redone if a crash interrupted creation."""
        path = self.path
        log_dir = path / LOG_DIR
        if not (path / META_NAME).exists():
            if log_dir.exists() and any(log_dir.iterdir()):
                raise FormatError(
                    "a ledger log exists without its LEDGER.json; restore that file",
                    where=str(path),
                )
            _Meta(federation, signer.public).save(path)
        log_dir.mkdir(exist_ok=True)
        if not any(p.suffix == ".seg" for p in log_dir.iterdir()):
            checkpoint = sign_checkpoint(
                signer, federation=federation, size=0, root=MerkleTree().root(), time=time
            )
            first = segment_header(0) + frame(TAG_COMMIT, cbor.encode(checkpoint.to_cbor()))
            with atomic_write(log_dir / segment_name(0)) as f:
                f.write(first)
            fsync_dir(path)

    def close(self) -> None:
        self._close_files()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> LedgerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _close_files(self) -> None:
        if self._writer is not None:
            os.close(self._writer.fd)
            self._writer = None
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def _log_dir(self) -> Path:
        return self.path / LOG_DIR

    def _index(self) -> _Index:
        if self._db is None:
            raise LLTokenError("the ledger store is closed", where=str(self.path))
        return _Index(self._db)

    def _load(self) -> None:
        """(Re)read everything from disk: index, then whatever the log has beyond it."""
        self._close_files()
        self._tree = None
        self._agents = None
        self._db = _connect(self.path / INDEX_NAME, readonly=self.readonly)
        index = self._index()
        meta = index.meta()
        if self.readonly:
            if meta.get("format") != INDEX_FORMAT:
                raise LLTokenError(
                    "the ledger index is not built: open the ledger read-write once",
                    where=str(self.path / INDEX_NAME),
                )
            self.state = index.state(self.federation, meta)
            self._end = Position(meta["end_segment"], meta["end_offset"])
            self._checkpoint = index.checkpoint(None, self.federation)[0]
            return
        if meta.get("format") != INDEX_FORMAT or meta.get("federation") != self.federation.hex():
            index.reset(self.federation)
            meta = index.meta()
        end = Position(meta["end_segment"], meta["end_offset"])
        if meta["size"] or end != START:
            self._check_index_end(index, end)
        self.state = index.state(self.federation, meta)
        self._end = end
        reader = LogReader(self._log_dir, end, self.state.size)
        for batch in reader:
            self._catch_up(batch)
        self._tail = reader.tail
        self._checkpoint = index.checkpoint(None, self.federation)[0]
        self._stale = False
        self._open_writer()

    def _check_index_end(self, index: _Index, end: Position) -> None:
        checkpoint, commit, end_offset = index.checkpoint(None, self.federation)
        where = str(self._log_dir / segment_name(commit.segment))
        problem = f"the index records {checkpoint.size} entries up to {end}"
        try:
            with open(where, "rb") as f:
                f.seek(commit.offset)
                data = f.read(end_offset - commit.offset)
        except FileNotFoundError:
            data = b""
        records = list(RecordReader(data, 0, TAGS))
        stored = None if len(records) != 1 else records[0]
        if (
            stored is None
            or stored.end != len(data)
            or stored.tag != TAG_COMMIT
            or stored.data != cbor.encode(checkpoint.to_cbor())
            or Position(commit.segment, end_offset) != end
        ):
            raise IntegrityError(
                "the ledger index does not match the log (the log lost or changed committed "
                "data); run 'ledger check --repair' to rebuild the index from the log",
                expected=f"the COMMIT of size {checkpoint.size} at {commit}",
                found="something else" if data else "no such bytes",
                where=f"{where}: {problem}",
            )

    def _catch_up(self, batch: Batch) -> None:
        """Apply a batch found in the log beyond the index (a crash between the log write
        and the index update) after the same checks a fresh audit would make."""
        where = f"commit at {batch.commit}"
        verify_checkpoint(
            batch.checkpoint, self.coordinator, federation=self.federation, where=where
        )
        tree = self._merkle()
        scratch = self.state.fork()
        applied = []
        for entry in batch.entries:
            applied.append(scratch.apply(entry.data, entry.index))
        old_size = tree.size
        tree.extend(a.leaf_hash for a in applied)
        if tree.root() != batch.checkpoint.root:
            tree.truncate(old_size)
            raise IntegrityError(
                "log entries do not hash to their signed checkpoint",
                expected=batch.checkpoint.root.hex(),
                found=tree.root().hex(),
                where=where,
            )
        self.state.absorb(scratch)
        rows = [(a, e.position, len(e.data)) for a, e in zip(applied, batch.entries, strict=True)]
        self._index().add_batch(rows, batch.checkpoint, batch.commit, batch.end, self.state)
        self._end = batch.end

    def _open_writer(self) -> None:
        number = self._end.segment
        fd = os.open(self._log_dir / segment_name(number), os.O_RDWR)
        self._writer = _Writer(number, fd, self._end.offset)

    def _merkle(self) -> MerkleTree:
        if self._tree is None:
            rows = self._index().db.execute("SELECT leaf FROM entries ORDER BY idx")
            leaves = b"".join(bytes(r[0]) for r in rows)
            self._tree = MerkleTree(leaves)
            if self._tree.size != self.state.size:
                raise IntegrityError(
                    "the ledger index is missing leaf hashes",
                    expected=self.state.size,
                    found=self._tree.size,
                    where=str(self.path / INDEX_NAME),
                )
        return self._tree

    # -- queries

    @property
    def size(self) -> int:
        return self.state.size

    def checkpoint(self, size: int | None = None) -> Checkpoint:
        """The latest signed checkpoint, or the one signed for exactly ``size`` entries.

        Raises:
            ProofError: no batch ended at ``size``, so no checkpoint was signed there.
        """
        if size is None or (self._checkpoint is not None and size == self._checkpoint.size):
            if self._checkpoint is None:
                raise LLTokenError("the ledger store is closed", where=str(self.path))
            return self._checkpoint
        sql = "SELECT size, time, root, signature FROM checkpoints WHERE size = ?"
        row = self._index().db.execute(sql, (size,)).fetchone()
        if row is None:
            raise ProofError(
                "no checkpoint was signed at this size (no batch ended there)",
                found=size,
                where=str(self.path),
            )
        return Checkpoint(self.federation, row[0], bytes(row[2]), row[1], bytes(row[3]))

    @property
    def tail(self) -> Tail | None:
        """Bytes after the last commit found on open (cut off by the next append)."""
        return self._tail

    def root(self, size: int | None = None) -> bytes:
        return self._merkle().root(size)

    def leaf_hash(self, index: int) -> bytes:
        return self._merkle().leaf(index)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Audit path of entry ``index`` in the tree of ``size`` entries (default: all).

        Raises:
            ProofError: ``index`` or ``size`` is outside the ledger.
        """
        try:
            return self._merkle().inclusion_proof(index, size)
        except ValueError as e:
            raise ProofError(str(e), where=str(self.path)) from e

    def consistency_proof(self, old_size: int, size: int | None = None) -> list[bytes]:
        """Proof that the tree of ``old_size`` entries is a prefix of the one of ``size``.

        Raises:
            ProofError: a size outside ``0 < old_size <= size <= self.size``.
        """
        try:
            return self._merkle().consistency_proof(old_size, size)
        except ValueError as e:
            raise ProofError(str(e), where=str(self.path)) from e

    def checkpoints(self) -> list[Checkpoint]:
        """Every checkpoint ever signed, oldest first."""
        rows = self._index().db.execute(
            "SELECT size, time, root, signature FROM checkpoints ORDER BY size"
        )
        return [Checkpoint(self.federation, s, bytes(r), t, bytes(sig)) for s, t, r, sig in rows]

    def balances(self) -> dict[bytes, int]:
        """Every enrolled agent's confirmed balance."""
        return self.state.balances()

    def has_round_close(self, round: int) -> bool:
        """Whether round ``round`` is closed in the ledger (makes closing idempotent)."""
        self._ensure_index()
        sql = "SELECT 1 FROM entries WHERE kind = 'round-close' AND round = ?"
        return self._index().db.execute(sql, (round,)).fetchone() is not None

    def decide_transfer(self, bundle_bytes: bytes) -> TransferDecision:
        """:func:`bundle.ledger.transfer_decision` against this ledger's current state:
        append ``decision.entry`` if accepted; otherwise nothing is appended."""
        return transfer_decision(self.state, bundle_bytes)

    def entry(self, index: int) -> bytes:
        return self.entries(index, index + 1)[0]

    def entries(self, start: int = 0, stop: int | None = None) -> list[bytes]:
        """Entries ``[start, stop)`` read from the log, each checked against its checksum
        and its indexed leaf hash.

        Raises:
            IntegrityError: a record was damaged or changed since it was written.
        """
        self._ensure_index()
        stop = self.size if stop is None else min(stop, self.size)
        if start >= stop:
            return []
        rows = self._index().db.execute(
            "SELECT idx, segment, offset, length, leaf FROM entries "
            "WHERE idx >= ? AND idx < ? ORDER BY idx",
            (start, stop),
        )
        out: list[bytes] = []
        span: list[tuple[int, int, int, int, bytes]] = []
        for row in rows:
            if span and row[1] != span[0][1]:
                out.extend(self._read_span(span))
                span = []
            span.append((row[0], row[1], row[2], row[3], bytes(row[4])))
        if span:
            out.extend(self._read_span(span))
        if len(out) != stop - start:
            raise IntegrityError(
                "the ledger index is missing entries", expected=stop - start, found=len(out)
            )
        return out

    def _read_span(self, span: list[tuple[int, int, int, int, bytes]]) -> list[bytes]:
        segment = span[0][1]
        first, last = span[0][2], span[-1][2] + OVERHEAD + span[-1][3]
        path = self._log_dir / segment_name(segment)
        with open(path, "rb") as f:
            f.seek(first)
            buf = f.read(last - first)
        records = {r.offset + first: r for r in RecordReader(buf, 0, TAGS)}
        out = []
        for index, _, offset, _, leaf in span:
            record = records.get(offset)
            if record is None or record.tag != TAG_ENTRY or leaf_hash(record.data) != leaf:
                raise IntegrityError(
                    "ledger entry was damaged or altered after it was written",
                    expected=f"an entry with leaf hash {leaf.hex()}",
                    found="a record that fails its checksum or hash",
                    where=f"entry {index}, {path} offset {offset}",
                )
            out.append(record.data)
        return out

    def delta_since(self, size: int, *, max_entries: int | None = None) -> LedgerDelta:
        """Entries from ``size`` on, the latest checkpoint, and the consistency proof from
        ``size`` (what an agent that holds ``size`` entries needs).

        With ``max_entries``, the delta ends at the latest checkpoint within that many
        entries instead (at least one batch), so a far-behind agent catches up in steps.

        Raises:
            ProofError: ``size`` is beyond this ledger (the agent holds a history this
                coordinator never signed).
        """
        latest = self.checkpoint()
        if not 0 <= size <= latest.size:
            raise ProofError(
                "the requested size is beyond this ledger",
                expected=f"0..{latest.size}",
                found=size,
                where=str(self.path),
            )
        checkpoint = latest
        if max_entries is not None and latest.size - size > max_entries:
            db = self._index().db
            row = db.execute(
                "SELECT max(size) FROM checkpoints WHERE size > ? AND size <= ?",
                (size, size + max_entries),
            ).fetchone()
            if row[0] is None:
                row = db.execute(
                    "SELECT min(size) FROM checkpoints WHERE size > ?", (size,)
                ).fetchone()
            checkpoint = self.checkpoint(row[0])
        proof = self.consistency_proof(size, checkpoint.size) if 0 < size < checkpoint.size else []
        entries = self.entries(size, checkpoint.size)
        return LedgerDelta(size, tuple(entries), checkpoint, tuple(proof))

    def find(self, *, kind: str | None = None, agent: bytes | None = None) -> list[int]:
        """Numbers of the entries of ``kind`` that concern ``agent`` (as the agent, a
        transfer's sender or its recipient), oldest first.  Round-close entries are not
        indexed by participant."""
        kinds, by_agent = self._agent_map()
        code = None if kind is None else _KIND_CODES.get(kind, -1)
        candidates: Iterable[int] = range(len(kinds)) if agent is None else by_agent.get(agent, [])
        return [i for i in candidates if code is None or kinds[i] == code]

    def _agent_map(self) -> tuple[bytearray, dict[bytes, list[int]]]:
        """Entry kinds and per-agent entry numbers, read from the index once and then
        kept up to date in memory.  (A SQLite index on the agent column dirtied one
        B-tree page per agent per batch, and that write amplification halved append
        throughput at a million entries.)"""
        self._ensure_index()
        if self._agents is None:
            kinds = bytearray()
            by_agent: dict[bytes, list[int]] = {}
            sql = "SELECT idx, kind, agent, peer FROM entries ORDER BY idx"
            for index, kind, agent, peer in self._index().db.execute(sql):
                kinds.append(_KIND_CODES[kind])
                for party in (agent, peer):
                    if party is not None:
                        by_agent.setdefault(bytes(party), []).append(index)
            self._agents = (kinds, by_agent)
        return self._agents

    def _remember(self, applied: Sequence[Applied]) -> None:
        if self._agents is None:
            return
        kinds, by_agent = self._agents
        for result in applied:
            kinds.append(_KIND_CODES[result.kind])
            for party in _entry_parties(result):
                if party is not None:
                    by_agent.setdefault(party, []).append(result.index)

    def history(self, agent: bytes) -> list[Movement]:
        """What the ledger did to ``agent``: enrolment, rewards, allocations, transfers,
        revocation (round participation shows as a reward's round)."""
        movements: list[Movement] = []
        for index in self.find(agent=agent):
            data = self.entry(index)
            entry = decode_entry(data, f"ledger entry {index}")
            tx = self.transaction(entry, index) if isinstance(entry, Transfer) else None
            movements.extend(m for m in entry_movements(entry, index, tx) if m.agent == agent)
        return movements

    def transaction(self, entry: Transfer, index: int) -> Transaction:
        """The transaction inside transfer entry ``index`` (verified when it was
        appended; opened again here only to show it)."""

        def any_enrolled(key_id: bytes) -> PublicIdentity | None:
            account = self.state.account(key_id)
            return None if account is None else account.identity

        opened = open_bundle_bytes(entry.bundle, any_enrolled, where=f"ledger entry {index}")
        if not isinstance(opened.payload, Transaction):
            raise SchemaError("transfer entry holds no transaction", where=f"ledger entry {index}")
        return opened.payload

    # -- appending

    def append(self, entries: Sequence[bytes], *, time: int | None = None) -> range:
        """Check ``entries`` against the ledger rules, write them as one batch with one
        fsync, sign and store the new checkpoint, and return their entry numbers.

        Either the whole batch is appended or none of it: an entry that breaks a rule
        raises before anything is written, and a failed write is cut back off the log.

        Raises:
            SchemaError, ReplayError, SignatureError, UnknownSenderError, FormatError:
                an entry breaks a rule (the message names its entry number).
            LLTokenError: the store was opened without the coordinator's signing key.
            OSError: the write or fsync failed (nothing was appended).
        """
        if self._broken is not None:
            raise LLTokenError(
                f"the ledger store must be reopened after a failed write ({self._broken})",
                where=str(self.path),
            )
        signer = self._signer
        if signer is None:
            raise LLTokenError(
                "the ledger was opened without the coordinator's key: it cannot sign",
                where=str(self.path),
            )
        self._ensure_index()
        old_size = self.size
        if not entries:
            return range(old_size, old_size)
        scratch = self.state.fork()
        applied = [scratch.apply(data, old_size + i) for i, data in enumerate(entries)]
        tree = self._merkle()
        tree.extend(a.leaf_hash for a in applied)
        try:
            checkpoint = sign_checkpoint(
                signer,
                federation=self.federation,
                size=scratch.size,
                root=tree.root(),
                time=max(int(_time.time()) if time is None else time, self.checkpoint().time),
            )
            records = [frame(TAG_ENTRY, data) for data in entries]
            commit_record = frame(TAG_COMMIT, cbor.encode(checkpoint.to_cbor()))
            number, offset = self._write(records, commit_record)
        except BaseException:
            tree.truncate(old_size)
            raise
        self.state.absorb(scratch)
        self._checkpoint = checkpoint
        positions = []
        for data, record in zip(entries, records, strict=True):
            positions.append((Position(number, offset), len(data)))
            offset += len(record)
        commit = Position(number, offset)
        self._end = Position(number, offset + len(commit_record))
        rows = [(a, p, n) for a, (p, n) in zip(applied, positions, strict=True)]
        self._remember(applied)
        try:
            self._index().add_batch(rows, checkpoint, commit, self._end, self.state)
        except sqlite3.Error:
            # The batch is durable in the log, which is the truth: report success and
            # rebuild the index from the log before it is next used.
            self._stale = True
        return range(old_size, self.size)

    def _ensure_index(self) -> None:
        if self._stale:
            self._load()

    def _write(self, records: list[bytes], commit_record: bytes) -> tuple[int, int]:
        """Write one batch at the end of the log and fsync it; undo on failure.

        Returns the segment number and offset of the batch's first record.
        """
        writer = self._writer
        if writer is None:
            raise LLTokenError("the ledger store is closed", where=str(self.path))
        if self._tail is not None:
            self._cut_tail()
        size = sum(map(len, records)) + len(commit_record)
        created: Path | None = None
        if writer.end > HEADER_SIZE and writer.end + size > self.segment_bytes:
            number = writer.number + 1
            created = self._log_dir / segment_name(number)
            fd = os.open(created, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            os.close(writer.fd)
            writer = self._writer = _Writer(number, fd, 0)
            records = [segment_header(number), *records]
        start = writer.end
        try:
            os.pwrite(writer.fd, b"".join([*records, commit_record]), start)
            os.fsync(writer.fd)
            if created is not None:
                fsync_dir(self._log_dir)
        except BaseException as e:
            self._undo_write(writer, start, created, e)
            raise
        writer.end = start + size + (HEADER_SIZE if created is not None else 0)
        first = start + (HEADER_SIZE if created is not None else 0)
        return writer.number, first

    def _undo_write(
        self, writer: _Writer, start: int, created: Path | None, error: BaseException
    ) -> None:
        try:
            if created is not None:
                os.close(writer.fd)
                created.unlink()
                fsync_dir(self._log_dir)
                self._writer = None
                self._open_writer()
            else:
                os.ftruncate(writer.fd, start)
                os.fsync(writer.fd)
        except OSError as cleanup:
            # We cannot tell what reached the disk: refuse further writes until a
            # reopen reads back what is really there.
            self._broken = f"{error!r}; undo failed: {cleanup!r}"

    def _cut_tail(self) -> None:
        """Cut off what follows the last commit (a torn batch from an earlier crash)."""
        writer = self._writer
        if writer is None:
            raise LLTokenError("the ledger store is closed", where=str(self.path))
        for number in _segments(self._log_dir):
            if number > writer.number:
                (self._log_dir / segment_name(number)).unlink()
        os.ftruncate(writer.fd, writer.end)
        os.fsync(writer.fd)
        fsync_dir(self._log_dir)
        self._tail = None

    # -- checking

    def check(self, *, repair: bool = False) -> CheckReport:
        """Check the log (framing, checksums, signatures, rules, roots) and the index
        against it; with ``repair``, cut off a torn tail and rebuild the index.

        Raises:
            OSError: the repair could not write (the old index is left as it was).
            LLTokenError: the store was opened read-only.
        """
        if self.readonly:
            raise LLTokenError("a read-only ledger cannot be checked here", where=str(self.path))
        self._close_files()
        try:
            return _check(self.path, self.federation, self.coordinator, repair=repair)
        finally:
            self._load()


def _check(
    path: Path, federation: bytes, coordinator: PublicIdentity, *, repair: bool
) -> CheckReport:
    log_dir = path / LOG_DIR
    auditor = Auditor(federation, coordinator)
    reader = LogReader(log_dir)
    rows: list[tuple[Applied, Position, int]] = []
    commits: list[Batch] = []
    ledger_errors: list[str] = []
    try:
        for batch in reader:
            for entry in batch.entries:
                rows.append((auditor.add(entry.data), entry.position, len(entry.data)))
            auditor.check_checkpoint(batch.checkpoint, where=f"commit at {batch.commit}")
            commits.append(batch)
    except LLTokenError as e:
        ledger_errors.append(str(e))
    tail = reader.tail
    checksum_errors = []
    if tail is not None and tail.damaged:
        checksum_errors.append(f"{tail.reason} at {tail.problem}")
    mismatches = _compare_index(path / INDEX_NAME, federation, auditor, rows, commits, reader.end)
    report = CheckReport(
        auditor.size,
        len(commits),
        tail,
        tuple(checksum_errors),
        tuple(mismatches),
        tuple(ledger_errors),
    )
    if not repair or report.ok:
        return report
    if ledger_errors:
        # Committed entries that break the rules or their signed roots: not a storage
        # fault that cutting or rebuilding could fix.
        return report
    if tail is not None:
        _truncate_log(log_dir, reader.end)
    _rebuild_index(path, federation, auditor.state, rows, commits, reader.end)
    return CheckReport(
        report.size,
        report.checkpoints,
        tail,
        report.checksum_errors,
        report.index_mismatches,
        (),
        repaired=True,
    )


def _compare_index(
    index_path: Path,
    federation: bytes,
    auditor: Auditor,
    rows: list[tuple[Applied, Position, int]],
    commits: list[Batch],
    end: Position,
) -> list[str]:
    if not index_path.exists():
        return ["the index is missing"]
    out: list[str] = []
    db = _connect(index_path)
    try:
        index = _Index(db)
        meta = index.meta()
        if meta.get("format") != INDEX_FORMAT or meta.get("federation") != federation.hex():
            return ["the index is empty or of another format"]
        if meta["size"] != auditor.size:
            out.append(f"index size {meta['size']} != log size {auditor.size}")
        if Position(meta["end_segment"], meta["end_offset"]) != end:
            out.append(
                f"index end {Position(meta['end_segment'], meta['end_offset'])} != log end {end}"
            )
        cursor = db.execute(
            "SELECT idx, segment, offset, length, leaf, kind FROM entries ORDER BY idx"
        )
        for row, (applied, position, length) in zip(cursor, rows, strict=False):
            expected = (
                applied.index,
                position.segment,
                position.offset,
                length,
                applied.leaf_hash,
                applied.kind,
            )
            if (row[0], row[1], row[2], row[3], bytes(row[4]), row[5]) != expected:
                out.append(f"index row for entry {applied.index} does not match the log")
                if len(out) > 20:
                    return [*out, "(more mismatches not listed)"]
        total = db.execute("SELECT count(*) FROM entries").fetchone()[0]
        if total != len(rows):
            out.append(f"index has {total} entry rows, the log {len(rows)} entries")
        sizes = [r[0] for r in db.execute("SELECT size FROM checkpoints ORDER BY size")]
        if sizes != [b.checkpoint.size for b in commits]:
            out.append("index checkpoints differ from the log's commits")
        if not out:
            cached = index.state(federation, meta)
            if dict(cached.accounts) != dict(auditor.state.accounts):
                out.append("cached accounts differ from a replay of the log")
            if cached.total_supply != auditor.state.total_supply:
                out.append("cached total supply differs from a replay of the log")
    finally:
        db.close()
    return out


def _truncate_log(log_dir: Path, end: Position) -> None:
    for number in _segments(log_dir):
        if number > end.segment:
            (log_dir / segment_name(number)).unlink()
    fd = os.open(log_dir / segment_name(end.segment), os.O_RDWR)
    try:
        os.ftruncate(fd, end.offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(log_dir)


def _rebuild_index(
    path: Path,
    federation: bytes,
    state: LedgerState,
    rows: list[tuple[Applied, Position, int]],
    commits: list[Batch],
    end: Position,
) -> None:
    """Write a fresh index beside the old one and swap it in atomically."""
    target = path / INDEX_NAME
    tmp = path / f".{INDEX_NAME}.rebuild"
    for stale in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
        stale.unlink(missing_ok=True)
    db = _connect(tmp)
    try:
        index = _Index(db)
        index.reset(federation)
        position = 0
        for batch in commits:
            count = len(batch.entries)
            index.add_batch(
                rows[position : position + count], batch.checkpoint, batch.commit, batch.end, state
            )
            position += count
        # add_batch stored per-batch snapshots of the final state's accounts; make sure every
        # account (also those untouched since) and the final scalars are recorded.
        with index.transaction():
            db.executemany(
                f"INSERT OR REPLACE INTO accounts ({_ACCOUNT_COLUMNS}) "
                f"VALUES ({', '.join('?' * 17)})",
                [_account_row(a) for a in state.accounts.values()],
            )
            index._set_state(state.size, end, state.current_round, state.total_supply, state.kinds)
    finally:
        db.close()
    try:
        for stale in (target.with_name(INDEX_NAME + "-wal"), target.with_name(INDEX_NAME + "-shm")):
            stale.unlink(missing_ok=True)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path)


def check_ledger(path: Path, *, repair: bool = False) -> CheckReport:
    """:meth:`LedgerStore.check` for a ledger that will not open (e.g. an index ahead of
    a damaged log).  Takes the store's lock.

    Raises:
        FormatError: not a ledger directory.
        LLTokenError: another process has the ledger open.
    """
    meta = _Meta.load(path)
    lock_fd = _lock(path)
    try:
        return _check(path, meta.federation, meta.coordinator, repair=repair)
    finally:
        os.close(lock_fd)


def read_log(path: Path) -> tuple[PublicIdentity, bytes, LogReader]:
    """The coordinator key and federation recorded in a ledger directory, and a reader
    over its log (no lock, no index: for auditors and exports).

    Raises:
        FormatError: not a ledger directory.
    """
    meta = _Meta.load(path)
    return meta.coordinator, meta.federation, LogReader(path / LOG_DIR)


__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "Batch",
    "CheckReport",
    "LedgerStore",
    "LogReader",
    "Position",
    "Tail",
    "check_ledger",
    "read_log",
]
