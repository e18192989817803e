"""mp4 videos of rollouts, encoded with PyAV (libx264, yuv420p: plays in browsers and players)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def write_mp4(path: str | Path, frames: list[np.ndarray] | np.ndarray, fps: float) -> Path:
    """Write (T, H, W, 3) uint8 RGB frames to ``path``. Odd sizes are padded by one pixel (x264 needs even)."""
    path = Path(path)
    if len(frames) == 0:
        raise ValueError(f"{path}: no frames to write")
    first = np.asarray(frames[0])
    if first.dtype != np.uint8 or first.ndim != 3 or first.shape[2] != 3:
        raise ValueError(f"{path}: frames must be (H, W, 3) uint8, got {first.dtype} {first.shape}")
    height, width = first.shape[0] + first.shape[0] % 2, first.shape[1] + first.shape[1] % 2
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        for frame in frames:
            img = np.asarray(frame)
            if img.shape[:2] != (height, width):
                img = np.pad(img, ((0, height - img.shape[0]), (0, width - img.shape[1]), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_mp4(path: str | Path) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of an mp4 (for tests and reports)."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
