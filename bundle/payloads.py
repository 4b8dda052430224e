"""Payload kinds: frozen dataclasses that validate in their constructors.

Each kind maps to one CBOR map.  ``from_cbor`` is strict (exact field set, types, ranges,
finite numbers, bounded weights) and raises :class:`~bundle.errors.SchemaError` naming the
field; constructors run the same checks, so an invalid payload cannot be built or sent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from bundle.arrays import Arrays, decode_arrays, encode_arrays
from bundle.cbor import DTYPE_TAGS
from bundle.errors import FormatError, SchemaError
from bundle.keys import KEY_ID_BYTES, PublicIdentity

HASH_BYTES = 32
MAX_NAME = 64
MAX_TEXT = 1024
MAX_CONFIG_ITEMS = 256
MAX_METRICS = 64
# Model weights beyond this magnitude are refused: no sane model needs them, and a
# scaled-up poisoned update is the usual way to blow up an aggregate.
MAX_WEIGHT = 1e6
_FINITE_BLOCK = 1 << 20

Scalar = int | float | str | bool | bytes
ConfigValue = Scalar | list[Scalar]


@dataclass(frozen=True)
class EncodeContext:
    """How to encode model arrays: zstd level and parent arrays for XOR-delta."""

    level: int = 1  # the envelope's default zstd level (bundle.envelope.DEFAULT_LEVEL)
    parents: Mapping[str, tuple[bytes, np.ndarray[Any, Any]]] | None = None
    use_filters: bool = True


def _fail(what: str, where: str, *, expected: object = None, found: object = None) -> SchemaError:
    return SchemaError(what, expected=expected, found=found, where=where)


def _check_type(value: Any, kind: type | tuple[type, ...], name: str, where: str) -> None:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, (int,))):
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise _fail(
            f"field {name!r} has the wrong type",
            f"{where}.{name}",
            expected=expected,
            found=type(value).__name__,
        )


def _uint(value: Any, name: str, where: str) -> None:
    _check_type(value, int, name, where)
    if value < 0:
        raise _fail(f"field {name!r} must not be negative", f"{where}.{name}", found=value)


def _digest(value: Any, name: str, where: str, size: int = HASH_BYTES) -> None:
    _check_type(value, bytes, name, where)
    if len(value) != size:
        raise _fail(
            f"field {name!r} has the wrong length",
            f"{where}.{name}",
            expected=f"{size} bytes",
            found=f"{len(value)} bytes",
        )


def _text(value: Any, name: str, where: str, limit: int = MAX_TEXT) -> None:
    _check_type(value, str, name, where)
    if len(value) > limit:
        raise _fail(
            f"field {name!r} is too long",
            f"{where}.{name}",
            expected=f"<= {limit} characters",
            found=len(value),
        )


def _finite(value: float, name: str, where: str) -> None:
    if not math.isfinite(value):
        raise _fail(f"{name!r} must be a finite number", where, expected="finite", found=value)


def _config(value: Any, name: str, where: str) -> None:
    _check_type(value, dict, name, where)
    if len(value) > MAX_CONFIG_ITEMS:
        raise _fail(
            f"{name!r} has too many entries",
            where,
            expected=f"<= {MAX_CONFIG_ITEMS}",
            found=len(value),
        )
    for key, item in value.items():
        _text(key, f"{name} key", where, MAX_NAME)
        for scalar in item if isinstance(item, list) else [item]:
            if not isinstance(scalar, int | float | str | bytes):
                raise _fail(
                    f"{name}[{key!r}] is not a scalar or list of scalars",
                    where,
                    found=type(scalar).__name__,
                )
            if isinstance(scalar, float):
                _finite(scalar, f"{name}[{key!r}]", where)


def _metrics(value: Any, name: str, where: str) -> None:
    _check_type(value, dict, name, where)
    if len(value) > MAX_METRICS:
        raise _fail(
            f"{name!r} has too many entries", where, expected=f"<= {MAX_METRICS}", found=len(value)
        )
    for key, item in value.items():
        _text(key, f"{name} key", where, MAX_NAME)
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise _fail(f"metric {key!r} is not a number", where, found=type(item).__name__)
        if isinstance(item, float):
            _finite(item, f"metric {key}", where)


def _check_arrays(arrays: Any, where: str) -> None:
    """A list of (unique text name, numpy array of an allowed dtype) pairs."""
    _check_type(arrays, list, "arrays", where)
    names: set[str] = set()
    for index, item in enumerate(arrays):
        at = f"{where} arrays[{index}]"
        if not (
            isinstance(item, tuple | list)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], np.ndarray)
        ):
            raise _fail("model array must be a (text name, numpy array) pair", at)
        name, arr = item
        if name in names:
            raise _fail("duplicate array name", at, found=name)
        names.add(name)
        if arr.dtype.name not in DTYPE_TAGS:
            raise _fail(
                "array dtype not allowed", at, expected=sorted(DTYPE_TAGS), found=arr.dtype.name
            )


def check_weights(arrays: Arrays, where: str, bound: float = MAX_WEIGHT) -> None:
    """Well-formed arrays; every float array finite and within ``bound`` (checked in
    blocks to bound memory).

    Raises:
        SchemaError: not (name, array) pairs, a duplicate name, a dtype outside the
            allowlist, a NaN, an infinity, or a weight beyond ``bound``.
    """
    _check_arrays(arrays, where)
    for name, arr in arrays:
        if arr.dtype.kind != "f" or arr.size == 0:
            continue
        flat = arr.reshape(-1)
        for start in range(0, flat.size, _FINITE_BLOCK):
            block = flat[start : start + _FINITE_BLOCK]
            low, high = float(block.min()), float(block.max())
            # min/max propagate NaN, so one comparison catches NaN, inf and outliers.
            if not (-bound <= low and high <= bound):
                bad = low if not -bound <= low else high
                raise _fail(
                    "model weights must be finite and bounded",
                    f"{where} array {name!r}",
                    expected=f"finite values within +/-{bound:g}",
                    found=bad,
                )


def _keys(obj: Any, required: set[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise _fail("payload must be a map", where, found=type(obj).__name__)
    keys = set(obj)
    if keys != required:
        raise _fail(
            "payload has the wrong fields",
            where,
            expected=sorted(required),
            found=sorted(map(str, keys)),
        )
    return obj


class Payload:
    """Base of all payload kinds: the bundle ``KIND`` and the CBOR mapping."""

    KIND: ClassVar[str] = ""

    def to_cbor(self, ctx: EncodeContext = EncodeContext()) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_cbor(
        cls, obj: Any, *, parents: Mapping[bytes, np.ndarray[Any, Any]] | None, where: str
    ) -> Payload:
        raise NotImplementedError


def _identity(obj: Any, where: str) -> PublicIdentity:
    try:
        return PublicIdentity.from_dict(obj)
    except FormatError as e:
        raise _fail(e.reason, where, expected=e.expected, found=e.found) from e


@dataclass(frozen=True)
class EnrollRequest(Payload):
    """An agent asks to join: its name, public keys and free-form node facts."""

    KIND: ClassVar[str] = "enroll-request"
    name: str
    identity: PublicIdentity
    info: dict[str, ConfigValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _text(self.name, "name", self.KIND, MAX_NAME)
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise _fail(
                "agent name must be non-empty letters, digits, '-', '_' or '.'",
                f"{self.KIND}.name",
                found=self.name,
            )
        _config(self.info, "info", self.KIND)

    def to_cbor(self, ctx: EncodeContext = EncodeContext()) -> dict[str, Any]:
        return {"name": self.name, "identity": self.identity.to_dict(), "info": self.info}

    @classmethod
    def from_cbor(
        cls, obj: Any, *, parents: Mapping[bytes, np.ndarray[Any, Any]] | None, where: str
    ) -> EnrollRequest:
        o = _keys(obj, {"name", "identity", "info"}, where)
        return cls(o["name"], _identity(o["identity"], where), o["info"])


ROSTER_STATUSES = ("active", "revoked")


@dataclass(frozen=True)
class RosterMember:
    name: str
    identity: PublicIdentity
    status: str

    def __post_init__(self) -> None:
        _text(self.name, "name", "roster member", MAX_NAME)
        _check_type(self.status, str, "status", "roster member")
        if self.status not in ROSTER_STATUSES:
            raise _fail(
                "unknown member status",
                "roster member",
                expected=ROSTER_STATUSES,
                found=self.status,
            )


@dataclass(frozen=True)
class Roster(Payload):
    """The signed membership list; a higher version replaces a lower one."""

    KIND: ClassVar[str] = "roster"
    version: int
    federation_name: str
    coordinator: PublicIdentity
    members: tuple[RosterMember, ...]

    def __post_init__(self) -> None:
        _uint(self.version, "version", self.KIND)
        _text(self.federation_name, "federation_name", self.KIND, MAX_NAME)
        ids = [m.identity.key_id for m in self.members]
        if len(set(ids)) != len(ids):
            raise _fail("roster lists a key twice", self.KIND)

    def to_cbor(self, ctx: EncodeContext = EncodeContext()) -> dict[str, Any]:
        return {
            "version": self.version,
            "federation_name": self.federation_name,
            "coordinator": self.coordinator.to_dict(),
            "members": [
                {"name": m.name, "identity": m.identity.to_dict(), "status": m.status}
                for m in self.members
            ],
        }

    @classmethod
    def from_cbor(
        cls, obj: Any, *, parents: Mapping[bytes, np.ndarray[Any, Any]] | None, where: str
    ) -> Roster:
        o = _keys(obj, {"version", "federation_name", "coordinator", "members"}, where)
        _check_type(o["members"], list, "members", where)
        members = tuple(
            RosterMember(m["name"], _identity(m["identity"], where), m["status"])
            for m in (
                _keys(m, {"name", "identity", "status"}, f"{where}.members") for m in o["members"]
            )
        )
        return cls(o["version"], o["federation_name"], _identity(o["coordinator"], where), members)


TASK_TYPES = ("train", "evaluate")


@dataclass(frozen=True)
class RoundTask(Payload):
    """Work for one agent in one round, against the global model named by hash."""

    KIND: ClassVar[str] = "round-task"
    round: int
    task_type: str
    agent: bytes
    model_hash: bytes
    config: dict[str, ConfigValue]
    run_config: dict[str, ConfigValue]
    deadline_round: int | None = None

    def __post_init__(self) -> None:
        _uint(self.round, "round", self.KIND)
        _check_type(self.task_type, str, "task_type", self.KIND)
        if self.task_type not in TASK_TYPES:
            raise _fail(
                "unknown task type",
                f"{self.KIND}.task_type",
                expected=TASK_TYPES,
                found=self.task_type,
            )
        _digest(self.agent, "agent", self.KIND, KEY_ID_BYTES)
        _digest(self.model_hash, "model_hash", self.KIND)
        _config(self.config, "config", self.KIND)
        _config(self.run_config, "run_config", self.KIND)
        if self.deadline_round is not None:
            _uint(self.deadline_round, "deadline_round", self.KIND)

    def to_cbor(self, ctx: EncodeContext = EncodeContext()) -> dict[str, Any]:
        return {
            "round": self.round,
            "task_type": self.task_type,
            "agent": self.agent,
            "model_hash": self.model_hash,
            "config": self.config,
            "run_config": self.run_config,
            "deadline_round": self.deadline_round,
        }

    @classmethod
    def from_cbor(
        cls, obj: Any, *, parents: Mapping[bytes, np.ndarray[Any, Any]] | None, where: str
    ) -> RoundTask:
        o = _keys(
            obj,
            {"round", "task_type", "agent", "model_hash", "config", "run_config", "deadline_round"},
            where,
        )
        return cls(
            o["round"],
            o["task_type"],
            o["agent"],
            o["model_hash"],
            o["config"],
            o["run_config"],
            o["deadline_round"],
        )


def _arrays_cbor(arrays: Arrays, ctx: EncodeContext) -> list[dict[str, Any]]:
    return encode_arrays(arrays, ctx.parents, level=ctx.level, use_filters=ctx.use_filters)


@dataclass(frozen=True)
class GlobalModel(Payload):
    """The round's global model, written once per round for every sampled agent."""

    KIND: ClassVar[str] = "global-model"
    round: int
    model_hash: bytes
    arrays: Arrays = field(repr=False)

    def __post_init__(self) -> None:
        _uint(self.round, "round", self.KIND)
        _digest(self.model_hash, "model_hash", self.KIND)
        check_weights(self.arrays, self.KIND)

    def to_cbor(self, ctx: EncodeContext = EncodeContext()) -> dict[str, Any]:
        return {
            "round": self.round,
            "model_hash": self.model_hash,
            "arrays": _arrays_cbor(self.arrays, ctx),
        }

    @classmethod
    def from_cbor(
        cls, obj: Any, *, parents: Mapping[bytes, np.ndarray[Any, Any]] | None, where: str
    ) -> GlobalModel:
        o = _keys(obj, {"round", "model_hash", "arrays"}, where)
        return cls(
            o["round"],
            o["model_hash"],
            decode_arrays(o["arrays"], parents, where=f"{where} arrays"),
        )


