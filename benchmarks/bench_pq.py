"""What the hybrid post-quantum suite costs per bundle: ``ed25519`` vs ``ed25519+ml-dsa-65``.

    python benchmarks/bench_pq.py [--iterations 200] [--repeat 7] [--json]

For each suite, with the same deterministic identities and payload:

* the header-only signing step: ``Identity.sign_all`` over the bundle's signed message
  (``"lltoken/bundle/v1" || 0x00 || SHA-256(magic || version || header)``), and
  ``PublicIdentity.verify_all`` of the result (what ``open_bundle`` does before it reads
  any payload byte);
* a whole small bundle: ``pack_bytes`` of a ``Transaction`` (sign included) and
  ``open_bundle_bytes`` of it (parse, verify, decompress, schema check);
* sizes: the signature block (CBOR), the whole transaction bundle, a checkpoint's
  signature, and the public signing key that rosters and enrollments carry;
* one identity's key generation (ML-DSA-65 derives its keys from a 32-byte seed).

Times are per call: each of ``--repeat`` batches runs ``--iterations`` calls, and the
median batch is reported.  Ratios are hybrid / Ed25519.  ML-DSA signing is hedged (fresh
randomness) and its time varies with the rejection-sampling loop, hence the medians.
Needs the [pq] extra (``pip install 'lltoken-offline[pq]'``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from bundle import cbor, pqsig
from bundle.checkpoint import sign_checkpoint
from bundle.envelope import (
    MAGIC,
    SIGNING_DOMAIN,
    VERSION,
    open_bundle_bytes,
    pack_bytes,
    read_prefix,
)
from bundle.keys import SUITE_ED25519, SUITE_HYBRID, Identity
from bundle.payloads import Transaction

FEDERATION = bytes(range(16))
CREATED = 1_700_000_000
SUITES = (SUITE_ED25519, SUITE_HYBRID)


def identity(suite: str, n: int) -> Identity:
    seed, box = bytes([n]) * 32, bytes([n + 100]) * 32
    return Identity(seed, box, suite, bytes([n + 50]) * 32 if suite == SUITE_HYBRID else None)


def per_call_us(fn: Callable[[], Any], iterations: int, repeat: int) -> float:
    for _ in range(min(20, iterations)):  # warm up caches and lazy imports
        fn()
    batches = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(iterations):
            fn()
        batches.append((time.perf_counter() - start) / iterations)
    return statistics.median(batches) * 1e6


def measure(suite: str, iterations: int, repeat: int) -> dict[str, float]:
    sender, receiver = identity(suite, 1), identity(suite, 2)
    payload = Transaction(sender.key_id, receiver.key_id, 10, b"\x44" * 16, 1, "thanks")
    packed, data = pack_bytes(payload, sender, federation=FEDERATION, created=CREATED)
    prefix = read_prefix(io.BytesIO(data), len(data))
    message = (
        SIGNING_DOMAIN + hashlib.sha256(MAGIC + bytes((VERSION,)) + prefix.header_bytes).digest()
    )
    signatures = sender.sign_all(message)
    public = sender.public
    known = {sender.key_id: sender.public}
    checkpoint = sign_checkpoint(
        sender, federation=FEDERATION, size=1, root=bytes(32), time=CREATED
    )
    seeds = (bytes([9]) * 32, bytes([109]) * 32)
    pq_seed = bytes([59]) * 32 if suite == SUITE_HYBRID else None
    return {
        "header_sign_us": per_call_us(lambda: sender.sign_all(message), iterations, repeat),
        "header_verify_us": per_call_us(
            lambda: public.verify_all(message, signatures), iterations, repeat
        ),
        "bundle_pack_us": per_call_us(
            lambda: pack_bytes(payload, sender, federation=FEDERATION, created=CREATED),
            iterations,
            repeat,
        ),
        "bundle_open_us": per_call_us(
            lambda: open_bundle_bytes(data, known.get), iterations, repeat
        ),
        "keygen_us": per_call_us(
            lambda: Identity(*seeds, suite, pq_seed), max(1, iterations // 4), repeat
        ),
        "signature_block_bytes": len(cbor.encode(list(signatures))),
        "bundle_bytes": packed.size,
        "checkpoint_signature_bytes": len(checkpoint.signature),
        "public_signing_key_bytes": len(public.signing_key),
    }


ROWS = [
    ("header_sign_us", "sign header (sign_all)", "us"),
    ("header_verify_us", "verify header (verify_all)", "us"),
    ("bundle_pack_us", "pack_bytes(transaction)", "us"),
    ("bundle_open_us", "open_bundle_bytes(transaction)", "us"),
    ("keygen_us", "identity from seeds", "us"),
    ("signature_block_bytes", "signature block", "B"),
    ("bundle_bytes", "transaction bundle", "B"),
    ("checkpoint_signature_bytes", "checkpoint signature", "B"),
    ("public_signing_key_bytes", "public signing key", "B"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=200, help="calls per batch")
    parser.add_argument("--repeat", type=int, default=7, help="batches; the median is kept")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    pqsig.require()
    load = os.getloadavg()
    results = {suite: measure(suite, args.iterations, args.repeat) for suite in SUITES}
    ratios = {
        key: results[SUITE_HYBRID][key] / results[SUITE_ED25519][key]
        for key, _, _ in ROWS
        if results[SUITE_ED25519][key]
    }
    report = {
        "machine": {
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "loadavg_before": load[0],
            "loadavg_after": os.getloadavg()[0],
        },
        "iterations": args.iterations,
        "repeat": args.repeat,
        "results": results,
        "ratio_hybrid_over_ed25519": ratios,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"per call, median of {args.repeat} batches x {args.iterations} calls; "
        f"load average {load[0]:.2f} before, {report['machine']['loadavg_after']:.2f} after"
    )
    print(f"{'':34}{'ed25519':>12}{'ed25519+ml-dsa-65':>20}{'ratio':>9}")
    for key, label, unit in ROWS:
        classic, hybrid = results[SUITE_ED25519][key], results[SUITE_HYBRID][key]
        width = ".1f" if unit == "us" else ".0f"
        print(
            f"{label + ' [' + unit + ']':34}{classic:>12{width}}{hybrid:>20{width}}"
            f"{ratios.get(key, float('nan')):>8.1f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
