"""Hand-eye calibration: the camera's pose on the gripper (eye in hand) or in the robot base (eye to hand)
from robot poses and board poses, by each of OpenCV's five solvers, with their spread, the per-view
residuals, and a check that refuses pose sets that cannot determine the answer.

Frames and names (4, 4 transforms, metres; ``T_a_b`` maps points in frame b to frame a):

* ``T_base_gripper[i]``: the robot's end-effector pose at view i (forward kinematics).
* ``T_camera_board[i]``: the board's pose in the camera at view i (from the image, :func:`board_pose`).
* eye in hand: the unknown is ``X = T_gripper_camera``, and ``T_base_board = T_base_gripper X T_camera_board``
  is the same for every view (the board stands still).
* eye to hand: the unknown is ``X = T_base_camera``, and ``T_gripper_board = T_base_gripper^-1 X
  T_camera_board`` is the same for every view (the board is held by the gripper).

The residual of a view is how far its own constant-frame estimate lies from their mean: rotation in degrees,
translation in millimetres. OpenCV's solvers minimise algebraic errors; :func:`refine` then minimises the
reprojection error of every corner over X and the constant frame together (Levenberg-Marquardt).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from robot_policy.calib.boards import Detection
from robot_policy.calib.intrinsics import CalibrationError, board_pose

#: solver name -> OpenCV method
METHODS: dict[str, int] = {
    "tsai": cv2.CALIB_HAND_EYE_TSAI,
    "park": cv2.CALIB_HAND_EYE_PARK,
    "horaud": cv2.CALIB_HAND_EYE_HORAUD,
    "andreff": cv2.CALIB_HAND_EYE_ANDREFF,
    "daniilidis": cv2.CALIB_HAND_EYE_DANIILIDIS,
}
#: mode -> (the unknown X's parent frame, its child frame, the constant frame's parent)
MODES: dict[str, tuple[str, str, str]] = {
    "eye_in_hand": ("gripper", "camera", "base"),
    "eye_to_hand": ("base", "camera", "gripper"),
}
#: relative rotations whose axes all lie within about this angle of one axis are "about one axis"
MIN_AXIS_SPREAD_DEG = 3.0
#: the largest relative rotation must exceed this, or rotation noise swamps the translation solution
MIN_ROTATION_DEG = 5.0


class DegeneratePoseSet(CalibrationError):
    """Robot poses that leave the hand-eye transform undetermined (named in the message)."""


@dataclass(frozen=True)
class PoseDiversity:
    """How well a set of robot poses constrains hand-eye calibration.

    Attributes:
        n_poses: number of poses.
        max_rotation_deg: the largest rotation between any two poses.
        axis_spread_deg: the spread of the relative rotation axes about their main axis (0 = all parallel).
        main_axis: (3,) the main relative rotation axis, in the gripper frame.
        problem: what makes the set degenerate, or '' when it is not.
    """

    n_poses: int
    max_rotation_deg: float
    axis_spread_deg: float
    main_axis: np.ndarray
    problem: str = ""


@dataclass(frozen=True)
class SolverResult:
    """One solver's X (4, 4) and the per-view residuals of the constant frame it implies (deg, mm)."""

    method: str
    X: np.ndarray
    rotation_residual_deg: np.ndarray
    translation_residual_mm: np.ndarray

    @property
    def rms_rotation_deg(self) -> float:
        return float(np.sqrt(np.mean(self.rotation_residual_deg ** 2)))

    @property
    def rms_translation_mm(self) -> float:
        return float(np.sqrt(np.mean(self.translation_residual_mm ** 2)))


