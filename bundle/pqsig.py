"""ML-DSA-65 (FIPS 204), the post-quantum half of the ``ed25519+ml-dsa-65`` suite.

This is the one module that touches the ML-DSA binding; everything else calls these
functions.  The binding is pyca/cryptography's ``mldsa`` module (cryptography >= 50, whose
wheels bundle OpenSSL 4 with ML-DSA), imported only when a hybrid key is first used, so an
Ed25519-only federation never needs it.  When it is missing, or was built against an
OpenSSL without ML-DSA, every entry point raises :class:`SuiteUnavailableError` telling
the operator to ``pip install 'lltoken-offline[pq]'``.

What we use of FIPS 204, and how:

* keys come from a 32-byte seed (FIPS 204 ``ML-DSA.KeyGen_internal(xi)``), so the keystore
  holds 32 secret bytes per algorithm, as it does for Ed25519;
* signatures are "pure" ML-DSA (no pre-hash) through the external interface with an empty
  context string: the message we sign already carries our own domain tag
  (``lltoken/bundle/v1``, ``lltoken/checkpoint/v1``), so a context adds nothing;
* signing is hedged (fresh randomness per signature, FIPS 204's default), so two signatures
  of one message differ; verification is deterministic.

:func:`verify_internal` exists for the known-answer tests: NIST's ACVP vectors exercise
``ML-DSA.Verify_internal`` on a raw message ``M'``, which the library reaches through its
"external mu" entry point (``mu = SHAKE256(SHAKE256(pk, 64) || M', 64)``, FIPS 204 Alg. 8).
"""

from __future__ import annotations

import functools
import hashlib
from types import ModuleType
from typing import NamedTuple

from bundle.errors import FormatError, SuiteUnavailableError

ALGORITHM = "ML-DSA-65"
SEED_BYTES = 32
PUBLIC_KEY_BYTES = 1952
SIGNATURE_BYTES = 3309
MAX_CONTEXT_BYTES = 255
INSTALL_HINT = "pip install 'lltoken-offline[pq]'"


class _Binding(NamedTuple):
    mldsa: ModuleType
    invalid_signature: type[Exception]


@functools.cache
def _binding() -> _Binding:
    """The library's ML-DSA module and its bad-signature exception, imported on first use.

    Raises:
        SuiteUnavailableError: cryptography is missing, too old, or lacks ML-DSA.
    """
    # Imported here, not at the top: the extra is optional and an Ed25519 federation
    # must not pay for (or depend on) it.
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.backends.openssl.backend import backend
        from cryptography.hazmat.primitives.asymmetric import mldsa
    except ImportError as e:
        raise SuiteUnavailableError(
            f"{ALGORITHM} signatures need the optional post-quantum support; install it "
            f"with: {INSTALL_HINT}",
            expected="cryptography >= 50 with ML-DSA",
            found=f"import failed ({e})",
        ) from e
    if not hasattr(mldsa, "MLDSA65PrivateKey") or not backend.mldsa_supported():
        raise SuiteUnavailableError(
            f"{ALGORITHM} signatures need the optional post-quantum support; install it "
            f"with: {INSTALL_HINT}",
            expected="cryptography >= 50 with ML-DSA",
            found=f"cryptography without ML-DSA ({backend.openssl_version_text()})",
        )
    return _Binding(mldsa, InvalidSignature)


def require() -> None:
    """Check up front that ML-DSA-65 can be used, before anything is written.

    Raises:
        SuiteUnavailableError: it cannot; the message says what to install.
    """
    _binding()


def available() -> bool:
    """Whether ML-DSA-65 can be used here (``doctor`` and skip-free test selection)."""
    try:
        _binding()
    except SuiteUnavailableError:
        return False
    return True


def _check_length(value: bytes, size: int, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise FormatError(
            f"{ALGORITHM} {what} is malformed",
            expected=f"{size} bytes",
            found=f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__,
        )


class SigningKey:
    """An ML-DSA-65 private key, derived from its 32-byte seed."""

    def __init__(self, seed: bytes) -> None:
        """Raises: FormatError (not 32 bytes), SuiteUnavailableError (no binding)."""
        _check_length(seed, SEED_BYTES, "seed")
        self._key = _binding().mldsa.MLDSA65PrivateKey.from_seed_bytes(seed)
        self._seed = seed
        self.public_key: bytes = self._key.public_key().public_bytes_raw()

    @property
    def seed(self) -> bytes:
        return self._seed

    def sign(self, message: bytes) -> bytes:
        """A hedged, pure ML-DSA-65 signature over ``message`` with an empty context."""
        signature: bytes = self._key.sign(message)
        return signature


def public_key_from_seed(seed: bytes) -> bytes:
    """FIPS 204 ``ML-DSA.KeyGen_internal(seed)``'s public key (for the keyGen KATs)."""
    return SigningKey(seed).public_key


def verify(public_key: bytes, message: bytes, signature: bytes, context: bytes = b"") -> bool:
    """FIPS 204 ``ML-DSA.Verify(pk, M, sigma, ctx)`` (pure).  False for any bad signature,
    including one of the wrong length.

    Raises:
        FormatError: ``public_key`` is not 1952 bytes, or ``context`` is over 255 bytes.
        SuiteUnavailableError: no binding.
    """
    _check_length(public_key, PUBLIC_KEY_BYTES, "public key")
    if len(context) > MAX_CONTEXT_BYTES:
        raise FormatError(
            f"{ALGORITHM} context string too long",
            expected=f"<= {MAX_CONTEXT_BYTES} bytes",
            found=len(context),
        )
    binding = _binding()
    key = binding.mldsa.MLDSA65PublicKey.from_public_bytes(public_key)
    try:
        key.verify(signature, message, context or None)
    except binding.invalid_signature:
        return False
    return True


def verify_internal(public_key: bytes, message_prime: bytes, signature: bytes) -> bool:
    """FIPS 204 ``ML-DSA.Verify_internal(pk, M', sigma)``: no context/domain prefix is
    added to ``message_prime``.  Only the ACVP known-answer tests need this.

    Raises:
        FormatError: ``public_key`` is not 1952 bytes.
        SuiteUnavailableError: no binding.
    """
    _check_length(public_key, PUBLIC_KEY_BYTES, "public key")
    binding = _binding()
    tr = hashlib.shake_256(public_key).digest(64)
    mu = hashlib.shake_256(tr + message_prime).digest(64)
    key = binding.mldsa.MLDSA65PublicKey.from_public_bytes(public_key)
    try:
        key.verify_mu(signature, mu)
    except binding.invalid_signature:
        return False
    return True


def external_message(message: bytes, context: bytes = b"") -> bytes:
    """``M'`` of FIPS 204 Alg. 2/3 for pure signing: ``0x00 || len(ctx) || ctx || M``."""
    if len(context) > MAX_CONTEXT_BYTES:
        raise FormatError(
            f"{ALGORITHM} context string too long",
            expected=f"<= {MAX_CONTEXT_BYTES} bytes",
            found=len(context),
        )
    return b"\x00" + bytes((len(context),)) + context + message


__all__ = [
    "ALGORITHM",
    "INSTALL_HINT",
    "PUBLIC_KEY_BYTES",
    "SEED_BYTES",
    "SIGNATURE_BYTES",
    "SigningKey",
    "available",
    "external_message",
    "public_key_from_seed",
    "require",
    "verify",
    "verify_internal",
]
