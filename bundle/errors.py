"""One error family for the whole project.

Every failure that untrusted input, a wrong passphrase or a broken file can cause is an
``LLTokenError`` subclass with its own exit code, so the CLIs catch exactly this family and
let real bugs show as tracebacks.  Messages say what was expected, what was found, and
where (file, byte offset, field, entry number), e.g.::

    bundle header field 'round': expected an unsigned integer, found text [inbox/x.llb]
"""

from __future__ import annotations


class LLTokenError(Exception):
    """Root of the project's error family.

    Args:
        message: what went wrong, in words an operator can act on.
        expected: what the check wanted (rendered into the message).
        found: what it got instead.
        where: the location: a path, an offset, a field name, an entry number.
    """

    exit_code: int = 1

    def __init__(
        self,
        message: str,
        *,
        expected: object | None = None,
        found: object | None = None,
        where: str | None = None,
    ) -> None:
        self.reason = message
        self.expected = expected
        self.found = found
        self.where = where
        super().__init__(self._render())

    def _render(self) -> str:
        text = self.reason
        if self.expected is not None or self.found is not None:
            text += f": expected {self.expected}, found {self.found}"
        if self.where:
            text += f" [{self.where}]"
        return text

    def at(self, where: str) -> LLTokenError:
        """Return this error with ``where`` prefixed by an outer location."""
        self.where = f"{where}: {self.where}" if self.where else where
        self.args = (self._render(),)
        return self

    def to_dict(self) -> dict[str, object]:
        """A machine-readable form, used for quarantine reasons and ``--json`` output."""
        return {
            "error": type(self).__name__,
            "exit_code": self.exit_code,
            "reason": self.reason,
            "expected": None if self.expected is None else str(self.expected),
            "found": None if self.found is None else str(self.found),
            "where": self.where,
        }


class FormatError(LLTokenError):
    """Bytes that do not follow the format: bad magic, version, CBOR or structure."""

    exit_code = 10


class SizeError(LLTokenError):
    """A length, count, depth or decompressed size over its cap."""

    exit_code = 11


class SignatureError(LLTokenError):
    """A signature that does not verify, or a suite we cannot check."""

    exit_code = 12


class SuiteUnavailableError(SignatureError):
    """A signature suite this installation cannot compute: the post-quantum suite without
    its optional dependency (``pip install 'lltoken-offline[pq]'``)."""

    exit_code = 19


class UnknownSenderError(LLTokenError):
    """A bundle signed by a key that is not enrolled, or is revoked."""

    exit_code = 13


class ReplayError(LLTokenError):
    """A bundle seen before, out of sequence, for a closed round, or expired."""

    exit_code = 14


class DecryptionError(LLTokenError):
    """A payload we cannot decrypt: not addressed to us, or its stream was altered."""

    exit_code = 15


class SchemaError(LLTokenError):
    """A well-formed payload whose content breaks the rules of its kind."""

    exit_code = 16


class IntegrityError(LLTokenError):
    """A content hash that does not match (file name, payload hash, model hash)."""

    exit_code = 17


class AddressError(LLTokenError):
    """A valid bundle that is not for us: another federation or another recipient."""

    exit_code = 18


class KeystoreError(LLTokenError):
    """A keystore that cannot be opened."""

    exit_code = 20


class WrongPassphraseError(KeystoreError):
    """The passphrase does not open the keystore (the file itself is intact)."""

    exit_code = 21


class KeystoreTamperedError(KeystoreError):
    """The keystore file is damaged or was altered: its structure or key check fails."""

    exit_code = 22


class ProofError(LLTokenError):
    """A Merkle inclusion or consistency proof that does not verify."""

    exit_code = 30


class EquivocationError(ProofError):
    """The coordinator signed two histories: two different checkpoints of one size, or a
    checkpoint that does not extend an earlier one.  Evidence is saved; never ignore it."""

    exit_code = 31


__all__ = [
    "AddressError",
    "DecryptionError",
    "EquivocationError",
    "FormatError",
    "IntegrityError",
    "KeystoreError",
    "KeystoreTamperedError",
    "LLTokenError",
    "ProofError",
    "ReplayError",
    "SchemaError",
    "SignatureError",
    "SizeError",
    "SuiteUnavailableError",
    "UnknownSenderError",
    "WrongPassphraseError",
]
