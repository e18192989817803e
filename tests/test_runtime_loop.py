"""The in-process real-time loop (robot_policy.runtime.loop) on a fake clock, so nothing depends on this
machine's speed: period errors are start minus deadline, a slow tick is an overrun and the deadlines it
covered are skipped (missed), a stop event ends the run, the schedule is absolute."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from robot_policy.runtime.loop import LoopTiming, RealTimeLoop

HZ = 200.0
PERIOD = 1.0 / HZ


class FakeTime:
    """A clock that advances ``read_s`` per reading (a spin terminates) and a sleep that oversleeps by
    ``overshoot(call)`` seconds."""

    def __init__(self, read_s: float = 1e-7, overshoot: list[float] | None = None) -> None:
        self.t = 100.0
        self.read_s = read_s
        self.overshoot = list(overshoot or [])
        self.sleeps = 0

    def clock(self) -> float:
        self.t += self.read_s
        return self.t

    def sleep(self, seconds: float) -> None:
        extra = self.overshoot[self.sleeps] if self.sleeps < len(self.overshoot) else 0.0
        self.sleeps += 1
        self.t += seconds + extra

    def loop(self, spin_s: float = 0.0) -> RealTimeLoop:
        return RealTimeLoop(HZ, clock=self.clock, sleep=self.sleep, spin_s=spin_s)


def test_period_errors_are_start_minus_deadline_and_summarised_right() -> None:
    rng = np.random.default_rng(0)
    late = rng.uniform(0, 0.8e-3, size=200)  # each wake-up this late (s)
    fake = FakeTime(overshoot=list(late))  # tick 0 is due at the start: the first sleep is tick 1's
    timing = fake.loop().run(lambda now: None, ticks=201)
    assert len(timing.index) == 201 and timing.missed_deadlines == 0 and timing.overruns == 0
    np.testing.assert_allclose(np.diff(timing.deadlines), PERIOD, rtol=0, atol=1e-9)  # absolute schedule
    errors = timing.period_errors[1:]
    np.testing.assert_allclose(errors, late, rtol=0, atol=1e-6)  # a few clock readings of 0.1 us each
    s = timing.summary()
    assert s["period_error"]["p50_ms"] == pytest.approx(np.percentile(timing.period_errors, 50) * 1e3)
    assert s["period_error"]["p99_ms"] == pytest.approx(np.percentile(timing.period_errors, 99) * 1e3)
    assert s["period_error"]["max_ms"] == pytest.approx(late.max() * 1e3, abs=1e-3)
    assert s["ticks"] == 201 and s["periods_met"] == 1.0


def test_the_spin_absorbs_a_late_sleep_shorter_than_it() -> None:
    fake = FakeTime(overshoot=[0.1e-3] * 50)  # sleep wakes 0.1 ms late, inside the 0.3 ms spin
    timing = fake.loop(spin_s=0.3e-3).run(lambda now: None, ticks=50)
    assert timing.period_errors.max() < 1e-6


def test_a_slow_tick_is_an_overrun_and_skips_the_deadlines_it_covered() -> None:
    fake = FakeTime()
    work = {3: 2.5 * PERIOD, 8: 0.9 * PERIOD}  # by call number
    calls: list[float] = []

    def fn(now: float) -> None:
        fake.t += work.get(len(calls), 0.0)
        calls.append(now)

    timing = fake.loop().run(fn, ticks=12)
    # tick 3 ran until 5.5 periods: deadline 4 was missed, 5 ran half a period late, then on schedule
    assert list(timing.index) == [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11]
    assert timing.missed_deadlines == 1
    assert timing.overruns == 1  # 0.9 of a period fits
    assert timing.period_errors[4] == pytest.approx(0.5 * PERIOD, abs=1e-5)
    assert np.delete(timing.period_errors, 4).max() < 1e-5
    assert timing.periods_met == pytest.approx(10 / 11)
    assert timing.starts == pytest.approx(calls)  # fn gets the tick's start time


def test_duration_counts_the_deadlines_before_it() -> None:
    timing = FakeTime().loop().run(lambda now: None, duration_s=0.5)
    assert len(timing.index) == 100


def test_stop_event_stops_the_loop() -> None:
    stop = threading.Event()
    fake = FakeTime()
    seen: list[float] = []

    def fn(now: float) -> None:
        if len(seen) == 4:
            stop.set()
        seen.append(now)

    timing = fake.loop().run(fn, ticks=1000, stop_event=stop)
    assert len(timing.index) == 5


def test_stop_event_from_another_thread_on_the_real_clock() -> None:
    stop = threading.Event()
    timer = threading.Timer(0.05, stop.set)
    timer.start()
    timing = RealTimeLoop(HZ).run(lambda now: None, ticks=10**7, stop_event=stop)
    timer.join()
    assert 0 < len(timing.index) < 10**7
    s = timing.summary()
    assert s["period_error"]["p50_ms"] >= 0 and s["compute"]["n"] == len(timing.index)


def test_the_switch_interval_is_restored() -> None:
    import sys

    before = sys.getswitchinterval()
    RealTimeLoop(HZ, switch_interval_s=1e-4).run(lambda now: None, ticks=3)
    assert sys.getswitchinterval() == before


def test_concat_offsets_the_schedule() -> None:
    fake = FakeTime()
    a = fake.loop().run(lambda now: None, ticks=3)
    b = fake.loop().run(lambda now: None, ticks=2)
    both = LoopTiming.concat([a, b])
    assert list(both.index) == [0, 1, 2, 3, 4] and both.missed_deadlines == 0
    with pytest.raises(ValueError, match="different rates"):
        LoopTiming.concat([a, RealTimeLoop(50.0, clock=fake.clock, sleep=fake.sleep, spin_s=0).run(
            lambda now: None, ticks=1)])


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="hz"):
        RealTimeLoop(0)
    with pytest.raises(ValueError, match="spin_s"):
        RealTimeLoop(HZ, spin_s=0.01)
    with pytest.raises(ValueError, match="exactly one"):
        RealTimeLoop(HZ).run(lambda now: None)
    with pytest.raises(ValueError, match="exactly one"):
        RealTimeLoop(HZ).run(lambda now: None, duration_s=1, ticks=1)


def test_gc_control_collects_between_ticks_only_and_restores_the_collector() -> None:
    import gc

    fake = FakeTime()
    seen: list[tuple[bool, int]] = []
    garbage: list[list[object]] = []

    def fn(now: float) -> None:
        seen.append((gc.isenabled(), gc.get_freeze_count()))
        for _ in range(200):  # cyclic garbage, past generation 0's threshold within a few ticks
            cycle: list[object] = []
            cycle.append(cycle)
        garbage.append([])

    assert gc.isenabled()
    loop = RealTimeLoop(HZ, clock=fake.clock, sleep=fake.sleep, spin_s=0, gc_control=True, gc_slack_s=1e-3)
    loop.run(fn, ticks=50)
    assert all(not enabled and frozen > 0 for enabled, frozen in seen)  # no automatic collection in a tick
    assert loop.collections > 0  # the loop collected in the slack after ticks instead
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_gc_control_does_not_collect_without_slack() -> None:
    fake = FakeTime()

    def busy(now: float) -> None:
        for _ in range(200):
            cycle: list[object] = []
            cycle.append(cycle)
        fake.t += 0.9 * PERIOD  # the next deadline is 0.5 ms away: less than the 2 ms a collection may take

    loop = RealTimeLoop(HZ, clock=fake.clock, sleep=fake.sleep, spin_s=0, gc_control=True, gc_slack_s=2e-3)
    loop.run(busy, ticks=50)
    assert loop.collections == 0


def test_rt_priority_runs_the_loop_under_sched_fifo_and_restores_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    calls: list[tuple[int, int]] = []
    during: list[int] = []
    monkeypatch.setattr(os, "sched_getscheduler", lambda pid: os.SCHED_OTHER)
    monkeypatch.setattr(os, "sched_getparam", lambda pid: os.sched_param(0))
    monkeypatch.setattr(os, "sched_setscheduler", lambda pid, policy, param: calls.append(
        (policy, param.sched_priority)))
    fake = FakeTime()
    RealTimeLoop(HZ, clock=fake.clock, sleep=fake.sleep, rt_priority=50).run(
        lambda now: during.append(len(calls)), ticks=3)
    assert calls == [(os.SCHED_FIFO, 50), (os.SCHED_OTHER, 0)]
    assert during == [1, 1, 1]  # FIFO while ticking, the old policy back after


def test_rt_priority_refused_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    def refuse(pid: int, policy: int, param: os.sched_param) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    with pytest.raises(PermissionError, match="rt_priority=50.*CAP_SYS_NICE"):
        RealTimeLoop(HZ, rt_priority=50).run(lambda now: None, ticks=1)
    with pytest.raises(ValueError, match="rt_priority"):
        RealTimeLoop(HZ, rt_priority=0)
    with pytest.raises(ValueError, match="gc_slack_s"):
        RealTimeLoop(HZ, gc_slack_s=0.01)
