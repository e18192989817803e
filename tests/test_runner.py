"""The asynchronous inference runner (robot_policy.runtime.runner): one call in flight, results and worker
exceptions delivered by poll, the injected delay, and a tiny real policy through runner + scheduler + RTC."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from test_rtc import obs_of, tiny_base, tiny_model

from robot_policy.policies.diffusion import ActionPrefix, DiffusionPolicy
from robot_policy.runtime.rtc import rtc_weights
from robot_policy.runtime.runner import AsyncInferenceRunner, chunk_native
from robot_policy.runtime.scheduler import ChunkScheduler, SchedulerConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_result_comes_back_once_with_its_times() -> None:
    with AsyncInferenceRunner(lambda obs: obs * 2) as runner:
        t0 = time.monotonic()
        assert runner.submit(np.ones(3), obs_time=t0 - 0.5)
        result = runner.wait(timeout=5)
        assert result is not None and np.array_equal(result.chunk, [2, 2, 2])
        assert result.obs_time == t0 - 0.5 and t0 <= result.started <= result.finished
        assert result.latency_s == pytest.approx(result.finished - t0 + 0.5) and result.latency_s >= 0.5
        assert runner.poll() is None and not runner.busy  # collected: nothing more


def test_only_one_inference_is_in_flight() -> None:
    release, calls = threading.Event(), []

    def slow(obs: int) -> int:
        calls.append(obs)
        release.wait(5)
        return obs

    with AsyncInferenceRunner(slow) as runner:
        assert runner.submit(1, 0.0)
        assert not runner.submit(2, 0.0) and runner.busy  # running
        assert runner.poll() is None
        release.set()
        deadline = time.monotonic() + 5
        while runner._results.empty() and time.monotonic() < deadline:  # finished, not yet polled
            time.sleep(0.001)
        assert not runner.submit(3, 0.0)  # a finished result is never overwritten before it is polled
        result = runner.poll()
        assert result is not None and result.chunk == 1 and calls == [1]
        assert runner.submit(4, 0.0) and runner.wait(5).chunk == 4  # type: ignore[union-attr]


def test_worker_exceptions_surface_in_poll() -> None:
    def broken(obs: int) -> int:
        if obs < 0:
            raise ValueError(f"bad observation {obs}")
        return obs

    with AsyncInferenceRunner(broken) as runner:
        runner.submit(-1, 0.0)
        with pytest.raises(ValueError, match="bad observation -1"):
            while runner.poll() is None:
                time.sleep(0.001)
        assert not runner.busy and runner.submit(5, 0.0)  # free again after the error was delivered
        assert runner.wait(5).chunk == 5  # type: ignore[union-attr]
        runner.submit(-2, 0.0)
        with pytest.raises(ValueError, match="bad observation -2"):
            runner.wait_idle(5)


def test_injected_delay_delays_the_result() -> None:
    with AsyncInferenceRunner(lambda obs: obs, injected_delay_s=0.2) as runner:
        runner.submit(1, time.monotonic())
        time.sleep(0.05)
        assert runner.poll() is None  # computed, but held back
        result = runner.wait(5)
        assert result is not None and result.inference_s >= 0.2 and result.latency_s >= 0.2
    with AsyncInferenceRunner(lambda obs: obs) as fast:
        fast.submit(1, time.monotonic())
        assert fast.wait(5).inference_s < 0.2  # type: ignore[union-attr]


def test_close_joins_the_worker_and_refuses_new_work() -> None:
    runner = AsyncInferenceRunner(lambda obs: obs)
    runner.submit(1, 0.0)
    runner.close()
    assert not runner._thread.is_alive()
    runner.close()  # idempotent
    with pytest.raises(RuntimeError, match="submit after close"):
        runner.submit(2, 0.0)
    with pytest.raises(TypeError, match="has no predict_chunk and is not callable"):
        AsyncInferenceRunner(3)


def test_torch_threads_are_set_from_the_worker() -> None:
    with AsyncInferenceRunner(lambda obs: torch.get_num_threads(), torch_threads=2) as runner:
        runner.submit(None, 0.0)
        assert runner.wait(5).chunk == 2  # type: ignore[union-attr]
    with AsyncInferenceRunner(lambda obs: torch.is_grad_enabled()) as runner:  # grad mode is per thread
        runner.submit(None, 0.0)
        assert runner.wait(5).chunk is False  # type: ignore[union-attr]


def test_a_tiny_policy_through_runner_scheduler_and_rtc() -> None:
    """The control loop's wiring on a simulated clock: first chunk, then an RTC chunk inferred against the
    queue, whose frozen rows are what the queue was going to run anyway."""
    policy = DiffusionPolicy(tiny_base(tiny_model()))
    policy.reset(seed=0)
    emb, hz = policy.embodiment, policy.embodiment.control_hz
    sched = ChunkScheduler(SchedulerConfig(mode="rtc"))
    with AsyncInferenceRunner(policy, torch_threads=1) as runner:
        assert runner.submit(obs_of(0), obs_time=0.0)
        first = runner.wait(30)
        assert first is not None
        assert sched.add(chunk_native(first.chunk), 0.0, hz, now=0.01) == policy.horizon - 1
        # Next observation at 0.1 s; inference expected to take 60 ms.
        p = sched.prefix_for_next(0.1, policy.horizon, expected_latency_s=0.06)
        assert (p.overlap, p.frozen) == (policy.horizon - 2, 2)
        prefix = ActionPrefix.from_native(p.actions, rtc_weights(policy.horizon, p.frozen, p.overlap), emb)
        assert runner.submit(obs_of(1), obs_time=0.1, prefix=prefix)
        second = runner.wait(30)
    assert second is not None
    rows = chunk_native(second.chunk)  # (Ta, 16)
    assert np.allclose(rows[:2], p.actions[:2], atol=1e-5)
    kept = sched.add(rows, 0.1, hz, now=0.16)
    assert kept == policy.horizon - p.frozen
    assert np.allclose(sched.action_at(0.2), rows[2])  # type: ignore[arg-type]
