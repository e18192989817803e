"""Conversions between ROS 2 messages and the plain arrays of :mod:`robot_policy.runtime` (times in
seconds on the ROS clock, positions in rad or m)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint


def to_seconds(stamp: Time) -> float:
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


def to_time(seconds: float) -> Time:
    ns = round(seconds * 1e9)
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def to_duration(seconds: float) -> Duration:
    ns = round(seconds * 1e9)
    return Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def duration_seconds(d: Duration) -> float:
    return float(d.sec) + 1e-9 * float(d.nanosec)


def joint_state(names: Sequence[str], position: np.ndarray, velocity: np.ndarray, stamp: float) -> JointState:
    msg = JointState()
    msg.header.stamp = to_time(stamp)
    msg.name = list(names)
    msg.position = [float(x) for x in position]
    msg.velocity = [float(x) for x in velocity]
    return msg


def pose_stamped(position: np.ndarray, quat_xyzw: np.ndarray, stamp: float, frame: str) -> PoseStamped:
    msg = PoseStamped()
    msg.header.stamp = to_time(stamp)
    msg.header.frame_id = frame
    p, q = msg.pose.position, msg.pose.orientation
    p.x, p.y, p.z = (float(v) for v in position)
    q.x, q.y, q.z, q.w = (float(v) for v in quat_xyzw)
    return msg


def pose_arrays(msg: PoseStamped) -> tuple[np.ndarray, np.ndarray]:
    p, q = msg.pose.position, msg.pose.orientation
    return np.array([p.x, p.y, p.z]), np.array([q.x, q.y, q.z, q.w])


def float_array(values: np.ndarray) -> Float64MultiArray:
    # Float64MultiArray has no header: the object state is stamped with its arrival time by the receiver
    return Float64MultiArray(data=[float(v) for v in np.ravel(values)])


def joint_trajectory(names: Sequence[str], positions: np.ndarray, dt: float, start: float) -> JointTrajectory:
    """Points ``positions`` (T, len(names)) at ``start + (i + 1) * dt`` seconds: the header is stamped
    ``start`` and point i has ``time_from_start = (i + 1) * dt``, so the controller times every point from
    the stamp, as joint_trajectory_controller does."""
    msg = JointTrajectory()
    msg.header.stamp = to_time(start)
    msg.joint_names = list(names)
    for i, row in enumerate(np.asarray(positions, dtype=np.float64)):
        msg.points.append(JointTrajectoryPoint(positions=[float(v) for v in row],
                                               time_from_start=to_duration((i + 1) * dt)))
    return msg


def trajectory_arrays(msg: JointTrajectory, now: float) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(names, times (K,) absolute s, positions (K, len(names)))``; a zero header stamp means "now", as
    in joint_trajectory_controller. Raises ValueError for a malformed trajectory (ragged or non-finite
    points, times not increasing)."""
    names = list(msg.joint_names)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"trajectory joint names empty or repeated: {names}")
    if not msg.points:
        raise ValueError("trajectory without points")
    start = to_seconds(msg.header.stamp) or now
    times = np.array([start + duration_seconds(p.time_from_start) for p in msg.points])
    if any(len(p.positions) != len(names) for p in msg.points):
        raise ValueError(f"trajectory points must each hold {len(names)} positions")
    positions = np.array([list(p.positions) for p in msg.points], dtype=np.float64)
    if not np.all(np.isfinite(positions)) or not np.all(np.isfinite(times)):
        raise ValueError("trajectory holds NaN or Inf")
    if np.any(np.diff(times) <= 0):
        raise ValueError("trajectory point times must increase")
    return names, times, positions
