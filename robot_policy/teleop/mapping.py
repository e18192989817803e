"""Teleop commands -> unified actions, through the embodiment spec.

Per arm the mapper keeps a *target*: an end-effector pose (position m, rotation matrix; the arm's base
frame), a joint vector (rad) where the action is joint positions, and a gripper opening in [0, 1]. A reset
sets them to the measured state; each tick's command moves them; the action is the targets written into
the slots of the spec's action fields, so an idle device holds the arm where it was last sent.

How a command reaches each kind of action field (found by slot in ``spec.action``):

* ``<arm>_arm_joint_pos`` (joint-position control): an end-effector delta moves the pose target and the
  arm's kinematics (:mod:`robot_policy.teleop.kinematics`) solve for joints, seeded with the last target;
  leader joint targets are taken as they are. Either way the joint target moves at most
  ``joint_speed_fraction`` of each joint's velocity limit per tick and stays inside the spec's position
  limits; a pose target the speed limit kept the arm from reaching is chased on the following ticks
  without further commands. The pose target may lead the pose the arm reaches by at most ``max_target_lead``: beyond that
  (a target out of reach, a joint at its limit) it is pulled back, so backing off works at once.
* ``<arm>_eef_pos`` + ``<arm>_eef_rot6d`` (absolute end-effector control): the pose target is the action.
* ``<arm>_gripper_open``: the opening target, as the unified slot means it (the spec converts to native).

Any other action field (velocity or delta actions, a mobile base) is refused when the mapper is built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from robot_policy.spaces import rotation as rot
from robot_policy.spaces.embodiment import EmbodimentSpec, FieldSpec
from robot_policy.spaces.unified import UNIFIED_DIM
from robot_policy.teleop.device import TeleopCommand
from robot_policy.teleop.kinematics import ArmKinematics

#: a pose target closer than this (m, rad) to the pose the joint target reaches counts as reached (the IK's
#: own residual is well below)
_REACHED_M, _REACHED_RAD = 5e-4, 5e-3
KinematicsBuilder = Callable[[EmbodimentSpec, Mapping[str, np.ndarray]], ArmKinematics]


@dataclass
class MappingConfig:
    """Limits the mapper puts on the targets it sends."""

    #: fraction of each joint's velocity limit (spec ``joint_vel_max``) a joint target may move per second
    joint_speed_fraction: float = 0.5
    #: m the end-effector position target may lead the pose the joint target reaches
    max_target_lead: float = 0.03
    #: rad the end-effector orientation target may lead the reached orientation
    max_rotation_lead: float = 0.3

    def __post_init__(self) -> None:
        if not 0 < self.joint_speed_fraction <= 1:
            raise ValueError(f"mapping.joint_speed_fraction: must be in (0, 1], got {self.joint_speed_fraction}")
        for name in ("max_target_lead", "max_rotation_lead"):
            if not getattr(self, name) > 0:
                raise ValueError(f"mapping.{name}: must be > 0, got {getattr(self, name)}")


@dataclass
class ArmLayout:
    """Which action fields of the spec one arm has (None = absent) and the state fields read at reset."""

    arm: str
    joints: FieldSpec | None
    eef_pos: FieldSpec | None
    eef_rot: FieldSpec | None
    gripper: FieldSpec | None
    state_joints: FieldSpec | None
    state_eef_pos: FieldSpec | None
    state_eef_rot: FieldSpec | None
    state_gripper: FieldSpec | None


def _by_slot(fields: tuple[FieldSpec, ...]) -> dict[str, FieldSpec]:
    return {f.slot: f for f in fields}


def arm_layouts(spec: EmbodimentSpec) -> dict[str, ArmLayout]:
    """Per arm, its teleoperable action fields; raises ValueError naming a field teleop cannot drive."""
    actions, states = _by_slot(spec.action.fields), _by_slot(spec.state.fields)
    known = {f"{a}_{k}" for a in ("right", "left") for k in ("arm_joint_pos", "eef_pos", "eef_rot6d", "gripper_open")}
    for f in spec.action.fields:
        if f.slot not in known:
            raise ValueError(f"embodiment {spec.name}: action field {f.name!r} (slot {f.slot}) cannot be "
                             "teleoperated; teleop drives joint-position, absolute end-effector pose and "
                             "gripper-opening actions")
    layouts: dict[str, ArmLayout] = {}
    for arm in ("right", "left"):
        fields = {k: actions.get(f"{arm}_{k}") for k in ("arm_joint_pos", "eef_pos", "eef_rot6d", "gripper_open")}
        if not any(fields.values()):
            continue
        if (fields["eef_pos"] is None) != (fields["eef_rot6d"] is None):
            raise ValueError(f"embodiment {spec.name}: the {arm} arm's action has an end-effector position or "
                             "rotation but not both; teleop sends whole poses")
        if fields["arm_joint_pos"] is not None and fields["eef_pos"] is not None:
            raise ValueError(f"embodiment {spec.name}: the {arm} arm's action has both joint and end-effector "
                             "targets; teleop drives one of them")
        layouts[arm] = ArmLayout(arm, fields["arm_joint_pos"], fields["eef_pos"], fields["eef_rot6d"],
                                 fields["gripper_open"], states.get(f"{arm}_arm_joint_pos"),
                                 states.get(f"{arm}_eef_pos"), states.get(f"{arm}_eef_rot6d"),
                                 states.get(f"{arm}_gripper_open"))
    return layouts


def apply_twist(pos: np.ndarray, rotm: np.ndarray, twist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pose (position m, rotation matrix) moved by ``twist`` (m, rad; both in the frame the pose is in):
    translated, then turned about the frame's axes through the end-effector point."""
    return pos + twist[:3], rot.rotvec_to_matrix(twist[3:]) @ rotm


