"""Tokenization proofs: what the coordinator hands an auditor, and how the auditor checks
it against the ledger from scratch.

``tokenization_proof.json`` (format ``lltoken-tokenization-proof/v1``) holds the latest
signed checkpoint and the coordinator's public key (hex), the total supply, and for each
enrolled agent its summary (rounds taken part in, rewards, tokens earned, balance,
reputation from its latest reward's ``quality["reputation"]`` or null) with every one of
its reward entries: entry number, round, amount, leaf hash and inclusion proof (hex).

:func:`verify_ledger` needs only a ledger directory (its log; the index is never read)
and the coordinator's public key obtained out of band.  It replays every entry, checks
every signature (each COMMIT's checkpoint and each transfer's sender), every balance and
every root, and refuses a log with anything after its last valid commit, so a change to
any byte of the log is caught.  With a proof file it also checks each claim in it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundle.checkpoint import (
    checkpoint_from_json,
    checkpoint_to_json,
    public_identity_from_json,
    public_identity_to_json,
    verify_checkpoint,
)
from bundle.durable import atomic_write
from bundle.errors import (
    EquivocationError,
    FormatError,
    IntegrityError,
    LLTokenError,
    ProofError,
    SignatureError,
)
from bundle.keys import PublicIdentity
from bundle.ledger import (
    Account,
    Allocation,
    Auditor,
    AuditReport,
    Enroll,
    LedgerEntry,
    Revoke,
    Reward,
    RoundClose,
    Transfer,
    decode_entry,
)
from bundle.merkle import verify_inclusion
from bundle.merkletree import MerkleTree
from bundle.payloads import Checkpoint, Transaction
from coordinator.ledger_store import LedgerStore, read_log

PROOF_FORMAT = "lltoken-tokenization-proof/v1"
PROOF_NAME = "tokenization_proof.json"


@dataclass(frozen=True)
class ProofExport:
    path: Path
    checkpoint: Checkpoint
    participants: int
    reward_proofs: int


@dataclass(frozen=True)
class _RewardClaim:
    index: int
    round: int
    amount: int
    leaf_hash: bytes


def export_proof(store: LedgerStore, coordinator_public: PublicIdentity, path: Path) -> ProofExport:
    """Write the tokenization proof for ``store``'s latest checkpoint to ``path``.

    Raises:
        SignatureError: the store's checkpoint is not signed by ``coordinator_public``.
    """
    checkpoint = store.checkpoint()
    verify_checkpoint(checkpoint, coordinator_public, federation=store.federation)
    participants = []
    proofs = 0
    for account in sorted(store.state.accounts.values(), key=lambda a: a.enrolled_at):
        rewards = []
        for index in store.find(kind=Reward.KIND, agent=account.agent):
            entry = decode_entry(store.entry(index), f"ledger entry {index}")
            if not isinstance(entry, Reward):
                raise IntegrityError("indexed reward is not a reward", where=f"entry {index}")
            rewards.append(
                {
                    "index": index,
                    "round": entry.round,
                    "amount": entry.amount,
                    "leaf_hash": store.leaf_hash(index).hex(),
                    "proof": [h.hex() for h in store.inclusion_proof(index, checkpoint.size)],
                }
            )
        proofs += len(rewards)
        participants.append({**_summary(account), "reward_entries": rewards})
    doc = {
        "format": PROOF_FORMAT,
        "federation": store.federation.hex(),
        "coordinator": public_identity_to_json(coordinator_public),
        "checkpoint": checkpoint_to_json(checkpoint),
        "total_supply": store.state.total_supply,
        "participants": participants,
    }
    with atomic_write(path) as f:
        text = io.TextIOWrapper(f, encoding="utf-8")
        json.dump(doc, text, indent=1, sort_keys=True)
        text.write("\n")
        text.flush()
        text.detach()
    return ProofExport(path, checkpoint, len(participants), proofs)


def _summary(account: Account) -> dict[str, Any]:
    return {
        "agent": account.agent.hex(),
        "name": account.name,
        "active": account.active,
        "rounds": account.rounds,
        "rewards": account.rewards,
        "tokens": account.tokens,
        "balance": account.balance,
        "reputation": account.reputation,
    }


def verify_ledger(
    store_dir: Path, coordinator_public: PublicIdentity, proof_path: Path | None = None
) -> AuditReport:
    """Audit the ledger in ``store_dir`` from scratch; with ``proof_path``, also check
    every claim of that tokenization proof against it.

    Reads only the log (no lock, no index).  Run it on a ledger no one is appending to,
    or on a copy: a batch being written shows as bytes after the last commit and fails.

    Raises:
        FormatError: not a ledger directory, or a malformed proof file.
        SignatureError: a checkpoint or transfer not validly signed, or a ledger or proof
            of another coordinator.
        IntegrityError: damaged or altered log bytes, a root or count that differs from
            its signed checkpoint, or a proof claim that differs from the ledger.
        SchemaError, ReplayError, UnknownSenderError: an entry breaks a ledger rule.
        ProofError: an inclusion proof in the proof file does not verify.
        EquivocationError: the proof file's checkpoint is validly signed but differs
            from the ledger's at the same size.
    """
    claims = None if proof_path is None else _load_claims(proof_path, coordinator_public)
    coordinator, federation, reader = read_log(store_dir)
    where = str(store_dir)
    if coordinator != coordinator_public:
        raise SignatureError(
            "the ledger belongs to another coordinator key",
            expected=coordinator_public.fingerprint,
            found=coordinator.fingerprint,
            where=where,
        )
    auditor = Auditor(federation, coordinator_public)
    claimed_size = None if claims is None else claims.checkpoint.size
    rewards: dict[bytes, list[_RewardClaim]] = {}
    snapshot: tuple[Checkpoint, dict[bytes, Account], int] | None = None
    latest: Checkpoint | None = None
    try:
        for batch in reader:
            for log_entry in batch.entries:
                applied = auditor.add(log_entry.data)
                entry = applied.entry
                wanted = claimed_size is not None and applied.index < claimed_size
                if wanted and isinstance(entry, Reward):
                    claim = _RewardClaim(
                        applied.index, entry.round, entry.amount, applied.leaf_hash
                    )
                    rewards.setdefault(entry.agent, []).append(claim)
            auditor.check_checkpoint(batch.checkpoint, where=f"commit at {batch.commit}")
            latest = batch.checkpoint
            if latest.size == claimed_size:
                snapshot = (latest, dict(auditor.state.accounts), auditor.state.total_supply)
    except LLTokenError as e:
        raise e.at(where) from None
    if reader.tail is not None:
        raise IntegrityError(
            "the ledger log is not clean: " + reader.tail.describe(),
            expected="nothing after the last valid commit",
            found=f"{reader.tail.size} bytes",
            where=f"{where}: {reader.tail.problem}",
        )
    if latest is None:
        raise IntegrityError("the ledger log holds no signed checkpoint", where=where)
    checked = 0
    if claims is not None:
        checked = _check_claims(claims, snapshot, rewards, auditor.tree)
    return auditor.report(latest, claims_checked=checked)


@dataclass(frozen=True)
class _Claims:
    path: Path
    checkpoint: Checkpoint
    total_supply: Any
    participants: list[Any]


def _load_claims(path: Path, coordinator_public: PublicIdentity) -> _Claims:
    where = str(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FormatError(f"tokenization proof is unreadable ({e})", where=where) from e
    if not isinstance(doc, dict) or doc.get("format") != PROOF_FORMAT:
        raise FormatError("not a tokenization proof", expected=PROOF_FORMAT, where=where)
    if public_identity_from_json(doc.get("coordinator"), where) != coordinator_public:
        raise SignatureError(
            "the proof names another coordinator key",
            expected=coordinator_public.fingerprint,
            where=where,
        )
    checkpoint = checkpoint_from_json(doc.get("checkpoint"), where)
    verify_checkpoint(checkpoint, coordinator_public, where=f"{where} checkpoint")
    participants = doc.get("participants")
    if not isinstance(participants, list):
        raise FormatError("proof has no participant list", where=where)
    return _Claims(path, checkpoint, doc.get("total_supply"), participants)


def _check_claims(
    claims: _Claims,
    snapshot: tuple[Checkpoint, dict[bytes, Account], int] | None,
    rewards: Mapping[bytes, list[_RewardClaim]],
    tree: MerkleTree,
) -> int:
    where = str(claims.path)
    claimed = claims.checkpoint
    if snapshot is None:
        raise IntegrityError(
            "the proof's checkpoint matches no commit in the ledger",
            expected="a checkpoint the ledger's log contains",
            found=f"size {claimed.size}",
            where=where,
        )
    checkpoint, accounts, supply = snapshot
    if checkpoint.root != claimed.root:
        raise EquivocationError(
            "the proof's checkpoint and the ledger's differ at the same size: two histories "
            "signed by the coordinator",
            expected=checkpoint.root.hex(),
            found=claimed.root.hex(),
            where=f"{where} checkpoint",
        )
    checked = 0
    if claims.total_supply != supply:
        raise _claim_error("total supply", supply, claims.total_supply, where)
    checked += 1
    listed: set[bytes] = set()
    for number, item in enumerate(claims.participants):
        at = f"{where} participant {number}"
        if not isinstance(item, dict):
            raise FormatError("participant entry is not an object", where=at)
        try:
            agent = bytes.fromhex(item["agent"])
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError("participant has no valid agent key id", where=at) from e
        account = accounts.get(agent)
        if account is None:
            raise _claim_error("participant", "an enrolled agent", agent.hex(), at)
        listed.add(agent)
        expected = _summary(account)
        for key, value in expected.items():
            if item.get(key) != value:
                raise _claim_error(key, value, item.get(key), f"{at} ({agent.hex()})")
            checked += 1
        checked += _check_rewards(
            item.get("reward_entries"), rewards.get(agent, []), claimed, tree, at
        )
    missing = set(accounts) - listed
    if missing:
        raise _claim_error(
            "participants", f"all {len(accounts)} agents", f"{len(missing)} left out", where
        )
    return checked


def _check_rewards(
    claimed: Any, actual: list[_RewardClaim], checkpoint: Checkpoint, tree: MerkleTree, at: str
) -> int:
    if not isinstance(claimed, list) or len(claimed) != len(actual):
        found = len(claimed) if isinstance(claimed, list) else type(claimed).__name__
        raise _claim_error("reward entries", f"{len(actual)} entries", found, at)
    for item, reward in zip(claimed, actual, strict=True):
        here = f"{at} reward entry {reward.index}"
        if not isinstance(item, dict):
            raise FormatError("reward entry is not an object", where=here)
        values = {
            "index": reward.index,
            "round": reward.round,
            "amount": reward.amount,
            "leaf_hash": reward.leaf_hash.hex(),
        }
        for key, value in values.items():
            if item.get(key) != value:
                raise _claim_error(key, value, item.get(key), here)
        try:
            proof = [bytes.fromhex(h) for h in item["proof"]]
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError("inclusion proof is not a list of hex hashes", where=here) from e
        verify_inclusion(reward.leaf_hash, reward.index, checkpoint.size, proof, checkpoint.root)
        if tree.leaf(reward.index) != reward.leaf_hash:  # the replay's own tree agrees
            raise ProofError("leaf hash differs from the replayed tree", where=here)
    return len(actual)


def describe_entries(
    store_dir: Path, last: int = 20
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The last ``last`` entries, one summary row each, and the latest checkpoint (JSON
    forms).  Opens the ledger read-only, so it works beside a running coordinator.

    Raises:
        FormatError: not a ledger directory.
        IntegrityError: a shown entry was damaged since it was written.
    """
    with LedgerStore.open(store_dir, readonly=True) as store:
        start = max(store.size - max(last, 0), 0)
        rows = []
        for index, data in enumerate(store.entries(start), start):
            entry = decode_entry(data, f"ledger entry {index}")
            tx = store.transaction(entry, index) if isinstance(entry, Transfer) else None
            rows.append(
                {
                    "index": index,
                    "kind": entry.KIND,
                    "leaf_hash": store.leaf_hash(index).hex(),
                    "summary": _summary_line(entry, tx),
                }
            )
        return rows, checkpoint_to_json(store.checkpoint())


