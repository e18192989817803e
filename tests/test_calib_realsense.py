"""RealSense factory intrinsics through pyrealsense2, read from a software_device (no camera needed)."""

from __future__ import annotations

import numpy as np
import pytest

from robot_policy.calib.intrinsics import CalibrationError

rs = pytest.importorskip("pyrealsense2", reason="pyrealsense2 (and Debian libusb-1.0-0) not installed")


def software_camera(model: object, coeffs: list[float]) -> object:
    dev = rs.software_device()
    dev.register_info(rs.camera_info.name, "synthetic D435")
    dev.register_info(rs.camera_info.serial_number, "123622270136")
    sensor = dev.add_sensor("RGB Camera")
    for w, h, fx in ((640, 480, 615.2), (1280, 720, 910.5)):
        intr = rs.intrinsics()
        intr.width, intr.height, intr.fx, intr.fy, intr.ppx, intr.ppy = w, h, fx, fx + 0.7, w / 2 + 0.3, h / 2 - 0.9
        intr.model, intr.coeffs = model, coeffs
        vs = rs.video_stream()
        vs.type, vs.index, vs.uid, vs.width, vs.height, vs.fps, vs.bpp, vs.fmt = (
            rs.stream.color, 0, w, w, h, 30, 3, rs.format.rgb8)
        vs.intrinsics = intr
        sensor.add_video_stream(vs)
    return dev


def test_factory_intrinsics_from_a_software_device(tmp_path) -> None:
    from robot_policy.calib.realsense import device_intrinsics
    from robot_policy.data.rig_file import load_camera_calibration, save_camera_calibration

    dev = software_camera(rs.distortion.brown_conrady, [0.1, -0.2, 0.001, 0.002, 0.03])
    cal = device_intrinsics(dev, "front")  # the largest color profile
    assert (cal.width, cal.height, cal.serial, cal.source) == (1280, 720, "123622270136", "realsense_factory")
    np.testing.assert_allclose(cal.K, [[910.5, 0, 640.3], [0, 911.2, 359.1], [0, 0, 1]], atol=1e-4)
    assert cal.distortion_model == "plumb_bob"
    np.testing.assert_allclose(cal.distortion, [0.1, -0.2, 0.001, 0.002, 0.03], atol=1e-6)
    small = device_intrinsics(dev, "front", width=640, height=480)
    assert small.K[0, 0] == pytest.approx(615.2, abs=1e-4)
    with pytest.raises(CalibrationError, match=r"no color stream at 800x600; available: \[\(640, 480\), \(1280, 720\)\]"):
        device_intrinsics(dev, "front", width=800, height=600)
    back = load_camera_calibration(save_camera_calibration(tmp_path / "front.yaml", cal), max_age_days=1)
    assert back.to_camera_info().serial == "123622270136"


def test_inverse_brown_conrady_with_zero_coefficients_is_plain_pinhole() -> None:
    from robot_policy.calib.realsense import device_intrinsics

    cal = device_intrinsics(software_camera(rs.distortion.inverse_brown_conrady, [0.0] * 5), "front")
    assert cal.distortion_model == "plumb_bob" and not cal.distortion.any()
