"""robot-policy train task=<task> policy=<config> dataset.path=PATH out=DIR [key=value ...]

Trains an RDT-style diffusion policy on one or more episode stores and writes checkpoint directories
(safetensors + JSON) under DIR/checkpoints, TensorBoard logs under DIR/tb and DIR/metrics.jsonl.
Several stores: dataset.paths=[a.zarr,b.zarr] dataset.weights=[1,1]. Continue a run: resume=true.
Data-parallel: torchrun --nproc_per_node=N -m robot_policy.cli.main train ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from robot_policy.cli.common import ConfigError, command_line, compose, fail, to_dataclass, verb_help

if TYPE_CHECKING:
    from robot_policy.models.rdt import RDTConfig
    from robot_policy.train.loop import TrainConfig

SUMMARY = "train a diffusion policy on episode stores (checkpoints, TensorBoard, resume, DDP)"


def parse(argv: list[str]) -> tuple[TrainConfig, RDTConfig]:
    """Compose ``configs/train.yaml`` with ``argv``'s overrides into the training and policy configs."""
    from robot_policy.models.rdt import policy_config_from_dict
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


def main(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print(verb_help("train", __doc__ or "", "train"))
        return 0
    from robot_policy.train.loop import train

    try:
        cfg, policy = parse(argv)
    except (ConfigError, ValueError, KeyError) as e:
        return fail(str(e))
    try:
        run_dir = train(cfg, policy, command=command_line("train", argv))
    except (FileExistsError, ValueError, KeyError) as e:
        return fail(str(e), code=1)
    print(f"trained {cfg.steps} steps; checkpoints in {run_dir / 'checkpoints'}")
    return 0
