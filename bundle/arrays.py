"""Model arrays on the wire: content hashes and lossless filters chosen per array.

A model is an ordered list of named numpy arrays (what a Flower ``ArrayRecord`` holds).
Each array is sent as one CBOR map, in one of two forms:

* plain: ``{"name": text, "array": <RFC 8746 typed array>}``;
* filtered: ``{"name", "dtype", "shape", "filters", ["parent"], "data"}`` where ``data``
  is a uint8 typed array holding the filtered bytes.

Filters (applied in this order when packing, undone in reverse when opening):

``xor``      XOR of the array's bits with the parent array's bits (``parent`` names the
             parent by :func:`array_hash`).  A small training step leaves the sign,
             exponent and high mantissa bits unchanged, so most XOR bytes are zero.
``shuffle``  byte-shuffle within blocks of :data:`SHUFFLE_BLOCK` elements: all first
             bytes, then all second bytes, ...  Blocks keep the inverse in place with a
             small temporary, so opening never needs a second copy of a large array.

The filters are chosen per array by compressing a sample with each candidate and keeping
the smallest, so an array that does not benefit is sent plain.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import zstandard

from bundle.cbor import DTYPE_TAGS, MAX_DIMS, LazyBytes, Tag, encode
from bundle.errors import IntegrityError, SchemaError

SHUFFLE_BLOCK = 1 << 16  # elements per shuffle block
_SAMPLE_BLOCKS = 2
FILTERS = ("xor", "shuffle")
_ALLOWED_FILTER_SETS = ((), ("shuffle",), ("xor",), ("xor", "shuffle"))
_UINT_OF_SIZE = {1: np.dtype("<u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}

Arrays = list[tuple[str, np.ndarray[Any, Any]]]


def array_hash(arr: np.ndarray[Any, Any]) -> bytes:
    """SHA-256 over the dtype, shape and little-endian bytes of ``arr``."""
    # ascontiguousarray returns at least 1-d: reshape so shape () and (1,) hash apart.
    little = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).reshape(arr.shape)
    h = hashlib.sha256(b"lltoken/array/v1\x00")
    h.update(encode([little.dtype.name, list(little.shape)]))
    h.update(little.reshape(-1).view(np.uint8).data)
    return h.digest()


def model_hash(arrays: Sequence[tuple[str, np.ndarray[Any, Any]]]) -> bytes:
    """The hash that names a model: over its ordered array names and array hashes."""
    listing = [[name, array_hash(arr)] for name, arr in arrays]
    return hashlib.sha256(b"lltoken/model/v1\x00" + encode(listing)).digest()


def _as_uint(arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    flat = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).reshape(-1)
    return flat.view(_UINT_OF_SIZE[flat.dtype.itemsize])


def _filter_block(
    block: np.ndarray[Any, Any], parent: np.ndarray[Any, Any] | None, shuffle: bool
) -> np.ndarray[Any, Any]:
    """Filter one block of unsigned-integer elements; returns uint8 bytes."""
    if parent is not None:
        block = np.bitwise_xor(block, parent)
    raw = block.view(np.uint8).reshape(len(block), block.dtype.itemsize)
    return np.ascontiguousarray(raw.T).reshape(-1) if shuffle else raw.reshape(-1)


def _filtered_chunks(
    values: np.ndarray[Any, Any], parent: np.ndarray[Any, Any] | None, shuffle: bool
) -> Iterator[memoryview]:
    for start in range(0, len(values), SHUFFLE_BLOCK):
        stop = start + SHUFFLE_BLOCK
        block_parent = None if parent is None else parent[start:stop]
        yield _filter_block(values[start:stop], block_parent, shuffle).data


def _choose_filters(
    values: np.ndarray[Any, Any], parent: np.ndarray[Any, Any] | None, level: int
) -> tuple[str, ...]:
    """Compress a sample under each candidate filter set and keep the smallest."""
    if values.dtype.itemsize == 1 and parent is None:
        return ()
    n_blocks = max(1, -(-len(values) // SHUFFLE_BLOCK))
    picks = sorted({0, n_blocks // 2})[:_SAMPLE_BLOCKS]
    compressor = zstandard.ZstdCompressor(level=level)
    best: tuple[int, tuple[str, ...]] | None = None
    for filters in _ALLOWED_FILTER_SETS:
        if "xor" in filters and parent is None:
            continue
        if filters == ("shuffle",) and values.dtype.itemsize == 1:
            continue
        size = 0
        for block_index in picks:
            sl = slice(block_index * SHUFFLE_BLOCK, (block_index + 1) * SHUFFLE_BLOCK)
            block_parent = parent[sl] if "xor" in filters and parent is not None else None
            sample = _filter_block(values[sl], block_parent, "shuffle" in filters)
            size += len(compressor.compress(sample.tobytes()))
        if best is None or size < best[0]:
            best = (size, filters)
    return best[1] if best else ()


def encode_arrays(
    arrays: Sequence[tuple[str, np.ndarray[Any, Any]]],
    parents: Mapping[str, tuple[bytes, np.ndarray[Any, Any]]] | None = None,
    *,
    level: int = 3,
    use_filters: bool = True,
) -> list[dict[str, Any]]:
    """The CBOR form of ``arrays``; filtered data is produced lazily while encoding.

    Args:
        arrays: the model, in order.
        parents: per array name, the parent array and its hash, for XOR-delta.  Used only
            where dtype and shape match.
        level: the zstd level the payload will use (filters are judged under it).
        use_filters: False sends every array plain.

    Raises:
        SchemaError: a dtype outside the allowlist.
    """
    entries: list[dict[str, Any]] = []
    for name, arr in arrays:
        if arr.dtype.name not in DTYPE_TAGS:
            raise SchemaError(
                "array dtype not allowed",
                expected=sorted(DTYPE_TAGS),
                found=arr.dtype.name,
                where=f"array {name!r}",
            )
        parent_entry = (parents or {}).get(name)
        parent_values: np.ndarray[Any, Any] | None = None
        if (
            parent_entry is not None
            and parent_entry[1].dtype == arr.dtype
            and parent_entry[1].shape == arr.shape
        ):
            parent_values = _as_uint(parent_entry[1])
        values = _as_uint(arr)
        filters = _choose_filters(values, parent_values, level) if use_filters else ()
        if not filters:
            entries.append({"name": name, "array": arr})
            continue
        xor_parent = parent_values if "xor" in filters else None
        shuffle = "shuffle" in filters
        entry: dict[str, Any] = {
            "name": name,
            "dtype": arr.dtype.name,
            "shape": list(arr.shape),
            "filters": list(filters),
            "data": Tag(
                40,
                [
                    [values.nbytes],
                    Tag(
                        DTYPE_TAGS["uint8"],
                        LazyBytes(
                            values.nbytes,
                            functools.partial(_filtered_chunks, values, xor_parent, shuffle),
                        ),
                    ),
                ],
            ),
        }
        if xor_parent is not None and parent_entry is not None:
            entry["parent"] = parent_entry[0]
        entries.append(entry)
    return entries


def _unshuffle_in_place(data: np.ndarray[Any, Any], itemsize: int) -> None:
    block_bytes = SHUFFLE_BLOCK * itemsize
    scratch = np.empty(min(block_bytes, len(data)), dtype=np.uint8)
    for start in range(0, len(data), block_bytes):
        block = data[start : start + block_bytes]
        count = len(block) // itemsize
        planes = scratch[: len(block)]
        planes[:] = block
        # One strided copy per byte plane is ~3x faster than a 2-D transpose copy.
        elements = block.reshape(count, itemsize)
        for k in range(itemsize):
            elements[:, k] = planes[k * count : (k + 1) * count]


def decode_arrays(
    entries: Any,
    parents: Mapping[bytes, np.ndarray[Any, Any]] | None = None,
    *,
    where: str = "arrays",
) -> Arrays:
    """Rebuild the arrays from their CBOR form, undoing filters in place.

    Args:
        entries: the decoded CBOR list (arrays inside are views of the payload buffer).
        parents: parent arrays by :func:`array_hash`, for XOR-delta entries.

    Raises:
        SchemaError: a malformed entry, unknown filter, or mismatched dtype/shape/length.
        IntegrityError: a delta against a parent array this home does not have.
    """
    if not isinstance(entries, list):
        raise SchemaError("arrays must be a list", found=type(entries).__name__, where=where)
    result: Arrays = []
    names: set[str] = set()
    for index, entry in enumerate(entries):
        at = f"{where}[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise SchemaError("array entry must be a map with a text name", where=at)
        name = entry["name"]
        if name in names:
            raise SchemaError("duplicate array name", found=name, where=at)
        names.add(name)
        if set(entry) == {"name", "array"}:
            if not isinstance(entry["array"], np.ndarray):
                raise SchemaError("array is not a typed array", where=at)
            result.append((name, entry["array"]))
            continue
        result.append((name, _unfilter(entry, parents or {}, at)))
    return result


def _unfilter(
    entry: dict[str, Any], parents: Mapping[bytes, np.ndarray[Any, Any]], at: str
) -> np.ndarray[Any, Any]:
    listed = entry.get("filters")
    # Only text names: a decoded typed array compared with "==" would not give a bool.
    filters: tuple[str, ...] = ()
    if isinstance(listed, list) and all(isinstance(f, str) for f in listed):
        filters = tuple(listed)
    keys = {"name", "dtype", "shape", "filters", "data"} | (
        {"parent"} if "xor" in filters else set()
    )
    if set(entry) != keys or filters not in _ALLOWED_FILTER_SETS[1:]:
        raise SchemaError(
            "malformed filtered array entry",
            expected=sorted(keys),
            found=f"{sorted(entry)} filters {list(filters)}",
            where=at,
        )
    dtype_name, shape, data = entry["dtype"], entry["shape"], entry["data"]
    if not isinstance(dtype_name, str) or dtype_name not in DTYPE_TAGS:
        raise SchemaError(
            "array dtype not allowed", expected=sorted(DTYPE_TAGS), found=dtype_name, where=at
        )
    if not (
        isinstance(shape, list)
        and len(shape) <= MAX_DIMS
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise SchemaError(
            f"array shape must be a list of at most {MAX_DIMS} sizes", found=shape, where=at
        )
    dtype = np.dtype(dtype_name).newbyteorder("<")
    count = math.prod(shape)  # exact: np.prod would wrap around in int64
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 1
        or data.nbytes != count * dtype.itemsize
    ):
        raise SchemaError(
            "filtered data does not match dtype and shape",
            expected=f"{count * dtype.itemsize} uint8 bytes",
            found=getattr(data, "nbytes", type(data).__name__),
            where=at,
        )
    if not data.flags.writeable:
        data = data.copy()
    if "shuffle" in filters:
        _unshuffle_in_place(data, dtype.itemsize)
    values: np.ndarray[Any, Any] = data.view(_UINT_OF_SIZE[dtype.itemsize])
    if "xor" in filters:
        parent_ref = entry["parent"]
        parent = parents.get(parent_ref) if isinstance(parent_ref, bytes) else None
        if parent is None:
            raise IntegrityError(
                "update is a delta against a parent array this home does not have; import "
                "the global model it was trained from first",
                expected="a known parent array",
                found=_hex(entry["parent"]),
                where=at,
            )
        if parent.dtype.itemsize != dtype.itemsize or parent.size != count:
            raise SchemaError(
                "parent array does not match the delta",
                expected=f"{count} x {dtype.itemsize} bytes",
                found=f"{parent.size} x {parent.dtype.itemsize}",
                where=at,
            )
        np.bitwise_xor(values, _as_uint(parent), out=values)
    try:
        result: np.ndarray[Any, Any] = values.view(dtype).reshape(shape)
    except ValueError as e:  # only an empty array can get here with absurd dimensions
        raise SchemaError("array shape is beyond numpy's limits", found=shape, where=at) from e
    return result


def _hex(value: Any) -> str:
    return value.hex() if isinstance(value, bytes) else repr(value)


__all__ = [
    "FILTERS",
    "SHUFFLE_BLOCK",
    "Arrays",
    "array_hash",
    "decode_arrays",
    "encode_arrays",
    "model_hash",
]
