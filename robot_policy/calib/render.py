"""Synthetic board views with a known camera and known poses: the ground truth that tests and
``robot-policy calibrate synth`` check the solvers against.

A view is rendered backwards, per output pixel: the pixel is undistorted to a ray through the true
(K, distortion) model, the ray is intersected with the board plane (z = 0 in the board frame), and the board
texture is sampled there with ``cv2.remap``. So the distortion in the image is the model's own, not an
approximation by warping. Then optical blur (Gaussian) and sensor noise (Gaussian, in grey levels).

Frames: ``T_camera_board`` (4, 4) maps board-frame points (m) to the camera's optical frame (x right, y
down, z forward; m).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from robot_policy.calib.boards import BoardSpec, board_image

#: texture pixels per board square: fine enough that a square seen at <= ~80 image pixels is not blocky
TEXTURE_PX_PER_SQUARE = 96
#: white paper around the pattern, in squares; ChArUco detection needs a quiet zone around the markers
TEXTURE_MARGIN_SQUARES = 0.5


@dataclass(frozen=True)
class SyntheticCamera:
    """The true camera of a synthetic data set.

    Attributes:
        width, height: image size, pixels.
        K: (3, 3) pinhole matrix, pixels.
        distortion: OpenCV coefficients (k1, k2, p1, p2, k3[, k4, k5, k6]).
        blur_sigma_px: Gaussian optical blur, pixels (0 = none).
        noise_sigma: additive Gaussian noise, grey levels of 255.
    """

    width: int = 1280
    height: int = 720
    K: np.ndarray = field(default_factory=lambda: np.array([[910.0, 0.0, 652.3], [0.0, 912.5, 356.8],
                                                            [0.0, 0.0, 1.0]]))
    # a realistic wide-angle webcam lens: barrel distortion of ~25 px at the image corners
    distortion: np.ndarray = field(default_factory=lambda: np.array([-0.12, 0.06, 0.0007, -0.0004, -0.015]))
    blur_sigma_px: float = 0.8
    noise_sigma: float = 2.0


class Renderer:
    """Renders views of one board through one camera; the per-pixel rays are computed once."""

    def __init__(self, board: BoardSpec, camera: SyntheticCamera) -> None:
        self.board, self.camera = board, camera
        margin = round(TEXTURE_MARGIN_SQUARES * TEXTURE_PX_PER_SQUARE)
        self.texture = board_image(board, TEXTURE_PX_PER_SQUARE, margin_px=margin).astype(np.float32)
        self._m_per_texel = board.square_length_m / TEXTURE_PX_PER_SQUARE
        self._margin = margin
        self.rays = undistorted_rays(camera)  # (H*W, 3) in the camera frame, z = 1

    def render(self, T_camera_board: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """A (H, W) uint8 grey image of the board at pose ``T_camera_board`` (4, 4; m). Pixels whose ray
        misses the board (or hits its back) are a mid-grey background."""
        cam = self.camera
        R, t = T_camera_board[:3, :3], T_camera_board[:3, 3]
        # the rays in the board frame: origin c = -R^T t, directions R^T d; hit z = 0 at c + s d
        c = -R.T @ t
        d = self.rays @ R  # (H*W, 3) == (R^T d^T)^T
        with np.errstate(divide="ignore", invalid="ignore"):
            s = -c[2] / d[:, 2]
        hit = c[None, :2] + s[:, None] * d[:, :2]  # (H*W, 2) board-frame x, y in m
        # texel coordinates in OpenCV's pixel-centre convention (the pattern's corner is at edge margin - 0.5)
        uv = hit / self._m_per_texel + (self._margin - 0.5)
        uv[~(s > 0)] = -1e6  # behind the camera: background
        maps = uv.reshape(cam.height, cam.width, 2).astype(np.float32)
        img = cv2.remap(self.texture, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=128.0)
        # minified texture aliases with bilinear sampling; the optical blur hides it as a real lens would
        if cam.blur_sigma_px > 0:
            img = cv2.GaussianBlur(img, (0, 0), cam.blur_sigma_px)
        if cam.noise_sigma > 0:
            rng = rng if rng is not None else np.random.default_rng(0)
            img = np.asarray(img) + rng.normal(0.0, cam.noise_sigma, np.shape(img)).astype(np.float32)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)

    def project(self, T_camera_board: np.ndarray, points_board: np.ndarray) -> np.ndarray:
        """(N, 2) true pixel positions of board points (N, 3; m) at pose ``T_camera_board``."""
        rvec, _ = cv2.Rodrigues(T_camera_board[:3, :3])
        px, _ = cv2.projectPoints(points_board.astype(np.float64), rvec, T_camera_board[:3, 3].astype(np.float64),
                                  self.camera.K, self.camera.distortion)
        return px.reshape(-1, 2)


def undistorted_rays(camera: SyntheticCamera) -> np.ndarray:
    """(H*W, 3) float64 rays (x, y, 1) in the camera frame of every pixel centre, row-major, by inverting the
    distortion iteratively to well below 1e-4 px (OpenCV's default 5 iterations leave pixels of error at the
    corners of a wide lens)."""
    v, u = np.mgrid[0:camera.height, 0:camera.width].astype(np.float64)
    px = np.stack([u.ravel(), v.ravel()], axis=1).reshape(-1, 1, 2)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
    xy = np.asarray(cv2.undistortPointsIter(px, camera.K, camera.distortion, None, None,  # type: ignore[call-overload]
                                            criteria)).reshape(-1, 2)
    return np.concatenate([xy, np.ones((xy.shape[0], 1))], axis=1)


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray | None = None) -> np.ndarray:
    """T_board_camera (4, 4) of a camera at ``eye`` (board frame, m) whose optical axis points at ``target``;
    image-up is as close to ``up`` as the axis allows (camera y points down, so up = -y)."""
    up = np.array([0.0, -1.0, 0.0]) if up is None else up
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(-up, z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z], axis=1)
    T[:3, 3] = eye
    return T


def calibration_poses(board: BoardSpec, n: int, rng: np.random.Generator, distance_m: tuple[float, float] = (0.3, 0.55),
                      max_tilt_deg: float = 40.0) -> list[np.ndarray]:
    """``n`` varied T_camera_board poses (4, 4) for intrinsics: the camera around the board's centre at
    ``distance_m``, tilted up to ``max_tilt_deg`` from face-on, rolled, and aimed off-centre so the board
    falls in every part of the image."""
    w, h = board.size_m
    centre = np.array([w / 2, h / 2, 0.0])
    poses = []
    for _ in range(n):
        tilt = np.deg2rad(rng.uniform(10.0, max_tilt_deg))
        azim = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(*distance_m)
        # the camera on the board's non-printed side is z < 0 (board z points into the board)
        eye = centre + dist * np.array([np.sin(tilt) * np.cos(azim), np.sin(tilt) * np.sin(azim), -np.cos(tilt)])
        target = centre + np.array([rng.uniform(-0.6, 0.6) * w, rng.uniform(-0.6, 0.6) * h, 0.0])
        roll = rng.uniform(-np.pi / 6, np.pi / 6)
        up = np.array([np.sin(roll), -np.cos(roll), 0.0])
        poses.append(np.linalg.inv(look_at(eye, target, up)))
    return poses


@dataclass(frozen=True)
class HandEyeScene:
    """Ground truth of a synthetic hand-eye data set (all (4, 4), metres).

    Attributes:
        mode: ``eye_in_hand`` (X = T_gripper_camera, the board fixed in the base: ``constant`` =
            T_base_board) or ``eye_to_hand`` (X = T_base_camera, the board on the gripper: ``constant`` =
            T_gripper_board).
        X: the true hand-eye transform.
        constant: the true fixed frame.
        T_base_gripper: (N, 4, 4) robot poses.
        T_camera_board: (N, 4, 4) board poses in the camera.
    """

    mode: str
    X: np.ndarray
    constant: np.ndarray
    T_base_gripper: np.ndarray
    T_camera_board: np.ndarray


def _rigid(rotvec: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(np.asarray(rotvec, np.float64))[0]
    T[:3, 3] = t
    return T


def hand_eye_scene(board: BoardSpec, n: int, rng: np.random.Generator, mode: str = "eye_in_hand",
                   single_axis: bool = False) -> HandEyeScene:
    """``n`` robot poses with the board in view, from a known X: board poses in the camera like a person
    would take them (tilted, rolled, at 0.3-0.55 m; rotations about all three axes), then the robot poses that
    put the camera there. ``single_axis`` instead only spins the gripper about its own z axis (a degenerate set
    for testing the check)."""
    # a camera 6 cm ahead of and 3.5 cm beside the flange, looking forward and slightly down
    X_eih = _rigid(np.array([0.05, -0.08, 1.56]), np.array([0.035, -0.012, 0.062]))
    if mode == "eye_in_hand":
        X, constant = X_eih, _rigid(np.array([0.1, 3.0, 0.05]), np.array([0.55, -0.1, 0.02]))  # T_base_board
    elif mode == "eye_to_hand":
        X = _rigid(np.array([2.1, 0.4, -0.3]), np.array([0.9, 0.35, 0.6]))  # T_base_camera
        constant = _rigid(np.array([0.0, 0.0, 0.3]), np.array([-0.08, -0.12, 0.09]))  # T_gripper_board
    else:
        raise ValueError(f"unknown hand-eye mode {mode!r}; modes: eye_in_hand, eye_to_hand")
    if single_axis:
        C0 = calibration_poses(board, 1, rng)[0]
        spins = [_rigid(np.array([0.0, 0.0, a]), rng.normal(0, 0.01, 3)) for a in np.linspace(-0.8, 0.8, n)]
        if mode == "eye_in_hand":
            G0 = constant @ invert_rigid(C0) @ invert_rigid(X)
            G = np.stack([G0 @ S for S in spins])
        else:
            G0 = X @ C0 @ invert_rigid(constant)
            G = np.stack([G0 @ S for S in spins])
    else:
        C = calibration_poses(board, n, rng)
        if mode == "eye_in_hand":  # T_base_board = G X C  ->  G = T_base_board C^-1 X^-1
            G = np.stack([constant @ invert_rigid(c) @ invert_rigid(X) for c in C])
        else:  # T_base_camera C = G T_gripper_board  ->  G = X C Y^-1
            G = np.stack([X @ c @ invert_rigid(constant) for c in C])
    if mode == "eye_in_hand":
        Cs = np.stack([invert_rigid(X) @ invert_rigid(g) @ constant for g in G])
    else:
        Cs = np.stack([invert_rigid(X) @ g @ constant for g in G])
    return HandEyeScene(mode, X, constant, G, Cs)


def invert_rigid(T: np.ndarray) -> np.ndarray:
    """Inverse of one rigid transform (4, 4)."""
    out = np.eye(4)
    out[:3, :3] = T[:3, :3].T
    out[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return out
