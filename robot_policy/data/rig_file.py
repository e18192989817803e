"""The rig calibration files in ``calib/<RIG>/`` and their loaders: one YAML per camera (intrinsics,
distortion, the camera's pose in the rig frame, serial, when it was measured), hand-eye results, and the
base-to-base transform of a two-arm rig. ``robot-policy calibrate`` (:mod:`robot_policy.calib`) writes them
with the functions here; the recorder, the runtime and replay read them with the same functions, so the
schema lives in one place (here, below all of them). What a recorder calls:

    cal = load_camera_calibration("calib/rig_a/front.yaml", max_age_days=90, expected_serial="123622270136")
    info = cal.to_camera_info()                 # -> robot_policy.data.store.CameraInfo for EpisodeStore.create
    cams = load_rig_cameras("calib/rig_a", max_age_days=90, serials={"front": "123622270136"})
    b2b = load_rig_base_to_base("calib/rig_a", max_age_days=90)   # FrameTransform, or None when missing

A calibration older than ``max_age_days`` or measured on another camera (serial mismatch) still loads, with
a :class:`StaleCalibrationWarning` (``warnings.warn``, also logged) that names the file and what is wrong; a
missing base-to-base file is a :class:`MissingCalibrationWarning` (an error with ``required=True``).

A transform is written as a mapping ``{parent, child, units: m, matrix}``: ``matrix`` (4 x 4, row-major)
maps points in ``child`` to ``parent`` (``T_parent_child``).

Frames of a two-arm rig. The unified space's end-effector poses (``right_eef_*``, ``left_eef_*``) are each in
its own arm's base frame (``right_base``, ``left_base``). The base-to-base file holds ``T_right_base_left_base``
(parent ``right_base``, child ``left_base``, the default of ``robot-policy calibrate base2base``): the rig's
common frame is the parent arm's base, and ``T_right_base_left_base @ T_left_base_ee`` is the left
end-effector's pose in it. :meth:`FrameTransform.base_poses` gives each arm's base in that common frame.
"""

from __future__ import annotations

import datetime as dt
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from robot_policy.data.store import CameraInfo

log = logging.getLogger(__name__)

CAMERA_FORMAT = "robot_policy/camera_calibration"
HAND_EYE_FORMAT = "robot_policy/hand_eye"
BASE_TO_BASE_FORMAT = "robot_policy/base_to_base"
FORMAT_VERSION = 1
#: the base-to-base file's name in a rig directory
BASE_TO_BASE_FILE = "base_to_base.yaml"
#: the age after which :func:`load_camera_calibration` warns by default (lenses and mounts drift)
DEFAULT_MAX_AGE_DAYS = 90.0
#: distortion model -> how many coefficients it takes (ROS names; ``equidistant`` is OpenCV's fisheye)
MODEL_COEFFS = {"plumb_bob": 5, "rational_polynomial": 8, "equidistant": 4, "inverse_brown_conrady": 5}


class RigFileError(ValueError):
    """A calibration file that is missing, malformed or of another format (the message names the file)."""


class CalibrationWarning(UserWarning):
    """A rig calibration that cannot be trusted as it is; loading goes on, and the user is told why."""


class StaleCalibrationWarning(CalibrationWarning):
    """A calibration that is older than allowed or belongs to another camera."""


class MissingCalibrationWarning(CalibrationWarning):
    """A calibration file a consumer was pointed at does not exist (with ``required=True``: an error)."""


class CalibrationMismatchWarning(CalibrationWarning):
    """A rig's calibration differs from the one a recording was made with."""


def warn_calibration(message: str, category: type[CalibrationWarning] = StaleCalibrationWarning) -> None:
    """Log ``message`` and ``warnings.warn`` it as ``category`` (attributed to the loader's caller)."""
    log.warning(message)
    warnings.warn(message, category, stacklevel=3)


