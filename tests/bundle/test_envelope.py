"""Tests for bundle.envelope: pack, check and open, for every payload kind, plain and
encrypted to one and three recipients; the on-disk layout and signature as documented;
names, ids, the verification order, caps, and keyless checking with check_bundle."""

from __future__ import annotations

import hashlib
import io
import re
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard
from nacl.bindings import crypto_scalarmult_base

from bundle import cbor
from bundle.arrays import array_hash, model_hash
from bundle.envelope import (
    MAGIC,
    SIGNING_DOMAIN,
    VERSION,
    Header,
    bundle_name,
    check_bundle,
    open_bundle,
    pack_bundle,
    pack_bytes,
    parse_name,
)
from bundle.errors import (
    DecryptionError,
    FormatError,
    IntegrityError,
    ReplayError,
    SignatureError,
    SizeError,
    UnknownSenderError,
)
from bundle.keys import Identity, PublicIdentity
from bundle.payloads import EncodeContext, EnrollRequest, ModelUpdate, Payload

ALL_KINDS = [
    "enroll-request",
    "roster",
    "round-task",
    "global-model",
    "model-update",
    "eval-result",
    "transaction",
    "ledger-delta",
    "receipt",
]
FROM_COORDINATOR = {"roster", "round-task", "global-model", "ledger-delta", "receipt"}
FAT_SAFE = re.compile(r"^[a-z0-9._-]+$")
CREATED = 1_700_000_000

Keyring = Callable[[bytes], PublicIdentity | None]


def parties(
    kind: str, coordinator: Identity, alice: Identity, bob: Identity, carol: Identity
) -> tuple[Identity, list[Identity]]:
    """Sender and three possible recipients for a kind, as the federation would use them."""
    if kind in FROM_COORDINATOR:
        return coordinator, [alice, bob, carol]
    return alice, [coordinator, bob, carol]


def split(data: bytes) -> dict[str, Any]:
    """Parse a bundle by the documented layout, independently of the module."""
    assert data[:4] == MAGIC
    version = data[4]
    (header_len,) = struct.unpack(">I", data[5:9])
    header_bytes = data[9 : 9 + header_len]
    at = 9 + header_len
    (sig_len,) = struct.unpack(">H", data[at : at + 2])
    sig_block = data[at + 2 : at + 2 + sig_len]
    prefix_len = at + 2 + sig_len
    return {
        "version": version,
        "header_bytes": header_bytes,
        "header": cbor.decode(header_bytes),
        "signatures": cbor.decode(sig_block),
        "prefix": data[:prefix_len],
        "payload": data[prefix_len:],
    }


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("recipients", [0, 1, 3], ids=["plain", "to-1", "to-3"])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_every_kind_round_trips(
    kind: str,
    recipients: int,
    spool: Path,
    every_payload: dict[str, Payload],
    same_payload: Callable[[Any, Any], bool],
    keyring: Keyring,
    federation: bytes,
    coordinator: Identity,
    alice: Identity,
    bob: Identity,
    carol: Identity,
    mallory: Identity,
) -> None:
    sender, candidates = parties(kind, coordinator, alice, bob, carol)
    to = candidates[:recipients]
    payload = every_payload[kind]
    packed = pack_bundle(
        spool,
        payload,
        sender,
        federation=federation,
        round=7,
        seq=42,
        recipients=[r.public for r in to],
        encrypt=bool(to),
        expires=9,
    )
    assert packed.path == spool / packed.name
    assert packed.size == packed.path.stat().st_size
    assert [p.name for p in spool.iterdir()] == [packed.name]  # no temporary left over

    header = packed.header
    assert (header.kind, header.federation, header.sender) == (kind, federation, sender.key_id)
    assert header.recipients == tuple(r.key_id for r in to)
    assert (header.round, header.seq, header.expires, header.suite) == (7, 42, 9, "ed25519")
    assert (header.payload.encryption is not None) == bool(to)

    for reader in to or [None]:
        opened = open_bundle(packed.path, keyring, identity=reader)
        assert opened.bundle_id == packed.bundle_id
        assert opened.header == header
        assert opened.sender == sender.public
        assert opened.size == packed.size
        assert same_payload(payload, opened.payload)
    if to:
        for outsider in (sender, mallory):
            with pytest.raises(DecryptionError):
                open_bundle(packed.path, keyring, identity=outsider)
        with pytest.raises(DecryptionError):
            open_bundle(packed.path, keyring)

    prefix = check_bundle(packed.path)
    assert prefix.bundle_id == packed.bundle_id
    assert prefix.header == header


