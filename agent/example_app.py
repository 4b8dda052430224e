"""Example user ClientApp: a numpy MLP on the digits dataset, in Flower's own style.

This is *user* code, written the way Flower's examples are, so it imports ``flwr``
directly.  It is the one allowed exception to the rule that only
``agent/flower_client.py`` imports Flower on the agent side: our code never imports this
module, it is loaded by reference (``"agent.example_app:app"``) exactly like any
operator's own app.  The model and data live in ``agent/example_model.py`` (no Flower).

Run config (``[tool.flwr.app.config]`` in a Flower project): ``local-epochs`` (default 1),
``learning-rate`` (default 0.1, overridden by ``lr`` in the round's config),
``batch-size`` (default 16).  Node config: ``partition-id``, ``num-partitions``.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from agent import example_model

app = ClientApp()


def _model(msg: Message) -> example_model.Arrays:
    return [(name, array.numpy()) for name, array in msg.content.array_records["arrays"].items()]


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


def _data(context: Context) -> tuple[example_model.NDArray, example_model.NDArray]:
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    return example_model.load_partition(partition_id, num_partitions)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received model on this node's partition."""
    config = msg.content.config_records["config"]
    x, y = _data(context)
    lr = _number(config.get("lr", context.run_config.get("learning-rate", 0.1)), "lr")
    epochs = int(context.run_config.get("local-epochs", 1))
    batch_size = int(context.run_config.get("batch-size", 16))
    server_round = int(_number(config["server-round"], "server-round"))
    seed = int(context.node_config["partition-id"]) * 100_003 + server_round
    arrays, train_loss = example_model.train(
        _model(msg),
        x,
        y,
        lr=lr,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        proximal_mu=_number(config.get("proximal-mu", 0.0), "proximal-mu"),
    )
    # Keep the global model's names: the coordinator matches arrays by name.
    model_record = ArrayRecord({name: Array(value) for name, value in arrays})
    metrics = MetricRecord({"train_loss": train_loss, "num-examples": len(y)})
    content = RecordDict({"arrays": model_record, "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received model on this node's partition."""
    x, y = _data(context)
    loss, accuracy = example_model.evaluate_arrays(_model(msg), x, y)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": accuracy, "num-examples": len(y)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


# --------------------------------------------------------------------------- attacker
# A misbehaving participant for the simulation's --malicious agents: it trains honestly,
# then (by node_config "attack") scales its update 10x away from the global model or
# replaces it with noise, and claims perfect accuracy on ten times its real data.  The
# coordinator must not pay it for the claims: quality is measured, not reported.

attacker_app = ClientApp()


@attacker_app.train()
def attacker_train(msg: Message, context: Context) -> Message:
    """Train, then poison the update and inflate the self-reported metrics."""
    reply = train(msg, context)
    sent = dict(_model(msg))
    record = reply.content.array_records["arrays"]
    attack = str(context.node_config.get("attack", "scale"))
    rng = np.random.default_rng(int(context.node_config["partition-id"]))
    poisoned = {}
    for name, array in record.items():
        value = array.numpy()
        if attack == "noise":
            value = rng.normal(0.0, 1.0, value.shape).astype(value.dtype)
        else:
            value = (sent[name] + 10.0 * (value - sent[name])).astype(value.dtype)
        poisoned[name] = Array(value)
    claimed = 10 * len(_data(context)[1])
    metrics = MetricRecord({"train_loss": 0.0, "accuracy": 0.99, "num-examples": claimed})
    content = RecordDict({"arrays": ArrayRecord(poisoned), "metrics": metrics})
    return Message(content=content, reply_to=msg)
