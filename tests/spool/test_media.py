"""Media sync on plain folders and on a real FAT filesystem (mkfs.vfat + fusefat)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bundle.arrays import model_hash
from bundle.keys import Identity
from bundle.payloads import GlobalModel
from spool.media import find_sticks, sync_media
from tests.spool.nodes import Node, make_node, send

REPO = Path(__file__).resolve().parents[2]
COORD = Identity(b"\x05" * 32, b"\x06" * 32)
AGENT = Identity(b"\x07" * 32, b"\x08" * 32)
KNOWN = {COORD.key_id: COORD.public, AGENT.key_id: AGENT.public}


def fat_tools_present() -> bool:
    return (
        all(shutil.which(t) for t in ("mkfs.vfat", "fusefat", "fusermount"))
        and Path("/dev/fuse").exists()
    )


@pytest.fixture
def fat_image(tmp_path: Path) -> Path:
    if not fat_tools_present():
        if os.environ.get("CI"):
            pytest.fail("CI must install dosfstools and fusefat (see .ci/run)")
        pytest.skip("dosfstools/fusefat not installed")
    image = tmp_path / "stick.img"
    with open(image, "wb") as f:
        f.truncate(96 << 20)
    subprocess.run(["mkfs.vfat", "-n", "LLSTICK", str(image)], check=True, capture_output=True)
    return image


class Mount:
    def __init__(self, image: Path, point: Path) -> None:
        self.image = image
        self.point = point
        point.mkdir(exist_ok=True)

    def __call__(self, writable: bool = True) -> Path:
        options = ["-o", "rw+" if writable else "ro"]
        subprocess.run(
            ["fusefat", *options, str(self.image), str(self.point)], check=True, capture_output=True
        )
        return self.point

    def unmount(self) -> None:
        subprocess.run(["fusermount", "-u", str(self.point)], check=False, capture_output=True)


@pytest.fixture
def fat(fat_image: Path, tmp_path: Path) -> Iterator[Mount]:
    mount = Mount(fat_image, tmp_path / "mnt")
    yield mount
    mount.unmount()


@pytest.fixture
def nodes(tmp_path: Path) -> tuple[Node, Node]:
    return (
        make_node(tmp_path / "coord", COORD, KNOWN),
        make_node(tmp_path / "agent", AGENT, KNOWN),
    )


def roundtrip(coord: Node, agent: Node, stick: Path) -> None:
    sent = send(coord, agent)
    out = sync_media(coord.home, coord.handler, stick)
    assert out.files_out == 1
    assert out.safe_to_remove
    on_stick = list(stick.glob("lltoken/*/*/*/*.llb"))
    assert [p.name for p in on_stick] == [sent.name]

    got = sync_media(agent.home, agent.handler, stick)
    assert got.ingest.accepted == [sent.name]
    assert got.removed_from_stick == 1
    assert len(agent.handler.handled()) == 1
    # The agent's receipt went onto the stick; the coordinator picks it up and clears
    # its outbox copy, and its stick copy is gone too.
    back = sync_media(coord.home, coord.handler, stick)
    assert len(back.ingest.accepted) == 1
    assert not sent.exists()
    assert list(stick.glob("lltoken/*/*/*/*.llb")) == []


def test_roundtrip_on_plain_folder(tmp_path: Path, nodes: tuple[Node, Node]) -> None:
    stick = tmp_path / "stick"
    stick.mkdir()
    roundtrip(*nodes, stick)


def test_roundtrip_on_fat(fat: Mount, nodes: tuple[Node, Node]) -> None:
    roundtrip(*nodes, fat())


def test_read_only_stick_marks_delivered(fat: Mount, nodes: tuple[Node, Node]) -> None:
    coord, agent = nodes
    sent = send(coord, agent)
    sync_media(coord.home, coord.handler, fat())
    fat.unmount()
    stick = fat(writable=False)
    first = sync_media(agent.home, agent.handler, stick)
    assert first.ingest.accepted == [sent.name]
    assert any("read-only" in s["reason"] for s in first.skipped)
    again = sync_media(agent.home, agent.handler, stick)
    assert again.files_in == 0
    assert again.ingest.accepted == []
    assert len(agent.handler.handled()) == 1


def big_model(rows: int = 2500) -> GlobalModel:
    rng = np.random.default_rng(1)
    arrays = [("w", rng.standard_normal((rows, 1000)).astype(np.float32))]
    return GlobalModel(1, model_hash(arrays), arrays)


def test_split_files_travel_as_verified_parts(tmp_path: Path, nodes: tuple[Node, Node]) -> None:
    coord, agent = nodes
    stick = tmp_path / "stick"
    stick.mkdir()
    sent = send(coord, agent, payload=big_model(300))
    size = sent.stat().st_size
    sync_media(coord.home, coord.handler, stick, split_size=size // 3 + 1)
    parts = sorted(p.name for p in stick.glob("lltoken/*/*/*/*"))
    assert parts == [f"{sent.name}.{i:03d}-of-003.part" for i in (1, 2, 3)]
    got = sync_media(agent.home, agent.handler, stick)
    assert got.ingest.accepted == [sent.name]
    assert list(stick.glob("lltoken/*/*/*/*.part")) == []


KILL_MID_COPY = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import spool.media
    from bundle.keys import Identity
    from tests.spool.nodes import make_node

    root, stick = Path(sys.argv[1]), Path(sys.argv[2])
    coord = Identity(b"\\x05" * 32, b"\\x06" * 32)
    agent = Identity(b"\\x07" * 32, b"\\x08" * 32)
    known = {coord.key_id: coord.public, agent.key_id: agent.public}
    real_copy = spool.media._copy_stream

    def copy_then_die(src, dst, length, bar):
        dst.write(src.read(length // 2))
        dst.flush()
        os.fsync(dst.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    spool.media._copy_stream = copy_then_die
    node = make_node(root / "coord", coord, known)
    spool.media.sync_media(node.home, node.handler, stick)
""")


