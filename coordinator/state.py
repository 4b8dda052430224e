"""The coordinator's tables in ``<home>/state.db`` (beside the spool's own tables).

``agents``          every identity that asked to join: status pending, active, rejected or
                    revoked; its Flower node id; reputation, streak and last round scored;
                    how much of the ledger it has acknowledged.
``rounds``          one row per round: status collecting or closed, the global model hash,
                    the sampled agents and their configs, and the round's summary.
``updates``         one row per (round, agent): the archived update bundle and its status.
``strategy_state``  the Flower strategy's state after each step, so a restart continues the
                    same run.
``deltas``          ledger-delta bundles sent, and the ledger size each brings its agent to.
``meta``            current round, roster version.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    key_id BLOB PRIMARY KEY,
    name TEXT NOT NULL,
    suite TEXT NOT NULL,
    sign_key BLOB NOT NULL,
    box_key BLOB NOT NULL,
    status TEXT NOT NULL,
    node_id INTEGER UNIQUE,
    info TEXT NOT NULL DEFAULT '{}',
    requested_round INTEGER NOT NULL DEFAULT 0,
    reputation REAL NOT NULL,
    streak INTEGER NOT NULL DEFAULT 0,
    last_round INTEGER NOT NULL DEFAULT -1,
    ledger_ack INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY,
    status TEXT NOT NULL,
    model_hash BLOB NOT NULL,
    sampled TEXT NOT NULL,
    opened_at REAL NOT NULL,
    closed_at REAL,
    summary TEXT
);
CREATE TABLE IF NOT EXISTS updates (
    round INTEGER NOT NULL,
    agent BLOB NOT NULL,
    bundle_id BLOB NOT NULL,
    name TEXT NOT NULL,
    num_examples INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    status TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (round, agent)
);
CREATE TABLE IF NOT EXISTS strategy_state (round INTEGER PRIMARY KEY, state BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS deltas (
    bundle_id BLOB PRIMARY KEY, agent BLOB NOT NULL, size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class AgentRow:
    key_id: bytes
    name: str
    suite: str
    sign_key: bytes
    box_key: bytes
    status: str
    node_id: int | None
    info: str
    requested_round: int
    reputation: float
    streak: int
    last_round: int
    ledger_ack: int

    @property
    def short(self) -> str:
        return self.key_id.hex()[:16]


_AGENT_COLUMNS = (
    "key_id, name, suite, sign_key, box_key, status, node_id, info, "
    "requested_round, reputation, streak, last_round, ledger_ack"
)


class CoordinatorState:
    """Typed access to the coordinator's tables (callers own the transactions)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.executescript(SCHEMA)

    # -- meta

    def get(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set(self, key: str, value: Any) -> None:
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO "
            "UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )

    # -- agents

    def agents(self, status: str | None = None) -> list[AgentRow]:
        query = f"SELECT {_AGENT_COLUMNS} FROM agents"
        rows = (
            self.conn.execute(query + " WHERE status = ? ORDER BY name", (status,))
            if status
            else self.conn.execute(query + " ORDER BY name")
        )
        return [AgentRow(*r) for r in rows.fetchall()]

    def agent(self, key_id: bytes) -> AgentRow | None:
        row = self.conn.execute(
            f"SELECT {_AGENT_COLUMNS} FROM agents WHERE key_id = ?", (key_id,)
        ).fetchone()
        return None if row is None else AgentRow(*row)

    def agent_by_node(self, node_id: int) -> AgentRow | None:
        row = self.conn.execute(
            f"SELECT {_AGENT_COLUMNS} FROM agents WHERE node_id = ?", (node_id,)
        ).fetchone()
        return None if row is None else AgentRow(*row)

    def update_agent(self, key_id: bytes, **fields: Any) -> None:
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self.conn.execute(
            f"UPDATE agents SET {assignments} WHERE key_id = ?",
            (*fields.values(), key_id),
        )

    # -- rounds

    def round_row(self, number: int) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT round, status, model_hash, sampled, opened_at, "
            "closed_at, summary FROM rounds WHERE round = ?",
            (number,),
        ).fetchone()
        if row is None:
            return None
        return {
            "round": row[0],
            "status": row[1],
            "model_hash": row[2],
            "sampled": json.loads(row[3]),
            "opened_at": row[4],
            "closed_at": row[5],
            "summary": json.loads(row[6]) if row[6] else None,
        }

    def summaries(self) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT summary FROM rounds WHERE summary IS NOT NULL ORDER BY round"
        ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def updates(self, number: int, status: str | None = None) -> list[dict[str, Any]]:
        query = (
            "SELECT agent, bundle_id, name, num_examples, metrics, status, size FROM "
            "updates WHERE round = ?"
        )
        args: tuple[Any, ...] = (number,)
        if status:
            query += " AND status = ?"
            args += (status,)
        rows = self.conn.execute(query + " ORDER BY agent", args).fetchall()
        return [
            {
                "agent": r[0],
                "bundle_id": r[1],
                "name": r[2],
                "num_examples": r[3],
                "metrics": json.loads(r[4]),
                "status": r[5],
                "size": r[6],
            }
            for r in rows
        ]


__all__ = ["AgentRow", "CoordinatorState"]
