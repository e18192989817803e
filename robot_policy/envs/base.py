"""One interface for every simulated task: gymnasium-style, actions and states in the unified space.

Observations are a dict:
  * ``state``        (128,) float32, unified robot state (SI units; see :mod:`robot_policy.spaces.unified`)
  * ``state_mask``   (128,) float32, 1 where the embodiment writes
  * ``object_state`` (Do,)  float32, task-defined privileged object features (world frame, m / 6D rotation);
    present when the task declares ``object_state_dim > 0``; a state-based policy needs it to see the object
  * ``images/<camera>`` (H, W, 3) uint8, for each camera the task config enables

Actions are unified (128,) vectors; the base class converts them to the native fields of the task's
embodiment and hands those to the simulator. Reward is sparse: 1 on the step the task succeeds, else 0;
success terminates the episode, the time limit truncates it.

A subclass implements the simulator hooks (``_reset_sim``, ``_apply_native_action``, ``_native_state``, ...);
everything the tasks share (conversion, action latency, observation noise, time limit) lives here once.
"""

from __future__ import annotations

import abc
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from robot_policy.keys import IMAGE_PREFIX, OBS_OBJECT, OBS_STATE, OBS_STATE_MASK
from robot_policy.spaces.embodiment import EmbodimentSpec, load_embodiment
from robot_policy.spaces.unified import UNIFIED_DIM

Obs = dict[str, np.ndarray]


def _check_range(name: str, value: tuple[float, float], lower: float | None = None) -> None:
    if len(value) != 2 or value[0] > value[1]:
        raise ValueError(f"randomization.{name}: expected (low, high) with low <= high, got {value}")
    if lower is not None and value[0] < lower:
        raise ValueError(f"randomization.{name}: low must be >= {lower}, got {value[0]}")


@dataclass
class Randomization:
    """Domain randomisation for sim-to-real work. Defaults are the task's nominal distribution.

    Scales are multiplicative factors drawn uniformly per episode from ``(low, high)``.
    """

    object_size_scale: tuple[float, float] = (1.0, 1.0)
    object_mass_scale: tuple[float, float] = (1.0, 1.0)
    friction_scale: tuple[float, float] = (1.0, 1.0)
    #: extra uniform noise on the object's initial position (m, half-width in x and y) and yaw (rad)
    object_pos_noise: float = 0.0
    object_yaw_noise: float = 0.0
    #: extra uniform noise on the robots' initial joint positions (rad, half-width)
    robot_joint_noise: float = 0.0
    #: std of Gaussian noise added to the observed unified state (SI units) and object state
    obs_noise_std: float = 0.0
    #: actions take effect this many control steps after they are sent (the first steps hold)
    action_latency_steps: int = 0
    #: when set, the latency is drawn per episode uniformly from action_latency_steps..this (inclusive)
    action_latency_max_steps: int | None = None

    def __post_init__(self) -> None:
        self.object_size_scale = tuple(self.object_size_scale)  # type: ignore[assignment]
        self.object_mass_scale = tuple(self.object_mass_scale)  # type: ignore[assignment]
        self.friction_scale = tuple(self.friction_scale)  # type: ignore[assignment]
        for name in ("object_size_scale", "object_mass_scale", "friction_scale"):
            _check_range(name, getattr(self, name), lower=1e-3)
        for name in ("object_pos_noise", "object_yaw_noise", "robot_joint_noise", "obs_noise_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"randomization.{name}: must be >= 0, got {getattr(self, name)}")
        if self.action_latency_steps < 0:
            raise ValueError(f"randomization.action_latency_steps: must be >= 0, got {self.action_latency_steps}")
        if self.action_latency_max_steps is not None and self.action_latency_max_steps < self.action_latency_steps:
            raise ValueError(f"randomization.action_latency_max_steps ({self.action_latency_max_steps}) must be >= "
                             f"action_latency_steps ({self.action_latency_steps})")

    def draw_latency(self, rng: np.random.Generator) -> int:
        """This episode's action latency in control steps."""
        if self.action_latency_max_steps is None:
            return self.action_latency_steps
        return int(rng.integers(self.action_latency_steps, self.action_latency_max_steps + 1))


@dataclass
class TaskConfig:
    """A task: which simulator scene, which robot, how long, what success means (in the env class)."""

    name: str
    #: registry key of the env class that simulates it (see ``robot_policy.envs.registry``)
    env: str
    #: embodiment spec name (``configs/embodiment/<name>.yaml``)
    embodiment: str
    control_hz: float
    #: time limit in control steps
    max_steps: int
    #: the instruction recorded with every episode
    language: str
    #: cameras rendered into observations; empty = state observations only
    cameras: tuple[str, ...] = ()
    image_height: int = 128
    image_width: int = 128
    randomization: Randomization = field(default_factory=Randomization)
    #: task-specific options, interpreted by the env class
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.randomization, dict):
            self.randomization = Randomization(**self.randomization)
        self.cameras = tuple(self.cameras)
        if self.control_hz <= 0:
            raise ValueError(f"task {self.name}: control_hz must be > 0, got {self.control_hz}")
        if self.max_steps <= 0:
            raise ValueError(f"task {self.name}: max_steps must be > 0, got {self.max_steps}")
        if self.image_height <= 0 or self.image_width <= 0:
            raise ValueError(f"task {self.name}: image size must be positive, got "
                             f"{self.image_height}x{self.image_width}")


