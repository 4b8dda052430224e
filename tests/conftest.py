"""Shared fixtures: deterministic identities, a federation id, a keyring, a spool dir,
and one valid payload of every kind.

Identities come from fixed seeds so failures reproduce byte for byte; they are
session-scoped because an :class:`~bundle.keys.Identity` never changes after creation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bundle.arrays import model_hash
from bundle.keys import Identity, PublicIdentity
from bundle.payloads import (
    Checkpoint,
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
)

Keyring = Callable[[bytes], PublicIdentity | None]


def _identity(n: int) -> Identity:
    return Identity(bytes([n]) * 32, bytes([n + 100]) * 32)


@pytest.fixture(scope="session")
def coordinator() -> Identity:
    """The federation's coordinator (the usual recipient of encrypted updates)."""
    return _identity(1)


@pytest.fixture(scope="session")
def alice() -> Identity:
    return _identity(2)


@pytest.fixture(scope="session")
def bob() -> Identity:
    return _identity(3)


@pytest.fixture(scope="session")
def carol() -> Identity:
    return _identity(4)


@pytest.fixture(scope="session")
def mallory() -> Identity:
    """A well-formed identity that no keyring knows."""
    return _identity(66)


@pytest.fixture(scope="session")
def federation() -> bytes:
    return bytes.fromhex("f0e1d2c3b4a5968778695a4b3c2d1e0f")


@pytest.fixture(scope="session")
def keyring(coordinator: Identity, alice: Identity, bob: Identity, carol: Identity) -> Keyring:
    """Key id -> enrolled public identity; ``None`` for anyone else (mallory)."""
    known = {i.key_id: i.public for i in (coordinator, alice, bob, carol)}
    return known.get


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    """An empty directory to pack bundles into."""
    path = tmp_path / "spool"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def model_arrays() -> list[tuple[str, np.ndarray[Any, Any]]]:
    """A small model: several dtypes, a 0-d array (like BatchNorm's counter), an empty one."""
    rng = np.random.default_rng(7)
    return [
        ("conv.weight", rng.normal(0, 0.1, size=(4, 3, 3)).astype(np.float32)),
        ("conv.bias", rng.normal(0, 0.1, size=(4,)).astype(np.float16)),
        ("bn.num_batches_tracked", np.array(12, dtype=np.int64)),
        ("head.weight", rng.normal(0, 0.1, size=(10, 4)).astype(np.float64)),
        ("empty", np.zeros((0, 3), dtype=np.float32)),
        ("vocab", rng.integers(0, 255, size=(5, 2), dtype=np.uint8)),
    ]


@pytest.fixture(scope="session")
def every_payload(
    coordinator: Identity,
    alice: Identity,
    bob: Identity,
    federation: bytes,
    model_arrays: list[tuple[str, np.ndarray[Any, Any]]],
) -> dict[str, Payload]:
    """One valid payload of every kind, by kind."""
    global_hash = model_hash(model_arrays)
    trained = [(n, np.asarray(a + np.ones_like(a))) for n, a in model_arrays]
    checkpoint = Checkpoint(federation, 4, b"\x22" * 32, 1_700_000_000, b"\x33" * 64)
    samples: list[Payload] = [
        EnrollRequest(
            "agent-1",
            alice.public,
            {"host": "lab-3", "cores": 8, "ratio": 0.5, "gpu": False, "tags": ["a", "b"]},
        ),
        Roster(
            3,
            "clinics",
            coordinator.public,
            (
                RosterMember("alice", alice.public, "active"),
                RosterMember("bob", bob.public, "revoked"),
            ),
        ),
        RoundTask(7, "train", alice.key_id, global_hash, {"lr": 0.01, "epochs": 2}, {}, 9),
        GlobalModel(7, global_hash, model_arrays),
        ModelUpdate(7, global_hash, 120, {"loss": 0.25, "accuracy": 0.875, "steps": 30}, trained),
        EvalResult(7, global_hash, 50, {"accuracy": 0.8, "loss": 1.5}),
        Transaction(alice.key_id, bob.key_id, 10, b"\x44" * 16, 12, "thanks"),
        LedgerDelta(2, (b"entry-2", b"entry-3"), checkpoint, (b"\x55" * 32, b"\x66" * 32)),
        Receipt(b"\x77" * 32, "accepted", "", 3, (b"\x88" * 32,), checkpoint),
    ]
    return {p.KIND: p for p in samples}


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return (
            isinstance(b, np.ndarray)
            and a.dtype.name == b.dtype.name
            and a.shape == b.shape
            and a.astype(a.dtype.newbyteorder("<")).tobytes()
            == b.astype(b.dtype.newbyteorder("<")).tobytes()
        )
    if isinstance(a, list | tuple):
        return (
            isinstance(b, list | tuple)
            and len(a) == len(b)
            and all(_same_value(x, y) for x, y in zip(a, b, strict=True))
        )
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(
            _same_value(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
        )
    return type(a) is type(b) and bool(a == b)


@pytest.fixture(scope="session")
def same_payload() -> Callable[[Any, Any], bool]:
    """Field-by-field equality of payloads, with model arrays compared bit for bit."""
    return _same_value
