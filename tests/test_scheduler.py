"""The chunk scheduler (robot_policy.runtime.scheduler): timestamps, the arrival rule, the three modes, the fast
command stream and the RTC prefix. Times are plain floats (s); 20 Hz chunks, dt = 0.05 s."""

from __future__ import annotations

import numpy as np
import pytest

from robot_policy.runtime.scheduler import ChunkScheduler, SchedulerConfig

HZ, DT = 20.0, 0.05


def ramp(T: int = 8, start: float = 0.0, n: int = 3) -> np.ndarray:
    """(T, n) rows start + i: row values say which row it is."""
    return np.repeat(start + np.arange(T, dtype=np.float64)[:, None], n, axis=1)


def some(row: np.ndarray | None) -> np.ndarray:
    """A queried action that must exist."""
    assert row is not None
    return row


def sched(mode: str = "none", **kw: float) -> ChunkScheduler:
    return ChunkScheduler(SchedulerConfig(mode=mode, **kw))  # type: ignore[arg-type]


def test_rows_are_stamped_from_the_observation_and_late_ones_dropped() -> None:
    s = sched()
    # Observation at 0, chunk back at 0.12 s: rows at 0, 0.05, 0.10 are due by 0.12 + 10 ms, so dropped.
    assert s.add(ramp(), obs_time=0.0, control_hz=HZ, now=0.12) == 5
    assert s.action_at(0.12) is None  # nothing was queued for the current period: the caller holds
    assert some(s.action_at(0.15))[0] == 3 and some(s.action_at(0.198))[0] == 3 and some(s.action_at(0.2))[0] == 4
    assert some(s.action_at(0.35))[0] == 7 and s.action_at(0.41) is None  # the last row holds one period
    assert s.remaining(0.15) == 4  # rows 4..7 are still ahead
    assert s.remaining(0.5) == 0
    # A tick a hair early (timer jitter, float rounding) still gets its own row.
    assert some(s.action_at(0.2 - 5e-4))[0] == 4
    assert sched(tick_tolerance_s=0.0).action_at(0.2 - 5e-4) is None


def test_the_margin_drops_rows_due_too_soon_to_reach_the_robot() -> None:
    s = sched(latency_margin_s=0.0)
    assert s.add(ramp(), 0.0, HZ, now=0.1) == 5  # row 2 at exactly 0.1 is due: dropped
    assert sched(latency_margin_s=0.06).add(ramp(), 0.0, HZ, now=0.1) == 4


def test_a_chunk_later_than_its_horizon_keeps_its_last_row_on_the_next_step() -> None:
    s = sched()
    assert s.add(ramp(4), 0.0, HZ, now=0.5) == 1 and s.late_chunks == 1
    # next step of the chunk's grid after 0.5 + 0.01: 0.55
    assert s.action_at(0.54) is None and some(s.action_at(0.55))[0] == 3 and s.action_at(0.61) is None


def test_none_replaces_the_queue_from_the_new_chunks_first_kept_row() -> None:
    s = sched()
    s.add(ramp(start=0), 0.0, HZ, now=0.01)  # A: rows 1..7 at 0.05..0.35
    s.add(ramp(start=100), 0.2, HZ, now=0.26)  # B: rows at 0.2, 0.25 due; kept from 0.3
    assert some(s.action_at(0.25))[0] == 5  # still A's
    assert some(s.action_at(0.3))[0] == 102 and some(s.action_at(0.35))[0] == 103  # B's, A's rows there are gone
    assert some(s.action_at(0.55))[0] == 107 and s.remaining(0.3) == 5


def test_rtc_mode_replaces_without_blending() -> None:
    s = sched("rtc")
    s.add(ramp(start=0), 0.0, HZ, now=0.01)
    s.add(ramp(start=100), 0.2, HZ, now=0.26)
    assert some(s.action_at(0.3))[0] == 102 and some(s.action_at(0.25))[0] == 5


