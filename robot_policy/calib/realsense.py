"""RealSense factory intrinsics through ``pyrealsense2``: an alternative to a board calibration for a
RealSense camera (the factory values are usually within a pixel or two; a board calibration is the check).

Only stream profiles are read; no sensor is opened or started, so nothing needs stopping afterwards.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robot_policy.calib.intrinsics import CalibrationError
from robot_policy.data.rig_file import CameraCalibration, utc_now

#: librealsense distortion model -> the model name written to the camera YAML
_MODELS = {"brown_conrady": "plumb_bob", "none": "plumb_bob", "inverse_brown_conrady": "inverse_brown_conrady",
           "kannala_brandt4": "equidistant"}
_STREAMS = ("color", "depth", "infrared")


def _rs() -> Any:
    try:
        import pyrealsense2 as rs
    except ImportError as e:  # the wheel needs Debian libusb-1.0-0
        raise CalibrationError(f"pyrealsense2 is not importable ({e}); pip install pyrealsense2 and apt-get "
                               "install libusb-1.0-0") from None
    return rs


def calibration_from_intrinsics(intr: Any, camera: str, serial: str | None) -> CameraCalibration:
    """A camera YAML record from an ``rs.intrinsics`` (fx, fy, ppx, ppy in pixels, model, coeffs[5])."""
    model = str(intr.model).rsplit(".", 1)[-1]
    coeffs = np.asarray(list(intr.coeffs), np.float64)
    if model not in _MODELS and not np.any(coeffs):
        model = "none"  # a model with all-zero coefficients is the plain pinhole whatever its name
    if model not in _MODELS:
        raise CalibrationError(f"RealSense {camera}: distortion model {model!r} has no equivalent here; supported: "
                               f"{', '.join(_MODELS)} (or any with all-zero coefficients)")
    name = _MODELS[model]
    if name == "inverse_brown_conrady" and not np.any(coeffs):
        name = "plumb_bob"
    coeffs = coeffs[:4] if name == "equidistant" else coeffs[:5]
    K = np.array([[intr.fx, 0.0, intr.ppx], [0.0, intr.fy, intr.ppy], [0.0, 0.0, 1.0]])
    return CameraCalibration(camera=camera, width=int(intr.width), height=int(intr.height), K=K, distortion=coeffs,
                             distortion_model=name, calibrated_at=utc_now(), serial=serial,
                             source="realsense_factory", quality={"realsense_model": model})


def device_intrinsics(device: Any, camera: str, stream: str = "color", width: int | None = None,
                      height: int | None = None) -> CameraCalibration:
    """The factory intrinsics of ``device`` (an ``rs.device``, or a ``software_device`` in tests) for one
    stream and resolution (the largest when width/height are None)."""
    rs = _rs()
    if stream not in _STREAMS:
        raise CalibrationError(f"unknown RealSense stream {stream!r}; streams: {', '.join(_STREAMS)}")
    serial = None
    if device.supports(rs.camera_info.serial_number):
        serial = str(device.get_info(rs.camera_info.serial_number))
    found: list[tuple[int, int]] = []
    chosen: Any = None
    for sensor in device.query_sensors():
        for profile in sensor.get_stream_profiles():
            if profile.stream_type() != getattr(rs.stream, stream) or not profile.is_video_stream_profile():
                continue
            vp = profile.as_video_stream_profile()
            found.append((vp.width(), vp.height()))
            fits = (width is None or vp.width() == width) and (height is None or vp.height() == height)
            if fits and (chosen is None or vp.width() * vp.height() > chosen.width() * chosen.height()):
                chosen = vp
    if chosen is None:
        raise CalibrationError(f"RealSense {serial}: no {stream} stream at {width or 'any'}x{height or 'any'}; "
                               f"available: {sorted(set(found)) or 'none'}")
    return calibration_from_intrinsics(chosen.get_intrinsics(), camera, serial)


def factory_intrinsics(camera: str, serial: str | None = None, stream: str = "color", width: int | None = None,
                       height: int | None = None) -> CameraCalibration:
    """The factory intrinsics of a connected RealSense (the one with ``serial``, or the only one)."""
    rs = _rs()
    devices = list(rs.context().query_devices())
    serials = [d.get_info(rs.camera_info.serial_number) for d in devices]
    if serial is not None:
        devices = [d for d, s in zip(devices, serials, strict=True) if s == serial]
    if len(devices) != 1:
        raise CalibrationError(f"RealSense: {'no' if not devices else 'more than one'} camera"
                               f"{f' with serial {serial}' if serial else ''}; connected: {serials or 'none'}")
    return device_intrinsics(devices[0], camera, stream, width, height)