@dataclass(frozen=True)
class ModelUpdate(Payload):
    """An agent's trained arrays for a round, naming the model it started from."""

    KIND: ClassVar[str] = "model-update"
    round: int
    parent_hash: bytes
    num_examples: int
    metrics: dict[str, int | float]
    arrays: Arrays = field(repr=False)

    def __post_init__(self) -> None:
        _uint(self.round, "round", self.KIND)
        _digest(self.parent_hash, "parent_hash", self.KIND)
        _uint(self.num_examples, "num_examples", self.KIND)
        _metrics(self.metrics, "metrics", self.KIND)
        check_weights(self.arrays, self.KIND)

    def to_cbor(self, ctx: EncodeContext = EncodeContext()) -> dict[str, Any]:
        return {
            "round": self.round,
            "parent_hash": self.parent_hash,
            "num_examples": self.num_examples,
            "metrics": self.metrics,
            "arrays": _arrays_cbor(self.arrays, ctx),
        }

    @classmethod
    def from_cbor(
        cls, obj: Any, *, parents: Mapping[bytes, np.ndarray[Any, Any]] | None, where: str
    ) -> ModelUpdate:
        o = _keys(obj, {"round", "parent_hash", "num_examples", "metrics", "arrays"}, where)
        return cls(
            o["round"],
            o["parent_hash"],
            o["num_examples"],
            o["metrics"],
            decode_arrays(o["arrays"], parents, where=f"{where} arrays"),
        )


