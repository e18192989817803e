"""The rig recorder without ROS: aligning timestamped streams to the control rate (nearest sample, command
interpolation one period ahead, skew, refusal beyond tolerance), episodes into a store through the streaming
writer (holes discard an episode, late cameras only shorten it), pause segmentation, rig config errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from robot_policy.data.store import EpisodeStore
from robot_policy.data.validate import validate_store
from robot_policy.pipelines.record import make_recorder, open_record_store
from robot_policy.teleop.rig_config import RigConfigError, load_rig_config, rig_config_from_dict
from robot_policy.teleop.rig_recorder import (
    AlignedStep,
    Aligner,
    PauseSegmenter,
    RefusedStep,
    StreamSpec,
)

HZ = 20.0
DT = 1.0 / HZ


def _aligner(tol: float = 0.02, latency: float = 0.05, phase_samples: int = 5) -> Aligner:
    return Aligner([StreamSpec("joints", tol), StreamSpec("cmd", 0.05, "command", lead_s=DT),
                    StreamSpec("cam", tol)], HZ, clock="joints", latency_s=latency,
                   phase_samples=phase_samples)


def test_steps_take_the_nearest_sample_and_report_its_skew() -> None:
    al = _aligner()
    rng = np.random.default_rng(0)
    t0 = 100.0
    joints = t0 + np.arange(40) * DT + rng.uniform(-0.004, 0.004, 40)  # 20 Hz with timer jitter
    frames = t0 - 0.011 + np.arange(60) / 30.0  # a 30 fps camera, its own phase
    for t in joints:
        al.add("joints", t, {"x": np.array([t])})
    for t in frames:
        al.add("cam", t, {"f": np.array([t])})
    al.add_points("cmd", list(t0 + np.arange(1, 45) * DT), [{"a": np.array([float(i)])} for i in range(1, 45)])
    al.start(t0 - 0.001)
    al.stop(joints[29] + 0.001)
    steps = al.poll(now=t0 + 10.0)
    assert al.done(t0 + 10.0)
    assert [s.index for s in steps] == list(range(30)) and all(isinstance(s, AlignedStep) for s in steps)
    # the grid: the first joint state, moved by the median jitter of the first five against it
    ticks = joints[0] + np.median(joints[:5] - joints[0] - np.arange(5) * DT) + np.arange(30) * DT
    for s, tick in zip(steps, ticks):
        assert isinstance(s, AlignedStep)
        assert s.tick == pytest.approx(tick)
        j = np.argmin(np.abs(joints - tick))
        assert s.values["joints"]["x"][0] == joints[j]
        assert s.skew_s["joints"] == pytest.approx(abs(joints[j] - tick))
        c = np.argmin(np.abs(frames - tick))
        assert s.values["cam"]["f"][0] == frames[c] and s.skew_s["cam"] <= 0.5 / 30 + 1e-9
    # commands: points k at t0 + k dt, read one period ahead and interpolated: step k gets k + 1 + phase
    phase = (ticks[0] - t0) / DT
    got = np.array([s.values["cmd"]["a"][0] for s in steps if isinstance(s, AlignedStep)])
    # (the grid starts a little before t0 here: before the first point, the first point is the command)
    np.testing.assert_allclose(got, np.maximum(np.arange(30) + 1 + phase, 1.0), atol=1e-9)


def test_a_step_waits_for_its_samples_then_for_tolerance_plus_latency() -> None:
    al = _aligner(tol=0.02, latency=0.05, phase_samples=1)
    al.add_points("cmd", [1.0, 1.05, 1.10], [{"a": np.full(1, v)} for v in (1.0, 2.0, 3.0)])
    al.add("joints", 1.0, {"x": np.zeros(1)})
    al.start(0.99)
    al.add("cam", 0.995, {"f": np.zeros(1)})
    # the camera's next frame may still be nearer: not settled; the command stream settles only by time
    assert al.poll(now=1.0) == []
    al.add("cam", 1.03, {"f": np.ones(1)})
    assert al.poll(now=1.0 + DT + 0.05 + 0.05 - 1e-3) == []  # cmd: q = tick + lead, waits tolerance + latency
    (step,) = al.poll(now=1.0 + DT + 0.05 + 0.05 + 1e-3)
    assert isinstance(step, AlignedStep) and step.values["cam"]["f"][0] == 0.0  # 5 ms beats 30 ms
    assert step.values["cmd"]["a"][0] == 2.0  # the point one period ahead


def test_a_stream_silent_beyond_its_tolerance_refuses_the_step_naming_it() -> None:
    al = _aligner(tol=0.02)
    for k in range(20):
        t = 10.0 + k * DT
        al.add("joints", t, {"x": np.zeros(1)})
        al.add("cmd", t + DT, {"a": np.zeros(1)})
        if not 8 <= k <= 10:  # the camera drops three frames
            al.add("cam", t + 0.003, {"f": np.zeros(1)})
    al.start(10.0)
    al.stop(10.0 + 19 * DT)
    steps = al.poll(now=20.0)
    refused = [s for s in steps if isinstance(s, RefusedStep)]
    assert [s.index for s in refused] == [8, 9, 10]
    assert all(s.stream == "cam" for s in refused)
    assert "tolerance 20.0 ms" in refused[0].describe() and "step 8" in refused[0].describe()
    assert "97.0 ms" in refused[1].reason  # step 9: the nearest frame is step 7's, 2 periods less 3 ms away


def test_a_newer_trajectory_replaces_the_points_from_its_first_on() -> None:
    al = Aligner([StreamSpec("joints", 0.02), StreamSpec("cmd", 0.06, "command")], HZ, clock="joints")
    al.add_points("cmd", [0.0, 0.1, 0.2, 0.3], [{"a": np.full(1, v)} for v in (0.0, 1.0, 2.0, 3.0)])
    al.add_points("cmd", [0.15, 0.25], [{"a": np.full(1, v)} for v in (10.0, 20.0)])
    for k in range(10):
        al.add("joints", k * DT, {"x": np.zeros(1)})
    al.start(0.0)
    al.stop(0.45)
    steps = [s for s in al.poll(now=5.0) if isinstance(s, AlignedStep)]
    got = [s.values["cmd"]["a"][0] for s in steps]
    # 0, 0.5, 1 from the first; from 0.15 on the new points (0.2 and 0.3 are gone), the last one held after it,
    # however long (the controller holds it): not a stale command
    np.testing.assert_allclose(got, [0.0, 0.5, 1.0, 10.0, 15.0, 20.0, 20.0, 20.0, 20.0, 20.0])
    assert [s.skew_s["cmd"] for s in steps[5:]] == [0.0] * 5


# ---- episodes into a store -----------------------------------------------------------------------------------

def _rig(tmp_path: Path, on_gap: str = "discard", cameras: bool = True) -> object:
    return rig_config_from_dict(rig_raw(on_gap, cameras), where="test rig", base=tmp_path)


def rig_raw(on_gap: str = "discard", cameras: bool = True) -> dict:
    """A single-arm rig config: /js joint states, /cmd trajectories, a /img camera."""
    return {"name": "t", "embodiment": "panda_single_joint", "control_hz": HZ,
           "mapping": {"state": {"right_joint_pos": {"topic": "/js", "field": "position",
                                                     "joints": [f"j{i}" for i in range(7)]},
                                 "right_gripper": {"topic": "/js", "field": "position", "joints": ["g"]},
                                 "right_joint_vel": None, "right_eef_pos": None, "right_eef_quat": None},
                       "action": {"joint_pos": {"topic": "/cmd", "field": "positions", "joints": [f"j{i}" for i in range(7)]},
                                  "gripper": {"topic": "/cmd", "field": "positions", "joints": ["g"]}}},
           "tolerance_s": {"default": 0.02, "/cmd": 0.05},
           "latency_s": 0.05, "episodes": {"on_gap": on_gap},
           "cameras": {"front": {"topic": "/img", "extrinsics": np.eye(4).tolist()}} if cameras else {}}


def _feed(al: Aligner, t0: float, n: int, skip_camera: range = range(0)) -> None:
    for k in range(n):
        t = t0 + k * DT
        q = np.full(7, 0.01 * k)
        al.add("/js", t, {"state.right_joint_pos": q, "state.right_gripper": np.array([0.04])})
        al.add_points("/cmd", [t + DT], [{"action.joint_pos": q + 0.01, "action.gripper": np.array([0.02])}])
        if "front" in al.buffers and k not in skip_camera:
            al.add("front", t + 0.004, np.full((8, 10, 3), k % 256, np.uint8))


def test_episodes_land_in_the_store_valid_and_a_hole_discards_only_its_episode(tmp_path: Path) -> None:
    from robot_policy.data.store import CameraInfo

    rig = _rig(tmp_path)
    store = open_record_store(rig, tmp_path / "s.zarr", {"front": CameraInfo(8, 10, np.eye(3), np.eye(4))})  # type: ignore[arg-type]
    rec = make_recorder(rig, store)  # type: ignore[arg-type]
    _feed(rec.aligner, 0.0, 30)
    rec.start(0.0, language="reach", seed=7)
    rec.stop(29 * DT + 1e-3, success=True)
    report = rec.poll(now=10.0)
    assert report is not None and report.index == 0 and report.steps == 30 and report.refused == 0
    assert report.skew_ms["front"]["max"] == pytest.approx(4.0, abs=1e-6)
    assert report.skew_ms["/js"]["max"] < 1e-6
    # the second episode loses camera frames in its middle: a hole, so it is discarded with the reason
    _feed(rec.aligner, 20.0, 30, skip_camera=range(10, 13))
    rec.start(20.0, language="reach", seed=8)
    rec.stop(20.0 + 29 * DT + 1e-3)
    report = rec.poll(now=30.0)
    assert report is not None and report.index is None and "a hole" in (report.discarded or "")
    assert "front" in (report.discarded or "") and "step 10" in (report.discarded or "")
    # the third: the camera starts late, which only drops the leading steps
    _feed(rec.aligner, 40.0, 30, skip_camera=range(5))
    rec.start(40.0, language="reach", seed=9)
    rec.stop(40.0 + 29 * DT + 1e-3)
    report = rec.poll(now=50.0)
    assert report is not None and report.index == 1 and report.steps == 25 and report.refused == 5
    store.close()
    assert validate_store(tmp_path / "s.zarr") == []
    s = EpisodeStore.open(tmp_path / "s.zarr")
    assert list(s.episode_lengths) == [30, 25]
    ep = s.get_episode(0)
    np.testing.assert_allclose(ep["timestamp"], np.arange(30) * DT, atol=1e-9)
    np.testing.assert_allclose(ep["state"][:, :7], np.arange(30)[:, None] * 0.01 * np.ones(7), atol=1e-6)
    np.testing.assert_allclose(ep["action"][:, :7], ep["state"][:, :7] + 0.01, atol=1e-6)  # one period ahead
    np.testing.assert_allclose(ep["state"][:, 10], 0.5, atol=1e-6)  # 0.04 m of a 0.08 m gripper
    assert ep["images/front"][3].max() == 3 and int(ep["seed"]) == 7 and bool(ep["success"])
    assert s.cameras["front"].extrinsics is not None
    np.testing.assert_allclose(s.get_episode(1)["images/front"][0], 5)  # from the first complete step on


def test_on_gap_keep_writes_the_episode_without_the_refused_steps(tmp_path: Path) -> None:
    rig = _rig(tmp_path, on_gap="keep", cameras=False)
    store = open_record_store(rig, tmp_path / "s.zarr", {})  # type: ignore[arg-type]
    rec = make_recorder(rig, store)  # type: ignore[arg-type]
    _feed(rec.aligner, 0.0, 10)
    for k in range(10, 14):  # the robot's joint states stop for four periods, its commands go on
        rec.aligner.add_points("/cmd", [(k + 1) * DT], [{"action.joint_pos": np.zeros(7), "action.gripper": np.zeros(1)}])
    _feed(rec.aligner, 14 * DT, 6)
    rec.start(0.0)
    rec.stop(19 * DT + 1e-3)
    report = rec.poll(now=10.0)
    assert report is not None and report.index == 0 and report.refused == 4 and report.steps == 16
    store.close()
    ts = EpisodeStore.open(tmp_path / "s.zarr").get_episode(0)["timestamp"]
    np.testing.assert_allclose(np.diff(ts)[9], 5 * DT)  # the hole shows in the timestamps; no step is invented


def test_a_discarded_or_interrupted_episode_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    rig = _rig(tmp_path, cameras=False)
    store = open_record_store(rig, tmp_path / "s.zarr", {})  # type: ignore[arg-type]
    rec = make_recorder(rig, store)  # type: ignore[arg-type]
    _feed(rec.aligner, 0.0, 20)
    rec.start(0.0)
    rec.poll(now=0.5)  # some steps written (uncommitted)
    assert rec.discard().index is None
    rec.start(0.0)
    rec.poll(now=0.5)
    rec.close()  # shutdown mid-episode
    store.close()
    assert EpisodeStore.open(tmp_path / "s.zarr").n_episodes == 0 and validate_store(tmp_path / "s.zarr") == []


def test_pause_segmentation() -> None:
    seg = PauseSegmenter(pause_s=0.5)
    assert seg.activity(1.0) == 1.0
    assert seg.activity(1.2) is None and seg.poll(1.6) is None
    assert seg.poll(1.71) == 1.2
    assert seg.activity(3.0) == 3.0


def test_rig_configs_load_and_errors_name_file_and_key(tmp_path: Path) -> None:
    rig = load_rig_config("sim_panda_bimanual")
    assert rig.command_lead_s == pytest.approx(DT) and rig.task == "pybullet_bimanual_lift"
    kinds = {s.name: (s.kind, s.lead_s) for s in rig.streams()}
    assert kinds["/right_controller/joint_trajectory"] == ("command", pytest.approx(DT))
    assert kinds["/joint_states"] == ("sample", 0.0)
    load_rig_config("panda_bimanual_realsense")
    bad = tmp_path / "bad.yaml"
    for text, match in [
        ("embodiment: panda_bimanual_joint\nmapping: rosbag_panda_bimanual_joint\ntolerance_s: {/nope: 0.1}\n",
         r"bad.yaml.tolerance_s: \['/nope'\] are not streams"),
        ("embodiment: panda_bimanual_joint\nmapping: rosbag_panda_bimanual_joint\ncameras: {c: {topic: /a, realsense: '1'}}\n",
         r"bad.yaml.cameras.c: give exactly one of topic"),
        ("embodiment: panda_bimanual_joint\nmapping: rosbag_panda_bimanual_joint\nlatency: 1\n", r"unknown key\(s\) \['latency'\]"),
        ("embodiment: panda_bimanual_joint\nmapping: rosbag_panda_bimanual_joint\ntolerance_s: {default: 0}\n",
         r"tolerance_s.default: must be > 0"),
        ("embodiment: panda_single_joint\nmapping: rosbag_panda_bimanual_joint\n", r"fills embodiment panda_bimanual_joint"),
    ]:
        bad.write_text(text)
        with pytest.raises(RigConfigError, match=match):
            load_rig_config(bad)
    with pytest.raises(RigConfigError, match="available: .*sim_panda_bimanual"):
        load_rig_config("no_such_rig")
