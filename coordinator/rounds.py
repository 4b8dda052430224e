"""The round engine: open -> collecting -> closed, over real Flower strategies.

**Open** runs the strategy's ``configure_train`` (seeded sampling), writes the global model
once for the round and one task per sampled agent, and checkpoints the strategy state.

**Ingest** of a model update (:func:`accept_update`) checks it against the round: open,
agent sampled, right parent model, same shapes and dtypes as the global model, one per
agent; ``num-examples`` is capped.  An update for a closed round gets a 'late' receipt.

**Close** (quorum reached, deadline passed, or forced) reads the verified updates back from
the archive one at a time, aggregates them (a streaming weighted mean for the linear
strategies, so memory does not grow with the number of updates; Flower's own
``aggregate_train`` over all replies for the robust ones), measures each contribution,
rewards it, appends the ledger entries, and in one transaction stores the new model, the
strategy state, reputations, ledger deltas and the next round's tasks.

Close is deterministic given its inputs, and the ledger append is skipped when the ledger
already holds this round's close entry, so a coordinator killed at any point during close
and restarted produces the same model bit for bit and counts nothing twice.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bundle import cbor
from bundle.arrays import Arrays
from bundle.envelope import OpenedBundle, bundle_name, open_bundle
from bundle.errors import LLTokenError, SchemaError
from bundle.ledger import Reward as RewardEntry
from bundle.ledger import RoundClose, decode_entry
from bundle.payloads import GlobalModel, ModelUpdate, RoundTask
from coordinator import rewards
from coordinator.config import load_callable
from coordinator.flower_adapter import (
    Reply,
    StreamingWeightedMean,
    aggregate_streamed,
    aggregate_train,
    configure_train,
    make_strategy,
    restore_state,
    strategy_needs,
    strategy_state,
)
from spool.home import Outcome

if TYPE_CHECKING:
    from coordinator.home import Coordinator

MAX_METRIC = 1e6  # self-reported metrics are recorded clipped to this magnitude
_STEP_BLOCK = 1 << 20  # values per float64 block when scoring steps (8 MiB)


class RoundError(LLTokenError):
    """A round command that cannot run now (no open round, quorum not met, all done)."""

    exit_code = 45


def _crash_point(step: str) -> None:
    """No-op in production; tests replace it in a child process to kill -9 at ``step``."""


# ---------------------------------------------------------------------------- strategy


def build_strategy(coord: Coordinator, number: int, phase: str) -> Any:
    """The configured strategy, with its state as checkpointed at (round, phase)."""
    active = len(coord.state.agents("active"))
    wanted = coord.config.participants_per_round or active
    params: dict[str, Any] = {"fraction_evaluate": 0.0}
    if active:
        params.update(
            fraction_train=min(1.0, wanted / active),
            min_train_nodes=min(wanted, active),
            min_available_nodes=min(wanted, active),
        )
    params.update(coord.config.strategy_params)
    strategy = make_strategy(coord.config.strategy, params)
    row = coord.conn.execute(
        "SELECT state FROM strategy_state WHERE round = ?", (_state_key(number, phase),)
    ).fetchone()
    if row is not None:
        restore_state(strategy, cbor.decode(bytearray(row[0])))
    return strategy


def _state_key(number: int, phase: str) -> int:
    return 2 * number + (1 if phase == "closed" else 0)


def _save_strategy(coord: Coordinator, strategy: Any, number: int, phase: str) -> None:
    coord.conn.execute(
        "INSERT OR REPLACE INTO strategy_state (round, state) VALUES (?, ?)",
        (_state_key(number, phase), cbor.encode(strategy_state(strategy))),
    )


# ---------------------------------------------------------------------------- open


def open_round(coord: Coordinator) -> dict[str, Any]:
    """Open the next round (see module docstring).

    Raises:
        RoundError: a round is still collecting, or every configured round has run.
        StrategyError: fewer active agents than the strategy needs.
    """
    with coord.spool.transaction():
        return _open_round(coord)


def _open_round(coord: Coordinator) -> dict[str, Any]:
    current = coord.current_round()
    row = coord.state.round_row(current) if current else None
    if row is not None and row["status"] == "collecting":
        raise RoundError(
            f"round {current} is still collecting; close it first",
            expected="no open round",
            found=f"round {current} collecting",
        )
    number = current + 1
    if number > coord.config.rounds:
        raise RoundError(
            "every configured round has run",
            expected=f"<= {coord.config.rounds} rounds",
            found=number,
            where="config.toml [federation] rounds",
        )
    active = [a for a in coord.state.agents("active") if a.node_id is not None]
    strategy = build_strategy(coord, number - 1, "closed")
    arrays = coord.global_arrays()
    base_config: dict[str, Any] = {}
    for key in ("lr", "local-epochs"):
        if key in coord.config.run_config:
            base_config[key] = coord.config.run_config[key]
    sampled = configure_train(
        strategy,
        number,
        arrays,
        base_config,
        [a.node_id for a in active if a.node_id],
        coord.config.seed,
    )
    by_node = {a.node_id: a for a in active}
    deadline = number + coord.config.deadline_rounds - 1
    recipients = [coord.public_of(by_node[node]) for node, _ in sampled]
    model_hash = coord.model_hash
    coord.spool.send(
        GlobalModel(number, model_hash, arrays), to=recipients, round=number, expires=deadline + 1
    )
    tasks = {}
    for node, config in sampled:
        agent = by_node[node]
        task = RoundTask(
            number,
            "train",
            agent.key_id,
            model_hash,
            _plain_config(config),
            _plain_config(coord.config.run_config),
            deadline,
        )
        coord.spool.send(task, to=[coord.public_of(agent)], round=number, expires=deadline + 1)
        tasks[agent.key_id.hex()] = config
    coord.conn.execute(
        "INSERT INTO rounds (round, status, model_hash, sampled, opened_at) VALUES "
        "(?, 'collecting', ?, ?, ?)",
        (number, model_hash, json.dumps(tasks), time.time()),
    )
    coord.state.set("current_round", number)
    _save_strategy(coord, strategy, number, "open")
    return {
        "round": number,
        "sampled": [by_node[n].name for n, _ in sampled],
        "model_hash": model_hash.hex(),
    }


def _plain_config(config: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, np.generic):
            value = value.item()
        out[str(key)] = value
    return out


# ---------------------------------------------------------------------------- ingest


def accept_update(coord: Coordinator, bundle: OpenedBundle, update: ModelUpdate) -> Outcome:
    """Validate a model update against its round and record it (inside ingest).

    Raises:
        SchemaError: not for a round that exists, not sampled, wrong parent model,
            shapes/dtypes differ, or a second update for the same round.
    """
    agent = bundle.header.sender
    row = coord.state.round_row(update.round)
    where = f"model-update from {agent.hex()[:16]} for round {update.round}"
    if row is None:
        raise SchemaError(
            "update for a round that was never opened",
            where=where,
            expected=f"round <= {coord.current_round()}",
            found=update.round,
        )
    if row["status"] == "closed":
        coord.conn.execute(
            "INSERT OR IGNORE INTO updates VALUES (?, ?, ?, ?, ?, ?, 'late', ?)",
            (
                update.round,
                agent,
                bundle.bundle_id,
                _name(bundle),
                update.num_examples,
                "{}",
                bundle.size,
            ),
        )
        return Outcome(
            "late", f"round {update.round} closed before this update arrived; it was not aggregated"
        )
    if agent.hex() not in row["sampled"]:
        raise SchemaError("agent was not sampled for this round", where=where)
    if update.parent_hash != row["model_hash"]:
        raise SchemaError(
            "update was trained from the wrong parent model",
            where=where,
            expected=row["model_hash"].hex(),
            found=update.parent_hash.hex(),
        )
    reference = coord.model(row["model_hash"])
    got = [(n, a.shape, a.dtype.name) for n, a in update.arrays]
    want = [(n, a.shape, a.dtype.name) for n, a in reference]
    if got != want:
        raise SchemaError(
            "update arrays differ from the global model's", where=where, expected=want, found=got
        )
    if coord.conn.execute(
        "SELECT 1 FROM updates WHERE round = ? AND agent = ?", (update.round, agent)
    ).fetchone():
        raise SchemaError("a second update for the same round", where=where)
    metrics = {
        k: (max(-MAX_METRIC, min(MAX_METRIC, v)) if isinstance(v, float) else v)
        for k, v in update.metrics.items()
    }
    examples = min(update.num_examples, coord.config.max_num_examples)
    coord.conn.execute(
        "INSERT INTO updates VALUES (?, ?, ?, ?, ?, ?, 'accepted', ?)",
        (
            update.round,
            agent,
            bundle.bundle_id,
            _name(bundle),
            examples,
            json.dumps(metrics),
            bundle.size,
        ),
    )
    return Outcome("accepted", f"update for round {update.round} recorded")


def refuse_update(coord: Coordinator, agent: bytes) -> None:
    """A rejected or invalid bundle from an agent costs reputation."""
    row = coord.state.agent(agent)
    if row is not None:
        coord.state.update_agent(
            agent,
            reputation=rewards.penalised(
                row.reputation, rewards.REJECT_PENALTY, coord.config.rewards
            ),
        )


def _name(bundle: OpenedBundle) -> str:
    return bundle_name(bundle.header.kind, bundle.bundle_id)


# ---------------------------------------------------------------------------- close


@dataclass(frozen=True)
class _Contribution:
    agent: bytes
    bundle_id: bytes
    num_examples: int
    metrics: dict[str, Any]
    size: int
    node_id: int


def _node_of(coord: Coordinator, agent: bytes) -> int:
    row = coord.state.agent(agent)
    if row is None or row.node_id is None:
        raise SchemaError("update from an agent without a node id", where=agent.hex())
    return row.node_id


def ready_to_close(coord: Coordinator) -> tuple[bool, str]:
    """Whether the open round may close now: quorum met or deadline passed."""
    number = coord.current_round()
    row = coord.state.round_row(number) if number else None
    if row is None or row["status"] != "collecting":
        return False, "no round is collecting"
    got = len(coord.state.updates(number, "accepted"))
    wanted = min(coord.config.quorum, len(row["sampled"]))
    if got >= wanted and got > 0:
        return True, f"quorum met ({got}/{wanted})"
    if (
        coord.config.deadline_seconds
        and time.time() - row["opened_at"] >= coord.config.deadline_seconds
    ):
        return True, "deadline passed"
    return False, f"waiting: {got} of {wanted} updates"


def _load_updates(
    coord: Coordinator, contributions: list[_Contribution]
) -> Iterator[tuple[_Contribution, Arrays]]:
    """Re-open each archived update bundle (verified again), one at a time."""
    parents = coord.parents()
    for c in contributions:
        name = coord.conn.execute(
            "SELECT name FROM updates WHERE bundle_id = ?", (c.bundle_id,)
        ).fetchone()[0]
        # The sender may have been revoked since: the update was verified when it came in
        # and sits in our own archive, so any identity we ever enrolled opens it.
        opened = open_bundle(
            coord.spool.dirs.archive / name,
            coord.any_identity,
            identity=coord.identity,
            parents=parents,
        )
        payload = opened.payload
        if not isinstance(payload, ModelUpdate):
            raise SchemaError("archived update is not a model update", where=name)
        yield c, payload.arrays


def _aggregate(
    coord: Coordinator,
    strategy: Any,
    number: int,
    contributions: list[_Contribution],
    *,
    streaming: bool,
) -> tuple[Arrays, dict[str, Any]]:
    """Aggregate the updates read back from the archive.

    A function of its own so that what aggregation holds (the mean's float64 sums and the
    last update, or every reply) is freed before scoring reads the updates again.
    """
    if streaming:
        mean = StreamingWeightedMean()
        for c, arrays in _load_updates(coord, contributions):
            mean.add(arrays, {**c.metrics, "num-examples": c.num_examples})
        return aggregate_streamed(strategy, number, mean)
    replies = [
        Reply(c.node_id, arrays, {**c.metrics, "num-examples": c.num_examples})
        for c, arrays in _load_updates(coord, contributions)
    ]
    return aggregate_train(strategy, number, replies)


def close_round(coord: Coordinator, *, force: bool = False) -> dict[str, Any]:
    """Close the collecting round; opens the next one up to the configured count.

    Raises:
        RoundError: no round collecting, or quorum not met and deadline not passed
            (use ``force``).
    """
    started = time.monotonic()
    number = coord.current_round()
    row = coord.state.round_row(number) if number else None
    if row is None or row["status"] != "collecting":
        raise RoundError(
            "no round is collecting",
            expected="an open round",
            found=row["status"] if row else "none",
        )
    # A close that reached the ledger before a crash is finished with exactly the updates
    # the ledger names; otherwise only updates from agents still active count (an agent
    # revoked while the round was collecting is left out, not rewarded).
    closed_in_ledger = _ledger_participants(coord, number)
    ok, why = ready_to_close(coord)
    if not ok and not force and closed_in_ledger is None:
        raise RoundError(f"round {number} cannot close yet: {why}; pass --force to close anyway")
    active = {a.key_id for a in coord.state.agents("active")}
    updates = [
        u
        for u in coord.state.updates(number, "accepted")
        if (
            u["agent"] in closed_in_ledger if closed_in_ledger is not None else u["agent"] in active
        )
    ]
    # Flower needs the same metric keys from every reply: keep the ones all reported.
    common = set.intersection(*(set(_numeric(u["metrics"])) for u in updates)) if updates else set()
    contributions = sorted(
        (
            _Contribution(
                u["agent"],
                u["bundle_id"],
                u["num_examples"],
                {k: v for k, v in _numeric(u["metrics"]).items() if k in common},
                u["size"],
                _node_of(coord, u["agent"]),
            )
            for u in updates
        ),
        # Float sums depend on order: always fold updates in node-id order.
        key=lambda c: c.node_id,
    )
    strategy = build_strategy(coord, number, "open")
    previous = coord.model(row["model_hash"])
    validation = coord.validation_set()
    evaluate = _evaluator(coord) if validation is not None else None
    scores: dict[bytes, tuple[float, str]] = {}
    new_arrays = previous
    agg_metrics: dict[str, Any] = {}
    needs = strategy_needs(strategy)
    aggregated = len(contributions) >= max(needs.min_replies, 1)
    if aggregated:
        new_arrays, agg_metrics = _aggregate(
            coord, strategy, number, contributions, streaming=needs.streaming
        )
        # Keep the global model's dtypes (FedAdam's float64 step would otherwise turn a
        # float32 model into float64, and agents' float32 replies would no longer match).
        dtypes = {n: a.dtype for n, a in previous}
        new_arrays = [
            (n, np.asarray(a).astype(dtypes.get(n, np.asarray(a).dtype), copy=False))
            for n, a in new_arrays
        ]
    # Contributions are scored whether or not the strategy could aggregate them.
    if contributions and evaluate is not None and validation is not None:
        scores = _leave_one_out_scores(coord, contributions, previous, evaluate, validation)
    elif contributions and aggregated:
        scores = _agreement_scores(coord, contributions, previous, new_arrays)
    _crash_point("aggregated")

    loss = accuracy = None
    if evaluate and validation:
        loss, accuracy = evaluate(new_arrays, *validation)
    cfg = coord.config.rewards
    entries: list[bytes] = []
    results = []
    agent_updates: dict[bytes, dict[str, Any]] = {}
    for c in contributions:
        agent = coord.state.agent(c.agent)
        if agent is None:
            continue
        streak = agent.streak + 1 if agent.last_round == number - 1 else 1
        quality, method = scores.get(c.agent, (1.0, "not-aggregated"))
        outcome = rewards.reward(quality, agent.reputation, streak, cfg, method)
        breakdown = {
            **outcome.breakdown(),
            "num_examples": c.num_examples,
            "reported": {k: v for k, v in _numeric(c.metrics).items()},
        }
        if outcome.tokens > 0:
            entries.append(
                RewardEntry(
                    c.agent, outcome.tokens, number, _ledger_breakdown(breakdown), c.bundle_id
                ).encode()
            )
        agent_updates[c.agent] = {
            "reputation": outcome.reputation_after,
            "streak": streak,
            "last_round": number,
        }
        results.append(
            {
                "agent": agent.name,
                "key_id": c.agent.hex(),
                "tokens": outcome.tokens,
                **outcome.breakdown(),
            }
        )
    for key_hex in row["sampled"]:
        key_id = bytes.fromhex(key_hex)
        if key_id in agent_updates:
            continue
        agent = coord.state.agent(key_id)
        if agent is not None:
            agent_updates[key_id] = {
                "reputation": rewards.penalised(agent.reputation, rewards.ABSENT_PENALTY, cfg),
                "streak": 0,
            }
    new_hash = coord.models.put(new_arrays)
    # The round-close entry comes first: rewards refer to the round it closed.
    entries.insert(0, RoundClose(number, new_hash, [c.agent for c in contributions]).encode())

    if closed_in_ledger is None:
        coord.ledger.append(entries)
    _crash_point("ledger")
    tokens = sum(r["tokens"] for r in results)
    summary = {
        "round": number,
        "strategy": coord.config.strategy,
        "participants": len(contributions),
        "sampled": len(row["sampled"]),
        "aggregated": aggregated,
        "tokens_distributed": tokens,
        "average_quality": (sum(r["quality"] for r in results) / len(results)) if results else 0.0,
        "loss": loss,
        "accuracy": accuracy,
        "bytes_in": sum(c.size for c in contributions),
        "model_hash": new_hash.hex(),
        "aggregate_metrics": {k: v for k, v in agg_metrics.items() if isinstance(v, int | float)},
        "rewards": results,
        "close_seconds": round(time.monotonic() - started, 3),
    }
    next_round = None
    with coord.spool.transaction():
        for key_id, fields in agent_updates.items():
            coord.state.update_agent(key_id, **fields)
        coord.conn.execute(
            "UPDATE rounds SET status = 'closed', closed_at = ?, summary = ? WHERE round = ?",
            (time.time(), json.dumps(summary), number),
        )
        coord.state.set("model_hash", new_hash.hex())
        _save_strategy(coord, strategy, number, "closed")
        coord.send_ledger_deltas()
        _crash_point("committing")
        if number < coord.config.rounds:
            next_round = _open_round(coord)
    summary["next_round"] = next_round
    return summary


def _ledger_participants(coord: Coordinator, number: int) -> set[bytes] | None:
    """The participants of round ``number``'s round-close entry, if the ledger has one."""
    if not coord.ledger.has_round_close(number):
        return None
    for index in reversed(coord.ledger.find(kind="round-close")):
        entry = decode_entry(coord.ledger.entry(index))
        if isinstance(entry, RoundClose) and entry.round == number:
            return set(entry.participants)
    return None


