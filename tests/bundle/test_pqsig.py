"""Tests for bundle.pqsig: NIST ACVP known answers for ML-DSA-65, the binding's contract,
and the typed error when the optional post-quantum support is missing.

The vectors and what each covers (and what this library cannot run: deterministic sigGen,
pre-hash mode) are described in tests/vectors/ml-dsa/README.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cryptography.hazmat.primitives.asymmetric as asymmetric
import pytest

from bundle import pqsig
from bundle.errors import FormatError, SignatureError, SuiteUnavailableError

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "ml-dsa"


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text())
    assert data["parameterSet"] == "ML-DSA-65"
    return data


KEYGEN = _load("keyGen-ML-DSA-65.json")
SIGVER = _load("sigVer-ML-DSA-65.json")
KEYGEN_CASES = [t for g in KEYGEN["testGroups"] for t in g["tests"]]
SIGVER_CASES = [(g["pk"], t) for g in SIGVER["testGroups"] for t in g["tests"]]


# ----------------------------------------------------------------------------- KATs


def test_the_subset_is_what_the_readme_says() -> None:
    """A guard against a vector file shrinking (or losing its failures) unnoticed."""
    assert len(KEYGEN_CASES) == 6
    outcomes = [t["testPassed"] for _, t in SIGVER_CASES]
    assert (outcomes.count(True), outcomes.count(False)) == (3, 8)
    reasons = {t["reason"] for _, t in SIGVER_CASES if not t["testPassed"]}
    assert reasons == {"too many hints", "modify message", "modify signature", "z too large"}


@pytest.mark.parametrize("case", KEYGEN_CASES, ids=lambda t: f"tcId{t['tcId']}")
def test_acvp_keygen_from_seed(case: dict[str, Any]) -> None:
    public = pqsig.public_key_from_seed(bytes.fromhex(case["seed"]))
    assert len(public) == pqsig.PUBLIC_KEY_BYTES
    assert public.hex().upper() == case["pk"]


@pytest.mark.parametrize(
    ("pk", "case"), SIGVER_CASES, ids=lambda v: f"tcId{v['tcId']}" if isinstance(v, dict) else ""
)
def test_acvp_sigver_internal_interface(pk: str, case: dict[str, Any]) -> None:
    result = pqsig.verify_internal(
        bytes.fromhex(pk), bytes.fromhex(case["message"]), bytes.fromhex(case["signature"])
    )
    assert result is case["testPassed"], case["reason"]


def test_acvp_passing_cases_fail_through_the_external_interface() -> None:
    """ACVP v1.1.0.35's messages are M' itself: read as an external-interface message they
    get the 0x00 || len(ctx) || ctx prefix and must no longer verify."""
    for pk, case in SIGVER_CASES:
        if case["testPassed"]:
            message, signature = bytes.fromhex(case["message"]), bytes.fromhex(case["signature"])
            assert not pqsig.verify(bytes.fromhex(pk), message, signature)


# ----------------------------------------------------------------------------- our interface


SEED = bytes(range(32))


def test_pure_signatures_are_fips204_external_interface_with_empty_context() -> None:
    """What we sign with (pure ML-DSA, empty context) is Verify_internal over
    M' = 0x00 || 0x00 || M (FIPS 204 Alg. 3), the primitive the sigVer KATs pin down."""
    key = pqsig.SigningKey(SEED)
    message = b"lltoken/bundle/v1\x00" + bytes(32)
    signature = key.sign(message)
    assert len(signature) == pqsig.SIGNATURE_BYTES
    assert pqsig.verify(key.public_key, message, signature)
    assert pqsig.verify_internal(key.public_key, b"\x00\x00" + message, signature)
    assert pqsig.external_message(message) == b"\x00\x00" + message
    assert not pqsig.verify_internal(key.public_key, message, signature)
    # A context is domain separation: our signatures are for the empty one only.
    assert not pqsig.verify(key.public_key, message, signature, b"lltoken")
    assert pqsig.external_message(message, b"ab") == b"\x00\x02ab" + message


