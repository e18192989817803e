"""Leader arms: a ``sensor_msgs/JointState`` topic from leader arms mapped joint by joint onto the followers.

Follower joints are named as on the robot's wire (``robot_policy.runtime.robot_io``): a joint-position
action field ``right_joint_pos`` of width 7 is ``right_joint_pos_1`` .. ``right_joint_pos_7``, a gripper
field keeps its name (``right_gripper``). Each leader joint named in ``joint_map`` (leader name -> follower
name; by default a leader joint with a follower's name maps to it) becomes

    follower = sign * leader + offset        (rad; per follower joint, default sign 1, offset 0)

and is clipped to the follower's position limits from the embodiment spec. A leader gripper reading is
mapped linearly from its ``gripper_range`` (leader closed, leader open; default: the follower gripper's own
native range from the spec) onto the opening in [0, 1]. An arm gets joint targets once every one of its
joints has been heard; readings older than ``stale_s`` stop commanding (the follower holds). The action
mapper then limits how fast the follower's targets move.

The ROS 2 side (:class:`LeaderDevice`) runs its own rclpy context and executor thread; the process must
start with a DDS configuration (``robot-policy teleop`` sets the loopback one unless told otherwise).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import numpy as np

from robot_policy.spaces.embodiment import EmbodimentSpec
from robot_policy.teleop.device import ArmCommand, TeleopCommand


class MalformedJointState(ValueError):
    """A JointState that cannot be used (lengths differ, NaN/Inf): dropped whole."""


@dataclass
class LeaderConfig:
    """How leader joints map onto the follower (see the module docstring)."""

    #: the leader arms' JointState topic
    topic: str = "/leader/joint_states"
    #: leader joint name -> follower joint name; a leader joint named like a follower joint maps to it
    joint_map: dict[str, str] = field(default_factory=dict)
    #: follower joint -> +1 or -1 (a leader joint that turns the other way)
    signs: dict[str, float] = field(default_factory=dict)
    #: follower joint -> rad added after the sign (the leader's zero offset)
    offsets: dict[str, float] = field(default_factory=dict)
    #: follower gripper -> [leader closed, leader open] reading; default the follower's native range
    gripper_range: dict[str, list[float]] = field(default_factory=dict)
    #: s after which a leader reading no longer commands the follower
    stale_s: float = 0.5

    def __post_init__(self) -> None:
        if not self.stale_s > 0:
            raise ValueError(f"leader.stale_s: must be > 0, got {self.stale_s}")
        for name, sign in self.signs.items():
            if sign not in (1, -1):
                raise ValueError(f"leader.signs.{name}: must be 1 or -1, got {sign}")
        for name, rng in self.gripper_range.items():
            if len(rng) != 2 or rng[0] == rng[1]:
                raise ValueError(f"leader.gripper_range.{name}: expected [closed, open], two different readings, "
                                 f"got {rng}")


@dataclass(frozen=True)
class _Joint:
    arm: str
    index: int  # into the arm's joint vector; -1 = the gripper
    lo: float
    hi: float


def follower_joints(spec: EmbodimentSpec) -> dict[str, _Joint]:
    """Follower joint name -> (arm, index or -1 for the gripper, limits), from the spec's action fields."""
    out: dict[str, _Joint] = {}
    for f in spec.action.fields:
        arm, kind = f.slot.split("_", 1)
        if kind == "arm_joint_pos":
            lim = spec.arms[arm]
            for i in range(f.dim):
                out[f"{f.name}_{i + 1}"] = _Joint(arm, i, lim.joint_pos_min[i], lim.joint_pos_max[i])
        elif kind == "gripper_open":
            out[f.name] = _Joint(arm, -1, 0.0, 1.0)
        else:
            raise ValueError(f"embodiment {spec.name}: action field {f.name!r} (slot {f.slot}) is not a joint; "
                             "leader arms drive joint-position embodiments")
    return out


