"""The coordinator's Flower adapter: real flwr 1.42 strategies driven offline."""

from __future__ import annotations

import ast
import random
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from bundle import cbor
from bundle.errors import SchemaError
from coordinator import flower_adapter as fa

ROOT = Path(__file__).resolve().parents[2]
NODES = list(range(100, 110))


def _small(name: str, **params: Any) -> Any:
    return fa.make_strategy(name, {"min_train_nodes": 1, "min_available_nodes": 1, **params})


def _model(dtype: Any = np.float32) -> fa.Arrays:
    rng = np.random.default_rng(0)
    return [
        ("layer.weight", rng.standard_normal((6, 4)).astype(dtype)),
        ("layer.bias", np.zeros(4, dtype=dtype)),
    ]


def _local_update(arrays: fa.Arrays, server_round: int, node: int) -> fa.Reply:
    """What an agent would send: its own deterministic move away from the global model."""
    rng = np.random.default_rng(server_round * 10_000 + node)
    moved = [(k, (v + 0.1 * rng.standard_normal(v.shape)).astype(v.dtype)) for k, v in arrays]
    metrics = {"num-examples": 10 + node % 7, "train_loss": float(rng.random())}
    return fa.Reply(node, moved, metrics)


def _run_round(strategy: Any, server_round: int, arrays: fa.Arrays, seed: int = 3) -> fa.Arrays:
    tasks = fa.configure_train(strategy, server_round, arrays, {"lr": 0.1}, NODES, seed)
    replies = [_local_update(arrays, server_round, node) for node, _ in tasks]
    new, _ = fa.aggregate_train(strategy, server_round, replies)
    return new


def _same_bits(a: fa.Arrays, b: fa.Arrays) -> bool:
    return [(k, v.dtype, v.shape, v.tobytes()) for k, v in a] == [
        (k, v.dtype, v.shape, v.tobytes()) for k, v in b
    ]


# --- the one-flwr-importer rule ------------------------------------------------------


def _imports_flwr(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "flwr" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "flwr":
            return True
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and str(node.args[0].value).split(".")[0] == "flwr"
        ):
            return True
    return False


def test_only_the_adapter_imports_flwr_on_the_coordinator_side() -> None:
    importers = sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "coordinator").rglob("*.py")
        if _imports_flwr(p)
    )
    assert importers == ["coordinator/flower_adapter.py"]


def test_adapter_disables_telemetry_and_update_check() -> None:
    import os

    from flwr.supercore import telemetry

    assert os.environ["FLWR_TELEMETRY_ENABLED"] == "0"
    assert os.environ["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert telemetry.FLWR_TELEMETRY_ENABLED == "0"


# --- make_strategy ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(fa.STRATEGIES))
def test_every_strategy_builds_by_name(name: str) -> None:
    strategy = fa.make_strategy(name, {})
    assert type(strategy).__name__ == name


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("FedSGD", {}),
        ("FedAvg", {"proximal_mu": 0.1}),  # belongs to FedProx
        ("FedAvg", {"weighted_by_key": "n"}),  # wiring is ours
        ("FedAvg", {"train_metrics_aggr_fn": 1}),
        ("Bulyan", {"selection_rule": "x"}),
        ("FedAvg", {"min_train_nodes": True}),
        ("FedAvg", {"min_train_nodes": 2.0}),
        ("FedAvg", {"min_train_nodes": -1}),
        ("FedAvg", {"fraction_train": 1.5}),
        ("FedAdam", {"eta": "0.1"}),
        ("FedAdam", {"eta": float("nan")}),
        ("MultiKrum", {"num_nodes_to_select": 0}),
        ("FedTrimmedAvg", {"beta": 0.6}),  # Flower's own check
    ],
)
def test_make_strategy_rejects(name: str, params: dict[str, Any]) -> None:
    with pytest.raises(SchemaError) as err:
        fa.make_strategy(name, params)
    assert err.value.found is not None
    assert err.value.exit_code == 16


