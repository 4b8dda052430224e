"""Hostile and broken bundles: each is refused with its own typed error, fast, and
without allocating what it declares.

Most cases start from a real bundle and break one thing.  Cases that need a *validly
signed* bundle with hostile content (a zstd bomb, a reordered encrypted stream whose hash
the attacker recomputed, NaN weights that no constructor would accept) are built by hand
below from the documented layout: magic | version | u32 header length | header |
u16 signature-block length | signature block | payload, signed with a real enrolled key.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import resource
import struct
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nacl.bindings as sodium
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bundle import cbor
from bundle.arrays import array_hash
from bundle.envelope import (
    MAGIC,
    MAX_CHUNK,
    MAX_HEADER_BYTES,
    MAX_RECIPIENTS,
    MAX_SIGNATURE_BLOCK_BYTES,
    SIGNING_DOMAIN,
    VERSION,
    bundle_name,
    check_bundle,
    open_bundle,
    open_bundle_bytes,
    pack_bytes,
)
from bundle.errors import (
    DecryptionError,
    FormatError,
    IntegrityError,
    LLTokenError,
    SchemaError,
    SignatureError,
    SizeError,
    UnknownSenderError,
)
from bundle.keys import Identity, PublicIdentity
from bundle.payloads import (
    EncodeContext,
    EnrollRequest,
    EvalResult,
    GlobalModel,
    ModelUpdate,
    Payload,
    encode_arrays,
)

Keyring = Callable[[bytes], PublicIdentity | None]
PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
TAG_FINAL = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL
TAG_MESSAGE = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE


# ----------------------------------------------------------------------------- forging


def compress(plain: bytes, level: int = 3) -> bytes:
    return zstandard.ZstdCompressor(level=level).compress(plain)


def encrypt(
    stored: bytes, key: bytes, chunk: int, final_at: int | None = None
) -> tuple[bytes, list[bytes]]:
    """secretstream over ``stored`` in ``chunk``-byte messages, the last one (or the one
    at ``final_at``) tagged FINAL."""
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    stream_header = sodium.crypto_secretstream_xchacha20poly1305_init_push(state, key)
    pieces = [stored[i : i + chunk] for i in range(0, len(stored), chunk)] or [b""]
    final = len(pieces) - 1 if final_at is None else final_at
    records = [
        sodium.crypto_secretstream_xchacha20poly1305_push(
            state, piece, None, TAG_FINAL if n == final else TAG_MESSAGE
        )
        for n, piece in enumerate(pieces)
    ]
    return stream_header, records


def header_map(
    kind: str,
    sender: Identity,
    federation: bytes,
    stored: bytes,
    raw: int,
    enc: dict[str, Any] | None = None,
    recipients: list[bytes] | None = None,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "fed": federation,
        "from": sender.key_id,
        "to": recipients or [],
        "round": 1,
        "seq": 1,
        "created": 0,
        "expires": None,
        "suite": "ed25519",
        "payload": {
            "size": len(stored),
            "raw": raw,
            "hash": hashlib.sha256(stored).digest(),
            "compression": "zstd",
            "enc": enc,
        },
    }


def signed_message(header_bytes: bytes) -> bytes:
    return SIGNING_DOMAIN + hashlib.sha256(MAGIC + bytes([VERSION]) + header_bytes).digest()


def assemble(header_bytes: bytes, signature_block: bytes, stored: bytes) -> bytes:
    return b"".join(
        (
            MAGIC,
            bytes([VERSION]),
            struct.pack(">I", len(header_bytes)),
            header_bytes,
            struct.pack(">H", len(signature_block)),
            signature_block,
            stored,
        )
    )


def sign(signer: Identity, header: dict[str, Any] | bytes, stored: bytes) -> bytes:
    """A bundle whose header (a map, or raw bytes taken as is) ``signer`` signed."""
    header_bytes = header if isinstance(header, bytes) else cbor.encode(header)
    signature = signer.sign(signed_message(header_bytes))
    return assemble(header_bytes, cbor.encode([signature]), stored)


def forge_plain(
    signer: Identity,
    kind: str,
    plain: bytes,
    federation: bytes,
    *,
    raw: int | None = None,
    stored: bytes | None = None,
) -> bytes:
    """A validly signed, unencrypted bundle carrying ``plain`` (CBOR) as its payload."""
    stored = compress(plain) if stored is None else stored
    header = header_map(kind, signer, federation, stored, len(plain) if raw is None else raw)
    return sign(signer, header, stored)


@dataclasses.dataclass
class Sealed:
    """The parts of a forged encrypted bundle, to re-sign after tampering."""

    signer: Identity
    kind: str
    federation: bytes
    raw: int
    stream_header: bytes
    chunk: int
    slots: list[dict[str, bytes]]
    records: list[bytes]

    def bundle(self, records: list[bytes] | None = None, **enc_changes: Any) -> bytes:
        stored = b"".join(self.records if records is None else records)
        enc = {
            "alg": "xchacha20poly1305-secretstream",
            "header": self.stream_header,
            "chunk": self.chunk,
            "keys": self.slots,
        } | enc_changes
        to = [s["to"] for s in self.slots]
        header = header_map(self.kind, self.signer, self.federation, stored, self.raw, enc, to)
        return sign(self.signer, header, stored)


def forge_sealed(
    signer: Identity,
    kind: str,
    plain: bytes,
    federation: bytes,
    recipients: list[Identity],
    *,
    chunk: int = 64,
    stored: bytes | None = None,
    raw: int | None = None,
    final_at: int | None = None,
) -> Sealed:
    key = sodium.crypto_secretstream_xchacha20poly1305_keygen()
    stored = compress(plain) if stored is None else stored
    stream_header, records = encrypt(stored, key, chunk, final_at)
    slots = [{"to": r.key_id, "key": r.public.seal(key)} for r in recipients]
    return Sealed(
        signer,
        kind,
        federation,
        len(plain) if raw is None else raw,
        stream_header,
        chunk,
        slots,
        records,
    )


def prefix_length(data: bytes) -> int:
    (header_len,) = struct.unpack(">I", data[5:9])
    (sig_len,) = struct.unpack(">H", data[9 + header_len : 11 + header_len])
    return 11 + header_len + sig_len


def write(directory: Path, data: bytes, kind: str = "transaction") -> Path:
    """Write under the bundle's proper name when it has one (check_bundle reads names)."""
    try:
        name = bundle_name(kind, hashlib.sha256(data[: prefix_length(data)]).digest())
    except struct.error:
        name = bundle_name(kind, hashlib.sha256(data).digest())
    path = directory / name
    path.write_bytes(data)
    return path


