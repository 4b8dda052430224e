"""Contribution quality, reputation and token rewards (pure functions, no I/O).

Quality is measured by the coordinator, never taken from the agent's own report:

* **held-out validation, leave-one-out** (when ``[validation] path`` is set): how much
  the update improves the (unweighted) mean of the round's updates on the coordinator's own
  data, ``gain = (L_without - L_with) / L_without``, mapped to ``q = 1 + 4 * gain``
  (no effect: 1.0; removing it would cost 25% more loss: about 2.0; it hurts: < 1).
  Judging each update alone against the previous model would punish honest agents with
  skewed (non-IID) data, whose local models are worse than the aggregate on their own;
* **agreement with the aggregate** (otherwise): the cosine between the update's step and
  the aggregate's step, mapped to ``q = 2 * max(0, cos)``.

Both are multiplied by a norm penalty, ``min(1, 2 * median_norm / norm)`` over the
round's steps, so a scaled-up update cannot buy quality by its size.

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
NORM_TOLERANCE = 2.0
REJECT_PENALTY = 0.2
ABSENT_PENALTY = 0.05


def clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def quality_from_gain(loss_without: float, loss_with: float) -> float:
    """Quality from held-out loss without and with the update."""
    if not math.isfinite(loss_with):
        return 0.0
    if not math.isfinite(loss_without):
        return 2.0  # everything else diverged; this update is what saves the mean
    gain = (loss_without - loss_with) / max(loss_without, 1e-12)
    return 1.0 + 4.0 * gain


def norm_penalty(norm: float, median_norm: float) -> float:
    """1 for steps up to twice the round's median size, shrinking beyond: a scaled-up
    (boosted) update cannot buy quality by size."""
    if not math.isfinite(norm):
        return 0.0
    limit = NORM_TOLERANCE * median_norm
    return 1.0 if norm <= limit or norm == 0 else limit / norm


def quality_from_agreement(cosine: float, norm: float, median_norm: float) -> float:
    """Quality from the update's agreement with the aggregate step."""
    if not (math.isfinite(cosine) and math.isfinite(norm)):
        return 0.0
    return 2.0 * max(0.0, cosine) * norm_penalty(norm, median_norm)


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
    "norm_penalty",
    "penalised",
    "quality_from_agreement",
    "quality_from_gain",
    "reward",
]
