"""LeRobot v3.0 export and import: a collected store round-trips bit-exactly (images within the codec's
tolerance), the exported dataset follows LeRobot's layout field by field, foreign layouts import through a
mapping, and an interrupted import resumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from robot_policy.data import format as fmt
from robot_policy.data.interop import lerobot as lr
from robot_policy.data.interop.mapping import MappingError, SourceMapping
from robot_policy.data.store import EpisodeStore
from robot_policy.data.validate import validate_store
from tests.interop_data import assert_lowdim_equal, collect_store

#: what crf 30 (LeRobot's default) gives on these 128x128 renders: measured 33.2 dB with AV1, 31.4 dB with H.264
MIN_PSNR_DB = 30.0


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return collect_store(tmp_path_factory.mktemp("src") / "lift.zarr")


@pytest.fixture(scope="module")
def exported(store_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("lerobot") / "lift"
    summary = lr.export_lerobot(store_path, lr.LeRobotExportConfig(out=str(out)), progress=False)
    return out, summary


def test_store_lerobot_store_is_bit_exact_and_images_within_codec_tolerance(
        store_path: Path, exported: tuple[Path, dict], tmp_path: Path) -> None:
    root, summary = exported
    result = lr.import_lerobot(root, tmp_path / "back.zarr", progress=False)
    assert result.episodes_written == 2 and result.steps == 204
    a, b = EpisodeStore.open(store_path), EpisodeStore.open(tmp_path / "back.zarr")
    assert_lowdim_equal(a, b)
    assert a.cameras == b.cameras and a.attrs["task"] == b.attrs["task"]
    assert a.embodiment == b.embodiment and a.control_hz == b.control_hz
    assert [p for p in validate_store(tmp_path / "back.zarr", deep=True) if p.severity == "error"] == []
    psnr = lr.episode_psnr(a, b, "front")
    print(f"AV1 crf 30 round trip PSNR per episode: {[round(p, 2) for p in psnr]} dB")
    assert min(psnr) >= MIN_PSNR_DB
    # the export reports the PSNR of its videos as LeRobot decodes them: the same frames come back
    assert summary["psnr_min_db"]["front"] == pytest.approx(min(psnr), abs=1e-6)


def test_export_follows_lerobot_v3_layout(store_path: Path, exported: tuple[Path, dict]) -> None:
    root, _ = exported
    info = json.loads((root / "meta/info.json").read_text())
    # info.json: LeRobot's keys in its order (create_empty_dataset_info), with its defaults
    assert list(info) == ["codebase_version", "robot_type", "total_episodes", "total_frames", "total_tasks",
                          "chunks_size", "data_files_size_in_mb", "video_files_size_in_mb", "fps", "splits",
                          "data_path", "video_path", "features"]
    assert info["codebase_version"] == "v3.0" and info["fps"] == 20 and info["robot_type"] == "panda_bimanual_joint"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (2, 204, 1)
    assert (info["chunks_size"], info["data_files_size_in_mb"], info["video_files_size_in_mb"]) == (1000, 100, 200)
    assert info["splits"] == {"train": "0:2"}
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    features = info["features"]
    assert list(features)[-5:] == ["timestamp", "frame_index", "episode_index", "index", "task_index"]
    for name, ft in features.items():
        assert {"dtype", "shape", "names"} <= set(ft), name
    assert features["timestamp"] == {"dtype": "float32", "shape": [1], "names": None}
    assert features["observation.state"]["shape"] == [44] and len(features["observation.state"]["names"]) == 44
    assert features["action"]["names"][7] == "right_gripper"
    video = features["observation.images.front"]
    assert video["dtype"] == "video" and video["shape"] == [128, 128, 3]
    assert video["names"] == ["height", "width", "channels"]
    assert video["info"] == {"video.height": 128, "video.width": 128, "video.codec": "av1", "video.pix_fmt": "yuv420p",
                             "video.is_depth_map": False, "video.fps": 20, "video.channels": 3, "has_audio": False}

    # data parquet: every non-video feature, in features order, typed as `datasets` writes them
    data = pq.read_table(root / info["data_path"].format(chunk_index=0, file_index=0))
    assert data.column_names == [k for k, f in features.items() if f["dtype"] != "video"]
    assert data.schema.field("observation.state").type == pa.list_(pa.field("item", pa.float32()), 44)
    assert data.schema.field("timestamp").type == pa.float32()
    for col in ("frame_index", "episode_index", "index", "task_index"):
        assert data.schema.field(col).type == pa.int64()
    hf = json.loads(data.schema.metadata[b"huggingface"])["info"]["features"]
    assert hf["observation.state"] == {"feature": {"dtype": "float32", "_type": "Value"}, "length": 44,
                                       "_type": "List"}
    assert hf["index"] == {"dtype": "int64", "_type": "Value"}
    frame_index = data.column("frame_index").to_numpy()
    np.testing.assert_array_equal(data.column("index").to_numpy(), np.arange(204))
    np.testing.assert_array_equal(frame_index[:102], np.arange(102))
    # timestamps as LeRobot writes them: frame_index / fps, float32
    np.testing.assert_array_equal(data.column("timestamp").to_numpy(), (frame_index / 20).astype(np.float32))

    # meta/episodes: LeRobot's columns, one row per episode
    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    key = "observation.images.front"
    for col in ("episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
                "dataset_to_index", f"videos/{key}/chunk_index", f"videos/{key}/file_index",
                f"videos/{key}/from_timestamp", f"videos/{key}/to_timestamp", "meta/episodes/chunk_index",
                "meta/episodes/file_index", "stats/observation.state/mean", f"stats/{key}/q99"):
        assert col in eps[0], col
    assert [(e["dataset_from_index"], e["dataset_to_index"]) for e in eps] == [(0, 102), (102, 204)]
    assert eps[0]["tasks"] == ["lift the tray with both arms"]
    # the episodes follow each other in the camera's one mp4 file
    assert eps[0][f"videos/{key}/to_timestamp"] == eps[1][f"videos/{key}/from_timestamp"] == pytest.approx(102 / 20)
    assert np.asarray(eps[0][f"stats/{key}/mean"]).shape == (3, 1, 1)

    assert lr.read_tasks(root / "meta/tasks.parquet") == {0: "lift the tray with both arms"}
    pandas_meta = json.loads(pq.read_schema(root / "meta/tasks.parquet").metadata[b"pandas"])
    assert pandas_meta["index_columns"] == ["__index_level_0__"]

    stats = json.loads((root / "meta/stats.json").read_text())
    assert set(stats) == set(features)
    for name, st in stats.items():
        assert set(st) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}, name
    assert np.asarray(stats[key]["mean"]).shape == (3, 1, 1) and stats["index"]["count"] == [204]
    a = EpisodeStore.open(store_path)
    native = a.embodiment.state.unified_to_flat(np.asarray(a.array("state")[:]))
    np.testing.assert_allclose(stats["observation.state"]["mean"], native.astype(np.float32).mean(0), atol=1e-5)


def test_h264_on_request(store_path: Path, tmp_path: Path) -> None:
    summary = lr.export_lerobot(store_path, lr.LeRobotExportConfig(out=str(tmp_path / "h264"), vcodec="h264"),
                                progress=False)
    info = json.loads((tmp_path / "h264/meta/info.json").read_text())
    assert info["features"]["observation.images.front"]["info"]["video.codec"] == "h264"
    print(f"H.264 crf 30 PSNR: {summary['psnr_db']}")
    assert summary["psnr_min_db"]["front"] >= MIN_PSNR_DB


def test_native_columns_import_through_a_mapping(store_path: Path, exported: tuple[Path, dict],
                                                 tmp_path: Path) -> None:
    """The route of a dataset LeRobot recorded itself: native columns only, through a configs/mapping file.
    Joint fields are exact; the gripper and quaternion conversions within float32 rounding."""
    root, _ = exported
    summary = lr.import_lerobot(root, tmp_path / "native.zarr", "lerobot_panda_bimanual_joint", progress=False)
    assert "feature unified.state" in summary.dropped and "feature sim_state" in summary.dropped
    a, b = EpisodeStore.open(store_path), EpisodeStore.open(tmp_path / "native.zarr")
    sa, sb = np.asarray(a.array("state")[:]), np.asarray(b.array("state")[:])
    joints = a.embodiment.state.get("right_joint_pos").unified_slice
    np.testing.assert_array_equal(sa[:, joints], sb[:, joints])
    np.testing.assert_allclose(sa, sb, atol=2e-6)
    np.testing.assert_allclose(np.asarray(a.array("action")[:]), np.asarray(b.array("action")[:]), atol=2e-6)
    np.testing.assert_array_equal(a.array("timestamp")[:], b.array("timestamp")[:])
    assert b.data_keys == ["action", "images/front", "object_state", "state", "timestamp"]
    assert list(b.episode_meta()["language"]) == ["lift the tray with both arms"] * 2


def _aloha_dataset(root: Path, episodes: int = 2, length: int = 30) -> np.ndarray:
    """A LeRobot v3.0 dataset in ACT's ALOHA layout (what lerobot/aloha_sim_* hold), written by the same
    writer an export uses but with that dataset's features; returns the state rows."""
    rng = np.random.default_rng(0)
    motors = [f"{side}_{j}" for side in ("left", "right") for j in ("waist", "shoulder", "elbow", "forearm_roll",
                                                                     "wrist_angle", "wrist_rotate", "gripper")]
    features = {"observation.images.top": {"dtype": "video", "shape": [64, 96, 3],
                                           "names": ["height", "width", "channels"], "info": None},
                "observation.state": {"dtype": "float32", "shape": [14], "names": {"motors": motors}},
                "action": {"dtype": "float32", "shape": [14], "names": {"motors": motors}},
                **lr.DEFAULT_FEATURES}
    writer = lr._DatasetWriter(root, 50, features, lr.LeRobotExportConfig(out=str(root)), robot_type="aloha")
    states = []
    for e in range(episodes):
        state = rng.uniform(-1, 1, (length, 14)).astype(np.float32)
        state[:, [6, 13]] = rng.uniform(0, 1, (length, 2))
        states.append(state)
        frames = iter([rng.integers(0, 255, (length, 64, 96, 3), dtype=np.uint8)])
        writer.add_episode({"observation.state": state, "action": state + 0.01,
                            "timestamp": (np.arange(length) / 50).astype(np.float32)},
                           {"observation.images.top": frames}, e % 2, [f"task {e % 2}"], {})
    writer.finish({"task 0": 0, "task 1": 1})
    return np.concatenate(states)


