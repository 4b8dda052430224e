"""The main job: a whole federation on one machine, through real bundles and real folders.

Under ``base_path``::

    coordinator/      a normal coordinator home
    agents/<name>/    one normal agent home per agent
    media/            the simulated USB stick the courier carries

Each agent trains the example Flower ClientApp on its own non-IID shard of the digits
data; every message crosses the "air gap" as a signed bundle on the stick, moved by
``sync`` exactly as operators would.  Options add dropouts, late and duplicated
deliveries, and malicious agents (scaled or noise updates with inflated self-reports) to
show that measured rewards and robust strategies respond.  At the end it writes
``tokenization_proof.json``, ``system_metrics.json`` and ``report.html`` beside them.

This is the one module allowed to drive agent code from the coordinator package: it plays
the agents and the courier.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.example_model import load_test
from agent.home import Agent
from bundle import pqsig
from bundle.errors import FormatError, LLTokenError
from coordinator.audit import export_home, verify_home
from coordinator.home import Coordinator
from coordinator.report import render
from coordinator.rounds import close_round, open_round
from spool.identity_files import public_to_json
from spool.media import SyncSummary, sync_media

# Throwaway homes; real homes prompt for a passphrase.
PASSPHRASE = "simulation-only-passphrase"  # noqa: S105
SIMULATION_MARKER = ".lltoken-simulation"
ROBUST_WITH_F = ("Krum", "MultiKrum", "Bulyan")


@dataclass
class SimulationResult:
    base_path: Path
    rounds: list[dict[str, Any]]
    balances: dict[str, int]
    accuracy: float | None
    malicious: list[str]
    proof_path: Path
    metrics_path: Path
    report_path: Path
    seconds: float
    transfer: dict[str, Any] | None = None


@dataclass
class _Traffic:
    bytes_in: int = 0
    bytes_out: int = 0

    def add(self, summary: SyncSummary) -> None:
        self.bytes_in += summary.bytes_in
        self.bytes_out += summary.bytes_out


@dataclass
class Simulation:
    """``Simulation(base_path, num_agents).run(rounds)``: see the module docstring."""

    base_path: Path
    num_agents: int = 6
    strategy: str = "FedAvg"
    seed: int = 0
    dropout: float = 0.0
    malicious: int = 0
    late: float = 0.0
    duplicate: float = 0.0
    local_epochs: int = 5
    lr: float = 0.1
    echo: Callable[[str], None] = print
    strategy_params: dict[str, Any] = field(default_factory=dict)
    # The hybrid Ed25519 + ML-DSA-65 suite for every identity (needs the [pq] extra).
    pq: bool = False

    def run(self, rounds: int = 5) -> SimulationResult:
        """Run the whole federation for ``rounds`` rounds.

        Raises:
            LLTokenError: any check that fails along the way (nothing is faked around it).
        """
        started = time.monotonic()
        logging.getLogger("flwr").setLevel(logging.ERROR)  # our summaries say it better
        if self.num_agents < 1 or not 0 <= self.malicious <= self.num_agents:
            raise ValueError("need at least one agent and 0 <= malicious <= agents")
        if self.pq:
            pqsig.require()  # fail before the old run is deleted
        rng = random.Random(self.seed)  # noqa: S311 (reproducible courier, not crypto)
        base = self.base_path
        if base.exists():
            # Only ever replace an earlier simulation (or an empty folder), never a folder
            # that happens to share the name.
            if any(base.iterdir()) and not (base / SIMULATION_MARKER).exists():
                raise FormatError(
                    "base path exists and is not an earlier simulation; "
                    "choose another --base-path or remove it yourself",
                    where=str(base),
                )
            shutil.rmtree(base)
        stick = base / "media"
        stick.mkdir(parents=True)
        (base / SIMULATION_MARKER).write_text("made by lltoken-coordinator simulate\n")
        coord = self._make_coordinator(base, rounds)
        traffic = _Traffic()
        agents = self._make_agents(base, coord)
        bad = {a.config.name for a in agents[len(agents) - self.malicious :]}
        try:
            self._enroll(coord, agents, stick, traffic)
            open_round(coord)
            summaries = []
            for _ in range(rounds):
                round_started = time.monotonic()
                traffic = _Traffic()
                self._carry(coord, agents, stick, traffic, coordinator_first=True)
                held_back, repeats = self._train(agents, stick, traffic, rng)
                traffic.add(coord_sync(coord, stick))
                for original, copy in repeats:  # the courier delivers an old stick again
                    shutil.copy(copy, original)
                traffic.add(coord_sync(coord, stick))
                summary = close_round(coord, force=True)
                for held in held_back:  # arrives after close: gets a 'late' receipt
                    shutil.copy(held, coord.spool.dirs.inbox / held.name.removeprefix("late-"))
                coord.spool.ingest(coord)
                traffic.add(coord_sync(coord, stick))
                summary.update(
                    bytes_moved=traffic.bytes_in + traffic.bytes_out,
                    seconds=round(time.monotonic() - round_started, 3),
                    late_deliveries=len(held_back),
                )
                summaries.append(summary)
                self._print_summary(summary, bad)
            transfer = self._transfer_demo(coord, agents, stick)
            self._carry(coord, agents, stick, _Traffic(), coordinator_first=True)
            result = self._finish(base, coord, agents, summaries, bad, started, transfer)
        finally:
            for agent in agents:
                agent.close()
            coord.close()
        return result

    # ------------------------------------------------------------------ setup

    def _make_coordinator(self, base: Path, rounds: int) -> Coordinator:
        home = base / "coordinator"
        home.mkdir(parents=True)
        x_test, y_test = load_test()
        np.savez(home / "validation.npz", X=x_test, y=y_test)
        params = dict(self.strategy_params)
        if self.strategy in ROBUST_WITH_F and self.malicious:
            # Krum needs n >= 2f + 3 replies (Bulyan 4f + 3): tolerate as many as fit.
            per_f = 4 if self.strategy == "Bulyan" else 2
            tolerated = max(0, min(self.malicious, (self.num_agents - 3) // per_f))
            params.setdefault("num_malicious_nodes", tolerated)
        return Coordinator.init(
            home,
            "simulation",
            PASSPHRASE,
            strategy=self.strategy,
            strategy_params=params,
            rounds=rounds,
            quorum=1,
            seed=self.seed,
            validation="validation.npz",
            run_config={"local-epochs": self.local_epochs, "lr": self.lr},
            fast_kdf=True,
            pq=self.pq,
        )

    def _make_agents(self, base: Path, coord: Coordinator) -> list[Agent]:
        invite = {
            "federation_name": coord.config.federation_name,
            "federation_id": coord.config.federation_id.hex(),
            "coordinator": public_to_json(coord.identity.public),
        }
        agents = []
        for i in range(self.num_agents):
            name = f"agent-{i:02d}"
            malicious = i >= self.num_agents - self.malicious
            node_config: dict[str, Any] = {"partition-id": i, "num-partitions": self.num_agents}
            if malicious:
                node_config["attack"] = "scale" if i % 2 == 0 else "noise"
            agents.append(
                Agent.init(
                    base / "agents" / name,
                    name,
                    PASSPHRASE,
                    invite=invite,
                    node_config=node_config,
                    app="agent.example_app:attacker_app" if malicious else None,
                    fast_kdf=True,
                )
            )
        return agents

    def _enroll(
        self, coord: Coordinator, agents: list[Agent], stick: Path, traffic: _Traffic
    ) -> None:
        for agent in agents:
            traffic.add(agent.sync(stick))
        traffic.add(coord_sync(coord, stick))
        for row in coord.state.agents("pending"):
            coord.approve(row.key_id.hex())
        self.echo(
            f"enrolled {len(agents)} agents; federation "
            f"{coord.config.federation_id.hex()} ({self.strategy})"
        )

    # ------------------------------------------------------------------ the courier

    def _carry(
        self,
        coord: Coordinator,
        agents: list[Agent],
        stick: Path,
        traffic: _Traffic,
        *,
        coordinator_first: bool,
    ) -> None:
        """One courier trip: the stick visits the coordinator and every agent."""
        if coordinator_first:
            traffic.add(coord_sync(coord, stick))
        for agent in agents:
            traffic.add(agent.sync(stick))
        if not coordinator_first:
            traffic.add(coord_sync(coord, stick))

    def _train(
        self, agents: list[Agent], stick: Path, traffic: _Traffic, rng: random.Random
    ) -> tuple[list[Path], list[tuple[Path, Path]]]:
        """Agents train (unless they drop out) and sync.  Returns the updates held back
        to arrive late, and (stick path, saved copy) of updates to be delivered twice."""
        held_back: list[Path] = []
        repeats: list[tuple[Path, Path]] = []
        for agent in agents:
            if not agent.tasks("pending"):
                continue
            if rng.random() < self.dropout:
                self.echo(f"  {agent.config.name} drops out this round")
                continue
            result = agent.train()
            if result.path is None:
                continue
            if rng.random() < self.late:
                late_copy = agent.root / f"late-{result.path.name}"
                shutil.copy(result.path, late_copy)
                result.path.unlink()
                held_back.append(late_copy)
                continue
            traffic.add(agent.sync(stick))
            if rng.random() < self.duplicate:
                for on_stick in stick.glob(f"lltoken/*/*/*/{result.path.name}"):
                    saved = agent.root / f"again-{on_stick.name}"
                    shutil.copy(on_stick, saved)
                    repeats.append((on_stick, saved))
        return held_back, repeats

    def _transfer_demo(
        self, coord: Coordinator, agents: list[Agent], stick: Path
    ) -> dict[str, Any] | None:
        """An offline transfer between two honest agents, confirmed through the ledger."""
        if len(agents) < 2:
            return None
        self._carry(coord, agents, stick, _Traffic(), coordinator_first=True)
        sender, recipient = agents[0], agents[1]
        spendable = sender.balance().spendable
        if spendable <= 0:
            return None
        amount = max(1, spendable // 10)
        record = sender.send(recipient.config.name, amount, memo="simulation transfer")
        sender.sync(stick)
        coord_sync(coord, stick)
        sender.sync(stick)
        status = next((t for t in sender.transfers() if t.nonce == record.nonce), record)
        self.echo(
            f"transfer: {sender.config.name} -> {recipient.config.name} {amount} "
            f"tokens: {status.status}"
        )
        return {
            "from": sender.config.name,
            "to": recipient.config.name,
            "amount": amount,
            "status": status.status,
        }

    # ------------------------------------------------------------------ output

    def _print_summary(self, summary: dict[str, Any], bad: set[str]) -> None:
        self.echo(f"Round {summary['round']} Summary:")
        self.echo(f"  Participants: {summary['participants']}")
        self.echo(f"  Tokens distributed: {summary['tokens_distributed']}")
        self.echo(f"  Average quality: {summary['average_quality']:.3f}")
        if summary.get("accuracy") is not None:
            self.echo(f"  Global loss: {summary['loss']:.4f}  accuracy: {summary['accuracy']:.3f}")
        for r in summary["rewards"]:
            flag = "  (malicious)" if r["agent"] in bad else ""
            self.echo(
                f"    {r['agent']}: quality {r['quality']:.3f}, {r['tokens']} tokens, "
                f"reputation {r['reputation']:.2f}{flag}"
            )

    def _finish(
        self,
        base: Path,
        coord: Coordinator,
        agents: list[Agent],
        summaries: list[dict[str, Any]],
        bad: set[str],
        started: float,
        transfer: dict[str, Any] | None,
    ) -> SimulationResult:
        status = coord.status()
        balances = {a["name"]: a["balance"] for a in status["agents"]}
        proof_path = base / "tokenization_proof.json"
        export_home(coord.root, proof_path, store=coord.ledger)
        try:
            report = verify_home(coord.root, proof_path, store=coord.ledger)
            verification: dict[str, Any] = {"ok": True, "size": report.size}
        except LLTokenError as e:
            verification = {"ok": False, "error": str(e)}
        metrics = {
            "federation": coord.config.federation_name,
            "strategy": self.strategy,
            "agents": len(agents),
            "malicious": sorted(bad),
            "rounds": [
                {
                    "round": s["round"],
                    "participants": s["participants"],
                    "tokens": s["tokens_distributed"],
                    "average_quality": s["average_quality"],
                    "accuracy": s["accuracy"],
                    "loss": s["loss"],
                    "bytes_moved": s["bytes_moved"],
                    "bytes_in_updates": s["bytes_in"],
                    "seconds": s["seconds"],
                    "close_seconds": s["close_seconds"],
                    "late": s["late_deliveries"],
                    "tokens_per_agent": {r["agent"]: r["tokens"] for r in s["rewards"]},
                }
                for s in summaries
            ],
            "balances": balances,
            "total_supply": status["total_supply"],
            "ledger": {**status["checkpoint"], "verified": verification["ok"]},
            "transfer": transfer,
        }
        metrics_path = base / "system_metrics.json"
        metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
        report_path = base / "report.html"
        report_path.write_text(render(coord.state.summaries(), status, verification))
        accuracy = summaries[-1]["accuracy"] if summaries else None
        self.echo("Final balances:")
        for name, balance in sorted(balances.items()):
            self.echo(f"  {name}: {balance}{'  (malicious)' if name in bad else ''}")
        if accuracy is not None:
            self.echo(f"Global accuracy after {len(summaries)} rounds: {accuracy:.3f}")
        self.echo(
            f"Ledger verified: {verification['ok']}; wrote {proof_path.name}, "
            f"{metrics_path.name}, {report_path.name} in {base}"
        )
        return SimulationResult(
            base,
            summaries,
            balances,
            accuracy,
            sorted(bad),
            proof_path,
            metrics_path,
            report_path,
            time.monotonic() - started,
            transfer,
        )


def coord_sync(coord: Coordinator, stick: Path) -> SyncSummary:
    return sync_media(coord.spool, coord, stick)


__all__ = ["Simulation", "SimulationResult"]
