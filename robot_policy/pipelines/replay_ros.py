"""``robot-policy replay target=ros2``: a recorded episode's actions to the simulated robot over ROS 2.

The robot is ``sim_robot_node`` (the colcon-built ``robot_policy_ros``, ``make ros``), a process of its own on
loopback DDS, driven like a rig: the episode's seed through its parameter service, ``/sim/reset``, then per-arm
``JointTrajectory`` messages with joint_trajectory_controller semantics, and ``/joint_states`` back.

What is sent goes through the runtime's safety stack, as a policy's chunks do (:mod:`robot_policy.runtime`):

1. a safe move from the measured joints to the recorded first action (a straight line at a fraction of the
   joint speed limits, through :class:`SafetyFilter`, then held until it settles), since a rig is never where
   the recording started;
2. the recorded actions, through the same filter (continuing from the safe move's last command and velocity);
3. streamed one control period at a time, each message holding the next ``lookahead`` points stamped on the
   plan's absolute times (so a late message changes nothing), while the :class:`Watchdog` watches the joint
   state stamps: a stale stream stops the replay with a braking trajectory from the last command.

Tracking error: the measured joint positions interpolated at each command's time, against the command (rad).
The plan's pure parts (:func:`runtime_filter`, :func:`plan_commands`, :func:`sample_at`) run without ROS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robot_policy.data.store import EpisodeStore
from robot_policy.envs.registry import env_class, load_task_config, task_config_from_dict
from robot_policy.pipelines.replay import (
    RecordedEpisode,
    ReplayConfig,
    ReplayResult,
    check_embodiment,
    joint_indices,
    tracking_error,
)
from robot_policy.runtime.controller import ControllerConfig
from robot_policy.runtime.dds import loopback_env
from robot_policy.runtime.robot_io import RobotInterface
from robot_policy.runtime.safety import Intervention, JointLimits, SafetyFilter
from robot_policy.runtime.watchdog import Mode, Watchdog, WatchdogConfig
from robot_policy.spaces.embodiment import EmbodimentSpec


def runtime_filter(spec: EmbodimentSpec, cfg: ControllerConfig | None = None) -> SafetyFilter:
    """The safety filter :class:`~robot_policy.runtime.controller.PolicyController` builds for ``spec``: the
    same limits (arm joints shrunk by ``position_margin``, grippers their whole travel), jerk and first jump."""
    cfg = cfg or ControllerConfig()
    margins = np.concatenate([np.full(f.dim, 0.0 if f.gripper is not None else cfg.position_margin)
                              for f in spec.action.fields])
    limits = JointLimits.from_embodiment(spec, jerk_per_acc=cfg.jerk_per_acc, gripper_vel_max=cfg.gripper_vel_max,
                                         gripper_acc_max=cfg.gripper_acc_max).shrunk(margins)
    return SafetyFilter(limits, 1.0 / spec.control_hz, cfg.max_first_jump)


@dataclass(frozen=True)
class ReplayPlan:
    """Every command of a replay, native flat action order (n,), one per control period dt [s]."""

    commands: np.ndarray  # (K + T, n): the safe move (K) then the recorded actions, filtered (T)
    approach_steps: int  # K
    #: max |filtered - recorded| over the recorded part: what the filter changed (rad / m)
    filter_change_max: float
    interventions: dict[str, int]


def plan_commands(filt: SafetyFilter, q: np.ndarray, actions: np.ndarray, speed_fraction: float = 0.3,
                  settle_steps: int = 10) -> ReplayPlan:
    """The safe move from ``q`` (n,) to ``actions[0]`` then ``actions`` (T, n), all through ``filt``.

    The move is a straight line at ``speed_fraction`` of the slowest joint's speed limit (at least one
    period), held ``settle_steps`` periods at the end so the acceleration bound lets the commands arrive
    there before the recording starts. Raises RuntimeError when the filter rejects or truncates either part:
    a replay the filter would not send as recorded is not one to run.
    """
    q = np.asarray(q, np.float64)
    actions = np.asarray(actions, np.float64)
    dt, vel = filt.dt, filt.limits.vel_max
    distance = np.abs(actions[0] - q)
    steps = max(1, int(np.ceil(np.max(distance / (speed_fraction * vel)) / dt)))
    line = q + (actions[0] - q) * (np.arange(1, steps + 1) / steps)[:, None]  # (steps, n)
    approach = np.concatenate([line, np.repeat(actions[:1], settle_steps, axis=0)])
    moved = filt.filter(q, np.zeros_like(q), approach)
    _check(moved.intervention, moved.detail, "safe move")
    last, before = moved.commands[-1], (moved.commands[-2] if len(moved.commands) > 1 else q)
    replay = filt.filter(last, (last - before) / dt, actions)
    _check(replay.intervention, replay.detail, "recorded actions")
    return ReplayPlan(commands=np.concatenate([moved.commands, replay.commands]),
                      approach_steps=len(moved.commands),
                      filter_change_max=float(np.abs(replay.commands - actions).max()),
                      interventions={k: v for k, v in filt.stats().items() if v})


def _check(intervention: Intervention, detail: str, what: str) -> None:
    if intervention not in (Intervention.NONE, Intervention.CLIPPED):
        raise RuntimeError(f"replay: the safety filter {intervention.value} the {what} ({detail}); not sending it")


def sample_at(times: np.ndarray, stamps: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Measured positions (S, J) stamped ``stamps`` (S,) [s], linearly interpolated at ``times`` (T,) -> (T, J).
    Raises ValueError when a time lies outside the stamps: no extrapolated measurement."""
    order = np.argsort(stamps)
    stamps, positions = np.asarray(stamps)[order], np.asarray(positions)[order]
    if len(stamps) < 2 or times.min() < stamps[0] or times.max() > stamps[-1]:
        raise ValueError(f"sample_at: times [{times.min():.3f}, {times.max():.3f}] s outside the joint states' "
                         f"[{stamps[0] if len(stamps) else np.nan:.3f}, {stamps[-1] if len(stamps) else np.nan:.3f}]")
    return np.stack([np.interp(times, stamps, positions[:, j]) for j in range(positions.shape[1])], axis=1)


