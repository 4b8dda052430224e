"""The bundle envelope: pack, check and open one signed, compressed (optionally encrypted) file.

Layout (all integers big-endian; see docs/bundle-format.md)::

    "LLTB" | version u8 | header length u32 | header (deterministic CBOR)
           | signature block length u16 | signature block (CBOR array of signatures)
           | payload (exactly header.payload.size bytes, then end of file)

The signature covers ``"lltoken/bundle/v1" || 0x00 || SHA-256(magic || version || header)``,
and the header binds the payload's hash, stored size and decompressed size, so one
signature covers everything and is checked before any payload byte is read.  The block
holds one signature per algorithm of the header's suite: ``[ed25519_sig]``, or
``[ed25519_sig, mldsa65_sig]`` for ``ed25519+ml-dsa-65``, all over that same message.

The bundle id is SHA-256 of everything before the payload (magic to signature block);
it is in the file name, ``<kind>.<id hex>.llb``, so anyone can check a copy without keys.

:func:`open_bundle` always verifies in the same order, before acting on anything:
size caps, magic/version, strict header parse, sender known, signature, the caller's
replay policy, payload hash while streaming, decrypt, decompress under a cap, strict CBOR
decode, schema check of the payload kind.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import nacl.bindings as sodium
import nacl.exceptions
import nacl.utils
import numpy as np
import zstandard

from bundle import cbor
from bundle.durable import atomic_write, fsync_dir, temp_path_for
from bundle.errors import (
    DecryptionError,
    FormatError,
    IntegrityError,
    LLTokenError,
    SignatureError,
    SizeError,
    UnknownSenderError,
)
from bundle.keys import KEY_ID_BYTES, SUITES, Identity, PublicIdentity
from bundle.payloads import KINDS, EncodeContext, Payload, payload_from_cbor

# Parent arrays for XOR-delta, by array name: (array hash, array).
ArrayParents = Mapping[str, tuple[bytes, np.ndarray[Any, Any]]]

MAGIC = b"LLTB"
VERSION = 1
SIGNING_DOMAIN = b"lltoken/bundle/v1\x00"
SUFFIX = ".llb"
NAME_RE = re.compile(r"^([a-z][a-z-]{1,31})\.([0-9a-f]{64})\.llb$")

MAX_HEADER_BYTES = 64 * 1024
MAX_SIGNATURE_BLOCK_BYTES = 16 * 1024
MAX_RECIPIENTS = 1024
# zstd level 1: on filtered float arrays (shuffle, XOR-delta) it compresses within ~1% of
# level 3 (better on deltas) at about twice the speed; the filters do the real work.
DEFAULT_LEVEL = 1
ENCRYPTION_ALG = "xchacha20poly1305-secretstream"
DEFAULT_CHUNK = 256 * 1024
MAX_CHUNK = 4 * 1024 * 1024
_ABYTES = sodium.crypto_secretstream_xchacha20poly1305_ABYTES
_READ_SIZE = 1 << 20
_SPOOL_IN_MEMORY = 16 * 1024 * 1024
# zstd frames we write use windows far below this; refusing larger ones bounds the
# decoder's own allocation whatever a hostile frame asks for.
_MAX_WINDOW = 1 << 25

# Decompressed payload caps per kind.  Control messages are small; model kinds are
# bounded by the caller's max_payload (default 4 GiB).
SMALL_PAYLOAD_CAP = 1 << 20
MODEL_KINDS = frozenset({"global-model", "model-update", "ledger-delta"})
DEFAULT_MAX_PAYLOAD = 4 << 30
# Kinds signed by a key the receiver does not know yet (verified against the payload).
SELF_SIGNED_KINDS = frozenset({"enroll-request"})


@dataclass(frozen=True)
class KeySlot:
    """The content key sealed to one recipient."""

    recipient: bytes
    sealed: bytes


@dataclass(frozen=True)
class Encryption:
    alg: str
    stream_header: bytes
    chunk: int
    slots: tuple[KeySlot, ...]

    def to_cbor(self) -> dict[str, Any]:
        return {
            "alg": self.alg,
            "header": self.stream_header,
            "chunk": self.chunk,
            "keys": [{"to": s.recipient, "key": s.sealed} for s in self.slots],
        }


@dataclass(frozen=True)
class PayloadInfo:
    size: int
    raw: int
    hash: bytes
    compression: str
    encryption: Encryption | None

    def to_cbor(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "raw": self.raw,
            "hash": self.hash,
            "compression": self.compression,
            "enc": None if self.encryption is None else self.encryption.to_cbor(),
        }


@dataclass(frozen=True)
class Header:
    """Everything a bundle says about itself, bound by its signature."""

    kind: str
    federation: bytes
    sender: bytes
    recipients: tuple[bytes, ...]
    round: int
    seq: int
    created: int
    expires: int | None
    suite: str
    payload: PayloadInfo

    def to_cbor(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "fed": self.federation,
            "from": self.sender,
            "to": list(self.recipients),
            "round": self.round,
            "seq": self.seq,
            "created": self.created,
            "expires": self.expires,
            "suite": self.suite,
            "payload": self.payload.to_cbor(),
        }


def _field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise FormatError(
            f"header field {key!r} is malformed",
            expected=names,
            found=type(value).__name__,
            where=where,
        )
    return value


def _exact_keys(obj: Any, keys: set[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or set(obj) != keys:
        found = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise FormatError(
            "header map has the wrong fields", expected=sorted(keys), found=found, where=where
        )
    return obj


def _key_id(value: Any, name: str, where: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != KEY_ID_BYTES:
        raise FormatError(
            f"{name} is not a key id",
            expected=f"{KEY_ID_BYTES} bytes",
            found=repr(value)[:40],
            where=where,
        )
    return value


def _uint(obj: dict[str, Any], key: str, where: str) -> int:
    value = _field(obj, key, int, where)
    if value < 0:
        raise FormatError(
            f"header field {key!r} is negative", expected=">= 0", found=value, where=where
        )
    return int(value)


def header_from_cbor(obj: Any, where: str = "header") -> Header:
    """Strictly validate a decoded header map.

    Raises:
        FormatError: unknown kind or suite, missing/extra fields, wrong types.
    """
    h = _exact_keys(
        obj,
        {"kind", "fed", "from", "to", "round", "seq", "created", "expires", "suite", "payload"},
        where,
    )
    kind = _field(h, "kind", str, where)
    if kind not in KINDS:
        raise FormatError("unknown bundle kind", expected=sorted(KINDS), found=kind, where=where)
    suite = _field(h, "suite", str, where)
    if suite not in SUITES:
        raise FormatError("unknown signature suite", expected=SUITES, found=suite, where=where)
    recipients = _field(h, "to", list, where)
    if len(recipients) > MAX_RECIPIENTS:
        raise SizeError(
            "too many recipients",
            expected=f"<= {MAX_RECIPIENTS}",
            found=len(recipients),
            where=where,
        )
    expires = h["expires"]
    if expires is not None and (
        not isinstance(expires, int) or isinstance(expires, bool) or expires < 0
    ):
        raise FormatError(
            "header field 'expires' is malformed",
            expected="a round number or null",
            found=repr(expires),
            where=where,
        )
    fed = _field(h, "fed", bytes, where)
    if len(fed) != 16:
        raise FormatError(
            "federation id is malformed",
            expected="16 bytes",
            found=f"{len(fed)} bytes",
            where=where,
        )
    p = _exact_keys(h["payload"], {"size", "raw", "hash", "compression", "enc"}, f"{where}.payload")
    digest = _field(p, "hash", bytes, where)
    if len(digest) != 32:
        raise FormatError(
            "payload hash is malformed",
            expected="32 bytes",
            found=f"{len(digest)} bytes",
            where=where,
        )
    if _field(p, "compression", str, where) != "zstd":
        raise FormatError(
            "unknown compression", expected="zstd", found=p["compression"], where=where
        )
    encryption = None
    if p["enc"] is not None:
        e = _exact_keys(p["enc"], {"alg", "header", "chunk", "keys"}, f"{where}.enc")
        if _field(e, "alg", str, where) != ENCRYPTION_ALG:
            raise FormatError(
                "unknown encryption", expected=ENCRYPTION_ALG, found=e["alg"], where=where
            )
        chunk = _uint(e, "chunk", where)
        stream_header = _field(e, "header", bytes, where)
        keys = _field(e, "keys", list, where)
        if not 1 <= chunk <= MAX_CHUNK or len(stream_header) != 24 or not keys:
            raise FormatError(
                "encryption parameters are malformed",
                expected=f"chunk 1..{MAX_CHUNK}, 24-byte header, >= 1 key",
                found=f"chunk {chunk}, {len(stream_header)}-byte header, {len(keys)} keys",
                where=where,
            )
        if len(keys) > MAX_RECIPIENTS:
            raise SizeError(
                "too many key slots", expected=f"<= {MAX_RECIPIENTS}", found=len(keys), where=where
            )
        slots = []
        for slot in keys:
            s = _exact_keys(slot, {"to", "key"}, f"{where}.enc.keys")
            slots.append(
                KeySlot(
                    _key_id(s["to"], "key slot recipient", where), _field(s, "key", bytes, where)
                )
            )
        encryption = Encryption(ENCRYPTION_ALG, stream_header, chunk, tuple(slots))
    return Header(
        kind=kind,
        federation=fed,
        sender=_key_id(h["from"], "sender", where),
        recipients=tuple(_key_id(r, "recipient", where) for r in recipients),
        round=_uint(h, "round", where),
        seq=_uint(h, "seq", where),
        created=_uint(h, "created", where),
        expires=expires,
        suite=suite,
        payload=PayloadInfo(
            _uint(p, "size", where), _uint(p, "raw", where), digest, "zstd", encryption
        ),
    )


def bundle_name(kind: str, bundle_id: bytes) -> str:
    """The FAT-safe, content-addressed file name of a bundle."""
    return f"{kind}.{bundle_id.hex()}{SUFFIX}"


def parse_name(name: str) -> tuple[str, bytes]:
    """Split a bundle file name into kind and bundle id.

    Raises:
        FormatError: the name is not ``<kind>.<64 hex>.llb``.
    """
    # fullmatch: with match, "$" would also accept a name ending in a newline.
    match = NAME_RE.fullmatch(name)
    if not match or match.group(1) not in KINDS:
        raise FormatError(
            "not a bundle file name", expected="<kind>.<64 hex digits>.llb", found=name[:120]
        )
    return match.group(1), bytes.fromhex(match.group(2))


def _signed_message(header_bytes: bytes) -> bytes:
    return SIGNING_DOMAIN + hashlib.sha256(MAGIC + bytes((VERSION,)) + header_bytes).digest()


# ---------------------------------------------------------------------------- packing


class _Sink:
    """Collects the stored payload: hashes and counts it, and keeps it in memory up to
    ``_SPOOL_IN_MEMORY`` bytes.

    Beyond that it moves to a file.  Given a directory, that is a temporary file there with
    the payload starting at offset ``reserve()``, the prefix's likely length: the file then
    becomes the bundle in place, and the payload is written once, never copied.  Without a
    directory it is an anonymous temporary file.
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.reserve: Callable[[], int] = lambda: 0
        self.memory = bytearray()
        self.file: Any = None
        self.path: Path | None = None  # the temporary file in ``directory``, until committed
        self.offset = 0  # where the payload starts in ``file``
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        if not data:
            return
        self.hash.update(data)
        self.size += len(data)
        if self.file is not None:
            self.file.write(data)
            return
        self.memory += data
        if len(self.memory) > _SPOOL_IN_MEMORY:
            self._spill()

    def _spill(self) -> None:
        if self.directory is None:
            self.file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        else:
            self.offset = self.reserve()
            self.path = temp_path_for(self.directory / "pack.llb")
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            self.file = os.fdopen(fd, "w+b")
            self.file.seek(self.offset)
        self.file.write(self.memory)
        self.memory = bytearray()

    def close(self) -> None:
        """Close the file and remove it unless it became the bundle."""
        if self.file is not None:
            self.file.close()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.path = None