def test_unknown_strategy_lists_the_known_ones() -> None:
    with pytest.raises(SchemaError) as err:
        fa.make_strategy("FedSGD", {})
    assert err.value.expected == sorted(fa.STRATEGIES)
    assert err.value.found == "FedSGD"


def test_integer_accepted_for_float_parameter() -> None:
    strategy: Any = fa.make_strategy("FedProx", {"proximal_mu": 1})
    assert strategy.proximal_mu == 1.0
    assert isinstance(strategy.proximal_mu, float)


# --- strategy_needs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "min_nodes", "min_replies", "streaming"),
    [
        ("FedAvg", {}, 2, 1, True),
        ("FedProx", {"min_available_nodes": 5}, 5, 1, True),
        ("FedAvgM", {"min_train_nodes": 4}, 4, 1, True),
        ("FedAdam", {}, 2, 1, True),
        ("FedYogi", {}, 2, 1, True),
        ("FedAdagrad", {"fraction_train": 0.0}, 0, 1, True),
        ("FedMedian", {}, 2, 3, False),
        ("FedTrimmedAvg", {"beta": 0.2}, 2, 5, False),
        ("FedTrimmedAvg", {"beta": 0.0}, 2, 1, False),
        ("FedTrimmedAvg", {"beta": 0.3}, 2, 4, False),
        ("Krum", {"num_malicious_nodes": 2}, 2, 7, False),
        ("MultiKrum", {"num_malicious_nodes": 1, "num_nodes_to_select": 8}, 2, 8, False),
        ("Bulyan", {"num_malicious_nodes": 1}, 2, 7, False),
    ],
)
def test_strategy_needs(
    name: str, params: dict[str, Any], min_nodes: int, min_replies: int, streaming: bool
) -> None:
    needs = fa.strategy_needs(fa.make_strategy(name, params))
    assert needs == fa.StrategyNeeds(min_nodes, min_replies, streaming)


def test_trimmed_mean_needs_match_flowers_cut() -> None:
    """At min_replies Flower's trim_mean cuts one from each side; one fewer cuts none."""
    from flwr.serverapp.strategy.fedtrimmedavg import trim_mean

    for beta in (0.05, 0.1, 0.2, 0.25, 0.3, 0.45):
        n = fa.strategy_needs(fa.make_strategy("FedTrimmedAvg", {"beta": beta})).min_replies
        values = np.arange(n, dtype=np.float64)[:, None]
        assert trim_mean(values, beta)[0] == values[1:-1].mean()
        fewer = np.arange(n - 1, dtype=np.float64)[:, None]
        assert n == 1 or trim_mean(fewer, beta)[0] == fewer.mean()


# --- configure_train ----------------------------------------------------------------------


def test_configure_train_returns_the_strategy_config_per_node() -> None:
    strategy = _small("FedProx", proximal_mu=0.5)
    tasks = fa.configure_train(strategy, 3, _model(), {"lr": 0.05, "tag": "x"}, NODES, seed=1)
    assert sorted(node for node, _ in tasks) == NODES
    for _, config in tasks:
        assert config == {"lr": 0.05, "tag": "x", "server-round": 3, "proximal-mu": 0.5}


def test_sampling_is_a_function_of_seed_round_and_node_set() -> None:
    strategy = _small("FedAvg", fraction_train=0.5)
    before = random.getstate()

    def sample(seed: int, server_round: int, nodes: list[int]) -> list[int]:
        return [n for n, _ in fa.configure_train(strategy, server_round, _model(), {}, nodes, seed)]

    first = sample(7, 1, NODES)
    assert len(first) == 5
    assert set(first) <= set(NODES)
    assert sample(7, 1, NODES) == first
    assert sample(7, 1, list(reversed(NODES))) == first
    assert len({tuple(sample(7, r, NODES)) for r in range(1, 8)}) > 1
    assert len({tuple(sample(s, 1, NODES)) for s in range(8)}) > 1
    assert random.getstate() == before  # the global RNG is left as it was