def test_bundle_name_and_id(
    spool: Path, every_payload: dict[str, Payload], alice: Identity, federation: bytes
) -> None:
    packed = pack_bundle(spool, every_payload["transaction"], alice, federation=federation)
    data = packed.path.read_bytes()
    parts = split(data)
    assert packed.bundle_id == hashlib.sha256(parts["prefix"]).digest()
    assert packed.name == f"transaction.{packed.bundle_id.hex()}.llb"
    assert packed.name == bundle_name("transaction", packed.bundle_id)
    assert parse_name(packed.name) == ("transaction", packed.bundle_id)
    assert FAT_SAFE.match(packed.name)
    assert len(packed.name) <= 255


def test_layout_and_signature_follow_the_spec(
    spool: Path, every_payload: dict[str, Payload], alice: Identity, federation: bytes
) -> None:
    payload = every_payload["model-update"]
    packed = pack_bundle(spool, payload, alice, federation=federation, created=CREATED)
    parts = split(packed.path.read_bytes())
    assert parts["version"] == VERSION == 1
    # Header: deterministic CBOR with exactly the documented fields.
    assert cbor.encode(parts["header"]) == parts["header_bytes"]
    assert set(parts["header"]) == {
        "kind",
        "fed",
        "from",
        "to",
        "round",
        "seq",
        "created",
        "expires",
        "suite",
        "payload",
    }
    assert parts["header"]["created"] == CREATED
    info = parts["header"]["payload"]
    assert set(info) == {"size", "raw", "hash", "compression", "enc"}
    # One Ed25519 signature over the domain-separated hash of magic, version and header.
    [signature] = parts["signatures"]
    digest = hashlib.sha256(MAGIC + bytes([VERSION]) + parts["header_bytes"]).digest()
    alice.public.verify(SIGNING_DOMAIN + digest, signature)
    assert SIGNING_DOMAIN == b"lltoken/bundle/v1\x00"
    # The header binds the payload: size, hash, and what it decompresses to.
    assert info["size"] == len(parts["payload"])
    assert info["hash"] == hashlib.sha256(parts["payload"]).digest()
    assert info["compression"] == "zstd"
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(parts["payload"])).read()
    assert len(raw) == info["raw"]
    assert raw == cbor.encode(payload.to_cbor(EncodeContext()))


def test_packing_is_deterministic_when_unencrypted(
    tmp_path: Path, every_payload: dict[str, Payload], alice: Identity, federation: bytes
) -> None:
    payload = every_payload["global-model"]
    a = pack_bundle(tmp_path / "a", payload, alice, federation=federation, created=CREATED)
    b = pack_bundle(tmp_path / "b", payload, alice, federation=federation, created=CREATED)
    described, data = pack_bytes(payload, alice, federation=federation, created=CREATED)
    assert a.name == b.name == described.name
    assert a.path is not None
    assert a.path.read_bytes() == data
    assert described.size == len(data)


def test_encrypted_bundles_leak_no_weights(
    tmp_path: Path, alice: Identity, coordinator: Identity, federation: bytes
) -> None:
    # int8 (quantised) weights are sent unfiltered, so a plain bundle shows them verbatim.
    weights = np.random.default_rng(1).integers(-128, 127, size=20_000, dtype=np.int8)
    update = ModelUpdate(1, b"\x01" * 32, 5, {}, [("w", weights)])
    needle = weights[1000:1016].tobytes()
    plain = pack_bundle(tmp_path / "p", update, alice, federation=federation)
    assert plain.path is not None
    assert needle in plain.path.read_bytes()  # zstd leaves random floats as literals
    sealed = pack_bundle(
        tmp_path / "s",
        update,
        alice,
        federation=federation,
        recipients=[coordinator.public],
        encrypt=True,
    )
    assert sealed.path is not None
    assert needle not in sealed.path.read_bytes()
    again = pack_bundle(
        tmp_path / "s",
        update,
        alice,
        federation=federation,
        recipients=[coordinator.public],
        encrypt=True,
    )
    assert again.name != sealed.name  # a fresh content key every time


def test_large_model_spans_many_encrypted_chunks(
    spool: Path,
    alice: Identity,
    coordinator: Identity,
    bob: Identity,
    carol: Identity,
    keyring: Keyring,
    federation: bytes,
) -> None:
    rng = np.random.default_rng(5)
    arrays = [
        ("w1", rng.normal(size=(400, 700)).astype(np.float32)),
        ("w2", rng.normal(size=SHUFFLE_PLUS).astype(np.float64)),
        ("b", np.zeros(3, np.float16)),
    ]
    update = ModelUpdate(3, model_hash(arrays), 1000, {"loss": 0.5}, arrays)
    packed = pack_bundle(
        spool,
        update,
        alice,
        federation=federation,
        recipients=[coordinator.public, bob.public, carol.public],
        encrypt=True,
    )
    encryption = packed.header.payload.encryption
    assert encryption is not None
    assert packed.header.payload.size > 4 * encryption.chunk
    for reader in (coordinator, bob, carol):
        opened = open_bundle(packed.path, keyring, identity=reader)
        assert isinstance(opened.payload, ModelUpdate)
        assert model_hash(opened.payload.arrays) == model_hash(arrays)


