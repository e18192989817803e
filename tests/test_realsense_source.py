"""The RealSense source against a real librealsense ``rs.software_device`` (no camera): injected color and depth
frames come back with their pixels, stamps and the stream's intrinsics, and a recording through the rig
recorder puts them into the store's frames and CameraInfo.intrinsics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

rs = pytest.importorskip("pyrealsense2", reason="pyrealsense2 is not installed")

from robot_policy.data.store import EpisodeStore
from robot_policy.data.validate import validate_store
from robot_policy.pipelines.record import camera_infos, make_recorder, open_record_store
from robot_policy.teleop.realsense_source import RealSenseCamera
from robot_policy.teleop.rig_config import rig_config_from_dict

W, H, FPS = 64, 48, 30
K = np.array([[50.0, 0.0, 31.5], [0.0, 51.0, 23.5], [0.0, 0.0, 1.0]])
COEFFS = [0.1, 0.01, 0.001, 0.002, 0.0]


class SoftwareCamera:
    """A software device with a color (rgb8) and a depth (z16) sensor of known intrinsics; ``inject`` sends a
    frame stamped ``t`` seconds (system time) as the camera's driver would."""

    def __init__(self, serial: str = "SW0001") -> None:
        self.device = rs.software_device()
        self.device.register_info(rs.camera_info.serial_number, serial)
        intr = rs.intrinsics()
        intr.width, intr.height, intr.fx, intr.fy, intr.ppx, intr.ppy = W, H, K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        intr.model, intr.coeffs = rs.distortion.brown_conrady, COEFFS
        self.sensors: dict[str, Any] = {}
        self.profiles: dict[str, Any] = {}
        for uid, (name, stream, fmt, bpp) in enumerate([("color", rs.stream.color, rs.format.rgb8, 3),
                                                         ("depth", rs.stream.depth, rs.format.z16, 2)]):
            sensor = self.device.add_sensor(name)
            vs = rs.video_stream()
            vs.type, vs.index, vs.uid, vs.width, vs.height, vs.fps, vs.bpp, vs.fmt = stream, 0, uid, W, H, FPS, bpp, fmt
            vs.intrinsics = intr
            self.profiles[name] = sensor.add_video_stream(vs).as_video_stream_profile()
            self.sensors[name] = sensor
        self.sensors["depth"].add_read_only_option(rs.option.depth_units, 0.001)
        self.n = 0

    def inject(self, t: float, color: np.ndarray, depth: np.ndarray | None = None) -> None:
        for name, pixels, bpp in (("color", color, 3), ("depth", depth, 2)):
            if pixels is None:
                continue
            f = rs.software_video_frame()
            f.pixels, f.stride, f.bpp = np.ascontiguousarray(pixels), W * bpp, bpp
            f.timestamp, f.domain, f.frame_number = t * 1e3, rs.timestamp_domain.system_time, self.n
            f.profile = self.profiles[name]
            if name == "depth":
                f.depth_units = 0.001
            self.sensors[name].on_video_frame(f)
        self.n += 1


@pytest.fixture
def software_camera() -> Iterator[SoftwareCamera]:
    yield SoftwareCamera()


def _color(i: int) -> np.ndarray:
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0] = i  # the frame's number in red, a gradient in green: order and layout both checked
    img[..., 1] = np.arange(W, dtype=np.uint8)[None, :]
    return img


def test_injected_frames_come_back_with_stamps_and_the_factory_intrinsics(software_camera: SoftwareCamera) -> None:
    with RealSenseCamera(software_camera.device, W, H, FPS, depth=True) as cam:
        np.testing.assert_allclose(cam.intrinsics.k, K)
        assert cam.intrinsics.model == "brown_conrady" and cam.intrinsics.coeffs == pytest.approx(COEFFS)
        assert (cam.intrinsics.width, cam.intrinsics.height) == (W, H) and cam.serial == "SW0001"
        for i in range(3):
            software_camera.inject(500.0 + i / FPS, _color(i), np.full((H, W), 1000 + i, np.uint16))
            frame = cam.read(timeout_s=2.0)
            assert frame is not None and frame.number == i and not frame.host_stamped
            assert frame.stamp == pytest.approx(500.0 + i / FPS, abs=1e-6)
            np.testing.assert_array_equal(frame.data, _color(i))
            got = cam.read_depth(timeout_s=2.0)
            assert got is not None
            depth, units = got
            assert depth.data.dtype == np.uint16 and int(depth.data[5, 7]) == 1000 + i
            assert units == pytest.approx(0.001)
        assert cam.read(timeout_s=0.05) is None  # nothing injected: a timeout, not a stale frame


