"""pybullet_bimanual_lift: spec checks, determinism, exact restore, the scripted expert, config errors."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pybullet as p
import pytest
from rollouts import run_expert

import robot_policy.envs.pybullet_lift as lift
from robot_policy.envs.check import check_env
from robot_policy.envs.expert import make_expert
from robot_policy.envs.pybullet_lift import PybulletBimanualLift
from robot_policy.envs.pybullet_lift_expert import COLLECT_NOISE, PHASE_STEPS
from robot_policy.envs.registry import make_env
from robot_policy.keys import OBS_OBJECT, OBS_STATE
from robot_policy.spaces.unified import slot

TASK = "pybullet_bimanual_lift"
# control steps after which both grippers hold the handles and the lift is under way
LIFTING = sum(PHASE_STEPS[:2]) + 5


@pytest.fixture(scope="module")
def env() -> Iterator[PybulletBimanualLift]:
    e = make_env(TASK)
    assert isinstance(e, PybulletBimanualLift)
    yield e
    e.close()


@pytest.fixture(scope="module")
def expert_episode(env: PybulletBimanualLift) -> tuple[list[np.ndarray], list[dict[str, np.ndarray]], bool]:
    """One expert episode at the collection noise level, from seed 5: (actions, observations, success)."""
    return run_expert(env, seed=5, noise=COLLECT_NOISE)


def test_tray_inertia_matches_one_long_box() -> None:
    # three equal boxes side by side along x are one box three times as long
    half = np.array([0.05, 0.02, 0.01])
    halves = np.stack([half] * 3)
    centres = np.array([[0.0, 0, 0], [0.1, 0, 0], [-0.1, 0, 0]])
    size = 2 * np.array([0.15, 0.02, 0.01])
    expected = 2.0 / 12.0 * np.array([size[1] ** 2 + size[2] ** 2, size[0] ** 2 + size[2] ** 2,
                                      size[0] ** 2 + size[1] ** 2])
    np.testing.assert_allclose(lift.tray_inertia(halves, centres, 2.0), expected, rtol=1e-12)


def test_check_env_state_obs(env: PybulletBimanualLift) -> None:
    check_env(env)


def test_check_env_with_camera() -> None:
    # TinyRenderer costs ~0.2 s a frame whatever the size (the Panda meshes dominate): keep frames few.
    with make_env(TASK, cameras=["overhead"], image_height=24, image_width=32) as e:
        assert isinstance(e, PybulletBimanualLift)
        check_env(e, steps=1)
        assert e.observation_space.spaces["images/overhead"].shape == (24, 32, 3)  # type: ignore[attr-defined]
        img = e.render("front", 24, 32)
        assert img.shape == (24, 32, 3) and img.dtype == np.uint8 and img.std() > 0
        params = e.camera_params("front", 24, 32)
        assert params["K"].shape == (3, 3) and params["world_T_camera"].shape == (4, 4)


def test_observation_layout(env: PybulletBimanualLift) -> None:
    obs, _ = env.reset(seed=4)
    state, obj = obs[OBS_STATE], obs[OBS_OBJECT]
    assert obj.shape == (PybulletBimanualLift.object_state_dim,)
    pos, quat = p.getBasePositionAndOrientation(env._object, physicsClientId=env._client)
    rot = np.array(p.getMatrixFromQuaternion(quat)).reshape(3, 3)
    np.testing.assert_allclose(obj[:3], pos, atol=1e-6)
    np.testing.assert_allclose(obj[3:9], np.concatenate([rot[:, 0], rot[:, 1]]), atol=1e-6)
    assert obj[9] > obj[10] > obj[11] > 0  # bounding half extents: long along the handles
    # Both arms start in the same joint pose, so their end-effector poses in their own base frames agree.
    for name in ("arm_joint_pos", "eef_pos", "eef_rot6d", "gripper_open"):
        np.testing.assert_allclose(state[slot(f"right_{name}")], state[slot(f"left_{name}")], atol=1e-5)
    assert state[slot("right_gripper_open")][0] == pytest.approx(1.0)  # open: 0.08 m -> 1
    # in the base frame the home grasp point is in front of the robot and above the table
    eef = state[slot("right_eef_pos")]
    assert 0.2 < eef[0] < 0.5 and abs(eef[1]) < 1e-3 and eef[2] > 0.3


def test_same_seed_same_trajectory(env: PybulletBimanualLift) -> None:
    with make_env(TASK) as other:
        assert isinstance(other, PybulletBimanualLift)
        for e in (env, other):
            e.reset(seed=11)
        rng = np.random.default_rng(0)
        for _ in range(15):
            # both envs live in one process; interleaved steps must not leak into each other
            noise = 0.05 * rng.standard_normal(128).astype(np.float32)
            action = env.current_unified_action() + noise * env.action_mask
            a, *_ = env.step(action)
            b, *_ = other.step(action)
            np.testing.assert_array_equal(a[OBS_STATE], b[OBS_STATE])
            np.testing.assert_array_equal(a[OBS_OBJECT], b[OBS_OBJECT])
        np.testing.assert_array_equal(env.get_state(), other.get_state())
    first, _ = env.reset(seed=11)
    second, _ = env.reset(seed=12)
    assert not np.array_equal(first[OBS_OBJECT], second[OBS_OBJECT])


def test_reset_to_mid_grasp_is_exact(env: PybulletBimanualLift, expert_episode: tuple) -> None:
    """The contact-rich part of an episode replays bit for bit, in the same env and in a fresh one."""
    actions, observations, _ = expert_episode
    assert len(actions) > LIFTING + 5
    env.reset(seed=5)
    for action in actions[:LIFTING]:
        env.step(action)
    saved = env.get_state()
    with make_env(TASK) as fresh:
        for target in (env, fresh):
            obs = target.reset_to(saved)
            np.testing.assert_array_equal(obs[OBS_STATE], observations[LIFTING - 1][OBS_STATE])
            np.testing.assert_array_equal(target.get_state(), saved)
            for t in range(LIFTING, len(actions)):
                obs, *_ = target.step(actions[t])
                np.testing.assert_array_equal(obs[OBS_STATE], observations[t][OBS_STATE])
                np.testing.assert_array_equal(obs[OBS_OBJECT], observations[t][OBS_OBJECT])


def test_replaying_expert_actions_reproduces_success(env: PybulletBimanualLift,
                                                      expert_episode: tuple) -> None:
    actions, _, success = expert_episode
    assert success
    env.reset(seed=5)
    info: dict = {}
    for action in actions:
        _, reward, terminated, _, info = env.step(action)
    assert info["success"] and terminated and reward == 1.0
    # the episode ends on its first successful step, well inside the time limit
    assert len(actions) < 0.75 * env.task.max_steps


@pytest.mark.parametrize("seed", [0, 1])
def test_expert_succeeds(env: PybulletBimanualLift, seed: int) -> None:
    _, observations, success = run_expert(env, seed=seed, noise=COLLECT_NOISE)
    assert success
    obj = observations[-1][OBS_OBJECT].astype(np.float64)
    z_axis = np.cross(obj[3:6], obj[6:9])  # third column of the tray's rotation
    assert obj[2] - env._params[3] >= env.options.success_lift_height
    assert np.degrees(np.arccos(min(z_axis[2], 1.0))) <= 15.0


def test_lifting_one_end_is_not_success(env: PybulletBimanualLift) -> None:
    """The task needs both arms: the left arm holding still while the right one lifts its handle fails."""
    obs, _ = env.reset(seed=0)
    expert = make_expert(env, noise=0.0)
    expert.reset(obs)
    left = np.r_[slot("left_arm_joint_pos"), slot("left_gripper_open")]
    hold = env.current_unified_action()
    max_height = 0.0
    for _ in range(sum(PHASE_STEPS) + 20):
        action = expert.act(obs)
        action[left] = hold[left]
        obs, _, _, _, info = env.step(action)
        assert not info["success"]
        max_height = max(max_height, float(obs[OBS_OBJECT][2]))
    expert.close()  # type: ignore[attr-defined]
    assert max_height > env._params[3] + 0.03  # the right arm did lift its end


def test_randomization_is_applied_and_deterministic() -> None:
    rnd = {"object_size_scale": [0.8, 1.2], "object_mass_scale": [0.5, 2.0], "friction_scale": [0.5, 1.5],
           "object_pos_noise": 0.02, "object_yaw_noise": 0.1, "robot_joint_noise": 0.05}
    with make_env(TASK, randomization=rnd) as e, make_env(TASK, randomization=rnd) as twin:
        assert isinstance(e, PybulletBimanualLift) and isinstance(twin, PybulletBimanualLift)
        extents, masses, joints = set(), set(), set()
        for seed in range(4):
            obs, _ = e.reset(seed=seed)
            extents.add(round(float(obs[OBS_OBJECT][9]), 6))
            masses.add(round(p.getDynamicsInfo(e._object, -1, physicsClientId=e._client)[0], 6))
            joints.add(round(float(obs[OBS_STATE][0]), 6))
            twin_obs, _ = twin.reset(seed=seed)
            np.testing.assert_array_equal(obs[OBS_STATE], twin_obs[OBS_STATE])
        assert len(extents) == len(masses) == len(joints) == 4


def test_latency_range_is_drawn_per_episode_without_moving_the_scene() -> None:
    """action_latency_max_steps draws each episode's latency (the queue of held actions) from its own stream:
    the scene's draws stay those of the fixed-latency task, and get_state/reset_to keep the latency."""
    rnd = {"action_latency_steps": 0, "action_latency_max_steps": 3, "object_mass_scale": [0.5, 2.0]}
    with make_env(TASK, randomization=rnd) as e, make_env(TASK, randomization={"object_mass_scale": [0.5, 2.0]}) as fixed:
        latencies = set()
        for seed in range(12):
            obs, _ = e.reset(seed=seed)
            latencies.add(len(e._pending))
            np.testing.assert_array_equal(obs[OBS_OBJECT], fixed.reset(seed=seed)[0][OBS_OBJECT])
        assert latencies == {0, 1, 2, 3}
        e.reset(seed=next(s for s in range(12) if (e.reset(seed=s), len(e._pending))[1] == 3))
        state = e.get_state()
        e.reset(seed=0)
        e.reset_to(state)
        assert len(e._pending) == 3
    with pytest.raises(ValueError, match="action_latency_max_steps"):
        make_env(TASK, randomization={"action_latency_steps": 2, "action_latency_max_steps": 1})


