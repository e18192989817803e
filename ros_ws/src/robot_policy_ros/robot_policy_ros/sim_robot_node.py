"""``sim_robot_node``: a simulated bimanual robot on the topics of a real one.

Runs a task of :mod:`robot_policy.envs` (default ``pybullet_bimanual_lift``) in real time at the task's
control rate and speaks the interface the policy node uses on a rig:

* subscribes ``/<arm>_controller/joint_trajectory`` per arm with joint_trajectory_controller semantics:
  point times are the header stamp (zero: now) plus ``time_from_start``; a new trajectory replaces the
  active one for its joints; between points the command is interpolated linearly; before the first point
  the first point is commanded, after the last one it is held;
* publishes ``/joint_states`` (arm joints and finger gaps, with velocities), ``/<arm>/eef_pose`` and
  ``/object_state`` after every control step, stamped with the time the state was read, built from the
  env's observation (so its observation noise, if the task has any, is on the wire too);
* services ``/sim/reset`` (std_srvs/Trigger: reset to the ``seed`` parameter, set it first through the
  node's parameter service, and start the episode) and ``/sim/status`` (Trigger; ``message`` is JSON:
  seed, steps, running, success, commands received, trajectories rejected).

Between episodes (and after the episode ends: success or the time limit) the simulation is paused and
states keep being published. Run: ``python -m robot_policy_ros.sim_robot_node --ros-args -p task:=...``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from rclpy._rclpy_pybind11 import RCLError
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from robot_policy.envs.registry import load_task_config, make_env
from robot_policy.keys import OBS_OBJECT, OBS_STATE
from robot_policy.runtime.dds import require_loopback
from robot_policy.runtime.robot_io import RobotInterface
from robot_policy.runtime.trajectory import TimedTrajectory, TrajectoryFollower
from robot_policy_ros import messages, topics


class SimRobotNode(Node):
    def __init__(self) -> None:
        super().__init__("sim_robot")
        task_name = self.declare_parameter("task", "pybullet_bimanual_lift").value
        self.declare_parameter("seed", 0)
        self.frame = self.declare_parameter("base_frame", "world").value
        max_steps = int(self.declare_parameter("max_steps", 0).value)  # 0: the task's own time limit
        overrides = {"max_steps": max_steps} if max_steps > 0 else {}
        self.env = make_env(load_task_config(str(task_name), **overrides))
        self.itf = RobotInterface.from_embodiment(self.env.embodiment, self.env.object_state_dim)
        self.dt = 1.0 / self.env.task.control_hz
        self._running = False
        self._seed: int | None = None
        self._success = False
        self._steps = 0
        self._commands = 0
        self._rejected = 0
        self._last_reject = ""
        self._obs: dict[str, np.ndarray] | None = None

        self._pub_joints = self.create_publisher(JointState, topics.JOINT_STATES, topics.SENSOR_QOS)
        self._pub_eef = {arm: self.create_publisher(PoseStamped, topics.EEF_POSE.format(arm=arm), topics.SENSOR_QOS)
                         for arm in self.itf.arms_with_eef}
        self._pub_object = (self.create_publisher(Float64MultiArray, topics.OBJECT_STATE, topics.SENSOR_QOS)
                            if self.itf.object_state_dim else None)
        for arm, index in self.itf.arm_joints.items():
            names = [self.itf.joint_names[i] for i in index]
            self.create_subscription(JointTrajectory, topics.TRAJECTORY.format(arm=arm),
                                     lambda msg, arm=arm, names=names: self._on_trajectory(arm, names, msg),
                                     topics.COMMAND_QOS)
        self.create_service(Trigger, topics.SIM_RESET, self._on_reset)
        self.create_service(Trigger, topics.SIM_STATUS, self._on_status)
        self._obs, _ = self.env.reset(seed=0)
        self.follower = TrajectoryFollower(self.itf.arm_joints, self._hold_row())
        self.create_timer(self.dt, self._tick)

    # ---- commands ---------------------------------------------------------------------------------
    def _on_trajectory(self, arm: str, arm_names: list[str], msg: JointTrajectory) -> None:
        now = self._now()
        try:
            names, times, positions = messages.trajectory_arrays(msg, now)
            if sorted(names) != sorted(arm_names):
                raise ValueError(f"joints {names} are not the {arm} arm's {arm_names}")
            order = [names.index(n) for n in arm_names]
            self.follower.follow(arm, TimedTrajectory(times, positions[:, order]))
            self._commands += 1
        except ValueError as e:
            self._rejected += 1
            self._last_reject = f"{arm}: {e}"
            self.get_logger().warning(f"trajectory rejected: {self._last_reject}")

    def _hold_row(self) -> np.ndarray:
        return self.itf.embodiment.action.unified_to_flat(self.env.current_unified_action())

    # ---- the control step -------------------------------------------------------------------------
    def _tick(self) -> None:
        if self._running:
            row = self.follower.command(self._now())
            unified = self.itf.embodiment.action.flat_to_unified(row).astype(np.float32)
            self._obs, _, terminated, truncated, info = self.env.step(unified)
            self._steps += 1
            if terminated or truncated:
                self._success = bool(info["success"])
                self._running = False
                self.get_logger().info(f"episode seed {self._seed}: {'success' if self._success else 'failure'} "
                                       f"after {self._steps} steps")
        self._publish(self._now())

    def _publish(self, stamp: float) -> None:
        assert self._obs is not None
        wire = self.itf.wire_state(self._obs[OBS_STATE])
        self._pub_joints.publish(messages.joint_state(self.itf.joint_names, wire.position, wire.velocity, stamp))
        for arm, pub in self._pub_eef.items():
            pos, quat = wire.eef[arm]
            pub.publish(messages.pose_stamped(pos, quat, stamp, self.frame))
        if self._pub_object is not None:
            self._pub_object.publish(messages.float_array(self._obs[OBS_OBJECT]))

    # ---- episode control --------------------------------------------------------------------------
    def _on_reset(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        seed = int(self.get_parameter("seed").value)
        self._obs, _ = self.env.reset(seed=seed)
        self.follower.reset(self._hold_row())
        self._seed, self._steps, self._success, self._running = seed, 0, False, True
        self._publish(self._now())
        response.success, response.message = True, json.dumps(self._status())
        return response

    def _on_status(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success, response.message = True, json.dumps(self._status())
        return response

    def _status(self) -> dict[str, Any]:
        return {"seed": self._seed, "steps": self._steps, "running": self._running, "success": self._success,
                "commands": self._commands, "rejected": self._rejected, "last_reject": self._last_reject,
                "max_steps": self.env.task.max_steps}

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9


def main(argv: list[str] | None = None) -> None:
    require_loopback()
    rclpy.init(args=sys.argv if argv is None else argv)
    node = SimRobotNode()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException, RCLError):  # ROS2.md pitfall 3
        pass
    finally:
        node.env.close()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
