"""Identities, key ids, and the encrypted keystore.

An identity is a signing key plus an X25519 key for receiving encrypted payloads.  Its
signature suite is one of:

* ``ed25519``: Ed25519 alone.  The signing public key is the 32-byte Ed25519 key; a
  signature is one 64-byte Ed25519 signature.
* ``ed25519+ml-dsa-65``: hybrid, Ed25519 *and* ML-DSA-65 (FIPS 204).  The signing public
  key is the concatenation ``ed25519_pub (32) || mldsa65_pub (1952)`` = 1984 bytes (both
  lengths are fixed, so the split is unambiguous); a message carries both signatures,
  ``[ed25519_sig (64), mldsa65_sig (3309)]``, and verifies only if *both* verify, so it
  stays unforgeable while either algorithm holds.

Where a signature must be one byte string (a checkpoint's ``signature`` field),
:meth:`Identity.sign` gives the signatures in suite order, concatenated (64 or
64 + 3309 bytes); a bundle's signature block is the CBOR list :meth:`Identity.sign_all`.

The key id is a hash over the suite and both public keys (for the hybrid suite, the whole
1984-byte signing key, so it binds both signature keys), so an id names exactly one set of
keys and the two suites never share an id.  ML-DSA comes from :mod:`bundle.pqsig`, loaded
only when a hybrid key is used.

The keystore is a small JSON file, mode 0600:

* the public part in clear (suite, public keys, key id) so a file can be identified
  without its passphrase;
* the secret seeds (Ed25519 32 bytes, X25519 32 bytes, and for the hybrid suite the
  32-byte ML-DSA-65 seed: FIPS 204 keys are derived from it) encrypted with
  XChaCha20-Poly1305 under a key derived from the passphrase with Argon2id
  (``nacl.pwhash``); the clear part, suite included, is the AEAD's associated data;
* a SHA-256 checksum over everything else.

A checksum mismatch or broken structure means the file was damaged or edited
(``KeystoreTamperedError``); an intact file whose AEAD tag fails means the passphrase is
wrong (``WrongPassphraseError``).  Someone who edits the file *and* recomputes the
checksum gets "wrong passphrase": the AEAD still refuses, so nothing is accepted either way.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nacl.bindings
import nacl.exceptions
import nacl.pwhash
import nacl.signing
import nacl.utils

from bundle import pqsig
from bundle.durable import atomic_write
from bundle.errors import (
    DecryptionError,
    FormatError,
    KeystoreError,
    KeystoreTamperedError,
    SignatureError,
    WrongPassphraseError,
)

SUITE_ED25519 = "ed25519"
SUITE_HYBRID = "ed25519+ml-dsa-65"
SUITES = (SUITE_ED25519, SUITE_HYBRID)
ED25519_PUBLIC_BYTES = 32
ED25519_SIGNATURE_BYTES = 64
# Per suite: the signature algorithms in signing order, and the signing public key's size.
SUITE_ALGORITHMS = {SUITE_ED25519: ("Ed25519",), SUITE_HYBRID: ("Ed25519", pqsig.ALGORITHM)}
SIGNING_KEY_BYTES = {
    SUITE_ED25519: ED25519_PUBLIC_BYTES,
    SUITE_HYBRID: ED25519_PUBLIC_BYTES + pqsig.PUBLIC_KEY_BYTES,
}
SIGNATURE_BYTES = {
    SUITE_ED25519: ED25519_SIGNATURE_BYTES,
    SUITE_HYBRID: ED25519_SIGNATURE_BYTES + pqsig.SIGNATURE_BYTES,
}

KEY_ID_BYTES = 16
_BOX_PROBE = bytes([9]) * 32  # any scalar: only a low-order point maps it to zero
_KEY_ID_DOMAIN = b"lltoken/key-id/v1\x00"
_KEYSTORE_FORMAT = "lltoken-keystore/v1"
_KDF = "argon2id13"
_NONCE_BYTES = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
# The 32-byte secret seeds (two, or three for the hybrid suite) plus the AEAD tag.
_SEALED_BYTES = {
    SUITE_ED25519: 64 + nacl.bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES,
    SUITE_HYBRID: 96 + nacl.bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES,
}

# Argon2id costs.  MODERATE (256 MiB, about a second here) protects a stolen stick well;
# tests and simulations pass the INTERACTIVE limits to stay fast.
OPSLIMIT_DEFAULT = nacl.pwhash.argon2id.OPSLIMIT_MODERATE
MEMLIMIT_DEFAULT = nacl.pwhash.argon2id.MEMLIMIT_MODERATE
OPSLIMIT_FAST = nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
MEMLIMIT_FAST = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE

PASSPHRASE_ENV = "LLTOKEN_PASSPHRASE"  # noqa: S105 (the variable's name, not a secret)


def key_id_of(suite: str, signing_key: bytes, box_key: bytes) -> bytes:
    """The key id: SHA-256 over a domain tag, the suite and both public keys, truncated."""
    digest = hashlib.sha256(
        _KEY_ID_DOMAIN
        + suite.encode()
        + b"\x00"
        + len(signing_key).to_bytes(4, "big")
        + signing_key
        + box_key
    ).digest()
    return digest[:KEY_ID_BYTES]


def fingerprint_of(key_id: bytes) -> str:
    """A short human fingerprint to compare out of band, e.g. ``MFRG-GZDF-MZTW-Q2LK``."""
    text = base64.b32encode(key_id[:10]).decode()
    return "-".join(text[i : i + 4] for i in range(0, 16, 4))


@dataclass(frozen=True)
class PublicIdentity:
    """The public half of an identity: what rosters carry and verifiers need."""

    suite: str
    signing_key: bytes
    box_key: bytes
    key_id: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.suite, str) or self.suite not in SUITES:
            raise FormatError("unknown signature suite", expected=SUITES, found=self.suite)
        # Any 1952 bytes decode as an ML-DSA-65 key (rho and packed t1 take every value),
        # so a length check is the whole structural check and needs no PQ library.
        sizes = (("signing_key", self.signing_key, SIGNING_KEY_BYTES[self.suite]),)
        for name, key, size in (*sizes, ("box_key", self.box_key, 32)):
            if not isinstance(key, bytes) or len(key) != size:
                raise FormatError(
                    f"public {name} is malformed",
                    expected=f"{size} bytes for {self.suite}",
                    found=f"{len(key)} bytes" if isinstance(key, bytes) else type(key).__name__,
                )
        try:
            # A low-order X25519 key makes every shared secret zero: libsodium refuses to
            # seal to it, so refuse it here, where untrusted keys (enrollments) arrive.
            nacl.bindings.crypto_scalarmult(_BOX_PROBE, self.box_key)
        except nacl.exceptions.CryptoError as e:
            raise FormatError(
                "public box_key is a low-order point",
                expected="an X25519 public key",
                found=self.box_key.hex(),
            ) from e
        object.__setattr__(self, "key_id", key_id_of(self.suite, self.signing_key, self.box_key))

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.key_id)

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The suite's signature algorithms, in the order their signatures appear."""
        return SUITE_ALGORITHMS[self.suite]

    @property
    def ed25519_key(self) -> bytes:
        return self.signing_key[:ED25519_PUBLIC_BYTES]

    @property
    def mldsa_key(self) -> bytes | None:
        """The ML-DSA-65 public key of a hybrid identity (None for Ed25519 alone)."""
        return self.signing_key[ED25519_PUBLIC_BYTES:] if self.suite == SUITE_HYBRID else None

    def verify_all(
        self, message: bytes, signatures: Sequence[bytes], *, where: str | None = None
    ) -> None:
        """Check one signature per algorithm of the suite over ``message``; all must verify.

        Raises:
            SignatureError: the wrong number of signatures, or one that does not verify
                (the message names which: "ML-DSA-65 signature (2 of 2) does not verify").
            SuiteUnavailableError: a hybrid suite and no ML-DSA library installed.
        """
        names = self.algorithms
        if len(signatures) != len(names):
            raise SignatureError(
                "wrong number of signatures for the signer's suite",
                expected=f"{len(names)} ({' + '.join(names)}) for suite {self.suite}",
                found=len(signatures),
                where=where,
            )
        # Check every signature, so the error names each one that fails.
        failed = []
        for index, (name, signature) in enumerate(zip(names, signatures, strict=True)):
            if name == "Ed25519":
                good = self._verify_ed25519(message, signature)
            else:
                key = self.mldsa_key
                good = key is not None and pqsig.verify(key, message, signature)
            if not good:
                position = f" ({index + 1} of {len(names)})" if len(names) > 1 else ""
                failed.append(f"{name} signature{position}")
        if failed:
            raise SignatureError(
                f"{' and '.join(failed)} {'do' if len(failed) > 1 else 'does'} not verify",
                expected=f"a signature by {self.fingerprint} ({self.suite})",
                found="a signature that fails",
                where=where,
            )

    def _verify_ed25519(self, message: bytes, signature: bytes) -> bool:
        try:
            nacl.signing.VerifyKey(self.ed25519_key).verify(message, signature)
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
            return False
        return True

    def verify(self, message: bytes, signature: bytes, *, where: str | None = None) -> None:
        """Check ``signature`` (the one-string form of :meth:`Identity.sign`) over
        ``message``.

        Raises:
            SignatureError: the signature has the wrong length for the suite, or does not
                verify under this key.
            SuiteUnavailableError: a hybrid suite and no ML-DSA library installed.
        """
        if self.suite == SUITE_ED25519:
            self.verify_all(message, (signature,), where=where)
            return
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES[self.suite]:
            raise SignatureError(
                f"{self.suite} signature has the wrong length",
                expected=f"{SIGNATURE_BYTES[self.suite]} bytes (Ed25519 64 || ML-DSA-65 3309)",
                found=f"{len(signature)} bytes" if isinstance(signature, bytes) else "none",
                where=where,
            )
        split = ED25519_SIGNATURE_BYTES
        self.verify_all(message, (signature[:split], signature[split:]), where=where)

    def seal(self, secret: bytes) -> bytes:
        """Encrypt a short secret (a content key) to this identity's X25519 key."""
        result: bytes = nacl.bindings.crypto_box_seal(secret, self.box_key)
        return result

    def to_dict(self) -> dict[str, Any]:
        return {"suite": self.suite, "sign": self.signing_key, "box": self.box_key}

    @classmethod
    def from_dict(cls, data: Any) -> PublicIdentity:
        """Build from the CBOR/JSON map form.

        Raises:
            FormatError: missing or malformed fields.
        """
        if not isinstance(data, dict) or set(data) != {"suite", "sign", "box"}:
            raise FormatError(
                "public identity is malformed",
                expected="a map with keys box, sign, suite",
                found=sorted(data) if isinstance(data, dict) else type(data).__name__,
            )
        return cls(data["suite"], data["sign"], data["box"])


