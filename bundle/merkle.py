"""Merkle tree hashing and proofs as defined by RFC 9162 (Certificate Transparency v2).

The token ledger commits to its entries with the Merkle Tree Hash of RFC 9162 §2.1.1:
SHA-256, with the one-byte prefix ``0x00`` for leaves and ``0x01`` for interior nodes so
that a leaf can never be passed off as a node (second-preimage protection).  The root of
the empty tree is ``SHA-256(b"")``.

This module has two halves:

* Generation, for whoever holds all the leaf hashes: :func:`root` (MTH, §2.1.1),
  :func:`inclusion_proof` (PATH, §2.1.3.1) and :func:`consistency_proof` (PROOF,
  §2.1.4.1).  These are O(n) in hashing and use no recursion, so a million leaves are fine.
* Verification, for whoever holds only a root and a proof from an untrusted source:
  :func:`verify_inclusion` (§2.1.3.2) and :func:`verify_consistency` (§2.1.4.2).  They
  cost O(log n) hashes and raise :class:`~bundle.errors.ProofError` -- never anything
  else -- for every input that does not prove what it claims.

Tree sizes and leaf indices are unsigned 64-bit integers on the wire (RFC 9162 §4), so the
verifiers reject anything outside ``0 <= value < 2**64`` as a ProofError instead of letting
a huge Python integer through.

Two behaviours follow the transparency-dev/merkle conformance vectors
(``tests/vectors/merkle-proofs.json``) where RFC 9162 leaves room:

* A consistency proof from the empty tree (``size1 == 0``) is always rejected: §2.1.4
  defines consistency only between non-empty trees, and "every tree extends the empty
  tree" proves nothing.
* When ``size1 == size2`` the proof must be empty and the two roots equal; they are
  compared as opaque byte strings, without the 32-byte length check applied everywhere
  else, because the vectors require that case to pass for arbitrary equal values.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Sequence
from typing import SupportsIndex

from bundle.errors import ProofError

HASH_SIZE = 32
"""Length in bytes of every hash: SHA-256 digests."""

MAX_TREE_SIZE = 2**64 - 1
"""Largest tree size or leaf index a verifier accepts (uint64, RFC 9162 §4)."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_EMPTY_ROOT = hashlib.sha256(b"").digest()

__all__ = [
    "HASH_SIZE",
    "MAX_TREE_SIZE",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "verify_consistency",
    "verify_inclusion",
]


# --- hashing -------------------------------------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    """Return the Merkle leaf hash ``SHA-256(0x00 || data)`` (RFC 9162 §2.1.1).

    Args:
        data: the leaf's content (the encoded ledger entry).

    Returns:
        The 32-byte leaf hash.
    """
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the interior node hash ``SHA-256(0x01 || left || right)`` (RFC 9162 §2.1.1).

    Args:
        left: hash of the left subtree.
        right: hash of the right subtree.

    Returns:
        The 32-byte node hash.
    """
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


# --- generation ----------------------------------------------------------------------


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return the Merkle Tree Hash MTH of a list of leaf hashes (RFC 9162 §2.1.1).

    Args:
        leaf_hashes: the leaf hashes (outputs of :func:`leaf_hash`), in log order.

    Returns:
        The 32-byte root; ``SHA-256(b"")`` for an empty list.

    Raises:
        ValueError: if a leaf hash is not 32 bytes long (a caller bug, not bad input).
    """
    leaves = _checked_leaves(leaf_hashes)
    return _subtree_root(leaves, 0, len(leaves))


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Return the audit path PATH(index, D[n]) for one leaf (RFC 9162 §2.1.3.1).

    Args:
        index: position of the leaf, ``0 <= index < len(leaf_hashes)``.
        leaf_hashes: all leaf hashes of the tree, in log order.

    Returns:
        The sibling subtree hashes from the leaf's level up to the root.

    Raises:
        ValueError: if ``index`` is out of range or a leaf hash is not 32 bytes long.
    """
    leaves = _checked_leaves(leaf_hashes)
    if not 0 <= index < len(leaves):
        raise ValueError(f"leaf index {index} is outside a tree of {len(leaves)} leaves")

    # PATH(m, D[lo:hi]) recurses into the half holding m and appends the other half's
    # MTH.  Walking down iteratively collects those hashes root-first; reverse at the end.
    path: list[bytes] = []
    lo, hi = 0, len(leaves)
    while hi - lo > 1:
        mid = lo + _split(hi - lo)
        if index < mid:
            path.append(_subtree_root(leaves, mid, hi))
            hi = mid
        else:
            path.append(_subtree_root(leaves, lo, mid))
            lo = mid
    path.reverse()
    return path


