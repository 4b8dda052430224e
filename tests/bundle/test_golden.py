"""Golden bundle vectors (tests/vectors/bundles/, made by tests/vectors/make_bundle_vectors.py).

For every committed vector:

* it opens with the fixed keys to exactly the payload its manifest describes, under its
  content-addressed name, with the header fields, signed message and id the manifest lists;
* its header and payload CBOR re-encode byte for byte, with our encoder and with cbor2's
  canonical encoder (an independent implementation of the same rules), and the payload is
  recovered with libsodium and zstd directly, as docs/bundle-format.md describes it;
* packed again from the same fixed inputs, it gives the same file byte for byte when the
  zstd library is the version the vectors were made with; with another zstd (whose
  compressed bytes may legitimately differ) the header fields other than the payload's
  stored size and hash, and the decompressed payload, must still be identical.  The
  decompressed-payload comparison always runs.  Two vectors are random by design: the
  encrypted one (everything but the encryption parameters must agree) and the hybrid-suite
  one (everything but the hedged ML-DSA-65 signature must agree).

If the encoder changes on purpose, regenerate with ``python tests/vectors/make_bundle_vectors.py``
and say why in the commit: every existing bundle in the field is affected.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import struct
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import cbor2
import nacl.signing
import pytest
import zstandard

from bundle import cbor, pqsig
from bundle.envelope import (
    MAGIC,
    SIGNING_DOMAIN,
    VERSION,
    bundle_name,
    check_bundle,
    open_bundle,
    parse_name,
    read_prefix,
)
from bundle.errors import IntegrityError
from bundle.keys import SUITE_ED25519, SUITES
from bundle.payloads import KINDS


def _load_generator() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "vectors" / "make_bundle_vectors.py"
    spec = importlib.util.spec_from_file_location("make_bundle_vectors", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


GEN = _load_generator()
MANIFEST: dict[str, Any] = json.loads(GEN.MANIFEST.read_text(encoding="utf-8"))
RECORDS: list[dict[str, Any]] = MANIFEST["vectors"]
ZSTD_NOW = ".".join(map(str, zstandard.ZSTD_VERSION))


def _json(value: Any) -> Any:
    """Normalise through JSON, as the manifest was written (tuples become lists)."""
    return json.loads(json.dumps(value))


def _file(record: dict[str, Any]) -> bytes:
    data: bytes = (GEN.BUNDLES / record["file"]).read_bytes()
    return data


def _opener(record: dict[str, Any]) -> Any:
    return GEN.IDENTITIES[record["opened_by"]] if record["opened_by"] else None


def _vector(record: dict[str, Any]) -> Any:
    return next(v for v in GEN.vectors() if v.label == record["label"])


def _header_map(data: bytes) -> dict[str, Any]:
    prefix = read_prefix(io.BytesIO(data), len(data))
    header: dict[str, Any] = cbor.decode(prefix.header_bytes)
    return header


by_label = pytest.mark.parametrize("record", RECORDS, ids=[r["label"] for r in RECORDS])


def test_manifest_covers_every_kind_and_every_file() -> None:
    assert {r["kind"] for r in RECORDS} == set(KINDS)
    assert any(r["encrypted"] and r["kind"] == "model-update" for r in RECORDS)
    assert {r["suite"] for r in RECORDS} == set(SUITES)
    assert any(
        r.get("array_filters", {}).get("dense.weight") == ["xor", "shuffle"] for r in RECORDS
    )
    assert len({r["label"] for r in RECORDS}) == len(RECORDS)
    committed = {p.name for p in GEN.BUNDLES.glob("*.llb")}
    assert committed == {r["file"] for r in RECORDS}
    assert sum(len(_file(r)) for r in RECORDS) < 64 * 1024  # small enough to commit


@by_label
def test_vector_opens_to_the_manifest(record: dict[str, Any], tmp_path: Path) -> None:
    path = GEN.BUNDLES / record["file"]
    bundle_id = bytes.fromhex(record["bundle_id"])
    assert parse_name(record["file"]) == (record["kind"], bundle_id)
    assert record["file"] == bundle_name(record["kind"], bundle_id)
    assert check_bundle(path).bundle_id == bundle_id

    opened = open_bundle(
        path,
        GEN.KEYRING.get,
        identity=_opener(record),
        parents=GEN.PARENTS_BY_HASH if record["delta_parents"] else None,
    )
    header = opened.header
    assert opened.bundle_id == bundle_id
    assert header.kind == record["kind"]
    assert header.federation.hex() == MANIFEST["federation"]
    assert header.sender.hex() == record["sender_key_id"]
    assert opened.sender.key_id.hex() == record["sender_key_id"]
    assert [r.hex() for r in header.recipients] == record["recipients"]
    assert (header.round, header.seq, header.created, header.expires) == (
        record["round"],
        record["seq"],
        record["created"],
        record["expires"],
    )
    assert (header.payload.size, header.payload.raw, header.payload.hash.hex()) == (
        record["payload_size"],
        record["payload_raw"],
        record["payload_hash"],
    )
    assert (header.payload.encryption is not None) == record["encrypted"]
    assert _json(GEN.summarize(opened.payload)) == record["payload"]


@by_label
def test_vector_layout_and_signature_follow_the_spec(record: dict[str, Any]) -> None:
    """Parse the file by docs/bundle-format.md alone: offsets, lengths, id and signature."""
    data = _file(record)
    assert len(data) == record["file_size"]
    assert data[:4] == b"LLTB" == MAGIC
    assert data[4] == 1 == VERSION
    (header_len,) = struct.unpack(">I", data[5:9])
    header_bytes = data[9 : 9 + header_len]
    assert header_bytes.hex() == record["header_cbor_hex"]
    (sig_len,) = struct.unpack(">H", data[9 + header_len : 11 + header_len])
    sig_block = data[11 + header_len : 11 + header_len + sig_len]
    payload = data[11 + header_len + sig_len :]
    header = cbor2.loads(header_bytes)
    assert len(payload) == header["payload"]["size"]
    assert hashlib.sha256(payload).hexdigest() == record["payload_hash"]
    assert hashlib.sha256(data[: 11 + header_len + sig_len]).hexdigest() == record["bundle_id"]

    message = SIGNING_DOMAIN + hashlib.sha256(data[:5] + header_bytes).digest()
    assert message[:18] == b"lltoken/bundle/v1\x00"
    assert message.hex() == record["signed_message_hex"]
    sender = GEN.IDENTITIES[record["sender"]].public
    assert header["suite"] == record["suite"] == sender.suite
    signatures = cbor2.loads(sig_block)
    assert isinstance(signatures, list)
    # One signature per algorithm of the suite, in order, all over the same message.
    if record["suite"] == SUITE_ED25519:
        assert [len(s) for s in signatures] == [64]
    else:
        assert [len(s) for s in signatures] == [64, pqsig.SIGNATURE_BYTES]
        assert sender.mldsa_key is not None
        assert pqsig.verify(sender.mldsa_key, message, signatures[1])
    nacl.signing.VerifyKey(sender.signing_key[:32]).verify(message, signatures[0])


@by_label
def test_vector_cbor_reencodes_byte_for_byte(record: dict[str, Any]) -> None:
    data = _file(record)
    header_bytes = bytes.fromhex(record["header_cbor_hex"])
    assert cbor.encode(cbor.decode(header_bytes)) == header_bytes
    assert cbor2.dumps(cbor2.loads(header_bytes), canonical=True) == header_bytes

    raw = GEN.decompressed_payload(data, _opener(record))
    assert len(raw) == record["payload_raw"]
    assert hashlib.sha256(raw).hexdigest() == record["payload_cbor_sha256"]
    if record["payload_cbor_hex"] is not None:
        assert raw.hex() == record["payload_cbor_hex"]
    assert cbor.encode(cbor.decode(raw)) == raw
    assert cbor2.dumps(cbor2.loads(raw), canonical=True) == raw
    if "array_filters" in record:
        entries = cbor.decode(raw)["arrays"]
        assert {e["name"]: e.get("filters", []) for e in entries} == record["array_filters"]


@by_label
def test_vector_repacks_from_its_inputs(record: dict[str, Any]) -> None:
    committed = _file(record)
    vector = _vector(record)
    packed, fresh = vector.pack()
    opener = _opener(record)
    # Always: the same inputs encode to the same payload CBOR.
    assert GEN.decompressed_payload(fresh, opener) == GEN.decompressed_payload(committed, opener)

    same_zstd = MANIFEST["zstd_version"] == ZSTD_NOW
    assert record["reproducible"] == (not record["encrypted"] and record["suite"] == "ed25519")
    if record["reproducible"] and same_zstd:
        assert packed.name == record["file"]
        assert fresh == committed
        return
    old, new = _header_map(committed), _header_map(fresh)
    if record["encrypted"]:
        # Fresh content key, sealed boxes and stream header: only the rest must agree.
        assert new["payload"]["enc"]["chunk"] == old["payload"]["enc"]["chunk"]
        assert [k["to"] for k in new["payload"]["enc"]["keys"]] == [
            k["to"] for k in old["payload"]["enc"]["keys"]
        ]
        for h in (old, new):
            del h["payload"]["enc"]
    elif same_zstd:
        # Hybrid suite: everything but the hedged ML-DSA signature is reproducible.
        old_prefix = read_prefix(io.BytesIO(committed), len(committed))
        new_prefix = read_prefix(io.BytesIO(fresh), len(fresh))
        assert new_prefix.header_bytes == old_prefix.header_bytes
        assert new_prefix.signatures[0] == old_prefix.signatures[0]  # Ed25519: deterministic
        assert fresh[new_prefix.length :] == committed[old_prefix.length :]
        return
    if not record["encrypted"]:
        warnings.warn(
            f"zstd {ZSTD_NOW} differs from the vectors' {MANIFEST['zstd_version']}: "
            f"{record['label']} compared without compressed bytes",
            stacklevel=1,
        )
    for h in (old, new):
        del h["payload"]["size"], h["payload"]["hash"]
    assert new == old


def test_delta_vector_needs_its_parent() -> None:
    record = next(r for r in RECORDS if r["delta_parents"])
    with pytest.raises(IntegrityError, match="parent"):
        open_bundle(GEN.BUNDLES / record["file"], GEN.KEYRING.get, parents={})


def test_manifest_keys_are_the_fixed_identities() -> None:
    assert set(MANIFEST["keys"]) == set(GEN.IDENTITIES)
    for name, keys in MANIFEST["keys"].items():
        identity = GEN.IDENTITIES[name]
        sign, box, pq = GEN.SEEDS[name]
        assert (keys["signing_seed"], keys["box_secret"]) == (sign.hex(), box.hex())
        assert keys["mldsa_seed"] == (None if pq is None else pq.hex())
        assert keys["suite"] == identity.public.suite
        assert keys["signing_public"] == identity.public.signing_key.hex()
        assert keys["box_public"] == identity.public.box_key.hex()
        assert keys["key_id"] == identity.key_id.hex()
    assert MANIFEST["federation"] == GEN.FEDERATION.hex()
