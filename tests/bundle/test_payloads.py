"""Tests for bundle.payloads: every kind round-trips, constructors and decoders refuse
what the schema forbids (with SchemaError naming the field), numbers are finite."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from bundle import cbor
from bundle.arrays import model_hash
from bundle.errors import IntegrityError, SchemaError
from bundle.keys import Identity
from bundle.payloads import (
    KINDS,
    MAX_AMOUNT,
    MAX_WEIGHT,
    PAYLOAD_TYPES,
    Checkpoint,
    EncodeContext,
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
    check_weights,
    payload_from_cbor,
)

DESIGN_KINDS = {
    "enroll-request",
    "roster",
    "round-task",
    "global-model",
    "model-update",
    "eval-result",
    "transaction",
    "ledger-delta",
    "receipt",
}
H = b"\x11" * 32
KID = b"\x22" * 16
KID2 = b"\x23" * 16


def through_the_wire(payload: Payload) -> Payload:
    encoded = cbor.encode(payload.to_cbor())
    return payload_from_cbor(payload.KIND, cbor.decode(bytearray(encoded)), where="test")


def test_kinds_are_the_designed_ones(every_payload: dict[str, Payload]) -> None:
    assert set(KINDS) == DESIGN_KINDS
    assert set(every_payload) == DESIGN_KINDS
    assert all(kind == PAYLOAD_TYPES[kind].KIND for kind in KINDS)


@pytest.mark.parametrize("kind", sorted(DESIGN_KINDS))
def test_every_kind_round_trips(
    kind: str, every_payload: dict[str, Payload], same_payload: Callable[[Any, Any], bool]
) -> None:
    payload = every_payload[kind]
    back = through_the_wire(payload)
    assert type(back) is type(payload)
    assert same_payload(payload, back)
    # Re-encoding what was decoded gives the same bytes (plain arrays, no filters).
    plain = cbor.encode(payload.to_cbor(_no_filters()))
    assert cbor.encode(back.to_cbor(_no_filters())) == plain


def _no_filters() -> EncodeContext:
    return EncodeContext(use_filters=False)


# ----------------------------------------------------------------------------- constructors


def _task(**changes: Any) -> RoundTask:
    fields = {
        "round": 1,
        "task_type": "train",
        "agent": KID,
        "model_hash": H,
        "config": {},
        "run_config": {},
        "deadline_round": None,
    }
    return RoundTask(**(fields | changes))


def _transaction(**changes: Any) -> Transaction:
    fields = {
        "sender": KID,
        "recipient": KID2,
        "amount": 5,
        "nonce": b"\x01" * 16,
        "expires_round": 3,
        "memo": "",
    }
    return Transaction(**(fields | changes))


def _update(**changes: Any) -> ModelUpdate:
    fields = {
        "round": 1,
        "parent_hash": H,
        "num_examples": 10,
        "metrics": {},
        "arrays": [("w", np.zeros(3, np.float32))],
    }
    return ModelUpdate(**(fields | changes))


def _global(arrays: Any) -> GlobalModel:
    return GlobalModel(1, H, arrays)


def _eval(**changes: Any) -> EvalResult:
    fields = {"round": 1, "model_hash": H, "num_examples": 1, "metrics": {}}
    return EvalResult(**(fields | changes))


def _checkpoint(**changes: Any) -> Checkpoint:
    fields = {"federation": KID, "size": 2, "root": H, "time": 0, "signature": b""}
    return Checkpoint(**(fields | changes))


def _receipt(**changes: Any) -> Receipt:
    return Receipt(**({"bundle_id": H, "status": "accepted"} | changes))


def _enroll(identity: Identity, **changes: Any) -> EnrollRequest:
    return EnrollRequest(**({"name": "a", "identity": identity.public, "info": {}} | changes))


NAN, INF = math.nan, math.inf

INVALID: list[tuple[str, Callable[[Identity], Any]]] = [
    ("task negative round", lambda i: _task(round=-1)),
    ("task round as bool", lambda i: _task(round=True)),
    ("task round as float", lambda i: _task(round=1.0)),
    ("task unknown type", lambda i: _task(task_type="mine")),
    ("task agent wrong length", lambda i: _task(agent=b"\x01" * 32)),
    ("task model hash short", lambda i: _task(model_hash=b"\x01" * 31)),
    ("task model hash text", lambda i: _task(model_hash="11" * 32)),
    ("task config NaN", lambda i: _task(config={"lr": NAN})),
    ("task config inf", lambda i: _task(config={"lr": INF})),
    ("task config -inf in a list", lambda i: _task(config={"lrs": [0.1, -INF]})),
    ("task run_config NaN", lambda i: _task(run_config={"x": NAN})),
    ("task config nested list", lambda i: _task(config={"x": [[1]]})),
    ("task config None", lambda i: _task(config={"x": None})),
    ("task config map value", lambda i: _task(config={"x": {"y": 1}})),
    ("task config not a map", lambda i: _task(config=[("x", 1)])),
    ("task config key not text", lambda i: _task(config={1: 1})),
    ("task config key too long", lambda i: _task(config={"k" * 65: 1})),
    ("task config too many", lambda i: _task(config={f"k{n}": n for n in range(257)})),
    ("task deadline negative", lambda i: _task(deadline_round=-2)),
    ("update NaN metric", lambda i: _update(metrics={"loss": NAN})),
    ("update inf metric", lambda i: _update(metrics={"loss": INF})),
    ("update text metric", lambda i: _update(metrics={"loss": "low"})),
    ("update bool metric", lambda i: _update(metrics={"ok": True})),
    ("update too many metrics", lambda i: _update(metrics={f"m{n}": 1 for n in range(65)})),
    ("update negative examples", lambda i: _update(num_examples=-1)),
    ("update parent hash short", lambda i: _update(parent_hash=b"")),
    ("update NaN weight", lambda i: _update(arrays=[("w", np.array([0, NAN], np.float32))])),
    ("update inf weight", lambda i: _update(arrays=[("w", np.array([INF], np.float64))])),
    ("update -inf float16", lambda i: _update(arrays=[("w", np.array([-INF], np.float16))])),
    ("update huge weight", lambda i: _update(arrays=[("w", np.array([MAX_WEIGHT * 2]))])),
    ("update NaN in 0-d", lambda i: _update(arrays=[("w", np.array(NAN, np.float32))])),
    ("update object dtype", lambda i: _update(arrays=[("w", np.array([1.0, NAN], object))])),
    ("update bool dtype", lambda i: _update(arrays=[("w", np.array([True]))])),
    ("update complex dtype", lambda i: _update(arrays=[("w", np.array([1j]))])),
    ("update not an array", lambda i: _update(arrays=[("w", [1.0, 2.0])])),
    ("update duplicate names", lambda i: _update(arrays=[("w", np.zeros(1))] * 2)),
    ("update name not text", lambda i: _update(arrays=[(1, np.zeros(1))])),
    ("global NaN weight", lambda i: _global([("w", np.full((2, 2), NAN, np.float16))])),
    ("global object dtype", lambda i: _global([("w", np.array(["x"], object))])),
    ("eval NaN metric", lambda i: _eval(metrics={"acc": NAN})),
    ("eval -inf metric", lambda i: _eval(metrics={"acc": -INF})),
    ("eval bad hash", lambda i: _eval(model_hash=b"x")),
    ("transaction zero", lambda i: _transaction(amount=0)),
    ("transaction negative", lambda i: _transaction(amount=-5)),
    ("transaction too large", lambda i: _transaction(amount=MAX_AMOUNT + 1)),
    ("transaction float amount", lambda i: _transaction(amount=5.0)),
    ("transaction bool amount", lambda i: _transaction(amount=True)),
    ("transaction to oneself", lambda i: _transaction(recipient=KID)),
    ("transaction short nonce", lambda i: _transaction(nonce=b"\x01" * 15)),
    ("transaction long memo", lambda i: _transaction(memo="m" * 257)),
    ("transaction sender short", lambda i: _transaction(sender=b"\x01")),
    ("transaction negative expiry", lambda i: _transaction(expires_round=-1)),
    ("enroll empty name", lambda i: _enroll(i, name="")),
    ("enroll name with slash", lambda i: _enroll(i, name="../etc")),
    ("enroll name with space", lambda i: _enroll(i, name="a b")),
    ("enroll name too long", lambda i: _enroll(i, name="a" * 65)),
    ("enroll info NaN", lambda i: _enroll(i, info={"x": NAN})),
    ("roster negative version", lambda i: Roster(-1, "f", i.public, ())),
    (
        "roster duplicate key",
        lambda i: Roster(1, "f", i.public, (RosterMember("a", i.public, "active"),) * 2),
    ),
    ("roster member status", lambda i: RosterMember("a", i.public, "banned")),
    ("roster member long name", lambda i: RosterMember("a" * 65, i.public, "active")),
    ("checkpoint short root", lambda i: _checkpoint(root=b"r")),
    ("checkpoint federation", lambda i: _checkpoint(federation=b"f")),
    ("checkpoint negative size", lambda i: _checkpoint(size=-1)),
    (
        "ledger delta does not end at checkpoint",
        lambda i: LedgerDelta(0, (b"a",), _checkpoint(size=2), ()),
    ),
    ("ledger delta entry not bytes", lambda i: LedgerDelta(1, ("a",), _checkpoint(size=2), ())),
    ("receipt unknown status", lambda i: _receipt(status="maybe")),
    ("receipt bundle id short", lambda i: _receipt(bundle_id=b"\x01")),
    ("receipt negative index", lambda i: _receipt(ledger_index=-1)),
    ("receipt long reason", lambda i: _receipt(reason="r" * 1025)),
]


@pytest.mark.parametrize(("why", "build"), INVALID, ids=[v[0] for v in INVALID])
def test_constructors_refuse_invalid_payloads(
    why: str, build: Callable[[Identity], Any], alice: Identity
) -> None:
    with pytest.raises(SchemaError):
        build(alice)


def test_weight_bound_is_inclusive() -> None:
    _update(arrays=[("w", np.array([MAX_WEIGHT, -MAX_WEIGHT]))])
    _update(arrays=[("w", np.array([2**62], np.int64))])  # integer arrays are not weights
    _update(arrays=[("w", np.zeros((0, 4), np.float32))])


def test_non_finite_weight_far_into_a_large_array_is_found() -> None:
    arr = np.zeros(3 * (1 << 20) + 17, dtype=np.float32)
    arr[-1] = np.nan
    with pytest.raises(SchemaError) as info:
        check_weights([("big", arr)], "test")
    assert "'big'" in str(info.value)
    arr[-1] = 0
    arr[(1 << 20) + 5] = -np.inf
    with pytest.raises(SchemaError):
        check_weights([("big", arr)], "test")


def test_schema_error_names_the_field() -> None:
    with pytest.raises(SchemaError) as info:
        _task(model_hash=b"short")
    assert "model_hash" in str(info.value)
    with pytest.raises(SchemaError) as info:
        _update(metrics={"loss": NAN})
    assert "loss" in str(info.value)


# ----------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("kind", sorted(DESIGN_KINDS))
def test_decoder_requires_the_exact_field_set(kind: str, every_payload: dict[str, Payload]) -> None:
    obj = every_payload[kind].to_cbor()
    for field in obj:
        with pytest.raises(SchemaError):
            payload_from_cbor(kind, {k: v for k, v in obj.items() if k != field})
    with pytest.raises(SchemaError):
        payload_from_cbor(kind, obj | {"extra": 1})
    for not_a_map in (None, [], [obj], "x", 5, b"x"):
        with pytest.raises(SchemaError):
            payload_from_cbor(kind, not_a_map)


# Decoded CBOR can hold a typed array (a numpy array) in any position, and "==" on one
# is elementwise: every check must look at the type first.
TYPED_ARRAY = np.array([1, 2], dtype=np.uint8)
WRONG_TYPES = [
    None,
    True,
    -1,
    1.5,
    NAN,
    INF,
    "text",
    b"\x00" * 3,
    [],
    {},
    [[]],
    {"k": NAN},
    TYPED_ARRAY,
    np.array(NAN),
    [TYPED_ARRAY],
]


@pytest.mark.parametrize("kind", sorted(DESIGN_KINDS))
def test_decoder_refuses_wrong_types_in_every_field(
    kind: str, every_payload: dict[str, Payload]
) -> None:
    """Each field replaced by each wrong value: accepted only if still valid, else SchemaError."""
    obj = cbor.decode(cbor.encode(every_payload[kind].to_cbor()))
    for field in obj:
        for wrong in WRONG_TYPES:
            try:
                payload_from_cbor(kind, obj | {field: wrong})
            except SchemaError:
                continue
            # A few substitutions are legitimately valid (e.g. an empty list of proofs).
            assert (field, repr(wrong)) in ACCEPTABLE_SUBSTITUTIONS, (field, wrong)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every position inside a decoded map/list tree (not the root)."""
    children: list[tuple[Any, Any]] = []
    if isinstance(obj, dict):
        children = list(obj.items())
    elif isinstance(obj, list):
        children = list(enumerate(obj))
    found = []
    for key, value in children:
        found.append((*prefix, key))
        found.extend(_paths(value, (*prefix, key)))
    return found


