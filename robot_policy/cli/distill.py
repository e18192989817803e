"""robot-policy distill teacher=CKPT task=TASK out=DIR steps=1|2 [dataset=STORE] [key=value ...]

Distils a trained diffusion policy into a 1- or 2-step student: the teacher's network, warm-started from
its weights, trained so that DDIM with `steps` calls from an initial noise w gives the teacher's chunk from
the same w (loss=same_noise; loss=ctm: consistency-trajectory + denoising). student_depth=N makes the student
a shallower copy (N of the teacher's blocks, its other weights as they are): a cheaper denoiser call. States:
every window of the demonstration store (the one the teacher records, or dataset=STORE) and of
`rollout_episodes` teacher episodes. A DSRL composite teacher distils its base and pairs the kept noise
actor with the student (DIR/composite); a residual composite teacher is distilled from its successful
rollouts into one student that needs no residual.

Writes DIR/checkpoints (the student: an ordinary diffusion checkpoint sampling ddim with `steps` calls, so
`robot-policy eval policy=DIR/checkpoints/latest` runs it), DIR/metrics.jsonl, DIR/tb (TensorBoard) and, after
evaluating student and teacher on the tuning seeds eval_seed.., DIR/eval_student, DIR/eval_teacher and
DIR/distill_summary.json. Continue a run: resume=true.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from robot_policy.cli.common import ConfigError, command_line, compose, fail, to_dataclass, verb_help

SUMMARY = "distil a diffusion policy (or a fine-tuned composite) into a 1- or 2-step student"


@functools.cache
def distill_schema() -> type:
    """The options of ``robot-policy distill``: the task group, DistillConfig and DistillRunConfig, flat."""
    from robot_policy.algorithms.distill import DistillConfig
    from robot_policy.cli.options import TaskChoice
    from robot_policy.configuration import merge_schemas
    from robot_policy.pipelines.distill import DistillRunConfig

    return merge_schemas("DistillOptions", TaskChoice, DistillConfig, DistillRunConfig)


def parse_distill_config(argv: list[str]) -> tuple[Any, Any, Any]:
    """``configs/distill.yaml`` + overrides -> (DistillRunConfig, DistillConfig, TaskConfig)."""
    import dataclasses

    from robot_policy.algorithms.distill import DistillConfig
    from robot_policy.envs.registry import task_config_from_dict
    from robot_policy.pipelines.distill import DistillRunConfig

    raw = OmegaConf.to_container(compose("distill", argv, schema=distill_schema()), resolve=True)
    assert isinstance(raw, dict)
    task = task_config_from_dict(raw.pop("task"), where="task")
    algo_keys = {f.name for f in dataclasses.fields(DistillConfig)}
    algo = to_dataclass(DistillConfig, {k: v for k, v in raw.items() if k in algo_keys}, "distill")
    cfg = to_dataclass(DistillRunConfig, {k: v for k, v in raw.items() if k not in algo_keys}, "distill")
    if not cfg.teacher:
        raise ConfigError("teacher: give the teacher's checkpoint, e.g. teacher=runs/lift/train/checkpoints/latest")
    if not Path(cfg.teacher).exists():
        raise ConfigError(f"teacher={cfg.teacher}: no such checkpoint or run directory")
    if not cfg.out:
        raise ConfigError("out: give the run directory, e.g. out=runs/lift_student1")
    return cfg, algo, task


def main(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print(verb_help(__doc__ or "", distill_schema(), "distill"))
        return 0
    try:
        cfg, algo, task = parse_distill_config(argv)
    except (ConfigError, ValueError, KeyError) as e:
        return fail(str(e))
    from robot_policy.pipelines.distill import distill
    from robot_policy.train.loop import TrainingInterrupted

    try:
        run_dir = distill(cfg, algo, task, command=command_line("distill", argv))
    except TrainingInterrupted as e:  # SIGINT/SIGTERM: the last finished step is saved
        return fail(str(e), code=e.exit_code)
    except KeyboardInterrupt as e:  # before the loop (teacher rollouts), or a second Ctrl-C
        return fail(f"interrupted ({e or 'before training started'}); checkpoints are as the last save left them",
                    code=130)
    except (FileExistsError, FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        return fail(str(e), code=1)
    summary = run_dir / "distill_summary.json"
    depth = f" of depth {algo.student_depth}" if algo.student_depth is not None else ""
    print(f"distilled {cfg.teacher} into a {algo.steps}-step student{depth}; checkpoints in {run_dir / 'checkpoints'}"
          + (f", summary {summary}" if summary.exists() else ""))
    return 0
