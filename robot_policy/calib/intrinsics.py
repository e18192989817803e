"""Camera intrinsics from board views: OpenCV's calibration with the distortion model recorded, the
reprojection error of every image, outlier images named (and optionally dropped and re-solved), and the
standard deviations of fx, fy, cx, cy from ``cv2.calibrateCameraExtended``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from robot_policy.calib.boards import Detection

#: distortion model (ROS ``sensor_msgs/CameraInfo`` names) -> (OpenCV calibration flags, coefficient count)
DISTORTION_MODELS: dict[str, tuple[int, int]] = {
    "plumb_bob": (0, 5),  # k1, k2, p1, p2, k3
    "rational_polynomial": (cv2.CALIB_RATIONAL_MODEL, 8),  # k1, k2, p1, p2, k3, k4, k5, k6
}
#: the fewest corners a view needs to constrain its own pose and still add to the intrinsics
MIN_CORNERS_PER_VIEW = 8


class CalibrationError(ValueError):
    """Calibration input that cannot give a trustworthy result (too few views, a degenerate pose set)."""


@dataclass(frozen=True)
class IntrinsicsResult:
    """A calibrated pinhole camera with its quality.

    Attributes:
        K: (3, 3) camera matrix, pixels.
        distortion: (D,) OpenCV distortion coefficients of ``distortion_model``.
        distortion_model: a key of :data:`DISTORTION_MODELS`.
        image_size: (width, height), pixels.
        rms_px: RMS reprojection error over all corners of the kept views, pixels.
        std: one-sigma uncertainty of fx, fy, cx, cy (pixels) from the calibration's covariance.
        names: the kept views' names, in order.
        per_view_rms_px: (V,) RMS reprojection error of each kept view, pixels.
        outliers: names of views whose error is far above the rest (see :func:`find_outliers`).
        dropped: the outlier views left out of this solution (empty unless asked to drop).
        too_few_corners: views left out for having fewer than :data:`MIN_CORNERS_PER_VIEW` corners.
        T_camera_board: (V, 4, 4) board pose of each kept view, metres.
        n_corners: total corners used.
    """

    K: np.ndarray
    distortion: np.ndarray
    distortion_model: str
    image_size: tuple[int, int]
    rms_px: float
    std: dict[str, float]
    names: list[str]
    per_view_rms_px: np.ndarray
    outliers: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    too_few_corners: list[str] = field(default_factory=list)
    T_camera_board: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 4)))
    n_corners: int = 0


def pose_matrix(rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    """(4, 4) transform from an OpenCV rotation vector (3,) and translation (3,)."""
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(np.asarray(rvec, np.float64).reshape(3))[0]
    T[:3, 3] = np.asarray(tvec, np.float64).reshape(3)
    return T


def _solve(detections: Sequence[Detection], size: tuple[int, int], model: str, K0: np.ndarray | None,
           ) -> tuple[float, np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    flags, n_coeffs = DISTORTION_MODELS[model]
    obj = [d.object_points.astype(np.float32) for d in detections]
    img = [d.image_points.astype(np.float32).reshape(-1, 1, 2) for d in detections]
    if K0 is not None:
        flags |= cv2.CALIB_USE_INTRINSIC_GUESS
    K = K0.copy() if K0 is not None else np.eye(3)
    dist: Any = np.zeros(n_coeffs)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-12)
    rms, K, dist, rvecs, tvecs, std_in, _, per_view = cv2.calibrateCameraExtended(
        obj, img, size, K, dist, flags=flags, criteria=criteria)
    return float(rms), K, dist.ravel()[:n_coeffs], list(rvecs), list(tvecs), std_in.ravel(), per_view.ravel()


def find_outliers(names: Sequence[str], per_view_rms_px: np.ndarray, factor: float = 3.0,
                  floor_px: float = 0.5) -> list[str]:
    """Views whose RMS error exceeds ``max(floor_px, median + factor * 1.4826 * MAD)``: far off the rest
    (a blurred frame, a misdetection, a board that moved during exposure)."""
    err = np.asarray(per_view_rms_px, np.float64)
    med = float(np.median(err))
    mad = float(np.median(np.abs(err - med))) * 1.4826
    limit = max(floor_px, med + factor * max(mad, 0.05 * med))
    return [n for n, e in zip(names, err, strict=True) if e > limit]


def calibrate_intrinsics(detections: Sequence[Detection], names: Sequence[str], *, model: str = "plumb_bob",
                         drop_outliers: bool = False, outlier_factor: float = 3.0,
                         K_guess: np.ndarray | None = None) -> IntrinsicsResult:
    """Calibrate from the corner detections of several views of one board (one per view, named by
    ``names``). ``drop_outliers`` re-solves without the views :func:`find_outliers` names.

    Raises CalibrationError for an unknown model, mixed image sizes or too few usable views.
    """
    if model not in DISTORTION_MODELS:
        raise CalibrationError(f"unknown distortion model {model!r}; models: {', '.join(DISTORTION_MODELS)}")
    if len(detections) != len(names):
        raise CalibrationError(f"{len(detections)} detections but {len(names)} names")
    sizes = {d.image_size for d in detections}
    if len(sizes) > 1:
        raise CalibrationError(f"views of different image sizes {sorted(sizes)}: one calibration is per size")
    keep = [i for i, d in enumerate(detections) if len(d) >= MIN_CORNERS_PER_VIEW]
    if len(keep) < 3:
        raise CalibrationError(f"{len(keep)} views with >= {MIN_CORNERS_PER_VIEW} corners; at least 3 are needed "
                               "(10-30 views over the whole image, tilted up to ~45 degrees, are typical)")
    size = sizes.pop()
    dets, kept = [detections[i] for i in keep], [names[i] for i in keep]
    rms, K, dist, rvecs, tvecs, std, per_view = _solve(dets, size, model, K_guess)
    outliers = find_outliers(kept, per_view, outlier_factor)
    dropped: list[str] = []
    if drop_outliers and outliers:
        if len(kept) - len(outliers) < 3:
            raise CalibrationError(f"dropping outliers {outliers} would leave fewer than 3 views")
        dropped = list(outliers)
        sel = [i for i, n in enumerate(kept) if n not in dropped]
        dets, kept = [dets[i] for i in sel], [kept[i] for i in sel]
        rms, K, dist, rvecs, tvecs, std, per_view = _solve(dets, size, model, K)
    return IntrinsicsResult(
        K=K, distortion=dist, distortion_model=model, image_size=size, rms_px=rms,
        std={k: float(v) for k, v in zip(("fx", "fy", "cx", "cy"), std[:4], strict=True)},
        names=kept, per_view_rms_px=per_view, outliers=outliers, dropped=dropped,
        too_few_corners=[n for i, n in enumerate(names) if i not in keep],
        T_camera_board=np.stack([pose_matrix(r, t) for r, t in zip(rvecs, tvecs, strict=True)]),
        n_corners=sum(len(d) for d in dets))


def board_pose(detection: Detection, K: np.ndarray, distortion: np.ndarray) -> tuple[np.ndarray, float]:
    """T_camera_board (4, 4; m) of one view from its corners and a calibrated camera, and the RMS
    reprojection error (px). IPPE (exact for a plane) then Levenberg-Marquardt refinement."""
    if len(detection) < 4:
        raise CalibrationError(f"board pose needs >= 4 corners, got {len(detection)}")
    obj = detection.object_points.astype(np.float64)
    img = detection.image_points.astype(np.float64).reshape(-1, 1, 2)
    ok, rvec, tvec = cv2.solvePnP(obj, img, K, distortion, flags=cv2.SOLVEPNP_IPPE)
    if not ok:
        raise CalibrationError("solvePnP found no board pose")
    rvec, tvec = cv2.solvePnPRefineLM(obj, img, K, distortion, rvec, tvec)
    proj, _ = cv2.projectPoints(obj, rvec, tvec, K, distortion)
    rms = float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - img.reshape(-1, 2)) ** 2, axis=1))))
    return pose_matrix(rvec, tvec), rms

