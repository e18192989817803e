"""Color (and depth) frames of an Intel RealSense camera through ``pyrealsense2``, with its factory intrinsics.

The camera is read at the sensor level (``rs.sensor.open`` / ``start`` into a frame queue), which works the
same for a USB camera found by serial and for an ``rs.software_device`` whose frames a test injects
(``rs.pipeline`` does not see software devices). Intrinsics come from the opened stream profile
(``rs.video_stream_profile.get_intrinsics()``): the pinhole matrix K in pixels and the distortion model with
its coefficients, as the camera's factory calibration stores them.

Frame stamps: librealsense gives milliseconds in a timestamp domain. ``system_time`` and ``global_time`` are
the host's clock (global time is the device clock mapped onto the host's), which is the ROS clock of a rig
without simulated time, so they are used as they are; ``hardware_clock`` (the device's own counter) has no
relation to the host, and such frames are stamped with their arrival time instead (``Frame.host_stamped``).

Sensors must be stopped and closed before the process exits, or librealsense crashes it: use the camera as a
context manager.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import numpy as np


def _rs() -> Any:
    try:
        import pyrealsense2 as rs
    except ImportError as e:  # pragma: no cover - the project installs it
        raise RuntimeError("pyrealsense2 is not installed (pip install pyrealsense2; Debian: libusb-1.0-0)") from e
    return rs


@dataclass(frozen=True)
class Intrinsics:
    """A stream's intrinsics: ``k`` (3, 3) pinhole matrix in pixels, ``model`` the distortion model's name
    (``brown_conrady``, ``inverse_brown_conrady``, ``none``...) and its ``coeffs`` (5,), image size in pixels."""

    width: int
    height: int
    k: np.ndarray
    model: str
    coeffs: tuple[float, ...]

    @classmethod
    def from_rs(cls, intr: Any) -> Intrinsics:
        k = np.array([[intr.fx, 0.0, intr.ppx], [0.0, intr.fy, intr.ppy], [0.0, 0.0, 1.0]], dtype=np.float64)
        return cls(int(intr.width), int(intr.height), k, str(intr.model).split(".")[-1],
                   tuple(float(c) for c in intr.coeffs))


@dataclass(frozen=True)
class Frame:
    """One frame: ``stamp`` s (host clock), ``number`` the device's frame counter, ``data`` (H, W, 3) uint8 RGB
    for color or (H, W) uint16 depth in ``depth_units`` m per count."""

    stamp: float
    number: int
    data: np.ndarray
    host_stamped: bool = False


def find_device(serial: str, context: Any | None = None) -> Any:
    """The connected RealSense device with ``serial``; the error lists the serials there are."""
    rs = _rs()
    devices = list((context or rs.context()).query_devices())
    serials = [d.get_info(rs.camera_info.serial_number) for d in devices]
    if serial not in serials:
        raise RuntimeError(f"RealSense {serial}: not connected (connected: {', '.join(serials) or 'none'})")
    return devices[serials.index(serial)]


class _Stream:
    """One opened sensor stream into a frame queue."""

    def __init__(self, device: Any, stream: Any, fmt: Any, width: int, height: int, fps: int, queue: int) -> None:
        rs = _rs()
        self.sensor, self.profile = self._pick(device, stream, fmt, width, height, fps)
        self.queue = rs.frame_queue(queue)
        self.sensor.open(self.profile)
        self.started = False
        self.sensor.start(self.queue)
        self.started = True

    @staticmethod
    def _pick(device: Any, stream: Any, fmt: Any, width: int, height: int, fps: int) -> tuple[Any, Any]:
        seen = []
        for sensor in device.query_sensors():
            for p in sensor.get_stream_profiles():
                if p.stream_type() != stream or not p.is_video_stream_profile():
                    continue
                v = p.as_video_stream_profile()
                seen.append(f"{v.width()}x{v.height()} {p.format()} @{p.fps()}")
                if p.format() == fmt and v.width() == width and v.height() == height and p.fps() == fps:
                    return sensor, v
        raise RuntimeError(f"RealSense: no {stream} profile {width}x{height} {fmt} @{fps} fps; the device offers: "
                           f"{', '.join(seen) or 'none'}")

    def read(self, timeout_s: float) -> Any | None:
        ok, frame = self.queue.try_wait_for_frame(int(timeout_s * 1000))
        return frame if ok else None

    def close(self) -> None:
        if self.started:
            self.sensor.stop()
            self.started = False
        self.sensor.close()


class RealSenseCamera:
    """Color (rgb8) and optionally depth (z16) of one device; a context manager (stops and closes the sensors).

    Args:
        device: an ``rs.device`` (:func:`find_device`) or ``rs.software_device``.
        width, height, fps: the color (and depth) stream's size in pixels and rate.
        depth: also open the depth stream (same size and rate).
        queue: frames buffered per stream before the oldest are dropped.
    """

    def __init__(self, device: Any, width: int = 640, height: int = 480, fps: int = 30, depth: bool = False,
                 queue: int = 4) -> None:
        rs = _rs()
        self.serial = str(device.get_info(rs.camera_info.serial_number))
        self._color: _Stream | None = None
        self._depth: _Stream | None = None
        try:
            self._color = _Stream(device, rs.stream.color, rs.format.rgb8, width, height, fps, queue)
            if depth:
                self._depth = _Stream(device, rs.stream.depth, rs.format.z16, width, height, fps, queue)
        except BaseException:
            self.close()
            raise
        self.intrinsics = Intrinsics.from_rs(self._color.profile.get_intrinsics())
        self.depth_intrinsics = (Intrinsics.from_rs(self._depth.profile.get_intrinsics())
                                 if self._depth is not None else None)

    @classmethod
    def open(cls, serial: str, width: int = 640, height: int = 480, fps: int = 30, depth: bool = False,
             context: Any | None = None) -> RealSenseCamera:
        """The connected camera with ``serial``."""
        return cls(find_device(serial, context), width, height, fps, depth)

    def read(self, timeout_s: float = 0.5) -> Frame | None:
        """The next color frame, or None after ``timeout_s`` seconds without one."""
        assert self._color is not None
        f = self._color.read(timeout_s)
        if f is None:
            return None
        data = np.asanyarray(f.as_video_frame().get_data())
        return self._frame(f, np.array(data, dtype=np.uint8, copy=True))  # the buffer returns to librealsense

    def read_depth(self, timeout_s: float = 0.5) -> tuple[Frame, float] | None:
        """The next depth frame and its units (m per count), or None."""
        if self._depth is None:
            raise RuntimeError(f"RealSense {self.serial}: opened without depth (depth=True)")
        f = self._depth.read(timeout_s)
        if f is None:
            return None
        data = np.array(np.asanyarray(f.get_data()), dtype=np.uint16, copy=True)
        return self._frame(f, data), float(f.as_depth_frame().get_units())

    @staticmethod
    def _frame(f: Any, data: np.ndarray) -> Frame:
        rs = _rs()
        domain = f.get_frame_timestamp_domain()
        if domain in (rs.timestamp_domain.system_time, rs.timestamp_domain.global_time):
            return Frame(f.get_timestamp() / 1e3, int(f.get_frame_number()), data)
        return Frame(time.time(), int(f.get_frame_number()), data, host_stamped=True)

    def close(self) -> None:
        for s in (self._depth, self._color):
            if s is not None:
                s.close()
        self._color = self._depth = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


__all__ = ["Frame", "Intrinsics", "RealSenseCamera", "find_device"]
