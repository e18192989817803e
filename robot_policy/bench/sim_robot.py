"""The simulated robot of ``bench runtime``'s loop part: the task's env following the controller's commands.

Two placements, one interface (``reset``, ``start``, ``follow``, ``states``, ``after_tick``, ``stop``):

:class:`SimRobotProcess` (``robot=process``) holds the env in a spawned process that steps on its own clock
at the task's control rate, as an arm is a device of its own and the ROS ``sim_robot_node`` a process of its
own: commands go to it and stamped states come back over a pipe, and the control loop's thread only passes
messages. :class:`LoopRobot` (``robot=loop``) steps the env in the control loop's thread, after the
controller's tick on the first tick at or after each step's time: several ms of physics (10 substeps) every
10th tick at 200 Hz, which the next tick waits for.

Both follow commands with joint_trajectory_controller semantics
(:class:`~robot_policy.runtime.trajectory.TrajectoryFollower`) and stamp each state on ``time.monotonic``
when it is read, after the step. Times are seconds of ``time.monotonic`` (shared by every process).
"""

from __future__ import annotations

import time
import traceback
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection

import numpy as np

from robot_policy.envs.base import ManipulationEnv
from robot_policy.envs.registry import load_task_config, make_env
from robot_policy.keys import OBS_OBJECT, OBS_STATE
from robot_policy.runtime.process_runner import SpawnedWorker
from robot_policy.runtime.robot_io import RobotInterface
from robot_policy.runtime.trajectory import TimedTrajectory, TrajectoryFollower

#: a state as the robot reports it: unified state (128,), object state (k,) or None, stamp (s)
State = tuple[np.ndarray, np.ndarray | None, float]


@dataclass(frozen=True)
class Outcome:
    """How an episode ended: env steps taken, and the task's success if it terminated or timed out."""

    steps: int
    done: bool
    success: bool


class _Stepper:
    """The env, its follower and its step count: what both placements step."""

    def __init__(self, env: ManipulationEnv) -> None:
        self.env = env
        self.interface = RobotInterface.from_embodiment(env.embodiment, env.object_state_dim)
        self.dt = 1.0 / env.task.control_hz
        self.follower: TrajectoryFollower | None = None  # from the first reset (its hold: the arm's pose)
        self.steps, self.done, self.success = 0, False, False

    def reset(self, seed: int) -> State:
        obs, _ = self.env.reset(seed=seed)
        self.follower = TrajectoryFollower(self.interface.arm_joints, self.env.embodiment.action.unified_to_flat(
            self.env.current_unified_action()))
        self.steps, self.done, self.success = 0, False, False
        return _state(obs)

    def follow(self, times: np.ndarray, positions: np.ndarray) -> None:
        """A command for every joint (T,) and (T, n), split into one trajectory per arm."""
        if self.follower is None:
            raise RuntimeError("sim robot: follow before the first reset")
        for arm, index in self.interface.arm_joints.items():
            self.follower.follow(arm, TimedTrajectory(times, positions[:, list(index)]))

    def step(self, now: float) -> State:
        if self.follower is None:
            raise RuntimeError("sim robot: step before the first reset")
        row = self.follower.command(now)
        obs, _, terminated, truncated, info = self.env.step(
            self.env.embodiment.action.flat_to_unified(row).astype(np.float32))
        self.steps += 1
        if terminated or truncated:
            self.done, self.success = True, bool(info["success"])
        return _state(obs)

    @property
    def outcome(self) -> Outcome:
        return Outcome(self.steps, self.done, self.success)


def _state(obs: dict[str, np.ndarray]) -> State:
    return obs[OBS_STATE], obs.get(OBS_OBJECT), time.monotonic()


