"""``pybullet_bimanual_lift``: two Franka Pandas facing each other across a table lift a handled tray.

Scene (``sim/pybullet_bimanual_lift/scene.yaml``; world frame z up, origin at the table-top centre, the
table top is the plane z = 0):

* **right** arm = the Panda at x = +0.62 m, base yaw pi (it faces -x); it appears on the right of the
  ``front`` camera image. **left** arm = the Panda at x = -0.62 m, base yaw 0 (it faces +x).
* The object is a 1 kg tray: a central block 0.20 x 0.16 x 0.06 m (too wide for the 0.08 m gripper stroke)
  with a thin handle (0.12 m long, 0.025 m square) on each end along the tray's x axis, centred on the end
  faces at mid-height, clear of the table. Each arm grasps the handle nearer its base.

Control (embodiment ``panda_bimanual_joint``, 20 Hz): absolute joint-position targets (rad, clipped to the
spec's limits) for pybullet's position motors, and a finger-gap target in metres (0 closed .. 0.08 open),
split equally between the two fingers. Each control step runs ``control period / timestep`` physics steps
(10 at the scene's 200 Hz). The end-effector is the ``panda_grasptarget`` link (between the fingertips); its
pose is reported in the arm's own base frame.

Success: the tray's centre is at least ``success_lift_height`` (0.10 m) above its resting height, its tilt
(angle between its z axis and world z) is at most ``success_max_tilt`` (15 deg), and each arm holds its
handle: its grasp target lies inside that handle's box grown by ``HOLD_MARGIN`` and its fingers are closed
to within ``HOLD_GAP_MARGIN`` of the handle's width. The last clause is there because pybullet's finger
pads grip generously: one Panda alone can carry the 1 kg tray by one handle with less than 15 deg of tilt,
which a real parallel gripper would not; the clause keeps "lifted level" meaning "lifted by both arms".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pybullet as p
import pybullet_data
import yaml

from robot_policy.envs.base import ManipulationEnv, TaskConfig
from robot_policy.envs.pybullet_lift_expert import BimanualLiftExpert  # noqa: F401  (registers the expert)
from robot_policy.envs.registry import register_env
from robot_policy.paths import SIM_DIR

ARMS: tuple[str, str] = ("right", "left")
#: Panda joints driven by an action: 7 arm joints, then the two finger joints (pybullet joint indices).
ARM_JOINTS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6)
FINGER_JOINTS: tuple[int, int] = (9, 10)
EE_LINK = 11  # panda_grasptarget: between the fingertips, z along the approach direction
GRIPPER_MAX_GAP = 0.08  # m, both fingers fully open (0.04 m each)
#: m a grasp target may lie outside its handle's box and still hold it (success predicate)
HOLD_MARGIN = 0.015
#: m the finger gap may exceed the handle's width while holding it (success predicate)
HOLD_GAP_MARGIN = 0.01
# Collision groups: a robot's links are culled against each other in the broadphase (pybullet would only
# reject those pairs after creating them every step, self-collision being off), everything else collides.
_GROUP_STATIC, _GROUP_OBJECT = 1, 8
_GROUP_ARM = {"right": 2, "left": 4}
_ALL_GROUPS = 1 | 2 | 4 | 8
#: distinct tray sizes kept before the world is rebuilt from scratch (bounds memory under size randomisation)
_MAX_OBJECT_SHAPES = 256


# ---- scene ----------------------------------------------------------------------------------------
def _vec(raw: Any, n: int, where: str, positive: bool = False) -> tuple[float, ...]:
    if not isinstance(raw, (list, tuple)) or len(raw) != n:
        raise ValueError(f"{where}: expected {n} numbers, got {raw!r}")
    out = tuple(float(v) for v in raw)
    if positive and min(out) <= 0:
        raise ValueError(f"{where}: all entries must be > 0, got {raw!r}")
    return out


def _vec3(raw: Any, where: str, positive: bool = False) -> tuple[float, float, float]:
    x, y, z = _vec(raw, 3, where, positive)
    return x, y, z


@dataclass(frozen=True)
class CameraSpec:
    """A fixed camera: eye and target points and up vector in the world frame (m), vertical fov (deg)."""

    eye: tuple[float, float, float]
    target: tuple[float, float, float]
    up: tuple[float, float, float]
    fov_deg: float


@dataclass(frozen=True)
class LiftScene:
    """The parsed scene YAML. Field meanings and units are documented in the YAML itself."""

    timestep: float
    solver_iterations: int
    gravity: float
    table_half_extents: tuple[float, float, float]
    floor_z: float
    table_friction: float
    robot_urdf: str
    base_position: dict[str, tuple[float, float, float]]
    base_yaw: dict[str, float]
    home_joint_pos: tuple[float, ...]
    arm_max_force: tuple[float, ...]
    gripper_max_force: float
    position_gain: float
    body_half_extents: tuple[float, float, float]
    handle_half_extents: tuple[float, float, float]
    object_mass: float
    object_lateral_friction: float
    object_spinning_friction: float
    object_rolling_friction: float
    cameras: dict[str, CameraSpec]

    @classmethod
    def from_yaml(cls, path: Path) -> LiftScene:
        with open(path) as fh:
            raw = yaml.safe_load(fh)
        try:
            return cls._from_dict(raw, str(path))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: missing or malformed entry {e}") from None

    @classmethod
    def _from_dict(cls, raw: dict[str, Any], where: str) -> LiftScene:
        phys, table, robots, obj = raw["physics"], raw["table"], raw["robots"], raw["object"]
        scene = cls(
            timestep=float(phys["timestep"]),
            solver_iterations=int(phys["solver_iterations"]),
            gravity=float(phys["gravity"]),
            table_half_extents=_vec3(table["half_extents"], f"{where}: table.half_extents", True),
            floor_z=float(table["floor_z"]),
            table_friction=float(table["lateral_friction"]),
            robot_urdf=str(robots["urdf"]),
            base_position={a: _vec3(robots[a]["base_position"], f"{where}: robots.{a}.base_position")
                           for a in ARMS},
            base_yaw={a: float(robots[a]["base_yaw"]) for a in ARMS},
            home_joint_pos=_vec(robots["home_joint_pos"], 7, f"{where}: robots.home_joint_pos"),
            arm_max_force=_vec(robots["arm_max_force"], 7, f"{where}: robots.arm_max_force", True),
            gripper_max_force=float(robots["gripper_max_force"]),
            position_gain=float(robots["position_gain"]),
            body_half_extents=_vec3(obj["body_half_extents"], f"{where}: object.body_half_extents", True),
            handle_half_extents=_vec3(obj["handle_half_extents"], f"{where}: object.handle_half_extents",
                                      True),
            object_mass=float(obj["mass"]),
            object_lateral_friction=float(obj["lateral_friction"]),
            object_spinning_friction=float(obj["spinning_friction"]),
            object_rolling_friction=float(obj["rolling_friction"]),
            cameras={name: CameraSpec(eye=_vec3(c["eye"], f"{where}: cameras.{name}.eye"),
                                      target=_vec3(c["target"], f"{where}: cameras.{name}.target"),
                                      up=_vec3(c["up"], f"{where}: cameras.{name}.up"),
                                      fov_deg=float(c["fov_deg"]))
                     for name, c in raw["cameras"].items()},
        )
        for name in ("timestep", "gripper_max_force", "position_gain", "object_mass"):
            if not getattr(scene, name) > 0:
                raise ValueError(f"{where}: {name} must be > 0, got {getattr(scene, name)}")
        if scene.handle_half_extents[1] * 2 >= GRIPPER_MAX_GAP:
            raise ValueError(f"{where}: object.handle_half_extents[1] = {scene.handle_half_extents[1]} m: "
                             f"the handle must be narrower than the {GRIPPER_MAX_GAP} m gripper stroke")
        return scene


# ---- task options ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class LiftOptions:
    """``TaskConfig.options`` of this task.

    Attributes:
        scene: scene YAML, absolute or relative to ``sim/``.
        object_xy_range: nominal initial tray position noise, uniform half-width in x and y (m); the
            randomisation's ``object_pos_noise`` adds to it.
        object_yaw_range: nominal initial tray yaw noise, uniform half-width (rad); ``object_yaw_noise`` adds.
        success_lift_height: how far the tray's centre must rise above its resting height (m).
        success_max_tilt: largest tilt of the tray's z axis from vertical that still counts as level (rad).
    """

    scene: str = "pybullet_bimanual_lift/scene.yaml"
    object_xy_range: float = 0.04
    object_yaw_range: float = math.radians(15.0)
    success_lift_height: float = 0.10
    success_max_tilt: float = math.radians(15.0)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str) -> LiftOptions:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - names
        if unknown:
            raise ValueError(f"task {where}: unknown option(s) {sorted(unknown)}; allowed: {sorted(names)}")
        opts = cls(**raw)
        for name in ("object_xy_range", "object_yaw_range"):
            if getattr(opts, name) < 0:
                raise ValueError(f"task {where}: options.{name} must be >= 0, got {getattr(opts, name)}")
        for name in ("success_lift_height", "success_max_tilt"):
            if not getattr(opts, name) > 0:
                raise ValueError(f"task {where}: options.{name} must be > 0, got {getattr(opts, name)}")
        return opts

    @property
    def scene_path(self) -> Path:
        path = Path(self.scene)
        return path if path.is_absolute() else SIM_DIR / path


# ---- small pure helpers ---------------------------------------------------------------------------
def tray_parts(body_half: np.ndarray, handle_half: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of the tray in its own frame: (3, 3) half extents and (3, 3) centres (m): body, +x, -x handle."""
    dx = body_half[0] + handle_half[0]
    halves = np.stack([body_half, handle_half, handle_half])
    centres = np.array([[0.0, 0.0, 0.0], [dx, 0.0, 0.0], [-dx, 0.0, 0.0]])
    return halves, centres


