"""robot-policy replay store=STORE episode=N target=sim|ros2 mode=actions|states [out=DIR] [key=value ...]

Replays one recorded episode and says how well it reproduces:

  target=sim mode=actions   the recorded actions open loop from the recorded first state (reset_to)
  target=sim mode=states    every step's recorded simulator state through reset_to
  target=ros2               the recorded actions to the simulated robot over ROS 2 (sim_robot_node on loopback
                            DDS), through the runtime's safety filter, after a safe move to the first target

Refuses an episode whose embodiment differs from the target's. Writes DIR/replay.json (success, per-joint
tracking error RMS and max in rad: measured joint position one control period after each command, against
the command), DIR/tracking.png (commanded against measured, per joint) and DIR/replay.mp4.
"""

from __future__ import annotations

from robot_policy.cli.common import ConfigError, fail, parse_overrides, verb_help

SUMMARY = "replay a recorded episode in sim or to the ROS 2 sim robot; tracking error, plot, video"


def main(argv: list[str]) -> int:
    from robot_policy.pipelines.replay import ReplayConfig, run_replay

    if "--help" in argv or "-h" in argv:
        print(verb_help(__doc__ or "", ReplayConfig))
        return 0
    try:
        cfg = parse_overrides(ReplayConfig, argv, "replay")
    except (ConfigError, ValueError) as e:
        return fail(str(e))
    try:
        summary = run_replay(cfg)
    except (ValueError, IndexError, FileNotFoundError, RuntimeError, TimeoutError) as e:
        return fail(str(e), code=1)
    rms, mx = summary["tracking_rms_mean_rad"], summary["tracking_max_overall_rad"]
    state = summary["state_max_error"]
    print(f"replay episode {cfg.episode} ({cfg.target}, by {cfg.mode}): {summary['steps']} steps, "
          f"success {summary['success']} (recorded {summary['recorded_success']}), tracking error "
          f"mean RMS {rms:.3g} rad, max {mx:.3g} rad" + (f", state error max {state:.3g}" if state is not None else ""))
    for key in ("plot", "video"):
        if key in summary:
            print(f"wrote {summary[key]}")
    return 0
