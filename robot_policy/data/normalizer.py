"""Per-dimension normalisation statistics of stores, and the Normalizer that applies them.

Stats per key: ``mean``, ``std``, ``min``, ``max``, ``q01``, ``q99`` and ``count`` (each the key's trailing
shape) and ``mask`` (1 where the dimension is real). For ``state``/``action`` a slot's statistics come only
from the rows of the episodes whose mask uses that slot: a slot one arm leaves unused contributes nothing
(not zeros), so stores of different arms mix without pulling each other's statistics toward zero.
``count`` is the number of rows behind each slot (0 and ``mask`` 0 for a slot no episode uses; its other
stats are then 0). Other keys use every row of every episode.

Merging stores (:func:`merge_stats`) is exact: mean, std, min, max and count combine with per-slot counts
(Chan's parallel formula), and quantiles are recomputed over the masked rows of all stores together from the
row ``sample`` each part carries. The sample holds every masked row of a slot up to ``max_rows`` per store
(exact quantiles; the stores here have ~10-20k rows), and beyond that a seeded uniform subsample of
``max_rows`` rows, each weighted by ``count / max_rows`` in the merge (rank error ~ sqrt(q (1 - q) /
max_rows), 3e-4 at q = 0.01 and the default 100k). The sample is for merging only: it is not written to
JSON and not kept by the Normalizer.

Modes: ``gaussian`` (x - mean) / std; ``minmax`` to [-1, 1] over [min, max]; ``quantile`` to [-1, 1] over
[q01, q99] (robust to outliers; values beyond map outside [-1, 1]). Masked dimensions normalise to exactly
0 and unnormalise to 0; a dimension with no spread (range below ``eps``) normalises to 0 around its centre
instead of dividing by ~0. The Normalizer works on numpy arrays and torch tensors alike. A missing key or
stat is an error, never a pass-through.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from robot_policy.data import format as fmt
from robot_policy.data.store import EpisodeData

MODES = {"gaussian": ("mean", "std"), "minmax": ("min", "max"), "quantile": ("q01", "q99")}
#: Per-part row sample (R, *dims) used by :func:`merge_stats` for exact quantiles; NaN pads a slot's column
#: below its own number of sampled rows. Never serialised.
SAMPLE = "sample"
QUANTILES = (0.01, 0.99)
#: Mask metadata of the keys whose slots may be unused per episode.
MASK_KEYS = {fmt.STATE: fmt.STATE_MASK, fmt.ACTION: fmt.ACTION_MASK}

Stats = dict[str, dict[str, np.ndarray]]
A = TypeVar("A")


class StatsError(KeyError):
    """A normalisation stat is missing or malformed; the message names the key and stat."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


def row_mask(data: EpisodeData, key: str) -> np.ndarray:
    """(T, D) bool: which rows count for each dimension of ``key``, from the episodes' masks.

    ``state``/``action`` use each episode's ``state_mask``/``action_mask`` (meta, (E, 128)); other keys
    count every row.
    """
    n = data.n_steps
    width = int(np.prod(np.shape(data.data[key])[1:], dtype=np.int64))
    mask_key = MASK_KEYS.get(key)
    if mask_key is None:
        return np.ones((n, width), dtype=bool)
    if mask_key not in data.meta:
        raise StatsError(f"stats of {key!r} need the episodes' {mask_key!r} (meta); meta has {sorted(data.meta)}")
    masks = np.asarray(data.meta[mask_key])[: data.n_episodes] > 0  # (E, D)
    if masks.shape != (data.n_episodes, width):
        raise StatsError(f"meta {mask_key!r} has shape {masks.shape}, expected ({data.n_episodes}, {width})")
    return np.repeat(masks, data.episode_lengths, axis=0)  # (T, D)


