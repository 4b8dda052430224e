"""The agent's only door to Flower: run a user's ClientApp in-process, offline.

Flower's SuperNode pulls a Message and a Context from the SuperLink and hands them to
``ClientApp.__call__(message, context)`` in a ``flwr-clientapp`` process.  Here the
round-task bundle stands in for the SuperLink: :func:`run_client_app` builds the same
Message (content ``{"arrays": ArrayRecord, "config": ConfigRecord}``, metadata as the
SuperLink stamps it, ``message_id`` = the message's object id) and the same Context
(``run_config``, ``node_config``, ``node_id``, a fresh ``state``), calls the app in this
process, and checks its reply before anything of it leaves the machine.

This is the only agent module that imports ``flwr`` (``agent/example_app.py`` is a user
app, loaded by reference, not part of our code).  Flower's telemetry and update check
are switched off before the first ``flwr`` import; nothing here opens a socket.

Limits: ``Context.state`` is fresh for every call (Flower keeps it across the rounds of
one run; an offline agent would have to persist it between sticks, which no app needs
yet).
"""

from __future__ import annotations

import importlib
import math
import os
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

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
    Context,
    Message,
    Metadata,
    RecordDict,
)
from flwr.app.message import make_message
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore import telemetry as _flwr_telemetry
from flwr.supercore.date import now as _flwr_now
from flwr.supercore.task_identity import TaskIdentity

# If something imported flwr before us, the import-time read already happened: override.
_flwr_telemetry.FLWR_TELEMETRY_ENABLED = "0"

NDArray = np.ndarray[Any, Any]
Arrays = list[tuple[str, NDArray]]
TaskType = Literal["train", "evaluate"]
UserValue = bool | int | float | str
MetricValue = int | float | list[int] | list[float]

NUM_EXAMPLES = "num-examples"
SERVER_ROUND = "server-round"
ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
# Flower's SuperNode runs each ClientApp as a task with its own id; offline there is one.
OFFLINE_TASK_ID = 1
_UINT64 = 1 << 64


class ClientAppError(LLTokenError):
    """The user's ClientApp could not be loaded, or raised while handling a task.

    ``traceback_summary`` holds the innermost frames and the exception line, enough to
    find the failing line of the app without a debugger.
    """

    exit_code = 40

    def __init__(
        self,
        message: str,
        *,
        traceback_summary: str = "",
        expected: object | None = None,
        found: object | None = None,
        where: str | None = None,
    ) -> None:
        self.traceback_summary = traceback_summary
        super().__init__(message, expected=expected, found=found, where=where)

    def to_dict(self) -> dict[str, object]:
        """The base form plus the traceback summary."""
        return {**super().to_dict(), "traceback": self.traceback_summary}


@dataclass(frozen=True)
class ClientResult:
    """What a ClientApp returned, checked: arrays (train only) in the global model's order."""

    arrays: Arrays | None
    metrics: dict[str, MetricValue] = field(default_factory=dict)


def _summarise(exc: BaseException, frames: int = 6) -> str:
    tb = traceback.TracebackException.from_exception(exc)
    lines = [f"  {f.filename}:{f.lineno} in {f.name}" for f in tb.stack[-frames:]]
    return "\n".join([*lines, *(s.rstrip() for s in tb.format_exception_only())])


def load_client_app(app: str | object) -> ClientApp:
    """Return the ClientApp for ``"module:attr.path"`` or pass a ClientApp object through.

    Raises:
        SchemaError: a reference not of the form ``module:attribute``.
        ClientAppError: the module cannot be imported, lacks the attribute, or the object
            is not a ``flwr.clientapp.ClientApp``.
    """
    obj: object = app
    if isinstance(app, str):
        module_name, sep, attributes = app.partition(":")
        if not sep or not module_name or not attributes:
            raise SchemaError(
                "malformed ClientApp reference", expected="'module:attribute'", found=app
            )
        try:
            obj = importlib.import_module(module_name)
            for attribute in attributes.split("."):
                obj = getattr(obj, attribute)
        except Exception as exc:  # the user's module may raise anything on import
            raise ClientAppError(
                "cannot load the ClientApp",
                traceback_summary=_summarise(exc),
                found=f"{type(exc).__name__}: {exc}",
                where=app,
            ) from exc
    if not isinstance(obj, ClientApp):
        raise ClientAppError(
            "not a Flower ClientApp",
            expected="flwr.clientapp.ClientApp",
            found=type(obj).__name__,
            where=app if isinstance(app, str) else None,
        )
    return obj


