"""Tests for coordinator.ledger_store: durable log + rebuildable index, proofs, deltas,
crash safety (truncation at every byte, fault injection) and check/repair."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from bundle.checkpoint import verify_checkpoint
from bundle.envelope import pack_bytes
from bundle.errors import FormatError, IntegrityError, LLTokenError, ProofError, SchemaError
from bundle.keys import Identity
from bundle.ledger import Allocation, Enroll, Reward, RoundClose
from bundle.merkle import (
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root,
    verify_consistency,
    verify_inclusion,
)
from bundle.payloads import Transaction
from bundle.records import Record, RecordReader
from coordinator.ledger_proof import verify_ledger
from coordinator.ledger_store import (
    HEADER_SIZE,
    INDEX_NAME,
    LOG_DIR,
    TAG_COMMIT,
    TAG_ENTRY,
    TAGS,
    LedgerStore,
    check_ledger,
    segment_name,
)

MODEL = hashlib.sha256(b"model").digest()


def update_id(n: int) -> bytes:
    return hashlib.sha256(b"update %d" % n).digest()


def enroll(who: Identity, name: str) -> bytes:
    return Enroll(who.key_id, name, who.public).encode()


def round_batch(round_: int, *who: Identity, amount: int = 10) -> list[bytes]:
    entries = [RoundClose(round_, MODEL, [w.key_id for w in who]).encode()]
    for n, w in enumerate(who):
        quality = {"q": 1.0, "reputation": 1.0}
        entries.append(Reward(w.key_id, amount + n, round_, quality, update_id(n)).encode())
    return entries


def tx(sender: Identity, recipient: Identity, amount: int, n: int, federation: bytes) -> bytes:
    payload = Transaction(sender.key_id, recipient.key_id, amount, n.to_bytes(16, "big"), 99)
    return pack_bytes(payload, sender, federation=federation)[1]


@pytest.fixture
def store(
    tmp_path: Path,
    federation: bytes,
    coordinator: Identity,
    alice: Identity,
    bob: Identity,
    carol: Identity,
) -> LedgerStore:
    """A ledger of 3 batches after the empty one: enrolments, round 1, round 2."""
    s = LedgerStore(tmp_path / "ledger", federation, coordinator, time=1000)
    s.append([enroll(alice, "alice"), enroll(bob, "bob"), enroll(carol, "carol")])
    s.append(round_batch(1, alice, bob))
    s.append(round_batch(2, alice, bob, carol))
    return s


def log_file(path: Path, number: int = 0) -> Path:
    return path / LOG_DIR / segment_name(number)


def leaves_of(store: LedgerStore) -> list[bytes]:
    return [leaf_hash(e) for e in store.entries()]


# ---------------------------------------------------------------------------- basics


def test_append_and_read_back(store: LedgerStore, coordinator: Identity, alice: Identity) -> None:
    assert store.size == 10
    assert [c.size for c in store.checkpoints()] == [0, 3, 6, 10]
    for checkpoint in store.checkpoints():
        verify_checkpoint(checkpoint, coordinator.public, federation=store.federation)
    assert store.checkpoint().root == root(leaves_of(store))
    assert store.balances()[alice.key_id] == 20
    assert store.state.total_supply == 10 + 11 + 10 + 11 + 12
    r = store.append([Allocation(alice.key_id, 5).encode()])
    assert r == range(10, 11)
    assert store.entry(10) == Allocation(alice.key_id, 5).encode()
    assert store.append([]) == range(11, 11)
    assert store.checkpoint().size == 11


def test_reopen_keeps_everything(
    store: LedgerStore, coordinator: Identity, federation: bytes
) -> None:
    path = store.path
    before = (store.size, store.balances(), store.checkpoint(), store.entries())
    store.close()
    with LedgerStore(path, federation, coordinator) as again:  # open-or-create opens
        assert (again.size, again.balances(), again.checkpoint(), again.entries()) == before
    with LedgerStore.open(path) as again:
        assert again.size == 10


def test_opening_refuses_strangers(
    store: LedgerStore, tmp_path: Path, federation: bytes, coordinator: Identity, alice: Identity
) -> None:
    path = store.path
    store.close()
    with pytest.raises(SchemaError, match="another coordinator"):
        LedgerStore(path, federation, alice)
    with pytest.raises(SchemaError, match="another federation"):
        LedgerStore(path, b"\x00" * 16, coordinator)
    with pytest.raises(FormatError, match="not a ledger directory"):
        LedgerStore.open(tmp_path)


def test_one_writer_at_a_time(store: LedgerStore, coordinator: Identity) -> None:
    with pytest.raises(LLTokenError, match="in use"):
        LedgerStore.open(store.path, coordinator)
    with LedgerStore.open(store.path, readonly=True) as reader:  # readers may look
        assert reader.size == 10
        assert reader.entries(9) == store.entries(9)
        with pytest.raises(LLTokenError, match="cannot sign"):
            reader.append([b""])


def test_append_needs_the_key(store: LedgerStore, alice: Identity) -> None:
    path = store.path
    store.close()
    with LedgerStore.open(path) as keyless, pytest.raises(LLTokenError, match="cannot sign"):
        keyless.append([Allocation(alice.key_id, 1).encode()])


def test_a_refused_batch_writes_nothing(store: LedgerStore, alice: Identity) -> None:
    log = log_file(store.path)
    before = log.read_bytes()
    batch = [Allocation(alice.key_id, 1).encode(), round_batch(2, alice)[1]]  # double reward
    with pytest.raises(LLTokenError, match="ledger entry 11") as info:
        store.append(batch)
    assert "already rewarded" in str(info.value)
    assert store.size == 10
    assert log.read_bytes() == before
    assert store.append(batch[:1]) == range(10, 11)


def test_queries(
    store: LedgerStore, federation: bytes, alice: Identity, bob: Identity, carol: Identity
) -> None:
    assert store.has_round_close(2)
    assert not store.has_round_close(3)
    assert store.find(kind="reward", agent=alice.key_id) == [4, 7]
    decision = store.decide_transfer(tx(alice, carol, 15, 1, federation))
    assert decision.accepted
    assert decision.entry is not None
    index = store.append([decision.entry])[0]
    assert store.decide_transfer(tx(alice, carol, 15, 1, federation)).status == "duplicate"
    history = store.history(alice.key_id)
    assert [(m.index, m.kind, m.amount) for m in history] == [
        (0, "enroll", 0),
        (4, "reward", 10),
        (7, "reward", 10),
        (index, "transfer", -15),
    ]
    assert store.find(agent=carol.key_id) == [2, 9, index]
    assert store.balances()[carol.key_id] == 12 + 15


# ---------------------------------------------------------------------------- proofs


def test_proofs_match_the_reference(store: LedgerStore, alice: Identity) -> None:
    for n in range(3):
        store.append([Allocation(alice.key_id, n + 1).encode()])
    leaves = leaves_of(store)
    n = len(leaves)
    for size in range(1, n + 1):
        size_root = root(leaves[:size])
        assert store.root(size) == size_root
        for index in range(size):
            proof = store.inclusion_proof(index, size)
            assert proof == inclusion_proof(index, leaves[:size])
            verify_inclusion(leaves[index], index, size, proof, size_root)
        for old in range(1, size + 1):
            proof = store.consistency_proof(old, size)
            assert proof == consistency_proof(old, leaves[:size])
            verify_consistency(old, size, proof, root(leaves[:old]), size_root)
    with pytest.raises(ProofError):
        store.inclusion_proof(n)
    with pytest.raises(ProofError):
        store.consistency_proof(0)
    with pytest.raises(ProofError, match="no checkpoint"):
        store.checkpoint(5)


def test_delta_since(store: LedgerStore, alice: Identity) -> None:
    full = store.delta_since(0)
    assert (full.start, len(full.entries), full.proof) == (0, 10, ())
    assert full.checkpoint == store.checkpoint()
    delta = store.delta_since(3)
    assert delta.entries == tuple(store.entries(3))
    verify_consistency(3, 10, delta.proof, store.checkpoint(3).root, delta.checkpoint.root)
    assert store.delta_since(10).entries == ()
    stepped = store.delta_since(3, max_entries=4)  # ends at the checkpoint of size 6
    assert (stepped.checkpoint.size, len(stepped.entries)) == (6, 3)
    verify_consistency(3, 6, stepped.proof, store.checkpoint(3).root, store.checkpoint(6).root)
    at_least_one_batch = store.delta_since(6, max_entries=1)
    assert at_least_one_batch.checkpoint.size == 10
    with pytest.raises(ProofError, match="beyond this ledger"):
        store.delta_since(11)


# ---------------------------------------------------------------------------- files


def test_segments_roll_over(
    tmp_path: Path, federation: bytes, coordinator: Identity, alice: Identity, bob: Identity
) -> None:
    path = tmp_path / "ledger"
    with LedgerStore(path, federation, coordinator, segment_bytes=700) as s:
        s.append([enroll(alice, "alice"), enroll(bob, "bob")])
        for r in range(1, 6):
            s.append(round_batch(r, alice, bob))
        entries = s.entries()
        assert len(list((path / LOG_DIR).iterdir())) > 3
    with LedgerStore.open(path) as s:
        assert s.entries() == entries
        assert s.check().ok
    report = verify_ledger(path, coordinator.public)
    assert report.size == len(entries)


def test_index_is_a_cache(store: LedgerStore, coordinator: Identity, federation: bytes) -> None:
    path = store.path
    before = (store.size, store.balances(), store.checkpoints(), store.inclusion_proof(4))
    store.close()
    for name in os.listdir(path):
        if name.startswith(INDEX_NAME):
            (path / name).unlink()
    with LedgerStore(path, federation, coordinator) as rebuilt:
        assert (
            rebuilt.size,
            rebuilt.balances(),
            rebuilt.checkpoints(),
            rebuilt.inclusion_proof(4),
        ) == before
        assert rebuilt.check().ok


def test_an_index_behind_the_log_catches_up(
    store: LedgerStore, tmp_path: Path, coordinator: Identity, alice: Identity
) -> None:
    path = store.path
    store.close()
    old_index = tmp_path / "old-index"
    shutil.copy(path / INDEX_NAME, old_index)
    with LedgerStore.open(path, coordinator) as s:
        s.append([Allocation(alice.key_id, 3).encode()])
        after = (s.size, s.balances(), s.checkpoint())
    shutil.copy(old_index, path / INDEX_NAME)  # as if killed between log and index
    with LedgerStore.open(path, coordinator) as s:
        assert (s.size, s.balances(), s.checkpoint()) == after
        assert s.check().ok


def _copy_state(snapshot: Path, work: Path) -> None:
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(snapshot, work)


def test_a_crash_at_any_byte_of_an_append(
    store: LedgerStore, tmp_path: Path, coordinator: Identity, alice: Identity, bob: Identity
) -> None:
    path = store.path
    committed = (store.size, store.balances(), store.checkpoint())
    store.close()
    snapshot = tmp_path / "snapshot"
    shutil.copytree(path, snapshot)
    before = log_file(path).read_bytes()
    with LedgerStore.open(path, coordinator) as s:
        s.append([Allocation(alice.key_id, 7).encode(), Allocation(bob.key_id, 8).encode()])
        full = (s.size, s.balances(), s.checkpoint())
    after = log_file(path).read_bytes()
    assert after.startswith(before)
    work = tmp_path / "work"
    for cut in range(len(before), len(after) + 1):
        _copy_state(snapshot, work)
        log_file(work).write_bytes(after[:cut])
        with LedgerStore.open(work, coordinator) as s:
            expected = full if cut == len(after) else committed
            assert (s.size, s.balances(), s.checkpoint()) == expected, cut
            if cut % 17 == 0 or cut in (len(before) + 1, len(after) - 1):
                # still writable: the torn bytes are cut off by the next append
                s.append([Allocation(bob.key_id, 1).encode()])
        if cut % 17 == 0 or cut in (len(before) + 1, len(after) - 1):
            verify_ledger(work, coordinator.public)


def test_torn_tail_report_and_repair(
    store: LedgerStore, coordinator: Identity, alice: Identity
) -> None:
    path = store.path
    store.close()
    good = log_file(path).read_bytes()
    with log_file(path).open("ab") as f:
        f.write(b"E\x00\x00\x01\x00partial")
    with LedgerStore.open(path, coordinator) as s:
        assert s.size == 10
        assert s.tail is not None
        assert not s.tail.damaged
        report = s.check()
        assert not report.ok
        assert report.tail is not None
        assert "torn tail" in report.problems()[0]
        repaired = s.check(repair=True)
        assert repaired.repaired
        assert s.check().ok
        assert s.size == 10
    assert log_file(path).read_bytes() == good
    with log_file(path).open("ab") as f:
        f.write(b"\x00")
    with pytest.raises(IntegrityError, match="not clean"):
        verify_ledger(path, coordinator.public)


def test_the_next_append_cuts_a_torn_tail(
    store: LedgerStore, coordinator: Identity, alice: Identity
) -> None:
    path = store.path
    store.close()
    with log_file(path).open("ab") as f:
        f.write(b"garbage from a crash")
    with LedgerStore.open(path, coordinator) as s:
        s.append([Allocation(alice.key_id, 1).encode()])
        assert s.tail is None
        assert s.check().ok
    verify_ledger(path, coordinator.public)


def test_fsync_failure_once(
    store: LedgerStore, monkeypatch: pytest.MonkeyPatch, coordinator: Identity, alice: Identity
) -> None:
    log = log_file(store.path)
    before = log.read_bytes()
    real = os.fsync
    calls = {"n": 0}

    def fail_first(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(5, "injected I/O error")
        real(fd)

    monkeypatch.setattr(os, "fsync", fail_first)
    with pytest.raises(OSError, match="injected"):
        store.append([Allocation(alice.key_id, 1).encode()])
    assert store.size == 10
    assert log.read_bytes() == before  # the unsynced batch was cut back off
    assert store.append([Allocation(alice.key_id, 2).encode()]) == range(10, 11)
    assert store.balances()[alice.key_id] == 22
    path = store.path
    store.close()
    assert verify_ledger(path, coordinator.public).size == 11


def test_fsync_failing_for_good(
    store: LedgerStore, monkeypatch: pytest.MonkeyPatch, coordinator: Identity, alice: Identity
) -> None:
    def fail(fd: int) -> None:
        raise OSError(5, "injected I/O error")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="injected"):
        store.append([Allocation(alice.key_id, 1).encode()])
    # The undo could not be made durable: the store refuses to go on guessing.
    with pytest.raises(LLTokenError, match="reopened"):
        store.append([Allocation(alice.key_id, 1).encode()])
    monkeypatch.undo()
    path = store.path
    store.close()
    with LedgerStore.open(path, coordinator) as s:
        assert s.size == 10
        assert s.check().ok
        s.append([Allocation(alice.key_id, 1).encode()])
    verify_ledger(path, coordinator.public)


def test_fsync_failure_on_a_new_segment(
    tmp_path: Path,
    federation: bytes,
    coordinator: Identity,
    alice: Identity,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "ledger"
    with LedgerStore(path, federation, coordinator, segment_bytes=400) as s:
        s.append([enroll(alice, "alice")])
        segments = sorted(os.listdir(path / LOG_DIR))
        real = os.fsync
        calls = {"n": 0}

        def fail_first(fd: int) -> None:
            calls["n"] += 1
            if calls["n"] == 1:
                raise OSError(28, "injected: no space")
            real(fd)

        monkeypatch.setattr(os, "fsync", fail_first)
        with pytest.raises(OSError, match="no space"):
            s.append([Allocation(alice.key_id, 5).encode()] * 3)
        assert sorted(os.listdir(path / LOG_DIR)) == segments  # the new segment is gone
        s.append([Allocation(alice.key_id, 5).encode()])
        assert s.size == 2
    verify_ledger(path, coordinator.public)


def test_replace_failure_during_repair_keeps_the_old_index(
    store: LedgerStore, monkeypatch: pytest.MonkeyPatch, coordinator: Identity
) -> None:
    path = store.path
    store.close()
    with log_file(path).open("ab") as f:
        f.write(b"torn")

    def fail(src: object, dst: object) -> None:
        raise OSError(5, "injected rename failure")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="injected rename"):
        check_ledger(path, repair=True)
    monkeypatch.undo()
    assert not [p for p in os.listdir(path) if p.startswith(f".{INDEX_NAME}")]
    # The tail was already cut (the first step); the old index still matches the log.
    with LedgerStore.open(path, coordinator) as s:
        assert s.size == 10
        assert s.check().ok


def records(path: Path) -> list[Record]:
    """The records of segment 0 (tag, data, offset, end), read independently of the store."""
    data = log_file(path).read_bytes()
    return list(RecordReader(data, HEADER_SIZE, TAGS))


def test_an_index_ahead_of_the_log_is_refused_until_repaired(
    store: LedgerStore, coordinator: Identity
) -> None:
    path = store.path
    six = store.checkpoint(6)
    store.close()
    commits = [r for r in records(path) if r.tag == TAG_COMMIT]
    assert len(commits) == 4  # sizes 0, 3, 6, 10
    # Lose the last batch from the log (as a damaged disk would), keep the index.
    data = log_file(path).read_bytes()
    log_file(path).write_bytes(data[: commits[2].end])
    with pytest.raises(IntegrityError, match="does not match the log"):
        LedgerStore.open(path, coordinator)
    report = check_ledger(path)
    assert not report.ok
    assert report.index_mismatches
    repaired = check_ledger(path, repair=True)
    assert repaired.repaired
    with LedgerStore.open(path, coordinator) as s:
        assert s.size == 6
        assert s.checkpoint() == six


def test_check_finds_a_tampered_index(store: LedgerStore, coordinator: Identity) -> None:
    path = store.path
    store.close()
    db = sqlite3.connect(path / INDEX_NAME)
    db.execute("UPDATE accounts SET balance = balance + 1000")
    db.commit()
    db.close()
    report = check_ledger(path)
    assert report.index_mismatches == ("cached accounts differ from a replay of the log",)
    assert check_ledger(path, repair=True).repaired
    assert check_ledger(path).ok


def test_damage_in_the_middle_of_the_log(store: LedgerStore, coordinator: Identity) -> None:
    path = store.path
    entry_4 = [r for r in records(path) if r.tag == TAG_ENTRY][4]
    with log_file(path).open("r+b") as f:
        f.seek(entry_4.offset + 20)
        byte = f.read(1)
        f.seek(entry_4.offset + 20)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(IntegrityError, match="damaged or altered"):
        store.entries(4, 5)
    report = store.check()
    assert report.checksum_errors
    assert "checksum mismatch" in report.checksum_errors[0]
    assert report.tail is not None
    assert report.tail.damaged
    with pytest.raises(IntegrityError):
        verify_ledger(path, coordinator.public)