def _numeric(metrics: dict[str, Any]) -> dict[str, int | float]:
    return {
        k: v
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "num-examples"
    }


def _ledger_breakdown(breakdown: dict[str, Any]) -> dict[str, Any]:
    """Flatten to text -> number, as the ledger's reward entry requires."""
    flat: dict[str, Any] = {}
    for key, value in breakdown.items():
        if isinstance(value, dict):
            for sub, item in value.items():
                flat[f"{key}.{sub}"[:64]] = item
        elif isinstance(value, str):
            continue
        else:
            flat[key] = value
    return flat


def _evaluator(coord: Coordinator) -> Any:
    return load_callable(coord.config.evaluator)


def _leave_one_out_scores(
    coord: Coordinator,
    contributions: list[_Contribution],
    previous: Arrays,
    evaluate: Any,
    validation: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]],
) -> dict[bytes, tuple[float, str]]:
    """Each update's validation gain: the held-out loss of the mean of the round's updates
    without it, minus the loss with it (relative).  Two streaming passes; memory: two
    models.

    The mean is unweighted: ``num-examples`` is self-reported, and an agent must not buy
    quality by claiming more data.  It is the contributions' own mean whatever the
    strategy, so this measures what an update adds, not how a robust aggregator happened
    to treat it.  Without any other update, "without it" is the previous global model.
    """
    sums: dict[str, np.ndarray[Any, Any]] = {}
    count = 0
    for _, arrays in _load_updates(coord, contributions):
        for name, value in arrays:
            if name in sums:
                sums[name] += value  # in place: no third float64 model per update
            else:
                sums[name] = np.array(value, dtype=np.float64)  # a copy we may add into
        count += 1
    names = [n for n, _ in previous]
    loss_with = evaluate([(n, sums[n] / count) for n in names], *validation)[0]
    measured = []
    for c, arrays in _load_updates(coord, contributions):
        if count > 1:
            mine = dict(arrays)
            without = [
                (n, (sums[n] - np.asarray(mine[n], dtype=np.float64)) / (count - 1)) for n in names
            ]
        else:
            without = previous
        loss_without = evaluate(without, *validation)[0]
        _, norm = _step_stats(arrays, previous, None)
        measured.append((c.agent, rewards.quality_from_gain(loss_without, loss_with), norm))
    median = float(np.median([m[2] for m in measured]))
    return {
        agent: (
            quality * rewards.norm_penalty(norm, median) if quality > 0 else quality,
            "leave-one-out-validation",
        )
        for agent, quality, norm in measured
    }


