"""The token ledger's pure rules, shared by the coordinator, agents and auditors.

The ledger is a sequence of entries, each one deterministic CBOR map whose bytes are the
RFC 9162 Merkle leaf data.  Entry kinds (field ``kind``) and their other fields:

============  ===============================================================================
enroll        ``agent`` key id (16 bytes), ``name`` text, ``identity`` public identity map
revoke        ``agent``
round-close   ``round`` uint, ``model_hash`` (32 bytes), ``participants`` list of key ids
reward        ``agent``, ``amount`` uint, ``round`` uint, ``quality`` map text -> number,
              ``update`` (32-byte id of the model-update bundle that earned it)
transfer      ``bundle``: the sender's whole signed ``transaction`` bundle, embedded
allocation    ``agent``, ``amount`` (tokens the coordinator grants outside rewards)
============  ===============================================================================

:class:`LedgerState` replays entries in order and refuses any entry that breaks the rules
given everything before it: only enrolled, non-revoked agents take part; rounds close in
increasing order; a reward is for the latest closed round, to one of its participants, once;
a transfer carries a valid signature of its sender (re-checked from the embedded bundle
bytes), an unused nonce, an expiry not before the latest closed round, an active recipient,
and at most the sender's confirmed balance at that point.  Balances, per-agent counts and
the total supply are derived, never stored as facts.  Double spends are settled by ledger
order (the later transfer finds the balance gone); a transfer that arrives late is applied
when it arrives if it is still valid.

:func:`audit` replays a whole ledger from scratch against a signed checkpoint.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

from bundle import cbor
from bundle.checkpoint import checkpoint_to_json, verify_checkpoint
from bundle.envelope import Header, open_bundle_bytes, read_prefix
from bundle.errors import (
    IntegrityError,
    LLTokenError,
    ReplayError,
    SchemaError,
    SignatureError,
    SizeError,
)
from bundle.keys import KEY_ID_BYTES, PublicIdentity
from bundle.merkle import leaf_hash
from bundle.merkletree import MerkleTree
from bundle.payloads import (
    MAX_AMOUNT,
    Checkpoint,
    Transaction,
    _check_type,
    _digest,
    _fail,
    _text,
    _uint,
)

MAX_SUPPLY = 2**62  # every balance and the supply fit a signed 64-bit SQLite integer
MAX_TRANSFER_BUNDLE = 64 * 1024
MAX_PARTICIPANTS = 100_000
MAX_NAME = 64
REPUTATION_MAX = 2
MAX_ENTRY_BYTES = 8 * 1024 * 1024
MAX_ROUND = 2**63 - 1  # rounds and indices fit a signed 64-bit SQLite integer
MAX_QUALITY_ITEMS = 64


# ---------------------------------------------------------------------------- entries


def _fields(obj: Any, kind: str, required: set[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise _fail("ledger entry must be a map", where, found=type(obj).__name__)
    if set(obj) != required | {"kind"}:
        raise _fail(
            f"{kind} entry has the wrong fields",
            where,
            expected=sorted(required | {"kind"}),
            found=sorted(map(str, obj)),
        )
    return obj


def _key_id(value: Any, name: str, where: str) -> None:
    _digest(value, name, where, KEY_ID_BYTES)


def _amount(value: Any, name: str, where: str, *, allow_zero: bool) -> None:
    _check_type(value, int, name, where)
    low = 0 if allow_zero else 1
    if not low <= value <= MAX_AMOUNT:
        raise _fail(
            f"field {name!r} out of range",
            f"{where}.{name}",
            expected=f"{low}..{MAX_AMOUNT}",
            found=value,
        )


def _round(value: Any, name: str, where: str) -> None:
    _uint(value, name, where)
    if value > MAX_ROUND:
        raise _fail(
            f"field {name!r} out of range",
            f"{where}.{name}",
            expected=f"<= {MAX_ROUND}",
            found=value,
        )


def _quality(value: Any, where: str) -> dict[str, int | float]:
    """A private copy of a quality breakdown: up to 64 names (1..64 characters) mapped to
    64-bit integers or finite floats."""
    if not isinstance(value, Mapping):
        raise _fail("quality breakdown is not a map", where, found=type(value).__name__)
    quality = dict(value)
    if len(quality) > MAX_QUALITY_ITEMS:
        raise _fail(
            "quality breakdown has too many entries",
            where,
            expected=f"<= {MAX_QUALITY_ITEMS}",
            found=len(quality),
        )
    for name, item in quality.items():
        if type(name) is not str or not 0 < len(name) <= MAX_NAME:
            raise _fail(
                "quality name must be text of 1..64 characters", where, found=repr(name)[:70]
            )
        kind = type(item)
        if kind is int:
            if not -(2**63) <= item < 2**63:
                raise _fail(
                    f"quality {name!r} out of range", where, expected="a 64-bit integer", found=item
                )
        elif kind is not float or not math.isfinite(item):
            raise _fail(
                f"quality {name!r} is not a finite number",
                where,
                expected="an integer or a finite float",
                found=repr(item)[:40],
            )
    return quality


class LedgerEntry:
    """Base of the entry kinds: ``KIND`` and the CBOR mapping (with ``kind`` added)."""

    KIND: ClassVar[str] = ""

    def fields(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_cbor(self) -> dict[str, Any]:
        return {"kind": self.KIND, **self.fields()}

    def encode(self) -> bytes:
        """The entry's deterministic CBOR: the bytes that go into the log and the tree."""
        return cbor.encode(self.to_cbor())

    @classmethod
    def from_cbor(cls, obj: Any, where: str) -> LedgerEntry:
        raise NotImplementedError