def _summary_line(entry: LedgerEntry, tx: Transaction | None) -> str:
    if isinstance(entry, Enroll):
        return f"{entry.name} enrolled as {entry.agent.hex()}"
    if isinstance(entry, Revoke):
        return f"{entry.agent.hex()} revoked"
    if isinstance(entry, RoundClose):
        return (
            f"round {entry.round} closed: {len(entry.participants)} participants, "
            f"model {entry.model_hash.hex()[:16]}"
        )
    if isinstance(entry, Reward):
        return f"{entry.agent.hex()} +{entry.amount} for round {entry.round}"
    if isinstance(entry, Allocation):
        return f"{entry.agent.hex()} +{entry.amount} allocated"
    if tx is not None:
        return f"{tx.sender.hex()} -> {tx.recipient.hex()}: {tx.amount}"
    return entry.KIND


def entry_proof(store_dir: Path, index: int) -> dict[str, Any]:
    """Entry ``index``'s leaf hash and inclusion proof against the latest checkpoint
    (JSON form, hex), opened read-only.

    Raises:
        ProofError: ``index`` is outside the ledger.
    """
    with LedgerStore.open(store_dir, readonly=True) as store:
        checkpoint = store.checkpoint()
        proof = store.inclusion_proof(index, checkpoint.size)
        return {
            "index": index,
            "size": checkpoint.size,
            "leaf_hash": store.leaf_hash(index).hex(),
            "proof": [h.hex() for h in proof],
            "checkpoint": checkpoint_to_json(checkpoint),
        }


def _claim_error(what: str, expected: object, found: object, where: str) -> IntegrityError:
    return IntegrityError(
        f"the proof's {what} does not match the ledger", expected=expected, found=found, where=where
    )


__all__ = [
    "PROOF_FORMAT",
    "PROOF_NAME",
    "ProofExport",
    "describe_entries",
    "entry_proof",
    "export_proof",
    "verify_ledger",
]
