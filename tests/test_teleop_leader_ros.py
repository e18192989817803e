"""Leader arms for real: sensor_msgs/JointState published over rclpy (Fast DDS on loopback, a domain of its
own) drive the simulated follower through ``robot-policy teleop device=leader`` (ros)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from robot_policy.cli.main import main
from robot_policy.data.store import EpisodeStore
from robot_policy.runtime.dds import loopback_env
from robot_policy.spaces.embodiment import load_embodiment
from robot_policy.spaces.unified import slot
from robot_policy.teleop.event_log import StreamWriter

HOME = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785])  # sim/pybullet_bimanual_lift/scene.yaml


@pytest.mark.ros
@pytest.mark.slow
def test_leader_joint_states_drive_the_follower_within_its_limits(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState

    domain = 60 + os.getpid() % 30  # parallel DDS participants never meet
    env = loopback_env(domain, log_dir=tmp_path / "ros_logs")
    for key in ("FASTDDS_DEFAULT_PROFILES_FILE", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID",
                "RMW_IMPLEMENTATION", "ROS_LOG_DIR"):
        monkeypatch.setenv(key, env[key])
    target = HOME.copy()
    target[0] += 0.3  # reachable
    target[6] = 3.3  # beyond the follower's 2.8973 rad limit
    context = rclpy.Context()
    rclpy.init(args=[], context=context)
    node = rclpy.create_node("fake_leader", context=context)
    pub = node.create_publisher(JointState, "/gello/joint_states",
                                QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT))
    stop = threading.Event()

    def publish() -> None:
        msg = JointState()
        msg.name = ["gello_1", *[f"right_joint_pos_{i}" for i in range(2, 8)], "right_gripper", "gello_button"]
        msg.position = [*target.tolist(), 0.02, 1.0]  # gripper 0.02 m of the 0.08 m stroke
        while not stop.is_set():
            msg.header.stamp = node.get_clock().now().to_msg()
            pub.publish(msg)
            stop.wait(0.02)

    keys = tmp_path / "keys.jsonl"
    with StreamWriter(keys, "keyboard") as out:  # discovery takes <= 0.25 s: the episode starts at 0.5 s
        for t, key in ((0.5, "n"), (3.0, "enter"), (3.1, "q")):
            out.write(t, key=key)
    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    store = tmp_path / "leader.zarr"
    try:
        rc = main(["teleop", "device=leader", f"keys={keys}", f"out={store}", f"domain_id={domain}",
                   "leader.topic=/gello/joint_states", "+leader.joint_map.gello_1=right_joint_pos_1"])
    finally:
        stop.set()
        thread.join()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    assert rc == 0
    spec = load_embodiment("panda_bimanual_joint")
    ep = EpisodeStore.open(store).get_episode(0)
    q = ep["action"][:, slot("right_arm_joint_pos")][:, :7].astype(np.float64)  # (T, 7) commanded
    assert len(q) == 50  # 2.5 s at 20 Hz
    hi = np.array(spec.arms["right"].joint_pos_max)
    np.testing.assert_allclose(q[-1], np.minimum(target, hi), atol=1e-5)  # followed, clipped at the limit
    speed = np.abs(np.diff(np.vstack([HOME, q]), axis=0)) * 20.0
    assert np.all(speed <= np.array(spec.arms["right"].joint_vel_max) * 0.5 + 1e-4)  # approached at the limit
    assert ep["action"][-1, slot("right_gripper_open")][0] == pytest.approx(0.25)
    left = ep["action"][:, slot("left_arm_joint_pos")][:, :7]
    np.testing.assert_allclose(left, np.tile(HOME, (len(left), 1)), atol=1e-4)  # no leader for it: it holds
    assert os.environ["ROS_DOMAIN_ID"] == str(domain)  # the session restored the environment it found