@dataclass(frozen=True)
class Enroll(LedgerEntry):
    """An agent joins: its key id, name and public identity."""

    KIND: ClassVar[str] = "enroll"
    agent: bytes
    name: str
    identity: PublicIdentity

    def __post_init__(self) -> None:
        _key_id(self.agent, "agent", self.KIND)
        _text(self.name, "name", self.KIND, MAX_NAME)
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise _fail(
                "agent name must be non-empty letters, digits, '-', '_' or '.'",
                f"{self.KIND}.name",
                found=self.name,
            )
        _check_type(self.identity, PublicIdentity, "identity", self.KIND)
        if self.identity.key_id != self.agent:
            raise _fail(
                "agent key id does not match its identity",
                f"{self.KIND}.agent",
                expected=self.identity.key_id.hex(),
                found=self.agent.hex(),
            )

    def fields(self) -> dict[str, Any]:
        return {"agent": self.agent, "name": self.name, "identity": self.identity.to_dict()}

    @classmethod
    def from_cbor(cls, obj: Any, where: str) -> Enroll:
        o = _fields(obj, cls.KIND, {"agent", "name", "identity"}, where)
        try:
            identity = PublicIdentity.from_dict(o["identity"])
        except LLTokenError as e:
            raise _fail(e.reason, f"{where}.identity", expected=e.expected, found=e.found) from e
        return cls(o["agent"], o["name"], identity)


@dataclass(frozen=True)
class Revoke(LedgerEntry):
    """An agent's key is revoked, for good: it can no longer earn, send or receive."""

    KIND: ClassVar[str] = "revoke"
    agent: bytes

    def __post_init__(self) -> None:
        _key_id(self.agent, "agent", self.KIND)

    def fields(self) -> dict[str, Any]:
        return {"agent": self.agent}

    @classmethod
    def from_cbor(cls, obj: Any, where: str) -> Revoke:
        return cls(_fields(obj, cls.KIND, {"agent"}, where)["agent"])


@dataclass(frozen=True)
class RoundClose(LedgerEntry):
    """A round closed: its number, the new global model's hash, who took part."""

    KIND: ClassVar[str] = "round-close"
    round: int
    model_hash: bytes
    participants: Sequence[bytes]

    def __post_init__(self) -> None:
        _round(self.round, "round", self.KIND)
        _digest(self.model_hash, "model_hash", self.KIND)
        _check_type(self.participants, (tuple, list), "participants", self.KIND)
        object.__setattr__(self, "participants", tuple(self.participants))
        if len(self.participants) > MAX_PARTICIPANTS:
            raise _fail(
                "too many participants",
                f"{self.KIND}.participants",
                expected=f"<= {MAX_PARTICIPANTS}",
                found=len(self.participants),
            )
        for agent in self.participants:
            _key_id(agent, "participants", self.KIND)
        if len(set(self.participants)) != len(self.participants):
            raise _fail("a participant is listed twice", f"{self.KIND}.participants")

    def fields(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "model_hash": self.model_hash,
            "participants": list(self.participants),
        }

    @classmethod
    def from_cbor(cls, obj: Any, where: str) -> RoundClose:
        o = _fields(obj, cls.KIND, {"round", "model_hash", "participants"}, where)
        _check_type(o["participants"], list, "participants", where)
        return cls(o["round"], o["model_hash"], tuple(o["participants"]))


