"""The example task's model and data, in plain numpy: no Flower here.

A one-hidden-layer MLP (ReLU, softmax) trained with minibatch SGD on scikit-learn's
bundled 8x8 digits (``load_digits``: shipped inside the wheel, so it loads offline).
The data has a fixed held-out test split; the training split is divided among agents
non-IID, by a Dirichlet draw over labels with a fixed seed, so every agent sees a skewed
label mix and the same ``(partition_id, num_partitions)`` always means the same rows.

``agent/example_app.py`` wraps this in a Flower ClientApp.  The coordinator can use
:func:`initial_arrays`, :func:`load_test` and :func:`evaluate_arrays` for held-out
validation without touching Flower.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.datasets import load_digits  # type: ignore[import-untyped]
from sklearn.model_selection import train_test_split  # type: ignore[import-untyped]

from bundle.errors import SchemaError

NDArray = np.ndarray[Any, Any]
Arrays = list[tuple[str, NDArray]]

NUM_FEATURES = 64
NUM_CLASSES = 10
HIDDEN = 32
ARRAY_NAMES = ("hidden.weight", "hidden.bias", "output.weight", "output.bias")
TEST_FRACTION = 0.2
SPLIT_SEED = 0
PARTITION_SEED = 42
DIRICHLET_ALPHA = 0.5
MIN_PARTITION_SIZE = 10


def initial_arrays(seed: int = 0, hidden: int = HIDDEN) -> Arrays:
    """A freshly initialised model (He init for the ReLU layer), float32, named."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0.0, np.sqrt(2.0 / NUM_FEATURES), (NUM_FEATURES, hidden))
    w2 = rng.normal(0.0, np.sqrt(1.0 / hidden), (hidden, NUM_CLASSES))
    return [
        (ARRAY_NAMES[0], w1.astype(np.float32)),
        (ARRAY_NAMES[1], np.zeros(hidden, dtype=np.float32)),
        (ARRAY_NAMES[2], w2.astype(np.float32)),
        (ARRAY_NAMES[3], np.zeros(NUM_CLASSES, dtype=np.float32)),
    ]


@functools.lru_cache(maxsize=1)
def _split() -> tuple[NDArray, NDArray, NDArray, NDArray]:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED
    )
    parts = (x_train, y_train, x_test, y_test)
    for part in parts:
        part.flags.writeable = False  # cached and shared: nobody may edit it in place
    return parts


def load_test() -> tuple[NDArray, NDArray]:
    """The fixed held-out test split (20 %, stratified), never given to any partition."""
    _, _, x_test, y_test = _split()
    return x_test, y_test


@functools.lru_cache(maxsize=16)
def _partition_indices(num_partitions: int, alpha: float, seed: int) -> tuple[NDArray, ...]:
    _, y_train, _, _ = _split()
    if num_partitions * MIN_PARTITION_SIZE > len(y_train):
        raise SchemaError(
            "more partitions than the digits training set can fill",
            expected=f"<= {len(y_train) // MIN_PARTITION_SIZE} partitions",
            found=num_partitions,
        )
    rng = np.random.default_rng(seed)
    # Redraw until every partition has enough rows to train on; deterministic per seed.
    for _ in range(100):
        buckets: list[list[int]] = [[] for _ in range(num_partitions)]
        for label in range(NUM_CLASSES):
            rows = np.flatnonzero(y_train == label)
            rng.shuffle(rows)
            shares = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
            for bucket, chunk in zip(buckets, np.split(rows, cuts), strict=True):
                bucket.extend(chunk.tolist())
        if min(len(b) for b in buckets) >= MIN_PARTITION_SIZE:
            return tuple(np.sort(np.asarray(b, dtype=np.int64)) for b in buckets)
    raise SchemaError(
        "cannot split the digits training set into that many partitions",
        expected=f"every partition >= {MIN_PARTITION_SIZE} rows",
        found=f"{num_partitions} partitions with alpha {alpha}",
    )