def consistency_proof(size1: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Return the consistency proof PROOF(size1, D[n]) (RFC 9162 §2.1.4.1).

    It shows that the tree of the first ``size1`` leaves is a prefix of the whole tree.

    Args:
        size1: size of the older tree, ``0 < size1 <= len(leaf_hashes)``.
        leaf_hashes: all leaf hashes of the newer tree, in log order.

    Returns:
        The proof hashes; empty when ``size1 == len(leaf_hashes)``.

    Raises:
        ValueError: if ``size1`` is out of range (a proof from the empty tree is
            meaningless, see the module docstring) or a leaf hash is not 32 bytes long.
    """
    leaves = _checked_leaves(leaf_hashes)
    if not 0 < size1 <= len(leaves):
        raise ValueError(f"size1 {size1} is not between 1 and the tree size {len(leaves)}")

    # SUBPROOF(m, D[lo:hi], b) as an iterative walk: each step appends the MTH of the half
    # the walk leaves behind, so the hashes come out root-first and are reversed at the end.
    proof: list[bytes] = []
    m, lo, hi = size1, 0, len(leaves)
    is_original_m = True  # SUBPROOF's flag b
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            proof.append(_subtree_root(leaves, lo + k, hi))
            hi = lo + k
        else:
            proof.append(_subtree_root(leaves, lo, lo + k))
            m -= k
            lo += k
            is_original_m = False
    if not is_original_m:
        # SUBPROOF(m, D[m], false) = {MTH(D[m])}: this subtree is only part of the old
        # tree, so the verifier cannot know its hash and it goes into the proof.
        proof.append(_subtree_root(leaves, lo, hi))
    proof.reverse()
    return proof


def _checked_leaves(leaf_hashes: Sequence[bytes]) -> list[bytes]:
    leaves = list(leaf_hashes)
    # set(map(len, ...)) runs in C: about 30 ms for a million leaves versus ~0.5 s of hashing.
    if set(map(len, leaves)) - {HASH_SIZE}:
        bad = next(i for i, h in enumerate(leaves) if len(h) != HASH_SIZE)
        raise ValueError(f"leaf hash {bad} is {len(leaves[bad])} bytes, expected {HASH_SIZE}")
    return leaves


def _split(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (``n >= 2``), the k of §2.1.1."""
    return 1 << ((n - 1).bit_length() - 1)


def _subtree_root(leaves: list[bytes], lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) computed bottom-up, one level at a time, without recursion.

    Pairing neighbours and carrying an odd last node up unchanged builds exactly the
    RFC 9162 tree: in MTH's split at the largest power of two k < n the left part is a
    perfect subtree, so the levels of D[0:k] pair up evenly and only the right border ever
    has an unpaired node, which is the root of a smaller right subtree waiting for its
    sibling.  Cost: hi - lo - 1 hashes and O(hi - lo) memory.
    """
    if hi == lo:
        return _EMPTY_ROOT
    sha256 = hashlib.sha256
    level = leaves[lo:hi]
    while len(level) > 1:
        # zip() of one iterator with itself yields neighbour pairs; it drops an odd last
        # node, which is carried up unchanged just below.
        pairs = iter(level)
        upper = [sha256(_NODE_PREFIX + a + b).digest() for a, b in zip(pairs, pairs, strict=False)]
        if len(level) % 2:
            upper.append(level[-1])
        level = upper
    return level[0]


# --- verification --------------------------------------------------------------------


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` with ``root``.

    Implements the verification algorithm of RFC 9162 §2.1.3.2, after checking the
    proof has exactly the length that (index, size) calls for.

    Args:
        leaf_hash: the 32-byte leaf hash (:func:`leaf_hash` of the entry).
        index: the leaf's position, ``0 <= index < size``.
        size: the tree size the root belongs to.
        proof: the inclusion path, lowest level first (``None`` counts as empty).
        root: the trusted 32-byte root of the tree of ``size`` leaves.

    Raises:
        ProofError: if the index or size is out of range or not an integer, a hash is not
            32 bytes, the proof has the wrong number of hashes, or the proof does not
            lead to ``root``.
    """
    where = f"leaf {index!r} of {size!r}"
    index = _uint64(index, "leaf index", where)
    size = _uint64(size, "tree size", where)
    if index >= size:
        raise ProofError(
            "leaf index is outside the tree", expected=f"index < {size}", found=index, where=where
        )
    _check_hash(leaf_hash, "leaf hash", where)
    _check_hash(root, "root", where)
    path = _check_proof(proof, _inclusion_proof_length(index, size), "inclusion proof", where)

    # RFC 9162 §2.1.3.2, step by step.  fn is the node's index on its level, sn the index
    # of the last node on that level; the proof length check above makes step 4a's early
    # exit unreachable, but it is kept so the loop stays correct on its own.
    fn, sn = index, size - 1
    r = leaf_hash
    for p in path:
        if sn == 0:
            raise ProofError(
                "inclusion proof is too long", expected="fewer hashes", found=len(path), where=where
            )
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:  # step 4b: skip levels with no sibling
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(
            "inclusion proof is too short", expected="more hashes", found=len(path), where=where
        )
    if r != root:
        raise ProofError(
            "inclusion proof does not lead to the root",
            expected=bytes(root).hex(),
            found=r.hex(),
            where=where,
        )


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree of ``size2`` with ``root2`` extends the tree of ``size1``.

    Implements the verification algorithm of RFC 9162 §2.1.4.2, after the edge cases of
    equal sizes and the empty tree and a check that the proof has exactly the length
    that (size1, size2) calls for.

    Args:
        size1: size of the older tree, ``0 < size1 <= size2``.
        size2: size of the newer tree.
        proof: the consistency proof from :func:`consistency_proof` (``None`` counts as
            empty).
        root1: the trusted root of the older tree.
        root2: the trusted root of the newer tree.

    Raises:
        ProofError: if a size is out of range or not an integer, ``size1 > size2``,
            ``size1 == 0``, a hash is not 32 bytes, the proof has the wrong number of
            hashes (it must be empty when the sizes are equal), or the proof does not
            lead to both roots.
    """
    where = f"tree {size1!r} -> {size2!r}"
    size1 = _uint64(size1, "size1", where)
    size2 = _uint64(size2, "size2", where)
    if size1 > size2:
        raise ProofError(
            "old tree is larger than the new one",
            expected=f"size1 <= {size2}",
            found=size1,
            where=where,
        )
    if size1 == 0:
        raise ProofError(
            "a consistency proof from the empty tree proves nothing",
            expected="size1 > 0",
            found=0,
            where=where,
        )
    if size1 == size2:
        _check_proof(proof, 0, "consistency proof", where)
        # Opaque comparison, no 32-byte check: see the module docstring.
        if not (isinstance(root1, bytes | bytearray) and isinstance(root2, bytes | bytearray)):
            raise ProofError(
                "roots are not byte strings",
                expected="bytes",
                found=f"{type(root1).__name__}, {type(root2).__name__}",
                where=where,
            )
        if root1 != root2:
            raise ProofError(
                "trees of equal size have different roots",
                expected=bytes(root1).hex(),
                found=bytes(root2).hex(),
                where=where,
            )
        return
    _check_hash(root1, "root1", where)
    _check_hash(root2, "root2", where)
    sent = _check_proof(proof, _consistency_proof_length(size1, size2), "consistency proof", where)

    # RFC 9162 §2.1.4.2, step by step (fn: node index on its level, sn: last index).
    # Step 2: when size1 is a power of two the old tree is itself a node of the new tree,
    # and its root starts the chain instead of being sent in the proof.
    path = [bytes(root1), *sent] if size1 & (size1 - 1) == 0 else sent
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(
                "consistency proof is too long",
                expected="fewer hashes",
                found=len(sent),
                where=where,
            )
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:  # step 6b: skip levels with no sibling
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(
            "consistency proof is too short", expected="more hashes", found=len(sent), where=where
        )
    if fr != root1:
        raise ProofError(
            "consistency proof does not lead to the old root",
            expected=bytes(root1).hex(),
            found=fr.hex(),
            where=where,
        )
    if sr != root2:
        raise ProofError(
            "consistency proof does not lead to the new root",
            expected=bytes(root2).hex(),
            found=sr.hex(),
            where=where,
        )


def _inclusion_proof_length(index: int, size: int) -> int:
    """Hashes in PATH(index, D[size]): the levels below the point where the paths to
    ``index`` and to the last leaf part (all full), plus one for each left-hand subtree
    on the right border above it."""
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def _consistency_proof_length(size1: int, size2: int) -> int:
    """Hashes in PROOF(size1, D[size2]) for ``0 < size1 < size2``: the inclusion path of
    leaf ``size1 - 1`` minus the levels inside the largest perfect subtree ending at
    ``size1``, plus that subtree's root unless it is the whole old tree (size1 a power
    of two)."""
    inner = ((size1 - 1) ^ (size2 - 1)).bit_length()
    border = ((size1 - 1) >> inner).bit_count()
    shift = (size1 & -size1).bit_length() - 1  # trailing zero bits of size1
    seed_in_proof = 0 if size1 == 1 << shift else 1
    return seed_in_proof + inner - shift + border


def _uint64(value: object, name: str, where: str) -> int:
    # bool is an int subclass, but a True index is a bug upstream, not a leaf number.
    if isinstance(value, bool) or not isinstance(value, SupportsIndex):
        raise ProofError(
            f"{name} is not an integer", expected="int", found=type(value).__name__, where=where
        )
    number = operator.index(value)
    if not 0 <= number <= MAX_TREE_SIZE:
        raise ProofError(
            f"{name} is out of range", expected="0 .. 2**64-1", found=number, where=where
        )
    return number


def _check_hash(value: object, name: str, where: str) -> None:
    if not isinstance(value, bytes | bytearray):
        raise ProofError(
            f"{name} is not a hash",
            expected=f"{HASH_SIZE} bytes",
            found=type(value).__name__,
            where=where,
        )
    if len(value) != HASH_SIZE:
        raise ProofError(
            f"{name} is not a SHA-256 hash",
            expected=f"{HASH_SIZE} bytes",
            found=f"{len(value)} bytes",
            where=where,
        )


def _check_proof(proof: object, length: int, name: str, where: str) -> list[bytes]:
    """The proof as a list of 32-byte hashes, if it has exactly ``length`` of them.

    ``None`` counts as an empty proof: that is what a JSON ``null`` proof decodes to, and
    it carries no hashes either way.
    """
    if proof is None:
        proof = ()
    if isinstance(proof, str | bytes | bytearray) or not isinstance(proof, Sequence):
        raise ProofError(
            f"{name} is not a list of hashes",
            expected="a sequence of hashes",
            found=type(proof).__name__,
            where=where,
        )
    if len(proof) != length:
        raise ProofError(
            f"{name} has the wrong number of hashes",
            expected=length,
            found=len(proof),
            where=where,
        )
    for i, h in enumerate(proof):
        _check_hash(h, f"{name} hash {i}", where)
    return list(proof)