@dataclass(frozen=True)
class Reward(LedgerEntry):
    """Tokens earned by one participant of the latest closed round, with the breakdown of
    how the coordinator measured its contribution (``quality``, e.g. q, base, bonus,
    reputation)."""

    KIND: ClassVar[str] = "reward"
    agent: bytes
    amount: int
    round: int
    quality: Mapping[str, int | float]
    update: bytes

    def __post_init__(self) -> None:
        _key_id(self.agent, "agent", self.KIND)
        _amount(self.amount, "amount", self.KIND, allow_zero=True)
        _round(self.round, "round", self.KIND)
        quality = _quality(self.quality, f"{self.KIND}.quality")
        reputation = quality.get("reputation")
        if reputation is not None and not 0 <= reputation <= REPUTATION_MAX:
            raise _fail(
                "reputation out of range",
                f"{self.KIND}.quality.reputation",
                expected=f"0..{REPUTATION_MAX}",
                found=reputation,
            )
        _digest(self.update, "update", self.KIND)
        object.__setattr__(self, "quality", MappingProxyType(quality))

    def fields(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "amount": self.amount,
            "round": self.round,
            "quality": dict(self.quality),
            "update": self.update,
        }

    @classmethod
    def from_cbor(cls, obj: Any, where: str) -> Reward:
        o = _fields(obj, cls.KIND, {"agent", "amount", "round", "quality", "update"}, where)
        return cls(o["agent"], o["amount"], o["round"], o["quality"], o["update"])


@dataclass(frozen=True)
class Transfer(LedgerEntry):
    """A transfer: the sender's signed ``transaction`` bundle, embedded byte for byte so
    anyone can re-check the sender's signature."""

    KIND: ClassVar[str] = "transfer"
    bundle: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_type(self.bundle, bytes, "bundle", self.KIND)
        if len(self.bundle) > MAX_TRANSFER_BUNDLE:
            raise SizeError(
                "embedded transaction bundle too large",
                expected=f"<= {MAX_TRANSFER_BUNDLE} bytes",
                found=len(self.bundle),
                where=f"{self.KIND}.bundle",
            )

    def fields(self) -> dict[str, Any]:
        return {"bundle": self.bundle}

    @classmethod
    def from_cbor(cls, obj: Any, where: str) -> Transfer:
        return cls(_fields(obj, cls.KIND, {"bundle"}, where)["bundle"])


@dataclass(frozen=True)
class Allocation(LedgerEntry):
    """Tokens the coordinator grants an agent outside the reward formula."""

    KIND: ClassVar[str] = "allocation"
    agent: bytes
    amount: int

    def __post_init__(self) -> None:
        _key_id(self.agent, "agent", self.KIND)
        _amount(self.amount, "amount", self.KIND, allow_zero=False)

    def fields(self) -> dict[str, Any]:
        return {"agent": self.agent, "amount": self.amount}

    @classmethod
    def from_cbor(cls, obj: Any, where: str) -> Allocation:
        o = _fields(obj, cls.KIND, {"agent", "amount"}, where)
        return cls(o["agent"], o["amount"])


ENTRY_TYPES: dict[str, type[LedgerEntry]] = {
    cls.KIND: cls for cls in (Enroll, Revoke, RoundClose, Reward, Transfer, Allocation)
}
ENTRY_KINDS = tuple(ENTRY_TYPES)


def decode_entry(data: bytes, where: str = "ledger entry") -> LedgerEntry:
    """Strictly parse one entry's bytes.

    The CBOR decoder accepts only deterministic encodings and the schema only exact field
    sets, so ``decode_entry(b).encode() == b`` for every ``b`` it accepts: one entry, one
    leaf hash.

    Raises:
        SizeError: the entry is over its size cap.
        FormatError: the bytes are not deterministic CBOR.
        SchemaError: unknown kind, wrong fields, or a field that breaks its kind's rules.
    """
    if len(data) > MAX_ENTRY_BYTES:
        raise SizeError(
            "ledger entry too large",
            expected=f"<= {MAX_ENTRY_BYTES} bytes",
            found=len(data),
            where=where,
        )
    obj = cbor.decode(data, max_depth=4, max_items=4 * MAX_PARTICIPANTS, where=where)
    kind = obj.get("kind") if isinstance(obj, dict) else None
    entry_type = ENTRY_TYPES.get(kind) if isinstance(kind, str) else None
    if entry_type is None:
        raise SchemaError(
            "unknown ledger entry kind",
            expected=sorted(ENTRY_TYPES),
            found=repr(kind)[:40],
            where=where,
        )
    try:
        return entry_type.from_cbor(obj, where)
    except LLTokenError as e:
        if e.where and e.where.startswith(where):
            raise
        raise e.at(where) from None


# ---------------------------------------------------------------------------- state

_ACCOUNT_FIELDS = (
    "agent",
    "name",
    "identity",
    "enrolled_at",
    "revoked_at",
    "balance",
    "rounds",
    "rewards",
    "tokens",
    "allocated",
    "sent",
    "received",
    "reputation",
    "last_round",
    "last_reward_round",
)