def test_signing_is_hedged_and_keys_are_deterministic() -> None:
    key, again = pqsig.SigningKey(SEED), pqsig.SigningKey(SEED)
    assert key.public_key == again.public_key
    assert key.seed == SEED
    first, second = key.sign(b"m"), key.sign(b"m")
    assert first != second  # fresh randomness per signature (FIPS 204 hedged default)
    assert pqsig.verify(key.public_key, b"m", first)
    assert pqsig.verify(key.public_key, b"m", second)


def test_bad_signatures_return_false() -> None:
    key = pqsig.SigningKey(SEED)
    signature = key.sign(b"m")
    other = pqsig.SigningKey(bytes(32))
    for bad in (
        b"",
        signature[:-1],
        signature + b"\x00",
        bytes([signature[0] ^ 1]) + signature[1:],
        signature[:-1] + bytes([signature[-1] ^ 0x80]),
        bytes(pqsig.SIGNATURE_BYTES),
    ):
        assert not pqsig.verify(key.public_key, b"m", bad)
    assert not pqsig.verify(key.public_key, b"M", signature)
    assert not pqsig.verify(other.public_key, b"m", signature)


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_malformed_seeds_are_refused(size: int) -> None:
    with pytest.raises(FormatError):
        pqsig.SigningKey(bytes(size))


@pytest.mark.parametrize("size", [0, 32, 1951, 1953])
def test_malformed_public_keys_are_refused(size: int) -> None:
    with pytest.raises(FormatError):
        pqsig.verify(bytes(size), b"m", bytes(pqsig.SIGNATURE_BYTES))
    with pytest.raises(FormatError):
        pqsig.verify_internal(bytes(size), b"m", bytes(pqsig.SIGNATURE_BYTES))


def test_context_over_255_bytes_is_refused() -> None:
    key = pqsig.SigningKey(SEED)
    with pytest.raises(FormatError):
        pqsig.verify(key.public_key, b"m", key.sign(b"m"), bytes(256))
    with pytest.raises(FormatError):
        pqsig.external_message(b"m", bytes(256))


# ----------------------------------------------------------------------------- no extra


@pytest.fixture
def without_mldsa(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make ``cryptography``'s ML-DSA module unimportable, as on an install without the
    [pq] extra (or with a cryptography built against an OpenSSL lacking FIPS 204)."""
    name = "cryptography.hazmat.primitives.asymmetric.mldsa"
    monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]
    monkeypatch.delattr(asymmetric, "mldsa")
    pqsig._binding.cache_clear()
    try:
        yield
    finally:
        pqsig._binding.cache_clear()


def test_missing_extra_gives_a_typed_error_naming_the_install(without_mldsa: None) -> None:
    assert not pqsig.available()
    for attempt in (
        pqsig.require,
        lambda: pqsig.SigningKey(SEED),
        lambda: pqsig.verify(bytes(pqsig.PUBLIC_KEY_BYTES), b"m", b"s"),
    ):
        with pytest.raises(SuiteUnavailableError) as caught:
            attempt()
        assert "pip install 'lltoken-offline[pq]'" in str(caught.value)
        assert isinstance(caught.value, SignatureError)
        assert caught.value.exit_code == 19


def test_the_binding_is_available_here() -> None:
    """CI installs the [pq] extra (through [dev] and [test]): the KATs above really ran."""
    assert pqsig.available()


def test_the_benchmark_runs_and_reports_both_suites() -> None:
    """benchmarks/bench_pq.py is a script, not a test; this keeps it from rotting."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_pq.py"
    done = subprocess.run(
        [sys.executable, str(script), "--iterations", "2", "--repeat", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report["results"]) == {"ed25519", "ed25519+ml-dsa-65"}
    hybrid = report["results"]["ed25519+ml-dsa-65"]
    assert hybrid["checkpoint_signature_bytes"] == 64 + pqsig.SIGNATURE_BYTES
    assert hybrid["public_signing_key_bytes"] == 32 + pqsig.PUBLIC_KEY_BYTES