@dataclass(frozen=True)
class HandEyeResult:
    """The hand-eye solution.

    Attributes:
        mode: ``eye_in_hand`` or ``eye_to_hand``.
        X: (4, 4) the chosen transform, ``T_<parent>_<child>`` of :data:`MODES`, metres.
        method: the solver (or ``refined:<solver>``) that gave X.
        solvers: each OpenCV solver's result.
        spread_deg, spread_mm: the largest rotation / translation difference between any two solvers.
        constant: (4, 4) the frame that stays put (T_base_board or T_gripper_board) under X.
        diversity: the pose-set check.
        reprojection_rms_px: RMS corner reprojection error under X (refined solutions only, else NaN).
    """

    mode: str
    X: np.ndarray
    method: str
    solvers: dict[str, SolverResult]
    spread_deg: float
    spread_mm: float
    constant: np.ndarray
    diversity: PoseDiversity
    reprojection_rms_px: float = float("nan")
    final: SolverResult | None = field(default=None)

    @property
    def frames(self) -> tuple[str, str]:
        parent, child, _ = MODES[self.mode]
        return parent, child


def invert(T: np.ndarray) -> np.ndarray:
    """Inverse of rigid transforms (..., 4, 4)."""
    R, t = T[..., :3, :3], T[..., :3, 3:]
    out = np.zeros_like(T)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -Rt @ t
    out[..., 3, 3] = 1.0
    return out


