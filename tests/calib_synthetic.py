"""Shared ground truth for the calibration tests: corner detections projected analytically from a known
camera (fast, no rendering) and small rendered views."""

from __future__ import annotations

import numpy as np

from robot_policy.calib.boards import BoardSpec, Detection
from robot_policy.calib.render import Renderer, SyntheticCamera


def projected_detection(renderer: Renderer, T_camera_board: np.ndarray, rng: np.random.Generator,
                        noise_px: float = 0.1) -> Detection:
    """The board's corners at their true pixels plus Gaussian noise, those inside the image only."""
    board: BoardSpec = renderer.board
    cam: SyntheticCamera = renderer.camera
    obj = board.corner_points()
    px = renderer.project(T_camera_board, obj) + rng.normal(0, noise_px, (len(obj), 2))
    inside = (px[:, 0] > 2) & (px[:, 0] < cam.width - 3) & (px[:, 1] > 2) & (px[:, 1] < cam.height - 3)
    ids = np.flatnonzero(inside)
    return Detection(ids, px[ids], obj[ids], (cam.width, cam.height))
