"""Benchmark the agent's own overhead around training (issue 6), in one run.

    python benchmarks/bench_agent.py [--params 25000000] [--rounds 5] [--dir DIR] [--json]

Setup, all through the real APIs: a coordinator home (``Coordinator.init`` with a float32
model of ``--params`` values in four arrays, FedAvg), an agent home (``Agent.init`` with
the coordinator's invite), the enrollment request carried over a simulated stick
(``Agent.sync`` / ``sync_media``), ``Coordinator.approve``, and the roster and ledger
delta carried back.  Then, per round (``--rounds`` of them, so every figure is a median):

1. the coordinator opens the round (``open_round``, or ``close_round`` of the previous
   one), writing the GlobalModel and the agent's RoundTask into its outbox;
2. in a fresh child process the agent (``Agent.open``) imports what the coordinator wrote
   for it (``import_files`` + ``ingest``: copy into the inbox, verify, decompress, check
   the model hash, store the model; from round 2 also a receipt and a ledger delta, as
   one sync brings them), then runs ``Agent.train(app)``: load the model, run the
   ClientApp through Flower's Message API, check the reply, pack + sign + encrypt (XOR
   delta against the global model) + write the update into the outbox;
3. the coordinator ingests the update, and the round closes.

The ClientApp (:data:`app`, below) is a stand-in for training written as a user would
write it with ``flwr``: it returns ``global + 1e-3 * noise`` and times itself, so

    agent overhead = import + train - app

Peak RSS growth is measured in the child from the moment the home is open (``VmHWM``
reset through ``/proc/self/clear_refs``, minus ``VmRSS`` then), over import and over
train, as a multiple of the raw model size; the app's own arrays are part of train's
peak (a Flower app holds at least the model it receives and the one it returns).

Baselines from the same run, on the same arrays: the envelope alone (``open_bundle`` of
the coordinator's GlobalModel bundle + ``pack_bundle`` of an encrypted XOR-delta update,
which the agent cannot avoid) and the raw I/O floor (``np.save`` + fsync + ``np.load``).

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from measure import Peak, run_child, status_kb

import agent.home as agent_home
import spool.home as spool_home
from agent.home import Agent
from bundle.arrays import array_hash
from bundle.envelope import open_bundle, pack_bundle
from bundle.payloads import ModelUpdate
from coordinator.home import Coordinator
from coordinator.rounds import close_round, open_round
from spool.identity_files import public_to_json
from spool.media import sync_media

Arrays = list[tuple[str, np.ndarray[Any, Any]]]

PASSPHRASE = "benchmark-only-passphrase"  # throwaway homes
MB = 1e6
STEP = np.float32(1e-3)
NOISE_BLOCK = 1 << 20
TARGET_OVERHEAD_S = 1.0
TARGET_MEMORY_X = 3.0


# Flower logs every configure/aggregate call at INFO; the report says it better.
logging.getLogger("flwr").setLevel(logging.ERROR)


def echo(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- the app

app = ClientApp()
APP_SECONDS: list[float] = []


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Stand-in for training: every weight moves by ``1e-3 * noise``, one array at a time,
    in place (the app's memory is the model it reads and the record it returns)."""
    started = time.perf_counter()
    entered = CLOCK is not None and CLOCK.enter(APP)
    server_round = msg.content.config_records["config"]["server-round"]
    if not isinstance(server_round, int):
        raise TypeError(f"server-round must be an int, got {server_round!r}")
    rng = np.random.default_rng(server_round)
    record = ArrayRecord()
    for name, array in msg.content.array_records["arrays"].items():
        value = array.numpy()
        flat = value.reshape(-1)
        for start in range(0, flat.size, NOISE_BLOCK):
            block = flat[start : start + NOISE_BLOCK]
            noise = rng.standard_normal(block.size, dtype=np.float32)
            noise *= STEP
            block += noise
        record[name] = Array(value)
        del value, flat
    metrics = MetricRecord({"train_loss": 0.5, "num-examples": 1000})
    reply = Message(RecordDict({"arrays": record, "metrics": metrics}), reply_to=msg)
    if entered and CLOCK is not None:
        CLOCK.exit()
    APP_SECONDS.append(time.perf_counter() - started)
    return reply


# ---------------------------------------------------------------------------- inputs


