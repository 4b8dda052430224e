"""The coordinator's only door to Flower: its Message-API strategies, run offline.

Flower 1.42 drives a strategy from ``Strategy.start``: ``configure_train(round, arrays,
config, grid)`` samples nodes from the Grid and returns one instruction Message per node,
``grid.send_and_receive`` delivers them, and ``aggregate_train(round, replies)`` folds the
reply Messages into the next global ArrayRecord.  Offline, bundles replace the Grid's
transport, so this module calls the two steps separately around a round that may last
weeks, with a restart in between:

* :func:`configure_train` hands the strategy an :class:`OfflineGrid` that knows only the
  enrolled node ids and refuses to send or pull anything, seeds Flower's sampler
  (``random.sample`` on the global ``random`` module) from ``(seed, round)``, and returns
  the per-node config the strategy put into its Messages.
* :func:`aggregate_train` rebuilds real reply Messages (ArrayRecord + MetricRecord, reply
  metadata derived from a task Message as Flower does) and calls the real aggregation.
* :func:`strategy_state` / :func:`restore_state` checkpoint everything a strategy changes
  across rounds, so a restarted coordinator continues bit for bit.
* :class:`StreamingWeightedMean` + :func:`aggregate_streamed` do the FedAvg family in one
  pass over updates read from disk one at a time.
* :func:`strategy_needs` says how many nodes and replies a strategy needs.

This is the only coordinator module that imports ``flwr``.  Telemetry and the update
check are switched off before the first ``flwr`` import; nothing here opens a socket.
"""

from __future__ import annotations

import inspect
import math
import os
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from bundle.errors import LLTokenError, SchemaError

# Offline guard.  Flower reads FLWR_TELEMETRY_ENABLED once, when flwr.supercore.telemetry
# is imported, so this must run before the first flwr import below.
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"

from flwr.app import (
    DEFAULT_TTL,
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.app.message import make_message
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError as _FlwrAggregationError
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
)
from flwr.supercore import telemetry as _flwr_telemetry
from flwr.supercore.date import now as _flwr_now
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

# If something imported flwr before us, the import-time read already happened: override.
_flwr_telemetry.FLWR_TELEMETRY_ENABLED = "0"

NDArray = np.ndarray[Any, Any]
Arrays = list[tuple[str, NDArray]]
MetricValue = int | float | list[int] | list[float]

NUM_EXAMPLES = "num-examples"
ARRAYS_KEY = "arrays"
METRICS_KEY = "metrics"
CONFIG_KEY = "config"
OFFLINE_TASK_ID = 1  # the ServerApp's task id; Flower's compat runner uses 1 as well
_UINT64 = 1 << 64

# All eleven are FedAvg subclasses, so FedAvg is the static type of every strategy here.
STRATEGIES: Mapping[str, type[FedAvg]] = MappingProxyType(
    {
        cls.__name__: cls
        for cls in (
            FedAvg,
            FedProx,
            FedAvgM,
            FedAdam,
            FedYogi,
            FedAdagrad,
            FedMedian,
            FedTrimmedAvg,
            Krum,
            MultiKrum,
            Bulyan,
        )
    }
)
# Constructor arguments that wire records and callbacks together: fixed by us, because
# bundles always carry "arrays", "metrics", "config" and weight by "num-examples".
_WIRING = frozenset(
    {
        "weighted_by_key",
        "arrayrecord_key",
        "configrecord_key",
        "train_metrics_aggr_fn",
        "evaluate_metrics_aggr_fn",
        "selection_rule",
    }
)
_FRACTIONS = frozenset({"fraction_train", "fraction_evaluate"})
# Strategies whose aggregate is the num-examples weighted mean (plus, for some, a server
# optimiser step on it): they can take one pre-averaged reply (StreamingWeightedMean).
_LINEAR = (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad)

# Everything a strategy changes across rounds (read off flwr 1.42's source: FedOpt sets
# current_arrays in configure_train and m_t/v_t in aggregate_train; FedAvgM keeps the
# ArrayRecord it last produced and its momentum).  Every other attribute is a constructor
# argument.  tests/coordinator/test_flower_adapter.py checks this table against a run.
_NAMED, _RECORD, _LIST = "named arrays", "array record", "array list"
_FEDOPT_STATE = {"current_arrays": _NAMED, "m_t": _NAMED, "v_t": _NAMED}
_STATE: Mapping[type[FedAvg], Mapping[str, str]] = {
    FedAdam: _FEDOPT_STATE,
    FedYogi: _FEDOPT_STATE,
    FedAdagrad: _FEDOPT_STATE,
    FedAvgM: {"current_arrays": _RECORD, "momentum_vector": _LIST},
}


