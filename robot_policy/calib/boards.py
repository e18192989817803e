"""Calibration boards as data (``calib/boards/*.yaml``), their printable images at true scale, and corner
detection that pairs each found corner with its 3D point on the board.

Board frame: origin at the board's top-left outer corner as printed, x along the columns (``squares_x``), y
down the rows, z into the board (OpenCV's convention); metres. A ChArUco corner with id ``k`` is the inner
chessboard corner ``(k % (squares_x - 1) + 1, k // (squares_x - 1) + 1)`` squares from the origin.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from robot_policy.paths import CALIB_DIR

BOARDS_DIR = CALIB_DIR / "boards"
KINDS = ("charuco", "chessboard")
_KEYS = {"name", "kind", "squares_x", "squares_y", "square_length_m", "marker_length_m", "dictionary",
         "legacy_pattern", "description"}
METRES_PER_INCH = 0.0254


class BoardError(ValueError):
    """A board definition or a board image that cannot be used."""


@dataclass(frozen=True)
class BoardSpec:
    """One calibration board.

    Attributes:
        name: the board's name (its YAML file stem).
        kind: ``charuco`` or ``chessboard``.
        squares_x, squares_y: squares along x (columns) and y (rows); inner corners are one fewer each.
        square_length_m: side of a chessboard square, metres.
        marker_length_m: side of an ArUco marker inside a white square, metres (charuco only).
        dictionary: the ArUco dictionary, a ``cv2.aruco`` name such as ``DICT_5X5_100`` (charuco only).
        legacy_pattern: the pre-OpenCV-4.6 layout, where boards with an even row count start with a marker.
    """

    name: str
    kind: str
    squares_x: int
    squares_y: int
    square_length_m: float
    marker_length_m: float = 0.0
    dictionary: str = "DICT_5X5_100"
    legacy_pattern: bool = False

    def __post_init__(self) -> None:
        where = f"board {self.name!r}"
        if self.kind not in KINDS:
            raise BoardError(f"{where}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.squares_x < 3 or self.squares_y < 3:
            raise BoardError(f"{where}: squares_x and squares_y must be >= 3, got {self.squares_x}x{self.squares_y}")
        if not 0.001 <= self.square_length_m <= 1.0:
            raise BoardError(f"{where}: square_length_m must be in [0.001, 1] m, got {self.square_length_m}")
        if self.kind == "charuco":
            if not 0 < self.marker_length_m < self.square_length_m:
                raise BoardError(f"{where}: marker_length_m must be in (0, square_length_m={self.square_length_m}),"
                                 f" got {self.marker_length_m}")
            if not self.dictionary.startswith("DICT_") or not hasattr(cv2.aruco, self.dictionary):
                raise BoardError(f"{where}: unknown ArUco dictionary {self.dictionary!r}; e.g. DICT_4X4_50, "
                                 "DICT_5X5_100, DICT_6X6_250 (cv2.aruco.DICT_*)")
            needed = (self.squares_x * self.squares_y + 1) // 2
            size = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary)).bytesList.shape[0]
            if needed > size:
                raise BoardError(f"{where}: {needed} markers needed but {self.dictionary} has only {size}")

    @property
    def inner_corners(self) -> tuple[int, int]:
        """(columns, rows) of inner chessboard corners."""
        return self.squares_x - 1, self.squares_y - 1

    @property
    def size_m(self) -> tuple[float, float]:
        """(width, height) of the pattern in metres, without margin."""
        return self.squares_x * self.square_length_m, self.squares_y * self.square_length_m

    def corner_points(self) -> np.ndarray:
        """(N, 3) float64 board-frame coordinates (m) of every inner corner, in ChArUco id order."""
        nx, ny = self.inner_corners
        j, i = np.mgrid[1:ny + 1, 1:nx + 1]
        pts = np.stack([i.ravel(), j.ravel(), np.zeros(i.size)], axis=1)
        return pts * self.square_length_m

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind, "squares_x": self.squares_x,
                             "squares_y": self.squares_y, "square_length_m": self.square_length_m}
        if self.kind == "charuco":
            d.update(marker_length_m=self.marker_length_m, dictionary=self.dictionary,
                     legacy_pattern=self.legacy_pattern)
        return d


def available_boards(boards_dir: Path = BOARDS_DIR) -> list[str]:
    return sorted(p.stem for p in boards_dir.glob("*.yaml"))


def load_board(name_or_path: str | Path, boards_dir: Path = BOARDS_DIR) -> BoardSpec:
    """A board from ``calib/boards/<name>.yaml`` or a YAML path; an unknown name lists the boards there."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = boards_dir / f"{name_or_path}.yaml"
        if not path.exists():
            raise BoardError(f"unknown board {str(name_or_path)!r}; available in {boards_dir}: "
                             f"{', '.join(available_boards(boards_dir)) or '(none)'}")
    elif not path.exists():
        raise BoardError(f"{path}: no such board file")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise BoardError(f"{path}: expected a mapping of board fields, got {type(raw).__name__}")
    unknown = set(raw) - _KEYS
    if unknown:
        raise BoardError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(_KEYS))}")
    raw.pop("description", None)
    raw.setdefault("name", path.stem)
    try:
        return BoardSpec(**raw)
    except TypeError as e:  # a missing required field
        raise BoardError(f"{path}: {e}") from None


