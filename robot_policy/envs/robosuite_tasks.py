"""robosuite two-arm tasks (TwoArmLift, TwoArmHandover, two Pandas) behind the ManipulationEnv interface.

One env class, registered as ``robosuite_two_arm``; the task option ``robosuite_env`` picks the robosuite
scene. Importing this module also registers the scripted experts (:mod:`robosuite_experts`).

Control: robosuite's OSC_POSE controller with absolute targets in each arm's base frame
(``input_type: absolute``, ``input_ref_frame: base``), 20 Hz policy rate, 500 Hz physics. Absolute pose
targets were chosen over deltas because (a) the unified action is then a physically interpretable pose,
the same kind a teleop rig records, (b) the controller keeps no goal state between steps (each step's goal
comes from that step's action), so ``reset_to(get_state())`` continues exactly, and (c) replaying recorded
actions does not accumulate drift.

Frames and arms: robot0 is the **right** arm (unified slots 0-49), robot1 the **left** arm (50-99). Each
arm's end-effector pose is the gripper's grip site (between the fingertips) expressed in that arm's base
frame (its link0 frame, which is the OSC's origin), in state and action alike. robosuite's default
"opposed" layout puts robot0 at world y = -0.56 (lift) / -0.81 (handover) facing +y and robot1 mirrored;
as the arms face each other, right/left is a naming convention (robot0 -> right slots), not a view from
behind the arms.

Gripper: the native action is the target finger separation (m, 0 closed .. 0.08 open), the same quantity as
the state, so the unified slot is the target opening in [0, 1] in state and action alike. robosuite's Panda
gripper takes a sign-only command (-1 open, +1 close, 0 keep) that moves its finger command (-1 closed ..
+1 open, the finger actuators' position target) by 0.2 per control step (0.5 s from open to closed); the env
sends the sign that moves the finger command towards the target, and 0 once within half a step of it
(:func:`gripper_command`). So the fingers reach any target opening to within 0.05 (4 mm of separation) at
robosuite's own speed, and an expert commanding 1 and 0 drives robosuite exactly as -1/+1 commands would.

Reset: the MuJoCo model is built once per env (``hard_reset=False``), so the scene geometry is fixed per env
instance; robosuite's construction-time draws (e.g. the hammer's size, density and friction in
TwoArmHandover) come from ``options.model_seed``. Per episode, robosuite's placement sampler and robot
initialisation draw from a generator seeded from the episode rng; the domain randomisation of
:class:`Randomization` is applied on top (see :meth:`RobosuiteTwoArmEnv._reset_sim`).
"""

from __future__ import annotations

import atexit
import copy
import logging
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco
import numpy as np
import robosuite
from robosuite.controllers import load_composite_controller_config
from robosuite.utils.log_utils import ROBOSUITE_DEFAULT_LOGGER

from robot_policy.envs.base import ManipulationEnv, TaskConfig
from robot_policy.envs.registry import register_env
from robot_policy.spaces import rotation as rot

# robosuite logs every controller-config load at INFO; a collection run would print it per env.
ROBOSUITE_DEFAULT_LOGGER.setLevel(logging.WARNING)

#: Arm side of robot0 and robot1, in that order.
ARMS: tuple[str, str] = ("right", "left")
#: Native action fields the env accepts, per arm (see configs/embodiment/robosuite_panda_bimanual_eef.yaml).
ACTION_FIELDS: tuple[str, ...] = ("eef_pos", "eef_rotvec", "gripper")
#: Native state fields the env can produce, per arm; an embodiment may use any subset.
STATE_FIELDS: tuple[str, ...] = ("joint_pos", "gripper", "joint_vel", "eef_pos", "eef_quat")
#: MuJoCo state saved by get_state: qpos, qvel, act, time, constraint warm start, ctrl, applied forces, ...
_MJ_STATE = mujoco.mjtState.mjSTATE_INTEGRATION
_ARM_DOF = 7
_GRIPPER_DOF = 2  # robosuite's Panda gripper keeps a 2-vector of ramped finger commands
#: Finger joint separation (m) at robosuite's fully open finger command (each finger's actuator spans 0.04 m).
GRIPPER_MAX_GAP = 0.08
#: How far robosuite's Panda gripper moves its finger command (range -1 .. +1) per control step.
GRIPPER_SPEED = 0.2
#: robosuite's sign-only gripper commands.
OPEN_COMMAND, CLOSE_COMMAND = -1.0, 1.0


