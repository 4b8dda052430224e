"""Benchmark the token ledger at scale: append, proofs, audit.

    python benchmarks/bench_ledger.py [--entries 1000000] [--batch 1000] [--agents 1000]
                                      [--samples 1000] [--dir DIR] [--json]

What it does, on a fresh ledger in a temporary directory (or ``--dir``):

* generates ``--entries`` realistic entries: ``--agents`` enrollments, then rounds of one
  round-close (listing every agent) and one reward per agent, each reward with a
  five-number quality breakdown and its own update-bundle id.  Rewards are assembled
  from pre-encoded pieces (deterministic CBOR is a concatenation of key/value encodings
  in a fixed order); a sample is checked byte for byte against ``Reward(...).encode()``;
* replays the first 200,000 of them through ``LedgerState.apply`` alone (parse + rules,
  no I/O), to show how much of an append is the rules;
* appends them in batches of ``--batch`` with ``LedgerStore.append``: every entry is
  parsed and checked against the ledger rules, each batch is written with one fsync of
  the log plus SQLite's own commit of the index (WAL, synchronous=FULL), and a new
  checkpoint is signed per batch;
* inclusion proofs for ``--samples`` random entries of the full tree: generation time,
  size (bound: 32 * ceil(log2 n) bytes) and ``verify_inclusion`` time;
* consistency proofs from several arbitrary old sizes to the full tree: generation and
  ``verify_consistency`` time, size;
* a full audit from scratch: ``verify_ledger`` reads the log (not the index), replays
  every entry against the rules, checks every checkpoint signature and root;
* reopening the store (index load, lazy Merkle cache build on the first proof).

Times are medians where an operation is repeated.  Prints a table (or ``--json``); the
``targets`` line says which issue-4 targets were met on this machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bundle import cbor
from bundle.keys import Identity
from bundle.ledger import Enroll, LedgerState, Reward, RoundClose
from bundle.merkle import verify_consistency, verify_inclusion
from coordinator.ledger_proof import verify_ledger
from coordinator.ledger_store import LedgerStore

RULES_SAMPLE = 200_000


def _quality(rng: random.Random) -> dict[str, int | float]:
    return {
        "q": round(rng.uniform(0.1, 2.0), 4),
        "base": 100,
        "bonus": rng.choice((0, 50)),
        "reputation": round(rng.uniform(0.5, 1.5), 3),
        "gain": round(rng.uniform(-0.01, 0.05), 5),
    }


class RewardFactory:
    """Reward entry bytes from pre-encoded pieces.

    A reward map has six text keys, which deterministic CBOR orders by their encodings
    (shorter first): kind, agent, round, amount, update, quality.  So an entry is the map
    head followed by key/value encodings in that order; only the values vary.
    """

    def __init__(self, agents: list[bytes], rng: random.Random) -> None:
        enc = cbor.encode
        self.head = b"\xa6" + enc("kind") + enc("reward")
        self.agent = {a: enc("agent") + enc(a) for a in agents}
        self.round_key = enc("round")
        self.amount_key = enc("amount")
        self.update_key = enc("update") + b"\x58\x20"
        self.qualities = [_quality(rng) for _ in range(256)]
        self.quality = [enc("quality") + enc(q) for q in self.qualities]
        self.amounts = [rng.randint(10, 300) for _ in range(256)]
        self.amount = [self.amount_key + enc(a) for a in self.amounts]
        self.rounds: dict[int, bytes] = {}

    def entry(self, agent: bytes, round_: int, n: int) -> bytes:
        round_part = self.rounds.get(round_)
        if round_part is None:
            round_part = self.rounds[round_] = self.round_key + cbor.encode(round_)
        update = hashlib.sha256(n.to_bytes(8, "big")).digest()
        return b"".join(
            (
                self.head,
                self.agent[agent],
                round_part,
                self.amount[n & 255],
                self.update_key,
                update,
                self.quality[(n >> 8) & 255],
            )
        )

    def check(self, agent: bytes, round_: int, n: int) -> None:
        update = hashlib.sha256(n.to_bytes(8, "big")).digest()
        reward = Reward(
            agent, self.amounts[n & 255], round_, self.qualities[(n >> 8) & 255], update
        )
        if reward.encode() != self.entry(agent, round_, n):
            raise SystemExit("reward template does not match Reward.encode(): fix the benchmark")


def generate(total: int, n_agents: int, seed: int = 7) -> tuple[list[Identity], list[bytes]]:
    rng = random.Random(seed)
    identities = [
        Identity(hashlib.sha256(b"a%d" % i).digest(), hashlib.sha256(b"b%d" % i).digest())
        for i in range(n_agents)
    ]
    keys = [i.key_id for i in identities]
    entries = [Enroll(i.key_id, f"agent-{n}", i.public).encode() for n, i in enumerate(identities)]
    factory = RewardFactory(keys, rng)
    round_ = 0
    n = 0
    while len(entries) < total:
        round_ += 1
        model = hashlib.sha256(b"model %d" % round_).digest()
        entries.append(RoundClose(round_, model, keys).encode())
        for agent in keys:
            if len(entries) >= total:
                break
            if n % 10_007 == 0:
                factory.check(agent, round_, n)
            entries.append(factory.entry(agent, round_, n))
            n += 1
    return identities, entries[:total]


def _count_fsyncs() -> Callable[[], int]:
    """Count os.fsync calls from here on (the log's; SQLite syncs its WAL in C)."""
    real = os.fsync
    calls = [0]

    def counting(fd: int) -> None:
        calls[0] += 1
        real(fd)

    os.fsync = counting

    def stop() -> int:
        os.fsync = real
        return calls[0]

    return stop


def _median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def run(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    path = base / "ledger"
    if path.exists():
        shutil.rmtree(path)
    coordinator = Identity(b"\x01" * 32, b"\x02" * 32)
    federation = b"\xfe" * 16
    results: dict[str, Any] = {
        "entries": args.entries,
        "batch": args.batch,
        "agents": args.agents,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    try:
        t0 = time.perf_counter()
        _, entries = generate(args.entries, args.agents)
        results["generate_s"] = time.perf_counter() - t0
        results["log_bytes_entries"] = sum(map(len, entries))

        sample = entries[: min(len(entries), RULES_SAMPLE)]
        state = LedgerState(federation)
        t0 = time.perf_counter()
        for data in sample:
            state.apply(data)
        results["rules_rate"] = len(sample) / (time.perf_counter() - t0)
        results["rules_sample"] = len(sample)
        del state

        store = LedgerStore(path, federation, coordinator)
        fsyncs = _count_fsyncs()
        t0 = time.perf_counter()
        batches = 0
        for start in range(0, len(entries), args.batch):
            store.append(entries[start : start + args.batch])
            batches += 1
        append_s = time.perf_counter() - t0
        results["log_fsyncs_per_batch"] = fsyncs() / batches
        results["append_s"] = append_s
        results["append_rate"] = len(entries) / append_s
        results["batches"] = batches
        results["log_bytes"] = sum(p.stat().st_size for p in (path / "log").iterdir())
        results["index_bytes"] = sum(
            p.stat().st_size for p in path.iterdir() if p.name.startswith("index.sqlite")
        )
        del entries
        n = store.size
        checkpoint = store.checkpoint()
        rng = random.Random(11)

        gen, ver, sizes = [], [], []
        for index in (rng.randrange(n) for _ in range(args.samples)):
            t = time.perf_counter()
            proof = store.inclusion_proof(index)
            gen.append(time.perf_counter() - t)
            leaf = store.leaf_hash(index)
            t = time.perf_counter()
            verify_inclusion(leaf, index, n, proof, checkpoint.root)
            ver.append(time.perf_counter() - t)
            sizes.append(32 * len(proof))
        results["inclusion"] = {
            "generate_us": _median_us(gen),
            "verify_us": _median_us(ver),
            "bytes_median": statistics.median(sizes),
            "bytes_max": max(sizes),
            "bound_bytes": 32 * math.ceil(math.log2(n)),
        }

        consistency = []
        olds = sorted(
            {1, 1000, n // 3, n // 2 + 7, n - 1, *(rng.randrange(1, n) for _ in range(5))}
        )
        for old in olds:
            old_root = store.root(old)
            t = time.perf_counter()
            proof = store.consistency_proof(old)
            g = time.perf_counter() - t
            t = time.perf_counter()
            verify_consistency(old, n, proof, old_root, checkpoint.root)
            v = time.perf_counter() - t
            consistency.append(
                {
                    "old_size": old,
                    "generate_us": g * 1e6,
                    "verify_us": v * 1e6,
                    "bytes": 32 * len(proof),
                }
            )
        results["consistency"] = consistency
        store.close()

        t0 = time.perf_counter()
        store = LedgerStore.open(path)
        results["reopen_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.inclusion_proof(0)
        results["first_proof_after_open_s"] = time.perf_counter() - t0
        store.close()

        t0 = time.perf_counter()
        report = verify_ledger(path, coordinator.public)
        results["audit_s"] = time.perf_counter() - t0
        results["audit_checkpoints"] = report.checkpoints_checked
        results["total_supply"] = report.total_supply
        if report.size != n:
            raise SystemExit(f"audit covered {report.size} entries, expected {n}")
    finally:
        if not args.dir and not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    return results


def table(r: dict[str, Any]) -> str:
    inc = r["inclusion"]
    rows = [
        ("entries / batch size / agents", f"{r['entries']:,} / {r['batch']:,} / {r['agents']:,}"),
        ("generate entries", f"{r['generate_s']:.1f} s"),
        (
            "rules only: LedgerState.apply, no I/O",
            f"{r['rules_rate']:,.0f} entries/s (first {r['rules_sample']:,} entries)",
        ),
        (
            "append (rules + log fsync + index + signed checkpoint per batch)",
            f"{r['append_rate']:,.0f} entries/s ({r['append_s']:.1f} s, {r['batches']} batches)",
        ),
        (
            "log fsyncs per batch (SQLite adds its WAL sync at commit)",
            f"{r['log_fsyncs_per_batch']:g}",
        ),
        (
            "log size / index size",
            f"{r['log_bytes'] / 1e6:.1f} MB / {r['index_bytes'] / 1e6:.1f} MB",
        ),
        (
            "inclusion proof size (median / max / bound)",
            f"{inc['bytes_median']:.0f} / {inc['bytes_max']} / {inc['bound_bytes']} bytes",
        ),
        ("inclusion proof generate (median)", f"{inc['generate_us']:.1f} us"),
        ("inclusion proof verify (median)", f"{inc['verify_us']:.1f} us"),
    ]
    for c in r["consistency"]:
        rows.append(
            (
                f"consistency {c['old_size']:,} -> {r['entries']:,}",
                f"{c['bytes']} bytes, generate {c['generate_us']:.1f} us, "
                f"verify {c['verify_us']:.1f} us",
            )
        )
    rows += [
        (
            "reopen store / first proof after reopen",
            f"{r['reopen_s']:.2f} s / {r['first_proof_after_open_s']:.2f} s",
        ),
        (
            "full audit from scratch (verify_ledger)",
            f"{r['audit_s']:.1f} s ({r['audit_checkpoints']} checkpoints)",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    targets = {
        "append >= 20,000 entries/s": r["append_rate"] >= 20_000,
        "proof <= 32*ceil(log2 n) bytes": inc["bytes_max"] <= inc["bound_bytes"],
        "proof verify < 1 ms": inc["verify_us"] < 1000,
        "audit <= 60 s": r["audit_s"] <= 60,
    }
    lines.append(
        "targets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in targets.items())
    )
    lines.append(f"({r['machine']}, Python {r['python']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--dir", help="where to build the ledger (kept); default: a temp dir")
    parser.add_argument("--keep", action="store_true", help="keep the temporary ledger")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.entries <= args.agents:
        parser.error("--entries must exceed --agents")
    results = run(args)
    print(json.dumps(results, indent=2) if args.json else table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
