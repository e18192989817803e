"""robot-policy collect task=<task> source=scripted episodes=N out=PATH [key=value ...]

Records demonstrations into a zarr episode store through the streaming writer, with a progress bar, and
prints the expert's success rate at the end. Task options are overridable too, e.g.
`task.cameras=[front]` or `task.randomization.obs_noise_std=0.005`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from robot_policy.cli.common import ConfigError, compose, fail, to_dataclass, verb_help

if TYPE_CHECKING:
    from robot_policy.envs.base import TaskConfig
    from robot_policy.pipelines.collect import CollectConfig

SUMMARY = "record scripted demonstrations of a sim task into an episode store"


def main(argv: list[str]) -> int:
    from robot_policy.cli.options import collect_schema

    if "--help" in argv or "-h" in argv:
        print(verb_help(__doc__ or "", collect_schema(), "collect"))
        return 0
    from robot_policy.pipelines.collect import collect

    try:  # every value typed before anything touches the store: seed=foo fails here
        task, cfg = parse_collect_config(argv)
    except (ConfigError, ValueError, KeyError) as e:
        return fail(str(e))
    try:
        summary = collect(task, cfg)
    except (RuntimeError, ValueError) as e:
        return fail(str(e), code=1)
    print(_describe(summary, cfg.episodes))
    return 0


def parse_collect_config(argv: list[str]) -> tuple[TaskConfig, CollectConfig]:
    """``configs/collect.yaml`` + overrides -> (task, CollectConfig), every value of its field's type."""
    from robot_policy.cli.options import collect_schema
    from robot_policy.envs.registry import task_config_from_dict
    from robot_policy.pipelines.collect import CollectConfig

    raw = OmegaConf.to_container(compose("collect", argv, schema=collect_schema()), resolve=True)
    assert isinstance(raw, dict)
    task = task_config_from_dict(raw.pop("task"), where="task")
    return task, to_dataclass(CollectConfig, raw, "collect")


def _describe(summary: dict[str, Any], episodes: int) -> str:
    """What the run did to the store, in the terms of ``episodes=N`` (the size the store ends with)."""
    out, existing, recorded = summary["out"], summary["existing_episodes"], summary["recorded_seeds"]
    seeds = f" (seeds {recorded[0]}-{recorded[1]})" if recorded else ""
    if summary["attempts"] == 0:
        return f"{out} holds {existing} episodes{seeds}, episodes={episodes}: nothing to do (raise episodes= to add more)"
    did = (f"{out} held {existing} episodes{seeds}; added {summary['episodes_written']} to reach "
           f"{summary['store_episodes']}" if existing else f"wrote {summary['episodes_written']} episodes to {out}")
    return (f"{did} ({summary['steps']} steps in {summary['elapsed_s']:.1f} s)\n"
            f"expert success: {summary['expert_successes']}/{summary['attempts']} = "
            f"{summary['expert_success_rate']:.1%} (95% CI {summary['ci95_low']:.1%}-{summary['ci95_high']:.1%}), "
            f"seeds {summary['first_seed']}-{summary['last_seed']}")
