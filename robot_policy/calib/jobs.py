"""The calibration jobs behind ``robot-policy calibrate SUB``: one typed config and one function each, which
reads the inputs, calls the solvers, writes the results and returns a summary (a JSON-ready dict)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import MISSING

from robot_policy.calib import base_to_base, handeye
from robot_policy.calib.boards import (
    BoardSpec,
    Detection,
    detect,
    load_board,
    printable_image,
    printed_square_m,
)
from robot_policy.calib.intrinsics import CalibrationError, board_pose, calibrate_intrinsics
from robot_policy.calib.poses import PoseSet, image_files, load_image, load_pose_file, load_store_poses
from robot_policy.calib.report import coverage_fraction, coverage_grid, write_heatmap
from robot_policy.data.rig_file import (
    BASE_TO_BASE_FORMAT,
    HAND_EYE_FORMAT,
    CameraCalibration,
    FrameTransform,
    load_camera_calibration,
    load_transform,
    save_camera_calibration,
    save_transform,
    utc_now,
    write_yaml,
)


def _rounded(T: np.ndarray) -> list[list[float]]:
    return [[round(float(v), 7) for v in row] for row in T]


# ---- board -----------------------------------------------------------------------------------------------
@dataclass
class BoardJob:
    """``calibrate board``: a printable board image at true scale."""

    #: board name (calib/boards/NAME.yaml) or a YAML path
    board: str = "charuco_5x7_a4"
    #: the PNG to write
    out: str = "board.png"
    #: printer resolution, dots per inch; print at 100% (no fit-to-page)
    dpi: int = 300
    #: white margin around the pattern, mm
    margin_mm: float = 10.0


def make_board(cfg: BoardJob) -> dict[str, Any]:
    """Write the board PNG with its dpi in the file, so a viewer prints it at true size."""
    from PIL import Image

    spec = load_board(cfg.board)
    img = printable_image(spec, cfg.dpi, cfg.margin_mm / 1e3)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(out, dpi=(cfg.dpi, cfg.dpi))
    h, w = img.shape
    return {"out": str(out), "pixels": [w, h], "size_mm": [round(w / cfg.dpi * 25.4, 1), round(h / cfg.dpi * 25.4, 1)],
            "printed_square_mm": round(printed_square_m(spec, cfg.dpi) * 1e3, 3),
            "board": spec.to_dict()}


# ---- intrinsics ------------------------------------------------------------------------------------------
@dataclass
class IntrinsicsJob:
    """``calibrate intrinsics``: camera matrix and distortion from a directory of board images."""

    #: directory of board images (png/jpg), all the same size
    images: str = MISSING
    #: board name (calib/boards/NAME.yaml) or a YAML path
    board: str = "charuco_5x7_a4"
    #: the camera YAML to write, e.g. calib/RIG/CAMERA.yaml
    out: str = MISSING
    #: the camera's name in the rig; '' = the out file's stem
    camera: str = ""
    #: the camera's serial number (checked against the connected camera when recording)
    serial: str | None = None
    #: distortion model: plumb_bob (k1 k2 p1 p2 k3) or rational_polynomial (8 coefficients)
    model: str = "plumb_bob"
    #: re-solve without the outlier views (they are always named)
    drop_outliers: bool = False
    #: a view is an outlier when its RMS error > median + factor * robust sigma (and > 0.5 px)
    outlier_factor: float = 3.0
    #: the coverage heat map PNG; '' = next to out as CAMERA_coverage.png
    heatmap: str = ""


def detect_all(spec: BoardSpec, names: list[str], images: list[np.ndarray]) -> tuple[list[Detection], list[str],
                                                                                        list[str]]:
    """Detections of the views where the board was found, their names, and the names of the others."""
    dets, found, missed = [], [], []
    for name, img in zip(names, images, strict=True):
        d = detect(spec, img)
        if d is None:
            missed.append(name)
        else:
            dets.append(d)
            found.append(name)
    return dets, found, missed


def run_intrinsics(cfg: IntrinsicsJob) -> dict[str, Any]:
    spec = load_board(cfg.board)
    files = image_files(cfg.images)
    t0 = time.perf_counter()
    dets, names, missed = detect_all(spec, [f.name for f in files], [load_image(f) for f in files])
    res = calibrate_intrinsics(dets, names, model=cfg.model, drop_outliers=cfg.drop_outliers,
                               outlier_factor=cfg.outlier_factor)
    out = Path(cfg.out)
    camera = cfg.camera or out.stem
    kept = [d for d, n in zip(dets, names, strict=True) if n in res.names]
    grid = coverage_grid(kept, res.image_size)
    heatmap = write_heatmap(cfg.heatmap or out.with_name(f"{camera}_coverage.png"), kept, res.image_size)
    quality = {
        "board": spec.name, "images": str(cfg.images), "n_views": len(res.names), "n_corners": res.n_corners,
        "rms_reprojection_px": res.rms_px, "std_px": res.std,
        "per_view_rms_px": {n: round(float(e), 4) for n, e in zip(res.names, res.per_view_rms_px, strict=True)},
        "outliers": res.outliers, "dropped": res.dropped, "no_board": missed,
        "too_few_corners": res.too_few_corners,
        "coverage": round(coverage_fraction(grid), 3), "heatmap": str(heatmap),
    }
    w, h = res.image_size
    calib = CameraCalibration(camera=camera, width=w, height=h, K=res.K, distortion=res.distortion,
                              distortion_model=res.distortion_model, serial=cfg.serial, source=f"charuco:{spec.name}"
                              if spec.kind == "charuco" else f"chessboard:{spec.name}", quality=quality)
    save_camera_calibration(out, calib)
    return {"out": str(out), "K": _rounded(res.K), "distortion_model": res.distortion_model,
            "distortion": [float(v) for v in res.distortion], "seconds": round(time.perf_counter() - t0, 2),
            **quality}


# ---- hand-eye --------------------------------------------------------------------------------------------
@dataclass
class HandEyeJob:
    """``calibrate handeye``: the camera on the gripper (eye_in_hand) or in the base (eye_to_hand)."""

    #: robot poses: a .json/.csv of 4x4 base-to-gripper transforms (m), or an episode store directory
    poses: str = MISSING
    #: directory of the board images that pair with the poses (not used with a store: its frames are)
    images: str = ""
    #: the camera YAML from calibrate intrinsics (its K and distortion give each view's board pose)
    intrinsics: str = MISSING
    #: board name (calib/boards/NAME.yaml) or a YAML path
    board: str = "charuco_5x7_a4"
    #: eye_in_hand (X = T_gripper_camera, board fixed) or eye_to_hand (X = T_base_camera, board on gripper)
    mode: str = "eye_in_hand"
    #: the solvers to run and report: tsai, park, horaud, andreff, daniilidis
    methods: list[str] = field(default_factory=lambda: list(handeye.METHODS))
    #: refine the best solver's X by minimising the corners' reprojection error (Levenberg-Marquardt)
    refine: bool = True
    #: which arm: names the frames (ARM_gripper, ARM_base) and, for a store, the end-effector slots
    arm: str = "right"
    #: a store's episode, camera ('' = the intrinsics' camera) and step stride
    episode: int = 0
    camera: str = ""
    stride: int = 1
    #: solve a degenerate pose set anyway (it is named either way)
    allow_degenerate: bool = False
    #: the hand-eye YAML to write; '' = next to the intrinsics as handeye_CAMERA.yaml
    out: str = ""
    #: eye_to_hand: also write X as the camera YAML's T_rig_camera (the rig frame = ARM_base)
    set_extrinsics: bool = False


def hand_eye_inputs(cfg: HandEyeJob, calib: CameraCalibration) -> PoseSet:
    if Path(cfg.poses).is_dir():
        return load_store_poses(cfg.poses, cfg.episode, cfg.arm, cfg.camera or calib.camera, cfg.stride)
    if not cfg.images:
        raise CalibrationError("images=DIR is required with a pose file (the board images that pair with the poses)")
    return load_pose_file(cfg.poses, cfg.images)


def run_hand_eye(cfg: HandEyeJob) -> dict[str, Any]:
    spec = load_board(cfg.board)
    calib = load_camera_calibration(cfg.intrinsics)
    if calib.distortion_model not in ("plumb_bob", "rational_polynomial"):
        raise CalibrationError(f"{cfg.intrinsics}: hand-eye needs an OpenCV distortion model, not "
                               f"{calib.distortion_model}")
    poses = hand_eye_inputs(cfg, calib)
    assert poses.images is not None
    dets, names, missed = detect_all(spec, poses.names, poses.images)
    sizes = {d.image_size for d in dets} - {(calib.width, calib.height)}
    if sizes:
        raise CalibrationError(f"images of size {sorted(sizes)} but {cfg.intrinsics} is for "
                               f"{calib.width}x{calib.height}")
    keep = [poses.names.index(n) for n in names]
    G = poses.T_base_gripper[keep]
    seen = [board_pose(d, calib.K, calib.distortion) for d in dets]
    C = np.stack([T for T, _ in seen])
    result = handeye.solve_hand_eye(G, C, cfg.mode, methods=cfg.methods, allow_degenerate=cfg.allow_degenerate)
    if cfg.refine:
        result = handeye.refine(result, G, dets, calib.K, calib.distortion)
    parent, child = (f"{cfg.arm}_gripper", f"{calib.camera}_optical") if cfg.mode == "eye_in_hand" else \
        (f"{cfg.arm}_base", f"{calib.camera}_optical")
    const = "T_base_board" if cfg.mode == "eye_in_hand" else "T_gripper_board"
    final = result.final
    assert final is not None
    solvers = {m: {"X": _rounded(r.X), "rms_rotation_residual_deg": r.rms_rotation_deg,
                   "rms_translation_residual_mm": r.rms_translation_mm,
                   "vs_chosen_deg": float(handeye.rotation_angle_deg(r.X[:3, :3].T @ result.X[:3, :3])),
                   "vs_chosen_mm": float(np.linalg.norm(r.X[:3, 3] - result.X[:3, 3]) * 1e3)}
               for m, r in result.solvers.items()}
    quality = {
        "mode": cfg.mode, "n_views": len(names), "no_board": missed, "pose_source": poses.source,
        "solver_spread_deg": result.spread_deg, "solver_spread_mm": result.spread_mm,
        "rms_rotation_residual_deg": final.rms_rotation_deg, "rms_translation_residual_mm": final.rms_translation_mm,
        "reprojection_rms_px": result.reprojection_rms_px,
        "pose_diversity": {"max_rotation_deg": result.diversity.max_rotation_deg,
                           "axis_spread_deg": result.diversity.axis_spread_deg,
                           "problem": result.diversity.problem},
        "solvers": solvers,
        "views": [{"view": n, "board_rms_px": round(e, 4), "rotation_residual_deg": round(float(r), 5),
                   "translation_residual_mm": round(float(t), 4), "T_camera_board": _rounded(T)}
                  for n, (T, e), r, t in zip(names, seen, final.rotation_residual_deg, final.translation_residual_mm,
                                             strict=True)],
    }
    out = Path(cfg.out) if cfg.out else Path(cfg.intrinsics).with_name(f"handeye_{calib.camera}.yaml")
    tf = FrameTransform(result.X, parent, child, result.method, utc_now(), quality)
    save_transform(out, HAND_EYE_FORMAT, tf, extra={
        "mode": cfg.mode, "camera": calib.camera, "camera_file": str(cfg.intrinsics), "board": spec.name,
        const: {"matrix": _rounded(result.constant), "units": "m"}})
    if cfg.set_extrinsics:
        if cfg.mode != "eye_to_hand":
            raise CalibrationError("set_extrinsics=true needs mode=eye_to_hand (an eye-in-hand camera moves with the "
                                   "gripper; its pose in the rig is the gripper pose times X)")
        save_camera_calibration(cfg.intrinsics, CameraCalibration(**{**calib.__dict__, "T_rig_camera": result.X,
                                                                     "rig_frame": parent}))
    return {"out": str(out), "X": _rounded(result.X), "frames": f"T_{parent}_{child}", "method": result.method,
            **{k: v for k, v in quality.items() if k != "views"}}


# ---- base to base ----------------------------------------------------------------------------------------
@dataclass
class BaseToBaseJob:
    """``calibrate base2base``: T_A_base_B_base between the two arms' bases."""

    #: board: one board seen by a camera calibrated to each arm; touch: both arms touch the same points
    method: str = "board"
    #: the arms: the result is T_<a>_base_<b>_base
    a: str = "right"
    b: str = "left"
    #: touch: JSON {"a": [[x, y, z], ...], "b": [[x, y, z], ...]}, each arm's tool tip in its base (m)
    points: str = ""
    #: board: each camera's hand-eye YAML (from calibrate handeye; it names its camera YAML)
    handeye_a: str = ""
    handeye_b: str = ""
    #: board: image file or directory of images of the board seen by camera a / b (paired in sorted order)
    images_a: str = ""
    images_b: str = ""
    #: board: for an eye-in-hand camera, the gripper pose(s) at capture (JSON 4x4 or list of 4x4, m)
    gripper_a: str = ""
    gripper_b: str = ""
    #: board name (calib/boards/NAME.yaml) or a YAML path
    board: str = "charuco_5x7_a4"
    #: the YAML to write
    out: str = MISSING


