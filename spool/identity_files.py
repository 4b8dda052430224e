"""A home's identity on disk: ``keystore.json`` (encrypted, 0600) and ``identity.pub.json``.

The public file lets ``status``, ``ledger verify`` and auditors work without the
passphrase; the keystore is opened only by commands that sign.
"""

from __future__ import annotations

import json
from pathlib import Path

from bundle.durable import write_bytes_atomic
from bundle.errors import KeystoreError
from bundle.keys import (
    MEMLIMIT_DEFAULT,
    MEMLIMIT_FAST,
    OPSLIMIT_DEFAULT,
    OPSLIMIT_FAST,
    SUITE_ED25519,
    Identity,
    PublicIdentity,
    load_keystore,
    save_keystore,
)

KEYSTORE = "keystore.json"
PUBLIC = "identity.pub.json"


def public_to_json(public: PublicIdentity) -> dict[str, str]:
    return {
        "suite": public.suite,
        "sign": public.signing_key.hex(),
        "box": public.box_key.hex(),
        "key_id": public.key_id.hex(),
        "fingerprint": public.fingerprint,
    }


def public_from_json(data: dict[str, str], where: str = "") -> PublicIdentity:
    """Raises: KeystoreError if the file's key id does not match its keys."""
    public = PublicIdentity(data["suite"], bytes.fromhex(data["sign"]), bytes.fromhex(data["box"]))
    if "key_id" in data and data["key_id"] != public.key_id.hex():
        raise KeystoreError(
            "public identity file's key id does not match its keys",
            expected=public.key_id.hex(),
            found=data["key_id"],
            where=where,
        )
    return public


def create_identity(
    home: Path, passphrase: str, *, fast_kdf: bool = False, suite: str = SUITE_ED25519
) -> Identity:
    """Generate a new identity of ``suite`` for ``home``; refuses to replace an existing one.

    Raises:
        KeystoreError: ``home`` already has a keystore, or the passphrase is empty.
        FormatError: an unknown suite.
        SuiteUnavailableError: the hybrid suite without the optional ML-DSA library.
    """
    identity = Identity.generate(suite)
    ops, mem = (OPSLIMIT_FAST, MEMLIMIT_FAST) if fast_kdf else (OPSLIMIT_DEFAULT, MEMLIMIT_DEFAULT)
    save_keystore(home / KEYSTORE, identity, passphrase, opslimit=ops, memlimit=mem)
    write_bytes_atomic(
        home / PUBLIC, (json.dumps(public_to_json(identity.public), indent=2) + "\n").encode()
    )
    return identity


def load_identity(home: Path, passphrase: str) -> Identity:
    return load_keystore(home / KEYSTORE, passphrase)


def load_public(home: Path) -> PublicIdentity:
    """Raises: KeystoreError if the home has no identity yet."""
    path = home / PUBLIC
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise KeystoreError(
            "home has no readable public identity; run `init` first", where=str(path)
        ) from e
    return public_from_json(data, str(path))


__all__ = ["create_identity", "load_identity", "load_public", "public_from_json", "public_to_json"]