def test_world_rebuild_keeps_trajectories(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rebuilding the world when tray shapes pile up (size randomisation) changes nothing observable."""
    rnd = {"object_size_scale": [0.9, 1.1]}
    with make_env(TASK, randomization=rnd) as reference:
        expected = []
        for seed in range(2):
            reference.reset(seed=seed)
            expected.append([reference.step(reference.current_unified_action())[0][OBS_OBJECT]
                             for _ in range(3)])
    monkeypatch.setattr(lift, "_MAX_OBJECT_SHAPES", 1)
    with make_env(TASK, randomization=rnd) as e:
        for seed in range(2):
            e.reset(seed=seed)
            for want in expected[seed]:
                np.testing.assert_array_equal(e.step(e.current_unified_action())[0][OBS_OBJECT], want)


def test_bad_configs_raise_clear_errors(env: PybulletBimanualLift) -> None:
    with pytest.raises(ValueError, match=r"unknown camera.*available"):
        make_env(TASK, cameras=["wrist"])
    with pytest.raises(ValueError, match="object_size_scale"):
        make_env(TASK, randomization={"object_size_scale": [1.2, 0.8]})
    with pytest.raises(ValueError, match="robot_joint_noise"):
        make_env(TASK, randomization={"robot_joint_noise": -0.1})
    with pytest.raises(ValueError, match=r"unknown option.*lift_heigth"):
        make_env(TASK, options={"lift_heigth": 0.1})
    with pytest.raises(ValueError, match="success_lift_height"):
        make_env(TASK, options={"success_lift_height": 0.0})
    with pytest.raises(ValueError, match="simulator state must have"):
        env.reset_to(np.zeros(10))
    with pytest.raises(ValueError, match="unknown camera"):
        env.render("wrist", 8, 8)


@pytest.mark.slow
def test_expert_success_rate() -> None:
    with make_env(TASK) as e:
        assert isinstance(e, PybulletBimanualLift)
        wins = sum(run_expert(e, seed=seed, noise=COLLECT_NOISE)[2] for seed in range(100, 120))
    assert wins >= 19
