"""The inbox watcher: renames are handed over at once, slow copies only when whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from spool.watcher import InboxWatcher, is_complete
from tests.spool.nodes import Node, send

REPO = Path(__file__).resolve().parents[2]


def start(
    inbox: Path, **kwargs: float
) -> tuple[list[list[Path]], threading.Event, threading.Thread]:
    calls: list[list[Path]] = []
    stop = threading.Event()
    watcher = InboxWatcher(inbox, calls.append, **kwargs)
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    time.sleep(0.3)  # let the observer start
    return calls, stop, thread


def wait_for(predicate: object, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if callable(predicate) and predicate():
            return True
        time.sleep(0.02)
    return False


def test_rename_into_inbox_is_handed_over(pair: tuple[Node, Node], tmp_path: Path) -> None:
    coord, agent = pair
    bundle = send(coord, agent)
    calls, stop, thread = start(agent.home.dirs.inbox, settle=30.0)
    staged = agent.home.dirs.tmp / bundle.name
    staged.write_bytes(bundle.read_bytes())
    os.replace(staged, agent.home.dirs.inbox / bundle.name)
    assert wait_for(lambda: calls)
    stop.set()
    thread.join(5)
    assert calls == [[agent.home.dirs.inbox / bundle.name]]


def test_slow_copy_waits_until_whole(pair: tuple[Node, Node]) -> None:
    coord, agent = pair
    bundle = send(coord, agent)
    data = bundle.read_bytes()
    calls, stop, thread = start(agent.home.dirs.inbox, settle=30.0)
    target = agent.home.dirs.inbox / bundle.name
    with open(target, "wb") as f:
        for i in range(0, len(data), 50):
            f.write(data[i : i + 50])
            f.flush()
            time.sleep(0.02)
            assert calls == [] or i + 50 >= len(data), "handed over before it was whole"
    assert wait_for(lambda: calls)
    stop.set()
    thread.join(5)
    assert calls == [[target]]
    assert is_complete(target)


def test_stalled_partial_file_is_handed_over_after_settle(pair: tuple[Node, Node]) -> None:
    coord, agent = pair
    bundle = send(coord, agent)
    calls, stop, thread = start(agent.home.dirs.inbox, settle=0.5)
    target = agent.home.dirs.inbox / bundle.name
    target.write_bytes(bundle.read_bytes()[:100])
    assert wait_for(lambda: calls)  # ingest will then quarantine it as truncated
    stop.set()
    thread.join(5)
    assert not is_complete(target)


def test_temporary_names_are_ignored(pair: tuple[Node, Node]) -> None:
    _, agent = pair
    calls, stop, thread = start(agent.home.dirs.inbox, settle=0.2, rescan=0.2)
    (agent.home.dirs.inbox / ".partial.llb.tmp").write_bytes(b"x")
    time.sleep(1.0)
    stop.set()
    thread.join(5)
    assert calls == []


CHILD = textwrap.dedent("""
    import sys, threading
    from pathlib import Path
    from spool.watcher import InboxWatcher, stop_on_signals
    stop = threading.Event()
    stop_on_signals(stop)
    watcher = InboxWatcher(Path(sys.argv[1]), lambda paths: None)
    print("watching", flush=True)
    watcher.run(stop)
    print("stopped cleanly", flush=True)
""")


def test_sigterm_and_sigint_stop_cleanly(tmp_path: Path) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path / "inbox")],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "watching"
        child.send_signal(sig)
        out, _ = child.communicate(timeout=10)
        assert child.returncode == 0
        assert "stopped cleanly" in out
