"""The transform between the two arms' bases of a bimanual rig, so that the unified space's right and left
end-effector poses (each measured in its own arm's base frame) can be put in one frame.

Two ways to measure ``T_a_b`` (a, b: the two bases, e.g. a = right_base, b = left_base):

* board: one board seen by a camera calibrated to each arm (``T_a_camA``, ``T_b_camB`` from hand-eye; the
  same camera calibrated to both arms also works). Each observation gives
  ``T_a_b = T_a_camA T_camA_board (T_b_camB T_camB_board)^-1``; several are averaged.
* touch points: both arms' tool tips touch the same physical points; the rigid fit (Kabsch, no scale) of
  the points in b onto the points in a.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from robot_policy.calib.handeye import invert, mean_transform, rotation_angle_deg
from robot_policy.calib.intrinsics import CalibrationError


def from_board_views(T_a_cam_a: Sequence[np.ndarray], T_cam_a_board: Sequence[np.ndarray],
                     T_b_cam_b: Sequence[np.ndarray], T_cam_b_board: Sequence[np.ndarray],
                     ) -> tuple[np.ndarray, dict[str, float]]:
    """``T_a_b`` (4, 4; m) from N simultaneous observations of one board (each argument N x (4, 4)), and
    its quality: the observations' rotation (deg) and translation (mm) RMS about the mean."""
    n = {len(T_a_cam_a), len(T_cam_a_board), len(T_b_cam_b), len(T_cam_b_board)}
    if len(n) != 1 or 0 in n:
        raise CalibrationError(f"base-to-base from a board needs the same number (>= 1) of each pose, got "
                               f"{[len(x) for x in (T_a_cam_a, T_cam_a_board, T_b_cam_b, T_cam_b_board)]}")
    a_board = np.asarray(T_a_cam_a) @ np.asarray(T_cam_a_board)  # (N, 4, 4) T_a_board
    b_board = np.asarray(T_b_cam_b) @ np.asarray(T_cam_b_board)  # (N, 4, 4) T_b_board
    each = a_board @ invert(b_board)
    T = mean_transform(each)
    rot = rotation_angle_deg(np.swapaxes(each[:, :3, :3], 1, 2) @ T[:3, :3])
    trans = np.linalg.norm(each[:, :3, 3] - T[:3, 3], axis=1) * 1e3
    return T, {"n_observations": len(each), "rms_rotation_deg": float(np.sqrt(np.mean(rot ** 2))),
               "rms_translation_mm": float(np.sqrt(np.mean(trans ** 2)))}


def from_touch_points(points_a: np.ndarray, points_b: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """``T_a_b`` (4, 4; m) that maps the points (N, 3; m) touched by arm b, in b's base, onto the same points
    touched by arm a, in a's base (Kabsch), with the fit's RMS and max residual (mm). Needs >= 3 points not
    on one line."""
    pa, pb = np.asarray(points_a, np.float64), np.asarray(points_b, np.float64)
    if pa.shape != pb.shape or pa.ndim != 2 or pa.shape[1] != 3:
        raise CalibrationError(f"touch points: expected two (N, 3) arrays of the same N, got {pa.shape} and {pb.shape}")
    if pa.shape[0] < 3:
        raise CalibrationError(f"touch points: {pa.shape[0]} points; at least 3 (ideally 6+, spread out) are needed")
    ca, cb = pa.mean(axis=0), pb.mean(axis=0)
    sv = np.linalg.svd(pb - cb, compute_uv=False)
    if sv[1] < 1e-3 * max(sv[0], 1e-12) or sv[1] < 1e-3:  # metres of spread across the main line
        raise CalibrationError("touch points: the points lie (nearly) on one line; the rotation about it is "
                               "undetermined: touch points spread over a plane or volume (>= 5 cm apart)")
    U, _, Vt = np.linalg.svd((pb - cb).T @ (pa - ca))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(Vt.T @ U.T))])
    R = Vt.T @ D @ U.T
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, ca - R @ cb
    res = np.linalg.norm(pb @ R.T + T[:3, 3] - pa, axis=1) * 1e3
    return T, {"n_points": int(pa.shape[0]), "rms_residual_mm": float(np.sqrt(np.mean(res ** 2))),
               "max_residual_mm": float(res.max())}


def poses_in_frame_a(T_a_b: np.ndarray, T_b_pose: np.ndarray) -> np.ndarray:
    """Poses (..., 4, 4) given in base b, expressed in base a: e.g. the left end-effector's pose in the right
    arm's base frame, so both arms' poses share one frame."""
    return np.asarray(T_a_b, np.float64) @ np.asarray(T_b_pose, np.float64)
