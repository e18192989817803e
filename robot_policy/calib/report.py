"""Calibration reports: where in the image the corners fell (a coverage grid and a heat-map PNG), and the
text tables the CLI prints."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from robot_policy.calib.boards import Detection

#: the coverage grid: cells across the image width (rows follow the aspect ratio)
GRID_COLUMNS = 16


def coverage_grid(detections: Sequence[Detection], image_size: tuple[int, int], columns: int = GRID_COLUMNS,
                  ) -> np.ndarray:
    """(rows, columns) int counts of corners per image cell over all views; ``image_size`` is (W, H) px."""
    w, h = image_size
    rows = max(1, round(columns * h / w))
    grid = np.zeros((rows, columns), np.int64)
    for d in detections:
        c = np.clip((d.image_points[:, 0] / w * columns).astype(int), 0, columns - 1)
        r = np.clip((d.image_points[:, 1] / h * rows).astype(int), 0, rows - 1)
        np.add.at(grid, (r, c), 1)
    return grid


def coverage_fraction(grid: np.ndarray) -> float:
    """The fraction of cells with at least one corner: below ~0.7 the distortion at the edges is a guess."""
    return float((grid > 0).mean())


def write_heatmap(path: str | Path, detections: Sequence[Detection], image_size: tuple[int, int],
                  width_px: int = 640) -> Path:
    """A PNG (``width_px`` wide, the image's aspect) of corner density per cell, with every corner drawn as a
    dot; empty cells stay black, so the regions still to cover stand out."""
    w, h = image_size
    grid = coverage_grid(detections, image_size)
    scale = width_px / w
    out_h = round(h * scale)
    norm = (255 * grid / max(int(grid.max()), 1)).astype(np.uint8)
    heat = cv2.applyColorMap(cv2.resize(norm, (width_px, out_h), interpolation=cv2.INTER_NEAREST), cv2.COLORMAP_INFERNO)
    heat[cv2.resize((grid == 0).astype(np.uint8), (width_px, out_h), interpolation=cv2.INTER_NEAREST) > 0] = 0
    for d in detections:
        for u, v in d.image_points * scale:
            cv2.circle(heat, (int(u), int(v)), 1, (255, 255, 255), -1)
    cv2.putText(heat, f"coverage {100 * coverage_fraction(grid):.0f}% of cells, {sum(map(len, detections))} corners",
                (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1, cv2.LINE_AA)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), heat):
        raise OSError(f"{path}: could not write the heat map")
    return path
