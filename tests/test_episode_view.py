"""robot-policy dataset view: an episode as a playable mp4, one frame per recorded step, cameras beside curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from robot_policy.cli.main import main
from robot_policy.data.store import EpisodeStore
from robot_policy.eval.episode_view import ViewConfig, episode_curves
from robot_policy.eval.video import read_mp4
from tests.interop_data import collect_store


@pytest.fixture(scope="module")
def camera_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One scripted pybullet episode with the front camera (~3 s)."""
    return collect_store(tmp_path_factory.mktemp("view") / "cam.zarr", episodes=1, cameras=("front",))


def test_view_writes_a_playable_mp4_with_a_frame_per_step(camera_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "ep0.mp4"
    assert main(["dataset", "view", str(camera_store), "episode=0", f"out={out}", "width_px=640"]) == 0
    frames = read_mp4(out)  # decodes: the file plays
    steps = int(EpisodeStore.open(camera_store).episode_lengths[0])
    assert frames.shape[0] == steps and frames.shape[2] == 640
    # the camera column (the left third) follows the episode: the arms move between its first and last step
    left = frames[:, :, : frames.shape[2] // 3].astype(int)
    assert np.abs(left[0] - left[-1]).mean() > 2.0
    assert frames[0].std() > 10


def test_view_stride_and_bad_episode(camera_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.mp4"
    assert main(["dataset", "view", str(camera_store), f"out={out}", "stride=4", "width_px=480"]) == 0
    steps = int(EpisodeStore.open(camera_store).episode_lengths[0])
    assert len(read_mp4(out)) == -(-steps // 4)
    assert main(["dataset", "view", str(camera_store), "episode=5", f"out={out}"]) == 1
    with pytest.raises(ValueError, match="stride=0"):
        ViewConfig(stride=0)


def test_curves_pair_measured_joints_with_their_commands(camera_store: Path) -> None:
    store = EpisodeStore.open(camera_store)
    ep = store.get_episode(0, keys=["state", "action"])
    curves = episode_curves(store.embodiment, np.asarray(ep["state"]), np.asarray(ep["action"]))
    assert [c.title for c in curves] == ["right_joint_pos", "right_gripper", "left_joint_pos", "left_gripper"]
    assert all(c.commanded is not None and c.commanded.shape == c.measured.shape for c in curves)
    assert curves[0].measured.shape[1] == 7
