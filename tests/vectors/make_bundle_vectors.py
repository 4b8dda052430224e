"""Generate the golden bundle vectors: ``tests/vectors/bundles/*.llb`` and ``manifest.json``.

    python tests/vectors/make_bundle_vectors.py          # (re)write the vectors
    python tests/vectors/make_bundle_vectors.py --check  # exit 1 if they would change

Every input is fixed: four identities from constant seeds (one with the hybrid suite), one
federation id, one ``created`` time, and small hand-made models (a few KB), so an
unencrypted Ed25519 bundle is a pure function of these inputs, the encoder, and the zstd
library (whose version the manifest records).  There is one bundle of each payload kind,
plus a model update encrypted to the coordinator, a model update sent as an XOR-delta
(xor + shuffle) against the global model, and a transaction signed with the hybrid
``ed25519+ml-dsa-65`` suite.

Two vectors cannot be reproduced byte for byte: the encrypted one (fresh content key,
sealed-box ephemeral key and secretstream header) and the one signed with the hybrid
``ed25519+ml-dsa-65`` suite (ML-DSA signing is hedged: randomised).  Their committed files
are kept as long as they still open and say exactly what packing them again would say;
otherwise new ones are written.

``tests/bundle/test_golden.py`` imports this file for the inputs and :func:`summarize`;
the manifest is what the committed files must keep matching.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tempfile
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import nacl.bindings as sodium
import numpy as np
import zstandard

from bundle import cbor
from bundle.arrays import array_hash, model_hash
from bundle.checkpoint import sign_checkpoint
from bundle.envelope import (
    DEFAULT_LEVEL,
    MAGIC,
    SIGNING_DOMAIN,
    VERSION,
    PackedBundle,
    open_bundle,
    pack_bytes,
    read_prefix,
)
from bundle.keys import SUITE_ED25519, SUITE_HYBRID, Identity, PublicIdentity
from bundle.merkle import consistency_proof, inclusion_proof, leaf_hash, root
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

HERE = Path(__file__).resolve().parent
BUNDLES = HERE / "bundles"
MANIFEST = BUNDLES / "manifest.json"

FEDERATION = b"lltoken-golden-1"  # 16 bytes
CREATED = 1_700_000_000
LEVEL = DEFAULT_LEVEL  # what writers use: a change of default shows up as drift here
SMALL_PAYLOAD_HEX = 4096  # payloads up to this many bytes are in the manifest in hex
SMALL_ARRAY_VALUES = 16  # arrays up to this many elements are listed value by value

# name: (Ed25519 seed, X25519 secret, ML-DSA-65 seed for the hybrid suite or None)
SEEDS: dict[str, tuple[bytes, bytes, bytes | None]] = {
    "coordinator": (bytes([0x01]) * 32, bytes([0x02]) * 32, None),
    "agent": (bytes([0x03]) * 32, bytes([0x04]) * 32, None),
    "peer": (bytes([0x05]) * 32, bytes([0x06]) * 32, None),
    "agent-pq": (bytes([0x07]) * 32, bytes([0x08]) * 32, bytes([0x09]) * 32),
}
IDENTITIES = {
    name: Identity(sign, box, SUITE_ED25519 if pq is None else SUITE_HYBRID, pq)
    for name, (sign, box, pq) in SEEDS.items()
}
COORDINATOR = IDENTITIES["coordinator"]
AGENT = IDENTITIES["agent"]
PEER = IDENTITIES["peer"]
AGENT_PQ = IDENTITIES["agent-pq"]
KEYRING: dict[bytes, PublicIdentity] = {i.key_id: i.public for i in IDENTITIES.values()}


# ---------------------------------------------------------------------------- models


def _noise(n: int, label: bytes) -> np.ndarray[Any, Any]:
    """``n`` deterministic pseudo-random bytes (SHA-256 in counter mode, not numpy's RNG)."""
    out = b"".join(
        hashlib.sha256(label + i.to_bytes(4, "big")).digest() for i in range((n + 31) // 32)
    )
    return np.frombuffer(out[:n], dtype=np.uint8)


def global_arrays() -> list[tuple[str, np.ndarray[Any, Any]]]:
    """The round's global model: weights on a 1/64 grid, zero biases, int8, a 0-d counter."""
    index = np.arange(256, dtype=np.int64)
    weight = (((index * 37) % 101 - 50) / 64).astype(np.float32).reshape(16, 16)
    embed = (((np.arange(64) * 5) % 127) - 63).astype(np.int8).reshape(8, 8)
    return [
        ("dense.weight", weight),
        ("dense.bias", np.zeros(16, dtype=np.float32)),
        ("embed", embed),
        ("step", np.array(1234, dtype=np.int64)),
    ]


def update_arrays() -> list[tuple[str, np.ndarray[Any, Any]]]:
    """One small training step from :func:`global_arrays`.

    The weights differ from the parent only in their low mantissa bits (as after one SGD
    step), so their XOR with the parent is zero but for the first byte of each element.
    """
    parent = dict(global_arrays())
    bits = parent["dense.weight"].view(np.uint32) ^ (_noise(256, b"step") & 0x0F).astype(
        np.uint32
    ).reshape(16, 16)
    embed = parent["embed"].copy()
    embed[0, :3] = (7, -7, 0)
    return [
        ("dense.weight", bits.view(np.float32)),
        ("dense.bias", ((np.arange(16) - 8) / 1024).astype(np.float32)),
        ("embed", embed),
        ("step", np.array(1235, dtype=np.int64)),
    ]


GLOBAL_HASH = model_hash(global_arrays())
PARENTS = {name: (array_hash(arr), arr) for name, arr in global_arrays()}
PARENTS_BY_HASH = {array_hash(arr): arr for _, arr in global_arrays()}


# ---------------------------------------------------------------------------- ledger


def _ledger_entries() -> list[bytes]:
    """Four opaque ledger entries (the bundle format carries them as byte strings)."""
    return [
        cbor.encode({"kind": "allocation", "agent": AGENT.key_id, "amount": 100}),
        cbor.encode({"kind": "allocation", "agent": PEER.key_id, "amount": 50}),
        cbor.encode({"kind": "round-close", "round": 2, "model_hash": GLOBAL_HASH}),
        cbor.encode({"kind": "transfer", "note": "golden"}),
    ]


def _checkpoint() -> Checkpoint:
    leaves = [leaf_hash(entry) for entry in _ledger_entries()]
    return sign_checkpoint(
        COORDINATOR, federation=FEDERATION, size=len(leaves), root=root(leaves), time=CREATED
    )


# ---------------------------------------------------------------------------- vectors


@dataclass(frozen=True)
class Vector:
    """One golden bundle: its payload and every argument it is packed with."""

    label: str
    payload: Payload
    sender: str
    recipients: tuple[str, ...] = ()
    encrypt: bool = False
    round: int = 0
    seq: int = 0
    expires: int | None = None
    delta: bool = False  # packed with the global model's arrays as XOR parents

    def pack(self) -> tuple[PackedBundle, bytes]:
        return pack_bytes(
            self.payload,
            IDENTITIES[self.sender],
            federation=FEDERATION,
            round=self.round,
            seq=self.seq,
            recipients=[IDENTITIES[r].public for r in self.recipients],
            encrypt=self.encrypt,
            expires=self.expires,
            created=CREATED,
            level=LEVEL,
            parents=PARENTS if self.delta else None,
        )

    def opener(self) -> Identity | None:
        """The identity that can open this vector's payload (the first recipient)."""
        return IDENTITIES[self.recipients[0]] if self.encrypt else None

    @property
    def reproducible(self) -> bool:
        """Whether packing again gives the same file (given the same zstd): not with a
        fresh content key, nor with ML-DSA's hedged (randomised) signatures."""
        return not self.encrypt and IDENTITIES[self.sender].public.suite == SUITE_ED25519


def vectors() -> list[Vector]:
    """All golden vectors, in manifest order."""
    entries = _ledger_entries()
    leaves = [leaf_hash(entry) for entry in entries]
    checkpoint = _checkpoint()
    transaction = Transaction(
        sender=AGENT.key_id,
        recipient=PEER.key_id,
        amount=25,
        nonce=bytes(range(16)),
        expires_round=10,
        memo="thanks for the data",
    )
    update = ModelUpdate(
        round=2,
        parent_hash=GLOBAL_HASH,
        num_examples=120,
        metrics={"accuracy": 0.75, "loss": 0.5, "steps": 15},
        arrays=update_arrays(),
    )
    return [
        Vector(
            "enroll-request",
            EnrollRequest(
                name="site-a",
                identity=AGENT.public,
                info={"cores": 2, "gpu": "none", "ram_gb": 15.5, "tags": ["lab", "eu-west"]},
            ),
            sender="agent",
            recipients=("coordinator",),
        ),
        Vector(
            "roster",
            Roster(
                version=3,
                federation_name="golden",
                coordinator=COORDINATOR.public,
                members=(
                    RosterMember("site-a", AGENT.public, "active"),
                    RosterMember("site-b", PEER.public, "revoked"),
                    RosterMember("site-c", AGENT_PQ.public, "active"),
                ),
            ),
            sender="coordinator",
            round=2,
            seq=1,
        ),
        Vector(
            "round-task",
            RoundTask(
                round=2,
                task_type="train",
                agent=AGENT.key_id,
                model_hash=GLOBAL_HASH,
                config={"lr": 0.015625, "epochs": 1, "optimizer": "sgd", "layers": [16, 16]},
                run_config={"dataset": "golden", "seed": -1, "mask": b"\x0f"},
                deadline_round=4,
            ),
            sender="coordinator",
            recipients=("agent",),
            round=2,
            seq=2,
            expires=4,
        ),
        Vector(
            "global-model",
            GlobalModel(round=2, model_hash=GLOBAL_HASH, arrays=global_arrays()),
            sender="coordinator",
            recipients=("agent", "peer"),
            round=2,
            seq=3,
            expires=4,
        ),
        Vector(
            "model-update",
            update,
            sender="agent",
            recipients=("coordinator",),
            round=2,
            seq=1,
            expires=4,
        ),
        Vector(
            "model-update-encrypted",
            update,
            sender="agent",
            recipients=("coordinator",),
            encrypt=True,
            round=2,
            seq=2,
            expires=4,
        ),
        Vector(
            "model-update-delta",
            update,
            sender="agent",
            recipients=("coordinator",),
            round=2,
            seq=3,
            expires=4,
            delta=True,
        ),
        Vector(
            "eval-result",
            EvalResult(
                round=2, model_hash=GLOBAL_HASH, num_examples=50, metrics={"accuracy": 0.8125}
            ),
            sender="agent",
            recipients=("coordinator",),
            round=2,
            seq=4,
        ),
        Vector("transaction", transaction, sender="agent", recipients=("coordinator",), seq=5),
        Vector(
            "transaction-hybrid",
            Transaction(
                sender=AGENT_PQ.key_id,
                recipient=AGENT.key_id,
                amount=7,
                nonce=bytes(range(16, 32)),
                expires_round=10,
                memo="signed with ed25519+ml-dsa-65",
            ),
            sender="agent-pq",
            recipients=("coordinator",),
            seq=1,
        ),
        Vector(
            "ledger-delta",
            LedgerDelta(
                start=2,
                entries=tuple(entries[2:]),
                checkpoint=checkpoint,
                proof=tuple(consistency_proof(2, leaves)),
            ),
            sender="coordinator",
            recipients=("agent",),
            round=2,
            seq=4,
        ),
        Vector(
            "receipt",
            Receipt(
                bundle_id=hashlib.sha256(b"the transaction bundle's prefix").digest(),
                status="accepted",
                reason="transfer applied",
                ledger_index=3,
                proof=tuple(inclusion_proof(3, leaves)),
                checkpoint=checkpoint,
            ),
            sender="coordinator",
            recipients=("agent",),
            round=2,
            seq=5,
        ),
    ]


# ---------------------------------------------------------------------------- summaries


def summarize(value: Any) -> Any:
    """A JSON form of a decoded payload: bytes as hex, arrays with dtype, shape and values."""
    if isinstance(value, PublicIdentity):
        return {
            "suite": value.suite,
            "sign": value.signing_key.hex(),
            "box": value.box_key.hex(),
            "key_id": value.key_id.hex(),
        }
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: summarize(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, np.ndarray):
        summary = {
            "dtype": value.dtype.name,
            "shape": list(value.shape),
            "array_hash": array_hash(value).hex(),
        }
        if value.size <= SMALL_ARRAY_VALUES:
            summary["values"] = value.tolist()
        return summary
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, dict):
        return {str(k): summarize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [summarize(v) for v in value]
    return value


def decompressed_payload(data: bytes, opener: Identity | None) -> bytes:
    """The CBOR payload of a bundle in memory, decrypted and decompressed with
    libsodium and zstd directly (not through the envelope's own reader)."""
    prefix = read_prefix(io.BytesIO(data), len(data))
    stored = data[prefix.length :]
    encryption = prefix.header.payload.encryption
    if encryption is not None:
        if opener is None:
            raise ValueError("encrypted vector needs an identity to open it")
        slot = next(s for s in encryption.slots if s.recipient == opener.key_id)
        key = opener.unseal(slot.sealed)
        state = sodium.crypto_secretstream_xchacha20poly1305_state()
        sodium.crypto_secretstream_xchacha20poly1305_init_pull(state, encryption.stream_header, key)
        record = encryption.chunk + sodium.crypto_secretstream_xchacha20poly1305_ABYTES
        plain = []
        for start in range(0, len(stored), record):
            message, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(
                state, stored[start : start + record], None
            )
            final = start + record >= len(stored)
            if (tag == sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL) != final:
                raise ValueError("TAG_FINAL is not on the last chunk (and only there)")
            plain.append(message)
        stored = b"".join(plain)
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(stored)
    if len(raw) != prefix.header.payload.raw:
        raise ValueError("payload length differs from header.payload.raw")
    return raw


def _entry(vector: Vector, name: str, data: bytes) -> dict[str, Any]:
    """The manifest record of one written vector (checks it opens first)."""
    path = Path(tempfile.mkdtemp()) / name
    path.write_bytes(data)
    opened = open_bundle(
        path,
        KEYRING.get,
        identity=vector.opener(),
        parents=PARENTS_BY_HASH if vector.delta else None,
    )
    path.unlink()
    path.parent.rmdir()
    prefix = read_prefix(io.BytesIO(data), len(data))
    header = prefix.header
    raw = decompressed_payload(data, vector.opener())
    record: dict[str, Any] = {
        "file": name,
        "label": vector.label,
        "kind": header.kind,
        "bundle_id": prefix.bundle_id.hex(),
        "sender": vector.sender,
        "sender_key_id": header.sender.hex(),
        "recipients": [IDENTITIES[r].key_id.hex() for r in vector.recipients],
        "round": header.round,
        "seq": header.seq,
        "created": header.created,
        "expires": header.expires,
        "suite": header.suite,
        "encrypted": vector.encrypt,
        "reproducible": vector.reproducible,
        "opened_by": vector.recipients[0] if vector.encrypt else None,
        "delta_parents": "global-model" if vector.delta else None,
        "file_size": len(data),
        "payload_size": header.payload.size,
        "payload_raw": header.payload.raw,
        "payload_hash": header.payload.hash.hex(),
        "header_cbor_hex": prefix.header_bytes.hex(),
        "signed_message_hex": (
            SIGNING_DOMAIN
            + hashlib.sha256(MAGIC + bytes((VERSION,)) + prefix.header_bytes).digest()
        ).hex(),
        "payload_cbor_sha256": hashlib.sha256(raw).hexdigest(),
        "payload_cbor_hex": raw.hex() if len(raw) <= SMALL_PAYLOAD_HEX else None,
        "payload": summarize(opened.payload),
    }
    decoded = cbor.decode(raw)
    if isinstance(decoded, dict) and isinstance(decoded.get("arrays"), list):
        record["array_filters"] = {
            entry["name"]: entry.get("filters", []) for entry in decoded["arrays"]
        }
    return record


def _kept(vector: Vector, old: dict[str, Any] | None) -> tuple[str, bytes] | None:
    """The committed file of a vector that cannot be reproduced, if it still opens and
    still says exactly what packing it again would say (then the file is not churned)."""
    if old is None or not (BUNDLES / old["file"]).is_file():
        return None
    data = (BUNDLES / old["file"]).read_bytes()
    _, fresh = vector.pack()
    try:
        _entry(vector, old["file"], data)  # opens: signature, hash, decryption, schema
        same = decompressed_payload(data, vector.opener()) == decompressed_payload(
            fresh, vector.opener()
        )
        prefix = read_prefix(io.BytesIO(data), len(data))
        fresh_prefix = read_prefix(io.BytesIO(fresh), len(fresh))
    except Exception:  # any failure means: write a new one
        return None
    if vector.encrypt:
        context = ("kind", "federation", "sender", "recipients", "round", "seq", "created")
        same = same and all(
            getattr(prefix.header, f) == getattr(fresh_prefix.header, f)
            for f in (*context, "expires", "suite")
        )
    else:  # only the signatures differ
        same = same and prefix.header_bytes == fresh_prefix.header_bytes
    return (old["file"], data) if same else None


def build(old_manifest: dict[str, Any] | None) -> tuple[dict[str, bytes], dict[str, Any]]:
    """All vector files by name, and the manifest describing them."""
    old_by_label = {v["label"]: v for v in (old_manifest or {}).get("vectors", [])}
    files: dict[str, bytes] = {}
    records = []
    for vector in vectors():
        kept = None if vector.reproducible else _kept(vector, old_by_label.get(vector.label))
        if kept is not None:
            name, data = kept
        else:
            packed, data = vector.pack()
            name = packed.name
        files[name] = data
        records.append(_entry(vector, name, data))
    manifest = {
        "description": "Golden vectors for bundle format v1 (docs/bundle-format.md). "
        "Generated by tests/vectors/make_bundle_vectors.py; checked by "
        "tests/bundle/test_golden.py.",
        "zstd_version": ".".join(map(str, zstandard.ZSTD_VERSION)),
        "zstandard_version": zstandard.__version__,
        "zstd_level": LEVEL,
        "federation": FEDERATION.hex(),
        "created": CREATED,
        "keys": {
            name: {
                "suite": identity.public.suite,
                "signing_seed": SEEDS[name][0].hex(),
                "box_secret": SEEDS[name][1].hex(),
                "mldsa_seed": None if SEEDS[name][2] is None else SEEDS[name][2].hex(),
                "signing_public": identity.public.signing_key.hex(),
                "box_public": identity.public.box_key.hex(),
                "key_id": identity.key_id.hex(),
            }
            for name, identity in IDENTITIES.items()
        },
        "vectors": records,
    }
    return files, manifest


def _manifest_text(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest, indent=1, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    old = json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else None
    files, manifest = build(old)
    present = {p.name for p in BUNDLES.glob("*.llb")} if BUNDLES.is_dir() else set()
    if args.check:
        changed = sorted(
            name
            for name, data in files.items()
            if not (BUNDLES / name).is_file() or (BUNDLES / name).read_bytes() != data
        )
        stale = sorted(present - set(files))
        manifest_changed = old is None or _manifest_text(old) != _manifest_text(manifest)
        for name in changed:
            print(f"would write {name}")
        for name in stale:
            print(f"would remove {name}")
        if manifest_changed:
            print("would rewrite manifest.json")
        return 1 if changed or stale or manifest_changed else 0
    BUNDLES.mkdir(parents=True, exist_ok=True)
    for name in present - set(files):
        (BUNDLES / name).unlink()
    for name, data in files.items():
        (BUNDLES / name).write_bytes(data)
    MANIFEST.write_text(_manifest_text(manifest))
    total = sum(len(d) for d in files.values())
    print(
        f"wrote {len(files)} bundles ({total} bytes) and {MANIFEST.relative_to(HERE.parent.parent)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
