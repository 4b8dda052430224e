"""Tests for bundle.merkle: RFC 9162 Merkle tree hashes and proofs.

* every transparency-dev/merkle conformance vector (tests/vectors/merkle-proofs.json);
* known answers: the empty tree and the RFC 6962 test tree of 8 leaves;
* agreement with a recursive reference written straight from the RFC 9162 definitions;
* properties (hypothesis): generated proofs verify, tampered ones raise ProofError, and
  garbage of any kind raises ProofError and nothing else.
"""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bundle.errors import ProofError
from bundle.merkle import (
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

VECTORS_PATH = Path(__file__).resolve().parents[1] / "vectors" / "merkle-proofs.json"
SHARED_VECTORS_PATH = (
    Path(__file__).resolve().parents[2].parent / "shared" / "vectors" / "merkle-proofs.json"
)
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))

EMPTY_ROOT_HEX = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

# The RFC 6962 test tree (also transparency-dev/merkle's): leaf data and MTH of the first
# 1..8 leaves.
RFC6962_LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
RFC6962_ROOTS = [
    bytes.fromhex(h)
    for h in [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
]
RFC6962_LEAF_HASHES = [leaf_hash(d) for d in RFC6962_LEAVES]

# Distinct leaves for the property tests, with the root of every prefix precomputed.
MAX_N = 200
LEAVES = [leaf_hash(i.to_bytes(4, "big")) for i in range(MAX_N)]
PREFIX_ROOTS = [root(LEAVES[:n]) for n in range(MAX_N + 1)]


def ceil_log2(n: int) -> int:
    return (n - 1).bit_length()


# --- reference implementation: RFC 9162 §2.1 transcribed literally (recursive) -------


def ref_split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    if not d:
        return bytes.fromhex(EMPTY_ROOT_HEX)
    if len(d) == 1:
        return d[0]  # already leaf hashes
    k = ref_split(len(d))
    return node_hash(ref_mth(d[:k]), ref_mth(d[k:]))


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = ref_split(len(d))
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = ref_split(len(d))
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def path_sides(m: int, n: int) -> list[bool]:
    """For PATH(m, D[n]): True where the proof hash is the left child, lowest level first."""
    sides: list[bool] = []
    while n > 1:
        k = ref_split(n)
        if m < k:
            sides.append(False)
            n = k
        else:
            sides.append(True)
            m, n = m - k, n - k
    return sides[::-1]


# --- conformance vectors -------------------------------------------------------------


def b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def b64_proof(proof: list[str] | None) -> list[bytes] | None:
    # JSON null stays None: the verifiers must take it as an empty proof, as Go does.
    return None if proof is None else [b64(h) for h in proof]


def vector_params(kind: str) -> list[Any]:
    return [pytest.param(case, id=case["file"]) for case in VECTORS[kind]]


def test_vector_file_is_complete_and_attributed() -> None:
    assert "transparency-dev/merkle" in VECTORS["source"]
    assert len(VECTORS["inclusion"]) > 0
    assert len(VECTORS["consistency"]) > 0
    assert any(not c["wantErr"] for c in VECTORS["inclusion"])
    assert any(not c["wantErr"] for c in VECTORS["consistency"])


def test_vector_copy_matches_shared() -> None:
    if not SHARED_VECTORS_PATH.exists():
        pytest.skip(f"no shared vectors at {SHARED_VECTORS_PATH}")
    shared = json.loads(SHARED_VECTORS_PATH.read_text(encoding="utf-8"))
    assert shared == VECTORS


@pytest.mark.parametrize("case", vector_params("inclusion"))
def test_inclusion_vector(case: dict[str, Any]) -> None:
    args = (
        b64(case["leafHash"]),
        case["leafIdx"],
        case["treeSize"],
        b64_proof(case["proof"]),
        b64(case["root"]),
    )
    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)  # type: ignore[arg-type]
    else:
        verify_inclusion(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize("case", vector_params("consistency"))
def test_consistency_vector(case: dict[str, Any]) -> None:
    args = (
        case["size1"],
        case["size2"],
        b64_proof(case["proof"]),
        b64(case["root1"]),
        b64(case["root2"]),
    )
    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)  # type: ignore[arg-type]
    else:
        verify_consistency(*args)  # type: ignore[arg-type]


