"""The chunk scheduler: which action runs now, given chunks that arrive late and overlap.

Times are seconds on one monotonic clock (``time.monotonic()`` on the robot; any float clock in tests).
Actions are native rows (n,) (e.g. 16 joint and gripper targets, ``EmbodimentSpec.action.unified_to_flat``).

Timestamp convention: row i of a chunk computed from an observation taken at ``obs_time`` is meant for
``obs_time + i / control_hz`` and holds until the next row (zero-order hold over one control period). This
is :attr:`ActionChunk.timestamps <robot_policy.policies.base.ActionChunk.timestamps>` (``i / control_hz``)
and what training and the evaluation harness do: a training window's first action is the one recorded at
the window's last observation (``SequenceSampler``: action window starts at the anchor), and the harness
steps the env with row 0 right after the observation. So row 0 is due the moment the observation is taken
and is always stale by the time its chunk arrives.

Arrival (Diffusion Policy's real-robot rule): rows with ``timestamp <= now + latency_margin_s`` are due
already (the command could not reach the robot in time) and are dropped. If every row is due, the chunk
came later than its whole horizon: its last row is kept, restamped to the next step of the chunk's grid
after ``now + latency_margin_s`` (also Diffusion Policy's choice: go where the policy meant to be at the end
of the chunk rather than nowhere), and :attr:`ChunkScheduler.late_chunks` counts it.

Modes (:class:`SchedulerConfig`):
    ``none``               the newest chunk replaces the queue from its first kept row on.
    ``temporal_ensemble``  ACT: every stored chunk's row for the tick, averaged with weights exp(-k i),
                           i = 0 the OLDEST prediction (ACT's choice: it favours the plan already under way).
    ``rtc``                the newest chunk was inpainted against the queue (:mod:`robot_policy.runtime.rtc`,
                           with :meth:`ChunkScheduler.prefix_for_next`), so it replaces the queue as in ``none``;
                           nothing is blended at execution.

Query the 20 Hz action with :meth:`ChunkScheduler.action_at` and a faster command stream (e.g. 200 Hz) with
:meth:`ChunkScheduler.command_at`. Not thread-safe: one control thread owns it (the inference thread only
produces chunks, :class:`~robot_policy.runtime.runner.AsyncInferenceRunner`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MODES = ("none", "temporal_ensemble", "rtc")


@dataclass
class SchedulerConfig:
    """How chunks are queued and blended. Times in seconds."""

    mode: str = "none"  # "none", "temporal_ensemble" or "rtc" (module docstring)
    # Rows due within this margin of arrival are dropped: the time a command takes to reach the robot
    # (Diffusion Policy's real robot: 10 ms execution latency).
    latency_margin_s: float = 0.01
    ensemble_k: float = 0.01  # temporal_ensemble: weight exp(-k i), i = 0 the oldest chunk (ACT: 0.01)
    # A row counts as due from ``timestamp - tick_tolerance_s``: absorbs the control timer's jitter and the
    # float rounding of obs_time + i / hz, so a tick a hair early still gets its own row, not the previous one.
    tick_tolerance_s: float = 1e-3

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"scheduler.mode: unknown {self.mode!r}; valid: {', '.join(MODES)}")
        if self.latency_margin_s < 0:
            raise ValueError(f"scheduler.latency_margin_s: must be >= 0, got {self.latency_margin_s}")
        if self.ensemble_k < 0:
            raise ValueError(f"scheduler.ensemble_k: must be >= 0, got {self.ensemble_k}")
        if self.tick_tolerance_s < 0:
            raise ValueError(f"scheduler.tick_tolerance_s: must be >= 0, got {self.tick_tolerance_s}")


@dataclass(frozen=True)
class RTCPrefix:
    """What the queue will execute at a new chunk's time steps, for real-time chunking.

    Attributes:
        actions: (Ta, n) native actions at ``timestamps``; rows from ``overlap`` on repeat the last queued
            one (or are 0 if nothing is queued): placeholders, to be given guidance weight 0.
        timestamps: (Ta,) seconds, ``obs_time + i / control_hz``.
        overlap: leading rows the queue covers (the paper's H - s).
        frozen: leading rows that execute from the queue while the new chunk is inferred (the paper's d):
            those the arrival rule will drop if inference takes the expected latency. 0 <= frozen <= overlap.
    """

    actions: np.ndarray
    timestamps: np.ndarray
    overlap: int
    frozen: int


@dataclass
class _Timeline:
    """Queued rows of one chunk (or, in the replacing modes, of the merged queue), sorted by time."""

    t: np.ndarray  # (K,) seconds, strictly increasing
    a: np.ndarray  # (K, n)
    dt: np.ndarray  # (K,) seconds each row holds for when it is the last one (its chunk's control period)
    seq: int = 0  # arrival order of the chunk (temporal ensemble weights)

    def hold(self, now: float) -> np.ndarray | None:
        """The row meant for ``now`` (zero-order hold), or None when ``now`` is before, between or after
        the queued rows. ``now`` here already includes the tick tolerance."""
        k = int(np.searchsorted(self.t, now, side="right")) - 1
        if k < 0 or now >= self.t[k] + self.dt[k]:
            return None
        return self.a[k]

    def lerp(self, now: float, tol: float) -> np.ndarray | None:
        """Linear interpolation between consecutive rows (row k exactly at t_k); the last row is held for its
        period; None outside the queue or in a gap."""
        k = int(np.searchsorted(self.t, now, side="right")) - 1
        if k < 0:
            return self.a[0] if now + tol >= self.t[0] else None
        if now >= self.t[k] + self.dt[k]:
            return None
        if k + 1 == len(self.t) or self.t[k + 1] > self.t[k] + self.dt[k] + tol:  # the last row, or a gap
            return self.a[k]
        frac = (now - self.t[k]) / (self.t[k + 1] - self.t[k])
        return self.a[k] + frac * (self.a[k + 1] - self.a[k])  # type: ignore[no-any-return]

    def prune(self, now: float) -> None:
        """Forget rows wholly in the past, keeping the current one (interpolation starts from it)."""
        k = max(int(np.searchsorted(self.t, now, side="right")) - 1, 0)
        self.t, self.a, self.dt = self.t[k:], self.a[k:], self.dt[k:]

    def expired(self, now: float) -> bool:
        return len(self.t) == 0 or now >= self.t[-1] + self.dt[-1]


class ChunkScheduler:
    """See the module docstring. ``clock`` gives ``now`` when :meth:`add` is not told it."""

    def __init__(self, config: SchedulerConfig | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or SchedulerConfig()
        self.clock = clock
        #: chunks that arrived after their whole horizon was due (only their last row was kept)
        self.late_chunks = 0
        self._timelines: list[_Timeline] = []  # one (merged queue) unless temporal_ensemble
        self._seq = 0  # arrival counter
        self._dim: int | None = None  # n, fixed by the first chunk
        self._dt: float | None = None  # the last chunk's control period (s)

    def add(self, actions: np.ndarray, obs_time: float, control_hz: float, now: float | None = None) -> int:
        """Queue a chunk; returns how many of its rows were kept.

        Args:
            actions: (T, n) native actions; row i is meant for ``obs_time + i / control_hz``.
            obs_time: when the chunk's observation was taken (s).
            control_hz: the chunk's control rate (Hz).
            now: arrival time (s); default ``clock()``. Rows due by ``now + latency_margin_s`` are dropped.
        """
        a = np.asarray(actions, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] < 1:
            raise ValueError(f"add: actions must be (T >= 1, n), got {a.shape}")
        if self._dim is not None and a.shape[1] != self._dim:
            raise ValueError(f"add: actions have {a.shape[1]} columns, the queued chunks {self._dim}")
        if not np.isfinite(a).all():
            raise ValueError("add: actions contain NaN/Inf")
        if not (math.isfinite(control_hz) and control_hz > 0):
            raise ValueError(f"add: control_hz must be > 0, got {control_hz}")
        now = self.clock() if now is None else float(now)
        dt = 1.0 / control_hz
        t = obs_time + np.arange(len(a)) * dt  # (T,)
        cutoff = now + self.config.latency_margin_s
        keep = t > cutoff
        if not keep.any():
            self.late_chunks += 1
            j = math.floor((cutoff - obs_time) / dt) + 1  # the next step of the chunk's grid after the cutoff
            t, a, keep = np.array([obs_time + j * dt]), a[-1:], np.array([True])
        new = _Timeline(t[keep], a[keep], np.full(int(keep.sum()), dt), self._seq)
        self._seq += 1
        self._dim, self._dt = a.shape[1], dt
        if self.config.mode == "temporal_ensemble":
            self._timelines.append(new)
        else:
            self._timelines = [self._replace(new)]
        for tl in self._timelines:
            tl.prune(now)
        self._timelines = [tl for tl in self._timelines if not tl.expired(now)]
        return len(new.t)

    def _replace(self, new: _Timeline) -> _Timeline:
        """The old queue up to the new chunk's first kept row, then the new chunk."""
        if not self._timelines:
            return new
        old = self._timelines[0]
        before = old.t < new.t[0]
        return _Timeline(np.concatenate([old.t[before], new.t]), np.concatenate([old.a[before], new.a]),
                         np.concatenate([old.dt[before], new.dt]), new.seq)

    def action_at(self, now: float) -> np.ndarray | None:
        """The action (n,) for the control tick at ``now`` (zero-order hold), or None: nothing is queued for
        ``now`` and the caller holds position. ``temporal_ensemble``: the weighted mean of every chunk's row."""
        now = now + self.config.tick_tolerance_s
        return self._blend([tl.hold(now) for tl in self._timelines])

    def command_at(self, now: float) -> np.ndarray | None:
        """The action (n,) for a command stream faster than the chunks' rate (e.g. 200 Hz against 20 Hz rows):
        linear interpolation between consecutive rows, equal to row k at its timestamp, so sampling it at
        the control ticks gives :meth:`action_at`'s actions. The last queued row is held for its period;
        None where :meth:`action_at` has nothing either."""
        tol = self.config.tick_tolerance_s
        return self._blend([tl.lerp(now, tol) for tl in self._timelines])

    def _blend(self, rows: list[np.ndarray | None]) -> np.ndarray | None:
        # Timelines are in arrival order, so i = 0 is the oldest prediction (ACT's weighting).
        present = [r for r in rows if r is not None]
        if not present:
            return None
        if len(present) == 1:
            return present[0].copy()
        w = np.exp(-self.config.ensemble_k * np.arange(len(present)))  # (m,)
        return (w[:, None] * np.stack(present)).sum(0) / w.sum()  # type: ignore[no-any-return]

    def remaining(self, now: float) -> int:
        """Queued actions not yet due at ``now`` (rows stamped after the current tick); with
        ``temporal_ensemble``, those of the chunk that reaches furthest. Re-plan when it runs low."""
        now = now + self.config.tick_tolerance_s
        return max((int((tl.t > now).sum()) for tl in self._timelines), default=0)

    def prefix_for_next(self, obs_time: float, horizon: int, expected_latency_s: float = 0.0,
                        control_hz: float | None = None) -> RTCPrefix:
        """The queue's actions at the time steps of a chunk about to be inferred from an observation taken
        at ``obs_time``, for real-time chunking (:func:`robot_policy.runtime.rtc.rtc_weights` takes
        ``frozen`` and ``overlap``).

        Args:
            horizon: Ta, rows of the new chunk.
            expected_latency_s: how long from ``obs_time`` until the chunk arrives (e.g. a recent inference
                latency); rows due by then (plus ``latency_margin_s``) are ``frozen``.
            control_hz: the new chunk's rate; default the last added chunk's.
        """
        if horizon < 1:
            raise ValueError(f"prefix_for_next: horizon must be >= 1, got {horizon}")
        if expected_latency_s < 0:
            raise ValueError(f"prefix_for_next: expected_latency_s must be >= 0, got {expected_latency_s}")
        if control_hz is None:
            if self._dt is None:
                raise ValueError("prefix_for_next: no chunk queued yet, so pass control_hz")
            dt = self._dt
        else:
            dt = 1.0 / control_hz
        t = obs_time + np.arange(horizon) * dt  # (Ta,)
        rows: list[np.ndarray] = []
        for ti in t:
            row = self.action_at(float(ti))
            if row is None:
                break
            rows.append(row)
        overlap = len(rows)
        due = t[:overlap] <= obs_time + expected_latency_s + self.config.latency_margin_s
        frozen = int(due.sum())
        pad = rows[-1] if rows else np.zeros(self._dim or 0)
        actions = np.stack(rows + [pad] * (horizon - overlap))  # (Ta, n)
        return RTCPrefix(actions, t, overlap, frozen)