@contextmanager
def _task_identity(run_id: int, node_id: int) -> Iterator[None]:
    """Set Flower's process-wide task identity as the SuperNode does; restore it after."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id = OFFLINE_TASK_ID
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = node_id
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def _uint(value: object, name: str, *, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < _UINT64:
        raise SchemaError(
            f"{name} out of range", expected=f"an integer in [{low}, 2**64)", found=value
        )
    return value


def _user_config(values: Mapping[str, object], name: str) -> dict[str, UserValue]:
    out: dict[str, UserValue] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not isinstance(value, bool | int | float | str):
            raise SchemaError(
                f"{name} entry is not a Flower user-config value",
                expected="str key -> bool/int/float/str",
                found=f"{key!r}: {type(value).__name__}",
            )
        out[key] = value
    return out


def _global_arrays(arrays: Sequence[tuple[str, NDArray]]) -> Arrays:
    out: Arrays = []
    seen: set[str] = set()
    for name, value in arrays:
        if not isinstance(name, str) or name in seen or not isinstance(value, np.ndarray):
            raise SchemaError(
                "global model arrays must be unique names with numpy arrays",
                found=f"{name!r}: {type(value).__name__}",
            )
        seen.add(name)
        out.append((name, value))
    return out


def _task_message(
    task_type: TaskType,
    arrays: Arrays,
    config: Mapping[str, Any],
    node_id: int,
    server_round: int,
    run_id: int,
) -> Message:
    cfg = dict(config)
    if cfg.setdefault(SERVER_ROUND, server_round) != server_round:
        raise SchemaError(
            "task config names another round",
            expected=server_round,
            found=cfg[SERVER_ROUND],
            where=f"config[{SERVER_ROUND!r}]",
        )
    try:
        content = RecordDict(
            {
                ARRAYS_KEY: ArrayRecord({name: Array(value) for name, value in arrays}),
                CONFIG_KEY: ConfigRecord(cfg),
            }
        )
    except (TypeError, ValueError) as exc:
        raise SchemaError("task content rejected by Flower's records", found=str(exc)) from exc

    created_at = _flwr_now().timestamp()

    def metadata(message_id: str) -> Metadata:
        return Metadata(
            run_id=run_id,
            message_id=message_id,
            src_node_id=SUPERLINK_NODE_ID,
            dst_node_id=node_id,
            reply_to_message_id="",
            group_id=str(server_round),
            created_at=created_at,
            ttl=DEFAULT_TTL,
            message_type=task_type,
        )

    # As the SuperNode does: the message id is the message's own object id (which does
    # not cover the id itself), so build once to learn it, then stamp it in.
    draft = make_message(metadata=metadata(""), content=content)
    return make_message(metadata=metadata(draft.object_id), content=content)


def _reply_error(what: str, *, expected: object = None, found: object = None) -> SchemaError:
    return SchemaError(f"ClientApp reply: {what}", expected=expected, found=found)


def _check_metrics(content: RecordDict) -> dict[str, MetricValue]:
    records = list(content.metric_records.values())
    if len(records) != 1:
        raise _reply_error("needs exactly one MetricRecord", expected=1, found=len(records))
    metrics: dict[str, MetricValue] = {}
    for key, value in records[0].items():
        items = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in items):
            raise _reply_error(f"metric {key!r} is not finite", expected="finite", found=value)
        metrics[key] = list(value) if isinstance(value, list) else value
    count = metrics.get(NUM_EXAMPLES)
    if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
        raise _reply_error(
            f"metric {NUM_EXAMPLES!r} must be a positive integer",
            expected="int > 0",
            found=repr(count),
        )
    return metrics


def _check_arrays(content: RecordDict, reference: Arrays) -> Arrays:
    records = list(content.array_records.values())
    if len(records) != 1:
        raise _reply_error("needs exactly one ArrayRecord", expected=1, found=len(records))
    record = records[0]
    names = [name for name, _ in reference]
    if sorted(record.keys()) != sorted(names):
        raise _reply_error(
            "arrays differ from the global model", expected=names, found=list(record.keys())
        )
    out: Arrays = []
    for name, ref in reference:
        try:
            value = record[name].numpy()
        except (TypeError, ValueError) as exc:
            raise _reply_error(f"array {name!r} cannot be read", found=str(exc)) from exc
        if value.shape != ref.shape or value.dtype != ref.dtype:
            raise _reply_error(
                f"array {name!r} has the wrong shape or dtype",
                expected=f"{ref.dtype}{list(ref.shape)}",
                found=f"{value.dtype}{list(value.shape)}",
            )
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            raise _reply_error(
                f"array {name!r} is not finite", expected="finite values", found="NaN or inf"
            )
        out.append((name, value))
    return out


def _check_reply(reply: object, task: Message, reference: Arrays) -> ClientResult:
    if not isinstance(reply, Message):
        raise _reply_error(
            "not a Flower Message", expected="flwr.app.Message", found=type(reply).__name__
        )
    if reply.has_error():
        raise _reply_error(
            "carries an error instead of content",
            expected="content",
            found=f"error code {reply.error.code}: {reply.error.reason}",
        )
    meta = reply.metadata
    if meta.reply_to_message_id != task.metadata.message_id:
        raise _reply_error(
            "is not a reply to the task message (use Message(content, reply_to=msg))",
            expected=task.metadata.message_id,
            found=meta.reply_to_message_id or "no reply_to",
        )
    if meta.message_type != task.metadata.message_type:
        raise _reply_error(
            "has the wrong message type",
            expected=task.metadata.message_type,
            found=meta.message_type,
        )
    metrics = _check_metrics(reply.content)
    if task.metadata.message_type == "train":
        return ClientResult(_check_arrays(reply.content, reference), metrics)
    return ClientResult(None, metrics)


def run_client_app(
    app: str | object,
    task_type: TaskType,
    arrays: Sequence[tuple[str, NDArray]],
    config: Mapping[str, Any],
    run_config: Mapping[str, UserValue],
    node_config: Mapping[str, UserValue],
    node_id: int,
    server_round: int,
    *,
    run_id: int = 0,
) -> ClientResult:
    """Run one train or evaluate task through a Flower ClientApp, in this process.

    Args:
        app: a ``ClientApp`` or a ``"module:attribute"`` reference to one.
        task_type: ``"train"`` or ``"evaluate"`` (the Flower message type).
        arrays: the global model, in order.
        config: the round's config from the task (``server-round`` is added if absent).
        run_config: the run's user config (``context.run_config``).
        node_config: this node's config, e.g. ``partition-id`` (``context.node_config``).
        node_id: this agent's Flower node id.
        server_round: the coordinator's round (also the message's ``group_id``).
        run_id: the Flower run id (the federation's numeric id).

    Returns:
        For train, the new arrays in the global model's order and the reply's metrics;
        for evaluate, ``arrays=None`` and the metrics.

    Raises:
        SchemaError: bad inputs, or a reply that breaks the rules: an error reply, not a
            reply to this task, not exactly one ArrayRecord (train) and one MetricRecord,
            no positive integer ``num-examples``, arrays whose names, shapes or dtypes
            differ from the global model, or non-finite numbers.
        ClientAppError: the app cannot be loaded or raised an exception.
    """
    if task_type not in ("train", "evaluate"):
        raise SchemaError("unknown task type", expected="'train' or 'evaluate'", found=task_type)
    # Flower never gives a node id 0 or 1 (1 is the SuperLink, the sender of every task).
    node_id = _uint(node_id, "node id", low=2)
    server_round = _uint(server_round, "server round", low=1)
    run_id = _uint(run_id, "run id")
    reference = _global_arrays(arrays)
    client_app = load_client_app(app)
    message = _task_message(task_type, reference, config, node_id, server_round, run_id)
    context = Context(
        run_id=run_id,
        node_id=node_id,
        node_config=_user_config(node_config, "node config"),
        state=RecordDict(),
        run_config=_user_config(run_config, "run config"),
    )
    with _task_identity(run_id, node_id):
        try:
            reply = client_app(message, context)
        except Exception as exc:  # the user's app may raise anything; report, don't crash
            raise ClientAppError(
                f"ClientApp raised {type(exc).__name__}: {exc}",
                traceback_summary=_summarise(exc),
                where=f"{task_type} task, round {server_round}",
            ) from exc
    return _check_reply(reply, message, reference)


__all__ = [
    "ClientAppError",
    "ClientResult",
    "load_client_app",
    "run_client_app",
]
