"""Aligning a rig's streams to the control rate as they arrive, and assembling them into episodes (no ROS).

A rig delivers streams, each a sequence of timestamped samples (seconds on one clock: on a ROS rig the header
stamps, or the arrival time for messages without a header): joint states, commands, camera frames. The
recorder turns them into control-rate steps:

* ticks ``t_k = t_0 + k / control_hz`` up to the episode's stop, ``t_0`` the first sample of the clock
  stream (the robot's joint states) at or after the episode's start, shifted by the median phase of its
  first few samples against that grid (a robot's timer jitters; one late sample must not place the grid);
* at tick ``k`` every stream contributes, at its query time ``q = t_k + lead`` (``lead``: the stream's offset,
  see :class:`StreamSpec`), its sample nearest ``q``, or, for a command stream, the linear interpolation of
  its trajectory points around ``q`` (joint_trajectory_controller's semantics: after the last point the
  command is held, exactly, so a command stream can only be missing before its first point); its skew is
  ``|stamp of the nearest sample - q|``;
* a step is final once every stream has shown its sample for it (a sample stamped at or after ``q``; command
  streams, which a newer trajectory may still rewrite, only by time) or the clock has passed ``q +
  tolerance + latency``; a stream with no sample within its tolerance of ``q`` refuses the step
  (:class:`RefusedStep` names stream, tick and distance).

The rules are the rosbag importer's (:mod:`robot_policy.data.interop.rosbag`: nearest sample by stamp,
trajectory points at stamp + time_from_start, a newer trajectory replacing the older points from its first
point on), applied online with bounded memory: only samples near the pending ticks are kept, so a camera's
frames are held for a fraction of a second, never for an episode.

:class:`RigRecorder` writes the steps through the store's streaming writer: nothing of an episode is visible
before its commit, so a crash loses at most the episode in flight. Refused steps before the first complete
one (a camera still starting) and after the last are dropped; a refused step between complete ones is a hole
in the episode, which ``on_gap="discard"`` (the default) turns into a discarded episode with the reason.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from robot_policy.data.interop.mapping import native_to_unified
from robot_policy.data.store import EpisodeStore
from robot_policy.data.streaming import StreamingEpisodeWriter
from robot_policy.spaces.embodiment import EmbodimentSpec

#: ``sample``: nearest sample (measurements, frames, leader arms); ``command``: trajectory points, interpolated
STREAM_KINDS: Final = ("sample", "command")
GAP_POLICIES: Final = ("discard", "keep")
#: prefixes of the keys of a low-dim stream's value dict: which part of a step each value fills
STATE, ACTION, EXTRA = "state.", "action.", "extra."

#: s: a tick this close to the stop still belongs to the episode (k * period in floating point)
_EPS: Final = 1e-9
#: a sample's value: native field key -> (dim,) float64 for low-dim streams, (H, W, 3) uint8 for a camera
Value = Any


@dataclass(frozen=True)
class StreamSpec:
    """One stream of a rig.

    Attributes:
        name: the stream's key (a ROS topic, a camera name).
        tolerance_s: largest accepted skew |sample stamp - query time| (s); beyond it the step is refused.
        kind: ``sample`` or ``command`` (see :data:`STREAM_KINDS`).
        lead_s: the stream is read at tick + lead_s (s). Commands use one control period: the action of step
            k is the target the robot moves to over the period after observation k, which is what a
            simulator's ``step(action)`` executes.
    """

    name: str
    tolerance_s: float
    kind: str = "sample"
    lead_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.tolerance_s > 0:
            raise ValueError(f"stream {self.name}: tolerance_s must be > 0 s, got {self.tolerance_s!r}")
        if self.kind not in STREAM_KINDS:
            raise ValueError(f"stream {self.name}: kind {self.kind!r}; kinds: {', '.join(STREAM_KINDS)}")
        if not self.lead_s >= 0:
            raise ValueError(f"stream {self.name}: lead_s must be >= 0 s, got {self.lead_s!r}")


def _blend(a: Value, b: Value, w: float) -> Value:
    if isinstance(a, Mapping):
        return {k: (1.0 - w) * np.asarray(a[k]) + w * np.asarray(b[k]) for k in a}
    return (1.0 - w) * np.asarray(a) + w * np.asarray(b)


class StreamBuffer:
    """The recent samples of one stream, in stamp order (s)."""

    def __init__(self, spec: StreamSpec) -> None:
        self.spec = spec
        self.stamps: list[float] = []
        self.values: list[Value] = []
        self.received = 0

    def add(self, stamp: float, value: Value) -> None:
        """One sample; out of order ones (two publishers, a reordering transport) go to their place."""
        if not np.isfinite(stamp):
            raise ValueError(f"stream {self.spec.name}: stamp {stamp!r} is not finite")
        i = bisect.bisect_right(self.stamps, stamp)
        self.stamps.insert(i, float(stamp))
        self.values.insert(i, value)
        self.received += 1

    def add_points(self, times: Sequence[float], values: Sequence[Value]) -> None:
        """A trajectory's points (absolute times, increasing): they replace the points at or after the first."""
        if len(times) == 0:
            return
        if len(times) != len(values) or np.any(np.diff(np.asarray(times, np.float64)) <= 0):
            raise ValueError(f"stream {self.spec.name}: trajectory point times must increase, one value each")
        cut = bisect.bisect_left(self.stamps, float(times[0]))
        del self.stamps[cut:], self.values[cut:]
        self.stamps.extend(float(t) for t in times)
        self.values.extend(values)
        self.received += 1

    def settled(self, q: float) -> bool:
        """No later sample can be nearer ``q``: a sample stream has one stamped at or after it."""
        return self.spec.kind == "sample" and bool(self.stamps) and self.stamps[-1] >= q

    def query(self, q: float) -> tuple[Value, float] | None:
        """(value at ``q``, skew s) or None when the stream has no sample. A command past its last point is
        that point, held (skew 0)."""
        if not self.stamps:
            return None
        i = bisect.bisect_left(self.stamps, q)
        lo, hi = max(i - 1, 0), min(i, len(self.stamps) - 1)
        j = lo if abs(self.stamps[lo] - q) <= abs(self.stamps[hi] - q) else hi
        skew = abs(self.stamps[j] - q)
        if self.spec.kind == "command" and q >= self.stamps[-1]:
            return self.values[-1], 0.0  # held, as the controller holds the last point: exact, not stale
        if self.spec.kind == "command" and lo != hi:
            w = (q - self.stamps[lo]) / (self.stamps[hi] - self.stamps[lo])
            return _blend(self.values[lo], self.values[hi], w), skew
        return self.values[j], skew

    def prune(self, before: float) -> None:
        """Forget samples stamped before ``before``, but the last of them (the nearest one, or an
        interpolation end, for a query just after ``before``)."""
        cut = bisect.bisect_left(self.stamps, before) - 1
        if cut > 0:
            del self.stamps[:cut], self.values[:cut]