def _replaced(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    """A copy of ``obj`` with the item at ``path`` replaced (copying only along the path)."""
    if not path:
        return value
    head, *rest = path
    copy: Any = dict(obj) if isinstance(obj, dict) else list(obj)
    copy[head] = _replaced(obj[head], tuple(rest), value)
    return copy


@pytest.mark.parametrize("kind", sorted(DESIGN_KINDS))
def test_wrong_types_at_every_depth_raise_our_errors(
    kind: str, every_payload: dict[str, Payload]
) -> None:
    """Any value, anywhere in the tree: accepted, or refused with our own error."""
    encoded = cbor.encode(every_payload[kind].to_cbor())
    obj = cbor.decode(encoded)  # read-only views: decoding arrays never alters them
    paths = _paths(obj)
    assert len(paths) > 3
    for path in paths:
        for wrong in WRONG_TYPES:
            try:
                payload_from_cbor(kind, _replaced(obj, path, wrong))
            except (SchemaError, IntegrityError):
                continue


ACCEPTABLE_SUBSTITUTIONS = {
    ("info", "{}"),
    ("config", "{}"),
    ("run_config", "{}"),
    ("metrics", "{}"),
    ("deadline_round", "None"),
    ("proof", "[]"),
    ("members", "[]"),
    ("checkpoint", "None"),
    ("ledger_index", "None"),
    ("arrays", "[]"),
    ("memo", "'text'"),
    ("reason", "'text'"),
    ("federation_name", "'text'"),
    ("name", "'text'"),
}


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        ("model-update", "metrics", {"loss": NAN}),
        ("model-update", "metrics", {"loss": INF}),
        ("eval-result", "metrics", {"acc": -INF}),
        ("round-task", "config", {"lr": NAN}),
        ("round-task", "run_config", {"xs": [1.0, INF]}),
        ("enroll-request", "info", {"temp": NAN}),
    ],
)
def test_decoder_refuses_non_finite_numbers(
    kind: str, field: str, value: Any, every_payload: dict[str, Payload]
) -> None:
    obj = cbor.decode(cbor.encode(every_payload[kind].to_cbor() | {field: value}))
    with pytest.raises(SchemaError):
        payload_from_cbor(kind, obj)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, MAX_WEIGHT * 1.5])
