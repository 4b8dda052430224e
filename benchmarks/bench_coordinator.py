"""Benchmark the coordinator's round close (issue 5), in one run.

    python benchmarks/bench_coordinator.py [--updates 200] [--params 25000000]
        [--parts a,b,c] [--dir DIR] [--repeat 5] [--profile] [--json]

(a) **Close at scale.**  A real coordinator home (``Coordinator.init`` with a float32
    model of ``--params`` values in four arrays, FedAvg, no validation set), ``--updates``
    agents enrolled through the coordinator's own path (one EnrollRequest bundle per agent
    identity into its inbox, ``spool.ingest``; the first 10 approved with
    ``Coordinator.approve``, the rest by :func:`approve_batch`, which does the same in one
    transaction), ``open_round``, then one ModelUpdate bundle per agent packed with
    ``pack_bundle`` as ``Agent.train`` packs it: signed by the agent, the round in the
    header, encrypted to the coordinator, XOR-delta filters against the round's global
    model.  Each update is a small step from the global
    model, ``global + s_i * 1e-3 * (shared + own_i)`` (standard-normal ``shared`` and
    ``own_i``, ``s_i`` in [0.5, 1.5]), so filters and agreement scores see what partly
    agreeing training steps look like.  The updates are ingested (``spool.ingest``), then
    ``close_round(force=True)`` runs once in a fresh child process, which reports its wall
    time, a breakdown by phase, and its peak RSS growth (``VmHWM`` reset through
    ``/proc/self/clear_refs`` after the home is open, minus ``VmRSS`` at that point).
    Baselines from the same run, in another fresh child: opening one archived update
    bundle the way close does (time: median over up to 20 updates; memory: peak growth).
(b) **Streamed vs Flower** (``--b-updates`` x ``--b-params``, default 20 x 2.5M): the
    coordinator's streaming path (``open_bundle`` each update from disk, then
    ``StreamingWeightedMean.add``, then ``aggregate_streamed``) against Flower's FedAvg
    ``aggregate_train`` (through the adapter, which builds the reply Messages) on the same
    arrays already in memory, Flower's ``aggregate_train`` alone on pre-built Messages, and
    Flower's FedAvg including loading the same bundles.  Medians of ``--repeat``; peak RSS
    growth of the two loading variants in fresh children.
(c) **Overhead, small model** (``--c-updates`` agents, default 100, the example MLP):
    ``close_round`` end to end, median over ``--repeat`` copies of the same home, with the
    same breakdown; without a validation set (agreement scoring) and with one
    (leave-one-out scoring, as ``simulate`` runs).  Baseline: one verifying pass over the
    round's archived updates.

The breakdown wraps the real functions in the child (``rounds._load_updates``,
``StreamingWeightedMean.add``, ``aggregate_streamed``, the scoring functions,
``ModelStore.get/put``, ``LedgerStore.append``, ``send_ledger_deltas``, ``_open_round``)
with timers; times are exclusive (a bundle loaded during scoring counts as loading).

This is a script, not a test: it prints a report (or ``--json``) and exits 0.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import logging
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import numpy as np
from measure import Peak, run_child

from bundle.arrays import array_hash, model_hash
from bundle.envelope import open_bundle, pack_bundle
from bundle.keys import Identity
from bundle.ledger import Allocation, Enroll
from bundle.payloads import EnrollRequest, ModelUpdate
from coordinator import rounds
from coordinator.flower_adapter import (
    Reply,
    StreamingWeightedMean,
    _reply_message,  # the exact Messages the adapter hands Flower (benchmark only)
    aggregate_streamed,
    aggregate_train,
    make_strategy,
)
from coordinator.home import Coordinator
from coordinator.rounds import close_round, open_round
from coordinator.state import AgentRow

Arrays = list[tuple[str, np.ndarray[Any, Any]]]

PASSPHRASE = "benchmark-only-passphrase"  # throwaway homes
MB = 1e6
GB = 1e9
STEP = 1e-3  # training step size relative to weights of order 1
OFFSETS = 1 << 20  # how far apart the agents' private noise windows start
TARGET_PEAK_GB = 2.0
TARGET_SMALL_CLOSE_S = 5.0
B_FEDERATION = bytes(range(16))
REAL_APPROVALS = 10  # agents approved one by one through Coordinator.approve (timed)

# Phases of close_round, in report order.
LOAD = "load+verify update bundles"
MEAN = "aggregate: streaming weighted mean"
FLOWER = "aggregate: Flower aggregate_train"
SCORE = "scoring (agreement / leave-one-out)"
READ_MODEL = "read global models from store"
VALIDATION = "validation set + evaluator import"
STORE = "store new model"
LEDGER = "ledger append"
DELTAS = "ledger deltas to agents"
OPEN_NEXT = "open next round (model + tasks)"
OTHER = "other (DB, rewards, commit)"
PHASES = (
    LOAD,
    MEAN,
    FLOWER,
    SCORE,
    READ_MODEL,
    VALIDATION,
    STORE,
    LEDGER,
    DELTAS,
    OPEN_NEXT,
    OTHER,
)


# Flower logs every configure/aggregate call at INFO; the report says it better.
logging.getLogger("flwr").setLevel(logging.ERROR)


def echo(text: str) -> None:
    """Progress on stderr: setup at full size takes minutes."""
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- inputs


def model_shapes(params: int) -> dict[str, tuple[int, ...]]:
    """Four float32 arrays (60/30/10 % of the rows, and a bias) totalling ~``params``."""
    if params < 1000:
        raise ValueError("--params must be at least 1000")
    cols = 1000 if params >= 100_000 else 10
    bias = min(1000, params // 100)
    rows = (params - bias) // cols
    return {
        "encoder.weight": (rows * 6 // 10, cols),
        "decoder.weight": (rows * 3 // 10, cols),
        "head.weight": (rows - rows * 6 // 10 - rows * 3 // 10, cols),
        "head.bias": (bias,),
    }


def make_model(params: int, seed: int) -> Arrays:
    """A deterministic standard-normal float32 model (every process gets the same one)."""
    rng = np.random.default_rng(seed)
    return [
        (name, rng.standard_normal(shape, dtype=np.float32))
        for name, shape in model_shapes(params).items()
    ]


def raw_bytes(arrays: Arrays) -> int:
    return sum(a.nbytes for _, a in arrays)


class Steps:
    """Training-like steps: agent i moves every weight by ``s_i * 1e-3 * (shared + own_i)``,
    ``shared`` and ``own_i`` standard normal (windows of one noise pool), ``s_i`` in
    [0.5, 1.5]: partly agreeing updates, as honest agents' steps are."""

    def __init__(self, values: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed + 1)
        self.pool = self.rng.standard_normal(values + OFFSETS, dtype=np.float32)

    def apply(self, arrays: Arrays) -> Arrays:
        offset = int(self.rng.integers(1, OFFSETS))
        scale = np.float32(STEP * self.rng.uniform(0.5, 1.5))
        out: Arrays = []
        pos = 0
        for name, value in arrays:
            n = value.size
            step = self.pool[pos : pos + n] + self.pool[offset + pos : offset + pos + n]
            step *= scale
            step += value.reshape(-1)
            out.append((name, step.reshape(value.shape)))
            pos += n
        return out

    def metrics(self) -> tuple[int, dict[str, int | float]]:
        examples = int(self.rng.integers(100, 1000))
        return examples, {"loss": float(self.rng.uniform(0.2, 1.0))}


