"""Ingest: exactly once, quarantine with reasons, receipts that clear the sender's outbox."""

from __future__ import annotations

import json
from pathlib import Path

from bundle.envelope import parse_name
from bundle.keys import Identity
from bundle.payloads import Receipt
from tests.spool.nodes import FEDERATION, Node, deliver, make_node, send, small_payload


def reason_of(node: Node, name: str) -> dict[str, object]:
    reason_file = node.home.dirs.quarantine / f"{name}.reason.json"
    data: dict[str, object] = json.loads(reason_file.read_text())
    return data


def test_ingest_accepts_archives_and_receipts(pair: tuple[Node, Node]) -> None:
    coord, agent = pair
    sent = send(coord, agent)
    deliver(sent, agent)
    report = agent.home.ingest(agent.handler)
    assert report.accepted == [sent.name]
    assert (agent.home.dirs.archive / sent.name).exists()
    assert not (agent.home.dirs.inbox / sent.name).exists()
    assert len(agent.handler.handled()) == 1
    receipts = list(agent.home.dirs.outbox(coord.identity.key_id.hex()).glob("receipt.*.llb"))
    assert len(receipts) == 1


def test_receipt_clears_the_senders_outbox_copy(pair: tuple[Node, Node]) -> None:
    coord, agent = pair
    sent = send(coord, agent)
    assert sent.exists()
    deliver(sent, agent)
    agent.home.ingest(agent.handler)
    (receipt,) = agent.home.dirs.outbox_root.glob("*/receipt.*.llb")
    deliver(receipt, coord)
    report = coord.home.ingest(coord.handler)
    assert report.accepted == [receipt.name]
    assert not sent.exists(), "receipted bundle must leave the outbox"
    # Receipts are not themselves receipted (no ping-pong).
    assert list(coord.home.dirs.outbox_root.glob("*/*.llb")) == []


def test_duplicate_delivery_is_dropped_and_not_handled_twice(pair: tuple[Node, Node]) -> None:
    coord, agent = pair
    sent = send(coord, agent)
    deliver(sent, agent)
    agent.home.ingest(agent.handler)
    deliver(sent, agent)
    report = agent.home.ingest(agent.handler)
    assert report.duplicates == [sent.name]
    assert len(agent.handler.handled()) == 1
    assert list(agent.home.dirs.quarantine.iterdir()) == []


def test_unknown_sender_is_quarantined_with_reason(tmp_path: Path, pair: tuple[Node, Node]) -> None:
    _, agent = pair
    stranger = make_node(tmp_path / "stranger", Identity.generate(), {})
    sent = send(stranger, agent)
    deliver(sent, agent)
    report = agent.home.ingest(agent.handler)
    assert report.accepted == []
    reason = reason_of(agent, sent.name)
    assert reason["error"] == "UnknownSenderError"
    assert reason["check"] == "UnknownSenderError"
    assert "when" in reason
    assert "expected" in reason
    assert "found" in reason
    assert (agent.home.dirs.quarantine / sent.name).exists()
    assert agent.handler.handled() == []


def test_bundle_for_someone_else_is_refused(
    tmp_path: Path, pair: tuple[Node, Node], identities: tuple[Identity, ...]
) -> None:
    coord, agent = pair
    other = make_node(tmp_path / "other", identities[2], dict(agent.handler.known))
    sent = send(coord, other)
    deliver(sent, agent)
    agent.home.ingest(agent.handler)
    assert reason_of(agent, sent.name)["error"] == "AddressError"


def test_expired_bundle_is_refused(pair: tuple[Node, Node]) -> None:
    coord, agent = pair
    sent = send(coord, agent, expires=3)
    deliver(sent, agent)
    agent.handler.round = 4
    agent.home.ingest(agent.handler)
    assert reason_of(agent, sent.name)["error"] == "ReplayError"


def test_handler_refusal_quarantines_and_sends_rejected_receipt(pair: tuple[Node, Node]) -> None:
    coord, agent = pair
    agent.handler.refuse_kinds.add("eval-result")
    sent = send(coord, agent)
    deliver(sent, agent)
    report = agent.home.ingest(agent.handler)
    assert report.rejected
    assert report.rejected[0]["error"] == "SchemaError"
    # The handler's own writes were rolled back with it; only its refusal hook wrote.
    assert [row[1] for row in agent.handler.handled()] == ["refused"]
    assert reason_of(agent, sent.name)["check"] == "handler"
    (receipt_path,) = agent.home.dirs.outbox_root.glob("*/receipt.*.llb")
    deliver(receipt_path, coord)
    coord.home.ingest(coord.handler)
    assert not sent.exists()


def test_bad_name_is_quarantined(pair: tuple[Node, Node]) -> None:
    _, agent = pair
    junk = agent.home.dirs.inbox / "Model-Update.NOT-A-HASH.llb"
    junk.write_bytes(b"junk")
    agent.home.ingest(agent.handler)
    assert reason_of(agent, junk.name)["check"] == "name"


