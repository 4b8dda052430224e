"""Benchmark bundle packing and opening against the obvious alternatives, in one run.

    python benchmarks/bench_bundle.py [--size-mb 100] [--repeat 5] [--json]

What it measures (MB = 10**6 bytes of raw array data; speeds are medians of ``--repeat``):

* a model update of standard-normal float32 weights (what trained weights look like to a
  compressor), packed with ``pack_bundle`` into a temporary directory and opened with
  ``open_bundle``: unencrypted, and encrypted to one recipient;
* an update one small step from its parent (``parent + 1e-3 * noise``), packed with
  ``parents=`` so XOR-delta can be chosen; its size is compared with plain zstd of the
  same raw bytes at the bundle's level (and at level 3);
* side by side, in the same run and on the same arrays: ``np.savez_compressed`` plus a
  detached Ed25519 signature over the file (load = verify + ``np.load``), and Flower's
  own wire form (``flwr.app.ArrayRecord`` deflated into its content-addressed objects,
  as ``push_objects`` sends them) through zstd level 3 (load = zstd, check object ids as
  Flower's object store does, inflate, ``to_numpy_ndarrays``).  Every writer fsyncs;
* extra peak memory of each operation, in a fresh subprocess per measurement: the peak
  RSS (``VmHWM``, reset through ``/proc/self/clear_refs`` once the inputs exist) minus
  the RSS at that point, as a multiple of the raw payload size;
* the small-bundle path: pure Ed25519 sign/verify of the signed message, and the whole
  ``pack_bytes`` / ``open_bundle`` of a ``Transaction`` bundle;
* reference limits of this machine: SHA-256, and single-threaded zstd compress and
  decompress of the same raw bytes (level 3 and the bundle level).

Other processes sharing the CPUs skew every number: the load average before and after the
run is printed with the results.

This is a script, not a test: it prints a table (or ``--json``) and exits 0; the
``targets`` line says which issue-2 targets were met on this machine.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import io
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import nacl
import nacl.signing
import numpy as np
import zstandard
from measure import Peak

from bundle.arrays import array_hash
from bundle.envelope import DEFAULT_LEVEL, open_bundle, pack_bundle, pack_bytes
from bundle.keys import Identity, PublicIdentity
from bundle.payloads import ModelUpdate, Transaction

Arrays = list[tuple[str, np.ndarray[Any, Any]]]

FEDERATION = bytes(range(16))
FLOWER_LEVEL = 3  # the Flower baseline's zstd level
SENDER = Identity(b"\x11" * 32, b"\x12" * 32)
RECIPIENT = Identity(b"\x21" * 32, b"\x22" * 32)
KEYRING: dict[bytes, PublicIdentity] = {SENDER.key_id: SENDER.public}
MB = 1e6

# Targets from issue 2 (2-core machine).
TARGET_PACK = 250.0
TARGET_OPEN = 300.0
TARGET_MEMORY = 1.2
TARGET_DELTA = 1.3
TARGET_SIGNATURE_US = 200.0

CASES = {
    "bundle": "bundle",
    "bundle-enc": "bundle, encrypted",
    "bundle-delta": "bundle, delta vs parent",
    "bundle-delta-enc": "bundle, delta, encrypted",
    "savez": "savez_compressed + Ed25519",
    "flower": "Flower ArrayRecord + zstd-3",
}


# ---------------------------------------------------------------------------- inputs


def make_inputs(size_mb: float, delta: bool) -> tuple[Arrays, Arrays | None]:
    """A float32 model of ``size_mb`` MB in four layers, and (for delta) its parent.

    Deterministic: every process that asks for the same size gets the same arrays.
    """
    total = int(size_mb * MB) // 4
    bias = min(1000, total)
    cols = 1000
    rows = (total - bias) // cols
    shapes = {
        "encoder.weight": (rows * 6 // 10, cols),
        "decoder.weight": (rows * 3 // 10, cols),
        "head.weight": (rows - rows * 6 // 10 - rows * 3 // 10, cols),
        "head.bias": (bias,),
    }
    rng = np.random.default_rng(20240601)
    base = [(name, rng.standard_normal(shape, dtype=np.float32)) for name, shape in shapes.items()]
    if not delta:
        return base, None
    update: Arrays = []
    for name, parent in base:
        step = rng.standard_normal(parent.shape, dtype=np.float32)
        step *= np.float32(1e-3)
        step += parent  # in place: never a third copy of the model
        update.append((name, step))
    return update, base


def raw_bytes(arrays: Arrays) -> int:
    return sum(arr.nbytes for _, arr in arrays)


def _update(arrays: Arrays) -> ModelUpdate:
    return ModelUpdate(
        round=7, parent_hash=b"\x5a" * 32, num_examples=1000, metrics={"loss": 0.25}, arrays=arrays
    )


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- operations


@dataclass(frozen=True)
class Parents:
    """The parent model as sender (by name) and receiver (by hash) already hold it: its
    array hashes are known from the global model, so computing them is not timed."""

    by_name: dict[str, tuple[bytes, np.ndarray[Any, Any]]]
    by_hash: dict[bytes, np.ndarray[Any, Any]]


def parent_maps(parents: Arrays | None) -> Parents | None:
    if parents is None:
        return None
    by_name = {name: (array_hash(arr), arr) for name, arr in parents}
    return Parents(by_name, {digest: arr for digest, arr in by_name.values()})


def pack_case(case: str, arrays: Arrays, parents: Parents | None, directory: Path) -> Path:
    """Write ``arrays`` the way ``case`` does; returns the file."""
    if case.startswith("bundle"):
        encrypt = case.endswith("-enc")
        packed = pack_bundle(
            directory,
            _update(arrays),
            SENDER,
            federation=FEDERATION,
            round=7,
            seq=1,
            recipients=[RECIPIENT.public] if encrypt else [],
            encrypt=encrypt,
            parents=None if parents is None else parents.by_name,
        )
        if packed.path is None:
            raise RuntimeError("pack_bundle returned no path")
        return packed.path
    if case == "savez":
        path = directory / "model.npz"
        np.savez_compressed(path, **dict(arrays))
        signature = nacl.signing.SigningKey(b"\x11" * 32).sign(path.read_bytes()).signature
        (directory / "model.npz.sig").write_bytes(signature)
        _fsync_file(path)
        _fsync_file(directory / "model.npz.sig")
        return path
    if case == "flower":
        return _flower_pack(arrays, directory / "model.flwr.zst")
    raise ValueError(case)


def open_case(case: str, path: Path, parents: Parents | None) -> Arrays:
    """Read back what :func:`pack_case` wrote, verifying whatever the format can verify."""
    if case.startswith("bundle"):
        opened = open_bundle(
            path,
            KEYRING.get,
            identity=RECIPIENT if case.endswith("-enc") else None,
            parents=None if parents is None else parents.by_hash,
        )
        payload = opened.payload
        if not isinstance(payload, ModelUpdate):
            raise TypeError(type(payload).__name__)
        return payload.arrays
    if case == "savez":
        data = path.read_bytes()
        signature = (path.parent / (path.name + ".sig")).read_bytes()
        nacl.signing.VerifyKey(SENDER.public.signing_key).verify(data, signature)
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return [(name, npz[name]) for name in npz.files]
    if case == "flower":
        return _flower_open(path)
    raise ValueError(case)


def _flower_pack(arrays: Arrays, path: Path) -> Path:
    """ArrayRecord -> Flower's deflated objects (what push_objects sends) -> zstd-3 file.

    Framing: for each object in Flower's post-order, a 4-byte big-endian length and its
    deflated content; the root (the record) comes last.
    """
    from flwr.app import Array, ArrayRecord
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    record = ArrayRecord({name: Array(arr) for name, arr in arrays})
    objects = get_all_nested_objects(record)
    compressor = zstandard.ZstdCompressor(level=FLOWER_LEVEL)
    with open(path, "wb") as f:
        with compressor.stream_writer(f, closefd=False) as writer:
            for obj in objects.values():
                content = obj.deflate()
                writer.write(struct.pack(">I", len(content)))
                writer.write(content)
        f.flush()
        os.fsync(f.fileno())
    return path


def _flower_open(path: Path) -> Arrays:
    from flwr.app import ArrayRecord
    from flwr.supercore.inflatable.inflatable_object import get_object_id
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    with open(path, "rb") as f:
        data = zstandard.ZstdDecompressor().stream_reader(f).read()
    contents: dict[str, bytes] = {}
    view = memoryview(data)
    pos = 0
    root = ""
    while pos < len(view):
        (length,) = struct.unpack(">I", view[pos : pos + 4])
        content = bytes(view[pos + 4 : pos + 4 + length])
        pos += 4 + length
        root = get_object_id(content)  # Flower's object store checks ids the same way
        contents[root] = content
    del view, data
    record = inflate_object_from_contents(root, contents)
    if not isinstance(record, ArrayRecord):
        raise TypeError(type(record).__name__)
    return [(name, array.numpy()) for name, array in record.items()]


# ---------------------------------------------------------------------------- memory


def child_main(spec: dict[str, Any]) -> None:
    """Run one operation in this fresh process and print its peak RSS growth as JSON."""
    case, op, size_mb = spec["case"], spec["op"], spec["size_mb"]
    delta = "delta" in case
    arrays, parent_arrays = make_inputs(size_mb, delta)
    parents = parent_maps(parent_arrays)
    payload = raw_bytes(arrays)
    if op == "open":
        del arrays  # opening starts from the file (and, for a delta, the parent model)
    if case == "flower":
        # Flower's import cost is not the memory of the operation.
        importlib.import_module("flwr.app")
        importlib.import_module("flwr.supercore.inflatable.inflatable_utils")
    peak = Peak()
    if op == "pack":
        pack_case(case, arrays, parents, Path(spec["dir"]))
    else:
        result = open_case(case, Path(spec["path"]), parents)
        if raw_bytes(result) != payload:
            raise RuntimeError("opened model has the wrong size")
    print(json.dumps({"extra": peak.extra_bytes() / payload, "method": peak.method}))


def measure_memory(spec: dict[str, Any]) -> tuple[float, str]:
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory child failed for {spec}:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return float(result["extra"]), str(result["method"])


# ---------------------------------------------------------------------------- timing


def median_seconds(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_case(case: str, size_mb: float, repeat: int, root: Path, memory: bool) -> dict[str, Any]:
    arrays, parent_arrays = make_inputs(size_mb, "delta" in case)
    parents = parent_maps(parent_arrays)
    payload = raw_bytes(arrays)
    directory = root / case
    last: list[Path] = []

    def pack() -> None:
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir()
        last[:] = [pack_case(case, arrays, parents, directory)]

    pack_s = median_seconds(pack, repeat)
    path = last[0]
    opened = open_case(case, path, parents)
    if len(opened) != len(arrays) or not all(
        name == name2 and np.array_equal(a, b)
        for (name, a), (name2, b) in zip(arrays, opened, strict=True)
    ):
        raise RuntimeError(f"{case}: the opened model differs from the packed one")
    del opened
    open_s = median_seconds(lambda: open_case(case, path, parents), repeat)
    row: dict[str, Any] = {
        "case": case,
        "label": CASES[case],
        "raw_bytes": payload,
        "file_bytes": sum(p.stat().st_size for p in directory.iterdir()),
        "pack_mb_s": payload / MB / pack_s,
        "open_mb_s": payload / MB / open_s,
    }
    if memory:
        common = {"case": case, "size_mb": size_mb}
        scratch = root / f"{case}-mem"
        scratch.mkdir()
        row["pack_mem"], method = measure_memory({**common, "op": "pack", "dir": str(scratch)})
        shutil.rmtree(scratch)
        row["open_mem"], _ = measure_memory({**common, "op": "open", "path": str(path)})
        row["mem_method"] = method
    if parents is not None:
        row["zstd_same_level_bytes"] = _zstd_size(arrays, DEFAULT_LEVEL)
        row["zstd_level3_bytes"] = _zstd_size(arrays, 3)
    return row


def _zstd_size(arrays: Arrays, level: int) -> int:
    """Plain zstd (one frame, one thread) of the arrays' raw bytes, streamed."""
    compressor = zstandard.ZstdCompressor(level=level).compressobj()
    size = 0
    for _, arr in arrays:
        size += len(compressor.compress(arr.reshape(-1).view(np.uint8).data))
    return size + len(compressor.flush())