@dataclass(frozen=True)
class Account:
    """One agent as the ledger sees it; every number is derived from entries."""

    agent: bytes
    name: str
    identity: PublicIdentity
    enrolled_at: int
    revoked_at: int | None = None
    balance: int = 0
    rounds: int = 0
    """round-close entries that list the agent."""
    rewards: int = 0
    """reward entries for the agent."""
    tokens: int = 0
    """tokens earned by rewards."""
    allocated: int = 0
    sent: int = 0
    received: int = 0
    reputation: float | int | None = None
    """``quality["reputation"]`` of the agent's latest reward (None if it had none)."""
    last_round: int | None = None
    last_reward_round: int | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_json(self) -> dict[str, Any]:
        return {
            "agent": self.agent.hex(),
            "name": self.name,
            "active": self.active,
            "enrolled_at": self.enrolled_at,
            "revoked_at": self.revoked_at,
            "balance": self.balance,
            "rounds": self.rounds,
            "rewards": self.rewards,
            "tokens": self.tokens,
            "allocated": self.allocated,
            "sent": self.sent,
            "received": self.received,
            "reputation": self.reputation,
        }


class _Record:
    """The mutable twin of :class:`Account` inside a state.  Replaying a million entries
    updates accounts millions of times; building a new frozen Account each time cost
    more than the rules themselves, so states mutate these and hand out snapshots."""

    __slots__ = _ACCOUNT_FIELDS

    agent: bytes
    name: str
    identity: PublicIdentity
    enrolled_at: int
    revoked_at: int | None
    balance: int
    rounds: int
    rewards: int
    tokens: int
    allocated: int
    sent: int
    received: int
    reputation: float | int | None
    last_round: int | None
    last_reward_round: int | None

    @classmethod
    def of(cls, account: Account) -> _Record:
        record = cls()
        for name in _ACCOUNT_FIELDS:
            setattr(record, name, getattr(account, name))
        return record

    def copy(self) -> _Record:
        record = _Record()
        for name in _ACCOUNT_FIELDS:
            setattr(record, name, getattr(self, name))
        return record

    def snapshot(self) -> Account:
        # Filling __dict__ directly skips the frozen dataclass's per-field
        # object.__setattr__ calls; the values were validated when they were derived.
        account = object.__new__(Account)
        account.__dict__.update({name: getattr(self, name) for name in _ACCOUNT_FIELDS})
        return account


@dataclass(frozen=True)
class Movement:
    """One line of an agent's history: what an entry did to it (amount is signed)."""

    index: int
    kind: str
    agent: bytes
    amount: int
    round: int | None = None
    counterparty: bytes | None = None


@dataclass(frozen=True)
class Applied:
    """What applying one entry did: the parsed entry, its leaf hash, the agents whose
    accounts it changed, the tokens it created, and for a transfer the verified
    transaction, its bundle id and its ``sender || nonce`` replay key."""

    index: int
    entry: LedgerEntry
    leaf_hash: bytes
    parties: tuple[bytes, ...]
    minted: int = 0
    transaction: Transaction | None = None
    bundle_id: bytes | None = None
    nonce_key: bytes | None = None

    @property
    def kind(self) -> str:
        return self.entry.KIND

    @property
    def movements(self) -> tuple[Movement, ...]:
        return entry_movements(self.entry, self.index, self.transaction)


def entry_movements(
    entry: LedgerEntry, index: int, transaction: Transaction | None = None
) -> tuple[Movement, ...]:
    """The history lines entry ``index`` adds: one per agent it concerns.

    A transfer needs its ``transaction`` (from the embedded bundle, once verified).
    """
    if isinstance(entry, Reward):
        return (Movement(index, entry.KIND, entry.agent, entry.amount, entry.round),)
    if isinstance(entry, Allocation):
        return (Movement(index, entry.KIND, entry.agent, entry.amount),)
    if isinstance(entry, RoundClose):
        return tuple(Movement(index, entry.KIND, p, 0, entry.round) for p in entry.participants)
    if isinstance(entry, Transfer):
        if transaction is None:
            raise ValueError("a transfer's movements need its verified transaction")
        tx = transaction
        return (
            Movement(index, entry.KIND, tx.sender, -tx.amount, None, tx.recipient),
            Movement(index, entry.KIND, tx.recipient, tx.amount, None, tx.sender),
        )
    if isinstance(entry, Enroll | Revoke):
        return (Movement(index, entry.KIND, entry.agent, 0),)
    raise ValueError(f"unknown ledger entry kind {entry.KIND!r}")


class DuplicateTransferError(ReplayError):
    """A transfer bundle that is already in the ledger (the same bundle delivered twice)."""

    def __init__(self, message: str, *, original_index: int, where: str) -> None:
        self.original_index = original_index
        super().__init__(
            message, expected="a new transfer", found=f"entry {original_index}", where=where
        )


