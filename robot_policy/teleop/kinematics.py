"""Arm kinematics for turning end-effector deltas into joint targets, by embodiment.

An embodiment whose action is joint positions needs forward and inverse kinematics of its arms in their
own base frames (the frame of the spec's ``<arm>_eef_pos`` state fields) to be driven by end-effector
deltas. Each is registered under the embodiment names it serves; the Franka Panda's is the null-space IK
the scripted experts use (pybullet, on a private kinematic copy of the arm: it never touches a running
simulation, and it works the same next to a real robot).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import numpy as np

from robot_policy.spaces.embodiment import EmbodimentSpec


class ArmKinematics(Protocol):
    """FK/IK of the arms of one embodiment, in each arm's base frame."""

    def forward(self, arm: str, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """End-effector pose at joints ``q`` (rad): position (3,) m and quaternion xyzw (4,)."""
        ...

    def solve(self, arm: str, pos: np.ndarray, quat: np.ndarray, seed: np.ndarray) -> np.ndarray:
        """Joints (rad, within the arm's limits) putting the end effector at ``pos``/``quat``, found from
        ``seed`` (the current joints: the solution stays on their branch)."""
        ...

    def close(self) -> None: ...


#: (spec, rest posture per arm in rad) -> kinematics
KinematicsFactory = Callable[[EmbodimentSpec, Mapping[str, np.ndarray]], ArmKinematics]
_KINEMATICS: dict[str, KinematicsFactory] = {}


def register_kinematics(*embodiments: str) -> Callable[[KinematicsFactory], KinematicsFactory]:
    def deco(factory: KinematicsFactory) -> KinematicsFactory:
        for name in embodiments:
            _KINEMATICS[name] = factory
        return factory
    return deco


def make_kinematics(spec: EmbodimentSpec, rest: Mapping[str, np.ndarray]) -> ArmKinematics:
    """The kinematics of ``spec``'s arms; ``rest``: the posture (rad) null-space IK pulls toward, per arm.
    An embodiment without one is an error listing those that have one."""
    if spec.name not in _KINEMATICS:
        raise KeyError(f"embodiment {spec.name!r} takes joint-position actions but has no kinematics for "
                       f"end-effector teleoperation; registered: {', '.join(sorted(_KINEMATICS))} "
                       "(robot_policy.teleop.kinematics); a leader arm (device=leader) needs none")
    return _KINEMATICS[spec.name](spec, rest)


@register_kinematics("panda_bimanual_joint", "panda_single_joint")
def panda_kinematics(spec: EmbodimentSpec, rest: Mapping[str, np.ndarray]) -> ArmKinematics:
    """Franka Panda arms (grasp-target link, between the fingertips), limits from the spec; the null-space
    pull goes toward the first arm's rest posture (the arms of these embodiments share a home pose)."""
    from robot_policy.envs.pybullet_lift_expert import PandaIK

    limits = {a: (np.array(lim.joint_pos_min), np.array(lim.joint_pos_max)) for a, lim in spec.arms.items()}
    first = next(iter(spec.arms))
    return PandaIK(limits, np.asarray(rest[first], dtype=np.float64))
