"""The wallet: balance from the verified replica, signed transfers, overspend refusal,
and transfers confirmed (by a verified inclusion proof, or by the ledger itself),
rejected or expired."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.home import Agent, NotFoundError
from agent.wallet import InsufficientFundsError
from bundle.checkpoint import sign_checkpoint
from bundle.envelope import open_bundle
from bundle.errors import SchemaError
from bundle.keys import Identity
from bundle.ledger import transfer_decision
from bundle.payloads import Receipt, Transaction
from tests.agent.test_agent_support import (
    FEDERATION,
    CoordinatorSide,
    deliver,
    enrolled,
    outbox,
)


@pytest.fixture
def side(tmp_path: Path) -> CoordinatorSide:
    return CoordinatorSide(tmp_path / "coordinator-out")


@pytest.fixture
def bob() -> Identity:
    return Identity.generate()


@pytest.fixture
def alice(tmp_path: Path, side: CoordinatorSide, bob: Identity) -> Iterator[Agent]:
    agent = enrolled(tmp_path / "alice", side, grant=100, others=[("bob", bob.public)])
    yield agent
    agent.close()


def _bundle(alice: Agent, bundle_id: bytes) -> bytes:
    signed = alice.wallet.signed_bundle(bundle_id)
    assert signed is not None
    return signed


def test_balance_comes_from_the_verified_ledger(alice: Agent) -> None:
    balance = alice.balance()
    assert (balance.confirmed, balance.pending_out, balance.spendable) == (100, 0, 100)
    assert balance.ledger_size == 4
    kinds = [(line.kind, line.amount) for line in alice.history()]
    assert kinds == [("enroll", 0), ("allocation", 100)]


def test_send_signs_a_transfer_the_ledger_rules_accept(
    alice: Agent, side: CoordinatorSide, bob: Identity
) -> None:
    members = [("alice", alice.public, "active"), ("bob", bob.public, "active")]
    deliver(alice, side.roster(members, [alice.public], round=3))
    record = alice.send("bob", 30, "for the GPU hours")
    assert (record.status, record.amount, record.recipient) == ("pending", 30, bob.key_id)
    assert record.expires_round == 3 + 10
    [path] = outbox(alice, "transaction")
    assert path.parent.name == side.public.key_id.hex()
    opened = open_bundle(path, {alice.key_id: alice.public}.get)  # readable without keys
    tx = opened.payload
    assert isinstance(tx, Transaction)
    assert (tx.sender, tx.recipient, tx.amount, tx.memo) == (
        alice.key_id,
        bob.key_id,
        30,
        "for the GPU hours",
    )
    assert len(tx.nonce) == 16
    assert opened.header.payload.encryption is None
    assert opened.header.expires == 13
    assert path.read_bytes() == _bundle(alice, record.bundle_id)
    # The coordinator's ledger rules (signature, nonce, balance, expiry) accept it.
    assert transfer_decision(side.state, path.read_bytes()).accepted
    balance = alice.balance()
    assert (balance.confirmed, balance.pending_out, balance.spendable) == (100, 30, 70)
    assert [t.bundle_id for t in alice.pending_transfers()] == [record.bundle_id]


def test_overspending_is_refused_and_writes_nothing(alice: Agent) -> None:
    alice.send("bob", 60)
    before = outbox(alice)
    with pytest.raises(InsufficientFundsError) as caught:
        alice.send("bob", 41)
    assert caught.value.expected == "amount <= 40"
    assert outbox(alice) == before
    assert len(alice.transfers()) == 1
    assert alice.send("bob", 40).status == "pending"
    assert alice.balance().spendable == 0


@pytest.mark.parametrize(
    ("to", "amount", "error"),
    [
        ("nobody", 5, NotFoundError),
        ("alice", 5, SchemaError),  # oneself
        ("bob", 0, SchemaError),
        ("bob", -3, SchemaError),
        ("bob", True, SchemaError),
        ("carol", 5, SchemaError),  # revoked
    ],
)
def test_bad_transfers_are_refused(
    alice: Agent, side: CoordinatorSide, bob: Identity, to: str, amount: int, error: type
) -> None:
    carol = Identity.generate()
    members = [
        ("alice", alice.public, "active"),
        ("bob", bob.public, "active"),
        ("carol", carol.public, "revoked"),
    ]
    deliver(alice, side.roster(members, [alice.public]))
    with pytest.raises(error):
        alice.send(to, amount)
    assert outbox(alice, "transaction") == []


def test_recipient_by_key_id_prefix_or_fingerprint(alice: Agent, bob: Identity) -> None:
    assert alice.send(bob.key_id.hex()[:10], 1).recipient == bob.key_id
    assert alice.send(bob.public.fingerprint.lower(), 1).recipient == bob.key_id
    assert alice.send(bob.key_id, 1).recipient == bob.key_id


def test_an_accepted_receipt_with_a_valid_proof_confirms(
    alice: Agent, side: CoordinatorSide
) -> None:
    record = alice.send("bob", 30, "thanks")
    index, checkpoint, proof = side.apply_transfer(_bundle(alice, record.bundle_id))
    receipt = Receipt(record.bundle_id, "accepted", "applied", index, proof, checkpoint)
    assert not deliver(alice, side.receipt(alice.public, receipt)).rejected
    [confirmed] = alice.transfers()
    assert (confirmed.status, confirmed.ledger_index) == ("confirmed", index)
    assert outbox(alice, "transaction") == []  # receipted: the outbox copy goes
    # The replica has not seen the entry yet: still not spendable twice.
    balance = alice.balance()
    assert (balance.confirmed, balance.pending_out, balance.unreplicated_out) == (100, 0, 30)
    assert balance.spendable == 70
    # Then the ledger delta arrives: the replica's balance carries it.
    assert not deliver(alice, side.delta(alice.public, 4)).rejected
    balance = alice.balance()
    assert (balance.confirmed, balance.unreplicated_out, balance.spendable) == (70, 0, 70)
    lines = [(x.kind, x.amount, x.status, x.memo) for x in alice.history()]
    assert lines[-1] == ("transfer", -30, "confirmed", "thanks")


def test_a_rejected_receipt_frees_the_tokens(alice: Agent, side: CoordinatorSide) -> None:
    record = alice.send("bob", 80)
    receipt = Receipt(record.bundle_id, "rejected", "insufficient confirmed balance")
    deliver(alice, side.receipt(alice.public, receipt))
    [rejected] = alice.transfers()
    assert (rejected.status, rejected.reason) == ("rejected", "insufficient confirmed balance")
    assert alice.balance().spendable == 100
    assert alice.history()[-1].status == "rejected"


def test_a_receipt_whose_proof_does_not_verify_is_quarantined(
    alice: Agent, side: CoordinatorSide
) -> None:
    record = alice.send("bob", 30)
    index, checkpoint, proof = side.apply_transfer(_bundle(alice, record.bundle_id))
    bad_proof = (b"\x00" * 32, *proof[1:])
    forged = sign_checkpoint(
        Identity.generate(), federation=FEDERATION, size=checkpoint.size, root=checkpoint.root
    )
    for bad, error in (
        (Receipt(record.bundle_id, "accepted", "", index, bad_proof, checkpoint), "ProofError"),
        (Receipt(record.bundle_id, "accepted", "", index + 1, proof, checkpoint), "ProofError"),
        (Receipt(record.bundle_id, "accepted", "", index, proof, forged), "SignatureError"),
        (Receipt(record.bundle_id, "accepted", "no proof at all"), "ProofError"),
    ):
        report = deliver(alice, side.receipt(alice.public, bad))
        assert report.rejected[0]["error"] == error
        assert alice.transfers()[0].status == "pending"


def test_a_lost_receipt_is_made_up_for_by_the_ledger(alice: Agent, side: CoordinatorSide) -> None:
    record = alice.send("bob", 25)
    index, _, _ = side.apply_transfer(_bundle(alice, record.bundle_id))
    deliver(alice, side.delta(alice.public, 4))
    [confirmed] = alice.transfers()
    assert (confirmed.status, confirmed.ledger_index) == ("confirmed", index)
    assert alice.balance().spendable == 75


def test_a_transfer_past_its_expiry_round_is_released(alice: Agent, side: CoordinatorSide) -> None:
    record = alice.send("bob", 50)
    assert record.expires_round == 10
    for number in range(1, 12):
        side.close_round(number)
    deliver(alice, side.delta(alice.public, 4, round=11))
    [expired] = alice.transfers()
    assert expired.status == "expired"
    assert alice.current_round() == 11
    assert alice.balance().spendable == 100
    assert outbox(alice, "transaction") == []  # its outbox copy expired with it
    # The coordinator's rules agree: it can no longer be applied.
    assert not transfer_decision(side.state, _bundle(alice, record.bundle_id)).accepted


def test_a_failed_write_during_send_leaves_nothing_behind(
    alice: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_rename(src: Any, dst: Any) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("bundle.durable.os.replace", no_rename)
    with pytest.raises(OSError, match="Input/output"):
        alice.send("bob", 10)
    monkeypatch.undo()
    assert alice.transfers() == []
    assert outbox(alice, "transaction") == []
    assert alice.balance().spendable == 100
