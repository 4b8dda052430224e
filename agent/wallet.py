"""The agent's wallet: confirmed balance from the verified ledger replica, and the
transfers this agent signed, from pending to confirmed, rejected or expired.

A transfer is *pending* from the moment its signed bundle is in the outbox.  It becomes:

* *confirmed* when a receipt carries an inclusion proof that verifies against a
  coordinator-signed checkpoint, or when the transfer shows up in the replica (whichever
  comes first; a lost receipt is harmless);
* *rejected* when the coordinator's receipt says so (with its reason);
* *expired* when the replica's latest closed round has passed its ``expires_round``: the
  ledger rules can then never accept it, so its tokens are free again.

Spendable = confirmed balance - pending transfers - transfers confirmed by receipt but not
yet in the replica (the replica's balance does not show those yet).  The coordinator
settles double spends in any case; this keeps an honest agent from attempting one.

Tables (in the home's ``state.db``, next to the spool's)::

    agent_meta       key -> value (ledger_scanned, ledger_round, ...)
    agent_transfers  one row per transfer this agent signed, with the bundle's bytes
                     (the ledger entry embeds them, so they prove inclusion)
"""

from __future__ import annotations

import io
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from agent.ledger_replica import LedgerReplica
from bundle.checkpoint import verify_checkpoint
from bundle.envelope import read_prefix
from bundle.errors import EquivocationError, LLTokenError, ProofError
from bundle.keys import PublicIdentity
from bundle.ledger import RoundClose, Transfer, decode_entry
from bundle.merkle import leaf_hash, verify_inclusion
from bundle.payloads import Receipt, Transaction

PENDING = "pending"
CONFIRMED = "confirmed"
REJECTED = "rejected"
EXPIRED = "expired"

SCHEMA = """
CREATE TABLE IF NOT EXISTS agent_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS agent_transfers (
    bundle_id BLOB PRIMARY KEY,
    recipient BLOB NOT NULL,
    amount INTEGER NOT NULL,
    nonce BLOB NOT NULL,
    memo TEXT NOT NULL,
    expires_round INTEGER NOT NULL,
    created_round INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    reason TEXT NOT NULL DEFAULT '',
    ledger_index INTEGER,
    bundle BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    decided_at INTEGER
);
"""


class InsufficientFundsError(LLTokenError):
    """A transfer larger than the spendable balance (confirmed minus pending outgoing)."""

    exit_code = 43


def get_meta(conn: sqlite3.Connection, key: str, default: str = "") -> str:
    row = conn.execute("SELECT value FROM agent_meta WHERE key = ?", (key,)).fetchone()
    return default if row is None else str(row[0])


def set_meta(conn: sqlite3.Connection, key: str, value: object) -> None:
    conn.execute(
        "INSERT INTO agent_meta (key, value) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, str(value)),
    )


@dataclass(frozen=True)
class Balance:
    """The wallet's numbers; ``spendable`` is what :meth:`Wallet.check_spend` allows."""

    confirmed: int
    """Balance in the verified ledger replica."""
    pending_out: int
    """Transfers sent and not yet confirmed, rejected or expired."""
    unreplicated_out: int
    """Transfers confirmed by receipt whose ledger entry the replica does not hold yet."""
    ledger_size: int

    @property
    def spendable(self) -> int:
        return self.confirmed - self.pending_out - self.unreplicated_out

    def to_dict(self) -> dict[str, int]:
        return {
            "confirmed": self.confirmed,
            "pending_out": self.pending_out,
            "unreplicated_out": self.unreplicated_out,
            "spendable": self.spendable,
            "ledger_size": self.ledger_size,
        }


@dataclass(frozen=True)
class TransferRecord:
    """A transfer this agent signed, and what became of it."""

    bundle_id: bytes
    recipient: bytes
    amount: int
    memo: str
    nonce: bytes
    expires_round: int
    created_round: int
    status: str
    reason: str
    ledger_index: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle_id": self.bundle_id.hex(),
            "recipient": self.recipient.hex(),
            "amount": self.amount,
            "memo": self.memo,
            "nonce": self.nonce.hex(),
            "expires_round": self.expires_round,
            "created_round": self.created_round,
            "status": self.status,
            "reason": self.reason,
            "ledger_index": self.ledger_index,
        }