def test_a_profile_the_device_lacks_is_an_error_listing_what_it_offers(software_camera: SoftwareCamera) -> None:
    with pytest.raises(RuntimeError, match=r"no stream.color profile 640x480.*offers: 64x48 format.rgb8 @30"):
        RealSenseCamera(software_camera.device, 640, 480, FPS)


def test_realsense_frames_land_in_the_store_with_their_intrinsics(software_camera: SoftwareCamera,
                                                                  tmp_path: Path) -> None:
    hz, t0, steps = 20.0, 800.0, 24
    extr = np.eye(4)
    extr[:3, 3] = [0.4, -0.1, 0.9]
    rig = rig_config_from_dict({
        "name": "rs", "embodiment": "panda_single_joint", "control_hz": hz,
        "mapping": {"state": {"right_joint_pos": {"topic": "/js", "field": "position", "joints": [f"j{i}" for i in range(7)]},
                              "right_gripper": {"topic": "/js", "field": "position", "joints": ["g"]},
                              "right_joint_vel": None, "right_eef_pos": None, "right_eef_quat": None},
                    "action": {"joint_pos": {"topic": "/cmd", "field": "positions", "joints": [f"j{i}" for i in range(7)]},
                               "gripper": {"topic": "/cmd", "field": "positions", "joints": ["g"]}}},
        "tolerance_s": {"default": 0.025, "front": 0.02, "/cmd": 0.05},
        "cameras": {"front": {"realsense": "SW0001", "width": W, "height": H, "fps": FPS, "extrinsics": extr.tolist()}},
    }, where="rs rig")
    with RealSenseCamera(software_camera.device, W, H, FPS) as cam:
        cameras = camera_infos(rig, {"front": (H, W, cam.intrinsics.k)})
        store = open_record_store(rig, tmp_path / "rs.zarr", cameras)
        rec = make_recorder(rig, store)
        for k in range(steps + 2):  # the robot at 20 Hz
            t = t0 + k / hz
            q = np.full(7, 0.01 * k)
            rec.aligner.add("/js", t, {"state.right_joint_pos": q, "state.right_gripper": np.array([0.08])})
            rec.aligner.add_points("/cmd", [t + 1 / hz], [{"action.joint_pos": q, "action.gripper": np.zeros(1)}])
        stamps = []
        for i in range(int((steps + 2) / hz * FPS)):  # the camera at 30 fps, 7 ms after the robot's phase
            software_camera.inject(t0 + 0.007 + i / FPS, _color(i))
            frame = cam.read(timeout_s=2.0)
            assert frame is not None
            rec.aligner.add("front", frame.stamp, frame.data)
            stamps.append(frame.stamp)
        rec.start(t0)
        rec.stop(t0 + (steps - 1) / hz + 1e-3, success=True)
        report = rec.poll(now=t0 + 100.0)
        store.close()
    assert report is not None and report.index == 0 and report.steps == steps and report.refused == 0
    assert report.skew_ms["front"]["max"] <= 1e3 / FPS / 2 + 1e-6
    assert validate_store(tmp_path / "rs.zarr") == []
    s = EpisodeStore.open(tmp_path / "rs.zarr")
    np.testing.assert_allclose(np.asarray(s.cameras["front"].intrinsics), K)
    np.testing.assert_allclose(np.asarray(s.cameras["front"].extrinsics), extr)
    frames = s.get_episode(0)["images/front"]
    assert frames.shape == (steps, H, W, 3)
    ticks = t0 + np.arange(steps) / hz
    nearest = [int(np.argmin(np.abs(np.asarray(stamps) - t))) for t in ticks]
    np.testing.assert_array_equal(frames[:, 0, 0, 0], nearest)  # each step holds the frame nearest its tick
    np.testing.assert_array_equal(frames[3], _color(nearest[3]))