# ---------------------------------------------------------------------------- federation


@dataclass
class Federation:
    """A coordinator home with one round collecting and every update ingested."""

    home: Path
    updates: int
    values: int
    model_bytes: int
    update_bytes: int
    setup: dict[str, float] = field(default_factory=dict)


def approve_batch(coord: Coordinator, rows: list[AgentRow]) -> None:
    """What ``Coordinator.approve`` does for each row, in one transaction that ends with one
    roster and one ledger delta per agent.  Approving one by one sends every active agent
    a new roster and a ledger delta at each approval: quadratic in the number of agents,
    each bundle fsynced, which takes many minutes for 200 agents."""
    with coord.spool.transaction():
        entries: list[bytes] = []
        for row in rows:
            node_id = int(coord.state.get("next_node_id", 2))
            coord.state.set("next_node_id", node_id + 1)
            coord.state.update_agent(row.key_id, status="active", node_id=node_id)
            entries.append(Enroll(row.key_id, row.name, coord.public_of(row)).encode())
            grant = coord.config.initial_allocation.get(row.name, 0)
            if grant > 0:
                entries.append(Allocation(row.key_id, grant).encode())
        coord.ledger.append(entries)
        coord._send_roster()
        coord.send_ledger_deltas()


def build_federation(
    home: Path, updates: int, params: int, *, validation: bool, seed: int
) -> Federation:
    """See the module docstring, (a).  ``params == 0`` uses the example MLP."""
    setup: dict[str, float] = {}
    started = time.perf_counter()
    home.mkdir(parents=True)
    initial: Path | None = None
    if params:
        initial = home.parent / f"{home.name}-initial.npz"
        named: dict[str, Any] = dict(make_model(params, seed))
        np.savez(initial, **named)
        del named
    validation_file = ""
    if validation:
        from agent.example_model import load_test  # the example task's held-out split

        x_test, y_test = load_test()
        np.savez(home / "validation.npz", X=x_test, y=y_test)
        validation_file = "validation.npz"
    coord = Coordinator.init(
        home,
        "benchmark",
        PASSPHRASE,
        rounds=2,  # closing round 1 opens round 2, as a real federation does
        quorum=updates,
        seed=seed,
        initial_model=initial,
        validation=validation_file,
        fast_kdf=True,
    )
    try:
        setup["init"] = time.perf_counter() - started
        fed = coord.config.federation_id
        me = [coord.identity.public]
        agents = [Identity.generate() for _ in range(updates)]

        started = time.perf_counter()
        for i, agent in enumerate(agents):
            request = EnrollRequest(f"agent-{i:03d}", agent.public, {"benchmark": 1})
            pack_bundle(
                coord.spool.dirs.inbox, request, agent, federation=fed, seq=1, recipients=me
            )
        report = coord.spool.ingest(coord)
        if len(report.accepted) != updates:
            raise RuntimeError(f"enrollment: {report.rejected[:3]}")
        setup["enroll"] = time.perf_counter() - started
        pending = coord.state.agents("pending")
        started = time.perf_counter()
        for row in pending[:REAL_APPROVALS]:
            coord.approve(row.key_id.hex())
        setup[f"approve first {min(updates, REAL_APPROVALS)} (Coordinator.approve)"] = (
            time.perf_counter() - started
        )
        if len(pending) > REAL_APPROVALS:
            started = time.perf_counter()
            approve_batch(coord, pending[REAL_APPROVALS:])
            setup[f"approve other {len(pending) - REAL_APPROVALS} (batched)"] = (
                time.perf_counter() - started
            )

        started = time.perf_counter()
        number = int(open_round(coord)["round"])
        setup["open_round"] = time.perf_counter() - started

        started = time.perf_counter()
        global_arrays = coord.global_arrays()
        parent = coord.model_hash
        parents = {name: (array_hash(a), a) for name, a in global_arrays}
        values = sum(a.size for _, a in global_arrays)
        steps = Steps(values, seed)
        update_bytes = 0
        for i, agent in enumerate(agents):
            examples, metrics = steps.metrics()
            update = ModelUpdate(number, parent, examples, metrics, steps.apply(global_arrays))
            packed = pack_bundle(
                coord.spool.dirs.inbox,
                update,
                agent,
                federation=fed,
                round=number,
                seq=2,
                recipients=me,
                encrypt=True,
                parents=parents,
            )
            update_bytes += packed.size
            del update
            if (i + 1) % 20 == 0:
                echo(f"  packed {i + 1}/{updates} updates ({update_bytes / GB:.2f} GB)")
        setup["pack updates"] = time.perf_counter() - started

        started = time.perf_counter()
        report = coord.spool.ingest(coord)
        if len(report.accepted) != updates or report.rejected:
            raise RuntimeError(f"update ingest: {report.rejected[:3]}")
        setup["ingest updates"] = time.perf_counter() - started
        model_bytes = raw_bytes(global_arrays)
    finally:
        coord.close()
    return Federation(home, updates, values, model_bytes, update_bytes, setup)


