"""Per-dimension normalisation statistics of a store, and the Normalizer that applies them.

Stats per key: ``mean``, ``std``, ``min``, ``max``, ``q01``, ``q99`` (each the key's trailing shape) and
``mask`` (1 where the dimension is real: the union of the episodes' masks for ``state``/``action``, all
ones for other keys). Masked dimensions normalise to exactly 0 and unnormalise to 0. A dimension with no
spread (range below ``eps``) normalises to 0 around its centre instead of dividing by ~0.

Modes: ``gaussian`` (x - mean) / std; ``minmax`` to [-1, 1] over [min, max]; ``quantile`` to [-1, 1] over
[q01, q99] (robust to outliers; values beyond map outside [-1, 1]). The Normalizer works on numpy arrays
and torch tensors alike. A missing key or stat is an error, never a pass-through.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np

from robot_policy.data import format as fmt
from robot_policy.data.store import EpisodeData

STAT_NAMES = ("mean", "std", "min", "max", "q01", "q99", "mask")
MODES = {"gaussian": ("mean", "std"), "minmax": ("min", "max"), "quantile": ("q01", "q99")}

Stats = dict[str, dict[str, np.ndarray]]
A = TypeVar("A")


class StatsError(KeyError):
    """A normalisation stat is missing or malformed; the message names the key and stat."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


def compute_stats(data: EpisodeData, keys: list[str], max_rows: int = 1_000_000, seed: int = 0) -> Stats:
    """Stats of ``keys`` over the committed steps of ``data``.

    Mean, std, min and max use every row; quantiles use every row up to ``max_rows`` and a seeded random
    subset of ``max_rows`` rows beyond that (exact quantiles of 10M rows would need the whole array sorted).
    """
    stats: Stats = {}
    n = data.n_steps
    if n == 0:
        raise StatsError("cannot compute normalisation stats of an empty store")
    for key in keys:
        if key not in data.data:
            raise StatsError(f"no data key {key!r} to compute stats of; keys: {sorted(data.data)}")
        x = np.asarray(data.data[key][:n], dtype=np.float64)
        x = x.reshape(n, -1) if x.ndim == 1 else x
        sample = x if n <= max_rows else x[np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))]
        mask_key = {fmt.STATE: fmt.STATE_MASK, fmt.ACTION: fmt.ACTION_MASK}.get(key)
        if mask_key is not None and mask_key in data.meta:
            used = np.asarray(data.meta[mask_key])[: data.n_episodes].max(axis=0)
        else:
            used = np.ones(x.shape[1:], dtype=np.float64)
        q01, q99 = np.quantile(sample, [0.01, 0.99], axis=0)
        stats[key] = {
            "mean": x.mean(axis=0), "std": x.std(axis=0), "min": x.min(axis=0), "max": x.max(axis=0),
            "q01": q01, "q99": q99, "mask": used.astype(np.float64),
        }
    return stats


def stats_to_json(stats: Stats) -> dict[str, dict[str, list[float]]]:
    return {k: {s: np.asarray(v, dtype=np.float64).tolist() for s, v in d.items()} for k, d in stats.items()}


def stats_from_json(raw: Mapping[str, Mapping[str, Any]]) -> Stats:
    return {k: {s: np.asarray(v, dtype=np.float64) for s, v in d.items()} for k, d in raw.items()}


def merge_stats(parts: list[tuple[Stats, int]]) -> Stats:
    """Combine stats of several stores weighted by their step counts (multi-store training).

    Mean, std, min, max and mask combine exactly; quantiles are the step-weighted mean of the parts'
    quantiles (exact only when the stores share a distribution).
    """
    if not parts:
        raise StatsError("merge_stats needs at least one part")
    keys = set(parts[0][0])
    for stats, _ in parts[1:]:
        keys &= set(stats)
    merged: Stats = {}
    for key in sorted(keys):
        w = np.array([n for _, n in parts], dtype=np.float64)
        w = w / w.sum()
        means = np.stack([s[key]["mean"] for s, _ in parts])
        second = np.stack([s[key]["std"] ** 2 + s[key]["mean"] ** 2 for s, _ in parts])
        mean = np.tensordot(w, means, axes=1)
        merged[key] = {
            "mean": mean,
            "std": np.sqrt(np.maximum(np.tensordot(w, second, axes=1) - mean ** 2, 0.0)),
            "min": np.min(np.stack([s[key]["min"] for s, _ in parts]), axis=0),
            "max": np.max(np.stack([s[key]["max"] for s, _ in parts]), axis=0),
            "q01": np.tensordot(w, np.stack([s[key]["q01"] for s, _ in parts]), axes=1),
            "q99": np.tensordot(w, np.stack([s[key]["q99"] for s, _ in parts]), axes=1),
            "mask": np.max(np.stack([s[key]["mask"] for s, _ in parts]), axis=0),
        }
    return merged