def pulled_mid_copy(tmp_path: Path, nodes: tuple[Node, Node], stick: Path) -> None:
    coord, agent = nodes
    sent = send(coord, agent, payload=big_model())
    coord.home.conn.close()
    child = subprocess.run(
        [sys.executable, "-c", KILL_MID_COPY, str(tmp_path), str(stick)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -9, child.stderr
    partial = list(stick.glob("lltoken/*/*/*/.*.tmp"))
    assert len(partial) == 1
    assert partial[0].stat().st_size < sent.stat().st_size

    early = sync_media(agent.home, agent.handler, stick)
    assert early.files_in == 0
    assert early.ingest.accepted == []
    assert any("incomplete copy" in s["reason"] for s in early.skipped)

    coord = make_node(tmp_path / "coord", COORD, KNOWN)
    again = sync_media(coord.home, coord.handler, stick)
    assert again.files_out == 1
    assert list(stick.glob("lltoken/*/*/*/.*.tmp")) == []
    done = sync_media(agent.home, agent.handler, stick)
    assert done.ingest.accepted == [sent.name]


def test_stick_pulled_mid_copy_plain(tmp_path: Path, nodes: tuple[Node, Node]) -> None:
    stick = tmp_path / "stick"
    stick.mkdir()
    pulled_mid_copy(tmp_path, nodes, stick)


def test_stick_pulled_mid_copy_fat(tmp_path: Path, fat: Mount, nodes: tuple[Node, Node]) -> None:
    pulled_mid_copy(tmp_path, nodes, fat())


def agent_folder(stick: Path, coord: Node, agent: Node) -> Path:
    folder = (
        stick
        / "lltoken"
        / coord.home.federation.hex()
        / agent.identity.key_id.hex()
        / coord.identity.key_id.hex()
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_hostile_stick_contents_are_skipped_with_reasons(
    tmp_path: Path, nodes: tuple[Node, Node]
) -> None:
    coord, agent = nodes
    stick = tmp_path / "stick"
    folder = agent_folder(stick, coord, agent)
    sent = send(coord, agent)
    good = folder / sent.name
    shutil.copy(sent, good)
    fake_hash = "ab" * 32
    (folder / f"eval-result.{fake_hash}.llb").symlink_to("/etc/passwd")
    (folder / "eval-result..%2f..%2fetc.llb").write_bytes(b"x")
    upper = folder / sent.name.replace("eval-result", "EVAL-RESULT")
    shutil.copy(sent, upper)
    sparse = folder / f"global-model.{'cd' * 32}.llb"
    with open(sparse, "wb") as f:
        f.truncate(10 << 30)
    (folder.parent / "not-a-key-id").mkdir()

    summary = sync_media(agent.home, agent.handler, stick)
    reasons = {Path(s["file"]).name: s["reason"] for s in summary.skipped}
    assert "regular file" in reasons[f"eval-result.{fake_hash}.llb"]
    assert "not a valid bundle name" in reasons["eval-result..%2f..%2fetc.llb"]
    assert "not a valid bundle name" in reasons[upper.name]
    assert "limit" in reasons[sparse.name]
    assert "key id" in reasons["not-a-key-id"]
    assert summary.ingest.accepted == [sent.name]
    assert len(agent.handler.handled()) == 1
    assert list(agent.home.dirs.quarantine.iterdir()) == []
    assert Path("/etc/passwd").exists()
    assert sparse.exists()


def test_junk_flood_is_bounded_per_pass(tmp_path: Path, nodes: tuple[Node, Node]) -> None:
    coord, agent = nodes
    stick = tmp_path / "stick"
    folder = agent_folder(stick, coord, agent)
    for i in range(100_000):
        (folder / f"junk{i}").touch()
    summary = sync_media(agent.home, agent.handler, stick, max_files=5_000)
    assert any("more than 5000 files" in s["reason"] for s in summary.skipped)
    assert summary.files_in == 0
    assert agent.handler.handled() == []
    assert list(agent.home.dirs.quarantine.iterdir()) == []


def test_misaddressed_duplicate_and_replaced_bundles(
    tmp_path: Path, nodes: tuple[Node, Node]
) -> None:
    coord, agent = nodes
    stick = tmp_path / "stick"
    folder = agent_folder(stick, coord, agent)
    third = make_node(tmp_path / "third", Identity.generate(), KNOWN)
    misaddressed = send(coord, third)
    shutil.copy(misaddressed, folder / misaddressed.name)
    summary = sync_media(agent.home, agent.handler, stick)
    assert summary.ingest.rejected[0]["error"] == "AddressError"
    # Left on the stick for its rightful recipient; not copied or judged again here.
    repeat = sync_media(agent.home, agent.handler, stick)
    assert repeat.files_in == 0
    assert "already quarantined" in repeat.skipped[0]["reason"]

    old = send(coord, agent, round=1)
    shutil.copy(old, folder / old.name)
    sync_media(agent.home, agent.handler, stick)
    handled = len(agent.handler.handled())
    # Delivered twice: recognised by name, removed from the stick, not handled again.
    shutil.copy(old, folder / old.name)
    again = sync_media(agent.home, agent.handler, stick)
    assert again.files_in == 0
    assert again.removed_from_stick == 1
    # A newer bundle's file whose bytes were replaced by an older bundle: the name no
    # longer matches the content, so the copy is quarantined and nothing is handled.
    newer = send(coord, agent, round=2)
    (folder / newer.name).write_bytes(old.read_bytes())
    replaced = sync_media(agent.home, agent.handler, stick)
    assert replaced.ingest.rejected[-1]["error"] == "IntegrityError"
    assert len(agent.handler.handled()) == handled


def test_find_sticks(tmp_path: Path) -> None:
    (tmp_path / "usb0" / "lltoken").mkdir(parents=True)
    (tmp_path / "usb1").mkdir()
    (tmp_path / "user" / "STICK" / "lltoken").mkdir(parents=True)
    assert find_sticks(tmp_path) == [tmp_path / "usb0", tmp_path / "user" / "STICK"]