def gripper_command(target_gap: float, finger_command: float) -> float:
    """The sign-only robosuite command that moves a Panda gripper towards a target finger separation.

    Args:
        target_gap: target finger joint separation, m; clipped to [0, ``GRIPPER_MAX_GAP``].
        finger_command: the gripper's current finger command, -1 (closed) .. +1 (open); its actuators hold
            the separation at ``GRIPPER_MAX_GAP * (1 + finger_command) / 2``.

    Returns:
        ``OPEN_COMMAND`` or ``CLOSE_COMMAND`` (one step of ``GRIPPER_SPEED`` towards the target), or 0 (keep)
        when the finger command is within half a step of the target, so it settles instead of chattering.
    """
    target = 2.0 * float(np.clip(target_gap, 0.0, GRIPPER_MAX_GAP)) / GRIPPER_MAX_GAP - 1.0
    error = target - finger_command
    if error > GRIPPER_SPEED / 2:
        return OPEN_COMMAND
    if error < -GRIPPER_SPEED / 2:
        return CLOSE_COMMAND
    return 0.0


def _object_targets_lift(env: Any) -> tuple[np.ndarray, np.ndarray]:
    """TwoArmLift: robot0 grasps handle0, robot1 handle1 (site positions, world frame)."""
    data = env.sim.data
    return np.array(data.site_xpos[env.handle0_site_id]), np.array(data.site_xpos[env.handle1_site_id])


def _object_targets_handover(env: Any) -> tuple[np.ndarray, np.ndarray]:
    """TwoArmHandover: both arms' target is the hammer handle's centre (geom position, world frame)."""
    handle = np.array(env.sim.data.geom_xpos[env.hammer_handle_geom_id])
    return handle, handle.copy()


@dataclass(frozen=True)
class _SceneAdapter:
    """What differs between the robosuite scenes, as data rather than if/else."""

    #: attribute of the robosuite env holding the task object (a MujocoObject)
    object_attr: str
    #: (robot0 target, robot1 target) world positions for ``object_state``
    targets: Callable[[Any], tuple[np.ndarray, np.ndarray]]


_SCENES: dict[str, _SceneAdapter] = {
    "TwoArmLift": _SceneAdapter(object_attr="pot", targets=_object_targets_lift),
    "TwoArmHandover": _SceneAdapter(object_attr="hammer", targets=_object_targets_handover),
}