def test_too_few_nodes_fails_fast_instead_of_waiting() -> None:
    strategy = fa.make_strategy("FedAvg", {"min_available_nodes": 5})
    start = time.monotonic()
    with pytest.raises(fa.StrategyError) as err:
        fa.configure_train(strategy, 1, _model(), {}, [10, 11, 12], seed=0)
    assert time.monotonic() - start < 0.5
    assert (err.value.expected, err.value.found) == (">= 5", 3)


@pytest.mark.parametrize(
    ("node_ids", "config"),
    [([0, 5], {}), ([1, 5], {}), ([True, 5], {}), ([5, 2**64], {}), ([5, 6], {"x": None})],
)
def test_configure_train_rejects_bad_input(node_ids: list[Any], config: dict[str, Any]) -> None:
    with pytest.raises(SchemaError):
        fa.configure_train(_small("FedAvg"), 1, _model(), config, node_ids, seed=0)


def test_offline_grid_lists_nodes_and_refuses_the_network() -> None:
    grid = fa.OfflineGrid([5, 6], run_id=9)
    assert list(grid.get_node_ids()) == [5, 6]
    assert grid.run.run_id == 9
    with pytest.raises(RuntimeError, match="offline"):
        grid.push_messages([])
    with pytest.raises(RuntimeError, match="offline"):
        grid.pull_messages([])
    with pytest.raises(RuntimeError, match="offline"):
        grid.send_and_receive([])


def test_flower_task_identity_is_restored() -> None:
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    fa.configure_train(_small("FedAvg"), 1, _model(), {}, NODES, seed=0, run_id=77)
    assert (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id) == saved


# --- aggregate_train ----------------------------------------------------------------------


def test_reply_messages_look_like_flowers() -> None:
    message = fa._reply_message(42, _model(), {"num-examples": 3}, 5, run_id=9)
    meta = message.metadata
    assert (meta.run_id, meta.src_node_id, meta.dst_node_id) == (9, 42, 1)
    assert (meta.group_id, meta.message_type) == ("5", "train")
    assert meta.reply_to_message_id != ""
    assert set(message.content.array_records) == {"arrays"}
    assert set(message.content.metric_records) == {"metrics"}


def test_fedavg_is_the_num_examples_weighted_mean() -> None:
    model = _model()
    replies = [_local_update(model, 1, n) for n in NODES[:4]]
    arrays, metrics = fa.aggregate_train(_small("FedAvg"), 1, replies)
    weights = np.array([r.metrics["num-examples"] for r in replies], dtype=np.float64)
    for i, (name, value) in enumerate(arrays):
        assert name == model[i][0]
        assert value.dtype == np.float32
        expected = sum(
            w * r.arrays[i][1].astype(np.float64) for w, r in zip(weights, replies, strict=True)
        )
        np.testing.assert_allclose(value, expected / weights.sum(), rtol=1e-6, atol=1e-7)
    losses = np.array([r.metrics["train_loss"] for r in replies])
    assert metrics.keys() == {"train_loss"}  # Flower drops the weighting key
    assert metrics["train_loss"] == pytest.approx(float(losses @ weights / weights.sum()))


def test_plain_tuples_are_accepted_as_replies() -> None:
    model = _model()
    replies = [_local_update(model, 1, n) for n in NODES[:3]]
    tuples = [(r.node_id, r.arrays, r.metrics) for r in replies]
    a, _ = fa.aggregate_train(_small("FedAvg"), 1, replies)
    b, _ = fa.aggregate_train(_small("FedAvg"), 1, tuples)
    assert _same_bits(a, b)


@pytest.mark.parametrize("name", ["FedAvg", "Krum", "Bulyan", "FedTrimmedAvg"])
def test_arrival_order_does_not_change_a_bit(name: str) -> None:
    model = _model()
    replies = [_local_update(model, 1, n) for n in NODES]
    shuffled = list(replies)
    random.Random(4).shuffle(shuffled)
    a, ma = fa.aggregate_train(_small(name), 1, replies)
    b, mb = fa.aggregate_train(_small(name), 1, shuffled)
    assert _same_bits(a, b)
    assert ma == mb