class Identity:
    """A private identity: signs bundles and opens payloads sealed to it.

    Args:
        signing_seed: the 32-byte Ed25519 seed.
        box_secret: the 32-byte X25519 secret.
        suite: ``ed25519`` or ``ed25519+ml-dsa-65``.
        pq_seed: the 32-byte ML-DSA-65 seed, for (and only for) the hybrid suite.

    Raises:
        FormatError: malformed seeds, an unknown suite, or a seed the suite does not take.
        SuiteUnavailableError: the hybrid suite without the ML-DSA library.
    """

    def __init__(
        self,
        signing_seed: bytes,
        box_secret: bytes,
        suite: str = SUITE_ED25519,
        pq_seed: bytes | None = None,
    ):
        if len(signing_seed) != 32 or len(box_secret) != 32:
            raise FormatError(
                "secret keys are malformed",
                expected="32 bytes each",
                found=f"{len(signing_seed)} and {len(box_secret)} bytes",
            )
        if suite not in SUITES:
            raise FormatError("unknown signature suite", expected=SUITES, found=suite)
        if (suite == SUITE_HYBRID) != (pq_seed is not None):
            raise FormatError(
                "the ML-DSA-65 seed does not match the suite",
                expected=f"a seed for {SUITE_HYBRID} only",
                found=f"suite {suite} {'with' if pq_seed is not None else 'without'} a seed",
            )
        self._signing = nacl.signing.SigningKey(signing_seed)
        self._pq = pqsig.SigningKey(pq_seed) if pq_seed is not None else None
        self._box_secret = box_secret
        box_public = nacl.bindings.crypto_scalarmult_base(box_secret)
        signing_key = bytes(self._signing.verify_key)
        if self._pq is not None:
            signing_key += self._pq.public_key
        self.public = PublicIdentity(suite, signing_key, box_public)

    @classmethod
    def generate(cls, suite: str = SUITE_ED25519) -> Identity:
        """A fresh identity of ``suite``.

        Raises:
            FormatError: an unknown suite.
            SuiteUnavailableError: the hybrid suite without the ML-DSA library.
        """
        pq_seed = nacl.utils.random(pqsig.SEED_BYTES) if suite == SUITE_HYBRID else None
        return cls(nacl.utils.random(32), nacl.utils.random(32), suite, pq_seed)

    @property
    def key_id(self) -> bytes:
        return self.public.key_id

    @property
    def fingerprint(self) -> str:
        return self.public.fingerprint

    def sign_all(self, message: bytes) -> tuple[bytes, ...]:
        """One signature per algorithm of the suite, in order (a bundle's signature block)."""
        signature: bytes = self._signing.sign(message).signature
        if self._pq is None:
            return (signature,)
        return (signature, self._pq.sign(message))

    def sign(self, message: bytes) -> bytes:
        """The suite's signatures as one byte string: the Ed25519 signature, then (hybrid)
        the ML-DSA-65 one; each has a fixed length, so :meth:`PublicIdentity.verify` splits
        them without a length field."""
        return b"".join(self.sign_all(message))

    def unseal(self, sealed: bytes) -> bytes:
        """Open a secret sealed to this identity with :meth:`PublicIdentity.seal`.

        Raises:
            DecryptionError: the box was not sealed to this key, or was altered.
        """
        try:
            opened: bytes = nacl.bindings.crypto_box_seal_open(
                sealed, self.public.box_key, self._box_secret
            )
        except (nacl.exceptions.CryptoError, ValueError, TypeError) as e:
            raise DecryptionError(
                "sealed content key does not open",
                expected=f"a key sealed to {self.fingerprint}",
                found="a box that fails authentication",
            ) from e
        return opened

    def secret_seeds(self) -> tuple[bytes, ...]:
        """The raw secret material, for the keystore only: the Ed25519 seed, the X25519
        secret and, for the hybrid suite, the ML-DSA-65 seed."""
        if self._pq is None:
            return bytes(self._signing), self._box_secret
        return bytes(self._signing), self._box_secret, self._pq.seed


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _checksum(doc: dict[str, Any]) -> str:
    body = json.dumps({k: v for k, v in doc.items() if k != "checksum"}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def _derive(passphrase: bytes, salt: bytes, ops: int, mem: int) -> bytes:
    key: bytes = nacl.pwhash.argon2id.kdf(32, passphrase, salt, opslimit=ops, memlimit=mem)
    return key


def save_keystore(
    path: Path,
    identity: Identity,
    passphrase: str,
    *,
    opslimit: int = OPSLIMIT_DEFAULT,
    memlimit: int = MEMLIMIT_DEFAULT,
) -> None:
    """Write ``identity`` to ``path`` encrypted under ``passphrase``, mode 0600, atomically.

    Raises:
        KeystoreError: the file already exists (keys are never overwritten by accident).
    """
    if path.exists():
        raise KeystoreError("keystore already exists; refusing to overwrite it", where=str(path))
    if not passphrase:
        raise KeystoreError(
            "an empty passphrase would leave the keys unprotected",
            expected="a non-empty passphrase",
            found="an empty one",
        )
    salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
    nonce = nacl.utils.random(nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES)
    public = identity.public
    clear = {
        "format": _KEYSTORE_FORMAT,
        "suite": public.suite,
        "key_id": public.key_id.hex(),
        "sign_public": _b64(public.signing_key),
        "box_public": _b64(public.box_key),
        "kdf": {"alg": _KDF, "opslimit": opslimit, "memlimit": memlimit, "salt": _b64(salt)},
        "aead": {"alg": "xchacha20poly1305-ietf", "nonce": _b64(nonce)},
    }
    key = _derive(passphrase.encode(), salt, opslimit, memlimit)
    sealed = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        b"".join(identity.secret_seeds()), json.dumps(clear, sort_keys=True).encode(), nonce, key
    )
    doc: dict[str, Any] = dict(clear, ciphertext=_b64(sealed))
    doc["checksum"] = _checksum(doc)
    body = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    with atomic_write(path, mode=0o600, overwrite=False) as f:
        f.write(body)


