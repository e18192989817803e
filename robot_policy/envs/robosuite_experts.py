"""Scripted experts for the robosuite two-arm tasks (registered for env key ``robosuite_two_arm``).

The expert reads the simulator (object poses, the hammer's geometry), plans a short sequence of stages in
the world frame, and drives a *commanded* grip-site pose per arm towards each stage's goal at a bounded
linear and angular speed. The command is turned into the unified action (absolute pose in the arm's base
frame + target gripper opening, 1 open .. 0 closed) through the env's embodiment, so recorded actions are
exactly what a learned policy must output.

``noise`` (metres, >= 0; 0 = noiseless; the constructor's default, ``DEFAULT_NOISE`` = 0.005 m, is the
collection setting that ``make_expert(env, noise=None)`` picks):
  * per episode: each grasp point is shifted along the grasped bar/handle by N(0, noise) m (clipped to
    +-2 noise, and to at most 1 cm towards the end of the hammer's handle), so demonstrations grasp at
    slightly different places;
  * per step: the *sent* pose is jittered around the plan by N(0, noise) m per axis and by a rotation
    vector of N(0, 2 noise) rad per axis; the jitter is not fed back into the plan, so the demonstrations
    show corrections back to it. The jittered command is what gets executed and recorded (unlike DART,
    which records the clean command as the label).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from robot_policy.envs.base import Obs
from robot_policy.envs.expert import ScriptedExpert, register_expert
from robot_policy.envs.robosuite_tasks import ARMS, GRIPPER_SPEED, RobosuiteTwoArmEnv

#: ``noise`` for demonstration collection (m); the expert's default.
DEFAULT_NOISE = 0.005
#: Target gripper openings (the unified gripper slot): fully open, closed.
OPEN, CLOSE = 1.0, 0.0
#: Control steps the Panda gripper needs to ramp its finger command fully from open to closed (range 2).
GRIPPER_RAMP_STEPS = round(2.0 / GRIPPER_SPEED)
_UP = np.array([0.0, 0.0, 1.0])


# ---- pure geometry helpers ------------------------------------------------------------------------
def horizontal_unit(v: np.ndarray) -> np.ndarray:
    """(3,) -> the unit vector of v's projection on the world xy plane."""
    h = np.array([v[0], v[1], 0.0])
    n = np.linalg.norm(h)
    if n < 1e-9:
        raise ValueError(f"horizontal_unit: {v} has no horizontal component")
    return h / n


def grasp_rotation(finger_axis: np.ndarray, current: np.ndarray, tilt: float = 0.0,
                   tilt_toward: np.ndarray | None = None) -> np.ndarray:
    """(3, 3) world rotation of a grip site whose fingers close along the horizontal ``finger_axis`` and whose
    approach axis points down, tilted by ``tilt`` rad towards the horizontal ``tilt_toward`` (a rotation about
    the finger axis, so a bar perpendicular to the fingers stays between them). Of the two finger-axis
    signs, the one nearer the ``current`` (3, 3) rotation's finger axis.

    For robosuite's Panda gripper the fingers slide along the grip site's x axis and the site's z axis
    points out of the fingertips (the approach direction).
    """
    x = horizontal_unit(finger_axis)
    if x @ current[:, 0] < 0:
        x = -x
    z = -_UP
    if tilt != 0.0:
        if tilt_toward is None:
            raise ValueError("grasp_rotation: a tilt needs tilt_toward")
        toward = horizontal_unit(tilt_toward - (tilt_toward @ x) * x)
        z = -np.cos(tilt) * _UP + np.sin(tilt) * toward
    return np.stack([x, np.cross(z, x), z], axis=1)