def utc_now() -> str:
    """The current time as ISO 8601 UTC with seconds, the files' ``calibrated_at`` format."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def transform_to_yaml(T: np.ndarray, parent: str, child: str) -> dict[str, Any]:
    return {"parent": parent, "child": child, "units": "m",
            "matrix": [[float(v) for v in row] for row in np.asarray(T, np.float64)]}


def transform_from_yaml(node: Any, where: str) -> tuple[np.ndarray, str, str]:
    """(T (4, 4), parent, child) from a transform mapping; errors name ``where``."""
    if not isinstance(node, Mapping) or "matrix" not in node:
        raise RigFileError(f"{where}: expected a mapping with parent, child, units and a 4x4 matrix, got {node!r}")
    if node.get("units", "m") != "m":
        raise RigFileError(f"{where}.units: translations must be in metres ('m'), got {node.get('units')!r}")
    T = np.asarray(node["matrix"], np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise RigFileError(f"{where}.matrix: expected a finite 4x4 matrix, got shape {T.shape}")
    R = T[:3, :3]
    if not np.allclose(R.T @ R, np.eye(3), atol=1e-5) or np.linalg.det(R) < 0 or not np.allclose(T[3], [0, 0, 0, 1]):
        raise RigFileError(f"{where}.matrix: not a rigid transform (orthonormal rotation, last row 0 0 0 1)")
    return T, str(node.get("parent", "")), str(node.get("child", ""))


@dataclass(frozen=True)
class CameraCalibration:
    """One camera of a rig.

    Attributes:
        camera: the camera's name in the rig (the store's camera key, e.g. ``front``).
        width, height: image size the intrinsics are for, pixels.
        K: (3, 3) pinhole matrix, pixels.
        distortion: (D,) coefficients of ``distortion_model``, OpenCV order.
        distortion_model: a key of :data:`MODEL_COEFFS`.
        calibrated_at: ISO 8601 UTC time of the measurement.
        serial: the camera's serial number, or None if unknown.
        T_rig_camera: (4, 4) camera optical frame in the rig frame (m), or None until hand-eye gives it.
        rig_frame: the name of the rig frame (usually one arm's base, e.g. ``right_base``).
        source: how the intrinsics were obtained (``charuco``, ``realsense_factory``, ...).
        quality: what the calibration reported (RMS px, std of fx, fy, cx, cy, views, board, outliers).
    """

    camera: str
    width: int
    height: int
    K: np.ndarray
    distortion: np.ndarray
    distortion_model: str
    calibrated_at: str = field(default_factory=utc_now)
    serial: str | None = None
    T_rig_camera: np.ndarray | None = None
    rig_frame: str = "rig"
    source: str = "charuco"
    quality: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"camera calibration {self.camera!r}"
        K = np.asarray(self.K, np.float64)
        if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise RigFileError(f"{where}: K must be a finite 3x3 matrix with positive fx, fy, got {K.tolist()}")
        if self.distortion_model not in MODEL_COEFFS:
            raise RigFileError(f"{where}: unknown distortion_model {self.distortion_model!r}; "
                               f"models: {', '.join(MODEL_COEFFS)}")
        d = np.asarray(self.distortion, np.float64).ravel()
        if d.size != MODEL_COEFFS[self.distortion_model] or not np.all(np.isfinite(d)):
            raise RigFileError(f"{where}: {self.distortion_model} takes {MODEL_COEFFS[self.distortion_model]} finite "
                               f"coefficients, got {d.tolist()}")
        if self.width <= 0 or self.height <= 0:
            raise RigFileError(f"{where}: image size must be positive, got {self.width}x{self.height}")
        parse_time(self.calibrated_at, f"{where}.calibrated_at")
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "distortion", d)
        if self.T_rig_camera is not None:
            object.__setattr__(self, "T_rig_camera", np.asarray(self.T_rig_camera, np.float64))

    def to_camera_info(self) -> CameraInfo:
        """The store's record of this camera (intrinsics, distortion, extrinsics, serial, calibrated_at)."""
        return CameraInfo(self.height, self.width, intrinsics=self.K, extrinsics=self.T_rig_camera,
                          distortion=self.distortion, distortion_model=self.distortion_model, serial=self.serial,
                          calibrated_at=self.calibrated_at)

    def to_yaml(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": CAMERA_FORMAT, "format_version": FORMAT_VERSION, "camera": self.camera,
            "serial": self.serial, "calibrated_at": self.calibrated_at, "source": self.source,
            "image_size": {"width": self.width, "height": self.height},
            "camera_matrix": [[float(v) for v in row] for row in self.K],
            "distortion_model": self.distortion_model,
            "distortion_coefficients": [float(v) for v in self.distortion],
            "T_rig_camera": (None if self.T_rig_camera is None
                             else transform_to_yaml(self.T_rig_camera, self.rig_frame, f"{self.camera}_optical")),
        }
        if self.quality:
            out["quality"] = _plain(self.quality)
        return out

    @classmethod
    def from_yaml(cls, raw: Any, where: str) -> CameraCalibration:
        _check_format(raw, CAMERA_FORMAT, where)
        try:
            size = raw["image_size"]
            T, rig_frame = None, "rig"
            if raw.get("T_rig_camera") is not None:
                T, rig_frame, _ = transform_from_yaml(raw["T_rig_camera"], f"{where}: T_rig_camera")
            return cls(camera=str(raw["camera"]), width=int(size["width"]), height=int(size["height"]),
                       K=np.asarray(raw["camera_matrix"], np.float64),
                       distortion=np.asarray(raw["distortion_coefficients"], np.float64),
                       distortion_model=str(raw["distortion_model"]), calibrated_at=str(raw["calibrated_at"]),
                       serial=None if raw.get("serial") is None else str(raw["serial"]), T_rig_camera=T,
                       rig_frame=rig_frame, source=str(raw.get("source", "")), quality=dict(raw.get("quality") or {}))
        except KeyError as e:
            raise RigFileError(f"{where}: missing key {e.args[0]!r}") from None
        except RigFileError as e:  # a field the dataclass rejects: say which file
            raise RigFileError(f"{where}: {e}") from None
        except (TypeError, ValueError) as e:  # a value of the wrong type or shape
            raise RigFileError(f"{where}: {e}") from None


def parse_time(text: str, where: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise RigFileError(f"{where}: expected an ISO 8601 time such as 2025-03-01T12:00:00+00:00, got {text!r}") \
            from None
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def _plain(x: Any) -> Any:
    """numpy values -> YAML-safe Python values."""
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def _check_format(raw: Any, fmt: str, where: str) -> None:
    if not isinstance(raw, Mapping):
        raise RigFileError(f"{where}: expected a mapping, got {type(raw).__name__}")
    if raw.get("format") != fmt:
        raise RigFileError(f"{where}: format is {raw.get('format')!r}, expected {fmt!r}")
    if int(raw.get("format_version", -1)) > FORMAT_VERSION:
        raise RigFileError(f"{where}: format_version {raw.get('format_version')} is newer than this reader "
                           f"({FORMAT_VERSION}); update robot_policy")


def write_yaml(path: str | Path, data: Mapping[str, Any], header: str = "") -> Path:
    """Write ``data`` as YAML (matrix rows on one line each), through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    text = yaml.safe_dump(_plain(dict(data)), sort_keys=False, default_flow_style=None, width=200)
    tmp.write_text((f"# {header}\n" if header else "") + text)
    tmp.replace(path)
    return path


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise RigFileError(f"{path}: no such calibration file")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RigFileError(f"{path}: not valid YAML: {e}") from None


def save_camera_calibration(path: str | Path, calib: CameraCalibration) -> Path:
    return write_yaml(path, calib.to_yaml(), header=f"camera {calib.camera}: written by robot-policy calibrate")


def age_problem(calibrated_at: str, max_age_days: float | None, now: dt.datetime | None = None) -> str | None:
    """Why a calibration made at ``calibrated_at`` (ISO 8601) is too old now, or None (``max_age_days=None``:
    no age limit)."""
    if max_age_days is None:
        return None
    now = now or dt.datetime.now(dt.UTC)
    age = now - parse_time(calibrated_at, "calibrated_at")
    if age <= dt.timedelta(days=max_age_days):
        return None
    return f"calibrated {age.days} days ago ({calibrated_at}), more than the allowed {max_age_days:g} days: recalibrate"


def serial_problem(camera: str, serial: str | None, expected: str | None) -> str | None:
    """Why a calibration measured on camera ``serial`` does not belong to the connected camera, or None."""
    if expected is None or serial == expected:
        return None
    return (f"calibrated on camera {camera!r} serial {serial!r}, but the connected camera is {expected!r}: "
            "this file is another camera's")


def staleness(calib: CameraCalibration, *, max_age_days: float | None, expected_serial: str | None = None,
              now: dt.datetime | None = None) -> list[str]:
    """What makes ``calib`` untrustworthy for a recording now: too old, or another camera's."""
    problems = [age_problem(calib.calibrated_at, max_age_days, now),
                serial_problem(calib.camera, calib.serial, expected_serial)]
    return [p for p in problems if p is not None]


def load_camera_calibration(path: str | Path, *, max_age_days: float | None = DEFAULT_MAX_AGE_DAYS,
                            expected_serial: str | None = None, now: dt.datetime | None = None) -> CameraCalibration:
    """Load a camera YAML. A stale one (see :func:`staleness`) warns with :class:`StaleCalibrationWarning`
    naming the file; ``max_age_days=None`` turns the age check off."""
    calib = CameraCalibration.from_yaml(read_yaml(path), str(path))
    for problem in staleness(calib, max_age_days=max_age_days, expected_serial=expected_serial, now=now):
        warn_calibration(f"{path}: {problem}")
    return calib


def load_rig_cameras(rig_dir: str | Path, *, max_age_days: float | None = DEFAULT_MAX_AGE_DAYS,
                     serials: Mapping[str, str] | None = None) -> dict[str, CameraInfo]:
    """Every camera YAML in ``rig_dir`` (files whose ``format`` is a camera calibration) as camera name ->
    CameraInfo, each checked for staleness (``serials``: camera name -> the connected camera's serial)."""
    rig_dir = Path(rig_dir)
    if not rig_dir.is_dir():
        raise RigFileError(f"{rig_dir}: no such rig directory")
    out: dict[str, CameraInfo] = {}
    for path in sorted(rig_dir.glob("*.yaml")):
        raw = read_yaml(path)
        if not isinstance(raw, Mapping) or raw.get("format") != CAMERA_FORMAT:
            continue
        calib = load_camera_calibration(path, max_age_days=max_age_days,
                                        expected_serial=(serials or {}).get(str(raw.get("camera"))))
        if calib.camera in out:
            raise RigFileError(f"{path}: camera {calib.camera!r} is calibrated by two files in {rig_dir}")
        out[calib.camera] = calib.to_camera_info()
    return out


@dataclass(frozen=True)
class FrameTransform:
    """A calibrated rigid transform between two named frames, with how it was measured.

    Attributes:
        T: (4, 4) ``T_parent_child``, metres.
        parent, child: frame names (e.g. ``right_base``, ``left_base``; ``right_gripper``, ``wrist_camera``).
        method: how it was measured (``board``, ``touch_points``, ``refined:park``, ...).
        calibrated_at: ISO 8601 UTC.
        quality: residuals and solver spreads (deg, mm), counts.
    """

    T: np.ndarray
    parent: str
    child: str
    method: str
    calibrated_at: str = field(default_factory=utc_now)
    quality: dict[str, Any] = field(default_factory=dict)

    def base_poses(self, arms: Sequence[str]) -> list[np.ndarray]:
        """Each arm's base pose (4, 4; m) in the common frame ``parent`` of a base-to-base transform, in the
        order of ``arms`` (frame of arm ``a``: ``<a>_base``): identity for the parent arm, ``T`` for the child.
        Points ``p_b`` in arm b's base are ``poses[b] @ p_b`` in the common frame."""
        out = []
        for arm in arms:
            frame = f"{arm}_base"
            if frame == self.parent:
                out.append(np.eye(4))
            elif frame == self.child:
                out.append(np.array(self.T, np.float64))
            else:
                raise RigFileError(f"base-to-base T_{self.parent}_{self.child} does not name arm {arm!r}'s base "
                                   f"frame {frame!r}")
        return out

    def to_attrs(self, source: str = "") -> dict[str, Any]:
        """The transform as a store root attribute (JSON): frames, matrix, when and how, the file it came from."""
        return {**transform_to_yaml(self.T, self.parent, self.child), "calibrated_at": self.calibrated_at,
                "method": self.method, "file": source}

    @classmethod
    def from_attrs(cls, raw: Any, where: str) -> FrameTransform:
        T, parent, child = transform_from_yaml(raw, where)
        return cls(T, parent, child, str(raw.get("method", "")), str(raw.get("calibrated_at", "")))


def transform_difference(T_1: np.ndarray, T_2: np.ndarray) -> tuple[float, float]:
    """How far apart two rigid transforms (4, 4) are: translation (m) and rotation angle (deg) of T_1^-1 T_2."""
    R = np.asarray(T_1, np.float64)[:3, :3].T @ np.asarray(T_2, np.float64)[:3, :3]
    angle = np.degrees(np.arccos(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)))
    return float(np.linalg.norm(np.asarray(T_1)[:3, 3] - np.asarray(T_2)[:3, 3])), float(angle)


def _aligned(recorded: FrameTransform, current: FrameTransform) -> np.ndarray | None:
    """``recorded``'s matrix between ``current``'s parent and child (inverted when it names them the other way
    round), or None when it relates other frames."""
    if (recorded.parent, recorded.child) == (current.parent, current.child):
        return np.asarray(recorded.T, np.float64)
    if (recorded.parent, recorded.child) == (current.child, current.parent):
        return np.linalg.inv(np.asarray(recorded.T, np.float64))
    return None


def calibration_difference(recorded: FrameTransform, current: FrameTransform) -> tuple[float, float] | None:
    """Translation (m) and rotation (deg) between two calibrations of the same pair of frames (None: other
    frames)."""
    T_rec = _aligned(recorded, current)
    return None if T_rec is None else transform_difference(T_rec, current.T)


def transform_mismatch(recorded: FrameTransform, current: FrameTransform, *, tol_m: float = 0.005,
                       tol_deg: float = 0.5) -> str | None:
    """Why ``current`` (a rig's calibration now) is not ``recorded`` (the one a store was recorded with), or
    None when they agree within ``tol_m`` (m) and ``tol_deg`` (deg). The same pair of frames the other way
    round is compared inverted; other frames are a mismatch."""
    T_rec = _aligned(recorded, current)
    if T_rec is None:
        return (f"relates other frames: recorded T_{recorded.parent}_{recorded.child}, this file "
                f"T_{current.parent}_{current.child}")
    d_m, d_deg = transform_difference(T_rec, current.T)
    if d_m <= tol_m and d_deg <= tol_deg:
        return None

    def t(T: np.ndarray) -> str:
        return "[" + ", ".join(f"{v:.4f}" for v in T[:3, 3]) + "] m"

    return (f"T_{current.parent}_{current.child} differs from the recorded one by {d_m * 1e3:.1f} mm and "
            f"{d_deg:.2f} deg (tolerance {tol_m * 1e3:g} mm, {tol_deg:g} deg): recorded t = {t(T_rec)} "
            f"(calibrated {recorded.calibrated_at or 'at an unknown time'}), this rig t = {t(current.T)} (calibrated "
            f"{current.calibrated_at}); end-effector targets recorded there land elsewhere here")


def save_transform(path: str | Path, fmt: str, tf: FrameTransform, extra: Mapping[str, Any] | None = None) -> Path:
    data = {"format": fmt, "format_version": FORMAT_VERSION, "calibrated_at": tf.calibrated_at, "method": tf.method,
            f"T_{tf.parent}_{tf.child}": transform_to_yaml(tf.T, tf.parent, tf.child), "quality": tf.quality,
            **dict(extra or {})}
    return write_yaml(path, data, header=f"T_{tf.parent}_{tf.child}: written by robot-policy calibrate")


def load_transform(path: str | Path, fmt: str) -> tuple[FrameTransform, dict[str, Any]]:
    """A hand-eye or base-to-base file: the transform and the file's other keys."""
    raw = read_yaml(path)
    _check_format(raw, fmt, str(path))
    keys = [k for k in raw if str(k).startswith("T_")]
    if len(keys) != 1:
        raise RigFileError(f"{path}: expected exactly one T_<parent>_<child> transform, found {keys}")
    T, parent, child = transform_from_yaml(raw[keys[0]], f"{path}: {keys[0]}")
    parse_time(str(raw.get("calibrated_at")), f"{path}: calibrated_at")
    tf = FrameTransform(T, parent, child, str(raw.get("method", "")), str(raw["calibrated_at"]),
                        dict(raw.get("quality") or {}))
    return tf, dict(raw)


def save_base_to_base(path: str | Path, tf: FrameTransform) -> Path:
    """``T_<parent>_<child>`` between two arms' bases (e.g. ``T_right_base_left_base``)."""
    return save_transform(path, BASE_TO_BASE_FORMAT, tf)


def load_base_to_base(path: str | Path) -> FrameTransform:
    return load_transform(path, BASE_TO_BASE_FORMAT)[0]


def base_to_base_file(path: str | Path) -> Path:
    """A rig directory -> its ``base_to_base.yaml``; a file stays itself."""
    path = Path(path)
    return path / BASE_TO_BASE_FILE if path.is_dir() or not path.suffix else path


def load_rig_base_to_base(path: str | Path, *, max_age_days: float | None = DEFAULT_MAX_AGE_DAYS,
                          expected_serials: Mapping[str, str] | None = None, required: bool = False,
                          now: dt.datetime | None = None) -> FrameTransform | None:
    """The rig's base-to-base transform from ``path`` (a rig directory or the file), checked for staleness.

    Older than ``max_age_days``, or measured through a camera (the file's ``cameras``: name -> serial) whose
    serial is not the one in ``expected_serials``: :class:`StaleCalibrationWarning`, and it is returned.
    Missing: :class:`MissingCalibrationWarning` and None, or with ``required`` a :class:`RigFileError`. A
    malformed file is always an error."""
    file = base_to_base_file(path)
    if not file.exists():
        message = (f"{file}: no base-to-base calibration, so the two arms' end-effector poses cannot be put in "
                   "one frame (robot-policy calibrate base2base writes it)")
        if required:
            raise RigFileError(message)
        warn_calibration(message, MissingCalibrationWarning)
        return None
    tf, raw = load_transform(file, BASE_TO_BASE_FORMAT)
    cameras = raw.get("cameras") or {}
    problems = [age_problem(tf.calibrated_at, max_age_days, now),
                *(serial_problem(str(name), None if serial is None else str(serial),
                                 (expected_serials or {}).get(str(name))) for name, serial in cameras.items())]
    for problem in problems:
        if problem is not None:
            warn_calibration(f"{file}: T_{tf.parent}_{tf.child} {problem}")
    return tf
