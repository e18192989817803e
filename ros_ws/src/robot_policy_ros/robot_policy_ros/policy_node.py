"""``policy_node``: the serving node, an rclpy LifecycleNode over :class:`robot_policy.runtime.controller.PolicyController`.

Lifecycle (driven by ``/policy_node/change_state`` from another process, or by ``robot-policy sil``):

* configure: load the checkpoint or deploy bundle (``policy`` parameter), build the controller and warm the
  backend with one inference; create the lifecycle publishers;
* activate: start control (a new episode for the policy: its noise generator is reset to ``seed``);
* deactivate: hold (the arms keep the last commanded position; nothing from the policy is sent);
* cleanup / shutdown: release the policy and the runner's thread.

Topics (DESIGN.md): ``/joint_states``, ``/<arm>/eef_pose``, ``/object_state`` in; one
``/<arm>_controller/joint_trajectory`` per arm out; ``/policy/estop`` (std_msgs/Bool, latched) in;
``/diagnostics`` out with loop timing, the watchdog's mode and the safety filter's interventions. A
malformed message is dropped with a diagnostic and nothing is sent because of it. The node converts
messages; every decision (what to run, what is safe, when to hold) is the controller's.

Parameters: ``config/policy_node.yaml`` (documented there and in the README). ``rig_calibration`` names the
rig's calibration (``calib/RIG``): its base-to-base transform goes to the controller, and a missing or stale
one is a warning in the log and a WARN status in ``/diagnostics`` (``calibration_required``: configure fails).
"""

from __future__ import annotations

import json
import sys

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rclpy._rclpy_pybind11 import RCLError
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from robot_policy.runtime.controller import ControllerConfig, PolicyController, load_serving_policy
from robot_policy.runtime.dds import require_loopback
from robot_policy.runtime.rig import RigCalibrationStatus, load_rig_calibration
from robot_policy.runtime.robot_io import MalformedMessage
from robot_policy_ros import messages, topics


