"""Robot poses and images for hand-eye calibration: 4x4 base-to-gripper transforms from a JSON or CSV file,
or a recorded episode's end-effector states (and its camera frames) from an episode store.

JSON: ``[T0, T1, ...]``, ``{"poses": [T0, ...]}`` or ``{"poses": [{"image": "0003.png", "T_base_gripper":
T}, ...]}``, each T a 4 x 4 row-major list (m). CSV: one pose per row, 16 numbers row-major, optionally after
an image-name column; a header row is allowed. Without image names, poses pair with the images sorted by
file name.

Store: ``T_base_gripper`` from the unified state's ``<arm>_eef_pos`` (m, arm base frame) and
``<arm>_eef_rot6d`` slots (:mod:`robot_policy.spaces.unified`), and the frames of ``images/<camera>``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from robot_policy.calib.intrinsics import CalibrationError
from robot_policy.spaces.rotation import rot6d_to_matrix
from robot_policy.spaces.unified import slot

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class PoseSet:
    """Paired robot poses and views.

    Attributes:
        T_base_gripper: (N, 4, 4) end-effector poses in the arm's base frame, metres.
        names: (N,) the view names (image file names, or ``step_<t>`` for a store).
        images: (N,) the views' images (H, W[, 3] uint8; BGR for files, RGB from a store), loaded lazily by
            :func:`load_image` when None.
        source: where the poses came from, for the report.
    """

    T_base_gripper: np.ndarray
    names: list[str]
    images: list[np.ndarray] | None
    source: str


def image_files(directory: str | Path) -> list[Path]:
    """The image files in ``directory``, sorted by name; an error when there are none."""
    d = Path(directory)
    if not d.is_dir():
        raise CalibrationError(f"images={d}: no such directory")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CalibrationError(f"images={d}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def load_image(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise CalibrationError(f"{path}: not a readable image")
    return img


def _matrix(value: Any, where: str) -> np.ndarray:
    T = np.asarray(value, np.float64)
    if T.shape == (16,):
        T = T.reshape(4, 4)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise CalibrationError(f"{where}: expected a finite 4x4 base-to-gripper matrix (m), got shape {T.shape}")
    return T


def _from_json(path: Path) -> tuple[list[np.ndarray], list[str] | None]:
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CalibrationError(f"{path}: not valid JSON: {e}") from None
    items = raw.get("poses") if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not items:
        raise CalibrationError(f"{path}: expected a list of 4x4 poses or {{'poses': [...]}}")
    poses, names = [], []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            if "T_base_gripper" not in item:
                raise CalibrationError(f"{path}: poses[{i}] has no 'T_base_gripper' (keys: {sorted(item)})")
            poses.append(_matrix(item["T_base_gripper"], f"{path}: poses[{i}].T_base_gripper"))
            names.append(str(item.get("image", "")))
        else:
            poses.append(_matrix(item, f"{path}: poses[{i}]"))
            names.append("")
    if any(names) and not all(names):
        raise CalibrationError(f"{path}: some poses name their image and some do not; name all or none")
    return poses, (names if all(names) else None)


def _from_csv(path: Path) -> tuple[list[np.ndarray], list[str] | None]:
    poses: list[np.ndarray] = []
    names: list[str] = []
    with open(path, newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            row = [c.strip() for c in row if c.strip()]
            if not row:
                continue
            try:
                values = [float(c) for c in row[-16:]]
            except ValueError:
                if not poses and lineno == 1:
                    continue  # a header
                raise CalibrationError(f"{path}:{lineno}: expected 16 numbers (a 4x4 row-major pose), got {row}") \
                    from None
            if len(row) not in (16, 17):
                raise CalibrationError(f"{path}:{lineno}: expected 16 numbers, optionally after an image name; got "
                                       f"{len(row)} fields")
            poses.append(_matrix(values, f"{path}:{lineno}"))
            names.append(row[0] if len(row) == 17 else "")
    if not poses:
        raise CalibrationError(f"{path}: no poses")
    return poses, (names if all(names) else None)


def load_pose_file(poses: str | Path, images: str | Path) -> PoseSet:
    """Robot poses from a JSON/CSV file, paired with the images in directory ``images`` (by the names the
    file gives, else by sorted order; the counts must match)."""
    path = Path(poses)
    if not path.is_file():
        raise CalibrationError(f"poses={path}: no such file")
    if path.suffix.lower() == ".json":
        mats, names = _from_json(path)
    elif path.suffix.lower() == ".csv":
        mats, names = _from_csv(path)
    else:
        raise CalibrationError(f"poses={path}: expected a .json or .csv file, or an episode store directory")
    files = image_files(images)
    if names is not None:
        by_name = {f.name: f for f in files}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise CalibrationError(f"poses={path} names images not in {images}: {missing[:5]}")
        files = [by_name[n] for n in names]
    elif len(files) != len(mats):
        raise CalibrationError(f"poses={path} has {len(mats)} poses but images={images} has {len(files)} images; "
                               "they pair in sorted file-name order, so the counts must match")
    return PoseSet(np.stack(mats), [f.name for f in files], [load_image(f) for f in files], str(path))


def load_store_poses(store_path: str | Path, episode: int, arm: str, camera: str, stride: int = 1) -> PoseSet:
    """End-effector poses and camera frames of one recorded episode, every ``stride``-th step."""
    from robot_policy.data import format as fmt
    from robot_policy.data.store import EpisodeStore

    if arm not in ("right", "left"):
        raise CalibrationError(f"arm must be right or left, got {arm!r}")
    with EpisodeStore.open(store_path) as store:
        if not 0 <= episode < store.n_episodes:
            raise CalibrationError(f"{store_path}: episode {episode} out of range (0..{store.n_episodes - 1})")
        key = f"images/{camera}"
        if key not in store.data_keys:
            raise CalibrationError(f"{store_path}: no {key}; cameras: {', '.join(store.cameras) or 'none'}")
        ep = store.get_episode(episode, keys=["state", key])
        mask = np.asarray(ep[fmt.STATE_MASK]) if fmt.STATE_MASK in ep else None
    pos_s, rot_s = slot(f"{arm}_eef_pos"), slot(f"{arm}_eef_rot6d")
    if mask is not None and not (mask[pos_s].all() and mask[rot_s].all()):
        raise CalibrationError(f"{store_path}: episode {episode} does not record {arm}_eef_pos and {arm}_eef_rot6d "
                               "(its state_mask leaves them out); hand-eye needs end-effector poses")
    steps = np.arange(0, len(ep["state"]), max(1, stride))
    state = np.asarray(ep["state"])[steps]
    T = np.tile(np.eye(4), (len(steps), 1, 1))
    T[:, :3, :3] = rot6d_to_matrix(state[:, rot_s])
    T[:, :3, 3] = state[:, pos_s]
    frames = np.asarray(ep[key])[steps]
    return PoseSet(T, [f"step_{t}" for t in steps], list(frames),
                   f"{store_path} episode {episode} {arm} arm, {key}")
