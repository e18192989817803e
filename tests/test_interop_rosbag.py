"""rosbag2 (mcap and sqlite3): a collected store round-trips exactly through a bag; the native topics import
through the shipped mapping; a rig-like recording (jittered stamps, two arms' trajectory chunks, compressed
images, no markers) splits by its pauses, aligns to the control rate and reports the skew."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from robot_policy.data import format as fmt
from robot_policy.data.interop import rosbag as rb
from robot_policy.data.interop.mapping import MappingError, SourceMapping
from robot_policy.data.store import EpisodeStore
from robot_policy.data.validate import validate_store
from robot_policy.paths import CONFIG_DIR
from tests.interop_data import assert_lowdim_equal, collect_store


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return collect_store(tmp_path_factory.mktemp("src") / "lift.zarr")


def _errors(path: Path, deep: bool = False) -> list[str]:
    return [str(p) for p in validate_store(path, deep=deep) if p.severity == "error"]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_store_rosbag_store_round_trips_exactly(store_path: Path, tmp_path: Path, storage: str) -> None:
    result = rb.export_rosbag(store_path, rb.RosbagExportConfig(out=str(tmp_path / "bag"), storage=storage),
                              progress=False)
    assert result["topics"]["/joint_states"] == 204 and result["topics"]["/episode"] == 4
    assert any(p.suffix == (".mcap" if storage == "mcap" else ".db3") for p in (tmp_path / "bag").iterdir())
    summary = rb.import_rosbag(tmp_path / "bag", tmp_path / "back.zarr", progress=False)
    assert summary.episodes_written == 2 and summary.steps == 204
    assert all(s["max_ms"] == 0.0 for s in summary.skew.values())  # every message of a step shares its stamp
    a, b = EpisodeStore.open(store_path), EpisodeStore.open(tmp_path / "back.zarr")
    assert_lowdim_equal(a, b)
    assert np.array_equal(a.array("images/front")[:], b.array("images/front")[:])  # raw rgb8: exact
    assert a.cameras == b.cameras and a.attrs["task"] == b.attrs["task"] and a.embodiment == b.embodiment
    assert _errors(tmp_path / "back.zarr", deep=True) == []


def test_native_topics_import_through_the_shipped_mapping(store_path: Path, tmp_path: Path) -> None:
    """A bag of the driver's topics only (what a rig records), read by configs/mapping/rosbag_panda_bimanual_joint."""
    rb.export_rosbag(store_path, rb.RosbagExportConfig(out=str(tmp_path / "bag"), unified=False), progress=False)
    summary = rb.import_rosbag(tmp_path / "bag", tmp_path / "native.zarr", "rosbag_panda_bimanual_joint",
                               progress=False)
    assert "topic /unified/sim_state" in summary.dropped
    a, b = EpisodeStore.open(store_path), EpisodeStore.open(tmp_path / "native.zarr")
    sa, sb = np.asarray(a.array("state")[:]), np.asarray(b.array("state")[:])
    joints = a.embodiment.state.get("left_joint_pos").unified_slice
    np.testing.assert_array_equal(sa[:, joints], sb[:, joints])
    np.testing.assert_allclose(sa, sb, atol=1e-6)  # the quaternion and gripper conversions: float32 rounding
    np.testing.assert_array_equal(a.array("action")[:], b.array("action")[:])
    np.testing.assert_array_equal(a.array("timestamp")[:], b.array("timestamp")[:])
    np.testing.assert_array_equal(a.array("images/front")[:], b.array("images/front")[:])
    np.testing.assert_array_equal(np.asarray(a.array("object_state")[:]), b.array("object_state")[:])
    meta = b.episode_meta()
    assert list(meta["success"]) == [1, 1] and list(meta["language"]) == ["lift the tray with both arms"] * 2
    assert b.cameras["front"].intrinsics == a.cameras["front"].intrinsics  # from CameraInfo.k
    assert _errors(tmp_path / "native.zarr") == []


# ---- a rig-like recording, written with rosbags directly ---------------------------------------------