@dataclass(frozen=True)
class EvalResult(Payload):
    """An agent's evaluation of a global model on its own data."""

    KIND: ClassVar[str] = "eval-result"
    round: int
    model_hash: bytes
    num_examples: int
    metrics: dict[str, int | float]

    def __post_init__(self) -> None:
        _uint(self.round, "round", self.KIND)
        _digest(self.model_hash, "model_hash", self.KIND)
        _uint(self.num_examples, "num_examples", self.KIND)
        _metrics(self.metrics, "metrics", self.KIND)

    def to_cbor(self, ctx: EncodeContext = EncodeContext()) -> dict[str, Any]:
        return {
            "round": self.round,
            "model_hash": self.model_hash,
            "num_examples": self.num_examples,
            "metrics": self.metrics,
        }

    @classmethod
    def from_cbor(
        cls, obj: Any, *, parents: Mapping[bytes, np.ndarray[Any, Any]] | None, where: str
    ) -> EvalResult:
        o = _keys(obj, {"round", "model_hash", "num_examples", "metrics"}, where)
        return cls(o["round"], o["model_hash"], o["num_examples"], o["metrics"])


NONCE_BYTES = 16
MAX_AMOUNT = 2**62


@dataclass(frozen=True)
class Transaction(Payload):
    """A token transfer the sender signed offline (the bundle signature is the sender's)."""

    KIND: ClassVar[str] = "transaction"
    sender: bytes
    recipient: bytes
    amount: int
    nonce: bytes
    expires_round: int
    memo: str = ""

    def __post_init__(self) -> None:
        _digest(self.sender, "sender", self.KIND, KEY_ID_BYTES)
        _digest(self.recipient, "recipient", self.KIND, KEY_ID_BYTES)
        _check_type(self.amount, int, "amount", self.KIND)
        if not 0 < self.amount <= MAX_AMOUNT:
            raise _fail(
                "amount out of range",
                f"{self.KIND}.amount",
                expected=f"1..{MAX_AMOUNT}",
                found=self.amount,
            )
        if self.sender == self.recipient:
            raise _fail("a transfer to oneself is meaningless", f"{self.KIND}.recipient")
        _digest(self.nonce, "nonce", self.KIND, NONCE_BYTES)
        _uint(self.expires_round, "expires_round", self.KIND)
        _text(self.memo, "memo", self.KIND, 256)

    def to_cbor(self, ctx: EncodeContext = EncodeContext()) -> dict[str, Any]:
        return {
            "sender": self.sender,
            "recipient": self.recipient,
            "amount": self.amount,
            "nonce": self.nonce,
            "expires_round": self.expires_round,
            "memo": self.memo,
        }

    @classmethod
    def from_cbor(
        cls, obj: Any, *, parents: Mapping[bytes, np.ndarray[Any, Any]] | None, where: str
    ) -> Transaction:
        o = _keys(obj, {"sender", "recipient", "amount", "nonce", "expires_round", "memo"}, where)
        return cls(
            o["sender"], o["recipient"], o["amount"], o["nonce"], o["expires_round"], o["memo"]
        )