SHUFFLE_PLUS = (1 << 16) + 3


@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "encrypted"])
def test_payload_larger_than_the_in_memory_spool(
    spool: Path,
    alice: Identity,
    coordinator: Identity,
    keyring: Keyring,
    federation: bytes,
    encrypt: bool,
) -> None:
    """Over 16 MiB the packer spools to disk and copies it in the kernel: still exact."""
    weights = np.random.default_rng(8).normal(size=5_000_000).astype(np.float32)  # 20 MB
    update = ModelUpdate(1, b"\x01" * 32, 5, {}, [("w", weights)])
    packed = pack_bundle(
        spool,
        update,
        alice,
        federation=federation,
        recipients=[coordinator.public] if encrypt else [],
        encrypt=encrypt,
    )
    assert packed.header.payload.size > 16 << 20
    assert packed.path is not None
    check_bundle(packed.path)
    opened = open_bundle(packed.path, keyring, identity=coordinator)
    assert isinstance(opened.payload, ModelUpdate)
    assert opened.payload.arrays[0][1].tobytes() == weights.tobytes()
    if not encrypt:
        described, data = pack_bytes(
            update, alice, federation=federation, created=packed.header.created
        )
        assert described.name == packed.name
        assert data == packed.path.read_bytes()


def test_xor_delta_through_a_bundle(
    spool: Path, alice: Identity, keyring: Keyring, federation: bytes
) -> None:
    rng = np.random.default_rng(9)
    parent = rng.normal(0, 0.1, size=(200, 300)).astype(np.float32)
    child = parent + np.float32(1e-6) * rng.normal(size=parent.shape).astype(np.float32)
    update = ModelUpdate(2, model_hash([("w", parent)]), 10, {}, [("w", child)])
    delta = pack_bundle(
        spool,
        update,
        alice,
        federation=federation,
        parents={"w": (array_hash(parent), parent)},
    )
    full = pack_bytes(update, alice, federation=federation)[0]
    assert delta.size < full.size
    opened = open_bundle(delta.path, keyring, parents={array_hash(parent): parent})
    assert isinstance(opened.payload, ModelUpdate)
    assert opened.payload.arrays[0][1].tobytes() == child.tobytes()
    with pytest.raises(IntegrityError):
        open_bundle(delta.path, keyring)  # this home lacks the parent model


# ----------------------------------------------------------------------------- order and policy


def test_policy_runs_after_the_signature_and_can_refuse(
    spool: Path,
    every_payload: dict[str, Payload],
    alice: Identity,
    mallory: Identity,
    keyring: Keyring,
    federation: bytes,
) -> None:
    seen: list[Header] = []

    def policy(header: Header) -> None:
        seen.append(header)
        if header.seq <= 5:
            raise ReplayError("sequence already seen", expected="> 5", found=header.seq)

    fresh = pack_bundle(spool, every_payload["transaction"], alice, federation=federation, seq=6)
    stale = pack_bundle(spool, every_payload["transaction"], alice, federation=federation, seq=5)
    open_bundle(fresh.path, keyring, policy=policy)
    with pytest.raises(ReplayError):
        open_bundle(stale.path, keyring, policy=policy)
    assert [h.seq for h in seen] == [6, 5]

    # Unknown sender and bad signature are refused before the policy sees the header.
    unknown = pack_bundle(spool, every_payload["transaction"], mallory, federation=federation)
    with pytest.raises(UnknownSenderError):
        open_bundle(unknown.path, keyring, policy=policy)

    def impostor(key_id: bytes) -> PublicIdentity | None:
        return mallory.public if key_id == alice.key_id else None

    with pytest.raises(SignatureError):
        open_bundle(fresh.path, impostor, policy=policy)
    assert len(seen) == 2


def test_model_kinds_obey_max_payload(
    spool: Path,
    every_payload: dict[str, Payload],
    alice: Identity,
    keyring: Keyring,
    federation: bytes,
) -> None:
    packed = pack_bundle(spool, every_payload["model-update"], alice, federation=federation)
    raw = packed.header.payload.raw
    open_bundle(packed.path, keyring, max_payload=raw)
    with pytest.raises(SizeError):
        open_bundle(packed.path, keyring, max_payload=raw - 1)


