"""Tests for bundle.cbor: the deterministic encoder and the strict decoder.

* known answers from RFC 8949 Appendix A (restricted to what our profile allows) and
  RFC 8746 typed arrays;
* every non-canonical or disallowed form is refused with FormatError, caps with SizeError;
* property tests: round trips (value and bytes), "any accepted input is the canonical
  encoding of what it decodes to", and "any byte string decodes or raises our error".
"""

from __future__ import annotations

import math
import struct
import time
import tracemalloc
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bundle import cbor
from bundle.errors import FormatError, SizeError

DTYPES = sorted(cbor.DTYPE_TAGS)
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------- helpers


def same(a: Any, b: Any) -> bool:
    """Equality after a round trip, exact to the bit (NaN payloads become canonical NaN)."""
    if isinstance(a, np.ndarray):
        return (
            isinstance(b, np.ndarray)
            and a.dtype.name == b.dtype.name
            and b.dtype.byteorder in "<|="
            and a.shape == b.shape
            and np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes() == b.tobytes()
        )
    if isinstance(a, bool) or a is None:
        return type(b) is type(a) and a == b
    if isinstance(a, float):
        if math.isnan(a):
            return isinstance(b, float) and math.isnan(b)
        return type(b) is float and struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, int | str | bytes):
        return type(b) is type(a) and a == b
    if isinstance(a, list | tuple):
        return (
            isinstance(b, list)
            and len(a) == len(b)
            and all(same(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    raise AssertionError(f"unexpected type {type(a)}")


def head(major: int, value: int) -> bytes:
    """A CBOR head in shortest form (so only the declared value can be at fault)."""
    for ai, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * size):
            if value < 24:
                return bytes(((major << 5) | value,))
            return bytes(((major << 5) | ai,)) + value.to_bytes(size, "big")
    raise ValueError(value)


def typed_array(dims: list[int], tag: int, data: bytes) -> bytes:
    """Hand-built RFC 8746 multi-dimensional array: tag 40 [[dims], tag(data)]."""
    out = b"\xd8\x28\x82" + cbor.encode(dims)
    return out + cbor.encode(cbor.Tag(tag, data))


# ----------------------------------------------------------------------------- encoder

RFC_8949_VECTORS = [
    (0, "00"),
    (1, "01"),
    (10, "0a"),
    (23, "17"),
    (24, "1818"),
    (25, "1819"),
    (100, "1864"),
    (1000, "1903e8"),
    (1000000, "1a000f4240"),
    (1000000000000, "1b000000e8d4a51000"),
    (18446744073709551615, "1bffffffffffffffff"),
    (-18446744073709551616, "3bffffffffffffffff"),
    (-1, "20"),
    (-10, "29"),
    (-100, "3863"),
    (-1000, "3903e7"),
    (0.0, "f90000"),
    (-0.0, "f98000"),
    (1.0, "f93c00"),
    (1.1, "fb3ff199999999999a"),
    (1.5, "f93e00"),
    (65504.0, "f97bff"),
    (100000.0, "fa47c35000"),
    (3.4028234663852886e38, "fa7f7fffff"),
    (1.0e300, "fb7e37e43c8800759c"),
    (5.960464477539063e-8, "f90001"),
    (0.00006103515625, "f90400"),
    (-4.0, "f9c400"),
    (-4.1, "fbc010666666666666"),
    (math.inf, "f97c00"),
    (math.nan, "f97e00"),
    (-math.inf, "f9fc00"),
    (False, "f4"),
    (True, "f5"),
    (None, "f6"),
    (b"", "40"),
    (b"\x01\x02\x03\x04", "4401020304"),
    ("", "60"),
    ("a", "6161"),
    ("IETF", "6449455446"),
    ('"\\', "62225c"),
    ("\u00fc", "62c3bc"),
    ("\u6c34", "63e6b0b4"),
    ("\U00010151", "64f0908591"),
    ([], "80"),
    ([1, 2, 3], "83010203"),
    ([1, [2, 3], [4, 5]], "8301820203820405"),
    ({}, "a0"),
    ({1: 2, 3: 4}, "a201020304"),
    ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    (["a", {"b": "c"}], "826161a161626163"),
    # RFC 8949 §4.2.1: keys sorted by the bytewise order of their encodings.
    ({"aa": 0, "z": 0, -1: 0, 100: 0, 10: 0}, "a50a001864002000617a0062616100"),
]


@pytest.mark.parametrize(("value", "hex_"), RFC_8949_VECTORS, ids=lambda v: repr(v)[:20])
def test_known_encodings(value: Any, hex_: str) -> None:
    data = bytes.fromhex(hex_)
    assert cbor.encode(value) == data
    assert cbor.encoded_length(value) == len(data)
    assert same(value, cbor.decode(data))


def test_tuple_encodes_as_list() -> None:
    assert cbor.encode((1, (2,))) == cbor.encode([1, [2]])


def test_numpy_scalars_encode_as_python_values() -> None:
    assert cbor.encode(np.int64(5)) == b"\x05"
    assert cbor.encode(np.uint8(200)) == b"\x18\xc8"
    assert cbor.encode(np.float32(1.5)) == bytes.fromhex("f93e00")
    assert cbor.encode(np.bool_(True)) == b"\xf5"


def test_typed_array_known_encoding() -> None:
    arr = np.array([1, 2], dtype=np.uint8)
    assert cbor.encode(arr) == bytes.fromhex("d828828102d840420102")
    # RFC 8746 tag 85 (float32, little-endian), 2x2 row-major.
    mat = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=">f4")  # big-endian in memory
    expected = bytes.fromhex("d82882820202d85550") + np.array([1, 2, 3, 4], dtype="<f4").tobytes()
    assert cbor.encode(mat) == expected
    assert cbor.encode(np.asfortranarray(mat.astype("<f4"))) == expected  # layout-independent
    assert cbor.encode(mat.T.T) == expected


@pytest.mark.parametrize("name", DTYPES)
def test_every_allowed_dtype_has_its_rfc8746_tag(name: str) -> None:
    arr = np.arange(3).astype(name)
    encoded = cbor.encode(arr)
    tag = cbor.DTYPE_TAGS[name]
    assert encoded[5:7] == bytes((0xD8, tag))
    back = cbor.decode(encoded)
    assert back.dtype == np.dtype(name).newbyteorder("<")
    assert back.tobytes() == arr.astype(np.dtype(name).newbyteorder("<")).tobytes()


def test_zero_dim_and_empty_arrays() -> None:
    scalar = np.array(7.5, dtype=np.float64)
    assert cbor.encode(scalar)[:5] == bytes.fromhex("d8288280d8")
    back = cbor.decode(cbor.encode(scalar))
    assert back.shape == ()
    assert back == 7.5
    empty = np.zeros((3, 0, 2), dtype=np.int16)
    back = cbor.decode(cbor.encode(empty))
    assert back.shape == (3, 0, 2)
    assert back.dtype == np.int16


@pytest.mark.parametrize(
    "value",
    [
        2**64,
        -(2**64) - 1,
        {b"k": 1},
        {True: 1},
        {1.5: 1},
        {None: 1},
        {(1,): 1},
        {1, 2},
        object(),
        1j,
        "\ud800",  # a lone surrogate (e.g. an undecodable argv byte) is not UTF-8
        np.array([True, False]),
        np.array([1, "a"], dtype=object),
        np.array([1 + 2j]),
        np.zeros(2, dtype=np.longdouble),
        np.array(["2020-01-01"], dtype="datetime64[D]"),
        np.zeros((1,) * 9, dtype=np.uint8),
        {"nested": [np.array([None], dtype=object)]},
    ],
    ids=repr,
)
def test_values_outside_the_profile_are_refused(value: Any) -> None:
    with pytest.raises(FormatError):
        cbor.encode(value)


def test_lazy_bytes_must_match_its_length() -> None:
    good = cbor.LazyBytes(5, lambda: [b"ab", memoryview(b"cde")])
    assert cbor.encode(good) == cbor.encode(b"abcde")
    assert cbor.encoded_length(good) == 6
    with pytest.raises(FormatError):
        cbor.encode(cbor.LazyBytes(5, lambda: [b"abcd"]))
    with pytest.raises(FormatError):
        cbor.encode(cbor.LazyBytes(2, lambda: [b"abcd"]))


def test_big_byte_strings_stream_as_views_without_copying() -> None:
    data = bytes(3 * (1 << 20) + 5)
    chunks = list(cbor.iter_encode(data))
    body = chunks[1:]
    assert all(isinstance(c, memoryview) and c.obj is data for c in body)
    assert max(len(c) for c in body) <= 1 << 20
    assert sum(len(c) for c in chunks) == cbor.encoded_length(data)

    arr = np.arange(600_000, dtype="<f4")
    chunks = list(cbor.iter_encode(arr))
    assert any(isinstance(c, memoryview) and np.shares_memory(np.asarray(c), arr) for c in chunks)


def test_decoded_arrays_are_views_of_the_input() -> None:
    encoded = bytearray(cbor.encode({"w": np.arange(4, dtype="<i4")}))
    arr = cbor.decode(encoded)["w"]
    assert arr.flags.writeable
    arr[0] = 99
    assert cbor.decode(encoded)["w"][0] == 99  # it wrote through to the buffer
    read_only = cbor.decode(bytes(encoded))["w"]
    assert not read_only.flags.writeable


# ----------------------------------------------------------------------------- decoder: bad input

NON_CANONICAL = [
    # integers, lengths and tags not in their shortest form
    ("1817", "uint 23 in one extra byte"),
    ("190017", "uint 23 in two bytes"),
    ("1900ff", "uint 255 in two bytes"),
    ("1a0000ffff", "uint 65535 in four bytes"),
    ("1b00000000ffffffff", "uint 2^32-1 in eight bytes"),
    ("3817", "nint -24 in one extra byte"),
    ("39 00ff", "nint in two bytes"),
    ("5800", "empty byte string, long length"),
    ("590001 00", "byte string length 1 in two bytes"),
    ("7800", "empty text, long length"),
    ("9800", "empty array, long length"),
    ("9a00000001 00", "array length 1 in four bytes"),
    ("b800", "empty map, long length"),
    ("d90028 82 80 d840 40", "tag 40 in two bytes"),
    ("d8 28 82 98 01 00 d840 40", "typed array dims, long length"),
    ("d8 28 82 81 1800 d840 40", "typed array dimension, long form"),
    ("d8 28 82 81 01 d9 0040 41 00", "typed array element tag, long form"),
    ("d8 28 82 81 01 d840 5801 00", "typed array data, long length"),
    # floats not in the shortest exact form
    ("fa3fc00000", "1.5 as single"),
    ("fb3ff8000000000000", "1.5 as double"),
    ("fa00000000", "0.0 as single"),
    ("fa80000000", "-0.0 as single"),
    ("fa7f800000", "infinity as single"),
    ("fb7ff0000000000000", "infinity as double"),
    ("fa7fc00000", "NaN as single"),
    ("fb7ff8000000000000", "NaN as double"),
    ("f97e01", "NaN with a payload"),
    ("f9fe00", "negative NaN"),
    ("f97c01", "signalling NaN"),
    ("fb3ff0000000000000", "1.0 as double"),
    # indefinite lengths and break
    ("5f 4101 ff", "indefinite byte string"),
    ("7f 6161 ff", "indefinite text string"),
    ("9f 01 ff", "indefinite array"),
    ("9f ff", "empty indefinite array"),
    ("bf 6161 01 ff", "indefinite map"),
    ("ff", "lone break"),
    ("1f", "uint with additional information 31"),
    ("3f", "nint with additional information 31"),
    ("df 00", "tag with additional information 31"),
    # unsorted map keys
    ("a2 6162 01 6161 02", "text keys out of order"),
    ("a2 02 00 01 00", "integer keys out of order"),
    ("a2 6161 00 01 00", "integer key after a text key"),
    ("a2 20 00 01 00", "negative key before a positive one"),
    ("a2 626161 00 617a 00", "longer key first (length-first is not bytewise)"),
    # duplicate keys
    ("a2 6161 01 6161 02", "duplicate text key"),
    ("a2 01 00 01 00", "duplicate integer key"),
    ("a3 01 00 6161 00 6161 00", "duplicate after a valid pair"),
    # nested maps are checked too
    ("a1 6161 a2 02 00 01 00", "unsorted inner map"),
    ("81 a2 01 00 01 00", "duplicate in a map inside an array"),
]

NOT_OUR_PROFILE = [
    ("", "empty input"),
    ("19 01", "truncated head"),
    ("43 0102", "truncated byte string"),
    ("83 01 02", "truncated array"),
    ("a2 01 02 03", "truncated map"),
    ("00 00", "trailing bytes"),
    ("1c", "reserved additional information 28"),
    ("3d", "reserved additional information 29"),
    ("5e", "reserved additional information 30"),
    ("e0", "simple value 0"),
    ("f0", "simple value 16"),
    ("f7", "undefined"),
    ("f8 20", "one-byte simple value"),
    ("f8 ff", "one-byte simple value 255"),
    ("fc", "reserved simple 28"),
    ("c0 6161", "tag 0 (date)"),
    ("c1 00", "tag 1 (epoch)"),
    ("c2 41 01", "tag 2 (bignum)"),
    ("d8 29 00", "tag 41"),
    ("d8 40 41 00", "bare typed array tag 64 without tag 40"),
    ("d9 d9f7 00", "self-described CBOR tag"),
    ("61 ff", "invalid UTF-8"),
    ("62 c3 28", "invalid UTF-8 continuation"),
    ("62 c0 af", "overlong UTF-8"),
    ("63 eda080", "UTF-8 encoded surrogate"),
    ("a1 40 00", "byte string map key"),
    ("a1 f4 00", "false as a map key"),
    ("a1 f6 00", "null as a map key"),
    ("a1 f93c00 00", "float map key"),
    ("a1 80 00", "array map key"),
    ("a1 a0 00", "map map key"),
    # malformed typed arrays
    ("d8 28 00", "tag 40 over an integer"),
    ("d8 28 83 81 01 d840 41 00 00", "tag 40 over a 3-array"),
    ("d8 28 82 01 d840 41 00", "dimensions not an array"),
    ("d8 28 82 89 010101010101010101 d840 41 00", "nine dimensions"),
    ("d8 28 82 81 20 d840 40", "negative dimension"),
    ("d8 28 82 81 6161 d840 40", "text dimension"),
    ("d8 28 82 81 01 41 00", "data without an element tag"),
    ("d8 28 82 81 01 d841 42 0000", "tag 65: uint16 big-endian"),
    ("d8 28 82 81 01 d844 41 00", "tag 68: clamped uint8"),
    ("d8 28 82 81 01 d851 44 00000000", "tag 81: float32 big-endian"),
    ("d8 28 82 81 01 d857 50" + "00" * 16, "tag 87: float128"),
    ("d8 28 82 81 01 d855 61 00", "typed array data as text"),
    ("d8 28 82 81 02 d855 44 00000000", "data shorter than the shape"),
    ("d8 28 82 81 01 d855 48 0000000000000000", "data longer than the shape"),
    ("d8 28 82 82 01 02 d855 44 00000000", "shape product mismatch"),
    ("d8 28 82 82 00 1bffffffffffffffff d840 40", "empty array with an absurd dimension"),
    ("d8 28 82 83 00 1b4000000000000000 1b4000000000000000 d840 40", "absurd empty shape"),
]


def _hex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


@pytest.mark.parametrize(("hex_", "why"), NON_CANONICAL, ids=[w for _, w in NON_CANONICAL])
def test_non_canonical_forms_are_refused(hex_: str, why: str) -> None:
    with pytest.raises(FormatError) as info:
        cbor.decode(_hex(hex_), where="test")
    assert "byte" in str(info.value)  # every refusal says where


@pytest.mark.parametrize(("hex_", "why"), NOT_OUR_PROFILE, ids=[w for _, w in NOT_OUR_PROFILE])
def test_forms_outside_the_profile_are_refused(hex_: str, why: str) -> None:
    with pytest.raises(FormatError):
        cbor.decode(_hex(hex_))


def test_error_names_the_offset() -> None:
    with pytest.raises(FormatError) as info:
        cbor.decode(_hex("83 01 02 1817"), where="inbox/x.llb header")
    assert info.value.where == "inbox/x.llb header byte 3"


@pytest.mark.parametrize(
    "prefix",
    [b"\x81", b"\xa1\x00", b"\xa1\x81", b"\x82\x00", b"\xa1\x61a"],
    ids=["arrays", "map values", "map keys", "array heads", "text-keyed maps"],
)
def test_ten_thousand_levels_raise_size_error_fast(prefix: bytes) -> None:
    data = prefix * 10_000 + b"\x00"
    started = time.perf_counter()
    with pytest.raises(SizeError):  # not RecursionError, not FormatError
        cbor.decode(data)
    assert time.perf_counter() - started < 1.0


def test_depth_cap_boundary() -> None:
    assert cbor.decode(b"\x81" * cbor.MAX_DEPTH + b"\x00") is not None
    with pytest.raises(SizeError):
        cbor.decode(b"\x81" * (cbor.MAX_DEPTH + 1) + b"\x00")
    assert cbor.decode(b"\x81\x81\x00", max_depth=2) == [[0]]
    with pytest.raises(SizeError):
        cbor.decode(b"\x81\x81\x00", max_depth=1)


def test_item_cap() -> None:
    assert cbor.decode(b"\x83\x01\x02\x03", max_items=4) == [1, 2, 3]
    with pytest.raises(SizeError):
        cbor.decode(b"\x83\x01\x02\x03", max_items=3)
    with pytest.raises(SizeError):
        cbor.decode(b"\xa2\x01\x00\x02\x00", max_items=4)  # keys count as items
    # The default cap holds over a real, flat million-item array.
    flat = b"\x9a" + (cbor.MAX_ITEMS).to_bytes(4, "big") + b"\x00" * cbor.MAX_ITEMS
    with pytest.raises(SizeError):
        cbor.decode(flat)


HUGE_DECLARED = [
    ("byte string", 2, None),
    ("text string", 3, None),
    ("array", 4, None),
    ("map", 5, None),
]


@pytest.mark.parametrize("length", [2**62, 2**64 - 1, 2**32 - 1])
@pytest.mark.parametrize(("what", "major", "_"), HUGE_DECLARED, ids=[h[0] for h in HUGE_DECLARED])
def test_huge_declared_lengths_are_refused_without_allocating(
    what: str, major: int, _: None, length: int
) -> None:
    data = head(major, length) + b"\x00" * 64
    tracemalloc.start()
    try:
        with pytest.raises((FormatError, SizeError)):
            cbor.decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_huge_typed_array_is_refused_without_allocating() -> None:
    data = typed_array([2**31, 2**31], cbor.DTYPE_TAGS["float64"], b"")
    tracemalloc.start()
    try:
        with pytest.raises(FormatError):
            cbor.decode(data)
        with pytest.raises(FormatError):
            cbor.decode(_hex("d8 28 82 81 1b4000000000000000 d856 5b4000000000000000"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


# ----------------------------------------------------------------------------- properties

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats()
    | st.floats(width=16)
    | st.floats(width=32)
    | st.text(max_size=20)
    | st.binary(max_size=40)
)


def _byte_orders(name: str) -> list[np.dtype[Any]]:
    dtype = np.dtype(name)
    return [dtype] if dtype.itemsize == 1 else [dtype.newbyteorder("<"), dtype.newbyteorder(">")]


any_dtype = st.sampled_from([d for name in DTYPES for d in _byte_orders(name)])
ndarrays = any_dtype.flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6))
)
map_keys = st.text(max_size=6) | st.integers(min_value=-(2**64), max_value=2**64 - 1)
values = st.recursive(
    scalars | ndarrays,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(map_keys, inner, max_size=5),
    max_leaves=25,
)


