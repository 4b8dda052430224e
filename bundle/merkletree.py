"""An append-only RFC 9162 Merkle tree that keeps every perfect subtree's hash.

:mod:`bundle.merkle` builds proofs from the full list of leaf hashes, O(n) per proof.  A
ledger of a million entries needs them in O(log n): this tree stores, per level k, the
hash of every complete, aligned block of 2**k leaves (one contiguous ``bytearray`` per
level, about 2 * 32 bytes per leaf in all).  Every subtree an RFC 9162 proof asks for is
either such a block or a right-border subtree made of O(log n) of them, so roots and
proofs for any tree size up to the current one cost O(log n) hashes, and appending a leaf
costs one hash amortised.

The proofs are the same lists of hashes :func:`bundle.merkle.inclusion_proof` and
:func:`bundle.merkle.consistency_proof` return (the tests check that they agree), and are
verified with :func:`bundle.merkle.verify_inclusion` / ``verify_consistency``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from bundle.merkle import HASH_SIZE, node_hash

_EMPTY_ROOT = hashlib.sha256(b"").digest()
_NODE_PREFIX = b"\x01"


class MerkleTree:
    """Leaf hashes plus the cached hashes of all perfect subtrees.

    Args:
        leaf_hashes: the leaf hashes so far, concatenated (32 bytes each).
    """

    def __init__(self, leaf_hashes: bytes | bytearray | memoryview = b"") -> None:
        if len(leaf_hashes) % HASH_SIZE:
            raise ValueError(f"leaf hash data of {len(leaf_hashes)} bytes is not 32-byte hashes")
        self._levels: list[bytearray] = [bytearray(leaf_hashes)]
        self._build_from(0)

    @property
    def size(self) -> int:
        return len(self._levels[0]) // HASH_SIZE

    def leaf(self, index: int) -> bytes:
        """The leaf hash at ``index``."""
        self._check_index(index, self.size)
        return bytes(self._levels[0][index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def leaves(self) -> bytes:
        """All leaf hashes, concatenated."""
        return bytes(self._levels[0])

    def append(self, leaf_hash: bytes) -> None:
        """Add one leaf hash at the end."""
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"leaf hash is {len(leaf_hash)} bytes, expected {HASH_SIZE}")
        levels = self._levels
        levels[0] += leaf_hash
        index = self.size - 1
        k = 0
        # The new node at level k completes a pair whenever its index there is odd.
        while index & 1:
            if len(levels) == k + 1:
                levels.append(bytearray())
            level = levels[k]
            levels[k + 1] += hashlib.sha256(_NODE_PREFIX + level[-2 * HASH_SIZE :]).digest()
            index >>= 1
            k += 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        for leaf_hash in leaf_hashes:
            self.append(leaf_hash)

    def truncate(self, size: int) -> None:
        """Forget every leaf from ``size`` on (used to undo an append that failed)."""
        self._check_size(size)
        for k, level in enumerate(self._levels):
            del level[(size >> k) * HASH_SIZE :]

    def root(self, size: int | None = None) -> bytes:
        """The Merkle Tree Hash of the first ``size`` leaves (default: all)."""
        size = self.size if size is None else self._check_size(size)
        return self._mth(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[size]) of RFC 9162 §2.1.3.1 for the tree of the first ``size`` leaves."""
        size = self.size if size is None else self._check_size(size)
        self._check_index(index, size)
        path: list[bytes] = []
        lo, hi = 0, size
        while hi - lo > 1:
            mid = lo + _split(hi - lo)
            if index < mid:
                path.append(self._mth(mid, hi))
                hi = mid
            else:
                path.append(self._mth(lo, mid))
                lo = mid
        path.reverse()
        return path

    def consistency_proof(self, old_size: int, size: int | None = None) -> list[bytes]:
        """PROOF(old_size, D[size]) of RFC 9162 §2.1.4.1; ``0 < old_size <= size``."""
        size = self.size if size is None else self._check_size(size)
        if not 0 < old_size <= size:
            raise ValueError(f"old size {old_size} is not between 1 and the tree size {size}")
        proof: list[bytes] = []
        m, lo, hi = old_size, 0, size
        is_original_m = True
        while m != hi - lo:
            k = _split(hi - lo)
            if m <= k:
                proof.append(self._mth(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._mth(lo, lo + k))
                m -= k
                lo += k
                is_original_m = False
        if not is_original_m:
            proof.append(self._mth(lo, hi))
        proof.reverse()
        return proof

    def _mth(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]): a cached perfect block, or split as RFC 9162 §2.1.1 does."""
        n = hi - lo
        if n == 0:
            return _EMPTY_ROOT
        if n & (n - 1) == 0 and lo % n == 0:
            k = n.bit_length() - 1
            start = (lo >> k) * HASH_SIZE
            return bytes(self._levels[k][start : start + HASH_SIZE])
        k = _split(n)
        return node_hash(self._mth(lo, lo + k), self._mth(lo + k, hi))

    def _build_from(self, k: int) -> None:
        """Fill every level above ``k`` from level ``k`` (used once, on construction)."""
        sha256 = hashlib.sha256
        while len(self._levels[k]) >= 2 * HASH_SIZE:
            level = self._levels[k]
            pairs = len(level) // (2 * HASH_SIZE)
            view = memoryview(level)
            upper = bytearray(pairs * HASH_SIZE)
            for i in range(pairs):
                start = 2 * i * HASH_SIZE
                upper[i * HASH_SIZE : (i + 1) * HASH_SIZE] = sha256(
                    _NODE_PREFIX + view[start : start + 2 * HASH_SIZE]
                ).digest()
            view.release()
            self._levels.append(upper)
            k += 1

    def _check_size(self, size: int) -> int:
        if not 0 <= size <= self.size:
            raise ValueError(f"tree size {size} is outside 0..{self.size}")
        return size

    @staticmethod
    def _check_index(index: int, size: int) -> None:
        if not 0 <= index < size:
            raise ValueError(f"leaf index {index} is outside a tree of {size} leaves")


def _split(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


__all__ = ["MerkleTree"]