def _images(path: str) -> list[tuple[str, np.ndarray]]:
    p = Path(path)
    files = image_files(p) if p.is_dir() else [p]
    return [(f.name, load_image(f)) for f in files]


def _camera_in_base(handeye_file: str, gripper: str, n: int) -> tuple[list[np.ndarray], CameraCalibration]:
    """T_base_camera per observation from a hand-eye file (and gripper poses for eye in hand)."""
    tf, raw = load_transform(handeye_file, HAND_EYE_FORMAT)
    calib = load_camera_calibration(str(raw["camera_file"]))
    if raw.get("mode") == "eye_to_hand":
        return [tf.T] * n, calib
    if not gripper:
        raise CalibrationError(f"{handeye_file} is eye_in_hand: give the gripper pose at each capture (gripper_a/b)")
    G = np.asarray(json.loads(Path(gripper).read_text()), np.float64).reshape(-1, 4, 4)
    if len(G) != n:
        raise CalibrationError(f"{gripper}: {len(G)} gripper poses for {n} images")
    return [g @ tf.T for g in G], calib


def run_base_to_base(cfg: BaseToBaseJob) -> dict[str, Any]:
    parent, child = f"{cfg.a}_base", f"{cfg.b}_base"
    extra: dict[str, Any] = {}
    if cfg.method == "touch":
        raw = json.loads(Path(cfg.points).read_text()) if cfg.points else None
        if not isinstance(raw, dict) or not {"a", "b"} <= set(raw):
            raise CalibrationError(f"points={cfg.points!r}: expected a JSON file {{'a': [[x,y,z],...], 'b': [...]}}")
        T, quality = base_to_base.from_touch_points(np.asarray(raw["a"]), np.asarray(raw["b"]))
    elif cfg.method == "board":
        spec = load_board(cfg.board)
        ims_a, ims_b = _images(cfg.images_a), _images(cfg.images_b)
        if len(ims_a) != len(ims_b):
            raise CalibrationError(f"{len(ims_a)} images from camera a but {len(ims_b)} from camera b")
        cams_a, cal_a = _camera_in_base(cfg.handeye_a, cfg.gripper_a, len(ims_a))
        cams_b, cal_b = _camera_in_base(cfg.handeye_b, cfg.gripper_b, len(ims_b))
        boards: list[list[np.ndarray]] = [[], []]
        for side, ims, cal in ((0, ims_a, cal_a), (1, ims_b, cal_b)):
            for name, img in ims:
                d = detect(spec, img)
                if d is None:
                    raise CalibrationError(f"no {spec.name} board found in {name}")
                boards[side].append(board_pose(d, cal.K, cal.distortion)[0])
        T, quality = base_to_base.from_board_views(cams_a, boards[0], cams_b, boards[1])
        # the cameras it was measured through, so a loader can tell a file of another camera (serial)
        extra["cameras"] = {cal.camera: cal.serial for cal in (cal_a, cal_b)}
    else:
        raise CalibrationError(f"unknown base2base method {cfg.method!r}; methods: board, touch")
    save_transform(cfg.out, BASE_TO_BASE_FORMAT, FrameTransform(T, parent, child, cfg.method, utc_now(), quality),
                   extra)
    return {"out": cfg.out, "frames": f"T_{parent}_{child}", "T": _rounded(T), **quality}