def _rfc6962_happy_paths(kind: str) -> list[Any]:
    # The numbered directories hold proofs over the RFC 6962 test tree.
    return [
        pytest.param(c, id=c["file"])
        for c in VECTORS[kind]
        if c["file"].split("/")[1].isdigit() and not c["wantErr"]
    ]


@pytest.mark.parametrize("case", _rfc6962_happy_paths("inclusion"))
def test_generated_inclusion_proof_matches_vector(case: dict[str, Any]) -> None:
    leaves = RFC6962_LEAF_HASHES[: case["treeSize"]]
    assert leaves[case["leafIdx"]] == b64(case["leafHash"])
    assert root(leaves) == b64(case["root"])
    assert inclusion_proof(case["leafIdx"], leaves) == (b64_proof(case["proof"]) or [])


@pytest.mark.parametrize("case", _rfc6962_happy_paths("consistency"))
def test_generated_consistency_proof_matches_vector(case: dict[str, Any]) -> None:
    leaves = RFC6962_LEAF_HASHES[: case["size2"]]
    assert root(leaves[: case["size1"]]) == b64(case["root1"])
    assert root(leaves) == b64(case["root2"])
    assert consistency_proof(case["size1"], leaves) == (b64_proof(case["proof"]) or [])


# --- known answers -------------------------------------------------------------------


def test_empty_tree_root() -> None:
    assert root([]).hex() == EMPTY_ROOT_HEX


def test_hash_prefixes() -> None:
    assert leaf_hash(b"") == RFC6962_ROOTS[0]
    assert node_hash(RFC6962_LEAF_HASHES[0], RFC6962_LEAF_HASHES[1]) == RFC6962_ROOTS[1]


@pytest.mark.parametrize("size", range(1, 9))
def test_rfc6962_test_tree_roots(size: int) -> None:
    assert root(RFC6962_LEAF_HASHES[:size]) == RFC6962_ROOTS[size - 1]


def test_single_leaf_tree() -> None:
    h = leaf_hash(b"data")
    assert root([h]) == h
    assert inclusion_proof(0, [h]) == []
    verify_inclusion(h, 0, 1, [], h)


# --- generation against the reference ------------------------------------------------


@pytest.mark.parametrize("n", range(70))
def test_generation_matches_reference(n: int) -> None:
    leaves = LEAVES[:n]
    assert root(leaves) == ref_mth(leaves)
    for m in range(n):
        assert inclusion_proof(m, leaves) == ref_path(m, leaves)
    for m in range(1, n + 1):
        assert consistency_proof(m, leaves) == ref_subproof(m, leaves, True)


def test_generation_accepts_any_sequence() -> None:
    assert root(tuple(LEAVES[:7])) == PREFIX_ROOTS[7]
    assert inclusion_proof(3, tuple(LEAVES[:7])) == inclusion_proof(3, LEAVES[:7])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: inclusion_proof(0, []), "outside a tree of 0"),
        (lambda: inclusion_proof(5, LEAVES[:5]), "outside a tree of 5"),
        (lambda: inclusion_proof(-1, LEAVES[:5]), "outside a tree of 5"),
        (lambda: consistency_proof(0, LEAVES[:5]), "size1 0"),
        (lambda: consistency_proof(6, LEAVES[:5]), "size1 6"),
        (lambda: root([LEAVES[0], b"short"]), "leaf hash 1 is 5 bytes"),
        (lambda: inclusion_proof(0, [LEAVES[0] + b"x"]), "leaf hash 0 is 33 bytes"),
    ],
)
def test_generation_rejects_caller_bugs(call: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.slow
def test_million_leaves() -> None:
    n = 1_000_000
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    tree_root = root(leaves)
    index = 765_432
    proof = inclusion_proof(index, leaves)
    assert len(proof) == ceil_log2(n)
    verify_inclusion(leaves[index], index, n, proof, tree_root)
    size1 = 654_321
    cproof = consistency_proof(size1, leaves)
    verify_consistency(size1, n, cproof, root(leaves[:size1]), tree_root)


# --- properties ----------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, MAX_N))
def test_every_inclusion_proof_verifies(n: int) -> None:
    leaves = LEAVES[:n]
    for m in range(n):
        proof = inclusion_proof(m, leaves)
        assert len(proof) <= ceil_log2(n)
        verify_inclusion(leaves[m], m, n, proof, PREFIX_ROOTS[n])


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, MAX_N))
def test_every_consistency_proof_verifies(n: int) -> None:
    leaves = LEAVES[:n]
    for size1 in range(1, n + 1):
        proof = consistency_proof(size1, leaves)
        # RFC 6962 §2.1.2: at most ceil(log2(n)) + 1 hashes (e.g. 3 -> 4 needs 3).
        assert len(proof) <= ceil_log2(n) + 1
        assert (proof == []) == (size1 == n)
        verify_consistency(size1, n, proof, PREFIX_ROOTS[size1], PREFIX_ROOTS[n])


