"""Tests for bundle.keys: identities, key ids and fingerprints, the keystore, passphrases."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nacl.bindings
import nacl.pwhash
import pytest

from bundle.errors import (
    DecryptionError,
    FormatError,
    KeystoreError,
    KeystoreTamperedError,
    SignatureError,
    WrongPassphraseError,
)
from bundle.keys import (
    KEY_ID_BYTES,
    MEMLIMIT_FAST,
    OPSLIMIT_FAST,
    PASSPHRASE_ENV,
    SUITE_ED25519,
    Identity,
    PublicIdentity,
    fingerprint_of,
    key_id_of,
    load_keystore,
    read_passphrase,
    save_keystore,
)

PASSPHRASE = "correct horse battery staple"
FINGERPRINT_RE = re.compile(r"^[A-Z2-7]{4}-[A-Z2-7]{4}-[A-Z2-7]{4}-[A-Z2-7]{4}$")


KEYSTORE_IDENTITY = Identity(bytes([9]) * 32, bytes([10]) * 32)


def save(path: Path, identity: Identity, passphrase: str = PASSPHRASE) -> None:
    save_keystore(path, identity, passphrase, opslimit=OPSLIMIT_FAST, memlimit=MEMLIMIT_FAST)


# ----------------------------------------------------------------------------- identities

# Pinned: a key id is how rosters, headers and receipts name a key, so the same keys must
# always give the same id and fingerprint.  Ed25519 (RFC 8032) and X25519 (RFC 7748) key
# generation are deterministic, so these follow from the conftest coordinator's seeds.
PINNED_KEY_ID = "964241cae42c67555c419a1014447b1b"
PINNED_FINGERPRINT = "SZBE-DSXE-FRTV-KXCB"


def test_key_id_follows_its_definition(coordinator: Identity) -> None:
    pub = coordinator.public
    expected = hashlib.sha256(
        b"lltoken/key-id/v1\x00"
        + b"ed25519\x00"
        + (32).to_bytes(4, "big")
        + pub.signing_key
        + pub.box_key
    ).digest()[:KEY_ID_BYTES]
    assert coordinator.key_id == expected
    assert key_id_of(SUITE_ED25519, pub.signing_key, pub.box_key) == expected
    assert len(coordinator.key_id) == KEY_ID_BYTES == 16


def test_key_id_and_fingerprint_are_stable(coordinator: Identity) -> None:
    again = Identity(bytes([1]) * 32, bytes([101]) * 32)
    assert again.key_id == coordinator.key_id
    assert again.fingerprint == coordinator.fingerprint
    assert coordinator.key_id.hex() == PINNED_KEY_ID
    assert coordinator.fingerprint == PINNED_FINGERPRINT
    assert FINGERPRINT_RE.match(coordinator.fingerprint)
    assert coordinator.fingerprint == fingerprint_of(coordinator.key_id)
    expected = base64.b32encode(coordinator.key_id[:10]).decode()
    assert coordinator.fingerprint.replace("-", "") == expected


def test_key_ids_differ_between_identities(
    coordinator: Identity, alice: Identity, bob: Identity
) -> None:
    ids = {i.key_id for i in (coordinator, alice, bob)}
    assert len(ids) == 3
    # Either public key alone changes the id.
    pub = alice.public
    other = bob.public
    assert key_id_of(SUITE_ED25519, pub.signing_key, other.box_key) not in ids
    assert key_id_of(SUITE_ED25519, other.signing_key, pub.box_key) not in ids


def test_public_identity_round_trip(alice: Identity) -> None:
    pub = alice.public
    again = PublicIdentity.from_dict(pub.to_dict())
    assert again == pub
    assert again.key_id == pub.key_id


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {},
        {"suite": "ed25519", "sign": b"x" * 32},
        {"suite": "ed25519", "sign": b"x" * 32, "box": b"y" * 32, "extra": 1},
        {"suite": "ed448", "sign": b"x" * 32, "box": b"y" * 32},
        {"suite": "ed25519", "sign": b"x" * 31, "box": b"y" * 32},
        {"suite": "ed25519", "sign": b"x" * 32, "box": b"y" * 33},
        {"suite": "ed25519", "sign": "x" * 32, "box": b"y" * 32},
        {"suite": "ed25519", "sign": b"x" * 32, "box": None},
        {"suite": ["ed25519"], "sign": b"x" * 32, "box": b"y" * 32},
    ],
)
def test_malformed_public_identity(data: Any) -> None:
    with pytest.raises(FormatError):
        PublicIdentity.from_dict(data)


LOW_ORDER_X25519 = [
    "00" * 32,
    "01" + "00" * 31,
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]


@pytest.mark.parametrize("box", LOW_ORDER_X25519)
def test_low_order_box_keys_are_refused(box: str, alice: Identity) -> None:
    """Nothing can be sealed to such a key; an enrollment carrying one must not get in."""
    with pytest.raises(FormatError):
        PublicIdentity(SUITE_ED25519, alice.public.signing_key, bytes.fromhex(box))
    with pytest.raises(FormatError):
        PublicIdentity.from_dict(alice.public.to_dict() | {"box": bytes.fromhex(box)})


@pytest.mark.parametrize(("seed", "box"), [(b"x" * 31, b"y" * 32), (b"x" * 32, b""), (b"", b"")])
def test_malformed_secret_keys(seed: bytes, box: bytes) -> None:
    with pytest.raises(FormatError):
        Identity(seed, box)


def test_sign_and_verify(alice: Identity, bob: Identity) -> None:
    signature = alice.sign(b"message")
    alice.public.verify(b"message", signature)
    with pytest.raises(SignatureError):
        alice.public.verify(b"messagE", signature)
    with pytest.raises(SignatureError):
        bob.public.verify(b"message", signature)
    with pytest.raises(SignatureError):
        alice.public.verify(b"message", signature[:-1])
    with pytest.raises(SignatureError):
        alice.public.verify(b"message", b"")
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    with pytest.raises(SignatureError):
        alice.public.verify(b"message", flipped)


def test_seal_and_unseal(alice: Identity, bob: Identity) -> None:
    sealed = alice.public.seal(b"k" * 32)
    assert alice.unseal(sealed) == b"k" * 32
    with pytest.raises(DecryptionError):
        bob.unseal(sealed)
    with pytest.raises(DecryptionError):
        alice.unseal(sealed[:-1] + bytes([sealed[-1] ^ 1]))
    with pytest.raises(DecryptionError):
        alice.unseal(b"short")


def test_generated_identities_are_distinct() -> None:
    a, b = Identity.generate(), Identity.generate()
    assert a.key_id != b.key_id
    assert a.public.signing_key != b.public.signing_key


# ----------------------------------------------------------------------------- keystore


def test_keystore_round_trip(tmp_path: Path, alice: Identity) -> None:
    path = tmp_path / "keys" / "agent.key"
    save(path, alice)
    loaded = load_keystore(path, PASSPHRASE)
    assert loaded.key_id == alice.key_id
    assert loaded.public == alice.public
    assert loaded.secret_seeds() == alice.secret_seeds()
    # The loaded key really signs and opens like the original.
    alice.public.verify(b"m", loaded.sign(b"m"))
    assert loaded.unseal(alice.public.seal(b"s" * 32)) == b"s" * 32


def test_keystore_is_private_and_identifiable_without_passphrase(
    tmp_path: Path, alice: Identity
) -> None:
    path = tmp_path / "agent.key"
    save(path, alice)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["key_id"] == alice.key_id.hex()
    assert base64.b64decode(doc["sign_public"]) == alice.public.signing_key
    seed, box = alice.secret_seeds()
    raw = path.read_bytes()
    for secret in (seed, box):
        assert secret not in raw
        assert base64.b64encode(secret) not in raw
        assert secret.hex().encode() not in raw
    assert not [p for p in tmp_path.iterdir() if p.name != "agent.key"]  # no temp left


def test_keystore_mode_ignores_umask(tmp_path: Path, alice: Identity) -> None:
    old = os.umask(0)
    try:
        save(tmp_path / "agent.key", alice)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "agent.key").stat().st_mode) == 0o600


def test_keystore_is_never_overwritten(tmp_path: Path, alice: Identity, bob: Identity) -> None:
    path = tmp_path / "agent.key"
    save(path, alice)
    before = path.read_bytes()
    with pytest.raises(KeystoreError):
        save(path, bob)
    assert path.read_bytes() == before


def test_empty_passphrase_is_refused(tmp_path: Path, alice: Identity) -> None:
    with pytest.raises(KeystoreError):
        save(tmp_path / "agent.key", alice, "")
    assert not (tmp_path / "agent.key").exists()


def test_wrong_passphrase(tmp_path: Path, alice: Identity) -> None:
    path = tmp_path / "agent.key"
    save(path, alice)
    for wrong in ("correct horse battery stapl", "", PASSPHRASE + " ", PASSPHRASE.upper()):
        with pytest.raises(WrongPassphraseError):
            load_keystore(path, wrong)
    assert load_keystore(path, PASSPHRASE).key_id == alice.key_id


def test_missing_keystore(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError) as info:
        load_keystore(tmp_path / "nope.key", PASSPHRASE)
    assert type(info.value) is KeystoreError
    assert "nope.key" in str(info.value)


@pytest.fixture(scope="module")
def keystore_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("ks") / "agent.key"
    save(path, KEYSTORE_IDENTITY)
    # Intact, it opens: so every refusal below is the edit's doing.
    assert load_keystore(path, PASSPHRASE).key_id == KEYSTORE_IDENTITY.key_id
    return path.read_bytes()


def _edit(field: str, change: Callable[[Any], Any]) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        path = field.split(".")
        target = doc
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = change(target[path[-1]])

    return apply


def _flip_b64(value: str, index: int = 5) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[index % len(raw)] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def _delete(field: str) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        del doc[field]

    return apply


JSON_EDITS: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("ciphertext first byte", _edit("ciphertext", lambda v: _flip_b64(v, 0))),
    ("ciphertext middle byte", _edit("ciphertext", lambda v: _flip_b64(v, 30))),
    ("ciphertext tag byte", _edit("ciphertext", lambda v: _flip_b64(v, -1))),
    (
        "ciphertext truncated",
        _edit("ciphertext", lambda v: base64.b64encode(base64.b64decode(v)[:-4]).decode()),
    ),
    ("ciphertext not base64", _edit("ciphertext", lambda v: "!!" + v[2:])),
    ("ciphertext emptied", _edit("ciphertext", lambda v: "")),
    ("key id", _edit("key_id", lambda v: "00" + v[2:])),
    ("public signing key", _edit("sign_public", _flip_b64)),
    ("public box key", _edit("box_public", _flip_b64)),
    ("salt", _edit("kdf.salt", _flip_b64)),
    ("nonce", _edit("aead.nonce", _flip_b64)),
    ("opslimit lowered", _edit("kdf.opslimit", lambda v: v - 1)),
    ("memlimit raised", _edit("kdf.memlimit", lambda v: v * 2)),
    ("kdf alg", _edit("kdf.alg", lambda v: "scrypt")),
    ("suite", _edit("suite", lambda v: "ed448")),
    ("format", _edit("format", lambda v: "lltoken-keystore/v2")),
    ("checksum", _edit("checksum", lambda v: ("0" if v[0] != "0" else "1") + v[1:])),
    ("checksum removed", _delete("checksum")),
    ("ciphertext removed", _delete("ciphertext")),
    ("kdf removed", _delete("kdf")),
    ("extra field", lambda doc: doc.update(extra=1)),
]


@pytest.mark.parametrize(("why", "edit"), JSON_EDITS, ids=[e[0] for e in JSON_EDITS])
def test_edited_keystore_is_tampered(
    tmp_path: Path, keystore_bytes: bytes, why: str, edit: Callable[[dict[str, Any]], None]
) -> None:
    path = tmp_path / "agent.key"
    path.write_bytes(keystore_bytes)
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc, indent=2, sort_keys=True))
    with pytest.raises(KeystoreTamperedError):
        load_keystore(path, PASSPHRASE)


def test_truncated_keystore_is_tampered(tmp_path: Path, keystore_bytes: bytes) -> None:
    path = tmp_path / "agent.key"
    step = max(1, len(keystore_bytes) // 60)
    for cut in [*range(0, len(keystore_bytes) - 1, step), len(keystore_bytes) - 2]:
        path.write_bytes(keystore_bytes[:cut])
        with pytest.raises(KeystoreTamperedError):
            load_keystore(path, PASSPHRASE)


def test_flipped_bits_in_keystore_are_tampered(tmp_path: Path, keystore_bytes: bytes) -> None:
    path = tmp_path / "agent.key"
    for index in range(0, len(keystore_bytes), 7):
        data = bytearray(keystore_bytes)
        data[index] ^= 0x04
        path.write_bytes(bytes(data))
        try:
            load_keystore(path, PASSPHRASE)
        except KeystoreTamperedError:
            continue
        # Only whitespace or the trailing newline can change without meaning anything.
        assert chr(keystore_bytes[index]) in " \n", index


@pytest.mark.parametrize(
    "content",
    [b"", b"\n", b"[]", b"null", b"{}", b'"text"', b"\xff\xfe\x00garbage", b"{" * 10_000],
    ids=["empty", "newline", "list", "null", "empty object", "string", "binary", "deep"],
)
def test_non_keystore_files_are_tampered(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "agent.key"
    path.write_bytes(content)
    with pytest.raises(KeystoreTamperedError):
        load_keystore(path, PASSPHRASE)


def _checksum(doc: dict[str, Any]) -> str:
    body = json.dumps({k: v for k, v in doc.items() if k != "checksum"}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


RESUMMED_EDITS: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("ciphertext bit", _edit("ciphertext", _flip_b64)),
    ("public key", _edit("sign_public", _flip_b64)),
    ("salt bit", _edit("kdf.salt", _flip_b64)),
    ("salt too short", _edit("kdf.salt", lambda v: base64.b64encode(b"s" * 8).decode())),
    ("nonce too short", _edit("aead.nonce", lambda v: base64.b64encode(b"n" * 12).decode())),
    ("ciphertext too short", _edit("ciphertext", lambda v: base64.b64encode(b"c" * 8).decode())),
    ("opslimit infinite", _edit("kdf.opslimit", lambda v: float("inf"))),
    ("opslimit NaN", _edit("kdf.opslimit", lambda v: float("nan"))),
    ("opslimit text", _edit("kdf.opslimit", lambda v: "many")),
    ("opslimit zero", _edit("kdf.opslimit", lambda v: 0)),
    ("memlimit huge", _edit("kdf.memlimit", lambda v: 2**80)),
    ("kdf a list", _edit("kdf", lambda v: [v])),
    ("aead a string", _edit("aead", lambda v: "x")),
    ("salt a number", _edit("kdf.salt", lambda v: 7)),
    ("suite a list", _edit("suite", lambda v: [v])),
]


@pytest.mark.parametrize(("why", "edit"), RESUMMED_EDITS, ids=[e[0] for e in RESUMMED_EDITS])
def test_edits_with_a_recomputed_checksum_are_still_refused(
    tmp_path: Path, keystore_bytes: bytes, why: str, edit: Callable[[dict[str, Any]], None]
) -> None:
    """Someone who fixes up the checksum gets a typed refusal, never a crash or a key."""
    path = tmp_path / "agent.key"
    path.write_bytes(keystore_bytes)
    doc = json.loads(path.read_text())
    edit(doc)
    doc["checksum"] = _checksum(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises((WrongPassphraseError, KeystoreTamperedError)):
        load_keystore(path, PASSPHRASE)


def test_secret_that_does_not_match_the_public_key_is_tampered(
    tmp_path: Path, alice: Identity, bob: Identity
) -> None:
    """A keystore whose sealed seeds (validly encrypted) belong to another key."""
    path = tmp_path / "agent.key"
    save(path, alice)
    doc = json.loads(path.read_text())
    clear = {k: v for k, v in doc.items() if k not in ("ciphertext", "checksum")}
    key = nacl.pwhash.argon2id.kdf(
        32,
        PASSPHRASE.encode(),
        base64.b64decode(doc["kdf"]["salt"]),
        opslimit=doc["kdf"]["opslimit"],
        memlimit=doc["kdf"]["memlimit"],
    )
    seed, box = bob.secret_seeds()
    sealed = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        seed + box,
        json.dumps(clear, sort_keys=True).encode(),
        base64.b64decode(doc["aead"]["nonce"]),
        key,
    )
    doc["ciphertext"] = base64.b64encode(sealed).decode()
    doc["checksum"] = _checksum(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(KeystoreTamperedError):
        load_keystore(path, PASSPHRASE)


# ----------------------------------------------------------------------------- passphrases


def test_passphrase_from_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "from the environment")
    path = tmp_path / "pass"
    for content, expected in [
        ("secret\n", "secret"),
        ("secret\r\n", "secret"),
        ("secret", "secret"),
        ("  spaced words  \n", "  spaced words  "),
        ("two\nlines\n", "two\nlines"),
    ]:
        path.write_text(content)
        assert read_passphrase(path) == expected  # the file wins over the environment


@pytest.mark.parametrize("content", ["", "\n", "\r\n\n"])
def test_empty_passphrase_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "pass"
    path.write_text(content)
    with pytest.raises(KeystoreError):
        read_passphrase(path)


def test_missing_passphrase_file(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError) as info:
        read_passphrase(tmp_path / "nope")
    assert "nope" in str(info.value)


def test_passphrase_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "from the environment")
    assert read_passphrase() == "from the environment"


def test_passphrase_file_opens_keystore(
    tmp_path: Path, alice: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    save(tmp_path / "agent.key", alice)
    (tmp_path / "pass").write_text(PASSPHRASE + "\n")
    assert load_keystore(tmp_path / "agent.key", read_passphrase(tmp_path / "pass")).key_id == (
        alice.key_id
    )
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    assert load_keystore(tmp_path / "agent.key", read_passphrase()).key_id == alice.key_id


def _run_without_terminal(code: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k != PASSPHRASE_ENV}
    return subprocess.run(
        [sys.executable, "-c", code],
        input=stdin,
        capture_output=True,
        env=env,
        start_new_session=True,  # no controlling terminal: getpass cannot open /dev/tty
        timeout=60,
        check=False,
    )


PROMPT_CODE = """
import sys
from bundle.errors import KeystoreError
from bundle.keys import read_passphrase
try:
    print("got", repr(read_passphrase(confirm={confirm})))
except KeystoreError as e:
    print("refused", type(e).__name__, e)
"""


def test_no_passphrase_and_no_terminal_is_refused() -> None:
    result = _run_without_terminal(PROMPT_CODE.format(confirm=False), b"")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"refused KeystoreError"), result.stdout
    assert PASSPHRASE_ENV.encode() in result.stdout


def test_confirmation_must_match() -> None:
    result = _run_without_terminal(PROMPT_CODE.format(confirm=True), b"one\ntwo\n")
    assert result.stdout.startswith(b"refused KeystoreError"), (result.stdout, result.stderr)
    result = _run_without_terminal(PROMPT_CODE.format(confirm=True), b"same\nsame\n")
    assert result.stdout.strip() == b"got 'same'", (result.stdout, result.stderr)