class LedgerState:
    """The state every ledger entry is checked against, derived by replaying entries.

    :meth:`check` runs an entry's rules and changes nothing; :meth:`apply` checks, then
    applies.  ``fork()`` gives a cheap scratch state that reads through to this one;
    ``absorb()`` folds a fork's changes back.  The store applies a batch to a fork and
    absorbs it only once the batch is durable, so a refused or failed batch leaves no
    trace.
    """

    def __init__(self, federation: bytes) -> None:
        _digest(federation, "federation", "ledger state", 16)
        self.federation = federation
        self.size = 0
        self.current_round: int | None = None
        self.total_supply = 0
        self.kinds: dict[str, int] = dict.fromkeys(ENTRY_KINDS, 0)
        self._records: dict[bytes, _Record] = {}
        self._nonces: dict[bytes, tuple[int, bytes]] = {}
        self._parent: LedgerState | None = None
        self._base_size = 0

    # -- construction

    @classmethod
    def restore(
        cls,
        federation: bytes,
        *,
        size: int,
        current_round: int | None,
        total_supply: int,
        kinds: Mapping[str, int],
        accounts: Iterable[Account],
        nonces: Iterable[tuple[bytes, int, bytes]],
    ) -> LedgerState:
        """Rebuild a state from a cache (the store's index) instead of replaying."""
        state = cls(federation)
        state.size = size
        state.current_round = current_round
        state.total_supply = total_supply
        state.kinds.update(kinds)
        state._records = {a.agent: _Record.of(a) for a in accounts}
        state._nonces = {key: (index, bundle_id) for key, index, bundle_id in nonces}
        return state

    def fork(self) -> LedgerState:
        """A scratch state on top of this one (O(1)); this one must not change until the
        fork is absorbed or dropped."""
        child = LedgerState(self.federation)
        child.size = child._base_size = self.size
        child.current_round = self.current_round
        child.total_supply = self.total_supply
        child.kinds = dict(self.kinds)
        child._parent = self
        return child

    def absorb(self, child: LedgerState) -> None:
        """Make a fork's changes this state's own.

        Raises:
            ValueError: ``child`` is not a fork of this state, or this state moved on since.
        """
        if child._parent is not self or child._base_size != self.size:
            raise ValueError("can only absorb a fork of this state taken at its current size")
        self._records.update(child._records)
        self._nonces.update(child._nonces)
        self.size = child.size
        self.current_round = child.current_round
        self.total_supply = child.total_supply
        self.kinds = dict(child.kinds)
        child._parent = None

    # -- queries

    def _read(self, agent: bytes) -> _Record | None:
        record = self._records.get(agent)
        if record is None and self._parent is not None:
            return self._parent._read(agent)
        return record

    def _write(self, agent: bytes) -> _Record:
        """The record to change: a fork copies its parent's on first write."""
        record = self._records.get(agent)
        if record is None:
            found = self._read(agent)
            if found is None:
                raise KeyError(agent)
            record = self._records[agent] = found.copy()
        return record

    def account(self, agent: bytes) -> Account | None:
        record = self._read(agent)
        return None if record is None else record.snapshot()

    @property
    def accounts(self) -> dict[bytes, Account]:
        """A snapshot of every account."""
        merged = {} if self._parent is None else dict(self._parent.accounts)
        merged.update((agent, r.snapshot()) for agent, r in self._records.items())
        return merged

    def balance(self, agent: bytes) -> int:
        record = self._read(agent)
        return 0 if record is None else record.balance

    def balances(self) -> dict[bytes, int]:
        return {agent: a.balance for agent, a in self.accounts.items()}

    def active_identity(self, key_id: bytes) -> PublicIdentity | None:
        """Keyring for bundle checks: enrolled, non-revoked agents only."""
        record = self._read(key_id)
        return record.identity if record is not None and record.revoked_at is None else None

    def nonce_entry(self, key: bytes) -> tuple[int, bytes] | None:
        """(entry index, bundle id) of the transfer that used ``sender || nonce``."""
        found = self._nonces.get(key)
        if found is None and self._parent is not None:
            return self._parent.nonce_entry(key)
        return found

    # -- the rules

    def apply(self, data: bytes, index: int | None = None) -> Applied:
        """Check entry ``data`` at position ``index`` (default: the next one) and apply it.

        Raises:
            SchemaError, ReplayError, SignatureError, UnknownSenderError, FormatError,
            SizeError: the entry breaks a rule; the message names the entry number.
            Nothing changes when it raises.
        """
        applied = self.check(data, index)
        self._commit(applied)
        return applied

    def check(self, data: bytes, index: int | None = None) -> Applied:
        """Everything :meth:`apply` does except changing the state.

        Raises:
            LLTokenError: as :meth:`apply`.
        """
        if index is None:
            index = self.size
        if index != self.size:
            raise SchemaError(
                "ledger entry out of order", expected=f"entry {self.size}", found=f"entry {index}"
            )
        where = f"ledger entry {index}"
        entry = decode_entry(data, where)
        where = f"{where} ({entry.KIND})"
        lh = leaf_hash(data)
        if isinstance(entry, Reward):
            return self._check_reward(entry, index, lh, where)
        if isinstance(entry, Transfer):
            return self._check_transfer(entry, index, lh, where)
        if isinstance(entry, RoundClose):
            return self._check_round_close(entry, index, lh, where)
        if isinstance(entry, Enroll):
            if self._read(entry.agent) is not None:
                raise SchemaError(
                    "key is already enrolled (revocation is permanent: enroll a new key)",
                    found=entry.agent.hex(),
                    where=where,
                )
            return Applied(index, entry, lh, (entry.agent,))
        if isinstance(entry, Revoke):
            self._active(entry.agent, "revoked agent", where)
            return Applied(index, entry, lh, (entry.agent,))
        if isinstance(entry, Allocation):
            self._active(entry.agent, "allocation recipient", where)
            self._mint(entry.amount, where)
            return Applied(index, entry, lh, (entry.agent,), minted=entry.amount)
        raise SchemaError("unhandled ledger entry kind", found=entry.KIND, where=where)

    def _commit(self, applied: Applied) -> None:
        """Apply a checked entry's effects (no check can fail here)."""
        entry = applied.entry
        if isinstance(entry, Reward):
            r = self._write(entry.agent)
            r.balance += entry.amount
            r.rewards += 1
            r.tokens += entry.amount
            r.reputation = entry.quality.get("reputation")
            r.last_reward_round = entry.round
        elif isinstance(entry, Transfer):
            tx = applied.transaction
            if tx is None or applied.nonce_key is None or applied.bundle_id is None:
                raise ValueError("a checked transfer carries its transaction")
            sender, recipient = self._write(tx.sender), self._write(tx.recipient)
            sender.balance -= tx.amount
            sender.sent += tx.amount
            recipient.balance += tx.amount
            recipient.received += tx.amount
            self._nonces[applied.nonce_key] = (applied.index, applied.bundle_id)
        elif isinstance(entry, RoundClose):
            for agent in entry.participants:
                r = self._write(agent)
                r.rounds += 1
                r.last_round = entry.round
            self.current_round = entry.round
        elif isinstance(entry, Enroll):
            account = Account(entry.agent, entry.name, entry.identity, enrolled_at=applied.index)
            self._records[entry.agent] = _Record.of(account)
        elif isinstance(entry, Revoke):
            self._write(entry.agent).revoked_at = applied.index
        elif isinstance(entry, Allocation):
            r = self._write(entry.agent)
            r.balance += entry.amount
            r.allocated += entry.amount
        self.total_supply += applied.minted
        self.kinds[entry.KIND] += 1
        self.size += 1

    def _active(self, agent: bytes, role: str, where: str) -> _Record:
        found = self._read(agent)
        if found is None or found.revoked_at is not None:
            state = "revoked" if found is not None else "not enrolled"
            raise SchemaError(
                f"{role} is not an enrolled, active agent",
                expected="an enrolled, non-revoked agent",
                found=f"{agent.hex()} ({state})",
                where=where,
            )
        return found

    def _mint(self, amount: int, where: str) -> None:
        if self.total_supply + amount > MAX_SUPPLY:
            raise SchemaError(
                "total supply would exceed its cap",
                expected=f"<= {MAX_SUPPLY}",
                found=self.total_supply + amount,
                where=where,
            )

    def _check_round_close(self, entry: RoundClose, index: int, lh: bytes, where: str) -> Applied:
        if self.current_round is not None and entry.round <= self.current_round:
            raise ReplayError(
                "round closed out of order",
                expected=f"a round after {self.current_round}",
                found=entry.round,
                where=where,
            )
        for agent in entry.participants:
            self._active(agent, "participant", where)
        return Applied(index, entry, lh, tuple(entry.participants))

    def _check_reward(self, entry: Reward, index: int, lh: bytes, where: str) -> Applied:
        record = self._active(entry.agent, "rewarded agent", where)
        if entry.round != self.current_round:
            raise SchemaError(
                "reward is not for the latest closed round",
                expected=self.current_round,
                found=entry.round,
                where=where,
            )
        if record.last_round != entry.round:
            raise SchemaError(
                "rewarded agent did not take part in the round",
                expected=f"a participant of round {entry.round}",
                found=entry.agent.hex(),
                where=where,
            )
        if record.last_reward_round == entry.round:
            raise ReplayError(
                "agent already rewarded for this round",
                expected="one reward per agent and round",
                found=f"a second reward for round {entry.round}",
                where=where,
            )
        self._mint(entry.amount, where)
        return Applied(index, entry, lh, (entry.agent,), minted=entry.amount)

    def _transaction_policy(self, where: str) -> Callable[[Header], None]:
        def policy(header: Header) -> None:
            if header.kind != Transaction.KIND:
                raise SchemaError(
                    "embedded bundle is not a transaction",
                    expected=Transaction.KIND,
                    found=header.kind,
                    where=where,
                )
            if header.federation != self.federation:
                raise SchemaError(
                    "transaction is for another federation",
                    expected=self.federation.hex(),
                    found=header.federation.hex(),
                    where=where,
                )
            if header.payload.encryption is not None:
                raise SchemaError(
                    "transaction bundle is encrypted: ledger transfers must be readable by "
                    "every auditor",
                    where=where,
                )
            if (
                header.expires is not None
                and self.current_round is not None
                and self.current_round > header.expires
            ):
                raise ReplayError(
                    "transaction bundle expired",
                    expected=f"latest closed round <= {header.expires}",
                    found=self.current_round,
                    where=where,
                )

        return policy

    def _check_transfer(self, entry: Transfer, index: int, lh: bytes, where: str) -> Applied:
        bundle_where = f"{where} bundle"
        opened = open_bundle_bytes(
            entry.bundle,
            self.active_identity,
            where=bundle_where,
            policy=self._transaction_policy(bundle_where),
        )
        tx = opened.payload
        if not isinstance(tx, Transaction):  # the policy admitted only transactions
            raise SchemaError("embedded bundle is not a transaction", where=bundle_where)
        if tx.sender != opened.header.sender:
            raise SignatureError(
                "transaction sender is not the key that signed it",
                expected=opened.header.sender.hex(),
                found=tx.sender.hex(),
                where=where,
            )
        nonce_key = tx.sender + tx.nonce
        used = self.nonce_entry(nonce_key)
        if used is not None:
            if used[1] == opened.bundle_id:
                raise DuplicateTransferError(
                    "transfer is already in the ledger", original_index=used[0], where=where
                )
            raise ReplayError(
                "transaction nonce already used by this sender",
                expected="a fresh nonce",
                found=f"nonce {tx.nonce.hex()} of entry {used[0]}",
                where=where,
            )
        if self.current_round is not None and self.current_round > tx.expires_round:
            raise ReplayError(
                "transfer expired",
                expected=f"latest closed round <= {tx.expires_round}",
                found=self.current_round,
                where=where,
            )
        sender = self._active(tx.sender, "sender", where)
        self._active(tx.recipient, "recipient", where)
        if sender.balance < tx.amount:
            raise SchemaError(
                "insufficient confirmed balance",
                expected=f">= {tx.amount}",
                found=sender.balance,
                where=where,
            )
        return Applied(
            index,
            entry,
            lh,
            (tx.sender, tx.recipient),
            transaction=tx,
            bundle_id=opened.bundle_id,
            nonce_key=nonce_key,
        )


