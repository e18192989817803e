"""The RL fine-tuning algorithms by name (``robot-policy finetune rl=<name>``) and their config classes."""

from __future__ import annotations

from typing import Any

from robot_policy.algorithms.dsrl import DSRLNA, DSRLSAC, DSRLConfig
from robot_policy.algorithms.residual_ppo import ResidualPPO, ResidualPPOConfig
from robot_policy.models.frozen_base import FrozenBase

#: name -> (config dataclass, algorithm class)
ALGORITHMS: dict[str, tuple[type, type]] = {
    "residual_ppo": (ResidualPPOConfig, ResidualPPO),
    "dsrl_sac": (DSRLConfig, DSRLSAC),
    "dsrl_na": (DSRLConfig, DSRLNA),
}


def make_algorithm(name: str, cfg: Any, base: FrozenBase, num_envs: int, seed: int,
                   execute_horizon: int | None = None) -> Any:
    """Build algorithm ``name`` with its config ``cfg`` on ``base`` for ``num_envs`` envs."""
    if name not in ALGORITHMS:
        raise KeyError(f"unknown RL algorithm {name!r}; algorithms: {', '.join(ALGORITHMS)}")
    config_cls, algo_cls = ALGORITHMS[name]
    if not isinstance(cfg, config_cls):
        raise TypeError(f"rl={name} takes a {config_cls.__name__}, got {type(cfg).__name__}")
    return algo_cls(cfg, base, num_envs=num_envs, seed=seed, execute_horizon=execute_horizon)