def _with_outlier(n_honest: int) -> list[fa.Reply]:
    model = _model()
    replies = [_local_update(model, 1, node) for node in NODES[:n_honest]]
    poisoned = [(k, np.full_like(v, 1e3)) for k, v in model]
    return [*replies, fa.Reply(NODES[-1], poisoned, {"num-examples": 10_000, "train_loss": 0.0})]


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("FedMedian", {}),
        ("FedTrimmedAvg", {"beta": 0.2}),
        ("Krum", {"num_malicious_nodes": 1}),
        ("MultiKrum", {"num_malicious_nodes": 1, "num_nodes_to_select": 3}),
        ("Bulyan", {"num_malicious_nodes": 1}),
    ],
)
def test_robust_strategies_resist_one_poisoned_update(name: str, params: dict[str, Any]) -> None:
    arrays, _ = fa.aggregate_train(_small(name, **params), 1, _with_outlier(6))
    assert all(np.abs(v).max() < 10 for _, v in arrays)
    poisoned_avg, _ = fa.aggregate_train(_small("FedAvg"), 1, _with_outlier(6))
    assert max(np.abs(v).max() for _, v in poisoned_avg) > 100


@pytest.mark.parametrize(
    ("name", "params", "count"),
    [
        ("Bulyan", {"num_malicious_nodes": 1}, 6),
        ("Krum", {"num_malicious_nodes": 1}, 4),
        ("MultiKrum", {"num_nodes_to_select": 4}, 3),
        ("FedTrimmedAvg", {"beta": 0.2}, 4),
        ("FedMedian", {}, 2),
        ("FedAvg", {}, 0),
    ],
)
def test_too_few_replies_is_refused(name: str, params: dict[str, Any], count: int) -> None:
    model = _model()
    replies = [_local_update(model, 1, n) for n in NODES[:count]]
    with pytest.raises(fa.StrategyError):
        fa.aggregate_train(_small(name, **params), 1, replies)


def _renamed(r: fa.Reply) -> fa.Reply:
    return fa.Reply(r.node_id, [("other", r.arrays[0][1]), r.arrays[1]], r.metrics)


def _reshaped(r: fa.Reply) -> fa.Reply:
    return fa.Reply(r.node_id, [r.arrays[0], ("layer.bias", np.zeros(1, np.float32))], r.metrics)


def _retyped(r: fa.Reply) -> fa.Reply:
    return fa.Reply(r.node_id, [(k, v.astype(np.float64)) for k, v in r.arrays], r.metrics)


def _reordered(r: fa.Reply) -> fa.Reply:
    return fa.Reply(r.node_id, list(reversed(r.arrays)), r.metrics)


def _same_node(r: fa.Reply) -> fa.Reply:
    return fa.Reply(NODES[0], r.arrays, r.metrics)


def _extra_metric(r: fa.Reply) -> fa.Reply:
    return fa.Reply(r.node_id, r.arrays, {**r.metrics, "extra": 1.0})


def _bad_metric(r: fa.Reply) -> fa.Reply:
    bad: Any = {**r.metrics, "train_loss": "low"}  # deliberately not a metric value
    return fa.Reply(r.node_id, r.arrays, bad)


@pytest.mark.parametrize(
    "spoil",
    [_renamed, _reshaped, _retyped, _reordered, _same_node, _extra_metric, _bad_metric],
)
def test_inconsistent_replies_are_schema_errors(spoil: Callable[[fa.Reply], fa.Reply]) -> None:
    model = _model()
    replies = [_local_update(model, 1, n) for n in NODES[:3]]
    replies[-1] = spoil(replies[-1])
    with pytest.raises(SchemaError):
        fa.aggregate_train(_small("FedAvg"), 1, replies)


@pytest.mark.parametrize(
    ("node_id", "metrics"),
    [
        (1, {"num-examples": 5}),
        (0, {"num-examples": 5}),
        (7, {}),
        (7, {"num-examples": 0}),
        (7, {"num-examples": 2.0}),
        (7, {"num-examples": True}),
    ],
)
def test_reply_validates_itself(node_id: int, metrics: dict[str, Any]) -> None:
    with pytest.raises(SchemaError):
        fa.Reply(node_id, _model(), metrics)


