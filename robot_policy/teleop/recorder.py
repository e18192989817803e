"""Record episodes of a simulated task into an episode store, step by step through the streaming writer.

What a step records: the observation the actor saw (``state``, ``object_state``, camera frames), the
unified action it sent, the time since the episode started, and optionally the simulator state before
the action (``sim_state``, what ``env.reset_to`` takes), so any frame of a recorded episode can be
restored for replay.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from robot_policy.data.format import OBJECT_STATE, SIM_STATE
from robot_policy.data.store import EpisodeStore
from robot_policy.envs.base import ManipulationEnv, Obs
from robot_policy.keys import IMAGE_PREFIX, OBS_OBJECT, OBS_STATE


@dataclass
class RecordedEpisode:
    index: int | None  # store index, None when discarded
    seed: int
    success: bool
    length: int


def step_record(env: ManipulationEnv, obs: Obs, record_sim_state: bool = True
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """What a step records besides state, action and timestamp, for the observation ``obs`` the actor saw:
    camera frames (camera -> (H, W, 3) uint8) and extras (``object_state``; ``sim_state``, the simulator
    state before the action, when ``record_sim_state``). Every recorder writes through this, so scripted
    and teleoperated episodes carry the same keys."""
    extras: dict[str, np.ndarray] = {}
    if OBS_OBJECT in obs:
        extras[OBJECT_STATE] = obs[OBS_OBJECT]
    if record_sim_state:
        extras[SIM_STATE] = env.get_state()
    images = {k[len(IMAGE_PREFIX):]: v for k, v in obs.items() if k.startswith(IMAGE_PREFIX)}
    return images, extras


def record_episode(env: ManipulationEnv, act: Callable[[Obs], np.ndarray], store: EpisodeStore, seed: int, *,
                   on_reset: Callable[[Obs], None] | None = None, keep_failures: bool = False,
                   record_sim_state: bool = True) -> RecordedEpisode:
    """Run one episode from ``seed`` with ``act`` choosing unified actions, recording it into ``store``.

    A failed episode is discarded unless ``keep_failures``; either way nothing of it is visible until the
    commit, so an interrupted recording leaves the store as it was.
    """
    obs, _ = env.reset(seed=seed)
    if on_reset is not None:
        on_reset(obs)
    hz = env.task.control_hz
    success, steps = False, 0
    with store.stream_episode(language=env.task.language, seed=seed, state_mask=env.state_mask,
                              action_mask=env.action_mask) as writer:
        done = False
        while not done:
            action = np.asarray(act(obs), dtype=np.float32) * env.action_mask
            images, extras = step_record(env, obs, record_sim_state)
            writer.add_step(state=obs[OBS_STATE], action=action, timestamp=steps / hz, images=images, **extras)
            obs, _, terminated, truncated, info = env.step(action)
            steps += 1
            done = terminated or truncated
        success = bool(info["success"])
        index = writer.commit(success=success) if success or keep_failures else None
    return RecordedEpisode(index=index, seed=seed, success=success, length=steps)
