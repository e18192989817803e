"""Episode store (zarr v3): writer, reader, validator, sampler, normalizer."""

from robot_policy.data.normalizer import Normalizer, StatsError, compute_stats
from robot_policy.data.sampler import SequenceSampler, gather_windows, split_episodes
from robot_policy.data.store import CameraInfo, EpisodeData, EpisodeStore, StoreError
from robot_policy.data.validate import Problem, validate_store

__all__ = [
    "CameraInfo",
    "EpisodeData",
    "EpisodeStore",
    "Normalizer",
    "Problem",
    "SequenceSampler",
    "StatsError",
    "StoreError",
    "compute_stats",
    "gather_windows",
    "split_episodes",
    "validate_store",
]
