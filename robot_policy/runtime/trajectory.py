"""Following timed joint trajectories the way ros2_control's joint_trajectory_controller does, for the
simulated robots (the ROS 2 ``sim_robot_node`` and the in-process runs of :mod:`robot_policy.pipelines.runtime_sim`):
point times are absolute (the header stamp plus ``time_from_start``); a new trajectory replaces the active one
for its joints; between points the command is interpolated linearly; before the first point the first point
is commanded (the controller's own interpolation from the current state is left to the arm's position
servo); after the last point it is held."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


class TimedTrajectory:
    """Absolute point times (K,) [s] and positions (K, n)."""

    def __init__(self, times: np.ndarray, positions: np.ndarray) -> None:
        times = np.asarray(times, dtype=np.float64)
        positions = np.asarray(positions, dtype=np.float64)
        if times.ndim != 1 or len(times) == 0 or positions.shape[0] != len(times):
            raise ValueError(f"TimedTrajectory: times (K,) and positions (K, n) with K >= 1, got "
                             f"{times.shape} and {positions.shape}")
        if np.any(np.diff(times) <= 0):
            raise ValueError("TimedTrajectory: point times must increase")
        self.times, self.positions = times, positions

    def sample(self, t: float) -> np.ndarray:
        """The commanded positions (n,) at time ``t``."""
        if t <= self.times[0]:
            return self.positions[0].copy()
        if t >= self.times[-1]:
            return self.positions[-1].copy()
        k = int(np.searchsorted(self.times, t)) - 1
        w = (t - self.times[k]) / (self.times[k + 1] - self.times[k])
        return (1.0 - w) * self.positions[k] + w * self.positions[k + 1]  # type: ignore[no-any-return]


class TrajectoryFollower:
    """One active trajectory per group of joints (an arm's controller), over a full command row (n,)."""

    def __init__(self, groups: Mapping[str, Sequence[int]], hold: np.ndarray) -> None:
        self.groups = {name: list(index) for name, index in groups.items()}
        self.hold = np.asarray(hold, dtype=np.float64).copy()
        self._active: dict[str, TimedTrajectory] = {}

    def reset(self, hold: np.ndarray) -> None:
        """Forget every trajectory and hold ``hold`` (n,)."""
        self.hold = np.asarray(hold, dtype=np.float64).copy()
        self._active.clear()

    def follow(self, group: str, trajectory: TimedTrajectory) -> None:
        if trajectory.positions.shape[1] != len(self.groups[group]):
            raise ValueError(f"trajectory for {group}: {trajectory.positions.shape[1]} joints, the group has "
                             f"{len(self.groups[group])}")
        self._active[group] = trajectory

    def command(self, t: float) -> np.ndarray:
        """The command row (n,) at time ``t``: each group's trajectory, or the hold row where none is active."""
        row = self.hold.copy()
        for group, trajectory in self._active.items():
            row[self.groups[group]] = trajectory.sample(t)
        return row