JOINTS = [f"{side}_joint_pos_{i}" for side in ("right", "left") for i in range(1, 8)]


def _pos(t: np.ndarray) -> np.ndarray:
    """Joint positions (T, 14) the rig's encoders read at times t (s): smooth, 0.2 rad/s at most."""
    return 0.2 * np.sin(np.asarray(t)[:, None] + np.arange(14))


def _cmd(t: np.ndarray) -> np.ndarray:
    return 0.1 * np.cos(np.asarray(t)[:, None] + np.arange(8))


def _rig_bag(path: Path, storage: str = "sqlite3") -> dict[str, Any]:
    """Two episodes of 3.0 s and 2.0 s with a 2 s pause between: JointState at 50 Hz (+-3 ms jitter, names
    shuffled), JointTrajectory chunks per arm at 10 Hz (5 points 40 ms apart, each replacing the last), jpeg
    CompressedImage at 15 Hz with CameraInfo, no markers."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    T = ts.types
    rng = np.random.default_rng(0)

    def header(t: float) -> Any:
        ns = round(t * 1e9)
        return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9),
                                        frame_id="")

    writer = Writer(path, version=9, storage_plugin=StoragePlugin.SQLITE3 if storage == "sqlite3" else StoragePlugin.MCAP)
    writer.open()
    conns: dict[str, Any] = {}
    msgs: list[tuple[float, str, str, Any]] = []
    js_times: list[float] = []
    for t0, dur in ((100.0, 3.0), (105.0, 2.0)):
        for t in t0 + np.arange(0, dur + 1e-9, 0.02) + rng.uniform(-0.003, 0.003, round(dur / 0.02) + 1):
            order = rng.permutation(14)
            names = [*(JOINTS[i] for i in order), "right_gripper", "left_gripper"]
            pos = np.concatenate([_pos(np.array([t]))[0][order], [0.04, 0.06]])
            msgs.append((t, "/joint_states", "sensor_msgs/msg/JointState", T["sensor_msgs/msg/JointState"](
                header=header(t), name=names, position=pos, velocity=np.zeros(16), effort=np.zeros(0))))
            js_times.append(t)
        for t in t0 + np.arange(0, dur, 0.1):
            for k, side in enumerate(("right", "left")):
                points = [T["trajectory_msgs/msg/JointTrajectoryPoint"](
                    positions=np.concatenate([_cmd(np.array([t + 0.04 * p]))[0][k * 4: k * 4 + 4], [0.0] * 3,
                                              [0.03 + 0.01 * k]]),
                    velocities=np.zeros(0), accelerations=np.zeros(0), effort=np.zeros(0),
                    time_from_start=T["builtin_interfaces/msg/Duration"](sec=0, nanosec=int(40e6 * p)))
                    for p in range(5)]
                names = [f"{side}_joint_pos_{i}" for i in range(1, 8)] + [f"{side}_gripper"]
                msgs.append((t, f"/{side}_controller/joint_trajectory", "trajectory_msgs/msg/JointTrajectory",
                             T["trajectory_msgs/msg/JointTrajectory"](header=header(t), joint_names=names,
                                                                      points=points)))
        for i, t in enumerate(t0 + np.arange(0, dur, 1 / 15)):
            import cv2

            frame = np.full((48, 64, 3), (i * 8) % 256, np.uint8)
            _ok, data = cv2.imencode(".jpg", frame)
            msgs.append((t + 0.001, "/camera/front/image_raw/compressed", "sensor_msgs/msg/CompressedImage",
                         T["sensor_msgs/msg/CompressedImage"](header=header(t), format="jpeg", data=data.reshape(-1))))
        k = np.array([60.0, 0, 32, 0, 60, 24, 0, 0, 1])
        roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        msgs.append((t0, "/camera/front/camera_info", "sensor_msgs/msg/CameraInfo", T["sensor_msgs/msg/CameraInfo"](
            header=header(t0), height=48, width=64, distortion_model="plumb_bob", d=np.zeros(5), k=k,
            r=np.eye(3).ravel(), p=np.zeros(12), binning_x=0, binning_y=0, roi=roi)))
    for t, topic, msgtype, msg in sorted(msgs, key=lambda m: m[0]):
        if topic not in conns:
            conns[topic] = writer.add_connection(topic, msgtype, typestore=ts)
        # received 2 ms after the stamp: alignment uses the header stamp, not the bag time
        writer.write(conns[topic], round((t + 0.002) * 1e9), ts.serialize_cdr(msg, msgtype))
    writer.close()
    return {"js_times": np.array(js_times)}


def _rig_mapping() -> SourceMapping:
    raw = yaml.safe_load((CONFIG_DIR / "mapping" / "rosbag_panda_bimanual_joint.yaml").read_text())
    for side in ("right", "left"):
        raw["state"][f"{side}_eef_pos"] = raw["state"][f"{side}_eef_quat"] = None  # no FK on this rig
    raw["extras"] = {}
    raw["cameras"]["front"]["topic"] = "/camera/front/image_raw/compressed"
    raw["episodes"] = {"split": "gap", "gap_s": 1.0}
    return SourceMapping.from_dict(raw, name="rig")


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_rig_recording_splits_by_pauses_aligns_by_stamps_and_reports_skew(tmp_path: Path, storage: str) -> None:
    bag = _rig_bag(tmp_path / "rig", storage)
    summary = rb.import_rosbag(tmp_path / "rig", tmp_path / "rig.zarr", _rig_mapping(), progress=False)
    store = EpisodeStore.open(tmp_path / "rig.zarr")
    assert store.n_episodes == 2
    lengths = store.episode_lengths.tolist()
    assert lengths[0] in (60, 61) and lengths[1] in (40, 41)  # 20 Hz ticks over 3.0 s and 2.0 s of encoder data
    assert _errors(tmp_path / "rig.zarr") == []
    # skew: the encoders tick at 50 Hz with +-3 ms jitter, so the nearest sample is within 13 ms of a 20 Hz tick
    js = summary.skew["/joint_states"]
    assert 0 < js["mean_ms"] and js["max_ms"] <= 13.0 and js["samples"] == sum(lengths)
    # 15 Hz frames: within half a frame period, except the last ticks, after the episode's last frame
    cam = summary.skew["/camera/front/image_raw/compressed"]
    assert cam["mean_ms"] <= 1000 / 30 and cam["max_ms"] <= 1000 / 15 + 3.0
    assert "state.right_eef_pos" in summary.dropped
    spec = store.embodiment
    start, end = store.episode_bounds(0)
    def native(fmap: Any, rows: np.ndarray, name: str) -> np.ndarray:  # masked-off fields have no native value
        return fmap.get(name).from_unified(rows[:, fmap.get(name).unified_slice])

    srows = np.asarray(store.array("state")[start:end])
    state = {n: native(spec.state, srows, n) for n in ("right_joint_pos", "left_gripper")}
    t = 100.0 + np.asarray(store.array("timestamp")[start:end])
    js_t = bag["js_times"]
    first = js_t[js_t < 104][0]
    t = t - 100.0 + first  # ticks start at the first encoder stamp of the episode
    np.testing.assert_allclose(state["right_joint_pos"], _pos(t)[:, :7], atol=0.2 * 0.013 + 1e-9)
    np.testing.assert_allclose(state["left_gripper"], 0.06, atol=1e-12)
    # commands: the trajectory point nearest each tick; a chunk's points are 40 ms apart, chunks 100 ms
    action = spec.action.from_unified(np.asarray(store.array("action")[start:end]))  # every action field is there
    np.testing.assert_allclose(action["right_joint_pos"][:, :4], _cmd(t)[:, :4], atol=0.1 * 0.021)
    np.testing.assert_allclose(action["left_gripper"], 0.04, atol=1e-7)
    frames = np.asarray(store.array("images/front")[start:end])
    assert frames.shape == (end - start, 48, 64, 3) and len(np.unique(frames[:, 0, 0, 0])) > 20
    assert store.cameras["front"].intrinsics[0][0] == 60.0
    assert list(store.episode_meta()["language"]) == ["lift the tray with both arms"] * 2


def test_missing_topic_or_joint_is_an_error_naming_it(tmp_path: Path) -> None:
    _rig_bag(tmp_path / "rig")
    shipped = yaml.safe_load((CONFIG_DIR / "mapping" / "rosbag_panda_bimanual_joint.yaml").read_text())
    with pytest.raises(MappingError, match=r"state.right_eef_pos: topic /right/eef_pose is not in the bag"):
        rb.import_rosbag(tmp_path / "rig", tmp_path / "x.zarr", SourceMapping.from_dict(shipped), progress=False)
    bad = copy.deepcopy(shipped)
    for side in ("right", "left"):
        bad["state"][f"{side}_eef_pos"] = bad["state"][f"{side}_eef_quat"] = None
    bad["extras"], bad["cameras"], bad["episodes"] = {}, {}, {"split": "gap", "gap_s": 1.0}
    bad["state"]["right_gripper"]["joints"] = ["right_finger_joint"]
    with pytest.raises(MappingError, match=r"joint\(s\) \['right_finger_joint'\] are not in /joint_states"):
        rb.import_rosbag(tmp_path / "rig", tmp_path / "x.zarr", SourceMapping.from_dict(bad), progress=False)
    assert EpisodeStore.open(tmp_path / "x.zarr").n_episodes == 0  # nothing of the failed episode is visible


def test_interrupted_rosbag_import_resumes(store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rb.export_rosbag(store_path, rb.RosbagExportConfig(out=str(tmp_path / "bag")), progress=False)
    original, calls = rb.RosbagSource.episode, []

    def failing(self: rb.RosbagSource, ep: Any) -> Any:
        calls.append(ep.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, ep)

    monkeypatch.setattr(rb.RosbagSource, "episode", failing)
    with pytest.raises(KeyboardInterrupt):
        rb.import_rosbag(tmp_path / "bag", tmp_path / "r.zarr", progress=False)
    assert EpisodeStore.open(tmp_path / "r.zarr").n_episodes == 1 and _errors(tmp_path / "r.zarr") == []
    monkeypatch.setattr(rb.RosbagSource, "episode", original)
    summary = rb.import_rosbag(tmp_path / "bag", tmp_path / "r.zarr", progress=False)
    assert (summary.episodes_resumed, summary.episodes_written) == (1, 1)
    assert_lowdim_equal(EpisodeStore.open(store_path), EpisodeStore.open(tmp_path / "r.zarr"))


def test_markers_parse() -> None:
    from types import SimpleNamespace

    assert rb._marker(SimpleNamespace(data="start: stack the cups")) == (True, "stack the cups", None)
    assert rb._marker(SimpleNamespace(data="end: failure")) == (False, "", False)
    assert rb._marker(SimpleNamespace(data=True)) == (True, "", None)
    with pytest.raises(MappingError, match="expected 'start"):
        rb._marker(SimpleNamespace(data="pause"))
    assert fmt.image_key("front") == "images/front"


def test_cli_export_then_import(store_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from robot_policy.cli.main import main

    assert main(["dataset", "export", "rosbag", str(store_path), f"out={tmp_path / 'bag'}", "storage=sqlite3"]) == 0
    capsys.readouterr()
    assert main(["dataset", "import", "rosbag", str(tmp_path / "bag"), f"out={tmp_path / 'b.zarr'}"]) == 0
    out = capsys.readouterr().out
    assert "imported 2 episode(s), 204 steps" in out and "alignment skew" in out and "/joint_states" in out
    assert_lowdim_equal(EpisodeStore.open(store_path), EpisodeStore.open(tmp_path / "b.zarr"))
    assert main(["dataset", "export", "rosbag", str(store_path), f"out={tmp_path / 'x'}", "storage=db"]) == 2
    assert "storage: unknown 'db'; storages: mcap, sqlite3" in capsys.readouterr().err