class _Encryptor:
    """Feeds secretstream with fixed-size chunks; the last one carries TAG_FINAL."""

    def __init__(self, sink: _Sink, key: bytes, chunk: int) -> None:
        self.sink = sink
        self.chunk = chunk
        self.state = sodium.crypto_secretstream_xchacha20poly1305_state()
        self.stream_header: bytes = sodium.crypto_secretstream_xchacha20poly1305_init_push(
            self.state, key
        )
        self.pending = bytearray()

    def write(self, data: bytes | memoryview) -> None:
        self.pending += data
        start = 0
        # Walk an offset and trim once: deleting each chunk from the front would move the
        # rest of a multi-megabyte compressor output every time.
        while len(self.pending) - start > self.chunk:
            with memoryview(self.pending) as view:
                message = bytes(view[start : start + self.chunk])
            self._push(message, sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE)
            start += self.chunk
        del self.pending[:start]

    def close(self) -> None:
        self._push(bytes(self.pending), sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL)
        self.pending.clear()

    def _push(self, message: bytes, tag: int) -> None:
        self.sink.write(
            sodium.crypto_secretstream_xchacha20poly1305_push(self.state, message, None, tag)
        )


@dataclass(frozen=True)
class PackedBundle:
    """A bundle written to disk (or to memory by :func:`pack_bytes`)."""

    bundle_id: bytes
    name: str
    header: Header
    size: int
    path: Path | None = None


