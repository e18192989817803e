"""robot-policy finetune rl=residual_ppo|dsrl_sac|dsrl_na base=CKPT task=TASK out=DIR [key=value ...]

Fine-tunes a frozen diffusion policy in simulation with RL: residual PPO (a small per-step residual on the
base's actions) or DSRL (an actor choosing the base's initial noise; SAC, or noise aliasing). Runs until
`total_env_steps` or `max_wall_minutes` is spent, evaluating on tuning seeds every `eval_every` env steps.
Writes DIR/checkpoints (a composite policy: `robot-policy eval policy=DIR/checkpoints/latest` runs it),
DIR/metrics.jsonl, DIR/tb (TensorBoard) and, at the end, DIR/report.md with DIR/curve.png.
Continue a run: resume=true. The algorithm's own options: rl.KEY=VALUE (listed with rl=NAME --help).

robot-policy finetune report DIR [episodes=100 seed=1000000 num_envs=8 checkpoints=0]
evaluates the base and every kept checkpoint (or `checkpoints` of them, evenly spaced) of the run in DIR on held-out seeds (DIR/heldout.json) and
rewrites DIR/report.md and DIR/curve.png with the held-out curve; episodes=0 only rewrites the report.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from robot_policy.cli.common import (
    ConfigError,
    command_line,
    compose,
    fail,
    pop_override,
    to_dataclass,
    verb_help,
)

SUMMARY = "fine-tune a diffusion policy with RL in simulation (residual PPO, DSRL-SAC, DSRL-NA)"
DEFAULT_RL = "residual_ppo"


@functools.cache
def finetune_schema(rl: str) -> type:
    """The options of ``robot-policy finetune rl=<rl>``: the task group, FinetuneConfig and ``rl.*`` typed as
    that algorithm's config dataclass."""
    from robot_policy.algorithms.registry import ALGORITHMS
    from robot_policy.cli.options import TaskChoice
    from robot_policy.configuration import merge_schemas
    from robot_policy.pipelines.finetune import FinetuneConfig

    if rl not in ALGORITHMS:
        raise ConfigError(f"rl={rl}: unknown algorithm; algorithms: {', '.join(ALGORITHMS)}")
    config_cls = ALGORITHMS[rl][0]
    choice = dataclasses.make_dataclass(
        "RLChoice", [("rl", config_cls, dataclasses.field(default_factory=config_cls,
                                                          metadata={"doc": f"options of {rl}"}))])
    return merge_schemas("FinetuneOptions", TaskChoice, choice, FinetuneConfig, drop=("algorithm",))


def parse_finetune_config(argv: list[str]) -> tuple[Any, Any, Any]:
    """``configs/finetune.yaml`` + overrides -> (FinetuneConfig, TaskConfig, the algorithm's config)."""
    from robot_policy.algorithms.registry import ALGORITHMS
    from robot_policy.envs.registry import task_config_from_dict
    from robot_policy.pipelines.finetune import FinetuneConfig

    overrides, rl = pop_override(argv, "rl")
    rl = rl or DEFAULT_RL
    if any(o.split("=", 1)[0].lstrip("+~") == "algorithm" for o in overrides):
        raise ConfigError("algorithm=...: choose the algorithm with rl=NAME")
    raw = OmegaConf.to_container(compose("finetune", overrides, schema=finetune_schema(rl)), resolve=True)
    assert isinstance(raw, dict)
    task = task_config_from_dict(raw.pop("task"), where="task")
    algo_cfg: Any = to_dataclass(ALGORITHMS[rl][0], raw.pop("rl"), "rl")
    cfg = to_dataclass(FinetuneConfig, {**raw, "algorithm": rl}, "finetune")
    if not cfg.out:
        raise ConfigError("out: give the run directory, e.g. out=runs/finetune/lift")
    if not cfg.base:
        raise ConfigError("base: give the base policy's checkpoint, e.g. base=runs/lift/train/checkpoints/latest")
    if not Path(cfg.base).exists():
        raise ConfigError(f"base={cfg.base}: no such checkpoint or run directory")
    return cfg, task, algo_cfg


@dataclasses.dataclass
class ReportOptions:
    """Options of ``robot-policy finetune report DIR``."""

    #: held-out episodes per checkpoint (seeds seed..seed+episodes-1); 0 = only rewrite the report
    episodes: int = 100
    #: first held-out seed (the reported results' seeds start at 1000000)
    seed: int = 1_000_000
    #: envs stepped in lockstep
    num_envs: int = 8
    #: evaluate at most this many checkpoints, evenly spaced, the last included (0 = every kept one)
    checkpoints: int = 0
    #: show a progress bar
    progress: bool = True


def report_main(argv: list[str]) -> int:
    from robot_policy.configuration import parse_overrides

    if not argv or "=" in argv[0]:
        return fail("usage: robot-policy finetune report DIR [episodes=100 seed=1000000 num_envs=8]")
    run_dir, rest = Path(argv[0]), argv[1:]
    try:
        opts = parse_overrides(ReportOptions, rest, "finetune report")
    except ConfigError as e:
        return fail(str(e))
    if not run_dir.is_dir():
        return fail(f"{run_dir}: no such run directory")
    from robot_policy.pipelines.finetune_report import evaluate_run_checkpoints, write_report

    try:
        if opts.episodes > 0:
            evaluate_run_checkpoints(run_dir, range(opts.seed, opts.seed + opts.episodes), opts.num_envs,
                                     progress=opts.progress, max_checkpoints=opts.checkpoints)
        report = write_report(run_dir)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        return fail(str(e), code=1)
    print(f"wrote {report} and {report.parent / 'curve.png'}")
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "report":
        return report_main(argv[1:])
    if "--help" in argv or "-h" in argv:
        _, rl = pop_override([a for a in argv if a not in ("--help", "-h")], "rl")
        try:
            schema = finetune_schema(rl or DEFAULT_RL)
        except ConfigError as e:
            return fail(str(e))
        print(verb_help(__doc__ or "", schema, "finetune"))
        return 0
    try:
        cfg, task, algo_cfg = parse_finetune_config(argv)
    except (ConfigError, ValueError, KeyError) as e:
        return fail(str(e))
    from robot_policy.pipelines.finetune import FinetuneInterrupted, finetune
    from robot_policy.pipelines.finetune_report import write_report

    try:
        run_dir = finetune(cfg, task, algo_cfg, command=command_line("finetune", argv))
    except FinetuneInterrupted as e:
        return fail(str(e), code=130)
    except (FileExistsError, FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        return fail(str(e), code=1)
    report = write_report(run_dir)
    print(f"fine-tuned {cfg.algorithm}; checkpoints in {run_dir / 'checkpoints'}, report {report}")
    return 0
