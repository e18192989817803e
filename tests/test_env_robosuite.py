"""robosuite_two_arm (TwoArmLift, TwoArmHandover): spec checks, determinism, exact state restore, cameras,
domain randomisation, the scripted experts, config errors.

robosuite builds its scene in seconds, so envs are module fixtures and the long rollouts are marked slow.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from rollouts import run_expert

from robot_policy.envs.check import check_env
from robot_policy.envs.expert import make_expert
from robot_policy.envs.registry import make_env
from robot_policy.envs.robosuite_experts import (
    DEFAULT_NOISE,
    RobosuiteTwoArmExpert,
    grasp_rotation,
    step_toward,
    yaw_matrix,
    yaw_to_perpendicular,
)
from robot_policy.envs.robosuite_tasks import RobosuiteTwoArmEnv
from robot_policy.keys import OBS_OBJECT, OBS_STATE
from robot_policy.spaces.unified import slot

LIFT = "robosuite_two_arm_lift"
HANDOVER = "robosuite_two_arm_handover"
RANDOMIZED = {"object_mass_scale": [0.7, 1.3], "friction_scale": [0.8, 1.2], "object_pos_noise": 0.02,
              "object_yaw_noise": 0.2, "robot_joint_noise": 0.03}


def _make(task: str, **overrides: Any) -> RobosuiteTwoArmEnv:
    env = make_env(task, **overrides)
    assert isinstance(env, RobosuiteTwoArmEnv)
    return env


@pytest.fixture(scope="module")
def lift() -> Iterator[RobosuiteTwoArmEnv]:
    env = _make(LIFT)
    yield env
    env.close()


@pytest.fixture(scope="module")
def lift_randomized() -> Iterator[RobosuiteTwoArmEnv]:
    env = _make(LIFT, randomization=RANDOMIZED)
    yield env
    env.close()


@pytest.fixture(scope="module")
def handover() -> Iterator[RobosuiteTwoArmEnv]:
    env = _make(HANDOVER)
    yield env
    env.close()


# ---- interface ----------------------------------------------------------------------------------
def test_check_env_lift(lift: RobosuiteTwoArmEnv) -> None:
    check_env(lift)


def test_check_env_handover(handover: RobosuiteTwoArmEnv) -> None:
    check_env(handover)


def test_check_env_randomized(lift_randomized: RobosuiteTwoArmEnv) -> None:
    check_env(lift_randomized, seed=3)


def test_observation_layout(lift: RobosuiteTwoArmEnv) -> None:
    obs, _ = lift.reset(seed=2)
    state, obj = obs[OBS_STATE], obs[OBS_OBJECT]
    assert obj.shape == (RobosuiteTwoArmEnv.object_state_dim,)
    # Both Pandas start in robosuite's home pose, so their poses in their own base frames agree.
    for name in ("arm_joint_pos", "eef_pos", "eef_rot6d", "gripper_open"):
        np.testing.assert_allclose(state[slot(f"right_{name}")], state[slot(f"left_{name}")], atol=1e-5)
    eef = state[slot("right_eef_pos")]
    assert 0.3 < eef[0] < 0.6 and abs(eef[1]) < 1e-3  # in front of the arm's base, on its centre line
    rs = lift.robosuite_env
    np.testing.assert_allclose(obj[:3], rs.sim.data.body_xpos[rs.pot_body_id], atol=1e-6)
    np.testing.assert_allclose(obj[9:12], rs.sim.data.site_xpos[rs.handle0_site_id], atol=1e-6)
    # gripper-to-target vectors: target minus grip site
    np.testing.assert_allclose(obj[15:18], obj[9:12] - lift.eef_pose_world(0)[0], atol=1e-6)
    # robot0's handle is the one on its (-y) side
    assert obj[10] < obj[1] < obj[13]


def test_action_round_trip_is_a_hold(lift: RobosuiteTwoArmEnv) -> None:
    """The hold action converts to the current grip-site poses; stepping it barely moves the arms."""
    obs, _ = lift.reset(seed=1)
    hold = lift.current_unified_action()
    for name in ("eef_pos", "eef_rot6d"):
        np.testing.assert_allclose(hold[slot(f"right_{name}")], obs[OBS_STATE][slot(f"right_{name}")], atol=1e-5)
    assert hold[slot("right_gripper_open")][0] == pytest.approx(0.5)  # the finger command's target after reset
    for _ in range(5):
        obs, *_ = lift.step(hold)
    assert np.abs(obs[OBS_STATE][slot("right_eef_pos")] - hold[slot("right_eef_pos")]).max() < 2e-3


def test_gripper_action_is_a_target_opening(lift: RobosuiteTwoArmEnv) -> None:
    """A target opening between open and closed stops the fingers there (robosuite's command is sign-only)."""
    from robot_policy.envs.robosuite_tasks import CLOSE_COMMAND, OPEN_COMMAND, gripper_command

    assert gripper_command(0.08, 0.0) == OPEN_COMMAND and gripper_command(0.0, 0.0) == CLOSE_COMMAND
    assert gripper_command(0.04, 0.0) == 0.0 and gripper_command(0.043, 0.0) == 0.0  # within half a step (4 mm)
    obs, _ = lift.reset(seed=1)
    for target in (0.3, 1.0):
        for _ in range(20):
            action = lift.current_unified_action()
            action[slot("right_gripper_open")] = target
            obs, *_ = lift.step(action)
        assert lift.finger_command(0) == pytest.approx(2 * target - 1, abs=1e-9)
        assert obs[OBS_STATE][slot("right_gripper_open")][0] == pytest.approx(target, abs=0.03)
        assert obs[OBS_STATE][slot("left_gripper_open")][0] == pytest.approx(0.5, abs=0.03)  # held


# ---- determinism and state restore --------------------------------------------------------------
def test_same_seed_same_trajectory(lift_randomized: RobosuiteTwoArmEnv) -> None:
    env = lift_randomized
    actions, observations, _ = run_expert(env, seed=7, steps=25)
    env.reset(seed=8)  # an episode in between must leave nothing behind
    np.random.seed(123)  # nor may anything depend on numpy's global generator
    obs, _ = env.reset(seed=7)
    for action, want in zip(actions, observations):
        obs, *_ = env.step(action)
        np.testing.assert_array_equal(obs[OBS_STATE], want[OBS_STATE])
        np.testing.assert_array_equal(obs[OBS_OBJECT], want[OBS_OBJECT])
    first, _ = env.reset(seed=7)
    second, _ = env.reset(seed=9)
    assert not np.array_equal(first[OBS_OBJECT], second[OBS_OBJECT])


def test_reset_to_mid_grasp_continues_exactly(lift_randomized: RobosuiteTwoArmEnv) -> None:
    """Restore a state taken while the grippers close on the handles, also after another episode with
    other randomised masses and frictions, and replay the following steps."""
    env = lift_randomized
    cut = 30
    actions, observations, _ = run_expert(env, seed=4, steps=cut + 12)
    env.reset(seed=4)
    for action in actions[:cut]:
        env.step(action)
    saved = env.get_state()
    env.reset(seed=5)
    obs = env.reset_to(saved)
    np.testing.assert_allclose(obs[OBS_STATE], observations[cut - 1][OBS_STATE], atol=1e-6)
    np.testing.assert_array_equal(env.get_state(), saved)
    for t in range(cut, len(actions)):
        obs, *_ = env.step(actions[t])
        np.testing.assert_allclose(obs[OBS_STATE], observations[t][OBS_STATE], atol=1e-5)
        np.testing.assert_allclose(obs[OBS_OBJECT], observations[t][OBS_OBJECT], atol=1e-5)


def test_replaying_expert_actions_reproduces_success(lift: RobosuiteTwoArmEnv) -> None:
    actions, _, success = run_expert(lift, seed=5, noise=DEFAULT_NOISE)
    assert success
    lift.reset(seed=5)
    info: dict[str, Any] = {}
    for action in actions:
        _, reward, terminated, _, info = lift.step(action)
    assert info["success"] and terminated and reward == 1.0
    assert len(actions) < 0.75 * lift.task.max_steps  # the time limit leaves a wide margin


@pytest.mark.slow
def test_replaying_handover_reproduces_success(handover: RobosuiteTwoArmEnv) -> None:
    actions, _, success = run_expert(handover, seed=3, noise=DEFAULT_NOISE)
    assert success
    handover.reset(seed=3)
    info: dict[str, Any] = {}
    for action in actions:
        _, _, terminated, _, info = handover.step(action)
    assert info["success"] and terminated
    assert len(actions) < 0.75 * handover.task.max_steps


# ---- cameras ------------------------------------------------------------------------------------
def _project(params: dict[str, np.ndarray], point: np.ndarray) -> tuple[int, int]:
    """World point -> (row, column) pixel through ``camera_params``."""
    cam_t_world = np.linalg.inv(params["world_T_camera"])
    u, v, w = params["K"] @ (cam_t_world[:3, :3] @ point + cam_t_world[:3, 3])
    return int(v / w), int(u / w)


def test_camera_observations(lift: RobosuiteTwoArmEnv) -> None:
    with _make(LIFT, cameras=["agentview"], image_height=48, image_width=64) as env:
        obs, _ = env.reset(seed=5)
        img = obs["images/agentview"]
        assert img.shape == (48, 64, 3) and img.dtype == np.uint8 and img.std() > 0
        # a separate instance of the same scene: cameras change nothing physical
        np.testing.assert_array_equal(obs[OBS_STATE], lift.reset(seed=5)[0][OBS_STATE])
        # Right side up, and camera_params agree with the images: the red pot and the blue handle1 are
        # where they project, and not at the vertically mirrored pixels.
        img = env.render("birdview", 96, 96).astype(int)
        params = env.camera_params("birdview", 96, 96)
        row, col = _project(params, obs[OBS_OBJECT][:3])
        assert img[row, col, 0] > 1.5 * img[row, col, 1] and not img[95 - row, col, 0] > 1.5 * img[95 - row, col, 1]
        row, col = _project(params, obs[OBS_OBJECT][12:15])
        assert img[row, col, 2] > img[row, col, 0] + 30 and not img[95 - row, col, 2] > img[95 - row, col, 0] + 30
    with pytest.raises(ValueError, match="unknown camera"):
        lift.render("wristcam")


# ---- domain randomisation -----------------------------------------------------------------------
def test_randomization_is_applied(lift: RobosuiteTwoArmEnv, lift_randomized: RobosuiteTwoArmEnv) -> None:
    masses, pos_shift = set(), []
    nominal_mass = lift._model.body_mass[lift._object_body]
    for seed in range(3):
        nominal, _ = lift.reset(seed=seed)
        randomized, _ = lift_randomized.reset(seed=seed)
        m = lift_randomized._model.body_mass[lift_randomized._object_body]
        assert 0.7 * nominal_mass <= m <= 1.3 * nominal_mass
        masses.add(round(float(m), 9))
        # same seed, same robosuite placement; the extra noise moves the pot by at most 2 cm in x and y
        shift = randomized[OBS_OBJECT][:2] - nominal[OBS_OBJECT][:2]
        assert np.abs(shift).max() <= 0.02 + 1e-6
        pos_shift.append(np.abs(shift).max())
    assert len(masses) == 3 and max(pos_shift) > 1e-4
    assert lift._model.body_mass[lift._object_body] == nominal_mass  # the nominal env was left alone


# ---- experts ------------------------------------------------------------------------------------
def test_grasp_geometry_helpers() -> None:
    current = np.diag([1.0, -1.0, -1.0])  # pointing down, fingers along +x
    rot = grasp_rotation(np.array([0.0, 1.0, 0.0]), current)
    np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-12)
    assert np.linalg.det(rot) == pytest.approx(1.0)
    np.testing.assert_allclose(rot[:, 2], [0, 0, -1])
    tilted = grasp_rotation(np.array([1.0, 0.0, 0.0]), current, np.pi / 4, np.array([0.0, -1.0, 0.0]))
    np.testing.assert_allclose(tilted[:, 0], [1, 0, 0], atol=1e-12)  # tilting keeps the finger axis
    np.testing.assert_allclose(tilted[:, 2], [0, -np.sqrt(0.5), -np.sqrt(0.5)], atol=1e-12)
    yaw = yaw_to_perpendicular(np.array([1.0, 0.0, 0.0]), np.array([1.0, 1.0, 0.0]))
    assert abs(yaw) <= np.pi / 2
    assert (yaw_matrix(yaw) @ [1.0, 0.0, 0.0]) @ np.array([1.0, 1.0, 0.0]) == pytest.approx(0.0, abs=1e-12)
    pos, mat = step_toward(np.zeros(3), np.eye(3), np.array([1.0, 0.0, 0.0]), yaw_matrix(1.0), 0.1, 0.2)
    np.testing.assert_allclose(pos, [0.1, 0, 0])
    np.testing.assert_allclose(mat, yaw_matrix(0.2), atol=1e-12)