@pytest.mark.parametrize("k", [0.01, 1.0])
def test_temporal_ensemble_weights_the_oldest_prediction_most(k: float) -> None:
    s = sched("temporal_ensemble", ensemble_k=k)
    s.add(np.zeros((8, 2)), 0.0, HZ, now=0.01)  # A says 0 until 0.4
    s.add(np.ones((8, 2)), 0.2, HZ, now=0.21)  # B says 1 from 0.25 until 0.6
    assert np.array_equal(some(s.action_at(0.2)), [0, 0])  # only A: B's row at 0.2 was due on arrival
    w = np.exp(-k)  # ACT: exp(-k i), i = 0 the oldest (A)
    assert np.allclose(some(s.action_at(0.3)), w / (1 + w))  # below 1/2: A, the older, weighs more
    assert np.array_equal(some(s.action_at(0.45)), [1, 1])  # A has ended
    assert s.remaining(0.3) == 5  # B reaches furthest: rows at 0.35..0.55


def test_command_stream_interpolates_between_rows() -> None:
    s = sched()
    s.add(ramp(), 0.0, HZ, now=0.01)  # rows 1..7 at 0.05..0.35
    fast = np.arange(0.05, 0.4, 0.005)  # 200 Hz
    got = np.array([some(s.command_at(t))[0] for t in fast])
    expect = np.minimum(fast / DT, 7)  # row i exactly at i * dt, the last row held for its period
    assert np.allclose(got, expect)
    # At the 20 Hz ticks the stream is the 20 Hz actions.
    for t in (0.05, 0.1, 0.35):
        assert np.allclose(some(s.command_at(t)), some(s.action_at(t)))
    assert s.command_at(0.41) is None and s.command_at(0.04) is None


def test_command_stream_crosses_into_a_new_chunk_continuously() -> None:
    s = sched()
    s.add(ramp(start=0), 0.0, HZ, now=0.01)
    s.add(ramp(start=10), 0.17, HZ, now=0.2)  # rows at 0.22, 0.27, ...: off the old grid
    # From A's row 4 at 0.2 to B's row 1 (value 11) at 0.22: a 20 ms segment.
    assert np.isclose(some(s.command_at(0.21))[0], 4 + 0.5 * (11 - 4))
    assert np.isclose(some(s.command_at(0.22))[0], 11)


def test_prefix_for_next_aligns_the_queue_with_a_new_chunk() -> None:
    s = sched("rtc")
    s.add(ramp(), 0.0, HZ, now=0.01)  # rows 1..7 at 0.05..0.35, held until 0.4
    p = s.prefix_for_next(obs_time=0.1, horizon=8, expected_latency_s=0.045)
    assert np.allclose(p.timestamps, 0.1 + np.arange(8) * DT)
    assert p.overlap == 6  # new rows at 0.1 .. 0.35 are queued
    assert np.array_equal(p.actions[:, 0], [2, 3, 4, 5, 6, 7, 7, 7])  # placeholders repeat the last
    assert p.frozen == 2  # rows at 0.10 and 0.15 are due by the chunk's return at 0.145 + 10 ms margin
    # The arrival rule drops exactly the frozen rows of a chunk that took the expected latency.
    assert s.add(ramp(start=100), 0.1, HZ, now=0.145) == 8 - p.frozen
    assert some(s.action_at(0.2))[0] == 102
    empty = sched().prefix_for_next(0.0, 4, control_hz=HZ)
    assert empty.overlap == 0 and empty.frozen == 0 and empty.actions.shape == (4, 0)


def test_bad_inputs_are_loud() -> None:
    with pytest.raises(ValueError, match="scheduler.mode: unknown 'blend'; valid: none, temporal_ensemble, rtc"):
        SchedulerConfig(mode="blend")
    with pytest.raises(ValueError, match="latency_margin_s: must be >= 0, got -1"):
        SchedulerConfig(latency_margin_s=-1)
    s = sched()
    s.add(ramp(n=3), 0.0, HZ, now=0.0)
    with pytest.raises(ValueError, match="4 columns, the queued chunks 3"):
        s.add(ramp(n=4), 0.0, HZ, now=0.0)
    with pytest.raises(ValueError, match="NaN"):
        s.add(np.full((2, 3), np.nan), 0.0, HZ, now=0.0)
    with pytest.raises(ValueError, match="control_hz must be > 0"):
        s.add(ramp(), 0.0, 0.0, now=0.0)
    with pytest.raises(ValueError, match="no chunk queued yet, so pass control_hz"):
        sched().prefix_for_next(0.0, 8)


def test_the_clock_is_used_when_now_is_not_given() -> None:
    s = ChunkScheduler(SchedulerConfig(), clock=lambda: 0.12)
    assert s.add(ramp(), 0.0, HZ) == 5