def bench_references(size_mb: float, repeat: int) -> dict[str, float]:
    """SHA-256 and one-thread zstd (level 3, and the bundle level) over the raw bytes."""
    arrays, _ = make_inputs(size_mb, False)
    data = b"".join(arr.tobytes() for _, arr in arrays)
    mb = len(data) / MB
    result = {"sha256_mb_s": mb / median_seconds(lambda: hashlib.sha256(data), repeat)}
    for level in sorted({3, DEFAULT_LEVEL}):
        compressor = zstandard.ZstdCompressor(level=level)
        frame = compressor.compress(data)
        decompressor = zstandard.ZstdDecompressor()
        result[f"zstd{level}_compress_mb_s"] = mb / median_seconds(
            lambda c=compressor: c.compress(data), repeat
        )
        result[f"zstd{level}_decompress_mb_s"] = mb / median_seconds(
            lambda d=decompressor, f=frame: d.decompress(f), repeat
        )
    return result


def bench_small(root: Path, iterations: int) -> dict[str, float]:
    """Microseconds (median) for the signature alone and for a whole small bundle."""
    transaction = Transaction(
        sender=SENDER.key_id,
        recipient=RECIPIENT.key_id,
        amount=25,
        nonce=b"\x07" * 16,
        expires_round=12,
        memo="benchmark",
    )
    # The signed message has the shape the envelope signs: domain || SHA-256(...).
    message = b"lltoken/bundle/v1\x00" + hashlib.sha256(b"LLTB\x01header").digest()
    signing_key = nacl.signing.SigningKey(b"\x11" * 32)
    verify_key = signing_key.verify_key
    signature = signing_key.sign(message).signature

    def pack() -> bytes:
        return pack_bytes(transaction, SENDER, federation=FEDERATION, round=7, seq=3)[1]

    packed, data = pack_bytes(transaction, SENDER, federation=FEDERATION, round=7, seq=3)
    path = root / packed.name
    path.write_bytes(data)

    def per_call_us(fn: Callable[[], Any]) -> float:
        for _ in range(20):
            fn()
        return median_seconds(fn, iterations) * 1e6

    return {
        "ed25519_sign_us": per_call_us(lambda: signing_key.sign(message)),
        "ed25519_verify_us": per_call_us(lambda: verify_key.verify(message, signature)),
        "identity_sign_us": per_call_us(lambda: SENDER.sign(message)),
        "identity_verify_us": per_call_us(lambda: SENDER.public.verify(message, signature)),
        "pack_bytes_us": per_call_us(pack),
        "open_bundle_us": per_call_us(lambda: open_bundle(path, KEYRING.get)),
        "bundle_bytes": float(len(data)),
    }


