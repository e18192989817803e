"""robot-policy eval task=<task> policy=<name or checkpoint dir> episodes=N seed=S out=DIR [key=value ...]

Runs the policy on seeds S..S+N-1 in parallel worker processes, executing each chunk for
`execute_horizon` steps, and writes DIR/eval.json (success rate with a 95% Wilson interval, mean episode
length, per-episode results) and mp4 videos of the first `videos` episodes. Policies: `scripted`,
`random`, or a checkpoint directory written by `robot-policy train`.
"""

from __future__ import annotations

from pathlib import Path

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

SUMMARY = "evaluate a policy on held-out seeds: eval.json with a 95% interval, videos"


def main(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print(verb_help("eval", __doc__ or "", "eval"))
        return 0
    from robot_policy.envs.registry import task_config_from_dict
    from robot_policy.eval.harness import EvalConfig, evaluate

    overrides, policy = pop_override(argv, "policy")
    try:
        raw = OmegaConf.to_container(compose("eval", overrides), resolve=True)
        assert isinstance(raw, dict)
        policy = policy or raw.pop("policy")
        raw.pop("policy", None)
        if Path(str(policy)).exists():  # a checkpoint or run directory: pin the step directory it means now
            from robot_policy.models.checkpoint import resolve_checkpoint

            policy = str(resolve_checkpoint(str(policy)))
        task = task_config_from_dict(raw.pop("task"), where="task")
        if not raw.get("out"):
            raw["out"] = str(Path("runs/eval") / f"{task.name}-{Path(str(policy)).name}")
        cfg = to_dataclass(EvalConfig, raw, "eval")
    except (ConfigError, ValueError, KeyError, RuntimeError) as e:  # CheckpointError is a RuntimeError
        return fail(str(e))
    try:
        report = evaluate(task, str(policy), cfg, policy_name=str(policy), command=command_line("eval", argv))
    except (KeyError, ValueError, FileNotFoundError, RuntimeError) as e:
        return fail(str(e), code=1)
    print(f"{report['task']} / {report['policy']}: success {report['successes']}/{report['episodes']} = "
          f"{report['success_rate']:.1%} (95% CI {report['ci95_low']:.1%}-{report['ci95_high']:.1%}), "
          f"mean episode length {report['mean_episode_length']:.1f}, seeds {report['seed']}-"
          f"{report['seed'] + report['episodes'] - 1}")
    print(f"wrote {Path(cfg.out) / 'eval.json'}" + (f" and {cfg.videos} videos" if cfg.videos else ""))
    return 0