# ---- RealSense -------------------------------------------------------------------------------------------
@dataclass
class RealSenseJob:
    """``calibrate realsense``: a connected RealSense's factory intrinsics as a camera YAML."""

    #: the camera YAML to write, e.g. calib/RIG/CAMERA.yaml
    out: str = MISSING
    #: the camera's name in the rig; '' = the out file's stem
    camera: str = ""
    #: which RealSense (needed when several are connected)
    serial: str | None = None
    #: color, depth or infrared
    stream: str = "color"
    #: the resolution the recorder uses (the intrinsics differ per resolution); null = the largest
    width: int | None = None
    height: int | None = None


def run_realsense(cfg: RealSenseJob) -> dict[str, Any]:
    from robot_policy.calib.realsense import factory_intrinsics

    calib = factory_intrinsics(cfg.camera or Path(cfg.out).stem, cfg.serial, cfg.stream, cfg.width, cfg.height)
    save_camera_calibration(cfg.out, calib)
    return {"out": cfg.out, "serial": calib.serial, "K": _rounded(calib.K), "distortion_model": calib.distortion_model,
            "distortion": [float(v) for v in calib.distortion], "size": [calib.width, calib.height]}


# ---- synthetic data --------------------------------------------------------------------------------------
@dataclass
class SynthJob:
    """``calibrate synth``: rendered board views of a known camera and hand-eye transform, to try the tool."""

    #: output directory: images/, poses.json, truth.yaml
    out: str = MISSING
    board: str = "charuco_8x11_a3"
    #: number of views
    n: int = 20
    #: eye_in_hand or eye_to_hand
    mode: str = "eye_in_hand"
    width: int = 1280
    height: int = 720
    #: optical blur (pixels) and sensor noise (grey levels)
    blur_sigma_px: float = 0.8
    noise_sigma: float = 2.0
    seed: int = 0