# ---------------------------------------------------------------------------- report


def _versions() -> str:
    import flwr

    zstd = ".".join(map(str, zstandard.ZSTD_VERSION))
    return (
        f"Python {platform.python_version()}, numpy {np.__version__}, zstandard "
        f"{zstandard.__version__} (libzstd {zstd}), pynacl {nacl.__version__}, "
        f"flwr {flwr.__version__}; {os.cpu_count()} CPUs"
    )


def _loadavg() -> str:
    """The 1-minute load average (other processes on these CPUs skew the numbers)."""
    return f"{os.getloadavg()[0]:.2f}"


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def report(results: dict[str, Any]) -> str:
    rows = results["cases"]
    by_case = {row["case"]: row for row in rows}
    lines = [
        f"bundle benchmark: {results['size_mb']:g} MB float32 model update "
        f"({results['values']:,} values, 4 arrays), median of {results['repeat']} runs",
        results["versions"],
        "",
        f"{'case':<30} {'pack MB/s':>9} {'open MB/s':>9} {'file MB':>8} {'file/raw':>8}"
        f" {'pack mem':>8} {'open mem':>8}",
    ]
    for row in rows:
        mem = ""
        if "pack_mem" in row:
            mem = f" {row['pack_mem']:>7.2f}x {row['open_mem']:>7.2f}x"
        lines.append(
            f"{row['label']:<30} {row['pack_mb_s']:>9.0f} {row['open_mb_s']:>9.0f}"
            f" {row['file_bytes'] / MB:>8.1f} {row['file_bytes'] / row['raw_bytes']:>8.3f}{mem}"
        )
    lines.append("")
    plain = by_case["bundle"]
    for other in ("savez", "flower"):
        base = by_case[other]
        lines.append(
            f"bundle vs {CASES[other]:<27}: pack {plain['pack_mb_s'] / base['pack_mb_s']:.2f}x"
            f" faster, open {plain['open_mb_s'] / base['open_mb_s']:.2f}x faster,"
            f" file {base['file_bytes'] / plain['file_bytes']:.3f}x smaller"
        )
    delta = by_case["bundle-delta"]
    delta_ratio = delta["zstd_same_level_bytes"] / delta["file_bytes"]
    lines.append(
        f"delta update: bundle {delta['file_bytes'] / MB:.1f} MB vs plain zstd of the same raw"
        f" bytes at the bundle's level {DEFAULT_LEVEL} {delta['zstd_same_level_bytes'] / MB:.1f}"
        f" MB -> {delta_ratio:.2f}x smaller (at level 3:"
        f" {delta['zstd_level3_bytes'] / MB:.1f} MB -> "
        f"{delta['zstd_level3_bytes'] / delta['file_bytes']:.2f}x)"
    )
    small = results["small"]
    lines += [
        f"small bundle (transaction, {small['bundle_bytes']:.0f} bytes):"
        f" Ed25519 sign {small['ed25519_sign_us']:.1f} us, verify"
        f" {small['ed25519_verify_us']:.1f} us (via Identity/PublicIdentity"
        f" {small['identity_sign_us']:.1f} / {small['identity_verify_us']:.1f} us);"
        f" whole pack_bytes {small['pack_bytes_us']:.0f} us, open_bundle from file"
        f" {small['open_bundle_us']:.0f} us",
    ]
    ref = results["references"]
    zstd = ", ".join(
        f"zstd-{level} compress {ref[f'zstd{level}_compress_mb_s']:.0f} MB/s, decompress"
        f" {ref[f'zstd{level}_decompress_mb_s']:.0f} MB/s"
        for level in sorted({3, DEFAULT_LEVEL})
    )
    lines.append(
        f"reference limits (same raw bytes, one thread): SHA-256 {ref['sha256_mb_s']:.0f}"
        f" MB/s, {zstd}"
    )
    bundles = [row for row in rows if row["case"].startswith("bundle")]
    pack_low = min(row["pack_mb_s"] for row in bundles)
    open_low = min(row["open_mb_s"] for row in bundles)
    signature_high = max(small["ed25519_sign_us"], small["ed25519_verify_us"])
    targets = [
        f"pack >= {TARGET_PACK:.0f} MB/s: {_verdict(pack_low >= TARGET_PACK)} (min {pack_low:.0f})",
        f"open >= {TARGET_OPEN:.0f} MB/s: {_verdict(open_low >= TARGET_OPEN)} (min {open_low:.0f})",
        f"delta >= {TARGET_DELTA}x: {_verdict(delta_ratio >= TARGET_DELTA)}",
        f"sign/verify < {TARGET_SIGNATURE_US:.0f} us:"
        f" {_verdict(signature_high < TARGET_SIGNATURE_US)}",
    ]
    if "pack_mem" in plain:
        mem_high = max(max(row["pack_mem"], row["open_mem"]) for row in bundles)
        targets.insert(
            2,
            f"memory <= {TARGET_MEMORY}x: {_verdict(mem_high <= TARGET_MEMORY)}"
            f" (max {mem_high:.2f}x, {plain['mem_method']})",
        )
    lines.append("targets (bundle rows): " + "; ".join(targets))
    lines.append(
        "notes: MB = 10^6 bytes of raw array data; mem = extra peak RSS / raw size, each"
        f" in a fresh process; bundles use zstd level {DEFAULT_LEVEL} (their default), Flower"
        f" zstd level {FLOWER_LEVEL}, savez zlib; all on one thread; load average at start"
        f" {results['load_before']}, at end {results['load_after']}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=100.0, help="model size in MB")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement")
    parser.add_argument("--small-iterations", type=int, default=500)
    parser.add_argument("--no-memory", action="store_true", help="skip the memory children")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated cases")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return 0
    cases = [case for case in CASES if case in args.cases.split(",")]
    root = Path(tempfile.mkdtemp(prefix="bench-bundle-"))
    try:
        results: dict[str, Any] = {
            "size_mb": args.size_mb,
            "repeat": args.repeat,
            "values": int(args.size_mb * MB) // 4,
            "versions": _versions(),
            "load_before": _loadavg(),
            "cases": [
                bench_case(case, args.size_mb, args.repeat, root, not args.no_memory)
                for case in cases
            ],
            "small": bench_small(root, args.small_iterations),
            "references": bench_references(args.size_mb, args.repeat),
        }
        results["load_after"] = _loadavg()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    elif set(cases) == set(CASES):
        print(report(results))
    else:
        for row in results["cases"]:
            print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
