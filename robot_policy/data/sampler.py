"""Sequence sampler: observation-history / action-horizon windows over episodes.

A window is anchored at a step ``t`` of an episode. It holds observations at steps
``t - To + 1 .. t`` and actions at steps ``t .. t + Ta - 1``. Steps outside the episode are padded by
repeating its first (observations) or last (actions) frame, so padding never reads another episode
(the repeated last action is a valid target: hold still at the end, as in Diffusion Policy). Every step of every selected episode anchors one window.

Reads are vectorised over a batch of windows: from RAM a window batch is one numpy gather per key.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robot_policy.data.store import EpisodeData
from robot_policy.keys import EPISODE


@dataclass(frozen=True)
class WindowRows:
    """Row indices of a batch of windows into the concatenated arrays.

    Attributes:
        obs: (B, To) rows of the observation steps (edge-padded within the episode).
        action: (B, Ta) rows of the action steps (edge-padded within the episode).
        episode: (B,) episode index of each window.
    """

    obs: np.ndarray
    action: np.ndarray
    episode: np.ndarray


class SequenceSampler:
    """Windows of ``obs_horizon`` (To) observations and ``action_horizon`` (Ta) actions.

    Args:
        episode_ends: (E,) cumulative episode ends of the store.
        obs_horizon: To >= 1.
        action_horizon: Ta >= 1.
        episodes: indices of the episodes to draw windows from (a split); default all.
    """

    def __init__(self, episode_ends: np.ndarray, obs_horizon: int, action_horizon: int,
                 episodes: np.ndarray | None = None) -> None:
        if obs_horizon < 1 or action_horizon < 1:
            raise ValueError(f"obs_horizon and action_horizon must be >= 1, got {obs_horizon}, {action_horizon}")
        ends = np.asarray(episode_ends, dtype=np.int64)
        starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        episodes = np.arange(ends.size) if episodes is None else np.asarray(episodes, dtype=np.int64)
        if episodes.size and (episodes.min() < 0 or episodes.max() >= ends.size):
            raise IndexError(f"episode indices must be in [0, {ends.size}), got min {episodes.min()} max {episodes.max()}")
        lengths = ends[episodes] - starts[episodes]
        self.obs_horizon = obs_horizon
        self.action_horizon = action_horizon
        # One window per step of each selected episode: anchor row, and the episode it belongs to.
        self.anchor = np.concatenate([np.arange(s, e) for s, e in zip(starts[episodes], ends[episodes])]
                                     ) if episodes.size else np.zeros(0, np.int64)
        self.episode = np.repeat(episodes, lengths)
        self._ep_first = starts[self.episode]
        self._ep_last = ends[self.episode] - 1
        self._obs_offsets = np.arange(-obs_horizon + 1, 1)
        self._act_offsets = np.arange(action_horizon)

    def __len__(self) -> int:
        return int(self.anchor.shape[0])

    def rows(self, windows: np.ndarray) -> WindowRows:
        """Row indices for window indices ``windows`` (B,)."""
        w = np.asarray(windows, dtype=np.int64)
        t = self.anchor[w][:, None]
        first, last = self._ep_first[w][:, None], self._ep_last[w][:, None]
        obs = np.clip(t + self._obs_offsets, first, last)
        return WindowRows(obs=obs, action=np.minimum(t + self._act_offsets, last), episode=self.episode[w])


def split_episodes(n_episodes: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of episode indices into (train, val), both sorted.

    At least one validation episode when ``val_fraction > 0`` and there are two or more episodes.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(n_episodes)
    n_val = round(n_episodes * val_fraction)
    if val_fraction > 0 and n_episodes >= 2:
        n_val = max(n_val, 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def gather_windows(data: EpisodeData, sampler: SequenceSampler, windows: np.ndarray,
                   obs_keys: tuple[str, ...], action_keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Read a batch of windows from in-RAM (numpy) arrays.

    Returns ``key -> (B, To, ...)`` for ``obs_keys``, ``key -> (B, Ta, ...)`` for ``action_keys``, plus
    ``episode`` (B,).
    """
    rows = sampler.rows(windows)
    out = {key: data.data[key][rows.obs] for key in obs_keys}
    out.update({key: data.data[key][rows.action] for key in action_keys})
    out[EPISODE] = rows.episode
    return out