@dataclass(frozen=True)
class RobosuiteOptions:
    """``task.options`` of a robosuite two-arm task.

    Attributes:
        robosuite_env: robosuite environment name, one of ``TwoArmLift``, ``TwoArmHandover``.
        model_seed: seeds robosuite's construction-time draws (the hammer's geometry in TwoArmHandover);
            the scene geometry is fixed for the env's lifetime.
    """

    robosuite_env: str
    model_seed: int = 0

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str) -> RobosuiteOptions:
        allowed = {"robosuite_env", "model_seed"}
        unknown = set(raw) - allowed
        if unknown:
            raise ValueError(f"{where}: unknown option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        if "robosuite_env" not in raw:
            raise ValueError(f"{where}: missing option 'robosuite_env'; one of {sorted(_SCENES)}")
        opts = cls(**raw)
        if opts.robosuite_env not in _SCENES:
            raise ValueError(f"{where}.robosuite_env: unknown robosuite env {opts.robosuite_env!r}; "
                             f"supported: {sorted(_SCENES)}")
        if not isinstance(opts.model_seed, int) or isinstance(opts.model_seed, bool) or opts.model_seed < 0:
            raise ValueError(f"{where}.model_seed: must be a non-negative integer, got {opts.model_seed!r}")
        return opts


def _controller_config() -> dict[str, Any]:
    """robosuite's default Panda composite controller with its arm OSC switched to absolute base-frame goals."""
    cfg = copy.deepcopy(load_composite_controller_config(robot="Panda"))
    arm = cfg["body_parts"]["right"]
    if arm["type"] != "OSC_POSE":
        raise RuntimeError(f"robosuite's default Panda arm controller is {arm['type']}, expected OSC_POSE")
    arm["input_type"] = "absolute"
    arm["input_ref_frame"] = "base"
    return cfg


def _subtree_bodies(model: mujoco.MjModel, root: int) -> np.ndarray:
    """Ids of ``root`` and every body below it."""
    ids = [b for b in range(model.nbody) if _is_descendant(model, b, root)]
    return np.array(ids, dtype=np.int64)


def _is_descendant(model: mujoco.MjModel, body: int, root: int) -> bool:
    while body != root and body != 0:
        body = int(model.body_parentid[body])
    return body == root


def _close_renderers(renderers: dict[tuple[int, int], mujoco.Renderer]) -> None:
    for renderer in renderers.values():
        renderer.close()
    renderers.clear()


def _yaw_quat_wxyz(yaw: float) -> np.ndarray:
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


@register_env("robosuite_two_arm")
class RobosuiteTwoArmEnv(ManipulationEnv):
    """robosuite TwoArmLift / TwoArmHandover with two Pandas, absolute EE-pose control (see module docstring).

    ``object_state`` (21,), world frame, the same layout for both scenes (from robosuite's object-state
    observables, with the quaternion replaced by a 6D rotation):

    ====== =====================================================================================
    0-2    object position (m): the pot body (TwoArmLift) / the hammer body (TwoArmHandover)
    3-8    object rotation, 6D (first two columns of its rotation matrix)
    9-11   robot0's (right arm's) grasp target (m): pot handle0 site / hammer handle centre
    12-14  robot1's (left arm's) grasp target (m): pot handle1 site / hammer handle centre (again)
    15-17  robot0's target minus its grip-site position (m)
    18-20  robot1's target minus its grip-site position (m)
    ====== =====================================================================================

    Success is robosuite's ``_check_success()``: the pot's bottom more than 0.10 m above the table
    (TwoArmLift); only robot1 grasping the hammer handle, robot0 not touching the hammer, hammer more than
    0.10 m above the table (TwoArmHandover).

    Domain randomisation: ``object_mass_scale`` scales the task object's body masses and inertias,
    ``friction_scale`` its geoms' sliding friction; ``object_pos_noise`` / ``object_yaw_noise`` shift and turn
    the object after robosuite's own placement (uniform, m / rad half-widths); ``robot_joint_noise`` is
    robosuite's uniform initialisation noise on the arm joints (rad half-width). ``object_size_scale`` is
    not supported: robosuite compiles its objects into the model (a ValueError says so).
    """

    object_state_dim = 21
    available_cameras = ("frontview", "agentview", "birdview", "sideview",
                         "robot0_eye_in_hand", "robot1_eye_in_hand")
    moving_cameras = ("robot0_eye_in_hand", "robot1_eye_in_hand")

    def __init__(self, task: TaskConfig) -> None:
        where = f"task {task.name}"
        self.options = RobosuiteOptions.from_dict(dict(task.options), where=f"{where}.options")
        if tuple(task.randomization.object_size_scale) != (1.0, 1.0):
            raise ValueError(f"{where}.randomization.object_size_scale: robosuite compiles its objects into the "
                             f"model, so size scaling is not supported; use (1.0, 1.0), got "
                             f"{task.randomization.object_size_scale}")
        super().__init__(task)
        self._check_embodiment(where)
        self._scene = _SCENES[self.options.robosuite_env]
        self._rs = robosuite.make(
            self.options.robosuite_env,
            robots=["Panda", "Panda"],
            env_configuration="opposed",
            controller_configs=[_controller_config(), _controller_config()],
            initialization_noise={"magnitude": task.randomization.robot_joint_noise, "type": "uniform"},
            has_renderer=False,
            has_offscreen_renderer=False,  # images come from mujoco.Renderer in render()
            use_camera_obs=False,
            use_object_obs=False,  # object features are read from the sim directly in _object_state()
            reward_shaping=False,
            hard_reset=False,  # keep one compiled model: fast resets, and get_state stays valid across episodes
            ignore_done=True,  # the time limit is ours (base.py)
            horizon=2**31 - 1,
            control_freq=task.control_hz,
            seed=self.options.model_seed,
        )
        # Observations are read from the sim directly; robosuite's own observables would be updated on every
        # physics substep for nothing.
        for name in list(self._rs._observables):
            self._rs.modify_observable(name, "enabled", False)
        self._model: mujoco.MjModel = self._rs.sim.model._model
        self._data: mujoco.MjData = self._rs.sim.data._data
        self._init_ids()
        self._mass_scale = 1.0
        self._friction_scale = 1.0
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}
        # Frees the GL contexts when the env is closed or collected (see _renderer for interpreter exit).
        self._free_renderers = weakref.finalize(self, _close_renderers, self._renderers)

    # ---- construction helpers -------------------------------------------------------------------
    def _check_embodiment(self, where: str) -> None:
        want = {f"{side}_{name}" for side in ARMS for name in ACTION_FIELDS}
        have = set(self.embodiment.action.names)
        if have != want:
            raise ValueError(f"{where}: embodiment {self.embodiment.name!r} has action fields {sorted(have)}; "
                             f"robosuite_two_arm needs exactly {sorted(want)} (see "
                             f"configs/embodiment/robosuite_panda_bimanual_eef.yaml)")
        known = {f"{side}_{name}" for side in ARMS for name in STATE_FIELDS}
        unknown = set(self.embodiment.state.names) - known
        if unknown:
            raise ValueError(f"{where}: embodiment {self.embodiment.name!r} has state field(s) {sorted(unknown)} "
                             f"robosuite_two_arm cannot produce; it produces {sorted(known)}")

    def _init_ids(self) -> None:
        m = self._model
        self._robots = list(self._rs.robots)
        self._eef_site = [int(r.eef_site_id["right"]) for r in self._robots]
        # The OSC's origin: the arm's "<prefix>right_center" site at its link0 frame.
        self._base_site = [m.site(f"{r.robot_model.naming_prefix}right_center").id for r in self._robots]
        self._qpos_idx = [np.array(r._ref_joint_pos_indexes) for r in self._robots]
        self._qvel_idx = [np.array(r._ref_joint_vel_indexes) for r in self._robots]
        self._finger_idx = [np.array(r._ref_gripper_joint_pos_indexes["right"]) for r in self._robots]
        obj = getattr(self._rs, self._scene.object_attr)
        self._object = obj
        self._object_body = m.body(obj.root_body).id
        self._object_qpos = m.jnt_qposadr[m.joint(obj.joints[0]).id]
        self._object_bodies = _subtree_bodies(m, self._object_body)
        self._object_geoms = np.flatnonzero(np.isin(m.geom_bodyid, self._object_bodies))
        self._nominal_mass = m.body_mass[self._object_bodies].copy()
        self._nominal_inertia = m.body_inertia[self._object_bodies].copy()
        self._nominal_friction = m.geom_friction[self._object_geoms, 0].copy()

    # ---- accessors for experts and tests --------------------------------------------------------
    @property
    def robosuite_env(self) -> Any:
        """The wrapped robosuite environment (privileged access for scripted experts)."""
        return self._rs

    @property
    def scene(self) -> str:
        """The robosuite environment name, e.g. ``"TwoArmLift"``."""
        return self.options.robosuite_env

    def base_pose(self, arm: int) -> tuple[np.ndarray, np.ndarray]:
        """World pose of arm ``arm``'s base frame (0 = robot0/right, 1 = robot1/left): (3,) m and (3, 3)."""
        sid = self._base_site[arm]
        return self._data.site_xpos[sid].copy(), self._data.site_xmat[sid].reshape(3, 3).copy()

    def eef_pose_world(self, arm: int) -> tuple[np.ndarray, np.ndarray]:
        """World pose of arm ``arm``'s grip site: (3,) m and (3, 3) rotation."""
        sid = self._eef_site[arm]
        return self._data.site_xpos[sid].copy(), self._data.site_xmat[sid].reshape(3, 3).copy()

    def eef_pose_base(self, arm: int) -> tuple[np.ndarray, np.ndarray]:
        """Grip-site pose in the arm's own base frame: (3,) m and (3, 3) rotation."""
        p_b, r_b = self.base_pose(arm)
        p_e, r_e = self.eef_pose_world(arm)
        return r_b.T @ (p_e - p_b), r_b.T @ r_e

    def gripper_gap(self, arm: int) -> float:
        """Finger joint separation of arm ``arm`` (m): 0 closed .. about 0.08 open."""
        q = self._data.qpos[self._finger_idx[arm]]
        return float(q[0] - q[1])

    def finger_command(self, arm: int) -> float:
        """robosuite's finger command of arm ``arm``'s gripper: -1 (closed) .. +1 (open), 0 after a reset."""
        # robosuite resets the command to shape (1,) and keeps (c, -c) for the two fingers after a step.
        return float(np.ravel(self._robots[arm].gripper["right"].current_action)[0])

    # ---- simulator hooks ------------------------------------------------------------------------
    def _reset_sim(self, rng: np.random.Generator) -> None:
        rnd = self.task.randomization
        self._set_object_params(float(rng.uniform(*rnd.object_mass_scale)),
                                float(rng.uniform(*rnd.friction_scale)))
        # robosuite draws placements, the hammer's flip and the robots' init noise from generators it holds;
        # one seeded from our rng makes the episode a function of the reset seed.
        self._seed_robosuite(np.random.default_rng(rng.integers(2**63)))
        self._rs.reset()
        offset = rng.uniform(-1.0, 1.0, 2) * rnd.object_pos_noise
        yaw = float(rng.uniform(-1.0, 1.0)) * rnd.object_yaw_noise
        self._perturb_object(offset, yaw)
        # Controllers cache sim quantities from their construction; make the first step read fresh ones,
        # exactly as after reset_to.
        self._refresh_controllers()
        mujoco.mj_forward(self._model, self._data)

    def _seed_robosuite(self, gen: np.random.Generator) -> None:
        self._rs.rng = gen
        sampler = self._rs.placement_initializer
        sampler.rng = gen
        for obj in sampler.mujoco_objects:
            if hasattr(obj, "rng"):  # HammerObject draws its flip from its own rng
                obj.rng = gen

    def _set_object_params(self, mass_scale: float, friction_scale: float) -> None:
        """Scale the object's masses/inertias and sliding friction from their nominal values."""
        m = self._model
        m.body_mass[self._object_bodies] = self._nominal_mass * mass_scale
        m.body_inertia[self._object_bodies] = self._nominal_inertia * mass_scale
        m.geom_friction[self._object_geoms, 0] = self._nominal_friction * friction_scale
        # Derived constants (subtree masses, inverse weights used by contact softness) follow the masses.
        mujoco.mj_setConst(m, self._data)
        self._mass_scale, self._friction_scale = mass_scale, friction_scale

    def _perturb_object(self, offset_xy: np.ndarray, yaw: float) -> None:
        """Shift the object's free joint by ``offset_xy`` (m, world) and turn it by ``yaw`` (rad, world z)."""
        a = self._object_qpos
        q = self._data.qpos
        q[a:a + 2] += offset_xy
        quat = np.empty(4)
        mujoco.mju_mulQuat(quat, _yaw_quat_wxyz(yaw), q[a + 3:a + 7].copy())
        q[a + 3:a + 7] = quat

    def _refresh_controllers(self) -> None:
        for robot in self._robots:
            for controller in robot.composite_controller.part_controllers.values():
                controller.new_update = True

    def _apply_native_action(self, action: dict[str, np.ndarray]) -> None:
        parts: list[np.ndarray] = []
        for i, side in enumerate(ARMS):
            target_gap = float(np.ravel(action[f"{side}_gripper"])[0])
            command = gripper_command(target_gap, self.finger_command(i))
            parts += [np.ravel(action[f"{side}_eef_pos"]), np.ravel(action[f"{side}_eef_rotvec"]), np.array([command])]
        self._rs.step(np.concatenate(parts))
        # mj_step leaves positions integrated but kinematics from before the last substep; observations,
        # success and rendering read the kinematics, so bring them up to date.
        mujoco.mj_forward(self._model, self._data)

    def _native_state(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        names = set(self.embodiment.state.names)
        for i, side in enumerate(ARMS):
            pos, mat = self.eef_pose_base(i)
            fields = {
                "joint_pos": self._data.qpos[self._qpos_idx[i]].copy(),
                "gripper": np.array([self.gripper_gap(i)]),
                "joint_vel": self._data.qvel[self._qvel_idx[i]].copy(),
                "eef_pos": pos,
                "eef_quat": rot.matrix_to_quat(mat),
            }
            out.update({f"{side}_{k}": v for k, v in fields.items() if f"{side}_{k}" in names})
        return out

    def _object_state(self) -> np.ndarray:
        d = self._data
        pos = d.xpos[self._object_body]
        r6 = rot.matrix_to_rot6d(d.xmat[self._object_body].reshape(3, 3))
        t0, t1 = self._scene.targets(self._rs)
        g0, g1 = d.site_xpos[self._eef_site[0]], d.site_xpos[self._eef_site[1]]
        return np.concatenate([pos, r6, t0, t1, t0 - g0, t1 - g1])

    def _hold_action(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for i, side in enumerate(ARMS):
            pos, mat = self.eef_pose_base(i)
            out[f"{side}_eef_pos"] = pos
            out[f"{side}_eef_rotvec"] = rot.matrix_to_rotvec(mat)
            # The separation the finger command already targets: gripper_command keeps it (sends 0).
            out[f"{side}_gripper"] = np.array([GRIPPER_MAX_GAP * (1.0 + self.finger_command(i)) / 2.0])
        return out

    def is_success(self) -> bool:
        return bool(self._rs._check_success())

    # ---- state save / restore -------------------------------------------------------------------
    def _get_sim_state(self) -> np.ndarray:
        """[MuJoCo integration state, per robot: gripper command (2), OSC nullspace posture (7),
        mass scale, friction scale]."""
        phys = np.empty(mujoco.mj_stateSize(self._model, _MJ_STATE))
        mujoco.mj_getState(self._model, self._data, phys, _MJ_STATE)
        ctrl = []
        for robot in self._robots:
            # robosuite resets the command to shape (1,) and broadcasts it to (2,) on the first step.
            grip = np.broadcast_to(np.asarray(robot.gripper["right"].current_action, dtype=np.float64), (2,))
            ctrl.append(grip)
            ctrl.append(np.asarray(robot.part_controllers["right"].initial_joint, dtype=np.float64))
        return np.concatenate([phys, *ctrl, [self._mass_scale, self._friction_scale]])

    def _set_sim_state(self, state: np.ndarray) -> None:
        n_phys = mujoco.mj_stateSize(self._model, _MJ_STATE)
        n_ctrl = len(self._robots) * (_GRIPPER_DOF + _ARM_DOF)
        if state.shape != (n_phys + n_ctrl + 2,):
            raise ValueError(f"reset_to: simulator state of {self.task.name} has {n_phys + n_ctrl + 2} numbers, "
                             f"got {state.shape}")
        self._set_object_params(float(state[-2]), float(state[-1]))  # mj_setConst scribbles on data: first
        mujoco.mj_setState(self._model, self._data, state[:n_phys], _MJ_STATE)
        at = n_phys
        for robot in self._robots:
            robot.gripper["right"].current_action = state[at:at + _GRIPPER_DOF].copy()
            at += _GRIPPER_DOF
            robot.part_controllers["right"].initial_joint = state[at:at + _ARM_DOF].copy()
            at += _ARM_DOF
        self._refresh_controllers()
        mujoco.mj_forward(self._model, self._data)

    # ---- rendering ------------------------------------------------------------------------------
    def render(self, camera: str | None = None, height: int | None = None,  # type: ignore[override]
               width: int | None = None) -> np.ndarray:
        """(H, W, 3) uint8 RGB from a robosuite camera, row 0 at the top. Defaults: the first available
        camera, the task's image size."""
        camera = self.available_cameras[0] if camera is None else camera
        if camera not in self.available_cameras:
            raise ValueError(f"render: unknown camera {camera!r}; available: {list(self.available_cameras)}")
        h = self.task.image_height if height is None else int(height)
        w = self.task.image_width if width is None else int(width)
        renderer = self._renderer(h, w)
        renderer.update_scene(self._data, camera=camera)
        return renderer.render().copy()

    def camera_params(self, camera: str, height: int, width: int) -> dict[str, np.ndarray]:
        """Pinhole intrinsics ``K`` (3, 3, pixels) and ``world_T_camera`` (4, 4; OpenCV axes: x right, y down,
        z forward) of ``camera`` at the given image size, at the current sim state (the eye-in-hand cameras
        move with the arms), for dataset metadata."""
        if camera not in self.available_cameras:
            raise ValueError(f"unknown camera {camera!r}; available: {list(self.available_cameras)}")
        cam = self._model.camera(camera).id
        f = 0.5 * height / np.tan(np.deg2rad(self._model.cam_fovy[cam]) / 2)  # fovy is vertical, degrees
        k = np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
        pose = np.eye(4)
        # MuJoCo cameras look along -z with y up; OpenCV's look along +z with y down.
        pose[:3, :3] = self._data.cam_xmat[cam].reshape(3, 3) @ np.diag([1.0, -1.0, -1.0])
        pose[:3, 3] = self._data.cam_xpos[cam]
        return {"K": k, "world_T_camera": pose}

    def _renderer(self, height: int, width: int) -> mujoco.Renderer:
        if (height, width) not in self._renderers:
            vis = self._model.vis.global_
            # The offscreen buffer must hold the image; robosuite's models default to 640x480.
            vis.offheight, vis.offwidth = max(vis.offheight, height), max(vis.offwidth, width)
            self._renderers[(height, width)] = mujoco.Renderer(self._model, height, width)
            # MuJoCo registers eglTerminate at exit when it makes its first context; exit handlers run last
            # in, first out, so this one frees our contexts before EGL goes (otherwise: errors at exit).
            atexit.register(self._free_renderers)
        return self._renderers[(height, width)]

    def close(self) -> None:
        """Free the renderers and robosuite's simulation; the env is unusable afterwards. Idempotent."""
        if not self._free_renderers.alive:
            return
        self._free_renderers()
        atexit.unregister(self._free_renderers)
        self._rs.close()
        super().close()


# Registers the scripted experts for "robosuite_two_arm"; at the bottom because they import the env class.
from robot_policy.envs import robosuite_experts  # noqa: F401
