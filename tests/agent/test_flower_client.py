"""The agent's Flower adapter: a real ClientApp, run in-process, offline, checked."""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from agent import example_model
from agent.flower_client import ClientAppError, ClientResult, load_client_app, run_client_app
from bundle.errors import SchemaError

ROOT = Path(__file__).resolve().parents[2]
NODE = 4242
PARTITION = {"partition-id": 1, "num-partitions": 4}


def _model() -> list[tuple[str, np.ndarray[Any, Any]]]:
    return [
        ("w", np.arange(6, dtype=np.float32).reshape(2, 3)),
        ("b", np.zeros(3, dtype=np.float32)),
    ]


# --- a user app in Flower's example style -----------------------------------------------

style_app = ClientApp()
SEEN: list[tuple[Message, Context]] = []


@style_app.train()
def style_train(msg: Message, context: Context) -> Message:
    SEEN.append((msg, context))
    scale = float(context.run_config["scale"])
    partition_id = int(context.node_config["partition-id"])
    arrays = msg.content.array_records["arrays"]
    new = ArrayRecord({k: Array(v.numpy() * scale + partition_id) for k, v in arrays.items()})
    metrics = MetricRecord(
        {
            "num-examples": 10 + partition_id,
            "num-partitions": int(context.node_config["num-partitions"]),
            "lr": float(msg.content.config_records["config"]["lr"]),  # type: ignore[arg-type]
        }
    )
    return Message(RecordDict({"arrays": new, "metrics": metrics}), reply_to=msg)


@style_app.evaluate()
def style_evaluate(msg: Message, context: Context) -> Message:
    metrics = MetricRecord({"num-examples": 5, "acc": 0.5})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def _run(app: Any = style_app, task: Any = "train", **kwargs: Any) -> ClientResult:
    args: dict[str, Any] = {
        "arrays": _model(),
        "config": {"lr": 0.25},
        "run_config": {"scale": 2.0},
        "node_config": PARTITION,
        "node_id": NODE,
        "server_round": 3,
    }
    args.update(kwargs)
    return run_client_app(app, task, **args)


@pytest.fixture(autouse=True)
def _clear_seen() -> Iterator[None]:
    SEEN.clear()
    yield
    SEEN.clear()


# --- the one-flwr-importer rule ------------------------------------------------------


