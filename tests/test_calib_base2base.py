"""Base-to-base between two arms: from one board seen by a camera calibrated to each arm (the CLI, from
hand-eye files and rendered images) and from touch points."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from robot_policy.calib.base_to_base import from_board_views, from_touch_points, poses_in_frame_a
from robot_policy.calib.boards import load_board
from robot_policy.calib.handeye import invert, rotation_angle_deg
from robot_policy.calib.intrinsics import CalibrationError
from robot_policy.calib.render import Renderer, SyntheticCamera, _rigid, look_at
from robot_policy.cli.main import main
from robot_policy.data.rig_file import (
    BASE_TO_BASE_FORMAT,
    HAND_EYE_FORMAT,
    CameraCalibration,
    FrameTransform,
    StaleCalibrationWarning,
    load_base_to_base,
    load_rig_base_to_base,
    load_transform,
    save_camera_calibration,
    save_transform,
)

T_RIGHT_LEFT = _rigid(np.array([0.0, 0.0, np.pi]), np.array([0.0, -0.82, 0.01]))  # the left base faces the right


def test_touch_points_recover_the_transform() -> None:
    rng = np.random.default_rng(0)
    p_left = rng.uniform(-0.3, 0.3, (8, 3)) + [0.5, 0.4, 0.1]
    p_right = poses_in_frame_a(T_RIGHT_LEFT, np.c_[p_left, np.ones(8)][..., None])[:, :3, 0]
    T, q = from_touch_points(p_right + rng.normal(0, 2e-4, p_right.shape), p_left)
    assert float(rotation_angle_deg(T[:3, :3].T @ T_RIGHT_LEFT[:3, :3])) < 0.1
    assert np.linalg.norm(T[:3, 3] - T_RIGHT_LEFT[:3, 3]) < 1e-3 and q["rms_residual_mm"] < 0.6
    line = np.outer(np.linspace(0, 0.3, 5), [1.0, 0.0, 0.0])
    with pytest.raises(CalibrationError, match="on one line"):
        from_touch_points(line, line)


def test_board_seen_by_two_cameras_command(tmp_path, capsys) -> None:
    """Fixed cameras calibrated to each arm (eye to hand) see one board in 3 places: the CLI recovers
    T_right_base_left_base."""
    board = load_board("charuco_8x11_a3")
    base = SyntheticCamera()
    cam = SyntheticCamera(640, 360, np.diag([0.5, 0.5, 1.0]) @ base.K, base.distortion, 0.6, 1.0)
    r = Renderer(board, cam)
    rng = np.random.default_rng(1)
    centre = np.array([0.132, 0.1815, 0.0])
    placements = [_rigid(np.array([0.1 * k, -0.15 * k, 0.2 + 0.3 * k]), np.array([0.6, -0.41 + 0.05 * k, 0.02 * k]))
                  for k in range(3)]  # T_right_board, the board moved by hand between shots
    T_right_board0 = placements[0]
    paths = {}
    for side, eye in (("right", [-0.25, 0.05, -0.5]), ("left", [0.45, 0.3, -0.45])):
        T_base_cam = T_right_board0 @ look_at(np.array(eye), centre)
        if side == "left":
            T_base_cam = invert(T_RIGHT_LEFT) @ T_base_cam
        (tmp_path / side).mkdir()
        for k, T_right_board in enumerate(placements):
            T_base_board = T_right_board if side == "right" else invert(T_RIGHT_LEFT) @ T_right_board
            cv2.imwrite(str(tmp_path / side / f"{k}.png"), r.render(invert(T_base_cam) @ T_base_board, rng))
        cal_path = save_camera_calibration(tmp_path / f"{side}_cam.yaml", CameraCalibration(
            camera=f"{side}_cam", width=cam.width, height=cam.height, K=cam.K, distortion=cam.distortion,
            distortion_model="plumb_bob", serial=f"{side}-serial"))
        paths[side] = save_transform(tmp_path / f"handeye_{side}.yaml", HAND_EYE_FORMAT, FrameTransform(
            T_base_cam, f"{side}_base", f"{side}_cam_optical", "synthetic"),
            extra={"mode": "eye_to_hand", "camera": f"{side}_cam", "camera_file": str(cal_path)})
    out = tmp_path / "base_to_base.yaml"
    assert main(["calibrate", "base2base", "method=board", f"handeye_a={paths['right']}",
                 f"handeye_b={paths['left']}", f"images_a={tmp_path / 'right'}", f"images_b={tmp_path / 'left'}",
                 "board=charuco_8x11_a3", f"out={out}"]) == 0
    assert "T_right_base_left_base" in capsys.readouterr().out
    tf = load_base_to_base(out)
    assert (tf.parent, tf.child, tf.method) == ("right_base", "left_base", "board")
    assert tf.quality["n_observations"] == 3
    deg = float(rotation_angle_deg(tf.T[:3, :3].T @ T_RIGHT_LEFT[:3, :3]))
    mm = np.linalg.norm(tf.T[:3, 3] - T_RIGHT_LEFT[:3, 3]) * 1e3
    assert deg < 0.3 and mm < 3.0, (deg, mm)
    # the cameras it was seen through are in the file: a rig with another camera there gets a warning
    assert load_transform(out, BASE_TO_BASE_FORMAT)[1]["cameras"] == {"right_cam": "right-serial",
                                                                       "left_cam": "left-serial"}
    with pytest.warns(StaleCalibrationWarning, match="camera 'left_cam' serial 'left-serial'.*'other'"):
        load_rig_base_to_base(out, expected_serials={"right_cam": "right-serial", "left_cam": "other"})


def test_board_views_average_several_observations() -> None:
    rng = np.random.default_rng(2)
    A = [_rigid(rng.normal(0, 0.5, 3), rng.normal(0, 0.5, 3)) for _ in range(3)]
    B_board = [_rigid(rng.normal(0, 0.5, 3), rng.normal(0, 0.5, 3)) for _ in range(3)]
    # camera b sees the same board: T_b_camB T_camB_board = T_left_right T_right_board
    Bc = [_rigid(rng.normal(0, 0.5, 3), rng.normal(0, 0.5, 3)) for _ in range(3)]
    A_board = [invert(a) @ T_RIGHT_LEFT @ bc @ bb for a, bc, bb in zip(A, Bc, B_board, strict=True)]
    T, q = from_board_views(A, A_board, Bc, B_board)
    np.testing.assert_allclose(T, T_RIGHT_LEFT, atol=1e-9)
    assert q["n_observations"] == 3 and q["rms_translation_mm"] < 1e-6
    with pytest.raises(CalibrationError, match="same number"):
        from_board_views(A, A_board[:2], Bc, B_board)
