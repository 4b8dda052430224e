"""Tests for agent.ledger_replica: accepting deltas, catching equivocation, surviving
crashes, and auditing what is held."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from agent.ledger_replica import LedgerReplica
from bundle.checkpoint import (
    checkpoint_from_json,
    checkpoint_to_json,
    sign_checkpoint,
    verify_checkpoint,
)
from bundle.envelope import pack_bytes
from bundle.errors import (
    EquivocationError,
    IntegrityError,
    ProofError,
    ReplayError,
    SchemaError,
    SignatureError,
)
from bundle.keys import Identity
from bundle.ledger import Allocation, Enroll, Reward, RoundClose
from bundle.merkle import leaf_hash
from bundle.merkletree import MerkleTree
from bundle.payloads import LedgerDelta, Transaction
from bundle.records import frame
from coordinator.ledger_store import LedgerStore

MODEL = hashlib.sha256(b"model").digest()


def history_a(store: LedgerStore, alice: Identity, bob: Identity) -> None:
    """Sizes 3, 6, 10: enrolments; round 1; a transfer and round 2."""
    store.append(
        [
            Enroll(alice.key_id, "alice", alice.public).encode(),
            Enroll(bob.key_id, "bob", bob.public).encode(),
            Allocation(bob.key_id, 5).encode(),
        ]
    )
    store.append(
        [
            RoundClose(1, MODEL, [alice.key_id, bob.key_id]).encode(),
            Reward(alice.key_id, 100, 1, {"q": 1.0, "reputation": 1.2}, MODEL).encode(),
            Reward(bob.key_id, 40, 1, {"q": 0.4}, MODEL).encode(),
        ]
    )
    payload = Transaction(alice.key_id, bob.key_id, 30, b"\x07" * 16, 5)
    decision = store.decide_transfer(pack_bytes(payload, alice, federation=store.federation)[1])
    assert decision.entry is not None
    store.append(
        [
            decision.entry,
            RoundClose(2, MODEL, [alice.key_id]).encode(),
            Reward(alice.key_id, 10, 2, {"q": 0.1}, MODEL).encode(),
            Allocation(alice.key_id, 1).encode(),
        ]
    )


@pytest.fixture
def store(
    tmp_path: Path, federation: bytes, coordinator: Identity, alice: Identity, bob: Identity
) -> LedgerStore:
    s = LedgerStore(tmp_path / "ledger", federation, coordinator, time=100)
    history_a(s, alice, bob)
    return s


@pytest.fixture
def other_history(
    tmp_path: Path, federation: bytes, coordinator: Identity, alice: Identity, bob: Identity
) -> LedgerStore:
    """The same coordinator key signing a different history: bob is never allocated 5."""
    s = LedgerStore(tmp_path / "other", federation, coordinator, time=100)
    s.append(
        [
            Enroll(alice.key_id, "alice", alice.public).encode(),
            Enroll(bob.key_id, "bob", bob.public).encode(),
            Allocation(bob.key_id, 500).encode(),
        ]
    )
    s.append([Allocation(alice.key_id, 1).encode()] * 3)
    s.append([Allocation(alice.key_id, 2).encode()] * 4)
    return s


@pytest.fixture
def replica(tmp_path: Path, coordinator: Identity, federation: bytes) -> LedgerReplica:
    return LedgerReplica(tmp_path / "agent", coordinator.public, federation)


def test_deltas_from_empty_to_current(
    replica: LedgerReplica,
    store: LedgerStore,
    coordinator: Identity,
    federation: bytes,
    alice: Identity,
    bob: Identity,
) -> None:
    assert replica.size == 0
    assert replica.checkpoint is None
    first = replica.accept_delta(store.delta_since(0, max_entries=6))
    assert (first.status, first.added, first.size) == ("accepted", 6, 6)
    second = replica.accept_delta(store.delta_since(6))
    assert (second.status, second.added, second.size) == ("accepted", 4, 10)
    assert replica.checkpoint == store.checkpoint()
    assert replica.entries() == store.entries()
    assert replica.balance(alice.key_id) == store.balances()[alice.key_id] == 81
    assert replica.balance(bob.key_id) == 75
    assert replica.total_supply == store.state.total_supply
    assert replica.account(alice.key_id) == store.state.account(alice.key_id)
    assert [(m.index, m.kind, m.amount) for m in replica.history(bob.key_id)] == [
        (1, "enroll", 0),
        (2, "allocation", 5),
        (3, "round-close", 0),
        (5, "reward", 40),
        (6, "transfer", 30),
    ]
    report = replica.verify()
    assert report.size == 10
    assert report.balances == store.balances()
    again = LedgerReplica(replica.directory, coordinator.public, federation)
    assert again.size == 10
    assert again.history(bob.key_id) == replica.history(bob.key_id)
    assert again.balance(alice.key_id) == 81


def test_redelivered_overlapping_and_stale_deltas(
    replica: LedgerReplica, store: LedgerStore
) -> None:
    old = store.delta_since(0, max_entries=6)
    replica.accept_delta(store.delta_since(0, max_entries=3))
    overlapping = replica.accept_delta(store.delta_since(0, max_entries=6))  # starts at 0
    assert (overlapping.status, overlapping.added, overlapping.size) == ("accepted", 3, 6)
    assert replica.accept_delta(old).status == "unchanged"
    replica.accept_delta(store.delta_since(3))  # starts before what is held: proof from 3
    assert replica.size == 10
    stale = replica.accept_delta(old)
    assert (stale.status, stale.added, stale.size) == ("stale", 0, 10)


def test_a_gap_is_refused(replica: LedgerReplica, store: LedgerStore) -> None:
    replica.accept_delta(store.delta_since(0, max_entries=3))
    with pytest.raises(ProofError, match="starts after") as info:
        replica.accept_delta(store.delta_since(6))
    assert "ask for one from entry 3" in str(info.value)
    assert replica.size == 3


def test_a_forged_checkpoint_is_refused(
    replica: LedgerReplica, store: LedgerStore, alice: Identity
) -> None:
    delta = store.delta_since(0)
    forged = dataclasses.replace(
        delta.checkpoint, signature=alice.sign(b"lltoken/checkpoint/v1\x00")
    )
    with pytest.raises(SignatureError):
        replica.accept_delta(dataclasses.replace(delta, checkpoint=forged))
    assert replica.size == 0


def test_another_federation_or_key(
    tmp_path: Path, store: LedgerStore, coordinator: Identity, alice: Identity, federation: bytes
) -> None:
    stranger = LedgerReplica(tmp_path / "stranger", coordinator.public, b"\x00" * 16)
    with pytest.raises(SchemaError, match="another federation"):
        stranger.accept_delta(store.delta_since(0))
    mine = LedgerReplica(tmp_path / "mine", coordinator.public, federation)
    mine.accept_delta(store.delta_since(0))
    with pytest.raises(SchemaError, match="another coordinator key"):
        LedgerReplica(tmp_path / "mine", alice.public, federation)


def test_a_damaged_delta_changes_nothing(replica: LedgerReplica, store: LedgerStore) -> None:
    replica.accept_delta(store.delta_since(0, max_entries=3))
    delta = store.delta_since(3)
    entries = list(delta.entries)
    entries[1] = Allocation(b"\x00" * 16, 1).encode()
    with pytest.raises(IntegrityError, match="damaged"):
        replica.accept_delta(dataclasses.replace(delta, entries=tuple(entries)))
    assert replica.size == 3
    assert replica.accept_delta(delta).size == 10


def _evidence(replica: LedgerReplica) -> dict[str, object]:
    files = list((replica.directory / "evidence").iterdir())
    assert len(files) == 1
    doc: dict[str, object] = json.loads(files[0].read_text())
    return doc


def test_two_checkpoints_of_one_size(
    replica: LedgerReplica,
    store: LedgerStore,
    other_history: LedgerStore,
    coordinator: Identity,
) -> None:
    replica.accept_delta(store.delta_since(0, max_entries=3))
    with pytest.raises(EquivocationError, match="conflicting ledger histories") as info:
        replica.accept_delta(other_history.delta_since(0, max_entries=3))
    assert info.value.exit_code == 31
    doc = _evidence(replica)
    held, received = doc["held"], doc["received"]
    for side in (held, received):
        verify_checkpoint(checkpoint_from_json(side), coordinator.public)
    assert checkpoint_from_json(held) == store.checkpoint(3)
    assert checkpoint_from_json(received) == other_history.checkpoint(3)
    assert replica.size == 3
    assert replica.checkpoint == store.checkpoint(3)


def test_a_checkpoint_that_does_not_extend_the_held_one(
    replica: LedgerReplica, store: LedgerStore, other_history: LedgerStore
) -> None:
    replica.accept_delta(store.delta_since(0, max_entries=6))
    with pytest.raises(EquivocationError, match="does not extend"):
        replica.accept_delta(other_history.delta_since(6))
    doc = _evidence(replica)
    assert doc["held"] == checkpoint_to_json(store.checkpoint(6))
    assert doc["received"] == checkpoint_to_json(other_history.checkpoint())
    assert replica.size == 6


def test_a_rewritten_history_from_the_start(
    replica: LedgerReplica, store: LedgerStore, other_history: LedgerStore
) -> None:
    replica.accept_delta(store.delta_since(0, max_entries=6))
    with pytest.raises(EquivocationError, match="other entries"):
        replica.accept_delta(other_history.delta_since(0))  # whole, self-consistent, different


def test_an_older_checkpoint_from_another_history(
    replica: LedgerReplica, store: LedgerStore, other_history: LedgerStore
) -> None:
    replica.accept_delta(store.delta_since(0))
    with pytest.raises(EquivocationError, match="another root"):
        replica.accept_delta(other_history.delta_since(0, max_entries=6))


def test_a_signed_entry_that_breaks_the_rules(
    replica: LedgerReplica,
    store: LedgerStore,
    coordinator: Identity,
    federation: bytes,
    alice: Identity,
) -> None:
    replica.accept_delta(store.delta_since(0))
    bad = Reward(alice.key_id, 1, 2, {"q": 1.0}, MODEL).encode()  # a second reward for round 2
    tree = MerkleTree(b"".join(leaf_hash(e) for e in store.entries()))
    tree.append(leaf_hash(bad))
    checkpoint = sign_checkpoint(coordinator, federation=federation, size=11, root=tree.root())
    delta = LedgerDelta(10, (bad,), checkpoint, tuple(tree.consistency_proof(10)))
    with pytest.raises(ReplayError, match="ledger entry 10") as info:
        replica.accept_delta(delta)
    assert "already rewarded" in str(info.value)
    assert replica.size == 10


def test_leftovers_of_an_interrupted_write_are_ignored(
    replica: LedgerReplica, store: LedgerStore, coordinator: Identity, federation: bytes
) -> None:
    replica.accept_delta(store.delta_since(0, max_entries=3))
    with (replica.directory / "entries.log").open("ab") as f:
        f.write(frame(0x45, b"an entry whose checkpoint never got written"))
        f.write(b"\x45\x00\x00")  # and a torn record
    again = LedgerReplica(replica.directory, coordinator.public, federation)
    assert again.size == 3
    assert again.accept_delta(store.delta_since(3)).size == 10
    assert LedgerReplica(replica.directory, coordinator.public, federation).verify().size == 10


def test_altered_files_are_caught(
    replica: LedgerReplica,
    store: LedgerStore,
    coordinator: Identity,
    federation: bytes,
    bob: Identity,
) -> None:
    replica.accept_delta(store.delta_since(0))
    path = replica.directory / "entries.log"
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[40] ^= 0x01
    path.write_bytes(bytes(damaged))
    with pytest.raises(IntegrityError, match="fewer entries"):
        replica.verify()
    with pytest.raises(IntegrityError):
        LedgerReplica(replica.directory, coordinator.public, federation)
    # A well-framed but different entry: the root no longer matches the signed one.
    entries = store.entries()
    entries[2] = Allocation(bob.key_id, 6).encode()  # was 5
    path.write_bytes(b"".join(frame(0x45, e) for e in entries))
    with pytest.raises(IntegrityError, match="signed root"):
        replica.verify()
