"""robot-policy sil task=TASK policy=CKPT_OR_BUNDLE episodes=N seed=S out=DIR [key=value ...]

Software in the loop over real ROS 2: starts the simulated robot (`sim_robot_node`) and the policy node
(`policy_node`) as separate processes on loopback DDS, runs N episodes through the policy node's lifecycle
(configure once, then activate / deactivate per episode), and writes DIR/eval.json (success with a 95%
Wilson interval, as `robot-policy eval`, plus the control loop's timing and the safety filter's
interventions) and DIR/bag, a rosbag2 (mcap) bag of the joint states, commands and diagnostics. Needs the
ROS 2 wheels and the colcon-built package: `make ros`.
"""

from __future__ import annotations

from robot_policy.cli.common import ConfigError, fail, parse_overrides, verb_help

SUMMARY = "software in the loop: sim robot + policy node over ROS 2 on loopback, eval.json and a rosbag2 bag"


def main(argv: list[str]) -> int:
    from robot_policy.pipelines.sil import SilConfig, run_sil

    if "--help" in argv or "-h" in argv:
        print(verb_help(__doc__ or "", SilConfig))
        return 0
    try:
        cfg = parse_overrides(SilConfig, argv, "sil")
    except ConfigError as e:
        return fail(str(e))
    except (ValueError, FileNotFoundError) as e:
        return fail(str(e))
    try:
        summary = run_sil(cfg)
    except FileExistsError as e:
        return fail(str(e))
    except (RuntimeError, TimeoutError) as e:
        return fail(str(e), code=1)
    print(f"sil {summary['task']}: {summary['successes']}/{summary['episodes']} = {100 * summary['success_rate']:.1f}% "
          f"(95% CI {100 * summary['ci95_low']:.1f}-{100 * summary['ci95_high']:.1f}%), bag {summary['bag']}")
    print(f"wrote {cfg.out}/eval.json")
    return 0
