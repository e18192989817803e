"""A real-time loop in process: ``fn(now)`` on an absolute schedule, with its timing measured.

    loop = RealTimeLoop(200.0)                      # 5 ms periods
    timing = loop.run(controller.tick, duration_s=10.0, stop_event=stop)
    timing.summary()["period_error"]["p99_ms"]

Tick k is due at ``t0 + k / hz`` (``t0``: when :meth:`RealTimeLoop.run` starts), not one period after the
previous tick, so a slow tick does not shift every later one (no drift). Before each deadline the loop
sleeps until ``spin_s`` before it and then spins on the clock: ``time.sleep`` on Linux wakes 50-100 us late
on an idle core (and whole scheduler slices late on a loaded one), a spin reads the clock to the
microsecond. A tick that starts more than a period late skips the deadlines already past (a control loop
does not run a burst of catch-up ticks with stale inputs): they count as missed.

Threads: the spin holds the GIL for up to ``spin_s``; a thread that runs Python meanwhile (the inference
runner between torch kernels) can hold it when the loop wakes, and CPython then makes the loop wait up to
the interpreter's switch interval (5 ms by default, a whole period at 200 Hz) before forcing a hand-over.
``switch_interval_s`` lowers it while the loop runs (restored afterwards); None leaves it as it is. Better,
infer in another process (:class:`~robot_policy.runtime.process_runner.ProcessInferenceRunner`).

Garbage collection: CPython's collector runs when allocations pass a threshold, inside whichever tick
allocates, and a full collection of a process holding torch and a model takes milliseconds. ``gc_control``
freezes what exists when the run starts (never collected again), disables the automatic collector while the
loop runs, and collects the young generations itself after a tick that leaves at least ``gc_slack_s`` before
the next deadline (restored afterwards).

Scheduling: on a loaded machine the OS wakes a sleeping thread when its turn comes among the runnable ones,
milliseconds late. ``rt_priority`` runs the loop's thread under ``SCHED_FIFO`` at that priority (1-99, as a
ros2_control controller manager does; needs CAP_SYS_NICE or an rtprio limit), restored afterwards: it then
preempts every ordinary thread when its deadline comes.

Times are seconds of ``clock`` (``time.monotonic``, the clock of the controller's observation stamps).
No ROS: the ROS 2 node runs the same controller from an rclpy timer instead.
"""

from __future__ import annotations

import gc
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


def _ms_stats(seconds: np.ndarray) -> dict[str, float]:
    if seconds.size == 0:
        return {"n": 0}
    ms = seconds * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()), "n": int(ms.size)}


@dataclass(frozen=True)
class LoopTiming:
    """What one :meth:`RealTimeLoop.run` did, per tick that ran.

    Attributes:
        hz: the loop rate (Hz).
        index: (K,) the schedule index k of each tick that ran (deadline ``k / hz`` after the start).
        deadlines: (K,) when each tick was due (s, ``clock``).
        starts: (K,) when it started, the ``now`` passed to ``fn`` (s).
        compute: (K,) seconds spent in ``fn``.
    """

    hz: float
    index: np.ndarray
    deadlines: np.ndarray
    starts: np.ndarray
    compute: np.ndarray

    @property
    def period(self) -> float:
        """The nominal period (s)."""
        return 1.0 / self.hz

    @property
    def period_errors(self) -> np.ndarray:
        """(K,) actual start minus deadline (s): >= 0 but for clock rounding, < one period."""
        return self.starts - self.deadlines

    @property
    def interval_errors(self) -> np.ndarray:
        """(K - 1,) time between consecutive tick starts minus the period (s): the jitter a timer callback
        sees (what a ROS node's controller measures), without the absolute schedule."""
        return np.diff(self.starts) - self.period

    @property
    def overruns(self) -> int:
        """Ticks whose ``fn`` took longer than a period (their period was not met)."""
        return int((self.compute > self.period).sum())

    @property
    def missed_deadlines(self) -> int:
        """Deadlines at which no tick ran because an earlier one was still running (skipped)."""
        return int(self.index[-1] + 1 - len(self.index)) if len(self.index) else 0

    @property
    def periods_met(self) -> float | None:
        """Share of the ticks that ran whose ``fn`` fit in a period; None when none ran."""
        return float(np.mean(self.compute <= self.period)) if len(self.compute) else None

    def summary(self) -> dict[str, Any]:
        """JSON-ready: period error and compute percentiles (ms), overruns, missed deadlines."""
        return {"hz": self.hz, "ticks": len(self.index), "period_error": _ms_stats(self.period_errors),
                "compute": _ms_stats(self.compute), "overruns": self.overruns,
                "missed_deadlines": self.missed_deadlines, "periods_met": self.periods_met}

    @staticmethod
    def concat(timings: list[LoopTiming]) -> LoopTiming:
        """Several runs at one rate as one record (each run's index offset past the previous run's last)."""
        if not timings:
            raise ValueError("LoopTiming.concat: no timings given")
        if len({t.hz for t in timings}) != 1:
            raise ValueError(f"LoopTiming.concat: runs at different rates {sorted({t.hz for t in timings})}")
        offsets = np.cumsum([0] + [int(t.index[-1]) + 1 if len(t.index) else 0 for t in timings[:-1]])
        return LoopTiming(timings[0].hz, np.concatenate([t.index + o for t, o in zip(timings, offsets, strict=True)]),
                          np.concatenate([t.deadlines for t in timings]), np.concatenate([t.starts for t in timings]),
                          np.concatenate([t.compute for t in timings]))


