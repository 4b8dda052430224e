"""Batched ingest: the same outcomes as one by one, and nothing half-done when it fails."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bundle.envelope import OpenedBundle
from bundle.keys import Identity
from bundle.payloads import Transaction
from spool.home import IngestReport, Outcome
from tests.spool.nodes import Node, RecordingHandler, deliver, make_node, send

COORD = Identity(b"\x01" * 32, b"\x02" * 32)
AGENT = Identity(b"\x03" * 32, b"\x04" * 32)
STRANGER = Identity(b"\x05" * 32, b"\x06" * 32)
KNOWN = {COORD.key_id: COORD.public, AGENT.key_id: AGENT.public}


def transfer() -> Transaction:
    return Transaction(COORD.key_id, AGENT.key_id, 5, secrets.token_bytes(16), 10)


def mixed_stick(tmp_path: Path) -> tuple[list[Path], Path]:
    """Bundles for AGENT of every kind of outcome, and one it will already have ingested.

    Good ones, an unknown sender, a bad name, a kind the handler refuses, and a reused
    sequence number (whichever of the pair comes first in name order is accepted).
    """
    coord = make_node(tmp_path / "coord", COORD, KNOWN)
    stranger = make_node(tmp_path / "stranger", STRANGER, {})
    agent = make_node(tmp_path / "scratch-agent", AGENT, KNOWN)
    earlier = send(coord, agent, round=1)
    files = [send(coord, agent, round=1) for _ in range(5)]
    files.append(send(stranger, agent, round=1))
    files.append(send(coord, agent, payload=transfer(), round=1))
    seq = coord.home.state.next_seq
    files.append(send(coord, agent, round=1))
    coord.home.conn.execute("UPDATE spool_meta SET value = ? WHERE key = 'next_seq'", (seq,))
    files.append(send(coord, agent, round=2))
    junk = tmp_path / "Model-Update.NOT-A-HASH.llb"
    junk.write_bytes(b"junk")
    files.append(junk)
    files.append(earlier)  # a second delivery of a bundle ingested before
    return files, earlier


def outcome_of(node: Node, report: IngestReport) -> dict[str, Any]:
    quarantine = node.home.dirs.quarantine
    # Without the time, and with paths relative to the home (two homes are compared).
    root = str(node.home.dirs.root)
    reasons = {
        p.name: {
            k: v.replace(root, "<home>") if isinstance(v, str) else v
            for k, v in json.loads(p.read_text()).items()
            if k != "when"
        }
        for p in quarantine.glob("*.reason.json")
    }
    return {
        "accepted": sorted(report.accepted),
        "rejected": sorted((r["file"], r.get("error")) for r in report.rejected),
        "duplicates": sorted(report.duplicates),
        "handled": sorted((row[0], row[1]) for row in node.handler.handled()),
        "seen": node.home.state.count_seen(),
        "archive": sorted(p.name for p in node.home.dirs.archive.iterdir()),
        "quarantine": reasons,
        "receipts": len(list(node.home.dirs.outbox_root.glob("*/receipt.*.llb"))),
        "outbox rows": node.home.conn.execute("SELECT COUNT(*) FROM spool_outbox").fetchone(),
        "inbox": sorted(p.name for p in node.home.dirs.inbox.iterdir()),
    }


@pytest.mark.parametrize("batch", [2, 4, 100])
def test_batches_end_exactly_as_one_by_one(tmp_path: Path, batch: int) -> None:
    files, earlier = mixed_stick(tmp_path)
    results = []
    for size in (1, batch):
        node = make_node(tmp_path / f"agent-{size}", AGENT, KNOWN)
        node.handler.refuse_kinds.add("transaction")
        deliver(earlier, node)
        node.home.ingest(node.handler, batch=size)
        for path in files:
            deliver(path, node)
        results.append(outcome_of(node, node.home.ingest(node.handler, batch=size)))
    one, batched = results
    assert batched == one
    assert len(one["accepted"]) == 6
    assert {error for _, error in one["rejected"]} == {
        "UnknownSenderError",
        "SchemaError",
        "ReplayError",
        "FormatError",
    }
    assert one["duplicates"] == [earlier.name]
    assert one["inbox"] == []


def test_batch_receipts_clear_the_senders_outbox(tmp_path: Path) -> None:
    coord = make_node(tmp_path / "coord", COORD, KNOWN)
    agent = make_node(tmp_path / "agent", AGENT, KNOWN)
    sent = [send(coord, agent) for _ in range(5)]
    for path in sent:
        deliver(path, agent)
    assert len(agent.home.ingest(agent.handler, batch=3).accepted) == 5
    receipts = list(agent.home.dirs.outbox_root.glob("*/receipt.*.llb"))
    assert len(receipts) == 5
    for path in receipts:
        deliver(path, coord)
    assert len(coord.home.ingest(coord.handler, batch=3).accepted) == 5
    assert not any(path.exists() for path in sent)
    assert coord.home.outbox_files() == [], "receipts are not receipted"


def test_same_path_twice_in_a_batch_is_ingested_once(tmp_path: Path) -> None:
    coord = make_node(tmp_path / "coord", COORD, KNOWN)
    agent = make_node(tmp_path / "agent", AGENT, KNOWN)
    path = deliver(send(coord, agent), agent)
    report = agent.home.ingest(agent.handler, [path, path], batch=8)
    assert report.accepted == [path.name]
    assert len(agent.handler.handled()) == 1
    assert (agent.home.dirs.archive / path.name).exists()


def test_batch_below_one_is_refused(tmp_path: Path) -> None:
    agent = make_node(tmp_path / "agent", AGENT, KNOWN)
    with pytest.raises(ValueError, match="at least 1"):
        agent.home.ingest(agent.handler, batch=0)


@dataclass
class FailingHandler(RecordingHandler):
    """Fails (a bug, not a refusal) on its ``fail_at``-th bundle."""

    fail_at: int = 3
    calls: int = 0

    def handle(self, bundle: OpenedBundle) -> Outcome:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("handler bug")
        return super().handle(bundle)


def assert_rolled_back(agent: Node, delivered: list[Path]) -> None:
    home = agent.home
    assert agent.handler.handled() == []
    assert home.state.count_seen() == 0
    assert home.conn.execute("SELECT COUNT(*) FROM spool_outbox").fetchone() == (0,)
    assert sorted(home.dirs.inbox.iterdir()) == sorted(delivered)
    assert list(home.dirs.outbox_root.rglob("*.llb")) == [], "receipts of the failed batch"
    assert list(home.dirs.root.rglob(".*.tmp")) == []
    assert list(home.dirs.archive.iterdir()) == []


def assert_ingested_once(agent: Node, delivered: list[Path]) -> None:
    home = agent.home
    handled = [row[0] for row in agent.handler.handled()]
    assert len(handled) == len(set(handled)) == len(delivered)
    assert home.state.count_seen() == len(delivered)
    assert sorted(p.name for p in home.dirs.archive.iterdir()) == sorted(p.name for p in delivered)
    assert list(home.dirs.inbox.iterdir()) == []
    assert len(list(home.dirs.outbox_root.glob("*/receipt.*.llb"))) == len(delivered)
    assert list(home.dirs.root.rglob(".*.tmp")) == []


def setup_delivered(tmp_path: Path, count: int = 5) -> tuple[Node, list[Path]]:
    coord = make_node(tmp_path / "coord", COORD, KNOWN)
    agent = make_node(tmp_path / "agent", AGENT, KNOWN)
    return agent, [deliver(send(coord, agent), agent) for _ in range(count)]


def test_handler_bug_rolls_back_the_whole_batch_and_its_receipts(tmp_path: Path) -> None:
    agent, delivered = setup_delivered(tmp_path)
    failing = FailingHandler(agent.home.conn, dict(KNOWN))
    with pytest.raises(RuntimeError, match="handler bug"):
        agent.home.ingest(failing, batch=10)
    assert_rolled_back(agent, delivered)
    agent.home.ingest(agent.handler, batch=10)
    assert_ingested_once(agent, delivered)


def test_failed_receipt_fsync_rolls_back_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, delivered = setup_delivered(tmp_path)

    def boom(fd: int) -> None:
        raise OSError(5, "injected I/O error")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="injected"):
        agent.home.ingest(agent.handler, batch=10)
    monkeypatch.undo()
    assert_rolled_back(agent, delivered)
    agent.home.ingest(agent.handler, batch=10)
    assert_ingested_once(agent, delivered)


def test_failed_archive_move_is_finished_by_recover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, delivered = setup_delivered(tmp_path)
    real_replace = os.replace
    moved: list[str] = []

    def replace(src: Any, dst: Any) -> None:
        if Path(dst).parent == agent.home.dirs.archive and len(moved) == 2:
            raise OSError(5, "injected I/O error")
        real_replace(src, dst)
        if Path(dst).parent == agent.home.dirs.archive:
            moved.append(Path(dst).name)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="injected"):
        agent.home.ingest(agent.handler, batch=10)
    monkeypatch.undo()
    assert agent.home.state.count_seen() == 5, "the batch committed before the moves"
    agent.home.recover()
    report = agent.home.ingest(agent.handler, batch=10)
    assert report.accepted == report.duplicates == []
    assert_ingested_once(agent, delivered)