def masked_stats(x: np.ndarray, used: np.ndarray, max_rows: int = 100_000, seed: int = 0) -> dict[str, np.ndarray]:
    """Stats of the columns of ``x`` (T, D) over the rows ``used`` (T, D) marks, per column.

    A column with no used row gets count 0, mask 0 and zeros elsewhere. The returned ``sample`` (R, D)
    holds each column's used rows (a seeded subsample of ``max_rows`` beyond that), NaN-padded.
    """
    if x.ndim != 2 or used.shape != x.shape:
        raise ValueError(f"masked_stats: x {x.shape} and used {used.shape} must be the same (T, D)")
    xf = x.astype(np.float64, copy=False)
    count = used.sum(axis=0).astype(np.float64)  # (D,)
    has = count > 0
    safe = np.where(has, count, 1.0)
    mean = np.where(used, xf, 0.0).sum(axis=0) / safe
    # Two passes (mean, then squared deviations) keep the variance exact for large offsets.
    var = np.where(used, (xf - mean) ** 2, 0.0).sum(axis=0) / safe
    lo = np.where(has, np.where(used, xf, np.inf).min(axis=0, initial=np.inf), 0.0)
    hi = np.where(has, np.where(used, xf, -np.inf).max(axis=0, initial=-np.inf), 0.0)
    # The sample keeps the input's float precision (float32 stores stay float32), so quantiles of merged
    # samples equal quantiles of the concatenated rows bit for bit.
    dtype = np.result_type(x.dtype, np.float32)
    columns = []
    for j in range(x.shape[1]):
        col = x[used[:, j], j]
        if col.size > max_rows:
            keep = np.random.default_rng([seed, j]).choice(col.size, max_rows, replace=False)
            col = col[np.sort(keep)]
        columns.append(col.astype(dtype, copy=False))
    sample = np.full((max((c.size for c in columns), default=0), x.shape[1]), np.nan, dtype=dtype)
    for j, col in enumerate(columns):
        sample[: col.size, j] = col
    # One quantile rule for one store and for a merge of stores (a subsampled column is weighted the same way
    # in both), so `dataset stats` and training agree on q01/q99.
    q = _pooled_quantiles([sample], [count])
    return {"mean": np.where(has, mean, 0.0), "std": np.sqrt(np.where(has, var, 0.0)), "min": lo, "max": hi,
            "q01": q[0], "q99": q[1], "mask": has.astype(np.float64), "count": count, SAMPLE: sample}


def compute_stats(data: EpisodeData, keys: list[str], max_rows: int = 100_000, seed: int = 0) -> Stats:
    """Stats of ``keys`` over the committed steps of ``data``; each slot of ``state``/``action`` over the rows
    of the episodes whose mask uses it (see the module docstring; ``max_rows`` bounds the row sample).

    Keys of trailing shape (d1, d2, ...) are flattened to (T, d1*d2*...) and the stats reshaped back.
    """
    stats: Stats = {}
    n = data.n_steps
    if n == 0:
        raise StatsError("cannot compute normalisation stats of an empty store")
    for key in keys:
        if key not in data.data:
            raise StatsError(f"no data key {key!r} to compute stats of; keys: {sorted(data.data)}")
        x = np.asarray(data.data[key][:n])
        dims = x.shape[1:] or (1,)  # a (T,) key has (1,) stats
        s = masked_stats(x.reshape(n, -1), row_mask(data, key), max_rows=max_rows, seed=seed)
        stats[key] = {k: (v if k == SAMPLE else v.reshape(dims)) for k, v in s.items()}
    return stats


def stats_to_json(stats: Stats) -> dict[str, dict[str, list[float]]]:
    """Plain lists for JSON (checkpoints, ``dataset stats``); the merge-only row sample is left out."""
    return {k: {s: np.asarray(v, dtype=np.float64).tolist() for s, v in d.items() if s != SAMPLE}
            for k, d in stats.items()}


def stats_from_json(raw: Mapping[str, Mapping[str, Any]]) -> Stats:
    return {k: {s: np.asarray(v, dtype=np.float64) for s, v in d.items()} for k, d in raw.items()}


def _pooled_quantiles(samples: Sequence[np.ndarray], counts: Sequence[np.ndarray]) -> np.ndarray:
    """(len(QUANTILES), D) quantiles of each column over the parts' samples (R_p, D) pooled.

    Where every part's sample of a column is complete (as many rows as its count), this is
    ``np.quantile`` of the concatenated masked rows; otherwise each sampled row stands for
    ``count / sampled`` rows (weighted inverted-CDF quantile).
    """
    width = samples[0].shape[1]
    out = np.zeros((len(QUANTILES), width))
    for j in range(width):
        cols, weights, complete = [], [], True
        for sample, count in zip(samples, counts):
            col = sample[:, j][~np.isnan(sample[:, j])].astype(np.float64)
            if col.size:
                cols.append(col)
                weights.append(np.full(col.size, count[j] / col.size))
                complete &= bool(col.size == count[j])
        if not cols:
            continue
        values = np.concatenate(cols)
        if complete:
            out[:, j] = np.quantile(values, QUANTILES)
        else:
            out[:, j] = np.quantile(values, QUANTILES, weights=np.concatenate(weights), method="inverted_cdf")
    return out