def tray_inertia(halves: np.ndarray, centres: np.ndarray, mass: float) -> np.ndarray:
    """(3,) principal moments (kg m^2) of solid boxes sharing ``mass`` by volume, about the origin."""
    volumes = np.prod(2 * halves, axis=1)
    masses = mass * volumes / volumes.sum()
    sizes_sq = (2 * halves) ** 2  # (3 boxes, 3 axes)
    own = masses[:, None] / 12.0 * (sizes_sq[:, [1, 0, 0]] + sizes_sq[:, [2, 2, 1]])
    # parallel axis: the boxes sit on the x axis, so only y and z moments pick up m d^2
    shift = masses[:, None] * np.stack([np.zeros(3), centres[:, 0] ** 2, centres[:, 0] ** 2], axis=1)
    return (own + shift).sum(axis=0)


def quat_matrix(quat_xyzw: tuple[float, ...] | np.ndarray) -> np.ndarray:
    """(4,) xyzw quaternion -> (3, 3) rotation matrix."""
    return np.asarray(p.getMatrixFromQuaternion(quat_xyzw), dtype=np.float64).reshape(3, 3)


# ---- the env --------------------------------------------------------------------------------------
@register_env("pybullet_bimanual_lift")
class PybulletBimanualLift(ManipulationEnv):
    """Two Pandas lift a handled tray together (see the module docstring for the scene and frames).

    ``object_state`` (12,), world frame: tray centre position (3, m), tray rotation as 6D (6: first two
    columns of its rotation matrix), half extents of the tray's bounding box (3, m; they change when
    ``object_size_scale`` is randomised). The tray's x axis runs along its handles.

    Flat simulator state (``_get_sim_state``, float64, 69 values): episode parameters (size, mass and
    friction scales, resting height: 4), then per arm (right, left) joint positions (9: arm + two fingers),
    joint velocities (9) and motor targets (8: 7 joints + finger gap), then the tray's position (3),
    quaternion xyzw (4), linear (3) and angular (3) velocity.

    ``reset_to(get_state())`` replays bit for bit, in the same env or a fresh one: pybullet's hidden state
    (contact manifolds, warm-start impulses, sleep timers, the tray's internal orientation) is either
    disabled or reset before every control step, so each step is a function of the flat state alone (see
    ``_set_collision_filters`` and ``_sync_tray``).
    """

    object_state_dim = 12
    available_cameras = ("front", "overhead")
    SIM_STATE_DIM = 4 + 2 * (9 + 9 + 8) + 13

    def __init__(self, task: TaskConfig) -> None:
        self.options = LiftOptions.from_dict(task.options, task.name)
        self.scene = LiftScene.from_yaml(self.options.scene_path)
        missing = set(self.available_cameras) - set(self.scene.cameras)
        if missing:
            raise ValueError(f"{self.options.scene_path}: cameras {sorted(missing)} are not defined")
        super().__init__(task)
        self._n_substeps = round(1.0 / (task.control_hz * self.scene.timestep))
        if abs(self._n_substeps * self.scene.timestep * task.control_hz - 1.0) > 1e-6:
            raise ValueError(f"task {task.name}: physics timestep {self.scene.timestep} s does not divide "
                             f"the control period 1/{task.control_hz} s")
        self._joint_lo = {a: np.array(self.embodiment.arms[a].joint_pos_min) for a in ARMS}
        self._joint_hi = {a: np.array(self.embodiment.arms[a].joint_pos_max) for a in ARMS}
        self._client = p.connect(p.DIRECT)
        self._robots: dict[str, int] = {}
        self._object = -1
        # tray collision shapes by size scale: pybullet cannot free a collision shape, so they are reused,
        # and the world is rebuilt when too many accumulate (randomised sizes make one per episode)
        self._object_shapes: dict[float, int] = {}
        # per-episode draws: size, mass, friction scales and the tray's resting height (m)
        self._params = np.array([1.0, 1.0, 1.0, self.scene.body_half_extents[2]])
        self._command = {a: np.array([*self.scene.home_joint_pos, GRIPPER_MAX_GAP]) for a in ARMS}
        self._cache: dict[str, np.ndarray] | None = None
        # (13,) tray position, xyzw quaternion, linear and angular velocity the tray was last written from;
        # None once a physics step has moved it (see _sync_tray)
        self._tray_written: np.ndarray | None = None
        self._build_world()

    # ---- world construction ---------------------------------------------------------------------
    def _pb(self) -> dict[str, int]:
        return {"physicsClientId": self._client}

    def _build_world(self) -> None:
        s, kw = self.scene, self._pb()
        p.resetSimulation(**kw)
        self._object = -1
        self._object_shapes = {}
        p.setGravity(0, 0, s.gravity, **kw)
        # deterministicOverlappingPairs sorts the broadphase pairs so the solver order never depends on
        # the order bodies were created in: a restored state steps exactly like the original.
        p.setPhysicsEngineParameter(fixedTimeStep=s.timestep, numSolverIterations=s.solver_iterations,
                                    deterministicOverlappingPairs=1, **kw)
        half = s.table_half_extents
        table = p.createMultiBody(
            0.0, p.createCollisionShape(p.GEOM_BOX, halfExtents=half, **kw),
            p.createVisualShape(p.GEOM_BOX, halfExtents=half, rgbaColor=[0.72, 0.6, 0.45, 1], **kw),
            basePosition=[0, 0, -half[2]], **kw)
        p.changeDynamics(table, -1, lateralFriction=s.table_friction, **kw)
        # The floor is a bounded box, not a plane: a plane's infinite AABB would pair every robot link with
        # it in the broadphase and cost a mesh-vs-plane test per link and physics step (~25% of a step).
        floor_half = [3.0, 3.0, 0.05]
        floor = p.createMultiBody(
            0.0, p.createCollisionShape(p.GEOM_BOX, halfExtents=floor_half, **kw),
            p.createVisualShape(p.GEOM_BOX, halfExtents=floor_half, rgbaColor=[0.5, 0.5, 0.5, 1], **kw),
            basePosition=[0, 0, s.floor_z - floor_half[2]], **kw)
        for body in (table, floor):
            p.setCollisionFilterGroupMask(body, -1, _GROUP_STATIC, _ALL_GROUPS ^ _GROUP_STATIC, **kw)
        urdf = str(Path(pybullet_data.getDataPath()) / s.robot_urdf)
        self._base_inv: dict[str, tuple[Any, Any]] = {}
        for arm in ARMS:
            orn = p.getQuaternionFromEuler([0, 0, s.base_yaw[arm]])
            self._robots[arm] = p.loadURDF(urdf, s.base_position[arm], orn, useFixedBase=True, **kw)
            self._base_inv[arm] = p.invertTransform(s.base_position[arm], orn)
            # sleeping keeps a hidden timer per body that a restored state could not reproduce
            for link in range(-1, p.getNumJoints(self._robots[arm], **kw)):
                p.changeDynamics(self._robots[arm], link, activationState=p.ACTIVATION_STATE_DISABLE_SLEEPING,
                                 **kw)
        self._set_collision_filters()
        self._drive_joints = list(ARM_JOINTS + FINGER_JOINTS)
        self._forces = [*s.arm_max_force, s.gripper_max_force, s.gripper_max_force]
        self._gains = [s.position_gain] * len(self._drive_joints)

    def _build_object(self, size_scale: float, mass_scale: float, friction_scale: float) -> None:
        """(Re)create the tray; recreating it also drops its cached contacts."""
        s, kw = self.scene, self._pb()
        if size_scale not in self._object_shapes and len(self._object_shapes) >= _MAX_OBJECT_SHAPES:
            self._build_world()
        if self._object >= 0:
            p.removeBody(self._object, **kw)
        halves, centres = tray_parts(np.array(s.body_half_extents) * size_scale,
                                     np.array(s.handle_half_extents) * size_scale)
        if size_scale not in self._object_shapes:
            self._object_shapes[size_scale] = p.createCollisionShapeArray(
                [p.GEOM_BOX] * 3, halfExtents=halves.tolist(), collisionFramePositions=centres.tolist(), **kw)
        mass = s.object_mass * mass_scale
        # No visual shape: TinyRenderer draws the collision boxes, coloured below.
        self._object = p.createMultiBody(mass, self._object_shapes[size_scale], -1, basePosition=[0, 0, 1],
                                         **kw)
        p.changeDynamics(self._object, -1, localInertiaDiagonal=tray_inertia(halves, centres, mass).tolist(),
                         lateralFriction=s.object_lateral_friction * friction_scale,
                         spinningFriction=s.object_spinning_friction * friction_scale,
                         rollingFriction=s.object_rolling_friction * friction_scale, **kw)
        p.changeDynamics(self._object, -1, activationState=p.ACTIVATION_STATE_DISABLE_SLEEPING, **kw)
        p.changeVisualShape(self._object, -1, rgbaColor=[0.2, 0.45, 0.8, 1], **kw)
        self._set_collision_filters()

    def _set_collision_filters(self) -> None:
        """Put the tray and every robot link in their collision groups (see ``_GROUP_*``).

        Setting a filter re-inserts the body into the broadphase, which drops its cached contact manifolds.
        Doing this before every control step makes each step a function of the flat simulator state alone
        (a restored state has no contact history either), at the price of contacts rebuilding from scratch
        every control step (10 physics steps); expert success and grasp behaviour are unchanged by it.
        """
        kw = self._pb()
        if self._object >= 0:
            p.setCollisionFilterGroupMask(self._object, -1, _GROUP_OBJECT, _ALL_GROUPS ^ _GROUP_OBJECT, **kw)
        for arm, body in self._robots.items():
            for link in range(-1, EE_LINK + 1):
                # the fixed base sits on the table: only the tray may touch it
                mask = _GROUP_OBJECT if link == -1 else _ALL_GROUPS ^ _GROUP_ARM[arm]
                p.setCollisionFilterGroupMask(body, link, _GROUP_ARM[arm], mask, **kw)

    def close(self) -> None:
        # Forget the id once disconnected: pybullet reuses client ids, so a second close (or __del__) must
        # not disconnect a client that now belongs to another env.
        if getattr(self, "_client", -1) >= 0:
            p.disconnect(self._client)
            self._client = -1

    def __del__(self) -> None:
        self.close()

    # ---- simulator hooks ------------------------------------------------------------------------
    def _reset_sim(self, rng: np.random.Generator) -> None:
        r, o = self.task.randomization, self.options
        # Draw everything, always in this order, so a range of zero width does not shift later draws.
        size = rng.uniform(*r.object_size_scale)
        mass = rng.uniform(*r.object_mass_scale)
        friction = rng.uniform(*r.friction_scale)
        xy = rng.uniform(-1.0, 1.0, 2) * (o.object_xy_range + r.object_pos_noise)
        yaw = rng.uniform(-1.0, 1.0) * (o.object_yaw_range + r.object_yaw_noise)
        joint_noise = rng.uniform(-1.0, 1.0, (len(ARMS), 7)) * r.robot_joint_noise
        rest_z = self.scene.body_half_extents[2] * size
        self._params = np.array([size, mass, friction, rest_z])
        self._build_object(size, mass, friction)
        spawn_quat = p.getQuaternionFromEuler([0, 0, yaw])
        self._write_tray(np.array([xy[0], xy[1], rest_z, *spawn_quat, *np.zeros(6)]))
        for i, arm in enumerate(ARMS):
            q = np.clip(np.array(self.scene.home_joint_pos) + joint_noise[i], self._joint_lo[arm],
                        self._joint_hi[arm])
            self._set_arm(arm, np.array([*q, GRIPPER_MAX_GAP / 2, GRIPPER_MAX_GAP / 2]), np.zeros(9))
            self._command[arm] = np.array([*q, GRIPPER_MAX_GAP])
        self._cache = None

    def _set_arm(self, arm: str, q: np.ndarray, qd: np.ndarray) -> None:
        for j, qj, vj in zip(self._drive_joints, q, qd, strict=True):
            p.resetJointState(self._robots[arm], j, float(qj), float(vj), **self._pb())

    def _read_tray(self) -> np.ndarray:
        """(13,) tray position (m), xyzw quaternion, linear (m/s), angular (rad/s) velocity; world frame."""
        if self._tray_written is not None:
            return self._tray_written.copy()
        kw = self._pb()
        pos, quat = p.getBasePositionAndOrientation(self._object, **kw)
        lin, ang = p.getBaseVelocity(self._object, **kw)
        return np.array([*pos, *quat, *lin, *ang])

    def _write_tray(self, x: np.ndarray) -> None:
        kw = self._pb()
        p.resetBasePositionAndOrientation(self._object, x[0:3].tolist(), x[3:7].tolist(), **kw)
        p.resetBaseVelocity(self._object, x[7:10].tolist(), x[10:13].tolist(), **kw)
        self._tray_written = x.copy()

    def _sync_tray(self) -> None:
        """Write the tray's state back through the same path ``_set_sim_state`` uses.

        pybullet stores the base orientation internally and converts it on the way out, so reading a pose and
        writing it back moves it by ~1e-19; contact-rich steps amplify that to millimetres within a few
        control steps. Re-writing the tray from the values ``get_state`` would return, before every control
        step, makes an original run and a restored one start each step from the same internal state.
        """
        self._write_tray(self._read_tray())

    def _apply_native_action(self, action: dict[str, np.ndarray]) -> None:
        kw = self._pb()
        self._sync_tray()
        self._set_collision_filters()
        for arm in ARMS:
            q = np.clip(action[f"{arm}_joint_pos"], self._joint_lo[arm], self._joint_hi[arm])
            gap = min(max(float(action[f"{arm}_gripper"][0]), 0.0), GRIPPER_MAX_GAP)
            self._command[arm] = np.array([*q, gap])
            p.setJointMotorControlArray(self._robots[arm], self._drive_joints, p.POSITION_CONTROL,
                                        targetPositions=[*q.tolist(), gap / 2, gap / 2], forces=self._forces,
                                        positionGains=self._gains, **kw)
        for _ in range(self._n_substeps):
            p.stepSimulation(**kw)
        self._cache = None
        self._tray_written = None

    def _read(self) -> dict[str, np.ndarray]:
        """Native state plus the tray pose, read once per step (observation and success share it)."""
        if self._cache is not None:
            return self._cache
        kw = self._pb()
        out: dict[str, np.ndarray] = {}
        for arm in ARMS:
            body = self._robots[arm]
            joints = p.getJointStates(body, self._drive_joints, **kw)
            link = p.getLinkState(body, EE_LINK, computeForwardKinematics=1, **kw)
            pos, quat = p.multiplyTransforms(*self._base_inv[arm], link[4], link[5])
            out[f"{arm}_joint_pos"] = np.array([j[0] for j in joints[:7]])
            out[f"{arm}_gripper"] = np.array([joints[7][0] + joints[8][0]])
            out[f"{arm}_joint_vel"] = np.array([j[1] for j in joints[:7]])
            out[f"{arm}_eef_pos"] = np.array(pos)
            out[f"{arm}_eef_quat"] = np.array(quat)
            out[f"_{arm}_eef_world"] = np.array(link[4])
        tray = self._read_tray()
        out["_object_pos"] = tray[:3]
        out["_object_rot"] = quat_matrix(tray[3:7])
        self._cache = out
        return out

    def _native_state(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in self._read().items() if not k.startswith("_")}

    def _object_state(self) -> np.ndarray:
        st = self._read()
        rot = st["_object_rot"]
        return np.concatenate([st["_object_pos"], rot[:, 0], rot[:, 1], self.object_half_extents()])

    def _hold_action(self) -> dict[str, np.ndarray]:
        # The last motor targets, not the measured joints: holding the measured position would let the arm
        # sag under gravity and release the grip (the fingers stop at the handle, short of their target).
        out: dict[str, np.ndarray] = {}
        for arm in ARMS:
            out[f"{arm}_joint_pos"] = self._command[arm][:7].copy()
            out[f"{arm}_gripper"] = self._command[arm][7:].copy()
        return out

    def is_success(self) -> bool:
        st = self._read()
        lifted = st["_object_pos"][2] - self._params[3] >= self.options.success_lift_height
        # rot[2, 2] is the cosine of the angle between the tray's z axis and world z
        level = st["_object_rot"][2, 2] >= math.cos(self.options.success_max_tilt)
        return bool(lifted and level and all(self.holds_handle(arm) for arm in ARMS))

    def holds_handle(self, arm: str) -> bool:
        """Whether ``arm`` holds its handle: grasp target inside the handle's box grown by ``HOLD_MARGIN``,
        fingers closed to at most the handle's width plus ``HOLD_GAP_MARGIN``."""
        st = self._read()
        handle_half = np.array(self.scene.handle_half_extents) * self._params[0]
        offset = st["_object_rot"].T @ (st[f"_{arm}_eef_world"] - self.handle_positions()[arm])  # tray frame
        inside = bool(np.all(np.abs(offset) <= handle_half + HOLD_MARGIN))
        return inside and float(st[f"{arm}_gripper"][0]) <= 2 * handle_half[1] + HOLD_GAP_MARGIN

    def _get_sim_state(self) -> np.ndarray:
        kw = self._pb()
        parts = [self._params]
        for arm in ARMS:
            joints = p.getJointStates(self._robots[arm], self._drive_joints, **kw)
            parts += [np.array([j[0] for j in joints]), np.array([j[1] for j in joints]), self._command[arm]]
        parts.append(self._read_tray())
        return np.concatenate(parts).astype(np.float64)

    def _set_sim_state(self, state: np.ndarray) -> None:
        if state.shape != (self.SIM_STATE_DIM,):
            raise ValueError(f"{type(self).__name__}: simulator state must have {self.SIM_STATE_DIM} values, "
                             f"got shape {state.shape}")
        self._params = state[:4].copy()
        self._build_object(*(float(v) for v in self._params[:3]))
        i = 4
        for arm in ARMS:
            q, qd, cmd = state[i:i + 9], state[i + 9:i + 18], state[i + 18:i + 26]
            self._set_arm(arm, q, qd)
            self._command[arm] = cmd.copy()
            i += 26
        self._write_tray(state[i:i + 13])
        self._cache = None

    # ---- rendering ------------------------------------------------------------------------------
    def _camera_matrices(self, camera: str, height: int, width: int) -> tuple[list[float], list[float]]:
        if camera not in self.scene.cameras:
            raise ValueError(f"unknown camera {camera!r}; available: {list(self.available_cameras)}")
        cam = self.scene.cameras[camera]
        view = p.computeViewMatrix(cam.eye, cam.target, cam.up, **self._pb())
        proj = p.computeProjectionMatrixFOV(cam.fov_deg, width / height, 0.05, 5.0, **self._pb())
        return list(view), list(proj)

    def render(self, camera: str | None = None, height: int | None = None,  # type: ignore[override]
               width: int | None = None) -> np.ndarray:
        """(H, W, 3) uint8 RGB image from a fixed world camera, drawn by pybullet's TinyRenderer (CPU)."""
        camera = camera or (self.task.cameras[0] if self.task.cameras else self.available_cameras[0])
        height = height or self.task.image_height
        width = width or self.task.image_width
        view, proj = self._camera_matrices(camera, height, width)
        _, _, rgba, _, _ = p.getCameraImage(width, height, view, proj, renderer=p.ER_TINY_RENDERER,
                                            flags=p.ER_NO_SEGMENTATION_MASK, **self._pb())
        return np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[..., :3].copy()

    def camera_params(self, camera: str, height: int, width: int) -> dict[str, np.ndarray]:
        """Pinhole intrinsics ``K`` (3, 3, pixels) and ``world_T_camera`` (4, 4; OpenCV axes: x right,
        y down, z forward) of ``camera`` at the given image size, for dataset metadata."""
        cam = self.scene.cameras.get(camera)
        if cam is None:
            raise ValueError(f"unknown camera {camera!r}; available: {list(self.available_cameras)}")
        f = 0.5 * height / math.tan(math.radians(cam.fov_deg) / 2)
        k = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]])
        eye, target, up = (np.array(v) for v in (cam.eye, cam.target, cam.up))
        z = (target - eye) / np.linalg.norm(target - eye)
        x = np.cross(z, up)
        x /= np.linalg.norm(x)
        pose = np.eye(4)
        pose[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
        pose[:3, 3] = eye
        return {"K": k, "world_T_camera": pose}

    # ---- privileged accessors for the scripted expert -------------------------------------------
    def object_half_extents(self) -> np.ndarray:
        """(3,) half extents (m) of the tray's bounding box in its own frame, handles included."""
        b, h = np.array(self.scene.body_half_extents), np.array(self.scene.handle_half_extents)
        return np.array([b[0] + 2 * h[0], b[1], b[2]]) * self._params[0]

    def handle_positions(self) -> dict[str, np.ndarray]:
        """World position (m) of the centre of the handle each arm grasps (the one nearer its base)."""
        st = self._read()
        b, h = np.array(self.scene.body_half_extents), np.array(self.scene.handle_half_extents)
        offset = st["_object_rot"][:, 0] * (b[0] + h[0]) * self._params[0]
        ends = [st["_object_pos"] + offset, st["_object_pos"] - offset]
        out = {}
        for arm in ARMS:
            base = np.array(self.scene.base_position[arm])
            out[arm] = min(ends, key=lambda e: float(np.linalg.norm(e[:2] - base[:2]))).copy()
        return out

    def object_yaw(self) -> float:
        """Yaw (rad) of the tray's x axis (along its handles) about world z."""
        rot = self._read()["_object_rot"]
        return math.atan2(rot[1, 0], rot[0, 0])

    def arm_joint_positions(self, arm: str) -> np.ndarray:
        """(7,) measured joint positions (rad) of ``arm``, without observation noise."""
        return self._read()[f"{arm}_joint_pos"].copy()

    def base_pose(self, arm: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """World pose of ``arm``'s base: position (m) and xyzw quaternion."""
        quat = p.getQuaternionFromEuler([0, 0, self.scene.base_yaw[arm]])
        return self.scene.base_position[arm], tuple(quat)

    def ee_pose_world(self, arm: str) -> tuple[np.ndarray, np.ndarray]:
        """World pose of ``arm``'s grasp target: position (3, m) and xyzw quaternion (4,)."""
        link = p.getLinkState(self._robots[arm], EE_LINK, computeForwardKinematics=1, **self._pb())
        return np.array(link[4]), np.array(link[5])