def _kernel_copy(src: Any, src_offset: int, dst: Any, dst_offset: int, size: int) -> int:
    """Copy a spooled payload file to ``dst`` inside the kernel; returns the bytes copied.

    About 3x faster than a copy through Python buffers.  Where the kernel cannot (no
    real file descriptor, or copy_file_range unsupported), it copies what it can and the
    caller copies the rest the ordinary way.
    """
    done = 0
    try:
        src_fd, dst_fd = src.fileno(), dst.fileno()
        while done < size:
            n = os.copy_file_range(
                src_fd, dst_fd, size - done, src_offset + done, dst_offset + done
            )
            if n == 0:
                break
            done += n
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        pass
    return done


class _Sealed:
    def __init__(self, header: Header, prefix: bytes, sink: _Sink) -> None:
        self.header = header
        self.prefix = prefix
        self.sink = sink
        self.bundle_id = hashlib.sha256(prefix).digest()
        self.name = bundle_name(header.kind, self.bundle_id)

    def write_to(self, out: BinaryIO) -> None:
        out.write(self.prefix)
        sink = self.sink
        if sink.file is None:
            out.write(sink.memory)
            return
        sink.file.flush()
        out.flush()
        copied = _kernel_copy(sink.file, sink.offset, out, len(self.prefix), sink.size)
        sink.file.seek(sink.offset + copied)
        out.seek(len(self.prefix) + copied)
        shutil.copyfileobj(sink.file, out, _READ_SIZE * 4)

    def in_place(self) -> bool:
        """Whether the payload's temporary file has exactly the prefix's room before it."""
        return self.sink.path is not None and self.sink.offset == len(self.prefix)

    def commit(self, path: Path) -> None:
        """Make the payload's temporary file the bundle at ``path``: the prefix into its
        reserved room, then :func:`atomic_write`'s steps (fsync, rename, fsync the dir)."""
        sink = self.sink
        if sink.path is None:
            raise ValueError("no temporary file to commit")
        sink.file.seek(0)
        sink.file.write(self.prefix)
        sink.file.flush()
        os.fsync(sink.file.fileno())
        sink.file.close()
        os.replace(sink.path, path)
        sink.path = None
        fsync_dir(path.parent)

    def packed(self, path: Path | None) -> PackedBundle:
        return PackedBundle(
            self.bundle_id, self.name, self.header, len(self.prefix) + self.sink.size, path
        )


