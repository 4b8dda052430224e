"""Two real homes (a 'coordinator' and an 'agent') and a real handler for spool tests."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bundle.envelope import OpenedBundle
from bundle.errors import LLTokenError, SchemaError
from bundle.keys import Identity, PublicIdentity
from bundle.payloads import EvalResult, Payload
from spool.home import Outcome, SpoolHome
from spool.state import connect

FEDERATION = bytes(range(16))


@dataclass
class RecordingHandler:
    """Accepts every bundle from known senders and records it in its own table, in the
    ingest transaction, so double-processing would show as a duplicate row."""

    conn: sqlite3.Connection
    known: dict[bytes, PublicIdentity]
    round: int = 0
    refuse_kinds: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS handled (bundle_id BLOB, kind TEXT, sender BLOB)"
        )

    def keyring(self, key_id: bytes) -> PublicIdentity | None:
        return self.known.get(key_id)

    def current_round(self) -> int:
        return self.round

    def parents(self) -> Mapping[bytes, np.ndarray[Any, Any]]:
        return {}

    def handle(self, bundle: OpenedBundle) -> Outcome:
        self.conn.execute(
            "INSERT INTO handled VALUES (?, ?, ?)",
            (bundle.bundle_id, bundle.header.kind, bundle.header.sender),
        )
        if bundle.header.kind in self.refuse_kinds:
            raise SchemaError("handler refuses this kind", found=bundle.header.kind)
        return Outcome("accepted")

    def refused(self, bundle: OpenedBundle, error: LLTokenError) -> None:
        self.conn.execute(
            "INSERT INTO handled VALUES (?, ?, ?)",
            (bundle.bundle_id, "refused", bundle.header.sender),
        )

    def handled(self) -> list[tuple[bytes, str, bytes]]:
        return self.conn.execute("SELECT bundle_id, kind, sender FROM handled").fetchall()


@dataclass
class Node:
    home: SpoolHome
    handler: RecordingHandler
    identity: Identity


def make_node(root: Path, identity: Identity, known: dict[bytes, PublicIdentity]) -> Node:
    conn = connect(root / "state.db")
    home = SpoolHome(root / "spool", conn, identity, FEDERATION)
    return Node(home, RecordingHandler(conn, known), identity)


def small_payload(round: int = 1) -> Payload:
    return EvalResult(round, b"\x11" * 32, 10, {"accuracy": 0.5})


def send(node: Node, to: Node, payload: Payload | None = None, **kwargs: Any) -> Path:
    with node.home.transaction():
        packed = node.home.send(payload or small_payload(), to=[to.identity.public], **kwargs)
    assert packed.path is not None
    return packed.path


def deliver(path: Path, to: Node) -> Path:
    """What a courier does on one host: copy the file into the receiver's inbox."""
    dest = to.home.dirs.inbox / path.name
    dest.write_bytes(path.read_bytes())
    return dest
