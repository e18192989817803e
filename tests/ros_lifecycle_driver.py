"""Drives a running policy_node from another process (tests/test_ros_sil.py starts both).

Publishes a robot's observations (joint states, end-effector poses, object state of a real
``pybullet_bimanual_lift`` reset) at 20 Hz, walks the node through configure -> (inactive) -> activate ->
e-stop -> deactivate -> activate, sends malformed joint states, and prints one JSON line: how many
trajectories arrived in each phase and what the node's diagnostics said.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from robot_policy_ros import messages, topics
from std_msgs.msg import Bool
from trajectory_msgs.msg import JointTrajectory

from robot_policy.envs.registry import make_env
from robot_policy.keys import OBS_OBJECT, OBS_STATE
from robot_policy.runtime.robot_io import RobotInterface


def main() -> None:
    env = make_env("pybullet_bimanual_lift")
    obs, _ = env.reset(seed=0)
    itf = RobotInterface.from_embodiment(env.embodiment, env.object_state_dim)
    native = env.embodiment.state.from_unified(obs[OBS_STATE])
    pos = np.concatenate([native[f.name] for f in env.embodiment.action.fields])
    vel = np.zeros_like(pos)

    rclpy.init()
    node = Node("lifecycle_driver")
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    pub_js = node.create_publisher(JointState, topics.JOINT_STATES, topics.SENSOR_QOS)
    pub_eef = {a: node.create_publisher(PoseStamped, topics.EEF_POSE.format(arm=a), topics.SENSOR_QOS)
               for a in itf.arms_with_eef}
    pub_obj = node.create_publisher(Float64MultiArray, topics.OBJECT_STATE, topics.SENSOR_QOS)
    pub_estop = node.create_publisher(Bool, topics.ESTOP, topics.ESTOP_QOS)
    counts = {"n": 0}
    diag: dict[str, object] = {}
    node.create_subscription(JointTrajectory, topics.TRAJECTORY.format(arm="right"),
                             lambda _m: counts.__setitem__("n", counts["n"] + 1), topics.COMMAND_QOS)

    def on_diag(msg: DiagnosticArray) -> None:
        for s in msg.status:
            if s.name.startswith("policy_node"):
                diag.update({kv.key: json.loads(kv.value) for kv in s.values})

    node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, on_diag, topics.DIAGNOSTICS_QOS)
    malformed = {"on": False}

    def publish() -> None:
        now = node.get_clock().now().nanoseconds * 1e-9
        if malformed["on"]:
            bad = [messages.joint_state(itf.joint_names[:-1], pos[:-1], vel[:-1], now),      # a joint missing
                   messages.joint_state(itf.joint_names, pos[:-2], vel, now),                 # wrong length
                   messages.joint_state(itf.joint_names, np.full_like(pos, np.nan), vel, now)]  # NaN
            for m in bad:
                pub_js.publish(m)
            return
        pub_js.publish(messages.joint_state(itf.joint_names, pos, vel, now))
        for a, p in pub_eef.items():
            p.publish(messages.pose_stamped(native[f"{a}_eef_pos"], native[f"{a}_eef_quat"], now, "world"))
        pub_obj.publish(messages.float_array(obs[OBS_OBJECT]))

    node.create_timer(0.05, publish)
    client = node.create_client(ChangeState, "/policy_node/change_state")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()

    def transition(tid: int) -> None:
        assert client.wait_for_service(timeout_sec=120), "policy_node's lifecycle service did not appear"
        req = ChangeState.Request()
        req.transition.id = tid
        fut = client.call_async(req)
        deadline = time.monotonic() + 120
        while not fut.done():
            assert time.monotonic() < deadline, f"transition {tid} did not answer"
            time.sleep(0.01)
        assert fut.result().success, f"transition {tid} failed"

    def count_for(seconds: float) -> int:
        start = counts["n"]
        time.sleep(seconds)
        return counts["n"] - start

    report: dict[str, object] = {}
    transition(Transition.TRANSITION_CONFIGURE)
    report["sent_while_inactive"] = count_for(1.0)
    transition(Transition.TRANSITION_ACTIVATE)
    report["sent_while_active"] = count_for(2.0)
    start = counts["n"]
    pub_estop.publish(Bool(data=True))
    time.sleep(0.5)
    pub_estop.publish(Bool(data=False))  # released: still latched until an explicit reset
    transition(Transition.TRANSITION_DEACTIVATE)
    transition(Transition.TRANSITION_ACTIVATE)
    time.sleep(1.5)
    report["sent_after_estop"] = counts["n"] - start
    report["mode_after_estop_reactivate"] = diag.get("mode")
    malformed["on"] = True
    time.sleep(0.6)
    malformed["on"] = False
    time.sleep(0.5)
    report["malformed_messages"] = diag.get("malformed_messages", 0)
    report["last_malformed"] = diag.get("last_malformed", "")
    transition(Transition.TRANSITION_DEACTIVATE)
    transition(Transition.TRANSITION_CLEANUP)
    executor.shutdown()
    node.destroy_node()
    rclpy.try_shutdown()
    env.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
