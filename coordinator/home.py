"""A coordinator home: its files, enrollment, the ingest handler, and status.

Layout of ``--home DIR``::

    config.toml          the federation's settings (documented; see coordinator.config)
    keystore.json        the coordinator identity, encrypted (0600)
    identity.pub.json    its public half, for auditors
    state.db             SQLite (WAL, synchronous=FULL): spool + coordinator tables
    spool/               inbox, outbox/<peer>, tmp, archive, quarantine
    ledger/              the token ledger (append-only log + rebuildable index)
    models/              global models by hash
    lock                 single-writer lock (pid, host)

Rounds live in :mod:`coordinator.rounds`; this module is everything around them.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bundle import pqsig
from bundle.arrays import Arrays, array_hash
from bundle.envelope import OpenedBundle, bundle_name
from bundle.errors import FormatError, LLTokenError, SchemaError
from bundle.keys import SUITE_ED25519, SUITE_HYBRID, Identity, PublicIdentity
from bundle.ledger import Allocation, Enroll, Revoke
from bundle.payloads import (
    EnrollRequest,
    EvalResult,
    LedgerDelta,
    ModelUpdate,
    Receipt,
    Roster,
    RosterMember,
    Transaction,
)
from coordinator import config as config_file
from coordinator.config import CoordinatorConfig, load_callable
from coordinator.ledger_store import LedgerStore
from coordinator.rounds import accept_update, refuse_update
from coordinator.state import AgentRow, CoordinatorState
from spool.home import Outcome, SpoolHome
from spool.identity_files import create_identity, load_identity
from spool.lock import HomeLock
from spool.models import ModelStore, load_npz_model
from spool.state import connect

CONFIG = "config.toml"
PARENT_ROUNDS = 3  # global models kept decodable for late updates


class NotFoundError(LLTokenError):
    """An agent, round or file the command names does not exist."""

    exit_code = 44


class Coordinator:
    """An open coordinator home (holds the writer lock until :meth:`close`)."""

    def __init__(self, root: Path, identity: Identity, lock: HomeLock) -> None:
        self.root = root
        self.identity = identity
        self.lock = lock
        self.config: CoordinatorConfig = config_file.load(root / CONFIG)
        self.conn = connect(root / "state.db")
        self.state = CoordinatorState(self.conn)
        self.spool = SpoolHome(root / "spool", self.conn, identity, self.config.federation_id)
        self.ledger = LedgerStore(root / "ledger", self.config.federation_id, identity)
        self.models = ModelStore(root / "models")
        self.spool.recover()
        self._validation: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]] | None = None
        # Models by hash and the parents map, cached: every ingest needs them, and
        # reading and re-hashing a 100 MB model per small bundle was most of its cost.
        self._models: dict[bytes, Arrays] = {}
        self._parents: tuple[frozenset[bytes], dict[bytes, np.ndarray[Any, Any]]] | None = None

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def init(
        cls,
        root: Path,
        name: str,
        passphrase: str,
        *,
        strategy: str = "FedAvg",
        strategy_params: Mapping[str, Any] | None = None,
        rounds: int = 5,
        participants: int = 0,
        quorum: int = 1,
        seed: int = 0,
        initial_model: Path | None = None,
        validation: str = "",
        run_config: Mapping[str, Any] | None = None,
        fast_kdf: bool = False,
        pq: bool = False,
    ) -> Coordinator:
        """Create a federation in ``root``: config, identity, ledger, initial model.

        With ``pq`` the federation uses the hybrid ``ed25519+ml-dsa-65`` signature suite:
        the coordinator's identity is created with it, agents take it from the invite,
        and enrollments of any other suite are refused.

        Raises:
            FormatError: ``root`` already holds a coordinator.
            SchemaError: an invalid setting or initial model.
            SuiteUnavailableError: ``pq`` without the optional ML-DSA library.
        """
        if (root / CONFIG).exists():
            raise FormatError(
                "a coordinator home already exists here; use another --home", where=str(root)
            )
        if pq:
            pqsig.require()  # before any file exists, so a failed init leaves nothing
        root.mkdir(parents=True, exist_ok=True)
        lock = HomeLock(root).acquire()
        federation_id = secrets.token_bytes(16)
        initializer = str(initial_model) if initial_model else "agent.example_model:initial_arrays"
        text = config_file.render(
            name,
            federation_id,
            strategy=strategy,
            strategy_params=dict(strategy_params or {}),
            rounds=rounds,
            participants=participants,
            quorum=quorum,
            seed=seed,
            initializer=initializer,
            validation=validation,
            run_config=dict(run_config) if run_config is not None else None,
        )
        (root / CONFIG).write_text(text)
        config_file.load(root / CONFIG)  # validate before creating keys
        create_identity(
            root, passphrase, fast_kdf=fast_kdf, suite=SUITE_HYBRID if pq else SUITE_ED25519
        )
        coordinator = cls(root, load_identity(root, passphrase), lock)
        arrays = coordinator.initial_arrays()
        with coordinator.spool.transaction():
            digest = coordinator.models.put(arrays)
            coordinator.state.set("model_hash", digest.hex())
            coordinator.state.set("current_round", 0)
            coordinator.state.set("roster_version", 0)
            # Flower reserves node ids 0 and 1 (the SuperLink); agents start at 2.
            coordinator.state.set("next_node_id", 2)
        return coordinator

    @classmethod
    def open(cls, root: Path, passphrase: str) -> Coordinator:
        """Open an existing home (takes the writer lock).

        Raises:
            NotFoundError: no coordinator home at ``root``.
            LockedError: another process holds the home.
            WrongPassphraseError / KeystoreTamperedError: the keystore does not open.
        """
        if not (root / CONFIG).exists():
            raise NotFoundError(
                "no coordinator home here; run `lltoken-coordinator init`", where=str(root)
            )
        lock = HomeLock(root).acquire()
        try:
            return cls(root, load_identity(root, passphrase), lock)
        except BaseException:
            lock.release()
            raise

    def close(self) -> None:
        self.ledger.close()
        self.conn.close()
        self.lock.release()

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def initial_arrays(self) -> Arrays:
        ref = self.config.initializer
        if ref.endswith(".npz"):
            return load_npz_model(Path(ref))
        arrays = load_callable(ref)(self.config.seed)
        return [(str(n), np.asarray(a)) for n, a in arrays]

    # ------------------------------------------------------------------ model state

    def current_round(self) -> int:
        return int(self.state.get("current_round", 0))

    @property
    def model_hash(self) -> bytes:
        return bytes.fromhex(self.state.get("model_hash"))

    def global_arrays(self) -> Arrays:
        return self.model(self.model_hash)

    def validation_set(self) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]] | None:
        if not self.config.validation_set:
            return None
        if self._validation is None:
            path = Path(self.config.validation_set)
            if not path.is_absolute():
                path = self.root / path
            try:
                with np.load(path, allow_pickle=False) as data:
                    self._validation = (np.array(data["X"]), np.array(data["y"]))
            except (OSError, KeyError, ValueError) as e:
                raise SchemaError(
                    f"cannot read the validation set: {e}",
                    expected="an .npz with arrays X and y",
                    where=str(path),
                ) from e
        return self._validation

    # ------------------------------------------------------------------ Handler protocol

    def keyring(self, key_id: bytes) -> PublicIdentity | None:
        row = self.state.agent(key_id)
        if row is None or row.status != "active":
            return None
        return PublicIdentity(row.suite, row.sign_key, row.box_key)

    def any_identity(self, key_id: bytes) -> PublicIdentity | None:
        """Any identity ever enrolled (for re-reading our own archive)."""
        row = self.state.agent(key_id)
        return None if row is None else self.public_of(row)

    def public_of(self, row: AgentRow) -> PublicIdentity:
        return PublicIdentity(row.suite, row.sign_key, row.box_key)

    def parents(self) -> Mapping[bytes, np.ndarray[Any, Any]]:
        """Arrays of the current and recent global models: updates are XOR-deltas against
        the model of their own round, and a late one still has to decode to be told it
        is late."""
        hashes = {self.model_hash}
        for (digest,) in self.conn.execute(
            "SELECT model_hash FROM rounds ORDER BY round DESC LIMIT ?", (PARENT_ROUNDS,)
        ):
            hashes.add(bytes(digest))
        key = frozenset(hashes)
        if self._parents is None or self._parents[0] != key:
            self._parents = (
                key,
                {array_hash(a): a for digest in sorted(hashes) for _, a in self.model(digest)},
            )
        return self._parents[1]

    def model(self, digest: bytes) -> Arrays:
        """A stored model, read (and hash-checked) once per process; read-only arrays."""
        if digest not in self._models:
            arrays = self.models.get(digest)
            for _, array in arrays:
                array.flags.writeable = False
            if len(self._models) >= PARENT_ROUNDS + 1:
                self._models.pop(next(iter(self._models)))
            self._models[digest] = arrays
        return self._models[digest]

    def handle(self, bundle: OpenedBundle) -> Outcome:
        payload = bundle.payload
        if isinstance(payload, EnrollRequest):
            return self._enroll_request(payload)
        if isinstance(payload, ModelUpdate):
            return accept_update(self, bundle, payload)
        if isinstance(payload, Transaction):
            return self._transfer(bundle)
        if isinstance(payload, EvalResult):
            return Outcome("accepted")
        if isinstance(payload, Receipt):
            self._ledger_acknowledged(bundle.header.sender, payload)
            return Outcome("accepted")
        raise SchemaError(
            "the coordinator does not accept this kind",
            expected="enroll-request, model-update, transaction, eval-result or receipt",
            found=bundle.header.kind,
        )

    def refused(self, bundle: OpenedBundle, error: LLTokenError) -> None:
        """A refused bundle from an enrolled agent costs it reputation."""
        refuse_update(self, bundle.header.sender)

    # ------------------------------------------------------------------ enrollment

    @property
    def suite(self) -> str:
        """The federation's signature suite: the coordinator's own, chosen at ``init``."""
        return self.identity.public.suite

    def _enroll_request(self, request: EnrollRequest) -> Outcome:
        if request.identity.suite != self.suite:
            # Every member signs with the federation's suite: a hybrid federation admits
            # no Ed25519-only key, whose signatures a quantum attacker could forge.
            raise SchemaError(
                "the agent's identity uses another signature suite than this federation; "
                "re-create the agent from this federation's invite",
                expected=self.suite,
                found=request.identity.suite,
            )
        key_id = request.identity.key_id
        existing = self.state.agent(key_id)
        if existing is not None:
            return Outcome("accepted", f"already {existing.status}")
        clash = self.conn.execute(
            "SELECT 1 FROM agents WHERE name = ? AND status != 'rejected'", (request.name,)
        ).fetchone()
        if clash:
            raise SchemaError(
                "another identity already uses this agent name",
                expected="a unique name",
                found=request.name,
            )
        self.conn.execute(
            "INSERT INTO agents (key_id, name, suite, sign_key, box_key, status, info, "
            "requested_round, reputation) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
            (
                key_id,
                request.name,
                request.identity.suite,
                request.identity.signing_key,
                request.identity.box_key,
                json.dumps(request.info, default=str),
                self.current_round(),
                self.config.rewards.reputation_start,
            ),
        )
        return Outcome("accepted", "pending approval by the operator")

    def find_agent(self, ref: str) -> AgentRow:
        """An agent by exact name, else by key id (a hex prefix of 8+ digits) or fingerprint.

        Raises:
            NotFoundError: no agent, or the prefix is ambiguous.
        """
        agents = self.state.agents()
        by_name = [a for a in agents if a.name == ref]
        if by_name:  # a name wins: "a1" must not also match key ids starting with a1
            return by_name[0]
        ref_norm = ref.lower().replace("-", "")
        matches = [
            a
            for a in agents
            if (len(ref_norm) >= 8 and a.key_id.hex().startswith(ref_norm))
            or self.public_of(a).fingerprint.replace("-", "").lower() == ref_norm
        ]
        if len(matches) != 1:
            raise NotFoundError(
                "no single agent matches",
                expected="a name, a key id prefix of 8+ hex digits, or a fingerprint",
                found=f"{ref!r} ({len(matches)} matches)",
            )
        return matches[0]

    def _agent_in(self, ref: str, status: str, action: str) -> AgentRow:
        """The agent ``ref``, which must be in ``status`` for ``action``.

        Raises:
            NotFoundError: no single agent matches.
            SchemaError: it is in another status.
        """
        row = self.find_agent(ref)
        if row.status != status:
            raise SchemaError(
                f"only a {status} agent can be {action}",
                expected=status,
                found=row.status,
                where=row.name,
            )
        return row

    def approve(self, ref: str) -> AgentRow:
        """Activate a pending agent: node id, ledger enrollment (+ allocation), roster."""
        row = self._agent_in(ref, "pending", "approved")
        with self.spool.transaction():
            node_id = int(self.state.get("next_node_id", 2))
            self.state.set("next_node_id", node_id + 1)
            self.state.update_agent(row.key_id, status="active", node_id=node_id)
            entries: list[bytes] = [Enroll(row.key_id, row.name, self.public_of(row)).encode()]
            grant = self.config.initial_allocation.get(row.name, 0)
            if grant > 0:
                entries.append(Allocation(row.key_id, grant).encode())
            # The ledger is its own durable store: after a crash between its append and
            # this transaction's commit it already holds the enrollment; don't repeat it.
            if self.ledger.state.account(row.key_id) is None:
                self.ledger.append(entries)
            self._send_roster()
            self.send_ledger_deltas()
        return self.find_agent(row.key_id.hex())

    def reject(self, ref: str) -> AgentRow:
        row = self._agent_in(ref, "pending", "rejected")
        with self.spool.transaction():
            self.state.update_agent(row.key_id, status="rejected")
        return self.find_agent(row.key_id.hex())

    def revoke(self, ref: str) -> AgentRow:
        row = self._agent_in(ref, "active", "revoked")
        with self.spool.transaction():
            self.state.update_agent(row.key_id, status="revoked")
            account = self.ledger.state.account(row.key_id)
            if account is not None and account.active:  # not already revoked (crash retry)
                self.ledger.append([Revoke(row.key_id).encode()])
            self._send_roster()
            self.send_ledger_deltas()
        return self.find_agent(row.key_id.hex())

    def roster(self) -> Roster:
        members = tuple(
            RosterMember(a.name, self.public_of(a), a.status)
            for a in self.state.agents()
            if a.status in ("active", "revoked")
        )
        return Roster(
            int(self.state.get("roster_version", 0)),
            self.config.federation_name,
            self.identity.public,
            members,
        )

    def _send_roster(self) -> None:
        """A new signed roster, version + 1, into every agent's outbox."""
        self.state.set("roster_version", int(self.state.get("roster_version", 0)) + 1)
        roster = self.roster()
        for agent in self.state.agents():
            if agent.status in ("active", "revoked"):
                self.spool.send(roster, to=[self.public_of(agent)], round=self.current_round())

    def broadcast_roster(self, to: Sequence[PublicIdentity]) -> None:
        """Send the current roster to identities not on it yet (e.g. pending ones)."""
        with self.spool.transaction():
            for identity in to:
                self.spool.send(self.roster(), to=[identity], round=self.current_round())

    # ------------------------------------------------------------------ ledger

    def _transfer(self, bundle: OpenedBundle) -> Outcome:
        """Apply a signed transfer when it arrives; the receipt says what happened.

        A transfer the ledger already holds (a crash after the append, before the ingest
        committed) is answered with its original entry, so nothing is applied twice.
        """
        raw = (
            self.spool.dirs.inbox / bundle_name(bundle.header.kind, bundle.bundle_id)
        ).read_bytes()
        decision = self.ledger.decide_transfer(raw)
        if decision.status == "rejected":
            return Outcome("rejected", decision.reason)
        if decision.ledger_index is not None:
            index = decision.ledger_index
        elif decision.entry is not None:
            index = self.ledger.append([decision.entry])[0]
            self.send_ledger_deltas()
        else:
            raise SchemaError("transfer decision without an entry", found=decision.status)
        checkpoint = self.ledger.checkpoint()
        proof = tuple(self.ledger.inclusion_proof(index, checkpoint.size))
        return Outcome("accepted", "applied to the ledger", index, proof, checkpoint)

    def _ledger_acknowledged(self, agent: bytes, receipt: Receipt) -> None:
        row = self.conn.execute(
            "SELECT size FROM deltas WHERE bundle_id = ? AND agent = ?", (receipt.bundle_id, agent)
        ).fetchone()
        if row is not None and receipt.status == "accepted":
            self.conn.execute(
                "UPDATE agents SET ledger_ack = MAX(ledger_ack, ?) WHERE key_id = ?",
                (row[0], agent),
            )

    def send_ledger_deltas(self) -> int:
        """Each active agent gets the entries since the size it last acknowledged, with a
        consistency proof from that size (call inside a transaction)."""
        checkpoint = self.ledger.checkpoint()
        sent = 0
        for agent in self.state.agents("active"):
            sent = (
                self.conn.execute(
                    "SELECT MAX(size) FROM deltas WHERE agent = ?", (agent.key_id,)
                ).fetchone()[0]
                or 0
            )
            if max(agent.ledger_ack, sent) >= checkpoint.size:
                continue
            delta: LedgerDelta = self.ledger.delta_since(agent.ledger_ack)
            packed = self.spool.send(delta, to=[self.public_of(agent)], round=self.current_round())
            self.conn.execute(
                "INSERT INTO deltas (bundle_id, agent, size) VALUES (?, ?, ?)",
                (packed.bundle_id, agent.key_id, checkpoint.size),
            )
            sent += 1
        return sent

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        number = self.current_round()
        row = self.state.round_row(number) if number else None
        balances = self.ledger.balances()
        agents = []
        for a in self.state.agents():
            reported = None
            if row is not None and a.key_id.hex() in row["sampled"]:
                reported = bool(
                    self.conn.execute(
                        "SELECT 1 FROM updates WHERE round = ? AND agent = ? AND status = "
                        "'accepted'",
                        (number, a.key_id),
                    ).fetchone()
                )
            agents.append(
                {
                    "name": a.name,
                    "key_id": a.key_id.hex(),
                    "status": a.status,
                    "fingerprint": self.public_of(a).fingerprint,
                    "balance": balances.get(a.key_id, 0),
                    "reputation": round(a.reputation, 4),
                    "streak": a.streak,
                    "sampled": reported is not None,
                    "reported": reported,
                }
            )
        checkpoint = self.ledger.checkpoint()
        return {
            "federation": self.config.federation_name,
            "federation_id": self.config.federation_id.hex(),
            "strategy": self.config.strategy,
            "round": number,
            "rounds": self.config.rounds,
            "round_status": row["status"] if row else "not started",
            "model_hash": self.model_hash.hex(),
            "agents": agents,
            "checkpoint": {
                "size": checkpoint.size,
                "root": checkpoint.root.hex(),
                "time": checkpoint.time,
            },
            "total_supply": sum(balances.values()),
            "outbox": len(self.spool.outbox_files()),
            "inbox": len(
                [p for p in self.spool.dirs.inbox.iterdir() if not p.name.startswith(".")]
            ),
            "time": int(time.time()),
        }


__all__ = ["Coordinator", "NotFoundError"]