def make_model(params: int, seed: int) -> Arrays:
    """Four standard-normal float32 arrays (60/30/10 % of the rows, and a bias)."""
    cols = 1000 if params >= 100_000 else 10
    bias = min(1000, params // 100)
    rows = (params - bias) // cols
    shapes = {
        "encoder.weight": (rows * 6 // 10, cols),
        "decoder.weight": (rows * 3 // 10, cols),
        "head.weight": (rows - rows * 6 // 10 - rows * 3 // 10, cols),
        "head.bias": (bias,),
    }
    rng = np.random.default_rng(seed)
    return [(name, rng.standard_normal(s, dtype=np.float32)) for name, s in shapes.items()]


# ---------------------------------------------------------------------------- memory


# ---------------------------------------------------------------------------- phases

COPY = "import: copy into the inbox (fsync)"
HELD = "import: load older models from the store (XOR parents)"
OPEN = "import: open bundles (verify, decompress, decode)"
STORE = "import: check model hash + store model"
READ = "train: read model back from the store (hash-checked)"
FLOWER = "train: Flower Message in, reply checked out"
APP = "train: the ClientApp itself (user code; not overhead)"
PACK = "train: pack + sign + encrypt + write the update"
OTHER = "other (ingest DB/receipts/archive, task checks, ModelUpdate checks)"
PHASES = (COPY, HELD, OPEN, STORE, READ, FLOWER, APP, PACK, OTHER)


class PhaseClock:
    """Exclusive wall time per phase: a nested phase's time is taken out of its parent's;
    an ``absorb`` phase counts everything it calls as its own."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self._stack: list[list[Any]] = []  # [name, start, nested seconds, absorb]

    def enter(self, name: str, absorb: bool = False) -> bool:
        if self._stack and self._stack[-1][3]:
            return False
        self._stack.append([name, time.perf_counter(), 0.0, absorb])
        return True

    def exit(self) -> None:
        name, start, nested, _ = self._stack.pop()
        elapsed = time.perf_counter() - start
        self.seconds[name] += elapsed - nested
        if self._stack:
            self._stack[-1][2] += elapsed

    def wrap(self, fn: Callable[..., Any], name: str, absorb: bool = False) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            entered = self.enter(name, absorb)
            try:
                return fn(*args, **kwargs)
            finally:
                if entered:
                    self.exit()

        return timed


CLOCK: PhaseClock | None = None  # set in the child; the app reports its own time to it


def instrument(agent: Agent, clock: PhaseClock) -> None:
    """Wrap what import and train call (this child process only)."""
    setattr(agent, "import_files", clock.wrap(agent.import_files, COPY))  # noqa: B010
    setattr(agent, "_held", clock.wrap(agent._held, HELD, absorb=True))  # noqa: B010
    setattr(spool_home, "open_bundle", clock.wrap(getattr(spool_home, "open_bundle"), OPEN))  # noqa: B009,B010
    setattr(agent, "_on_global_model", clock.wrap(agent._on_global_model, STORE))  # noqa: B010
    setattr(agent.models, "get", clock.wrap(agent.models.get, READ))  # noqa: B010
    run_app = clock.wrap(getattr(agent_home, "run_client_app"), FLOWER)  # noqa: B009
    setattr(agent_home, "run_client_app", run_app)  # noqa: B010
    if agent.spool is not None:
        setattr(agent.spool, "send", clock.wrap(agent.spool.send, PACK, absorb=True))  # noqa: B010


# ---------------------------------------------------------------------------- the child


def child_round(spec: dict[str, Any]) -> dict[str, Any]:
    """One round as the agent: import the coordinator's bundles, train, write the update."""
    global CLOCK
    agent = Agent.open(Path(spec["home"]), PASSPHRASE)
    CLOCK = clock = PhaseClock()
    instrument(agent, clock)
    try:
        # Everything the coordinator wrote for us since the last round, as one sync brings
        # it: the GlobalModel and RoundTask, and from round 2 a receipt and a ledger delta.
        files = [Path(p) for p in spec["model"] + spec["other"]]
        peak = Peak()
        started = time.perf_counter()
        report = agent.ingest(agent.import_files(files))
        import_s = time.perf_counter() - started
        import_extra = peak.extra_bytes()
        if len(report.accepted) != len(files):
            raise RuntimeError(f"import refused: {report.rejected}")
        peak.reset()
        profiler = cProfile.Profile() if spec.get("profile") else None
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        result = agent.train(app)
        if profiler is not None:
            profiler.disable()
        train_s = time.perf_counter() - started
        train_extra = peak.extra_bytes()
        after_kb = status_kb("VmRSS")
    finally:
        agent.close()
    if result.path is None:
        raise RuntimeError("train wrote no update")
    if profiler is not None:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(45)
        print(text.getvalue(), file=sys.stderr)
    return {
        "import_s": import_s,
        "train_s": train_s,
        "app_s": APP_SECONDS[-1],
        "import_extra": import_extra,
        "train_extra": train_extra,
        "retained_after": (after_kb - peak.before_kb) * 1024,
        "method": peak.method,
        "phases": {
            **clock.seconds,
            OTHER: import_s + train_s - sum(v for k, v in clock.seconds.items() if k != OTHER),
        },
        "update": str(result.path),
        "update_bytes": result.path.stat().st_size,
    }


# ---------------------------------------------------------------------------- the run


def _outbox_for(coord: Coordinator, agent_key: str) -> set[Path]:
    return {p for p in coord.spool.outbox_files() if p.parent.name in (agent_key, "all")}


def run_rounds(
    root: Path, params: int, rounds: int, seed: int, profile: bool = False
) -> dict[str, Any]:
    initial = root / "initial.npz"
    named: dict[str, Any] = dict(make_model(params, seed))
    np.savez(initial, **named)
    del named
    coord = Coordinator.init(
        root / "coordinator",
        "benchmark",
        PASSPHRASE,
        rounds=rounds + 1,
        quorum=1,
        seed=seed,
        initial_model=initial,
        fast_kdf=True,
    )
    samples: list[dict[str, Any]] = []
    try:
        invite = {
            "federation_name": coord.config.federation_name,
            "federation_id": coord.config.federation_id.hex(),
            "coordinator": public_to_json(coord.identity.public),
        }
        home = root / "agent"
        stick = root / "stick"
        stick.mkdir()
        with Agent.init(home, "agent-000", PASSPHRASE, invite=invite, fast_kdf=True) as agent:
            agent.sync(stick)
            sync_media(coord.spool, coord, stick)
            coord.approve("agent-000")
            sync_media(coord.spool, coord, stick)
            agent.sync(stick)
            agent_key = agent.key_id.hex()
        model_bytes = sum(a.nbytes for _, a in coord.global_arrays())
        for number in range(1, rounds + 1):
            before = _outbox_for(coord, agent_key)
            if number == 1:
                open_round(coord)
            else:
                close_round(coord, force=True)  # closes the previous round, opens this one
            new = sorted(_outbox_for(coord, agent_key) - before)
            model = [p for p in new if p.name.startswith(("global-model.", "round-task."))]
            other = [p for p in new if p not in model]
            echo(f"round {number}: agent imports {len(model) + len(other)} bundles, trains")
            sample = run_child(
                __file__,
                {
                    "op": "round",
                    "home": str(home),
                    "model": [str(p) for p in model],
                    "other": [str(p) for p in other],
                    "profile": profile,
                },
            )
            update = Path(sample["update"])
            shutil.copy(update, coord.spool.dirs.inbox / update.name)
            report = coord.spool.ingest(coord)
            if report.rejected:
                raise RuntimeError(f"coordinator refused the update: {report.rejected}")
            sample["global_bytes"] = sum(
                p.stat().st_size for p in model if p.name.startswith("global-model.")
            )
            samples.append(sample)
        global_bundle = next(p for p in model if p.name.startswith("global-model."))
        baselines = _baselines(root, coord, global_bundle)
    finally:
        coord.close()
    return {"model_bytes": model_bytes, "samples": samples, **baselines}


def _baselines(root: Path, coord: Coordinator, global_bundle: Path) -> dict[str, float]:
    """The envelope's own open + pack of these arrays, and raw save/fsync/load."""
    arrays = coord.global_arrays()
    parents = {name: (array_hash(a), a) for name, a in arrays}
    update = ModelUpdate(
        1, coord.model_hash, 1000, {"loss": 0.5}, [(n, a + STEP) for n, a in arrays]
    )
    scratch = root / "baseline"
    scratch.mkdir()
    recipient = [coord.identity.public]

    def envelope() -> None:
        open_bundle(global_bundle, lambda k: coord.identity.public)
        pack_bundle(
            scratch,
            update,
            coord.identity,
            federation=coord.config.federation_id,
            recipients=recipient,
            encrypt=True,
            parents=parents,
        )

    def raw_io() -> None:
        path = scratch / "model.npy"
        with open(path, "wb") as f:
            for _, a in arrays:
                np.save(f, a)
            f.flush()
            os.fsync(f.fileno())
        with open(path, "rb") as f:
            for _ in arrays:
                np.load(f, allow_pickle=False)

    out = {"envelope_s": _median(envelope, 5), "raw_io_s": _median(raw_io, 5)}
    shutil.rmtree(scratch)
    return out


def _median(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(statistics.median(times))


# ---------------------------------------------------------------------------- report


def report(r: dict[str, Any]) -> str:
    s = r["samples"]
    size = r["model_bytes"]

    def med(key: str) -> float:
        return float(statistics.median(x[key] for x in s))

    overhead = [x["import_s"] + x["train_s"] - x["app_s"] for x in s]
    over = statistics.median(overhead)
    train_own = statistics.median(x["train_s"] - x["app_s"] for x in s)
    peak = statistics.median(max(x["import_extra"], x["train_extra"]) for x in s)
    import flwr

    lines = [
        f"agent benchmark: {size / MB:.1f} MB float32 model ({size // 4:,} values),"
        f" median of {len(s)} rounds, each in a fresh child process",
        f"Python {platform.python_version()}, numpy {np.__version__}, flwr"
        f" {flwr.__version__}; {os.cpu_count()} CPUs",
        "",
        f"  import the round's bundles (GlobalModel + RoundTask [+ receipt, ledger delta]):"
        f" {med('import_s'):.3f} s",
        f"  train total: {med('train_s'):.3f} s, of which the ClientApp {med('app_s'):.3f} s"
        f" -> agent part of train {train_own:.3f} s",
        f"  agent overhead (import + train - app): {over:.3f} s"
        f" (runs: {', '.join(f'{o:.2f}' for o in overhead)})",
        f"    = {over / r['envelope_s']:.2f}x the envelope alone (open_bundle of the"
        f" GlobalModel + pack_bundle of the update: {r['envelope_s']:.3f} s)",
        f"    = {over / r['raw_io_s']:.2f}x raw np.save + fsync + np.load ({r['raw_io_s']:.3f} s)",
        f"  peak RSS growth: import {med('import_extra') / MB:.0f} MB"
        f" ({med('import_extra') / size:.2f}x the model), train incl. the app"
        f" {med('train_extra') / MB:.0f} MB ({med('train_extra') / size:.2f}x);"
        f" still held after train {med('retained_after') / MB:.0f} MB [{s[0]['method']}]",
        "  breakdown of import + train (exclusive seconds, medians):",
        *(
            f"    {name:<66} {statistics.median(x['phases'][name] for x in s):>7.3f} s"
            for name in PHASES
        ),
        f"  bundles: GlobalModel {med('global_bytes') / MB:.1f} MB, update"
        f" {med('update_bytes') / MB:.1f} MB ({med('update_bytes') / size:.3f}x raw)",
        f"  targets: overhead < {TARGET_OVERHEAD_S:.0f} s:"
        f" {'ok' if over < TARGET_OVERHEAD_S else 'MISSED'}"
        f" ({over / TARGET_OVERHEAD_S:.2f}x the budget); peak <= {TARGET_MEMORY_X:.0f}x the"
        f" model: {'ok' if peak <= TARGET_MEMORY_X * size else 'MISSED'}"
        f" ({peak / size:.2f}x)",
        "notes: MB = 10^6 bytes; the page cache holds the bundles the coordinator just"
        " wrote; other processes may share the 2 CPUs.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=int, default=25_000_000, help="model values")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (samples) to run")
    parser.add_argument("--dir", help="where to put the temporary homes (default: $TMPDIR)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--profile", action="store_true", help="cProfile train (stderr)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a report")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child_round(json.loads(args.child))))
        return 0
    root = Path(tempfile.mkdtemp(prefix="bench-agent-", dir=args.dir))
    try:
        results = run_rounds(root, args.params, args.rounds, args.seed, args.profile)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(results, indent=2) if args.json else report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
