"""Helpers for the agent tests: the coordinator's side of the wire, built from the real
bundle layer (real keys, real envelopes, a real ledger checked by ``bundle.ledger``'s
rules, real Merkle proofs and signed checkpoints).  It never imports ``coordinator/``.

The one test here checks the helper itself: its ledger audits cleanly.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent import example_model
from agent.home import Agent
from bundle.arrays import Arrays, array_hash, model_hash
from bundle.checkpoint import sign_checkpoint
from bundle.envelope import OpenedBundle, open_bundle, pack_bundle
from bundle.keys import Identity, PublicIdentity
from bundle.ledger import Allocation, Enroll, LedgerState, RoundClose, Transfer, audit
from bundle.merkletree import MerkleTree
from bundle.payloads import (
    Checkpoint,
    GlobalModel,
    LedgerDelta,
    Payload,
    Receipt,
    Roster,
    RosterMember,
    RoundTask,
)
from spool.identity_files import public_to_json

FEDERATION = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
PASSPHRASE = "correct horse battery staple"


class CoordinatorSide:
    """Packs coordinator bundles into ``out`` and keeps a ledger by the real rules."""

    def __init__(self, out: Path, identity: Identity | None = None) -> None:
        self.identity = identity or Identity.generate()
        self.out = out
        self.seq = 0
        self.state = LedgerState(FEDERATION)
        self.tree = MerkleTree()
        self.entries: list[bytes] = []
        self.checkpoints: dict[int, Checkpoint] = {}
        self.roster_version = 0

    @property
    def public(self) -> PublicIdentity:
        return self.identity.public

    def invite(self) -> dict[str, Any]:
        return {
            "federation_name": "clinics",
            "federation_id": FEDERATION.hex(),
            "coordinator": public_to_json(self.public),
        }

    def pack(
        self,
        payload: Payload,
        to: Sequence[PublicIdentity],
        *,
        round: int = 1,
        expires: int | None = None,
        signer: Identity | None = None,
        federation: bytes = FEDERATION,
    ) -> Path:
        self.seq += 1
        packed = pack_bundle(
            self.out,
            payload,
            signer or self.identity,
            federation=federation,
            round=round,
            seq=self.seq,
            recipients=to,
            expires=expires,
        )
        assert packed.path is not None
        return packed.path

    # -- payloads

    def roster(
        self,
        members: Sequence[tuple[str, PublicIdentity, str]],
        to: Sequence[PublicIdentity],
        *,
        version: int | None = None,
        round: int = 0,
        names: PublicIdentity | None = None,
        signer: Identity | None = None,
    ) -> Path:
        if version is None:
            self.roster_version += 1
            version = self.roster_version
        roster = Roster(
            version,
            "clinics",
            names or self.public,
            tuple(RosterMember(n, i, s) for n, i, s in members),
        )
        return self.pack(roster, to, round=round, signer=signer)

    def task(
        self,
        agent: PublicIdentity,
        arrays: Arrays,
        *,
        round: int = 1,
        deadline: int | None = None,
        task_type: str = "train",
        for_agent: bytes | None = None,
        config: dict[str, Any] | None = None,
        run_config: dict[str, Any] | None = None,
        model: bytes | None = None,
    ) -> Path:
        task = RoundTask(
            round,
            task_type,
            for_agent or agent.key_id,
            model or model_hash(arrays),
            {"lr": 0.1} if config is None else config,
            {"num-partitions": 4, "local-epochs": 1} if run_config is None else run_config,
            round if deadline is None else deadline,
        )
        return self.pack(task, [agent], round=round)

    def global_model(
        self,
        arrays: Arrays,
        to: Sequence[PublicIdentity],
        *,
        round: int = 1,
        claim: bytes | None = None,
    ) -> Path:
        return self.pack(GlobalModel(round, claim or model_hash(arrays), arrays), to, round=round)

    # -- ledger

    def append(self, entries: Sequence[bytes]) -> Checkpoint:
        for data in entries:
            applied = self.state.apply(data)
            self.tree.append(applied.leaf_hash)
            self.entries.append(data)
        checkpoint = sign_checkpoint(
            self.identity, federation=FEDERATION, size=self.tree.size, root=self.tree.root()
        )
        self.checkpoints[checkpoint.size] = checkpoint
        return checkpoint

    def enroll(self, agents: Sequence[tuple[str, PublicIdentity]], grant: int = 0) -> Checkpoint:
        entries = [Enroll(i.key_id, n, i).encode() for n, i in agents]
        if grant:
            entries += [Allocation(i.key_id, grant).encode() for _, i in agents]
        return self.append(entries)

    def close_round(self, number: int, participants: Sequence[bytes] = ()) -> Checkpoint:
        return self.append([RoundClose(number, b"\x42" * 32, tuple(participants)).encode()])

    def delta(self, to: PublicIdentity, start: int = 0, *, round: int = 1) -> Path:
        checkpoint = self.checkpoints[self.tree.size]
        proof = tuple(self.tree.consistency_proof(start)) if start else ()
        delta = LedgerDelta(start, tuple(self.entries[start:]), checkpoint, proof)
        return self.pack(delta, [to], round=round)

    def apply_transfer(self, bundle: bytes) -> tuple[int, Checkpoint, tuple[bytes, ...]]:
        """Append a transaction bundle as a transfer entry; its index, checkpoint, proof."""
        index = self.tree.size
        checkpoint = self.append([Transfer(bundle).encode()])
        return index, checkpoint, tuple(self.tree.inclusion_proof(index))

    def receipt(self, to: PublicIdentity, receipt: Receipt, *, round: int = 1) -> Path:
        return self.pack(receipt, [to], round=round)

    # -- reading what the agent sent

    def open(
        self, path: Path, agent: PublicIdentity, parents: Arrays | None = None
    ) -> OpenedBundle:
        known = {agent.key_id: agent}
        return open_bundle(
            path,
            known.get,
            identity=self.identity,
            parents={array_hash(a): a for _, a in parents or []},
        )


def small_model() -> Arrays:
    return [
        ("w", np.arange(6, dtype=np.float32).reshape(2, 3) / 10),
        ("b", np.zeros(3, dtype=np.float32)),
    ]


def digits_model() -> Arrays:
    return example_model.initial_arrays(0)


def deliver(agent: Agent, *paths: Path) -> Any:
    """A courier on one host: copy into the agent's inbox and ingest."""
    return agent.ingest(agent.import_files(list(paths)))