# ---------------------------------------------------------------------------- transfers

TRANSFER_ACCEPTED = "accepted"
TRANSFER_REJECTED = "rejected"
TRANSFER_DUPLICATE = "duplicate"


@dataclass(frozen=True)
class TransferDecision:
    """What the coordinator does with a transaction bundle, decided before appending.

    ``status`` is a receipt status: ``accepted`` (append ``entry``), ``rejected`` (emit a
    rejected receipt with ``reason``; nothing is appended) or ``duplicate`` (already in
    the ledger at ``ledger_index``: re-send that receipt).
    """

    status: str
    reason: str
    entry: bytes | None = None
    bundle_id: bytes | None = None
    transaction: Transaction | None = None
    ledger_index: int | None = None
    error: LLTokenError | None = None

    @property
    def accepted(self) -> bool:
        return self.status == TRANSFER_ACCEPTED


def transfer_decision(state: LedgerState, bundle_bytes: bytes) -> TransferDecision:
    """Decide whether the transaction bundle ``bundle_bytes`` can be appended now.

    Runs every ledger rule against ``state`` without changing it.  To decide several
    transfers before one append, decide each against a ``state.fork()`` and ``apply`` the
    accepted entries to that fork as you go, so later ones see the earlier ones.
    """
    bundle_id: bytes | None
    try:
        bundle_id = read_prefix(io.BytesIO(bundle_bytes), len(bundle_bytes)).bundle_id
    except LLTokenError:
        bundle_id = None
    try:
        entry = Transfer(bundle_bytes).encode()
        applied = state.check(entry)
    except DuplicateTransferError as e:
        return TransferDecision(
            TRANSFER_DUPLICATE, str(e), bundle_id=bundle_id, ledger_index=e.original_index, error=e
        )
    except LLTokenError as e:
        return TransferDecision(TRANSFER_REJECTED, str(e), bundle_id=bundle_id, error=e)
    return TransferDecision(
        TRANSFER_ACCEPTED,
        "",
        entry=entry,
        bundle_id=applied.bundle_id,
        transaction=applied.transaction,
    )