@dataclass(frozen=True)
class Checkpoint:
    """A coordinator-signed statement of the ledger's size and root at a time."""

    federation: bytes
    size: int
    root: bytes
    time: int
    signature: bytes

    def __post_init__(self) -> None:
        _digest(self.federation, "federation", "checkpoint", 16)
        _uint(self.size, "size", "checkpoint")
        _digest(self.root, "root", "checkpoint")
        _uint(self.time, "time", "checkpoint")
        _check_type(self.signature, bytes, "signature", "checkpoint")

    def to_cbor(self) -> dict[str, Any]:
        return {
            "federation": self.federation,
            "size": self.size,
            "root": self.root,
            "time": self.time,
            "signature": self.signature,
        }

    @classmethod
    def from_cbor(cls, obj: Any, where: str) -> Checkpoint:
        o = _keys(obj, {"federation", "size", "root", "time", "signature"}, where)
        return cls(o["federation"], o["size"], o["root"], o["time"], o["signature"])


def _hash_list(value: Any, name: str, where: str) -> tuple[bytes, ...]:
    _check_type(value, list, name, where)
    for item in value:
        _digest(item, name, where)
    return tuple(value)


@dataclass(frozen=True)
class LedgerDelta(Payload):
    """Ledger entries [start, start+len), the new checkpoint, and a consistency proof."""

    KIND: ClassVar[str] = "ledger-delta"
    start: int
    entries: tuple[bytes, ...]
    checkpoint: Checkpoint
    proof: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _uint(self.start, "start", self.KIND)
        for entry in self.entries:
            _check_type(entry, bytes, "entries", self.KIND)
        if self.start + len(self.entries) != self.checkpoint.size:
            raise _fail(
                "delta does not end at its checkpoint",
                self.KIND,
                expected=self.checkpoint.size,
                found=self.start + len(self.entries),
            )

    def to_cbor(self, ctx: EncodeContext = EncodeContext()) -> dict[str, Any]:
        return {
            "start": self.start,
            "entries": list(self.entries),
            "checkpoint": self.checkpoint.to_cbor(),
            "proof": list(self.proof),
        }

    @classmethod
    def from_cbor(
        cls, obj: Any, *, parents: Mapping[bytes, np.ndarray[Any, Any]] | None, where: str
    ) -> LedgerDelta:
        o = _keys(obj, {"start", "entries", "checkpoint", "proof"}, where)
        _check_type(o["entries"], list, "entries", where)
        return cls(
            o["start"],
            tuple(o["entries"]),
            Checkpoint.from_cbor(o["checkpoint"], where),
            _hash_list(o["proof"], "proof", where),
        )