def run_synth(cfg: SynthJob) -> dict[str, Any]:
    import cv2

    from robot_policy.calib.render import Renderer, SyntheticCamera, hand_eye_scene

    spec = load_board(cfg.board)
    base = SyntheticCamera()
    sx, sy = cfg.width / base.width, cfg.height / base.height
    K = np.diag([sx, sy, 1.0]) @ base.K
    cam = SyntheticCamera(cfg.width, cfg.height, K, base.distortion, cfg.blur_sigma_px, cfg.noise_sigma)
    rng = np.random.default_rng(cfg.seed)
    scene = hand_eye_scene(spec, cfg.n, rng, cfg.mode)
    renderer = Renderer(spec, cam)
    out = Path(cfg.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (G, C) in enumerate(zip(scene.T_base_gripper, scene.T_camera_board, strict=True)):
        name = f"{i:04d}.png"
        cv2.imwrite(str(out / "images" / name), renderer.render(C, rng))
        entries.append({"image": name, "T_base_gripper": _rounded(G)})
    (out / "poses.json").write_text(json.dumps({"frame": "base", "units": "m", "poses": entries}, indent=1))
    write_yaml(out / "truth.yaml", {"K": cam.K, "distortion_model": "plumb_bob", "distortion": cam.distortion,
                                    "mode": cfg.mode, "X": scene.X, "constant": scene.constant,
                                    "board": spec.name, "blur_sigma_px": cfg.blur_sigma_px,
                                    "noise_sigma": cfg.noise_sigma}, header="ground truth of calibrate synth")
    return {"out": str(out), "views": cfg.n, "mode": cfg.mode, "board": spec.name}