class ManipulationEnv(gym.Env[Obs, np.ndarray], abc.ABC):
    """Base of every simulated task. See the module docstring for observations, actions and reward."""

    metadata = {"render_modes": ["rgb_array"]}  # noqa: RUF012  # gymnasium declares it an instance attribute
    #: width of ``object_state``; 0 = the task has none
    object_state_dim: int = 0
    #: cameras ``render`` accepts
    available_cameras: tuple[str, ...] = ()
    #: those of them mounted on a robot (their pose changes with the arm)
    moving_cameras: tuple[str, ...] = ()

    def __init__(self, task: TaskConfig) -> None:
        super().__init__()
        self.task = task
        self.embodiment: EmbodimentSpec = load_embodiment(task.embodiment)
        if abs(self.embodiment.control_hz - task.control_hz) > 1e-9:
            raise ValueError(f"task {task.name}: control_hz {task.control_hz} differs from embodiment "
                             f"{self.embodiment.name}'s {self.embodiment.control_hz}")
        unknown = set(task.cameras) - set(self.available_cameras)
        if unknown:
            raise ValueError(f"task {task.name}: unknown camera(s) {sorted(unknown)}; "
                             f"available: {list(self.available_cameras)}")
        self.state_mask = self.embodiment.state.mask
        self.action_mask = self.embodiment.action.mask
        spaces: dict[str, gym.spaces.Space[Any]] = {
            OBS_STATE: gym.spaces.Box(-np.inf, np.inf, (UNIFIED_DIM,), np.float32),
            OBS_STATE_MASK: gym.spaces.Box(0.0, 1.0, (UNIFIED_DIM,), np.float32),
        }
        if self.object_state_dim > 0:
            spaces[OBS_OBJECT] = gym.spaces.Box(-np.inf, np.inf, (self.object_state_dim,), np.float32)
        for cam in task.cameras:
            spaces[IMAGE_PREFIX + cam] = gym.spaces.Box(0, 255, (task.image_height, task.image_width, 3), np.uint8)
        self.obs_spaces = gym.spaces.Dict(spaces)
        self.observation_space = self.obs_spaces  # type: ignore[assignment]  # gymnasium types it as Space[Obs]
        self.action_space = gym.spaces.Box(-np.inf, np.inf, (UNIFIED_DIM,), np.float32)
        self._obs_noise_seed = 0
        self._pending: deque[dict[str, np.ndarray]] = deque()
        self._steps = 0
        self._succeeded = False

    # ---- simulator hooks ------------------------------------------------------------------------
    @abc.abstractmethod
    def _reset_sim(self, rng: np.random.Generator) -> None:
        """Rebuild/randomise the scene for a new episode from ``rng`` (the only source of randomness)."""

    @abc.abstractmethod
    def _apply_native_action(self, action: dict[str, np.ndarray]) -> None:
        """Send native action fields to the robots and advance the simulation by one control period."""

    @abc.abstractmethod
    def _native_state(self) -> dict[str, np.ndarray]:
        """The robots' native state fields (names and shapes of the embodiment spec)."""

    def _object_state(self) -> np.ndarray:
        """(object_state_dim,) float features of the task objects; override when object_state_dim > 0."""
        return np.zeros(0, dtype=np.float32)

    @abc.abstractmethod
    def _hold_action(self) -> dict[str, np.ndarray]:
        """Native action that holds the robots where they are (used while latency fills)."""

    @abc.abstractmethod
    def is_success(self) -> bool:
        """Whether the task's success predicate holds now."""

    @abc.abstractmethod
    def _get_sim_state(self) -> np.ndarray:
        """Flat float64 vector of the simulator's state: positions, velocities, per-episode object
        parameters (size, mass, friction draws): everything needed to continue exactly."""

    @abc.abstractmethod
    def _set_sim_state(self, state: np.ndarray) -> None:
        """Inverse of ``_get_sim_state``."""

    @abc.abstractmethod
    def render(self, camera: str | None = None, height: int | None = None,  # type: ignore[override]
               width: int | None = None) -> np.ndarray:
        """(H, W, 3) uint8 image from ``camera`` (default: the first available camera)."""

    @abc.abstractmethod
    def camera_params(self, camera: str, height: int, width: int) -> dict[str, np.ndarray]:
        """Pinhole intrinsics ``K`` (3, 3, pixels) and pose ``world_T_camera`` (4, 4, m; OpenCV axes: x
        right, y down, z forward) of ``camera`` rendering at ``height`` x ``width``, now."""

    # ---- gymnasium API --------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Obs, dict]:
        super().reset(seed=seed)
        rng = self.np_random
        # Observation noise is a function of (this seed, step), so reset_to restores it with the step count.
        # The seed is drawn on every reset, noise or not, so enabling noise does not change the scene draws.
        self._obs_noise_seed = int(rng.integers(2**52))
        self._reset_sim(rng)
        self._steps = 0
        self._succeeded = False
        # drawn from its own stream of the noise seed (the observation noise of step k uses [seed, k]), so a latency
        # range leaves the scene's draws unchanged
        latency = self.task.randomization.draw_latency(np.random.default_rng([self._obs_noise_seed, 0, 1]))
        self._pending = deque(self._hold_action() for _ in range(latency))
        return self._observe(), {"success": False}

    def step(self, action: np.ndarray) -> tuple[Obs, float, bool, bool, dict]:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (UNIFIED_DIM,):
            raise ValueError(f"action: expected unified shape ({UNIFIED_DIM},), got {action.shape}")
        if not np.all(np.isfinite(action[self.action_mask > 0])):
            raise ValueError("action: NaN or Inf in a masked-in slot")
        self._pending.append(self.embodiment.action.from_unified(action))
        self._apply_native_action(self._pending.popleft())
        self._steps += 1
        success = self.is_success()
        self._succeeded = self._succeeded or success
        obs = self._observe()
        truncated = self._steps >= self.task.max_steps and not success
        return obs, float(success), bool(success), bool(truncated), {"success": success}

    def get_state(self) -> np.ndarray:
        """Flat float64 vector: [elapsed steps, succeeded, observation-noise seed, latency queue length,
        latency queue (native, flat), simulator state].

        ``reset_to(get_state())`` continues the episode exactly: same observations for the same actions.
        """
        names = self.embodiment.action.names
        queue = [np.concatenate([np.ravel(a[n]) for n in names]) for a in self._pending]
        head = np.array([self._steps, float(self._succeeded), self._obs_noise_seed, len(queue)], dtype=np.float64)
        return np.concatenate([head, *queue, self._get_sim_state()])

    def reset_to(self, state: np.ndarray) -> Obs:
        """Restore a state from ``get_state`` (same task config) and return the observation there."""
        state = np.asarray(state, dtype=np.float64)
        if state.ndim != 1 or state.size < 4:
            raise ValueError(f"reset_to: expected a flat state from get_state(), got shape {state.shape}")
        self._steps, self._succeeded = int(state[0]), bool(state[1])
        self._obs_noise_seed, n_queue = int(state[2]), int(state[3])
        width = self.embodiment.action.native_dim
        flat_queue = state[4:4 + n_queue * width].reshape(n_queue, width)
        splits = np.cumsum([f.dim for f in self.embodiment.action.fields])[:-1]
        names = self.embodiment.action.names
        self._pending = deque(dict(zip(names, np.split(row, splits))) for row in flat_queue)
        self._set_sim_state(state[4 + n_queue * width:])
        return self._observe()

    # ---- shared helpers -------------------------------------------------------------------------
    @property
    def elapsed_steps(self) -> int:
        return self._steps

    def _observe(self) -> Obs:
        state = self.embodiment.state.to_unified(self._native_state()).astype(np.float32)
        noise = self.task.randomization.obs_noise_std
        obs: Obs = {OBS_STATE: state, OBS_STATE_MASK: self.state_mask.copy()}
        noise_rng = np.random.default_rng([self._obs_noise_seed, self._steps]) if noise > 0 else None
        if noise_rng is not None:
            obs[OBS_STATE] = state + (noise * noise_rng.standard_normal(UNIFIED_DIM) * self.state_mask
                                      ).astype(np.float32)
        if self.object_state_dim > 0:
            obj = np.asarray(self._object_state(), dtype=np.float32)
            if noise_rng is not None:
                obj = obj + (noise * noise_rng.standard_normal(obj.shape)).astype(np.float32)
            obs[OBS_OBJECT] = obj
        for cam in self.task.cameras:
            obs[IMAGE_PREFIX + cam] = self.render(cam, self.task.image_height, self.task.image_width)
        return obs

    def current_unified_action(self) -> np.ndarray:
        """(128,) unified action that holds the robots where they are."""
        return self.embodiment.action.to_unified(self._hold_action()).astype(np.float32)