@PROPERTY
@given(values)
def test_round_trip(value: Any) -> None:
    encoded = cbor.encode(value)
    decoded = cbor.decode(encoded)
    assert same(value, decoded)
    assert cbor.encode(decoded) == encoded  # one value, one encoding
    assert cbor.encoded_length(value) == len(encoded)


@PROPERTY
@given(ndarrays)
def test_array_round_trip_every_dtype(arr: np.ndarray[Any, Any]) -> None:
    encoded = cbor.encode(arr)
    decoded = cbor.decode(bytearray(encoded))
    assert same(arr, decoded)
    assert cbor.encode(decoded) == encoded


def _decode_or_our_error(data: bytes) -> None:
    try:
        value = cbor.decode(data)
    except (FormatError, SizeError):
        return
    # Whatever is accepted is exactly the canonical encoding of what it decodes to.
    assert cbor.encode(value) == data


@PROPERTY
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_our_error(data: bytes) -> None:
    _decode_or_our_error(data)


@PROPERTY
@given(values, st.data())
def test_mutated_encodings_decode_or_raise_our_error(value: Any, data: st.DataObject) -> None:
    encoded = bytearray(cbor.encode(value))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = data.draw(st.integers(0, max(len(encoded) - 1, 0)))
        if op == "flip" and encoded:
            encoded[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set" and encoded:
            encoded[pos] = data.draw(st.integers(0, 255))
        elif op == "insert":
            encoded[pos:pos] = data.draw(st.binary(min_size=1, max_size=9))
        elif op == "delete" and encoded:
            del encoded[pos]
        elif op == "truncate":
            del encoded[pos:]
    _decode_or_our_error(bytes(encoded))
