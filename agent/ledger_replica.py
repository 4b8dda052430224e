"""The agent's copy of the token ledger: every entry from the first, and the last
checkpoint it verified.

A :class:`~bundle.payloads.LedgerDelta` from the coordinator is accepted only if, in this
order:

1. its checkpoint carries the coordinator's signature, for this federation;
2. it starts at or before the entries held here (no gap);
3. if it is no larger than what is held, its root equals the root recomputed over the
   held entries of that size (else: equivocation);
4. its consistency proof from its start verifies against the held root at that size
   (else: equivocation: the new checkpoint does not extend the one held);
5. its entries that overlap the held ones are the same bytes (else, if they hash to the
   signed root: equivocation, the coordinator signed another history for entries already
   held; if they do not: the delta is damaged);
6. the root recomputed over every held entry plus its new ones equals the signed root
   (else the delta is damaged: refused, nothing changes);
7. its new entries follow the ledger rules (:class:`bundle.ledger.LedgerState`).

Equivocation raises :class:`~bundle.errors.EquivocationError` after saving both
checkpoints (JSON, hex) under ``<dir>/evidence/`` so the agent operator can show them.

Files in the replica directory::

    checkpoint.json   the last verified checkpoint (and federation, coordinator key)
    entries.log       the entries, CRC-framed (bundle.records); records beyond the
                      checkpoint's size are leftovers of an interrupted write, ignored
    evidence/         equivocation evidence, one JSON file per incident
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from bundle.checkpoint import (
    checkpoint_from_json,
    checkpoint_to_json,
    public_identity_to_json,
    verify_checkpoint,
)
from bundle.durable import atomic_write, fsync_dir
from bundle.errors import (
    EquivocationError,
    FormatError,
    IntegrityError,
    ProofError,
    SchemaError,
)
from bundle.keys import PublicIdentity
from bundle.ledger import Account, Applied, Auditor, AuditReport, LedgerState, Movement
from bundle.merkle import leaf_hash, verify_consistency
from bundle.merkletree import MerkleTree
from bundle.payloads import Checkpoint, LedgerDelta
from bundle.records import RecordReader, frame

FORMAT = "lltoken-ledger-replica/v1"
CHECKPOINT_NAME = "checkpoint.json"
ENTRIES_NAME = "entries.log"
EVIDENCE_DIR = "evidence"
TAG_ENTRY = 0x45

ACCEPTED = "accepted"
UNCHANGED = "unchanged"
STALE = "stale"


@dataclass(frozen=True)
class DeltaResult:
    """What :meth:`LedgerReplica.accept_delta` did.

    ``status``: ``accepted`` (``added`` new entries), ``unchanged`` (the same checkpoint
    again) or ``stale`` (an older checkpoint, consistent with what is held).
    """

    status: str
    added: int
    size: int
    checkpoint: Checkpoint


class LedgerReplica:
    """An agent's verified copy of the ledger in ``directory``.

    Opening replays every held entry against the held checkpoint (the same audit as
    :meth:`verify`), so a replica that opens is one that checks out.

    Raises:
        FormatError: the files are not a replica.
        SchemaError: the replica belongs to another federation or coordinator.
        IntegrityError, SignatureError, ...: the held entries fail their audit.
    """

    def __init__(self, directory: Path, coordinator: PublicIdentity, federation: bytes) -> None:
        self.directory = directory
        self.coordinator = coordinator
        self.federation = federation
        self._checkpoint: Checkpoint | None = None
        self._entries: list[bytes] = []
        self._file_end = 0
        self._state = LedgerState(federation)
        self._tree = MerkleTree()
        self._history: dict[bytes, list[Movement]] = {}
        self._load()

    # -- queries

    @property
    def size(self) -> int:
        return len(self._entries)

    @property
    def checkpoint(self) -> Checkpoint | None:
        """The last verified checkpoint (None before the first delta)."""
        return self._checkpoint

    @property
    def total_supply(self) -> int:
        return self._state.total_supply

    def balance(self, agent: bytes) -> int:
        """Confirmed balance of ``agent`` as of the held checkpoint."""
        return self._state.balance(agent)

    def account(self, agent: bytes) -> Account | None:
        return self._state.account(agent)

    def history(self, agent: bytes) -> list[Movement]:
        """Every entry that concerned ``agent``, oldest first."""
        return list(self._history.get(agent, ()))

    def entries(self, start: int = 0, stop: int | None = None) -> list[bytes]:
        return self._entries[start:stop]

    def verify(self) -> AuditReport:
        """Audit the replica from its files, from scratch: every entry's rules and
        signatures, and the root against the held, signed checkpoint.

        Raises:
            IntegrityError: entries missing or altered on disk.
            LLTokenError: an entry breaks a rule (the message names its number).
        """
        checkpoint, entries = self._read_files()
        if checkpoint is None:
            raise IntegrityError(
                "the replica holds no checkpoint yet: nothing to verify",
                where=str(self.directory),
            )
        auditor = self._replay(checkpoint, entries)
        return auditor.report(checkpoint)

    # -- accepting deltas

    def accept_delta(self, delta: LedgerDelta) -> DeltaResult:
        """Verify ``delta`` against what is held and keep its new entries.

        Raises:
            SignatureError: the checkpoint is not the coordinator's.
            SchemaError: another federation.
            ProofError: the delta starts after the held entries (ask for one from
                :attr:`size`), or its proof is malformed.
            EquivocationError: the coordinator signed a history that conflicts with the
                one held (evidence saved in ``evidence/``).
            IntegrityError: the delta's entries do not hash to its signed root.
            LLTokenError: a new entry breaks a ledger rule.
        """
        new = delta.checkpoint
        where = f"ledger delta [{delta.start}, {new.size})"
        verify_checkpoint(new, self.coordinator, federation=self.federation, where=where)
        held = self._checkpoint
        m, n = self.size, new.size
        if delta.start > m:
            raise ProofError(
                f"delta starts after the entries this replica holds: ask for one from entry {m}",
                expected=f"start <= {m}",
                found=delta.start,
                where=where,
            )
        if held is not None and n <= m:
            if self._tree.root(n) != new.root:
                self._equivocation(
                    held, new, delta, "a checkpoint of a size already held has another root"
                )
            return DeltaResult(UNCHANGED if n == m else STALE, 0, m, held)
        if delta.start > 0:
            try:
                verify_consistency(
                    delta.start, n, delta.proof, self._tree.root(delta.start), new.root
                )
            except ProofError as e:
                if held is None:
                    raise
                self._equivocation(
                    held,
                    new,
                    delta,
                    f"the new checkpoint does not extend the held one ({e.reason})",
                )
        overlap = delta.entries[: m - delta.start]
        fresh = delta.entries[m - delta.start :]
        if held is not None and tuple(self._entries[delta.start : m]) != overlap:
            # Entries already held come back different: damage, or another history.
            candidate = MerkleTree(self._tree.leaves()[: 32 * delta.start])
            candidate.extend(leaf_hash(e) for e in delta.entries)
            self._check_root(candidate, new, where)
            self._equivocation(
                held, new, delta, "the coordinator signed other entries for entries already held"
            )
        # Recompute the root over every entry held plus the new ones.
        self._tree.extend(leaf_hash(e) for e in fresh)
        try:
            self._check_root(self._tree, new, where)
            scratch = self._state.fork()
            applied = [scratch.apply(data, m + i) for i, data in enumerate(fresh)]
            self._write(fresh, new)
        except BaseException:
            self._tree.truncate(m)
            raise
        self._state.absorb(scratch)
        self._keep(fresh, applied)
        self._checkpoint = new
        return DeltaResult(ACCEPTED, len(fresh), self.size, new)

    # -- files

    def _load(self) -> None:
        checkpoint, entries = self._read_files()
        if checkpoint is None:
            return
        histories: dict[bytes, list[Movement]] = {}
        auditor = self._replay(checkpoint, entries, histories)
        self._checkpoint = checkpoint
        self._state = auditor.state
        self._tree = auditor.tree
        self._entries = entries
        self._history = histories

    def _read_files(self) -> tuple[Checkpoint | None, list[bytes]]:
        """The held checkpoint and exactly its ``size`` entries (also sets the end of the
        committed part of the entries file).

        Raises:
            FormatError: the checkpoint file is unreadable or of another format.
            SchemaError: another federation or coordinator.
            IntegrityError: fewer valid entries on disk than the checkpoint covers.
        """
        path = self.directory / CHECKPOINT_NAME
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return None, []
        except (OSError, ValueError) as e:
            raise FormatError(f"replica checkpoint is unreadable ({e})", where=str(path)) from e
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise FormatError("not a ledger replica checkpoint", expected=FORMAT, where=str(path))
        if doc.get("federation") != self.federation.hex():
            raise SchemaError(
                "the replica belongs to another federation",
                expected=self.federation.hex(),
                found=doc.get("federation"),
                where=str(path),
            )
        if doc.get("coordinator") != public_identity_to_json(self.coordinator):
            raise SchemaError(
                "the replica was verified under another coordinator key",
                expected=self.coordinator.fingerprint,
                where=str(path),
            )
        checkpoint = checkpoint_from_json(doc.get("checkpoint"), str(path))
        entries_path = self.directory / ENTRIES_NAME
        try:
            buf = entries_path.read_bytes()
        except FileNotFoundError:
            buf = b""
        entries: list[bytes] = []
        reader = RecordReader(buf, 0, frozenset({TAG_ENTRY}))
        end = 0
        for record in reader:
            if len(entries) == checkpoint.size:
                break
            entries.append(record.data)
            end = record.end
        if len(entries) != checkpoint.size:
            stop = reader.stop
            raise IntegrityError(
                "the replica holds fewer entries than its checkpoint covers",
                expected=f"{checkpoint.size} entries",
                found=f"{len(entries)}"
                + ("" if stop is None else f" ({stop.reason} at byte {stop.offset})"),
                where=str(entries_path),
            )
        self._file_end = end
        return checkpoint, entries

    def _replay(
        self,
        checkpoint: Checkpoint,
        entries: list[bytes],
        histories: dict[bytes, list[Movement]] | None = None,
    ) -> Auditor:
        verify_checkpoint(checkpoint, self.coordinator, federation=self.federation)
        auditor = Auditor(self.federation, self.coordinator)
        for data in entries:
            applied = auditor.add(data)
            if histories is not None:
                for movement in applied.movements:
                    histories.setdefault(movement.agent, []).append(movement)
        auditor.check_checkpoint(checkpoint)
        return auditor

    def _write(self, fresh: tuple[bytes, ...], checkpoint: Checkpoint) -> None:
        """Append ``fresh`` after the committed entries, fsync, then replace the
        checkpoint file: a crash in between leaves extra records that are ignored."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / ENTRIES_NAME
        created = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, self._file_end)
            data = b"".join(frame(TAG_ENTRY, e) for e in fresh)
            os.pwrite(fd, data, self._file_end)
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.directory)
        doc = {
            "format": FORMAT,
            "federation": self.federation.hex(),
            "coordinator": public_identity_to_json(self.coordinator),
            "checkpoint": checkpoint_to_json(checkpoint),
        }
        with atomic_write(self.directory / CHECKPOINT_NAME) as f:
            f.write((json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
        self._file_end += len(data)

    @staticmethod
    def _check_root(tree: MerkleTree, checkpoint: Checkpoint, where: str) -> None:
        if tree.root() != checkpoint.root:
            raise IntegrityError(
                "delta entries do not hash to their signed root: the delta was damaged",
                expected=checkpoint.root.hex(),
                found=tree.root().hex(),
                where=where,
            )

    def _keep(self, fresh: tuple[bytes, ...], applied: list[Applied]) -> None:
        self._entries.extend(fresh)
        for result in applied:
            for movement in result.movements:
                self._history.setdefault(movement.agent, []).append(movement)

    def _equivocation(
        self, held: Checkpoint, received: Checkpoint, delta: LedgerDelta, reason: str
    ) -> NoReturn:
        """Save both checkpoints as evidence, then raise loudly."""
        evidence = self.directory / EVIDENCE_DIR
        doc: dict[str, Any] = {
            "format": "lltoken-equivocation/v1",
            "reason": reason,
            "federation": self.federation.hex(),
            "coordinator": public_identity_to_json(self.coordinator),
            "held": checkpoint_to_json(held),
            "received": checkpoint_to_json(received),
            "delta_start": delta.start,
            "consistency_proof": [h.hex() for h in delta.proof],
        }
        body = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
        digest = hashlib.sha256(body).hexdigest()[:16]
        path = evidence / f"equivocation-{held.size}-{received.size}-{digest}.json"
        with atomic_write(path) as f:
            f.write(body)
        raise EquivocationError(
            f"the coordinator signed two conflicting ledger histories: {reason}; evidence "
            f"saved in {path}",
            expected=f"a history extending size {held.size}, root {held.root.hex()}",
            found=f"size {received.size}, root {received.root.hex()}",
            where=str(path),
        )


__all__ = ["ACCEPTED", "STALE", "UNCHANGED", "DeltaResult", "LedgerReplica"]