class StrategyError(LLTokenError):
    """The strategy cannot take this step: too few nodes or replies, or Flower refused."""

    exit_code = 41


class OfflineGrid(Grid):
    """A Grid that only lists the enrolled node ids; it never sends or receives.

    Strategies ask the Grid for node ids to sample from.  Messages travel in bundles, so
    any attempt to push, pull or send through this Grid is a bug and raises.
    """

    def __init__(self, node_ids: Iterable[int], run_id: int = 0) -> None:
        self._node_ids = tuple(node_ids)
        self._run = Run.create_empty(run_id)

    def set_run(self, run: Run) -> None:
        """Record the run (only its id is used)."""
        self._run = run

    @property
    def run(self) -> Run:
        """The run this grid belongs to."""
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Build a Message locally (Flower's deprecated helper; no I/O)."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """The enrolled agents' node ids, sorted."""
        return list(self._node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Refuse: messages leave in bundles, never through the Grid."""
        raise RuntimeError("OfflineGrid cannot push messages: the coordinator is offline")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Refuse: replies arrive in bundles, never through the Grid."""
        raise RuntimeError("OfflineGrid cannot pull messages: the coordinator is offline")

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Refuse: rounds are run by the coordinator's round engine, not Strategy.start."""
        raise RuntimeError("OfflineGrid cannot send messages: the coordinator is offline")


@dataclass(frozen=True)
class Reply:
    """One verified model update: the sender's node id, its arrays and its metrics."""

    node_id: int
    arrays: Sequence[tuple[str, NDArray]]
    metrics: Mapping[str, MetricValue]

    def __post_init__(self) -> None:
        _node_id(self.node_id)
        _weight(self.metrics, f"reply from node {self.node_id}")
        for name, value in self.arrays:
            if not isinstance(name, str) or not isinstance(value, np.ndarray):
                raise SchemaError(
                    "reply arrays must be (name, numpy array) pairs",
                    found=f"{type(name).__name__}, {type(value).__name__}",
                    where=f"reply from node {self.node_id}",
                )


@dataclass(frozen=True)
class StrategyNeeds:
    """What a strategy needs to run a round.

    ``min_nodes``: enrolled agents ``configure_train`` needs (Flower's sampler would wait
    for them forever).  ``min_replies``: valid replies the aggregator needs to deliver
    its guarantee (``aggregate_train`` refuses fewer).  ``streaming``: the aggregate is the
    weighted mean, so :class:`StreamingWeightedMean` + :func:`aggregate_streamed` apply.
    """

    min_nodes: int
    min_replies: int
    streaming: bool


def strategy_needs(strategy: FedAvg) -> StrategyNeeds:
    """Nodes and replies ``strategy`` needs, from its parameters.

    Bulyan aggregates only with ``n >= 4f + 3`` replies (Flower returns nothing below);
    Krum and MultiKrum are Byzantine-resilient only with ``n >= 2f + 3`` (Flower does not
    check), MultiKrum also needs ``num_nodes_to_select`` of them; a trimmed mean trims
    nothing until ``int(beta * n) >= 1``; a median of fewer than three is a mean.
    """
    f = int(getattr(strategy, "num_malicious_nodes", 0))
    if isinstance(strategy, Bulyan):
        replies = 4 * f + 3
    elif isinstance(strategy, MultiKrum):  # Krum is a MultiKrum selecting one
        replies = max(2 * f + 3, strategy.num_nodes_to_select)
    elif isinstance(strategy, FedTrimmedAvg) and strategy.beta > 0:
        replies = math.ceil(1 / strategy.beta)
        while int(strategy.beta * replies) < 1:  # exactly Flower's cut, despite rounding
            replies += 1
    elif isinstance(strategy, FedMedian):
        replies = 3
    else:
        replies = 1
    nodes = (
        0
        if strategy.fraction_train == 0.0
        else max(strategy.min_available_nodes, strategy.min_train_nodes)
    )
    return StrategyNeeds(
        min_nodes=nodes,
        min_replies=replies,
        streaming=type(strategy) in _LINEAR,
    )


def _check_param(strategy: str, key: str, value: Any, annotation: Any) -> Any:
    where = f"strategy {strategy}, parameter {key!r}"
    if annotation is float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise SchemaError(
                "parameter must be a finite number",
                expected="float",
                found=repr(value),
                where=where,
            )
        value = float(value)
        if key in _FRACTIONS and not 0.0 <= value <= 1.0:
            raise SchemaError(
                "fraction out of range", expected="0.0 <= value <= 1.0", found=value, where=where
            )
        return value
    if annotation is int:
        low = 1 if key == "num_nodes_to_select" else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise SchemaError(
                "parameter must be an integer",
                expected=f"int >= {low}",
                found=repr(value),
                where=where,
            )
        return value
    raise SchemaError(
        "parameter cannot be set from a config", expected="a number", found=key, where=where
    )


def make_strategy(name: str, params: Mapping[str, Any] | None = None) -> FedAvg:
    """Build a Flower strategy by name from plain numeric parameters.

    Raises:
        SchemaError: unknown strategy name, unknown or wiring parameter (record keys,
            callbacks), wrong type or range, or a value Flower itself rejects.
    """
    cls = STRATEGIES.get(name)
    if cls is None:
        raise SchemaError("unknown strategy", expected=sorted(STRATEGIES), found=name)
    signature = inspect.signature(cls)
    allowed = {p.name: p for p in signature.parameters.values() if p.name not in _WIRING}
    kwargs: dict[str, Any] = {}
    for key, value in (params or {}).items():
        if key not in allowed:
            raise SchemaError(f"unknown parameter for {name}", expected=sorted(allowed), found=key)
        kwargs[key] = _check_param(name, key, value, allowed[key].annotation)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"Flower rejected the {name} parameters", found=str(exc)) from exc


