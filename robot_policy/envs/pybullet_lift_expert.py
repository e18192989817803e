"""Scripted expert of ``pybullet_bimanual_lift``: both arms grasp the tray's handles from above and lift it.

Per arm, a Cartesian plan of the grasp target (world frame), all timed in 20 Hz control steps and shared
by both arms so they move in lock-step (the tray stays level because both grasps rise together):

=========  =====  ==============================================================================
phase      steps  motion
=========  =====  ==============================================================================
reach       70    home -> ``PREGRASP_HEIGHT`` above the handle -> straight down until the fingertips
                  pass the handle's underside, as one motion (the gripper yaws across the handle on
                  the way to the pre-grasp point)
close        8    gripper target ramps from open (0.08 m) to closed (0 m)
lift        40    straight up by ``LIFT_HEIGHT``; afterwards the targets hold
=========  =====  ==============================================================================

The plan never stands still before the lift ends. A pause (a stop at the pre-grasp point, a wait after
closing) makes the same observation precede both "stay" and "move on" in the demonstrations, and policies
cloned from such data stall there; so reach is one minimum-jerk time-scaling along the path
home -> pre-grasp -> grasp (parameterised by arc length: the speed stays non-zero at the pre-grasp
corner), and the lift follows the close ramp directly.

Segments are minimum-jerk in position and slerp in orientation, so the joint targets are smooth. Each
step's targets go through pybullet's null-space IK (joint limits, Franka's ready pose as the rest pose),
seeded with the previous step's solution and refined without the null-space pull so the residual is
sub-millimetre; the IK runs on a private kinematic copy of the Panda and never touches the env's simulation.

The plan is made once at ``reset`` from the tray pose; the tray does not move before it is grasped.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pybullet as p
import pybullet_data

from robot_policy.envs.base import ManipulationEnv, Obs
from robot_policy.envs.expert import ScriptedExpert, register_expert

if TYPE_CHECKING:
    from robot_policy.envs.pybullet_lift import PybulletBimanualLift

#: m above the handle centre where the descent starts
PREGRASP_HEIGHT = 0.10
#: m the grasps rise during the lift phase (success needs 0.10 m of it)
LIFT_HEIGHT = 0.15
#: control steps of each phase: reach (via the pre-grasp point), close, lift
PHASE_STEPS = (70, 8, 40)
#: m below the handle centre where the grasp target goes: the fingertips (1.1 cm below the grasp target)
#: then reach past the handle's underside and the pads cover its full height
GRASP_DEPTH = 0.004
#: grasp-height jitter is clipped to this (m): higher grasps pinch only the handle's top edge and let it slip
#: out under load, lower ones bring the fingertips within millimetres of the table
MAX_GRASP_Z_JITTER = 0.005
#: default ``noise`` for collecting demonstrations (m, std of waypoint jitter)
COLLECT_NOISE = 0.01

_EE_LINK = 11
_DRIVE_JOINTS = (0, 1, 2, 3, 4, 5, 6, 9, 10)
_OPEN, _CLOSED = 0.08, 0.0


def min_jerk(tau: float) -> float:
    """Minimum-jerk profile: 0 at tau <= 0, 1 at tau >= 1, zero velocity and acceleration at both ends."""
    t = min(max(tau, 0.0), 1.0)
    return t * t * t * (10.0 + t * (-15.0 + 6.0 * t))


def wrap_half_pi(angle: float) -> float:
    """Map an angle (rad) to [-pi/2, pi/2): a parallel gripper is symmetric under a half turn."""
    return (angle + math.pi / 2) % math.pi - math.pi / 2


class PandaIK:
    """Null-space IK for Pandas in their own base frames, on a private pybullet client (one body per arm).

    Args:
        limits: per arm name, (7,) lower and upper joint limits (rad) its solutions respect; each arm gets
            its own kinematic copy of the Panda.
        rest_pose: (7,) posture (rad) the null-space term pulls toward.
    """

    def __init__(self, limits: dict[str, tuple[np.ndarray, np.ndarray]], rest_pose: np.ndarray) -> None:
        self._client = p.connect(p.DIRECT)
        urdf = str(Path(pybullet_data.getDataPath()) / "franka_panda" / "panda.urdf")
        self._bodies = {a: p.loadURDF(urdf, useFixedBase=True, physicsClientId=self._client) for a in limits}
        self._limits = limits
        # null-space IK takes limits for every movable joint: the 7 arm joints, then the two fingers
        self._lo = {a: [*lo.tolist(), 0.0, 0.0] for a, (lo, _) in limits.items()}
        self._hi = {a: [*hi.tolist(), 0.04, 0.04] for a, (_, hi) in limits.items()}
        self._ranges = {a: [h - lo for lo, h in zip(self._lo[a], self._hi[a], strict=True)] for a in limits}
        self._rest = [*rest_pose.tolist(), 0.04, 0.04]

    def close(self) -> None:
        # Forget the id once disconnected: pybullet reuses client ids, and a later close (from __del__)
        # must not disconnect another object's client.
        if self._client >= 0:
            p.disconnect(self._client)
            self._client = -1

    def __del__(self) -> None:
        self.close()

    def _set(self, arm: str, q7: np.ndarray) -> None:
        for j, qj in zip(_DRIVE_JOINTS, [*q7.tolist(), 0.04, 0.04], strict=True):
            p.resetJointState(self._bodies[arm], j, qj, physicsClientId=self._client)

    def forward(self, arm: str, q7: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grasp-target pose in the base frame at joints ``q7``: position (3, m), xyzw quaternion (4,)."""
        self._set(arm, q7)
        link = p.getLinkState(self._bodies[arm], _EE_LINK, computeForwardKinematics=1,
                              physicsClientId=self._client)
        return np.array(link[4]), np.array(link[5])

    def solve(self, arm: str, pos: np.ndarray, quat: np.ndarray, seed: np.ndarray) -> np.ndarray:
        """(7,) joints (rad) putting the grasp target at ``pos``/``quat`` (base frame), seeded at ``seed``."""
        # pybullet's IK starts from the body's current joints (its currentPositions argument does not
        # update the end-effector pose it compares against), so the seed is written into the private body.
        body, kw = self._bodies[arm], {"physicsClientId": self._client}
        self._set(arm, seed)
        q = p.calculateInverseKinematics(body, _EE_LINK, pos.tolist(), quat.tolist(), self._lo[arm],
                                         self._hi[arm], self._ranges[arm], self._rest, maxNumIterations=20,
                                         residualThreshold=1e-5, **kw)
        # The null-space pull leaves a millimetre-scale residual; two plain solves from there remove it
        # while staying on the same branch.
        for _ in range(2):
            self._set(arm, np.asarray(q[:7]))
            q = p.calculateInverseKinematics(body, _EE_LINK, pos.tolist(), quat.tolist(),
                                             maxNumIterations=20, residualThreshold=1e-6, **kw)
        return np.clip(np.asarray(q[:7]), *self._limits[arm])