def flip(proof: list[bytes], i: int, j: int, mask: int) -> list[bytes]:
    bad = bytearray(proof[i])
    bad[j] ^= mask
    return [*proof[:i], bytes(bad), *proof[i + 1 :]]


@pytest.mark.parametrize("n", [2, 5, 8, 13])
def test_flipping_any_byte_of_any_inclusion_hash_fails(n: int) -> None:
    leaves = LEAVES[:n]
    for m in range(n):
        proof = inclusion_proof(m, leaves)
        for i in range(len(proof)):
            for j in range(32):
                with pytest.raises(ProofError, match="does not lead to the root"):
                    verify_inclusion(leaves[m], m, n, flip(proof, i, j, 0x01), PREFIX_ROOTS[n])


@pytest.mark.parametrize("n", [2, 5, 8, 13])
def test_flipping_any_byte_of_any_consistency_hash_fails(n: int) -> None:
    leaves = LEAVES[:n]
    for size1 in range(1, n):
        proof = consistency_proof(size1, leaves)
        for i in range(len(proof)):
            for j in range(32):
                with pytest.raises(ProofError, match="does not lead to the"):
                    verify_consistency(
                        size1, n, flip(proof, i, j, 0x80), PREFIX_ROOTS[size1], PREFIX_ROOTS[n]
                    )


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_tampered_inclusion_proof_fails(data: st.DataObject) -> None:
    n = data.draw(st.integers(2, MAX_N), label="n")
    m = data.draw(st.integers(0, n - 1), label="index")
    leaves = LEAVES[:n]
    proof = inclusion_proof(m, leaves)
    r = PREFIX_ROOTS[n]

    i = data.draw(st.integers(0, len(proof) - 1), label="proof hash")
    j = data.draw(st.integers(0, 31), label="byte")
    mask = data.draw(st.integers(1, 255), label="xor mask")
    with pytest.raises(ProofError):
        verify_inclusion(leaves[m], m, n, flip(proof, i, j, mask), r)

    # Another index of the same tree: the path has a different shape, so it must fail.
    other = data.draw(st.integers(0, 2**64 - 1).filter(lambda x: x != m), label="other index")
    with pytest.raises(ProofError):
        verify_inclusion(leaves[m], other, n, proof, r)

    # Another size with the same root.  The verifier only sees (index, size, proof), so
    # it accepts exactly when the leaf's path has the same shape in both trees (leaf 0 of
    # 3 and of 4 leaves both sit two left turns down) -- never otherwise.
    size = data.draw(st.integers(0, 2**64 - 1).filter(lambda x: x != n), label="other size")
    same_shape = m < size and path_sides(m, size) == path_sides(m, n)
    if same_shape:
        verify_inclusion(leaves[m], m, size, proof, r)
    else:
        with pytest.raises(ProofError):
            verify_inclusion(leaves[m], m, size, proof, r)

    # Another size with that size's true root: must fail unless it is the true proof.
    size = data.draw(st.integers(1, MAX_N).filter(lambda x: x != n), label="honest size")
    if m < size and inclusion_proof(m, LEAVES[:size]) == proof:
        verify_inclusion(leaves[m], m, size, proof, PREFIX_ROOTS[size])
    else:
        with pytest.raises(ProofError):
            verify_inclusion(leaves[m], m, size, proof, PREFIX_ROOTS[size])


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_tampered_consistency_proof_fails(data: st.DataObject) -> None:
    n = data.draw(st.integers(2, MAX_N), label="size2")
    size1 = data.draw(st.integers(1, n - 1), label="size1")
    proof = consistency_proof(size1, LEAVES[:n])

    i = data.draw(st.integers(0, len(proof) - 1), label="proof hash")
    j = data.draw(st.integers(0, 31), label="byte")
    mask = data.draw(st.integers(1, 255), label="xor mask")
    with pytest.raises(ProofError):
        verify_consistency(size1, n, flip(proof, i, j, mask), PREFIX_ROOTS[size1], PREFIX_ROOTS[n])

    # Other sizes, with the true roots for those sizes: fail unless it is the true proof.
    s1 = data.draw(st.integers(0, MAX_N), label="other size1")
    s2 = data.draw(st.integers(0, MAX_N), label="other size2")
    if (s1, s2) == (size1, n):
        return
    if 0 < s1 <= s2 and consistency_proof(s1, LEAVES[:s2]) == proof:
        verify_consistency(s1, s2, proof, PREFIX_ROOTS[s1], PREFIX_ROOTS[s2])
    else:
        with pytest.raises(ProofError):
            verify_consistency(s1, s2, proof, PREFIX_ROOTS[s1], PREFIX_ROOTS[s2])


