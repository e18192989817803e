"""The loop part's pieces of ``bench runtime``: the simulated robot in a process of its own (it resets as the
env does, steps on its own clock, follows commands, stops), late ticks sorted by cause, config checks."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from robot_policy.bench.runtime import RuntimeBenchConfig, late_tick_causes
from robot_policy.bench.sim_robot import LoopRobot, SimRobotProcess
from robot_policy.envs.registry import load_task_config, make_env
from robot_policy.runtime.loop import LoopTiming
from robot_policy.runtime.robot_io import RobotInterface

TASK = "pybullet_bimanual_lift"


def _wait_for_states(robot: SimRobotProcess, n: int, timeout_s: float = 60.0) -> list:
    states: list = []
    deadline = time.monotonic() + timeout_s
    while len(states) < n and time.monotonic() < deadline:
        states += robot.states()
        time.sleep(0.01)
    return states


def test_the_robot_process_resets_like_the_env_steps_by_itself_and_follows_commands() -> None:
    env = make_env(load_task_config(TASK))
    robot = SimRobotProcess(TASK)
    try:
        here = LoopRobot(env)
        first, expected = robot.reset(5), here.reset(5)
        np.testing.assert_array_equal(first[0], expected[0])  # the same env, the same seed
        assert robot.embodiment.name == env.embodiment.name and robot.control_hz == env.task.control_hz
        robot.start(time.monotonic())
        states = _wait_for_states(robot, 3)  # no tick of ours: it steps on its own clock
        assert len(states) >= 3
        assert all(b[2] > a[2] for a, b in itertools.pairwise(states))  # stamped when read, in order
        # a command: the first joint 0.2 rad from where it is, held from now on; the arm goes there
        itf = RobotInterface.from_embodiment(env.embodiment, env.object_state_dim)
        q = itf.wire_state(states[-1][0]).position  # (n,) in the command's order
        target = q.copy()
        target[0] += 0.2
        now = time.monotonic()
        robot.follow(np.array([now + 0.05, now + 0.3]), np.stack([target, target]))
        moved = _wait_for_states(robot, 20)  # 1 s at 20 Hz
        outcome = robot.stop()
        assert outcome.steps >= len(states) + len(moved) and not outcome.done
        reached = itf.wire_state(moved[-1][0]).position
        assert abs(reached[0] - target[0]) < 0.05 < abs(q[0] - target[0])
        np.testing.assert_allclose(reached[1:7], q[1:7], atol=0.05)  # the rest of that arm held
        # a reset while it steps: the reset's state comes back, not one of the old episode still in the pipe
        robot.start(time.monotonic())
        assert len(_wait_for_states(robot, 1)) >= 1
        time.sleep(0.2)  # more states in flight, unread
        np.testing.assert_array_equal(robot.reset(5)[0], expected[0])
    finally:
        robot.close()
        env.close()


def test_late_ticks_are_sorted_by_cause() -> None:
    period = 0.005
    deadlines = np.arange(5) * period
    # tick 1 ran 5.5 ms: tick 2 starts 0.6 ms late (< 1 ms, not late); tick 3 starts 1.5 ms late though the
    # loop was idle (woken late); tick 4 follows a tick that ran past its deadline (after a long tick)
    starts = deadlines + np.array([0.0, 0.0, 0.6e-3, 1.5e-3, 2.0e-3])
    compute = np.array([1e-3, 5.6e-3, 1e-3, 4.6e-3, 1e-3])
    timing = LoopTiming(200.0, np.arange(5), deadlines, starts, compute)
    assert late_tick_causes(timing) == {"late": 2, "after_long_tick": 1, "late_wakeup": 1}


def test_bad_loop_options_are_named(tmp_path: pytest.TempPathFactory) -> None:
    with pytest.raises(ValueError, match="robot: unknown 'rig'"):
        RuntimeBenchConfig(checkpoint=str(tmp_path), robot="rig")
    with pytest.raises(ValueError, match="inference: unknown 'gpu'"):
        RuntimeBenchConfig(checkpoint=str(tmp_path), inference="gpu")
    with pytest.raises(ValueError, match="rt_priority"):
        RuntimeBenchConfig(checkpoint=str(tmp_path), rt_priority=100)
