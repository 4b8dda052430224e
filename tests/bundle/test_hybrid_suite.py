"""The hybrid ``ed25519+ml-dsa-65`` suite end to end in the bundle layer: identities and
key ids, the keystore, bundle signature blocks, checkpoints; tampering with either
signature, stripping one, and downgrading the suite are all refused, with an error that
names the signature that failed."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import cryptography.hazmat.primitives.asymmetric as asymmetric
import nacl.bindings
import nacl.pwhash
import pytest

from bundle import cbor, pqsig
from bundle.checkpoint import (
    checkpoint_from_json,
    checkpoint_to_json,
    sign_checkpoint,
    verify_checkpoint,
)
from bundle.envelope import (
    MAGIC,
    SIGNING_DOMAIN,
    VERSION,
    check_bundle,
    open_bundle,
    open_bundle_bytes,
    pack_bundle,
    pack_bytes,
)
from bundle.errors import (
    FormatError,
    KeystoreTamperedError,
    SignatureError,
    SuiteUnavailableError,
)
from bundle.keys import (
    KEY_ID_BYTES,
    MEMLIMIT_FAST,
    OPSLIMIT_FAST,
    SIGNATURE_BYTES,
    SIGNING_KEY_BYTES,
    SUITE_ED25519,
    SUITE_HYBRID,
    Identity,
    PublicIdentity,
    key_id_of,
    load_keystore,
    save_keystore,
)
from bundle.payloads import ModelUpdate, Transaction

PASSPHRASE = "hybrid passphrase"
CREATED = 1_700_000_000
ROOT = hashlib.sha256(b"root").digest()


def _hybrid(n: int) -> Identity:
    return Identity(bytes([n]) * 32, bytes([n + 100]) * 32, SUITE_HYBRID, bytes([n + 50]) * 32)


@pytest.fixture(scope="module")
def hq_coordinator() -> Identity:
    return _hybrid(11)


@pytest.fixture(scope="module")
def hq_alice() -> Identity:
    return _hybrid(12)


@pytest.fixture(scope="module")
def hq_bob() -> Identity:
    return _hybrid(13)


@pytest.fixture(scope="module")
def hq_keyring(
    hq_coordinator: Identity, hq_alice: Identity, hq_bob: Identity
) -> Callable[[bytes], PublicIdentity | None]:
    known = {i.key_id: i.public for i in (hq_coordinator, hq_alice, hq_bob)}
    return known.get


# ----------------------------------------------------------------------------- identities


def test_hybrid_public_key_is_the_concatenation_and_the_key_id_covers_both(
    hq_alice: Identity,
) -> None:
    pub = hq_alice.public
    ed = Identity(bytes([12]) * 32, bytes([112]) * 32).public.signing_key
    ml = pqsig.SigningKey(bytes([62]) * 32).public_key
    assert pub.signing_key == ed + ml
    assert len(pub.signing_key) == SIGNING_KEY_BYTES[SUITE_HYBRID] == 32 + 1952
    assert (pub.ed25519_key, pub.mldsa_key) == (ed, ml)
    assert pub.algorithms == ("Ed25519", "ML-DSA-65")
    expected = hashlib.sha256(
        b"lltoken/key-id/v1\x00"
        + b"ed25519+ml-dsa-65\x00"
        + (1984).to_bytes(4, "big")
        + ed
        + ml
        + pub.box_key
    ).digest()[:KEY_ID_BYTES]
    assert pub.key_id == expected == key_id_of(SUITE_HYBRID, pub.signing_key, pub.box_key)
    # Changing either public key, or only the suite, gives another id.
    other_ml = pqsig.SigningKey(bytes([63]) * 32).public_key
    other_ed = Identity(bytes([14]) * 32, bytes([112]) * 32).public.signing_key
    ids = {
        pub.key_id,
        PublicIdentity(SUITE_HYBRID, ed + other_ml, pub.box_key).key_id,
        PublicIdentity(SUITE_HYBRID, other_ed + ml, pub.box_key).key_id,
        PublicIdentity(SUITE_ED25519, ed, pub.box_key).key_id,
    }
    assert len(ids) == 4
    assert Identity(bytes([12]) * 32, bytes([112]) * 32).public.mldsa_key is None


def test_hybrid_public_identity_round_trips_and_checks_lengths(hq_alice: Identity) -> None:
    pub = hq_alice.public
    assert PublicIdentity.from_dict(cbor.decode(cbor.encode(pub.to_dict()))) == pub
    box = pub.box_key
    for suite, key in (
        (SUITE_HYBRID, pub.signing_key[:32]),
        (SUITE_HYBRID, pub.signing_key[:-1]),
        (SUITE_HYBRID, pub.signing_key + b"\x00"),
        (SUITE_ED25519, pub.signing_key),
    ):
        with pytest.raises(FormatError):
            PublicIdentity(suite, key, box)


@pytest.mark.parametrize(
    ("suite", "pq_seed"),
    [
        (SUITE_HYBRID, None),
        (SUITE_ED25519, bytes(32)),
        (SUITE_HYBRID, bytes(31)),
        ("ed25519+ml-dsa-87", bytes(32)),
    ],
)
def test_seed_and_suite_must_agree(suite: str, pq_seed: bytes | None) -> None:
    with pytest.raises(FormatError):
        Identity(bytes(32), bytes([1]) * 32, suite, pq_seed)


def test_generate_with_the_hybrid_suite() -> None:
    a, b = Identity.generate(SUITE_HYBRID), Identity.generate(SUITE_HYBRID)
    assert a.public.suite == SUITE_HYBRID
    assert a.key_id != b.key_id
    assert len(a.secret_seeds()) == 3


def test_sign_all_and_the_one_string_form(hq_alice: Identity, hq_bob: Identity) -> None:
    message = b"message"
    ed_sig, ml_sig = hq_alice.sign_all(message)
    assert (len(ed_sig), len(ml_sig)) == (64, 3309)
    hq_alice.public.verify_all(message, (ed_sig, ml_sig))
    joined = hq_alice.sign(message)
    assert len(joined) == SIGNATURE_BYTES[SUITE_HYBRID] == 3373
    hq_alice.public.verify(message, joined)
    with pytest.raises(SignatureError, match="Ed25519 signature \\(1 of 2\\) and ML-DSA-65"):
        hq_bob.public.verify(message, joined)
    with pytest.raises(SignatureError, match="wrong length"):
        hq_alice.public.verify(message, joined[:-1])
    with pytest.raises(SignatureError, match="wrong number of signatures"):
        hq_alice.public.verify_all(message, (ed_sig,))
    with pytest.raises(SignatureError, match="wrong number of signatures"):
        hq_alice.public.verify_all(message, (ed_sig, ml_sig, ml_sig))


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


@pytest.mark.parametrize(
    ("where", "which"),
    [
        (0, "Ed25519 signature (1 of 2) does"),
        (63, "Ed25519 signature (1 of 2) does"),
        (64, "ML-DSA-65 signature (2 of 2) does"),
        (3372, "ML-DSA-65 signature (2 of 2) does"),
    ],
)
def test_tampering_with_either_half_names_it(hq_alice: Identity, where: int, which: str) -> None:
    joined = hq_alice.sign(b"m")
    with pytest.raises(SignatureError) as caught:
        hq_alice.public.verify(b"m", _flip(joined, where))
    assert str(caught.value).startswith(which + " not verify")


# ----------------------------------------------------------------------------- keystore


def test_hybrid_keystore_round_trip(tmp_path: Path, hq_alice: Identity) -> None:
    path = tmp_path / "keystore.json"
    save_keystore(path, hq_alice, PASSPHRASE, opslimit=OPSLIMIT_FAST, memlimit=MEMLIMIT_FAST)
    doc = json.loads(path.read_text())
    assert doc["suite"] == SUITE_HYBRID
    assert base64.b64decode(doc["sign_public"]) == hq_alice.public.signing_key
    # Three 32-byte seeds (Ed25519, X25519, ML-DSA-65) and the 16-byte AEAD tag.
    assert len(base64.b64decode(doc["ciphertext"])) == 96 + 16
    raw = path.read_bytes()
    for secret in hq_alice.secret_seeds():
        assert base64.b64encode(secret) not in raw
        assert secret.hex().encode() not in raw
    loaded = load_keystore(path, PASSPHRASE)
    assert loaded.public == hq_alice.public
    assert loaded.secret_seeds() == hq_alice.secret_seeds()
    hq_alice.public.verify(b"m", loaded.sign(b"m"))


def test_hybrid_keystore_with_another_mldsa_seed_is_tampered(
    tmp_path: Path, hq_alice: Identity
) -> None:
    """Validly sealed seeds whose ML-DSA half belongs to another key: the public keys in
    clear no longer match what the secrets derive."""
    path = tmp_path / "keystore.json"
    save_keystore(path, hq_alice, PASSPHRASE, opslimit=OPSLIMIT_FAST, memlimit=MEMLIMIT_FAST)
    doc = json.loads(path.read_text())
    clear = {k: v for k, v in doc.items() if k not in ("ciphertext", "checksum")}
    key = nacl.pwhash.argon2id.kdf(
        32,
        PASSPHRASE.encode(),
        base64.b64decode(doc["kdf"]["salt"]),
        opslimit=doc["kdf"]["opslimit"],
        memlimit=doc["kdf"]["memlimit"],
    )
    ed, box, _ = hq_alice.secret_seeds()
    sealed = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        ed + box + bytes(32),
        json.dumps(clear, sort_keys=True).encode(),
        base64.b64decode(doc["aead"]["nonce"]),
        key,
    )
    doc["ciphertext"] = base64.b64encode(sealed).decode()
    body = json.dumps({k: v for k, v in doc.items() if k != "checksum"}, sort_keys=True)
    doc["checksum"] = hashlib.sha256(body.encode()).hexdigest()
    path.write_text(json.dumps(doc))
    with pytest.raises(KeystoreTamperedError, match="does not match the stored public key"):
        load_keystore(path, PASSPHRASE)


def test_ed25519_keystore_relabelled_hybrid_is_tampered(tmp_path: Path, alice: Identity) -> None:
    """The suite decides the sealed length; a relabelled file fails before any key use."""
    path = tmp_path / "keystore.json"
    save_keystore(path, alice, PASSPHRASE, opslimit=OPSLIMIT_FAST, memlimit=MEMLIMIT_FAST)
    doc = json.loads(path.read_text())
    doc["suite"] = SUITE_HYBRID
    body = json.dumps({k: v for k, v in doc.items() if k != "checksum"}, sort_keys=True)
    doc["checksum"] = hashlib.sha256(body.encode()).hexdigest()
    path.write_text(json.dumps(doc))
    with pytest.raises(KeystoreTamperedError, match="wrong length"):
        load_keystore(path, PASSPHRASE)


# ----------------------------------------------------------------------------- bundles


def _transaction(sender: Identity, receiver: Identity) -> Transaction:
    return Transaction(sender.key_id, receiver.key_id, 10, b"\x44" * 16, 1, "thanks")


def test_hybrid_bundle_carries_both_signatures_and_opens(
    spool: Path,
    hq_alice: Identity,
    hq_bob: Identity,
    hq_coordinator: Identity,
    hq_keyring: Callable[[bytes], PublicIdentity | None],
    federation: bytes,
) -> None:
    packed = pack_bundle(
        spool, _transaction(hq_alice, hq_bob), hq_alice, federation=federation, created=CREATED
    )
    assert packed.header.suite == SUITE_HYBRID
    data = packed.path.read_bytes()
    (header_len,) = struct.unpack(">I", data[5:9])
    header_bytes = data[9 : 9 + header_len]
    (sig_len,) = struct.unpack(">H", data[9 + header_len : 11 + header_len])
    block = cbor.decode(data[11 + header_len : 11 + header_len + sig_len])
    assert [len(s) for s in block] == [64, 3309]
    message = SIGNING_DOMAIN + hashlib.sha256(MAGIC + bytes([VERSION]) + header_bytes).digest()
    hq_alice.public.verify_all(message, block)
    assert pqsig.verify(hq_alice.public.mldsa_key or b"", message, block[1])
    opened = open_bundle(packed.path, hq_keyring)
    assert opened.payload == _transaction(hq_alice, hq_bob)
    check_bundle(packed.path)
    # Encrypted to a hybrid recipient: the content key is still sealed with X25519.
    update = ModelUpdate(1, b"\x01" * 32, 5, {"loss": 0.5}, [])
    sealed = pack_bundle(
        spool,
        update,
        hq_alice,
        federation=federation,
        recipients=[hq_coordinator.public],
        encrypt=True,
        created=CREATED,
    )
    assert open_bundle(sealed.path, hq_keyring, identity=hq_coordinator).payload == update


def _resign_block(data: bytes, edit: Callable[[list[bytes]], list[bytes]]) -> bytes:
    """The bundle with its signature block replaced by ``edit(block)``."""
    (header_len,) = struct.unpack(">I", data[5:9])
    at = 9 + header_len
    (sig_len,) = struct.unpack(">H", data[at : at + 2])
    block = edit(list(cbor.decode(data[at + 2 : at + 2 + sig_len])))
    encoded = cbor.encode(block)
    return data[:at] + struct.pack(">H", len(encoded)) + encoded + data[at + 2 + sig_len :]


BLOCK_EDITS: list[tuple[str, Callable[[list[bytes]], list[bytes]], str]] = [
    ("ed25519 flipped", lambda b: [_flip(b[0], 10), b[1]], "Ed25519 signature (1 of 2) does"),
    ("ml-dsa flipped", lambda b: [b[0], _flip(b[1], 1000)], "ML-DSA-65 signature (2 of 2) does"),
    ("ml-dsa last byte", lambda b: [b[0], _flip(b[1], 3308)], "ML-DSA-65 signature (2 of 2)"),
    ("both flipped", lambda b: [_flip(b[0], 0), _flip(b[1], 0)], "Ed25519 signature (1 of 2) and"),
    ("swapped", lambda b: [b[1], b[0]], "Ed25519 signature (1 of 2) and"),
    ("ml-dsa stripped", lambda b: [b[0]], "wrong number of signatures"),
    ("ed25519 stripped", lambda b: [b[1]], "wrong number of signatures"),
    ("ml-dsa doubled", lambda b: [b[0], b[1], b[1]], "wrong number of signatures"),
    ("ml-dsa truncated", lambda b: [b[0], b[1][:-1]], "ML-DSA-65 signature (2 of 2) does"),
]


@pytest.mark.parametrize(("why", "edit", "message"), BLOCK_EDITS, ids=[e[0] for e in BLOCK_EDITS])
def test_tampered_signature_blocks_are_refused_by_name(
    hq_alice: Identity,
    hq_bob: Identity,
    hq_keyring: Callable[[bytes], PublicIdentity | None],
    federation: bytes,
    why: str,
    edit: Callable[[list[bytes]], list[bytes]],
    message: str,
) -> None:
    _, data = pack_bytes(
        _transaction(hq_alice, hq_bob), hq_alice, federation=federation, created=CREATED
    )
    open_bundle_bytes(data, hq_keyring)
    with pytest.raises(SignatureError) as caught:
        open_bundle_bytes(_resign_block(data, edit), hq_keyring, where="inbox/x.llb")
    assert message in str(caught.value)
    assert "[inbox/x.llb]" in str(caught.value)


def test_a_suite_other_than_the_enrolled_one_is_refused(
    alice: Identity, hq_alice: Identity, hq_bob: Identity, federation: bytes
) -> None:
    """Downgrade (hybrid sender, Ed25519-only bundle) and the reverse are both refused."""
    _, classic = pack_bytes(
        _transaction(alice, hq_bob), alice, federation=federation, created=CREATED
    )
    _, hybrid = pack_bytes(
        _transaction(hq_alice, hq_bob), hq_alice, federation=federation, created=CREATED
    )
    for data, enrolled in ((classic, hq_alice.public), (hybrid, alice.public)):
        with pytest.raises(SignatureError, match="not the sender's enrolled suite") as caught:
            open_bundle_bytes(data, lambda _id, e=enrolled: e)
        assert caught.value.expected == enrolled.suite


def test_rewriting_the_header_suite_to_ed25519_is_refused(
    hq_alice: Identity,
    hq_bob: Identity,
    hq_keyring: Callable[[bytes], PublicIdentity | None],
    federation: bytes,
) -> None:
    """An attacker who can forge Ed25519 but not ML-DSA relabels a bundle as Ed25519-only
    and drops the ML-DSA signature: the sender's enrolled suite still says hybrid."""
    _, data = pack_bytes(
        _transaction(hq_alice, hq_bob), hq_alice, federation=federation, created=CREATED
    )
    (header_len,) = struct.unpack(">I", data[5:9])
    header = cbor.decode(data[9 : 9 + header_len])
    header["suite"] = SUITE_ED25519
    new_header = cbor.encode(header)
    rest = _resign_block(data, lambda b: [b[0]])[9 + header_len :]
    forged = data[:5] + struct.pack(">I", len(new_header)) + new_header + rest
    with pytest.raises(SignatureError, match="not the sender's enrolled suite"):
        open_bundle_bytes(forged, hq_keyring)


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoints_signed_with_the_hybrid_suite(
    hq_coordinator: Identity, coordinator: Identity, federation: bytes
) -> None:
    checkpoint = sign_checkpoint(
        hq_coordinator, federation=federation, size=7, root=ROOT, time=CREATED
    )
    assert len(checkpoint.signature) == 3373
    verify_checkpoint(checkpoint, hq_coordinator.public, federation=federation)
    again = checkpoint_from_json(checkpoint_to_json(checkpoint))
    verify_checkpoint(again, hq_coordinator.public, federation=federation)
    # Ed25519 checkpoints keep their 64-byte signature, byte for byte as before.
    classic = sign_checkpoint(coordinator, federation=federation, size=7, root=ROOT, time=CREATED)
    assert len(classic.signature) == 64
    with pytest.raises(SignatureError):
        verify_checkpoint(classic, hq_coordinator.public)
    with pytest.raises(SignatureError):
        verify_checkpoint(checkpoint, coordinator.public)


