"""``robot-policy finetune`` end to end on the tiny base (test_rl_components.py builds it): each algorithm runs
a few hundred env steps on 2 envs and resumes; the refusals (resume with nothing to resume, a second run in
the same directory, another base); ``robot-policy eval`` of the composites it wrote; ``finetune report``;
SIGINT saves and resume continues.

Runs are tiny (2 envs, 40-step episodes, 2 evaluation episodes): they check the plumbing (checkpoints, metrics,
resume state, report), not that RL improves the base. Everything goes through ``robot_policy.cli.main.main``
in this process, except the signal test, which needs its own process to signal.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.torch import load_file
from signals import interrupt_once_logged
from test_rl_components import tiny_base_checkpoint

from robot_policy.cli.main import main as cli_main
from robot_policy.models import checkpoint as ckpt
from robot_policy.policies.composite import (
    COMPOSITE_FORMAT,
    NoiseActorComposite,
    ResidualComposite,
    load_composite,
)

TASK = "pybullet_bimanual_lift"

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

#: the options every run here shares
COMMON = ["num_envs=2", "eval_episodes=2", "progress=false", "task.max_steps=40", "fsync=false"]
#: per algorithm: its own options and the budget of the first run (the resume doubles it)
RUNS: dict[str, tuple[list[str], int]] = {
    "residual_ppo": (["eval_every=128", "rl.rollout_steps=64"], 256),
    "dsrl_sac": (["eval_every=64", "rl.iteration_env_steps=64", "rl.warmup_chunks=4", "rl.batch_size=8", "rl.utd=1"],
                 128),
    "dsrl_na": (["eval_every=64", "rl.iteration_env_steps=64", "rl.warmup_chunks=4", "rl.batch_size=8", "rl.utd=1",
                 "rl.na_decode_batch=4"], 128),
}


def finetune_args(kind: str, base: Path, out: Path, *extra: str) -> list[str]:
    own, budget = RUNS[kind]
    return ["finetune", f"rl={kind}", f"base={base}", f"out={out}", *COMMON, *own, f"total_env_steps={budget}",
            *extra]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def step_dirs(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step_"))


@pytest.fixture(scope="session")
def base_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_base_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def finetuned(base_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, float]]:
    """``kind`` -> (the run directory of its first run, its seconds), each run once per module. Tests that
    change a run work on a copy."""
    runs: dict[str, tuple[Path, float]] = {}

    def get(kind: str) -> tuple[Path, float]:
        if kind not in runs:
            out = tmp_path_factory.mktemp(f"ft_{kind}") / "run"
            t0 = time.perf_counter()
            assert cli_main(finetune_args(kind, base_ckpt, out)) == 0
            runs[kind] = (out, time.perf_counter() - t0)
        return runs[kind]

    return get


@pytest.mark.parametrize("kind", list(RUNS))
def test_finetune_writes_checkpoints_metrics_report_and_resumes(kind: str, base_ckpt: Path, tmp_path: Path,
                                                               finetuned: Callable[[str], tuple[Path, float]]
                                                               ) -> None:
    """A run of B env steps (evaluating every B/2) writes a composite checkpoint at every evaluation, metrics
    (evaluations at 0, B/2, B; training rows at every iteration), report.md and curve.png; the composite loads
    on its base. resume=true with a budget of 2B continues from B: the metrics go on past B without repeating
    a step, the last checkpoint is at 2B, and the resume state (seed counter, updates, DSRL's replay) carries
    over."""
    run, seconds = finetuned(kind)
    _, budget = RUNS[kind]
    half = budget // 2
    print(f"{kind}: first run {seconds:.1f} s")
    assert step_dirs(run) == [f"step_{half:07d}", f"step_{budget:07d}"]
    assert {p.name for p in run.iterdir()} >= {"checkpoints", "metrics.jsonl", "report.md", "curve.png", "tb",
                                               "finetune_config.json"}
    assert (run / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"algorithm: `{kind}`" in (run / "report.md").read_text()
    latest = ckpt.latest_checkpoint(run)
    assert latest == run / "checkpoints" / f"step_{budget:07d}"
    meta = ckpt.load_config(latest)
    assert meta["format"] == COMPOSITE_FORMAT and meta["composite"]["kind"] == kind and meta["env_steps"] == budget
    assert meta["base"]["path"] == str(base_ckpt) and meta["task"]["max_steps"] == 40
    assert all(k.startswith("actor.") for k in load_file(str(latest / ckpt.MODEL)))
    rows = metrics(run)
    evals = [r["env_steps"] for r in rows if "eval/success_rate" in r]
    train = [r["env_steps"] for r in rows if "perf/env_steps_per_second" in r]
    assert evals == [0, half, budget] and train == [half, budget]
    assert all(r["eval/episodes"] == 2 for r in rows if "eval/success_rate" in r)
    composite = load_composite(latest)
    assert isinstance(composite, ResidualComposite if kind == "residual_ppo" else NoiseActorComposite)
    _, state = ckpt.load_train_state(latest)
    assert state["env_steps"] == budget

    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed, symlinks=True)  # `latest` stays a link
    t0 = time.perf_counter()
    assert cli_main(finetune_args(kind, base_ckpt, resumed, "resume=true", f"total_env_steps={2 * budget}")) == 0
    print(f"{kind}: resume {time.perf_counter() - t0:.1f} s")
    rows2 = metrics(resumed)
    assert rows2[:len(rows)] == rows  # the first run's entries, kept as they were
    train2 = [r["env_steps"] for r in rows2 if "perf/env_steps_per_second" in r]
    evals2 = [r["env_steps"] for r in rows2 if "eval/success_rate" in r]
    assert train2 == [half, budget, budget + half, 2 * budget] and evals2 == [0, half, budget, budget + half,
                                                                              2 * budget]
    walls = [r["wall_seconds"] for r in rows2 if "perf/env_steps_per_second" in r]
    assert walls == sorted(walls)  # wall time is summed over the resume
    latest2 = ckpt.latest_checkpoint(resumed)
    assert latest2 == resumed / "checkpoints" / f"step_{2 * budget:07d}"
    assert ckpt.load_config(latest2)["env_steps"] == 2 * budget
    _, state2 = ckpt.load_train_state(latest2)
    assert state2["env_steps"] == 2 * budget and state2["seeds_used"] > state["seeds_used"]
    assert state2["wall_seconds"] > state["wall_seconds"]
    assert state2["algo"]["updates"] > state["algo"]["updates"]
    if kind != "residual_ppo":  # the replay came back: it holds the first run's chunks and the new ones
        before = [r["train/replay_size"] for r in rows if "train/replay_size" in r][-1]
        after = [r["train/replay_size"] for r in rows2 if "train/replay_size" in r]
        assert after[len(train)] > before and state2["algo"]["replay_size"] == after[-1]
        assert state2["algo"]["chunks_seen"] > state["algo"]["chunks_seen"]


def test_finetune_refuses_to_resume_nothing_and_to_overwrite_a_run(base_ckpt: Path, tmp_path: Path,
                                                                   finetuned: Callable[[str], tuple[Path, float]],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """resume=true where there is no checkpoint (a missing or an empty directory) and a new run in a
    directory that holds one both exit non-zero and change nothing; so does resuming on another base."""
    for out in (tmp_path / "missing", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        assert cli_main(finetune_args("residual_ppo", base_ckpt, out, "resume=true")) != 0
        assert "no checkpoint to resume from" in capsys.readouterr().err
        assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
    run, _ = finetuned("residual_ppo")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.parent.name != "tb"}
    assert cli_main(finetune_args("residual_ppo", base_ckpt, run)) != 0
    assert "already holds a fine-tuning run" in capsys.readouterr().err
    other = tmp_path / "other_base"
    shutil.copytree(base_ckpt, other)
    meta = json.loads((other / ckpt.CONFIG).read_text())
    (other / ckpt.CONFIG).write_text(json.dumps({**meta, "note": "another base"}))
    assert cli_main(finetune_args("residual_ppo", other, run, "resume=true", "total_env_steps=512")) != 0
    assert "content hash" in capsys.readouterr().err
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.parent.name != "tb"}
    assert after == before


@pytest.mark.parametrize("kind", ["residual_ppo", "dsrl_sac"])
def test_eval_runs_a_finetuned_composite(kind: str, tmp_path: Path,
                                         finetuned: Callable[[str], tuple[Path, float]]) -> None:
    """``robot-policy eval policy=<run>/checkpoints/latest`` runs the composite the fine-tuning wrote, at the
    step granularity it was trained at."""
    run, _ = finetuned(kind)
    out = tmp_path / "eval"
    assert cli_main(["eval", f"task={TASK}", f"policy={run}/checkpoints/latest", "episodes=2", "workers=1",
                     "videos=0", f"out={out}", "task.max_steps=40"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert (report["episodes"], report["errored"], len(report["per_episode"])) == (2, 0, 2)
    # the residual acts every step; the noise actor's chunk runs execute_horizon (rdt_tiny's 8) actions
    assert report["executed_horizons"] == ([1] if kind == "residual_ppo" else [8])


def test_finetune_report_evaluates_every_checkpoint_on_heldout_seeds(tmp_path: Path,
                                                                     finetuned: Callable[[str], tuple[Path, float]]
                                                                     ) -> None:
    """``finetune report DIR episodes=2`` writes heldout.json (the base, then every kept checkpoint, on the
    held-out seeds 1000000..1000001) and rewrites report.md with the held-out table."""
    run, _ = finetuned("residual_ppo")
    copy = tmp_path / "run"
    shutil.copytree(run, copy, symlinks=True)
    assert cli_main(["finetune", "report", str(copy), "episodes=2", "num_envs=2", "progress=false"]) == 0
    rows = json.loads((copy / "heldout.json").read_text())
    assert [r["checkpoint"] for r in rows] == [None, *step_dirs(copy)]
    assert [r["env_steps"] for r in rows] == [0, 128, 256]
    assert all(r["episodes"] == 2 and r["seeds"] == [1_000_000, 1_000_001] for r in rows)
    assert "Held-out seeds 1000000-1000001" in (copy / "report.md").read_text()
    # checkpoints=1: the base and the last checkpoint only
    assert cli_main(["finetune", "report", str(copy), "episodes=2", "num_envs=2", "checkpoints=1",
                     "progress=false"]) == 0
    assert [r["env_steps"] for r in json.loads((copy / "heldout.json").read_text())] == [0, 256]
    assert cli_main(["finetune", "report", str(tmp_path / "nothing"), "episodes=2"]) != 0


def test_sigint_saves_a_checkpoint_and_resume_continues(base_ckpt: Path, tmp_path: Path) -> None:
    """SIGINT during a long run: the iteration in progress finishes, a checkpoint of it is written, the
    process exits 130; resume=true with one more iteration's budget continues from there."""
    out = tmp_path / "stopped"
    robot_policy = str(Path(sys.executable).with_name("robot-policy"))
    args = finetune_args("residual_ppo", base_ckpt, out, "eval_episodes=0", "eval_every=1000000",
                         "total_env_steps=1000000")
    log = tmp_path / "stopped.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([robot_policy, *args], stdout=fh, stderr=subprocess.STDOUT, env=subprocess_env())
    code = interrupt_once_logged(proc, log, out / "metrics.jsonl", "train/", "an iteration")
    text = log.read_text()
    assert code == 130, text
    latest = ckpt.latest_checkpoint(out)
    assert latest is not None, text
    stopped_at = int(ckpt.load_config(latest)["env_steps"])
    assert stopped_at > 0 and stopped_at % 128 == 0  # whole iterations (64 steps x 2 envs)
    assert metrics(out)[-1]["env_steps"] == stopped_at  # nothing ran after the saved iteration
    assert f"interrupted by SIGINT after {stopped_at} env steps" in text
    assert cli_main(finetune_args("residual_ppo", base_ckpt, out, "eval_episodes=0", "eval_every=1000000",
                                  "resume=true", f"total_env_steps={stopped_at + 128}")) == 0
    assert ckpt.load_config(ckpt.latest_checkpoint(out))["env_steps"] == stopped_at + 128  # type: ignore[arg-type]
    steps = [r["env_steps"] for r in metrics(out) if "perf/env_steps_per_second" in r]
    assert steps == list(range(128, stopped_at + 129, 128))
    assert np.all(np.diff(steps) > 0)


def test_base_backend_onnxruntime_runs_the_rollouts_on_graphs_that_match_the_torch_base(
        base_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``base_backend=onnxruntime``: a run exports the base's networks into out/base_graphs and trains with
    them swapped in; on those graphs the base's chunks equal the torch base's to 1e-4 (same observation and
    noise). An unsupported backend is refused before anything is written."""
    import torch

    from robot_policy.envs.registry import make_env
    from robot_policy.models.frozen_base import FrozenBase
    from robot_policy.models.observation_history import stack_batches
    from robot_policy.runtime.backends import BackendSource, make_backend
    from robot_policy.runtime.onnx_graphs import ENCODER_FILE, ExportedGraphs

    out = tmp_path / "run"
    assert cli_main(finetune_args("residual_ppo", base_ckpt, out, "base_backend=onnxruntime")) == 0
    assert step_dirs(out)
    used = json.loads((out / "finetune_config.json").read_text())["rollout_base"]
    assert used["backend"] == "onnxruntime" and used["network"] == "OnnxRuntimeBackend"
    assert used["denoiser_max_abs_diff"] <= 1e-4
    graphs_dir = out / "base_graphs"
    encoder = graphs_dir / ENCODER_FILE
    graphs = ExportedGraphs(graphs_dir / "denoiser.onnx", encoder if encoder.exists() else None)
    torch_base, ort_base = FrozenBase.from_checkpoint(base_ckpt), FrozenBase.from_checkpoint(base_ckpt)
    ort_base.use_network(make_backend("onnxruntime", BackendSource(ort_base.model.cfg, graphs=graphs)))
    env = make_env(TASK)
    history = torch_base.new_history()
    history.add(env.reset(seed=3)[0])
    batch = stack_batches([history.as_batch()] * 3)
    noise = torch.randn(3, torch_base.horizon, 128, generator=torch.Generator().manual_seed(0))
    ref, got = torch_base.sample(batch, noise), ort_base.sample(batch, noise)
    assert ref.abs().max() > 0.1  # a real chunk, not zeros
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    capsys.readouterr()
    assert cli_main(finetune_args("residual_ppo", base_ckpt, tmp_path / "bad", "base_backend=tensorrt")) != 0
    assert "base_backend" in capsys.readouterr().err and not (tmp_path / "bad").exists()
