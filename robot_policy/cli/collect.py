"""robot-policy collect task=<task> source=scripted episodes=N out=PATH [key=value ...]

Records demonstrations into a zarr episode store through the streaming writer, with a progress bar, and
prints the expert's success rate at the end. Task options are overridable too, e.g.
`task.cameras=[front]` or `task.randomization.obs_noise_std=0.005`.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from robot_policy.cli.common import ConfigError, compose, fail, to_dataclass, verb_help

SUMMARY = "record scripted demonstrations of a sim task into an episode store"


def main(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print(verb_help("collect", __doc__ or "", "collect"))
        return 0
    from robot_policy.envs.registry import task_config_from_dict
    from robot_policy.pipelines.collect import CollectConfig, collect

    try:
        raw = OmegaConf.to_container(compose("collect", argv), resolve=True)
        assert isinstance(raw, dict)
        task = task_config_from_dict(raw.pop("task"), where="task")
        cfg = to_dataclass(CollectConfig, raw, "collect")
    except (ConfigError, ValueError, KeyError) as e:
        return fail(str(e))
    try:
        summary = collect(task, cfg)
    except (RuntimeError, ValueError) as e:
        return fail(str(e), code=1)
    print(f"wrote {summary['episodes_written']} episodes ({summary['steps']} steps) to {summary['out']} "
          f"in {summary['elapsed_s']:.1f} s")
    print(f"expert success: {summary['expert_successes']}/{summary['attempts']} = "
          f"{summary['expert_success_rate']:.1%} (95% CI {summary['ci95_low']:.1%}-{summary['ci95_high']:.1%}), "
          f"seeds {summary['first_seed']}-{summary['last_seed']}")
    return 0