@dataclass(frozen=True)
class AlignedStep:
    """Tick ``index`` of the episode at ``tick`` (s): every stream's value and skew (s)."""

    index: int
    tick: float
    values: dict[str, Value]
    skew_s: dict[str, float]


@dataclass(frozen=True)
class RefusedStep:
    """Tick ``index`` at ``tick`` (s), refused because ``stream`` had no sample near enough (``reason``)."""

    index: int
    tick: float
    stream: str
    reason: str

    def describe(self) -> str:
        return f"step {self.index} (tick {self.tick:.3f} s): {self.stream} {self.reason}"


class Aligner:
    """Streams -> control-rate steps for one episode at a time (see the module docstring).

    Args:
        streams: every stream of the rig; each must deliver for a step to be complete.
        control_hz: the tick rate (Hz).
        clock: the stream whose first sample in the episode is tick 0 (the robot's joint states).
        latency_s: transport delay allowed (s): how long after ``q + tolerance`` a step waits for a sample.
        phase_samples: clock samples whose median phase places the tick grid (see :meth:`_anchor`).
    """

    def __init__(self, streams: Sequence[StreamSpec], control_hz: float, clock: str, latency_s: float = 0.05,
                 phase_samples: int = 5) -> None:
        names = [s.name for s in streams]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"aligner: stream names must be unique and at least one, got {names}")
        if clock not in names:
            raise ValueError(f"aligner: clock stream {clock!r} is not one of the streams {names}")
        if not control_hz > 0 or not latency_s >= 0:
            raise ValueError(f"aligner: control_hz {control_hz!r} must be > 0 and latency_s {latency_s!r} >= 0")
        self.buffers = {s.name: StreamBuffer(s) for s in streams}
        self.period = 1.0 / control_hz
        self.clock = clock
        self.latency_s = latency_s
        self.phase_samples = max(1, int(phase_samples))
        # how long a sample can matter after its stamp: the widest lead + tolerance + latency, and a period
        self._horizon = max(s.lead_s + s.tolerance_s for s in streams) + latency_s + self.period
        self._reset()

    def _reset(self) -> None:
        self.t_start: float | None = None
        self.t_stop: float | None = None
        self.t0: float | None = None
        self.next_index = 0

    # ---- samples ----------------------------------------------------------------------------------
    def _buffer(self, stream: str) -> StreamBuffer:
        try:
            return self.buffers[stream]
        except KeyError:
            raise KeyError(f"aligner: unknown stream {stream!r}; streams: {', '.join(self.buffers)}") from None

    def add(self, stream: str, stamp: float, value: Value) -> None:
        self._buffer(stream).add(stamp, value)

    def add_points(self, stream: str, times: Sequence[float], values: Sequence[Value]) -> None:
        self._buffer(stream).add_points(times, values)

    # ---- the episode ------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.t_start is not None

    def start(self, t_start: float) -> None:
        """Begin an episode at ``t_start`` (s): its tick 0 is the clock stream's first sample from then on."""
        if self.active:
            raise RuntimeError("aligner: an episode is already in progress")
        self._reset()
        self.t_start = float(t_start)

    def stop(self, t_stop: float) -> None:
        """End the episode at ``t_stop`` (s): ticks up to it are still aligned as their samples arrive."""
        if not self.active:
            raise RuntimeError("aligner: no episode in progress")
        self.t_stop = float(t_stop)

    def done(self, now: float) -> bool:
        """The stopped episode has emitted every tick up to its stop (or never saw its clock)."""
        if self.t_stop is None:
            return False
        if self.t0 is None:
            return now >= self.t_stop + self.latency_s
        return self.t0 + self.next_index * self.period > self.t_stop + _EPS

    def end(self) -> None:
        """Forget the episode (after :meth:`done`, or to drop it)."""
        self._reset()

    def tick(self, index: int) -> float:
        assert self.t0 is not None
        return self.t0 + index * self.period

    def poll(self, now: float) -> list[AlignedStep | RefusedStep]:
        """The steps that became final by clock time ``now`` (s), in order."""
        out: list[AlignedStep | RefusedStep] = []
        if self.t_start is not None and self.t0 is None:
            self.t0 = self._anchor()
        while self.t0 is not None:
            t = self.tick(self.next_index)
            if self.t_stop is not None and t > self.t_stop + _EPS:
                break
            if not all(b.settled(t + b.spec.lead_s) or now >= t + b.spec.lead_s + b.spec.tolerance_s + self.latency_s
                       for b in self.buffers.values()):
                break
            out.append(self._step(self.next_index, t))
            self.next_index += 1
        if self.t0 is not None:
            keep_from = self.tick(self.next_index) - self.period
        else:  # idle, or waiting for the clock: a short history, and everything from the start on
            keep_from = min(now, self.t_start if self.t_start is not None else now) - self._horizon
        for b in self.buffers.values():
            b.prune(keep_from + b.spec.lead_s - b.spec.tolerance_s)
        return out

    def _anchor(self) -> float | None:
        """Tick 0: the clock stream's first sample from the start on, moved by the median phase of its first
        ``phase_samples`` samples against the tick grid, so that one late first sample does not put every tick
        off the stream (None while those samples are still to come)."""
        assert self.t_start is not None
        clock = self.buffers[self.clock]
        i = bisect.bisect_left(clock.stamps, self.t_start)
        end = len(clock.stamps) if self.t_stop is None else bisect.bisect_right(clock.stamps, self.t_stop)
        s = np.asarray(clock.stamps[i:min(end, i + self.phase_samples)])
        if s.size == 0 or (s.size < self.phase_samples and self.t_stop is None):
            return None
        phase = (s - s[0] + self.period / 2) % self.period - self.period / 2  # each sample's offset from the grid
        return float(s[0] + np.median(phase))

    def _step(self, index: int, t: float) -> AlignedStep | RefusedStep:
        values: dict[str, Value] = {}
        skew: dict[str, float] = {}
        for name, b in self.buffers.items():
            q = t + b.spec.lead_s
            found = b.query(q)
            if found is None:
                return RefusedStep(index, t, name, "has no sample yet")
            value, d = found
            if d > b.spec.tolerance_s:
                return RefusedStep(index, t, name, f"nearest sample is {1e3 * d:.1f} ms from the step's time "
                                                   f"(tolerance {1e3 * b.spec.tolerance_s:.1f} ms)")
            values[name], skew[name] = value, d
        return AlignedStep(index, t, values, skew)


