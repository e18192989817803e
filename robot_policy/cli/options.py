"""What the verbs add to their library configs: the config groups (typed, where the library takes a plain
mapping), and options whose CLI default depends on another option. Each verb's schema is these plus its library dataclass (whose defaults stay there),
merged by :func:`robot_policy.configuration.merge_schemas` and registered as the Hydra structured config
that its YAML starts from.

Imported only when a verb runs: the task config brings the env layer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from omegaconf import MISSING

from robot_policy.configuration import merge_schemas
from robot_policy.envs.base import TaskConfig


@dataclass
class TaskChoice:
    """The ``task=`` config group."""

    #: the task; override its keys as task.KEY=VALUE, e.g. task.cameras=[front]
    task: TaskConfig = MISSING


@dataclass
class TrainTaskChoice:
    """The ``task=`` config group of ``robot-policy train``, typed. The train layer reads the task as a
    mapping (it does not import the env layer); the CLI checks its keys and values against TaskConfig."""

    #: the task: its name must be the stores' task; its cameras are the default cameras
    task: TaskConfig = MISSING


@dataclass
class EvalCLIOptions:
    """What ``robot-policy eval`` adds to EvalConfig."""

    #: a built-in policy (scripted, random), a checkpoint directory or run directory (its latest checkpoint),
    #: or a deploy bundle directory (robot-policy export)
    policy: str = "scripted"
    #: a deploy bundle's backend: onnxruntime, torch, torch.compile or tensorrt; None = onnxruntime
    backend: str | None = None
    #: output directory; '' = runs/eval/<task>-<policy name>
    out: str = ""


@functools.cache
def collect_schema() -> type:
    """The options of ``robot-policy collect``: the task group + CollectConfig."""
    from robot_policy.pipelines.collect import CollectConfig

    return merge_schemas("CollectOptions", TaskChoice, CollectConfig)


@functools.cache
def eval_schema() -> type:
    """The options of ``robot-policy eval``: the task group, the policy + EvalConfig."""
    from robot_policy.eval.harness import EvalConfig

    return merge_schemas("EvalOptions", TaskChoice, EvalCLIOptions, EvalConfig)


@functools.cache
def train_schema() -> type:
    """The options of ``robot-policy train`` as the CLI reads them: the library's schema
    (:func:`robot_policy.train.config.train_schema`) with the task group typed as TaskConfig, so that a task
    key TaskConfig does not have (``task.max_stepz=3``, ``+task.max_stepz=3``) is an error naming the
    closest valid key, as in collect and eval, rather than a new key of a mapping that training ignores."""
    from robot_policy.train.config import train_schema as library_schema

    return merge_schemas("TrainOptions", TrainTaskChoice, library_schema())