def payload_cbor(payload: Payload) -> bytes:
    return cbor.encode(payload.to_cbor(EncodeContext()))


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def small(
    every_payload: dict[str, Payload], alice: Identity, federation: bytes
) -> tuple[Payload, bytes]:
    """A small real bundle: a transaction, unencrypted."""
    payload = every_payload["transaction"]
    return payload, pack_bytes(payload, alice, federation=federation, created=1)[1]


@pytest.fixture(scope="module")
def small_sealed(
    every_payload: dict[str, Payload], alice: Identity, coordinator: Identity, federation: bytes
) -> bytes:
    """The same transaction encrypted to the coordinator."""
    payload = every_payload["transaction"]
    return pack_bytes(
        payload, alice, federation=federation, recipients=[coordinator.public], encrypt=True
    )[1]


def test_forged_bundles_open_when_nothing_is_wrong(
    tmp_path: Path,
    every_payload: dict[str, Payload],
    same_payload: Callable[[Any, Any], bool],
    alice: Identity,
    coordinator: Identity,
    keyring: Keyring,
    federation: bytes,
) -> None:
    """The forging helpers are faithful, so every refusal below is the tampering's doing."""
    for kind in ("transaction", "model-update"):
        payload = every_payload[kind]
        plain = payload_cbor(payload)
        path = write(tmp_path, forge_plain(alice, kind, plain, federation), kind)
        assert same_payload(open_bundle(path, keyring).payload, payload)
        check_bundle(path)
        sealed = forge_sealed(alice, kind, plain, federation, [coordinator], chunk=16)
        assert len(sealed.records) > 3
        path = write(tmp_path, sealed.bundle(), kind)
        assert same_payload(open_bundle(path, keyring, identity=coordinator).payload, payload)


# ----------------------------------------------------------------------------- truncation


def test_truncation_at_every_byte(
    tmp_path: Path, small: tuple[Payload, bytes], keyring: Keyring
) -> None:
    _, data = small
    (header_len,) = struct.unpack(">I", data[5:9])
    path = tmp_path / "cut.llb"
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        # Inside the header the declared header length exceeds the file: a size error.
        expected = SizeError if 9 <= cut < 9 + header_len else FormatError
        with pytest.raises(LLTokenError) as info:
            open_bundle(path, keyring)
        assert type(info.value) is expected, (cut, info.value)


def test_truncation_of_an_encrypted_bundle(
    tmp_path: Path, small_sealed: bytes, keyring: Keyring, coordinator: Identity
) -> None:
    path = tmp_path / "cut.llb"
    for cut in range(len(small_sealed)):
        path.write_bytes(small_sealed[:cut])
        with pytest.raises((FormatError, SizeError)):
            open_bundle(path, keyring, identity=coordinator)


def test_check_bundle_truncated_under_its_own_name(
    tmp_path: Path, small: tuple[Payload, bytes]
) -> None:
    _, data = small
    path = write(tmp_path, data)
    check_bundle(path)
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        with pytest.raises((FormatError, SizeError)):
            check_bundle(path)


# ----------------------------------------------------------------------------- bit flips


def regions(data: bytes, sender: bytes) -> dict[str, range]:
    (header_len,) = struct.unpack(">I", data[5:9])
    header_end = 9 + header_len
    header = data[9:header_end]
    sender_at = 9 + header.index(sender)
    payload_hash = hashlib.sha256(data[prefix_length(data) :]).digest()
    hash_at = 9 + header.index(payload_hash)
    sig_block = header_end + 2
    sig_start = sig_block + 3  # 0x81 0x58 0x40: an array of one 64-byte string
    return {
        "magic": range(0, 4),
        "version": range(4, 5),
        "header length": range(5, 9),
        "header": range(9, header_end),
        "sender id": range(sender_at, sender_at + 16),
        "payload hash": range(hash_at, hash_at + 32),
        "signature length": range(header_end, header_end + 2),
        "signature block head": range(sig_block, sig_start),
        "signature": range(sig_start, sig_start + 64),
        "payload": range(sig_start + 64, len(data)),
    }


EXPECTED_AFTER_FLIP: dict[str, set[type[LLTokenError]]] = {
    "magic": {FormatError},
    "version": {FormatError},
    "header length": {FormatError, SizeError},
    # A flipped header byte breaks the CBOR or the schema, names another sender, or
    # changes a signed value.
    "header": {FormatError, UnknownSenderError, SignatureError},
    "sender id": {UnknownSenderError},
    "payload hash": {SignatureError},
    "signature length": {FormatError, SizeError},
    "signature block head": {FormatError},
    "signature": {SignatureError},
    "payload": {IntegrityError},
}


