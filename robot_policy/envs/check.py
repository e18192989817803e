"""``check_env``: roll a task out for a few steps and check every observation against its declared spec.

In the spirit of TorchRL's ``check_env_specs``: catches a wrong dtype, a shape that drifts, a state slot
written outside the mask, a NaN, or a state that ``reset_to`` does not restore.
"""

from __future__ import annotations

import numpy as np

from robot_policy.envs.base import ManipulationEnv, Obs
from robot_policy.keys import OBS_STATE, OBS_STATE_MASK
from robot_policy.spaces.unified import UNIFIED_DIM


class EnvCheckError(AssertionError):
    pass


def _check_obs(env: ManipulationEnv, obs: Obs, where: str) -> None:
    space = env.obs_spaces
    if set(obs) != set(space.spaces):
        raise EnvCheckError(f"{where}: observation keys {sorted(obs)} differ from the spec {sorted(space.spaces)}")
    for key, sub in space.spaces.items():
        value = obs[key]
        if not isinstance(value, np.ndarray):
            raise EnvCheckError(f"{where}: obs[{key!r}] is {type(value).__name__}, not an ndarray")
        if value.shape != sub.shape or value.dtype != sub.dtype:
            raise EnvCheckError(f"{where}: obs[{key!r}] has {value.shape} {value.dtype}, spec says "
                                f"{sub.shape} {sub.dtype}")
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise EnvCheckError(f"{where}: obs[{key!r}] holds NaN or Inf")
    mask = obs[OBS_STATE_MASK]
    if not np.array_equal(mask, env.state_mask):
        raise EnvCheckError(f"{where}: state_mask differs from the embodiment's")
    outside = np.flatnonzero((mask == 0) & (obs[OBS_STATE] != 0))
    if outside.size:
        raise EnvCheckError(f"{where}: state is non-zero outside its mask at slots {outside.tolist()}")


def check_env(env: ManipulationEnv, steps: int = 5, seed: int = 0, noise: float = 0.01) -> None:
    """Reset, step ``steps`` times with small perturbations of the hold action, check everything.

    Raises EnvCheckError naming the first problem.
    """
    obs, info = env.reset(seed=seed)
    _check_obs(env, obs, "reset")
    if "success" not in info:
        raise EnvCheckError("reset: info has no 'success'")
    if env.action_space.shape != (UNIFIED_DIM,):
        raise EnvCheckError(f"action_space shape {env.action_space.shape}, expected ({UNIFIED_DIM},)")
    rng = np.random.default_rng(seed)
    saved = env.get_state()
    actions, states = [], []
    for t in range(steps):
        action = env.current_unified_action()
        action = action + noise * rng.standard_normal(UNIFIED_DIM).astype(np.float32) * env.action_mask
        obs, reward, terminated, truncated, info = env.step(action)
        _check_obs(env, obs, f"step {t}")
        if not isinstance(reward, float) or reward not in (0.0, 1.0):
            raise EnvCheckError(f"step {t}: reward must be a float 0/1 (sparse), got {reward!r}")
        if "success" not in info:
            raise EnvCheckError(f"step {t}: info has no 'success'")
        actions.append(action)
        states.append(obs[OBS_STATE])
        if terminated or truncated:
            break
    env.reset_to(saved)
    for t, action in enumerate(actions):
        obs, *_ = env.step(action)
        if not np.allclose(obs[OBS_STATE], states[t], atol=1e-5):
            err = np.abs(obs[OBS_STATE] - states[t]).max()
            raise EnvCheckError(f"reset_to(get_state()) step {t}: state differs by {err:.3g}")
    for cam in env.available_cameras[:1]:
        img = env.render(cam, 32, 32)
        if img.shape != (32, 32, 3) or img.dtype != np.uint8:
            raise EnvCheckError(f"render({cam!r}, 32, 32) gave {img.shape} {img.dtype}")
