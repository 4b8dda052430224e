"""The coordinator's config file: ``<home>/config.toml``, written documented by ``init``.

TOML because operators edit it by hand and Python reads it with the standard library;
``init`` writes it from a commented template so every setting explains itself.
"""

from __future__ import annotations

import importlib
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bundle.errors import SchemaError

STRATEGY_NAMES = (
    "FedAvg",
    "FedProx",
    "FedAvgM",
    "FedAdam",
    "FedYogi",
    "FedAdagrad",
    "FedMedian",
    "FedTrimmedAvg",
    "Krum",
    "MultiKrum",
    "Bulyan",
)


@dataclass(frozen=True)
class RewardConfig:
    """The seed's reward constants (see README "Tokens")."""

    base_reward_per_round: int = 100
    quality_min: float = 0.1
    quality_max: float = 2.0
    participation_bonus: int = 50
    bonus_streak: int = 3
    min_quality_threshold: float = 0.1
    reputation_min: float = 0.0
    reputation_max: float = 2.0
    reputation_start: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.quality_min <= self.quality_max:
            raise SchemaError(
                "reward quality range is inverted",
                expected="0 <= quality_min <= quality_max",
                found=(self.quality_min, self.quality_max),
                where="[rewards]",
            )
        if not self.reputation_min <= self.reputation_start <= self.reputation_max:
            raise SchemaError(
                "reputation_start outside the reputation bounds",
                found=self.reputation_start,
                where="[rewards]",
            )


@dataclass(frozen=True)
class CoordinatorConfig:
    federation_name: str
    federation_id: bytes
    strategy: str = "FedAvg"
    strategy_params: dict[str, Any] = field(default_factory=dict)
    rounds: int = 5
    participants_per_round: int = 0  # 0: every active agent
    quorum: int = 1
    deadline_rounds: int = 1  # updates accepted for this many rounds after a round opens
    deadline_seconds: int = 0  # 0: no wall-clock deadline
    seed: int = 0
    max_num_examples: int = 100_000
    max_weight: float = 1e6
    validation_set: str = ""  # path to an .npz with X and y for held-out quality scoring
    evaluator: str = "agent.example_model:evaluate_arrays"  # (arrays, X, y) -> (loss, acc)
    app: str = "agent.example_app:app"
    initializer: str = "agent.example_model:initial_arrays"
    run_config: dict[str, Any] = field(default_factory=dict)
    initial_allocation: dict[str, int] = field(default_factory=dict)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    encrypt_updates: bool = True

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGY_NAMES:
            raise SchemaError(
                "unknown strategy",
                expected=STRATEGY_NAMES,
                found=self.strategy,
                where="config.toml [federation] strategy",
            )
        for name in ("rounds", "quorum", "deadline_rounds"):
            if getattr(self, name) < 1:
                raise SchemaError(
                    f"{name} must be at least 1", found=getattr(self, name), where="config.toml"
                )
        if not math.isfinite(self.max_weight) or self.max_weight <= 0:
            raise SchemaError(
                "max_weight must be a positive number", found=self.max_weight, where="config.toml"
            )


TEMPLATE = """\
# LL TOKEN OFFLINE coordinator configuration.  Edit, then run `lltoken-coordinator round open`.

[federation]
name = {name!r}
# 16 random bytes in hex; every bundle carries it.  Never change it after agents enroll.
id = "{fid}"
# Flower strategy (flwr.serverapp.strategy): FedAvg, FedProx, FedAvgM, FedAdam, FedYogi,
# FedAdagrad, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan.
strategy = {strategy!r}
# Number of rounds to run; closing a round opens the next until this many have run.
rounds = {rounds}
# Agents sampled per round (0 = every active agent).  Sampling is seeded and reproducible.
participants_per_round = {participants}
# A round may close once this many valid updates arrived ...
quorum = {quorum}
# ... or once this many later rounds were due / this many seconds passed (0 = no clock).
deadline_rounds = 1
deadline_seconds = 0
seed = {seed}
# Encrypt model updates to the coordinator (a lost stick then leaks no gradients).
encrypt_updates = true

[strategy_params]
# Keyword arguments for the strategy's constructor, e.g. for FedProx: proximal_mu = 0.1
# For FedAdam/FedYogi/FedAdagrad: eta = 0.01, tau = 0.001 ...
{strategy_params}

[model]
# The Flower ClientApp agents run (module:attribute), and the initial model.
app = "agent.example_app:app"
# A callable returning the initial [(name, array)] list, or an .npz file path.
initializer = {initializer!r}

[validation]
# Optional held-out set (.npz with arrays X and y) the coordinator uses to measure each
# update's quality itself.  Empty: quality is each update's agreement with the aggregate.
path = {validation!r}
# The function that scores a model on it: module:attribute, (arrays, X, y) -> (loss, acc).
evaluator = "agent.example_model:evaluate_arrays"
# Updates claiming more examples than this are capped (self-reports are never decisive).
max_num_examples = 100000
# Model weights beyond this magnitude are refused as invalid.
max_weight = 1000000.0

[run_config]
# Delivered to every agent's ClientApp as context.run_config (Flower's run config).
{run_config}

[rewards]
# tokens = floor((base * clamp(q, quality_min, quality_max) + bonus) * reputation)
base_reward_per_round = 100
quality_min = 0.1
quality_max = 2.0
# Bonus for `bonus_streak` or more consecutive rounds by the same enrolled identity.
participation_bonus = 50
bonus_streak = 3
# Updates measured below this quality earn nothing (and lower the agent's reputation).
min_quality_threshold = 0.1
reputation_min = 0.0
reputation_max = 2.0
reputation_start = 1.0

[initial_allocation]
# Tokens credited at enrollment, by agent name, e.g. alice = 1000
"""


