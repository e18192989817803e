"""A fine-tuning run's curve and report: ``report.md`` and ``curve.png`` in the run directory.

    evaluate_run_checkpoints("runs/ft", seeds=range(1_000_000, 1_000_100))   # -> runs/ft/heldout.json
    write_report("runs/ft")                                                  # -> report.md, curve.png

The curve is success against env steps and against wall time: the periodic evaluations on tuning seeds
(from ``metrics.jsonl``) and, once :func:`evaluate_run_checkpoints` ran, every kept checkpoint on held-out
seeds with 95% Wilson intervals; the starting policy (the base alone on the same seeds) is a horizontal line.
Held-out evaluation here runs the composites batched over vector envs (as fine-tuning evaluates), so an
episode may differ from ``robot-policy eval``'s one-env run of the same seed by float rounding in the
batched base call; the rates are the same estimate.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robot_policy.algorithms.registry import ALGORITHMS, make_algorithm
from robot_policy.algorithms.vector_rollout import VectorRollout
from robot_policy.envs.registry import task_config_from_dict
from robot_policy.envs.vector import make_vector_env
from robot_policy.eval.stats import wilson_interval
from robot_policy.models import checkpoint as ckpt
from robot_policy.models.frozen_base import FrozenBase
from robot_policy.pipelines.finetune import evaluate_composite

HELDOUT = "heldout.json"


class BaseOnly:
    """The base alone, stepped like a composite (the starting policy of a run)."""

    def __init__(self, base: FrozenBase) -> None:
        self.base = base

    def policy_step(self, rollout: VectorRollout) -> np.ndarray:
        due = rollout.due()
        if due.any():
            rollout.plan(rollout.draw_noise(due), due)
        return self.base.to_unified(rollout.base_actions())


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics; is {run_dir} a fine-tuning run directory?")
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a crash
            continue
    return rows


def _step_dirs(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    dirs = [d for d in root.iterdir() if d.is_dir() and d.name.startswith("step_") and ckpt.is_complete(d)]
    return sorted(dirs, key=lambda d: int(ckpt.load_config(d)["env_steps"]))


def evaluate_run_checkpoints(run_dir: str | Path, seeds: Iterable[int], num_envs: int = 8,
                             progress: bool = True, max_checkpoints: int = 0) -> Path:
    """Evaluate the base and the kept checkpoints of a run on ``seeds``; write ``heldout.json``.

    ``max_checkpoints`` > 0 evaluates only that many, evenly spaced over the kept ones, the last included."""
    from tqdm import tqdm

    run_dir = Path(run_dir)
    seeds = list(seeds)
    dirs = _step_dirs(run_dir)
    if not dirs:
        raise FileNotFoundError(f"{run_dir}/checkpoints: no complete checkpoint to evaluate")
    if 0 < max_checkpoints < len(dirs):
        picks = np.linspace(len(dirs) - 1, 0, max_checkpoints).round().astype(int)
        dirs = [dirs[i] for i in sorted(set(picks.tolist()))]
    meta = ckpt.load_config(dirs[-1])
    task = task_config_from_dict(meta["task"], where=f"{dirs[-1]}/config.json task")
    base = FrozenBase.from_checkpoint(meta["base"]["path"], sampler=meta["base"]["sampler"],
                                      num_steps=int(meta["base"]["num_steps"]), language=meta["base"]["language"])
    horizon = int(meta["base"]["execute_horizon"])
    name = meta["composite"]["kind"]
    rows: list[dict[str, Any]] = []
    envs = make_vector_env(task, num_envs)
    try:
        for d in tqdm([None, *dirs], desc="held-out checkpoints", disable=not progress):
            if d is None:
                stepper: Any = BaseOnly(base)
                env_steps, wall = 0, 0.0
            else:
                m = ckpt.load_config(d)
                if m["base"]["content_hash"] != base.content_hash:
                    raise ValueError(f"{d}: fine-tuned on another base than {dirs[-1]}")
                stepper = make_algorithm(name, ALGORITHMS[name][0](**m["rl"]), base, num_envs, 0, horizon)
                stepper.actor.load_state_dict(ckpt.strip_prefix(ckpt.load_model_state(d), "actor."))
                env_steps, wall = int(m["env_steps"]), float(m["wall_seconds"])
            with torch.no_grad():
                results = evaluate_composite(stepper, envs, base, seeds, horizon)
            wins = sum(s for _, s, _ in results)
            lo, hi = wilson_interval(wins, len(results))
            rows.append({"checkpoint": None if d is None else d.name, "env_steps": env_steps, "wall_seconds": wall,
                         "successes": wins, "episodes": len(results), "success_rate": wins / len(results),
                         "ci95_low": lo, "ci95_high": hi, "seeds": [seeds[0], seeds[-1]]})
    finally:
        envs.close()
    out = run_dir / HELDOUT
    out.write_text(json.dumps(rows, indent=1))
    return out


def _plot(run_dir: Path, tuning: list[dict[str, Any]], heldout: list[dict[str, Any]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, scale, label in ((axes[0], "env_steps", 1e-3, "env steps (thousands)"),
                                  (axes[1], "wall_seconds", 1 / 60, "wall time (min)")):
        if tuning:
            ax.plot([r[key] * scale for r in tuning], [100 * r["eval/success_rate"] for r in tuning], "o--",
                    color="tab:gray", label=f"tuning seeds ({tuning[0]['eval/episodes']} episodes)")
        if heldout:
            x = [r[key] * scale for r in heldout]
            y = np.array([100 * r["success_rate"] for r in heldout])
            err = np.array([[100 * (r["success_rate"] - r["ci95_low"]), 100 * (r["ci95_high"] - r["success_rate"])]
                            for r in heldout]).T
            ax.errorbar(x, y, yerr=err, fmt="o-", color="tab:blue", capsize=3,
                        label=f"held-out seeds ({heldout[0]['episodes']} episodes, 95% CI)")
        start = heldout[0]["success_rate"] if heldout else (tuning[0]["eval/success_rate"] if tuning else None)
        if start is not None:
            ax.axhline(100 * start, color="tab:red", lw=1, label="starting policy")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("success (%)")
    axes[0].set_ylim(0, 102)
    if tuning or heldout:
        axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = run_dir / "curve.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_report(run_dir: str | Path) -> Path:
    """``report.md`` + ``curve.png`` from the run's metrics, config and (if present) ``heldout.json``."""
    run_dir = Path(run_dir)
    rows = _metrics(run_dir)
    tuning = [r for r in rows if "eval/success_rate" in r]
    train = [r for r in rows if "perf/env_steps_per_second" in r]
    heldout = json.loads((run_dir / HELDOUT).read_text()) if (run_dir / HELDOUT).exists() else []
    config = json.loads((run_dir / "finetune_config.json").read_text())
    curve = _plot(run_dir, tuning, heldout)
    ft = config["finetune"]
    last = rows[-1] if rows else {}
    lines = [f"# Fine-tuning report: {run_dir.name}", "",
             f"- algorithm: `{ft['algorithm']}`; base: `{ft['base']}`; task: `{config['task']['name']}`",
             f"- command: `{config.get('command') or 'library call'}`",
             (f"- budget: {ft['total_env_steps']:,} env steps or {ft['max_wall_minutes']} min; ran "
              f"{last.get('env_steps', 0):,} env steps in {last.get('wall_seconds', 0) / 60:.1f} min "
              f"({ft['num_envs']} envs)")]
    if train:
        sps = float(np.mean([r["perf/env_steps_per_second"] for r in train]))
        share = float(np.mean([r["perf/base_share"] for r in train]))
        lines.append(f"- throughput: {sps:.0f} env steps/s on average, {100 * share:.0f}% of the time in base inference")
    lines += ["", f"![curve]({curve.name})", "", "## Evaluations on tuning seeds (periodic, during the run)", "",
              "| env steps | wall (min) | success | 95% CI |", "|---:|---:|---:|---|"]
    for r in tuning:
        lines.append(f"| {r['env_steps']:,} | {r['wall_seconds'] / 60:.1f} | {100 * r['eval/success_rate']:.1f}% "
                     f"of {r['eval/episodes']} | [{100 * r['eval/ci95_low']:.1f}, {100 * r['eval/ci95_high']:.1f}] |")
    if heldout:
        lines += ["", f"## Held-out seeds {heldout[0]['seeds'][0]}-{heldout[0]['seeds'][1]} (every kept checkpoint)",
                  "", "| checkpoint | env steps | wall (min) | success | 95% CI |", "|---|---:|---:|---:|---|"]
        for r in heldout:
            lines.append(f"| {r['checkpoint'] or 'base (start)'} | {r['env_steps']:,} | {r['wall_seconds'] / 60:.1f} | "
                         f"{r['successes']}/{r['episodes']} = {100 * r['success_rate']:.1f}% | "
                         f"[{100 * r['ci95_low']:.1f}, {100 * r['ci95_high']:.1f}] |")
    out = run_dir / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out