def _seal(
    payload: Payload,
    identity: Identity,
    *,
    federation: bytes,
    round: int,
    seq: int,
    recipients: Sequence[PublicIdentity],
    encrypt: bool,
    expires: int | None,
    created: int | None,
    level: int,
    parents: ArrayParents | None,
    spool_dir: Path | None,
) -> _Sealed:
    kind = payload.KIND
    if encrypt and not recipients:
        raise FormatError("an encrypted bundle needs at least one recipient")
    sink = _Sink(spool_dir)
    content_key = sodium.crypto_secretstream_xchacha20poly1305_keygen() if encrypt else b""
    encryptor = _Encryptor(sink, content_key, DEFAULT_CHUNK) if encrypt else None
    target: _Sink | _Encryptor = encryptor or sink
    encryption = None
    if encryptor is not None:
        encryption = Encryption(
            ENCRYPTION_ALG,
            encryptor.stream_header,
            DEFAULT_CHUNK,
            tuple(KeySlot(r.key_id, r.seal(content_key)) for r in recipients),
        )
    created_at = int(time.time()) if created is None else created

    def header(size: int, raw: int, digest: bytes) -> Header:
        return Header(
            kind=kind,
            federation=federation,
            sender=identity.key_id,
            recipients=tuple(r.key_id for r in recipients),
            round=round,
            seq=seq,
            created=created_at,
            expires=expires,
            suite=identity.public.suite,
            payload=PayloadInfo(size, raw, digest, "zstd", encryption),
        )

    # Only a payload past the in-memory limit gets a file: its sizes then encode in 5
    # bytes each (up to 4 GiB), which fixes the prefix's length in advance.
    sink.reserve = lambda: len(_prefix(header(2**32 - 1, 2**32 - 1, bytes(32)), identity))
    try:
        raw = _compress(payload, EncodeContext(level, parents), level, target)
        if encryptor is not None:
            encryptor.close()
        final = header(sink.size, raw, sink.hash.digest())
        prefix = _prefix(final, identity)
    except BaseException:
        sink.close()
        raise
    return _Sealed(final, prefix, sink)


def _compress(payload: Payload, ctx: EncodeContext, level: int, target: _Sink | _Encryptor) -> int:
    """Encode ``payload`` and write its zstd stream to ``target``; returns the CBOR length."""
    # One thread on purpose: zstd's worker threads cost ~20% more CPU, ~25 MB more memory
    # and (at level 1) ~2% in size, and gave no speed on 2 shared cores.
    compressor = zstandard.ZstdCompressor(level=level).compressobj()
    raw = 0
    for chunk in cbor.iter_encode(payload.to_cbor(ctx)):
        raw += len(chunk)
        target.write(compressor.compress(chunk))
    target.write(compressor.flush())
    return raw


