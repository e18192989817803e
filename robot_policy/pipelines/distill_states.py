"""The observation windows a distillation run trains on, as its configuration asks for them.

* :func:`demo_stores`: ``dataset=``, or the stores the teacher records that hold its embodiment;
* :func:`rollout_bank`: the teacher's rollout windows (a residual teacher's with their target chunks),
  rolled out once and cached in the run directory (``rollout_states.safetensors``) for a resumed run;
* :func:`gather_states`: both as weighted sources, and what the student's checkpoint records about them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from robot_policy.algorithms.distill_states import (
    StoreWindows,
    WindowBank,
    WindowSource,
    collect_rollout_windows,
)
from robot_policy.algorithms.vector_rollout import VectorRollout
from robot_policy.data.store import EpisodeStore
from robot_policy.envs.base import TaskConfig
from robot_policy.envs.vector import make_vector_env
from robot_policy.pipelines.distill_teacher import Teacher, noise_chooser, residual_rollout_windows

if TYPE_CHECKING:
    from robot_policy.pipelines.distill import DistillRunConfig

#: the teacher's rollout windows, cached in the run directory
ROLLOUT_STATES = "rollout_states.safetensors"


def gather_states(cfg: DistillRunConfig, task: TaskConfig, teacher: Teacher, run_dir: Path, execute_horizon: int
                   ) -> tuple[list[WindowSource], list[float], dict[str, Any]]:
    """The window sources with their weights, and what the checkpoint records about them. A residual
    teacher's windows are its successful rollouts only (they carry the target chunks)."""
    base = teacher.base
    sources: list[WindowSource] = []
    weights: list[float] = []
    info: dict[str, Any] = {}
    if cfg.demo_weight > 0 and teacher.kind != "residual":
        paths = demo_stores(cfg, teacher)
        demos = StoreWindows(paths, base.obs_horizon, base.horizon, base.object_state_dim, base.cameras,
                             tuple(base.model.cfg.obs_encoder.image_size))  # type: ignore[arg-type]
        sources.append(demos)
        weights.append(cfg.demo_weight)
        info.update(datasets=paths, dataset_episodes=demos.episodes, demo_windows=len(demos))
    if cfg.rollout_episodes > 0 and (cfg.rollout_weight > 0 or teacher.kind == "residual"):
        bank, results = rollout_bank(cfg, task, teacher, run_dir, execute_horizon)
        sources.append(bank)
        weights.append(cfg.rollout_weight if teacher.kind != "residual" else 1.0)
        info.update(rollout_episodes=len(results), rollout_windows=len(bank),
                    rollout_success_rate=float(np.mean([s for _, s, _ in results])) if results else 0.0,
                    rollout_seeds=[cfg.rollout_seed, cfg.rollout_seed + cfg.rollout_episodes - 1])
    if not sources:
        raise ValueError("no windows to distil on: a residual teacher needs rollout_episodes > 0; otherwise give "
                         "demo_weight > 0 or rollout_episodes > 0 with rollout_weight > 0")
    return sources, weights, info


def demo_stores(cfg: DistillRunConfig, teacher: Teacher) -> list[str]:
    """``dataset``, or the stores the teacher records that hold its embodiment (a multi-embodiment teacher's
    other stores are another robot's windows)."""
    base = teacher.base
    paths = [cfg.dataset] if cfg.dataset else [str(p) for p in base.meta.get("datasets") or []]
    missing = [p for p in paths if not Path(p).exists()]
    if not paths or missing:
        raise FileNotFoundError(f"demonstration store(s) {missing or paths} of teacher {base.path} not found: pass "
                                "dataset=STORE (the store it was trained on), or demo_weight=0 to distil on "
                                "rollouts only")
    embodiments = {}
    for p in paths:
        with EpisodeStore.open(p) as store:
            embodiments[p] = store.embodiment.name
    kept = [p for p in paths if embodiments[p] == base.embodiment.name]
    if not kept:
        raise ValueError(f"the teacher drives {base.embodiment.name}; the demonstration store(s) record "
                         f"{embodiments}: pass dataset=STORE of that embodiment, or demo_weight=0")
    return kept


def rollout_bank(cfg: DistillRunConfig, task: TaskConfig, teacher: Teacher, run_dir: Path, execute_horizon: int
                  ) -> tuple[WindowBank, list[tuple[int, bool, int]]]:
    """The teacher's rollout windows: loaded from ``out/rollout_states.safetensors`` when it was made by the
    same teacher on the same seeds, else rolled out (and saved there)."""
    path = run_dir / ROLLOUT_STATES
    key_fields = {"teacher": teacher.content_hash, "episodes": cfg.rollout_episodes, "seed": cfg.rollout_seed,
                  "execute_horizon": execute_horizon, "successes_only": cfg.successes_only,
                  "task": dataclasses.asdict(task)}
    if teacher.kind == "residual":  # only its windows depend on it (and older runs' keys lack it)
        key_fields["residual_same_noise"] = cfg.residual_same_noise
    key = json.loads(json.dumps(key_fields, default=str))
    if path.exists():
        bank, meta = WindowBank.load(path)
        if meta.get("key") == key:
            return bank, [tuple(r) for r in meta["results"]]  # type: ignore[misc]
        if cfg.resume:
            raise ValueError(f"{path} holds rollouts of another teacher, task or seeds than this run's; the run "
                             "cannot be resumed as it was")
    seeds = range(cfg.rollout_seed, cfg.rollout_seed + cfg.rollout_episodes)
    if teacher.kind == "residual":
        found, results = residual_rollout_windows(teacher, task, seeds, cfg.successes_only, cfg.progress,
                                                  same_noise=cfg.residual_same_noise)
        if found is None:
            raise RuntimeError(f"the residual teacher succeeded in none of its {len(results)} rollouts (seeds "
                               f"{seeds.start}..{seeds.stop - 1}): nothing to distil (successes_only=false "
                               "distils every episode)")
        bank = found
    else:
        envs = make_vector_env(task, min(cfg.num_envs, cfg.rollout_episodes))
        try:
            rollout = VectorRollout(envs, teacher.base, iter(seeds), execute_horizon)
            bank, results = collect_rollout_windows(rollout, noise_chooser(teacher), cfg.progress, len(seeds))
        finally:
            envs.close()
    run_dir.mkdir(parents=True, exist_ok=True)
    bank.save(path, {"key": key, "results": results})
    return bank, results