# ---------------------------------------------------------------------------- memory


# ---------------------------------------------------------------------------- phase clock


class PhaseClock:
    """Exclusive wall time per phase (a nested phase's time is taken out of its parent's),
    and the phase during which the process's peak RSS was reached."""

    def __init__(self, peak: Peak) -> None:
        self.peak = peak
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list[Any]] = []  # [name, start, nested seconds, absorbs nested]
        self._high_kb = peak.peak_kb()
        self.peak_phase = OTHER

    def _enter(self, name: str, absorb: bool) -> bool:
        if self._stack and self._stack[-1][3]:
            return False  # inside a phase that counts everything it calls as its own
        # A peak reached since the last look happened in the enclosing phase.
        self._note_peak(self._stack[-1][0] if self._stack else OTHER)
        self._stack.append([name, time.perf_counter(), 0.0, absorb])
        return True

    def _exit(self) -> None:
        name, start, nested, _ = self._stack.pop()
        elapsed = time.perf_counter() - start
        self.seconds[name] += elapsed - nested
        self.calls[name] += 1
        if self._stack:
            self._stack[-1][2] += elapsed
        self._note_peak(name)

    def _note_peak(self, name: str) -> None:
        high = self.peak.peak_kb()
        if high > self._high_kb:
            self._high_kb, self.peak_phase = high, name

    def wrap(self, fn: Callable[..., Any], name: str, absorb: bool = False) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            entered = self._enter(name, absorb)
            try:
                return fn(*args, **kwargs)
            finally:
                if entered:
                    self._exit()

        return timed

    def wrap_iter(self, fn: Callable[..., Iterator[Any]], name: str) -> Callable[..., Any]:
        """Time each ``next()`` of the generator ``fn`` returns."""

        def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
            items = fn(*args, **kwargs)
            while True:
                entered = self._enter(name, False)
                try:
                    item = next(items)
                except StopIteration:
                    return
                finally:
                    if entered:
                        self._exit()
                yield item

        return timed

    def finish(self, total: float) -> dict[str, float]:
        """Seconds per phase; what no phase claimed is 'other'."""
        self._note_peak(OTHER)
        out = {name: self.seconds.get(name, 0.0) for name in PHASES if name != OTHER}
        out[OTHER] = max(0.0, total - sum(out.values()))
        return out