def _prefix(header: Header, identity: Identity) -> bytes:
    """Magic, version, the header and its signature block: everything before the payload.

    Raises:
        SizeError: the header exceeds its cap.
    """
    header_bytes = cbor.encode(header.to_cbor())
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise SizeError(
            "header too large", expected=f"<= {MAX_HEADER_BYTES} bytes", found=len(header_bytes)
        )
    # One signature per algorithm of the suite: [Ed25519] or [Ed25519, ML-DSA-65].
    signatures = cbor.encode(list(identity.sign_all(_signed_message(header_bytes))))
    return b"".join(
        (
            MAGIC,
            bytes((VERSION,)),
            struct.pack(">I", len(header_bytes)),
            header_bytes,
            struct.pack(">H", len(signatures)),
            signatures,
        )
    )


def pack_bundle(
    directory: Path,
    payload: Payload,
    identity: Identity,
    *,
    federation: bytes,
    round: int = 0,
    seq: int = 0,
    recipients: Sequence[PublicIdentity] = (),
    encrypt: bool = False,
    expires: int | None = None,
    created: int | None = None,
    level: int = DEFAULT_LEVEL,
    parents: ArrayParents | None = None,
) -> PackedBundle:
    """Seal ``payload`` and write it durably into ``directory`` under its bundle name.

    Large payloads are streamed through a temporary file in ``directory``: the model's
    arrays are read in place and never copied whole.

    Raises:
        FormatError: the payload cannot be encoded, or encryption lacks recipients.
        SizeError: the header exceeds its cap.
    """
    directory.mkdir(parents=True, exist_ok=True)
    sealed = _seal(
        payload,
        identity,
        federation=federation,
        round=round,
        seq=seq,
        recipients=recipients,
        encrypt=encrypt,
        expires=expires,
        created=created,
        level=level,
        parents=parents,
        spool_dir=directory,
    )
    path = directory / sealed.name
    try:
        if sealed.in_place():
            sealed.commit(path)
        else:
            with atomic_write(path) as out:
                sealed.write_to(out)
    finally:
        sealed.sink.close()
    return sealed.packed(path)


def pack_bytes(
    payload: Payload,
    identity: Identity,
    *,
    federation: bytes,
    round: int = 0,
    seq: int = 0,
    recipients: Sequence[PublicIdentity] = (),
    encrypt: bool = False,
    expires: int | None = None,
    created: int | None = None,
    level: int = DEFAULT_LEVEL,
    parents: ArrayParents | None = None,
) -> tuple[PackedBundle, bytes]:
    """Seal ``payload`` in memory; returns the bundle's description and its bytes."""
    sealed = _seal(
        payload,
        identity,
        federation=federation,
        round=round,
        seq=seq,
        recipients=recipients,
        encrypt=encrypt,
        expires=expires,
        created=created,
        level=level,
        parents=parents,
        spool_dir=None,
    )
    out = io.BytesIO()
    try:
        sealed.write_to(out)
    finally:
        sealed.sink.close()
    return sealed.packed(None), out.getvalue()


# ---------------------------------------------------------------------------- opening


@dataclass(frozen=True)
class Prefix:
    """The keyless part of a bundle: header and signatures, parsed and size-checked."""

    header: Header
    header_bytes: bytes
    signatures: tuple[bytes, ...]
    length: int
    bundle_id: bytes