def yaw_matrix(yaw: float) -> np.ndarray:
    """(3, 3) rotation by ``yaw`` rad about the world z axis."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def yaw_to_perpendicular(finger_axis: np.ndarray, bar: np.ndarray) -> float:
    """Smallest yaw (rad, in [-pi/2, pi/2]) turning the horizontal ``finger_axis`` to lie across the
    horizontal ``bar`` (either finger direction will do)."""
    target = horizontal_unit(np.cross(_UP, bar))
    x = horizontal_unit(finger_axis)
    yaw = float(np.arctan2(np.cross(x, target)[2], x @ target))
    return float((yaw + np.pi / 2) % np.pi - np.pi / 2)


def step_toward(pos: np.ndarray, mat: np.ndarray, goal_pos: np.ndarray, goal_mat: np.ndarray,
                max_lin: float, max_ang: float) -> tuple[np.ndarray, np.ndarray]:
    """Move a pose towards a goal by at most ``max_lin`` m and ``max_ang`` rad (shortest rotation)."""
    d = goal_pos - pos
    dist = np.linalg.norm(d)
    new_pos = goal_pos.copy() if dist <= max_lin else pos + d * (max_lin / dist)
    rv = Rotation.from_matrix(goal_mat @ mat.T).as_rotvec()
    ang = np.linalg.norm(rv)
    if ang <= max_ang:
        return new_pos, goal_mat.copy()
    return new_pos, Rotation.from_rotvec(rv * (max_ang / ang)).as_matrix() @ mat


def rotation_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Angle (rad) of the rotation between two (3, 3) rotation matrices."""
    return float(np.linalg.norm(Rotation.from_matrix(a @ b.T).as_rotvec()))


# ---- stages ---------------------------------------------------------------------------------------
@dataclass
class ArmGoal:
    """Where one arm's commanded grip site should go: world position (m), world rotation (3, 3), and the
    target gripper opening (1 open .. 0 closed)."""

    pos: np.ndarray
    rot: np.ndarray
    grip: float


#: A stage's planner returns a goal per arm (None = that arm keeps its goal); it runs when the stage starts,
#: and on every step of a ``track`` stage.
Planner = Callable[[], tuple[ArmGoal | None, ArmGoal | None]]


@dataclass
class Stage:
    """One step of a plan. It ends when the commands of the arms it moves have reached their goals, those
    arms' real grip sites are within ``tol`` of them and at least ``min_steps`` have passed, or after
    ``max_steps``. The last stage of a plan lasts until the episode ends."""

    name: str
    plan: Planner
    min_steps: int = 0
    max_steps: int = 40
    lin_speed: float = 0.5  # m/s cap on the commanded motion
    ang_speed: float = 2.5  # rad/s
    tol: float | None = 0.01  # m; None = do not wait for the real grip sites
    track: bool = False  # re-run the planner every step (follow a moving object) instead of once


def _grasp_offset(rng: np.random.Generator, noise: float) -> float:
    return float(np.clip(rng.normal(0.0, noise), -2 * noise, 2 * noise)) if noise > 0 else 0.0


class _LiftPlan:
    """TwoArmLift: each gripper goes over its pot handle (fingers across the bar), down, closes; both lift."""

    pregrasp_height = 0.10  # m above the grasp point
    lift_height = 0.20  # m; success needs the pot 0.10 m up, the rest is margin for sag and slip

    def __init__(self, env: RobosuiteTwoArmEnv, cmd: list[tuple[np.ndarray, np.ndarray]],
                 rng: np.random.Generator, noise: float) -> None:
        self.env, self.cmd = env, cmd
        self.offsets = [_grasp_offset(rng, noise) for _ in ARMS]
        self.grasp: list[ArmGoal] = []

    def stages(self) -> list[Stage]:
        return [
            Stage("pregrasp", self._pregrasp, max_steps=50, lin_speed=0.6),
            Stage("descend", self._descend, lin_speed=0.4),
            Stage("close", self._close, min_steps=GRIPPER_RAMP_STEPS + 2, tol=None),
            Stage("lift", self._lift, max_steps=60, lin_speed=0.25),
            Stage("hold", lambda: (None, None)),  # the last stage lasts until the episode ends
        ]

    def _pregrasp(self) -> tuple[ArmGoal, ArmGoal]:
        rs = self.env.robosuite_env
        pot_rot = rs.sim.data.body_xmat[rs.pot_body_id].reshape(3, 3)
        bar, across = pot_rot[:, 0], pot_rot[:, 1]  # handle bars run along the pot's x axis
        handles = [rs.sim.data.site_xpos[rs.handle0_site_id], rs.sim.data.site_xpos[rs.handle1_site_id]]
        self.grasp = []
        for i in range(2):
            pos = np.array(handles[i]) + self.offsets[i] * horizontal_unit(bar)
            self.grasp.append(ArmGoal(pos, grasp_rotation(across, self.cmd[i][1]), OPEN))
        return self._shifted(self.pregrasp_height, OPEN)

    def _shifted(self, dz: float, grip: float) -> tuple[ArmGoal, ArmGoal]:
        a, b = (ArmGoal(g.pos + dz * _UP, g.rot, grip) for g in self.grasp)
        return a, b

    def _descend(self) -> tuple[ArmGoal, ArmGoal]:
        return self._shifted(0.0, OPEN)

    def _close(self) -> tuple[ArmGoal, ArmGoal]:
        return self._shifted(0.0, CLOSE)

    def _lift(self) -> tuple[ArmGoal, ArmGoal]:
        return self._shifted(self.lift_height, CLOSE)