def test_foreign_aloha_dataset_imports_through_its_mapping(tmp_path: Path) -> None:
    states = _aloha_dataset(tmp_path / "aloha")
    summary = lr.import_lerobot(tmp_path / "aloha", tmp_path / "aloha.zarr", "lerobot_aloha_sim", progress=False)
    store = EpisodeStore.open(tmp_path / "aloha.zarr")
    assert store.n_episodes == 2 and store.control_hz == 50 and list(store.cameras) == ["top"]
    spec = store.embodiment
    native = spec.state.from_unified(np.asarray(store.array("state")[:]))
    np.testing.assert_array_equal(native["left_arm_qpos"].astype(np.float32), states[:, :6])
    np.testing.assert_allclose(native["right_gripper_qpos"][:, 0], states[:, 13] * 2.1123 - 0.6213, atol=1e-6)
    mask = store.episode_meta()["state_mask"][0]
    assert mask[spec.state.get("left_arm_qvel").unified_slice].sum() == 0  # null fields are masked off
    assert mask[spec.state.get("left_arm_qpos").unified_slice].all()
    assert list(store.episode_meta()["language"]) == ["task 0", "task 1"]
    assert "state.left_arm_qvel" in summary.dropped
    np.testing.assert_array_equal(store.array("timestamp")[:30], np.arange(30) / 50)  # frame_index / fps again
    assert [p for p in validate_store(tmp_path / "aloha.zarr") if p.severity == "error"] == []