def load_partition(
    partition_id: int,
    num_partitions: int,
    *,
    alpha: float = DIRICHLET_ALPHA,
    seed: int = PARTITION_SEED,
) -> tuple[NDArray, NDArray]:
    """Rows of the training split for one agent: label-skewed (Dirichlet ``alpha``).

    Raises:
        SchemaError: ``partition_id`` outside ``[0, num_partitions)``, or more partitions
            than the data can fill.
    """
    if isinstance(num_partitions, bool) or not isinstance(num_partitions, int):
        raise SchemaError("num-partitions must be an integer", found=type(num_partitions))
    if isinstance(partition_id, bool) or not isinstance(partition_id, int):
        raise SchemaError("partition-id must be an integer", found=type(partition_id))
    if num_partitions < 1 or not 0 <= partition_id < num_partitions:
        raise SchemaError(
            "partition-id out of range",
            expected=f"0 <= partition-id < num-partitions ({num_partitions})",
            found=partition_id,
        )
    x_train, y_train, _, _ = _split()
    rows = _partition_indices(num_partitions, alpha, seed)[partition_id]
    return x_train[rows], y_train[rows]


def _unpack(arrays: Sequence[tuple[str, NDArray]]) -> list[NDArray]:
    names = tuple(name for name, _ in arrays)
    if names != ARRAY_NAMES:
        raise SchemaError(
            "model arrays do not match the example MLP", expected=ARRAY_NAMES, found=names
        )
    w1, b1, w2, b2 = (np.asarray(a, dtype=np.float64) for _, a in arrays)
    if (
        w1.ndim != 2
        or w1.shape[0] != NUM_FEATURES
        or b1.shape != (w1.shape[1],)
        or w2.shape != (w1.shape[1], NUM_CLASSES)
        or b2.shape != (NUM_CLASSES,)
    ):
        found = [a.shape for a in (w1, b1, w2, b2)]
        raise SchemaError(
            "model array shapes do not fit together",
            expected=f"({NUM_FEATURES}, H), (H,), (H, {NUM_CLASSES}), ({NUM_CLASSES},)",
            found=found,
        )
    return [w1, b1, w2, b2]


def _forward(params: list[NDArray], x: NDArray) -> tuple[NDArray, NDArray]:
    w1, b1, w2, b2 = params
    hidden = np.maximum(x @ w1 + b1, 0.0)
    logits = hidden @ w2 + b2
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return hidden, probs


def _loss(probs: NDArray, y: NDArray) -> float:
    return float(-np.mean(np.log(probs[np.arange(len(y)), y] + 1e-12)))


def train(
    arrays: Sequence[tuple[str, NDArray]],
    x: NDArray,
    y: NDArray,
    *,
    lr: float,
    epochs: int,
    batch_size: int = 16,
    seed: int = 0,
    proximal_mu: float = 0.0,
) -> tuple[Arrays, float]:
    """Minibatch SGD on cross-entropy; returns the new arrays and the last epoch's loss.

    ``proximal_mu > 0`` adds FedProx's ``mu/2 * ||w - w_global||^2`` (``w_global`` being
    ``arrays``).  Arrays come back with the names and dtypes they arrived with.
    """
    params = _unpack(arrays)
    anchor = [p.copy() for p in params]
    rng = np.random.default_rng(seed)
    x64 = np.asarray(x, dtype=np.float64)
    epoch_loss = float("nan")
    for _ in range(epochs):
        order = rng.permutation(len(y))
        total = 0.0
        for start in range(0, len(y), batch_size):
            batch = order[start : start + batch_size]
            xb, yb = x64[batch], y[batch]
            hidden, probs = _forward(params, xb)
            total += _loss(probs, yb) * len(batch)
            delta = probs.copy()
            delta[np.arange(len(yb)), yb] -= 1.0
            delta /= len(yb)
            grad_w2 = hidden.T @ delta
            grad_b2 = delta.sum(axis=0)
            back = (delta @ params[2].T) * (hidden > 0)
            grad_w1 = xb.T @ back
            grad_b1 = back.sum(axis=0)
            for param, grad, ref in zip(
                params, (grad_w1, grad_b1, grad_w2, grad_b2), anchor, strict=True
            ):
                param -= lr * (grad + proximal_mu * (param - ref))
        epoch_loss = total / max(len(y), 1)
    out = [(name, p.astype(a.dtype)) for (name, a), p in zip(arrays, params, strict=True)]
    return out, epoch_loss


def evaluate_arrays(
    arrays: Sequence[tuple[str, NDArray]], x: NDArray, y: NDArray
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of the model on ``(x, y)``.

    Raises:
        SchemaError: arrays that are not this example's MLP.
    """
    params = _unpack(arrays)
    _, probs = _forward(params, np.asarray(x, dtype=np.float64))
    accuracy = float(np.mean(probs.argmax(axis=1) == y))
    return _loss(probs, y), accuracy


__all__ = [
    "ARRAY_NAMES",
    "Arrays",
    "evaluate_arrays",
    "initial_arrays",
    "load_partition",
    "load_test",
    "train",
]
