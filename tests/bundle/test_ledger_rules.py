"""Tests for bundle.ledger: entry codecs, the ledger rules, transfers, and the audit."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bundle import cbor
from bundle.checkpoint import sign_checkpoint
from bundle.envelope import pack_bytes
from bundle.errors import (
    FormatError,
    IntegrityError,
    LLTokenError,
    ReplayError,
    SchemaError,
    SignatureError,
    SizeError,
    UnknownSenderError,
)
from bundle.keys import Identity
from bundle.ledger import (
    MAX_SUPPLY,
    MAX_TRANSFER_BUNDLE,
    Allocation,
    DuplicateTransferError,
    Enroll,
    LedgerEntry,
    LedgerState,
    Movement,
    Revoke,
    Reward,
    RoundClose,
    Transfer,
    audit,
    decode_entry,
    transfer_decision,
)
from bundle.merkle import consistency_proof, inclusion_proof, leaf_hash, root
from bundle.merkletree import MerkleTree
from bundle.payloads import MAX_AMOUNT, EvalResult, Transaction

MODEL = hashlib.sha256(b"model").digest()
UPDATE = hashlib.sha256(b"update").digest()


def nonce(n: int) -> bytes:
    return n.to_bytes(16, "big")


def enroll(who: Identity, name: str) -> bytes:
    return Enroll(who.key_id, name, who.public).encode()


def close(round_: int, *who: Identity) -> bytes:
    return RoundClose(round_, MODEL, [w.key_id for w in who]).encode()


def reward(who: Identity, amount: int, round_: int, **quality: int | float) -> bytes:
    return Reward(who.key_id, amount, round_, quality or {"q": 1.0}, UPDATE).encode()


def transaction(
    sender: Identity,
    recipient: Identity,
    amount: int,
    n: int,
    *,
    federation: bytes,
    expires_round: int = 10,
    signer: Identity | None = None,
    **pack: Any,
) -> bytes:
    tx = Transaction(sender.key_id, recipient.key_id, amount, nonce(n), expires_round)
    return pack_bytes(tx, signer or sender, federation=federation, **pack)[1]


def transfer(bundle: bytes) -> bytes:
    return Transfer(bundle).encode()


@pytest.fixture
def base(
    federation: bytes, alice: Identity, bob: Identity, carol: Identity
) -> tuple[LedgerState, list[bytes]]:
    """alice, bob, carol enrolled; round 1 closed with alice and bob; alice earned 100,
    bob 50."""
    entries = [
        enroll(alice, "alice"),
        enroll(bob, "bob"),
        enroll(carol, "carol"),
        close(1, alice, bob),
        reward(alice, 100, 1, q=1.0, reputation=1.25),
        reward(bob, 50, 1, q=0.5),
    ]
    state = LedgerState(federation)
    for data in entries:
        state.apply(data)
    return state, entries


# ---------------------------------------------------------------------------- entries


def sample_entries(alice: Identity, bob: Identity) -> list[LedgerEntry]:
    return [
        Enroll(alice.key_id, "alice-1", alice.public),
        Revoke(bob.key_id),
        RoundClose(3, MODEL, (alice.key_id, bob.key_id)),
        Reward(alice.key_id, 0, 3, {"q": 0.25, "base": 100, "reputation": 2}, UPDATE),
        Transfer(b"any bytes: checked against the state, not by the codec"),
        Allocation(bob.key_id, MAX_AMOUNT),
    ]


def test_every_kind_round_trips(alice: Identity, bob: Identity) -> None:
    for entry in sample_entries(alice, bob):
        data = entry.encode()
        decoded = decode_entry(data)
        assert decoded == entry
        assert decoded.encode() == data
        assert cbor.decode(data)["kind"] == entry.KIND


def test_round_close_keeps_participants_as_a_tuple(alice: Identity) -> None:
    entry = RoundClose(1, MODEL, [alice.key_id])
    assert entry.participants == (alice.key_id,)


def test_reward_copies_its_quality(alice: Identity) -> None:
    quality: dict[str, int | float] = {"q": 1.0}
    entry = Reward(alice.key_id, 1, 1, quality, UPDATE)
    quality["q"] = 2.0
    assert entry.quality["q"] == 1.0
    assert dataclasses.replace(entry, amount=2).quality == {"q": 1.0}


names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=64)
numbers = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False)
)


@settings(max_examples=150, deadline=None)
@given(
    amount=st.integers(0, MAX_AMOUNT),
    round_=st.integers(0, 2**63 - 1),
    quality=st.dictionaries(names, numbers, max_size=8),
    update=st.binary(min_size=32, max_size=32),
)
def test_reward_codec_is_canonical(
    amount: int, round_: int, quality: dict[str, int | float], update: bytes
) -> None:
    quality = {k: v for k, v in quality.items() if k != "reputation"}
    entry = Reward(b"\x01" * 16, amount, round_, quality, update)
    data = entry.encode()
    assert decode_entry(data) == entry
    assert decode_entry(data).encode() == data


def _raw_map(pairs: Sequence[tuple[str, Any]]) -> bytes:
    """A CBOR map with the pairs in the given order (to build non-canonical encodings)."""
    return bytes([0xA0 | len(pairs)]) + b"".join(cbor.encode(k) + cbor.encode(v) for k, v in pairs)


def _reward_map(**change: Any) -> dict[str, Any]:
    fields = {
        "kind": "reward",
        "agent": b"\x01" * 16,
        "amount": 5,
        "round": 1,
        "quality": {"q": 1.0},
        "update": UPDATE,
    }
    fields.update(change)
    return {k: v for k, v in fields.items() if v is not ...}


BAD_ENTRIES: list[tuple[str, bytes, type[LLTokenError], str]] = [
    ("unknown kind", cbor.encode(_reward_map(kind="mint")), SchemaError, "unknown ledger entry"),
    ("not a map", cbor.encode([1, 2]), SchemaError, "unknown ledger entry kind"),
    ("extra field", cbor.encode(_reward_map(extra=1)), SchemaError, "wrong fields"),
    ("missing field", cbor.encode(_reward_map(update=...)), SchemaError, "wrong fields"),
    (
        "unsorted keys",
        _raw_map(list(reversed(list(cbor.decode(cbor.encode(_reward_map())).items())))),
        FormatError,
        "not sorted",
    ),
    ("trailing bytes", cbor.encode(_reward_map()) + b"\x00", FormatError, "trailing"),
    ("truncated", cbor.encode(_reward_map())[:-1], FormatError, "truncated"),
    ("negative amount", cbor.encode(_reward_map(amount=-1)), SchemaError, "amount"),
    ("boolean amount", cbor.encode(_reward_map(amount=True)), SchemaError, "amount"),
    ("huge amount", cbor.encode(_reward_map(amount=MAX_AMOUNT + 1)), SchemaError, "amount"),
    ("huge round", cbor.encode(_reward_map(round=2**63)), SchemaError, "round"),
    ("short agent", cbor.encode(_reward_map(agent=b"\x01" * 15)), SchemaError, "agent"),
    ("NaN quality", cbor.encode(_reward_map(quality={"q": math.nan})), SchemaError, "finite"),
    ("text quality", cbor.encode(_reward_map(quality={"q": "high"})), SchemaError, "finite"),
    ("nested quality", cbor.encode(_reward_map(quality={"q": {"a": 1}})), SchemaError, "finite"),
    ("empty quality name", cbor.encode(_reward_map(quality={"": 1})), SchemaError, "quality name"),
    (
        "reputation out of range",
        cbor.encode(_reward_map(quality={"reputation": 2.5})),
        SchemaError,
        "reputation",
    ),
    ("quality not a map", cbor.encode(_reward_map(quality=[1])), SchemaError, "quality"),
    (
        "duplicate participant",
        cbor.encode(
            {
                "kind": "round-close",
                "round": 1,
                "model_hash": MODEL,
                "participants": [b"a" * 16] * 2,
            }
        ),
        SchemaError,
        "listed twice",
    ),
    (
        "bad model hash",
        cbor.encode({"kind": "round-close", "round": 1, "model_hash": b"x", "participants": []}),
        SchemaError,
        "model_hash",
    ),
    (
        "zero allocation",
        cbor.encode({"kind": "allocation", "agent": b"a" * 16, "amount": 0}),
        SchemaError,
        "amount",
    ),
    (
        "oversized transfer",
        cbor.encode({"kind": "transfer", "bundle": b"x" * (MAX_TRANSFER_BUNDLE + 1)}),
        SizeError,
        "too large",
    ),
    ("transfer of text", cbor.encode({"kind": "transfer", "bundle": "x"}), SchemaError, "bundle"),
]


@pytest.mark.parametrize(
    ("data", "error", "match"), [b[1:] for b in BAD_ENTRIES], ids=[b[0] for b in BAD_ENTRIES]
)
def test_bad_entries_are_refused_with_their_number(
    base: tuple[LedgerState, list[bytes]], data: bytes, error: type[LLTokenError], match: str
) -> None:
    state, _ = base
    with pytest.raises(error, match=match) as info:
        state.apply(data)
    assert "ledger entry 6" in str(info.value)
    assert state.size == 6


def test_enroll_checks_its_identity(alice: Identity, bob: Identity) -> None:
    with pytest.raises(SchemaError, match="does not match its identity"):
        Enroll(bob.key_id, "bob", alice.public)
    with pytest.raises(SchemaError, match="agent name"):
        Enroll(alice.key_id, "bad name", alice.public)
    bad_identity = {**alice.public.to_dict(), "sign": b"short"}
    data = cbor.encode(
        {"kind": "enroll", "agent": alice.key_id, "name": "a", "identity": bad_identity}
    )
    with pytest.raises(SchemaError, match="identity"):
        decode_entry(data)


# ---------------------------------------------------------------------------- rules


def test_derived_state(
    base: tuple[LedgerState, list[bytes]], alice: Identity, bob: Identity, carol: Identity
) -> None:
    state, _ = base
    assert state.size == 6
    assert state.current_round == 1
    assert state.total_supply == 150
    assert state.balances() == {alice.key_id: 100, bob.key_id: 50, carol.key_id: 0}
    a = state.account(alice.key_id)
    assert a is not None
    assert (a.rounds, a.rewards, a.tokens, a.reputation, a.name) == (1, 1, 100, 1.25, "alice")
    b = state.account(bob.key_id)
    assert b is not None
    assert b.reputation is None
    c = state.account(carol.key_id)
    assert c is not None
    assert (c.rounds, c.rewards, c.enrolled_at) == (0, 0, 2)
    assert state.kinds == {
        "enroll": 3,
        "revoke": 0,
        "round-close": 1,
        "reward": 2,
        "transfer": 0,
        "allocation": 0,
    }


def test_reputation_follows_the_latest_reward(
    base: tuple[LedgerState, list[bytes]], alice: Identity, bob: Identity
) -> None:
    state, _ = base
    state.apply(close(2, alice))
    state.apply(reward(alice, 10, 2, q=0.1))
    account = state.account(alice.key_id)
    assert account is not None
    assert (account.reputation, account.rounds, account.tokens) == (None, 2, 110)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda a, b, c: enroll(a, "again"), SchemaError, "already enrolled"),
        (lambda a, b, c: Revoke(b"\x09" * 16).encode(), SchemaError, "not enrolled"),
        (lambda a, b, c: close(1, a), ReplayError, "out of order"),
        (lambda a, b, c: close(0, a), ReplayError, "out of order"),
        (lambda a, b, c: RoundClose(2, MODEL, [b"\x09" * 16]).encode(), SchemaError, "participant"),
        (lambda a, b, c: reward(c, 5, 1), SchemaError, "did not take part"),
        (lambda a, b, c: reward(a, 5, 1), ReplayError, "already rewarded"),
        (lambda a, b, c: reward(a, 5, 2), SchemaError, "latest closed round"),
        (lambda a, b, c: reward(a, 5, 0), SchemaError, "latest closed round"),
        (lambda a, b, c: Allocation(b"\x09" * 16, 5).encode(), SchemaError, "not enrolled"),
    ],
    ids=[
        "enroll twice",
        "revoke unknown",
        "same round twice",
        "older round",
        "unknown participant",
        "reward non-participant",
        "double reward",
        "reward unclosed round",
        "reward older round",
        "allocation unknown",
    ],
)
def test_rule_violations(
    base: tuple[LedgerState, list[bytes]],
    alice: Identity,
    bob: Identity,
    carol: Identity,
    make: Any,
    error: type[LLTokenError],
    match: str,
) -> None:
    state, _ = base
    before = (state.size, state.balances(), state.total_supply, dict(state.kinds))
    with pytest.raises(error, match=match) as info:
        state.apply(make(alice, bob, carol))
    assert "ledger entry 6" in str(info.value)
    assert (state.size, state.balances(), state.total_supply, dict(state.kinds)) == before


def test_reward_before_any_round(federation: bytes, alice: Identity) -> None:
    state = LedgerState(federation)
    state.apply(enroll(alice, "alice"))
    with pytest.raises(SchemaError, match="latest closed round"):
        state.apply(reward(alice, 1, 0))


def test_revocation_is_final(base: tuple[LedgerState, list[bytes]], alice: Identity) -> None:
    state, _ = base
    state.apply(Revoke(alice.key_id).encode())
    account = state.account(alice.key_id)
    assert account is not None
    assert not account.active
    assert account.revoked_at == 6
    assert state.balance(alice.key_id) == 100  # kept, but frozen
    for data, match in [
        (Revoke(alice.key_id).encode(), "revoked"),
        (enroll(alice, "alice2"), "already enrolled"),
        (close(2, alice), "revoked"),
        (Allocation(alice.key_id, 1).encode(), "revoked"),
    ]:
        with pytest.raises(SchemaError, match=match):
            state.apply(data)


def test_supply_cap(base: tuple[LedgerState, list[bytes]], carol: Identity) -> None:
    state, _ = base
    state.apply(Allocation(carol.key_id, MAX_SUPPLY - state.total_supply).encode())
    assert state.total_supply == MAX_SUPPLY
    with pytest.raises(SchemaError, match="total supply"):
        state.apply(Allocation(carol.key_id, 1).encode())


def test_entries_must_come_in_order(base: tuple[LedgerState, list[bytes]], carol: Identity) -> None:
    state, _ = base
    with pytest.raises(SchemaError, match="out of order"):
        state.apply(Allocation(carol.key_id, 1).encode(), 9)


def test_fork_and_absorb(
    base: tuple[LedgerState, list[bytes]], alice: Identity, carol: Identity
) -> None:
    state, _ = base
    fork = state.fork()
    fork.apply(Allocation(carol.key_id, 7).encode())
    assert fork.balance(carol.key_id) == 7
    assert fork.balance(alice.key_id) == 100  # read through
    assert state.balance(carol.key_id) == 0
    assert state.size == 6
    state.absorb(fork)
    assert state.balance(carol.key_id) == 7
    assert state.size == 7
    assert state.total_supply == 157
    with pytest.raises(ValueError, match="absorb"):
        state.absorb(fork)
    stale = state.fork()
    state.apply(Allocation(carol.key_id, 1).encode())
    with pytest.raises(ValueError, match="absorb"):
        state.absorb(stale)


# ---------------------------------------------------------------------------- transfers


def test_transfer_moves_confirmed_tokens(
    base: tuple[LedgerState, list[bytes]], federation: bytes, alice: Identity, carol: Identity
) -> None:
    state, _ = base
    bundle = transaction(alice, carol, 30, 1, federation=federation)
    decision = transfer_decision(state, bundle)
    assert decision.accepted
    assert decision.status == "accepted"
    assert decision.entry is not None
    assert decision.transaction is not None
    assert decision.transaction.amount == 30
    assert state.size == 6  # deciding changes nothing
    applied = state.apply(decision.entry)
    assert applied.bundle_id == decision.bundle_id
    assert state.balance(alice.key_id) == 70
    assert state.balance(carol.key_id) == 30
    assert state.total_supply == 150
    assert applied.movements == (
        Movement(6, "transfer", alice.key_id, -30, None, carol.key_id),
        Movement(6, "transfer", carol.key_id, 30, None, alice.key_id),
    )
    a, c = state.account(alice.key_id), state.account(carol.key_id)
    assert a is not None
    assert c is not None
    assert (a.sent, c.received) == (30, 30)


def test_replay_same_bundle_is_a_duplicate(
    base: tuple[LedgerState, list[bytes]], federation: bytes, alice: Identity, carol: Identity
) -> None:
    state, _ = base
    bundle = transaction(alice, carol, 30, 1, federation=federation)
    state.apply(transfer(bundle))
    decision = transfer_decision(state, bundle)
    assert decision.status == "duplicate"
    assert decision.ledger_index == 6
    assert not decision.accepted
    assert decision.entry is None
    with pytest.raises(DuplicateTransferError) as info:
        state.apply(transfer(bundle))
    assert isinstance(info.value, ReplayError)
    assert info.value.original_index == 6
    assert state.balance(alice.key_id) == 70


def test_replay_of_a_nonce_is_refused(
    base: tuple[LedgerState, list[bytes]],
    federation: bytes,
    alice: Identity,
    bob: Identity,
    carol: Identity,
) -> None:
    state, _ = base
    state.apply(transfer(transaction(alice, carol, 30, 1, federation=federation)))
    again = transaction(alice, bob, 5, 1, federation=federation)  # new bundle, same nonce
    decision = transfer_decision(state, again)
    assert decision.status == "rejected"
    assert "nonce already used" in decision.reason
    with pytest.raises(ReplayError, match="nonce already used") as info:
        state.apply(transfer(again))
    assert "ledger entry 7" in str(info.value)
    # The nonce is per sender: bob may use the same number.
    state.apply(transfer(transaction(bob, carol, 5, 1, federation=federation)))


def test_out_of_order_arrival(
    base: tuple[LedgerState, list[bytes]], federation: bytes, alice: Identity, carol: Identity
) -> None:
    state, _ = base
    first = transaction(alice, carol, 10, 1, federation=federation)
    second = transaction(alice, carol, 20, 2, federation=federation)
    state.apply(transfer(second))  # the courier delivered them the other way round
    assert transfer_decision(state, first).accepted
    state.apply(transfer(first))
    assert state.balance(carol.key_id) == 30


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_double_spend_is_settled_by_ledger_order(
    base: tuple[LedgerState, list[bytes]],
    federation: bytes,
    alice: Identity,
    bob: Identity,
    carol: Identity,
    order: tuple[int, int],
) -> None:
    state, _ = base
    spends = [
        transaction(alice, bob, 80, 1, federation=federation),
        transaction(alice, carol, 80, 2, federation=federation),
    ]
    winner, loser = spends[order[0]], spends[order[1]]
    state.apply(transfer(winner))
    decision = transfer_decision(state, loser)
    assert decision.status == "rejected"
    assert "insufficient confirmed balance" in decision.reason
    assert "expected >= 80, found 20" in decision.reason
    recipients = [bob, carol]
    assert state.balance(recipients[order[0]].key_id) == {0: 130, 1: 80}[order[0]]
    assert state.balance(alice.key_id) == 20


def test_insufficient_funds(
    base: tuple[LedgerState, list[bytes]], federation: bytes, bob: Identity, carol: Identity
) -> None:
    state, _ = base
    with pytest.raises(SchemaError, match="insufficient confirmed balance") as info:
        state.apply(transfer(transaction(bob, carol, 51, 1, federation=federation)))
    assert info.value.expected == ">= 51"
    assert info.value.found == 50
    state.apply(transfer(transaction(bob, carol, 50, 2, federation=federation)))
    assert state.balance(bob.key_id) == 0


def test_expiry(
    base: tuple[LedgerState, list[bytes]],
    federation: bytes,
    alice: Identity,
    bob: Identity,
    carol: Identity,
) -> None:
    state, _ = base
    on_time = transaction(alice, carol, 1, 1, federation=federation, expires_round=1)
    late = transaction(alice, carol, 1, 2, federation=federation, expires_round=1)
    header_late = transaction(alice, carol, 1, 3, federation=federation, expires=1)
    state.apply(transfer(on_time))  # latest closed round 1 <= expires_round 1
    state.apply(close(2, alice, bob))
    for bundle, match in [(late, "transfer expired"), (header_late, "bundle expired")]:
        decision = transfer_decision(state, bundle)
        assert decision.status == "rejected"
        assert match in decision.reason
        with pytest.raises(ReplayError, match=match):
            state.apply(transfer(bundle))


def test_forged_signatures(
    base: tuple[LedgerState, list[bytes]],
    federation: bytes,
    alice: Identity,
    bob: Identity,
    carol: Identity,
    mallory: Identity,
) -> None:
    state, _ = base
    genuine = bytearray(transaction(alice, carol, 10, 1, federation=federation))
    signature_at = len(genuine) - _payload_size(bytes(genuine)) - 1  # last signature byte
    genuine[signature_at] ^= 0x01
    cases: list[tuple[bytes, type[LLTokenError], str]] = [
        (bytes(genuine), SignatureError, "does not verify"),
        # bob signs a transaction that says it is from alice
        (
            transaction(alice, carol, 10, 2, federation=federation, signer=bob),
            SignatureError,
            "not the key that signed",
        ),
        # a key nobody enrolled
        (
            transaction(mallory, carol, 10, 3, federation=federation),
            UnknownSenderError,
            "not enrolled",
        ),
    ]
    payload_altered = bytearray(transaction(alice, carol, 10, 4, federation=federation))
    payload_altered[-1] ^= 0x01
    cases.append((bytes(payload_altered), IntegrityError, "payload hash mismatch"))
    for bundle, error, match in cases:
        assert transfer_decision(state, bundle).status == "rejected"
        with pytest.raises(error, match=match) as info:
            state.apply(transfer(bundle))
        assert "ledger entry 6 (transfer)" in str(info.value)
    assert state.balance(alice.key_id) == 100
    assert state.size == 6


def _payload_size(bundle: bytes) -> int:
    import io

    from bundle.envelope import read_prefix

    return read_prefix(io.BytesIO(bundle), len(bundle)).header.payload.size


def test_revoked_sender_and_recipient(
    base: tuple[LedgerState, list[bytes]],
    federation: bytes,
    alice: Identity,
    bob: Identity,
    carol: Identity,
) -> None:
    state, _ = base
    signed_before = transaction(alice, carol, 10, 1, federation=federation)
    to_bob = transaction(carol, bob, 1, 1, federation=federation)
    state.apply(Allocation(carol.key_id, 5).encode())
    state.apply(Revoke(alice.key_id).encode())
    state.apply(Revoke(bob.key_id).encode())
    with pytest.raises(UnknownSenderError, match="not enrolled"):
        state.apply(transfer(signed_before))
    with pytest.raises(SchemaError, match="recipient is not an enrolled, active agent"):
        state.apply(transfer(to_bob))


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (
            lambda f, a, c: transaction(a, c, 1, 1, federation=b"\x00" * 16),
            SchemaError,
            "another federation",
        ),
        (
            lambda f, a, c: transaction(
                a, c, 1, 1, federation=f, encrypt=True, recipients=[c.public]
            ),
            SchemaError,
            "encrypted",
        ),
        (
            lambda f, a, c: pack_bytes(EvalResult(1, MODEL, 5, {}), a, federation=f)[1],
            SchemaError,
            "not a transaction",
        ),
        (lambda f, a, c: b"LLTB garbage", FormatError, "bundle"),
    ],
    ids=["other federation", "encrypted", "other kind", "garbage"],
)
def test_transfers_that_are_not_plain_transactions(
    base: tuple[LedgerState, list[bytes]],
    federation: bytes,
    alice: Identity,
    carol: Identity,
    make: Any,
    error: type[LLTokenError],
    match: str,
) -> None:
    state, _ = base
    bundle = make(federation, alice, carol)
    decision = transfer_decision(state, bundle)
    assert decision.status == "rejected"
    assert isinstance(decision.error, error)
    with pytest.raises(error, match=match):
        state.apply(transfer(bundle))


def test_garbage_has_no_bundle_id(base: tuple[LedgerState, list[bytes]]) -> None:
    state, _ = base
    decision = transfer_decision(state, b"not a bundle")
    assert decision.status == "rejected"
    assert decision.bundle_id is None


def test_deciding_a_batch_on_a_fork(
    base: tuple[LedgerState, list[bytes]],
    federation: bytes,
    alice: Identity,
    bob: Identity,
    carol: Identity,
) -> None:
    state, _ = base
    scratch = state.fork()
    accepted = []
    for n, to in enumerate([bob, carol, bob], 1):
        decision = transfer_decision(scratch, transaction(alice, to, 40, n, federation=federation))
        if decision.accepted and decision.entry is not None:
            scratch.apply(decision.entry)
            accepted.append(decision.entry)
    assert len(accepted) == 2  # the third finds 20 left
    assert state.balance(alice.key_id) == 100
    for data in accepted:
        state.apply(data)
    assert state.balance(alice.key_id) == 20


# ---------------------------------------------------------------------------- audit


def test_audit_of_a_whole_ledger(
    base: tuple[LedgerState, list[bytes]],
    federation: bytes,
    coordinator: Identity,
    alice: Identity,
    carol: Identity,
) -> None:
    _, entries = base
    entries = [*entries, transfer(transaction(alice, carol, 25, 1, federation=federation))]
    checkpoint = sign_checkpoint(
        coordinator,
        federation=federation,
        size=len(entries),
        root=root([leaf_hash(e) for e in entries]),
    )
    report = audit(entries, checkpoint, coordinator.public)
    assert report.size == 7
    assert report.total_supply == 150
    assert report.balances[alice.key_id] == 75
    assert report.balances[carol.key_id] == 25
    assert report.kinds["transfer"] == 1
    assert report.to_json()["root"] == checkpoint.root.hex()


def test_audit_failures(
    base: tuple[LedgerState, list[bytes]],
    federation: bytes,
    coordinator: Identity,
    alice: Identity,
    bob: Identity,
) -> None:
    _, entries = base
    leaves = [leaf_hash(e) for e in entries]
    checkpoint = sign_checkpoint(coordinator, federation=federation, size=6, root=root(leaves))
    with pytest.raises(SignatureError):
        audit(entries, dataclasses.replace(checkpoint, size=5), coordinator.public)
    with pytest.raises(SignatureError):
        audit(entries, checkpoint, alice.public)
    changed = [*entries[:5], reward(bob, 51, 1, q=0.5)]  # valid, but not what was signed
    with pytest.raises(IntegrityError, match="do not hash to the signed root"):
        audit(changed, checkpoint, coordinator.public)
    with pytest.raises(IntegrityError, match="length differs"):
        audit(entries[:5], checkpoint, coordinator.public)
    with pytest.raises(IntegrityError, match="more entries than"):
        audit([*entries, Allocation(bob.key_id, 1).encode()], checkpoint, coordinator.public)
    with pytest.raises(ReplayError, match="ledger entry 5") as info:
        audit([*entries[:5], entries[4]], checkpoint, coordinator.public)
    assert info.value.exit_code == 14


# ---------------------------------------------------------------------------- Merkle cache


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 70), cut=st.integers(0, 70), data=st.data())
def test_merkle_tree_cache_agrees_with_the_reference(size: int, cut: int, data: Any) -> None:
    leaves = [leaf_hash(n.to_bytes(4, "big")) for n in range(size)]
    tree = MerkleTree(b"".join(leaves[: size // 2]))
    tree.extend(leaves[size // 2 :])
    assert tree.root() == root(leaves)
    n = data.draw(st.integers(1, size))
    index = data.draw(st.integers(0, n - 1))
    old = data.draw(st.integers(1, n))
    assert tree.root(n) == root(leaves[:n])
    assert tree.inclusion_proof(index, n) == inclusion_proof(index, leaves[:n])
    assert tree.consistency_proof(old, n) == consistency_proof(old, leaves[:n])
    kept = min(cut, size)
    tree.truncate(kept)
    assert tree.root() == root(leaves[:kept])
    tree.extend(leaves[kept:])
    assert tree.root() == root(leaves)
