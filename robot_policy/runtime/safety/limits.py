"""Per-dimension kinematic limits of the commanded joints, in the embodiment's native flat action order.

Units are SI: arm joints in rad, rad/s, rad/s^2, rad/s^3; a gripper dimension is its finger gap in m, m/s,
m/s^2, m/s^3 (the native gripper value of the spec, not the unified opening in [0, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robot_policy.spaces.embodiment import EmbodimentSpec

# The embodiment specs carry no jerk limit and no gripper speed: datasheets rarely give a gripper's, and the
# jerk limit of the arms (Franka: 7500 rad/s^3) is far above what smooth policy commands need. The
# defaults are deliberately gentle rather than the hardware maxima: jerk = 10 x acceleration ramps to full
# acceleration in 0.1 s; 0.1 m/s and 1 m/s^2 open or close a Panda hand (0.08 m) in under a second.
DEFAULT_JERK_PER_ACC = 10.0  # 1/s: jerk_max = factor * acc_max
DEFAULT_GRIPPER_VEL_MAX = 0.1  # m/s
DEFAULT_GRIPPER_ACC_MAX = 1.0  # m/s^2


def _vector(name: str, value: object, n: int) -> np.ndarray:
    v = np.array(value, dtype=np.float64)  # a copy: the caller's array stays theirs
    if v.shape != (n,):
        raise ValueError(f"JointLimits.{name}: expected shape ({n},), got {v.shape}")
    v.setflags(write=False)
    return v


@dataclass(frozen=True, eq=False)
class JointLimits:
    """Limits of ``n`` commanded dimensions (arm joints and gripper gaps), one entry per dimension.

    Attributes:
        names: (n,) dimension names, e.g. ``right_joint_pos[0]``, ``right_gripper``.
        pos_min, pos_max: (n,) position range [rad or m]; with a margin already applied when built by
            :meth:`from_embodiment` or :meth:`shrunk`.
        vel_max: (n,) speed limit [rad/s or m/s], > 0.
        acc_max: (n,) acceleration limit [rad/s^2 or m/s^2], > 0.
        jerk_max: (n,) jerk limit [rad/s^3 or m/s^3], > 0; ``inf`` means unlimited.
    """

    names: tuple[str, ...]
    pos_min: np.ndarray
    pos_max: np.ndarray
    vel_max: np.ndarray
    acc_max: np.ndarray
    jerk_max: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.names)
        if n == 0:
            raise ValueError("JointLimits.names: need at least one dimension")
        if len(set(self.names)) != n:
            raise ValueError(f"JointLimits.names: duplicate names in {self.names}")
        for key in ("pos_min", "pos_max", "vel_max", "acc_max", "jerk_max"):
            object.__setattr__(self, key, _vector(key, getattr(self, key), n))
        for key in ("pos_min", "pos_max", "vel_max", "acc_max"):
            bad = ~np.isfinite(getattr(self, key))
            if bad.any():
                j = int(np.argmax(bad))
                raise ValueError(f"JointLimits.{key}[{j}] ({self.names[j]}): must be finite, "
                                 f"got {getattr(self, key)[j]}")
        for key in ("vel_max", "acc_max", "jerk_max"):
            bad = ~(getattr(self, key) > 0)
            if bad.any():
                j = int(np.argmax(bad))
                raise ValueError(f"JointLimits.{key}[{j}] ({self.names[j]}): must be > 0, got {getattr(self, key)[j]}")
        bad = ~(self.pos_min < self.pos_max)
        if bad.any():
            j = int(np.argmax(bad))
            raise ValueError(f"JointLimits: {self.names[j]}: pos_min {self.pos_min[j]} is not below "
                             f"pos_max {self.pos_max[j]}")

    @property
    def n(self) -> int:
        return len(self.names)

    def shrunk(self, margin: float | np.ndarray) -> JointLimits:
        """These limits with the position range shrunk by ``margin`` (scalar or (n,), rad or m) at both ends.

        Raises ValueError naming the dimension when a margin is negative or leaves no range.
        """
        m = np.broadcast_to(np.asarray(margin, dtype=np.float64), (self.n,))
        for j in range(self.n):
            if not (np.isfinite(m[j]) and m[j] >= 0):
                raise ValueError(f"JointLimits.shrunk: margin for {self.names[j]} must be finite and >= 0, "
                                 f"got {m[j]}")
            if 2 * m[j] >= self.pos_max[j] - self.pos_min[j]:
                raise ValueError(
                    f"JointLimits.shrunk: margin {m[j]} is too large for {self.names[j]}: its range "
                    f"[{self.pos_min[j]}, {self.pos_max[j]}] (width {self.pos_max[j] - self.pos_min[j]:.4g}) "
                    "would be empty")
        return JointLimits(self.names, self.pos_min + m, self.pos_max - m, self.vel_max, self.acc_max,
                           self.jerk_max)

    @classmethod
    def from_embodiment(cls, spec: EmbodimentSpec, margin: float = 0.0, gripper_margin: float = 0.0,
                        jerk_per_acc: float = DEFAULT_JERK_PER_ACC,
                        gripper_vel_max: float = DEFAULT_GRIPPER_VEL_MAX,
                        gripper_acc_max: float = DEFAULT_GRIPPER_ACC_MAX) -> JointLimits:
        """Limits in the native flat action order of ``spec`` (what ``spec.action.unified_to_flat`` gives).

        Args:
            spec: an embodiment whose action fields are all arm joint positions or gripper gaps.
            margin: shrinks every arm joint's range at both ends [rad].
            gripper_margin: shrinks every gripper's range at both ends [m].
            jerk_per_acc: jerk_max = jerk_per_acc * acc_max for every dimension [1/s] (see the defaults above).
            gripper_vel_max, gripper_acc_max: a gripper's speed [m/s] and acceleration [m/s^2] limits.

        Raises ValueError when an action field is not a joint position or a gripper (an end-effector pose
        action cannot go through a joint safety filter), or a margin leaves no range.
        """
        names: list[str] = []
        lo: list[float] = []
        hi: list[float] = []
        vel: list[float] = []
        acc: list[float] = []
        margins: list[float] = []
        for f in spec.action.fields:
            if f.slot.endswith("_arm_joint_pos"):
                arm = spec.arms[f.slot.split("_", 1)[0]]  # the spec checked that the arm exists, dim == dof
                names += [f"{f.name}[{j}]" for j in range(f.dim)]
                lo += arm.joint_pos_min[:f.dim]
                hi += arm.joint_pos_max[:f.dim]
                vel += arm.joint_vel_max[:f.dim]
                acc += arm.joint_acc_max[:f.dim]
                margins += [margin] * f.dim
            elif f.gripper is not None:
                names.append(f.name)
                lo.append(min(f.gripper))
                hi.append(max(f.gripper))
                vel.append(gripper_vel_max)
                acc.append(gripper_acc_max)
                margins.append(gripper_margin)
            else:
                raise ValueError(
                    f"JointLimits.from_embodiment: embodiment {spec.name!r} action field {f.name!r} goes to "
                    f"slot {f.slot!r}; the joint safety filter needs joint-position (and gripper) actions, "
                    "so an end-effector or velocity action needs its own filter (or an IK step before this one)")
        acc_arr = np.array(acc)
        raw = cls(tuple(names), np.array(lo), np.array(hi), np.array(vel), acc_arr, jerk_per_acc * acc_arr)
        return raw.shrunk(np.array(margins))