RECEIPT_STATUSES = ("accepted", "rejected", "late", "duplicate")


@dataclass(frozen=True)
class Receipt(Payload):
    """What the receiver did with a bundle; for a ledger entry, its inclusion proof."""

    KIND: ClassVar[str] = "receipt"
    bundle_id: bytes
    status: str
    reason: str = ""
    ledger_index: int | None = None
    proof: tuple[bytes, ...] = ()
    checkpoint: Checkpoint | None = None

    def __post_init__(self) -> None:
        _digest(self.bundle_id, "bundle_id", self.KIND)
        _check_type(self.status, str, "status", self.KIND)
        if self.status not in RECEIPT_STATUSES:
            raise _fail(
                "unknown receipt status",
                f"{self.KIND}.status",
                expected=RECEIPT_STATUSES,
                found=self.status,
            )
        _text(self.reason, "reason", self.KIND)
        if self.ledger_index is not None:
            _uint(self.ledger_index, "ledger_index", self.KIND)

    def to_cbor(self, ctx: EncodeContext = EncodeContext()) -> dict[str, Any]:
        return {
            "bundle_id": self.bundle_id,
            "status": self.status,
            "reason": self.reason,
            "ledger_index": self.ledger_index,
            "proof": list(self.proof),
            "checkpoint": None if self.checkpoint is None else self.checkpoint.to_cbor(),
        }

    @classmethod
    def from_cbor(
        cls, obj: Any, *, parents: Mapping[bytes, np.ndarray[Any, Any]] | None, where: str
    ) -> Receipt:
        o = _keys(
            obj, {"bundle_id", "status", "reason", "ledger_index", "proof", "checkpoint"}, where
        )
        checkpoint = (
            None if o["checkpoint"] is None else Checkpoint.from_cbor(o["checkpoint"], where)
        )
        return cls(
            o["bundle_id"],
            o["status"],
            o["reason"],
            o["ledger_index"],
            _hash_list(o["proof"], "proof", where),
            checkpoint,
        )