def instrument(coord: Coordinator, clock: PhaseClock) -> None:
    """Wrap the functions close_round calls (this child process only)."""
    setattr(rounds, "_load_updates", clock.wrap_iter(rounds._load_updates, LOAD))  # noqa: B010
    setattr(StreamingWeightedMean, "add", clock.wrap(StreamingWeightedMean.add, MEAN))  # noqa: B010
    for name in ("aggregate_streamed", "aggregate_train"):
        setattr(rounds, name, clock.wrap(getattr(rounds, name), FLOWER))
    for name in ("_agreement_scores", "_leave_one_out_scores"):
        setattr(rounds, name, clock.wrap(getattr(rounds, name), SCORE))
    load_evaluator = clock.wrap(rounds._evaluator, VALIDATION)
    setattr(rounds, "_evaluator", lambda c: clock.wrap(load_evaluator(c), SCORE))  # noqa: B010
    setattr(coord, "validation_set", clock.wrap(coord.validation_set, VALIDATION))  # noqa: B010
    setattr(coord.models, "get", clock.wrap(coord.models.get, READ_MODEL))  # noqa: B010
    setattr(coord.models, "put", clock.wrap(coord.models.put, STORE))  # noqa: B010
    for name in ("append", "has_round_close"):
        setattr(coord.ledger, name, clock.wrap(getattr(coord.ledger, name), LEDGER))
    setattr(coord, "send_ledger_deltas", clock.wrap(coord.send_ledger_deltas, DELTAS, True))  # noqa: B010
    setattr(rounds, "_open_round", clock.wrap(rounds._open_round, OPEN_NEXT, True))  # noqa: B010


# ---------------------------------------------------------------------------- children


def child_close(spec: dict[str, Any]) -> dict[str, Any]:
    """close_round once on the home, with the breakdown and peak RSS growth."""
    coord = Coordinator.open(Path(spec["home"]), PASSPHRASE)
    try:
        peak = Peak()
        clock = PhaseClock(peak)
        instrument(coord, clock)
        profiler = cProfile.Profile() if spec.get("profile") else None
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        summary = close_round(coord, force=True)
        if profiler is not None:
            profiler.disable()
        seconds = time.perf_counter() - started
        phases = clock.finish(seconds)
        extra = peak.extra_bytes()
    finally:
        coord.close()
    if profiler is not None:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
        print(text.getvalue(), file=sys.stderr)
    return {
        "seconds": seconds,
        "phases": phases,
        "peak_phase": clock.peak_phase,
        "extra_bytes": extra,
        "method": peak.method,
        "participants": summary["participants"],
        "tokens": summary["tokens_distributed"],
        "average_quality": summary["average_quality"],
        "close_seconds": summary["close_seconds"],
    }