class RealTimeLoop:
    """Calls ``fn(now)`` at ``hz`` on an absolute schedule (module docstring).

    Args:
        hz: ticks per second.
        clock: seconds, monotonic.
        sleep: blocks for the given seconds (a test passes one that advances a fake ``clock``).
        spin_s: the last part of each wait is a busy loop on ``clock`` of this many seconds.
        switch_interval_s: the interpreter's GIL switch interval while the loop runs (None: unchanged).
        gc_control: collect garbage between ticks only (module docstring).
        gc_slack_s: the least time before the next deadline in which a collection starts.
        rt_priority: SCHED_FIFO priority of the loop's thread while it runs (None: unchanged).
    """

    def __init__(self, hz: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, spin_s: float = 3e-4,
                 switch_interval_s: float | None = None, gc_control: bool = False, gc_slack_s: float = 2e-3,
                 rt_priority: int | None = None) -> None:
        if not (math.isfinite(hz) and hz > 0):
            raise ValueError(f"hz: must be > 0, got {hz}")
        if not 0 <= spin_s < 1.0 / hz:
            raise ValueError(f"spin_s: must be in [0, one period = {1.0 / hz:g} s), got {spin_s}")
        if switch_interval_s is not None and not switch_interval_s > 0:
            raise ValueError(f"switch_interval_s: must be > 0 or None, got {switch_interval_s}")
        if not 0 <= gc_slack_s < 1.0 / hz:
            raise ValueError(f"gc_slack_s: must be in [0, one period = {1.0 / hz:g} s), got {gc_slack_s}")
        if rt_priority is not None and not 1 <= rt_priority <= 99:
            raise ValueError(f"rt_priority: must be in 1..99 or None, got {rt_priority}")
        self.hz = float(hz)
        self.clock = clock
        self.sleep = sleep
        self.spin_s = float(spin_s)
        self.switch_interval_s = switch_interval_s
        self.gc_control = gc_control
        self.gc_slack_s = float(gc_slack_s)
        self.rt_priority = rt_priority
        self.collections = 0  # garbage collections the last run made between ticks

    def wait_until(self, deadline: float) -> float:
        """Block until ``clock() >= deadline``; returns that clock reading (s)."""
        now = self.clock()
        if deadline - now > self.spin_s:
            self.sleep(deadline - now - self.spin_s)
            now = self.clock()
        while now < deadline:  # the last spin_s: sleep would overshoot, reading the clock does not
            now = self.clock()
        return now

    def run(self, fn: Callable[[float], Any], duration_s: float | None = None, ticks: int | None = None,
            stop_event: threading.Event | None = None) -> LoopTiming:
        """Tick ``fn`` for ``duration_s`` seconds (deadlines before it) or ``ticks`` deadlines, whichever is
        given, or until ``stop_event`` is set (checked before every tick). An exception in ``fn`` ends the
        run and propagates."""
        if (duration_s is None) == (ticks is None):
            raise ValueError("run: give exactly one of duration_s and ticks")
        if duration_s is not None and not duration_s >= 0:
            raise ValueError(f"duration_s: must be >= 0, got {duration_s}")
        if ticks is not None and ticks < 0:
            raise ValueError(f"ticks: must be >= 0, got {ticks}")
        period = 1.0 / self.hz
        n = ticks if ticks is not None else math.ceil(float(duration_s) * self.hz - 1e-9)  # type: ignore[arg-type]
        index: list[int] = []
        deadlines: list[float] = []
        starts: list[float] = []
        compute: list[float] = []
        previous = sys.getswitchinterval()
        if self.switch_interval_s is not None:
            sys.setswitchinterval(self.switch_interval_s)
        gc_was_enabled = gc.isenabled()
        self.collections = 0
        scheduling, frozen = None, False
        try:
            if self.rt_priority is not None:
                scheduling = _enter_fifo(self.rt_priority)
            if self.gc_control:
                gc.collect()
                gc.freeze()  # what exists now (model, env, imports) is never traversed again
                gc.disable()
                frozen = True
            t0 = self.clock()
            k = 0
            while k < n and not (stop_event is not None and stop_event.is_set()):
                deadline = t0 + k * period
                now = self.wait_until(deadline)
                fn(now)
                end = self.clock()
                index.append(k)
                deadlines.append(deadline)
                starts.append(now)
                compute.append(end - now)
                # the next deadline not yet past; those skipped are missed (no catch-up burst)
                k = max(k + 1, math.floor((end - t0) / period + 1e-9))
                if self.gc_control and t0 + k * period - end >= self.gc_slack_s:
                    self._collect_young()
        finally:
            if frozen:
                gc.unfreeze()
                if gc_was_enabled:
                    gc.enable()
            if scheduling is not None:
                os.sched_setscheduler(0, *scheduling)
            sys.setswitchinterval(previous)
        return LoopTiming(self.hz, np.asarray(index, np.int64), np.asarray(deadlines), np.asarray(starts),
                          np.asarray(compute))

    def _collect_young(self) -> None:
        """What the automatic collector would do now, generations 0 and 1 only (the frozen heap is the old
        generation's bulk; what survives both young ones waits for the end of the run)."""
        counts, thresholds = gc.get_count(), gc.get_threshold()
        if counts[1] >= thresholds[1]:
            gc.collect(1)
        elif counts[0] >= thresholds[0]:
            gc.collect(0)
        else:
            return
        self.collections += 1


def _enter_fifo(priority: int) -> tuple[int, os.sched_param]:
    """SCHED_FIFO at ``priority`` for the calling thread; returns the policy and parameter to restore."""
    previous = (os.sched_getscheduler(0), os.sched_getparam(0))
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError as e:
        raise PermissionError(f"rt_priority={priority}: SCHED_FIFO refused ({e}); grant CAP_SYS_NICE or an "
                              "rtprio limit (ulimit -r), or pass rt_priority=None") from e
    return previous