def pull_back(target: np.ndarray, reached: np.ndarray, max_lead: float) -> np.ndarray:
    """``target`` moved onto the ball of radius ``max_lead`` around ``reached`` if it lies outside."""
    gap = target - reached
    dist = float(np.linalg.norm(gap))
    return target if dist <= max_lead else reached + gap * (max_lead / dist)


class ActionMapper:
    """Commands -> (128,) unified actions for ``spec`` (see the module docstring).

    Args:
        spec: the embodiment.
        control_hz: the tick rate (Hz), for the joint speed limit.
        kinematics: builds the arms' kinematics from the spec and the rest posture (the joints at the first
            reset); needed when end-effector deltas drive a joint-position action. None = no kinematics
            (a leader arm); a delta for a joint-position arm is then an error.
        config: target limits.
    """

    def __init__(self, spec: EmbodimentSpec, control_hz: float, kinematics: KinematicsBuilder | None = None,
                 config: MappingConfig | None = None) -> None:
        self.spec = spec
        self.layouts = arm_layouts(spec)
        self.cfg = config or MappingConfig()
        self.dt = 1.0 / control_hz
        self._kin_builder = kinematics
        self._kin: ArmKinematics | None = None
        self.action_mask = spec.action.mask
        self.pos: dict[str, np.ndarray] = {}
        self.rotm: dict[str, np.ndarray] = {}
        self.joints: dict[str, np.ndarray] = {}
        self.gripper: dict[str, float] = {}
        #: joint-controlled arms whose joint target has not reached the pose target yet
        self._chasing: set[str] = set()
        self._lo = {a: np.array(lim.joint_pos_min) for a, lim in spec.arms.items()}
        self._hi = {a: np.array(lim.joint_pos_max) for a, lim in spec.arms.items()}
        self._step = {a: np.array(lim.joint_vel_max) * self.cfg.joint_speed_fraction * self.dt
                      for a, lim in spec.arms.items()}

    @property
    def arms(self) -> tuple[str, ...]:
        return tuple(self.layouts)

    def close(self) -> None:
        if self._kin is not None:
            self._kin.close()
            self._kin = None

    def reset(self, state: np.ndarray) -> None:
        """Targets := the measured ``state`` (128,) (a new episode starts there)."""
        state = np.asarray(state, dtype=np.float64)
        self._chasing.clear()
        if state.shape != (UNIFIED_DIM,):
            raise ValueError(f"ActionMapper.reset: expected a unified state ({UNIFIED_DIM},), got {state.shape}")
        for arm, lay in self.layouts.items():
            if lay.joints is not None:
                if lay.state_joints is None:
                    raise ValueError(f"embodiment {self.spec.name}: the {arm} arm is joint-controlled but its "
                                     "state has no joint positions to start from")
                self.joints[arm] = state[lay.state_joints.unified_slice][:lay.joints.dim].copy()
        if self._kin is None and self._kin_builder is not None and self.joints:
            self._kin = self._kin_builder(self.spec, dict(self.joints))
        for arm, lay in self.layouts.items():
            if lay.state_eef_pos is not None and lay.state_eef_rot is not None:
                self.pos[arm] = state[lay.state_eef_pos.unified_slice].copy()
                self.rotm[arm] = rot.rot6d_to_matrix(state[lay.state_eef_rot.unified_slice])
            elif lay.joints is not None and self._kin is not None:
                pos, quat = self._kin.forward(arm, self.joints[arm])
                self.pos[arm], self.rotm[arm] = np.asarray(pos), rot.quat_to_matrix(np.asarray(quat))
            elif lay.eef_pos is not None:
                raise ValueError(f"embodiment {self.spec.name}: the {arm} arm takes end-effector targets but its "
                                 "state has no end-effector pose to start from")
            if lay.gripper is not None:
                measured = state[lay.state_gripper.unified_slice][0] if lay.state_gripper is not None else 1.0
                self.gripper[arm] = float(np.clip(measured, 0.0, 1.0))

    def __call__(self, cmd: TeleopCommand) -> np.ndarray:
        """This tick's (128,) float32 unified action: the targets after applying ``cmd``."""
        if not self.gripper and not self.joints and not self.pos:
            raise RuntimeError("ActionMapper: call reset(state) before mapping commands")
        unknown = set(cmd.arms) - set(self.layouts)
        if unknown:
            raise ValueError(f"command for arm(s) {sorted(unknown)}; embodiment {self.spec.name} has "
                             f"{', '.join(self.layouts)}")
        for arm in self._chasing - {a for a, part in cmd.arms.items() if part.twist is not None or
                                    part.joints is not None}:
            self._track(arm)  # a target the speed limit kept the arm from reaching last tick
        for arm, part in cmd.arms.items():
            lay = self.layouts[arm]
            if part.joints is not None:
                self._joint_target(arm, lay, part.joints)
            if part.twist is not None:
                self._pose_delta(arm, lay, part.twist)
            if part.gripper is not None:
                if lay.gripper is None:
                    raise ValueError(f"embodiment {self.spec.name}: the {arm} arm has no gripper action")
                self.gripper[arm] = float(part.gripper)
        return self.action()

    def action(self) -> np.ndarray:
        """The current targets as a (128,) float32 unified action."""
        out = np.zeros(UNIFIED_DIM, dtype=np.float64)
        for arm, lay in self.layouts.items():
            if lay.joints is not None:
                out[lay.joints.unified_slice] = self.joints[arm]
            if lay.eef_pos is not None and lay.eef_rot is not None:
                out[lay.eef_pos.unified_slice] = self.pos[arm]
                out[lay.eef_rot.unified_slice] = rot.matrix_to_rot6d(self.rotm[arm])
            if lay.gripper is not None:
                out[lay.gripper.unified_slice] = self.gripper[arm]
        return (out * self.action_mask).astype(np.float32)

    # ---- per-command updates ---------------------------------------------------------------------------
    def _limit(self, arm: str, q: np.ndarray) -> np.ndarray:
        """``q`` moved toward from the last joint target at most one tick's speed, inside the limits."""
        step = self._step[arm]
        q = self.joints[arm] + np.clip(q - self.joints[arm], -step, step)
        return np.clip(q, self._lo[arm], self._hi[arm])

    def _joint_target(self, arm: str, lay: ArmLayout, q: np.ndarray) -> None:
        if lay.joints is None:
            raise ValueError(f"joint targets for the {arm} arm, but embodiment {self.spec.name} takes "
                             "end-effector targets; a leader arm needs a joint-position embodiment")
        if q.shape != (lay.joints.dim,):
            raise ValueError(f"joint targets for the {arm} arm: expected {lay.joints.dim} values, got {q.shape}")
        self.joints[arm] = self._limit(arm, q)
        self._chasing.discard(arm)
        if self._kin is not None:  # the pose target follows, so a later delta starts from where the arm is
            pos, quat = self._kin.forward(arm, self.joints[arm])
            self.pos[arm], self.rotm[arm] = np.asarray(pos), rot.quat_to_matrix(np.asarray(quat))

    def _pose_delta(self, arm: str, lay: ArmLayout, twist: np.ndarray) -> None:
        if arm not in self.pos:
            raise ValueError(f"an end-effector delta for the {arm} arm, but embodiment {self.spec.name} gives no "
                             "pose to start from (no end-effector state fields and no kinematics)")
        self.pos[arm], self.rotm[arm] = apply_twist(self.pos[arm], self.rotm[arm], twist)
        if lay.joints is None:
            return
        if self._kin is None:
            raise ValueError(f"an end-effector delta for the joint-controlled {arm} arm needs the embodiment's "
                             "kinematics; this mapper was built without (a leader-arm session)")
        self._track(arm)

    def _track(self, arm: str) -> None:
        """Joint target toward the pose target (IK, then the speed and position limits); remembers whether
        the pose target is still ahead, so the following ticks keep closing the gap without a command."""
        assert self._kin is not None
        quat = rot.matrix_to_quat(self.rotm[arm])
        q = self._kin.solve(arm, self.pos[arm], quat, self.joints[arm])
        self.joints[arm] = self._limit(arm, np.asarray(q, dtype=np.float64))
        reached_pos, reached_quat = self._kin.forward(arm, self.joints[arm])
        self.pos[arm] = pull_back(self.pos[arm], np.asarray(reached_pos), self.cfg.max_target_lead)
        reached = rot.quat_to_matrix(np.asarray(reached_quat))
        lead = rot.matrix_to_rotvec(self.rotm[arm] @ reached.T)
        angle = float(np.linalg.norm(lead))
        if angle > self.cfg.max_rotation_lead:
            self.rotm[arm] = rot.rotvec_to_matrix(lead * (self.cfg.max_rotation_lead / angle)) @ reached
        behind = float(np.linalg.norm(self.pos[arm] - np.asarray(reached_pos))) > _REACHED_M or angle > _REACHED_RAD
        if behind:
            self._chasing.add(arm)
        else:
            self._chasing.discard(arm)