class PolicyNode(LifecycleNode):
    def __init__(self) -> None:
        super().__init__("policy_node")
        self.declare_parameter("policy", "")
        self.declare_parameter("backend", "")            # bundle backend: torch | torch.compile | onnxruntime | tensorrt
        self.declare_parameter("embodiment", "")         # default: the policy's own
        self.declare_parameter("language", "")           # default: the policy's instruction
        self.declare_parameter("object_state_dim", 0)
        self.declare_parameter("joint_names", [""])      # [""]: the embodiment's default names
        self.declare_parameter("seed", 0)
        self.declare_parameter("loop_hz", 0.0)           # 0: the embodiment's control rate
        self.declare_parameter("obs_timeout_s", 0.15)
        self.declare_parameter("position_margin", 0.01)
        self.declare_parameter("max_first_jump", 0.3)
        self.declare_parameter("scheduler", "none")      # none | temporal_ensemble | rtc
        self.declare_parameter("execute_horizon", 0)     # 0: the policy's own
        self.declare_parameter("diagnostics_period_s", 1.0)
        self.declare_parameter("rig_calibration", "")      # calib/RIG or its base_to_base.yaml; "": none
        self.declare_parameter("calibration_max_age_days", 90.0)  # older warns; 0: no age limit
        self.declare_parameter("calibration_required", False)     # a missing base-to-base file fails configure
        self.controller: PolicyController | None = None
        self.calibration: RigCalibrationStatus | None = None
        self._timer = None
        self._pubs: dict[str, object] = {}
        self._diag_pub = None
        self._last_diag = 0.0

    # ---- lifecycle --------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = {name: self.get_parameter(name).value for name in (
            "policy", "backend", "embodiment", "language", "object_state_dim", "joint_names", "seed", "loop_hz",
            "obs_timeout_s", "position_margin", "max_first_jump", "scheduler", "execute_horizon")}
        try:
            policy, interface = load_serving_policy(
                str(p["policy"]), backend=str(p["backend"]) or None, embodiment=str(p["embodiment"]) or None,
                language=str(p["language"]) or None, object_state_dim=int(p["object_state_dim"]),
                joint_names=[n for n in p["joint_names"] if n] or None)
            cfg = ControllerConfig(loop_hz=float(p["loop_hz"]) or None, obs_timeout_s=float(p["obs_timeout_s"]),
                                   position_margin=float(p["position_margin"]),
                                   max_first_jump=float(p["max_first_jump"]), scheduler=str(p["scheduler"]),
                                   execute_horizon=int(p["execute_horizon"]) or None)
            self.calibration = self._load_calibration()
            rig = None if self.calibration is None else self.calibration.transform
            self.controller = PolicyController(policy, interface, cfg, clock=self._now, rig=rig)
            self.controller.warm()
        except Exception as e:  # noqa: BLE001 -- any load error fails the transition, with its reason logged
            self.get_logger().error(f"configure failed: {type(e).__name__}: {e}")
            return TransitionCallbackReturn.FAILURE
        itf = self.controller.interface
        self._pubs = {arm: self.create_lifecycle_publisher(JointTrajectory, topics.TRAJECTORY.format(arm=arm),
                                                           topics.COMMAND_QOS) for arm in itf.arm_joints}
        self._diag_pub = self.create_lifecycle_publisher(DiagnosticArray, topics.DIAGNOSTICS, topics.DIAGNOSTICS_QOS)
        self.create_subscription(JointState, topics.JOINT_STATES, self._on_joints, topics.SENSOR_QOS)
        for arm in itf.arms_with_eef:
            self.create_subscription(PoseStamped, topics.EEF_POSE.format(arm=arm),
                                     lambda m, arm=arm: self._on_eef(arm, m), topics.SENSOR_QOS)
        if itf.object_state_dim:
            self.create_subscription(Float64MultiArray, topics.OBJECT_STATE, self._on_object, topics.SENSOR_QOS)
        self.create_subscription(Bool, topics.ESTOP, self._on_estop, topics.ESTOP_QOS)
        self._timer = self.create_timer(1.0 / self.controller.loop_hz, self._tick)
        self.get_logger().info(f"configured: {p['policy']} ({self.controller.describe()})")
        return super().on_configure(state)

    def _load_calibration(self) -> RigCalibrationStatus | None:
        """The rig's base-to-base calibration (``rig_calibration``); each problem (missing, too old, another
        camera's) is a warning in the log and in /diagnostics."""
        path = str(self.get_parameter("rig_calibration").value)
        if not path:
            return None
        age = float(self.get_parameter("calibration_max_age_days").value)
        status = load_rig_calibration(path, max_age_days=age or None,
                                      required=bool(self.get_parameter("calibration_required").value))
        for problem in status.problems:
            self.get_logger().warning(f"rig calibration: {problem}")
        if status.transform is not None:
            tf = status.transform
            self.get_logger().info(f"rig calibration: T_{tf.parent}_{tf.child} from {status.file} "
                                   f"(calibrated {tf.calibrated_at})")
        return status

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        assert self.controller is not None
        self.controller.start(seed=int(self.get_parameter("seed").value), now=self._now())
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        assert self.controller is not None
        self.controller.stop(self._now())
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        if self.controller is not None:
            self.controller.close()
            self.controller = None

    # ---- inputs -----------------------------------------------------------------------------------
    def _on_joints(self, msg: JointState) -> None:
        if self.controller is not None:
            self._guard(lambda: self.controller.assembler.update_joints(  # type: ignore[union-attr]
                msg.name, msg.position, msg.velocity, messages.to_seconds(msg.header.stamp)))

    def _on_eef(self, arm: str, msg: PoseStamped) -> None:
        if self.controller is not None:
            pos, quat = messages.pose_arrays(msg)
            self._guard(lambda: self.controller.assembler.update_eef(  # type: ignore[union-attr]
                arm, pos, quat, messages.to_seconds(msg.header.stamp)))

    def _on_object(self, msg: Float64MultiArray) -> None:
        if self.controller is not None:
            self._guard(lambda: self.controller.assembler.update_object(  # type: ignore[union-attr]
                msg.data, self._now()))

    def _guard(self, update) -> None:
        try:
            update()
        except MalformedMessage as e:
            assert self.controller is not None
            self.controller.record_malformed(str(e))
            self.get_logger().warning(f"message rejected: {e}", throttle_duration_sec=1.0)

    def _on_estop(self, msg: Bool) -> None:
        if self.controller is not None:
            self.controller.set_estop(bool(msg.data), self._now())

    # ---- the control loop -------------------------------------------------------------------------
    def _tick(self) -> None:
        if self.controller is None:
            return
        now = self._now()
        command = self.controller.tick(now)
        if command is not None:
            for arm, pub in self._pubs.items():
                idx = list(self.controller.interface.arm_joints[arm])
                names = [self.controller.interface.joint_names[i] for i in idx]
                pub.publish(messages.joint_trajectory(names, command.positions[:, idx], command.dt,
                                                      command.start))
        if self._diag_pub is not None and now - self._last_diag >= float(self.get_parameter("diagnostics_period_s").value):
            self._last_diag = now
            self._diag_pub.publish(self._diagnostics(now))

    def _diagnostics(self, now: float) -> DiagnosticArray:
        assert self.controller is not None
        stats = self.controller.stats()
        status = DiagnosticStatus(name="policy_node: controller", hardware_id="robot_policy",
                                  level=DiagnosticStatus.OK if stats.get("mode") == "run" else DiagnosticStatus.WARN,
                                  message=str(stats.get("reason", stats.get("mode"))),
                                  values=[KeyValue(key=k, value=json.dumps(v)) for k, v in stats.items()])
        msg = DiagnosticArray(status=[status])
        if self.calibration is not None:
            cal = self.calibration
            msg.status.append(DiagnosticStatus(
                name="policy_node: rig calibration", hardware_id="robot_policy",
                level=DiagnosticStatus.WARN if cal.problems else DiagnosticStatus.OK,
                message="; ".join(cal.problems) or f"{cal.file}: ok",
                values=[KeyValue(key=k, value=json.dumps(v)) for k, v in cal.summary().items()]))
        msg.header.stamp = messages.to_time(now)
        return msg

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9


def main(argv: list[str] | None = None) -> None:
    require_loopback()
    rclpy.init(args=sys.argv if argv is None else argv)
    node = PolicyNode()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException, RCLError):  # ROS2.md pitfall 3
        pass
    finally:
        node._release()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