def _toml_table(values: dict[str, Any]) -> str:
    lines = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        else:
            text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines.append(f"{key} = {text}")
    return "\n".join(lines)


def render(
    name: str,
    federation_id: bytes,
    *,
    strategy: str = "FedAvg",
    strategy_params: dict[str, Any] | None = None,
    rounds: int = 5,
    participants: int = 0,
    quorum: int = 1,
    seed: int = 0,
    initializer: str = "agent.example_model:initial_arrays",
    validation: str = "",
    run_config: dict[str, Any] | None = None,
) -> str:
    """The documented config file for a new federation."""
    return TEMPLATE.format(
        name=name,
        fid=federation_id.hex(),
        strategy=strategy,
        rounds=rounds,
        participants=participants,
        quorum=quorum,
        seed=seed,
        initializer=initializer,
        validation=validation,
        strategy_params=_toml_table(strategy_params or {}),
        run_config=_toml_table(run_config or {"local-epochs": 5, "lr": 0.1}),
    )


def load(path: Path) -> CoordinatorConfig:
    """Read and validate ``config.toml``.

    Raises:
        SchemaError: unreadable TOML or an invalid setting (the message names it).
    """
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SchemaError(f"cannot read config: {e}", where=str(path)) from e
    try:
        fed = doc["federation"]
        model = doc.get("model", {})
        validation = doc.get("validation", {})
        return CoordinatorConfig(
            federation_name=str(fed["name"]),
            federation_id=bytes.fromhex(fed["id"]),
            strategy=fed.get("strategy", "FedAvg"),
            strategy_params=dict(doc.get("strategy_params", {})),
            rounds=int(fed.get("rounds", 5)),
            participants_per_round=int(fed.get("participants_per_round", 0)),
            quorum=int(fed.get("quorum", 1)),
            deadline_rounds=int(fed.get("deadline_rounds", 1)),
            deadline_seconds=int(fed.get("deadline_seconds", 0)),
            seed=int(fed.get("seed", 0)),
            encrypt_updates=bool(fed.get("encrypt_updates", True)),
            max_num_examples=int(validation.get("max_num_examples", 100_000)),
            max_weight=float(validation.get("max_weight", 1e6)),
            validation_set=str(validation.get("path", "")),
            evaluator=str(validation.get("evaluator", "agent.example_model:evaluate_arrays")),
            app=str(model.get("app", "agent.example_app:app")),
            initializer=str(model.get("initializer", "agent.example_model:initial_arrays")),
            run_config=dict(doc.get("run_config", {})),
            initial_allocation={
                str(k): int(v) for k, v in doc.get("initial_allocation", {}).items()
            },
            rewards=RewardConfig(**doc.get("rewards", {})),
        )
    except (KeyError, ValueError, TypeError) as e:
        raise SchemaError(f"invalid config: {type(e).__name__}: {e}", where=str(path)) from e


def load_callable(ref: str) -> Any:
    """Import ``module:attribute`` (the Flower app, initializer or evaluator).

    Raises:
        SchemaError: the reference is malformed or does not import.
    """
    module_name, _, attribute = ref.partition(":")
    if not module_name or not attribute:
        raise SchemaError("not a module:attribute reference", found=ref)
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as e:
        raise SchemaError(f"cannot load {ref}: {e}") from e


__all__ = ["STRATEGY_NAMES", "CoordinatorConfig", "RewardConfig", "load", "load_callable", "render"]