def _node_id(value: Any) -> int:
    # Flower never assigns node id 0 or 1 (1 is the SuperLink itself).
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value < _UINT64:
        raise SchemaError(
            "node id out of range", expected="an integer in [2, 2**64)", found=repr(value)
        )
    return value


def _round(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < _UINT64:
        raise SchemaError(
            "server round out of range", expected="an integer >= 1", found=repr(value)
        )
    return value


def _weight(metrics: Mapping[str, Any], where: str) -> int:
    count = metrics.get(NUM_EXAMPLES)
    if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
        raise SchemaError(
            f"metric {NUM_EXAMPLES!r} must be a positive integer",
            expected="int > 0",
            found=repr(count),
            where=where,
        )
    return count


def _metric_shape(value: Any, where: str) -> int | None:
    """``None`` for a scalar metric, the length for a list; rejects anything else."""
    items = value if isinstance(value, list) else [value]
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in items):
        raise SchemaError(
            "metric is not a number or list of numbers", found=repr(value), where=where
        )
    return len(value) if isinstance(value, list) else None


def _array_record(arrays: Iterable[tuple[str, NDArray]]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.asarray(value)) for name, value in arrays})


def _named(record: ArrayRecord) -> Arrays:
    return [(name, array.numpy()) for name, array in record.items()]


def _plain(record: ConfigRecord | MetricRecord) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, list) else value for key, value in record.items()}