def child_open(spec: dict[str, Any]) -> dict[str, Any]:
    """Open up to ``count`` archived updates as close does: per-update seconds, peak growth."""
    coord = Coordinator.open(Path(spec["home"]), PASSPHRASE)
    try:
        names = [
            str(r[0])
            for r in coord.conn.execute(
                "SELECT name FROM updates WHERE status = 'accepted' ORDER BY name LIMIT ?",
                (spec["count"],),
            )
        ]
        parents = coord.parents()
        peak = Peak()
        times = []
        for name in names:
            started = time.perf_counter()
            opened = open_bundle(
                coord.spool.dirs.archive / name,
                coord.any_identity,
                identity=coord.identity,
                parents=parents,
            )
            times.append(time.perf_counter() - started)
            del opened
        extra = peak.extra_bytes()
    finally:
        coord.close()
    return {"seconds": times, "extra_bytes": extra, "method": peak.method}


def _b_identity(n: int) -> Identity:
    """Fixed identities for (b), so a child process rebuilds the same keys."""
    return Identity(bytes([n % 256, n // 256]) * 16, bytes([n % 256, 100 + n // 256]) * 16)


def child_b_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS growth of (b)'s streamed or Flower-with-loading aggregation."""
    global_arrays = make_model(spec["params"], spec["seed"])
    loader = _BundleLoader(global_arrays, spec["updates"])
    paths = [Path(p) for p in spec["paths"]]
    make_strategy("FedAvg")
    peak = Peak()
    if spec["variant"] == "streamed":
        streamed(loader, paths)
    else:
        flower_with_loading(loader, paths)
    return {"extra_bytes": peak.extra_bytes(), "method": peak.method}


# ---------------------------------------------------------------------------- (a) and (c)


def _estimate_disk(updates: int, params: int) -> int:
    """Update bundles (XOR-delta of small steps: < raw size) plus a few models."""
    return int((updates + 6) * params * 4 * 1.05)


def bench_close(
    root: Path,
    label: str,
    updates: int,
    params: int,
    *,
    validation: bool,
    repeat: int,
    profile: bool,
    seed: int,
) -> dict[str, Any]:
    home = root / label
    echo(f"[{label}] building a federation: {updates} agents, {params or 'example MLP'} parameters")
    fed = build_federation(home, updates, params, validation=validation, seed=seed)
    echo(f"[{label}] setup " + ", ".join(f"{k} {v:.1f}s" for k, v in fed.setup.items()))
    baseline = run_child(
        __file__,
        {"op": "open", "home": str(home), "count": min(updates, 20 if params else updates)},
    )
    closes = []
    for i in range(repeat):
        target = home
        if repeat > 1:
            target = root / f"{label}-copy{i}"
            shutil.copytree(home, target)
        echo(f"[{label}] close_round run {i + 1}/{repeat}")
        closes.append(run_child(__file__, {"op": "close", "home": str(target), "profile": profile}))
        if target != home:
            shutil.rmtree(target)
    return {
        "label": label,
        "updates": updates,
        "values": fed.values,
        "model_bytes": fed.model_bytes,
        "update_bytes": fed.update_bytes,
        "validation": validation,
        "setup": fed.setup,
        "baseline_open_s": statistics.median(baseline["seconds"]),
        "baseline_open_extra": baseline["extra_bytes"],
        "baseline_count": len(baseline["seconds"]),
        "closes": closes,
        "seconds": statistics.median(c["seconds"] for c in closes),
        "extra_bytes": statistics.median(c["extra_bytes"] for c in closes),
        "phases": {name: statistics.median(c["phases"][name] for c in closes) for name in PHASES},
        "peak_phase": closes[0]["peak_phase"],
        "method": closes[0]["method"],
    }


# ---------------------------------------------------------------------------- (b)


class _BundleLoader:
    """Opens (b)'s update bundles as the coordinator does: verify, decrypt, un-delta."""

    def __init__(self, global_arrays: Arrays, updates: int) -> None:
        self.coordinator = _b_identity(0)
        self.agents = {_b_identity(i + 1).key_id: i + 2 for i in range(updates)}
        self.keyring = {a.key_id: a.public for a in (_b_identity(i + 1) for i in range(updates))}
        self.parents = {array_hash(a): a for _, a in global_arrays}

    def load(self, path: Path) -> Reply:
        opened = open_bundle(
            path, self.keyring.get, identity=self.coordinator, parents=self.parents
        )
        payload = opened.payload
        if not isinstance(payload, ModelUpdate):
            raise TypeError(type(payload).__name__)
        metrics = {**payload.metrics, "num-examples": payload.num_examples}
        return Reply(self.agents[opened.header.sender], payload.arrays, metrics)


def streamed(loader: _BundleLoader, paths: list[Path]) -> Arrays:
    mean = StreamingWeightedMean()
    for path in paths:
        reply = loader.load(path)
        mean.add(reply.arrays, reply.metrics)
        del reply
    return aggregate_streamed(make_strategy("FedAvg"), 1, mean)[0]


def flower_with_loading(loader: _BundleLoader, paths: list[Path]) -> Arrays:
    return aggregate_train(make_strategy("FedAvg"), 1, [loader.load(p) for p in paths])[0]


def _median_s(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_stream_vs_flower(
    root: Path, updates: int, params: int, repeat: int, seed: int
) -> dict[str, Any]:
    directory = root / "b"
    directory.mkdir()
    echo(f"[b] packing {updates} updates of {params:,} parameters")
    global_arrays = make_model(params, seed)
    by_name = {name: (array_hash(a), a) for name, a in global_arrays}
    parent = model_hash(global_arrays)
    steps = Steps(sum(a.size for _, a in global_arrays), seed)
    coordinator = _b_identity(0)
    paths = []
    for i in range(updates):
        examples, metrics = steps.metrics()
        update = ModelUpdate(1, parent, examples, metrics, steps.apply(global_arrays))
        packed = pack_bundle(
            directory,
            update,
            _b_identity(i + 1),
            federation=B_FEDERATION,
            round=1,
            seq=1,
            recipients=[coordinator.public],
            encrypt=True,
            parents=by_name,
        )
        if packed.path is None:
            raise RuntimeError("pack_bundle returned no path")
        paths.append(packed.path)
    loader = _BundleLoader(global_arrays, updates)
    replies = [loader.load(p) for p in paths]
    messages = [_reply_message(r.node_id, r.arrays, r.metrics, 1, 0) for r in replies]

    def flower_in_memory() -> Arrays:
        return aggregate_train(make_strategy("FedAvg"), 1, replies)[0]

    def flower_only() -> Any:
        return make_strategy("FedAvg").aggregate_train(1, messages)

    ours = streamed(loader, paths)
    theirs = flower_in_memory()
    diff = max(
        float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
        for (_, a), (_, b) in zip(ours, theirs, strict=True)
    )
    del ours, theirs
    echo("[b] timing")
    result: dict[str, Any] = {
        "updates": updates,
        "values": sum(a.size for _, a in global_arrays),
        "model_bytes": raw_bytes(global_arrays),
        "bundle_bytes": sum(p.stat().st_size for p in paths),
        "max_abs_diff": diff,
        "streamed_s": _median_s(lambda: streamed(loader, paths), repeat),
        "flower_memory_s": _median_s(flower_in_memory, repeat),
        "flower_only_s": _median_s(flower_only, repeat),
        "flower_loading_s": _median_s(lambda: flower_with_loading(loader, paths), repeat),
        "load_only_s": _median_s(lambda: [loader.load(p) for p in paths], repeat),
    }
    common = {
        "op": "b-memory",
        "params": params,
        "seed": seed,
        "updates": updates,
        "paths": [str(p) for p in paths],
    }
    for variant in ("streamed", "flower"):
        memory = run_child(__file__, {**common, "variant": variant})
        result[f"{variant}_extra"] = memory["extra_bytes"]
        result["method"] = memory["method"]
    shutil.rmtree(directory)
    return result


# ---------------------------------------------------------------------------- report


def _versions() -> str:
    import flwr

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return (
        f"Python {platform.python_version()}, numpy {np.__version__}, flwr {flwr.__version__};"
        f" {os.cpu_count()} CPUs, {ram / GB:.1f} GB RAM"
    )


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def _close_lines(r: dict[str, Any], title: str) -> list[str]:
    n = r["updates"]
    per_update = r["seconds"] / n
    pass_s = r["baseline_open_s"] * n
    runs = len(r["closes"])
    memory = f"  peak RSS growth: {r['extra_bytes'] / MB:.1f} MB"
    if r["model_bytes"] >= MB:  # ratios to a model of a few KB say nothing
        memory += (
            f" = {r['extra_bytes'] / r['model_bytes']:.2f}x the model"
            f" = {r['extra_bytes'] / max(r['baseline_open_extra'], 1):.2f}x opening one"
            f" update ({r['baseline_open_extra'] / MB:.0f} MB)"
        )
    lines = [
        f"{title}: {n} updates x {r['values']:,} float32 values "
        f"({r['model_bytes'] / MB:.3f} MB raw per model; update bundles "
        f"{r['update_bytes'] / GB:.2f} GB, {r['update_bytes'] / n / r['model_bytes']:.3f}x raw)",
        "  setup (not measured as close): "
        + ", ".join(f"{k} {v:.1f} s" for k, v in r["setup"].items()),
        f"  close_round: {r['seconds']:.2f} s{' (median of ' + str(runs) + ')' if runs > 1 else ''}"
        f" = {per_update * 1000:.1f} ms per update"
        f" = {r['seconds'] / pass_s:.2f}x one verifying pass over the updates"
        f" (baseline: open_bundle median {r['baseline_open_s'] * 1000:.1f} ms/update over"
        f" {r['baseline_count']}, x{n} = {pass_s:.2f} s)",
        f"{memory}; reached during: {r['peak_phase']} [{r['method']}]",
        "  breakdown (exclusive seconds, share of close):",
    ]
    for name in PHASES:
        seconds = r["phases"][name]
        lines.append(f"    {name:<38} {seconds:>9.3f} s {seconds / r['seconds']:>6.1%}")
    return lines


def report(results: dict[str, Any]) -> str:
    lines = [f"coordinator benchmark; {results['versions']}", ""]
    if "a" in results:
        a = results["a"]
        lines += _close_lines(a, "(a) close at scale, FedAvg, agreement scoring")
        if a["values"] == results["target_values"] and a["updates"] == results["target_updates"]:
            scale = 1.0
            note = "measured at full size"
        else:
            scale = (results["target_updates"] * results["target_values"]) / (
                a["updates"] * a["values"]
            )
            note = (
                f"EXTRAPOLATED from {a['updates']} x {a['values']:,} to "
                f"{results['target_updates']} x {results['target_values']:,} (time x{scale:.1f}"
                " linearly in updates x values; memory does not grow with updates, scaled by"
                " values)"
            )
        seconds = a["seconds"] * scale
        peak = a["extra_bytes"] * results["target_values"] / a["values"]
        lines.append(
            f"  target peak <= {TARGET_PEAK_GB:.0f} GB: {_verdict(peak <= TARGET_PEAK_GB * GB)}"
            f" ({peak / GB:.2f} GB = {peak / (TARGET_PEAK_GB * GB):.2f}x the target);"
            f" close {seconds:.0f} s; {note}"
        )
        lines.append("")
    if "b" in results:
        b = results["b"]
        base = b["flower_memory_s"]
        lines += [
            f"(b) streamed vs Flower FedAvg: {b['updates']} updates x {b['values']:,} values"
            f" ({b['model_bytes'] / MB:.1f} MB each, bundles {b['bundle_bytes'] / MB:.0f} MB);"
            f" medians of {results['repeat']}; baseline = Flower in memory",
            f"  Flower aggregate_train, arrays in memory (adapter builds Messages): "
            f"{base:.3f} s  1.00x",
            f"  Flower FedAvg.aggregate_train alone, Messages pre-built:           "
            f"{b['flower_only_s']:.3f} s  {b['flower_only_s'] / base:.2f}x",
            f"  streamed, from disk (open_bundle + StreamingWeightedMean + step):   "
            f"{b['streamed_s']:.3f} s  {b['streamed_s'] / base:.2f}x",
            f"  Flower FedAvg including loading the same bundles:                  "
            f"{b['flower_loading_s']:.3f} s  {b['flower_loading_s'] / base:.2f}x",
            f"  (loading alone: {b['load_only_s']:.3f} s = {b['load_only_s'] / base:.2f}x)",
            f"  streamed / Flower-with-loading time: "
            f"{b['streamed_s'] / b['flower_loading_s']:.2f}x; streamed / Flower-in-memory: "
            f"{b['streamed_s'] / base:.2f}x",
            f"  peak RSS growth: streamed {b['streamed_extra'] / MB:.0f} MB"
            f" ({b['streamed_extra'] / b['model_bytes']:.2f}x a model), Flower with loading"
            f" {b['flower_extra'] / MB:.0f} MB ({b['flower_extra'] / b['model_bytes']:.2f}x);"
            f" streamed / Flower = {b['streamed_extra'] / b['flower_extra']:.2f}x"
            f" [{b['method']}]",
            f"  results agree: max |streamed - Flower| = {b['max_abs_diff']:.2e}"
            " (float64 accumulator vs Flower's float32 sum)",
            "",
        ]
    for key, title in (
        ("c", "(c) small model, agreement scoring (no validation set)"),
        ("c_validation", "(c) small model, leave-one-out validation scoring"),
    ):
        if key in results:
            c = results[key]
            lines += _close_lines(c, title)
            lines.append(
                f"  target < {TARGET_SMALL_CLOSE_S:.0f} s:"
                f" {_verdict(c['seconds'] < TARGET_SMALL_CLOSE_S)}"
                f" ({c['seconds'] / TARGET_SMALL_CLOSE_S:.2f}x the target)"
            )
            lines.append("")
    lines.append(
        "notes: MB/GB = 10^6/10^9 bytes; peak RSS growth is measured in a fresh child process"
        " after the home is open (VmHWM reset), so imports are not counted; the page cache"
        " holds recently written bundles, so disk reads are mostly memory copies here;"
        " other processes may share the 2 CPUs."
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=200, help="(a) number of updates")
    parser.add_argument("--params", type=int, default=25_000_000, help="(a) model values")
    parser.add_argument("--b-updates", type=int, default=20)
    parser.add_argument("--b-params", type=int, default=2_500_000)
    parser.add_argument("--c-updates", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5, help="runs per median in (b), (c)")
    parser.add_argument("--parts", default="a,b,c", help="comma-separated: a, b, c")
    parser.add_argument("--dir", help="where to put the temporary homes (default: $TMPDIR)")
    parser.add_argument("--profile", action="store_true", help="cProfile (a)'s close")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a report")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        child = {"close": child_close, "open": child_open, "b-memory": child_b_memory}
        print(json.dumps(child[spec["op"]](spec)))
        return 0
    parts = set(args.parts.split(","))
    root = Path(tempfile.mkdtemp(prefix="bench-coordinator-", dir=args.dir))
    if "a" in parts:
        free = shutil.disk_usage(root).free
        need = _estimate_disk(args.updates, args.params)
        if need > free * 0.9:
            shutil.rmtree(root)
            parser.error(
                f"(a) needs about {need / GB:.1f} GB on {root.parent}, {free / GB:.1f} GB free;"
                " use --dir elsewhere or fewer --updates/--params"
            )
        echo(f"(a) needs about {need / GB:.1f} GB under {root} ({free / GB:.1f} GB free)")
    results: dict[str, Any] = {
        "versions": _versions(),
        "repeat": args.repeat,
        "target_updates": 200,
        "target_values": sum(int(np.prod(s)) for s in model_shapes(25_000_000).values()),
    }
    try:
        if "c" in parts:
            for key, validation in (("c", False), ("c_validation", True)):
                results[key] = bench_close(
                    root,
                    key,
                    args.c_updates,
                    0,
                    validation=validation,
                    repeat=args.repeat,
                    profile=False,
                    seed=args.seed,
                )
        if "b" in parts:
            results["b"] = bench_stream_vs_flower(
                root, args.b_updates, args.b_params, args.repeat, args.seed
            )
        if "a" in parts:
            results["a"] = bench_close(
                root,
                "a",
                args.updates,
                args.params,
                validation=False,
                repeat=1,
                profile=args.profile,
                seed=args.seed,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(results, indent=2) if args.json else report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
