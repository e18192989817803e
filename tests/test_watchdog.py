"""The watchdog's rules, driven step by step on a simulated clock (period 0.05 s, 20 Hz)."""

from __future__ import annotations

import pytest

from robot_policy.runtime.watchdog import Mode, Watchdog, WatchdogConfig

PERIOD = 0.05
CFG = WatchdogConfig(obs_timeout_s=0.2, inference_deadline_s=0.15)


def running(t0: float = 0.0) -> Watchdog:
    """A watchdog in RUN at t0: active, an observation at t0, a chunk planned from it."""
    wd = Watchdog(CFG)
    wd.activate(t0)
    wd.observe(t0)
    wd.chunk_arrived(t0, obs_stamp=t0)
    assert wd.mode(t0, queued=8) == Mode.RUN, wd.reason
    return wd


def test_starts_in_hold_until_active_observed_and_planned() -> None:
    wd = Watchdog(CFG)
    assert wd.mode(0.0, queued=8) == Mode.HOLD and wd.reason == "inactive"
    wd.activate(0.0)
    assert wd.mode(0.0, queued=8) == Mode.HOLD and "no observation" in wd.reason
    wd.observe(0.0)
    assert wd.mode(0.0, queued=8) == Mode.HOLD and "waiting for a chunk" in wd.reason
    wd.chunk_arrived(0.01, obs_stamp=0.0)
    assert wd.mode(0.05, queued=8) == Mode.RUN


def test_stale_observation_holds_within_one_period() -> None:
    wd = running()
    last_obs = 0.0
    t = 0.0
    for k in range(1, 40):
        t = k * PERIOD
        if t < 0.5:  # observations at every period until 0.5 s, then the camera dies
            last_obs = t
            wd.observe(t)
        m = wd.mode(t, queued=8)
        if t - last_obs > CFG.obs_timeout_s:
            break
        assert m == Mode.RUN, (t, wd.reason)
    # the first period at which the observation is older than the timeout is already HOLD ...
    assert m == Mode.HOLD and "stale" in wd.reason
    # ... so HOLD came no later than one period after the observation went stale
    assert t - (last_obs + CFG.obs_timeout_s) <= PERIOD + 1e-12
    assert wd.stats()["run->hold"] == 1
    # fresh observations alone do not resume: the queued chunk was planned before the hold
    wd.observe(t + PERIOD)
    assert wd.mode(t + PERIOD, queued=8) == Mode.HOLD and "waiting for a chunk" in wd.reason
    wd.chunk_arrived(t + PERIOD, obs_stamp=t - 0.3)  # a late chunk from an old observation: not enough
    assert wd.mode(t + PERIOD, queued=8) == Mode.HOLD
    wd.chunk_arrived(t + 2 * PERIOD, obs_stamp=t + PERIOD)
    wd.observe(t + 2 * PERIOD)
    assert wd.mode(t + 2 * PERIOD, queued=8) == Mode.RUN


def test_observation_from_the_future_holds() -> None:
    wd = running()
    wd.observe(1.0)
    assert wd.mode(0.05, queued=8) == Mode.HOLD and "future" in wd.reason


def test_missed_deadline_keeps_executing_then_holds_when_queue_runs_out() -> None:
    wd = running()
    wd.inference_started(0.0)
    queued = 8
    modes = []
    for k in range(1, 12):
        t = k * PERIOD
        wd.observe(t)  # observations stay fresh: only the inference is late
        modes.append(wd.mode(t, queued=queued))
        if t > CFG.inference_deadline_s and queued > 0:
            assert wd.deadline_missed and "deadline missed" in wd.reason
        queued = max(queued - 1, 0)
    # RUN while the queue lasts (8 actions at k = 1..8), HOLD from the period it is empty
    assert modes[:8] == [Mode.RUN] * 8, modes
    assert modes[8:] == [Mode.HOLD] * 3
    assert "queue empty after inference deadline missed" in wd.reason
    assert wd.stats()["deadlines_missed"] == 1
    assert wd.stats()["run->hold"] == 1 and wd.last_mode == Mode.HOLD
    wd.chunk_arrived(0.6, obs_stamp=0.55)  # the late chunk, from an observation after the hold began
    assert not wd.deadline_missed
    assert wd.mode(0.6, queued=8) == Mode.RUN


def test_estop_latched_through_everything_until_reset() -> None:
    wd = running()
    wd.set_estop(True, 0.1)
    assert wd.mode(0.1, queued=8) == Mode.ESTOP
    wd.set_estop(False, 0.15)  # releasing the input is not a reset
    t = 0.2
    for poke in ("observe", "chunk", "deactivate", "activate", "inference"):
        if poke == "observe":
            wd.observe(t)
        elif poke == "chunk":
            wd.chunk_arrived(t, obs_stamp=t)
        elif poke == "deactivate":
            wd.deactivate(t)
        elif poke == "activate":
            wd.activate(t)
        else:
            wd.inference_started(t)
        assert wd.mode(t, queued=8) == Mode.ESTOP, poke
        t += PERIOD
    assert "released; reset() to clear" in wd.reason
    assert wd.reset(t)
    # after the reset: HOLD until a chunk planned from an observation after it
    wd.observe(t)
    assert wd.mode(t, queued=8) == Mode.HOLD
    wd.chunk_arrived(t + PERIOD, obs_stamp=t)
    assert wd.mode(t + PERIOD, queued=8) == Mode.RUN
    assert wd.stats()["run->estop"] == 1 and wd.stats()["estop->hold"] == 1


def test_reset_refused_while_estop_input_asserted() -> None:
    wd = running()
    wd.set_estop(True, 0.1)
    assert not wd.reset(0.2)
    assert "refused" in wd.reason
    assert wd.mode(0.25, queued=8) == Mode.ESTOP
    wd.set_estop(False, 0.3)
    assert wd.reset(0.3)
    assert wd.mode(0.3, queued=8) == Mode.HOLD
    assert wd.stats()["resets_refused"] == 1 and wd.stats()["resets"] == 1


def test_deactivate_holds_and_needs_a_new_plan() -> None:
    wd = running()
    wd.deactivate(0.05)
    wd.observe(0.05)
    assert wd.mode(0.05, queued=8) == Mode.HOLD and wd.reason == "inactive"
    wd.activate(0.1)
    wd.observe(0.1)
    assert wd.mode(0.1, queued=8) == Mode.HOLD and "waiting for a chunk" in wd.reason


def test_bad_inputs_fail_loudly() -> None:
    with pytest.raises(ValueError, match="obs_timeout_s"):
        WatchdogConfig(obs_timeout_s=0.0, inference_deadline_s=0.1)
    wd = running(1.0)
    with pytest.raises(ValueError, match="backwards"):
        wd.mode(0.5, queued=1)
    with pytest.raises(ValueError, match="finite"):
        wd.observe(float("nan"))