@register_expert("pybullet_bimanual_lift")
class BimanualLiftExpert(ScriptedExpert):
    """Waypoint + IK expert (see the module docstring for the plan).

    ``noise`` is the std (m) of Gaussian jitter, per axis, of the pre-grasp and grasp waypoints (independent
    per arm; the grasp height's jitter is clipped to +-``MAX_GRASP_Z_JITTER``) and of the lift waypoint (one
    offset shared by both arms, which hold one rigid tray by then). 0 is the nominal
    expert; :data:`COLLECT_NOISE` (0.01 m) is the value for collecting demonstrations and this class's
    default (``make_expert``'s default is 0). ``seed`` seeds that jitter.
    """

    def __init__(self, env: ManipulationEnv, noise: float = COLLECT_NOISE, seed: int = 0) -> None:
        super().__init__(env, noise=noise, seed=seed)
        from robot_policy.envs.pybullet_lift import ARMS, PybulletBimanualLift

        if not isinstance(env, PybulletBimanualLift):
            raise TypeError(f"BimanualLiftExpert drives PybulletBimanualLift, got {type(env).__name__}")
        self.lift_env: PybulletBimanualLift = env
        self.arms = ARMS
        home = np.array(env.scene.home_joint_pos)
        arm_limits = env.embodiment.arms
        limits = {a: (np.array(arm_limits[a].joint_pos_min), np.array(arm_limits[a].joint_pos_max))
                  for a in ARMS}
        self._ik = PandaIK(limits, home)
        self._base = {a: env.base_pose(a) for a in ARMS}
        self._base_inv = {a: p.invertTransform(*self._base[a]) for a in ARMS}
        # World orientation of the grasp target at the home pose: pointing down, fingers across the table.
        self._home_quat = {a: np.array(p.multiplyTransforms(*self._base[a], [0, 0, 0],
                                                            self._ik.forward(a, home)[1])[1]) for a in ARMS}
        self._waypoints: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self._seed_q: dict[str, np.ndarray] = {}
        self._t = 0

    def close(self) -> None:
        """Release the IK client (also done when the expert is garbage-collected)."""
        self._ik.close()

    def reset(self, obs: Obs) -> None:
        """Plan both arms' waypoints from the tray pose (read from the simulator, not from ``obs``)."""
        env = self.lift_env
        handles = env.handle_positions()
        yaw = wrap_half_pi(env.object_yaw())
        turn = p.getQuaternionFromEuler([0, 0, yaw])
        # Once both hands hold the tray it is one rigid body between two stiff arms: the lift offset is
        # shared, since different offsets per arm would pull the handles apart and out of the fingers.
        lift_jitter = self.noise * self.rng.standard_normal(3)
        for arm in self.arms:
            start_pos, start_quat = env.ee_pose_world(arm)
            grasp_quat = np.array(p.multiplyTransforms([0, 0, 0], turn, [0, 0, 0], self._home_quat[arm])[1])
            jitter = self.noise * self.rng.standard_normal((2, 3))  # pre-grasp, grasp
            jitter[1, 2] = np.clip(jitter[1, 2], -MAX_GRASP_Z_JITTER, MAX_GRASP_Z_JITTER)
            grasp = handles[arm] + np.array([0, 0, -GRASP_DEPTH]) + jitter[1]
            pre = handles[arm] + np.array([0, 0, PREGRASP_HEIGHT]) + jitter[0]
            lift = grasp + np.array([0, 0, LIFT_HEIGHT]) + lift_jitter
            self._waypoints[arm] = [(start_pos, start_quat), (pre, grasp_quat), (grasp, grasp_quat),
                                    (lift, grasp_quat)]
            self._seed_q[arm] = env.arm_joint_positions(arm)
        self._t = 0

    def _target(self, arm: str, t: int) -> tuple[np.ndarray, np.ndarray, float]:
        """World grasp-target pose and finger-gap target (m) of ``arm`` at control step ``t``."""
        (home, home_q), (pre, grasp_q), (grasp, _), (lift, _) = self._waypoints[arm]
        reach, close, rise = PHASE_STEPS
        if t < reach:
            # One time-scaling over the polyline home -> pre -> grasp, by arc length.
            first, second = float(np.linalg.norm(pre - home)), float(np.linalg.norm(grasp - pre))
            d = min_jerk((t + 1) / reach) * (first + second)
            if d <= first:
                u = d / max(first, 1e-9)
                pos = home + u * (pre - home)
                quat = np.array(p.getQuaternionSlerp(home_q.tolist(), grasp_q.tolist(), u))
            else:
                pos, quat = pre + (d - first) / max(second, 1e-9) * (grasp - pre), grasp_q
            return pos, quat, _OPEN
        if t < reach + close:
            return grasp, grasp_q, _OPEN * max(0.0, 1.0 - (t + 1 - reach) / close)
        s = min_jerk((t + 1 - reach - close) / rise)
        return grasp + s * (lift - grasp), grasp_q, _CLOSED

    def act(self, obs: Obs) -> np.ndarray:
        """(128,) float32 unified action: the plan's joint targets for this step (``obs`` is not read)."""
        native: dict[str, np.ndarray] = {}
        for arm in self.arms:
            pos, quat, gap = self._target(arm, self._t)
            pos_b, quat_b = p.multiplyTransforms(*self._base_inv[arm], pos.tolist(), quat.tolist())
            q = self._ik.solve(arm, np.array(pos_b), np.array(quat_b), self._seed_q[arm])
            self._seed_q[arm] = q
            native[f"{arm}_joint_pos"] = q
            native[f"{arm}_gripper"] = np.array([gap])
        self._t += 1
        return self.env.embodiment.action.to_unified(native).astype(np.float32)
