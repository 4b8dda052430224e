"""The offline guard: no code path may open a network socket.

:func:`enforce_offline` runs first in every entry point.  It turns Flower's telemetry and
update check off through their environment switches (Flower reads them at import time,
so this must happen before anything imports ``flwr``), and makes any attempt to connect
or bind an internet socket in this process raise :class:`OfflineError`, so a dependency
that tries to phone home fails loudly instead of leaking.  Unix-domain sockets (used by
some local IPC) stay allowed.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from bundle.errors import LLTokenError

FLOWER_SWITCHES = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
OFFLINE_FLAG = "LLTOKEN_OFFLINE_MODE"
_INTERNET = (socket.AF_INET, socket.AF_INET6)


class OfflineError(LLTokenError):
    """Something tried to use the network in an offline process."""

    exit_code = 60


_original_connect = socket.socket.connect
_original_connect_ex = socket.socket.connect_ex
_original_bind = socket.socket.bind
_original_sendto = socket.socket.sendto


def _refuse(sock: socket.socket, what: str, address: Any) -> None:
    if sock.family in _INTERNET:
        raise OfflineError(
            f"network {what} refused: LL TOKEN OFFLINE never uses the network", found=repr(address)
        )


def _connect(self: socket.socket, address: Any) -> None:
    _refuse(self, "connect", address)
    _original_connect(self, address)


def _connect_ex(self: socket.socket, address: Any) -> int:
    _refuse(self, "connect", address)
    return _original_connect_ex(self, address)


def _bind(self: socket.socket, address: Any) -> None:
    _refuse(self, "bind", address)
    _original_bind(self, address)


def _sendto(self: socket.socket, *args: Any) -> int:
    _refuse(self, "send", args[-1])
    return int(_original_sendto(self, *args))


def enforce_offline() -> None:
    """Switch Flower's phone-home features off and block internet sockets (idempotent)."""
    for key, value in FLOWER_SWITCHES.items():
        os.environ[key] = value
    os.environ[OFFLINE_FLAG] = "1"
    socket.socket.connect = _connect  # type: ignore[method-assign, assignment]
    socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign, assignment]
    socket.socket.bind = _bind  # type: ignore[method-assign, assignment]
    socket.socket.sendto = _sendto  # type: ignore[method-assign, assignment]


def offline_enforced() -> bool:
    return socket.socket.connect is _connect


__all__ = ["FLOWER_SWITCHES", "OfflineError", "enforce_offline", "offline_enforced"]