def merge_stats(parts: list[tuple[Stats, int]]) -> Stats:
    """Combine the stats of several stores (multi-store training), each part ``(stats, n_steps)``.

    Exact per slot: mean, std, min, max and count combine with the parts' per-slot ``count`` (a part whose
    episodes never use a slot adds nothing to it), and q01/q99 are recomputed over the pooled row samples
    (see the module docstring). ``n_steps`` (the store's step count) is checked against the counts. The
    result carries no row sample. Keys in only some parts are dropped (the policy sees what all share).
    """
    if not parts:
        raise StatsError("merge_stats needs at least one part")
    keys = set(parts[0][0])
    for stats, _ in parts[1:]:
        keys &= set(stats)
    merged: Stats = {}
    for key in sorted(keys):
        for i, (stats, n) in enumerate(parts):
            for name in ("mean", "std", "min", "max", "count", SAMPLE):
                if name not in stats[key]:
                    raise StatsError(f"merge_stats: part {i} stats[{key!r}] has no {name!r} (stats loaded from "
                                     "JSON or an old checkpoint cannot be merged exactly: compute them from the stores)")
            if np.max(stats[key]["count"], initial=0) > n:
                raise StatsError(f"merge_stats: part {i} stats[{key!r}] counts {int(np.max(stats[key]['count']))} "
                                 f"rows in a slot, but the part has {n} steps")
        dims = np.shape(parts[0][0][key]["mean"])
        flat = [{s: np.asarray(v, dtype=np.float64).reshape(-1) for s, v in st[key].items() if s != SAMPLE}
                for st, _ in parts]
        count = np.sum([f["count"] for f in flat], axis=0)  # (D,)
        has = count > 0
        safe = np.where(has, count, 1.0)
        mean = np.sum([f["count"] * f["mean"] for f in flat], axis=0) / safe
        # Sum of squared deviations about the pooled mean: each part's own plus its offset term.
        m2 = np.sum([f["count"] * (f["std"] ** 2 + (f["mean"] - mean) ** 2) for f in flat], axis=0)
        used = [f["count"] > 0 for f in flat]
        lo = np.min([np.where(u, f["min"], np.inf) for f, u in zip(flat, used)], axis=0)
        hi = np.max([np.where(u, f["max"], -np.inf) for f, u in zip(flat, used)], axis=0)
        samples = [np.asarray(st[key][SAMPLE]).reshape(np.shape(st[key][SAMPLE])[0], -1) for st, _ in parts]
        q = _pooled_quantiles(samples, [f["count"] for f in flat])
        out = {"mean": np.where(has, mean, 0.0), "std": np.sqrt(np.where(has, m2 / safe, 0.0)),
               "min": np.where(has, lo, 0.0), "max": np.where(has, hi, 0.0), "q01": q[0], "q99": q[1],
               "mask": has.astype(np.float64), "count": count}
        merged[key] = {s: v.reshape(dims) for s, v in out.items()}
    return merged


class Normalizer:
    """Applies stats per key with a per-key mode.

    The stats' ``mask`` is the union over the episodes (and stores) they come from: a slot no episode uses
    normalises to exactly 0. A slot real in another store's episodes is zeroed per row by that row's own
    mask, which the model applies (it reads ``state * state_mask`` and trains on ``action * action_mask``).

    Args:
        stats: output of :func:`compute_stats` / :func:`merge_stats` (or loaded from a checkpoint).
        modes: key -> mode (``gaussian``/``minmax``/``quantile``); only these keys can be normalised.
        eps: spread below which a dimension is treated as constant.
    """

    def __init__(self, stats: Stats, modes: Mapping[str, str], eps: float = 1e-6) -> None:
        # The merge-only row sample is large and never needed to normalise.
        self.stats = {k: {s: v for s, v in d.items() if s != SAMPLE} for k, d in stats.items()}
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