def rotation_angle_deg(R: np.ndarray) -> np.ndarray:
    """Angle (deg) of rotation matrices (..., 3, 3)."""
    cos = (np.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.rad2deg(np.arccos(np.clip(cos, -1.0, 1.0)))


def mean_transform(Ts: np.ndarray) -> np.ndarray:
    """The chordal L2 mean of rigid transforms (N, 4, 4): the rotation nearest the mean matrix, the mean
    translation."""
    U, _, Vt = np.linalg.svd(Ts[:, :3, :3].sum(axis=0))
    R = U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = R, Ts[:, :3, 3].mean(axis=0)
    return out


def check_transforms(Ts: np.ndarray, what: str) -> np.ndarray:
    """``Ts`` as (N, 4, 4) float64, each a rigid transform; an error names the first bad one."""
    Ts = np.asarray(Ts, np.float64)
    if Ts.ndim != 3 or Ts.shape[1:] != (4, 4):
        raise CalibrationError(f"{what}: expected (N, 4, 4) transforms, got shape {Ts.shape}")
    for i, T in enumerate(Ts):
        R = T[:3, :3]
        if (not np.all(np.isfinite(T)) or not np.allclose(T[3], [0, 0, 0, 1], atol=1e-6)
                or not np.allclose(R.T @ R, np.eye(3), atol=1e-4) or np.linalg.det(R) < 0):
            raise CalibrationError(f"{what}[{i}]: not a rigid transform (rotation orthonormal with det +1, last row "
                                   f"0 0 0 1): {np.array2string(T, precision=4)}")
    return Ts


def pose_diversity(T_base_gripper: np.ndarray) -> PoseDiversity:
    """Check the relative rotations between every pair of poses: at least 3 poses, some rotation above
    :data:`MIN_ROTATION_DEG`, and rotation axes that are not all parallel. With all rotations about one axis
    the translation of X along that axis is unobservable and the solvers return an arbitrary value."""
    T = check_transforms(T_base_gripper, "T_base_gripper")
    n = T.shape[0]
    if n < 3:
        return PoseDiversity(n, 0.0, 0.0, np.zeros(3), f"only {n} poses; hand-eye needs >= 3 (10-20 are typical)")
    i, j = np.triu_indices(n, k=1)
    rel = np.swapaxes(T[i, :3, :3], 1, 2) @ T[j, :3, :3]  # R_i^T R_j: motion in gripper frame i
    rotvec = Rotation.from_matrix(rel).as_rotvec()
    angle = np.linalg.norm(rotvec, axis=1)
    max_deg = float(np.rad2deg(angle.max()))
    big = angle > np.deg2rad(1.0)  # tiny rotations have noisy axes
    if max_deg < MIN_ROTATION_DEG or big.sum() < 2:
        return PoseDiversity(n, max_deg, 0.0, np.zeros(3),
                             f"rotations between poses are at most {max_deg:.1f} deg; rotate the gripper by "
                             f">= {MIN_ROTATION_DEG:g} deg (ideally 30+) about at least two different axes")
    axes = rotvec[big] / angle[big, None]
    w = angle[big]
    scatter = (axes * w[:, None]).T @ axes / w.sum()  # weighted second moment of the axes (sign-invariant)
    evals, evecs = np.linalg.eigh(scatter)
    spread = float(np.rad2deg(np.arctan(np.sqrt(max(evals[1], 0.0) / max(evals[2], 1e-300)))))
    main = evecs[:, 2]
    problem = ""
    if spread < MIN_AXIS_SPREAD_DEG:
        problem = (f"all rotations between poses are about one axis ({np.array2string(main, precision=3)} in the "
                   f"gripper frame; axis spread {spread:.2f} deg < {MIN_AXIS_SPREAD_DEG:g}); the translation along "
                   "it is unobservable: add poses that tilt the gripper about another axis")
    return PoseDiversity(n, max_deg, spread, main, problem)


def constant_frames(mode: str, X: np.ndarray, T_base_gripper: np.ndarray, T_camera_board: np.ndarray) -> np.ndarray:
    """(N, 4, 4) per-view estimates of the frame that X says stays put (see the module docstring)."""
    if mode == "eye_in_hand":
        return T_base_gripper @ X @ T_camera_board
    return invert(T_base_gripper) @ X @ T_camera_board


def _residuals(method: str, mode: str, X: np.ndarray, T_base_gripper: np.ndarray,
               T_camera_board: np.ndarray) -> SolverResult:
    if not np.all(np.isfinite(X)):  # a solver that broke down (e.g. on a degenerate set): NaN residuals
        nan = np.full(T_base_gripper.shape[0], np.nan)
        return SolverResult(method, X, nan, nan)
    Y = constant_frames(mode, X, T_base_gripper, T_camera_board)
    Ym = mean_transform(Y)
    rot = rotation_angle_deg(np.swapaxes(Y[:, :3, :3], 1, 2) @ Ym[:3, :3])
    trans = np.linalg.norm(Y[:, :3, 3] - Ym[:3, 3], axis=1) * 1e3
    return SolverResult(method, X, rot, trans)


def _opencv_solve(method: str, mode: str, T_base_gripper: np.ndarray, T_camera_board: np.ndarray) -> np.ndarray:
    # OpenCV solves eye in hand; eye to hand is the same problem with the robot poses inverted
    G = T_base_gripper if mode == "eye_in_hand" else invert(T_base_gripper)
    R, t = cv2.calibrateHandEye(list(G[:, :3, :3]), list(G[:, :3, 3]), list(T_camera_board[:, :3, :3]),
                                list(T_camera_board[:, :3, 3]), method=METHODS[method])
    X = np.eye(4)
    X[:3, :3], X[:3, 3] = R, t.ravel()
    return X


def spread(results: Sequence[SolverResult]) -> tuple[float, float]:
    """The largest rotation (deg) and translation (mm) difference between any two solvers' X (those that
    returned a finite X)."""
    deg = mm = 0.0
    finite = [r for r in results if np.all(np.isfinite(r.X))]
    for a in finite:
        for b in finite:
            deg = max(deg, float(rotation_angle_deg(a.X[:3, :3].T @ b.X[:3, :3])))
            mm = max(mm, float(np.linalg.norm(a.X[:3, 3] - b.X[:3, 3]) * 1e3))
    return deg, mm


def solve_hand_eye(T_base_gripper: np.ndarray, T_camera_board: np.ndarray, mode: str = "eye_in_hand", *,
                   methods: Sequence[str] = tuple(METHODS), allow_degenerate: bool = False) -> HandEyeResult:
    """Every solver in ``methods`` on the paired poses (N, 4, 4 each); X is the solver whose constant frame
    varies least (translation RMS, then rotation). A degenerate pose set raises :class:`DegeneratePoseSet`
    unless ``allow_degenerate`` (then the result still names the problem in ``diversity.problem``)."""
    if mode not in MODES:
        raise CalibrationError(f"unknown hand-eye mode {mode!r}; modes: {', '.join(MODES)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise CalibrationError(f"unknown hand-eye method(s) {unknown}; methods: {', '.join(METHODS)}")
    G = check_transforms(T_base_gripper, "T_base_gripper")
    C = check_transforms(T_camera_board, "T_camera_board")
    if G.shape[0] != C.shape[0]:
        raise CalibrationError(f"{G.shape[0]} robot poses but {C.shape[0]} board poses; they pair view by view")
    # the motions that matter are the gripper's in eye-in-hand and, equally, in eye-to-hand
    diversity = pose_diversity(G)
    if diversity.problem and not allow_degenerate:
        raise DegeneratePoseSet(f"degenerate pose set: {diversity.problem}")
    results = {m: _residuals(m, mode, _opencv_solve(m, mode, G, C), G, C) for m in methods}
    finite = [r for r in results.values() if np.all(np.isfinite(r.X))]
    if not finite:
        raise CalibrationError(f"every hand-eye solver failed on these {G.shape[0]} poses (no finite result)")
    best = min(finite, key=lambda r: (round(r.rms_translation_mm, 3), r.rms_rotation_deg))
    deg, mm = spread(list(results.values()))
    return HandEyeResult(mode, best.X, best.method, results, deg, mm,
                         mean_transform(constant_frames(mode, best.X, G, C)), diversity, final=best)


def _to_T(p: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(p[:3]).as_matrix()
    T[:3, 3] = p[3:]
    return T


def _to_p(T: np.ndarray) -> np.ndarray:
    return np.concatenate([Rotation.from_matrix(T[:3, :3]).as_rotvec(), T[:3, 3]])


def refine(result: HandEyeResult, T_base_gripper: np.ndarray, detections: Sequence[Detection], K: np.ndarray,
           distortion: np.ndarray) -> HandEyeResult:
    """Minimise the reprojection error (px) of every detected corner over X and the constant frame together,
    starting from ``result``; each view's board pose is then implied by the robot pose, not fitted. Returns
    ``result`` with X, the constant frame, ``method = refined:<solver>`` and the reprojection RMS."""
    G = check_transforms(T_base_gripper, "T_base_gripper")
    if len(detections) != G.shape[0]:
        raise CalibrationError(f"{len(detections)} detections but {G.shape[0]} robot poses")
    obj = [d.object_points.astype(np.float64) for d in detections]
    img = np.concatenate([d.image_points for d in detections]).ravel()
    mode = result.mode

    def camera_board(p: np.ndarray) -> list[np.ndarray]:
        X, Y = _to_T(p[:6]), _to_T(p[6:])
        # eye in hand: T_camera_board = X^-1 G^-1 Y;  eye to hand: X^-1 G Y
        H = invert(G) if mode == "eye_in_hand" else G
        return list(invert(X) @ H @ Y)

    def residual(p: np.ndarray) -> np.ndarray:
        out = []
        for T, o in zip(camera_board(p), obj, strict=True):
            px, _ = cv2.projectPoints(o, cv2.Rodrigues(T[:3, :3])[0], T[:3, 3], K, distortion)
            out.append(px.reshape(-1))
        return np.concatenate(out) - img

    p0 = np.concatenate([_to_p(result.X), _to_p(result.constant)])
    sol = least_squares(residual, p0, method="lm", x_scale="jac")
    X = _to_T(sol.x[:6])
    C = np.stack(camera_board(sol.x))
    final = SolverResult(f"refined:{result.method}", X, *_view_residuals(mode, X, G, detections, K, distortion, C))
    rms = float(np.sqrt(np.mean(sol.fun.reshape(-1, 2) ** 2 @ np.ones(2))))
    return HandEyeResult(mode, X, final.method, result.solvers, result.spread_deg, result.spread_mm,
                         _to_T(sol.x[6:]), result.diversity, rms, final)


def _view_residuals(mode: str, X: np.ndarray, G: np.ndarray, detections: Sequence[Detection], K: np.ndarray,
                    distortion: np.ndarray, implied: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per view: the angle (deg) and distance (mm) between the board pose seen in the image and the one the
    robot pose and X imply."""
    rot, trans = [], []
    for d, Ti in zip(detections, implied, strict=True):
        seen, _ = board_pose(d, K, distortion)
        rot.append(float(rotation_angle_deg(seen[:3, :3].T @ Ti[:3, :3])))
        trans.append(float(np.linalg.norm(seen[:3, 3] - Ti[:3, 3]) * 1e3))
    return np.array(rot), np.array(trans)