# --- streaming FedAvg ---------------------------------------------------------------------


def _mixed_updates(count: int) -> list[fa.Reply]:
    rng = np.random.default_rng(11)
    out = []
    for i in range(count):
        arrays: fa.Arrays = [
            ("w32", rng.standard_normal((50, 20)).astype(np.float32)),
            ("w64", rng.standard_normal(30)),
            ("counts", rng.integers(0, 100, size=(4, 4)).astype(np.int32)),
            ("scalar", np.asarray(rng.standard_normal(), dtype=np.float32)),
        ]
        metrics: dict[str, fa.MetricValue] = {
            "num-examples": int(rng.integers(1, 500)),
            "loss": float(rng.random()),
            "hist": [1.0, float(i)],
        }
        out.append(fa.Reply(1000 + i, arrays, metrics))
    return out


def test_streaming_mean_matches_flowers_fedavg() -> None:
    updates = _mixed_updates(9)
    mean = fa.StreamingWeightedMean()
    for update in updates:
        mean.add(update.arrays, update.metrics)
    streamed, streamed_metrics = mean.result()
    flower, flower_metrics = fa.aggregate_train(_small("FedAvg"), 1, updates)
    assert [k for k, _ in streamed] == [k for k, _ in flower]
    for (name, ours), (_, theirs) in zip(streamed, flower, strict=True):
        assert ours.dtype == theirs.dtype, name
        assert ours.shape == theirs.shape, name
        scale = max(float(np.abs(theirs).max()), 1e-30)
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6 * scale)
    assert streamed_metrics.keys() == flower_metrics.keys() == {"loss", "hist"}
    assert streamed_metrics["loss"] == pytest.approx(flower_metrics["loss"], rel=1e-9)
    assert streamed_metrics["hist"] == pytest.approx(flower_metrics["hist"], rel=1e-9)
    assert mean.count == 9
    assert mean.total_weight == sum(cast(int, u.metrics["num-examples"]) for u in updates)


def test_streaming_mean_keeps_no_update_alive() -> None:
    mean = fa.StreamingWeightedMean()
    array = np.ones((100, 100), dtype=np.float32)
    ref = weakref.ref(array)
    mean.add([("w", array)], {"num-examples": 3})
    del array
    assert ref() is None
    mean.add([("w", np.zeros((100, 100), dtype=np.float32))], {"num-examples": 1})
    ((_, value),) = mean.result()[0]
    np.testing.assert_allclose(value, 0.75)


@pytest.mark.parametrize(
    ("second", "metrics"),
    [
        ([("w", np.ones(3, np.float32))], {"num-examples": 1}),
        ([("v", np.ones(2, np.float32))], {"num-examples": 1}),
        ([("w", np.ones(2, np.float64))], {"num-examples": 1}),
        ([("w", np.ones(2, np.float32))], {"num-examples": 1, "loss": 1.0}),
        ([("w", np.ones(2, np.float32))], {"num-examples": 0}),
        ([("w", np.ones(2, np.float32))], {}),
    ],
)
def test_streaming_mean_rejects_a_mismatch_and_stays_intact(
    second: fa.Arrays, metrics: dict[str, Any]
) -> None:
    mean = fa.StreamingWeightedMean()
    mean.add([("w", np.full(2, 4.0, np.float32))], {"num-examples": 2})
    with pytest.raises(SchemaError):
        mean.add(second, metrics)
    ((_, value),) = mean.result()[0]
    np.testing.assert_array_equal(value, np.full(2, 4.0, np.float32))


