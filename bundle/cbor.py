"""Deterministic CBOR (RFC 8949 §4.2.1) with a strict decoder and RFC 8746 typed arrays.

Everything that is signed or hashed is encoded here, so one value has exactly one
encoding:

* integers, lengths and tags in their shortest form; definite lengths only;
* floats in the shortest of half/single/double precision that keeps the value
  (NaN as ``f9 7e00``);
* map keys sorted by the bytewise order of their encodings, no duplicates;
* numpy arrays as an RFC 8746 multi-dimensional array (tag 40) over a little-endian
  typed array (tags 64..86) from a fixed dtype allowlist: never pickle, never objects.

The decoder is the single parse boundary for untrusted bytes.  It accepts only what the
encoder would produce and turns every problem into a :class:`~bundle.errors.FormatError`
(or :class:`~bundle.errors.SizeError` for caps), with the byte offset.  It never trusts a
declared length: every length is checked against the bytes actually left before anything
is sliced or allocated, nesting depth and item counts are capped, and there is no
recursion deeper than ``max_depth``.

Large byte strings can be streamed out (:func:`iter_encode` yields ``memoryview`` chunks
of the caller's arrays, and :class:`LazyBytes` produces content on demand) and are decoded
as zero-copy views of the input buffer, so a 100 MB model is never held twice.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from bundle.errors import FormatError, SizeError

# RFC 8746 typed array tags (little-endian variants) for the dtypes we allow.
DTYPE_TAGS: dict[str, int] = {
    "uint8": 64,
    "uint16": 69,
    "uint32": 70,
    "uint64": 71,
    "int8": 72,
    "int16": 77,
    "int32": 78,
    "int64": 79,
    "float16": 84,
    "float32": 85,
    "float64": 86,
}
TAG_DTYPES: dict[int, np.dtype[Any]] = {
    tag: np.dtype(name).newbyteorder("<") for name, tag in DTYPE_TAGS.items()
}
TAG_MULTI_DIM = 40  # RFC 8746 §3.1.1: [dimensions, array], row-major

MAX_DEPTH = 32
MAX_ITEMS = 1_000_000
MAX_DIMS = 8

_STREAM_CHUNK = 1 << 20  # slice big byte strings so downstream buffers stay bounded


@dataclass(frozen=True)
class Tag:
    """A tagged value to encode (decoding maps known tags to Python values itself)."""

    tag: int
    value: Any


@dataclass(frozen=True)
class LazyBytes:
    """A byte string of known length whose content is produced while encoding.

    ``chunks()`` must yield exactly ``length`` bytes in total.
    """

    length: int
    chunks: Callable[[], Iterable[bytes | memoryview]]


def _head(major: int, value: int) -> bytes:
    mt = major << 5
    if value < 24:
        return bytes((mt | value,))
    if value < 0x100:
        return bytes((mt | 24, value))
    if value < 0x10000:
        return bytes((mt | 25,)) + value.to_bytes(2, "big")
    if value < 0x100000000:
        return bytes((mt | 26,)) + value.to_bytes(4, "big")
    if value < 0x10000000000000000:
        return bytes((mt | 27,)) + value.to_bytes(8, "big")
    raise FormatError("integer out of CBOR's 64-bit range", expected="|n| < 2**64", found=value)


def _encode_float(value: float) -> bytes:
    if math.isnan(value):
        return b"\xf9\x7e\x00"
    for fmt, ai in (("e", 25), ("f", 26)):
        try:
            packed = struct.pack(">" + fmt, value)
        except OverflowError:
            continue
        if struct.unpack(">" + fmt, packed)[0] == value:
            return bytes((0xE0 | ai,)) + packed
    return b"\xfb" + struct.pack(">d", value)


def _encode_array(arr: np.ndarray[Any, Any]) -> Iterator[bytes | memoryview]:
    name = arr.dtype.name
    if name not in DTYPE_TAGS:
        raise FormatError("array dtype not allowed", expected=sorted(DTYPE_TAGS), found=name)
    if arr.ndim > MAX_DIMS:
        raise FormatError(
            "array has too many dimensions", expected=f"<= {MAX_DIMS}", found=arr.ndim
        )
    # ascontiguousarray returns at least 1-d: reshape keeps a 0-d array 0-d.
    little = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).reshape(arr.shape)
    yield _head(6, TAG_MULTI_DIM) + _head(4, 2) + _head(4, little.ndim)
    for dim in little.shape:
        yield _head(0, dim)
    yield _head(6, DTYPE_TAGS[name]) + _head(2, little.nbytes)
    flat = little.reshape(-1).view(np.uint8).data
    for start in range(0, len(flat), _STREAM_CHUNK):
        yield flat[start : start + _STREAM_CHUNK]


def iter_encode(obj: Any) -> Iterator[bytes | memoryview]:
    """Yield the deterministic encoding of ``obj`` in chunks (big byte strings uncopied).

    Raises:
        FormatError: a value CBOR or our profile cannot carry (an unsupported type, an
            integer beyond 64 bits, a disallowed dtype, a non-text/int map key).
    """
    if obj is None:
        yield b"\xf6"
    elif obj is True:
        yield b"\xf5"
    elif obj is False:
        yield b"\xf4"
    elif isinstance(obj, int):
        yield _head(0, obj) if obj >= 0 else _head(1, -1 - obj)
    elif isinstance(obj, float):
        yield _encode_float(obj)
    elif isinstance(obj, str):
        try:
            data = obj.encode("utf-8")
        except UnicodeEncodeError as e:
            raise FormatError(
                "text is not valid Unicode (lone surrogate)", expected="UTF-8", found=repr(obj)[:40]
            ) from e
        yield _head(3, len(data)) + data
    elif isinstance(obj, bytes | bytearray | memoryview):
        view = memoryview(obj).cast("B")
        yield _head(2, len(view))
        for start in range(0, len(view), _STREAM_CHUNK):
            yield view[start : start + _STREAM_CHUNK]
    elif isinstance(obj, LazyBytes):
        yield _head(2, obj.length)
        total = 0
        for chunk in obj.chunks():
            total += len(chunk)
            yield chunk
        if total != obj.length:
            raise FormatError(
                "lazy byte string produced the wrong length", expected=obj.length, found=total
            )
    elif isinstance(obj, list | tuple):
        yield _head(4, len(obj))
        for item in obj:
            yield from iter_encode(item)
    elif isinstance(obj, dict):
        items = []
        for key, value in obj.items():
            if not isinstance(key, str | int) or isinstance(key, bool):
                raise FormatError(
                    "map key type not allowed", expected="text or integer", found=type(key).__name__
                )
            items.append((encode(key), value))
        items.sort(key=lambda kv: kv[0])
        yield _head(5, len(items))
        for key_bytes, value in items:
            yield key_bytes
            yield from iter_encode(value)
    elif isinstance(obj, np.ndarray):
        yield from _encode_array(obj)
    elif isinstance(obj, Tag):
        yield _head(6, obj.tag)
        yield from iter_encode(obj.value)
    elif isinstance(obj, np.generic):
        yield from iter_encode(obj.item())
    else:
        raise FormatError(
            "type cannot be encoded", expected="a CBOR-able value", found=type(obj).__name__
        )


def encode(obj: Any) -> bytes:
    """The deterministic encoding of ``obj`` as one byte string."""
    return b"".join(iter_encode(obj))


def encoded_length(obj: Any) -> int:
    """Length of the encoding without materialising it."""
    return sum(len(chunk) for chunk in iter_encode(obj))


class _Decoder:
    def __init__(
        self, data: bytes | bytearray | memoryview, max_depth: int, max_items: int, where: str
    ) -> None:
        self.buf = memoryview(data).cast("B")
        self.pos = 0
        self.max_depth = max_depth
        self.items_left = max_items
        self.where = where

    def fail(
        self, what: str, *, expected: object = None, found: object = None, at: int | None = None
    ) -> FormatError:
        offset = self.pos if at is None else at
        return FormatError(
            what,
            expected=expected,
            found=found,
            where=f"{self.where} byte {offset}" if self.where else f"byte {offset}",
        )

    def take(self, n: int) -> memoryview:
        if n > len(self.buf) - self.pos:
            raise self.fail(
                "truncated CBOR",
                expected=f"{n} more bytes",
                found=f"{len(self.buf) - self.pos} left",
            )
        view = self.buf[self.pos : self.pos + n]
        self.pos += n
        return view

    def head(self) -> tuple[int, int, int]:
        """Read an initial byte and its argument; enforce shortest form."""
        start = self.pos
        initial = self.take(1)[0]
        major, ai = initial >> 5, initial & 0x1F
        if ai < 24:
            return major, ai, ai
        if ai == 31:
            raise self.fail(
                "indefinite-length or break item",
                expected="definite length",
                found=f"initial byte 0x{initial:02x}",
                at=start,
            )
        if ai > 27:
            raise self.fail("reserved additional information", found=ai, at=start)
        size = 1 << (ai - 24)
        if major == 7:
            return major, ai, int.from_bytes(self.take(size), "big")
        value = int.from_bytes(self.take(size), "big")
        minimum = 24 if size == 1 else 1 << (4 * size)
        if value < minimum:
            raise self.fail(
                "non-canonical integer or length (not the shortest form)",
                expected=f"a value >= {minimum} in {size} bytes",
                found=value,
                at=start,
            )
        return major, ai, value

    def count(self, n: int, start: int) -> None:
        self.items_left -= n
        if self.items_left < 0:
            raise SizeError(
                "too many CBOR items",
                expected="at most the item cap",
                found="more",
                where=f"{self.where} byte {start}",
            )

    def item(self, depth: int) -> Any:
        start = self.pos
        if depth > self.max_depth:
            raise SizeError(
                "CBOR nesting too deep",
                expected=f"<= {self.max_depth} levels",
                found="deeper",
                where=f"{self.where} byte {start}",
            )
        self.count(1, start)
        major, ai, arg = self.head()
        if major == 0:
            return arg
        if major == 1:
            return -1 - arg
        if major == 2:
            return bytes(self.take(arg))
        if major == 3:
            try:
                return str(self.take(arg), "utf-8")
            except UnicodeDecodeError as e:
                raise self.fail("text string is not valid UTF-8", at=start) from e
        if major == 4:
            # Every item takes at least one byte: a count beyond what is left is a lie.
            if arg > len(self.buf) - self.pos:
                raise self.fail(
                    "array length exceeds remaining bytes",
                    expected=f"<= {len(self.buf) - self.pos}",
                    found=arg,
                    at=start,
                )
            return [self.item(depth + 1) for _ in range(arg)]
        if major == 5:
            return self.map(arg, depth, start)
        if major == 6:
            return self.tagged(arg, depth, start)
        return self.simple(ai, arg, start)

    def map(self, n: int, depth: int, start: int) -> dict[Any, Any]:
        if 2 * n > len(self.buf) - self.pos:
            raise self.fail(
                "map length exceeds remaining bytes",
                expected=f"<= {(len(self.buf) - self.pos) // 2}",
                found=n,
                at=start,
            )
        result: dict[Any, Any] = {}
        previous: bytes | None = None
        for _ in range(n):
            key_start = self.pos
            key = self.item(depth + 1)
            if not isinstance(key, str | int) or isinstance(key, bool):
                raise self.fail(
                    "map key type not allowed",
                    expected="text or integer",
                    found=type(key).__name__,
                    at=key_start,
                )
            key_bytes = bytes(self.buf[key_start : self.pos])
            if previous is not None and key_bytes <= previous:
                what = "duplicate map key" if key_bytes == previous else "map keys not sorted"
                raise self.fail(
                    what,
                    expected="keys in strictly increasing bytewise order",
                    found=repr(key),
                    at=key_start,
                )
            previous = key_bytes
            result[key] = self.item(depth + 1)
        return result

    def tagged(self, tag: int, depth: int, start: int) -> Any:
        if tag != TAG_MULTI_DIM:
            raise self.fail(
                "unknown CBOR tag",
                expected=f"tag {TAG_MULTI_DIM} (typed array)",
                found=f"tag {tag}",
                at=start,
            )
        if self.take(1)[0] != 0x82:
            raise self.fail("typed array must be [dimensions, data]", at=start)
        dims_start = self.pos
        major, _, ndim = self.head()
        if major != 4 or ndim > MAX_DIMS:
            raise self.fail(
                "bad typed array dimensions",
                expected=f"array of <= {MAX_DIMS}",
                found=f"major {major} length {ndim}",
                at=dims_start,
            )
        shape = []
        for _ in range(ndim):
            dim_major, _, dim = self.head()
            if dim_major != 0:
                raise self.fail("typed array dimension is not an unsigned integer", at=dims_start)
            shape.append(dim)
        tag_start = self.pos
        tag_major, _, dtype_tag = self.head()
        if tag_major != 6 or dtype_tag not in TAG_DTYPES:
            raise self.fail(
                "typed array element type not allowed",
                expected=f"one of tags {sorted(TAG_DTYPES)}",
                found=f"major {tag_major} value {dtype_tag}",
                at=tag_start,
            )
        bytes_major, _, nbytes = self.head()
        if bytes_major != 2:
            raise self.fail("typed array data is not a byte string", at=tag_start)
        dtype = TAG_DTYPES[dtype_tag]
        expected_bytes = math.prod(shape) * dtype.itemsize
        if nbytes != expected_bytes:
            raise self.fail(
                "typed array length does not match its shape",
                expected=f"{expected_bytes} bytes for {shape} {dtype.name}",
                found=f"{nbytes} bytes",
                at=tag_start,
            )
        # A zero-copy view of the input: writable when the caller passed a bytearray.
        data = np.frombuffer(self.take(nbytes), dtype=dtype)
        try:
            return data.reshape(shape)
        except ValueError as e:  # only an empty array can get here with absurd dimensions
            raise self.fail(
                "typed array shape is beyond numpy's limits", found=shape, at=dims_start
            ) from e

    def simple(self, ai: int, arg: int, start: int) -> Any:
        if ai == 20:
            return False
        if ai == 21:
            return True
        if ai == 22:
            return None
        if ai == 25:
            value = struct.unpack(">e", arg.to_bytes(2, "big"))[0]
        elif ai == 26:
            value = struct.unpack(">f", arg.to_bytes(4, "big"))[0]
        elif ai == 27:
            value = struct.unpack(">d", arg.to_bytes(8, "big"))[0]
        else:
            raise self.fail(
                "simple value not allowed",
                expected="false, true, null or float",
                found=f"simple {arg if ai == 24 else ai}",
                at=start,
            )
        canonical = _encode_float(value)
        if canonical != bytes(self.buf[start : self.pos]):
            raise self.fail(
                "non-canonical float (not the shortest exact form)",
                expected=canonical.hex(),
                found=bytes(self.buf[start : self.pos]).hex(),
                at=start,
            )
        return value


def decode(
    data: bytes | bytearray | memoryview,
    *,
    max_depth: int = MAX_DEPTH,
    max_items: int = MAX_ITEMS,
    where: str = "",
) -> Any:
    """Decode exactly one deterministic CBOR item filling ``data``.

    Arrays come back as numpy views of ``data`` (writable if ``data`` is a bytearray).

    Raises:
        FormatError: anything the encoder would not have produced: truncation, trailing
            bytes, non-shortest forms, unsorted or duplicate keys, unknown tags or
            simple values, bad UTF-8, disallowed dtypes.
        SizeError: nesting deeper than ``max_depth`` or more than ``max_items`` items.
    """
    decoder = _Decoder(data, max_depth, max_items, where)
    value = decoder.item(0)
    if decoder.pos != len(decoder.buf):
        raise decoder.fail(
            "trailing bytes after the CBOR item",
            expected="end of data",
            found=f"{len(decoder.buf) - decoder.pos} more bytes",
        )
    return value


__all__ = [
    "DTYPE_TAGS",
    "MAX_DEPTH",
    "MAX_ITEMS",
    "LazyBytes",
    "Tag",
    "decode",
    "encode",
    "encoded_length",
    "iter_encode",
]