def outbox(agent: Agent, kind: str | None = None) -> list[Path]:
    assert agent.spool is not None
    files = agent.spool.outbox_files()
    return [p for p in files if kind is None or p.name.startswith(f"{kind}.")]


def make_agent(root: Path, coordinator: CoordinatorSide, name: str = "alice", **node: Any) -> Agent:
    return Agent.init(
        root,
        name,
        PASSPHRASE,
        invite=coordinator.invite(),
        node_config=node or {"partition-id": 0},
        fast_kdf=True,
    )


def enrolled(
    root: Path,
    coordinator: CoordinatorSide,
    grant: int = 0,
    others: Sequence[tuple[str, PublicIdentity]] = (),
) -> Agent:
    """An agent that is on the roster and in the ledger (with ``grant`` tokens)."""
    agent = make_agent(root, coordinator)
    members = [("alice", agent.public), *others]
    coordinator.enroll(members, grant)
    report = deliver(
        agent,
        coordinator.roster([(n, i, "active") for n, i in members], [agent.public]),
        coordinator.delta(agent.public),
    )
    assert not report.rejected, report.rejected
    return agent


def copy_home(src: Path, dest: Path) -> None:
    shutil.copytree(src, dest)


def test_support_ledger_audits(tmp_path: Path) -> None:
    side = CoordinatorSide(tmp_path)
    a, b = Identity.generate(), Identity.generate()
    side.enroll([("a", a.public), ("b", b.public)], grant=5)
    checkpoint = side.close_round(1, [a.key_id])
    report = audit(side.entries, checkpoint, side.public)
    assert report.balances == {a.key_id: 5, b.key_id: 5}