class _HandoverPlan:
    """TwoArmHandover: robot0 (right) picks the hammer up by one end of its handle, turns it so the handle
    points at robot1 and holds it up between the arms; robot1 (left) grasps the free end of the handle;
    robot0 lets go and backs off.

    robot0 grasps whichever end of the handle ends up on its own side after the turn (the turn is at most
    90 degrees), so the end facing robot1 is always free. The grasp points are only about 0.09 m apart, less
    than the Pandas' wrists are wide, so robot1 approaches tilted about its finger axis, wrist leaning back
    towards its own base (a tilt about the finger axis keeps a bar across the fingers). robot0 stays
    vertical: tilting it would tilt the hammer it holds, and near its base on the table it cannot lean back.
    """

    pregrasp_distance = 0.10  # m back along the approach axis
    handover_height = 0.26  # m above the table for the handle; success needs the hammer about 0.19 m up
    handover_y = 0.0  # m, world y of the handle centre at the handover (halfway between the arms)
    hand_margin = 0.025  # m from a handle end to a grasp point
    take_tilt = np.deg2rad(45.0)  # rad, robot1's approach tilt at the handover

    def __init__(self, env: RobosuiteTwoArmEnv, cmd: list[tuple[np.ndarray, np.ndarray]],
                 rng: np.random.Generator, noise: float) -> None:
        self.env, self.cmd = env, cmd
        rs = env.robosuite_env
        self.half = max(rs.hammer.handle_length / 2 - self.hand_margin, 0.02)  # grasp distance from centre
        # Shifts along the handle (signed towards the handle's end): at most 1 cm outwards, so the finger
        # pads stay on the handle.
        self.offsets = [min(_grasp_offset(rng, noise), 0.01) for _ in ARMS]
        self.table_z = float(rs.sim.data.site_xpos[rs.table_top_id][2])
        # Handover grips: fingers across world y (the handle will point from robot0 to robot1).
        x_axis, y_axis = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
        self.present_rot = grasp_rotation(x_axis, cmd[0][1])
        self.take_rot = grasp_rotation(x_axis, cmd[1][1], self.take_tilt, -y_axis)
        self.grasp0: ArmGoal | None = None
        self.grasp1: ArmGoal | None = None

    def stages(self) -> list[Stage]:
        return [
            Stage("reach", self._reach, max_steps=80, lin_speed=0.5, ang_speed=1.2),
            Stage("descend", self._descend, lin_speed=0.4),
            Stage("close", self._close, min_steps=GRIPPER_RAMP_STEPS + 2, tol=None),
            Stage("lift", self._lift, lin_speed=0.4),
            Stage("present", self._present, min_steps=4, max_steps=50, lin_speed=0.5),
            Stage("reach2", self._reach2, max_steps=40, lin_speed=0.5, track=True),
            Stage("descend2", self._descend2, lin_speed=0.3, track=True),
            Stage("close2", self._close2, min_steps=GRIPPER_RAMP_STEPS + 2, tol=None),
            Stage("release", self._release, min_steps=GRIPPER_RAMP_STEPS, tol=None),
            Stage("retreat", self._retreat),  # last: lasts until the episode ends
        ]

    def _hammer(self) -> tuple[np.ndarray, np.ndarray]:
        """Handle centre (3,) and the unit axis from handle to head (3,), world frame."""
        rs = self.env.robosuite_env
        centre = np.array(rs.sim.data.geom_xpos[rs.hammer_handle_geom_id])
        axis = rs.sim.data.body_xmat[rs.hammer_body_id].reshape(3, 3)[:, 2]  # handle runs along body z
        return centre, axis

    @staticmethod
    def _back(goal: ArmGoal, distance: float, grip: float) -> ArmGoal:
        """``goal`` moved ``distance`` m back along its approach axis."""
        return ArmGoal(goal.pos - distance * goal.rot[:, 2], goal.rot, grip)

    # -- robot0 picks the hammer up --------------------------------------------------------------
    def _reach(self) -> tuple[ArmGoal, ArmGoal]:
        centre, axis = self._hammer()
        # Grasp with the handover grip turned by a yaw, so presenting is that yaw undone: the handle
        # stays level and ends up along y.
        yaw = yaw_to_perpendicular(self.present_rot[:, 0], axis)
        grasp_rot = yaw_matrix(yaw) @ self.present_rot
        head_to_robot1 = (yaw_matrix(-yaw) @ axis)[1] > 0
        s0 = (-1.0 if head_to_robot1 else 1.0) * (self.half + self.offsets[0])
        self.grasp0 = ArmGoal(centre + s0 * axis, grasp_rot, OPEN)  # the hammer lies flat: axis is level
        ready = ArmGoal(np.array([0.0, self.handover_y + self.half, self.table_z + self.handover_height]),
                        self.take_rot, OPEN)
        return self._back(self.grasp0, self.pregrasp_distance, OPEN), self._back(ready, 0.15, OPEN)

    def _descend(self) -> tuple[ArmGoal, None]:
        assert self.grasp0 is not None
        return self._back(self.grasp0, 0.0, OPEN), None

    def _close(self) -> tuple[ArmGoal, None]:
        assert self.grasp0 is not None
        return self._back(self.grasp0, 0.0, CLOSE), None

    def _lift(self) -> tuple[ArmGoal, None]:
        assert self.grasp0 is not None
        return ArmGoal(self.grasp0.pos + 0.15 * _UP, self.grasp0.rot, CLOSE), None

    def _present(self) -> tuple[ArmGoal, None]:
        pos = np.array([0.0, self.handover_y - self.half, self.table_z + self.handover_height])
        return ArmGoal(pos, self.present_rot, CLOSE), None

    # -- robot1 takes it -------------------------------------------------------------------------
    def _take_grasp(self) -> ArmGoal:
        """robot1's grasp on the handle end on its own (+y) side, from the hammer's current pose."""
        centre, axis = self._hammer()
        towards_robot1 = np.sign(axis[1])
        s1 = towards_robot1 * (self.half + self.offsets[1])
        rot = grasp_rotation(np.cross(_UP, axis), self.take_rot, self.take_tilt, -towards_robot1 * axis)
        self.grasp1 = ArmGoal(centre + s1 * axis, rot, OPEN)
        return self.grasp1

    def _reach2(self) -> tuple[None, ArmGoal]:
        return None, self._back(self._take_grasp(), self.pregrasp_distance, OPEN)

    def _descend2(self) -> tuple[None, ArmGoal]:
        return None, self._back(self._take_grasp(), 0.0, OPEN)

    def _close2(self) -> tuple[None, ArmGoal]:
        assert self.grasp1 is not None
        return None, self._back(self.grasp1, 0.0, CLOSE)

    def _release(self) -> tuple[ArmGoal, None]:
        return ArmGoal(self.cmd[0][0].copy(), self.cmd[0][1].copy(), OPEN), None

    def _retreat(self) -> tuple[ArmGoal, ArmGoal]:
        assert self.grasp1 is not None
        robot0 = ArmGoal(self.cmd[0][0].copy(), self.cmd[0][1].copy(), OPEN)
        return self._back(robot0, 0.10, OPEN), ArmGoal(self.grasp1.pos + 0.03 * _UP, self.grasp1.rot, CLOSE)