def _imports_flwr(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "flwr" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "flwr":
            return True
    return False


def test_only_the_adapter_imports_flwr_on_the_agent_side() -> None:
    """agent/example_app.py is a *user* ClientApp written in Flower's style and loaded by
    reference ("agent.example_app:app"), so it is the one allowed exception; none of our
    modules imports it."""
    importers = sorted(
        p.relative_to(ROOT).as_posix() for p in (ROOT / "agent").rglob("*.py") if _imports_flwr(p)
    )
    assert importers == ["agent/example_app.py", "agent/flower_client.py"]
    for path in [*(ROOT / "agent").rglob("*.py"), *(ROOT / "coordinator").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                names = {f"{node.module}.{a.name}" for a in node.names} | {node.module}
                assert "agent.example_app" not in names, path
            if isinstance(node, ast.Import):
                assert "agent.example_app" not in {a.name for a in node.names}, path


# --- running an app -----------------------------------------------------------------------


def test_flower_style_app_sees_what_a_supernode_would_give_it() -> None:
    result = _run(run_id=17)
    ((msg, context),) = SEEN
    assert context.run_id == 17
    assert context.node_id == NODE
    assert context.run_config == {"scale": 2.0}
    assert context.node_config == PARTITION
    assert isinstance(context.state, RecordDict)
    meta = msg.metadata
    assert (meta.run_id, meta.src_node_id, meta.dst_node_id) == (17, 1, NODE)
    assert (meta.group_id, meta.message_type) == ("3", "train")
    assert meta.message_id == msg.object_id
    assert meta.reply_to_message_id == ""
    assert dict(msg.content.config_records["config"]) == {"lr": 0.25, "server-round": 3}
    assert result.metrics == {"num-examples": 11, "num-partitions": 4, "lr": 0.25}
    assert result.arrays is not None
    for (name, new), (ref_name, old) in zip(result.arrays, _model(), strict=True):
        assert name == ref_name
        np.testing.assert_array_equal(new, old * 2.0 + 1)


def test_evaluate_returns_metrics_only() -> None:
    assert _run(task="evaluate") == ClientResult(None, {"num-examples": 5, "acc": 0.5})


def test_app_by_reference_from_a_users_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "user_digits_app.py").write_text(
        textwrap.dedent(
            """
            from flwr.app import Message, MetricRecord, RecordDict
            from flwr.clientapp import ClientApp

            app = ClientApp()

            @app.train()
            def train(msg, context):
                n = int(context.node_config["partition-id"]) + 1
                content = RecordDict(
                    {"arrays": msg.content["arrays"], "metrics": MetricRecord({"num-examples": n})}
                )
                return Message(content, reply_to=msg)
            """
        ),
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    result = _run("user_digits_app:app")
    assert result.metrics == {"num-examples": 2}
    assert result.arrays is not None
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(result.arrays, _model(), strict=True))


def test_example_app_trains_its_partition() -> None:
    arrays = example_model.initial_arrays(seed=1)
    result = run_client_app(
        "agent.example_app:app",
        "train",
        arrays,
        {"lr": 0.1, "server-round": 1},
        {"local-epochs": 2},
        {"partition-id": 2, "num-partitions": 5},
        NODE,
        1,
    )
    _, labels = example_model.load_partition(2, 5)
    assert result.metrics["num-examples"] == len(labels)
    assert result.arrays is not None
    assert [(k, v.shape, v.dtype) for k, v in result.arrays] == [
        (k, v.shape, v.dtype) for k, v in arrays
    ]
    assert not np.array_equal(result.arrays[0][1], arrays[0][1])


def test_task_identity_is_restored() -> None:
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    _run()
    assert (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id) == saved


# --- failures -------------------------------------------------------------------------------

crashing_app = ClientApp()


@crashing_app.train()
def crashing_train(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"x": MetricRecord({"v": 1 / 0})}), reply_to=msg)


def test_app_that_raises_is_a_client_app_error_with_a_traceback() -> None:
    with pytest.raises(ClientAppError) as err:
        _run(crashing_app)
    assert err.value.exit_code == 40
    assert "ZeroDivisionError" in str(err.value)
    assert "crashing_train" in err.value.traceback_summary
    assert "ZeroDivisionError: division by zero" in err.value.traceback_summary
    assert err.value.to_dict()["traceback"] == err.value.traceback_summary


def test_task_the_app_has_no_function_for_is_a_client_app_error() -> None:
    only_eval = ClientApp()
    only_eval.evaluate()(style_evaluate)
    with pytest.raises(ClientAppError, match="No train function"):
        _run(only_eval)


