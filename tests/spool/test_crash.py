"""kill -9 at every ingest step: a restart processes no bundle twice and loses none."""

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
    coord = Identity(b"\\x01" * 32, b"\\x02" * 32)
    agent = Identity(b"\\x03" * 32, b"\\x04" * 32)
    known = {coord.key_id: coord.public, agent.key_id: agent.public}

    def crash(at: str) -> None:
        if at == step:
            os.kill(os.getpid(), signal.SIGKILL)

    spool.home._crash_point = crash
    node = make_node(root / "agent", agent, known)
    node.home.ingest(node.handler)
""")

STEPS = ["verified", "handled", "receipted", "committed", "archived"]


def agent_node(root: Path) -> Node:
    return make_node(root / "agent", AGENT, KNOWN)


@pytest.mark.parametrize("step", STEPS)
def test_kill_at_each_step_then_restart(tmp_path: Path, step: str) -> None:
    coord = make_node(tmp_path / "coord", COORD, KNOWN)
    agent = agent_node(tmp_path)
    sent = [send(coord, agent, round=1) for _ in range(3)]
    for path in sent:
        deliver(path, agent)
    agent.home.conn.close()

    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), step],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -9, child.stderr

    restarted = agent_node(tmp_path)
    restarted.home.recover()
    restarted.home.ingest(restarted.handler)

    handled = [row[0] for row in restarted.handler.handled()]
    assert len(handled) == len(set(handled)) == 3, "each bundle handled exactly once"
    assert restarted.home.state.count_seen() == 3
    archived = sorted(p.name for p in restarted.home.dirs.archive.iterdir())
    assert archived == sorted(p.name for p in sent), "none lost, all archived"
    assert list(restarted.home.dirs.inbox.iterdir()) == []
    assert list(restarted.home.dirs.quarantine.iterdir()) == []
    receipts = list(restarted.home.dirs.outbox_root.glob("*/receipt.*.llb"))
    assert len(receipts) == 3, "one receipt per bundle, no orphan from the killed run"