@pytest.mark.parametrize(
    ("index", "which"), [(5, "Ed25519 signature (1 of 2)"), (2000, "ML-DSA-65 signature (2 of 2)")]
)
def test_tampered_checkpoint_names_the_failed_signature(
    hq_coordinator: Identity, federation: bytes, index: int, which: str
) -> None:
    checkpoint = sign_checkpoint(
        hq_coordinator, federation=federation, size=7, root=ROOT, time=CREATED
    )
    bad = dataclasses.replace(checkpoint, signature=_flip(checkpoint.signature, index))
    with pytest.raises(SignatureError) as caught:
        verify_checkpoint(bad, hq_coordinator.public)
    assert "is not signed by the coordinator" in str(caught.value)
    assert which in str(caught.value)


# ----------------------------------------------------------------------------- no extra


def test_hybrid_keys_without_the_extra_say_what_to_install(
    tmp_path: Path,
    hq_alice: Identity,
    hq_bob: Identity,
    hq_coordinator: Identity,
    hq_keyring: Callable[[bytes], PublicIdentity | None],
    federation: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "keystore.json"
    save_keystore(path, hq_alice, PASSPHRASE, opslimit=OPSLIMIT_FAST, memlimit=MEMLIMIT_FAST)
    _, data = pack_bytes(
        _transaction(hq_alice, hq_bob), hq_alice, federation=federation, created=CREATED
    )
    checkpoint = sign_checkpoint(hq_coordinator, federation=federation, size=1, root=ROOT)
    monkeypatch.setitem(
        sys.modules,
        "cryptography.hazmat.primitives.asymmetric.mldsa",
        None,  # type: ignore[arg-type]
    )
    monkeypatch.delattr(asymmetric, "mldsa")
    pqsig._binding.cache_clear()
    try:
        attempts: list[Callable[[], object]] = [
            lambda: Identity.generate(SUITE_HYBRID),
            lambda: load_keystore(path, PASSPHRASE),
            lambda: open_bundle_bytes(data, hq_keyring),
            lambda: verify_checkpoint(checkpoint, hq_coordinator.public),
        ]
        for attempt in attempts:
            with pytest.raises(SuiteUnavailableError, match=r"pip install 'lltoken-offline\[pq\]'"):
                attempt()
        # Ed25519 keeps working without the extra.
        classic = Identity.generate()
        classic.public.verify(b"m", classic.sign(b"m"))
    finally:
        pqsig._binding.cache_clear()
