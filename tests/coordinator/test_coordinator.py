"""Coordinator rules: which updates count, enrollment changes, the CLI and doctor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from agent.home import Agent
from bundle.arrays import array_hash
from bundle.envelope import pack_bundle
from bundle.payloads import ModelUpdate
from coordinator.cli import cli
from coordinator.home import Coordinator, NotFoundError
from coordinator.rounds import RoundError, close_round, open_round
from coordinator.simulate import PASSPHRASE
from spool.doctor import run_checks
from spool.identity_files import public_to_json
from spool.media import sync_media


@pytest.fixture
def federation(tmp_path: Path) -> tuple[Coordinator, list[Agent], Path]:
    stick = tmp_path / "media"
    stick.mkdir()
    coord = Coordinator.init(
        tmp_path / "coordinator",
        "rules",
        PASSPHRASE,
        rounds=3,
        run_config={"local-epochs": 1, "lr": 0.1},
        fast_kdf=True,
    )
    invite = {
        "federation_name": "rules",
        "federation_id": coord.config.federation_id.hex(),
        "coordinator": public_to_json(coord.identity.public),
    }
    agents = [
        Agent.init(
            tmp_path / f"a{i}",
            f"a{i}",
            PASSPHRASE,
            invite=invite,
            node_config={"partition-id": i, "num-partitions": 3},
            fast_kdf=True,
        )
        for i in range(3)
    ]
    for agent in agents:
        agent.sync(stick)
    sync_media(coord.spool, coord, stick)
    for row in coord.state.agents("pending"):
        coord.approve(row.name)
    open_round(coord)
    sync_media(coord.spool, coord, stick)
    for agent in agents:
        agent.sync(stick)
    yield coord, agents, stick
    for agent in agents:
        agent.close()
    coord.close()


def forged_update(
    coord: Coordinator,
    agent: Agent,
    *,
    parent: bytes | None = None,
    round: int = 1,
    shape_change: bool = False,
) -> Path:
    """An update signed by the agent's own key, but breaking one rule."""
    arrays = coord.global_arrays()
    if shape_change:
        arrays = [(n, np.zeros((2, 2), np.float32)) for n, _ in arrays]
    update = ModelUpdate(round, parent or coord.model_hash, 10, {"train_loss": 0.1}, arrays)
    packed = pack_bundle(
        coord.spool.dirs.inbox,
        update,
        agent.identity,
        federation=coord.config.federation_id,
        round=round,
        seq=10_000,
        recipients=[coord.identity.public],
        encrypt=True,
        parents={n: (array_hash(a), a) for n, a in coord.global_arrays()},
    )
    assert packed.path is not None
    return packed.path