def _dot(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    """Dot product of two flat float64 arrays on this thread.

    Not ``np.dot``: OpenBLAS splits it over threads that spin-wait, 2-8x slower on a busy
    two-core machine, and its partial sums depend on the thread count.
    """
    return float(np.einsum("i,i->", a, b))


def _step_stats(
    arrays: Arrays, previous: Arrays, target: list[np.ndarray[Any, Any]] | None
) -> tuple[float, float]:
    """``(dot(step, target), |step|)`` for the update's step from ``previous``.

    The step is what :func:`rewards.flat_step` returns, value for value, but built one
    block of :data:`_STEP_BLOCK` values at a time: a whole float64 step (and its
    temporaries) of a 100 MB float32 model is ~800 MB.  ``target`` is another step, one
    flat float64 array per model array (None: norm only).
    """
    dot = squares = 0.0
    for index, ((_, new), (_, old)) in enumerate(zip(arrays, previous, strict=True)):
        new_flat, old_flat = new.reshape(-1), old.reshape(-1)
        for start in range(0, new_flat.size, _STEP_BLOCK):
            block = slice(start, start + _STEP_BLOCK)
            step = np.subtract(new_flat[block], old_flat[block], dtype=np.float64)
            squares += _dot(step, step)
            if target is not None:
                dot += _dot(step, target[index][block])
    return dot, math.sqrt(squares)


def _agreement_scores(
    coord: Coordinator, contributions: list[_Contribution], previous: Arrays, aggregate: Arrays
) -> dict[bytes, tuple[float, str]]:
    """Second streaming pass: each update's agreement with the aggregate step.

    Memory: the aggregate step in float64 and a few blocks (see :func:`_step_stats`).
    """
    target = [
        np.subtract(new.reshape(-1), old.reshape(-1), dtype=np.float64)
        for (_, new), (_, old) in zip(aggregate, previous, strict=True)
    ]
    target_norm = math.sqrt(sum(_dot(t, t) for t in target))
    measured = []
    for c, arrays in _load_updates(coord, contributions):
        dot, norm = _step_stats(arrays, previous, target)
        # rewards.cosine, from the products: 0 when either step is zero.
        cos = 0.0 if norm == 0.0 or target_norm == 0.0 else dot / (norm * target_norm)
        measured.append((c.agent, cos, norm))
    median = float(np.median([m[2] for m in measured])) if measured else 0.0
    return {
        agent: (rewards.quality_from_agreement(cos, norm, median), "agreement")
        for agent, cos, norm in measured
    }


__all__ = [
    "RoundError",
    "accept_update",
    "close_round",
    "open_round",
    "ready_to_close",
    "refuse_update",
]