PAYLOAD_TYPES: dict[str, type[Payload]] = {
    cls.KIND: cls
    for cls in (
        EnrollRequest,
        Roster,
        RoundTask,
        GlobalModel,
        ModelUpdate,
        EvalResult,
        Transaction,
        LedgerDelta,
        Receipt,
    )
}
KINDS = frozenset(PAYLOAD_TYPES)


def payload_from_cbor(
    kind: str,
    obj: Any,
    *,
    parents: Mapping[bytes, np.ndarray[Any, Any]] | None = None,
    where: str = "",
) -> Payload:
    """Validate a decoded payload against its kind's schema.

    Raises:
        SchemaError: the content breaks the kind's rules (the message names the field).
        IntegrityError: a model delta against a parent array this home does not have.
    """
    at = f"{where} {kind}" if where else kind
    return PAYLOAD_TYPES[kind].from_cbor(obj, parents=parents, where=at)


__all__ = [
    "KINDS",
    "PAYLOAD_TYPES",
    "Checkpoint",
    "EncodeContext",
    "EnrollRequest",
    "EvalResult",
    "GlobalModel",
    "LedgerDelta",
    "ModelUpdate",
    "Payload",
    "Receipt",
    "Roster",
    "RosterMember",
    "RoundTask",
    "Transaction",
    "check_weights",
    "payload_from_cbor",
]
