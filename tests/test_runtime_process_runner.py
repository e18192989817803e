"""Inference in a process of its own (robot_policy.runtime.process_runner): the runner's interface as the
thread runner's, the policy's reset and observe forwarded in order, the worker's failures raised here, and
a real checkpoint inferring the same chunk in the process as in this one."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from robot_policy.keys import OBS_STATE
from robot_policy.policies.base import ActionChunk
from robot_policy.runtime.process_runner import InferenceProcessError, ProcessInferenceRunner
from robot_policy.spaces.unified import UNIFIED_DIM

HORIZON = 4


class CountingPolicy:
    """A policy whose chunk reports its state: row 0 holds [seed, observations since reset, obs value]."""

    horizon = HORIZON
    execute_horizon = 2
    embodiment = None

    def __init__(self, fail_on: float | None = None) -> None:
        self.seed, self.seen, self.fail_on = -1, 0, fail_on

    def reset(self, seed: int = 0) -> None:
        self.seed, self.seen = seed, 0

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        self.seen += 1

    def predict_chunk(self, obs: dict[str, np.ndarray], **kwargs: float) -> ActionChunk:
        value = float(obs[OBS_STATE][0])
        if value == self.fail_on:
            raise ValueError(f"cannot infer from {value}")
        self.seen += 1
        unified = np.zeros((HORIZON, UNIFIED_DIM), np.float32)
        unified[0, :4] = [self.seed, self.seen, value, kwargs.get("scale", 1.0)]
        return ActionChunk(unified, np.ones(UNIFIED_DIM, np.float32), np.arange(HORIZON) / 20.0, self.execute_horizon)


def counting_policy(fail_on: float | None = None) -> CountingPolicy:
    return CountingPolicy(fail_on)


def broken_loader() -> CountingPolicy:
    raise FileNotFoundError("no such checkpoint: /nowhere")


def _obs(value: float) -> dict[str, np.ndarray]:
    state = np.zeros(UNIFIED_DIM, np.float32)
    state[0] = value
    return {OBS_STATE: state}


@pytest.fixture(scope="module")
def runner() -> ProcessInferenceRunner:
    with ProcessInferenceRunner(functools.partial(counting_policy, fail_on=13.0), torch_threads=1) as r:
        yield r  # type: ignore[misc]


def test_reset_and_observe_reach_the_worker_in_order_with_the_inference(runner: ProcessInferenceRunner) -> None:
    policy = runner.policy
    assert (policy.horizon, policy.execute_horizon) == (HORIZON, 2)
    policy.reset(7)
    policy.observe(_obs(1.0))
    policy.observe(_obs(2.0))
    assert runner.submit(_obs(3.0), obs_time=100.0, scale=0.5)
    assert runner.busy and not runner.submit(_obs(4.0), obs_time=100.1)  # one in flight
    result = runner.wait(timeout=30)
    assert result is not None and not runner.busy
    assert result.chunk.unified[0, :4].tolist() == [7.0, 3.0, 3.0, 0.5]  # seed, 2 observed + this one, obs, kwarg
    assert result.obs_time == 100.0 and result.started <= result.finished
    assert runner.poll() is None  # collected once
    policy.reset(8)  # a reset after the inference: the next chunk sees only it
    assert runner.submit(_obs(5.0), obs_time=101.0)
    second = runner.wait_idle(timeout=30)
    assert second is not None and second.chunk.unified[0, :3].tolist() == [8.0, 1.0, 5.0]


def test_the_workers_exception_is_raised_by_wait_and_the_runner_is_free_after(runner: ProcessInferenceRunner) -> None:
    assert runner.submit(_obs(13.0), obs_time=0.0)
    with pytest.raises(InferenceProcessError, match="cannot infer from 13.0"):
        runner.wait(timeout=30)
    assert not runner.busy
    assert runner.policy.predict_chunk(_obs(2.0)).unified[0, 2] == 2.0  # the blocking call (warm-up)


def test_a_policy_that_does_not_load_fails_the_constructor() -> None:
    with pytest.raises(InferenceProcessError, match="no such checkpoint: /nowhere"):
        ProcessInferenceRunner(broken_loader)


@pytest.mark.usefixtures("one_torch_thread")
def test_a_checkpoint_infers_the_same_chunk_in_the_process_as_here(tmp_path: Path) -> None:
    from robot_policy.bench.infer import task_inputs
    from robot_policy.bench.runtime import large_checkpoint
    from robot_policy.policies.diffusion import DiffusionPolicy

    path = large_checkpoint("rdt_tiny", "pybullet_bimanual_lift", tmp_path)  # random weights
    obs = task_inputs("pybullet_bimanual_lift", 0).obs
    here = DiffusionPolicy.from_checkpoint(path)
    here.reset(3)
    expected = here.predict_chunk(obs)
    with ProcessInferenceRunner.from_path(str(path), torch_threads=1) as runner:
        assert runner.policy.embodiment.name == here.embodiment.name
        runner.policy.reset(3)
        assert runner.submit(obs, obs_time=0.0)
        result = runner.wait(timeout=120)
    assert result is not None
    np.testing.assert_array_equal(result.chunk.unified, expected.unified)
    assert result.chunk.embodiment is not None and result.chunk.execute_horizon == expected.execute_horizon
