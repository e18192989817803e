"""A window showing the simulated scene during teleoperation, where a display exists.

The env's own renderer draws a camera image (pybullet's TinyRenderer on the CPU; ~30 ms at 180x240), and a
matplotlib window (Tk) shows it, redrawn ``fps`` times a second: rendering runs in the control loop, so the
rate is kept well below the control rate. Without a display (``DISPLAY`` / ``WAYLAND_DISPLAY`` unset) the
default ``viewer=auto`` runs headless; ``viewer=on`` then is an error.
"""

from __future__ import annotations

import os
import time
from types import TracebackType
from typing import Any, Self

import numpy as np

from robot_policy.envs.base import ManipulationEnv
from robot_policy.teleop.session import SessionStatus

VIEWER_MODES = ("auto", "on", "off")


def display_available() -> bool:
    """Whether a window can be opened: an X11 or Wayland display is named in the environment."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def wants_viewer(mode: str) -> bool:
    """Whether ``viewer=mode`` opens a window here; ``on`` without a display is an error."""
    if mode not in VIEWER_MODES:
        raise ValueError(f"viewer: unknown mode {mode!r}; modes: {', '.join(VIEWER_MODES)}")
    if mode == "on" and not display_available():
        raise RuntimeError("viewer=on, but there is no display (DISPLAY and WAYLAND_DISPLAY are unset); "
                           "use viewer=auto or viewer=off to run headless")
    return mode == "on" or (mode == "auto" and display_available())


class SceneViewer:
    """A session ``on_tick`` hook that shows ``camera`` at ``height`` x ``width`` pixels, ``fps`` per second."""

    def __init__(self, camera: str | None = None, height: int = 180, width: int = 240, fps: float = 5.0,
                 backend: str = "TkAgg") -> None:
        if not fps > 0:
            raise ValueError(f"viewer fps must be > 0, got {fps}")
        self.camera, self.height, self.width = camera, height, width
        #: matplotlib backend: a window backend (Tk); tests draw into Agg, off screen
        self.backend = backend
        self._interval = 1.0 / fps
        self._last = -float("inf")
        self._plt: Any = None
        self._fig: Any = None
        self._image: Any = None

    def __enter__(self) -> Self:
        import matplotlib

        # a window backend: the default may be Agg (files only) on a headless install
        matplotlib.use(self.backend)
        import matplotlib.pyplot as plt

        self._plt = plt
        if self.backend.lower() != "agg":
            plt.ion()
        self._fig, ax = plt.subplots(figsize=(self.width / 60, self.height / 60))
        self._image = ax.imshow(np.zeros((self.height, self.width, 3), dtype=np.uint8))
        ax.set_axis_off()
        self._fig.canvas.manager.set_window_title("robot-policy teleop")
        self._fig.tight_layout()
        if self.backend.lower() != "agg":
            plt.show(block=False)
        return self

    def __call__(self, status: SessionStatus, env: ManipulationEnv) -> None:
        now = time.perf_counter()
        if self._fig is None or now - self._last < self._interval:
            return
        self._last = now
        self._image.set_data(env.render(self.camera, self.height, self.width))
        self._fig.axes[0].set_title(f"{status.state} seed {status.seed} step {status.step}", fontsize=8)
        self._fig.canvas.draw_idle()
        self._fig.canvas.flush_events()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fig is not None:
            self._plt.close(self._fig)
            self._fig = None
