"""Hand-eye against ground truth (corners projected from a known camera and X, with pixel noise): every
solver's result and their spread, both modes, the degenerate-pose check, and the pose inputs (JSON, CSV,
an episode store's end-effector states)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from calib_synthetic import projected_detection

from robot_policy.calib.boards import load_board
from robot_policy.calib.handeye import (
    METHODS,
    DegeneratePoseSet,
    pose_diversity,
    refine,
    rotation_angle_deg,
    solve_hand_eye,
)
from robot_policy.calib.intrinsics import CalibrationError, board_pose
from robot_policy.calib.poses import load_pose_file, load_store_poses
from robot_policy.calib.render import Renderer, SyntheticCamera, hand_eye_scene

BOARD = load_board("charuco_8x11_a3")


def projector() -> Renderer:
    r = Renderer.__new__(Renderer)  # projection only: no rays or texture
    r.board, r.camera = BOARD, SyntheticCamera()
    return r


def errors(X: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    return (float(rotation_angle_deg(X[:3, :3].T @ truth[:3, :3])),
            float(np.linalg.norm(X[:3, 3] - truth[:3, 3]) * 1e3))


@pytest.mark.parametrize("mode", ["eye_in_hand", "eye_to_hand"])
def test_every_solver_recovers_X(mode: str) -> None:
    rng = np.random.default_rng(7)
    scene = hand_eye_scene(BOARD, 20, rng, mode)
    r = projector()
    dets = [projected_detection(r, C, rng, noise_px=0.15) for C in scene.T_camera_board]
    cam = r.camera
    C = np.stack([board_pose(d, cam.K, cam.distortion)[0] for d in dets])
    res = solve_hand_eye(scene.T_base_gripper, C, mode)
    assert set(res.solvers) == set(METHODS)
    for name, s in res.solvers.items():
        deg, mm = errors(s.X, scene.X)
        assert deg < 0.1 and mm < 1.0, (name, deg, mm)
        assert s.rotation_residual_deg.shape == (20,) and s.rms_translation_mm < 1.0
    assert 0 < res.spread_deg < 0.1 and 0 < res.spread_mm < 1.0
    assert res.frames == (("gripper", "camera") if mode == "eye_in_hand" else ("base", "camera"))
    assert errors(res.constant, scene.constant)[1] < 2.0
    refined = refine(res, scene.T_base_gripper, dets, cam.K, cam.distortion)
    assert refined.method.startswith("refined:") and refined.reprojection_rms_px < 0.3
    deg, mm = errors(refined.X, scene.X)
    assert deg < 0.05 and mm < 0.5


def test_rotations_about_one_axis_are_refused_and_named() -> None:
    rng = np.random.default_rng(3)
    scene = hand_eye_scene(BOARD, 12, rng, "eye_in_hand", single_axis=True)
    div = pose_diversity(scene.T_base_gripper)
    assert "about one axis" in div.problem and abs(abs(div.main_axis[2]) - 1) < 1e-6  # the gripper's z
    with pytest.raises(DegeneratePoseSet, match="about one axis"):
        solve_hand_eye(scene.T_base_gripper, scene.T_camera_board, "eye_in_hand")
    res = solve_hand_eye(scene.T_base_gripper, scene.T_camera_board, "eye_in_hand", allow_degenerate=True)
    assert "about one axis" in res.diversity.problem
    # a well-spread set passes
    good = hand_eye_scene(BOARD, 12, rng, "eye_in_hand")
    assert pose_diversity(good.T_base_gripper).problem == ""
    assert pose_diversity(good.T_base_gripper).axis_spread_deg > 10
    with pytest.raises(DegeneratePoseSet, match="only 2 poses"):
        solve_hand_eye(good.T_base_gripper[:2], good.T_camera_board[:2])
    with pytest.raises(CalibrationError, match="12 robot poses but 11 board poses"):
        solve_hand_eye(good.T_base_gripper, good.T_camera_board[:11])
    bad = good.T_base_gripper.copy()
    bad[4, :3, :3] *= 1.1
    with pytest.raises(CalibrationError, match=r"T_base_gripper\[4\]: not a rigid transform"):
        solve_hand_eye(bad, good.T_camera_board)


def test_pose_files_pair_with_images(tmp_path) -> None:
    import cv2

    imgs = tmp_path / "images"
    imgs.mkdir()
    for i in range(3):
        cv2.imwrite(str(imgs / f"{i:02d}.png"), np.full((8, 8), 128, np.uint8))
    T = [np.eye(4) + np.diag([0, 0, 0, 0]) for _ in range(3)]
    for i, t in enumerate(T):
        t[0, 3] = i * 0.1
    (tmp_path / "p.json").write_text(json.dumps({"poses": [{"image": f"{i:02d}.png", "T_base_gripper": t.tolist()}
                                                           for i, t in reversed(list(enumerate(T)))]}))
    ps = load_pose_file(tmp_path / "p.json", imgs)
    assert ps.names == ["02.png", "01.png", "00.png"] and ps.T_base_gripper[0, 0, 3] == pytest.approx(0.2)
    rows = ["image,m00,m01,m02,m03,m10,m11,m12,m13,m20,m21,m22,m23,m30,m31,m32,m33"]
    rows += [",".join([f"{i:02d}.png"] + [str(v) for v in t.ravel()]) for i, t in enumerate(T)]
    (tmp_path / "p.csv").write_text("\n".join(rows))
    assert load_pose_file(tmp_path / "p.csv", imgs).T_base_gripper[2, 0, 3] == pytest.approx(0.2)
    (tmp_path / "short.json").write_text(json.dumps([t.tolist() for t in T[:2]]))
    with pytest.raises(CalibrationError, match="2 poses but images=.* has 3 images"):
        load_pose_file(tmp_path / "short.json", imgs)
    (tmp_path / "bad.csv").write_text("1,2,3\n")
    with pytest.raises(CalibrationError, match=r"bad.csv:1: expected 16 numbers"):
        load_pose_file(tmp_path / "bad.csv", imgs)


def test_end_effector_poses_from_an_episode_store(tmp_path) -> None:
    from robot_policy.data.store import CameraInfo, EpisodeStore
    from robot_policy.spaces.embodiment import load_embodiment
    from robot_policy.spaces.rotation import matrix_to_rot6d
    from robot_policy.spaces.unified import slot

    spec = load_embodiment("panda_single_joint")  # its state has the right arm's end-effector pose
    rng = np.random.default_rng(0)
    scene = hand_eye_scene(BOARD, 4, rng, "eye_in_hand")
    n = 4
    state = np.zeros((n, 128), np.float32)  # the other slots of the embodiment: zeros will do
    state[:, slot("right_eef_pos")] = scene.T_base_gripper[:, :3, 3]
    state[:, slot("right_eef_rot6d")] = matrix_to_rot6d(scene.T_base_gripper[:, :3, :3])
    frames = rng.integers(0, 255, (n, 24, 32, 3), dtype=np.uint8)
    with EpisodeStore.create(tmp_path / "s.zarr", spec, cameras={"wrist": CameraInfo(24, 32)}) as store:
        store.add_episode({"state": state, "action": np.zeros_like(state), "timestamp": np.arange(n) / 10.0,
                           "images/wrist": frames})
    ps = load_store_poses(tmp_path / "s.zarr", 0, "right", "wrist", stride=2)
    assert ps.names == ["step_0", "step_2"]
    np.testing.assert_allclose(ps.T_base_gripper, scene.T_base_gripper[::2], atol=1e-6)
    assert ps.images is not None and np.array_equal(ps.images[1], frames[2])
    with pytest.raises(CalibrationError, match="does not record left_eef_pos"):
        load_store_poses(tmp_path / "s.zarr", 0, "left", "wrist")
    with pytest.raises(CalibrationError, match="no images/front; cameras: wrist"):
        load_store_poses(tmp_path / "s.zarr", 0, "right", "front")