class LeaderMapping:
    """Leader joint readings -> follower targets (pure; see the module docstring)."""

    def __init__(self, spec: EmbodimentSpec, config: LeaderConfig | None = None) -> None:
        self.cfg = config or LeaderConfig()
        self.joints = follower_joints(spec)
        valid = ", ".join(self.joints)
        for where, names in (("joint_map values", self.cfg.joint_map.values()), ("signs", self.cfg.signs),
                             ("offsets", self.cfg.offsets), ("gripper_range", self.cfg.gripper_range)):
            unknown = sorted(set(names) - set(self.joints))
            if unknown:
                raise ValueError(f"leader.{where}: unknown follower joint(s) {unknown}; follower joints: {valid}")
        for name in self.cfg.gripper_range:
            if self.joints[name].index >= 0:
                raise ValueError(f"leader.gripper_range.{name}: {name} is an arm joint, not a gripper")
        self._grip_native = {f.name: f.gripper for f in spec.action.fields if f.gripper is not None}
        self._leader_to_follower = {**{n: n for n in self.joints}, **self.cfg.joint_map}
        self._arm_dof = {a: spec.arms[a].dof for a in {j.arm for j in self.joints.values()}}
        self.latest: dict[str, float] = {}

    def update(self, names: Sequence[str], positions: Sequence[float]) -> int:
        """Take one JointState's readings; returns how many mapped onto follower joints. Raises
        MalformedJointState (nothing taken) for mismatched lengths or a non-finite mapped reading."""
        if len(names) != len(positions):
            raise MalformedJointState(f"JointState with {len(names)} names but {len(positions)} positions")
        taken: dict[str, float] = {}
        for name, value in zip(names, positions, strict=True):
            follower = self._leader_to_follower.get(name)
            if follower is None:
                continue  # the leader publishes joints the follower does not have (its own sensors, ...)
            if not math.isfinite(value):
                raise MalformedJointState(f"JointState: joint {name!r} reads {value}")
            taken[follower] = self._convert(follower, float(value))
        self.latest.update(taken)
        return len(taken)

    def _convert(self, follower: str, value: float) -> float:
        j = self.joints[follower]
        if j.index < 0:
            closed, open_ = self.cfg.gripper_range.get(follower) or self._grip_native[follower] or (0.0, 1.0)
            return float(np.clip((value - closed) / (open_ - closed), 0.0, 1.0))
        value = self.cfg.signs.get(follower, 1.0) * value + self.cfg.offsets.get(follower, 0.0)
        return float(np.clip(value, j.lo, j.hi))

    def commands(self) -> dict[str, ArmCommand]:
        """Per arm, the joint targets (rad, clipped to the follower's limits) once all its joints were heard,
        and the gripper opening once heard."""
        arms: dict[str, ArmCommand] = {}
        for arm, dof in self._arm_dof.items():
            q = np.full(dof, np.nan)
            gripper = None
            for name, j in self.joints.items():
                if j.arm == arm and name in self.latest:
                    if j.index < 0:
                        gripper = self.latest[name]
                    else:
                        q[j.index] = self.latest[name]
            complete = bool(np.all(np.isfinite(q)))
            if complete or gripper is not None:
                arms[arm] = ArmCommand(joints=q if complete else None, gripper=gripper)
        return arms


class LeaderDevice:
    """Leader arms over ROS 2 as a :class:`~robot_policy.teleop.device.TeleopDevice` (module docstring)."""

    name = "leader"
    live = True
    finished = False

    def __init__(self, mapping: LeaderMapping, node_name: str = "teleop_leader") -> None:
        self.mapping = mapping
        self.node_name = node_name
        self._lock = threading.Lock()
        self._inbox: list[tuple[list[str], list[float]]] = []
        self._last_heard = -math.inf
        self.dropped = 0
        self.received = 0
        self._ros: dict[str, Any] = {}

    def __enter__(self) -> Self:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import JointState

        context = rclpy.Context()
        rclpy.init(args=[], context=context)
        node = rclpy.create_node(self.node_name, context=context)
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.BEST_EFFORT)  # sensor data: newest wins
        node.create_subscription(JointState, self.mapping.cfg.topic, self._on_message, qos)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        thread = threading.Thread(target=self._spin, args=(executor,), name="teleop-leader", daemon=True)
        self._ros = {"context": context, "node": node, "executor": executor, "thread": thread}
        thread.start()
        return self

    @staticmethod
    def _spin(executor: Any) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            executor.spin()
        except ExternalShutdownException:
            pass

    def _on_message(self, msg: Any) -> None:
        with self._lock:
            self._inbox.append((list(msg.name), list(msg.position)))

    @property
    def subscribed_publishers(self) -> int:
        """How many publishers the leader topic's subscription has matched (0 before discovery)."""
        node = self._ros.get("node")
        return 0 if node is None else int(node.count_publishers(self.mapping.cfg.topic))

    def poll(self, t: float) -> TeleopCommand:
        with self._lock:
            inbox, self._inbox = self._inbox, []
        for names, positions in inbox:
            try:
                self.mapping.update(names, positions)
                self.received += 1
                self._last_heard = time.monotonic()
            except MalformedJointState:
                self.dropped += 1
        age = time.monotonic() - self._last_heard
        fresh = age <= self.mapping.cfg.stale_s
        arms = self.mapping.commands() if fresh else {}
        state = "following" if fresh else ("no leader yet" if self.received == 0 else f"leader silent {age:.1f} s")
        dropped = f", dropped {self.dropped}" if self.dropped else ""
        return TeleopCommand(arms=arms, status=f"leader {self.mapping.cfg.topic}: {state}{dropped}")

    def reset(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self._ros:
            return
        import rclpy

        ros, self._ros = self._ros, {}
        ros["executor"].shutdown()
        ros["node"].destroy_node()
        rclpy.try_shutdown(context=ros["context"])
        ros["thread"].join(timeout=5)