class PauseSegmenter:
    """Episodes from activity (command messages): one starts at the first activity after a pause, and ends at
    the last activity once ``pause_s`` seconds have passed without any."""

    def __init__(self, pause_s: float) -> None:
        if not pause_s > 0:
            raise ValueError(f"pause segmentation: pause_s must be > 0 s, got {pause_s!r}")
        self.pause_s = pause_s
        self.last: float | None = None
        self.in_episode = False

    def activity(self, stamp: float) -> float | None:
        """Note activity at ``stamp`` (s); returns the start time when it begins an episode."""
        self.last = stamp if self.last is None else max(self.last, stamp)
        if not self.in_episode:
            self.in_episode = True
            return stamp
        return None

    def poll(self, now: float) -> float | None:
        """The stop time (the last activity) when the pause has run out at ``now`` (s), else None."""
        if self.in_episode and self.last is not None and now - self.last > self.pause_s:
            self.in_episode = False
            return self.last
        return None


class EpisodeAssembler:
    """An aligned step -> the store's row: native fields through the embodiment into the 128-d space.

    Low-dim stream values are dicts whose keys say what they fill (``state.<field>``, ``action.<field>``,
    ``extra.<key>``); ``cameras`` maps store camera names to their stream.
    """

    def __init__(self, spec: EmbodimentSpec, cameras: Mapping[str, str]) -> None:
        self.spec = spec
        self.cameras = dict(cameras)

    def row(self, step: AlignedStep, t0: float) -> dict[str, Any]:
        """Keyword arguments of :meth:`StreamingEpisodeWriter.add_step`; timestamp = s since tick 0."""
        merged: dict[str, np.ndarray] = {}
        for name, value in step.values.items():
            if name not in self.cameras.values():
                merged.update(value)
        where = f"step {step.index}"
        state = {k[len(STATE):]: v[None] for k, v in merged.items() if k.startswith(STATE)}
        action = {k[len(ACTION):]: v[None] for k, v in merged.items() if k.startswith(ACTION)}
        extras = {k[len(EXTRA):]: np.asarray(v) for k, v in merged.items() if k.startswith(EXTRA)}
        return {"state": native_to_unified(self.spec.state, state, 1, f"{where} state")[0],
                "action": native_to_unified(self.spec.action, action, 1, f"{where} action")[0],
                "timestamp": step.tick - t0,
                "images": {cam: step.values[stream] for cam, stream in self.cameras.items()},
                **extras}


