"""CRC-framed records: the on-disk framing of the token ledger's log and of agent replicas.

Each record is::

    tag u8 | length u32 (big-endian) | data | CRC-32 u32 over tag, length and data

A reader walks records from an offset and stops at the first one that is incomplete, has
an unknown tag, a length over the cap, or a checksum that does not match; it reports where
and why, so the caller decides whether that is a torn tail (a crash mid-append, ignored up
to the last commit) or damage.  CRC-32 catches every single-byte change and every burst of
up to 32 bits, so a flipped byte never passes as a valid record.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

HEAD = struct.Struct(">BI")
CRC = struct.Struct(">I")
OVERHEAD = HEAD.size + CRC.size
MAX_RECORD = 16 * 1024 * 1024


def frame(tag: int, data: bytes) -> bytes:
    """One record around ``data``.

    Raises:
        ValueError: ``data`` is over :data:`MAX_RECORD` (a caller bug: entries are capped
            long before they reach the log).
    """
    if len(data) > MAX_RECORD:
        raise ValueError(f"record of {len(data)} bytes is over the {MAX_RECORD}-byte cap")
    head = HEAD.pack(tag, len(data))
    return head + data + CRC.pack(zlib.crc32(data, zlib.crc32(head)))


@dataclass(frozen=True)
class Record:
    """A record that checked out: its tag, data, and where it sits in the buffer."""

    tag: int
    data: bytes
    offset: int
    end: int


@dataclass(frozen=True)
class Stop:
    """Where and why a reader stopped before the end of its buffer."""

    offset: int
    reason: str
    damaged: bool
    """True for a complete record that fails its checks (checksum, tag, length cap);
    False for a record cut short by the end of the buffer (what a crash leaves)."""


class RecordReader:
    """Iterate over the valid records of ``buf`` from ``start``.

    After iteration, :attr:`end` is the offset just past the last valid record and
    :attr:`stop` says why the walk ended early (None when it reached the end of ``buf``).
    """

    def __init__(self, buf: bytes | memoryview, start: int, tags: frozenset[int]) -> None:
        self.buf = memoryview(buf)
        self.end = start
        self.tags = tags
        self.stop: Stop | None = None

    def __iter__(self) -> Iterator[Record]:
        buf, size, pos = self.buf, len(self.buf), self.end
        head_size, crc_size = HEAD.size, CRC.size
        while pos < size:
            if size - pos < head_size:
                self.stop = Stop(pos, "truncated record header", damaged=False)
                return
            tag, length = HEAD.unpack_from(buf, pos)
            if tag not in self.tags:
                self.stop = Stop(pos, f"unknown record tag 0x{tag:02x}", damaged=True)
                return
            if length > MAX_RECORD:
                self.stop = Stop(pos, f"record length {length} over the cap", damaged=True)
                return
            end = pos + head_size + length + crc_size
            if end > size:
                self.stop = Stop(pos, "truncated record", damaged=False)
                return
            data = bytes(buf[pos + head_size : end - crc_size])
            crc = zlib.crc32(data, zlib.crc32(buf[pos : pos + head_size]))
            if crc != CRC.unpack_from(buf, end - crc_size)[0]:
                self.stop = Stop(pos, "record checksum mismatch", damaged=True)
                return
            yield Record(tag, data, pos, end)
            pos = self.end = end


__all__ = ["MAX_RECORD", "OVERHEAD", "Record", "RecordReader", "Stop", "frame"]