@dataclass(frozen=True)
class HistoryLine:
    """One line of the wallet history: a ledger movement, or a transfer not in the ledger."""

    index: int | None
    kind: str
    amount: int
    round: int | None
    counterparty: bytes | None
    status: str
    memo: str = ""
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "kind": self.kind,
            "amount": self.amount,
            "round": self.round,
            "counterparty": None if self.counterparty is None else self.counterparty.hex(),
            "status": self.status,
            "memo": self.memo,
            "reason": self.reason,
        }


def _record(row: tuple[Any, ...]) -> TransferRecord:
    return TransferRecord(
        bytes(row[0]),
        bytes(row[1]),
        int(row[2]),
        str(row[3]),
        bytes(row[4]),
        int(row[5]),
        int(row[6]),
        str(row[7]),
        str(row[8]),
        None if row[9] is None else int(row[9]),
    )


def embedded_bundle_id(bundle: bytes) -> bytes | None:
    """The bundle id of a transfer entry's embedded transaction bundle (None if unreadable)."""
    try:
        return read_prefix(io.BytesIO(bundle), len(bundle)).bundle_id
    except LLTokenError:
        return None


class Wallet:
    """Transfers over the home's database; balances from the replica (when pinned)."""

    def __init__(self, conn: sqlite3.Connection, me: bytes, federation: bytes) -> None:
        self.conn = conn
        self.me = me
        self.federation = federation
        self.replica: LedgerReplica | None = None
        self.coordinator: PublicIdentity | None = None

    # ------------------------------------------------------------------ queries

    def balance(self) -> Balance:
        replica = self.replica
        confirmed = 0 if replica is None else replica.balance(self.me)
        size = 0 if replica is None else replica.size
        pending = self.conn.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM agent_transfers WHERE status = ?", (PENDING,)
        ).fetchone()[0]
        unreplicated = self.conn.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM agent_transfers WHERE status = ? AND "
            "ledger_index >= ?",
            (CONFIRMED, size),
        ).fetchone()[0]
        return Balance(confirmed, int(pending), int(unreplicated), size)

    def transfers(self, status: str | None = None) -> list[TransferRecord]:
        """The transfers this agent signed, oldest first (only ``status`` ones if given)."""
        rows = self.conn.execute(
            "SELECT bundle_id, recipient, amount, memo, nonce, expires_round, created_round, "
            "status, reason, ledger_index FROM agent_transfers WHERE ? IS NULL OR status = ? "
            "ORDER BY created_at, rowid",
            (status, status),
        ).fetchall()
        return [_record(r) for r in rows]

    def transfer(self, bundle_id: bytes) -> TransferRecord | None:
        row = self.conn.execute(
            "SELECT bundle_id, recipient, amount, memo, nonce, expires_round, created_round, "
            "status, reason, ledger_index FROM agent_transfers WHERE bundle_id = ?",
            (bundle_id,),
        ).fetchone()
        return None if row is None else _record(row)

    def signed_bundle(self, bundle_id: bytes) -> bytes | None:
        """The exact transaction bundle we signed (the ledger entry embeds these bytes)."""
        row = self.conn.execute(
            "SELECT bundle FROM agent_transfers WHERE bundle_id = ?", (bundle_id,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def history(self) -> list[HistoryLine]:
        """Ledger movements of this agent (oldest first), then the transfers it signed
        that are not in the ledger (pending, rejected, expired)."""
        memos = {
            int(r[0]): str(r[1])
            for r in self.conn.execute(
                "SELECT ledger_index, memo FROM agent_transfers WHERE ledger_index IS NOT NULL"
            )
        }
        lines = []
        if self.replica is not None:
            for m in self.replica.history(self.me):
                lines.append(
                    HistoryLine(
                        m.index,
                        m.kind,
                        m.amount,
                        m.round,
                        m.counterparty,
                        CONFIRMED,
                        memos.get(m.index, "") if m.amount < 0 else "",
                    )
                )
            size = self.replica.size
        else:
            size = 0
        for t in self.transfers():
            if t.status == CONFIRMED and t.ledger_index is not None and t.ledger_index < size:
                continue  # shown above, as the ledger has it
            lines.append(
                HistoryLine(
                    t.ledger_index,
                    "transfer",
                    -t.amount,
                    None,
                    t.recipient,
                    t.status,
                    t.memo,
                    t.reason,
                )
            )
        return lines

    # ------------------------------------------------------------------ sending

    def check_spend(self, amount: int) -> Balance:
        """Raises: InsufficientFundsError if ``amount`` exceeds the spendable balance."""
        balance = self.balance()
        if amount > balance.spendable:
            raise InsufficientFundsError(
                "not enough spendable tokens (confirmed balance minus pending outgoing transfers)",
                expected=f"amount <= {balance.spendable}",
                found=amount,
                where=(
                    f"confirmed {balance.confirmed}, pending out {balance.pending_out}"
                    + (
                        f", confirmed but not yet replicated {balance.unreplicated_out}"
                        if balance.unreplicated_out
                        else ""
                    )
                ),
            )
        return balance

    def record_transfer(
        self, bundle_id: bytes, tx: Transaction, bundle: bytes, created_round: int
    ) -> TransferRecord:
        """Remember a transfer just written to the outbox (inside the send transaction)."""
        self.conn.execute(
            "INSERT INTO agent_transfers (bundle_id, recipient, amount, nonce, memo, "
            "expires_round, created_round, bundle, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                bundle_id,
                tx.recipient,
                tx.amount,
                tx.nonce,
                tx.memo,
                tx.expires_round,
                created_round,
                bundle,
                int(time.time()),
            ),
        )
        record = self.transfer(bundle_id)
        if record is None:  # the row was inserted just above, in this transaction
            raise RuntimeError("transfer row vanished inside its own transaction")
        return record

    # ------------------------------------------------------------------ confirmation

    def on_receipt(self, receipt: Receipt) -> str | None:
        """Apply a receipt if it is for one of our transfers; returns a note, or None if
        the receipt is about something else.

        Raises:
            SignatureError: an accepted receipt whose checkpoint the coordinator did not
                sign (or for another federation: SchemaError).
            ProofError: an accepted receipt without an inclusion proof, or one that does
                not verify.
            EquivocationError: the proof puts the transfer at an index where the replica
                holds another entry.
        """
        row = self.conn.execute(
            "SELECT bundle, status, ledger_index FROM agent_transfers WHERE bundle_id = ?",
            (receipt.bundle_id,),
        ).fetchone()
        if row is None:
            return None
        bundle, status = bytes(row[0]), str(row[1])
        where = f"receipt for transfer {receipt.bundle_id.hex()[:16]}"
        if receipt.status in ("accepted", "duplicate") and receipt.checkpoint is not None:
            index = self._verify_inclusion(receipt, bundle, where)
            if status == CONFIRMED and row[2] is not None and int(row[2]) != index:
                raise EquivocationError(
                    "the coordinator placed this transfer at two ledger positions",
                    expected=f"entry {row[2]}",
                    found=f"entry {index}",
                    where=where,
                )
            self._decide(receipt.bundle_id, CONFIRMED, receipt.reason, index)
            return f"transfer confirmed at ledger entry {index}"
        if receipt.status == "accepted":
            raise ProofError(
                "accepted transfer receipt carries no ledger inclusion proof",
                expected="ledger_index, proof and a signed checkpoint",
                found="none",
                where=where,
            )
        if status == CONFIRMED:
            # The ledger (or an earlier verified proof) is the truth; keep the note.
            return f"receipt says {receipt.status} ({receipt.reason}); the ledger holds it"
        if receipt.status == "duplicate":
            return f"coordinator saw this transfer before ({receipt.reason})"
        self._decide(receipt.bundle_id, REJECTED, receipt.reason or receipt.status, None)
        return f"transfer {receipt.status}: {receipt.reason}"

    def _verify_inclusion(self, receipt: Receipt, bundle: bytes, where: str) -> int:
        checkpoint = receipt.checkpoint
        if self.coordinator is None or checkpoint is None:
            raise ProofError("no pinned coordinator to check the checkpoint against", where=where)
        index = receipt.ledger_index
        if index is None:
            raise ProofError("transfer receipt has a checkpoint but no ledger index", where=where)
        verify_checkpoint(checkpoint, self.coordinator, federation=self.federation, where=where)
        entry = Transfer(bundle).encode()
        verify_inclusion(leaf_hash(entry), index, checkpoint.size, receipt.proof, checkpoint.root)
        replica = self.replica
        if (
            replica is not None
            and index < replica.size
            and replica.entries(index, index + 1)[0] != entry
        ):
            raise EquivocationError(
                "the receipt's signed checkpoint puts this transfer where the verified "
                "ledger replica holds another entry",
                expected=f"entry {index} as held by the replica",
                found="this transfer",
                where=where,
            )
        return index

    def _decide(self, bundle_id: bytes, status: str, reason: str, index: int | None) -> None:
        self.conn.execute(
            "UPDATE agent_transfers SET status = ?, reason = ?, ledger_index = ?, "
            "decided_at = ? WHERE bundle_id = ?",
            (status, reason[:1000], index, int(time.time()), bundle_id),
        )

    def scan_ledger(self) -> int:
        """Look at replica entries not scanned yet: confirm our transfers found there,
        note the latest closed round, expire pending transfers it has passed.  Runs in the
        caller's transaction, so a rolled-back ingest scans again.  Returns the latest
        closed round (0 if none).

        Raises:
            EquivocationError: a transfer confirmed by receipt at one index sits at
                another in the replica.
        """
        replica = self.replica
        ledger_round = int(get_meta(self.conn, "ledger_round", "0"))
        if replica is None:
            return ledger_round
        start = int(get_meta(self.conn, "ledger_scanned", "0"))
        for index, data in enumerate(replica.entries(start), start):
            entry = decode_entry(data, f"ledger entry {index}")
            if isinstance(entry, RoundClose):
                ledger_round = max(ledger_round, entry.round)
            elif isinstance(entry, Transfer):
                self._found_in_ledger(entry, index)
        set_meta(self.conn, "ledger_scanned", replica.size)
        set_meta(self.conn, "ledger_round", ledger_round)
        self.conn.execute(
            "UPDATE agent_transfers SET status = ?, reason = ?, decided_at = ? "
            "WHERE status = ? AND expires_round < ?",
            (
                EXPIRED,
                f"the ledger closed round {ledger_round} after the transfer's expiry round; "
                "it can no longer be applied",
                int(time.time()),
                PENDING,
                ledger_round,
            ),
        )
        return ledger_round

    def _found_in_ledger(self, entry: Transfer, index: int) -> None:
        bundle_id = embedded_bundle_id(entry.bundle)
        if bundle_id is None:
            return
        row = self.conn.execute(
            "SELECT status, ledger_index FROM agent_transfers WHERE bundle_id = ?", (bundle_id,)
        ).fetchone()
        if row is None:
            return
        if row[0] == CONFIRMED and row[1] is not None and int(row[1]) != index:
            raise EquivocationError(
                "the coordinator placed this transfer at two ledger positions",
                expected=f"entry {row[1]} (from its receipt)",
                found=f"entry {index} (in the replica)",
                where=f"transfer {bundle_id.hex()[:16]}",
            )
        self._decide(bundle_id, CONFIRMED, "in the verified ledger replica", index)


__all__ = [
    "CONFIRMED",
    "EXPIRED",
    "PENDING",
    "REJECTED",
    "Balance",
    "HistoryLine",
    "InsufficientFundsError",
    "TransferRecord",
    "Wallet",
]
