"""Replay recorded episodes in simulation from their simulator states (``data/sim_state``).

Two checks of a recorded (or imported) episode against the simulator its store's task names:

* by states: restore every step's recorded state with ``env.reset_to`` and compare the observation there
  with the recorded one (robomimic's replay: the states alone reproduce the observations);
* by actions: restore the first state only and send the recorded actions, open loop; the observed states
  follow the recorded ones where the simulator is deterministic, and the task succeeds where it did.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robot_policy.data import format as fmt
from robot_policy.data.store import EpisodeStore, StoreError
from robot_policy.envs.registry import make_env, task_config_from_dict


@dataclass(frozen=True)
class ReplayReport:
    """What replaying one episode found. Errors are max |observed - recorded| over the episode's state mask."""

    episode: int
    steps: int
    #: restoring each step's state: the worst state error
    states_max_error: float
    #: the recorded actions sent from the first state: the worst state error, and the outcome
    actions_max_error: float
    actions_success: bool
    recorded_success: bool | None


def replay_by_states(store_path: str | Path, episode: int) -> ReplayReport:
    """Replay ``episode`` of the store at ``store_path`` in the simulator of the store's task (see the module
    docstring). Raises StoreError when the store has no simulator states or names no task."""
    store = EpisodeStore.open(store_path)
    task_raw = store.attrs.get("task")
    if not task_raw:
        raise StoreError(f"{store_path}: the store names no task (attrs.task), so there is no simulator to replay in")
    if fmt.SIM_STATE not in store.data_keys:
        raise StoreError(f"{store_path}: no data/{fmt.SIM_STATE}: the episodes carry no simulator states")
    start, end = store.episode_bounds(episode)
    sim = np.asarray(store.array(fmt.SIM_STATE)[start:end], np.float64)
    state = np.asarray(store.array(fmt.STATE)[start:end])
    action = np.asarray(store.array(fmt.ACTION)[start:end])
    meta = store.get_episode(episode, keys=[])
    mask = np.asarray(meta[fmt.STATE_MASK]) > 0
    recorded = None if int(meta[fmt.SUCCESS]) < 0 else bool(meta[fmt.SUCCESS])
    env = make_env(task_config_from_dict(dict(task_raw), where=f"{store_path} attrs.task"))
    try:
        env.reset(seed=int(meta[fmt.SEED]) if int(meta[fmt.SEED]) >= 0 else None)
        by_states = max(float(np.abs(env.reset_to(s)[fmt.STATE] - state[t])[mask].max()) for t, s in enumerate(sim))
        obs = env.reset_to(sim[0])
        by_actions, success = 0.0, False
        for t in range(end - start):
            by_actions = max(by_actions, float(np.abs(obs[fmt.STATE] - state[t])[mask].max()))
            obs, _, terminated, _, info = env.step(action[t])
            success = success or bool(info["success"])
            if terminated:
                break
    finally:
        env.close()
    return ReplayReport(episode=episode, steps=end - start, states_max_error=by_states,
                        actions_max_error=by_actions, actions_success=success, recorded_success=recorded)
