"""Home-level audit commands: export and verify the proof file, check the ledger store.

Thin wrappers that find a coordinator home's ledger and public key, so an outside auditor
needs only a copy of ``<home>/ledger/`` and ``<home>/identity.pub.json`` and no passphrase.
"""

from __future__ import annotations

from pathlib import Path

from bundle.ledger import AuditReport
from coordinator.ledger_proof import ProofExport, export_proof, verify_ledger
from coordinator.ledger_store import CheckReport, LedgerStore, check_ledger
from spool.identity_files import load_public


def export_home(home: Path, out: Path, *, store: LedgerStore | None = None) -> ProofExport:
    """Write ``tokenization_proof.json`` for the home's ledger (read-only if not given)."""
    public = load_public(home)
    if store is not None:
        return export_proof(store, public, out)
    with LedgerStore.open(home / "ledger", readonly=True) as opened:
        return export_proof(opened, public, out)


def verify_home(
    home: Path, proof: Path | None = None, *, store: LedgerStore | None = None
) -> AuditReport:
    """Audit the home's ledger from scratch (and a proof file against it).

    ``store`` is accepted so a caller holding the ledger open can audit it; the audit
    itself always re-reads the log from disk.
    """
    del store  # the audit reads the log files, never a cache
    return verify_ledger(home / "ledger", load_public(home), proof)


def check_store(ledger_dir: Path, *, repair: bool = False) -> CheckReport:
    """``ledger check [--repair]``."""
    return check_ledger(ledger_dir, repair=repair)


__all__ = ["check_store", "export_home", "verify_home"]