def test_expert_collection_default_and_stages(lift: RobosuiteTwoArmEnv) -> None:
    expert = make_expert(lift)  # noise=None -> the expert's own collection default
    assert isinstance(expert, RobosuiteTwoArmExpert) and expert.noise == DEFAULT_NOISE
    obs, _ = lift.reset(seed=0)
    expert.reset(obs)
    seen = []
    for _ in range(lift.task.max_steps):
        action = expert.act(obs)
        if not seen or seen[-1] != expert.stage_name:
            seen.append(expert.stage_name)
        obs, _, terminated, truncated, _ = lift.step(action)
        if terminated or truncated:
            break
    assert terminated and seen == ["pregrasp", "descend", "close", "lift"]


@pytest.mark.slow
@pytest.mark.parametrize("task,seeds", [(LIFT, range(10)), (HANDOVER, range(10))])
def test_expert_succeeds_on_many_seeds(task: str, seeds: range) -> None:
    with _make(task) as env:
        wins = sum(run_expert(env, seed=s, noise=DEFAULT_NOISE)[2] for s in seeds)
    assert wins >= len(seeds) - 1


# ---- config errors ------------------------------------------------------------------------------
def test_bad_configs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="robosuite_env.*supported.*TwoArmLift"):
        make_env(LIFT, options={"robosuite_env": "TwoArmPegInHole"})
    with pytest.raises(ValueError, match="missing option 'robosuite_env'"):
        make_env(LIFT, options={})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['prehensile'\]"):
        make_env(LIFT, options={"robosuite_env": "TwoArmLift", "prehensile": False})
    with pytest.raises(ValueError, match="model_seed"):
        make_env(LIFT, options={"robosuite_env": "TwoArmLift", "model_seed": -1})
    with pytest.raises(ValueError, match="object_size_scale.*not supported"):
        make_env(LIFT, randomization={"object_size_scale": [0.9, 1.1]})
    with pytest.raises(ValueError, match="unknown camera.*available"):
        make_env(LIFT, cameras=["wristcam"])
    with pytest.raises(ValueError, match="needs exactly"):
        make_env(LIFT, embodiment="panda_bimanual_joint")
    with pytest.raises(ValueError, match="control_hz"):
        make_env(LIFT, control_hz=10)
