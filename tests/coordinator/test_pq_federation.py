"""A post-quantum federation end to end: ``simulate --pq``'s run verifies, every identity and
signature uses the hybrid Ed25519 + ML-DSA-65 suite, tampering with either signature (in a
bundle, in the proof's checkpoint) is refused by name, an Ed25519-only agent cannot enroll,
and without the [pq] extra the commands stop with a typed error that says what to install."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cryptography.hazmat.primitives.asymmetric as asymmetric
import pytest
from click.testing import CliRunner

from agent.home import Agent
from bundle import cbor, pqsig
from bundle.envelope import open_bundle, open_bundle_bytes, pack_bytes
from bundle.errors import SchemaError, SignatureError
from bundle.keys import SUITE_ED25519, SUITE_HYBRID
from bundle.payloads import EnrollRequest
from coordinator.audit import verify_home
from coordinator.cli import cli
from coordinator.home import Coordinator
from coordinator.simulate import PASSPHRASE, Simulation
from spool.identity_files import load_public, public_to_json

REPO = Path(__file__).resolve().parents[2]


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def pq_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("pq") / "sim"
    result = Simulation(base, 3, echo=quiet, pq=True, local_epochs=1).run(2)
    assert result.transfer is not None
    assert result.transfer["status"] == "confirmed"
    return base


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def test_every_identity_and_signature_is_hybrid(pq_run: Path) -> None:
    homes = [pq_run / "coordinator", *sorted((pq_run / "agents").iterdir())]
    assert len(homes) == 4
    for home in homes:
        public = load_public(home)
        assert public.suite == SUITE_HYBRID
        assert len(public.signing_key) == 1984
    archive = sorted((pq_run / "coordinator" / "spool" / "archive").glob("*.llb"))
    kinds = {path.name.split(".")[0] for path in archive}
    assert {"enroll-request", "model-update", "transaction", "receipt"} <= kinds
    for path in archive:
        data = path.read_bytes()
        (header_len,) = struct.unpack(">I", data[5:9])
        assert cbor.decode(data[9 : 9 + header_len])["suite"] == SUITE_HYBRID
        (sig_len,) = struct.unpack(">H", data[9 + header_len : 11 + header_len])
        block = cbor.decode(data[11 + header_len : 11 + header_len + sig_len])
        assert [len(s) for s in block] == [64, pqsig.SIGNATURE_BYTES]
    proof = json.loads((pq_run / "tokenization_proof.json").read_text())
    assert proof["coordinator"]["suite"] == SUITE_HYBRID
    assert len(bytes.fromhex(proof["checkpoint"]["signature"])) == 64 + pqsig.SIGNATURE_BYTES


def test_the_proof_verifies_from_the_command_line(pq_run: Path) -> None:
    cli_args = [sys.executable, "-m", "coordinator", "ledger", "verify",
                "--home", str(pq_run / "coordinator"),
                "--proof", str(pq_run / "tokenization_proof.json")]  # fmt: skip
    done = subprocess.run(cli_args, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ledger intact" in done.stdout
    assert "matches the ledger" in done.stdout


@pytest.mark.parametrize(
    ("index", "which"),
    [(7, "Ed25519 signature (1 of 2)"), (64 + 500, "ML-DSA-65 signature (2 of 2)")],
)
def test_a_tampered_proof_checkpoint_names_the_signature(
    pq_run: Path, tmp_path: Path, index: int, which: str
) -> None:
    proof = json.loads((pq_run / "tokenization_proof.json").read_text())
    signature = bytes.fromhex(proof["checkpoint"]["signature"])
    proof["checkpoint"]["signature"] = _flip(signature, index).hex()
    forged = tmp_path / "proof.json"
    forged.write_text(json.dumps(proof))
    with pytest.raises(SignatureError) as caught:
        verify_home(pq_run / "coordinator", forged)
    assert which in str(caught.value)
    assert "not signed by the coordinator" in str(caught.value)


@pytest.mark.parametrize("half", ["Ed25519", "ML-DSA-65"])
def test_a_tampered_update_bundle_is_refused_by_name(
    pq_run: Path, tmp_path: Path, half: str
) -> None:
    home = tmp_path / "coordinator"
    shutil.copytree(pq_run / "coordinator", home)
    update = sorted((home / "spool" / "archive").glob("model-update.*.llb"))[0]
    data = update.read_bytes()
    (header_len,) = struct.unpack(">I", data[5:9])
    at = 11 + header_len
    # In the CBOR array [bstr(64), bstr(3309)]: the Ed25519 bytes start after 0x82 0x58 0x40,
    # the ML-DSA bytes after a further 64 bytes and 0x59 0x0c 0xed.
    offset = at + 3 + 10 if half == "Ed25519" else at + 3 + 64 + 3 + 1000
    coord = Coordinator.open(home, PASSPHRASE)
    try:
        open_bundle(update, coord.keyring, identity=coord.identity, parents=coord.parents())
        with pytest.raises(SignatureError, match=f"{half} signature \\(\\d of 2\\) does not"):
            open_bundle_bytes(_flip(data, offset), coord.keyring, identity=coord.identity)
    finally:
        coord.close()


def test_an_ed25519_agent_cannot_join_a_pq_federation(tmp_path: Path) -> None:
    coord = Coordinator.init(tmp_path / "c", "pq", PASSPHRASE, fast_kdf=True, pq=True)
    try:
        assert coord.suite == SUITE_HYBRID
        # No coordinator key known: the agent gets an Ed25519 identity.
        agent = Agent.init(
            tmp_path / "a", "a0", PASSPHRASE, federation=coord.config.federation_id, fast_kdf=True
        )
        assert agent.identity.public.suite == SUITE_ED25519
        agent.close()
        request = EnrollRequest("a0", agent.identity.public, {})
        _, data = pack_bytes(request, agent.identity, federation=coord.config.federation_id)
        opened = open_bundle_bytes(data, coord.keyring)  # self-signed: the signature is fine
        with pytest.raises(SchemaError, match="another signature suite") as caught:
            coord.handle(opened)
        assert (caught.value.expected, caught.value.found) == (SUITE_HYBRID, SUITE_ED25519)
        # From the invite, the agent takes the coordinator's suite and is welcome.
        invite = {"federation_name": "pq", "federation_id": coord.config.federation_id.hex(),
                  "coordinator": public_to_json(coord.identity.public)}  # fmt: skip
        good = Agent.init(tmp_path / "b", "b0", PASSPHRASE, invite=invite, fast_kdf=True)
        assert good.identity.public.suite == SUITE_HYBRID
        good.close()
    finally:
        coord.close()


def test_cli_init_pq_reports_the_suite(tmp_path: Path) -> None:
    secret = tmp_path / "pass"
    secret.write_text("a long test passphrase\n")
    home = tmp_path / "fed"
    result = CliRunner().invoke(
        cli,
        ["init", "--home", str(home), "--passphrase-file", str(secret), "--name", "pq",
         "--pq", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["suite"] == SUITE_HYBRID
    assert load_public(home).suite == SUITE_HYBRID


# ----------------------------------------------------------------------------- no extra


@pytest.fixture
def without_mldsa(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """As on an install without the [pq] extra: ML-DSA cannot be imported."""
    monkeypatch.setitem(
        sys.modules,
        "cryptography.hazmat.primitives.asymmetric.mldsa",
        None,  # type: ignore[arg-type]
    )
    monkeypatch.delattr(asymmetric, "mldsa")
    pqsig._binding.cache_clear()
    try:
        yield
    finally:
        pqsig._binding.cache_clear()


def test_pq_commands_without_the_extra_fail_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    without_mldsa: None,
) -> None:  # fmt: skip
    from coordinator.cli import main

    monkeypatch.setenv("LLTOKEN_PASSPHRASE", "a long test passphrase")
    for argv in (
        ["init", "--home", str(tmp_path / "fed"), "--name", "pq", "--pq"],
        ["simulate", "--pq", "--agents", "2", "--rounds", "1", "--base-path", str(tmp_path / "s")],
    ):
        monkeypatch.setattr(sys, "argv", ["lltoken-coordinator", *argv])
        with pytest.raises(SystemExit) as exited:
            main()
        assert exited.value.code == 19
        err = capsys.readouterr().err
        assert "pip install 'lltoken-offline[pq]'" in err
        assert err.startswith("error: ")
    # Nothing was created: the check runs before any file is written.
    assert not (tmp_path / "fed").exists()
    assert not (tmp_path / "s").exists()
