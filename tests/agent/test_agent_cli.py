"""``lltoken-agent``: the commands, driven as an operator would (and ``watch`` as a real
process stopped by SIGTERM)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from agent.cli import cli
from agent.home import Agent
from bundle.keys import Identity
from bundle.payloads import Receipt
from tests.agent.test_agent_support import (
    FEDERATION,
    PASSPHRASE,
    CoordinatorSide,
    digits_model,
)

ROOT = Path(__file__).resolve().parents[2]
ENV = {"LLTOKEN_PASSPHRASE": PASSPHRASE, "LLTOKEN_HOME": ""}


def invoke(*args: str | Path, input: str | None = None, ok: bool = True) -> Result:
    result = CliRunner().invoke(cli, [str(a) for a in args], env=ENV, input=input)
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    return result


def as_json(result: Result) -> Any:
    return json.loads(result.stdout)


@pytest.fixture
def side(tmp_path: Path) -> CoordinatorSide:
    return CoordinatorSide(tmp_path / "coordinator-out")


@pytest.fixture
def home(tmp_path: Path, side: CoordinatorSide) -> Path:
    """An agent created through ``init --invite`` (fast KDF)."""
    invite = tmp_path / "invite.json"
    invite.write_text(json.dumps(side.invite()))
    path = tmp_path / "alice"
    result = invoke(
        "init",
        "--home",
        path,
        "--name",
        "alice",
        "--invite",
        invite,
        "--node-config",
        "partition-id=2",
        "--node-config",
        "debug=true",
        "--node-config",
        "site=lab 3",
        "--fast-kdf",
    )
    assert "fingerprint:" in result.output
    assert side.public.fingerprint in result.output
    return path


def _public(home: Path) -> Any:
    with Agent.inspect(home) as agent:
        return agent.public


def _bundles_for(side: CoordinatorSide, home: Path) -> list[Path]:
    agent = _public(home)
    arrays = digits_model()
    side.enroll([("alice", agent)], grant=40)
    return [
        side.roster([("alice", agent, "active")], [agent]),
        side.task(agent, arrays, config={"lr": 0.05}),
        side.global_model(arrays, [agent]),
        side.delta(agent),
    ]


def test_init_prints_the_fingerprint_and_config_round_trips(home: Path) -> None:
    assert as_json(invoke("config", "show", "--home", home, "--json")) == {
        "partition-id": 2,
        "debug": True,
        "site": "lab 3",
    }
    invoke("config", "set", "--home", home, "lr", "0.5")
    invoke("config", "set", "--home", home, "partition-id", "3")
    invoke("config", "unset", "--home", home, "debug")
    shown = as_json(invoke("config", "show", "--home", home, "--json"))
    assert shown == {"partition-id": 3, "site": "lab 3", "lr": 0.5}


def test_the_home_defaults_to_the_environment(home: Path) -> None:
    result = CliRunner().invoke(cli, ["status", "--json"], env={**ENV, "LLTOKEN_HOME": str(home)})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["name"] == "alice"


def test_ingest_train_wallet_and_ledger(home: Path, side: CoordinatorSide, tmp_path: Path) -> None:
    report = as_json(invoke("ingest", "--home", home, *_bundles_for(side, home), "--json"))
    assert len(report["accepted"]) == 4
    assert report["rejected"] == []
    status = invoke("status", "--home", home).output
    assert "round 1 train" in status
    assert side.public.fingerprint in status
    assert "40 confirmed" in status
    trained = as_json(invoke("train", "--home", home, "--json"))
    assert trained["round"] == 1
    assert trained["num_examples"] > 0
    update = side.open(Path(trained["file"]), _public(home), parents=digits_model())
    assert update.header.payload.encryption is not None
    assert as_json(invoke("wallet", "balance", "--home", home, "--json"))["spendable"] == 40
    verified = invoke("ledger", "verify", "--home", home).output
    assert verified.startswith("ok: 2 entries")
    shown = as_json(invoke("ledger", "show", "--home", home, "--json"))
    assert [e["kind"] for e in shown["entries"]] == ["enroll", "allocation"]
    assert shown["accounts"][0]["balance"] == 40
    history = invoke("wallet", "history", "--home", home).output
    assert "allocation" in history


def test_wallet_send_and_its_receipt(home: Path, side: CoordinatorSide) -> None:
    bob = Identity.generate()
    agent = _public(home)
    side.enroll([("alice", agent), ("bob", bob.public)], grant=40)
    members = [("alice", agent, "active"), ("bob", bob.public, "active")]
    invoke("ingest", "--home", home, side.roster(members, [agent]), side.delta(agent))
    refused = invoke("wallet", "send", "--home", home, "--to", "bob", "--amount", "41", ok=False)
    assert type(refused.exception).__name__ == "InsufficientFundsError"
    sent = as_json(
        invoke("wallet", "send", "--home", home, "--to", "bob", "--amount", "15", "--json")
    )
    assert sent["status"] == "pending"
    assert sent["balance"]["spendable"] == 25
    receipt = Receipt(bytes.fromhex(sent["bundle_id"]), "rejected", "insufficient balance")
    invoke("ingest", "--home", home, side.receipt(agent, receipt))
    history = invoke("wallet", "history", "--home", home).output
    assert "rejected" in history
    assert "insufficient balance" in history
    assert as_json(invoke("wallet", "balance", "--home", home, "--json"))["spendable"] == 40


def test_first_roster_asks_before_it_is_trusted(tmp_path: Path, side: CoordinatorSide) -> None:
    home = tmp_path / "a"
    invoke(
        "init", "--home", home, "--name", "alice", "--federation", FEDERATION.hex(), "--fast-kdf"
    )
    status = invoke("status", "--home", home).output
    assert "NOT PINNED" in status
    roster = side.roster([("alice", _public(home), "active")], [_public(home)])
    declined = invoke("ingest", "--home", home, roster, input="n\n", ok=False)
    assert side.public.fingerprint in declined.output
    assert type(declined.exception).__name__ == "NotPinnedError"
    accepted = invoke("ingest", "--home", home, input="y\n")
    assert "1 accepted" in accepted.output
    assert side.public.fingerprint in invoke("status", "--home", home).output


def test_sync_with_a_stick(home: Path, side: CoordinatorSide, tmp_path: Path) -> None:
    stick = tmp_path / "stick"
    agent = _public(home)
    folder = stick / "lltoken" / FEDERATION.hex() / agent.key_id.hex() / side.public.key_id.hex()
    folder.mkdir(parents=True)
    roster = side.roster([("alice", agent, "active")], [agent])
    (folder / roster.name).write_bytes(roster.read_bytes())
    result = as_json(invoke("sync", "--home", home, stick, "--json"))
    assert result["accepted"] == [roster.name]
    assert result["safe_to_remove"] is True
    assert result["files_out"] == 2  # the enrollment request and the roster's receipt
    text = invoke("sync", "--home", home, stick).output
    assert "safe to remove the stick" in text


def test_doctor_reports_checks(home: Path) -> None:
    result = invoke("doctor", "--home", home, "--json", ok=False)
    checks = {c["check"] for c in json.loads(result.stdout)}
    assert {"offline mode", "key file permissions"} <= checks


def _cli_process(*args: str | Path, **kwargs: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "LLTOKEN_PASSPHRASE": PASSPHRASE, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", "from agent.cli import main; main()", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_errors_exit_with_their_code(home: Path) -> None:
    process = _cli_process("train", "--home", home)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 41
    assert err.startswith("error: no train task received yet")


def test_watch_ingests_arrivals_and_stops_cleanly_on_sigterm(
    home: Path, side: CoordinatorSide
) -> None:
    agent = _public(home)
    roster = side.roster([("alice", agent, "active")], [agent])
    inbox = home / "spool" / "inbox"
    process = _cli_process("watch", "--home", home)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("watching"), line
        staged = inbox / f".{roster.name}.tmp"
        staged.write_bytes(roster.read_bytes())
        staged.rename(inbox / roster.name)  # arrives whole, by rename
        archived = home / "spool" / "archive" / roster.name
        deadline = time.monotonic() + 30
        while not archived.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert archived.exists()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "1 accepted" in out
    assert out.rstrip().endswith("stopped")
    with Agent.open(home, PASSPHRASE) as reopened:  # the lock was released
        assert reopened.enrollment() == "active"