# --- hostile input: ProofError and nothing else --------------------------------------

junk_ints = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 2**64 - 1, 2**64, -1]),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True),
    st.text(max_size=3),
)
junk_hashes = st.one_of(
    st.binary(min_size=0, max_size=40),
    st.binary(min_size=32, max_size=32),
    st.none(),
    st.text(max_size=40),
    st.integers(),
)
junk_proofs = st.one_of(
    st.lists(junk_hashes, max_size=6),
    st.lists(st.binary(min_size=32, max_size=32), max_size=70),
    st.none(),
    st.binary(max_size=64),
    st.text(max_size=5),
    st.integers(),
)


@settings(max_examples=500, deadline=None)
@given(lh=junk_hashes, index=junk_ints, size=junk_ints, proof=junk_proofs, r=junk_hashes)
def test_garbage_inclusion_raises_only_proof_error(
    lh: Any, index: Any, size: Any, proof: Any, r: Any
) -> None:
    with contextlib.suppress(ProofError):
        verify_inclusion(lh, index, size, proof, r)


@settings(max_examples=500, deadline=None)
@given(s1=junk_ints, s2=junk_ints, proof=junk_proofs, r1=junk_hashes, r2=junk_hashes)
def test_garbage_consistency_raises_only_proof_error(
    s1: Any, s2: Any, proof: Any, r1: Any, r2: Any
) -> None:
    with contextlib.suppress(ProofError):
        verify_consistency(s1, s2, proof, r1, r2)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((LEAVES[0], 0, 0, [], PREFIX_ROOTS[1]), "outside the tree"),
        ((LEAVES[0], 2**64 - 1, 1, [], PREFIX_ROOTS[1]), "outside the tree"),
        ((LEAVES[0], 2**64, 2**64 + 1, [], PREFIX_ROOTS[1]), "out of range"),
        ((LEAVES[0], -1, 1, [], PREFIX_ROOTS[1]), "out of range"),
        ((LEAVES[0], 0.0, 1, [], PREFIX_ROOTS[1]), "not an integer"),
        ((LEAVES[0], True, 2, [LEAVES[0]], PREFIX_ROOTS[2]), "not an integer"),
        ((b"WrongLeaf", 0, 1, [], PREFIX_ROOTS[1]), "leaf hash is not a SHA-256 hash"),
        ((LEAVES[0], 0, 1, [], b""), "root is not a SHA-256 hash"),
        ((LEAVES[0], 0, 2, [b"x" * 31], PREFIX_ROOTS[2]), "hash 0 is not a SHA-256"),
        ((LEAVES[0], 0, 2, ["x" * 32], PREFIX_ROOTS[2]), "hash 0 is not a hash"),
        ((LEAVES[0], 0, 2, b"x" * 32, PREFIX_ROOTS[2]), "not a list of hashes"),
        ((LEAVES[0], 0, 2, [], PREFIX_ROOTS[2]), "wrong number of hashes"),
        ((LEAVES[0], 0, 2, [LEAVES[1]] * 10**6, PREFIX_ROOTS[2]), "wrong number of hashes"),
    ],
)
def test_inclusion_rejections(args: tuple[Any, ...], match: str) -> None:
    with pytest.raises(ProofError, match=match):
        verify_inclusion(*args)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((2, 1, [], PREFIX_ROOTS[2], PREFIX_ROOTS[1]), "larger than the new one"),
        ((0, 0, [], PREFIX_ROOTS[0], PREFIX_ROOTS[0]), "from the empty tree"),
        ((0, 5, [], PREFIX_ROOTS[0], PREFIX_ROOTS[5]), "from the empty tree"),
        ((3, 3, [LEAVES[0]], PREFIX_ROOTS[3], PREFIX_ROOTS[3]), "wrong number of hashes"),
        ((3, 3, [], PREFIX_ROOTS[3], PREFIX_ROOTS[4]), "equal size have different roots"),
        ((3, 3, [], None, None), "not byte strings"),
        ((3, 4, [], PREFIX_ROOTS[3], PREFIX_ROOTS[4]), "wrong number of hashes"),
        ((3, 4, None, PREFIX_ROOTS[3], PREFIX_ROOTS[4]), "wrong number of hashes"),
        ((3, 4, [LEAVES[0]] * 3, b"WrongRoot", PREFIX_ROOTS[4]), "root1 is not a SHA-256"),
        ((3, 4, [LEAVES[0]] * 3, PREFIX_ROOTS[3], b"WrongRoot"), "root2 is not a SHA-256"),
        ((3, 4, [LEAVES[0]] * 3, PREFIX_ROOTS[3], PREFIX_ROOTS[4]), "lead to the old root"),
        ((-1, 4, [], PREFIX_ROOTS[3], PREFIX_ROOTS[4]), "size1 is out of range"),
        ((1, 2**64, [], PREFIX_ROOTS[3], PREFIX_ROOTS[4]), "size2 is out of range"),
        (("1", 2, [], PREFIX_ROOTS[1], PREFIX_ROOTS[2]), "size1 is not an integer"),
    ],
)
def test_consistency_rejections(args: tuple[Any, ...], match: str) -> None:
    with pytest.raises(ProofError, match=match):
        verify_consistency(*args)


