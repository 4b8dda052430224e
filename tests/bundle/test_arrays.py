"""Tests for bundle.arrays: array hashes and the lossless filters (shuffle, XOR-delta).

The filters are checked against a small reference written here from the module's
description (XOR of the element bits, then all first bytes, all second bytes, ... per
block of SHUFFLE_BLOCK elements), in both directions: what the encoder produces, and that
the decoder inverts any such entry bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bundle import cbor
from bundle.arrays import SHUFFLE_BLOCK, array_hash, decode_arrays, encode_arrays, model_hash
from bundle.errors import IntegrityError, SchemaError

DTYPES = sorted(cbor.DTYPE_TAGS)
FILTER_SETS = [("shuffle",), ("xor",), ("xor", "shuffle")]
PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RNG_SEED = 20240611


def little_bytes(arr: np.ndarray[Any, Any]) -> bytes:
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def bit_exact(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> bool:
    return (
        a.dtype.name == b.dtype.name and a.shape == b.shape and little_bytes(a) == little_bytes(b)
    )


def reference_filter(
    arr: np.ndarray[Any, Any], parent: np.ndarray[Any, Any] | None, shuffle: bool
) -> bytes:
    size = arr.dtype.itemsize
    raw = np.frombuffer(little_bytes(arr), dtype=np.uint8).reshape(-1, size).copy()
    if parent is not None:
        raw ^= np.frombuffer(little_bytes(parent), dtype=np.uint8).reshape(-1, size)
    blocks = [raw[i : i + SHUFFLE_BLOCK] for i in range(0, len(raw), SHUFFLE_BLOCK)]
    return b"".join(b.T.tobytes() if shuffle else b.tobytes() for b in blocks)


def wire(entries: Any) -> Any:
    """Through the codec, as a bundle payload would go (bytearray: writable views)."""
    return cbor.decode(bytearray(cbor.encode(entries)))


def round_trip(
    arrays: list[tuple[str, np.ndarray[Any, Any]]],
    parents: dict[str, tuple[bytes, np.ndarray[Any, Any]]] | None = None,
    **kwargs: Any,
) -> tuple[list[dict[str, Any]], list[tuple[str, np.ndarray[Any, Any]]]]:
    entries = wire(encode_arrays(arrays, parents, **kwargs))
    # decode_arrays undoes filters in place in the (writable) payload: keep what was sent.
    sent = [dict(e, data=e["data"].copy()) if "data" in e else dict(e) for e in entries]
    by_hash = {h: p for h, p in (parents or {}).values()}
    return sent, decode_arrays(entries, by_hash)


def sample(dtype: str, shape: tuple[int, ...], seed: int = RNG_SEED) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.normal(0, 1, size=shape).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)


# ----------------------------------------------------------------------------- hashes


def test_array_hash_binds_dtype_shape_and_content() -> None:
    base = np.arange(6, dtype=np.int32).reshape(2, 3)
    hashes = {
        array_hash(base),
        array_hash(base.reshape(3, 2)),
        array_hash(base.reshape(6)),
        array_hash(base.view(np.float32)),
        array_hash(base.view(np.uint32)),
        array_hash(base + 1),
        array_hash(np.array(5, dtype=np.int32)),
        array_hash(np.array([5], dtype=np.int32)),  # shape () and (1,) are different arrays
        array_hash(np.zeros((0,), dtype=np.int32)),
        array_hash(np.zeros((0, 3), dtype=np.int32)),
    }
    assert len(hashes) == 10
    assert all(len(h) == 32 for h in hashes)


def test_array_hash_ignores_memory_layout_and_byte_order() -> None:
    arr = np.arange(12, dtype="<f8").reshape(3, 4)
    assert array_hash(arr) == array_hash(arr.astype(">f8"))
    assert array_hash(arr) == array_hash(np.asfortranarray(arr))
    assert array_hash(arr.T) == array_hash(np.ascontiguousarray(arr.T))


def test_model_hash_binds_names_and_order() -> None:
    a, b = np.zeros(3, np.float32), np.ones(3, np.float32)
    hashes = {
        model_hash([("a", a), ("b", b)]),
        model_hash([("b", b), ("a", a)]),
        model_hash([("a", b), ("b", a)]),
        model_hash([("a", a)]),
        model_hash([]),
    }
    assert len(hashes) == 5
    assert model_hash([("a", a), ("b", b)]) == model_hash([("a", a.copy()), ("b", b.copy())])


# ----------------------------------------------------------------------------- round trips

SHAPES = [
    (),
    (0,),
    (3, 0),
    (1,),
    (7,),
    (3, 5, 7),
    (SHUFFLE_BLOCK + 3,),
    (2, SHUFFLE_BLOCK // 2 + 1),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_bit_exact(dtype: str, shape: tuple[int, ...]) -> None:
    arr = sample(dtype, shape)
    parent = sample(dtype, shape, seed=1)
    for parents in (None, {"w": (array_hash(parent), parent)}):
        for use_filters in (True, False):
            entries, back = round_trip([("w", arr)], parents, use_filters=use_filters)
            assert [name for name, _ in back] == ["w"]
            assert bit_exact(arr, back[0][1])
            if not use_filters:
                assert set(entries[0]) == {"name", "array"}


@pytest.mark.parametrize("filters", FILTER_SETS, ids="+".join)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_decoder_inverts_every_filter(
    dtype: str, shape: tuple[int, ...], filters: tuple[str, ...]
) -> None:
    arr = sample(dtype, shape)
    parent = sample(dtype, shape, seed=2)
    xor = "xor" in filters
    data = reference_filter(arr, parent if xor else None, "shuffle" in filters)
    entry: dict[str, Any] = {
        "name": "w",
        "dtype": dtype,
        "shape": list(shape),
        "filters": list(filters),
        "data": np.frombuffer(data, dtype=np.uint8),
    }
    if xor:
        entry["parent"] = array_hash(parent)
    [(name, back)] = decode_arrays(wire([entry]), {array_hash(parent): parent})
    assert name == "w"
    assert bit_exact(arr, back)


def test_special_float_bit_patterns_survive_every_filter() -> None:
    bits = np.array(
        [0x7FC00001, 0xFFC00000, 0x7F800001, 0x80000000, 0x00000001, 0x7F800000, 0xFF800000],
        dtype="<u4",
    )
    arr = np.tile(bits, 1000).view("<f4")
    parent = np.zeros_like(arr)
    for parents in (None, {"w": (array_hash(parent), parent)}):
        _, back = round_trip([("w", arr)], parents)
        assert bit_exact(arr, back[0][1])


@st.composite
def array_and_parent(draw: st.DrawFn) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any] | None]:
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    dtype = dtype.newbyteorder(draw(st.sampled_from("<>")))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40))
    arr = draw(hnp.arrays(dtype, shape))
    if not draw(st.booleans()):
        return arr, None
    noise = draw(hnp.arrays(np.dtype(f"<u{dtype.itemsize}"), shape))
    mask = np.array(draw(st.sampled_from([0, 1, 0xFF])), dtype=noise.dtype)
    parent = (arr.view(f"=u{dtype.itemsize}") ^ (noise & mask)).view(arr.dtype)
    return arr, parent


@PROPERTY
@given(array_and_parent(), st.integers(1, 5))
def test_round_trip_property(
    pair: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any] | None], level: int
) -> None:
    arr, parent = pair
    parents = None if parent is None else {"w": (array_hash(parent), parent)}
    entries, back = round_trip([("w", arr)], parents, level=level)
    assert bit_exact(arr, back[0][1])
    entry = entries[0]
    if "filters" in entry:
        # What the encoder wrote is exactly the reference filter's output.
        xor = "xor" in entry["filters"]
        assert xor == ("parent" in entry)
        expected = reference_filter(arr, parent if xor else None, "shuffle" in entry["filters"])
        assert entry["data"].tobytes() == expected
        if xor:
            assert parent is not None
            assert entry["parent"] == array_hash(parent)


def test_many_arrays_keep_their_order_and_names() -> None:
    arrays = [
        (f"layer{i}.{kind}", sample(dt, (i + 1, 3)))
        for i, (kind, dt) in enumerate(
            [("w", "float32"), ("b", "float16"), ("n", "int64"), ("m", "uint8")]
        )
    ]
    _, back = round_trip(arrays)
    assert [n for n, _ in back] == [n for n, _ in arrays]
    assert all(bit_exact(a, b) for (_, a), (_, b) in zip(arrays, back, strict=True))


def test_decode_does_not_alter_a_read_only_payload() -> None:
    arr = np.linspace(0, 1, 5000, dtype=np.float32)
    encoded = cbor.encode(encode_arrays([("w", arr)]))
    entries = cbor.decode(encoded)  # bytes: read-only views
    before = entries[0]["data"].tobytes() if "data" in entries[0] else None
    [(_, back)] = decode_arrays(entries)
    assert bit_exact(arr, back)
    if before is not None:
        assert entries[0]["data"].tobytes() == before


# ----------------------------------------------------------------------------- filter choice


def _compressed_size(entries: list[dict[str, Any]]) -> int:
    return len(zstandard.ZstdCompressor(level=3).compress(cbor.encode(entries)))


def test_xor_delta_is_chosen_for_a_small_training_step() -> None:
    rng = np.random.default_rng(RNG_SEED)
    parent = rng.normal(0, 0.1, size=(300, 200)).astype(np.float32)
    child = parent + (rng.normal(0, 1e-5, size=parent.shape) * np.abs(parent)).astype(np.float32)
    parents = {"w": (array_hash(parent), parent)}
    entries = encode_arrays([("w", child)], parents)
    assert "xor" in entries[0]["filters"]
    assert entries[0]["parent"] == array_hash(parent)
    plain = encode_arrays([("w", child)], use_filters=False)
    assert _compressed_size(entries) < 0.8 * _compressed_size(plain)
    _, back = round_trip([("w", child)], parents)
    assert bit_exact(child, back[0][1])


def test_shuffle_is_chosen_for_smooth_weights() -> None:
    arr = np.linspace(-1, 1, 50_000, dtype=np.float32)
    entries = encode_arrays([("w", arr)])
    assert entries[0]["filters"] == ["shuffle"]
    assert _compressed_size(entries) < _compressed_size(
        encode_arrays([("w", arr)], use_filters=False)
    )


def test_filters_that_do_not_help_are_not_used() -> None:
    noise = np.random.default_rng(RNG_SEED).integers(0, 256, size=10_000, dtype=np.uint8)
    assert set(encode_arrays([("w", noise)])[0]) == {"name", "array"}


def test_parent_with_another_shape_or_dtype_is_not_used() -> None:
    arr = np.linspace(0, 1, 1000, dtype=np.float32)
    for parent in (arr.astype(np.float64), arr[:999], arr.reshape(10, 100)):
        entry = encode_arrays([("w", arr)], {"w": (array_hash(parent), parent)})[0]
        assert "parent" not in entry
        assert "xor" not in entry.get("filters", [])


# ----------------------------------------------------------------------------- bad input


def _delta_entry() -> tuple[dict[str, Any], np.ndarray[Any, Any]]:
    parent = np.linspace(0, 1, 1000, dtype=np.float32)
    child = parent + np.float32(1e-6)
    entries = wire(encode_arrays([("w", child)], {"w": (array_hash(parent), parent)}))
    assert "xor" in entries[0]["filters"]
    return entries[0], parent


def test_delta_with_a_missing_parent_is_an_integrity_error() -> None:
    entry, parent = _delta_entry()
    with pytest.raises(IntegrityError) as info:
        decode_arrays([entry], {})
    assert array_hash(parent).hex() in str(info.value)
    with pytest.raises(IntegrityError):
        decode_arrays([entry], None)
    other = np.linspace(0, 2, 1000, dtype=np.float32)
    with pytest.raises(IntegrityError):
        decode_arrays([entry], {array_hash(other): other})


def test_delta_against_a_parent_of_the_wrong_size_is_refused() -> None:
    entry, parent = _delta_entry()
    with pytest.raises(SchemaError):
        decode_arrays([entry], {array_hash(parent): parent[:10]})


@pytest.mark.parametrize("dtype", [object, bool, complex, "datetime64[s]", np.longdouble])
def test_disallowed_dtypes_are_refused_when_encoding(dtype: Any) -> None:
    arr = np.zeros(3, dtype=dtype)
    with pytest.raises(SchemaError):
        encode_arrays([("w", arr)])


GOOD = {
    "name": "w",
    "dtype": "float32",
    "shape": [2],
    "filters": ["shuffle"],
    "data": np.zeros(8, np.uint8),
}

MALFORMED: list[tuple[str, Any]] = [
    ("not a list", {"w": 1}),
    ("entry not a map", [[1, 2]]),
    ("no name", [{"array": np.zeros(1)}]),
    ("name not text", [{"name": 1, "array": np.zeros(1)}]),
    ("duplicate names", [{"name": "a", "array": np.zeros(1)}] * 2),
    ("plain array not typed", [{"name": "a", "array": [1.0]}]),
    ("plain entry with extra key", [{"name": "a", "array": np.zeros(1), "x": 1}]),
    ("unknown filter", [dict(GOOD, filters=["rle"])]),
    ("no filters", [dict(GOOD, filters=[])]),
    ("filters in the wrong order", [dict(GOOD, filters=["shuffle", "xor"], parent=b"x" * 32)]),
    ("repeated filter", [dict(GOOD, filters=["shuffle", "shuffle"])]),
    ("filters not a list", [dict(GOOD, filters=5)]),
    ("filters a text", [dict(GOOD, filters="shuffle")]),
    ("xor without parent", [dict(GOOD, filters=["xor"])]),
    ("parent without xor", [dict(GOOD, parent=b"x" * 32)]),
    ("missing data", [{k: v for k, v in GOOD.items() if k != "data"}]),
    ("dtype not allowed", [dict(GOOD, dtype="bool")]),
    ("dtype object", [dict(GOOD, dtype="object")]),
    ("dtype not text", [dict(GOOD, dtype=["float32"])]),
    ("dtype a number", [dict(GOOD, dtype=4)]),
    ("shape not a list", [dict(GOOD, shape=2)]),
    ("negative dimension", [dict(GOOD, shape=[-2])]),
    ("boolean dimension", [dict(GOOD, shape=[True, 2])]),
    ("text dimension", [dict(GOOD, shape=["2"])]),
    ("shape too small", [dict(GOOD, shape=[1])]),
    ("shape too large", [dict(GOOD, shape=[3])]),
    ("shape product overflows int64", [dict(GOOD, shape=[2**62, 4])]),
    ("dimension beyond int64", [dict(GOOD, shape=[2**63])]),
    ("absurd empty shape", [dict(GOOD, shape=[0, 2**63], data=np.zeros(0, np.uint8))]),
    ("absurd empty shape 2", [dict(GOOD, shape=[0, 2**62, 2**62], data=np.zeros(0, np.uint8))]),
    ("too many dimensions", [dict(GOOD, shape=[1] * 70, data=np.zeros(4, np.uint8))]),
    ("data not uint8", [dict(GOOD, data=np.zeros(2, np.float32))]),
    ("data 2-d", [dict(GOOD, data=np.zeros((2, 4), np.uint8))]),
    ("data bytes", [dict(GOOD, data=b"\x00" * 8)]),
]


@pytest.mark.parametrize(("why", "entries"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_entries_raise_schema_error(why: str, entries: Any) -> None:
    with pytest.raises(SchemaError):
        decode_arrays(entries, {})