class Normalizer:
    """Applies stats per key with a per-key mode.

    Args:
        stats: output of :func:`compute_stats` (or loaded from a checkpoint).
        modes: key -> mode (``gaussian``/``minmax``/``quantile``); only these keys can be normalised.
        eps: spread below which a dimension is treated as constant.
    """

    def __init__(self, stats: Stats, modes: Mapping[str, str], eps: float = 1e-6) -> None:
        self.stats = stats
        self.modes = dict(modes)
        self.eps = eps
        self._params: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for key, mode in self.modes.items():
            if mode not in MODES:
                raise ValueError(f"normalizer mode for {key!r}: unknown {mode!r}; modes: {sorted(MODES)}")
            if key not in stats:
                raise StatsError(f"no normalisation stats for key {key!r}; stats have {sorted(stats)}")
            for name in (*MODES[mode], "mask"):
                if name not in stats[key]:
                    raise StatsError(f"stats[{key!r}] has no {name!r} (mode {mode!r} needs {MODES[mode]} and mask)")
            self._params[key] = self._offset_scale(key, mode)
        self._torch_cache: dict[tuple[str, Any, Any], tuple[Any, Any, Any]] = {}

    def _offset_scale(self, key: str, mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = self.stats[key]
        if mode == "gaussian":
            center, half_range = s["mean"], s["std"]
        else:
            lo, hi = (s["min"], s["max"]) if mode == "minmax" else (s["q01"], s["q99"])
            center, half_range = (hi + lo) / 2.0, (hi - lo) / 2.0
        mask = np.asarray(s["mask"], dtype=np.float64)
        # Constant dims: unit scale around the centre, so they normalise to 0 and round-trip exactly.
        scale = np.where(half_range > self.eps, half_range, 1.0)
        return np.asarray(center, dtype=np.float64), scale, mask

    def _get(self, key: str, like: A) -> tuple[Any, Any, Any]:
        if key not in self._params:
            raise StatsError(f"normalizer has no stats for key {key!r}; it normalises {sorted(self._params)}")
        center, scale, mask = self._params[key]
        if isinstance(like, np.ndarray):
            return center.astype(like.dtype), scale.astype(like.dtype), mask.astype(like.dtype)
        import torch

        assert isinstance(like, torch.Tensor)
        cache_key = (key, like.device, like.dtype)
        if cache_key not in self._torch_cache:
            self._torch_cache[cache_key] = tuple(  # type: ignore[assignment]
                torch.as_tensor(p, dtype=like.dtype, device=like.device) for p in (center, scale, mask))
        return self._torch_cache[cache_key]

    def normalize(self, key: str, x: A) -> A:
        """(..., *dims) raw -> normalised; masked dims are exactly 0."""
        center, scale, mask = self._get(key, x)
        return (x - center) / scale * mask  # type: ignore[operator,no-any-return]

    def unnormalize(self, key: str, x: A) -> A:
        """Inverse of :meth:`normalize` on real dims; masked dims come back 0."""
        center, scale, mask = self._get(key, x)
        return (x * scale + center) * mask  # type: ignore[operator,no-any-return]

    def to_json(self) -> dict[str, Any]:
        return {"modes": self.modes, "eps": self.eps,
                "stats": stats_to_json({k: self.stats[k] for k in self.modes})}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Normalizer:
        for key in ("modes", "stats"):
            if key not in raw:
                raise StatsError(f"normalizer JSON has no {key!r}")
        return cls(stats_from_json(raw["stats"]), raw["modes"], float(raw.get("eps", 1e-6)))
