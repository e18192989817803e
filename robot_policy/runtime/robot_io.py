"""What a robot sends and takes, named as on the wire, and the policy observation built from it.

No ROS here: the ROS 2 node (``ros_ws/src/robot_policy_ros``) and the simulated robot convert messages to
and from the plain arrays below, so the checks are the same for every transport.

Names. Every commanded dimension is a *joint* with a name: the embodiment's joint-position action fields in
their declaration order (``right_joint_pos`` (7) -> ``right_joint_pos_1`` .. ``_7``; a field of width one,
such as ``right_gripper``, keeps its name; its position is the finger gap in metres). A real rig maps its own
driver's names onto these with the ``joint_names`` parameter of the node (README).

Observation sources, per state field of the embodiment spec (checked when the interface is built):

* a field that is also an action field (``right_joint_pos``, ``right_gripper``): ``JointState.position`` of
  its joints;
* ``<prefix>_joint_vel``: ``JointState.velocity`` of the joints of ``<prefix>_joint_pos``;
* ``<arm>_eef_pos`` / ``<arm>_eef_quat``: the arm's end-effector pose (position, m, and quaternion xyzw,
  robot base frame), from the arm driver's forward kinematics (``/<arm>/eef_pose``);
* the task's object state vector (``object_state``), if the policy uses one.

Anything else has no source and is an error naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from robot_policy.keys import OBS_OBJECT, OBS_STATE, OBS_STATE_MASK
from robot_policy.spaces.embodiment import EmbodimentSpec


class MalformedMessage(ValueError):
    """An incoming message that cannot be used: unknown or missing joint names, wrong lengths, NaN/Inf.
    The message is dropped whole, nothing derived from it is sent, and the reason goes to diagnostics."""


def _joint_names(field_name: str, dim: int) -> tuple[str, ...]:
    return (field_name,) if dim == 1 else tuple(f"{field_name}_{i + 1}" for i in range(dim))


@dataclass(frozen=True)
class RobotInterface:
    """The wire-level layout of one embodiment (see the module docstring).

    Attributes:
        joint_names: one per commanded dimension, in the embodiment's native flat action order (n,).
        arm_joints: arm -> indices into ``joint_names`` of the joints its controller takes (one
            JointTrajectory per arm).
        velocity_of: state field ``<prefix>_joint_vel`` -> the action field whose joints' velocities it holds.
        eef_fields: state field -> (arm, "pos" | "quat").
        object_state_dim: width of the object state vector (0: none).
    """

    embodiment: EmbodimentSpec
    joint_names: tuple[str, ...]
    arm_joints: dict[str, tuple[int, ...]]
    velocity_of: dict[str, str] = field(default_factory=dict)
    eef_fields: dict[str, tuple[str, str]] = field(default_factory=dict)
    object_state_dim: int = 0

    @classmethod
    def from_embodiment(cls, spec: EmbodimentSpec, object_state_dim: int = 0,
                        joint_names: Sequence[str] | None = None) -> RobotInterface:
        """Derive the layout; ``joint_names`` renames the joints (same count and order as the defaults)."""
        names: list[str] = []
        arm_joints: dict[str, list[int]] = {}
        action_fields = {f.name for f in spec.action.fields}
        for f in spec.action.fields:
            arm = next((a for a in spec.arms if f.name.startswith(a + "_")), None)
            if arm is None:
                raise ValueError(f"embodiment {spec.name}: action field {f.name!r} belongs to no arm "
                                 f"({', '.join(spec.arms)}); the runtime commands joints per arm")
            if "eef" in f.name:
                raise ValueError(f"embodiment {spec.name}: action field {f.name!r} is an end-effector "
                                 "target; the runtime sends joint-position commands only")
            arm_joints.setdefault(arm, []).extend(range(len(names), len(names) + f.dim))
            names.extend(_joint_names(f.name, f.dim))
        if joint_names is not None:
            if len(joint_names) != len(names):
                raise ValueError(f"joint_names: {len(joint_names)} names given, the embodiment {spec.name} "
                                 f"commands {len(names)} joints ({', '.join(names)})")
            if len(set(joint_names)) != len(joint_names):
                raise ValueError(f"joint_names: duplicate names in {list(joint_names)}")
            names = list(joint_names)
        velocity_of: dict[str, str] = {}
        eef: dict[str, tuple[str, str]] = {}
        for f in spec.state.fields:
            if f.name in action_fields:
                continue
            if f.name.endswith("_joint_vel") and f.name.replace("_joint_vel", "_joint_pos") in action_fields:
                velocity_of[f.name] = f.name.replace("_joint_vel", "_joint_pos")
                continue
            arm = next((a for a in spec.arms if f.name in (f"{a}_eef_pos", f"{a}_eef_quat")), None)
            if arm is not None:
                eef[f.name] = (arm, f.name.rsplit("_", 1)[1])
                continue
            raise ValueError(f"embodiment {spec.name}: state field {f.name!r} has no source on the wire "
                             "(joint positions, joint velocities, end-effector poses)")
        return cls(spec, tuple(names), {a: tuple(ix) for a, ix in arm_joints.items()}, velocity_of, eef,
                   object_state_dim)

    @property
    def arms_with_eef(self) -> tuple[str, ...]:
        return tuple(sorted({arm for arm, _ in self.eef_fields.values()}))

    def field_indices(self, action_field: str) -> np.ndarray:
        """Indices into ``joint_names`` of an action field's joints."""
        start = 0
        for f in self.embodiment.action.fields:
            if f.name == action_field:
                return np.arange(start, start + f.dim)
            start += f.dim
        raise KeyError(action_field)

    def wire_state(self, unified_state: np.ndarray) -> WireState:
        """What a robot with this layout sends for the unified state (128,) of an observation: the simulated
        robots' sensors (ROS 2 ``sim_robot_node`` and the in-process runs)."""
        native = self.embodiment.state.from_unified(np.asarray(unified_state, dtype=np.float64))
        n = len(self.joint_names)
        pos, vel = np.zeros(n), np.zeros(n)
        for f in self.embodiment.action.fields:
            pos[self.field_indices(f.name)] = native[f.name]
        for vel_field, pos_field in self.velocity_of.items():
            vel[self.field_indices(pos_field)] = native[vel_field]
        eef = {arm: (native[f"{arm}_eef_pos"], native[f"{arm}_eef_quat"]) for arm in self.arms_with_eef}
        return WireState(pos, vel, eef)

    def joint_order(self, names: Sequence[str]) -> np.ndarray:
        """Indices mapping a message's ``names`` onto ``joint_names``: ``values[order]`` is in our order.
        Extra joints in the message (another device on the same topic) are ignored; a missing one is an
        error."""
        where = {n: i for i, n in enumerate(names)}
        if len(where) != len(names):
            raise MalformedMessage(f"joint names repeat: {list(names)}")
        missing = [n for n in self.joint_names if n not in where]
        if missing:
            raise MalformedMessage(f"missing joint(s) {missing}; got {list(names)}")
        return np.array([where[n] for n in self.joint_names], dtype=np.int64)