def reason(coord: Coordinator, path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads(
        (coord.spool.dirs.quarantine / f"{path.name}.reason.json").read_text()
    )
    return data


def test_update_from_wrong_parent_is_refused_and_costs_reputation(
    federation: tuple[Coordinator, list[Agent], Path],
) -> None:
    coord, agents, _ = federation
    before = coord.find_agent("a0").reputation
    path = forged_update(coord, agents[0], parent=b"\x01" * 32)
    report = coord.spool.ingest(coord)
    assert [r["file"] for r in report.rejected] == [path.name]
    assert "wrong parent model" in str(reason(coord, path)["reason"])
    assert coord.find_agent("a0").reputation < before


def test_update_with_other_shapes_is_refused(
    federation: tuple[Coordinator, list[Agent], Path],
) -> None:
    coord, agents, _ = federation
    path = forged_update(coord, agents[1], shape_change=True)
    coord.spool.ingest(coord)
    assert "differ from the global model" in str(reason(coord, path)["reason"])


def test_revoked_agent_is_quarantined(federation: tuple[Coordinator, list[Agent], Path]) -> None:
    coord, agents, _ = federation
    coord.revoke("a2")
    path = forged_update(coord, agents[2])
    coord.spool.ingest(coord)
    assert reason(coord, path)["error"] == "UnknownSenderError"
    assert coord.status()["agents"][2]["status"] == "revoked"


def test_late_update_gets_a_late_receipt_and_is_not_aggregated(
    federation: tuple[Coordinator, list[Agent], Path],
) -> None:
    coord, agents, stick = federation
    agents[0].train()
    agents[0].sync(stick)
    sync_media(coord.spool, coord, stick)
    summary = close_round(coord)
    assert summary["participants"] == 1
    late = agents[1].train()
    assert late.path is not None
    shutil.copy(late.path, coord.spool.dirs.inbox / late.path.name)
    coord.spool.ingest(coord)
    rows = coord.state.updates(1, "late")
    assert [r["agent"] for r in rows] == [agents[1].key_id]
    assert coord.state.round_row(1)["summary"]["participants"] == 1  # type: ignore[index]


def test_close_needs_quorum_unless_forced(
    federation: tuple[Coordinator, list[Agent], Path],
) -> None:
    coord, _, _ = federation
    with pytest.raises(RoundError, match="cannot close yet"):
        close_round(coord)
    summary = close_round(coord, force=True)
    assert summary["participants"] == 0
    assert summary["aggregated"] is False
    assert summary["next_round"]["round"] == 2


def test_cli_init_invite_enroll_status(tmp_path: Path) -> None:
    runner = CliRunner()
    home = tmp_path / "fed"
    secret = tmp_path / "pass"
    secret.write_text("a long test passphrase\n")
    common = ["--home", str(home), "--passphrase-file", str(secret)]
    result = runner.invoke(cli, ["init", *common, "--name", "demo", "--rounds", "2", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert len(info["federation_id"]) == 32
    assert (home / "config.toml").read_text().count("#") > 20  # documented
    result = runner.invoke(
        cli, ["invite", "--home", str(home), "--out", str(tmp_path / "invite.json")]
    )
    assert result.exit_code == 0, result.output
    invite = json.loads((tmp_path / "invite.json").read_text())
    assert invite["coordinator"]["fingerprint"] == info["fingerprint"]
    result = runner.invoke(cli, ["enroll", *common, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == []
    result = runner.invoke(cli, ["status", *common])
    assert result.exit_code == 0, result.output
    assert "round 0/2" in result.output
    # A wrong passphrase is our typed error with its own exit code, not a traceback.
    secret.write_text("wrong\n")
    result = runner.invoke(cli, ["status", *common])
    assert result.exit_code != 0


def test_doctor_reports_each_check(tmp_path: Path) -> None:
    coord = Coordinator.init(tmp_path / "c", "doc", PASSPHRASE, fast_kdf=True)
    coord.close()
    checks = {c.name: c for c in run_checks(tmp_path / "c")}
    assert set(checks) == {
        "offline mode",
        "network interfaces",
        "key file permissions",
        "dependency versions",
        "free disk space",
        "Flower telemetry and update check",
    }
    assert checks["key file permissions"].status == "ok"
    (tmp_path / "c" / "keystore.json").chmod(0o644)
    assert {c.name: c for c in run_checks(tmp_path / "c")}["key file permissions"].status == "fail"


def test_agents_are_found_by_name_before_key_id_prefix(
    federation: tuple[Coordinator, list[Agent], Path],
) -> None:
    coord, agents, _ = federation
    for agent in agents:
        assert coord.find_agent(agent.config.name).key_id == agent.key_id
        assert coord.find_agent(agent.key_id.hex()[:8]).key_id == agent.key_id
        assert coord.find_agent(agent.identity.fingerprint).key_id == agent.key_id
    with pytest.raises(NotFoundError):
        coord.find_agent(agents[0].key_id.hex()[:4])  # too short to be a key id


def test_agent_revoked_while_collecting_is_left_out_of_the_close(
    federation: tuple[Coordinator, list[Agent], Path],
) -> None:
    coord, agents, stick = federation
    for agent in agents[:2]:
        agent.train()
        agent.sync(stick)
    sync_media(coord.spool, coord, stick)
    coord.revoke("a0")
    summary = close_round(coord, force=True)
    assert [r["agent"] for r in summary["rewards"]] == ["a1"]
    assert summary["participants"] == 1
