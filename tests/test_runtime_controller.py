"""The runtime's controller in process (the ``inproc`` transport): real env, real policies, simulated time.

* the wire layout of an embodiment, and the observation assembled from it equals the env's own;
* malformed messages (unknown or missing joint names, wrong lengths, NaN, a non-rotation) are refused
  whole, and the previous good state stays;
* an episode through the runtime (the scripted expert behind the controller, asynchronous scheme) succeeds;
* a stale observation holds within one control period, with a stop; a policy that returns NaN never
  reaches the arm;
* the in-process schemes are configured as documented.
"""

from __future__ import annotations

import numpy as np
import pytest

from robot_policy.envs.registry import make_env
from robot_policy.eval.policies import load_policy
from robot_policy.keys import OBS_OBJECT, OBS_STATE
from robot_policy.pipelines.runtime_sim import run_runtime_episode, scheme_config
from robot_policy.policies.base import ActionChunk
from robot_policy.runtime.controller import ControllerConfig, PolicyController
from robot_policy.runtime.robot_io import MalformedMessage, ObservationAssembler, RobotInterface
from robot_policy.runtime.runner import SimulatedLatencyRunner
from robot_policy.runtime.watchdog import Mode

TASK = "pybullet_bimanual_lift"


@pytest.fixture(scope="module")
def env():
    e = make_env(TASK)
    yield e
    e.close()


def _interface(env) -> RobotInterface:
    return RobotInterface.from_embodiment(env.embodiment, env.object_state_dim)


def test_the_wire_layout_of_the_bimanual_panda(env) -> None:
    itf = _interface(env)
    assert len(itf.joint_names) == 16
    assert itf.joint_names[:8] == (*(f"right_joint_pos_{i}" for i in range(1, 8)), "right_gripper")
    assert [len(v) for v in itf.arm_joints.values()] == [8, 8]
    assert itf.arms_with_eef == ("left", "right")
    with pytest.raises(ValueError, match="joint_names: 3 names given"):
        RobotInterface.from_embodiment(env.embodiment, 12, joint_names=["a", "b", "c"])


def test_the_assembled_observation_is_the_envs(env) -> None:
    itf = _interface(env)
    obs, _ = env.reset(seed=3)
    for _ in range(5):
        obs, *_ = env.step(env.current_unified_action())
    assembler = ObservationAssembler(itf)
    assert assembler.assemble() is None
    assembler.update_wire(itf.wire_state(obs[OBS_STATE]), obs[OBS_OBJECT], stamp=2.0)
    got = assembler.assemble()
    assert got is not None
    rebuilt, stamp = got
    assert stamp == 2.0
    np.testing.assert_allclose(rebuilt[OBS_STATE], obs[OBS_STATE], atol=1e-5)
    np.testing.assert_array_equal(rebuilt[OBS_OBJECT], obs[OBS_OBJECT])


def test_malformed_messages_are_refused_whole(env) -> None:
    itf = _interface(env)
    obs, _ = env.reset(seed=0)
    wire = itf.wire_state(obs[OBS_STATE])
    assembler = ObservationAssembler(itf)
    assembler.update_wire(wire, obs[OBS_OBJECT], stamp=1.0)
    names = list(itf.joint_names)
    bad = [
        (names[:-1], wire.position[:-1], wire.velocity[:-1], "missing joint"),
        (names, wire.position[:-2], wire.velocity, "16 names but 14 positions"),
        (names, np.where(np.arange(16) == 3, np.nan, wire.position), wire.velocity, "NaN or Inf"),
        ([*names[:-1], names[0]], wire.position, wire.velocity, "repeat"),
    ]
    for n, p, v, message in bad:
        with pytest.raises(MalformedMessage, match=message):
            assembler.update_joints(n, p, v, stamp=2.0)
    with pytest.raises(MalformedMessage, match="not a rotation"):
        assembler.update_eef("right", [0, 0, 0], [0, 0, 0, 0.1], stamp=2.0)
    with pytest.raises(MalformedMessage, match="expected 12 values"):
        assembler.update_object(np.zeros(5), stamp=2.0)
    # the good state from before is what remains, with its stamp
    assert assembler.joint_position is not None
    np.testing.assert_array_equal(assembler.joint_position, wire.position)
    got = assembler.assemble()
    assert got is not None and got[1] == 1.0
    # extra joints of another device on the topic are ignored, order is by name
    order = np.arange(16)[::-1]
    assembler.update_joints([*[names[i] for i in order], "camera_pan"], [*wire.position[order], 0.5],
                            [*wire.velocity[order], 0.0], stamp=3.0)
    np.testing.assert_array_equal(assembler.joint_position, wire.position)