@dataclass
class EpisodeReport:
    """What recording one episode gave. Skews in ms per stream over the written steps."""

    index: int | None  # store index; None when discarded
    steps: int
    refused: int
    success: bool | None
    skew_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    discarded: str | None = None  # why, when discarded
    first_refusal: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "steps": self.steps, "refused": self.refused, "success": self.success,
                "skew_ms": self.skew_ms, "discarded": self.discarded, "first_refusal": self.first_refusal}


class RigRecorder:
    """Aligned steps of one episode at a time into ``store`` through the streaming writer.

    Not thread-safe: feed samples, start, stop and poll from one thread (the node's executor).
    """

    def __init__(self, store: EpisodeStore, aligner: Aligner, assembler: EpisodeAssembler, *,
                 state_mask: np.ndarray | None = None, action_mask: np.ndarray | None = None,
                 on_gap: str = "discard") -> None:
        if on_gap not in GAP_POLICIES:
            raise ValueError(f"on_gap {on_gap!r}; policies: {', '.join(GAP_POLICIES)}")
        self.store = store
        self.aligner = aligner
        self.assembler = assembler
        self.state_mask, self.action_mask = state_mask, action_mask
        self.on_gap = on_gap
        self._writer: StreamingEpisodeWriter | None = None
        self._success: bool | None = None
        self._begin_episode_state()

    def _begin_episode_state(self) -> None:
        self._skew: dict[str, list[float]] = {}
        self._refused = 0
        self._pending_gap: RefusedStep | None = None
        self._first_refusal: RefusedStep | None = None
        self._broken: str | None = None

    @property
    def recording(self) -> bool:
        return self._writer is not None

    def start(self, t_start: float, *, language: str = "", seed: int = -1) -> None:
        """Begin an episode at ``t_start`` (s on the streams' clock)."""
        if self._writer is not None:
            raise RuntimeError("an episode is already being recorded: stop or discard it first")
        self._writer = self.store.stream_episode(language=language, seed=seed, state_mask=self.state_mask,
                                                 action_mask=self.action_mask)
        self._begin_episode_state()
        self._success = None
        self.aligner.start(t_start)

    def stop(self, t_stop: float, success: bool | None = None) -> None:
        """End the episode at ``t_stop`` (s); :meth:`poll` commits it once its last steps are aligned."""
        if self._writer is None:
            raise RuntimeError("no episode is being recorded")
        self._success = success
        self.aligner.stop(t_stop)

    def discard(self, why: str = "discarded on request") -> EpisodeReport:
        """Drop the episode in flight: nothing of it becomes visible."""
        if self._writer is None:
            raise RuntimeError("no episode is being recorded")
        report = self._report(None, why)
        self._close_writer()
        return report

    def close(self) -> None:
        """Drop an episode in flight (shutdown before its stop)."""
        if self._writer is not None:
            self._close_writer()

    def poll(self, now: float) -> EpisodeReport | None:
        """Write the steps final at ``now`` (s); the report once a stopped episode is committed or discarded."""
        if self._writer is None:
            return None
        for step in self.aligner.poll(now):
            self._take(step)
        if not self.aligner.done(now):
            return None
        if self._broken is None and self._writer.n_steps == 0:
            self._broken = ("no complete step: " + self._first_refusal.describe() if self._first_refusal
                            else "no step: the clock stream sent nothing between start and stop")
        if self._broken is not None:
            report = self._report(None, self._broken)
        else:
            report = self._report(self._writer.commit(success=self._success), None)
        self._close_writer()
        return report

    def _take(self, step: AlignedStep | RefusedStep) -> None:
        assert self._writer is not None and self.aligner.t0 is not None
        if isinstance(step, RefusedStep):
            self._refused += 1
            self._first_refusal = self._first_refusal or step
            if self._writer.n_steps and self._pending_gap is None:
                self._pending_gap = step  # a hole only if a complete step follows
            return
        if self._pending_gap is not None:
            if self.on_gap == "discard" and self._broken is None:
                self._broken = f"a hole in the episode: {self._pending_gap.describe()}"
            self._pending_gap = None
        if self._broken is not None:
            return
        self._writer.add_step(**self.assembler.row(step, self.aligner.t0))
        for name, d in step.skew_s.items():
            self._skew.setdefault(name, []).append(d)

    def _report(self, index: int | None, discarded: str | None) -> EpisodeReport:
        assert self._writer is not None
        skew = {k: {"mean": 1e3 * float(np.mean(v)), "max": 1e3 * float(np.max(v))} for k, v in self._skew.items()}
        return EpisodeReport(index=index, steps=self._writer.n_steps, refused=self._refused, success=self._success,
                             skew_ms=skew, discarded=discarded,
                             first_refusal=self._first_refusal.describe() if self._first_refusal else None)

    def _close_writer(self) -> None:
        assert self._writer is not None
        self._writer.discard()  # a no-op after a commit
        self._writer = None
        self.aligner.end()


__all__ = [
    "ACTION",
    "EXTRA",
    "STATE",
    "AlignedStep",
    "Aligner",
    "EpisodeAssembler",
    "EpisodeReport",
    "PauseSegmenter",
    "RefusedStep",
    "RigRecorder",
    "StreamBuffer",
    "StreamSpec",
]