def test_mapping_that_does_not_fit_the_dataset_names_what(exported: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = exported
    raw = json.loads(json.dumps(load_mapping_raw("lerobot_panda_bimanual_joint")))
    raw["state"]["right_joint_pos"] = {"key": "observation.joints", "slice": [0, 7]}
    with pytest.raises(MappingError, match=r"state.right_joint_pos.*'observation.joints' is not in the dataset"):
        lr.import_lerobot(root, tmp_path / "x.zarr", SourceMapping.from_dict(raw), progress=False)
    raw = load_mapping_raw("lerobot_panda_bimanual_joint")
    raw["state"]["right_eef_quat"] = {"key": "observation.state", "slice": [40, 46]}
    with pytest.raises(MappingError, match=r"right_eef_quat.*gives 6 values, the field has dim 4"):
        SourceMapping.from_dict(raw)
    raw = load_mapping_raw("lerobot_panda_bimanual_joint")
    raw["action"]["left_gripper"] = {"key": "action", "index": 16}
    with pytest.raises(MappingError, match=r"action.left_gripper.*indexes \[16\].*shape \[16\]"):
        lr.import_lerobot(root, tmp_path / "x.zarr", SourceMapping.from_dict(raw), progress=False)
    assert not (tmp_path / "x.zarr").exists()  # checked before anything is written


def load_mapping_raw(name: str) -> dict:
    import yaml

    from robot_policy.paths import CONFIG_DIR

    return yaml.safe_load((CONFIG_DIR / "mapping" / f"{name}.yaml").read_text())


def test_interrupted_import_leaves_a_valid_store_and_resumes(store_path: Path, exported: tuple[Path, dict],
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = exported
    original = lr.LeRobotSource.iter_episodes

    def interrupted(self: lr.LeRobotSource, skip: int):  # type: ignore[no-untyped-def]
        for i, ep in enumerate(original(self, skip)):
            if i == 1:
                raise KeyboardInterrupt  # Ctrl-C while the second episode is read
            yield ep

    monkeypatch.setattr(lr.LeRobotSource, "iter_episodes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        lr.import_lerobot(root, tmp_path / "r.zarr", progress=False)
    assert EpisodeStore.open(tmp_path / "r.zarr").n_episodes == 1
    assert [p for p in validate_store(tmp_path / "r.zarr") if p.severity == "error"] == []
    monkeypatch.setattr(lr.LeRobotSource, "iter_episodes", original)
    summary = lr.import_lerobot(root, tmp_path / "r.zarr", progress=False)
    assert (summary.episodes_resumed, summary.episodes_written) == (1, 1)
    assert_lowdim_equal(EpisodeStore.open(store_path), EpisodeStore.open(tmp_path / "r.zarr"))
    # another import into the same store is refused, not mixed in
    with pytest.raises(Exception, match="not an earlier run of this import"):
        lr.import_lerobot(root, tmp_path / "r.zarr", "lerobot_panda_bimanual_joint", progress=False)


def test_older_codebase_versions_are_refused(exported: tuple[Path, dict], tmp_path: Path) -> None:
    import shutil

    root, _ = exported
    shutil.copytree(root, tmp_path / "v21")
    info = json.loads((tmp_path / "v21/meta/info.json").read_text())
    (tmp_path / "v21/meta/info.json").write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    with pytest.raises(MappingError, match="codebase_version 'v2.1'"):
        lr.import_lerobot(tmp_path / "v21", tmp_path / "x.zarr", progress=False)


def test_stats_aggregate_like_lerobot() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 3)), rng.normal(2.0, 3.0, size=(60, 3))
    agg = lr.aggregate_stats([{"x": lr.feature_stats(a)}, {"x": lr.feature_stats(b)}])["x"]
    both = np.concatenate([a, b])
    np.testing.assert_allclose(agg["mean"], both.mean(0))
    np.testing.assert_allclose(agg["std"], both.std(0))
    np.testing.assert_array_equal(agg["min"], both.min(0))
    assert agg["count"].tolist() == [100]
    frames = rng.integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)
    st = lr.image_stats(frames)
    assert st["mean"].shape == (3, 1, 1) and st["count"].tolist() == [5]
    np.testing.assert_allclose(st["max"].ravel(), frames.reshape(-1, 3).max(0) / 255)
    assert fmt.image_key("x") == "images/x"