# ---------------------------------------------------------------------------- audit


@dataclass(frozen=True)
class AuditReport:
    """The result of replaying a ledger from scratch against a signed checkpoint."""

    checkpoint: Checkpoint
    root: bytes
    total_supply: int
    accounts: Mapping[bytes, Account]
    kinds: Mapping[str, int]
    checkpoints_checked: int = 1
    claims_checked: int = 0

    @property
    def size(self) -> int:
        return self.checkpoint.size

    @property
    def balances(self) -> dict[bytes, int]:
        return {agent: a.balance for agent, a in self.accounts.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "size": self.size,
            "root": self.root.hex(),
            "checkpoint": checkpoint_to_json(self.checkpoint),
            "total_supply": self.total_supply,
            "kinds": dict(self.kinds),
            "checkpoints_checked": self.checkpoints_checked,
            "claims_checked": self.claims_checked,
            "accounts": [a.to_json() for a in self.accounts.values()],
        }


class Auditor:
    """Replays a ledger entry by entry from the first one, with its Merkle tree, and
    checks signed checkpoints against the replay as they come."""

    def __init__(self, federation: bytes, coordinator: PublicIdentity) -> None:
        self.state = LedgerState(federation)
        self.tree = MerkleTree()
        self.coordinator = coordinator
        self.checkpoints_checked = 0

    @property
    def size(self) -> int:
        return self.state.size

    def add(self, data: bytes) -> Applied:
        """Apply the next entry.

        Raises:
            LLTokenError: the entry breaks a rule (the message names its number).
        """
        applied = self.state.apply(data)
        self.tree.append(applied.leaf_hash)
        return applied

    def check_checkpoint(self, checkpoint: Checkpoint, where: str = "checkpoint") -> None:
        """``checkpoint`` is the coordinator's and covers exactly the entries so far.

        Raises:
            SignatureError: not signed by the coordinator.
            SchemaError: another federation.
            IntegrityError: its size or root differs from the replay.
        """
        verify_checkpoint(
            checkpoint, self.coordinator, federation=self.state.federation, where=where
        )
        if checkpoint.size != self.size:
            raise IntegrityError(
                "ledger length differs from the signed checkpoint",
                expected=f"{checkpoint.size} entries",
                found=f"{self.size} entries",
                where=where,
            )
        root = self.tree.root()
        if root != checkpoint.root:
            raise IntegrityError(
                "entries do not hash to the signed root: an entry was altered, added or removed",
                expected=checkpoint.root.hex(),
                found=root.hex(),
                where=where,
            )
        self.checkpoints_checked += 1

    def report(self, checkpoint: Checkpoint, claims_checked: int = 0) -> AuditReport:
        return AuditReport(
            checkpoint=checkpoint,
            root=self.tree.root(),
            total_supply=self.state.total_supply,
            accounts=dict(self.state.accounts),
            kinds=dict(self.state.kinds),
            checkpoints_checked=self.checkpoints_checked,
            claims_checked=claims_checked,
        )


