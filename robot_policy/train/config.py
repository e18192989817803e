"""The training config as the CLI and the demo build it: ``configs/train.yaml`` + overrides -> typed configs."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from omegaconf import MISSING, OmegaConf

from robot_policy.configuration import ConfigError, compose, merge_schemas, to_dataclass
from robot_policy.data.store import EpisodeStore
from robot_policy.models.rdt import RDTConfig, policy_config_from_dict

if TYPE_CHECKING:
    from robot_policy.train.loop import TrainConfig


@dataclass
class DatasetOptions:
    """``dataset.*`` of ``robot-policy train``: the stores, as TrainConfig.datasets."""

    #: one episode store
    path: str = ""
    #: several stores (multi-task), instead of path
    paths: list[str] = field(default_factory=list)
    #: sampling weight per store in paths; empty = equal
    weights: list[float] = field(default_factory=list)


@dataclass
class TrainCLIOptions:
    """What ``robot-policy train`` adds to TrainConfig: its config groups, and the stores as dataset.*."""

    #: the task: its name must be the stores' task; its cameras are the default cameras
    task: dict[str, Any] = MISSING
    #: the policy config; override its keys as policy.KEY=VALUE, e.g. policy.depth=4
    policy: RDTConfig = MISSING
    #: the episode stores to train on
    dataset: DatasetOptions = field(default_factory=DatasetOptions)
    #: cameras the policy sees; null = the policy config's cameras if it names any, else the task's; [] = state only
    cameras: list[str] | None = None


@functools.cache
def train_schema() -> type:
    """The options of ``robot-policy train``: TrainCLIOptions + TrainConfig (less ``datasets``), the Hydra
    structured config that ``configs/train.yaml`` starts from."""
    from robot_policy.train.loop import TrainConfig

    return merge_schemas("TrainOptions", TrainCLIOptions, TrainConfig, drop=("datasets",))


def parse_train_config(argv: list[str], schema: type | None = None) -> tuple[TrainConfig, RDTConfig]:
    """Compose ``configs/train.yaml`` with ``argv``'s overrides into the training and policy configs.

    ``schema`` defaults to :func:`train_schema` (the task as a mapping: this layer does not import the env
    layer); the CLI passes one with the task typed, so a task key is checked in the same compose.

    Refuses what does not fit, naming both sides: ``dataset.path`` together with ``dataset.paths``, and a
    ``task=`` other than the task a store records (leave ``task=`` out to mix stores of several tasks).
    ``cameras: null`` means the policy config's cameras when it names any (an image policy), else the task's.
    """
    from robot_policy.train.loop import TrainConfig

    raw = OmegaConf.to_container(compose("train", argv, schema=schema or train_schema()), resolve=True)
    assert isinstance(raw, dict)
    task = raw.pop("task")
    policy = policy_config_from_dict(raw.pop("policy"), where="policy")
    paths, weights = _dataset_paths(raw.pop("dataset"))
    if not raw.get("out"):
        raise ConfigError("out: give the run directory, e.g. out=runs/lift")
    if _chooses_task(argv):
        check_store_tasks(str(task["name"]), paths)
    if raw.get("cameras") is None:
        raw["cameras"] = list(policy.obs_encoder.cameras) or list(task.get("cameras") or [])
    raw["datasets"] = [{"path": p, "weight": w} for p, w in zip(paths, weights)]
    return to_dataclass(TrainConfig, raw, "train"), policy


def _dataset_paths(dataset: dict[str, Any]) -> tuple[list[str], list[float]]:
    """The stores and their weights from ``dataset.path`` or ``dataset.paths`` (one of them, not both)."""
    path, paths = dataset.get("path"), list(dataset.get("paths") or [])
    if path and paths:
        raise ConfigError(f"dataset.path={path} and dataset.paths={paths} are both given: use dataset.path for "
                          "one store or dataset.paths for several (add the first to the list)")
    paths = paths or ([path] if path else [])
    if not paths:
        raise ConfigError("dataset.path: give the episode store to train on (or dataset.paths=[...])")
    weights = list(dataset.get("weights") or [1.0] * len(paths))
    if len(weights) != len(paths):
        raise ConfigError(f"dataset.weights has {len(weights)} entries for {len(paths)} stores")
    return [str(p) for p in paths], [float(w) for w in weights]


def _chooses_task(argv: list[str]) -> bool:
    """Whether the command names a task (``task=X``); without one the config's default task only supplies
    defaults, and stores of any task train (as a multi-task mixture)."""
    return any(arg.split("=", 1)[0].lstrip("+~") == "task" for arg in argv)


def check_store_tasks(task: str, paths: list[str]) -> None:
    """Every store must record ``task`` (a store that records no task, e.g. an import, passes)."""
    problems = []
    for path in paths:
        store = EpisodeStore.open(path)
        recorded = (store.attrs.get("task") or {}).get("name")
        if recorded is not None and recorded != task:
            problems.append(f"{path} records task {recorded}")
    if problems:
        raise ConfigError(f"task={task}, but {'; '.join(problems)}: pass the stores' task, or leave task= out "
                          "to train on stores of several tasks")
