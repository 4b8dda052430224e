"""Tests for coordinator.ledger_proof: tokenization proof export, and verify_ledger's audit
from scratch (every byte of the log matters)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bundle.checkpoint import checkpoint_to_json, public_identity_to_json, sign_checkpoint
from bundle.envelope import pack_bytes
from bundle.errors import (
    EquivocationError,
    FormatError,
    IntegrityError,
    LLTokenError,
    ProofError,
    SignatureError,
)
from bundle.keys import Identity
from bundle.ledger import Allocation, Enroll, Reward, RoundClose
from bundle.merkle import verify_inclusion
from bundle.payloads import Transaction
from coordinator.ledger_proof import describe_entries, entry_proof, export_proof, verify_ledger
from coordinator.ledger_store import LOG_DIR, LedgerStore

MODEL = hashlib.sha256(b"model").digest()


def reward(who: Identity, amount: int, round_: int, reputation: float | None) -> bytes:
    quality: dict[str, int | float] = {"q": 0.9, "base": 100}
    if reputation is not None:
        quality["reputation"] = reputation
    update = hashlib.sha256(b"%d %d" % (round_, amount)).digest()
    return Reward(who.key_id, amount, round_, quality, update).encode()


@pytest.fixture
def ledger(
    tmp_path: Path,
    federation: bytes,
    coordinator: Identity,
    alice: Identity,
    bob: Identity,
) -> Path:
    """A small closed ledger: two agents, two rounds, one transfer."""
    path = tmp_path / "ledger"
    with LedgerStore(path, federation, coordinator, time=1000) as store:
        store.append(
            [Enroll(a.key_id, n, a.public).encode() for a, n in ((alice, "alice"), (bob, "bob"))]
        )
        store.append(
            [
                RoundClose(1, MODEL, [alice.key_id, bob.key_id]).encode(),
                reward(alice, 120, 1, 1.1),
                reward(bob, 80, 1, None),
            ]
        )
        payload = Transaction(alice.key_id, bob.key_id, 20, b"\x01" * 16, 9)
        decision = store.decide_transfer(pack_bytes(payload, alice, federation=federation)[1])
        assert decision.entry is not None
        store.append([decision.entry])
        store.append([RoundClose(2, MODEL, [alice.key_id]).encode(), reward(alice, 60, 2, 0.7)])
    return path


def export(ledger: Path, coordinator: Identity, out: Path) -> dict[str, Any]:
    with LedgerStore.open(ledger) as store:
        result = export_proof(store, coordinator.public, out)
    assert result.path == out
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def test_export_and_verify(
    ledger: Path, tmp_path: Path, coordinator: Identity, alice: Identity, bob: Identity
) -> None:
    out = tmp_path / "tokenization_proof.json"
    doc = export(ledger, coordinator, out)
    assert doc["format"] == "lltoken-tokenization-proof/v1"
    assert doc["coordinator"] == public_identity_to_json(coordinator.public)
    assert doc["total_supply"] == 260
    by_agent = {p["agent"]: p for p in doc["participants"]}
    a, b = by_agent[alice.key_id.hex()], by_agent[bob.key_id.hex()]
    assert (a["rounds"], a["rewards"], a["tokens"], a["balance"], a["reputation"]) == (
        2,
        2,
        180,
        160,
        0.7,
    )
    assert (b["rounds"], b["tokens"], b["balance"], b["reputation"]) == (1, 80, 100, None)
    assert [r["index"] for r in a["reward_entries"]] == [3, 7]
    root = bytes.fromhex(doc["checkpoint"]["root"])
    for claim in a["reward_entries"]:
        proof = [bytes.fromhex(h) for h in claim["proof"]]
        verify_inclusion(bytes.fromhex(claim["leaf_hash"]), claim["index"], 8, proof, root)

    report = verify_ledger(ledger, coordinator.public, out)
    assert report.size == 8
    assert report.total_supply == 260
    assert report.balances == {alice.key_id: 160, bob.key_id: 100}
    assert report.checkpoints_checked == 5
    assert report.claims_checked == 1 + 2 * 8 + 3
    assert report.to_json()["ok"] is True
    assert verify_ledger(ledger, coordinator.public).claims_checked == 0


def test_an_older_proof_still_verifies(
    ledger: Path, tmp_path: Path, coordinator: Identity, alice: Identity
) -> None:
    out = tmp_path / "proof.json"
    export(ledger, coordinator, out)
    with LedgerStore.open(ledger, coordinator) as store:
        store.append([Allocation(alice.key_id, 5).encode()])
    report = verify_ledger(ledger, coordinator.public, out)
    assert report.size == 9
    assert report.claims_checked > 0


def _first(doc: dict[str, Any]) -> dict[str, Any]:
    participant: dict[str, Any] = doc["participants"][0]
    return participant


def _set_reward(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        _first(doc)["reward_entries"][0][field] = value

    return change


def _flip_proof_hash(doc: dict[str, Any]) -> None:
    proof = _first(doc)["reward_entries"][0]["proof"]
    proof[0] = ("0" if proof[0][0] != "0" else "1") + proof[0][1:]


TAMPERING: list[tuple[str, Callable[[dict[str, Any]], None], type[LLTokenError], str]] = [
    ("total supply", lambda d: d.update(total_supply=261), IntegrityError, "total supply"),
    ("balance", lambda d: _first(d).update(balance=1), IntegrityError, "balance"),
    ("tokens", lambda d: _first(d).update(tokens=181), IntegrityError, "tokens"),
    ("rounds", lambda d: _first(d).update(rounds=3), IntegrityError, "rounds"),
    ("reputation", lambda d: _first(d).update(reputation=2.0), IntegrityError, "reputation"),
    ("name", lambda d: _first(d).update(name="eve"), IntegrityError, "name"),
    ("amount", _set_reward("amount", 121), IntegrityError, "amount"),
    ("index", _set_reward("index", 4), IntegrityError, "index"),
    ("leaf hash", _set_reward("leaf_hash", "00" * 32), IntegrityError, "leaf_hash"),
    ("proof hash", _flip_proof_hash, ProofError, "does not lead to the root"),
    ("proof garbage", _set_reward("proof", "zz"), FormatError, "inclusion proof"),
    (
        "reward left out",
        lambda d: _first(d)["reward_entries"].pop(),
        IntegrityError,
        "reward entries",
    ),
    ("participant left out", lambda d: d["participants"].pop(), IntegrityError, "participants"),
    (
        "stranger",
        lambda d: d["participants"].append({**_first(d), "agent": "11" * 16}),
        IntegrityError,
        "participant",
    ),
    (
        "not a proof",
        lambda d: d.update(format="something"),
        FormatError,
        "not a tokenization proof",
    ),
    (
        "checkpoint signature",
        lambda d: d["checkpoint"].update(signature="00" * 64),
        SignatureError,
        "not signed",
    ),
    ("checkpoint size", lambda d: d["checkpoint"].update(size=7), SignatureError, "not signed"),
]


@pytest.mark.parametrize(
    ("change", "error", "match"), [t[1:] for t in TAMPERING], ids=[t[0] for t in TAMPERING]
)
def test_every_claim_is_checked(
    ledger: Path,
    tmp_path: Path,
    coordinator: Identity,
    change: Callable[[dict[str, Any]], None],
    error: type[LLTokenError],
    match: str,
) -> None:
    out = tmp_path / "proof.json"
    doc = export(ledger, coordinator, out)
    change(doc)
    out.write_text(json.dumps(doc))
    with pytest.raises(error, match=match):
        verify_ledger(ledger, coordinator.public, out)


def test_a_second_history_is_equivocation(
    ledger: Path, tmp_path: Path, coordinator: Identity, federation: bytes
) -> None:
    out = tmp_path / "proof.json"
    doc = export(ledger, coordinator, out)
    other = sign_checkpoint(coordinator, federation=federation, size=8, root=b"\x42" * 32, time=1)
    doc["checkpoint"] = checkpoint_to_json(other)
    out.write_text(json.dumps(doc))
    with pytest.raises(EquivocationError, match="two histories") as info:
        verify_ledger(ledger, coordinator.public, out)
    assert info.value.exit_code == 31


def test_a_proof_at_a_size_the_log_never_committed(
    ledger: Path, tmp_path: Path, coordinator: Identity, federation: bytes
) -> None:
    out = tmp_path / "proof.json"
    doc = export(ledger, coordinator, out)
    doc["checkpoint"] = checkpoint_to_json(
        sign_checkpoint(coordinator, federation=federation, size=4, root=b"\x42" * 32, time=1)
    )
    out.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="matches no commit"):
        verify_ledger(ledger, coordinator.public, out)


def test_another_coordinator(
    ledger: Path, tmp_path: Path, coordinator: Identity, alice: Identity
) -> None:
    with pytest.raises(SignatureError, match="another coordinator"):
        verify_ledger(ledger, alice.public)
    out = tmp_path / "proof.json"
    export(ledger, coordinator, out)
    with pytest.raises(SignatureError, match="another coordinator"):
        verify_ledger(ledger, alice.public, out)
    with LedgerStore.open(ledger) as store, pytest.raises(SignatureError):
        export_proof(store, alice.public, tmp_path / "other.json")


def test_every_byte_of_the_log_matters(ledger: Path, coordinator: Identity) -> None:
    segments = sorted((ledger / LOG_DIR).iterdir())
    assert verify_ledger(ledger, coordinator.public).size == 8
    flips = 0
    for segment in segments:
        original = segment.read_bytes()
        for offset in range(len(original)):
            damaged = bytearray(original)
            damaged[offset] ^= 0xFF
            segment.write_bytes(bytes(damaged))
            with pytest.raises(LLTokenError):
                verify_ledger(ledger, coordinator.public)
            flips += 1
        segment.write_bytes(original)
    assert flips > 1000
    assert verify_ledger(ledger, coordinator.public).size == 8


def test_describe_and_entry_proof_beside_a_writer(
    ledger: Path, coordinator: Identity, alice: Identity, bob: Identity
) -> None:
    with LedgerStore.open(ledger, coordinator) as writer:  # holds the lock
        rows, checkpoint = describe_entries(ledger, 3)
        assert [r["index"] for r in rows] == [5, 6, 7]
        assert [r["kind"] for r in rows] == ["transfer", "round-close", "reward"]
        assert rows[0]["summary"] == f"{alice.key_id.hex()} -> {bob.key_id.hex()}: 20"
        assert rows[2]["summary"] == f"{alice.key_id.hex()} +60 for round 2"
        assert checkpoint["size"] == 8
        info = entry_proof(ledger, 3)
        assert info["leaf_hash"] == writer.leaf_hash(3).hex()
        assert info["proof"] == [h.hex() for h in writer.inclusion_proof(3)]
        with pytest.raises(ProofError):
            entry_proof(ledger, 8)
