"""The agent side: identity, tasks, training through a Flower ClientApp, wallet.

``Agent`` is the home (``init`` / ``open`` / ``inspect``) and the spool's ingest handler;
``agent.cli`` is the ``lltoken-agent`` command line over it.
"""

from agent.home import (
    DEFAULT_APP,
    Agent,
    AgentConfig,
    Invite,
    NoTaskError,
    NotFoundError,
    NotPinnedError,
    RosterOffer,
    SentRecord,
    TaskInfo,
    TaskResult,
    Trust,
    parse_invite,
)
from agent.wallet import Balance, HistoryLine, InsufficientFundsError, TransferRecord

__all__ = [
    "DEFAULT_APP",
    "Agent",
    "AgentConfig",
    "Balance",
    "HistoryLine",
    "InsufficientFundsError",
    "Invite",
    "NoTaskError",
    "NotFoundError",
    "NotPinnedError",
    "RosterOffer",
    "SentRecord",
    "TaskInfo",
    "TaskResult",
    "TransferRecord",
    "Trust",
    "parse_invite",
]