def test_sequence_reuse_is_a_replay(pair: tuple[Node, Node]) -> None:
    coord, agent = pair
    first = send(coord, agent)
    deliver(first, agent)
    agent.home.ingest(agent.handler)
    # Roll the sender's counter back: a second, different bundle with the same seq.
    coord.home.conn.execute("UPDATE spool_meta SET value = 1 WHERE key = 'next_seq'")
    second = send(coord, agent, payload=small_payload(round=2))
    assert second.name != first.name
    deliver(second, agent)
    agent.home.ingest(agent.handler)
    assert reason_of(agent, second.name)["error"] == "ReplayError"


def test_pruning_bounds_the_seen_set_but_keeps_replay_protection(pair: tuple[Node, Node]) -> None:
    coord, agent = pair
    old = [send(coord, agent, round=r) for r in (1, 2)]
    for path in old:
        deliver(path, agent)
    agent.home.ingest(agent.handler)
    assert agent.home.state.count_seen() == 2
    assert agent.home.state.prune(before_round=3) == 2
    assert agent.home.state.count_seen() == 0
    for path in old:  # replayed after pruning: still refused, now by floor and horizon
        deliver(path, agent)
    report = agent.home.ingest(agent.handler)
    assert report.accepted == []
    assert {r["error"] for r in report.rejected} == {"ReplayError"}
    assert len(agent.handler.handled()) == 2


def test_outbox_copies_expire(pair: tuple[Node, Node]) -> None:
    coord, agent = pair
    keep = send(coord, agent, expires=10)
    drop = send(coord, agent, expires=2)
    assert coord.home.expire_outbox(current_round=5) == 1
    assert keep.exists()
    assert not drop.exists()


def test_recover_removes_uncommitted_outbox_files(pair: tuple[Node, Node]) -> None:
    coord, agent = pair
    sent = send(coord, agent)
    # Simulate a crash after the file was written but before the transaction committed.
    orphan = sent.with_name(sent.name.replace(sent.name.split(".")[1], "0" * 64))
    orphan.write_bytes(sent.read_bytes())
    coord.home.recover()
    assert sent.exists()
    assert not orphan.exists()


def test_receipt_payload_names_the_bundle(pair: tuple[Node, Node]) -> None:
    coord, agent = pair
    sent = send(coord, agent)
    deliver(sent, agent)
    agent.home.ingest(agent.handler)
    (receipt_path,) = agent.home.dirs.outbox_root.glob("*/receipt.*.llb")
    deliver(receipt_path, coord)
    seen_before = coord.handler.handled()
    coord.home.ingest(coord.handler)
    (row,) = [r for r in coord.handler.handled() if r not in seen_before]
    assert row[1] == Receipt.KIND
    assert parse_name(sent.name)[0] == "eval-result"
    assert coord.home.federation == FEDERATION


def test_shared_bundle_stays_until_every_recipient_receipted(
    tmp_path: Path, pair: tuple[Node, Node], identities: tuple[Identity, ...]
) -> None:
    coord, agent = pair
    known = dict(agent.handler.known)
    known[identities[2].key_id] = identities[2].public
    other = make_node(tmp_path / "other", identities[2], known)
    coord.handler.known[identities[2].key_id] = identities[2].public
    with coord.home.transaction():
        packed = coord.home.send(small_payload(), to=[agent.identity.public, other.identity.public])
    assert packed.path is not None
    assert packed.path.parent.name == "all"
    for node in (agent, other):
        deliver(packed.path, node)
        node.home.ingest(node.handler)
    (first,) = agent.home.dirs.outbox_root.glob("*/receipt.*.llb")
    deliver(first, coord)
    coord.home.ingest(coord.handler)
    assert packed.path.exists(), "one recipient's receipt must not take it from the other"
    (second,) = other.home.dirs.outbox_root.glob("*/receipt.*.llb")
    deliver(second, coord)
    coord.home.ingest(coord.handler)
    assert not packed.path.exists()


def test_receipt_from_a_non_recipient_clears_nothing(
    tmp_path: Path, pair: tuple[Node, Node], identities: tuple[Identity, ...]
) -> None:
    coord, agent = pair
    sent = send(coord, agent)
    intruder = make_node(tmp_path / "intruder", identities[2], dict(agent.handler.known))
    coord.handler.known[identities[2].key_id] = identities[2].public
    _, bundle_id = parse_name(sent.name)
    with intruder.home.transaction():
        forged = intruder.home.send(Receipt(bundle_id, "accepted"), to=[coord.identity.public])
    assert forged.path is not None
    deliver(forged.path, coord)
    coord.home.ingest(coord.handler)
    assert sent.exists()
