"""Signed ledger checkpoints: the coordinator's statement "the ledger of this federation has
``size`` entries with Merkle root ``root``", at an advisory ``time``.

The signature covers ``"lltoken/checkpoint/v1" || 0x00 || CBOR({federation, size, root,
time})`` (deterministic CBOR).  It is made with :meth:`Identity.sign` and checked with
:meth:`PublicIdentity.verify`, which is where the signature suite lives, so the
``signature`` field is the coordinator suite's signatures as one byte string:

* ``ed25519``: the 64-byte Ed25519 signature, exactly as before the hybrid suite existed;
* ``ed25519+ml-dsa-65``: ``ed25519_sig (64) || mldsa65_sig (3309)``, 3373 bytes; both
  must verify, and a failure names the one that did not.

Checkpoints travel in CBOR inside bundles (``Checkpoint.to_cbor``) and in JSON with hex
byte strings in proof exports and equivocation evidence (:func:`checkpoint_to_json`).
"""

from __future__ import annotations

import time as _time
from typing import Any

from bundle import cbor
from bundle.errors import FormatError, SchemaError, SignatureError, SuiteUnavailableError
from bundle.keys import Identity, PublicIdentity
from bundle.payloads import Checkpoint

CHECKPOINT_DOMAIN = b"lltoken/checkpoint/v1\x00"


def checkpoint_message(federation: bytes, size: int, root: bytes, time: int) -> bytes:
    """The exact bytes a checkpoint signature covers."""
    body = {"federation": federation, "size": size, "root": root, "time": time}
    return CHECKPOINT_DOMAIN + cbor.encode(body)


def sign_checkpoint(
    identity: Identity, *, federation: bytes, size: int, root: bytes, time: int | None = None
) -> Checkpoint:
    """A checkpoint for (federation, size, root) signed by the coordinator ``identity``.

    Raises:
        SchemaError: a malformed federation id, size, root or time.
    """
    when = int(_time.time()) if time is None else time
    # Validate the fields before signing them: the constructor runs the schema checks.
    unsigned = Checkpoint(federation, size, root, when, b"")
    signature = identity.sign(checkpoint_message(federation, size, root, when))
    return Checkpoint(unsigned.federation, unsigned.size, unsigned.root, unsigned.time, signature)


def verify_checkpoint(
    checkpoint: Checkpoint,
    coordinator: PublicIdentity,
    *,
    federation: bytes | None = None,
    where: str = "checkpoint",
) -> None:
    """Check the coordinator's signature on ``checkpoint`` (and its federation, if given).

    Raises:
        SignatureError: the signature does not verify under ``coordinator``'s key.
        SchemaError: the checkpoint belongs to another federation.
    """
    if federation is not None and checkpoint.federation != federation:
        raise SchemaError(
            "checkpoint is for another federation",
            expected=federation.hex(),
            found=checkpoint.federation.hex(),
            where=where,
        )
    message = checkpoint_message(
        checkpoint.federation, checkpoint.size, checkpoint.root, checkpoint.time
    )
    try:
        coordinator.verify(message, checkpoint.signature, where=where)
    except SuiteUnavailableError:
        raise  # not a bad signature: this install cannot check the suite (says why)
    except SignatureError as e:
        raise SignatureError(
            f"checkpoint of size {checkpoint.size} is not signed by the coordinator ({e.reason})",
            expected=f"a signature by {coordinator.fingerprint}",
            found="a signature that fails",
            where=where,
        ) from e


def checkpoint_to_json(checkpoint: Checkpoint) -> dict[str, Any]:
    """JSON form with hex byte strings."""
    return {
        "federation": checkpoint.federation.hex(),
        "size": checkpoint.size,
        "root": checkpoint.root.hex(),
        "time": checkpoint.time,
        "signature": checkpoint.signature.hex(),
    }


def checkpoint_from_json(data: Any, where: str = "checkpoint") -> Checkpoint:
    """Parse :func:`checkpoint_to_json` output.

    Raises:
        FormatError: missing fields or bad hex.
        SchemaError: fields of the wrong size or type.
    """
    keys = {"federation", "size", "root", "time", "signature"}
    if not isinstance(data, dict) or set(data) != keys:
        found = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise FormatError(
            "checkpoint is malformed", expected=sorted(keys), found=found, where=where
        )
    try:
        return Checkpoint(
            bytes.fromhex(data["federation"]),
            data["size"],
            bytes.fromhex(data["root"]),
            data["time"],
            bytes.fromhex(data["signature"]),
        )
    except (TypeError, ValueError) as e:
        raise FormatError(f"checkpoint has a bad hex field ({e})", where=where) from e


def public_identity_to_json(identity: PublicIdentity) -> dict[str, str]:
    """A public identity with hex keys (for proof files and evidence)."""
    return {
        "suite": identity.suite,
        "sign": identity.signing_key.hex(),
        "box": identity.box_key.hex(),
        "key_id": identity.key_id.hex(),
    }


def public_identity_from_json(data: Any, where: str = "public identity") -> PublicIdentity:
    """Parse :func:`public_identity_to_json` output (the key id must match the keys).

    Raises:
        FormatError: missing fields, bad hex, or a key id that does not match.
    """
    if not isinstance(data, dict) or set(data) != {"suite", "sign", "box", "key_id"}:
        raise FormatError("public identity is malformed", where=where)
    try:
        identity = PublicIdentity(
            data["suite"], bytes.fromhex(data["sign"]), bytes.fromhex(data["box"])
        )
        key_id = bytes.fromhex(data["key_id"])
    except (TypeError, ValueError) as e:
        raise FormatError(f"public identity has a bad hex field ({e})", where=where) from e
    if identity.key_id != key_id:
        raise FormatError(
            "public identity's key id does not match its keys",
            expected=identity.key_id.hex(),
            found=key_id.hex(),
            where=where,
        )
    return identity


__all__ = [
    "CHECKPOINT_DOMAIN",
    "checkpoint_from_json",
    "checkpoint_message",
    "checkpoint_to_json",
    "public_identity_from_json",
    "public_identity_to_json",
    "sign_checkpoint",
    "verify_checkpoint",
]