@dataclass
class _Recorder:
    """/joint_states as (stamp [s], positions in ``joint_names`` order) rows, from the executor's thread."""

    joint_names: tuple[str, ...]
    stamps: list[float] = field(default_factory=list)
    positions: list[np.ndarray] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, stamp: float, names: list[str], position: list[float]) -> None:
        where = {n: i for i, n in enumerate(names)}
        row = np.array([position[where[n]] for n in self.joint_names])
        with self.lock:
            self.stamps.append(stamp)
            self.positions.append(row)

    def latest(self) -> tuple[float, np.ndarray] | None:
        with self.lock:
            return (self.stamps[-1], self.positions[-1]) if self.stamps else None

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            return np.asarray(self.stamps), np.stack(self.positions)


def replay_on_ros(cfg: ReplayConfig, store: EpisodeStore, ep: RecordedEpisode, lookahead: int = 10,
                  startup_timeout_s: float = 60.0,
                  on_stream: Callable[[subprocess.Popen[bytes]], None] | None = None) -> ReplayResult:
    """Replay ``ep``'s actions to a fresh ``sim_robot_node`` over ROS 2 (see the module docstring).
    ``on_stream`` gets the node's process as the streaming starts (fault injection in tests: stop it)."""
    from robot_policy.pipelines.sil import ROS_INSTALL, _import_ros_package

    task = (load_task_config(cfg.task) if cfg.task else
            task_config_from_dict(dict(store.attrs.get("task") or {}), where=f"{store.path} attrs.task"))
    check_embodiment(store.embodiment.name, task.embodiment, f"{store.path} episode {ep.index} -> task {task.name}")
    _import_ros_package()  # a clear error when `make ros` has not run
    spec = store.embodiment
    itf = RobotInterface.from_embodiment(spec, env_class(task.env).object_state_dim)
    filt = runtime_filter(spec)
    actions = spec.action.unified_to_flat(ep.action)  # (T, n) native: rad, grippers m
    _, names = joint_indices(spec)
    # the same joints in native flat order: action fields in order, arm joint slots only
    flat: list[int] = []
    start = 0
    for f in spec.action.fields:
        if f.slot.endswith("arm_joint_pos"):
            flat.extend(range(start, start + f.dim))
        start += f.dim
    out = Path(cfg.out or f"replay/{Path(cfg.store).stem}_ep{cfg.episode}")
    out.mkdir(parents=True, exist_ok=True)
    domain = cfg.domain_id if cfg.domain_id >= 0 else 1 + os.getpid() % 100
    env = loopback_env(domain, log_dir=out / "ros_logs")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROS_INSTALL), env.get("PYTHONPATH", "")) if p)
    # the driver's rclpy is this process's: the loopback settings go in before it starts, and come out after
    dds_keys = ("FASTDDS_DEFAULT_PROFILES_FILE", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID",
                "RMW_IMPLEMENTATION", "ROS_LOG_DIR")
    saved = {k: os.environ.get(k) for k in dds_keys}
    os.environ.update({k: env[k] for k in dds_keys})
    # time limit: the recording plus a generous safe move, so the node never ends the episode on its own clock
    max_steps = len(actions) + 400
    args = [sys.executable, "-m", "robot_policy_ros.sim_robot_node", "--ros-args", "-p", f"task:={task.name}",
            "-p", f"max_steps:={max_steps}"]
    log = (out / "sim_robot.log").open("wb")
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        run = _drive(itf, filt, actions, ep, lookahead, startup_timeout_s, proc, on_stream)
    finally:
        if proc.poll() is None:
            proc.send_signal(2)  # SIGINT: the node shuts down cleanly
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    plan, t0, status, stamps, measured_all, stopped = (run[k] for k in
                                                         ("plan", "t0", "status", "stamps", "positions", "stopped"))
    k = plan.approach_steps
    sent = int(run["sent_steps"])
    # command i is for t0 + (i + 1) dt; tracking over the recorded part that was sent and measured
    times = t0 + (np.arange(k, sent) + 1) * filt.dt
    times = times[times <= min(stamps.max(), run["t_end"])]
    measured = sample_at(times, stamps, measured_all[:, flat])
    commanded = plan.commands[k:k + len(times)][:, flat]
    rms, mx = tracking_error(commanded, measured)
    extra: dict[str, Any] = {"approach_steps": k, "filter_change_max": plan.filter_change_max,
                             "filter_interventions": plan.interventions, "sim_steps": int(status["steps"]),
                             "commands_received": int(status["commands"]), "rejected": int(status["rejected"]),
                             "joint_state_messages": len(stamps), "stopped": stopped}
    return ReplayResult(episode=ep.index, target="ros2", mode="actions", steps=len(times),
                        success=bool(status["success"]), recorded_success=ep.recorded_success, joint_names=names,
                        tracking_rms=rms.tolist(), tracking_max=mx.tolist(), state_max_error=None,
                        commanded=commanded, measured=measured, frames=[], extra=extra)