def test_an_episode_through_the_runtime_succeeds_within_limits(env) -> None:
    expert = load_policy("scripted", env)
    result = run_runtime_episode(env, expert, seed=1_000_000, cfg=scheme_config("async"), latency_s=0.0)
    assert result.success, result
    assert result.stats["commands"] > 0
    assert result.stats["filter_rejected_nonfinite"] == 0


class _NaNPolicy:
    """A policy whose chunks turn NaN after ``good`` calls (a broken backend)."""

    horizon = 16
    execute_horizon = 8

    def __init__(self, env, good: int) -> None:
        self.env, self.good, self.calls = env, good, 0

    def predict_chunk(self, obs: dict[str, np.ndarray]) -> ActionChunk:
        self.calls += 1
        hold = np.repeat(self.env.current_unified_action()[None], self.horizon, axis=0)
        if self.calls > self.good:
            hold = hold * np.nan
        return ActionChunk.from_unified(hold, self.env.action_mask, self.env.task.control_hz, self.execute_horizon,
                                        embodiment=self.env.embodiment)


def _controller(env, policy, clock) -> PolicyController:
    itf = _interface(env)
    return PolicyController(policy, itf, ControllerConfig(obs_timeout_s=0.1), clock=clock,
                            runner=SimulatedLatencyRunner(policy, 0.0, clock))


def test_a_stale_observation_holds_within_one_period(env) -> None:
    t = [0.0]
    policy = _NaNPolicy(env, good=1000)
    controller = _controller(env, policy, lambda: t[0])
    itf = controller.interface
    obs, _ = env.reset(seed=0)
    controller.start(0, 0.0)
    dt = controller.dt
    for k in range(10):
        t[0] = k * dt
        controller.assembler.update_wire(itf.wire_state(obs[OBS_STATE]), obs[OBS_OBJECT], t[0])
        controller.tick(t[0])
    assert controller.stats()["mode"] == "run"
    last = 9 * dt
    # observations stop; the first period whose tick sees them older than the timeout holds, with a stop
    k = 10
    while True:
        t[0] = k * dt
        command = controller.tick(t[0])
        if t[0] - last > 0.1:
            break
        assert controller.stats()["mode"] == "run"
        k += 1
    assert controller.stats()["mode"] == "hold" and "stale" in controller.stats()["reason"]
    assert command is not None and command.braking
    assert t[0] - last <= 0.1 + dt  # within one control period of going stale
    controller.close()


def test_a_nan_chunk_never_reaches_the_arm(env) -> None:
    t = [0.0]
    policy = _NaNPolicy(env, good=1)
    controller = _controller(env, policy, lambda: t[0])
    itf = controller.interface
    obs, _ = env.reset(seed=0)
    controller.start(0, 0.0)
    commands = []
    for k in range(40):
        t[0] = k * controller.dt
        controller.assembler.update_wire(itf.wire_state(obs[OBS_STATE]), obs[OBS_OBJECT], t[0])
        if (c := controller.tick(t[0])) is not None:
            commands.append(c)
    assert policy.calls > 1  # the NaN chunks were produced ...
    assert controller.stats()["chunks_rejected_nonfinite"] >= 1  # ... and refused
    assert controller.stats()["mode"] == "hold"  # the queue ran out: the arms hold
    assert commands and all(np.isfinite(c.positions).all() for c in commands)
    controller.close()


def test_schemes_are_configured_as_documented() -> None:
    assert scheme_config("sync").replan == "when_empty"
    assert scheme_config("async").scheduler == "none" and scheme_config("async").replan == "early"
    assert scheme_config("temporal_ensemble").execute_horizon == 1
    assert scheme_config("rtc", execute_horizon=8).scheduler == "rtc"
    with pytest.raises(ValueError, match="unknown 'fast'"):
        scheme_config("fast")
    with pytest.raises(ValueError, match="scheduler: unknown"):
        ControllerConfig(scheduler="blend")
    assert Mode.RUN.value == "run"