def test_control_kinds_are_capped_small(
    spool: Path, alice: Identity, keyring: Keyring, federation: bytes
) -> None:
    bloated = EnrollRequest("agent-1", alice.public, {"notes": "x" * (2 << 20)})
    packed = pack_bundle(spool, bloated, alice, federation=federation)
    assert packed.size < 64 * 1024  # compresses well, but the cap is on the raw size
    with pytest.raises(SizeError):
        open_bundle(packed.path, keyring, max_payload=1 << 40)


def test_encryption_needs_a_recipient(
    spool: Path, every_payload: dict[str, Payload], alice: Identity, federation: bytes
) -> None:
    with pytest.raises(FormatError):
        pack_bundle(spool, every_payload["transaction"], alice, federation=federation, encrypt=True)
    assert list(spool.iterdir()) == []


def test_header_over_its_cap_is_refused_when_packing(
    spool: Path, every_payload: dict[str, Payload], alice: Identity, federation: bytes
) -> None:
    many = [
        PublicIdentity("ed25519", bytes(32), crypto_scalarmult_base(i.to_bytes(32, "big")))
        for i in range(1, 601)
    ]
    with pytest.raises(SizeError):
        pack_bundle(
            spool,
            every_payload["transaction"],
            alice,
            federation=federation,
            recipients=many,
            encrypt=True,
        )
    assert list(spool.iterdir()) == []


def test_opening_holds_the_payload_about_once(
    spool: Path, alice: Identity, keyring: Keyring, federation: bytes
) -> None:
    """Arrays come back as views of one decompression buffer: no second copy."""
    weights = np.random.default_rng(2).normal(size=4_000_000).astype(np.float32)  # 16 MB
    update = ModelUpdate(1, b"\x01" * 32, 5, {}, [("w", weights)])
    packed = pack_bundle(spool, update, alice, federation=federation)
    tracemalloc.start()
    try:
        opened = open_bundle(packed.path, keyring)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(opened.payload, ModelUpdate)
    assert opened.payload.arrays[0][1].tobytes() == weights.tobytes()
    assert peak < weights.nbytes * 1.25 + (4 << 20), peak


# ----------------------------------------------------------------------------- keyless check


def _packed_transaction(spool: Path, payload: Payload, alice: Identity, fed: bytes) -> Path:
    packed = pack_bundle(spool, payload, alice, federation=fed)
    assert packed.path is not None
    return packed.path


def test_check_bundle_on_a_renamed_file(
    spool: Path, every_payload: dict[str, Payload], alice: Identity, federation: bytes
) -> None:
    path = _packed_transaction(spool, every_payload["transaction"], alice, federation)
    kind, bundle_id = parse_name(path.name)
    other_id = hashlib.sha256(b"another bundle").hexdigest()
    for new_name in (f"transaction.{other_id}.llb", f"receipt.{bundle_id.hex()}.llb"):
        renamed = path.rename(path.with_name(new_name))
        with pytest.raises(IntegrityError):
            check_bundle(renamed)
        path = renamed.rename(path.with_name(bundle_name(kind, bundle_id)))
    check_bundle(path)


@pytest.mark.parametrize(
    "name",
    [
        "transaction.llb",
        "x.llb",
        "transaction." + "0" * 63 + ".llb",
        "transaction." + "0" * 65 + ".llb",
        "transaction." + "A" * 64 + ".llb",
        "transaction." + "0" * 64 + ".LLB",
        "transaction." + "0" * 64 + ".llb.tmp",
        "." + "transaction." + "0" * 64 + ".llb",
        "Transaction." + "0" * 64 + ".llb",
        "unknown-kind." + "0" * 64 + ".llb",
        "transaction." + "0" * 64 + ".llb\n",
        "transaction." + "0" * 64 + ".llb ",
        "transaction_" + "0" * 64 + ".llb",
        "",
    ],
    ids=repr,
)
def test_names_that_are_not_bundle_names(name: str) -> None:
    with pytest.raises(FormatError):
        parse_name(name)


def test_check_bundle_refuses_a_badly_named_copy(
    spool: Path, every_payload: dict[str, Payload], alice: Identity, federation: bytes
) -> None:
    path = _packed_transaction(spool, every_payload["transaction"], alice, federation)
    for bad in (path.name + ".bak", path.name.upper(), path.name + "\n"):
        copy = path.with_name(bad)
        copy.write_bytes(path.read_bytes())
        with pytest.raises(FormatError):
            check_bundle(copy)


def test_check_bundle_finds_an_altered_payload(
    spool: Path, every_payload: dict[str, Payload], alice: Identity, federation: bytes
) -> None:
    path = _packed_transaction(spool, every_payload["transaction"], alice, federation)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        check_bundle(path)
