"""End-effector workspace: an axis-aligned box per arm, and optionally a minimum distance between the arms'
end effectors, checked through a forward-kinematics callable the caller provides (the stack has no arm model
of its own).

Frames. ``fk`` gives each arm's end-effector position in that arm's own base frame (as the unified space's
``<arm>_eef_pos`` slots). Without ``base_poses`` each box is in its arm's base frame. With ``base_poses``
(per arm, ``T_rig_base`` (4, 4), m: from the rig's base-to-base calibration,
:meth:`robot_policy.data.rig_file.FrameTransform.base_poses`) every position is first mapped into the one rig
frame, so one box can bound both arms and the distance between the end effectors means something.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# joint commands (n,) in the limits' order -> end-effector positions (arms, 3) [m, each arm's base frame]
ForwardKinematics = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, eq=False)
class WorkspaceBox:
    """Axis-aligned box [lower, upper] (each (3,), m) an end effector must stay in; in the arm's base frame,
    or in the rig frame when the workspace has base poses."""

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
    """Where the end effectors may go, and the FK that maps commands to them.

    Args:
        boxes: one per arm in the order of ``fk``'s output rows; with ``base_poses`` also a single box (in the
            rig frame) for every arm; empty: no box, only the separation.
        fk: joint commands (n,) -> end-effector positions (arms, 3), each in its arm's base frame [m].
        base_poses: per arm (fk row order), ``T_rig_base`` (4, 4) [m]; None: no common frame.
        min_separation: the end effectors of any two arms stay at least this far apart [m], in the rig frame
            (needs ``base_poses``: distances between points in two different base frames mean nothing).
    """

    def __init__(self, boxes: Sequence[WorkspaceBox], fk: ForwardKinematics,
                 base_poses: Sequence[np.ndarray] | None = None, min_separation: float | None = None) -> None:
        if not boxes and min_separation is None:
            raise ValueError("Workspace: need a WorkspaceBox per arm or a min_separation, got neither")
        self.boxes = tuple(boxes)
        self.fk = fk
        self.base_poses = None if base_poses is None else np.stack([_rigid(T) for T in base_poses])  # (arms, 4, 4)
        self.n_arms = len(self.base_poses) if self.base_poses is not None else len(self.boxes)
        if self.boxes and len(self.boxes) not in (self.n_arms, 1 if self.base_poses is not None else self.n_arms):
            raise ValueError(f"Workspace: {len(self.boxes)} boxes for {self.n_arms} arms (base_poses); give one per "
                             "arm, or one for all arms in the rig frame")
        if min_separation is not None:
            if not (np.isfinite(min_separation) and min_separation > 0):
                raise ValueError(f"Workspace.min_separation: must be a finite distance > 0 (m), got {min_separation}")
            if self.base_poses is None or self.n_arms < 2:
                raise ValueError("Workspace.min_separation: needs two or more arms with base_poses (the rig's "
                                 "base-to-base calibration puts their end effectors in one frame)")
        self.min_separation = min_separation
        if self.boxes:
            self._lower = np.stack([b.lower for b in self.boxes])  # (arms or 1, 3)
            self._upper = np.stack([b.upper for b in self.boxes])

    def positions(self, command: np.ndarray) -> np.ndarray:
        """(arms, 3) end-effector positions of one command (n,) [m]: in the rig frame with base poses, else
        each in its arm's base frame."""
        p = np.asarray(self.fk(command), dtype=np.float64)
        if p.shape != (self.n_arms, 3):
            raise ValueError(f"Workspace: fk returned shape {p.shape}; expected {(self.n_arms, 3)} "
                             "(one (3,) position per arm)")
        if self.base_poses is not None:
            p = np.einsum("aij,aj->ai", self.base_poses[:, :3, :3], p) + self.base_poses[:, :3, 3]  # (arms, 3)
        return p

    def violation(self, command: np.ndarray) -> str:
        """Why one command (n,) puts an end effector where it may not go; '' when it does not."""
        p = self.positions(command)
        if not np.isfinite(p).all():
            return "an end-effector position is not finite"
        if self.boxes:
            out = ~((p >= self._lower) & (p <= self._upper)).all(axis=1)  # (arms,)
            if out.any():
                a = int(np.argmax(out))
                return f"end effector {a} at {np.round(p[a], 4).tolist()} m leaves its box"
        if self.min_separation is not None:
            d = np.linalg.norm(p[:, None] - p[None], axis=-1)[np.triu_indices(self.n_arms, 1)]
            if d.min() < self.min_separation:
                return f"end effectors {d.min():.3f} m apart, closer than {self.min_separation:g} m"
        return ""

    def inside(self, commands: np.ndarray) -> np.ndarray:
        """(T,) bool: every end effector of command row t is inside its box (boundary included) and, with a
        minimum separation, far enough from the others."""
        return np.array([not self.violation(c) for c in commands], dtype=bool)


def _rigid(T: np.ndarray) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    R = T[:3, :3] if T.shape == (4, 4) else np.zeros((3, 3))
    if T.shape != (4, 4) or not np.isfinite(T).all() or not np.allclose(R.T @ R, np.eye(3), atol=1e-6) \
            or not np.allclose(T[3], [0, 0, 0, 1]):
        raise ValueError(f"Workspace.base_poses: expected rigid (4, 4) transforms T_rig_base (m), got {T.tolist()}")
    return T