def test_cli_export_then_import(store_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from robot_policy.cli.main import main

    assert main(["dataset", "export", "lerobot", str(store_path), f"out={tmp_path / 'lr'}", "crf=35"]) == 0
    assert '"psnr_db"' in capsys.readouterr().out
    assert main(["dataset", "import", "lerobot", str(tmp_path / "lr"), f"out={tmp_path / 'back.zarr'}"]) == 0
    out = capsys.readouterr().out
    assert "imported 2 episode(s), 204 steps" in out and "images/front" in out
    assert_lowdim_equal(EpisodeStore.open(store_path), EpisodeStore.open(tmp_path / "back.zarr"))
    assert main(["dataset", "import", "hdf9", str(tmp_path / "lr"), "out=x.zarr"]) == 2
    assert "unknown format 'hdf9'; formats: lerobot, rosbag, robomimic" in capsys.readouterr().err
    assert main(["dataset", "export", "lerobot", str(store_path), "out=" + str(tmp_path / "lr2"), "vcodec=vp9"]) == 2
    assert "vcodec: unknown 'vp9'" in capsys.readouterr().err


def test_import_killed_mid_commit_resumes_to_the_same_store(store_path: Path, exported: tuple[Path, dict],
                                                           tmp_path: Path) -> None:
    """SIGKILL between the two writes of the first episode's commit (the store's trickiest partial state),
    then the same command again: a valid store with every episode, bit for bit."""
    import os
    import subprocess
    import sys

    root, _ = exported
    cmd = [sys.executable, "-m", "robot_policy.cli.main", "dataset", "import", "lerobot", str(root),
           f"out={tmp_path / 'k.zarr'}"]
    killed = subprocess.run(cmd, check=False, env={**os.environ, "ROBOT_POLICY_FAULT": "episode_ends_resized"},
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert EpisodeStore.open(tmp_path / "k.zarr").n_episodes == 0
    assert [p for p in validate_store(tmp_path / "k.zarr") if p.severity == "error"] == []
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert_lowdim_equal(EpisodeStore.open(store_path), EpisodeStore.open(tmp_path / "k.zarr"))