def _read_exact(f: BinaryIO, n: int, what: str, where: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise FormatError(
            f"bundle truncated in the {what}",
            expected=f"{n} bytes",
            found=f"{len(data)} bytes",
            where=where,
        )
    return data


def read_prefix(f: BinaryIO, file_size: int, where: str = "") -> Prefix:
    """Read and strictly parse magic, version, header and signature block.

    Raises:
        FormatError: wrong magic or version, truncation, malformed header.
        SizeError: header or signature block over its cap.
        FormatError: also when the file's size does not match what the header declares.
    """
    start = _read_exact(f, 9, "preamble", where)
    if start[:4] != MAGIC:
        raise FormatError(
            "not a bundle: wrong magic", expected=MAGIC.hex(), found=start[:4].hex(), where=where
        )
    if start[4] != VERSION:
        raise FormatError(
            "unsupported bundle format version", expected=VERSION, found=start[4], where=where
        )
    header_len = struct.unpack(">I", start[5:9])[0]
    if header_len > MAX_HEADER_BYTES or header_len > file_size - 9:
        raise SizeError(
            "header length out of bounds",
            expected=f"<= {min(MAX_HEADER_BYTES, max(file_size - 9, 0))} bytes",
            found=header_len,
            where=where,
        )
    header_bytes = _read_exact(f, header_len, "header", where)
    header = header_from_cbor(cbor.decode(header_bytes, where=f"{where} header"), where)
    sig_len = struct.unpack(">H", _read_exact(f, 2, "signature length", where))[0]
    if sig_len > MAX_SIGNATURE_BLOCK_BYTES:
        raise SizeError(
            "signature block too large",
            expected=f"<= {MAX_SIGNATURE_BLOCK_BYTES}",
            found=sig_len,
            where=where,
        )
    sig_bytes = _read_exact(f, sig_len, "signature block", where)
    signatures = cbor.decode(sig_bytes, max_depth=1, max_items=8, where=f"{where} signature block")
    if (
        not isinstance(signatures, list)
        or not signatures
        or not all(isinstance(s, bytes) for s in signatures)
    ):
        raise FormatError(
            "signature block is malformed",
            expected="a list of byte strings",
            found=repr(signatures)[:60],
            where=where,
        )
    length = 9 + header_len + 2 + sig_len
    if file_size != length + header.payload.size:
        raise FormatError(
            "bundle size does not match its header (truncated or padded)",
            expected=length + header.payload.size,
            found=file_size,
            where=where,
        )
    prefix = start + header_bytes + struct.pack(">H", sig_len) + sig_bytes
    return Prefix(header, header_bytes, tuple(signatures), length, hashlib.sha256(prefix).digest())


def verify_signatures(prefix: Prefix, sender: PublicIdentity, where: str = "") -> None:
    """Check the signature block against the sender's key and the header's suite.

    The header's suite must be the sender's enrolled suite (no downgrade from the hybrid
    suite to Ed25519 alone, nor the reverse), with one signature per algorithm of it, and
    every one must verify.

    Raises:
        SignatureError: suite mismatch, wrong count, or a signature that fails (the
            message names which one).
        SuiteUnavailableError: the hybrid suite without the ML-DSA library.
    """
    if sender.suite != prefix.header.suite:
        raise SignatureError(
            "bundle's signature suite is not the sender's enrolled suite",
            expected=sender.suite,
            found=prefix.header.suite,
            where=where,
        )
    sender.verify_all(_signed_message(prefix.header_bytes), prefix.signatures, where=where)


def _payload_chunks(f: BinaryIO, size: int) -> Iterator[bytes]:
    left = size
    while left:
        data = f.read(min(_READ_SIZE, left))
        if not data:
            return
        left -= len(data)
        yield data


class _ChunkReader:
    """A ``read()``-able view of an iterator of byte chunks, for zstd's stream reader."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.pending = b""

    def read(self, size: int = -1) -> bytes:
        if not self.pending:
            self.pending = next(self.chunks, b"")
        if size < 0 or size >= len(self.pending):
            data, self.pending = self.pending, b""
        else:
            data, self.pending = self.pending[:size], self.pending[size:]
        return data


def _decrypt(
    chunks: Iterable[bytes], encryption: Encryption, content_key: bytes, where: str
) -> Iterator[bytes]:
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    try:
        sodium.crypto_secretstream_xchacha20poly1305_init_pull(
            state, encryption.stream_header, content_key
        )
    except (nacl.exceptions.CryptoError, ValueError) as e:
        raise DecryptionError("cannot start the payload stream", where=where) from e
    record = encryption.chunk + _ABYTES
    pending = bytearray()
    finished = False
    index = 0

    def pull(cipher: bytes) -> tuple[bytes, int]:
        try:
            message, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(state, cipher, None)
        except (nacl.exceptions.CryptoError, ValueError) as e:
            raise DecryptionError(
                "encrypted chunk fails authentication (altered, reordered or spliced)",
                where=f"{where} chunk {index}",
            ) from e
        return message, tag

    for data in chunks:
        pending += data
        start = 0  # trimmed once per read, not once per record
        # Keep the last record back: only the final one may (and must) carry TAG_FINAL.
        while len(pending) - start > record:
            if finished:
                raise DecryptionError(
                    "data after the final encrypted chunk", where=f"{where} chunk {index}"
                )
            with memoryview(pending) as view:
                cipher = bytes(view[start : start + record])
            message, tag = pull(cipher)
            start += record
            finished = tag == sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL
            index += 1
            yield message
        del pending[:start]
    if finished or not pending:
        if not finished:
            raise DecryptionError(
                "encrypted stream is truncated: no final chunk", where=f"{where} chunk {index}"
            )
        raise DecryptionError(
            "data after the final encrypted chunk", where=f"{where} chunk {index}"
        )
    message, tag = pull(bytes(pending))
    if tag != sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL:
        raise DecryptionError(
            "encrypted stream is truncated: the last chunk is not final",
            where=f"{where} chunk {index}",
        )
    yield message


def _decompress_into(chunks: Iterator[bytes], raw: int, where: str) -> memoryview:
    """Decompress into a writable buffer of exactly ``raw`` bytes; stop the moment output
    exceeds it."""
    # Not bytearray(raw): that zero-fills 4 KiB page by page; numpy leaves the pages
    # untouched until zstd writes them, and on Linux asks for huge pages (~4x faster).
    out = np.empty(raw, dtype=np.uint8)
    view = out.data
    filled = 0
    decompressor = zstandard.ZstdDecompressor(max_window_size=_MAX_WINDOW)
    try:
        reader = decompressor.stream_reader(
            _ChunkReader(chunks),  # type: ignore[arg-type]
            read_size=_READ_SIZE,
        )
        while True:
            # Ask for one byte more than is left so an over-long stream shows at once.
            n = reader.readinto(view[filled:] if filled < raw else bytearray(1))
            if n == 0:
                break
            if filled >= raw:
                raise SizeError(
                    "payload decompresses beyond its declared size (refused at the cap)",
                    expected=f"{raw} bytes",
                    found="more",
                    where=where,
                )
            filled += n
    except zstandard.ZstdError as e:
        raise FormatError(f"payload is not a valid zstd stream ({e})", where=where) from e
    if filled != raw:
        raise FormatError(
            "payload decompresses to fewer bytes than declared",
            expected=raw,
            found=filled,
            where=where,
        )
    return view


@dataclass(frozen=True)
class OpenedBundle:
    """A verified bundle: its header, id, and the decoded, schema-checked payload."""

    bundle_id: bytes
    header: Header
    payload: Payload
    sender: PublicIdentity
    size: int


Keyring = Callable[[bytes], PublicIdentity | None]
Policy = Callable[[Header], None]


def open_bundle(
    path: Path,
    keyring: Keyring,
    *,
    identity: Identity | None = None,
    policy: Policy | None = None,
    parents: Mapping[bytes, np.ndarray[Any, Any]] | None = None,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> OpenedBundle:
    """Verify and open the bundle at ``path``.

    Args:
        keyring: key id -> enrolled, non-revoked public identity (None if unknown).
        identity: our own identity, needed to open encrypted payloads.
        policy: the caller's replay/sequence/round/expiry check, run after the signature;
            it raises :class:`~bundle.errors.ReplayError` to refuse.
        parents: known parent arrays by hash, for XOR-delta model arrays.
        max_payload: cap on the decompressed payload for model kinds.

    Raises:
        LLTokenError: the subclass names the check that failed, in the order above.
    """
    with open(path, "rb") as f:
        return _open_stream(
            f,
            os.fstat(f.fileno()).st_size,
            str(path),
            keyring,
            identity=identity,
            policy=policy,
            parents=parents,
            max_payload=max_payload,
        )


def open_bundle_bytes(
    data: bytes,
    keyring: Keyring,
    *,
    where: str = "",
    identity: Identity | None = None,
    policy: Policy | None = None,
    parents: Mapping[bytes, np.ndarray[Any, Any]] | None = None,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> OpenedBundle:
    """Verify and open a bundle held in memory (e.g. one embedded in a ledger entry).

    Same checks, in the same order, as :func:`open_bundle`; ``where`` names the bytes
    in error messages.

    Raises:
        LLTokenError: the subclass names the check that failed.
    """
    return _open_stream(
        io.BytesIO(data),
        len(data),
        where,
        keyring,
        identity=identity,
        policy=policy,
        parents=parents,
        max_payload=max_payload,
    )


def _open_stream(
    f: BinaryIO,
    file_size: int,
    where: str,
    keyring: Keyring,
    *,
    identity: Identity | None,
    policy: Policy | None,
    parents: Mapping[bytes, np.ndarray[Any, Any]] | None,
    max_payload: int,
) -> OpenedBundle:
    prefix = read_prefix(f, file_size, where)
    header = prefix.header
    sender = keyring(header.sender)
    # An enrollment request comes from a key nobody knows yet; it carries its public
    # identity in a small, unencrypted payload, so that payload is read (under the small
    # cap) and the signature is checked against it: proof of possession of the key.
    self_signed = (
        sender is None and header.kind in SELF_SIGNED_KINDS and header.payload.encryption is None
    )
    if sender is None and not self_signed:
        raise UnknownSenderError(
            "bundle signed by a key that is not enrolled (or is revoked)",
            expected="an enrolled sender",
            found=header.sender.hex(),
            where=where,
        )
    if sender is not None:
        verify_signatures(prefix, sender, where)
        if policy is not None:
            policy(header)
    cap = max_payload if header.kind in MODEL_KINDS else SMALL_PAYLOAD_CAP
    if header.payload.raw > cap:
        raise SizeError(
            f"{header.kind} payload larger than allowed",
            expected=f"<= {cap} bytes",
            found=header.payload.raw,
            where=where,
        )
    content_key = _content_key(header, identity, where)
    payload_hash = hashlib.sha256()

    def hashed() -> Iterator[bytes]:
        for data in _payload_chunks(f, header.payload.size):
            payload_hash.update(data)
            yield data

    stream = hashed()
    plain: Iterator[bytes] = stream
    if header.payload.encryption is not None and content_key is not None:
        plain = _decrypt(stream, header.payload.encryption, content_key, where)
    try:
        buffer = _decompress_into(plain, header.payload.raw, where)
    except LLTokenError:
        # A tampered payload shows first as a decryption or zstd failure; finish
        # hashing so it is reported as the integrity failure it is.
        for _ in stream:
            pass
        _check_hash(payload_hash.digest(), header, where)
        raise
    for _ in stream:  # a stream that ends early leaves bytes unhashed; hash them
        pass
    _check_hash(payload_hash.digest(), header, where)
    obj = cbor.decode(buffer, where=f"{where} payload")
    payload = payload_from_cbor(header.kind, obj, parents=parents, where=where)
    if sender is None:
        claimed = getattr(payload, "identity", None)
        if not isinstance(claimed, PublicIdentity) or claimed.key_id != header.sender:
            raise UnknownSenderError(
                "self-signed bundle does not carry the identity that signed it",
                expected=header.sender.hex(),
                found=claimed.key_id.hex() if isinstance(claimed, PublicIdentity) else None,
                where=where,
            )
        verify_signatures(prefix, claimed, where)
        if policy is not None:
            policy(header)
        sender = claimed
    return OpenedBundle(prefix.bundle_id, header, payload, sender, file_size)


def _check_hash(digest: bytes, header: Header, where: str) -> None:
    if digest != header.payload.hash:
        raise IntegrityError(
            "payload hash mismatch: the payload was altered",
            expected=header.payload.hash.hex(),
            found=digest.hex(),
            where=where,
        )


def _content_key(header: Header, identity: Identity | None, where: str) -> bytes | None:
    encryption = header.payload.encryption
    if encryption is None:
        return None
    if identity is None:
        raise DecryptionError(
            "payload is encrypted and no identity was given to open it", where=where
        )
    for slot in encryption.slots:
        if slot.recipient == identity.key_id:
            key = identity.unseal(slot.sealed)
            if len(key) != 32:
                raise DecryptionError(
                    "content key has the wrong length", expected=32, found=len(key), where=where
                )
            return key
    raise DecryptionError(
        "bundle is encrypted for other recipients",
        expected=f"a key slot for {identity.fingerprint}",
        found=", ".join(s.recipient.hex() for s in encryption.slots),
        where=where,
    )


def check_bundle(path: Path) -> Prefix:
    """Check a bundle without keys: name matches content, structure, payload hash and size.

    Raises:
        FormatError: a bad name, magic, version or header.
        IntegrityError: the name's hash or the payload hash does not match.
    """
    where = str(path)
    kind, named_id = parse_name(path.name)
    with open(path, "rb") as f:
        prefix = read_prefix(f, os.fstat(f.fileno()).st_size, where)
        digest = hashlib.sha256()
        for data in _payload_chunks(f, prefix.header.payload.size):
            digest.update(data)
    if prefix.header.kind != kind:
        raise IntegrityError(
            "file name's kind does not match the header",
            expected=prefix.header.kind,
            found=kind,
            where=where,
        )
    if prefix.bundle_id != named_id:
        raise IntegrityError(
            "bundle id does not match the file name",
            expected=named_id.hex(),
            found=prefix.bundle_id.hex(),
            where=where,
        )
    _check_hash(digest.digest(), prefix.header, where)
    return prefix


__all__ = [
    "MAGIC",
    "SUFFIX",
    "VERSION",
    "Header",
    "OpenedBundle",
    "PackedBundle",
    "Prefix",
    "bundle_name",
    "check_bundle",
    "open_bundle",
    "open_bundle_bytes",
    "pack_bundle",
    "pack_bytes",
    "parse_name",
    "read_prefix",
    "verify_signatures",
]
