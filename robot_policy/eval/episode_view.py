"""A look at one recorded episode: camera frames beside its joint and action curves, as an mp4.

``robot-policy dataset view STORE episode=N out=FILE.mp4``. One video frame per recorded step (at the store's
control rate, so it plays in real time): each camera's image of that step on the left; on the right, per arm,
the measured joint positions (solid) and the commanded ones (dashed, where the action is joint positions),
and the grippers' openings, with a cursor at the step's time. The curves are drawn once and only the cursor,
the images and the title are redrawn per frame (blitting), so a 100-step episode renders in a few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robot_policy.data import format as fmt
from robot_policy.data.store import EpisodeStore
from robot_policy.eval.video import write_mp4
from robot_policy.spaces.embodiment import EmbodimentSpec


@dataclass
class ViewConfig:
    """``robot-policy dataset view STORE key=value ...`` options."""

    #: episode index in the store (negative counts from the end)
    episode: int = 0
    #: the mp4 to write; empty = <store name>_ep<N>.mp4 next to the store
    out: str = ""
    #: one video frame every ``stride`` recorded steps (the video still plays in real time)
    stride: int = 1
    #: video width in pixels
    width_px: int = 1280

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise ValueError(f"dataset view: stride={self.stride} must be >= 1")
        if not 320 <= self.width_px <= 3840:
            raise ValueError(f"dataset view: width_px={self.width_px} must be in 320..3840 pixels")


@dataclass(frozen=True)
class Curve:
    """One panel's lines: ``measured`` (T, k) from the state and ``commanded`` (T, k) from the action (or
    None where the action has no such slot), in ``units``."""

    title: str
    units: str
    measured: np.ndarray
    commanded: np.ndarray | None


def episode_curves(spec: EmbodimentSpec, state: np.ndarray, action: np.ndarray) -> list[Curve]:
    """Per arm, its joint positions and its gripper opening, measured (state) against commanded (action).

    ``state`` and ``action`` are unified (T, 128). A state field with no action field on the same slot (an
    end-effector action) is shown measured only; the action's own fields come in its panel alone."""
    action_slots = {f.slot: f for f in spec.action.fields}
    curves: list[Curve] = []
    for f in spec.state.fields:
        if not (f.slot.endswith("arm_joint_pos") or f.slot.endswith("gripper_open")):
            continue
        s = f.unified_slice
        width = f.dim if f.gripper is None else 1  # a gripper is one opening slot in [0, 1]
        sl = slice(s.start, s.start + width)
        commanded = action[:, sl] if f.slot in action_slots else None
        units = "opening (0 closed, 1 open)" if f.gripper is not None else f.units or "rad"
        curves.append(Curve(f.name, units, state[:, sl], commanded))
    shown = {f.slot for f in spec.state.fields}
    for f in spec.action.fields:
        if f.slot not in shown:
            s = f.unified_slice
            curves.append(Curve(f"{f.name} (command)", f.units, action[:, s.start:s.start + f.dim],
                                None))
    return curves


def render_episode(store: EpisodeStore, episode: int, *, width_px: int = 1280, stride: int = 1) -> list[np.ndarray]:
    """(H, W, 3) uint8 frames of ``episode``: one per ``stride`` recorded steps (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and in tests
    import matplotlib.pyplot as plt

    if stride < 1:
        raise ValueError(f"render_episode: stride={stride} must be >= 1")
    cams = list(store.cameras)
    keys = [fmt.STATE, fmt.ACTION] + [fmt.image_key(c) for c in cams]
    ep = store.get_episode(episode, keys=keys)
    state, action = np.asarray(ep[fmt.STATE], np.float64), np.asarray(ep[fmt.ACTION], np.float64)
    steps = len(state)
    t = np.arange(steps) / store.control_hz  # s
    curves = episode_curves(store.embodiment, state, action)
    rows = max(len(curves), 1)
    cols = 2 if cams else 1
    dpi = 100
    fig = plt.figure(figsize=(width_px / dpi, max(1.6 * rows, 2.2 * len(cams), 4.0)), dpi=dpi)
    grid = fig.add_gridspec(rows, cols, width_ratios=[1, 2] if cams else [1])
    images: list[Any] = []
    for i, cam in enumerate(cams):
        ax = fig.add_subplot(grid[i * rows // len(cams):(i + 1) * rows // len(cams), 0])
        images.append(ax.imshow(np.asarray(ep[fmt.image_key(cam)][0])))
        ax.set_title(cam, fontsize=8)
        ax.axis("off")
    cursors: list[Any] = []
    for r, c in enumerate(curves):
        ax = fig.add_subplot(grid[r, cols - 1])
        lines = ax.plot(t, c.measured, lw=1)
        if c.commanded is not None:
            for j, line in enumerate(lines):  # the command in its joint's colour, dashed
                ax.plot(t, c.commanded[:, j], "--", lw=0.8, color=line.get_color(), alpha=0.8)
        if c.measured.shape[1] > 1:  # which line is which joint
            ax.legend(lines, [f"j{j}" for j in range(len(lines))], fontsize=5, ncol=len(lines), loc="upper left",
                      frameon=False)
        ax.set_ylabel(c.units, fontsize=6)
        ax.set_title(c.title + ("  (solid measured, dashed commanded)" if c.commanded is not None else ""),
                     fontsize=7, pad=2)
        ax.tick_params(labelsize=6)
        cursors.append(ax.axvline(0.0, color="k", lw=1))
        if r == len(curves) - 1:
            ax.set_xlabel("time (s)", fontsize=7)
    language = ep.get(fmt.LANGUAGE, "")
    title = fig.suptitle("", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    # blitting: the curves are drawn once into a background; per frame only the moving artists are redrawn
    moving = [*cursors, *images, title]
    for artist in moving:
        artist.set_animated(True)
    canvas: Any = fig.canvas
    canvas.draw()
    background = canvas.copy_from_bbox(fig.bbox)
    frames: list[np.ndarray] = []
    for k in range(0, steps, stride):
        for cursor in cursors:
            cursor.set_xdata([t[k], t[k]])
        for img, cam in zip(images, cams):
            img.set_data(np.asarray(ep[fmt.image_key(cam)][k]))
        title.set_text(f"{store.path.name} episode {episode}: {language!s}  t = {t[k]:.2f} s (step {k}/{steps})")
        canvas.restore_region(background)
        for artist in moving:
            fig.draw_artist(artist)
        frames.append(np.asarray(canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return frames


def write_episode_view(store_path: str | Path, episode: int, out: str | Path, *, stride: int = 1,
                       width_px: int = 1280) -> tuple[Path, int]:
    """Render ``episode`` of the store at ``store_path`` into the mp4 ``out`` at the store's control rate
    divided by ``stride``; returns (path, frame count)."""
    store = EpisodeStore.open(store_path)
    frames = render_episode(store, episode, width_px=width_px, stride=stride)
    return write_mp4(out, frames, store.control_hz / stride), len(frames)