@pytest.mark.parametrize(
    ("app", "error"),
    [
        ("no_colon", SchemaError),
        (":app", SchemaError),
        ("agent.example_app:", SchemaError),
        ("agent.no_such_module:app", ClientAppError),
        ("agent.example_app:nope", ClientAppError),
        ("agent.example_model:train", ClientAppError),  # not a ClientApp
        (object(), ClientAppError),
    ],
)
def test_load_errors(app: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        load_client_app(app)


def _app(reply: Callable[[Message], Any]) -> ClientApp:
    app = ClientApp()

    def handler(msg: Message, context: Context) -> Message:
        return reply(msg)  # type: ignore[no-any-return]

    app.train()(handler)
    app.evaluate()(handler)
    return app


def _good_arrays(msg: Message) -> ArrayRecord:
    return ArrayRecord(
        {k: Array(v.numpy()) for k, v in msg.content.array_records["arrays"].items()}
    )


def _reply(msg: Message, **records: Any) -> Message:
    return Message(RecordDict(records), reply_to=msg)


def _with(**metrics: Any) -> Callable[[Message], Message]:
    return lambda m: _reply(m, arrays=_good_arrays(m), metrics=MetricRecord(metrics))


def _arrays(**arrays: Any) -> Callable[[Message], Message]:
    return lambda m: _reply(
        m,
        arrays=ArrayRecord({k: Array(v) for k, v in arrays.items()}),
        metrics=MetricRecord({"num-examples": 1}),
    )


BAD_REPLIES: dict[str, Callable[[Message], Any]] = {
    "not a message": lambda m: {"arrays": 1},
    "error reply": lambda m: Message(Error(code=2, reason="boom"), reply_to=m),
    "fresh message": lambda m: Message(
        RecordDict({"arrays": _good_arrays(m), "metrics": MetricRecord({"num-examples": 1})}),
        dst_node_id=1,
        message_type="train",
    ),
    "no arrays": lambda m: _reply(m, metrics=MetricRecord({"num-examples": 1})),
    "two array records": lambda m: _reply(
        m, a=_good_arrays(m), b=_good_arrays(m), metrics=MetricRecord({"num-examples": 1})
    ),
    "no metrics": lambda m: _reply(m, arrays=_good_arrays(m)),
    "two metric records": lambda m: _reply(
        m,
        arrays=_good_arrays(m),
        m1=MetricRecord({"num-examples": 1}),
        m2=MetricRecord({"num-examples": 1}),
    ),
    "no num-examples": _with(loss=0.1),
    "zero num-examples": _with(**{"num-examples": 0}),
    "float num-examples": _with(**{"num-examples": 3.0}),
    "nan metric": _with(**{"num-examples": 3, "loss": float("nan")}),
    "inf in metric list": _with(**{"num-examples": 3, "hist": [1.0, float("inf")]}),
    "missing array": _arrays(w=np.zeros((2, 3), np.float32)),
    "extra array": _arrays(
        w=np.zeros((2, 3), np.float32), b=np.zeros(3, np.float32), c=np.zeros(1, np.float32)
    ),
    "renamed array": _arrays(w=np.zeros((2, 3), np.float32), bias=np.zeros(3, np.float32)),
    "wrong shape": _arrays(w=np.zeros((3, 2), np.float32), b=np.zeros(3, np.float32)),
    "wrong dtype": _arrays(w=np.zeros((2, 3), np.float64), b=np.zeros(3, np.float32)),
    "nan array": _arrays(w=np.full((2, 3), np.nan, np.float32), b=np.zeros(3, np.float32)),
    "inf array": _arrays(w=np.zeros((2, 3), np.float32), b=np.full(3, -np.inf, np.float32)),
}


@pytest.mark.parametrize("case", sorted(BAD_REPLIES))
def test_bad_train_replies_are_schema_errors(case: str) -> None:
    with pytest.raises(SchemaError) as err:
        _run(_app(BAD_REPLIES[case]))
    assert err.value.expected is not None
    assert err.value.found is not None


def test_evaluate_reply_without_num_examples_is_a_schema_error() -> None:
    with pytest.raises(SchemaError):
        _run(_app(lambda m: _reply(m, metrics=MetricRecord({"acc": 1.0}))), task="evaluate")


def test_wrong_message_type_in_reply_is_a_schema_error() -> None:
    def as_evaluate(msg: Message) -> Message:
        reply = _reply(msg, arrays=_good_arrays(msg), metrics=MetricRecord({"num-examples": 1}))
        reply.metadata.message_type = "evaluate"
        return reply

    with pytest.raises(SchemaError, match="message type"):
        _run(_app(as_evaluate))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"task": "query"},
        {"node_id": 1},
        {"node_id": 0},
        {"node_id": True},
        {"server_round": 0},
        {"run_id": -1},
        {"config": {"server-round": 2}},
        {"config": {"lr": None}},
        {"run_config": {"scale": [1.0]}},
        {"node_config": {"partition-id": None}},
        {"arrays": [("w", np.zeros(2)), ("w", np.zeros(2))]},
        {"arrays": [("w", [1.0, 2.0])]},
    ],
)
def test_bad_inputs_are_schema_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(SchemaError):
        _run(**kwargs)
    assert SEEN == []  # refused before the app ran