@dataclass(frozen=True)
class WireState:
    """A robot's state as sent: joint positions and velocities (n,) in ``joint_names`` order, and per arm the
    end-effector pose (position (3,) m, quaternion xyzw (4,), robot base frame)."""

    position: np.ndarray
    velocity: np.ndarray
    eef: dict[str, tuple[np.ndarray, np.ndarray]]


def _finite(values: np.ndarray, what: str) -> np.ndarray:
    if not np.all(np.isfinite(values)):
        raise MalformedMessage(f"{what}: NaN or Inf in {values.tolist()}")
    return values


@dataclass
class _Stamped:
    value: np.ndarray
    stamp: float


class ObservationAssembler:
    """Keeps the newest valid part of each source and builds the policy observation from them.

    ``update_*`` raise :class:`MalformedMessage` (and keep the previous part) for a bad message. ``stamp``
    arguments are seconds on the clock the controller uses. :meth:`assemble` returns None until every source
    has arrived once; its stamp is the *oldest* part's, so staleness is judged by the worst source.
    """

    def __init__(self, interface: RobotInterface) -> None:
        self.interface = interface
        self._position: _Stamped | None = None
        self._velocity: _Stamped | None = None
        self._eef: dict[tuple[str, str], _Stamped] = {}
        self._object: _Stamped | None = None

    def update_joints(self, names: Sequence[str], position: Sequence[float] | np.ndarray, velocity: Sequence[float] | np.ndarray,
                      stamp: float) -> None:
        """A JointState: ``position`` (rad / m) and ``velocity`` (rad/s / m/s) per name; velocity may be
        empty when no state field needs it."""
        names = list(names)
        pos = np.asarray(position, dtype=np.float64)
        vel = np.asarray(velocity, dtype=np.float64)
        if pos.shape != (len(names),):
            raise MalformedMessage(f"joint state: {len(names)} names but {pos.size} positions")
        if vel.size and vel.shape != (len(names),):
            raise MalformedMessage(f"joint state: {len(names)} names but {vel.size} velocities")
        if self.interface.velocity_of and not vel.size:
            raise MalformedMessage("joint state: no velocities, and the policy observes joint velocities")
        if not math.isfinite(stamp):
            raise MalformedMessage(f"joint state: stamp {stamp}")
        order = self.interface.joint_order(names)
        pos = _finite(pos[order], "joint state position")
        vel = _finite(vel[order], "joint state velocity") if vel.size else np.zeros_like(pos)
        self._position, self._velocity = _Stamped(pos, stamp), _Stamped(vel, stamp)

    def update_eef(self, arm: str, position: Sequence[float] | np.ndarray, quat_xyzw: Sequence[float] | np.ndarray, stamp: float) -> None:
        """An end-effector pose of ``arm`` in its robot base frame: position (3, m), quaternion xyzw (4)."""
        if arm not in self.interface.arms_with_eef:
            raise MalformedMessage(f"end-effector pose for unknown arm {arm!r}")
        pos = _finite(np.asarray(position, dtype=np.float64).reshape(-1), f"{arm} eef position")
        quat = _finite(np.asarray(quat_xyzw, dtype=np.float64).reshape(-1), f"{arm} eef quaternion")
        if pos.shape != (3,) or quat.shape != (4,):
            raise MalformedMessage(f"{arm} eef pose: expected position (3,) and quaternion (4,), got "
                                   f"{pos.shape} and {quat.shape}")
        norm = float(np.linalg.norm(quat))
        if not 0.9 < norm < 1.1:
            raise MalformedMessage(f"{arm} eef quaternion has norm {norm:.3f}, not a rotation")
        self._eef[(arm, "pos")] = _Stamped(pos, stamp)
        self._eef[(arm, "quat")] = _Stamped(quat / norm, stamp)

    def update_wire(self, state: WireState, object_state: np.ndarray | None, stamp: float) -> None:
        """Everything a robot sends at one instant (the in-process transport's one call)."""
        self.update_joints(self.interface.joint_names, state.position, state.velocity, stamp)
        for arm, (pos, quat) in state.eef.items():
            self.update_eef(arm, pos, quat, stamp)
        if object_state is not None and self.interface.object_state_dim:
            self.update_object(object_state, stamp)

    def update_object(self, values: Sequence[float] | np.ndarray, stamp: float) -> None:
        """The task's object state vector (object_state_dim,), in the units and frame the policy was trained
        on (for pybullet_bimanual_lift: tray position, rotation 6D, half extents, world frame)."""
        v = _finite(np.asarray(values, dtype=np.float64).reshape(-1), "object state")
        if v.shape != (self.interface.object_state_dim,):
            raise MalformedMessage(f"object state: expected {self.interface.object_state_dim} values, "
                                   f"got {v.size}")
        self._object = _Stamped(v, stamp)

    @property
    def joint_position(self) -> np.ndarray | None:
        """The newest measured joint positions (n,) in ``joint_names`` order, or None."""
        return None if self._position is None else self._position.value

    @property
    def joint_velocity(self) -> np.ndarray | None:
        return None if self._velocity is None else self._velocity.value

    def assemble(self) -> tuple[dict[str, np.ndarray], float] | None:
        """``(obs, stamp)``: the env-style observation dict (unified state (128,), its mask, object state)
        and the oldest stamp among its parts; None while a source has not arrived yet."""
        itf = self.interface
        if self._position is None or self._velocity is None:
            return None
        parts = [self._position.stamp]
        native: dict[str, np.ndarray] = {}
        action_fields = {f.name for f in itf.embodiment.action.fields}
        for f in itf.embodiment.state.fields:
            if f.name in action_fields:
                native[f.name] = self._position.value[itf.field_indices(f.name)]
            elif f.name in itf.velocity_of:
                native[f.name] = self._velocity.value[itf.field_indices(itf.velocity_of[f.name])]
            else:
                part = self._eef.get(itf.eef_fields[f.name])
                if part is None:
                    return None
                native[f.name] = part.value
                parts.append(part.stamp)
        obs = {OBS_STATE: itf.embodiment.state.to_unified(native).astype(np.float32),
               OBS_STATE_MASK: itf.embodiment.state.mask.copy()}
        if itf.object_state_dim:
            if self._object is None:
                return None
            obs[OBS_OBJECT] = self._object.value.astype(np.float32)
            parts.append(self._object.stamp)
        return obs, min(parts)


def native_rows(interface: RobotInterface, unified: np.ndarray) -> np.ndarray:
    """Unified actions (T, 128) -> commanded joint rows (T, n) in ``joint_names`` order."""
    return interface.embodiment.action.unified_to_flat(unified)


def native_dict(interface: RobotInterface, row: np.ndarray) -> Mapping[str, np.ndarray]:
    """One joint row (n,) -> the embodiment's native action fields ``{name: (dim,)}``."""
    return {f.name: row[interface.field_indices(f.name)] for f in interface.embodiment.action.fields}
