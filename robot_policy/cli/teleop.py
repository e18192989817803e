"""robot-policy teleop task=<task> device=keyboard|spacemouse|leader out=PATH [key=value ...]

Teleoperate a simulated task and record the episodes into a zarr episode store through the streaming
writer, at the task's control rate, with the task's instruction. A live status line shows the episode,
the device's state and the sim's success; a viewer window shows the scene where a display exists.

Keyboard (a terminal): w/s a/d r/f move the active arm's end effector along x/y/z of its base frame,
u/o i/k j/l rotate it, space toggles its gripper, tab or 1/2/3 pick the right, left or both arms, +/- scale
the steps; n starts an episode, enter saves it, backspace discards it, q quits. SpaceMouse (hidapi): the
cap moves the end effector, the left button toggles the gripper, the right one switches arms (one device)
or give one device per arm; the keyboard's episode keys apply. Leader arms: a sensor_msgs/JointState topic
(leader.topic) mapped joint by joint onto the followers within their limits; episode keys as above.

events=FILE replays a recorded stream of the device's raw input (keys, HID reports) as fast as the sim
runs; record_events=FILE writes one from a live session. A discarded episode leaves nothing in the store.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from robot_policy.cli.common import ConfigError, compose, fail, to_dataclass, verb_help

if TYPE_CHECKING:
    from robot_policy.envs.base import TaskConfig
    from robot_policy.pipelines.teleop import TeleopConfig

SUMMARY = "teleoperate a sim task (keyboard, SpaceMouse, leader arms) into an episode store"


@functools.cache
def teleop_schema() -> type:
    """The options of ``robot-policy teleop``: the task group + TeleopConfig."""
    from robot_policy.cli.options import TaskChoice
    from robot_policy.configuration import merge_schemas
    from robot_policy.pipelines.teleop import TeleopConfig

    return merge_schemas("TeleopOptions", TaskChoice, TeleopConfig)


def parse_teleop_config(argv: list[str]) -> tuple[TaskConfig, TeleopConfig]:
    """``configs/teleop.yaml`` + overrides -> (task, TeleopConfig), every value of its field's type."""
    from robot_policy.envs.registry import task_config_from_dict
    from robot_policy.pipelines.teleop import TeleopConfig

    raw = OmegaConf.to_container(compose("teleop", argv, schema=teleop_schema()), resolve=True)
    assert isinstance(raw, dict)
    task = task_config_from_dict(raw.pop("task"), where="task")
    return task, to_dataclass(TeleopConfig, raw, "teleop")


def main(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print(verb_help(__doc__ or "", teleop_schema(), "teleop"))
        return 0
    from robot_policy.pipelines.teleop import teleop

    try:  # every value typed before anything opens a device or touches the store
        task, cfg = parse_teleop_config(argv)
    except (ConfigError, ValueError, KeyError) as e:
        return fail(str(e))
    try:
        summary = teleop(task, cfg)
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        return fail(str(e), code=1)
    print(describe(summary))
    return 0


def describe(summary: dict[str, Any]) -> str:
    """What the session did to the store."""
    lines = [(f"{summary['out']}: saved {summary['saved']} episode(s) ({summary['saved_successes']} successful), "
              f"discarded {summary['discarded']}; the store holds {summary['store_episodes']} "
              f"({summary['ticks']} ticks in {summary['elapsed_s']:.1f} s, {summary['device']})")]
    if summary["unsaved_at_end"]:
        lines.append("the episode in flight when the session ended was not saved")
    if summary["overruns"]:
        lines.append(f"{summary['overruns']} tick(s) ran later than the control period")
    return "\n".join(lines)
