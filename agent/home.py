"""An agent home: its files, trust in one coordinator, the ingest handler, training
through the operator's own Flower ClientApp, and the wallet.

Layout of ``--home DIR``::

    agent.json           name, federation id, pinned coordinator key, node_config, app
    keystore.json        the agent identity, encrypted (0600)
    identity.pub.json    its public half (status and ledger commands need no passphrase)
    state.db             SQLite (WAL, synchronous=FULL): spool tables + agent tables
    spool/               inbox, outbox/<peer>, tmp, archive, quarantine
    models/              global models by hash
    ledger/              the verified ledger replica (and equivocation evidence)
    lock                 single-writer lock (pid, host)

Trust: the agent believes exactly one key, the coordinator's, pinned at ``init`` from an
invite (or ``--coordinator-key``), or else from the first roster, trust on first use,
after the operator compares its fingerprint.  Every other signer is unknown, so its
bundles are quarantined.  Before a coordinator is pinned nothing is ingested at all:
quarantining the coordinator's own first bundles would lose them.

Agent tables (besides the spool's and the wallet's, see :mod:`agent.wallet`)::

    agent_tasks    round tasks received: (round, task_type) -> task, status, result bundle
    agent_models   global models held: hash -> round
    agent_roster   members of the latest roster
    agent_sent     bundles we sent that expect a receipt, and what the receipt said
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

from agent.flower_client import run_client_app
from agent.ledger_replica import LedgerReplica
from agent.wallet import (
    SCHEMA as WALLET_SCHEMA,
)
from agent.wallet import (
    Balance,
    HistoryLine,
    TransferRecord,
    Wallet,
    get_meta,
    set_meta,
)
from bundle import cbor, pqsig
from bundle.arrays import Arrays, array_hash, model_hash
from bundle.durable import atomic_write, write_bytes_atomic
from bundle.envelope import (
    SMALL_PAYLOAD_CAP,
    OpenedBundle,
    open_bundle_bytes,
    parse_name,
    read_prefix,
)
from bundle.errors import (
    FormatError,
    IntegrityError,
    KeystoreError,
    KeystoreTamperedError,
    LLTokenError,
    ReplayError,
    SchemaError,
)
from bundle.keys import SUITE_ED25519, SUITE_HYBRID, Identity, PublicIdentity
from bundle.payloads import (
    EnrollRequest,
    EvalResult,
    GlobalModel,
    LedgerDelta,
    ModelUpdate,
    Payload,
    Receipt,
    Roster,
    RosterMember,
    RoundTask,
    Transaction,
    payload_from_cbor,
)
from spool.home import IngestReport, Outcome, SpoolHome
from spool.identity_files import (
    create_identity,
    load_identity,
    load_public,
    public_from_json,
    public_to_json,
)
from spool.layout import BROADCAST
from spool.lock import HomeLock
from spool.media import SyncSummary, sync_media, sync_out
from spool.models import ModelStore
from spool.state import connect

CONFIG = "agent.json"
CONFIG_FORMAT = "lltoken-agent/v1"
DEFAULT_APP = "agent.example_app:app"
TRANSFER_EXPIRY_ROUNDS = 10
PARENT_MODELS = 2  # global models whose arrays serve as XOR-delta parents on ingest
MAX_ROSTER_FILE = 2 * SMALL_PAYLOAD_CAP
RUN_ID = 0  # the Flower run id the coordinator's adapter uses

UserValue = bool | int | float | str

SCHEMA = (
    WALLET_SCHEMA
    + """
