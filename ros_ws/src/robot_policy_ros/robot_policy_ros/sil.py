"""Software in the loop: the simulated robot and the policy node as two processes over ROS 2 on loopback,
driven through the policy node's lifecycle, N episodes, recorded as a rosbag2 (mcap) bag.

Called by ``robot-policy sil`` (:mod:`robot_policy.pipelines.sil`), in a process of its own: it sets the
loopback DDS environment before rclpy starts. Per episode: set the seed on both nodes (their parameter
services), reset the simulator (``/sim/reset``), activate the policy node, wait until the simulator reports
the episode over (success or the time limit), deactivate. The bag holds ``/joint_states``, the per-arm
trajectories, the e-stop and ``/diagnostics`` as they went over the wire.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robot_policy.runtime.dds import loopback_env


@dataclass
class SilEpisode:
    seed: int
    success: bool
    length: int
    wall_s: float
    commands: int
    rejected: int
    diagnostics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class SilRun:
    episodes: list[SilEpisode]
    bag: Path | None
    bag_counts: dict[str, int]


def _param(name: str, value: Any) -> list[str]:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (list, tuple)):
        text = "[" + ",".join(json.dumps(v) for v in value) + "]"
    else:
        text = str(value)
    return ["-p", f"{name}:={text}"]


def _spawn(module: str, params: dict[str, Any], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", module, "--ros-args"]
    for k, v in params.items():
        args += _param(k, v)
    handle = log.open("wb")
    return subprocess.Popen(args, env=env, stdout=handle, stderr=subprocess.STDOUT)


class _Driver:
    """The orchestrating node: lifecycle, parameter and episode service clients, and the bag's subscriptions."""

    def __init__(self, arms: Sequence[str], bag: Any | None) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from lifecycle_msgs.srv import ChangeState, GetState
        from rcl_interfaces.srv import SetParameters
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import JointState
        from std_srvs.srv import Trigger
        from trajectory_msgs.msg import JointTrajectory

        from robot_policy_ros import topics

        self.rclpy = rclpy
        self.node = Node("sil_driver")
        self.change_state = self.node.create_client(ChangeState, "/policy_node/change_state")
        self.get_state = self.node.create_client(GetState, "/policy_node/get_state")
        self.set_policy_params = self.node.create_client(SetParameters, "/policy_node/set_parameters")
        self.set_sim_params = self.node.create_client(SetParameters, "/sim_robot/set_parameters")
        self.reset = self.node.create_client(Trigger, topics.SIM_RESET)
        self.status = self.node.create_client(Trigger, topics.SIM_STATUS)
        self.bag = bag
        self.last_diagnostics: dict[str, Any] = {}
        self.bag_errors: list[str] = []
        self._lock = threading.Lock()
        # best effort like the publisher, but a deep queue: the recorder wants every sample, not the newest
        record_qos = QoSProfile(depth=200, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)
        self.node.create_subscription(JointState, topics.JOINT_STATES, self._recorder(topics.JOINT_STATES),
                                      record_qos)
        for arm in arms:
            topic = topics.TRAJECTORY.format(arm=arm)
            self.node.create_subscription(JointTrajectory, topic, self._recorder(topic), topics.COMMAND_QOS)
        self.node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, self._on_diagnostics,
                                      topics.DIAGNOSTICS_QOS)
        self.executor = MultiThreadedExecutor(num_threads=2)
        self.executor.add_node(self.node)
        self._spin = threading.Thread(target=self.executor.spin, daemon=True)
        self._spin.start()

    def _recorder(self, topic: str) -> Callable[[Any], None]:
        def record(msg: Any) -> None:
            if self.bag is None:
                return
            try:
                with self._lock:
                    self.bag.record(topic, msg, time.time_ns())
            except Exception as e:  # noqa: BLE001 -- a failed write must not stop the executor (and the run)
                self.bag_errors.append(f"{topic}: {type(e).__name__}: {e}")
        return record

    def _on_diagnostics(self, msg: Any) -> None:
        from robot_policy_ros.messages import to_seconds

        self._recorder("/diagnostics")(msg)
        for status in msg.status:
            if status.name.startswith("policy_node"):
                values = {kv.key: json.loads(kv.value) for kv in status.values}
                values["stamp"] = to_seconds(msg.header.stamp)
                self.last_diagnostics = values

    def call(self, client: Any, request: Any, timeout: float = 30.0) -> Any:
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {client.srv_name} did not appear within {timeout:.0f} s")
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"service {client.srv_name} did not answer within {timeout:.0f} s")
            time.sleep(0.002)
        return future.result()

    def transition(self, transition_id: int, timeout: float = 120.0) -> None:
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request()
        request.transition.id = transition_id
        if not self.call(self.change_state, request, timeout).success:
            raise RuntimeError(f"policy_node refused lifecycle transition {transition_id} (its log has the reason)")

    def set_params(self, client: Any, values: dict[str, Any]) -> None:
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        from rcl_interfaces.srv import SetParameters

        request = SetParameters.Request()
        for name, value in values.items():
            assert isinstance(value, int)
            request.parameters.append(Parameter(name=name, value=ParameterValue(
                type=ParameterType.PARAMETER_INTEGER, integer_value=value)))
        result = self.call(client, request)
        bad = [r.reason for r in result.results if not r.successful]
        if bad:
            raise RuntimeError(f"setting {values} on {client.srv_name} failed: {bad}")

    def sim_status(self) -> dict[str, Any]:
        from std_srvs.srv import Trigger

        return json.loads(self.call(self.status, Trigger.Request()).message)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def run_sil(task: str, max_steps: int, policy: str, seeds: Sequence[int], out: Path, *, domain_id: int,
            policy_params: dict[str, Any], arms: Sequence[str], episode_timeout_s: float,
            record_bag: bool = True, startup_timeout_s: float = 120.0,
            on_episode: Callable[[SilEpisode], None] | None = None) -> SilRun:
    """Run ``seeds`` through the two nodes; returns the episodes and where the bag is (``out/bag``)."""
    out.mkdir(parents=True, exist_ok=True)
    env = loopback_env(domain_id, log_dir=out / "ros_logs")
    os.environ.update({k: env[k] for k in ("FASTDDS_DEFAULT_PROFILES_FILE", "ROS_AUTOMATIC_DISCOVERY_RANGE",
                                           "ROS_DOMAIN_ID", "RMW_IMPLEMENTATION", "ROS_LOG_DIR")})
    import rclpy
    from lifecycle_msgs.msg import Transition
    from std_srvs.srv import Trigger

    from robot_policy_ros.bag import BagRecorder

    procs = [
        _spawn("robot_policy_ros.sim_robot_node", {"task": task, "max_steps": max_steps}, env, out / "sim_robot.log"),
        _spawn("robot_policy_ros.policy_node", {"policy": policy, **policy_params}, env, out / "policy_node.log"),
    ]
    bag = BagRecorder(out / "bag") if record_bag else None
    rclpy.init(args=[])
    driver: _Driver | None = None
    episodes: list[SilEpisode] = []
    try:
        driver = _Driver(arms, bag)
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[2]} exited at start with code {p.returncode}; see {out}/*.log")
        driver.transition(Transition.TRANSITION_CONFIGURE, timeout=startup_timeout_s)
        for seed in seeds:
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[2]} died with code {p.returncode}; see {out}/*.log")
            driver.set_params(driver.set_sim_params, {"seed": int(seed)})
            driver.set_params(driver.set_policy_params, {"seed": int(seed)})
            driver.call(driver.reset, Trigger.Request())
            t0 = time.monotonic()
            driver.transition(Transition.TRANSITION_ACTIVATE)
            error = None
            while True:
                status = driver.sim_status()
                if not status["running"]:
                    break
                if time.monotonic() - t0 > episode_timeout_s:
                    error = f"episode timed out after {episode_timeout_s:.0f} s at step {status['steps']}"
                    break
                time.sleep(0.05)
            driver.transition(Transition.TRANSITION_DEACTIVATE)
            episode = SilEpisode(seed=int(seed), success=bool(status["success"]) and error is None,
                                 length=int(status["steps"]), wall_s=time.monotonic() - t0,
                                 commands=int(status["commands"]), rejected=int(status["rejected"]),
                                 diagnostics=dict(driver.last_diagnostics), error=error)
            episodes.append(episode)
            if on_episode is not None:
                on_episode(episode)
        driver.transition(Transition.TRANSITION_CLEANUP)
    finally:
        if driver is not None:
            driver.close()
        rclpy.try_shutdown()
        for p in procs:
            if p.poll() is None:
                p.send_signal(2)  # SIGINT: the nodes shut down cleanly
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        if bag is not None:
            bag.close()
    return SilRun(episodes, out / "bag" if bag is not None else None, dict(bag.counts) if bag else {})