def load_keystore(path: Path, passphrase: str) -> Identity:
    """Open the keystore at ``path``.

    Raises:
        KeystoreError: the file is missing or unreadable.
        KeystoreTamperedError: the file is damaged or was edited.
        WrongPassphraseError: the file is intact but the passphrase does not open it.
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise KeystoreError(f"cannot read keystore: {e.strerror}", where=str(path)) from e
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise TypeError("not an object")
        stored_sum = doc["checksum"]
        if doc.get("format") != _KEYSTORE_FORMAT:
            raise KeystoreTamperedError(
                "not a keystore file",
                expected=_KEYSTORE_FORMAT,
                found=doc.get("format"),
                where=str(path),
            )
        if not hmac.compare_digest(str(stored_sum), _checksum(doc)):
            raise KeystoreTamperedError(
                "keystore checksum mismatch: the file was damaged or edited; restore it "
                "from a backup",
                where=str(path),
            )
        clear = {k: v for k, v in doc.items() if k not in ("ciphertext", "checksum")}
        kdf, aead = doc["kdf"], doc["aead"]
        if kdf["alg"] != _KDF:
            raise KeystoreTamperedError(
                "unknown key derivation", expected=_KDF, found=kdf["alg"], where=str(path)
            )
        salt = base64.b64decode(kdf["salt"], validate=True)
        nonce = base64.b64decode(aead["nonce"], validate=True)
        ciphertext = base64.b64decode(doc["ciphertext"], validate=True)
        ops, mem = int(kdf["opslimit"]), int(kdf["memlimit"])
        sign_public = base64.b64decode(doc["sign_public"], validate=True)
        suite = doc["suite"]
        if not isinstance(suite, str) or suite not in SUITES:
            raise KeystoreTamperedError(
                "unknown signature suite", expected=SUITES, found=suite, where=str(path)
            )
        sizes = (len(salt), len(nonce), len(ciphertext))
        wanted = (nacl.pwhash.argon2id.SALTBYTES, _NONCE_BYTES, _SEALED_BYTES[suite])
        if sizes != wanted:
            raise KeystoreTamperedError(
                "keystore salt, nonce or ciphertext has the wrong length",
                expected=wanted,
                found=sizes,
                where=str(path),
            )
    except KeystoreTamperedError:
        raise
    except (ValueError, KeyError, TypeError, OverflowError) as e:
        raise KeystoreTamperedError(f"keystore structure is broken ({e})", where=str(path)) from e
    # Bounded by what we would ever write (SENSITIVE is the strongest preset), not by
    # libsodium's maximums: an edited file must not make us hash for hours or take TBs.
    if not (
        nacl.pwhash.argon2id.OPSLIMIT_MIN <= ops <= nacl.pwhash.argon2id.OPSLIMIT_SENSITIVE
        and nacl.pwhash.argon2id.MEMLIMIT_MIN <= mem <= nacl.pwhash.argon2id.MEMLIMIT_SENSITIVE
    ):
        raise KeystoreTamperedError(
            "Argon2id costs out of range",
            expected="at most the SENSITIVE preset",
            found=(ops, mem),
            where=str(path),
        )
    key = _derive(passphrase.encode(), salt, ops, mem)
    try:
        secret = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            ciphertext, json.dumps(clear, sort_keys=True).encode(), nonce, key
        )
    except nacl.exceptions.CryptoError as e:
        raise WrongPassphraseError(
            "wrong passphrase: the keystore is intact but does not open with it; check "
            f"the passphrase, --passphrase-file or ${PASSPHRASE_ENV}",
            where=str(path),
        ) from e
    # A hybrid keystore opened without the ML-DSA library raises SuiteUnavailableError
    # here, naming the extra to install.
    identity = Identity(secret[:32], secret[32:64], suite, secret[64:96] or None)
    if identity.public.signing_key != sign_public:
        raise KeystoreTamperedError(
            "secret key does not match the stored public key", where=str(path)
        )
    return identity


def read_passphrase(
    passphrase_file: Path | None = None, *, confirm: bool = False, prompt: str = "Passphrase"
) -> str:
    """The passphrase from ``--passphrase-file``, else ``$LLTOKEN_PASSPHRASE``, else a prompt.

    Raises:
        KeystoreError: the file cannot be read, or it is empty, or there is no terminal.
    """
    if passphrase_file is not None:
        try:
            text = passphrase_file.read_text().rstrip("\r\n")
        except OSError as e:
            raise KeystoreError(
                f"cannot read passphrase file: {e.strerror}", where=str(passphrase_file)
            ) from e
        if not text:
            raise KeystoreError("passphrase file is empty", where=str(passphrase_file))
        return text
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env
    try:
        first = getpass.getpass(f"{prompt}: ")
        if confirm and getpass.getpass(f"{prompt} (again): ") != first:
            raise KeystoreError("the two passphrases differ")
    except EOFError as e:
        raise KeystoreError(
            f"no passphrase: no terminal to prompt on; use --passphrase-file or ${PASSPHRASE_ENV}"
        ) from e
    return first


__all__ = [
    "KEY_ID_BYTES",
    "SIGNATURE_BYTES",
    "SIGNING_KEY_BYTES",
    "SUITES",
    "SUITE_ALGORITHMS",
    "SUITE_ED25519",
    "SUITE_HYBRID",
    "Identity",
    "PublicIdentity",
    "fingerprint_of",
    "key_id_of",
    "load_keystore",
    "read_passphrase",
    "save_keystore",
]
