"""Fixtures for spool tests: two real homes that know each other."""

from __future__ import annotations

from pathlib import Path

import pytest

from bundle.keys import Identity
from tests.spool.nodes import Node, make_node


@pytest.fixture
def identities() -> tuple[Identity, Identity, Identity]:
    return Identity.generate(), Identity.generate(), Identity.generate()


@pytest.fixture
def pair(tmp_path: Path, identities: tuple[Identity, Identity, Identity]) -> tuple[Node, Node]:
    coord, agent, _ = identities
    known = {coord.key_id: coord.public, agent.key_id: agent.public}
    return (
        make_node(tmp_path / "coord", coord, known),
        make_node(tmp_path / "agent", agent, known),
    )
