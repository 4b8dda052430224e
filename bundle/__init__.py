"""Wire format and trust: keys, deterministic CBOR, arrays, compression, the signed
(optionally encrypted) bundle envelope, payload kinds, Merkle proofs and errors.

Imports nothing from ``spool``, ``agent`` or ``coordinator``.
"""

from bundle.arrays import array_hash, model_hash
from bundle.envelope import (
    Header,
    OpenedBundle,
    PackedBundle,
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
    KeystoreError,
    KeystoreTamperedError,
    LLTokenError,
    ProofError,
    ReplayError,
    SchemaError,
    SignatureError,
    SizeError,
    SuiteUnavailableError,
    UnknownSenderError,
    WrongPassphraseError,
)
from bundle.keys import (
    SUITE_ED25519,
    SUITE_HYBRID,
    SUITES,
    Identity,
    PublicIdentity,
    load_keystore,
    read_passphrase,
    save_keystore,
)

__all__ = [
    "SUITES",
    "SUITE_ED25519",
    "SUITE_HYBRID",
    "DecryptionError",
    "FormatError",
    "Header",
    "Identity",
    "IntegrityError",
    "KeystoreError",
    "KeystoreTamperedError",
    "LLTokenError",
    "OpenedBundle",
    "PackedBundle",
    "ProofError",
    "PublicIdentity",
    "ReplayError",
    "SchemaError",
    "SignatureError",
    "SizeError",
    "SuiteUnavailableError",
    "UnknownSenderError",
    "WrongPassphraseError",
    "array_hash",
    "bundle_name",
    "check_bundle",
    "load_keystore",
    "model_hash",
    "open_bundle",
    "pack_bundle",
    "pack_bytes",
    "parse_name",
    "read_passphrase",
    "save_keystore",
]
