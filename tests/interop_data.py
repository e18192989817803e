"""Real data for the interop tests: a store collected here, with a camera (scripted expert, pybullet)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robot_policy.data import format as fmt
from robot_policy.data.store import EpisodeStore


def collect_store(out: Path, episodes: int = 2, cameras: tuple[str, ...] = ("front",), seed: int = 0) -> Path:
    """``robot-policy collect task=pybullet_bimanual_lift episodes=N out=OUT task.cameras=[front]``, as a call."""
    from robot_policy.envs.registry import load_task_config
    from robot_policy.pipelines.collect import CollectConfig, collect

    task = load_task_config("pybullet_bimanual_lift", cameras=tuple(cameras))
    collect(task, CollectConfig(out=str(out), episodes=episodes, seed=seed), progress=False)
    return out


def assert_lowdim_equal(a: EpisodeStore, b: EpisodeStore) -> None:
    """Every non-image key and every per-episode meta value of ``b`` equals ``a``'s, bit for bit."""
    assert a.data_keys == b.data_keys
    np.testing.assert_array_equal(a.episode_ends, b.episode_ends)
    for key in a.data_keys:
        if fmt.is_image_key(key):
            continue
        x, y = np.asarray(a.array(key)[: a.n_steps]), np.asarray(b.array(key)[: b.n_steps])
        assert x.dtype == y.dtype, key
        assert x.tobytes() == y.tobytes(), f"{key} differs"
    ma, mb = a.episode_meta(), b.episode_meta()
    for key in ma:
        assert np.array_equal(ma[key], mb[key]), f"meta/{key} differs: {ma[key]} vs {mb[key]}"