CREATE TABLE IF NOT EXISTS agent_tasks (
    round INTEGER NOT NULL,
    task_type TEXT NOT NULL,
    bundle_id BLOB NOT NULL,
    model_hash BLOB NOT NULL,
    deadline_round INTEGER,
    task BLOB NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    result BLOB,
    received_at INTEGER NOT NULL,
    done_at INTEGER,
    PRIMARY KEY (round, task_type)
);
CREATE TABLE IF NOT EXISTS agent_models (
    model_hash BLOB PRIMARY KEY,
    round INTEGER NOT NULL,
    bundle_id BLOB NOT NULL,
    received_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS agent_roster (
    key_id BLOB PRIMARY KEY,
    name TEXT NOT NULL,
    suite TEXT NOT NULL,
    sign_key BLOB NOT NULL,
    box_key BLOB NOT NULL,
    status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS agent_sent (
    bundle_id BLOB PRIMARY KEY,
    kind TEXT NOT NULL,
    round INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'sent',
    reason TEXT NOT NULL DEFAULT '',
    sent_at INTEGER NOT NULL,
    receipt_at INTEGER
);
"""
)


# ---------------------------------------------------------------------------- errors


class NoTaskError(LLTokenError):
    """No task of the asked type is pending, or its global model has not arrived yet."""

    exit_code = 41


class NotPinnedError(LLTokenError):
    """No coordinator key is pinned yet, so nothing can be verified or ingested."""

    exit_code = 42


class NotFoundError(LLTokenError):
    """No agent home here, or no roster member matches a name or key id."""

    exit_code = 44


# ---------------------------------------------------------------------------- config


def parse_value(text: str) -> UserValue:
    """A node-config value from the command line: bool, int or float when it looks like
    one (``true``/``false``, ``3``, ``0.5``, ``1e-3``), else the text itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return number if np.isfinite(number) else text


def _check_node_config(values: Mapping[str, Any], where: str) -> dict[str, UserValue]:
    out: dict[str, UserValue] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not key or len(key) > 64:
            raise SchemaError(
                "node_config key must be text of 1 to 64 characters", found=repr(key), where=where
            )
        if not isinstance(value, bool | int | float | str) or (
            isinstance(value, float) and not np.isfinite(value)
        ):
            raise SchemaError(
                f"node_config[{key!r}] is not a Flower user-config value",
                expected="bool, int, finite float or text",
                found=repr(value),
                where=where,
            )
        out[key] = value
    return out


@dataclass(frozen=True)
class AgentConfig:
    """The contents of ``agent.json``."""

    name: str
    federation: bytes
    federation_name: str = ""
    coordinator: PublicIdentity | None = None
    node_config: dict[str, UserValue] = field(default_factory=dict)
    app: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CONFIG_FORMAT,
            "name": self.name,
            "federation_id": self.federation.hex(),
            "federation_name": self.federation_name,
            "coordinator": None if self.coordinator is None else public_to_json(self.coordinator),
            "node_config": self.node_config,
            "app": self.app,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> AgentConfig:
        """Raises: FormatError if the file is not an agent config."""
        if not isinstance(data, dict) or data.get("format") != CONFIG_FORMAT:
            raise FormatError("not an agent config", expected=CONFIG_FORMAT, where=where)
        try:
            federation = bytes.fromhex(data["federation_id"])
            coordinator = data["coordinator"]
            pinned = None if coordinator is None else public_from_json(coordinator, where)
            node_config = _check_node_config(data.get("node_config") or {}, where)
            app = data.get("app")
            if len(federation) != 16 or not isinstance(data["name"], str):
                raise ValueError("federation id must be 16 bytes and name text")
            if app is not None and not isinstance(app, str):
                raise ValueError("app must be a 'module:attribute' text")
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"agent config is malformed ({e})", where=where) from e
        return cls(
            data["name"],
            federation,
            str(data.get("federation_name") or ""),
            pinned,
            node_config,
            app,
        )

    def save(self, root: Path) -> None:
        body = json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"
        write_bytes_atomic(root / CONFIG, body.encode())


def load_config(root: Path) -> AgentConfig:
    """Raises: NotFoundError if ``root`` holds no agent home; FormatError if malformed."""
    path = root / CONFIG
    try:
        text = path.read_text()
    except FileNotFoundError as e:
        raise NotFoundError(
            "no agent home here; run `lltoken-agent init` (or pass --home)", where=str(root)
        ) from e
    try:
        data = json.loads(text)
    except ValueError as e:
        raise FormatError(f"agent config is not JSON ({e})", where=str(path)) from e
    return AgentConfig.from_json(data, str(path))


@dataclass(frozen=True)
class Invite:
    """What a coordinator hands out so an agent can join: federation and coordinator key."""

    federation_name: str
    federation: bytes
    coordinator: PublicIdentity


def parse_invite(data: Any, where: str = "invite") -> Invite:
    """Parse ``{"federation_name", "federation_id", "coordinator": {suite, sign, box,
    key_id, fingerprint}}``.

    Raises:
        FormatError: missing fields, bad hex, or a key id/fingerprint not matching the keys.
    """
    try:
        if not isinstance(data, dict):
            raise TypeError("an invite is a JSON object")
        name = data["federation_name"]
        federation = bytes.fromhex(data["federation_id"])
        coordinator_doc = data["coordinator"]
        if not isinstance(name, str) or len(federation) != 16:
            raise ValueError("federation_name must be text and federation_id 16 bytes of hex")
        coordinator = public_from_json(coordinator_doc, where)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise FormatError(
            f"invite is malformed ({e})",
            expected='{"federation_name", "federation_id", "coordinator": {...}}',
            where=where,
        ) from e
    except KeystoreError as e:
        raise FormatError(e.reason, expected=e.expected, found=e.found, where=where) from e
    claimed = coordinator_doc.get("fingerprint")
    if claimed is not None and claimed != coordinator.fingerprint:
        raise FormatError(
            "invite's coordinator fingerprint does not match its keys",
            expected=coordinator.fingerprint,
            found=claimed,
            where=where,
        )
    return Invite(name, federation, coordinator)


def load_public_key_file(path: Path) -> PublicIdentity:
    """A coordinator key from a file: its ``identity.pub.json``, or an invite.

    Raises:
        FormatError: unreadable, or not a public identity.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FormatError(f"cannot read the key file ({e})", where=str(path)) from e
    if isinstance(data, dict) and "coordinator" in data:
        return parse_invite(data, str(path)).coordinator
    try:
        return public_from_json(data, str(path))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise FormatError(
            f"not a public identity file ({e})",
            expected="identity.pub.json with suite, sign, box (hex)",
            where=str(path),
        ) from e
    except KeystoreError as e:
        raise FormatError(e.reason, expected=e.expected, found=e.found, where=str(path)) from e


def update_node_config(root: Path, key: str, value: UserValue | None) -> AgentConfig:
    """Set (or, with ``value=None``, remove) one node_config entry under the home lock.

    Raises:
        NotFoundError: no agent home; LockedError: the home is in use;
        SchemaError: a bad key or value.
    """
    with HomeLock(root):
        config = load_config(root)
        values = dict(config.node_config)
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value
        updated = AgentConfig(
            config.name,
            config.federation,
            config.federation_name,
            config.coordinator,
            _check_node_config(values, "node_config"),
            config.app,
        )
        updated.save(root)
    return updated


def node_facts() -> dict[str, str | int]:
    """What an enrollment request tells the coordinator about this machine."""
    try:
        version = metadata.version("lltoken-offline")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "lltoken": version,
        "python": platform.python_version(),
        "platform": platform.system(),
        "machine": platform.machine(),
        "cpus": os.cpu_count() or 1,
    }


# ---------------------------------------------------------------------------- values


@dataclass(frozen=True)
class RosterOffer:
    """A roster found before any coordinator is pinned: the key it would pin, checked to
    have signed the roster, for the operator to compare fingerprints (trust on first use)."""

    path: Path
    roster: Roster
    coordinator: PublicIdentity

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "federation_name": self.roster.federation_name,
            "version": self.roster.version,
            "members": len(self.roster.members),
            "coordinator_key_id": self.coordinator.key_id.hex(),
            "fingerprint": self.coordinator.fingerprint,
        }


Trust = Callable[[RosterOffer], bool]


@dataclass(frozen=True)
class TaskInfo:
    """A round task as the agent holds it."""

    round: int
    task_type: str
    model_hash: bytes
    deadline_round: int | None
    status: str
    """pending, expired (deadline passed), done, or superseded (a newer task came)."""
    model_present: bool
    result: bytes | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "task_type": self.task_type,
            "model_hash": self.model_hash.hex(),
            "deadline_round": self.deadline_round,
            "status": self.status,
            "model_present": self.model_present,
            "result": None if self.result is None else self.result.hex(),
        }


@dataclass(frozen=True)
class SentRecord:
    """A bundle this agent sent that expects a receipt, and what the receipt said."""

    bundle_id: bytes
    kind: str
    round: int
    status: str
    """``sent`` until a receipt arrives; then the receipt's status."""
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle_id": self.bundle_id.hex(),
            "kind": self.kind,
            "round": self.round,
            "status": self.status,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class TaskResult:
    """What :meth:`Agent.train` / :meth:`Agent.evaluate` wrote to the outbox."""

    round: int
    task_type: str
    bundle_id: bytes
    path: Path | None
    model_hash: bytes
    num_examples: int
    metrics: dict[str, int | float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "task_type": self.task_type,
            "bundle_id": self.bundle_id.hex(),
            "file": None if self.path is None else str(self.path),
            "model_hash": self.model_hash.hex(),
            "num_examples": self.num_examples,
            "metrics": self.metrics,
        }


def _numeric_metrics(metrics: Mapping[str, object]) -> dict[str, int | float]:
    """Scalar metrics for the update payload (lists and ``num-examples`` stay out)."""
    return {
        k: v
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "num-examples"
    }


def _user_config(values: Mapping[str, object], where: str) -> dict[str, UserValue]:
    """Flower's run_config holds scalars only; say so rather than drop an entry."""
    out: dict[str, UserValue] = {}
    for key, value in values.items():
        if not isinstance(value, bool | int | float | str):
            raise SchemaError(
                f"run_config[{key!r}] is not a Flower user-config value",
                expected="bool, int, float or text",
                found=type(value).__name__,
                where=where,
            )
        out[key] = value
    return out


def read_roster_offer(path: Path, federation: bytes) -> RosterOffer | None:
    """The coordinator key a roster bundle at ``path`` would pin, or None if it is not an
    unencrypted roster of ``federation`` signed by the key it names.

    The roster is read once without a key to learn the key it names (size-capped, payload
    hash checked), then opened through the full verification with exactly that key.
    """
    try:
        kind, _ = parse_name(path.name)
        if kind != Roster.KIND or path.is_symlink() or not path.is_file():
            return None
        if path.stat().st_size > MAX_ROSTER_FILE:
            return None
        data = path.read_bytes()
        prefix = read_prefix(io.BytesIO(data), len(data), str(path))
        header = prefix.header
        if header.federation != federation or header.payload.encryption is not None:
            return None
        stored = data[prefix.length :]
        if hashlib.sha256(stored).digest() != header.payload.hash:
            return None
        raw = zstandard.ZstdDecompressor().decompress(stored, max_output_size=SMALL_PAYLOAD_CAP)
        claimed = payload_from_cbor(Roster.KIND, cbor.decode(raw), where=str(path))
        if not isinstance(claimed, Roster) or claimed.coordinator.key_id != header.sender:
            return None
        key = claimed.coordinator
        opened = open_bundle_bytes(
            data, lambda k: key if k == key.key_id else None, where=str(path)
        )
    except (LLTokenError, OSError, zstandard.ZstdError):
        return None
    roster = opened.payload
    if not isinstance(roster, Roster):
        return None
    return RosterOffer(path, roster, opened.sender)


# ---------------------------------------------------------------------------- the home


class Agent:
    """An agent home.  :meth:`init` and :meth:`open` give a writer (it holds the home lock
    and the keys until :meth:`close`); :meth:`inspect` a reader that needs neither (for
    status, balances and the ledger while another process, e.g. ``watch``, holds the home).

    The agent is the spool's :class:`~spool.home.Handler`: ``agent.spool.ingest(agent)``
    works, though :meth:`ingest` also handles first-use trust and outbox expiry.
    """

    def __init__(
        self,
        root: Path,
        config: AgentConfig,
        public: PublicIdentity,
        identity: Identity | None,
        lock: HomeLock | None,
    ) -> None:
        self.root = root
        self.config = config
        self.public = public
        self.identity = identity
        self.lock = lock
        self.conn = connect(root / "state.db")
        self.spool: SpoolHome | None = None
        if identity is not None:
            self.spool = SpoolHome(root / "spool", self.conn, identity, config.federation)
            # Only the writer creates tables: a reader must not wait on the writer's lock.
            self.conn.executescript(SCHEMA)
        self.models = ModelStore(root / "models")
        self.wallet = Wallet(self.conn, public.key_id, config.federation)
        self.replica: LedgerReplica | None = None
        # Global models held in memory (model hash -> arrays, their array hashes): hashed
        # once, not at every ingest and train (a 100 MB model takes ~0.1 s to hash).
        self._parents: dict[bytes, tuple[Arrays, list[bytes]]] = {}
        if config.coordinator is not None:
            self._attach_replica(config.coordinator)
        if self.spool is not None:
            self.spool.recover()

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def init(
        cls,
        root: Path,
        name: str,
        passphrase: str,
        *,
        invite: Mapping[str, Any] | None = None,
        federation: bytes | None = None,
        coordinator_key: PublicIdentity | None = None,
        node_config: Mapping[str, Any] | None = None,
        app: str | None = None,
        fast_kdf: bool = False,
    ) -> Agent:
        """Create an agent home in ``root``: identity, ``agent.json``, and an enrollment
        request in the outbox (to the pinned coordinator, or to ``all`` when no key is
        known yet: then the first roster is pinned on first use).

        The identity uses the coordinator's signature suite (from the invite or
        ``coordinator_key``), so an agent of a post-quantum federation gets a hybrid
        Ed25519 + ML-DSA-65 key; with no coordinator key known it is Ed25519.

        Raises:
            FormatError: ``root`` already holds an agent, or the invite is malformed.
            SchemaError: no federation given, invite and options disagree, a bad name or
                node_config.
            KeystoreError: an empty passphrase.
        """
        if (root / CONFIG).exists() or (root / "keystore.json").exists():
            raise FormatError(
                "an agent home already exists here; use another --home", where=str(root)
            )
        federation_name = ""
        pinned = coordinator_key
        if invite is not None:
            parsed = parse_invite(invite)
            if federation is not None and federation != parsed.federation:
                raise SchemaError(
                    "--federation disagrees with the invite",
                    expected=parsed.federation.hex(),
                    found=federation.hex(),
                )
            if coordinator_key is not None and coordinator_key != parsed.coordinator:
                raise SchemaError(
                    "--coordinator-key disagrees with the invite",
                    expected=parsed.coordinator.fingerprint,
                    found=coordinator_key.fingerprint,
                )
            federation, federation_name, pinned = (
                parsed.federation,
                parsed.federation_name,
                parsed.coordinator,
            )
        if federation is None or len(federation) != 16:
            raise SchemaError(
                "an agent needs its federation: give an invite file or the federation id",
                expected="--invite FILE or --federation HEX (16 bytes)",
                found=None if federation is None else federation.hex(),
            )
        config = AgentConfig(
            name,
            federation,
            federation_name,
            pinned,
            _check_node_config(dict(node_config or {}), "node_config"),
            app,
        )
        # Validate name and facts with the payload's own rules before any key exists.
        facts = node_facts()
        EnrollRequest(name, Identity.generate().public, dict(facts))
        suite = pinned.suite if pinned is not None else SUITE_ED25519
        if suite == SUITE_HYBRID:
            pqsig.require()  # before the home exists, so a failed init leaves nothing
        root.mkdir(parents=True, exist_ok=True)
        lock = HomeLock(root).acquire()
        try:
            identity = create_identity(root, passphrase, fast_kdf=fast_kdf, suite=suite)
            config.save(root)
            agent = cls(root, config, identity.public, identity, lock)
        except BaseException:
            lock.release()
            raise
        try:
            agent.request_enrollment(facts)
        except BaseException:
            agent.close()
            raise
        return agent

    @classmethod
    def open(cls, root: Path, passphrase: str) -> Agent:
        """Open a home as its writer (takes the lock, opens the keystore).

        Raises:
            NotFoundError: no agent home at ``root``.
            LockedError: another process holds the home.
            WrongPassphraseError / KeystoreTamperedError: the keystore does not open.
        """
        config = load_config(root)
        lock = HomeLock(root).acquire()
        try:
            identity = load_identity(root, passphrase)
            if identity.public != load_public(root):
                raise KeystoreTamperedError(
                    "identity.pub.json does not match the keystore", where=str(root)
                )
            return cls(root, config, identity.public, identity, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def inspect(cls, root: Path) -> Agent:
        """Open a home read-only: no lock, no keys.  Methods that write raise.

        Raises:
            NotFoundError: no agent home at ``root``.
        """
        config = load_config(root)
        return cls(root, config, load_public(root), None, None)

    def close(self) -> None:
        self.conn.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _writer(self) -> SpoolHome:
        if self.spool is None:
            raise KeystoreError(
                "this needs the agent's keys: open the home with its passphrase",
                where=str(self.root),
            )
        return self.spool

    # ------------------------------------------------------------------ identity and trust

    @property
    def key_id(self) -> bytes:
        return self.public.key_id

    @property
    def node_id(self) -> int:
        """This agent's Flower node id: stable, derived from its key id, never 0 or 1."""
        return 2 + int.from_bytes(self.key_id[:8], "big") % ((1 << 63) - 2)

    @property
    def coordinator(self) -> PublicIdentity | None:
        return self.config.coordinator

    def _pinned(self) -> PublicIdentity:
        if self.config.coordinator is None:
            raise NotPinnedError(
                "no coordinator key is pinned yet; ingest or sync the coordinator's first "
                "roster and confirm its fingerprint (or init with --invite)",
                where=str(self.root),
            )
        return self.config.coordinator

    def _attach_replica(self, coordinator: PublicIdentity) -> None:
        self.replica = LedgerReplica(self.root / "ledger", coordinator, self.config.federation)
        self.wallet.replica = self.replica
        self.wallet.coordinator = coordinator

    def pin_coordinator(self, coordinator: PublicIdentity) -> None:
        """Pin the coordinator's key (trust on first use); a pinned key never changes.

        Raises:
            SchemaError: another key is pinned already.
        """
        self._writer()
        current = self.config.coordinator
        if current is not None:
            if current != coordinator:
                raise SchemaError(
                    "another coordinator key is pinned already",
                    expected=current.fingerprint,
                    found=coordinator.fingerprint,
                )
            return
        config = AgentConfig(
            self.config.name,
            self.config.federation,
            self.config.federation_name,
            coordinator,
            self.config.node_config,
            self.config.app,
        )
        config.save(self.root)
        self.config = config
        self._attach_replica(coordinator)

    def roster_offers(self, paths: Iterable[Path]) -> list[RosterOffer]:
        """Rosters among ``paths`` that could pin a coordinator, one per key."""
        offers: dict[bytes, RosterOffer] = {}
        for path in sorted(paths):
            offer = read_roster_offer(path, self.config.federation)
            if offer is not None:
                offers.setdefault(offer.coordinator.key_id, offer)
        return list(offers.values())

    def _trust_first_use(self, paths: Iterable[Path], trust: Trust | None) -> bool:
        """Offer the rosters among ``paths`` to ``trust``; pin the first it accepts."""
        if self.config.coordinator is not None:
            return True
        if trust is None:
            return False
        for offer in self.roster_offers(paths):
            if trust(offer):
                self.pin_coordinator(offer.coordinator)
                return True
        return False

    def request_enrollment(self, info: Mapping[str, Any] | None = None) -> Path | None:
        """Write an enrollment request into the outbox (init does this once)."""
        spool = self._writer()
        request = EnrollRequest(self.config.name, self.public, dict(info or node_facts()))
        pinned = self.config.coordinator
        with spool.transaction():
            packed = spool.send(request, to=[pinned] if pinned is not None else [])
            self._remember_sent(packed.bundle_id, request.KIND, 0)
        return packed.path

    def sent(self, kind: str | None = None) -> list[SentRecord]:
        """Bundles sent (enrollment, updates, evaluations, transfers), newest first."""
        rows = self.conn.execute(
            "SELECT bundle_id, kind, round, status, reason FROM agent_sent "
            "WHERE ? IS NULL OR kind = ? ORDER BY sent_at DESC, rowid DESC",
            (kind, kind),
        ).fetchall()
        return [SentRecord(bytes(r[0]), str(r[1]), int(r[2]), str(r[3]), str(r[4])) for r in rows]

    def _remember_sent(self, bundle_id: bytes, kind: str, round: int) -> None:
        self.conn.execute(
            "INSERT INTO agent_sent (bundle_id, kind, round, sent_at) VALUES (?, ?, ?, ?)",
            (bundle_id, kind, round, int(time.time())),
        )

    # ------------------------------------------------------------------ Handler protocol

    def keyring(self, key_id: bytes) -> PublicIdentity | None:
        """Only the pinned coordinator: every other signer is unknown."""
        pinned = self.config.coordinator
        return pinned if pinned is not None and key_id == pinned.key_id else None

    def current_round(self) -> int:
        """The highest round seen in a task, a roster, or the ledger's latest close."""
        return int(get_meta(self.conn, "current_round", "0"))

    def _bump_round(self, number: int) -> None:
        if number > self.current_round():
            set_meta(self.conn, "current_round", number)

    def parents(self) -> Mapping[bytes, np.ndarray[Any, Any]]:
        """Arrays of the latest global models held, by array hash (XOR-delta parents)."""
        rows = self.conn.execute(
            "SELECT model_hash FROM agent_models ORDER BY round DESC, received_at DESC LIMIT ?",
            (PARENT_MODELS,),
        ).fetchall()
        wanted = [bytes(r[0]) for r in rows]
        for digest in list(self._parents):
            if digest not in wanted:
                del self._parents[digest]
        out: dict[bytes, np.ndarray[Any, Any]] = {}
        for digest in wanted:
            try:
                arrays, hashes = self._held(digest)
            except IntegrityError:
                continue  # a damaged store file: train will say so; ingest goes on
            out.update(zip(hashes, (a for _, a in arrays), strict=True))
        return out

    def _held(self, digest: bytes) -> tuple[Arrays, list[bytes]]:
        """A global model and its array hashes, from memory or else from the store
        (hash-checked there) and then kept in memory.

        Raises:
            IntegrityError: the model is missing from the store or damaged.
        """
        held = self._parents.get(digest)
        if held is None:
            arrays = self.models.get(digest)
            held = self._parents[digest] = (arrays, [array_hash(a) for _, a in arrays])
        return held

    def handle(self, bundle: OpenedBundle) -> Outcome:
        payload = bundle.payload
        if isinstance(payload, RoundTask):
            return self._on_task(bundle, payload)
        if isinstance(payload, GlobalModel):
            return self._on_global_model(bundle, payload)
        if isinstance(payload, Roster):
            return self._on_roster(bundle, payload)
        if isinstance(payload, LedgerDelta):
            return self._on_delta(bundle, payload)
        if isinstance(payload, Receipt):
            return self._on_receipt(payload)
        raise SchemaError(
            "an agent does not accept this kind",
            expected="roster, round-task, global-model, ledger-delta or receipt",
            found=bundle.header.kind,
        )

    def refused(self, bundle: OpenedBundle, error: LLTokenError) -> None:
        """Nothing to add: the quarantined file and its reason are the record."""

    # ------------------------------------------------------------------ handlers

    def _on_roster(self, bundle: OpenedBundle, roster: Roster) -> Outcome:
        pinned = self._pinned()
        if roster.coordinator != pinned:
            raise SchemaError(
                "roster names another coordinator than the pinned one",
                expected=pinned.fingerprint,
                found=roster.coordinator.fingerprint,
                where=f"roster version {roster.version}",
            )
        held = int(get_meta(self.conn, "roster_version", "-1"))
        members = {(m.identity.key_id, m.name, m.status) for m in roster.members}
        if roster.version == held:
            if members == self._roster_set():
                return Outcome("accepted", f"roster version {held} again (unchanged)")
            raise SchemaError(
                "the coordinator signed two different rosters with the same version",
                expected=f"a version above {held}, or roster {held} as held",
                found=f"another roster {roster.version}",
                where="roster",
            )
        if roster.version < held:
            # Sticks deliver out of order: an older roster is stale, never applied.
            return Outcome(
                "accepted", f"stale roster version {roster.version} (holding {held}): not applied"
            )
        self.conn.execute("DELETE FROM agent_roster")
        self.conn.executemany(
            "INSERT INTO agent_roster (key_id, name, suite, sign_key, box_key, status) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    m.identity.key_id,
                    m.name,
                    m.identity.suite,
                    m.identity.signing_key,
                    m.identity.box_key,
                    m.status,
                )
                for m in roster.members
            ],
        )
        set_meta(self.conn, "roster_version", roster.version)
        set_meta(self.conn, "federation_name", roster.federation_name)
        self._bump_round(bundle.header.round)
        return Outcome("accepted", f"roster version {roster.version} stored")

    def _roster_set(self) -> set[tuple[bytes, str, str]]:
        rows = self.conn.execute("SELECT key_id, name, status FROM agent_roster").fetchall()
        return {(bytes(r[0]), str(r[1]), str(r[2])) for r in rows}

    def _check_task(self, task: RoundTask, where: str, expired: str) -> None:
        """A task must be ours and not past its deadline round.

        Raises:
            SchemaError: the task is for another agent.
            ReplayError: its deadline round has passed (``expired`` says how to react).
        """
        if task.agent != self.key_id:
            raise SchemaError(
                "task is for another agent",
                expected=self.key_id.hex(),
                found=task.agent.hex(),
                where=where,
            )
        current = self.current_round()
        if task.deadline_round is not None and task.deadline_round < current:
            raise ReplayError(
                expired,
                expected=f"deadline round >= {current}",
                found=task.deadline_round,
                where=where,
            )

    def _on_task(self, bundle: OpenedBundle, task: RoundTask) -> Outcome:
        where = f"round {task.round} {task.task_type} task"
        self._check_task(task, where, "round task expired before it arrived")
        blob = cbor.encode(task.to_cbor())
        row = self.conn.execute(
            "SELECT task FROM agent_tasks WHERE round = ? AND task_type = ?",
            (task.round, task.task_type),
        ).fetchone()
        if row is not None:
            if bytes(row[0]) == blob:
                return Outcome("accepted", "the same task again")
            raise SchemaError("a second, different task for the same round", where=where)
        self.conn.execute(
            "UPDATE agent_tasks SET status = 'superseded' WHERE task_type = ? AND "
            "status = 'pending' AND round < ?",
            (task.task_type, task.round),
        )
        self.conn.execute(
            "INSERT INTO agent_tasks (round, task_type, bundle_id, model_hash, deadline_round, "
            "task, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                task.round,
                task.task_type,
                bundle.bundle_id,
                task.model_hash,
                task.deadline_round,
                blob,
                int(time.time()),
            ),
        )
        self._bump_round(max(task.round, bundle.header.round))
        return Outcome("accepted", f"{task.task_type} task for round {task.round} stored")

    def _on_global_model(self, bundle: OpenedBundle, model: GlobalModel) -> Outcome:
        digest = model_hash(model.arrays)
        if digest != model.model_hash:
            raise IntegrityError(
                "global model arrays do not hash to the model_hash it names",
                expected=model.model_hash.hex(),
                found=digest.hex(),
                where=f"global model of round {model.round}",
            )
        self.models.put(model.arrays)
        self.conn.execute(
            "INSERT OR IGNORE INTO agent_models (model_hash, round, bundle_id, received_at) "
            "VALUES (?, ?, ?, ?)",
            (digest, model.round, bundle.bundle_id, int(time.time())),
        )
        # Verified just now: the next ingest (XOR parent) and train need not read it back.
        self._parents[digest] = (model.arrays, [array_hash(a) for _, a in model.arrays])
        return Outcome("accepted", f"global model of round {model.round} stored")

    def _on_delta(self, bundle: OpenedBundle, delta: LedgerDelta) -> Outcome:
        self._pinned()
        replica = self.replica
        if replica is None:  # attached whenever a coordinator is pinned
            raise NotPinnedError("no ledger replica: no coordinator pinned")
        result = replica.accept_delta(delta)
        ledger_round = self.wallet.scan_ledger()
        self._bump_round(ledger_round)
        return Outcome(
            "accepted", f"ledger {result.status}: {result.added} new entries, size {result.size}"
        )

    def _on_receipt(self, receipt: Receipt) -> Outcome:
        note = self.wallet.on_receipt(receipt)
        row = self.conn.execute(
            "SELECT kind FROM agent_sent WHERE bundle_id = ?", (receipt.bundle_id,)
        ).fetchone()
        if row is not None:
            self.conn.execute(
                "UPDATE agent_sent SET status = ?, reason = ?, receipt_at = ? WHERE bundle_id = ?",
                (receipt.status, receipt.reason[:1000], int(time.time()), receipt.bundle_id),
            )
        if note is None and row is None:
            return Outcome("accepted", "receipt for a bundle this agent does not track")
        return Outcome("accepted", note or f"{row[0] if row else 'bundle'} {receipt.status}")

    # ------------------------------------------------------------------ moving bundles

    def import_files(self, paths: Sequence[Path]) -> list[Path]:
        """Copy bundle files into the inbox (durably, under their own names).

        Raises:
            FormatError: a file name is not a bundle name (nothing is copied then).
            FileNotFoundError: a file does not exist.
        """
        spool = self._writer()
        for path in paths:
            parse_name(path.name)
        copied = []
        for path in paths:
            dest = spool.dirs.inbox / path.name
            if path.resolve() != dest.resolve() and not dest.exists():
                with open(path, "rb") as src, atomic_write(dest) as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            copied.append(dest)
        return copied

    def ingest(
        self, paths: Sequence[Path] | None = None, *, trust: Trust | None = None
    ) -> IngestReport:
        """Ingest ``paths`` (default: the inbox).  With no coordinator pinned, rosters among
        them are offered to ``trust`` first; if none is accepted nothing is ingested.

        Raises:
            NotPinnedError: no coordinator pinned, and no roster was trusted.
        """
        spool = self._writer()
        candidates = (
            list(paths)
            if paths is not None
            else [p for p in spool.dirs.inbox.iterdir() if not p.name.startswith(".")]
        )
        if not self._trust_first_use(candidates, trust):
            self._pinned()
        report = spool.ingest(self, paths)
        spool.expire_outbox(self.current_round())
        return report

    def sync(
        self, media: Path, *, trust: Trust | None = None, progress: bool = False
    ) -> SyncSummary:
        """Exchange bundles with a stick mounted at ``media``.  Before a coordinator is
        pinned, rosters on the stick are offered to ``trust``; if none is accepted only our
        outbox (the enrollment request) is copied out and nothing is taken in."""
        spool = self._writer()
        base = media / "lltoken" / self.config.federation.hex()
        if self.config.coordinator is None:
            found = [
                p
                for folder in (self.key_id.hex(), BROADCAST)
                if (base / folder).is_dir()
                for sender in sorted((base / folder).iterdir())
                if sender.is_dir() and not sender.is_symlink()
                for p in sorted(sender.glob(f"{Roster.KIND}.*.llb"))
            ]
            if not self._trust_first_use(found, trust):
                return self._sync_out_only(media, base)
        summary = sync_media(spool, self, media, progress=progress)
        spool.expire_outbox(self.current_round())
        return summary

    def _sync_out_only(self, media: Path, base: Path) -> SyncSummary:
        spool = self._writer()
        if media.is_symlink() or not media.is_dir():
            raise FormatError(
                "media folder does not exist", expected="a mounted folder", found=str(media)
            )
        summary = SyncSummary()
        summary.skip(
            media,
            "no coordinator pinned yet: nothing taken from the stick (its first roster "
            "must be confirmed)",
        )
        if os.access(media, os.W_OK):
            base.mkdir(parents=True, exist_ok=True)
            sync_out(spool, base, summary)
        os.sync()
        summary.safe_to_remove = True
        return summary

    # ------------------------------------------------------------------ tasks

    def tasks(self, status: str | None = None) -> list[TaskInfo]:
        """Tasks held, newest first; ``status`` filters (pending means not yet expired)."""
        current = self.current_round()
        rows = self.conn.execute(
            "SELECT round, task_type, model_hash, deadline_round, status, result "
            "FROM agent_tasks ORDER BY round DESC, task_type"
        ).fetchall()
        out = []
        for r in rows:
            state = str(r[4])
            if state == "pending" and r[3] is not None and int(r[3]) < current:
                state = "expired"
            info = TaskInfo(
                int(r[0]),
                str(r[1]),
                bytes(r[2]),
                None if r[3] is None else int(r[3]),
                state,
                self.models.path(bytes(r[2])).exists(),
                None if r[5] is None else bytes(r[5]),
            )
            if status is None or info.status == status:
                out.append(info)
        return out

    def _pending_task(self, task_type: str) -> RoundTask:
        row = self.conn.execute(
            "SELECT task FROM agent_tasks WHERE task_type = ? AND status = 'pending' "
            "ORDER BY round DESC LIMIT 1",
            (task_type,),
        ).fetchone()
        if row is None:
            last = self.conn.execute(
                "SELECT round, status FROM agent_tasks WHERE task_type = ? "
                "ORDER BY round DESC LIMIT 1",
                (task_type,),
            ).fetchone()
            if last is None:
                raise NoTaskError(
                    f"no {task_type} task received yet; sync a stick from the coordinator",
                    where=str(self.root),
                )
            raise NoTaskError(
                f"no pending {task_type} task: the latest (round {last[0]}) is {last[1]}",
                where=str(self.root),
            )
        parsed = payload_from_cbor(RoundTask.KIND, cbor.decode(bytes(row[0])), where="task")
        if not isinstance(parsed, RoundTask):
            raise SchemaError("stored task is not a round task", where=str(self.root))
        return parsed

    def _task_model(self, task: RoundTask, where: str) -> tuple[Arrays, list[bytes]]:
        """The task's global model, read back from the store and hash-checked (a damaged
        file is never trained on), and its array hashes."""
        if not self.models.path(task.model_hash).exists():
            row = self.conn.execute(
                "SELECT model_hash FROM agent_models WHERE round = ? ORDER BY received_at DESC",
                (task.round,),
            ).fetchone()
            if row is not None:
                raise IntegrityError(
                    "the global model received for this round is not the one the task names",
                    expected=task.model_hash.hex(),
                    found=bytes(row[0]).hex(),
                    where=where,
                )
            raise NoTaskError(
                "the task's global model has not arrived yet; sync again",
                expected=f"global model {task.model_hash.hex()}",
                where=where,
            )
        arrays = self.models.get(task.model_hash)
        # Same model hash, same array hashes.  The copy just checked replaces the one
        # held, so memory holds the model once.
        held = self._parents.get(task.model_hash)
        hashes = held[1] if held is not None else [array_hash(a) for _, a in arrays]
        self._parents[task.model_hash] = (arrays, hashes)
        return arrays, hashes

    def node_config_for(self, task: RoundTask) -> dict[str, UserValue]:
        """``context.node_config`` for a task: agent.json's node_config, plus
        ``num-partitions`` from the task's run_config when the operator did not set it."""
        values: dict[str, UserValue] = dict(self.config.node_config)
        partitions = task.run_config.get("num-partitions")
        if "num-partitions" not in values and isinstance(partitions, int):
            values["num-partitions"] = partitions
        return values

    def train(self, app: str | object | None = None) -> TaskResult:
        """Run the pending train task of the latest round through the ClientApp ``app``
        (default: agent.json's ``app``, else the example app) and write an encrypted,
        signed model update for the coordinator into the outbox.

        Nothing is written unless everything checks: the task is ours and not expired,
        the global model matches the task's hash, the app ran and its reply is sound.

        Raises:
            NoTaskError: no pending train task, or its global model has not arrived.
            ReplayError: the task's deadline round has passed.
            IntegrityError: the global model held does not match the task's hash.
            ClientAppError: the app could not load or raised.
            SchemaError: the reply's arrays or metrics break the rules.
        """
        return self._run_task("train", app)

    def evaluate(self, app: str | object | None = None) -> TaskResult:
        """Like :meth:`train`, for the pending evaluate task; writes an EvalResult."""
        return self._run_task("evaluate", app)

    def _run_task(self, task_type: str, app: str | object | None) -> TaskResult:
        spool = self._writer()
        coordinator = self._pinned()
        task = self._pending_task(task_type)
        where = f"round {task.round} {task_type} task"
        self._check_task(
            task, where, "the task's deadline has passed; wait for the next round's task"
        )
        arrays, hashes = self._task_model(task, where)
        result = run_client_app(
            app if app is not None else (self.config.app or DEFAULT_APP),
            "train" if task_type == "train" else "evaluate",
            arrays,
            task.config,
            _user_config(task.run_config, f"{where} run_config"),
            self.node_config_for(task),
            self.node_id,
            task.round,
            run_id=RUN_ID,
        )
        examples = result.metrics["num-examples"]
        if not isinstance(examples, int):  # run_client_app checked it is a positive int
            raise SchemaError("num-examples is not an integer", found=examples, where=where)
        metrics = _numeric_metrics(result.metrics)
        payload: Payload
        parents = None
        if task_type == "train":
            if result.arrays is None:
                raise SchemaError("train reply carries no arrays", where=where)
            payload = ModelUpdate(task.round, task.model_hash, examples, metrics, result.arrays)
            parents = {name: (h, a) for (name, a), h in zip(arrays, hashes, strict=True)}
        else:
            payload = EvalResult(task.round, task.model_hash, examples, metrics)
        with spool.transaction():
            packed = spool.send(
                payload, to=[coordinator], round=task.round, encrypt=True, parents=parents
            )
            self._remember_sent(packed.bundle_id, payload.KIND, task.round)
            self.conn.execute(
                "UPDATE agent_tasks SET status = 'done', result = ?, done_at = ? "
                "WHERE round = ? AND task_type = ?",
                (packed.bundle_id, int(time.time()), task.round, task_type),
            )
        return TaskResult(
            task.round,
            task_type,
            packed.bundle_id,
            packed.path,
            task.model_hash,
            examples,
            metrics,
        )

    # ------------------------------------------------------------------ wallet

    def roster(self) -> list[RosterMember]:
        rows = self.conn.execute(
            "SELECT name, suite, sign_key, box_key, status FROM agent_roster ORDER BY name"
        ).fetchall()
        return [
            RosterMember(str(r[0]), PublicIdentity(str(r[1]), bytes(r[2]), bytes(r[3])), str(r[4]))
            for r in rows
        ]

    def find_member(self, ref: str) -> RosterMember:
        """A roster member by name, key id (hex, or a unique prefix of 8+ digits) or
        fingerprint.

        Raises:
            NotFoundError: no single member matches.
        """
        norm = ref.strip().lower().replace("-", "")
        members = self.roster()
        matches = [m for m in members if m.name == ref]
        if not matches and len(norm) >= 8:
            matches = [
                m
                for m in members
                if m.identity.key_id.hex().startswith(norm)
                or m.identity.fingerprint.replace("-", "").lower() == norm
            ]
        if len(matches) != 1:
            raise NotFoundError(
                "no single roster member matches",
                expected="a member's name, key id (8+ hex digits) or fingerprint",
                found=f"{ref!r} ({len(matches)} matches among {len(members)} members)",
            )
        return matches[0]

    def balance(self) -> Balance:
        """Confirmed (verified ledger replica), pending outgoing, and spendable tokens."""
        return self.wallet.balance()

    def pending_transfers(self) -> list[TransferRecord]:
        return self.wallet.transfers("pending")

    def transfers(self) -> list[TransferRecord]:
        return self.wallet.transfers()

    def history(self) -> list[HistoryLine]:
        return self.wallet.history()

    def send(self, to: str | bytes, amount: int, memo: str = "") -> TransferRecord:
        """Sign a transfer of ``amount`` tokens to roster member ``to`` (name, key id or
        fingerprint; or a 16-byte key id) and put it in the outbox for the coordinator.

        Raises:
            NotFoundError: ``to`` is not a roster member.
            SchemaError: not an active member, ourselves, or a bad amount or memo.
            InsufficientFundsError: more than the spendable balance.
        """
        spool = self._writer()
        coordinator = self._pinned()
        member = self.find_member(to.hex() if isinstance(to, bytes) else to)
        recipient = member.identity.key_id
        if member.status != "active":
            raise SchemaError(
                "recipient is not an active member",
                expected="active",
                found=member.status,
                where=member.name,
            )
        if recipient == self.key_id:
            raise SchemaError("a transfer to oneself is meaningless", where=member.name)
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise SchemaError("amount must be a positive whole number", found=repr(amount))
        with spool.transaction():
            self.wallet.check_spend(amount)
            current = self.current_round()
            expires = current + TRANSFER_EXPIRY_ROUNDS
            tx = Transaction(self.key_id, recipient, amount, secrets.token_bytes(16), expires, memo)
            # Unencrypted: the ledger embeds this bundle so every auditor can check it.
            packed = spool.send(tx, to=[coordinator], round=current, expires=expires)
            if packed.path is None:
                raise FormatError("the transfer bundle was not written to the outbox")
            self._remember_sent(packed.bundle_id, tx.KIND, current)
            record = self.wallet.record_transfer(
                packed.bundle_id, tx, packed.path.read_bytes(), current
            )
        return record

    # ------------------------------------------------------------------ status

    def enrollment(self) -> str:
        """``active`` or ``revoked`` per the latest roster, else ``pending`` (requested)."""
        row = self.conn.execute(
            "SELECT status FROM agent_roster WHERE key_id = ?", (self.key_id,)
        ).fetchone()
        return "pending" if row is None else str(row[0])

    def status(self) -> dict[str, Any]:
        """Everything ``lltoken-agent status`` shows."""
        pinned = self.config.coordinator
        checkpoint = None if self.replica is None else self.replica.checkpoint
        evidence = self.root / "ledger" / "evidence"
        spool_dir = self.root / "spool"
        updates = self.sent(ModelUpdate.KIND)
        return {
            "name": self.config.name,
            "key_id": self.key_id.hex(),
            "fingerprint": self.public.fingerprint,
            "federation_id": self.config.federation.hex(),
            "federation_name": get_meta(self.conn, "federation_name")
            or self.config.federation_name,
            "coordinator": None
            if pinned is None
            else {"key_id": pinned.key_id.hex(), "fingerprint": pinned.fingerprint},
            "enrollment": self.enrollment(),
            "roster_version": int(get_meta(self.conn, "roster_version", "-1")),
            "node_id": self.node_id,
            "node_config": self.config.node_config,
            "current_round": self.current_round(),
            "tasks": [t.to_dict() for t in self.tasks() if t.status == "pending"],
            "balance": self.balance().to_dict(),
            "pending_transfers": len(self.pending_transfers()),
            "last_update": updates[0].to_dict() if updates else None,
            "checkpoint": None
            if checkpoint is None
            else {"size": checkpoint.size, "root": checkpoint.root.hex(), "time": checkpoint.time},
            "equivocation_evidence": sorted(p.name for p in evidence.glob("*.json"))
            if evidence.is_dir()
            else [],
            "outbox": len(list((spool_dir / "outbox").glob("*/*.llb"))),
            "inbox": len(
                [p for p in (spool_dir / "inbox").glob("*") if not p.name.startswith(".")]
            ),
            "quarantine": len(list((spool_dir / "quarantine").glob("*.llb"))),
        }


__all__ = [
    "DEFAULT_APP",
    "Agent",
    "AgentConfig",
    "Invite",
    "NoTaskError",
    "NotFoundError",
    "NotPinnedError",
    "RosterOffer",
    "SentRecord",
    "TaskInfo",
    "TaskResult",
    "Trust",
    "load_config",
    "load_public_key_file",
    "parse_invite",
    "parse_value",
    "read_roster_offer",
    "update_node_config",
]