@contextmanager
def _serverapp_identity(run_id: int) -> Iterator[None]:
    """Be the ServerApp task Flower's Message constructor expects; restore after."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id = OFFLINE_TASK_ID
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


@contextmanager
def _seeded_sampling(seed: int, server_round: int) -> Iterator[None]:
    """Make Flower's ``random.sample`` a function of (seed, round); restore the RNG after.

    A string seed is hashed with SHA-512 by ``random.seed``, so it is stable across runs.
    """
    saved = random.getstate()
    random.seed(f"lltoken-offline/sample/{seed}/{server_round}")
    try:
        yield
    finally:
        random.setstate(saved)


def configure_train(
    strategy: FedAvg,
    server_round: int,
    arrays: Sequence[tuple[str, NDArray]],
    config: Mapping[str, Any],
    node_ids: Iterable[int],
    seed: int,
    *,
    run_id: int = 0,
) -> list[tuple[int, dict[str, Any]]]:
    """Run the strategy's real ``configure_train``; return ``(node_id, config)`` per node.

    ``arrays`` is the global model sent (once, in one bundle) to every sampled node; the
    config is what the strategy put in each Message (``server-round``, FedProx's
    ``proximal-mu``, the caller's keys).  Sampling depends only on ``seed``, the round and
    the set of node ids, so a restarted coordinator samples the same nodes.  FedOpt and
    FedAvgM record the global model here: checkpoint with :func:`strategy_state` after.

    Raises:
        SchemaError: bad round, node ids or config values.
        StrategyError: fewer enrolled nodes than the strategy needs.
    """
    server_round = _round(server_round)
    nodes = sorted({_node_id(n) for n in node_ids})
    needed = strategy_needs(strategy).min_nodes
    if len(nodes) < needed:
        raise StrategyError(
            f"{type(strategy).__name__} needs more enrolled agents to sample from",
            expected=f">= {needed}",
            found=len(nodes),
            where=f"round {server_round}",
        )
    try:
        config_record = ConfigRecord(dict(config))
    except (TypeError, ValueError) as exc:
        raise SchemaError("config rejected by Flower's ConfigRecord", found=str(exc)) from exc
    grid = OfflineGrid(nodes, run_id)
    with _serverapp_identity(run_id), _seeded_sampling(seed, server_round):
        messages = list(
            strategy.configure_train(server_round, _array_record(arrays), config_record, grid)
        )
    return [
        (int(m.metadata.dst_node_id), _plain(m.content.config_records[CONFIG_KEY]))
        for m in messages
    ]


def _task_for(node_id: int, server_round: int, run_id: int) -> Message:
    """The train task Message a reply answers, as the SuperLink would have stamped it."""
    return make_message(
        metadata=Metadata(
            run_id=run_id,
            message_id=f"{run_id}.{server_round}.{node_id}",
            src_node_id=SUPERLINK_NODE_ID,
            dst_node_id=node_id,
            reply_to_message_id="",
            group_id=str(server_round),
            created_at=_flwr_now().timestamp(),
            ttl=DEFAULT_TTL,
            message_type=MessageType.TRAIN,
        ),
        content=RecordDict(),
    )


def _reply_message(
    node_id: int,
    arrays: Iterable[tuple[str, NDArray]],
    metrics: Mapping[str, Any],
    server_round: int,
    run_id: int,
) -> Message:
    try:
        content = RecordDict(
            {ARRAYS_KEY: _array_record(arrays), METRICS_KEY: MetricRecord(dict(metrics))}
        )
    except (TypeError, ValueError) as exc:
        raise SchemaError(
            "reply rejected by Flower's records", found=str(exc), where=f"node {node_id}"
        ) from exc
    return Message(content, reply_to=_task_for(node_id, server_round, run_id))


def _check_agree(replies: Sequence[Reply]) -> None:
    """Same node at most once; same array names, order, shapes and dtypes everywhere.

    Flower checks names only, and numpy would silently broadcast mismatched shapes.
    """
    first = [(name, value.shape, value.dtype) for name, value in replies[0].arrays]
    seen: set[int] = set()
    for reply in replies:
        if reply.node_id in seen:
            raise SchemaError("two replies from one node", found=reply.node_id)
        seen.add(reply.node_id)
        layout = [(name, value.shape, value.dtype) for name, value in reply.arrays]
        if layout != first:
            raise SchemaError(
                "reply arrays differ from the other replies",
                expected=first,
                found=layout,
                where=f"reply from node {reply.node_id}",
            )


def _aggregate(
    strategy: FedAvg, server_round: int, messages: list[Message]
) -> tuple[Arrays, dict[str, Any]]:
    try:
        record, metrics = strategy.aggregate_train(server_round, messages)
    except InconsistentMessageReplies as exc:
        raise SchemaError("replies rejected by Flower", found=str(exc)) from exc
    except _FlwrAggregationError as exc:
        raise StrategyError(
            f"{type(strategy).__name__} could not aggregate", found=str(exc)
        ) from exc
    if record is None:
        raise StrategyError(
            f"{type(strategy).__name__} produced no aggregate", found=f"{len(messages)} replies"
        )
    return _named(record), {} if metrics is None else _plain(metrics)


def aggregate_train(
    strategy: FedAvg,
    server_round: int,
    replies: Sequence[Reply | tuple[int, Sequence[tuple[str, NDArray]], Mapping[str, MetricValue]]],
    *,
    run_id: int = 0,
) -> tuple[Arrays, dict[str, Any]]:
    """Run the strategy's real ``aggregate_train`` on rebuilt reply Messages.

    Each reply becomes ``Message(RecordDict({"arrays": ArrayRecord, "metrics":
    MetricRecord}), reply_to=<train task for that node, group_id=str(round)>)``.
    Replies are taken in node-id order, so the result does not depend on the order they
    arrived in.  Returns the aggregated arrays in Flower's order and the aggregated
    metrics (weighted by ``num-examples``, which itself is left out, as Flower does).
    Checkpoint with :func:`strategy_state` after.

    Raises:
        SchemaError: malformed or mutually inconsistent replies.
        StrategyError: fewer replies than :func:`strategy_needs` says, or Flower could not
            aggregate.
    """
    server_round = _round(server_round)
    # Sorted by node id: float sums depend on order, and arrival order must not matter.
    checked = sorted(
        (r if isinstance(r, Reply) else Reply(*r) for r in replies), key=lambda r: r.node_id
    )
    needed = strategy_needs(strategy).min_replies
    if len(checked) < needed:
        raise StrategyError(
            f"{type(strategy).__name__} needs more replies",
            expected=f">= {needed}",
            found=len(checked),
            where=f"round {server_round}",
        )
    _check_agree(checked)
    messages = [
        _reply_message(r.node_id, r.arrays, r.metrics, server_round, run_id) for r in checked
    ]
    return _aggregate(strategy, server_round, messages)


class StreamingWeightedMean:
    """Flower's FedAvg aggregate, one update at a time, in float64.

    Memory is one float64 accumulator per model array, whatever the number of updates.
    Add updates in a fixed order (node id) if a re-run must reproduce the result bit for
    bit: float sums depend on order.
    :meth:`result` divides by the total weight and casts to the dtype Flower's FedAvg
    returns (``x * python_float``: float arrays keep their dtype, integer ones become
    float64).  Metrics are weighted the same way; ``num-examples`` is left out.
    """

    def __init__(self) -> None:
        self._sums: dict[str, NDArray] = {}
        self._layout: list[tuple[str, tuple[int, ...], np.dtype[Any]]] = []
        self._metric_shape: dict[str, int | None] = {}
        self._scalar_sums: dict[str, float] = {}
        self._list_sums: dict[str, list[float]] = {}
        self._total = 0
        self.count = 0

    def add(
        self, arrays: Sequence[tuple[str, NDArray]], metrics: Mapping[str, MetricValue]
    ) -> None:
        """Fold in one update.

        Raises:
            SchemaError: no positive integer ``num-examples``, or arrays or metric keys
                that differ from the first update's.
        """
        where = f"update {self.count}"
        weight = _weight(metrics, where)
        layout = [(name, value.shape, value.dtype) for name, value in arrays]
        shape = {k: _metric_shape(v, where) for k, v in metrics.items() if k != NUM_EXAMPLES}
        if self.count == 0:
            if len({name for name, _, _ in layout}) != len(layout):
                raise SchemaError("update has two arrays with one name", found=layout, where=where)
            self._layout = layout
            self._metric_shape = shape
        elif layout != self._layout:
            raise SchemaError(
                "update arrays differ from the first update",
                expected=self._layout,
                found=layout,
                where=where,
            )
        elif shape != self._metric_shape:
            raise SchemaError(
                "update metrics differ from the first update",
                expected=self._metric_shape,
                found=shape,
                where=where,
            )
        # Everything checked: only now touch the accumulators.
        for name, value in arrays:
            total = self._sums.setdefault(name, np.zeros(value.shape, dtype=np.float64))
            total += np.asarray(value, dtype=np.float64) * weight
        for key, metric in metrics.items():
            if isinstance(metric, list):
                sums = self._list_sums.setdefault(key, [0.0] * len(metric))
                self._list_sums[key] = [
                    t + float(v) * weight for t, v in zip(sums, metric, strict=True)
                ]
            elif key != NUM_EXAMPLES:
                self._scalar_sums[key] = self._scalar_sums.get(key, 0.0) + float(metric) * weight
        self._total += weight
        self.count += 1

    @property
    def total_weight(self) -> int:
        """Sum of ``num-examples`` so far."""
        return self._total

    def result(self) -> tuple[Arrays, dict[str, float | list[float]]]:
        """The weighted mean arrays (Flower's dtypes, first update's order) and metrics.

        Raises:
            StrategyError: no update was added.
        """
        if self.count == 0:
            raise StrategyError("nothing to average", expected=">= 1 update", found=0)
        arrays = [
            # Flower computes value.numpy() * (w / total): the result dtype of that product.
            (
                name,
                np.asarray(self._sums[name] / self._total).astype((np.zeros(1, dtype) * 0.5).dtype),
            )
            for name, _, dtype in self._layout
        ]
        metrics: dict[str, float | list[float]] = {
            key: total / self._total for key, total in self._scalar_sums.items()
        }
        metrics.update(
            {key: [t / self._total for t in sums] for key, sums in self._list_sums.items()}
        )
        return arrays, metrics


def aggregate_streamed(
    strategy: FedAvg, server_round: int, mean: StreamingWeightedMean, *, run_id: int = 0
) -> tuple[Arrays, dict[str, Any]]:
    """Finish a linear strategy's round from a streamed mean.

    FedAvg of a single reply returns it unchanged (its weight factor is exactly 1.0), so
    handing the strategy one reply that holds the mean yields Flower's FedAvg result, and
    FedAvgM / FedAdam / FedYogi / FedAdagrad then apply their real server step (and update
    their state) on it.  The reply is attributed to node 0, which Flower never assigns.

    Raises:
        StrategyError: the strategy is not linear (see :func:`strategy_needs`), or no
            update was streamed.
    """
    server_round = _round(server_round)
    if not strategy_needs(strategy).streaming:
        raise StrategyError(
            "strategy cannot aggregate from a streamed mean",
            expected=[cls.__name__ for cls in _LINEAR],
            found=type(strategy).__name__,
        )
    arrays, metrics = mean.result()
    message = _reply_message(
        0, arrays, {**metrics, NUM_EXAMPLES: mean.total_weight}, server_round, run_id
    )
    return _aggregate(strategy, server_round, [message])


def _encode_state(kind: str, value: Any) -> list[Any]:
    if kind == _NAMED:
        return [[name, np.array(array, copy=True)] for name, array in value.items()]
    if kind == _RECORD:
        return [[name, array.numpy()] for name, array in value.items()]
    return [np.array(array, copy=True) for array in value]


def strategy_state(strategy: FedAvg) -> dict[str, Any]:
    """Everything ``strategy`` changed across rounds, as CBOR-able values.

    Only dicts, lists, str and numpy arrays (copies); named arrays are ``[name, array]``
    lists so their order survives deterministic CBOR's key sorting.  Take it after every
    ``configure_train`` and ``aggregate_train``.
    """
    state: dict[str, Any] = {"strategy": type(strategy).__name__}
    for attr, kind in _STATE.get(type(strategy), {}).items():
        value = getattr(strategy, attr)
        if value:  # None and FedOpt's empty start mean "not yet"; omitted
            state[attr] = _encode_state(kind, value)
    return state


def _state_array(value: Any, where: str) -> NDArray:
    if not isinstance(value, np.ndarray):
        raise SchemaError(
            "strategy state holds a non-array",
            expected="numpy array",
            found=type(value).__name__,
            where=where,
        )
    return np.array(value, dtype=value.dtype.newbyteorder("="), copy=True)


def _decode_state(kind: str, value: Any, where: str) -> Any:
    if not isinstance(value, list):
        raise SchemaError(
            "strategy state entry is not a list",
            expected="list",
            found=type(value).__name__,
            where=where,
        )
    if kind == _LIST:
        return [_state_array(v, where) for v in value]
    pairs: list[tuple[str, NDArray]] = []
    for item in value:
        if not (isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise SchemaError(
                "strategy state entry is not a [name, array] pair",
                found=repr(item)[:80],
                where=where,
            )
        pairs.append((item[0], _state_array(item[1], f"{where}[{item[0]!r}]")))
    if kind == _RECORD:
        return _array_record(pairs)
    return dict(pairs)


def restore_state(strategy: FedAvg, state: Mapping[str, Any]) -> None:
    """Put a checkpoint from :func:`strategy_state` back into a freshly made strategy.

    Attributes absent from ``state`` are reset to "not yet" (``None``).

    Raises:
        SchemaError: a checkpoint of another strategy, unknown keys, or malformed values.
    """
    name = type(strategy).__name__
    if state.get("strategy") != name:
        raise SchemaError(
            "strategy state is for another strategy", expected=name, found=state.get("strategy")
        )
    kinds = _STATE.get(type(strategy), {})
    unknown = sorted(set(state) - set(kinds) - {"strategy"})
    if unknown:
        raise SchemaError(f"unknown {name} state", expected=sorted(kinds), found=unknown)
    decoded = {
        attr: _decode_state(kind, state[attr], f"{name}.{attr}") if attr in state else None
        for attr, kind in kinds.items()
    }
    for attr, value in decoded.items():
        setattr(strategy, attr, value)


__all__ = [
    "STRATEGIES",
    "OfflineGrid",
    "Reply",
    "StrategyError",
    "StrategyNeeds",
    "StreamingWeightedMean",
    "aggregate_streamed",
    "aggregate_train",
    "configure_train",
    "make_strategy",
    "restore_state",
    "strategy_needs",
    "strategy_state",
]
