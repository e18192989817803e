"""robot-policy replay: recorded scripted episodes reproduce in sim (by actions and by states), the per-joint
tracking error, the refusal of another robot's episode, and the files the verb writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from robot_policy.data.store import EpisodeStore
from robot_policy.pipelines.replay import (
    ReplayConfig,
    check_embodiment,
    joint_indices,
    load_episode,
    replay_in_sim,
    tracking_error,
)
from tests.interop_data import collect_store


@pytest.fixture(scope="module")
def scripted_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three scripted pybullet lift episodes, no camera (~2 s)."""
    return collect_store(tmp_path_factory.mktemp("replay") / "s.zarr", episodes=3, cameras=())


def test_tracking_error_is_per_joint_rms_and_max() -> None:
    commanded = np.zeros((4, 2))
    measured = np.array([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 2.0]])
    rms, mx = tracking_error(commanded, measured)
    np.testing.assert_allclose(rms, [1.0, 1.0])
    np.testing.assert_allclose(mx, [1.0, 2.0])
    with pytest.raises(ValueError, match="same non-empty"):
        tracking_error(np.zeros((3, 2)), np.zeros((3, 1)))


def test_joint_indices_are_the_arm_joints(scripted_store: Path) -> None:
    idx, names = joint_indices(EpisodeStore.open(scripted_store).embodiment)
    assert len(idx) == 14 and names[0] == "right_arm_joint_pos[0]" and names[7] == "left_arm_joint_pos[0]"


@pytest.mark.parametrize("mode", ["actions", "states"])
def test_scripted_episodes_replay_to_their_success(scripted_store: Path, mode: str) -> None:
    store = EpisodeStore.open(scripted_store)
    for episode in range(store.n_episodes):
        result = replay_in_sim(ReplayConfig(store=str(scripted_store), episode=episode, mode=mode, video=False),
                               store, load_episode(store, episode))
        assert result.recorded_success is True
        assert result.success, f"episode {episode} by {mode}: the recorded success did not reproduce"
        # pybullet is deterministic from a restored state: the open loop follows the recording exactly
        assert result.state_max_error < 1e-5, result.state_max_error
        # position control settles within a few mrad of each target in one 50 ms period
        assert max(result.tracking_max) < 0.02, dict(zip(result.joint_names, result.tracking_max))


def test_another_robots_episode_is_refused(scripted_store: Path) -> None:
    with pytest.raises(ValueError, match="'panda_bimanual_joint'.*'robosuite_panda_bimanual_eef'"):
        check_embodiment("panda_bimanual_joint", "robosuite_panda_bimanual_eef", "here")
    from robot_policy.cli.main import main

    assert main(["replay", f"store={scripted_store}", "task=robosuite_two_arm_lift", "video=false"]) == 1


def test_replay_verb_writes_json_plot_and_video(scripted_store: Path, tmp_path: Path) -> None:
    from robot_policy.cli.main import main
    from robot_policy.eval.video import read_mp4

    out = tmp_path / "r"
    assert main(["replay", f"store={scripted_store}", "episode=1", "target=sim", "mode=actions", f"out={out}",
                 "video_size=64"]) == 0
    summary = json.loads((out / "replay.json").read_text())
    assert summary["success"] is True and len(summary["tracking_rms_rad"]) == 14
    assert (out / "tracking.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    frames = read_mp4(out / "replay.mp4")
    assert frames.shape == (summary["steps"] + 1, 64, 64, 3)  # the first state and one frame per step


def test_bad_options_fail_with_their_name() -> None:
    with pytest.raises(ValueError, match="target='moon'"):
        ReplayConfig(store="x", target="moon")
    with pytest.raises(ValueError, match="mode=states"):
        ReplayConfig(store="x", target="ros2", mode="states")


@pytest.mark.slow
def test_twenty_scripted_episodes_replay_by_actions_20_of_20(tmp_path: Path) -> None:
    """The issue's bar: replay by actions of 20 scripted episodes reproduces their success 20/20."""
    path = collect_store(tmp_path / "s20.zarr", episodes=20, cameras=())
    store = EpisodeStore.open(path)
    results = [replay_in_sim(ReplayConfig(store=str(path), episode=e, video=False), store, load_episode(store, e))
               for e in range(20)]
    assert sum(r.success for r in results) == 20 == sum(bool(r.recorded_success) for r in results)