class LoopRobot:
    """The env stepped in the control loop's thread (module docstring)."""

    def __init__(self, env: ManipulationEnv) -> None:
        self._sim = _Stepper(env)
        self.embodiment, self.object_state_dim = env.embodiment, env.object_state_dim
        self.control_hz, self.max_steps = env.task.control_hz, env.task.max_steps
        self._states: deque[State] = deque()
        self._next_step: float | None = None

    def reset(self, seed: int) -> State:
        self._next_step = None
        return self._sim.reset(seed)

    def start(self, t0: float) -> None:
        self._next_step = t0

    def follow(self, times: np.ndarray, positions: np.ndarray) -> None:
        self._sim.follow(times, positions)

    def states(self) -> list[State]:
        out = list(self._states)
        self._states.clear()
        return out

    @property
    def done(self) -> bool:
        return self._sim.done

    def after_tick(self, now: float) -> None:
        """Step when one is due: a tick is late by < 1 period, so on the first tick at or after its time."""
        if self._next_step is not None and not self._sim.done and now >= self._next_step - 1e-4:
            self._states.append(self._sim.step(now))
            self._next_step += self._sim.dt

    def stop(self) -> Outcome:
        self._next_step = None
        return self._sim.outcome

    def close(self) -> None:
        pass


def _serve(conn: Connection, task: str) -> None:
    """The robot process: answer messages, and step at the control rate between them once started."""
    try:
        env = make_env(load_task_config(task))
    except Exception:  # noqa: BLE001 -- not swallowed: the parent raises it
        conn.send(("error", traceback.format_exc()))
        return
    sim = _Stepper(env)
    conn.send(("ready", {"embodiment": env.embodiment, "object_state_dim": env.object_state_dim,
                         "control_hz": env.task.control_hz, "max_steps": env.task.max_steps}))
    next_step: float | None = None
    try:
        while True:
            wait = None if next_step is None else max(0.0, next_step - time.monotonic())
            if conn.poll(wait):
                message = conn.recv()
                if message is None:
                    return
                kind, *args = message
                if kind == "follow":
                    sim.follow(*args)
                elif kind == "reset":
                    next_step = None
                    conn.send(("reset", *sim.reset(args[0])))
                elif kind == "start":
                    next_step = args[0]
                else:  # "stop"
                    next_step = None
                    conn.send(("stopped", sim.outcome))
                continue
            assert next_step is not None
            conn.send(("state", *sim.step(time.monotonic())))
            next_step += sim.dt
            if sim.done:
                next_step = None
                conn.send(("done",))
    except (EOFError, BrokenPipeError):  # the parent went away
        return
    finally:
        env.close()


class SimRobotProcess:
    """The task's env in a spawned process on its own clock (module docstring)."""

    def __init__(self, task: str, start_timeout_s: float = 120.0) -> None:
        self._worker = SpawnedWorker(_serve, (task,), f"sim-robot-{task}", start_timeout_s)
        self._done = False
        info = self._worker.info
        self.embodiment, self.object_state_dim = info["embodiment"], info["object_state_dim"]
        self.control_hz, self.max_steps = info["control_hz"], info["max_steps"]

    def reset(self, seed: int) -> State:
        """Reset to ``seed`` (blocks); the first state."""
        self._done = False
        self._worker.send(("reset", seed))
        while (message := self._worker.recv())[0] != "reset":
            pass  # a state or "done" of the previous episode still in the pipe
        return message[1], message[2], message[3]

    def start(self, t0: float) -> None:
        """Step at t0, t0 + dt, ... until the episode ends or :meth:`stop`."""
        self._worker.send(("start", t0))

    def follow(self, times: np.ndarray, positions: np.ndarray) -> None:
        self._worker.send(("follow", times, positions))

    def states(self) -> list[State]:
        """The states that arrived since the last call (never blocks)."""
        out: list[State] = []
        while self._worker.poll():
            message = self._worker.recv()
            if message[0] == "state":
                out.append((message[1], message[2], message[3]))
            elif message[0] == "done":
                self._done = True
        return out

    @property
    def done(self) -> bool:
        """Whether the episode ended (seen by :meth:`states`)."""
        return self._done

    def after_tick(self, now: float) -> None:
        pass  # it steps on its own clock

    def stop(self) -> Outcome:
        """Stop stepping (blocks); the episode's outcome."""
        self._worker.send(("stop",))
        while (message := self._worker.recv())[0] != "stopped":
            pass
        return message[1]  # type: ignore[no-any-return]

    def close(self) -> None:
        self._worker.close(timeout=10.0)
