"""Contribution quality, reputation and token rewards (pure functions, no I/O).

Quality is measured by the coordinator, never taken from the agent's own report:

* **held-out validation** (when ``[validation] path`` is set): the update's relative loss
  reduction on the coordinator's own data, ``gain = (L_prev - L_update) / L_prev``, mapped
  to ``q = 1 + 4 * gain`` (no change: 1.0; a 25% loss cut: 2.0; making it worse: < 1);
* **agreement with the aggregate** (otherwise): the cosine between the update's step and
  the aggregate's step, times a norm penalty ``min(1, median_norm / norm)`` so a scaled-up
  update cannot buy quality, mapped to ``q = 2 * max(0, cos) * penalty``.

Tokens follow the seed's formula, with its flaws fixed::

    tokens = floor((base * clamp(q, q_min, q_max) + bonus) * reputation)

where ``bonus`` is paid from the ``bonus_streak``-th consecutive round of the same enrolled
identity, nothing is paid when ``q < min_quality_threshold``, and reputation moves every
round: ``r += 0.1 * (clamp(q) - 1)`` for a scored update, ``r -= 0.2`` for a rejected or
invalid bundle, ``r -= 0.05`` for a sampled agent that sent nothing, always within
``[reputation_min, reputation_max]``.  Agents' self-reported metrics are recorded in the
reward entry (capped) and play no part in any of this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from coordinator.config import RewardConfig

REPUTATION_STEP = 0.1
REJECT_PENALTY = 0.2
ABSENT_PENALTY = 0.05


def clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def quality_from_gain(loss_before: float, loss_after: float) -> float:
    """Quality from held-out loss before and after applying the update."""
    if not math.isfinite(loss_after):
        return 0.0
    gain = (loss_before - loss_after) / max(loss_before, 1e-12)
    return 1.0 + 4.0 * gain


def quality_from_agreement(cosine: float, norm: float, median_norm: float) -> float:
    """Quality from the update's agreement with the aggregate step."""
    if not (math.isfinite(cosine) and math.isfinite(norm)):
        return 0.0
    penalty = 1.0 if norm <= median_norm or norm == 0 else median_norm / norm
    return 2.0 * max(0.0, cosine) * penalty


def flat_step(
    arrays: list[tuple[str, np.ndarray[Any, Any]]], base: list[tuple[str, np.ndarray[Any, Any]]]
) -> np.ndarray[Any, Any]:
    """The update's step from ``base`` as one float64 vector."""
    parts = [
        np.asarray(a, dtype=np.float64).ravel() - np.asarray(b, dtype=np.float64).ravel()
        for (_, a), (_, b) in zip(arrays, base, strict=True)
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


def cosine(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


@dataclass(frozen=True)
class Reward:
    """One agent's reward for one round, with everything that went into it."""

    tokens: int
    quality: float
    quality_clamped: float
    bonus: int
    reputation_before: float
    reputation_after: float
    streak: int
    method: str

    def breakdown(self) -> dict[str, Any]:
        return {
            "quality": round(self.quality, 6),
            "quality_clamped": round(self.quality_clamped, 6),
            "bonus": self.bonus,
            "reputation": round(self.reputation_after, 6),
            "reputation_before": round(self.reputation_before, 6),
            "streak": self.streak,
            "method": self.method,
        }


def reward(
    quality: float, reputation: float, streak: int, cfg: RewardConfig, method: str
) -> Reward:
    """Tokens and the new reputation for a scored update (``streak`` includes this round)."""
    q = clamp(quality, cfg.quality_min, cfg.quality_max)
    bonus = cfg.participation_bonus if streak >= cfg.bonus_streak else 0
    if quality < cfg.min_quality_threshold:
        tokens = 0
    else:
        tokens = math.floor((cfg.base_reward_per_round * q + bonus) * reputation)
    after = clamp(reputation + REPUTATION_STEP * (q - 1.0), cfg.reputation_min, cfg.reputation_max)
    return Reward(max(tokens, 0), quality, q, bonus, reputation, after, streak, method)


def penalised(reputation: float, penalty: float, cfg: RewardConfig) -> float:
    return clamp(reputation - penalty, cfg.reputation_min, cfg.reputation_max)


__all__ = [
    "ABSENT_PENALTY",
    "REJECT_PENALTY",
    "Reward",
    "clamp",
    "cosine",
    "flat_step",
    "penalised",
    "quality_from_agreement",
    "quality_from_gain",
    "reward",
]