def charuco_board(spec: BoardSpec) -> cv2.aruco.CharucoBoard:
    """The OpenCV board object of a ChArUco spec."""
    if spec.kind != "charuco":
        raise BoardError(f"board {spec.name!r} is a {spec.kind}, not a charuco board")
    dictionary = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, spec.dictionary))
    board = cv2.aruco.CharucoBoard((spec.squares_x, spec.squares_y), spec.square_length_m, spec.marker_length_m,
                                   dictionary)
    board.setLegacyPattern(spec.legacy_pattern)
    return board


def board_image(spec: BoardSpec, px_per_square: int, margin_px: int = 0) -> np.ndarray:
    """The pattern as a (H, W) uint8 image with exactly ``px_per_square`` pixels per square and a white
    margin; the pattern's outer corner (board origin) is at pixel edge ``margin_px - 0.5`` in OpenCV's
    pixel-centre convention."""
    w, h = spec.squares_x * px_per_square, spec.squares_y * px_per_square
    if spec.kind == "charuco":
        img = charuco_board(spec).generateImage((w + 2 * margin_px, h + 2 * margin_px), marginSize=margin_px,
                                                borderBits=1)
    else:
        j, i = np.mgrid[0:h, 0:w] // px_per_square
        img = np.full((h + 2 * margin_px, w + 2 * margin_px), 255, np.uint8)
        img[margin_px:margin_px + h, margin_px:margin_px + w] = np.where((i + j) % 2 == 0, 0, 255).astype(np.uint8)
    return np.asarray(img, np.uint8)


def printable_image(spec: BoardSpec, dpi: int = 300, margin_m: float = 0.01) -> np.ndarray:
    """The board at true scale for printing at ``dpi`` (dots per inch) with a white margin (m). A square is
    rounded to whole dots; :func:`printed_square_m` says what size that prints at."""
    if not 50 <= dpi <= 2400:
        raise BoardError(f"dpi must be in [50, 2400], got {dpi}")
    px = round(spec.square_length_m / METRES_PER_INCH * dpi)
    return board_image(spec, px, margin_px=round(margin_m / METRES_PER_INCH * dpi))


def printed_square_m(spec: BoardSpec, dpi: int) -> float:
    """The side (m) of a square of :func:`printable_image` printed at 100% at ``dpi``."""
    return round(spec.square_length_m / METRES_PER_INCH * dpi) * METRES_PER_INCH / dpi


@dataclass(frozen=True)
class Detection:
    """The board corners found in one image.

    Attributes:
        ids: (N,) int corner ids (ChArUco ids; row-major index of the inner corner for a chessboard).
        image_points: (N, 2) float64 pixel coordinates (OpenCV: (0, 0) is the centre of the top-left pixel).
        object_points: (N, 3) float64 board-frame coordinates, metres.
        image_size: (width, height) of the image, pixels.
    """

    ids: np.ndarray
    image_points: np.ndarray
    object_points: np.ndarray
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def _gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.ndim != 2:
        raise BoardError(f"expected a (H, W) or (H, W, 3) image, got shape {image.shape}")
    return image


def detect(spec: BoardSpec, image: np.ndarray, min_corners: int = 6) -> Detection | None:
    """Find the board's corners in ``image`` (gray or BGR uint8), refined to sub-pixel. None when fewer
    than ``min_corners`` corners are found (a chessboard must be seen whole)."""
    gray = _gray(image)
    size = (gray.shape[1], gray.shape[0])
    corners = spec.corner_points()
    if spec.kind == "charuco":
        params = cv2.aruco.CharucoParameters()
        detector = cv2.aruco.CharucoDetector(charuco_board(spec), params)
        ch_corners, ch_ids, _, _ = detector.detectBoard(gray)
        if ch_ids is None or len(ch_ids) < min_corners:
            return None
        ids = ch_ids.ravel().astype(np.int64)
        pts = ch_corners.reshape(-1, 2).astype(np.float64)
    else:
        found, pts32 = cv2.findChessboardCornersSB(gray, spec.inner_corners, flags=cv2.CALIB_CB_ACCURACY)
        if not found:
            return None
        ids = np.arange(len(corners), dtype=np.int64)
        pts = pts32.reshape(-1, 2).astype(np.float64)
    return Detection(ids, pts, corners[ids], size)