@pytest.mark.parametrize("kind", ["global-model", "model-update"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_decoder_refuses_bad_weights(
    kind: str, dtype: Any, bad: float, every_payload: dict[str, Payload]
) -> None:
    if dtype is np.float16 and bad == MAX_WEIGHT * 1.5:
        bad = np.inf  # float16 cannot hold the bound; its overflow is inf
    arrays = [("w", np.array([0.5, bad, 0.25], dtype=dtype))]
    payload = every_payload[kind]
    # Built bypassing the constructor, as a hostile sender would.
    raw = payload.to_cbor() | {
        "arrays": cbor.decode(cbor.encode([{"name": "w", "array": arrays[0][1]}]))
    }
    obj = cbor.decode(bytearray(cbor.encode(raw)))
    with pytest.raises(SchemaError):
        payload_from_cbor(kind, obj)


def test_roster_members_are_checked(every_payload: dict[str, Payload]) -> None:
    obj = cbor.decode(cbor.encode(every_payload["roster"].to_cbor()))
    for bad_member in (
        {"name": "x"},
        obj["members"][0] | {"status": "king"},
        obj["members"][0] | {"identity": {"suite": "ed25519"}},
        obj["members"][0] | {"identity": None},
        "alice",
    ):
        with pytest.raises(SchemaError):
            payload_from_cbor("roster", obj | {"members": [bad_member]})
    with pytest.raises(SchemaError):
        payload_from_cbor("roster", obj | {"members": obj["members"] * 2})


def test_enrollment_with_a_low_order_box_key_is_refused(
    every_payload: dict[str, Payload],
) -> None:
    obj = cbor.decode(cbor.encode(every_payload["enroll-request"].to_cbor()))
    obj["identity"]["box"] = bytes(32)
    with pytest.raises(SchemaError):
        payload_from_cbor("enroll-request", obj)


def test_model_payloads_can_reference_their_hash(model_arrays: Any) -> None:
    model = GlobalModel(0, model_hash(model_arrays), model_arrays)
    back = through_the_wire(model)
    assert isinstance(back, GlobalModel)
    assert model_hash(back.arrays) == model.model_hash


def test_payloads_are_frozen(every_payload: dict[str, Payload]) -> None:
    for payload in every_payload.values():
        field = dataclasses.fields(payload)[0].name  # type: ignore[arg-type]
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(payload, field, None)
