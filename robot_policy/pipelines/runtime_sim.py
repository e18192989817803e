"""Episodes of a simulated task run through the runtime in process, on simulated time: the ``inproc``
transport of the runtime (no ROS), deterministic.

Each control step k (time t_k = k / control_hz): the robot's state after the last step is handed to the
controller's :class:`~robot_policy.runtime.robot_io.ObservationAssembler` stamped t_k, the controller ticks
at t_k, its command (if any) replaces the trajectory the simulated arm follows
(:class:`~robot_policy.runtime.trajectory.TrajectoryFollower`, joint_trajectory_controller semantics, as in
the ROS 2 ``sim_robot_node``), and the env steps with the trajectory sampled at t_k. Inference latency is
simulated exactly (:class:`~robot_policy.runtime.runner.SimulatedLatencyRunner`): a chunk inferred from
the observation at t becomes available at t + latency, while the env keeps stepping; so a delay sweep
measures the execution scheme, not this machine's speed.

Execution schemes (``scheme``), the rows of the runtime benchmark's delay table:
    sync                the queue runs out, the arm holds while the policy infers (``replan=when_empty``);
    async               naive asynchronous: inference starts early, the new chunk replaces the queue from
                        its first action not yet due;
    temporal_ensemble   ACT's temporal ensembling over every chunk (inference as often as it can run);
    rtc                 real-time chunking: the new chunk is inpainted against the queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robot_policy.envs.base import ManipulationEnv
from robot_policy.keys import OBS_OBJECT, OBS_STATE
from robot_policy.policies.base import Policy
from robot_policy.runtime.controller import ControllerConfig, PolicyController
from robot_policy.runtime.robot_io import RobotInterface
from robot_policy.runtime.runner import SimulatedLatencyRunner
from robot_policy.runtime.trajectory import TimedTrajectory, TrajectoryFollower

SCHEMES = ("sync", "async", "temporal_ensemble", "rtc")


def scheme_config(scheme: str, execute_horizon: int | None = None, **overrides: Any) -> ControllerConfig:
    """The controller settings of an execution scheme (module docstring)."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme: unknown {scheme!r}; valid: {', '.join(SCHEMES)}")
    base: dict[str, Any] = {"execute_horizon": execute_horizon}
    if scheme == "sync":
        base |= {"scheduler": "none", "replan": "when_empty"}
    elif scheme == "async":
        base |= {"scheduler": "none", "replan": "early"}
    elif scheme == "temporal_ensemble":
        base |= {"scheduler": "temporal_ensemble", "replan": "early", "execute_horizon": 1}
    else:
        base |= {"scheduler": "rtc", "replan": "early"}
    return ControllerConfig(**(base | overrides))


@dataclass
class RuntimeEpisode:
    seed: int
    success: bool
    length: int
    stats: dict[str, Any] = field(default_factory=dict)


class _SimClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def run_runtime_episode(env: ManipulationEnv, policy: Policy, seed: int, cfg: ControllerConfig,
                        latency_s: float = 0.0) -> RuntimeEpisode:
    """One episode of ``env`` on seed ``seed`` with ``policy`` behind a fresh :class:`PolicyController`."""
    itf = RobotInterface.from_embodiment(env.embodiment, env.object_state_dim)
    clock = _SimClock()
    controller = PolicyController(policy, itf, cfg, clock=clock,
                                  runner=SimulatedLatencyRunner(policy, latency_s, clock))
    try:
        obs, _ = env.reset(seed=seed)
        dt = 1.0 / env.task.control_hz
        hold = env.embodiment.action.unified_to_flat(env.current_unified_action())
        follower = TrajectoryFollower(itf.arm_joints, hold)
        controller.start(seed, 0.0)
        success, steps = False, 0
        for k in range(env.task.max_steps):
            t = clock.t = k * dt
            controller.assembler.update_wire(itf.wire_state(obs[OBS_STATE]), obs.get(OBS_OBJECT), t)
            command = controller.tick(t)
            if command is not None:
                for arm, index in itf.arm_joints.items():
                    follower.follow(arm, TimedTrajectory(command.times, command.positions[:, list(index)]))
            row = follower.command(t)
            obs, _, terminated, truncated, info = env.step(env.embodiment.action.flat_to_unified(row).astype(np.float32))
            steps = k + 1
            if terminated or truncated:
                success = bool(info["success"])
                break
        return RuntimeEpisode(seed, success, steps, controller.stats())
    finally:
        controller.close()
