"""kill -9 at every ingest step (one by one, and in batches): a restart processes no bundle
twice and loses none."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bundle.keys import Identity
from tests.spool.nodes import Node, deliver, make_node, send

REPO = Path(__file__).resolve().parents[2]
COORD = Identity(b"\x01" * 32, b"\x02" * 32)
AGENT = Identity(b"\x03" * 32, b"\x04" * 32)
KNOWN = {COORD.key_id: COORD.public, AGENT.key_id: AGENT.public}

CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import spool.home
    from bundle.keys import Identity
    from tests.spool.nodes import make_node

    root, step = Path(sys.argv[1]), sys.argv[2]
    batch, nth = int(sys.argv[3]), int(sys.argv[4])
    reached = []
    coord = Identity(b"\\x01" * 32, b"\\x02" * 32)
    agent = Identity(b"\\x03" * 32, b"\\x04" * 32)
    known = {coord.key_id: coord.public, agent.key_id: agent.public}

    def crash(at: str) -> None:
        reached.append(at)
        if at == step and reached.count(at) == nth:
            os.kill(os.getpid(), signal.SIGKILL)

    spool.home._crash_point = crash
    node = make_node(root / "agent", agent, known)
    node.home.ingest(node.handler, batch=batch)
""")

STEPS = ["verified", "handled", "receipted", "committed", "archived"]
# A batch verifies, handles and receipts each bundle, fsyncs the receipts (synced),
# commits once, then moves each file (archived).  Five bundles in batches of three:
# the 2nd time a step is reached is mid-batch, or (synced, committed) the second batch.
BATCH_STEPS = ["verified", "handled", "receipted", "synced", "committed", "archived"]


def agent_node(root: Path) -> Node:
    return make_node(root / "agent", AGENT, KNOWN)


@pytest.mark.parametrize("step", STEPS)
def test_kill_at_each_step_then_restart(tmp_path: Path, step: str) -> None:
    kill_then_restart(tmp_path, step, count=3, batch=1, nth=1)


@pytest.mark.parametrize("nth", [1, 2])
@pytest.mark.parametrize("step", BATCH_STEPS)
def test_kill_at_each_step_of_a_batch_then_restart(tmp_path: Path, step: str, nth: int) -> None:
    kill_then_restart(tmp_path, step, count=5, batch=3, nth=nth)


def kill_then_restart(tmp_path: Path, step: str, *, count: int, batch: int, nth: int) -> None:
    coord = make_node(tmp_path / "coord", COORD, KNOWN)
    agent = agent_node(tmp_path)
    sent = [send(coord, agent, round=1) for _ in range(count)]
    for path in sent:
        deliver(path, agent)
    agent.home.conn.close()

    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), step, str(batch), str(nth)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -9, child.stderr

    restarted = agent_node(tmp_path)
    restarted.home.recover()
    restarted.home.ingest(restarted.handler, batch=batch)

    handled = [row[0] for row in restarted.handler.handled()]
    assert len(handled) == len(set(handled)) == count, "each bundle handled exactly once"
    assert restarted.home.state.count_seen() == count
    archived = sorted(p.name for p in restarted.home.dirs.archive.iterdir())
    assert archived == sorted(p.name for p in sent), "none lost, all archived"
    assert list(restarted.home.dirs.inbox.iterdir()) == []
    assert list(restarted.home.dirs.quarantine.iterdir()) == []
    receipts = list(restarted.home.dirs.outbox_root.glob("*/receipt.*.llb"))
    assert len(receipts) == count, "one receipt per bundle, no orphan from the killed run"
    assert restarted.home.conn.execute("SELECT COUNT(*) FROM spool_outbox").fetchone() == (
        count,
    ), "every receipt file is the one its transaction recorded"
    assert list(restarted.home.dirs.root.rglob(".*.tmp")) == []
