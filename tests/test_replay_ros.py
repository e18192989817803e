"""robot-policy replay target=ros2: the plan through the runtime's safety filter (fast, no ROS), and a short
recorded episode replayed to sim_robot_node over ROS 2 on loopback (ros, slow)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from robot_policy.data.store import EpisodeStore
from robot_policy.pipelines.replay_ros import plan_commands, runtime_filter, sample_at
from robot_policy.spaces.embodiment import load_embodiment
from tests.interop_data import collect_store


def test_plan_moves_safely_to_the_first_action_then_follows_the_recording() -> None:
    spec = load_embodiment("panda_bimanual_joint")
    filt = runtime_filter(spec)
    lo, hi = filt.limits.pos_min, filt.limits.pos_max
    q = (lo + hi) / 2
    actions = q + np.linspace(0.0, 0.1, 30)[:, None] * (hi - lo)  # (T, n), slow, inside the limits
    actions[:, :7] += 0.4  # the first action far from where the arm is: the approach takes it there
    plan = plan_commands(filt, q, actions)
    move = plan.commands[:plan.approach_steps]
    speed = np.abs(np.diff(np.vstack([q, move]), axis=0)) / filt.dt
    assert (speed <= filt.limits.vel_max + 1e-9).all()
    np.testing.assert_allclose(move[-1], actions[0], atol=1e-6)  # settled on the first action
    np.testing.assert_allclose(plan.commands[plan.approach_steps:], actions, atol=1e-6)  # the recording, unchanged
    assert plan.filter_change_max < 1e-6


def test_plan_refuses_what_the_filter_rejects() -> None:
    filt = runtime_filter(load_embodiment("panda_bimanual_joint"))
    q = (filt.limits.pos_min + filt.limits.pos_max) / 2
    actions = np.tile(q, (5, 1))
    actions[2, 0] = np.nan
    with pytest.raises(RuntimeError, match="safety filter"):
        plan_commands(filt, q, actions)


def test_sample_at_interpolates_and_refuses_to_extrapolate() -> None:
    stamps, pos = np.array([0.0, 1.0, 2.0]), np.array([[0.0], [1.0], [4.0]])
    np.testing.assert_allclose(sample_at(np.array([0.5, 1.5]), stamps, pos), [[0.5], [2.5]])
    with pytest.raises(ValueError, match="outside"):
        sample_at(np.array([2.5]), stamps, pos)


@pytest.mark.ros
@pytest.mark.slow
def test_an_episode_replays_to_the_ros2_sim_robot_with_its_tracking_error(tmp_path: Path) -> None:
    from robot_policy.cli.main import main

    store = collect_store(tmp_path / "s.zarr", episodes=1, cameras=())
    out = tmp_path / "r"
    domain = 40 + os.getpid() % 20  # a domain of its own: parallel DDS participants never meet
    rc = main(["replay", f"store={store}", "episode=0", "target=ros2", f"out={out}", f"domain_id={domain}"])
    log = (out / "sim_robot.log").read_text() if (out / "sim_robot.log").exists() else ""
    assert rc == 0, log
    summary = json.loads((out / "replay.json").read_text())
    assert summary["target"] == "ros2" and summary["rejected"] == 0
    recorded = EpisodeStore.open(store).episode_lengths[0]
    assert summary["steps"] >= recorded - 2  # every recorded command tracked, but the last one or two
    assert summary["success"] is True  # the sim, reset to the episode's seed, lifts the tray again
    # position control on the simulated arms: a few mrad behind each 50 ms command (measured ~0.0015 rms)
    assert summary["tracking_rms_mean_rad"] < 0.01 and summary["tracking_max_overall_rad"] < 0.05, summary
    assert (out / "tracking.png").is_file()


@pytest.mark.ros
@pytest.mark.slow
def test_a_robot_that_stops_publishing_is_braked_by_the_watchdog(tmp_path: Path) -> None:
    """SIGSTOP the simulated robot 2 s into the replay: its joint states go stale, the watchdog holds, the
    replay sends a braking trajectory and stops (instead of streaming on, or hanging on a service call)."""
    import signal
    import threading

    from robot_policy.pipelines.replay import ReplayConfig, load_episode
    from robot_policy.pipelines.replay_ros import replay_on_ros

    path = collect_store(tmp_path / "s.zarr", episodes=1, cameras=())
    store = EpisodeStore.open(path)

    def freeze(proc: object) -> None:
        pid = proc.pid  # type: ignore[attr-defined]
        threading.Timer(2.0, os.kill, (pid, signal.SIGSTOP)).start()
        threading.Timer(3.5, os.kill, (pid, signal.SIGCONT)).start()  # so that it can shut down afterwards

    cfg = ReplayConfig(store=str(path), target="ros2", out=str(tmp_path / "r"), domain_id=40 + (os.getpid() + 7) % 20)
    result = replay_on_ros(cfg, store, load_episode(store, 0), on_stream=freeze)
    assert result.extra["stopped"].startswith("observation stale"), result.extra
    assert not result.success
    assert 10 < result.steps < store.episode_lengths[0] - 20  # tracked until the freeze, not past it
