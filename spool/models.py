"""Content-addressed array storage: ``<home>/models/<model hash>.npz`` (used by both sides).

Global models are kept once per round by hash (the hash is over names, dtypes, shapes
and bytes, see :func:`bundle.arrays.model_hash`), written atomically, and read back with
``allow_pickle=False`` and the hash checked, so a damaged file is caught, not trained on.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bundle.arrays import Arrays, model_hash
from bundle.durable import write_bytes_atomic
from bundle.errors import IntegrityError, SchemaError

_ORDER_KEY = "__order__"


class ModelStore:
    """Global models by hash."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: bytes) -> Path:
        return self.root / f"{digest.hex()}.npz"

    def put(self, arrays: Sequence[tuple[str, np.ndarray[Any, Any]]]) -> bytes:
        """Store ``arrays`` (idempotent); returns their model hash."""
        digest = model_hash(arrays)
        path = self.path(digest)
        if not path.exists():
            buffer = io.BytesIO()
            named: dict[str, Any] = {f"a{i}": arr for i, (_, arr) in enumerate(arrays)}
            named[_ORDER_KEY] = np.array([n for n, _ in arrays])
            np.savez(buffer, **named)
            write_bytes_atomic(path, buffer.getvalue())
        return digest

    def get(self, digest: bytes) -> Arrays:
        """Load and verify a model.

        Raises:
            IntegrityError: missing, or its content does not match its hash.
        """
        path = self.path(digest)
        try:
            with np.load(path, allow_pickle=False) as data:
                names = [str(n) for n in data[_ORDER_KEY]]
                arrays = [(name, data[f"a{i}"]) for i, name in enumerate(names)]
        except FileNotFoundError as e:
            raise IntegrityError(
                "model is missing from the store", expected=digest.hex(), where=str(path)
            ) from e
        if model_hash(arrays) != digest:
            raise IntegrityError(
                "stored model does not match its hash",
                expected=digest.hex(),
                found=model_hash(arrays).hex(),
                where=str(path),
            )
        return arrays


def load_npz_model(path: Path) -> Arrays:
    """An initial model from a user's ``.npz`` (array names from the file, in its order).

    Raises:
        SchemaError: unreadable, empty, or holding non-numeric arrays.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = [(name, np.array(data[name])) for name in data.files]
    except (OSError, ValueError) as e:
        raise SchemaError(f"cannot read initial model: {e}", where=str(path)) from e
    if not arrays:
        raise SchemaError("initial model has no arrays", where=str(path))
    return arrays


__all__ = ["ModelStore", "load_npz_model"]