def audit(
    entries: Iterable[bytes], checkpoint: Checkpoint, coordinator_public: PublicIdentity
) -> AuditReport:
    """Replay ``entries`` from scratch and check them against the signed ``checkpoint``.

    Checks the checkpoint's signature first, then every entry's rules (and every
    transfer's signature), then the count and the Merkle root.

    Raises:
        SignatureError: the checkpoint (or an embedded transfer) is not validly signed.
        SchemaError, ReplayError, UnknownSenderError, FormatError: an entry breaks a
            rule; the message names the entry number.
        IntegrityError: the count or the root differs from the checkpoint.
    """
    verify_checkpoint(checkpoint, coordinator_public)
    auditor = Auditor(checkpoint.federation, coordinator_public)
    for index, data in enumerate(entries):
        if index >= checkpoint.size:
            raise IntegrityError(
                "more entries than the signed checkpoint covers",
                expected=f"{checkpoint.size} entries",
                found=f"entry {index}",
                where="checkpoint",
            )
        auditor.add(data)
    auditor.check_checkpoint(checkpoint)
    return auditor.report(checkpoint)


__all__ = [
    "ENTRY_KINDS",
    "ENTRY_TYPES",
    "MAX_SUPPLY",
    "MAX_TRANSFER_BUNDLE",
    "Account",
    "Allocation",
    "Applied",
    "AuditReport",
    "Auditor",
    "DuplicateTransferError",
    "Enroll",
    "LedgerEntry",
    "LedgerState",
    "Movement",
    "Revoke",
    "Reward",
    "RoundClose",
    "Transfer",
    "TransferDecision",
    "audit",
    "decode_entry",
    "entry_movements",
    "transfer_decision",
]
