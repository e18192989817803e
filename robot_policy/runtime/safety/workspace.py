"""End-effector workspace: an axis-aligned box per arm in the robot base frame, checked through a
forward-kinematics callable the caller provides (the stack has no arm model of its own)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# joint commands (n,) in the limits' order -> end-effector positions (arms, 3) [m, robot base frame]
ForwardKinematics = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, eq=False)
class WorkspaceBox:
    """Axis-aligned box [lower, upper] (each (3,), m, robot base frame) an end effector must stay in."""

    lower: np.ndarray
    upper: np.ndarray

    def __post_init__(self) -> None:
        for key in ("lower", "upper"):
            v = np.array(getattr(self, key), dtype=np.float64)
            if v.shape != (3,) or not np.isfinite(v).all():
                raise ValueError(f"WorkspaceBox.{key}: expected 3 finite numbers (m), got {getattr(self, key)!r}")
            v.setflags(write=False)
            object.__setattr__(self, key, v)
        if not (self.lower < self.upper).all():
            raise ValueError(f"WorkspaceBox: lower {self.lower.tolist()} must be below upper {self.upper.tolist()} "
                             "on every axis")


class Workspace:
    """Boxes, one per arm in the order of ``fk``'s output rows, and the FK that maps commands to them."""

    def __init__(self, boxes: Sequence[WorkspaceBox], fk: ForwardKinematics) -> None:
        if not boxes:
            raise ValueError("Workspace: need one WorkspaceBox per arm, got none")
        self.boxes = tuple(boxes)
        self.fk = fk
        self._lower = np.stack([b.lower for b in self.boxes])  # (arms, 3)
        self._upper = np.stack([b.upper for b in self.boxes])

    def inside(self, commands: np.ndarray) -> np.ndarray:
        """(T,) bool: every end effector of command row t is inside its box (boundary included)."""
        out = np.empty(len(commands), dtype=bool)
        for t, c in enumerate(commands):
            p = np.asarray(self.fk(c), dtype=np.float64)
            if p.shape != self._lower.shape:
                raise ValueError(f"Workspace: fk returned shape {p.shape}; expected {self._lower.shape} "
                                 f"(one (3,) position per box, {len(self.boxes)} boxes)")
            out[t] = bool(np.isfinite(p).all() and (p >= self._lower).all() and (p <= self._upper).all())
        return out
