"""robomimic HDF5: a file in robomimic's layout (data/demo_*/obs/*, actions, states, env_args), made here
from collected demonstrations, imports through the shipped mapping, and its episodes replay by states in
the simulator its env_args name."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from robot_policy.data.interop.mapping import MappingError, SourceMapping
from robot_policy.data.interop.robomimic import import_robomimic
from robot_policy.data.store import EpisodeStore, StoreError
from robot_policy.data.validate import validate_store
from robot_policy.pipelines.replay import replay_by_states
from tests.interop_data import collect_store


def write_robomimic(store_path: Path, path: Path, env_name: str = "pybullet_bimanual_lift") -> None:
    """The store's episodes as a robomimic file: robosuite observation names (robot0 = right arm), the
    gripper as two finger joints, our simulator states as ``states``, images as obs/<camera>_image."""
    store = EpisodeStore.open(store_path)
    spec = store.embodiment
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["total"] = store.n_steps
        data.attrs["env_args"] = json.dumps({"env_name": env_name, "type": 2,
                                             "env_kwargs": {"control_freq": 20, "cameras": ["front"]}})
        for e in range(store.n_episodes):
            ep = store.get_episode(e)
            state = spec.state.from_unified(np.asarray(ep["state"]))
            demo = data.create_group(f"demo_{e}")
            demo.attrs["num_samples"] = len(ep["timestamp"])
            obs = demo.create_group("obs")
            for robot, side in (("robot0", "right"), ("robot1", "left")):
                for key in ("joint_pos", "joint_vel", "eef_pos", "eef_quat"):
                    obs[f"{robot}_{key}"] = state[f"{side}_{key}"]
                gap = state[f"{side}_gripper"][:, 0]
                obs[f"{robot}_gripper_qpos"] = np.stack([gap / 2, -gap / 2], axis=1)
            obs["object"] = np.asarray(ep["object_state"])
            obs["front_image"] = np.asarray(ep["images/front"])
            demo["actions"] = spec.action.unified_to_flat(np.asarray(ep["action"]))
            demo["states"] = np.asarray(ep["sim_state"])
            rewards = np.zeros(len(ep["timestamp"]))
            rewards[-1] = float(ep["success"] == 1)
            demo["rewards"], demo["dones"] = rewards, rewards.astype(np.int64)
        f.create_group("mask")["train"] = np.array([b"demo_0", b"demo_1"])


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("robomimic")
    store = collect_store(root / "lift.zarr")
    write_robomimic(store, root / "lift.hdf5")
    return store, root / "lift.hdf5"


def test_robomimic_file_imports_and_replays_by_states(files: tuple[Path, Path], tmp_path: Path) -> None:
    store_path, hdf5 = files
    summary = import_robomimic(hdf5, tmp_path / "rm.zarr", "robomimic_panda_bimanual_joint", progress=False)
    assert summary.episodes_written == 2 and summary.steps == 204
    assert "dataset rewards" in summary.dropped
    a, b = EpisodeStore.open(store_path), EpisodeStore.open(tmp_path / "rm.zarr")
    assert b.attrs["task"]["name"] == "pybullet_bimanual_lift" and b.control_hz == 20
    assert b.attrs["provenance"]["robomimic_env_args"]["env_name"] == "pybullet_bimanual_lift"
    # simulator states are kept exactly: replay needs them as they were
    np.testing.assert_array_equal(a.array("sim_state")[:], b.array("sim_state")[:])
    np.testing.assert_array_equal(a.array("images/front")[:], b.array("images/front")[:])
    np.testing.assert_allclose(np.asarray(a.array("state")[:]), b.array("state")[:], atol=1e-6)
    np.testing.assert_array_equal(a.array("action")[:], b.array("action")[:])
    np.testing.assert_array_equal(a.array("timestamp")[:], b.array("timestamp")[:])
    assert list(b.episode_meta()["success"]) == [1, 1]
    assert [p for p in validate_store(tmp_path / "rm.zarr") if p.severity == "error"] == []
    for e in range(2):
        report = replay_by_states(tmp_path / "rm.zarr", e)
        print(report)
        assert report.states_max_error < 1e-5  # every recorded state restores its observation
        assert report.actions_max_error < 1e-4 and report.actions_success and report.recorded_success


def test_foreign_env_imports_with_a_note_and_refuses_replay(files: tuple[Path, Path], tmp_path: Path) -> None:
    store_path, _ = files
    write_robomimic(store_path, tmp_path / "other.hdf5", env_name="TwoArmLift")
    summary = import_robomimic(tmp_path / "other.hdf5", tmp_path / "o.zarr", "robomimic_panda_bimanual_joint",
                               progress=False, filter_key="train")
    assert any("'TwoArmLift' is not a task of ours" in n for n in summary.notes)
    with pytest.raises(StoreError, match="names no task"):
        replay_by_states(tmp_path / "o.zarr", 0)


def test_mapping_that_does_not_fit_the_file_names_what(files: tuple[Path, Path], tmp_path: Path) -> None:
    _, hdf5 = files
    import yaml

    from robot_policy.paths import CONFIG_DIR

    base = yaml.safe_load((CONFIG_DIR / "mapping" / "robomimic_panda_bimanual_joint.yaml").read_text())
    bad = {**base, "state": {**base["state"], "right_joint_vel": {"key": "obs/robot0_joint_vel_filtered"}}}
    with pytest.raises(MappingError, match=r"state.right_joint_vel: data/demo_0/obs/robot0_joint_vel_filtered is not"):
        import_robomimic(hdf5, tmp_path / "x.zarr", SourceMapping.from_dict(bad), progress=False)
    bad = {**base, "action": {**base["action"], "right_joint_pos": {"key": "actions", "slice": [0, 6]}}}
    with pytest.raises(MappingError, match=r"right_joint_pos: actions\[0:6\] gives 6 values, the field has dim 7"):
        SourceMapping.from_dict(bad)
    bad = {**base, "state": {**base["state"], "right_eef_pos": {"key": "obs/robot0_joint_pos"}}}
    with pytest.raises(MappingError, match=r"state.right_eef_pos takes obs/robot0_joint_pos, 7 values per step, but "
                                           r"the field has dim 3"):
        import_robomimic(hdf5, tmp_path / "x.zarr", SourceMapping.from_dict(bad), progress=False)
    with pytest.raises(MappingError, match=r"no filter key mask/valid; filter keys: \['train'\]"):
        import_robomimic(hdf5, tmp_path / "x.zarr", "robomimic_panda_bimanual_joint", filter_key="valid",
                         progress=False)
    assert not (tmp_path / "x.zarr").exists()


def test_cli_import(files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from robot_policy.cli.main import main

    _, hdf5 = files
    args = ["dataset", "import", "robomimic", str(hdf5), f"out={tmp_path / 'c.zarr'}",
            "mapping=robomimic_panda_bimanual_joint"]
    assert main(args) == 0
    assert "imported 2 episode(s), 204 steps" in capsys.readouterr().out
    assert main(args) == 0  # the same import again: nothing left to do
    assert "imported 0 episode(s)" in capsys.readouterr().out and EpisodeStore.open(tmp_path / "c.zarr").n_episodes == 2
    assert main(["dataset", "export", "robomimic", str(tmp_path / "c.zarr"), "out=x.hdf5"]) == 2
    assert "robomimic is import-only" in capsys.readouterr().err