_PLANS: dict[str, type[_LiftPlan | _HandoverPlan]] = {
    "TwoArmLift": _LiftPlan,
    "TwoArmHandover": _HandoverPlan,
}


@register_expert("robosuite_two_arm")
class RobosuiteTwoArmExpert(ScriptedExpert):
    """Staged top-down grasping expert for TwoArmLift and TwoArmHandover (see the module docstring for
    ``noise``). Dispatches on the env's robosuite scene. Episodes last about 50 control steps (lift, 2.5 s)
    and about 130 (handover, 6.5 s)."""

    def __init__(self, env: RobosuiteTwoArmEnv, noise: float = DEFAULT_NOISE,  # type: ignore[override]
                 seed: int = 0) -> None:
        if not isinstance(env, RobosuiteTwoArmEnv):
            raise TypeError(f"RobosuiteTwoArmExpert drives a RobosuiteTwoArmEnv, got {type(env).__name__}")
        if env.scene not in _PLANS:
            raise KeyError(f"no scripted plan for robosuite scene {env.scene!r}; plans exist for {sorted(_PLANS)}")
        super().__init__(env, noise=noise, seed=seed)
        self.env: RobosuiteTwoArmEnv = env
        self._dt = 1.0 / env.task.control_hz
        self._cmd: list[tuple[np.ndarray, np.ndarray]] = []
        self._goals: list[ArmGoal] = []
        self._stages: list[Stage] = []
        self._stage = 0
        self._stage_steps = 0
        self._moving: list[int] = []  # arms the current stage gave a goal

    @property
    def stage_name(self) -> str:
        """Name of the stage being executed (for logs and tests)."""
        return self._stages[self._stage].name

    def reset(self, obs: Obs) -> None:
        self._cmd = [self.env.eef_pose_world(i) for i in range(2)]
        self._goals = [ArmGoal(p.copy(), r.copy(), OPEN) for p, r in self._cmd]
        # The plan shares the command list so its planners see where the arms are commanded to be.
        plan = _PLANS[self.env.scene](self.env, self._cmd, self.rng, self.noise)
        self._stages = plan.stages()
        self._enter(0)

    def act(self, obs: Obs) -> np.ndarray:
        if not self._stages:
            raise RuntimeError("RobosuiteTwoArmExpert.act called before reset")
        if self._stage + 1 < len(self._stages) and self._stage_done():
            self._enter(self._stage + 1)
        elif self._stages[self._stage].track:
            self._plan_goals()
        stage = self._stages[self._stage]
        for i, goal in enumerate(self._goals):
            self._cmd[i] = step_toward(*self._cmd[i], goal.pos, goal.rot,
                                       stage.lin_speed * self._dt, stage.ang_speed * self._dt)
        self._stage_steps += 1
        return self._unified_action()

    # ---- internals ------------------------------------------------------------------------------
    def _enter(self, index: int) -> None:
        self._stage, self._stage_steps = index, 0
        self._plan_goals()

    def _plan_goals(self) -> None:
        self._moving = []
        for i, goal in enumerate(self._stages[self._stage].plan()):
            if goal is not None:
                self._goals[i] = goal
                self._moving.append(i)

    def _stage_done(self) -> bool:
        stage = self._stages[self._stage]
        if self._stage_steps >= stage.max_steps:
            return True
        if self._stage_steps < stage.min_steps:
            return False
        # Only the arms this stage moves must arrive; a holding arm may sit off its goal under load.
        for i in self._moving:
            goal = self._goals[i]
            pos, mat = self._cmd[i]
            if np.linalg.norm(goal.pos - pos) > 1e-9 or rotation_angle(goal.rot, mat) > 1e-6:
                return False
            real_pos, _ = self.env.eef_pose_world(i)
            if stage.tol is not None and np.linalg.norm(goal.pos - real_pos) > stage.tol:
                return False
        return True

    def _unified_action(self) -> np.ndarray:
        native: dict[str, np.ndarray] = {}
        for i, side in enumerate(ARMS):
            pos, mat = self._cmd[i]
            if self.noise > 0:
                pos = pos + self.rng.normal(0.0, self.noise, 3)
                mat = Rotation.from_rotvec(self.rng.normal(0.0, 2 * self.noise, 3)).as_matrix() @ mat
            base_pos, base_rot = self.env.base_pose(i)
            native[f"{side}_eef_pos"] = base_rot.T @ (pos - base_pos)
            native[f"{side}_eef_rotvec"] = Rotation.from_matrix(base_rot.T @ mat).as_rotvec()
            opening = np.array([self._goals[i].grip])  # the spec converts the opening to the native field
            native[f"{side}_gripper"] = self.env.embodiment.action.get(f"{side}_gripper").from_unified(opening)
        return self.env.embodiment.action.to_unified(native).astype(np.float32)
