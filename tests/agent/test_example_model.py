"""The example task's numpy MLP and digits data (no Flower involved)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from agent import example_model as em
from bundle.errors import SchemaError


def test_initial_arrays_are_named_float32_and_seeded() -> None:
    arrays = em.initial_arrays(seed=3)
    assert [(k, v.shape, v.dtype) for k, v in arrays] == [
        ("hidden.weight", (64, em.HIDDEN), np.float32),
        ("hidden.bias", (em.HIDDEN,), np.float32),
        ("output.weight", (em.HIDDEN, 10), np.float32),
        ("output.bias", (10,), np.float32),
    ]
    again = em.initial_arrays(seed=3)
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(arrays, again, strict=True))
    other = em.initial_arrays(seed=4)
    assert not np.array_equal(arrays[0][1], other[0][1])


def test_test_split_is_fixed_stratified_and_disjoint_from_training() -> None:
    x_test, y_test = em.load_test()
    assert x_test.shape == (360, 64)
    assert np.bincount(y_test, minlength=10).min() >= 30
    assert x_test.min() >= 0.0
    assert x_test.max() <= 1.0
    train_rows = sum(len(em.load_partition(i, 3)[1]) for i in range(3))
    assert train_rows + len(y_test) == 1797
    x_again, _ = em.load_test()
    assert np.array_equal(x_test, x_again)
    with pytest.raises(ValueError, match="read-only"):
        x_test[0, 0] = 1.0


@pytest.mark.parametrize("num_partitions", [2, 5, 10])
def test_partitions_cover_the_training_split_once_and_are_label_skewed(
    num_partitions: int,
) -> None:
    parts = [em.load_partition(i, num_partitions) for i in range(num_partitions)]
    rows = np.concatenate([x for x, _ in parts])
    assert len(rows) == 1797 - 360
    assert len(np.unique(rows, axis=0)) == len(np.unique(em._split()[0], axis=0))
    overall = np.bincount(em._split()[1], minlength=10) / (1797 - 360)
    for _, y in parts:
        # Total variation from the overall label mix: a random (IID) split of these sizes
        # gives about 0.1 or less; a Dirichlet(0.5) label skew is well above it.
        assert 0.5 * np.abs(np.bincount(y, minlength=10) / len(y) - overall).sum() > 0.2
    assert min(len(y) for _, y in parts) >= em.MIN_PARTITION_SIZE
    x0, y0 = em.load_partition(0, num_partitions)
    assert np.array_equal(x0, parts[0][0])
    assert np.array_equal(y0, parts[0][1])


@pytest.mark.parametrize(
    ("partition_id", "num_partitions"),
    [(-1, 3), (3, 3), (0, 0), (True, 3), (0, 1000), (0, 2.0)],
)
def test_bad_partitions_are_refused(partition_id: Any, num_partitions: Any) -> None:
    with pytest.raises(SchemaError):
        em.load_partition(partition_id, num_partitions)


def test_five_local_epochs_improve_on_the_initial_model() -> None:
    arrays = em.initial_arrays(seed=0)
    x, y = em.load_partition(0, 5)
    x_test, y_test = em.load_test()
    _, acc0 = em.evaluate_arrays(arrays, x_test, y_test)
    local_loss0, local_acc0 = em.evaluate_arrays(arrays, x, y)
    trained, train_loss = em.train(arrays, x, y, lr=0.2, epochs=5, seed=1)
    _, acc1 = em.evaluate_arrays(trained, x_test, y_test)
    local_loss1, local_acc1 = em.evaluate_arrays(trained, x, y)
    assert local_acc1 > max(0.7, local_acc0 + 0.4)
    assert local_loss1 < local_loss0
    assert acc1 > acc0 + 0.1  # better on held-out data too, despite the label skew
    assert train_loss < local_loss0
    assert [(k, v.dtype) for k, v in trained] == [(k, v.dtype) for k, v in arrays]


def test_training_is_deterministic_and_leaves_its_input_alone() -> None:
    arrays = em.initial_arrays(seed=0)
    copy = [(k, v.copy()) for k, v in arrays]
    x, y = em.load_partition(1, 4)
    a, _ = em.train(arrays, x, y, lr=0.1, epochs=2, seed=9)
    b, _ = em.train(arrays, x, y, lr=0.1, epochs=2, seed=9)
    assert all(np.array_equal(p, q) for (_, p), (_, q) in zip(a, b, strict=True))
    assert all(np.array_equal(p, q) for (_, p), (_, q) in zip(arrays, copy, strict=True))


def test_proximal_term_keeps_weights_near_the_global_model() -> None:
    arrays = em.initial_arrays(seed=0)
    x, y = em.load_partition(2, 4)

    def drift(mu: float) -> float:
        trained, _ = em.train(arrays, x, y, lr=0.1, epochs=5, seed=2, proximal_mu=mu)
        return sum(
            float(np.sum((t - g) ** 2)) for (_, t), (_, g) in zip(trained, arrays, strict=True)
        )

    assert drift(1.0) < 0.5 * drift(0.0)


@pytest.mark.parametrize(
    "arrays",
    [
        [],
        [("w", np.zeros((64, 32), np.float32))],
        [(name, np.zeros(3, np.float32)) for name in em.ARRAY_NAMES],
        list(reversed(em.initial_arrays(0))),
    ],
)
def test_evaluate_rejects_arrays_that_are_not_this_model(arrays: Any) -> None:
    x, y = em.load_test()
    with pytest.raises(SchemaError):
        em.evaluate_arrays(arrays, x, y)