def _drive(itf: RobotInterface, filt: SafetyFilter, actions: np.ndarray, ep: RecordedEpisode, lookahead: int,
           startup_timeout_s: float, proc: subprocess.Popen[bytes],
           on_stream: Callable[[subprocess.Popen[bytes]], None] | None) -> dict[str, Any]:
    """The driver node: reset the sim to the seed, plan from the measured joints, stream, record."""
    import rclpy
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from robot_policy_ros import messages, topics
    from sensor_msgs.msg import JointState
    from std_srvs.srv import Trigger
    from trajectory_msgs.msg import JointTrajectory

    rclpy.init(args=[])
    node = Node("replay_driver")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    recorder = _Recorder(itf.joint_names)
    node.create_subscription(JointState, topics.JOINT_STATES,
                             lambda m: recorder.add(messages.to_seconds(m.header.stamp), list(m.name),
                                                    list(m.position)), topics.SENSOR_QOS)
    pubs = {arm: node.create_publisher(JointTrajectory, topics.TRAJECTORY.format(arm=arm), topics.COMMAND_QOS)
            for arm in itf.arm_joints}
    set_params: Any = node.create_client(SetParameters, "/sim_robot/set_parameters")
    reset: Any = node.create_client(Trigger, topics.SIM_RESET)
    status_client: Any = node.create_client(Trigger, topics.SIM_STATUS)

    def call(client: Any, request: Any, timeout: float = 10.0) -> Any:
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {client.srv_name} did not appear within {timeout:.0f} s "
                               f"(sim_robot_node exit code {proc.poll()})")
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"service {client.srv_name} did not answer within {timeout:.0f} s")
            time.sleep(0.002)
        return future.result()

    def status() -> dict[str, Any]:
        return dict(json.loads(call(status_client, Trigger.Request()).message))

    def now() -> float:
        return float(node.get_clock().now().nanoseconds) * 1e-9

    def publish(positions: np.ndarray, first_time: float) -> None:
        # points at first_time, first_time + dt, ...: the header is one period before the first point
        for arm, pub in pubs.items():
            idx = list(itf.arm_joints[arm])
            pub.publish(messages.joint_trajectory([itf.joint_names[i] for i in idx], positions[:, idx], filt.dt,
                                                  first_time - filt.dt))

    try:
        request = SetParameters.Request()
        request.parameters.append(Parameter(name="seed", value=ParameterValue(
            type=ParameterType.PARAMETER_INTEGER, integer_value=int(ep.seed or 0))))
        call(set_params, request, startup_timeout_s)
        # the subscribers must have matched before the first trajectory: wait for the node's subscription
        deadline = time.monotonic() + startup_timeout_s
        while any(p.get_subscription_count() == 0 for p in pubs.values()):
            if time.monotonic() > deadline:
                raise TimeoutError("sim_robot_node's trajectory subscriptions did not appear")
            time.sleep(0.01)
        call(reset, Trigger.Request())
        t_reset = now()
        while (latest := recorder.latest()) is None or latest[0] < t_reset:
            if time.monotonic() > deadline:
                raise TimeoutError("no /joint_states after /sim/reset")
            time.sleep(0.005)
        plan = plan_commands(filt, latest[1], actions)
        watchdog = Watchdog(WatchdogConfig(obs_timeout_s=ControllerConfig().obs_timeout_s,
                                           inference_deadline_s=1e9))  # no inference: the plan is made
        t0 = now() + 2 * filt.dt  # the first point a little ahead, so the first message is not late
        watchdog.activate(t0)
        watchdog.observe(latest[0])
        watchdog.chunk_arrived(now(), latest[0])
        stopped, sent, n, t_end = "", 0, len(plan.commands), np.inf
        pending: Any = None
        last_status: dict[str, Any] = status()
        if on_stream is not None:
            on_stream(proc)
        while sent < n:
            t = now()
            current = int(np.floor((t - t0) / filt.dt))  # commands before this one are already due
            due = max(0, current)
            stamp = recorder.latest()
            assert stamp is not None
            watchdog.observe(stamp[0])
            if watchdog.mode(t, n - due) != Mode.RUN:
                stopped = watchdog.reason
                last = plan.commands[max(due - 1, 0)]
                prev = plan.commands[max(due - 2, 0)]
                publish(filt.brake(last, (last - prev) / filt.dt), t0 + (due + 1) * filt.dt)
                break
            publish(plan.commands[due:due + lookahead], t0 + (due + 1) * filt.dt)
            sent = min(n, due + 1)
            # the episode's end comes from /sim/status, asked without waiting: a robot that stops answering
            # must not stall the loop, whose watchdog then sees its joint states go stale and brakes
            if pending is None:
                pending = status_client.call_async(Trigger.Request())
            elif pending.done():
                last_status = dict(json.loads(pending.result().message))
                pending = None
                if not last_status["running"]:
                    stopped = "the episode ended in the simulator (success or its time limit)"
                    # the paused sim keeps publishing its last state: nothing after its last step is tracking
                    t_end = t - 2 * filt.dt  # the answer may be a period old
                    break
            time.sleep(max(0.0, t0 + (due + 1) * filt.dt - now()))
        time.sleep(3 * filt.dt)  # the last commands execute and their joint states arrive
        try:
            final = status() if not stopped.startswith("observation") else last_status
        except TimeoutError:
            final = last_status
        stamps, positions = recorder.arrays()
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return {"plan": plan, "t0": t0, "status": final, "stamps": stamps, "positions": positions,
            "stopped": stopped, "sent_steps": sent, "t_end": t_end}
