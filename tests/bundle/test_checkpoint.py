"""Tests for bundle.checkpoint: signing, verifying and the JSON form of checkpoints."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import pytest

from bundle import cbor
from bundle.checkpoint import (
    CHECKPOINT_DOMAIN,
    checkpoint_from_json,
    checkpoint_message,
    checkpoint_to_json,
    public_identity_from_json,
    public_identity_to_json,
    sign_checkpoint,
    verify_checkpoint,
)
from bundle.errors import FormatError, SchemaError, SignatureError
from bundle.keys import Identity
from bundle.payloads import Checkpoint

ROOT = hashlib.sha256(b"root").digest()


@pytest.fixture
def checkpoint(coordinator: Identity, federation: bytes) -> Checkpoint:
    return sign_checkpoint(coordinator, federation=federation, size=7, root=ROOT, time=1_700_000)


def test_signed_message_is_domain_plus_deterministic_cbor(federation: bytes) -> None:
    message = checkpoint_message(federation, 7, ROOT, 1_700_000)
    body = {"federation": federation, "size": 7, "root": ROOT, "time": 1_700_000}
    assert message == b"lltoken/checkpoint/v1\x00" + cbor.encode(body)
    assert message.startswith(CHECKPOINT_DOMAIN)
    assert cbor.decode(message[len(CHECKPOINT_DOMAIN) :]) == body


def test_signature_goes_through_the_identity(
    checkpoint: Checkpoint, coordinator: Identity, federation: bytes
) -> None:
    # Ed25519 is deterministic: the checkpoint carries exactly Identity.sign's signature,
    # so a new suite behind Identity.sign/PublicIdentity.verify needs no change here.
    expected = coordinator.sign(checkpoint_message(federation, 7, ROOT, 1_700_000))
    assert checkpoint.signature == expected
    verify_checkpoint(checkpoint, coordinator.public)
    verify_checkpoint(checkpoint, coordinator.public, federation=federation)


@pytest.mark.parametrize(
    "change",
    [
        {"size": 8},
        {"root": hashlib.sha256(b"other").digest()},
        {"time": 1_700_001},
        {"federation": b"\x00" * 16},
        {"signature": b"\x00" * 64},
        {"signature": b""},
    ],
    ids=["size", "root", "time", "federation", "zero-signature", "empty-signature"],
)
def test_any_changed_field_breaks_the_signature(
    checkpoint: Checkpoint, coordinator: Identity, change: dict[str, Any]
) -> None:
    forged = dataclasses.replace(checkpoint, **change)
    with pytest.raises(SignatureError, match="not signed by the coordinator"):
        verify_checkpoint(forged, coordinator.public)


def test_another_key_does_not_verify(checkpoint: Checkpoint, alice: Identity) -> None:
    with pytest.raises(SignatureError) as info:
        verify_checkpoint(checkpoint, alice.public)
    assert alice.fingerprint in str(info.value)
    assert info.value.exit_code == 12


def test_wrong_federation_is_a_schema_error(checkpoint: Checkpoint, coordinator: Identity) -> None:
    with pytest.raises(SchemaError, match="another federation"):
        verify_checkpoint(checkpoint, coordinator.public, federation=b"\x01" * 16)


@pytest.mark.parametrize(
    ("field", "value"),
    [("federation", b"short"), ("root", b"\x00" * 31), ("size", -1), ("time", "now")],
)
def test_malformed_fields_are_refused_before_signing(
    coordinator: Identity, federation: bytes, field: str, value: Any
) -> None:
    args: dict[str, Any] = {"federation": federation, "size": 1, "root": ROOT, "time": 5}
    args[field] = value
    with pytest.raises(SchemaError):
        sign_checkpoint(coordinator, **args)


def test_time_defaults_to_now(coordinator: Identity, federation: bytes) -> None:
    checkpoint = sign_checkpoint(coordinator, federation=federation, size=0, root=ROOT)
    assert checkpoint.time > 1_600_000_000
    verify_checkpoint(checkpoint, coordinator.public)


def test_json_round_trip(checkpoint: Checkpoint) -> None:
    doc = checkpoint_to_json(checkpoint)
    assert doc["root"] == ROOT.hex()
    assert checkpoint_from_json(doc) == checkpoint


@pytest.mark.parametrize(
    "doc",
    [
        None,
        [],
        {"size": 1},
        {"federation": "zz", "size": 1, "root": "00" * 32, "time": 1, "signature": ""},
        {"federation": "00" * 16, "size": 1, "root": "00" * 32, "time": 1, "signature": 5},
    ],
)
def test_malformed_json_is_a_format_error(doc: Any) -> None:
    with pytest.raises(FormatError):
        checkpoint_from_json(doc)


def test_json_with_wrong_sizes_is_a_schema_error(checkpoint: Checkpoint) -> None:
    doc = checkpoint_to_json(checkpoint)
    doc["root"] = "00" * 31
    with pytest.raises(SchemaError):
        checkpoint_from_json(doc)


def test_public_identity_json(alice: Identity, bob: Identity) -> None:
    doc = public_identity_to_json(alice.public)
    assert public_identity_from_json(doc) == alice.public
    doc["key_id"] = bob.key_id.hex()
    with pytest.raises(FormatError, match="key id does not match"):
        public_identity_from_json(doc)
    with pytest.raises(FormatError):
        public_identity_from_json({"suite": "ed25519"})