# --- offline guard ------------------------------------------------------------------------


def test_running_an_app_opens_no_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[str] = []

    def refuse(name: str) -> Callable[..., Any]:
        def fail(*args: Any, **kwargs: Any) -> Any:
            attempts.append(name)
            raise OSError(f"test: network refused ({name})")

        return fail

    monkeypatch.setattr(socket.socket, "__init__", refuse("socket"))
    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    arrays = example_model.initial_arrays(seed=0)
    for task in ("train", "evaluate"):
        run_client_app("agent.example_app:app", task, arrays, {"lr": 0.1}, {}, PARTITION, NODE, 1)
    _run()
    assert attempts == []


OFFLINE_SCRIPT = """
import json, os, socket, sys, threading

attempts = []
def refuse(name):
    def fail(*args, **kwargs):
        attempts.append(name)
        raise OSError("network refused: " + name)
    return fail

socket.socket.__init__ = refuse("socket")
socket.socket.connect = refuse("connect")
socket.create_connection = refuse("create_connection")
socket.getaddrinfo = refuse("getaddrinfo")

from coordinator import flower_adapter as fa
from agent import example_model
from agent.flower_client import run_client_app

arrays = example_model.initial_arrays(seed=0)
strategy = fa.make_strategy("FedAdam", {"min_available_nodes": 3})
nodes = {500 + i: i for i in range(3)}
tasks = fa.configure_train(strategy, 1, arrays, {"lr": 0.1}, nodes, seed=1)
replies = []
for node, config in tasks:
    result = run_client_app(
        "agent.example_app:app", "train", arrays, config, {"local-epochs": 1},
        {"partition-id": nodes[node], "num-partitions": 3}, node, 1,
    )
    replies.append(fa.Reply(node, result.arrays, result.metrics))
fa.aggregate_train(strategy, 1, replies)
fa.strategy_state(strategy)
print(json.dumps({
    "attempts": attempts,
    "threads": sorted(t.name for t in threading.enumerate()),
    "telemetry": os.environ.get("FLWR_TELEMETRY_ENABLED"),
    "update_check": os.environ.get("FLWR_DISABLE_UPDATE_CHECK"),
    "telemetry_module": sys.modules["flwr.supercore.telemetry"].FLWR_TELEMETRY_ENABLED,
}))
"""


def test_fresh_process_imports_adapters_and_runs_a_round_offline(tmp_path: Path) -> None:
    """A new interpreter with the network refused before anything is imported."""
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("FLWR_TELEMETRY_ENABLED", None)
    env.pop("FLWR_DISABLE_UPDATE_CHECK", None)
    done = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {
        "attempts": [],
        "threads": ["MainThread"],
        "telemetry": "0",
        "update_check": "1",
        "telemetry_module": "0",
    }
    # Telemetry would have created a source id under FLWR_HOME: nothing was written.
    assert not (tmp_path / "flwr-home").exists()
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("adapter", ["agent.flower_client", "coordinator.flower_adapter"])
def test_each_adapter_alone_switches_telemetry_off_before_flwr_loads(adapter: str) -> None:
    script = (
        "import importlib, json, os, sys\n"
        f"importlib.import_module({adapter!r})\n"
        "print(json.dumps([os.environ.get('FLWR_TELEMETRY_ENABLED'),"
        " os.environ.get('FLWR_DISABLE_UPDATE_CHECK'),"
        " sys.modules['flwr.supercore.telemetry'].FLWR_TELEMETRY_ENABLED]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["0", "1", "0"]