def test_consistency_wrong_new_root_is_reported() -> None:
    proof = consistency_proof(3, LEAVES[:4])
    with pytest.raises(ProofError, match="lead to the new root"):
        verify_consistency(3, 4, proof, PREFIX_ROOTS[3], PREFIX_ROOTS[5])


def test_error_states_expected_found_and_where() -> None:
    proof = inclusion_proof(2, LEAVES[:5])
    with pytest.raises(ProofError) as info:
        verify_inclusion(LEAVES[2], 2, 5, proof, PREFIX_ROOTS[4])
    err = info.value
    assert err.expected == PREFIX_ROOTS[4].hex()
    assert err.found == PREFIX_ROOTS[5].hex()
    assert err.where == "leaf 2 of 5"
    assert str(err) == (
        f"inclusion proof does not lead to the root: expected {PREFIX_ROOTS[4].hex()}, "
        f"found {PREFIX_ROOTS[5].hex()} [leaf 2 of 5]"
    )


def test_verifiers_accept_bytearray_and_tuples() -> None:
    # Typed as bytes, but a bytearray holding the same hash must not be refused.
    proof: Any = tuple(bytearray(h) for h in inclusion_proof(6, LEAVES[:9]))
    leaf: Any = bytearray(LEAVES[6])
    root9: Any = bytearray(PREFIX_ROOTS[9])
    verify_inclusion(leaf, 6, 9, proof, root9)
    root6: Any = bytearray(PREFIX_ROOTS[6])
    verify_consistency(6, 9, tuple(consistency_proof(6, LEAVES[:9])), root6, PREFIX_ROOTS[9])


def test_equal_sizes_compare_roots_opaquely() -> None:
    # As the transparency-dev vectors require: no proof to check, so the roots are only
    # compared, whatever their length.
    verify_consistency(1, 1, [], b"don't care 2", b"don't care 2")
    verify_consistency(7, 7, [], PREFIX_ROOTS[7], PREFIX_ROOTS[7])
