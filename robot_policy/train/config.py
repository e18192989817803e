"""The training config as the CLI and the demo build it: ``configs/train.yaml`` + overrides -> typed configs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from robot_policy.configuration import ConfigError, compose, to_dataclass
from robot_policy.models.rdt import RDTConfig, policy_config_from_dict

if TYPE_CHECKING:
    from robot_policy.train.loop import TrainConfig


def parse_train_config(argv: list[str]) -> tuple[TrainConfig, RDTConfig]:
    """Compose ``configs/train.yaml`` with ``argv``'s overrides into the training and policy configs."""
    from robot_policy.train.loop import TrainConfig

    raw = OmegaConf.to_container(compose("train", argv), resolve=True)
    assert isinstance(raw, dict)
    task = raw.pop("task")
    policy = policy_config_from_dict(raw.pop("policy"), where="policy")
    dataset = raw.pop("dataset")
    paths = list(dataset.get("paths") or ([dataset["path"]] if dataset.get("path") else []))
    if not paths:
        raise ConfigError("dataset.path: give the episode store to train on (or dataset.paths=[...])")
    weights = list(dataset.get("weights") or [1.0] * len(paths))
    if len(weights) != len(paths):
        raise ConfigError(f"dataset.weights has {len(weights)} entries for {len(paths)} stores")
    if not raw.get("out"):
        raise ConfigError("out: give the run directory, e.g. out=runs/lift")
    if raw.get("cameras") is None:
        raw["cameras"] = list(task.get("cameras") or [])
    raw["datasets"] = [{"path": p, "weight": w} for p, w in zip(paths, weights)]
    return to_dataclass(TrainConfig, raw, "train"), policy


