"""Run reports: a markdown page with the success table, the loss curve and a rollout video."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on machines without a display
import matplotlib.pyplot as plt


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss_curve(metrics: list[dict[str, Any]], out: Path, title: str = "training loss") -> Path:
    """Training loss (and validation loss where logged) against step, log scale; written as PNG."""
    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    val = [(m["step"], m["val_loss"]) for m in metrics if "val_loss" in m]
    if not train:
        raise ValueError("no training loss in metrics.jsonl to plot")
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    ax.plot(*zip(*train), label="train (mean over log window)")
    if val:
        ax.plot(*zip(*val), marker="o", label="validation (EMA weights)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("diffusion loss (x0 MSE, normalised)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def success_table(evals: list[dict[str, Any]]) -> str:
    lines = ["| task | policy | episodes | seeds | success | 95% CI (Wilson) | mean episode length |",
             "|---|---|---:|---|---:|---|---:|"]
    for r in evals:
        seeds = f"{r['seed']}-{r['seed'] + r['episodes'] - 1}"
        lines.append(f"| {r['task']} | {Path(str(r['policy'])).name} | {r['episodes']} | {seeds} | "
                     f"{_pct(r['success_rate'])} | {_pct(r['ci95_low'])}-{_pct(r['ci95_high'])} | "
                     f"{r['mean_episode_length']:.1f} |")
    return "\n".join(lines)


def write_run_report(report_dir: Path, title: str, evals: list[dict[str, Any]], train_run: Path | None,
                     sections: dict[str, str] | None = None, timings: dict[str, float] | None = None) -> Path:
    """``report_dir/report.md`` with the success table, ``loss_curve.png`` and the first rollout video."""
    report_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", "", "## Success on held-out seeds", "", success_table(evals), ""]
    if train_run is not None:
        metrics = read_metrics(train_run)
        if metrics:
            plot_loss_curve(metrics, report_dir / "loss_curve.png")
            last = next(m for m in reversed(metrics) if "loss" in m)
            val = next((m for m in reversed(metrics) if "val_loss" in m), None)
            summary = f"Final training loss {last['loss']:.4g} at step {last['step']}"
            if val is not None:
                summary += f"; validation loss {val['val_loss']:.4g} at step {val['step']}"
            if last.get("train_seconds"):
                summary += f"; {last['train_seconds'] / 60:.1f} min of training"
            parts += ["## Training", "", "![loss curve](loss_curve.png)", "", summary + ".", ""]
    videos = [e["video"] for r in evals for e in r["per_episode"] if e.get("video")]
    if videos:
        parts += ["## Rollouts", ""]
        for video in videos[:2]:
            target = report_dir / "videos" / Path(video).name
            target.parent.mkdir(parents=True, exist_ok=True)
            if Path(video).resolve() != target.resolve():
                shutil.copyfile(video, target)
            seed = Path(video).stem.split("_")[-1]
            ok = next((e["success"] for r in evals for e in r["per_episode"] if e.get("video") == video), None)
            parts.append(f"- [seed {seed}](videos/{target.name}) ({'success' if ok else 'failure'})")
        parts.append("")
    if timings:
        parts += ["## Time", "", "| stage | seconds |", "|---|---:|"]
        parts += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
        parts.append("")
    for heading, body in (sections or {}).items():
        parts += [f"## {heading}", "", body.strip(), ""]
    path = report_dir / "report.md"
    path.write_text("\n".join(parts))
    return path


def collate_success(eval_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """One record per evaluation: success with its interval, and how the evaluated policy was trained.

    Reads ``<dir>/eval.json`` and, for checkpoint policies, the run's ``train_config.json`` and
    ``metrics.jsonl`` (training wall time, steps, datasets, demonstrations, commands).
    """
    rows = []
    for d in eval_dirs:
        path = Path(d) / "eval.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no eval.json (run robot-policy eval ... out={d})")
        ev = json.loads(path.read_text())
        row: dict[str, Any] = {"eval": ev, "train": None, "train_seconds": None, "step": None}
        checkpoint = Path(str(ev["policy"]).split(" (")[0])
        if (checkpoint / "config.json").exists():
            row["step"] = json.loads((checkpoint / "config.json").read_text()).get("step")
        run_dir = next((p for p in (checkpoint, *checkpoint.parents) if (p / "train_config.json").exists()), None)
        if run_dir is not None:
            row["train"] = json.loads((run_dir / "train_config.json").read_text())
            seconds = [m.get("train_seconds") for m in read_metrics(run_dir)]
            row["train_seconds"] = next((t for t in reversed(seconds) if t is not None), None)
        rows.append(row)
    return rows