def _flipped(data: bytes, index: int, bit: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


def _outcome(path: Path, data: bytes, opener: Callable[[Path], Any]) -> type[LLTokenError]:
    path.write_bytes(data)
    with pytest.raises(LLTokenError) as info:
        opener(path)
    return type(info.value)


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "encrypted"])
def test_a_flipped_bit_anywhere_in_header_and_signature(
    tmp_path: Path,
    small: tuple[Payload, bytes],
    small_sealed: bytes,
    sealed: bool,
    keyring: Keyring,
    alice: Identity,
    coordinator: Identity,
) -> None:
    data = small_sealed if sealed else small[1]
    where = regions(data, alice.key_id)
    path = tmp_path / "flip.llb"
    seen: dict[str, set[type[LLTokenError]]] = {name: set() for name in where}

    def opener(p: Path) -> Any:
        return open_bundle(p, keyring, identity=coordinator)

    payload = where["payload"]
    sample = sorted({payload[0], payload[-1], *payload[:: max(1, len(payload) // 40)]})
    for index in [*range(payload.start), *sample]:
        for bit in range(8):
            outcome = _outcome(path, _flipped(data, index, bit), opener)
            for name, span in where.items():
                if index in span:
                    seen[name].add(outcome)
                    assert outcome in EXPECTED_AFTER_FLIP[name], (name, index, bit, outcome)
    # Each region was exercised and the specific regions gave their specific error.
    assert seen["sender id"] == {UnknownSenderError}
    assert seen["payload hash"] == {SignatureError}
    assert seen["signature"] == {SignatureError}
    assert seen["payload"] == {IntegrityError}
    assert seen["magic"] == seen["version"] == {FormatError}
    assert seen["header"] == {FormatError, UnknownSenderError, SignatureError}


def test_check_bundle_notices_a_flipped_bit_anywhere(
    tmp_path: Path, small: tuple[Payload, bytes]
) -> None:
    _, data = small
    path = write(tmp_path, data)
    for index in range(len(data)):
        outcome = _outcome(path, _flipped(data, index, index % 8), check_bundle)
        # The name holds the hash of the prefix, so even a flip in the signature shows.
        assert outcome in {FormatError, SizeError, IntegrityError}, (index, outcome)
        if index >= prefix_length(data) - 64:
            assert outcome is IntegrityError


# ----------------------------------------------------------------------------- preamble


@pytest.mark.parametrize(
    ("start", "why"),
    [
        (b"LLTC", "magic"),
        (b"lltb", "magic case"),
        (b"\x00LLT", "shifted magic"),
        (b"PK\x03\x04", "a zip file"),
        (b"\x89PNG", "a png file"),
    ],
)
def test_wrong_magic(
    tmp_path: Path, small: tuple[Payload, bytes], keyring: Keyring, start: bytes, why: str
) -> None:
    path = write(tmp_path, start + small[1][4:])
    with pytest.raises(FormatError):
        open_bundle(path, keyring)
    with pytest.raises(FormatError):
        check_bundle(path)


@pytest.mark.parametrize("version", [0, 2, 3, 0x7F, 0xFF])
def test_wrong_version(
    tmp_path: Path, small: tuple[Payload, bytes], keyring: Keyring, version: int
) -> None:
    data = small[1]
    path = write(tmp_path, data[:4] + bytes([version]) + data[5:])
    with pytest.raises(FormatError) as info:
        open_bundle(path, keyring)
    assert "version" in str(info.value)
    with pytest.raises(FormatError):
        check_bundle(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"L", b"LLTB", b"LLTB\x01", b"LLTB\x01\x00\x00\x00", b"LLTB\x01\x00\x00\x00\x00"],
    ids=repr,
)
def test_tiny_files(tmp_path: Path, keyring: Keyring, content: bytes) -> None:
    path = tmp_path / "tiny.llb"
    path.write_bytes(content)
    with pytest.raises((FormatError, SizeError)):
        open_bundle(path, keyring)


def test_declared_lengths_beyond_caps_or_file(
    tmp_path: Path, small: tuple[Payload, bytes], keyring: Keyring
) -> None:
    data = small[1]
    (header_len,) = struct.unpack(">I", data[5:9])
    after_header = 9 + header_len
    cases: list[tuple[bytes, type[LLTokenError]]] = [
        (data[:5] + struct.pack(">I", 2**32 - 1) + data[9:], SizeError),
        (data[:5] + struct.pack(">I", MAX_HEADER_BYTES + 1) + data[9:] + bytes(1 << 17), SizeError),
        (data[:5] + struct.pack(">I", header_len + 1) + data[9:], FormatError),
        (data[:after_header] + b"\xff\xff" + data[after_header + 2 :], SizeError),
        (
            data[:after_header]
            + struct.pack(">H", MAX_SIGNATURE_BLOCK_BYTES + 1)
            + data[after_header + 2 :]
            + bytes(MAX_SIGNATURE_BLOCK_BYTES),
            SizeError,
        ),
        (data + b"\x00", FormatError),  # padded: the header fixes the payload's size
        (data + data, FormatError),
    ]
    path = tmp_path / "declared.llb"
    tracemalloc.start()
    try:
        for content, expected in cases:
            path.write_bytes(content)
            with pytest.raises(expected):
                open_bundle(path, keyring)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


# ----------------------------------------------------------------------------- signed headers


def _base_header(alice: Identity, federation: bytes) -> dict[str, Any]:
    stored = compress(b"\xa0")
    return header_map("transaction", alice, federation, stored, 1)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(header: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = header
        for part in parents:
            target = target[part]
        target[last] = value

    return apply


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def apply(header: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = header
        for part in parents:
            target = target[part]
        del target[last]

    return apply


GOOD_ENC = {
    "alg": "xchacha20poly1305-secretstream",
    "header": b"\x00" * 24,
    "chunk": 64,
    "keys": [{"to": b"\x01" * 16, "key": b"\x02" * 80}],
}

HEADER_EDITS: list[tuple[str, Callable[[dict[str, Any]], None], type[LLTokenError]]] = [
    ("unknown kind", _set("kind", "secret-plan"), FormatError),
    ("kind not text", _set("kind", 7), FormatError),
    ("kind missing", _drop("kind"), FormatError),
    ("extra field", _set("extra", 1), FormatError),
    ("federation short", _set("fed", b"\x01" * 15), FormatError),
    ("federation text", _set("fed", "fed"), FormatError),
    ("sender short", _set("from", b"\x01" * 15), FormatError),
    ("sender missing", _drop("from"), FormatError),
    ("recipients not a list", _set("to", b"\x01" * 16), FormatError),
    ("recipient short", _set("to", [b"\x01" * 8]), FormatError),
    ("too many recipients", _set("to", [b"\x01" * 16] * (MAX_RECIPIENTS + 1)), SizeError),
    ("round negative", _set("round", -1), FormatError),
    ("round float", _set("round", 1.0), FormatError),
    ("round bool", _set("round", True), FormatError),
    ("round NaN", _set("round", math.nan), FormatError),
    ("seq text", _set("seq", "1"), FormatError),
    ("created null", _set("created", None), FormatError),
    ("expires negative", _set("expires", -1), FormatError),
    ("expires bool", _set("expires", False), FormatError),
    ("expires text", _set("expires", "never"), FormatError),
    ("suite unknown", _set("suite", "ed448"), FormatError),
    ("suite missing", _drop("suite"), FormatError),
    ("payload not a map", _set("payload", [1]), FormatError),
    ("payload extra field", _set("payload.extra", 1), FormatError),
    ("payload size negative", _set("payload.size", -1), FormatError),
    ("payload size 2^62", _set("payload.size", 2**62), FormatError),
    ("payload hash short", _set("payload.hash", b"\x01" * 31), FormatError),
    ("payload hash text", _set("payload.hash", "00" * 32), FormatError),
    ("compression gzip", _set("payload.compression", "gzip"), FormatError),
    ("compression list", _set("payload.compression", ["zstd"]), FormatError),
    ("enc not a map", _set("payload.enc", True), FormatError),
    ("enc unknown alg", _set("payload.enc", GOOD_ENC | {"alg": "aes-gcm"}), FormatError),
    ("enc chunk zero", _set("payload.enc", GOOD_ENC | {"chunk": 0}), FormatError),
    ("enc chunk too big", _set("payload.enc", GOOD_ENC | {"chunk": MAX_CHUNK + 1}), FormatError),
    ("enc chunk 2^62", _set("payload.enc", GOOD_ENC | {"chunk": 2**62}), FormatError),
    ("enc stream header short", _set("payload.enc", GOOD_ENC | {"header": b"\x00"}), FormatError),
    ("enc no keys", _set("payload.enc", GOOD_ENC | {"keys": []}), FormatError),
    ("enc slot not a map", _set("payload.enc", GOOD_ENC | {"keys": [b"x"]}), FormatError),
    (
        "enc slot short id",
        _set("payload.enc", GOOD_ENC | {"keys": [{"to": b"1", "key": b""}]}),
        FormatError,
    ),
    (
        "enc slot key text",
        _set("payload.enc", GOOD_ENC | {"keys": [{"to": b"1" * 16, "key": "k"}]}),
        FormatError,
    ),
    (
        "enc too many slots",
        _set(
            "payload.enc",
            GOOD_ENC | {"keys": [{"to": b"\x01" * 16, "key": b""}] * (MAX_RECIPIENTS + 1)},
        ),
        SizeError,
    ),
]


@pytest.mark.parametrize(
    ("why", "edit", "expected"), HEADER_EDITS, ids=[e[0] for e in HEADER_EDITS]
)
def test_signed_but_malformed_headers(
    tmp_path: Path,
    alice: Identity,
    keyring: Keyring,
    federation: bytes,
    why: str,
    edit: Callable[[dict[str, Any]], None],
    expected: type[LLTokenError],
) -> None:
    header = _base_header(alice, federation)
    stored = compress(b"\xa0")
    edit(header)
    path = write(tmp_path, sign(alice, header, stored))
    with pytest.raises(expected):
        open_bundle(path, keyring)
    with pytest.raises(expected):
        check_bundle(path)


def _header_paths(obj: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    children: list[tuple[Any, Any]] = []
    if isinstance(obj, dict):
        children = list(obj.items())
    elif isinstance(obj, list):
        children = list(enumerate(obj))
    found = []
    for key, value in children:
        found.append((*prefix, key))
        found.extend(_header_paths(value, (*prefix, key)))
    return found


def test_a_typed_array_anywhere_in_a_signed_header(
    tmp_path: Path,
    sealed_update: Sealed,
    coordinator: Identity,
    alice: Identity,
    keyring: Keyring,
    federation: bytes,
) -> None:
    """CBOR can put a numpy array in any field; the header parser must say FormatError."""
    honest = sealed_update.bundle()
    header = cbor.decode(honest[9 : 9 + struct.unpack(">I", honest[5:9])[0]])
    stored = honest[prefix_length(honest) :]
    paths = _header_paths(header)
    assert len(paths) > 15
    for path in paths:
        for wrong in (np.array([1, 2], np.uint8), np.array([[0.5]])):
            spoiled = copy.deepcopy(header)
            target = spoiled
            for step in path[:-1]:
                target = target[step]
            target[path[-1]] = wrong
            file = write(tmp_path, sign(alice, spoiled, stored), "model-update")
            with pytest.raises(FormatError):
                open_bundle(file, keyring, identity=coordinator)
            file.unlink()


@pytest.mark.parametrize(
    ("why", "mangle", "expected"),
    [
        (
            "non-shortest integer",
            lambda h: h.replace(b"eround\x01", b"eround\x18\x01"),
            FormatError,
        ),
        ("unsorted keys", lambda h: b"\xaa" + _swap_first_pairs(h[1:]), FormatError),
        ("indefinite map", lambda h: b"\xbf" + h[1:] + b"\xff", FormatError),
        ("trailing byte", lambda h: h + b"\x00", FormatError),
        ("duplicate key", lambda h: b"\xab\x62to\x80" + h[1:], FormatError),
        ("count beyond the pairs", lambda h: b"\xab" + h[1:], FormatError),
        ("10,000 levels deep", lambda h: b"\x81" * 10_000 + b"\x00", SizeError),
        ("byte string of 2^62", lambda h: b"\x5b" + (2**62).to_bytes(8, "big"), FormatError),
        ("text of 2^62", lambda h: b"\x7b" + (2**62).to_bytes(8, "big"), FormatError),
        ("array of 2^62", lambda h: b"\x9b" + (2**62).to_bytes(8, "big"), FormatError),
        ("map of 2^62", lambda h: b"\xbb" + (2**62).to_bytes(8, "big"), FormatError),
        ("not a map", lambda h: cbor.encode([1, 2, 3]), FormatError),
        ("empty", lambda h: b"", FormatError),
    ],
)
def test_signed_but_non_canonical_headers(
    tmp_path: Path,
    alice: Identity,
    keyring: Keyring,
    federation: bytes,
    why: str,
    mangle: Callable[[bytes], bytes],
    expected: type[LLTokenError],
) -> None:
    header_bytes = cbor.encode(_base_header(alice, federation))
    mangled = mangle(header_bytes)
    assert mangled != header_bytes
    path = write(tmp_path, sign(alice, mangled, compress(b"\xa0")))
    started = time.perf_counter()
    with pytest.raises(expected):
        open_bundle(path, keyring)
    assert time.perf_counter() - started < 1.0


def _swap_first_pairs(body: bytes) -> bytes:
    """Swap the first two key/value pairs of a header map body (all short text keys and
    one-byte values there: 'to' = [] and 'fed' = 16 bytes)."""
    decoded = cbor.decode(b"\xaa" + body)
    items = list(decoded.items())
    first = cbor.encode(items[0][0]) + cbor.encode(items[0][1])
    second = cbor.encode(items[1][0]) + cbor.encode(items[1][1])
    assert body.startswith(first + second)
    return second + first + body[len(first) + len(second) :]


# ----------------------------------------------------------------------------- signatures


def test_signature_by_an_unknown_key(
    tmp_path: Path,
    every_payload: dict[str, Payload],
    mallory: Identity,
    keyring: Keyring,
    federation: bytes,
) -> None:
    data = pack_bytes(every_payload["transaction"], mallory, federation=federation)[1]
    path = write(tmp_path, data)
    assert keyring(mallory.key_id) is None
    with pytest.raises(UnknownSenderError) as info:
        open_bundle(path, keyring)
    assert mallory.key_id.hex() in str(info.value)
    check_bundle(path)  # keyless checking does not judge senders


def test_header_claiming_another_sender(
    tmp_path: Path,
    every_payload: dict[str, Payload],
    alice: Identity,
    bob: Identity,
    mallory: Identity,
    keyring: Keyring,
    federation: bytes,
) -> None:
    plain = payload_cbor(every_payload["transaction"])
    stored = compress(plain)
    header = header_map("transaction", alice, federation, stored, len(plain))
    for forger in (mallory, bob):  # an outsider, and another enrolled member
        path = write(tmp_path, sign(forger, header, stored))
        with pytest.raises(SignatureError):
            open_bundle(path, keyring)


def test_valid_signature_spliced_onto_another_header(
    tmp_path: Path,
    every_payload: dict[str, Payload],
    alice: Identity,
    keyring: Keyring,
    federation: bytes,
) -> None:
    payload = every_payload["transaction"]
    _, first = pack_bytes(payload, alice, federation=federation, seq=1)
    _, second = pack_bytes(payload, alice, federation=federation, seq=2)
    # Take the second bundle and give it the first one's (valid, same-sender) signature.
    sig_first = first[prefix_length(first) - 64 : prefix_length(first)]
    cut = prefix_length(second) - 64
    spliced = second[:cut] + sig_first + second[cut + 64 :]
    assert len(spliced) == len(second)
    path = write(tmp_path, spliced)
    with pytest.raises(SignatureError):
        open_bundle(path, keyring)
    open_bundle(write(tmp_path, second), keyring)  # the unspliced one is fine


@pytest.mark.parametrize(
    ("why", "block", "expected"),
    [
        ("two signatures", lambda s: cbor.encode([s, s]), SignatureError),
        ("no signature", lambda s: cbor.encode([]), FormatError),
        ("signature not bytes", lambda s: cbor.encode([s.hex()]), FormatError),
        ("not a list", lambda s: cbor.encode(s), FormatError),
        ("nested list", lambda s: cbor.encode([[s]]), SizeError),
        ("nine signatures", lambda s: cbor.encode([s] * 9), SizeError),
        ("short signature", lambda s: cbor.encode([s[:63]]), SignatureError),
        ("long signature", lambda s: cbor.encode([s + b"\x00"]), SignatureError),
        ("zero signature", lambda s: cbor.encode([bytes(64)]), SignatureError),
        ("trailing bytes", lambda s: cbor.encode([s]) + b"\x00", FormatError),
        ("empty block", lambda s: b"", FormatError),
        ("indefinite list", lambda s: b"\x9f" + cbor.encode(s) + b"\xff", FormatError),
    ],
)
def test_malformed_signature_blocks(
    tmp_path: Path,
    every_payload: dict[str, Payload],
    alice: Identity,
    keyring: Keyring,
    federation: bytes,
    why: str,
    block: Callable[[bytes], bytes],
    expected: type[LLTokenError],
) -> None:
    plain = payload_cbor(every_payload["transaction"])
    stored = compress(plain)
    header_bytes = cbor.encode(header_map("transaction", alice, federation, stored, len(plain)))
    signature = alice.sign(signed_message(header_bytes))
    path = write(tmp_path, assemble(header_bytes, block(signature), stored))
    with pytest.raises(expected):
        open_bundle(path, keyring)


# ----------------------------------------------------------------------------- encryption


def test_bundle_encrypted_for_another_recipient(
    tmp_path: Path,
    every_payload: dict[str, Payload],
    alice: Identity,
    bob: Identity,
    carol: Identity,
    coordinator: Identity,
    keyring: Keyring,
    federation: bytes,
) -> None:
    _, data = pack_bytes(
        every_payload["model-update"],
        alice,
        federation=federation,
        recipients=[bob.public, carol.public],
        encrypt=True,
    )
    path = write(tmp_path, data, "model-update")
    with pytest.raises(DecryptionError):
        open_bundle(path, keyring, identity=coordinator)
    with pytest.raises(DecryptionError):
        open_bundle(path, keyring)  # no identity at all
    open_bundle(path, keyring, identity=carol)


@pytest.fixture
def sealed_update(
    every_payload: dict[str, Payload], alice: Identity, coordinator: Identity, federation: bytes
) -> Sealed:
    plain = payload_cbor(every_payload["model-update"])
    sealed = forge_sealed(alice, "model-update", plain, federation, [coordinator], chunk=64)
    assert len(sealed.records) >= 8
    return sealed


def _swap(records: list[bytes], i: int, j: int) -> list[bytes]:
    out = list(records)
    out[i], out[j] = out[j], out[i]
    return out


STREAM_ATTACKS: list[tuple[str, Callable[[list[bytes]], list[bytes]]]] = [
    ("swap first two chunks", lambda r: _swap(r, 0, 1)),
    ("swap two middle chunks", lambda r: _swap(r, 3, 4)),
    ("swap final with previous", lambda r: _swap(r, -1, -2)),
    ("reverse", lambda r: r[::-1]),
    ("drop first chunk", lambda r: r[1:]),
    ("drop a middle chunk", lambda r: r[:3] + r[4:]),
    ("drop the final chunk", lambda r: r[:-1]),
    ("keep only the first chunk", lambda r: r[:1]),
    ("drop everything", lambda r: []),
    ("cut one byte off the end", lambda r: [*r[:-1], r[-1][:-1]]),
    ("cut one byte off a middle chunk", lambda r: [*r[:2], r[2][:-1], *r[3:]]),
    ("repeat a chunk", lambda r: [r[0], *r]),
    ("repeat the final chunk", lambda r: [*r, r[-1]]),
    ("append garbage", lambda r: [*r, b"\x00" * 81]),
    ("flip a bit in a middle chunk", lambda r: [*r[:2], _flip_first(r[2]), *r[3:]]),
]


def _flip_first(record: bytes) -> bytes:
    return bytes([record[0] ^ 1]) + record[1:]


@pytest.mark.parametrize(("why", "attack"), STREAM_ATTACKS, ids=[a[0] for a in STREAM_ATTACKS])
def test_tampered_encrypted_stream(
    tmp_path: Path,
    sealed_update: Sealed,
    coordinator: Identity,
    keyring: Keyring,
    why: str,
    attack: Callable[[list[bytes]], list[bytes]],
) -> None:
    honest = sealed_update.bundle()
    records = attack(sealed_update.records)
    # 1. Altered in transit: the signed header's payload hash no longer matches.
    stored = b"".join(records)
    in_transit = honest[: prefix_length(honest)] + stored
    # Keep the declared size honest so the size check does not pre-empt the hash.
    path = write(tmp_path, in_transit, "model-update")
    with pytest.raises((IntegrityError, FormatError)) as info:
        open_bundle(path, keyring, identity=coordinator)
    if len(stored) == len(b"".join(sealed_update.records)):
        assert info.type is IntegrityError
    # 2. Re-signed by the sender's own key so the hash matches: secretstream must refuse.
    path = write(tmp_path, sealed_update.bundle(records), "model-update")
    check_bundle(path)  # the file itself is consistent
    with pytest.raises(DecryptionError):
        open_bundle(path, keyring, identity=coordinator)


@pytest.mark.parametrize("final_at", [0, 2, -2])
def test_final_tag_before_the_end_of_the_stream(
    tmp_path: Path,
    every_payload: dict[str, Payload],
    alice: Identity,
    coordinator: Identity,
    keyring: Keyring,
    federation: bytes,
    final_at: int,
) -> None:
    """The sender's own key, a FINAL tag mid-stream, more chunks after it: refused."""
    plain = payload_cbor(every_payload["model-update"])
    probe = forge_sealed(alice, "model-update", plain, federation, [coordinator], chunk=64)
    at = final_at % len(probe.records)
    sealed = forge_sealed(
        alice, "model-update", plain, federation, [coordinator], chunk=64, final_at=at
    )
    path = write(tmp_path, sealed.bundle(), "model-update")
    with pytest.raises(DecryptionError):
        open_bundle(path, keyring, identity=coordinator)
    # Cutting the stream at that FINAL (and re-signing) gives a stream that is complete.
    cut = write(tmp_path, sealed.bundle(sealed.records[: at + 1]), "model-update")
    with pytest.raises(FormatError):  # ... but decompresses to less than declared
        open_bundle(cut, keyring, identity=coordinator)


ENCRYPTION_EDITS: list[tuple[str, Callable[[Sealed, Identity, Identity], dict[str, Any]]]] = [
    ("another stream header", lambda s, me, other: {"header": bytes(24)}),
    ("another chunk size", lambda s, me, other: {"chunk": s.chunk + 1}),
    ("smaller chunk size", lambda s, me, other: {"chunk": s.chunk // 2}),
    (
        "sealed key altered",
        lambda s, me, other: {"keys": [s.slots[0] | {"key": _flip_first(s.slots[0]["key"])}]},
    ),
    (
        "sealed key truncated",
        lambda s, me, other: {"keys": [s.slots[0] | {"key": s.slots[0]["key"][:20]}]},
    ),
    (
        "wrong content key",
        lambda s, me, other: {"keys": [{"to": me.key_id, "key": me.public.seal(bytes(32))}]},
    ),
    (
        "short content key",
        lambda s, me, other: {"keys": [{"to": me.key_id, "key": me.public.seal(b"k" * 16)}]},
    ),
    (
        "long content key",
        lambda s, me, other: {"keys": [{"to": me.key_id, "key": me.public.seal(b"k" * 64)}]},
    ),
    (
        "slot sealed to someone else",
        lambda s, me, other: {"keys": [{"to": me.key_id, "key": other.public.seal(bytes(32))}]},
    ),
]


@pytest.mark.parametrize(("why", "edit"), ENCRYPTION_EDITS, ids=[e[0] for e in ENCRYPTION_EDITS])
def test_re_signed_encryption_parameters(
    tmp_path: Path,
    sealed_update: Sealed,
    coordinator: Identity,
    bob: Identity,
    keyring: Keyring,
    why: str,
    edit: Callable[[Sealed, Identity, Identity], dict[str, Any]],
) -> None:
    changes = edit(sealed_update, coordinator, bob)
    path = write(tmp_path, sealed_update.bundle(**changes), "model-update")
    with pytest.raises(DecryptionError):
        open_bundle(path, keyring, identity=coordinator)


# ----------------------------------------------------------------------------- decompression


def _zeros_compressed(total: int, **params: Any) -> bytes:
    """``total`` zero bytes compressed as a stream, without ever holding them."""
    compressor = zstandard.ZstdCompressor(**params).compressobj()
    block = bytes(1 << 20)
    out = [compressor.compress(block) for _ in range(total // len(block))]
    out.append(compressor.flush())
    return b"".join(out)


@pytest.fixture(scope="module")
def gigabyte_of_zeros() -> bytes:
    bomb = _zeros_compressed(1 << 30, level=1)
    assert len(bomb) < 64 * 1024
    return bomb


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


@pytest.mark.parametrize("kind", ["transaction", "model-update"])
@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "encrypted"])
def test_zstd_bomb_is_refused_at_the_cap(
    tmp_path: Path,
    gigabyte_of_zeros: bytes,
    alice: Identity,
    coordinator: Identity,
    keyring: Keyring,
    federation: bytes,
    kind: str,
    sealed: bool,
) -> None:
    declared = 4096  # what the signed header says the payload decompresses to
    if sealed:
        forged = forge_sealed(
            alice,
            kind,
            b"",
            federation,
            [coordinator],
            chunk=1 << 16,
            stored=gigabyte_of_zeros,
            raw=declared,
        )
        data = forged.bundle()
    else:
        data = forge_plain(alice, kind, b"", federation, raw=declared, stored=gigabyte_of_zeros)
    path = write(tmp_path, data, kind)
    check_bundle(path)  # signed, hash-consistent: only decompression can catch it

    rss_before = _peak_rss_bytes()
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(SizeError) as info:
            open_bundle(path, keyring, identity=coordinator)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "declared size" in str(info.value)
    assert time.perf_counter() - started < 5
    assert peak < 100 << 20, peak
    assert _peak_rss_bytes() - rss_before < 100 << 20


@pytest.mark.parametrize(
    ("why", "stored", "raw", "expected"),
    [
        ("raw smaller than content", lambda p: compress(p), lambda p: len(p) - 1, SizeError),
        ("raw zero", lambda p: compress(p), lambda p: 0, SizeError),
        ("raw larger than content", lambda p: compress(p), lambda p: len(p) + 1, FormatError),
        ("raw 2^62", lambda p: compress(p), lambda p: 2**62, SizeError),
        ("raw over the control cap", lambda p: compress(p), lambda p: (1 << 20) + 1, SizeError),
        ("not zstd", lambda p: p, len, FormatError),
        ("empty payload", lambda p: b"", len, FormatError),
        ("zstd cut short", lambda p: compress(p)[:-3], len, FormatError),
        ("zstd bit flipped", lambda p: _flip_first(compress(p)), len, FormatError),
        (
            "window beyond the cap",
            lambda p: _zeros_compressed(
                1 << 20,
                compression_params=zstandard.ZstdCompressionParameters(window_log=27),
            ),
            lambda p: 1 << 20,
            FormatError,
        ),
    ],
)
def test_re_signed_bad_compression(
    tmp_path: Path,
    every_payload: dict[str, Payload],
    alice: Identity,
    keyring: Keyring,
    federation: bytes,
    why: str,
    stored: Callable[[bytes], bytes],
    raw: Callable[[bytes], int],
    expected: type[LLTokenError],
) -> None:
    plain = payload_cbor(every_payload["transaction"])
    data = forge_plain(
        alice, "transaction", plain, federation, raw=raw(plain), stored=stored(plain)
    )
    path = write(tmp_path, data)
    tracemalloc.start()
    try:
        with pytest.raises(expected):
            open_bundle(path, keyring)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


# ----------------------------------------------------------------------------- payload content


@pytest.mark.parametrize(
    ("why", "plain", "expected"),
    [
        (
            "non-shortest integer",
            lambda p: p.replace(b"famount\x0a", b"famount\x18\x0a"),
            FormatError,
        ),
        ("trailing byte", lambda p: p + b"\x00", FormatError),
        ("indefinite map", lambda p: b"\xbf" + p[1:] + b"\xff", FormatError),
        ("10,000 levels deep", lambda p: b"\x81" * 10_000 + b"\x00", SizeError),
        ("byte string of 2^62", lambda p: b"\x5b" + (2**62).to_bytes(8, "big") + p, FormatError),
        ("map of 2^62", lambda p: b"\xbb" + (2**62).to_bytes(8, "big") + p, FormatError),
        ("array of 2^62", lambda p: b"\x9b" + (2**62).to_bytes(8, "big") + p, FormatError),
        ("unknown tag", lambda p: b"\xc1" + p, FormatError),
        (
            "object-like typed array",
            lambda p: bytes.fromhex("d8288281 01 d857 50") + bytes(16),
            FormatError,
        ),
        ("empty map", lambda p: b"\xa0", SchemaError),
        ("a list", lambda p: cbor.encode([1, 2]), SchemaError),
        ("wrong field type", lambda p: p.replace(b"famount\x0a", b"famount\x61\x30"), SchemaError),
    ],
)
def test_re_signed_bad_payload_cbor(
    tmp_path: Path,
    every_payload: dict[str, Payload],
    alice: Identity,
    keyring: Keyring,
    federation: bytes,
    why: str,
    plain: Callable[[bytes], bytes],
    expected: type[LLTokenError],
) -> None:
    good = payload_cbor(every_payload["transaction"])
    bad = plain(good)
    assert bad != good
    path = write(tmp_path, forge_plain(alice, "transaction", bad, federation))
    started = time.perf_counter()
    with pytest.raises(expected):
        open_bundle(path, keyring)
    assert time.perf_counter() - started < 1.0


def _bypass(payload: Payload, **fields: Any) -> Payload:
    """A copy with ``fields`` set without running the constructor's checks."""
    clone = dataclasses.replace(payload)
    for name, value in fields.items():
        object.__setattr__(clone, name, value)
    return clone


NAN_CASES: list[tuple[str, str, Callable[[Payload], Payload]]] = [
    (
        "NaN weight",
        "model-update",
        lambda p: _bypass(p, arrays=[("w", np.array([0.1, np.nan], np.float32))]),
    ),
    ("+inf weight", "model-update", lambda p: _bypass(p, arrays=[("w", np.array([np.inf]))])),
    (
        "-inf float16",
        "global-model",
        lambda p: _bypass(p, arrays=[("w", np.array([-np.inf], np.float16))]),
    ),
    (
        "NaN in a 0-d array",
        "global-model",
        lambda p: _bypass(p, arrays=[("w", np.array(np.nan, np.float64))]),
    ),
    ("huge weight", "model-update", lambda p: _bypass(p, arrays=[("w", np.array([1e30]))])),
    ("NaN metric", "model-update", lambda p: _bypass(p, metrics={"loss": math.nan})),
    ("inf eval metric", "eval-result", lambda p: _bypass(p, metrics={"acc": math.inf})),
    ("NaN config", "round-task", lambda p: _bypass(p, config={"lr": math.nan})),
    (
        "inf in a config list",
        "round-task",
        lambda p: _bypass(p, run_config={"x": [1.0, -math.inf]}),
    ),
    ("NaN node fact", "enroll-request", lambda p: _bypass(p, info={"temp": math.nan})),
]


@pytest.mark.parametrize(("why", "kind", "spoil"), NAN_CASES, ids=[c[0] for c in NAN_CASES])
def test_non_finite_numbers_packed_bypassing_the_constructor(
    tmp_path: Path,
    every_payload: dict[str, Payload],
    alice: Identity,
    coordinator: Identity,
    keyring: Keyring,
    federation: bytes,
    why: str,
    kind: str,
    spoil: Callable[[Payload], Payload],
) -> None:
    payload = every_payload[kind]
    with pytest.raises(SchemaError):  # the constructor refuses the same values
        type(payload)(
            **{f.name: getattr(spoil(payload), f.name) for f in dataclasses.fields(payload)}
        )  # type: ignore[arg-type]
    bad = spoil(payload)
    for encrypt in (False, True):
        _, data = pack_bytes(
            bad,
            alice,
            federation=federation,
            encrypt=encrypt,
            recipients=[coordinator.public] if encrypt else [],
        )
        path = write(tmp_path, data, kind)
        with pytest.raises(SchemaError):
            open_bundle(path, keyring, identity=coordinator)


def test_non_finite_weights_in_filtered_arrays(
    tmp_path: Path,
    every_payload: dict[str, Payload],
    alice: Identity,
    keyring: Keyring,
    federation: bytes,
) -> None:
    """NaN hidden behind shuffle and XOR-delta filters is still found after unfiltering."""
    parent = np.linspace(-1, 1, 5000, dtype=np.float32)
    child = parent.copy()
    child[1234] = np.nan
    update = every_payload["model-update"]
    entries = encode_arrays([("w", child)], {"w": (array_hash(parent), parent)})
    assert entries[0].get("filters")
    plain = cbor.encode(update.to_cbor() | {"arrays": entries})
    path = write(tmp_path, forge_plain(alice, "model-update", plain, federation), "model-update")
    with pytest.raises(SchemaError):
        open_bundle(path, keyring, parents={array_hash(parent): parent})


def test_object_dtype_is_refused_everywhere(every_payload: dict[str, Payload]) -> None:
    objects = np.array([1.0, "x", None], dtype=object)
    with pytest.raises(FormatError):
        cbor.encode(objects)
    with pytest.raises(SchemaError):
        encode_arrays([("w", objects)])
    update = every_payload["model-update"]
    assert isinstance(update, ModelUpdate)
    with pytest.raises(SchemaError):
        ModelUpdate(1, update.parent_hash, 1, {}, [("w", objects)])
    with pytest.raises(SchemaError):
        GlobalModel(1, update.parent_hash, [("w", objects.astype(object))])
    bypassed = _bypass(update, arrays=[("w", objects)])
    with pytest.raises((SchemaError, FormatError)):
        pack_bytes(bypassed, Identity(bytes(32), bytes(32)), federation=bytes(16))


# ----------------------------------------------------------------------------- enrollment


def test_self_signed_enrollment_from_an_unknown_key(
    tmp_path: Path, mallory: Identity, keyring: Keyring, federation: bytes
) -> None:
    """An enroll-request is the one kind an unknown key may send: it proves possession."""
    assert keyring(mallory.key_id) is None
    request = EnrollRequest("newcomer", mallory.public, {})
    path = write(tmp_path, pack_bytes(request, mallory, federation=federation)[1], "enroll-request")
    opened = open_bundle(path, keyring)
    assert opened.sender == mallory.public


def test_self_signed_enrollment_must_carry_its_signer(
    tmp_path: Path,
    mallory: Identity,
    coordinator: Identity,
    keyring: Keyring,
    federation: bytes,
) -> None:
    other = Identity(bytes([77]) * 32, bytes([78]) * 32)
    # Payload names one key, header and signature another unknown key.
    plain = payload_cbor(EnrollRequest("newcomer", other.public, {}))
    path = write(
        tmp_path, forge_plain(mallory, "enroll-request", plain, federation), "enroll-request"
    )
    with pytest.raises(UnknownSenderError):
        open_bundle(path, keyring)
    # Header and payload name ``other``, but mallory made the signature.
    stored = compress(plain)
    header = header_map("enroll-request", other, federation, stored, len(plain))
    path = write(tmp_path, sign(mallory, header, stored), "enroll-request")
    with pytest.raises(SignatureError):
        open_bundle(path, keyring)
    # Encrypted requests from unknown keys are not read at all.
    sealed = pack_bytes(
        EnrollRequest("newcomer", mallory.public, {}),
        mallory,
        federation=federation,
        recipients=[coordinator.public],
        encrypt=True,
    )
    path = write(tmp_path, sealed[1], "enroll-request")
    with pytest.raises(UnknownSenderError):
        open_bundle(path, keyring, identity=coordinator)
    # Other kinds from unknown keys are refused before their payload is read.
    plain = payload_cbor(EvalResult(1, b"\x01" * 32, 1, {}))
    path = write(
        tmp_path,
        forge_plain(mallory, "eval-result", b"\x00" * 10, federation, raw=len(plain)),
        "eval-result",
    )
    with pytest.raises(UnknownSenderError):
        open_bundle(path, keyring)


def test_unauthenticated_enrollment_bomb_is_capped(
    tmp_path: Path,
    gigabyte_of_zeros: bytes,
    mallory: Identity,
    keyring: Keyring,
    federation: bytes,
) -> None:
    """A self-signed payload is read before its signature is checked: the cap holds."""
    for raw in (1 << 20, 4096):
        data = forge_plain(
            mallory, "enroll-request", b"", federation, raw=raw, stored=gigabyte_of_zeros
        )
        path = write(tmp_path, data, "enroll-request")
        rss_before = _peak_rss_bytes()
        tracemalloc.start()
        try:
            with pytest.raises(SizeError):
                open_bundle(path, keyring)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 100 << 20
        assert _peak_rss_bytes() - rss_before < 100 << 20
    path = write(
        tmp_path,
        forge_plain(
            mallory, "enroll-request", b"", federation, raw=(1 << 20) + 1, stored=gigabyte_of_zeros
        ),
        "enroll-request",
    )
    with pytest.raises(SizeError):
        open_bundle(path, keyring)


def test_self_signed_enrollment_runs_the_policy_after_verifying(
    tmp_path: Path, mallory: Identity, keyring: Keyring, federation: bytes
) -> None:
    seen: list[bytes] = []
    request = EnrollRequest("newcomer", mallory.public, {})
    path = write(tmp_path, pack_bytes(request, mallory, federation=federation)[1], "enroll-request")
    open_bundle(path, keyring, policy=lambda h: seen.append(h.sender))
    assert seen == [mallory.key_id]
    other = Identity(bytes([79]) * 32, bytes([80]) * 32)
    plain = payload_cbor(request)
    stored = compress(plain)
    forged = sign(
        other, header_map("enroll-request", mallory, federation, stored, len(plain)), stored
    )
    with pytest.raises(SignatureError):
        open_bundle(
            write(tmp_path, forged, "enroll-request"),
            keyring,
            policy=lambda h: seen.append(h.sender),
        )
    assert seen == [mallory.key_id]


# ----------------------------------------------------------------------------- properties


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _open_or_our_error(path: Path, keyring: Keyring, identity: Identity) -> bool:
    try:
        open_bundle(path, keyring, identity=identity)
    except LLTokenError as e:
        # The in-memory opener makes the same decision with the same error.
        with pytest.raises(type(e)):
            open_bundle_bytes(path.read_bytes(), keyring, identity=identity)
        return False
    open_bundle_bytes(path.read_bytes(), keyring, identity=identity)
    return True


def _check_or_our_error(path: Path) -> bool:
    try:
        check_bundle(path)
    except LLTokenError:
        return False
    return True


@PROPERTY
@given(st.binary(max_size=600))
def test_random_bytes_are_refused_with_our_error(
    fuzz_dir: Path, keyring: Keyring, coordinator: Identity, data: bytes
) -> None:
    path = fuzz_dir / "random.llb"
    path.write_bytes(data)
    assert not _open_or_our_error(path, keyring, coordinator)


@PROPERTY
@given(st.binary(max_size=400))
def test_random_bytes_after_a_valid_magic(
    fuzz_dir: Path, keyring: Keyring, coordinator: Identity, data: bytes
) -> None:
    path = write(fuzz_dir, MAGIC + bytes([VERSION]) + data)
    assert not _open_or_our_error(path, keyring, coordinator)
    assert not _check_or_our_error(path)
    path.unlink()


def _mutations(data: bytes, draw: st.DataObject) -> Iterator[bytes]:
    out = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 4), label="mutations")):
        op = draw.draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splat"]))
        pos = draw.draw(st.integers(0, len(out) - 1)) if out else 0
        if op == "flip" and out:
            out[pos] ^= 1 << draw.draw(st.integers(0, 7))
        elif op == "set" and out:
            out[pos] = draw.draw(st.integers(0, 255))
        elif op == "insert":
            out[pos:pos] = draw.draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and out:
            del out[pos : pos + draw.draw(st.integers(1, 16))]
        elif op == "truncate":
            del out[pos:]
        elif op == "splat" and out:
            n = draw.draw(st.integers(1, 8))
            out[pos : pos + n] = draw.draw(st.sampled_from([b"\x00", b"\xff", b"\x9b"])) * n
    yield bytes(out)


@PROPERTY
@given(st.data(), st.booleans())
def test_mutated_bundles_open_only_if_unchanged(
    fuzz_dir: Path,
    small: tuple[Payload, bytes],
    small_sealed: bytes,
    keyring: Keyring,
    coordinator: Identity,
    draw: st.DataObject,
    sealed: bool,
) -> None:
    original = small_sealed if sealed else small[1]
    for mutated in _mutations(original, draw):
        path = fuzz_dir / "mutant.llb"
        path.write_bytes(mutated)
        # Everything in a bundle is bound by its signature: only the original opens.
        assert _open_or_our_error(path, keyring, coordinator) == (mutated == original)
        named = write(fuzz_dir, mutated)
        try:
            _check_or_our_error(named)
        finally:
            named.unlink()


@PROPERTY
@given(st.data())
def test_mutated_payload_content_with_a_valid_signature(
    fuzz_dir: Path,
    every_payload: dict[str, Payload],
    alice: Identity,
    keyring: Keyring,
    federation: bytes,
    draw: st.DataObject,
) -> None:
    """A signed sender with a broken encoder: the payload CBOR itself is fuzzed."""
    kind = draw.draw(st.sampled_from(["transaction", "model-update", "roster", "receipt"]))
    plain = payload_cbor(every_payload[kind])
    for mutated in _mutations(plain, draw):
        path = write(fuzz_dir, forge_plain(alice, kind, mutated, federation), kind)
        try:
            _open_or_our_error(path, keyring, alice)
        finally:
            path.unlink()
