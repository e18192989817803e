"""A recorded keyboard stream for ``pybullet_bimanual_lift``, derived from the scripted expert's motion.

The stream is what an operator at the terminal would type: ``n`` to start, motion keys quantised to the key
map's step sizes (5 mm, 0.05 rad a press; at most the keyboard's speed limit per tick), arm selection keys
(``1`` right, ``2`` left, ``3`` both when both arms need the same presses), ``space`` to close the grippers,
``enter`` to save, ``q`` to quit. It is derived open-loop from the expert's plan of end-effector poses for
each seed (the tray pose is read from the seeded scene, as the expert does): nothing here steps the
simulation. Whether those keys lift the tray is decided by the simulation when the stream is replayed
through the keyboard device, the key map, the action mapper and the IK.

A plain module (pytest puts tests/ on sys.path); ``python tests/teleop_streams.py OUT SEED...`` writes a file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pybullet as p

from robot_policy.envs.pybullet_lift_expert import PHASE_STEPS, BimanualLiftExpert
from robot_policy.envs.registry import make_env
from robot_policy.keys import OBS_STATE
from robot_policy.spaces import rotation as rot
from robot_policy.spaces.unified import slot
from robot_policy.teleop.event_log import StreamWriter
from robot_policy.teleop.keyboard import STREAM_KIND, KeyboardConfig

TASK = "pybullet_bimanual_lift"
#: keys per (axis, sign) of the default bindings: translation x, y, z, rotation x, y, z
_KEYS = {(0, 1): "w", (0, -1): "s", (1, 1): "a", (1, -1): "d", (2, 1): "r", (2, -1): "f",
         (3, 1): "u", (3, -1): "o", (4, 1): "i", (4, -1): "k", (5, 1): "j", (5, -1): "l"}
_SELECT = {"right": "1", "left": "2", "both": "3"}


def lift_key_stream(seeds: list[int], cfg: KeyboardConfig | None = None, gap_ticks: int = 5
                    ) -> list[dict[str, Any]]:
    """Key events ``{"t": s, "key": name}`` that teleoperate one episode per seed (see the module docstring).
    Episode i must be the session's i-th started episode with seed ``seeds[i]`` (``seed=seeds[0]`` when the
    seeds are consecutive)."""
    cfg = cfg or KeyboardConfig()
    env = make_env(TASK)
    expert = BimanualLiftExpert(env, noise=0.0)
    hz = env.task.control_hz
    steps = np.array([cfg.translation_step] * 3 + [cfg.rotation_step] * 3)
    max_taps = np.floor(np.array([cfg.max_speed] * 3 + [cfg.max_angular_speed] * 3) / hz / steps + 1e-9)
    events: list[dict[str, Any]] = []
    tick, active = 0, "right"

    def press(key: str) -> None:
        events.append({"t": round(tick / hz, 6), "key": key})

    def select(arm: str) -> None:
        nonlocal active
        if active != arm:
            press(_SELECT[arm])
            active = arm

    try:
        for seed in seeds:
            obs, _ = env.reset(seed=seed)
            expert.reset(obs)
            state = obs[OBS_STATE].astype(np.float64)
            # the key map's model of each arm's target: the measured pose at reset, as the action mapper starts
            pos = {a: state[slot(f"{a}_eef_pos")].copy() for a in env.embodiment.arms}
            rotm = {a: rot.rot6d_to_matrix(state[slot(f"{a}_eef_rot6d")]) for a in env.embodiment.arms}
            press("n")
            for e in range(sum(PHASE_STEPS)):
                taps: dict[str, np.ndarray] = {}
                for arm in env.embodiment.arms:
                    want_pos, want_quat = expert_target_base(expert, arm, e)
                    n = np.zeros(6)
                    n[:3] = np.round((want_pos - pos[arm]) / steps[:3])
                    n[3:] = np.round(rot.matrix_to_rotvec(rot.quat_to_matrix(want_quat) @ rotm[arm].T) / steps[3:])
                    n = np.clip(n, -max_taps, max_taps)
                    taps[arm] = n
                    pos[arm] = pos[arm] + n[:3] * steps[:3]
                    rotm[arm] = rot.rotvec_to_matrix(n[3:] * steps[3:]) @ rotm[arm]
                if e == PHASE_STEPS[0]:  # the reach is over: close both grippers on the handles
                    select("both")
                    press("space")
                groups = ([("both", taps["right"])] if np.array_equal(taps["right"], taps["left"])
                          else list(taps.items()))
                for who, n in groups:
                    if not n.any():
                        continue
                    select(who)
                    for axis in range(6):
                        for _ in range(int(abs(n[axis]))):
                            press(_KEYS[(axis, int(np.sign(n[axis])))])
                tick += 1
            tick += gap_ticks
            press("enter")
            tick += gap_ticks
        press("q")
    finally:
        expert.close()
        env.close()
    return events


def expert_target_base(expert: BimanualLiftExpert, arm: str, step: int) -> tuple[np.ndarray, np.ndarray]:
    """The expert's grasp-target pose for ``step`` in ``arm``'s base frame: position (3,) m, quaternion xyzw."""
    pos_w, quat_w, _ = expert._target(arm, step)
    pos_b, quat_b = p.multiplyTransforms(*expert._base_inv[arm], pos_w.tolist(), quat_w.tolist())
    return np.array(pos_b), np.array(quat_b)


def write_lift_stream(path: Path, seeds: list[int]) -> Path:
    with StreamWriter(path, STREAM_KIND, note=f"{TASK} seeds {seeds}: derived from the scripted expert's plan "
                      "(tests/teleop_streams.py)") as out:
        for event in lift_key_stream(seeds):
            out.write(event["t"], key=event["key"])
    return path


if __name__ == "__main__":
    write_lift_stream(Path(sys.argv[1]), [int(s) for s in sys.argv[2:]])