def test_streaming_mean_needs_an_update() -> None:
    with pytest.raises(fa.StrategyError):
        fa.StreamingWeightedMean().result()


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("FedAvg", {}),
        ("FedProx", {"proximal_mu": 0.1}),
        ("FedAvgM", {"server_momentum": 0.9}),
        ("FedAdam", {}),
        ("FedYogi", {}),
        ("FedAdagrad", {}),
    ],
)
def test_streamed_rounds_match_flower_rounds(name: str, params: dict[str, Any]) -> None:
    direct, streamed = _small(name, **params), _small(name, **params)
    arrays_direct = arrays_streamed = _model()
    for server_round in (1, 2):
        arrays_direct = _run_round(direct, server_round, arrays_direct)
        tasks = fa.configure_train(streamed, server_round, arrays_streamed, {"lr": 0.1}, NODES, 3)
        mean = fa.StreamingWeightedMean()
        for node, _ in tasks:
            update = _local_update(arrays_streamed, server_round, node)
            mean.add(update.arrays, update.metrics)
        arrays_streamed, _ = fa.aggregate_streamed(streamed, server_round, mean)
    for (_, a), (_, b) in zip(arrays_direct, arrays_streamed, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_robust_strategies_cannot_take_a_streamed_mean() -> None:
    mean = fa.StreamingWeightedMean()
    mean.add(_model(), {"num-examples": 1})
    with pytest.raises(fa.StrategyError):
        fa.aggregate_streamed(_small("Krum"), 1, mean)


# --- strategy state -----------------------------------------------------------------------


def _fingerprint(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.tobytes())
    if hasattr(value, "to_numpy_ndarrays") and hasattr(value, "items"):  # ArrayRecord
        return ("record", tuple((k, _fingerprint(v.numpy())) for k, v in value.items()))
    if isinstance(value, dict):
        return ("dict", tuple((k, _fingerprint(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return ("seq", tuple(_fingerprint(v) for v in value))
    if callable(value):
        return ("callable", id(value))
    return value


STATEFUL_PARAMS = {"FedAvgM": {"server_momentum": 0.9}}


@pytest.mark.parametrize("name", sorted(fa.STRATEGIES))
def test_state_table_covers_every_attribute_a_round_changes(name: str) -> None:
    strategy = _small(name, **STATEFUL_PARAMS.get(name, {}))
    before = {k: _fingerprint(v) for k, v in vars(strategy).items()}
    arrays = _model()
    for server_round in (1, 2):
        arrays = _run_round(strategy, server_round, arrays)
    after = {k: _fingerprint(v) for k, v in vars(strategy).items()}
    changed = {k for k in after.keys() | before.keys() if after.get(k) != before.get(k)}
    declared = set(fa._STATE.get(type(strategy), {}))
    assert changed == declared
    assert set(fa.strategy_state(strategy)) == declared | {"strategy"}


RESUMABLE = [
    ("FedAvg", {}),
    ("FedAdam", {}),
    ("FedYogi", {}),
    ("FedAdagrad", {}),
    ("FedAvgM", {"server_momentum": 0.9, "server_learning_rate": 1.0}),
]


def _through_cbor(state: dict[str, Any]) -> Any:
    return cbor.decode(cbor.encode(state))


@pytest.mark.parametrize(("name", "params"), RESUMABLE)
def test_restart_after_a_round_continues_bit_for_bit(name: str, params: dict[str, Any]) -> None:
    straight = _small(name, **params)
    expected = _model()
    for server_round in (1, 2, 3):
        expected = _run_round(straight, server_round, expected)

    first = _small(name, **params)
    arrays = _run_round(first, 1, _model())
    checkpoint = _through_cbor(fa.strategy_state(first))
    del first
    resumed = _small(name, **params)
    fa.restore_state(resumed, checkpoint)
    for server_round in (2, 3):
        arrays = _run_round(resumed, server_round, arrays)
    assert _same_bits(arrays, expected)


@pytest.mark.parametrize(("name", "params"), RESUMABLE)
def test_restart_while_collecting_continues_bit_for_bit(name: str, params: dict[str, Any]) -> None:
    """Checkpoint between configure_train and aggregate_train (round open, not closed)."""
    straight = _small(name, **params)
    expected = _model()
    for server_round in (1, 2, 3):
        expected = _run_round(straight, server_round, expected)

    first = _small(name, **params)
    arrays = _run_round(first, 1, _model())
    tasks = fa.configure_train(first, 2, arrays, {"lr": 0.1}, NODES, 3)
    checkpoint = _through_cbor(fa.strategy_state(first))
    resumed = _small(name, **params)
    fa.restore_state(resumed, checkpoint)
    replies = [_local_update(arrays, 2, node) for node, _ in tasks]
    arrays, _ = fa.aggregate_train(resumed, 2, replies)
    arrays = _run_round(resumed, 3, arrays)
    assert _same_bits(arrays, expected)


def test_state_is_a_copy() -> None:
    strategy = _small("FedAdam")
    _run_round(strategy, 1, _model())
    state = fa.strategy_state(strategy)
    state["m_t"][0][1][...] = 99.0
    assert not np.any(strategy.m_t["layer.weight"] == 99.0)


@pytest.mark.parametrize(
    "state",
    [
        {"strategy": "FedAvg"},
        {"strategy": "FedAdam", "momentum": []},
        {"strategy": "FedAdam", "m_t": [["w", [1.0]]]},
        {"strategy": "FedAdam", "m_t": [["w"]]},
        {"strategy": "FedAdam", "m_t": {"w": np.zeros(1)}},
        {},
    ],
)
def test_restore_rejects_foreign_or_malformed_state(state: dict[str, Any]) -> None:
    with pytest.raises(SchemaError):
        fa.restore_state(_small("FedAdam"), state)


def test_restore_without_entries_resets_to_fresh() -> None:
    strategy = _small("FedAdam")
    _run_round(strategy, 1, _model())
    fa.restore_state(strategy, {"strategy": "FedAdam"})
    assert strategy.m_t is None
    assert strategy.v_t is None
    assert strategy.current_arrays is None


def test_flower_fedadam_returns_float64_for_a_float32_model() -> None:
    """Pinned Flower 1.42 behaviour the round engine must plan for (see module docs).

    FedAdam's bias-corrected step size is a numpy float64 scalar, so the new global model
    is float64; FedYogi and FedAdagrad keep the model's dtype.
    """
    dtypes = {}
    for name in ("FedAdam", "FedYogi", "FedAdagrad"):
        arrays = _run_round(_small(name), 1, _model(np.float32))
        dtypes[name] = {v.dtype for _, v in arrays}
    assert dtypes == {
        "FedAdam": {np.dtype(np.float64)},
        "FedYogi": {np.dtype(np.float32)},
        "FedAdagrad": {np.dtype(np.float32)},
    }


# --- a whole offline federation -----------------------------------------------------------


def test_offline_federation_of_example_agents_learns() -> None:
    """Coordinator adapter + agent adapter + the example app, five agents, three rounds."""
    from agent import example_model
    from agent.flower_client import run_client_app

    nodes = {1000 + i: i for i in range(5)}
    strategy = fa.make_strategy("FedAvg", {"min_available_nodes": 5})
    arrays = example_model.initial_arrays(seed=0)
    x_test, y_test = example_model.load_test()
    _, initial_accuracy = example_model.evaluate_arrays(arrays, x_test, y_test)
    for server_round in (1, 2, 3):
        tasks = fa.configure_train(strategy, server_round, arrays, {"lr": 0.1}, nodes, seed=5)
        mean = fa.StreamingWeightedMean()
        for node, config in tasks:
            result = run_client_app(
                "agent.example_app:app",
                "train",
                arrays,
                config,
                {"local-epochs": 2},
                {"partition-id": nodes[node], "num-partitions": len(nodes)},
                node,
                server_round,
            )
            assert result.arrays is not None
            mean.add(result.arrays, result.metrics)
        arrays, metrics = fa.aggregate_streamed(strategy, server_round, mean)
        assert "train_loss" in metrics
    _, accuracy = example_model.evaluate_arrays(arrays, x_test, y_test)
    assert accuracy > max(0.6, initial_accuracy + 0.3)
